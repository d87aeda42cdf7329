#!/usr/bin/env bash
# tests/bad/run.sh [BINDIR] [PATTERN] — the bad-input catalogue (issue 12): broken files of
# every format qlora reads, faults (a full disk, a read-only folder, kill -9 and Ctrl-C
# during each writing stage, leftovers of killed runs) and hostile names, run against
# BINDIR/qlora (default bin/asan). The cases are the `bad` lines of tests/bad/cases.sh;
# their inputs are made at run time under a temporary folder from the good ones that
# tests/bad/tool.lua gen writes. Every case checks:
#   - the exit status, and a message (an extended regex, naming the file) in the output;
#   - no sanitizer report and no Lua traceback (input errors are messages, not bugs);
#   - nothing half-written: no *.tmp* left (after kill -9: the rerun given as the check
#     cleans or ignores them), and the check command, when given, passes;
#   - nothing outside the case's output folder changed (every other file under the
#     temporary folder is hashed before and after), and nothing the user had inside it
#     (files named with `keep` in the setup) destroyed.
# Ends with "N passed, N failed" (and "N skipped" when a fault cannot be made here).
# KEEP=1 keeps the temporary folder. Runs in about a minute on the ASan build.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${1:-bin/asan}; PATTERN=${2:-}
case $BIN in /*) ;; *) BIN=$ROOT/$BIN;; esac
Q=$BIN/qlora
[ -x "$Q" ] || { echo "tests/bad/run.sh: $Q is missing (build it: QL_CONFIG=asan ./setup.sh)"; echo "0 passed, 1 failed"; exit 1; }
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export QL_FIXTURES="$ROOT/tests/fixtures"
W=$(mktemp -d "${TMPDIR:-/tmp}/qlbad.XXXXXX")
cleanup() {
  [ -e "$W/mounts" ] && while read -r m; do umount "$m" 2>/dev/null; done < "$W/mounts"
  [ "${KEEP:-0}" = 1 ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
IN=$W/in
"$Q" tests/bad/tool.lua gen "$IN" root="$ROOT" > "$W/gen.log" 2>&1 || {
  cat "$W/gen.log"; echo "tests/bad/run.sh: making the good inputs failed"; echo "0 passed, 1 failed"; exit 1; }
chmod -R a-w "$IN"   # the inputs are read-only for the cases (root ignores it: they are hashed too)

# ------------------------------------------------------------------ helpers for cases.sh
tool() { "$Q" "$ROOT/tests/bad/tool.lua" "$@"; }
# (the statement goes through the environment: qlora reads arguments with '=' as settings)
jset() { QLBAD_STMT=$2 tool jset "$1" >/dev/null; }      # jset FILE 'STMT on t'
stset() { QLBAD_STMT=$2 tool stset "$1" >/dev/null; }    # stset FILE 'STMT on h'
model() { cp -r "$IN/model" "${1:-m}"; chmod -R u+w "${1:-m}"; }      # a writable copy of the good model
bytes() { printf "$2" | dd of="$1" bs=1 seek="$3" conv=notrunc status=none; }   # bytes FILE '\xNN..' OFFSET
keep() { for p in "$@"; do echo "$p" >> "$C/.keep"; done; }  # user files (inside out) that must survive
keep_sums() { [ -e "$C/.keep" ] && (cd "$C" && xargs -r -I{} find {} \( -type f -o -type l \) -print0 < .keep | xargs -0 -r md5sum | sort); }
unmount_case() { [ -e "$W/mounts" ] && grep "^$C/" "$W/mounts" | while read -r m; do umount "$m" 2>/dev/null; done; }
# xfail 'why': the next case fails today for a known reason (counted as skipped; an XPASS says it is fixed)
xfail() { XFAIL=$1; }
train() { "$Q" "$ROOT/recipes/train.lua" model="${MODEL:-$IN/model}" data="${DATA:-$IN/data.jsonl}" out="${OUTDIR:-$OUT}" \
          steps="${STEPS:-2}" seq_len=32 batch=2 eval_fraction=0 "$@"; }
merge() { "$Q" "$ROOT/recipes/merge.lua" "$@"; }
export_gguf() { "$Q" "$ROOT/recipes/export_gguf.lua" "$@"; }
pdf_to_md() { "$Q" "$ROOT/recipes/pdf_to_md.lua" threads=2 "$@"; }
open_gguf() { "$Q" "$ROOT/tests/bad/tool.lua" open_gguf "$1"; }
# a small filesystem for full-disk cases: a tmpfs of $2 KiB at $1 (skips the case when none
# can be mounted here; then ulimit -f is the fallback the caller chooses)
small_fs() {
  mkdir -p "$1"; set -- "$(cd "$1" && pwd)" "$2"
  if mount -t tmpfs -o size="$2"k qlbad "$1" 2>/dev/null; then echo "$1" >> "$W/mounts"; return 0; fi
  return 1
}
ro_fs() {
  mkdir -p "$1"; set -- "$(cd "$1" && pwd)"
  if mount -t tmpfs -o ro,size=64k qlbad "$1" 2>/dev/null; then echo "$1" >> "$W/mounts"; return 0; fi
  return 1
}
# runs "$@" in the background and sends signal $1 once a file matching glob $2 exists
# (the writing stage has begun); the status is the command's. Sets CAUGHT=1 when the
# signal was sent before the command ended (in $C/.caught, for the runner).
signal_when() {
  local sig=$1 glob=$2; shift 2
  echo 0 > "$C/.caught"
  "$@" & local pid=$!
  local i=0 kids
  while kill -0 "$pid" 2>/dev/null; do
    if compgen -G "$glob" >/dev/null; then
      # "$@" is a shell function in a subshell: the signal goes to its qlora (by process id)
      kids=$(ps -o pid= --ppid "$pid" 2>/dev/null)
      [ -n "$kids" ] && kill -"$sig" $kids 2>/dev/null && echo 1 > "$C/.caught"
      break
    fi
    i=$((i + 1)); [ $i -gt 200000 ] && break
  done
  wait "$pid"
}

export Q IN W ROOT
export -f tool jset stset model bytes train merge export_gguf pdf_to_md open_gguf signal_when

# ------------------------------------------------------------------ the runner
passed=0; failed=0; skipped=0; n=0
snapshot() {  # every file under $W except the case's out folder and the generated log: path, size, hash
  # (the case folders' dot files are the runner's; pdf_to_md keeps its manifest beside dst)
  (cd "$W" && find . -path "./${OUT#$W/}" -prune -o -path ./gen.log -prune -o -path ./mounts -prune \
       -o -path "./cases/*/.*" -prune -o -path "./${OUT#$W/}.manifest.json" -prune -o \( -type f -o -type l \) -print0 \
     | sort -z | xargs -0 -r md5sum 2>/dev/null; find . -path "./${OUT#$W/}" -prune -o -type d -print | sort)
}
skip_case() { echo "skip  $1: $2"; skipped=$((skipped + 1)); SKIP=1; }
# bad NAME RC REGEX SETUP CMD [CHECK]
#   RC: an exit status, nz (any failure) or any; REGEX: extended regex the output must
#   match ('' for none); SETUP runs in the case folder $C before the snapshot, CMD after;
#   CHECK (optional) must succeed afterwards. $OUT is the case's output folder.
bad() {
  local name=$1 want=$2 regex=$3 setup=$4 cmd=$5 check=${6:-}
  local xf=${XFAIL:-}; XFAIL=
  [ -n "$PATTERN" ] && [[ $name != *$PATTERN* ]] && return
  n=$((n + 1))
  C=$W/cases/$name; OUT=$C/out; SKIP=0
  export C OUT
  mkdir -p "$C" "$W/outside"
  cd "$C"
  if ! ( eval "$setup" ) > "$C/.setup.log" 2>&1; then
    [ -e "$C/.skip" ] && { skip_case "$name" "$(cat "$C/.skip")"; cd "$ROOT"; unmount_case; rm -rf "$C"; return; }
    echo "FAIL  $name: the setup failed:"; sed 's/^/      /' "$C/.setup.log" | tail -5; failed=$((failed + 1)); cd "$ROOT"; return
  fi
  [ -e "$C/.skip" ] && { skip_case "$name" "$(cat "$C/.skip")"; cd "$ROOT"; unmount_case; rm -rf "$C"; return; }
  local before keep_before=""
  before=$(snapshot)
  keep_before=$(keep_sums)
  local rc
  (cd "$C" && timeout -s KILL 120 bash -c "$cmd") > "$C/.out" 2>&1
  rc=$?
  local why=()
  case $want in
    any) ;;
    nz) [ "$rc" != 0 ] || why+=("exit status 0, a failure was expected");;
    *) [ "$rc" = "$want" ] || why+=("exit status $rc, expected $want");;
  esac
  [ "$rc" = 137 ] && [[ $cmd != *KILL* ]] && why+=("killed after 120 s (a hang?)")
  if [ -n "$regex" ] && ! grep -Eq -- "$regex" "$C/.out"; then why+=("no message matching /$regex/"); fi
  grep -Eq 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:' "$C/.out" && why+=("a sanitizer report")
  grep -q 'stack traceback' "$C/.out" && why+=("a Lua traceback instead of a message")
  if [ -z "$check" ]; then
    local tmps; tmps=$(find "$C" -name '*.tmp*' -not -name '.*' 2>/dev/null | head -3)
    [ -n "$tmps" ] && why+=("temporaries left: ${tmps//$C\//}")
  elif ! ( cd "$C" && eval "$check" ) > "$C/.check" 2>&1; then
    why+=("the check failed: $(tail -3 "$C/.check" | tr '\n' ' ')")
  fi
  [ "$(snapshot)" = "$before" ] || why+=("files outside $OUT changed: $(diff <(echo "$before") <(snapshot) | grep '^[<>]' | head -3 | tr '\n' ' ')")
  if [ -n "$keep_before" ]; then   # every file the user had is still there, unchanged (new ones may be added)
    local lost; lost=$(comm -23 <(echo "$keep_before") <(keep_sums) | head -3 | awk '{print $2}' | tr '\n' ' ')
    [ -z "$lost" ] || why+=("the user's files were changed or removed: $lost")
  fi
  cd "$ROOT"
  unmount_case
  if [ ${#why[@]} -eq 0 ]; then
    local note=""; [ "$(cat "$C/.caught" 2>/dev/null)" = 0 ] && note=" (the stage ended before the signal)"
    [ -n "$xf" ] && note="$note (XPASS: fixed? remove its xfail: $xf)"
    echo "ok    $name$note"; passed=$((passed + 1))
    [ "${KEEP:-0}" = 1 ] || { chmod -R u+w "$C" 2>/dev/null; rm -rf "$C"; }
  elif [ -n "$xf" ]; then
    echo "xfail $name: $xf"; skipped=$((skipped + 1))
  else
    echo "FAIL  $name: $(IFS=';'; echo "${why[*]}")"
    sed 's/^/      | /' "$C/.out" | head -8
    failed=$((failed + 1))
  fi
}
source "$ROOT/tests/bad/cases.sh"
if [ "$skipped" -gt 0 ]; then echo "$passed passed, $failed failed, $skipped skipped"; else echo "$passed passed, $failed failed"; fi
[ "$failed" = 0 ]

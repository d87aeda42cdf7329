#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [BUILDDIR] [TARGET...] — a bounded libFuzzer run of each
# target (default 30 s each, all targets) from a copy of its seed corpus in
# tests/fuzz/corpus/<name>; new inputs stay in a temporary folder. A crash, a
# leak, a sanitizer report or a time-out fails the run: the input is kept as
# BUILDDIR/crash-<target>-* and the exit status is 1. Ends with
# "N passed, N failed" (one per target). Build first: tests/fuzz/build.sh.
# QL_FUZZ_SEED=0 for a random seed (longer runs by hand, docs/fuzzing.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}; shift || true
out=${1:-build-fuzz}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors json config tokenizer chat jsonl pdf)
work=$(mktemp -d "${TMPDIR:-/tmp}/qlfuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0"
passed=0; failed=0
for t in "${targets[@]}"; do
  bin="$out/fuzz_$t"
  if [ ! -x "$bin" ]; then echo "FAIL  fuzz $t: $bin is missing (tests/fuzz/build.sh $out)"; failed=$((failed + 1)); continue; fi
  mkdir -p "$work/$t"
  # -timeout: one input over 20 s is a finding (a hang); -rss_limit_mb: so is 2 GB
  # MuPDF has no frame pointers: the slow unwinder gives its leaks full stacks for lsan.supp
  slow=""; [ "$t" = pdf ] && slow=":fast_unwind_on_malloc=0"
  # a fixed seed (QL_FUZZ_SEED, default 1) makes CI's short runs reproducible; 0 lets libFuzzer pick one
  ASAN_OPTIONS="$ASAN_OPTIONS$slow" "$bin" -seed="${QL_FUZZ_SEED:-1}" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
         -artifact_prefix="$out/crash-$t-" "$work/$t" "tests/fuzz/corpus/$t" > "$work/$t.log" 2>&1
  rc=$?
  execs=$(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}')
  if [ "$rc" = 0 ]; then
    echo "ok    fuzz $t: ${execs:-?} executions in ${secs} s, $(ls "$work/$t" | wc -l) new inputs"
    passed=$((passed + 1))
  else
    echo "FAIL  fuzz $t (exit $rc):"
    grep -E 'ERROR|SUMMARY|runtime error|==[0-9]+==|#[0-9]+ 0x|Test unit written|FINDING|ABRT|Timeout|leak' "$work/$t.log" | head -40
    failed=$((failed + 1))
  fi
  rm -rf "$work/$t" "$TMPDIR"/qlfuzz-*
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

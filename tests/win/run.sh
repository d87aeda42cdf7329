#!/usr/bin/env bash
# tests/win/run.sh — the engine's platform layer and tensor core cross-compiled for
# Windows with MinGW-w64 and their tests run under Wine; ends with "N passed, N failed".
#   tests/win/run.sh            x86_64-w64-mingw32-gcc, then wine (Debian 12: apt-get install
#                               gcc-mingw-w64-x86-64 wine64; .ci/run does it)
#   tests/win/run.sh --native   the same sources with the host's gcc, the POSIX platform.c,
#                               OpenBLAS and ASan/UBSan: the tests themselves checked, and the
#                               BLAS stand-in held against OpenBLAS
#   tests/win/run.sh PATTERN    only the tests whose name contains PATTERN
# Built: engine/core (platform, tensors, dtypes, devices, errors, the CPU backend), the
# safetensors reader/writer and JSON, NF4; tested: tests/c/test_tensor.c, tests/c/test_nf4.c
# and tests/win/test_win_*.c. OpenBLAS is not packaged for MinGW: tests/win/cblas.h routes
# cblas_sgemm to the plain C tests/win/qlwin_sgemm.c, and tests/win/memstream.h stands in for
# POSIX's open_memstream (docs/windows.md). Exit status 77 (with a "skip:" line) when the
# cross compiler or Wine is missing. QLWIN_BUILD=DIR: the build folder (default build-win).
set -uo pipefail
cd "$(dirname "$0")/../.."
native=0
[ "${1:-}" = "--native" ] && { native=1; shift; }
pattern="${1:-}"
out=${QLWIN_BUILD:-build-win}
[ "$native" = 1 ] && out="$out-native"

srcs=(engine/core/*.c engine/formats/json.c engine/formats/safetensors.c engine/formats/nf4.c
      engine/formats/nf4_backend.c tests/c/qltest.c tests/c/test_tensor.c tests/c/test_nf4.c
      tests/win/test_win_platform.c tests/win/test_win_sgemm.c tests/win/qlwin_sgemm.c)
inc=(-Iengine/core -Iengine/formats -Iengine/text -Iengine/model -Itests/c -I"$out")
warn=(-std=c11 -Wall -Wextra -Werror -g)

if [ "$native" = 1 ]; then
  cc=${CC:-gcc}
  blas_cflags=$(pkg-config --cflags openblas 2>/dev/null || true)
  blas_libs=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
  # shellcheck disable=SC2206
  flags=("${warn[@]}" -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
         -D_GNU_SOURCE -DQLWIN_HAVE_OPENBLAS $blas_cflags)
  # shellcheck disable=SC2206
  libs=(-fsanitize=address,undefined $blas_libs -lpthread -ldl -lm)
  exe="$out/qltest_win"
  run=("$exe")
  export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
else
  cc=${MINGW_CC:-x86_64-w64-mingw32-gcc}
  if ! command -v "$cc" >/dev/null 2>&1; then
    echo "skip: $cc not found (Debian: apt-get install gcc-mingw-w64-x86-64)"; exit 77
  fi
  wine=""
  for w in wine64 wine /usr/lib/wine/wine64; do
    if command -v "$w" >/dev/null 2>&1; then wine=$(command -v "$w"); break; fi
  done
  if [ -z "$wine" ]; then echo "skip: Wine not found (Debian: apt-get install wine64)"; exit 77; fi
  # tests/win first: its cblas.h stands in for OpenBLAS. -static: no MinGW DLLs to find at run time.
  # __USE_MINGW_ANSI_STDIO: MinGW's C99 printf (%zu, %lld), which ql.h's format checks assume.
  # (MinGW-w64's fmaf rounds some ties the wrong way; nf4.c uses its own ql_fmaf, so the NF4
  # tables equal bitsandbytes' here too: test_nf4.c checks the tie that fmaf gets wrong.)
  flags=("${warn[@]}" -O2 -Itests/win -D__USE_MINGW_ANSI_STDIO=1)
  libs=(-static -lm)
  exe="$out/qltest_win.exe"
  export WINEPREFIX=${WINEPREFIX:-$PWD/$out/wineprefix} WINEDEBUG=${WINEDEBUG:--all}
  export WINEDLLOVERRIDES="mscoree,mshtml="     # no Mono/Gecko installer prompts
  # Wine maps file names through the Unix locale's charset: without a UTF-8 locale (LANG unset,
  # as in a bare `env -i`) the tests' UTF-8 folder names cannot be made
  export LC_ALL=C.UTF-8
  run=("$wine" "$exe")
fi

mkdir -p "$out/obj"
printf '/* written by tests/win/run.sh */\n#define QL_COMMIT "tests-win"\n#define QL_BUILD_OPTIONS "%s"\n#define QL_CUDA_ARCHS ""\n' \
  "$([ "$native" = 1 ] && echo "native test build" || echo "MinGW-w64 test build, no BLAS")" > "$out/ql_build.h"

t0=$(date +%s)
objs=() bad=0
for s in "${srcs[@]}"; do
  o="$out/obj/$(echo "${s%.c}" | tr / _).o"
  extra=()
  # the two callers of open_memstream get the stand-in (Windows only; empty elsewhere)
  case "$s" in engine/formats/safetensors.c) [ "$native" = 1 ] || extra=(-include tests/win/memstream.h) ;; esac
  if ! "$cc" "${flags[@]}" "${inc[@]}" "${extra[@]}" -c "$s" -o "$o"; then bad=1; fi
  objs+=("$o")
done
if [ "$native" = 0 ]; then
  "$cc" "${flags[@]}" "${inc[@]}" -c tests/win/memstream.c -o "$out/obj/memstream.o" || bad=1
  objs+=("$out/obj/memstream.o")
fi
if [ "$bad" = 0 ] && ! "$cc" "${objs[@]}" -o "$exe" "${libs[@]}"; then bad=1; fi
if [ "$bad" != 0 ]; then echo "FAIL  tests/win: the build failed"; echo "0 passed, 1 failed"; exit 1; fi
echo "tests/win: built $exe with $cc in $(( $(date +%s) - t0 )) s"

export QL_FIXTURES="$PWD/tests/fixtures"
t0=$(date +%s)
# Windows' stdout is in text mode: lines end in \r\n
# (less Wine's notes on making its prefix: a 64-bit-only Wine has no syswow64, as expected)
res=$("${run[@]}" $pattern 2>&1 | tr -d '\r' |
      grep -v -E '^wine: (created the configuration directory|configuration in .* has been updated|failed to open L".*syswow64)')
rc=${PIPESTATUS[0]}
printf '%s\n' "$res" | grep -v -E '^[0-9]+ passed, [0-9]+ failed'
line=$(printf '%s\n' "$res" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -1)
echo "tests/win: ran in $(( $(date +%s) - t0 )) s${wine:+ under $("$wine" --version 2>/dev/null)}"
if [ -z "$line" ]; then echo "FAIL  tests/win: $exe ended without a summary (exit $rc)"; echo "0 passed, 1 failed"; exit 1; fi
p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
s=$(echo "$line" | sed -nE 's/.*, ([0-9]+) skipped.*/\1/p')
if [ "$rc" != 0 ] && [ "$f" = 0 ]; then echo "FAIL  tests/win: exit status $rc"; f=$((f + 1)); fi
if [ "${s:-0}" -gt 0 ]; then echo "$p passed, $f failed, $s skipped"; else echo "$p passed, $f failed"; fi
[ "$f" = 0 ]

#!/usr/bin/env bash
# tests/tsan.sh — the C tests under ThreadSanitizer (the thread pool, the
# tokenizer's batch encoding, the parallel kernels of the CPU backend).
# Build with ./setup.sh --cuda=off first (for build/ql_build.h); prints the
# runner's "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/qltest-tsan"
inc=build; [ -f build/ql_build.h ] || inc=build-cpu
gcc -std=c11 -O1 -g -fsanitize=thread -D_GNU_SOURCE -Iengine/core -Iengine/formats -Iengine/text -Iengine/model -I"$inc" $(pkg-config --cflags mupdf) \
    engine/*/*.c $(ls tests/c/*.c | grep -v test_cuda) -o "$out" \
    $(pkg-config --libs --static mupdf) -lharfbuzz -lopenblas -lutf8proc -lpcre2-8 -lpthread -ldl -lm
QL_FIXTURES="$PWD/tests/fixtures" TSAN_OPTIONS="halt_on_error=1" "$out" "$@"

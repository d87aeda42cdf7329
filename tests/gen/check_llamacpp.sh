#!/bin/sh
# check_llamacpp.sh — qlora's GGUF export checked in llama.cpp itself, by hand, with a
# llama.cpp build present (never at test time: nothing in qlora needs llama.cpp).
#
#   LLAMA_SRC=/path/to/llama.cpp LLAMA_BUILD=/path/to/build tests/gen/check_llamacpp.sh [--write] [DRY...]
#
# LLAMA_BUILD is a CMake build of LLAMA_SRC with static libraries, e.g.
#   cmake -S $LLAMA_SRC -B $LLAMA_BUILD -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF
#   cmake --build $LLAMA_BUILD --target llama -j2
# (GGML_NATIVE=OFF: the reference quantizers are built for baseline x86-64, as ours are.)
#
# Builds tests/gen/gen_kquants.c and tests/gen/llamacpp_run.c against it, then:
#   - gen_kquants: ggml's own blocks for the quantizer test rows; --write puts them in
#     tests/fixtures/gguf/kquants.safetensors (checked by tests/c/test_gguf_quant.c);
#   - check_llamacpp.lua: q4_k_m bytes against llama.cpp's quantizer (--write records them
#     in tests/fixtures/gguf/q4_k_m.json for tests/lua/test_gguf.lua), logits and greedy
#     tokens of every export type against qlora's forward, tokenizer ids;
#   - DRY arguments NAME:FILE.gguf (f16 exports of real-shaped models) add llama.cpp's
#     dry-run choice of types on real shapes to the record.
# Exits non-zero when a byte, a greedy token of f32/f16 or a tokenizer id differs (beyond the
# differences it names: llama.cpp applies no NFC normalizer and makes "control-looking" tokens control).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
: "${LLAMA_SRC:?set LLAMA_SRC to a llama.cpp source tree}"
: "${LLAMA_BUILD:?set LLAMA_BUILD to its CMake build folder (static libraries)}"
BIN=${BIN:-$ROOT/bin}   # where qlora and qltest are (setup.sh --bindir)
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
DRY=$(echo "$@" | tr ' ' ',')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VERSION="llama.cpp $(git -C "$LLAMA_SRC" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
LIBS="$LLAMA_BUILD/src/libllama.a $LLAMA_BUILD/ggml/src/libggml.a $LLAMA_BUILD/ggml/src/libggml-cpu.a $LLAMA_BUILD/ggml/src/libggml-base.a"
INC="-I$LLAMA_SRC/include -I$LLAMA_SRC/ggml/include"
cc -O2 -std=c11 "$ROOT/tests/gen/gen_kquants.c" $INC "$LLAMA_BUILD/ggml/src/libggml-base.a" -lstdc++ -lm -lpthread -o "$WORK/gen_kquants"
cc -O2 -std=c11 "$ROOT/tests/gen/llamacpp_run.c" $INC $LIBS -lstdc++ -lm -lpthread -o "$WORK/llamacpp_run"

echo "== quantizer blocks: ggml's against tests/fixtures/gguf/kquants.safetensors"
"$WORK/gen_kquants" "$WORK/kquants.safetensors" "$VERSION"
if [ $WRITE = 1 ]; then cp "$WORK/kquants.safetensors" "$ROOT/tests/fixtures/gguf/kquants.safetensors"; fi
QL_FIXTURES=$ROOT/tests/fixtures "$BIN/qltest" gguf_quant

cd "$ROOT"
"$BIN/qlora" tests/gen/check_llamacpp.lua run="$WORK/llamacpp_run" out="$WORK/out" write=$WRITE version="$VERSION" ${DRY:+dry=$DRY}

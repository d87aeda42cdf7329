#!/usr/bin/env bash
# Builds bench/pdf_tool (bin/pdf_tool) against the engine archive from ./setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg="${QL_CONFIG:-release}"
make -C build config="$cfg" qlengine >/dev/null
gcc -std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -Iengine $(pkg-config --cflags mupdf) bench/pdf_tool.c \
  build/lib/$cfg/libqlengine.a $(pkg-config --libs --static mupdf) -lharfbuzz -lutf8proc -lpthread -ldl -lm \
  -o bin/pdf_tool

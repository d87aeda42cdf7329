#!/usr/bin/env bash
# tests/fuzz/build.sh [BUILDDIR] — builds the libFuzzer targets (tests/fuzz/fuzz_*.c)
# with clang, -fsanitize=fuzzer,address,undefined, into BUILDDIR (default
# build-fuzz): the engine is compiled once into BUILDDIR/libqlengine-fuzz.a,
# each target links against it. Needs clang (Debian: apt-get install clang) and
# the packages ./setup.sh installs. Incremental: objects newer than their
# source (and this script) are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=${1:-build-fuzz}
mkdir -p "$out/obj"
CC=${CC:-clang}
command -v "$CC" >/dev/null || { echo "tests/fuzz/build.sh: $CC not found: apt-get install clang"; exit 1; }
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-std=c11 -D_GNU_SOURCE -O1 -g $san -DQL_FUZZ_ROOT=\"$root\"
  -Iengine/core -Iengine/formats -Iengine/text -Iengine/model -Ilua
  $(pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
  $(pkg-config --cflags mupdf 2>/dev/null) $(pkg-config --cflags openblas 2>/dev/null)"
mupdf=$(pkg-config --libs --static mupdf 2>/dev/null || echo "-lmupdf -lmupdf-third")
libs="$mupdf -lharfbuzz $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
  -lutf8proc $(pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
  -Wl,-Bstatic -llua5.4 -Wl,-Bdynamic -lpthread -ldl -lm"

# the engine, instrumented for coverage (fuzzer-no-link) and the sanitizers
objs=()
jobs=()
for src in $(find engine -name '*.c' | sort); do
  o="$out/obj/$(echo "${src%.c}" | tr / _).o"
  objs+=("$o")
  if [ ! -e "$o" ] || [ "$src" -nt "$o" ] || [ "$0" -nt "$o" ] || [ -n "$(find engine -name '*.h' -newer "$o" | head -1)" ]; then
    jobs+=("$src $o")
  fi
done
if [ ${#jobs[@]} -gt 0 ]; then
  printf '%s\n' "${jobs[@]}" | xargs -P "$(nproc)" -L 1 sh -c \
    "$CC $(echo $cflags) -fsanitize=fuzzer-no-link -c \$0 -o \$1 || exit 255"
  rm -f "$out/libqlengine-fuzz.a"
fi
[ -e "$out/libqlengine-fuzz.a" ] || ar rcs "$out/libqlengine-fuzz.a" "${objs[@]}"

for src in tests/fuzz/fuzz_*.c; do
  name=$(basename "${src%.c}")
  extra=""
  [ "$name" = fuzz_jsonl ] && extra="lua/l_json.c lua/l_docs.c"
  stale=0
  for e in $extra; do [ "$e" -nt "$out/$name" ] && stale=1; done
  if [ ! -e "$out/$name" ] || [ "$src" -nt "$out/$name" ] || [ "$out/libqlengine-fuzz.a" -nt "$out/$name" ] \
     || [ tests/fuzz/fuzz.h -nt "$out/$name" ] || [ "$stale" = 1 ]; then
    echo "fuzz: $name"
    $CC $cflags -fsanitize=fuzzer "$src" $extra "$out/libqlengine-fuzz.a" $libs -o "$out/$name" &
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do sleep 0.2; done
done
fail=0
for j in $(jobs -p); do wait "$j" || fail=1; done
[ "$fail" = 0 ] || { echo "tests/fuzz/build.sh: a target failed to build"; exit 1; }
echo "fuzz targets in $out: $(cd "$out" && ls fuzz_* | tr '\n' ' ')"

#!/usr/bin/env bash
# setup.sh — installs what qlora needs from Debian's registry (when run as root
# and something is missing), generates the makefiles and builds bin/qlora,
# bin/qlora.so and bin/qltest.
#   ./setup.sh                 release build, CUDA when nvcc is found
#   ./setup.sh --cuda=off      CPU-only build
#   QL_CONFIG=asan ./setup.sh  sanitizer build (bin/asan/)
set -euo pipefail
cd "$(dirname "$0")"

PKGS="premake4 make gcc pkg-config git liblua5.4-dev lua5.4 libreadline-dev libutf8proc-dev
 libpcre2-dev libopenblas-dev libmupdf-dev libmujs-dev libgumbo-dev libopenjp2-7-dev
 libjbig2dec0-dev libjpeg-dev zlib1g-dev libfreetype-dev libharfbuzz-dev libbrotli-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: missing Debian packages:$missing" >&2
    echo "setup: run   sudo apt-get install$missing   then ./setup.sh again" >&2
    exit 1
  fi
fi

builddir=build
for a in "$@"; do case "$a" in --builddir=*) builddir="${a#--builddir=}";; esac; done
premake4 --file=premake5.lua "$@" gmake >/dev/null
jobs=$(nproc 2>/dev/null || echo 2)
# the CUDA kernels first, in parallel (premake's prebuild step would run them on one job)
if [ -f "$builddir/kernels.mk" ]; then
  make -C "$builddir" -f kernels.mk -j"$jobs" config="${QL_CONFIG:-release}" >/dev/null
fi
make -C "$builddir" -j"$jobs" config="${QL_CONFIG:-release}"

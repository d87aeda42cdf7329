#!/usr/bin/env bash
# setup.sh — installs what qlora needs from the distribution's registry (Debian 12
# or Ubuntu 24.04, when run as root and something is missing), checks the static
# libraries and premake, generates the makefiles and builds bin/qlora,
# bin/qlora.so and bin/qltest.
#   ./setup.sh                 release build, CUDA when nvcc is found
#   ./setup.sh --cuda=off      CPU-only build
#   QL_CONFIG=asan ./setup.sh  sanitizer build (bin/asan/)
set -euo pipefail
cd "$(dirname "$0")"

# The package table, the one place that names packages: the distribution's id and
# version (ID and VERSION_ID of /etc/os-release) -> its package names. Ubuntu 24.04
# (noble) publishes the same names as Debian 12 (bookworm), with premake4,
# libmupdf-dev, libmujs-dev and libgumbo-dev in its universe component; how that
# was checked: docs/windows.md ("Ubuntu 24.04").
packages_for() {
  local common="premake4 make gcc pkg-config git liblua5.4-dev lua5.4 libreadline-dev libutf8proc-dev
 libpcre2-dev libopenblas-dev libmupdf-dev libmujs-dev libgumbo-dev libopenjp2-7-dev
 libjbig2dec0-dev libjpeg-dev zlib1g-dev libfreetype-dev libharfbuzz-dev libbrotli-dev"
  case "$1" in
    debian) echo "$common" ;;     # 12 (bookworm); what CI runs
    ubuntu) echo "$common" ;;     # 24.04 (noble), the default WSL distribution
    *) return 1 ;;
  esac
}

os_release=${QL_OS_RELEASE:-/etc/os-release}   # QL_OS_RELEASE: for testing this script
os_id=unknown os_version=""
if [ -r "$os_release" ]; then
  os_id=$(. "$os_release" && echo "${ID:-unknown}")
  os_version=$(. "$os_release" && echo "${VERSION_ID:-}")
fi
universe_hint=""
[ "$os_id" = ubuntu ] && universe_hint="
setup: on Ubuntu, premake4 and libmupdf-dev are in the universe component:
setup:   sudo add-apt-repository universe && sudo apt-get update"

if PKGS=$(packages_for "$os_id"); then
  case "$os_id $os_version" in
    "debian 12"|"ubuntu 24.04") ;;
    *) echo "setup: $os_id $os_version is not Debian 12 or Ubuntu 24.04; trying their package names" >&2 ;;
  esac
  missing=""
  for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup: installing$missing"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      if ! apt-get install -y -qq $missing >/dev/null; then
        echo "setup: apt-get could not install:$missing$universe_hint" >&2
        exit 1
      fi
    else
      echo "setup: missing $os_id packages:$missing" >&2
      echo "setup: run   sudo apt-get install$missing   then ./setup.sh again$universe_hint" >&2
      exit 1
    fi
  fi
else
  echo "setup: no package table for '$os_id' (setup.sh knows Debian 12 and Ubuntu 24.04);" >&2
  echo "setup: install the equivalents of: $(packages_for debian | tr -s ' \n' ' ')" >&2
  echo "setup: going on with what is installed" >&2
fi

# premake: Debian's and Ubuntu's premake4 (4.3), or a premake5 on PATH
premake="premake4 --file=premake5.lua"
generator=gmake
if ! command -v premake4 >/dev/null 2>&1; then
  if command -v premake5 >/dev/null 2>&1; then
    echo "setup: premake4 not found; using $(command -v premake5) (generator gmake2)"
    premake="premake5 --file=premake5.lua"
    generator=gmake2
  else
    echo "setup: premake4 is not installed." >&2
    echo "setup:   Debian 12 / Ubuntu 24.04: sudo apt-get install premake4" >&2
    echo "setup:   elsewhere: build premake5 from source (github.com/premake/premake-core:" >&2
    echo "setup:   make -f Bootstrap.mak linux), put premake5 on PATH, then ./setup.sh again$universe_hint" >&2
    exit 1
  fi
fi

# static libraries: Lua and MuPDF are linked statically (bin/qlora.so must load into
# any lua5.4; MuPDF's ABI changes with every release). gcc prints the bare name back
# when its linker paths hold no such file.
need_static() {  # need_static LIB PACKAGE WHY
  local f
  f=$(gcc -print-file-name="$1" 2>/dev/null || echo "$1")
  [ "$f" != "$1" ] && [ -e "$f" ] && return 0
  echo "setup: the static library $1 was not found; Debian 12 and Ubuntu 24.04 ship it in $2:" >&2
  echo "setup:   sudo apt-get install $2" >&2
  echo "setup:   $3" >&2
  return 1
}
if command -v gcc >/dev/null 2>&1; then
  static_ok=1
  need_static liblua5.4.a liblua5.4-dev "qlora links Lua 5.4 into its binaries." || static_ok=0
  mupdf_why="qlora links MuPDF statically. A libmupdf-dev with only the shared libmupdf.so
setup:   (the MuPDF 1.27 packages of Ubuntu releases after 24.04) cannot be used: build MuPDF's
setup:   static libraries from its source (mupdf.com: make HAVE_X11=no HAVE_GLUT=no
setup:   prefix=/usr/local install puts libmupdf.a and libmupdf-third.a in /usr/local/lib),
setup:   then ./setup.sh again."
  need_static libmupdf.a libmupdf-dev "$mupdf_why" || static_ok=0
  need_static libmupdf-third.a libmupdf-dev "MuPDF's bundled third-party code, linked with libmupdf.a." || static_ok=0
  [ "$static_ok" = 1 ] || exit 1
fi

builddir=build
for a in "$@"; do case "$a" in --builddir=*) builddir="${a#--builddir=}";; esac; done
$premake "$@" $generator >/dev/null
jobs=$(nproc 2>/dev/null || echo 2)
# the CUDA kernels first, in parallel (premake's prebuild step would run them on one job)
if [ -f "$builddir/kernels.mk" ]; then
  make -C "$builddir" -f kernels.mk -j"$jobs" config="${QL_CONFIG:-release}" >/dev/null
fi
make -C "$builddir" -j"$jobs" config="${QL_CONFIG:-release}"

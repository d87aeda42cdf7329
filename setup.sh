#!/usr/bin/env bash
# setup.sh — installs what qlora needs from the distribution's registry (Debian 12
# or Ubuntu 24.04, when run as root and something is missing), checks the static
# libraries and premake, generates the makefiles and builds bin/qlora,
# bin/qlora.so and bin/qltest.
#   ./setup.sh                 release build, CUDA when nvcc is found
#   ./setup.sh --cuda=off      CPU-only build
#   QL_CONFIG=asan ./setup.sh  sanitizer build (bin/asan/)
#   ./setup.sh --prefix=DIR    build, then install into DIR (below), e.g. --prefix=/usr/local
#   ./setup.sh --prefix=DIR --no-build    install what is built already
# Installed, qlora finds its modules and recipes beside itself, so `qlora ls`, `qlora cp`,
# `qlora NAME` and `qlora chat` work from any folder:
#   DIR/bin/qlora                      the program
#   DIR/lib/lua/5.4/qlora.so           the bindings for a stock lua5.4 (its cpath for /usr/local)
#   DIR/share/qlora/lua/qlora/*.lua    the Lua modules (qlora.llm, qlora.train, ...)
#   DIR/share/qlora/recipes/           the recipes and their sample PDFs
#   DIR/share/qlora/tests/fixtures/tokenizers/gpt2/   the tokenizer of full.lua's smoke run
set -euo pipefail
start_dir="$PWD"
cd "$(dirname "$0")"

# our own options; the others go to premake
prefix="" no_build=0 bindir=bin
premake_args=()
for a in "$@"; do
  case "$a" in
    --prefix=*)
      prefix="${a#--prefix=}"
      if [ -z "$prefix" ]; then echo "setup: --prefix= needs a folder (--prefix=/usr/local, --prefix=\$HOME/.local)" >&2; exit 2; fi
      case "$prefix" in /*) ;; *) prefix="$start_dir/$prefix" ;; esac ;;
    --no-build) no_build=1 ;;
    *) premake_args+=("$a") ;;
  esac
  case "$a" in --bindir=*) bindir="${a#--bindir=}" ;; esac
done
if [ "$no_build" = 1 ] && [ -z "$prefix" ]; then
  echo "setup: --no-build only makes sense with --prefix=DIR (install what is built)" >&2; exit 2
fi

install_qlora() {
  local cfg="${QL_CONFIG:-release}" from="$bindir"
  [ "$cfg" = release ] || from="$bindir/$cfg"
  if [ ! -x "$from/qlora" ]; then
    echo "setup: $from/qlora is not built: run ./setup.sh${QL_CONFIG:+ with QL_CONFIG=$cfg} first (or drop --no-build)" >&2
    return 1
  fi
  local share="$prefix/share/qlora"
  echo "setup: installing into $prefix"
  install -d "$prefix/bin" "$share/lua/qlora" "$share/recipes/samples" "$share/tests/fixtures/tokenizers/gpt2"
  install -m 755 "$from/qlora" "$prefix/bin/qlora"
  if [ -f "$from/qlora.so" ]; then
    install -d "$prefix/lib/lua/5.4"
    install -m 644 "$from/qlora.so" "$prefix/lib/lua/5.4/qlora.so"
  fi
  install -m 644 lua/qlora/*.lua "$share/lua/qlora/"
  install -m 644 recipes/*.lua "$share/recipes/"
  find recipes/samples -maxdepth 1 -type f -exec install -m 644 {} "$share/recipes/samples/" \;
  install -m 644 tests/fixtures/tokenizers/gpt2/tokenizer.json "$share/tests/fixtures/tokenizers/gpt2/"
  echo "setup: installed $prefix/bin/qlora; try: $prefix/bin/qlora ls"
  case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "setup: $prefix/bin is not on PATH: add it (export PATH=\"$prefix/bin:\$PATH\")" ;; esac
}
if [ "$no_build" = 1 ]; then install_qlora; exit $?; fi

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
$premake ${premake_args[@]+"${premake_args[@]}"} $generator >/dev/null
jobs=$(nproc 2>/dev/null || echo 2)
# the CUDA kernels first, in parallel (premake's prebuild step would run them on one job)
if [ -f "$builddir/kernels.mk" ]; then
  make -C "$builddir" -f kernels.mk -j"$jobs" config="${QL_CONFIG:-release}" >/dev/null
fi
make -C "$builddir" -j"$jobs" config="${QL_CONFIG:-release}"
[ -z "$prefix" ] || install_qlora

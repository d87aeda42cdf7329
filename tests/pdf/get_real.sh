#!/usr/bin/env bash
# tests/pdf/get_real.sh DIR — fetches the real PDFs listed in tests/pdf/real.tsv
# from Debian 12's documentation packages (apt-get download + dpkg-deb -x, no
# install) into DIR/NAME.pdf and checks their sha256. For tests/pdf/eval_real.py;
# tests never fetch anything. Needs apt (run `apt-get update` first).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:?usage: get_real.sh DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
pkgs="$(grep -v '^#' "$here/real.tsv" | cut -f2 | sort -u)"
(cd "$tmp" && apt-get download $pkgs)
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
grep -v '^#' "$here/real.tsv" | while IFS=$'\t' read -r name pkg ver path sum producer; do
  src="$tmp/root$path"
  if [[ "$path" == *.gz ]]; then gunzip -c "$src" > "$dir/$name.pdf"; else cp "$src" "$dir/$name.pdf"; fi
  got="$(sha256sum "$dir/$name.pdf" | cut -c1-16)"
  [[ "$got" == "$sum" ]] || echo "warning: $name: sha256 $got, expected $sum ($pkg $ver; the package changed)" >&2
done
ls -la "$dir"

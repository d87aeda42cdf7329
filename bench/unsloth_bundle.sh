#!/usr/bin/env bash
# bench/unsloth_bundle.sh [DEST=.carry/unsloth] — the Unsloth side of bench/train_gpu.sh, made here
# (PyPI reachable) for the GPU machine (which has torch, transformers, peft, accelerate, numpy but
# no Unsloth): wheels of unsloth 2026.10.9, unsloth_zoo and what they need beyond the machine's
# packages (../shared/notes/GPU.md lists them), unpacked into one site folder without unsloth's
# web studio (~80 MB), compiled extensions for CPython 3.10-3.13 side by side (their file names
# differ by ABI tag), multiprocess per version under site/py3NN; xz-compressed: ~11 MB.
# Carry it with the repository as ".carry/unsloth" (mind the device tool's 64 MiB in all).
set -euo pipefail
dest="${1:-.carry/unsloth}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip download --no-deps -q -d "$tmp/w" unsloth==2026.10.9 unsloth_zoo==2026.10.9 "trl<=1.15" "datasets<5" torchao \
  cut_cross_entropy tyro docstring_parser shtab typeguard json5 structlog nest_asyncio dill diffusers pydantic \
  annotated_types typing_inspection
for v in 310 311 312 313; do
  pip download --no-deps -q --only-binary=:all: --python-version "$v" --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp/w" pydantic_core msgspec multiprocess
done
python3 - "$tmp/w" "$tmp/site" <<'PY'
import glob, os, re, sys, zipfile
src, site = sys.argv[1], sys.argv[2]
for w in sorted(glob.glob(os.path.join(src, "*.whl"))):
    name = os.path.basename(w)
    m = re.match(r"multiprocess-[\d.]+-py(3\d+)-none-any\.whl", name)
    dest = os.path.join(site, "py" + m.group(1)) if m else site
    z = zipfile.ZipFile(w)
    for n in z.namelist():
        if n.startswith("studio/") or "/studio/" in n or n.startswith("tests/") or "/tests/" in n:
            continue
        z.extract(n, dest)
PY
find "$tmp/site" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$dest"
tar -C "$tmp" -cf - site | xz -T2 -9 > "$dest/site.tar.xz"
echo "unsloth_bundle: $(du -h "$dest/site.tar.xz" | cut -f1) in $dest/site.tar.xz"

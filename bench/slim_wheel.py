#!/usr/bin/env python3
"""Repacks the bitsandbytes manylinux wheel for the GPU machine (torch +cu130): keeps the
Python code, libbitsandbytes_cuda130.so and the small CPU library, drops the other CUDA,
ROCm and XPU libraries (~125 MB), and rewrites RECORD so pip accepts the result.

    pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_24_x86_64 -d /tmp/whl bitsandbytes==0.50.2
    python3 bench/slim_wheel.py /tmp/whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl .whl [130]

The output keeps the input's file name (pip parses name, version and tags from it).
.whl/ is git-ignored (.git/info/exclude) and travels with the working tree to the device.
"""
import base64
import hashlib
import os
import re
import sys
import zipfile

src, dest = sys.argv[1], sys.argv[2]
keep_cuda = sys.argv[3] if len(sys.argv) > 3 else "130"
native = re.compile(r"libbitsandbytes_(cuda|rocm|xpu)\d+\.so$")


def wanted(name):
    m = native.search(name)
    return m is None or name.endswith(f"libbitsandbytes_cuda{keep_cuda}.so")


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


os.makedirs(dest, exist_ok=True)
out_path = os.path.join(dest, os.path.basename(src))
with zipfile.ZipFile(src) as zin:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    names = [n for n in zin.namelist() if n != record_name and wanted(n)]
    dropped = [n for n in zin.namelist() if not wanted(n)]
    if not any(n.endswith(f"libbitsandbytes_cuda{keep_cuda}.so") for n in names):
        sys.exit(f"slim_wheel: no libbitsandbytes_cuda{keep_cuda}.so in {src}")
    lines = []
    with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for n in names:
            info = zin.getinfo(n)
            data = zin.read(n)
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
            lines.append(record_line(n, data))
        lines.append(f"{record_name},,")
        zout.writestr(zin.getinfo(record_name), "\n".join(lines) + "\n", compress_type=zipfile.ZIP_DEFLATED)
print(f"slim_wheel: {out_path} {os.path.getsize(out_path) / 2**20:.1f} MiB, dropped {len(dropped)} libraries:",
      " ".join(os.path.basename(n) for n in dropped))

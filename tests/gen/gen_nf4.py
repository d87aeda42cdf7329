#!/usr/bin/env python3
"""gen_nf4.py — NF4 golden fixtures from bitsandbytes itself (CPU backend).

    /opt/refenv/bin/python tests/gen/gen_nf4.py [outdir]   (default tests/fixtures/nf4)

Writes one file per case plus tables.bin. File format (little-endian):
    8 bytes magic "QLNF4FX1", then records until EOF:
        tag   8 bytes ASCII, NUL padded
        type  u32: 0 = u8, 1 = f32, 2 = u16 (bf16 bits), 3 = i64
        count u64 (elements)
        data  count * size bytes
Records of a case:
    shape i64[2]  bs i64[1]  dq i64[1]  torchthr i64[1] (torch.get_num_threads())
    x f32[n]  or  seed i64[1] (input made by xorshift64, see prng_input; C repeats it)
    packed u8[ceil(n/2)]
    absmax f32[nb]                                          (dq = 0)
    absmaxq u8[nb]  nabsmax f32[nn]  noffset f32[1]  ncode f32[256]   (dq = 1)
    deq f32[n]  deqbf u16[n]      or, for generated inputs,
    deqhash i64[1]  bfhash i64[1] (FNV-1a 64 of the raw bytes)
    json u8[len]  (quant_state.bitsandbytes__nf4 as bitsandbytes packs it)
tables.bin: nf4code f32[16] (get_4bit_type("nf4")), dynmap f32[256] (create_dynamic_map()).
Everything expected is produced by bitsandbytes / torch, never by qlora.
"""
import os
import struct
import sys

import numpy as np
import torch
import bitsandbytes as bnb  # noqa: F401  (registers the ops)
import bitsandbytes.functional as F

TYPES = {np.uint8: 0, np.float32: 1, np.uint16: 2, np.int64: 3}


def rec(f, tag, arr, dtype):
    a = np.ascontiguousarray(np.asarray(arr, dtype=dtype).reshape(-1))
    f.write(tag.encode().ljust(8, b"\0"))
    f.write(struct.pack("<IQ", TYPES[dtype], a.size))
    f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for byte in b:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def prng_input(seed, rows, cols):
    """xorshift64; x = (top 24 bits - 2^23) * 2^-23 * 2^(row % 9 - 4): exact in fp32."""
    s = seed
    out = np.empty(rows * cols, dtype=np.float32)
    for i in range(rows * cols):
        s ^= (s << 13) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 7
        s ^= (s << 17) & 0xFFFFFFFFFFFFFFFF
        v = (s >> 40) - (1 << 23)
        out[i] = np.float32(v) * np.float32(2.0 ** (-23 + (i // cols) % 9 - 4))
    return out.reshape(rows, cols)


# x / absmax and x * fl(1 / absmax) fall on different sides of an NF4 midpoint
# for these (found by search): bitsandbytes multiplies by the reciprocal in full
# blocks and divides in the ragged last block, so the planted values tell them apart.
DIV_AM = 2.729365825653076
DIV_X = [-1.255495309829712, -0.3764115571975708, -0.12425442039966583, 1.3692231178283691,
         1.7544007301330566]


def special_input(rows, cols, seed, bs=64):
    """Random normal weights with planted edge cases in the first blocks and,
    when the last block is ragged, in the last block."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(rows * cols) * 0.02).astype(np.float32)
    code = F.get_4bit_type("nf4", device="cpu")
    bounds = ((code[:-1] + code[1:]) / 2).numpy().astype(np.float32)  # torch fp32 midpoints
    blk = []
    # block with absmax exactly 1: every midpoint (a tie -> lower code) and its neighbours
    b = [1.0]
    for m in bounds:
        b += [m, np.nextafter(m, np.float32(2)), np.nextafter(m, np.float32(-2))]
    blk.append(b)
    # absmax 2: 2*midpoint scales back to the midpoint exactly (x * 0.5)
    blk.append([-2.0] + [2 * m for m in bounds] + [0.0] * 10)
    blk.append([0.0] * 64)                                   # all-zero block
    blk.append(list(rng.standard_normal(64) * 1e30))         # large
    blk.append(list(rng.standard_normal(64) * 1e-30))        # small
    blk.append(list(rng.standard_normal(64) * 1e-40))        # subnormal: absmax < 1e-38 clamp
    blk.append([3.0, -3.0] + list(rng.standard_normal(62)))  # tie of +-absmax
    blk.append([-5.0] + [0.0] * 63)                          # negative absmax, zeros
    blk.append([DIV_AM] + DIV_X + [0.0] * 58)                # reciprocal vs division
    pos = 0
    for b in blk:
        b = np.asarray(b, dtype=np.float32)[:64]
        if pos + len(b) > x.size:
            break
        x[pos:pos + len(b)] = b
        pos += 64
    last = (x.size // bs) * bs
    if x.size % bs and x.size - last >= 6 and last >= pos:
        x[last:last + 6] = np.asarray([DIV_AM] + DIV_X, dtype=np.float32) * 0.5
        x[last + 6:] *= 0.01
    return x.reshape(rows, cols)


def write_case(outdir, name, x, bs, dq, seed=None):
    xt = torch.from_numpy(np.ascontiguousarray(x))
    q, st = F.quantize_4bit(xt, blocksize=bs, quant_type="nf4", compress_statistics=bool(dq))
    deq = F.dequantize_4bit(q, st).numpy().astype(np.float32)
    st.dtype = torch.bfloat16                       # same state, bf16 output
    deqbf = F.dequantize_4bit(q, st).view(torch.int16).numpy().view(np.uint16)
    st.dtype = torch.float32
    js = bytes(st.as_dict(packed=True)["quant_state.bitsandbytes__nf4"].numpy())
    rows, cols = x.shape
    with open(os.path.join(outdir, name + ".bin"), "wb") as f:
        f.write(b"QLNF4FX1")
        rec(f, "shape", [rows, cols], np.int64)
        rec(f, "bs", [bs], np.int64)
        rec(f, "dq", [dq], np.int64)
        rec(f, "torchthr", [torch.get_num_threads()], np.int64)
        if seed is None:
            rec(f, "x", x, np.float32)
        else:
            rec(f, "seed", [seed], np.int64)
        rec(f, "packed", q.numpy(), np.uint8)
        if dq:
            rec(f, "absmaxq", st.absmax.numpy(), np.uint8)
            rec(f, "nabsmax", st.state2.absmax.numpy(), np.float32)
            rec(f, "noffset", [st.offset.item()], np.float32)
            rec(f, "ncode", st.state2.code.numpy(), np.float32)
        else:
            rec(f, "absmax", st.absmax.numpy(), np.float32)
        if seed is None:
            rec(f, "deq", deq, np.float32)
            rec(f, "deqbf", deqbf, np.uint16)
        else:
            rec(f, "deqhash", [np.uint64(fnv1a64(deq.tobytes())).astype(np.int64)], np.int64)
            rec(f, "bfhash", [np.uint64(fnv1a64(deqbf.tobytes())).astype(np.int64)], np.int64)
        rec(f, "json", np.frombuffer(js, dtype=np.uint8), np.uint8)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "nf4")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "tables.bin"), "wb") as f:
        f.write(b"QLNF4FX1")
        rec(f, "nf4code", F.get_4bit_type("nf4", device="cpu").numpy(), np.float32)
        rec(f, "dynmap", F.create_dynamic_map().numpy(), np.float32)

    mix = special_input(64, 64, 1)
    write_case(outdir, "mix64_dq", mix, 64, 1)
    write_case(outdir, "odd_nodq", special_input(33, 47, 2), 64, 0)   # ragged block, odd n, odd cols
    write_case(outdir, "odd_dq", special_input(33, 47, 3), 64, 1)
    write_case(outdir, "bs32_dq", special_input(16, 72, 4, 32), 32, 1)
    write_case(outdir, "bs128_nodq", special_input(24, 100, 5, 128), 128, 0)
    rz = np.random.default_rng(6).standard_normal((1, 100)).astype(np.float32)
    rz[0, 64:] = 0.0                                                  # all-zero ragged last block
    write_case(outdir, "raggedzero_dq", rz, 64, 1)
    write_case(outdir, "raggedzero_nodq", rz, 64, 0)
    write_case(outdir, "one_dq", np.array([[0.375]], dtype=np.float32), 64, 1)
    write_case(outdir, "zeros_dq", np.zeros((8, 64), dtype=np.float32), 64, 1)
    # > 256 blocks: two nested blocks, the second ragged (305 blocks), ragged last block
    write_case(outdir, "big_dq", prng_input(12345, 150, 130), 64, 1, seed=12345)
    write_case(outdir, "big_bs4096_nodq", prng_input(777, 3, 5001), 4096, 0, seed=777)
    write_case(outdir, "big_bs4096_dq", prng_input(777, 3, 5001), 4096, 1, seed=777)


if __name__ == "__main__":
    main()

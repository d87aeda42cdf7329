#!/usr/bin/env python3
"""Golden values for the tensor core, computed by PyTorch (CPU).

Writes tests/fixtures/tensor_golden.safetensors with the HF `safetensors`
package, so the same file also checks that qlora reads what the reference
writer produces. Inputs are drawn with numpy from a fixed seed; every expected
output below is torch's, never qlora's.

    /opt/refenv/bin/python tests/gen/gen_tensor.py   (torch, safetensors, numpy)
"""
import os
import struct

import numpy as np
import torch
from safetensors.torch import save_file

rng = np.random.default_rng(1234)
out = {}


def f32(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


# --- dtype conversions: f32 -> bf16 / f16 bit patterns (round to nearest even, specials)
special = [0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e-8, 6e-8, 5.96e-8, 2.98e-8, 3e-8,
           6.1e-5, 6.09e-5, 1e38, 3.4e38, -3.4e38, float("inf"), float("-inf"), float("nan"),
           1.00390625, 1.01171875, 1.005859375, 0.1, 1 / 3, 2 ** -126, 2 ** -149, 2 ** -133]
# exact bf16 ties: 1 + k/256 + 1/512 has the tie bit set
ties = [1.0 + k / 128.0 + 1.0 / 256.0 for k in range(8)]
conv_in = np.concatenate([np.array(special + ties, dtype=np.float32),
                          (rng.standard_normal(2000) * np.exp(rng.uniform(-30, 30, 2000))).astype(np.float32)])
x = f32(conv_in)
out["conv.in"] = x
out["conv.bf16"] = x.to(torch.bfloat16)
out["conv.f16"] = x.to(torch.float16)
# and back: every bf16/f16 bit pattern's f32 value
allbits = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16)
out["conv.bf16_all"] = allbits.view(torch.bfloat16).to(torch.float32)
out["conv.f16_all"] = allbits.view(torch.float16).to(torch.float32)

# --- elementwise with broadcasting
a = f32(rng.standard_normal((3, 1, 5)))
b = f32(rng.standard_normal((4, 5)))
out["bin.a"] = a
out["bin.b"] = b
out["bin.add"] = a + b
out["bin.sub"] = a - b
out["bin.mul"] = a * b
out["bin.div"] = a / b
out["bin.maximum"] = torch.maximum(a, b)
out["bin.lt"] = (a < b).to(torch.uint8)

u = f32(rng.standard_normal(257) * 3)
out["un.x"] = u
out["un.exp"] = torch.exp(u)
out["un.silu"] = torch.nn.functional.silu(u)
out["un.gelu"] = torch.nn.functional.gelu(u)
out["un.sigmoid"] = torch.sigmoid(u)
out["un.tanh"] = torch.tanh(u)
out["un.rsqrt_abs"] = torch.rsqrt(u.abs())

# --- reductions and softmax over a non-last dim of a permuted (strided) view
r = f32(rng.standard_normal((4, 6, 7)))
out["red.x"] = r
out["red.sum1"] = r.sum(1)
out["red.mean2"] = r.mean(2)
out["red.max0"] = r.max(0).values
out["red.argmax2"] = r.argmax(2)
out["red.softmax1"] = torch.softmax(r, 1)
out["red.softmax_perm"] = torch.softmax(r.permute(2, 0, 1), 2).contiguous()

# --- matmul: plain, transposed operand, batched with broadcast, bf16 inputs
m1 = f32(rng.standard_normal((33, 65)))
m2 = f32(rng.standard_normal((65, 17)))
out["mm.a"] = m1
out["mm.b"] = m2
out["mm.ab"] = m1 @ m2
out["mm.bt"] = f32(rng.standard_normal((17, 65)))
out["mm.a_btT"] = m1 @ out["mm.bt"].T
ba = f32(rng.standard_normal((2, 3, 8, 9)))
bb = f32(rng.standard_normal((9, 5)))
out["mm.ba"] = ba
out["mm.bb"] = bb
out["mm.ba_bb"] = ba @ bb
ha, hb = m1.to(torch.bfloat16), m2.to(torch.bfloat16)
out["mm.bf16_a"] = ha
out["mm.bf16_b"] = hb
out["mm.bf16_ab_f32"] = ha.float() @ hb.float()   # exact products, f32 accumulate

# --- odd dtypes for the reader
out["int.i32"] = torch.tensor([[1, -2, 3], [2 ** 31 - 1, -2 ** 31, 0]], dtype=torch.int32)
out["int.i64"] = torch.tensor([2 ** 40 + 3, -7, 0], dtype=torch.int64)
out["int.u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
out["empty"] = torch.zeros((0, 3))
out["scalar"] = torch.tensor(2.5)

path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tensor_golden.safetensors")
save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"generator": "tests/gen/gen_tensor.py",
                                                                       "torch": torch.__version__})
print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")

#!/usr/bin/env python3
"""A 4-bit checkpoint in the transformers layout, written by bitsandbytes' own
QuantState.as_dict(packed=True) (what transformers saves for `*-bnb-4bit`
models), with bnb's dequantized values beside it.

    /opt/refenv/bin/python tests/gen/gen_nf4_layout.py
"""
import copy
import os

import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file

torch.manual_seed(5)
out = {}
cases = {
    "model.layers.0.self_attn.q_proj.weight": (torch.randn(64, 96) * 0.02, True),
    "model.layers.0.mlp.down_proj.weight": (torch.randn(48, 200) * 0.05, True),   # 9600 values, 150 blocks
    "model.layers.0.mlp.up_proj.weight": (torch.randn(33, 47), False),            # ragged, no double quant
}
for key, (w, dq) in cases.items():
    w = w.to(torch.bfloat16)
    packed, qs = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
    out[key] = packed
    for k, v in qs.as_dict(packed=True).items():
        out[key + "." + k] = v
    # bnb dequantizes into the weight's dtype (bf16); also ask it for fp32
    out["expected." + key] = F.dequantize_4bit(packed, qs)
    qs32 = copy.copy(qs)
    qs32.dtype = torch.float32
    out["expected_f32." + key] = F.dequantize_4bit(packed, qs32)
    out["source." + key] = w
out["model.norm.weight"] = torch.ones(64, dtype=torch.bfloat16)
path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nf4_layout.safetensors")
save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"format": "pt"})
print("wrote", os.path.normpath(path), os.path.getsize(path))

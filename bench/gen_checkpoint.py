#!/usr/bin/env python3
"""Writes a random bf16 checkpoint with the shape of a real model, shard by
shard (never the whole model in memory), for the loading and forward benchmarks.

    python bench/gen_checkpoint.py qwen2.5-7b /tmp/q7b
    python bench/gen_checkpoint.py qwen2.5-0.5b /tmp/q05b
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

SHAPES = {
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
}
name, out = sys.argv[1], sys.argv[2]
c = SHAPES[name]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def bf16(*shape, scale=0.02):
    # random bf16 bit patterns of normal(0, scale): f32 -> top 16 bits
    x = (rng.standard_normal(shape, dtype=np.float32) * scale).view(np.uint32)
    return (x >> 16).astype(np.uint16)


H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
hd = H // c["num_attention_heads"]
Q, KV = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
weight_map, shard, shards = {}, {}, []


def flush():
    global shard
    if not shard:
        return
    fname = f"model-{len(shards) + 1:05d}.safetensors"
    # safetensors.numpy has no bf16: write as uint16 then patch the dtype in the header
    path = os.path.join(out, fname)
    save_file(shard, path)
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = f.read(n).replace(b'"U16"', b'"BF16"')
        f.seek(8)
        f.write(hdr)
    for k in shard:
        weight_map[k] = fname
    shards.append(fname)
    shard = {}


shard["model.embed_tokens.weight"] = bf16(V, H)
shard["model.norm.weight"] = np.full(H, 0x3F80, dtype=np.uint16)   # 1.0 in bf16
if not c["tie_word_embeddings"]:
    shard["lm_head.weight"] = bf16(V, H)
flush()
for l in range(L):
    p = f"model.layers.{l}."
    shard[p + "input_layernorm.weight"] = np.full(H, 0x3F80, dtype=np.uint16)
    shard[p + "post_attention_layernorm.weight"] = np.full(H, 0x3F80, dtype=np.uint16)
    for n, (o, i) in {"q_proj": (Q, H), "k_proj": (KV, H), "v_proj": (KV, H), "o_proj": (H, Q)}.items():
        shard[p + f"self_attn.{n}.weight"] = bf16(o, i)
        if n != "o_proj":
            shard[p + f"self_attn.{n}.bias"] = bf16(o)
    for n, (o, i) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
        shard[p + f"mlp.{n}.weight"] = bf16(o, i)
    if (l + 1) % 4 == 0:
        flush()
flush()
cfg = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6,
           max_position_embeddings=32768, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645, **c)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
print("wrote", out, len(shards), "shards")

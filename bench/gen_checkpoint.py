#!/usr/bin/env python3
"""Writes a random bf16 checkpoint with the shape of a real model, shard by
shard (never the whole model in memory), for the loading and forward benchmarks.

    python bench/gen_checkpoint.py qwen2.5-7b /tmp/q7b
    python bench/gen_checkpoint.py qwen2.5-0.5b /tmp/q05b
    python bench/gen_checkpoint.py llama-3.1-8b /tmp/l8b
"""
import json
import os
import sys

import numpy as np

SHAPES = {
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1e6),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    # Llama-3.1-8B: no projection biases; its llama3 RoPE scaling changes no cost and is left out
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=5e5),
}
name, out = sys.argv[1], sys.argv[2]
LLAMA = name.startswith("llama")
c = SHAPES[name]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)
POOL, CHUNK = 1 << 24, 1 << 16
pools = {}


def bf16(*shape, scale=0.02):
    """random bf16 bit patterns of normal(0, scale). Drawing 7.6e9 normals takes minutes on
    one core, so a pool of 16M draws is made once per scale and each tensor is assembled
    from 64K-value chunks of it at random offsets, each chunk with a random sign flip and
    random low mantissa bits (a per-chunk XOR): distinct, plausible weights at memcpy speed."""
    if scale not in pools:
        x = (rng.standard_normal(POOL, dtype=np.float32) * scale).view(np.uint32)
        pools[scale] = (x >> 16).astype(np.uint16)      # f32 -> top 16 bits
    pool, n = pools[scale], int(np.prod(shape))
    chunks = -(-n // CHUNK)
    out = np.empty((chunks, CHUNK), dtype=np.uint16)
    for i, s in enumerate(rng.integers(0, POOL - CHUNK, size=chunks)):
        out[i] = pool[s:s + CHUNK]
    out ^= (rng.integers(0, 2, size=chunks, dtype=np.uint16) << 15 | rng.integers(0, 8, size=chunks, dtype=np.uint16))[:, None]
    return out.reshape(-1)[:n].reshape(shape)


H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
hd = H // c["num_attention_heads"]
Q, KV = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
weight_map, shard, shards = {}, {}, []


def save_bf16(tensors, path):
    """safetensors with BF16 entries, written by hand (numpy has no bf16): header, then the bytes"""
    header, off = {}, 0
    for k, a in tensors.items():
        dt = "BF16" if a.dtype == np.uint16 else "F32"
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for a in tensors.values():
            np.ascontiguousarray(a).tofile(f)


def flush():
    global shard
    if not shard:
        return
    fname = f"model-{len(shards) + 1:05d}.safetensors"
    save_bf16(shard, os.path.join(out, fname))
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
        if n != "o_proj" and not LLAMA:
            shard[p + f"self_attn.{n}.bias"] = bf16(o)
    for n, (o, i) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
        shard[p + f"mlp.{n}.weight"] = bf16(o, i)
    if (l + 1) % 4 == 0:
        flush()
flush()
if LLAMA:
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
               max_position_embeddings=131072, torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128001,
               attention_bias=False, mlp_bias=False, **c)
else:
    cfg = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6,
               max_position_embeddings=32768, torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645, **c)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
print("wrote", out, len(shards), "shards")

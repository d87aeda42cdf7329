#!/usr/bin/env python3
"""PyTorch CPU forward tokens/s on a checkpoint folder (the peer of bench/model_forward.lua).

    python bench/peer_forward.py DIR [seq_len] [threads]
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d = sys.argv[1]
T = int(sys.argv[2]) if len(sys.argv) > 2 else 128
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
ids = torch.randint(3, m.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    m(input_ids=ids)
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        m(input_ids=ids)
        best = min(best, time.perf_counter() - t0)
print(f"torch {torch.__version__} threads {torch.get_num_threads()}: {T / best:.1f} tokens/s ({T} tokens, best of 3)")

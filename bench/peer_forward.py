#!/usr/bin/env python3
"""PyTorch CPU forward tokens/s on a checkpoint folder (the peer of bench/model_forward.lua).

    python bench/peer_forward.py DIR [seq_len] [threads] [device]
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d = sys.argv[1]
T = int(sys.argv[2]) if len(sys.argv) > 2 else 128
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads())
dev = sys.argv[4] if len(sys.argv) > 4 else "cpu"
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval().to(dev)
ids = torch.randint(3, m.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0)).to(dev)
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
with torch.no_grad():
    m(input_ids=ids)
    best = 1e9
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        m(input_ids=ids)
        sync()
        best = min(best, time.perf_counter() - t0)
    print(f"torch {torch.__version__} {dev} threads {torch.get_num_threads()}: forward {T / best:.1f} tokens/s ({T} tokens, best of 3)")
    t0 = time.perf_counter()
    out = m.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    sync()
    dt = time.perf_counter() - t0
    print(f"torch generate: 32 new tokens after {T} in {dt:.2f} s ({32 / dt:.1f} tokens/s incl. the prompt)")

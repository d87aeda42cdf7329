#!/usr/bin/env python3
"""PyTorch CPU matmul GFLOP/s at the shapes of bench_matmul.c (the peer, same machine, same run)."""
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)
print("torch", torch.__version__, "threads", threads)
for M, K, N in [(512, 512, 512), (2048, 896, 896), (2048, 896, 4864), (1024, 4096, 1024)]:
    a, b = torch.randn(M, K), torch.randn(K, N)
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    print(f"{M}x{K}x{N:<10} {2 * M * K * N / best / 1e9:9.1f} GF")

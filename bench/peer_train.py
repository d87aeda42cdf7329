#!/usr/bin/env python3
"""The peer of bench/train_gpu.lua: QLoRA training steps with transformers + bitsandbytes NF4
(double quantization, bf16 compute) + PEFT LoRA on the GPU, the usual recipe.

    python3 bench/peer_train.py MODEL_DIR [SEQ=2048] [BATCH=1] [STEPS=10]

LoRA r=16, alpha=32, dropout 0 on q/k/v/o/gate/up/down; prepare_model_for_kbit_training with
gradient checkpointing; torch fused AdamW, lr 2e-4; random token ids (fixed seed), labels = ids.
Two warm-up steps, then STEPS timed steps between torch.cuda.synchronize() calls. Prints one
machine-readable line

    peer_train shape=DIR_BASENAME seq=S batch=B tokens_per_s=X peak_alloc_gib=Y peak_reserved_gib=Z step_ms=W loss=L

(peaks from torch.cuda.max_memory_*, since the process started: load + training), then the
versions. Output is flushed line by line (no need for PYTHONUNBUFFERED).
"""
import functools
import os
import sys
import time

print = functools.partial(print, flush=True)  # noqa: A001 — every line reaches the log at once

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peer_common import qlora_peft_model, timed_steps  # noqa: E402

if len(sys.argv) < 2:
    sys.exit(__doc__)
model_dir = sys.argv[1]
S = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
B = int(sys.argv[3]) if len(sys.argv) > 3 else 1
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
shape = os.path.basename(os.path.normpath(model_dir))
assert torch.cuda.is_available(), "peer_train: needs a CUDA GPU"

t0 = time.perf_counter()
model = qlora_peft_model(model_dir)
torch.cuda.synchronize()
load_s = time.perf_counter() - t0
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
print(f"peer_train load {load_s:.1f} s; trainable {sum(p.numel() for p in params)} params "
      f"({len(params)} tensors, {params[0].dtype}); gradient checkpointing "
      f"{getattr(model.base_model.model, 'is_gradient_checkpointing', '?')}")

V = model.config.vocab_size
ids = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(0)).cuda()

timed_steps("peer_train", model, params, opt, ids, steps, shape)
import bitsandbytes  # noqa: E402 — already loaded by transformers; imported here for its version

print(f"peer_train versions: torch {torch.__version__} (cuda {torch.version.cuda}) transformers {transformers.__version__} "
      f"peft {peft.__version__} bitsandbytes {bitsandbytes.__version__} gpu {torch.cuda.get_device_name(0)}")

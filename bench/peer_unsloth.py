#!/usr/bin/env python3
"""Unsloth as the second peer of bench/train_gpu.lua: the same checkpoint, seq, batch and steps,
set up as ../shared/notes/GPU.md measured it (Unsloth 2026.10.9 on transformers 5.17 / torch 2.11):
FastLanguageModel.from_pretrained(dir, load_in_4bit=True, dtype=bf16), get_peft_model(r=16,
lora_alpha=32, lora_dropout=0, all seven projections, use_gradient_checkpointing="unsloth"),
torch fused AdamW lr 2e-4, random token ids (fixed seed) as inputs and labels, grad-norm
clipping at 1.0; two warm-ups (the first compiles), then STEPS timed steps.

    python3 bench/peer_unsloth.py MODEL_DIR [SEQ=2048] [BATCH=1] [STEPS=5] [CHECKPOINTING=unsloth]

Prints one line in bench/peer_train.py's format, with shape suffixed "-unsloth":

    peer_train shape=DIR_BASENAME seq=S batch=B tokens_per_s=X peak_alloc_gib=Y peak_reserved_gib=Z step_ms=W loss=L

Unsloth is not on the GPU machine: bench/train_gpu.sh unpacks .carry/unsloth/site.tar.xz (wheels
of unsloth, unsloth_zoo and what they need beyond the machine's own packages, unsloth's web
studio left out) into /tmp/unsloth-site and puts it on PYTHONPATH.
"""
import functools
import os
import sys
import time

print = functools.partial(print, flush=True)  # noqa: A001
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import unsloth  # noqa: E402,F401 — before transformers, as Unsloth requires
from unsloth import FastLanguageModel  # noqa: E402
import torch  # noqa: E402
from peer_common import TARGETS, timed_steps  # noqa: E402

if len(sys.argv) < 2:
    sys.exit(__doc__)
model_dir = sys.argv[1]
S = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
B = int(sys.argv[3]) if len(sys.argv) > 3 else 1
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
ckpt = sys.argv[5] if len(sys.argv) > 5 else "unsloth"
shape = os.path.basename(os.path.normpath(model_dir)) + "-unsloth"

t0 = time.perf_counter()
model, _ = FastLanguageModel.from_pretrained(model_dir, max_seq_length=S, dtype=torch.bfloat16, load_in_4bit=True)
model = FastLanguageModel.get_peft_model(
    model, r=16, lora_alpha=32, lora_dropout=0, bias="none",
    target_modules=TARGETS,
    use_gradient_checkpointing=ckpt if ckpt != "true" else True, random_state=0)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
print(f"peer_unsloth load {time.perf_counter() - t0:.1f} s; trainable {sum(p.numel() for p in params)} params; "
      f"checkpointing {ckpt}")
V = model.config.vocab_size
ids = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(0)).cuda()

timed_steps("peer_unsloth", model, params, opt, ids, steps, shape)
print(f"peer_unsloth versions: unsloth {unsloth.__version__} torch {torch.__version__}")

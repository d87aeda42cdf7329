#!/usr/bin/env python3
"""The peer side of bench/loss_curve.sh: QLoRA training on fixed token rows with transformers +
bitsandbytes NF4 (double quantization, bf16 compute) + PEFT, set up as bench/peer_train.py does.

    python3 bench/loss_curve_peer.py MODEL_DIR ROWS.safetensors ADAPTER0_DIR STEPS LR

Saves the freshly initialised adapter (PEFT's own init, seed 0) to ADAPTER0_DIR before the first
step, so qlora starts from the same numbers; then one row per step (batch 1), loss = mean
cross-entropy of next-token prediction over the row, grad-norm clipping at 1.0, torch AdamW
(betas 0.9/0.999, eps 1e-8, weight decay 0). Prints "loss_curve peer STEP LOSS" lines.
"""
import functools
import json
import struct
import sys

print = functools.partial(print, flush=True)  # noqa: A001

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peer_common import qlora_peft_model  # noqa: E402

model_dir, rows_path, adapter0, steps, lr = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
raw = open(rows_path, "rb").read()
hlen = struct.unpack("<Q", raw[:8])[0]
meta = json.loads(raw[8:8 + hlen])["ids"]
dt = {"I64": np.int64, "I32": np.int32}[meta["dtype"]]
a, b = meta["data_offsets"]
rows = np.frombuffer(raw[8 + hlen + a:8 + hlen + b], dtype=dt).reshape(meta["shape"]).astype(np.int64)

torch.manual_seed(0)
model = qlora_peft_model(model_dir)
model.save_pretrained(adapter0)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
for k in range(steps):
    ids = torch.from_numpy(rows[k % rows.shape[0]][None, :]).cuda()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    print(f"loss_curve peer {k + 1} {loss.item():.6f}")

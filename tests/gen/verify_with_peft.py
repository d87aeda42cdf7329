#!/usr/bin/env python3
"""Checks qlora's outputs with the real peers (run by hand; needs torch, transformers, peft):
  1. an adapter trained and saved by qlora loads in PEFT, and PEFT's logits equal qlora's;
  2. the model qlora merged loads in transformers, and its logits equal qlora's on the same folder.

    /opt/refenv/bin/python tests/gen/verify_with_peft.py bin/qlora tests/fixtures/models/tiny-llama
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

qlora, base = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp()
ids = [[5, 17, 300, 42, 7, 99, 123, 256, 11, 3, 77, 401]]
lua = f"""
local m = assert(qlora.model.load({json.dumps(base)}))
local lo = qlora.lora.new(m, {{r = 4, alpha = 8, seed = 3}})
local ids = {{{", ".join(str(i) for i in ids[0])}}}
for step = 1, 5 do   -- a few real steps so B is not zero
  lo:zero_grad(); lo:forward_backward(ids, ids); lo:adamw{{lr = 1e-2, step = step}}
end
assert(lo:save({json.dumps(work + "/adapter")}))
qlora.tensor.save({json.dumps(work + "/ours.safetensors")}, {{logits = lo:logits(ids)}})
assert(lo:merge({json.dumps(base)}, {json.dumps(work + "/merged")}))
local mm = assert(qlora.model.load({json.dumps(work + "/merged")}))
qlora.tensor.save({json.dumps(work + "/ours_merged.safetensors")}, {{logits = mm:logits(ids)}})
"""
subprocess.run([qlora, "-e", lua], check=True)
x = torch.tensor(ids)
ours = load_file(work + "/ours.safetensors")["logits"]
ours_merged = load_file(work + "/ours_merged.safetensors")["logits"]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
peft = PeftModel.from_pretrained(model, work + "/adapter").eval()
with torch.no_grad():
    p = peft(input_ids=x).logits[0]
rel = float((p - ours).abs().max() / p.abs().max())
print(f"PEFT loaded qlora's adapter: max relative logit difference {rel:.2e}")
merged = AutoModelForCausalLM.from_pretrained(work + "/merged", dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    t = merged(input_ids=x).logits[0]
rel2 = float((t - ours_merged).abs().max() / t.abs().max())
print(f"transformers loaded qlora's merged model: max relative logit difference {rel2:.2e}")
ok = rel <= 1e-4 and rel2 <= 1e-4
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)

#!/usr/bin/env python3
"""PEFT LoRA golden values for the CPU training reference, on the tiny models of
gen_models.py (run that first). For each model, into tests/fixtures/models/<name>/:

  peft-adapter/           what PEFT's save_pretrained writes (adapter_config.json +
                          adapter_model.safetensors): r=4, alpha=8, all 7 projections,
                          PEFT's init for A, B drawn at random so every gradient is non-zero
  train_golden.safetensors
    batch.ids/labels      the batch (2 x 24, -100 holes)
    loss                  mean token loss with the adapter
    grad.<key>            d loss / d every lora_A and lora_B (PEFT key names)
    packed.*              one row of three documents: loss and gradients
    traj.loss             20 steps of torch.optim.AdamW (lr 2e-3, wd 0.01, betas .9/.999, eps 1e-8),
                          linear warmup 3 + cosine to 0 over 20 (transformers' scheduler),
                          grad-norm clipping at 1.0 (torch.nn.utils.clip_grad_norm_)
    traj.gnorm            the pre-clip gradient norm at each step
    final.<key>           adapter weights after the 20 steps
    merged.logits         logits of base + adapter (PEFT forward, fp32, unmerged)
    merged.<weight key>   PEFT's merge_and_unload weights, in bf16 as save_pretrained writes them
    merged.logits_bf16    transformers' logits on that merged bf16 checkpoint

    /opt/refenv/bin/python tests/gen/gen_train.py
"""
import json
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_key(name):
    # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" -> PEFT's on-disk key
    return name.replace(".default", "")


def run(name):
    d = os.path.join(ROOT, name)
    g = load_file(os.path.join(d, "golden.safetensors"))
    torch.manual_seed(99)
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    adir = os.path.join(d, "peft-adapter")
    shutil.rmtree(adir, ignore_errors=True)
    model.save_pretrained(adir)
    out = {}
    ids, labels = g["ids"], g["labels"]
    out["batch.ids"], out["batch.labels"] = ids, labels
    model.train()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for n, p in params.items():
        out["grad." + peft_key(n)] = p.grad.detach().clone()
    model.zero_grad()
    # packed row: documents run separately, their token losses summed over the row's count
    row, lens, plabels = g["packed.ids"], g["packed.doc_lens"].tolist(), g["packed.labels"]
    total, count, s = 0.0, 0, 0
    for n in lens:
        lab = plabels[:, s:s + n]
        logits = model(input_ids=row[:, s:s + n]).logits
        sl, st = logits[0, :-1], lab[0, 1:]
        total = total + torch.nn.functional.cross_entropy(sl, st, ignore_index=-100, reduction="sum")
        count += int((st != -100).sum())
        s += n
    ploss = total / count
    ploss.backward()
    out["packed.loss"] = ploss.detach().reshape(1)
    for n, p in params.items():
        out["packed.grad." + peft_key(n)] = p.grad.detach().clone()
    model.zero_grad()
    # merged logits: the PEFT model's forward with the adapter as saved
    with torch.no_grad():
        model.eval()
        out["merged.logits"] = model(input_ids=ids).logits.float()
        model.train()
    # merged weights as PEFT computes them (fp32 merge_and_unload), stored in bf16 as
    # save_pretrained writes a bf16 model, and transformers' logits on that bf16 checkpoint
    import copy
    merged = copy.deepcopy(model).merge_and_unload()
    msd = merged.state_dict()
    for n, p in params.items():
        if "lora_A" in n:
            wkey = n.replace("base_model.model.", "", 1).replace(".lora_A.default.weight", ".weight")
            out["merged." + wkey] = msd[wkey].to(torch.bfloat16)
    mdir = os.path.join(d, "_merged_tmp")
    merged.to(torch.bfloat16).save_pretrained(mdir)
    mref = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        out["merged.logits_bf16"] = mref(input_ids=ids).logits.float()
    shutil.rmtree(mdir)
    # 20 AdamW steps with warmup + cosine and clipping
    opt = torch.optim.AdamW(list(params.values()), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20)
    losses, norms = [], []
    for step in range(20):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)))
        opt.step()
        sched.step()
        losses.append(float(loss))
    out["traj.loss"] = torch.tensor(losses)
    out["traj.gnorm"] = torch.tensor(norms)
    for n, p in params.items():
        out["final." + peft_key(n)] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "train_golden.safetensors"))
    print(name, "loss", float(out["loss"]), "traj", [round(x, 4) for x in losses[:3]], "...", round(losses[-1], 4))


for name in ["tiny-qwen2", "tiny-llama"]:
    run(name)

#!/usr/bin/env python3
"""Tiny random Qwen2 and Llama checkpoints and transformers' outputs on them.

For each model, tests/fixtures/models/<name>/ gets what save_pretrained
writes (config.json, model.safetensors in bf16, generation_config.json) and
golden.safetensors with transformers' results, computed in fp32 on the CPU:
  ids [2, 24] -> logits, loss (labels with -100 holes)
  packed      -> one row of three documents (position ids restart, no
                 attention across documents): logits from running each document
                 alone, and the loss of the packed row
  greedy      -> generate(do_sample=False) 32 new tokens from an 8-token prompt
  nf4         -> logits of transformers + bitsandbytes 4-bit (nf4, double quant,
                 fp32 compute) loaded from the same checkpoint

    /opt/refenv/bin/python tests/gen/gen_models.py [NAME ...]
"""
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models")
VOCAB = 512

configs = {
    "tiny-qwen2": Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2),
    "tiny-llama": LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        bos_token_id=1, eos_token_id=2),
    # Mistral with a sliding window shorter than the test sequences: token i sees i-5..i
    "tiny-mistral": MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=6,
        bos_token_id=1, eos_token_id=2),
}


def golden(name, cfg):
    torch.manual_seed(1234)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():   # larger random weights so the test sees real signal
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif "norm" in n:
                p.uniform_(0.6, 1.4)
            else:
                p.normal_(0, 0.05)
    model = model.to(torch.bfloat16)
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    # reload the bf16 checkpoint in fp32: exactly what qlora computes from
    ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    g = {}
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (2, 24), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 10:13] = -100
    with torch.no_grad():
        out = ref(input_ids=ids, labels=labels)
    g["ids"] = ids
    g["labels"] = labels
    g["logits"] = out.logits.float()
    g["loss"] = out.loss.reshape(1).float()
    # packed: three documents in one row
    lens = [7, 10, 7]
    row = torch.randint(3, VOCAB, (1, sum(lens)), generator=gen)
    pos, parts, s = [], [], 0
    with torch.no_grad():
        for n in lens:
            pos += list(range(n))
            parts.append(ref(input_ids=row[:, s:s + n]).logits.float())
            s += n
    plog = torch.cat(parts, 1)
    plabels = row.clone()
    # the first token of each document is never a target of the previous one
    s = 0
    for n in lens:
        plabels[0, s] = -100
        s += n
    shift_logits, shift_labels = plog[0, :-1], plabels[0, 1:]
    ploss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    g["packed.ids"] = row
    g["packed.position_ids"] = torch.tensor([pos])
    g["packed.doc_lens"] = torch.tensor(lens)
    g["packed.labels"] = plabels
    g["packed.logits"] = plog
    g["packed.loss"] = ploss.reshape(1)
    # greedy generation
    prompt = torch.randint(3, VOCAB, (1, 8), generator=gen)
    with torch.no_grad():
        seq = ref.generate(prompt, do_sample=False, max_new_tokens=32, min_new_tokens=32,
                           eos_token_id=None, pad_token_id=0)
    g["greedy.prompt"] = prompt
    g["greedy.tokens"] = seq[:, 8:]
    # transformers + bitsandbytes 4-bit on the same checkpoint
    try:
        bnb = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True,
                                              bnb_4bit_compute_dtype=torch.float32)
        q = AutoModelForCausalLM.from_pretrained(d, quantization_config=bnb, device_map="cpu",
                                                 torch_dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            g["nf4.logits"] = q(input_ids=ids).logits.float()
        print(name, "nf4 golden from transformers + bitsandbytes", __import__("bitsandbytes").__version__)
    except Exception as e:  # noqa: BLE001 - recorded, not hidden
        print(name, "nf4 golden NOT produced:", repr(e)[:300])
    save_file({k: v.contiguous() for k, v in g.items()}, os.path.join(d, "golden.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print(name, "written:", sorted(os.listdir(d)))


import sys
for name, cfg in configs.items():
    if len(sys.argv) > 1 and name not in sys.argv[1:]:
        continue
    golden(name, cfg)

#!/usr/bin/env python3
"""A 512-id tokenizer for the tiny fixture models (tests/fixtures/models/*, vocab_size 512),
cut from the Qwen2.5 tokenizer fixture: its 256 byte tokens, its first 253 merges (ids
256..508) and <|endoftext|>, <|im_start|>, <|im_end|> as ids 509..511, with Qwen2.5's
pre-tokenizer, decoder and chat template. Writes tests/fixtures/tokenizers/tiny512/. Plain
json, no other package; run by hand:

    python3 tests/gen/gen_tiny_tokenizer.py
"""
import json
import os

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SRC = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "qwen2.5")
DST = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "tiny512")
N_MERGES = 253
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

tok = json.load(open(os.path.join(SRC, "tokenizer.json"), encoding="utf-8"))
vocab = tok["model"]["vocab"]
inv = {i: s for s, i in vocab.items()}
merges = tok["model"]["merges"][:N_MERGES]
new_vocab = {inv[i]: i for i in range(256)}
for k, m in enumerate(merges):
    a, b = m.split(" ") if isinstance(m, str) else m
    assert a in new_vocab and b in new_vocab, m
    assert vocab[a + b] == 256 + k, (m, vocab[a + b])
    new_vocab[a + b] = 256 + k
base = len(new_vocab)
assert base == 256 + N_MERGES == 512 - len(SPECIAL)
added = []
for k, content in enumerate(SPECIAL):
    (t,) = [x for x in tok["added_tokens"] if x["content"] == content]
    t = dict(t, id=base + k)
    added.append(t)
tok["added_tokens"] = added
tok["model"]["vocab"] = new_vocab
tok["model"]["merges"] = merges
os.makedirs(DST, exist_ok=True)
with open(os.path.join(DST, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=1)
cfg = json.load(open(os.path.join(SRC, "tokenizer_config.json"), encoding="utf-8"))
cfg["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k not in ("id",)} for t in added}
cfg["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
with open(os.path.join(DST, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, ensure_ascii=False, indent=1)
print("wrote", DST, "(%d ids)" % (base + len(SPECIAL)))

#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py — writes the seed corpora tests/fuzz/corpus/<target>/ from
tests/fixtures (small files only: the whole corpus stays under a few hundred KB).
Rerun after a fixture's format changes; the output is committed. Regression seeds
(inputs that once crashed a target) live beside these as corpus/<target>/regress-*
and are kept by this script."""
import json, os, struct, shutil, glob

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
fx = os.path.join(root, "tests", "fixtures")
out = os.path.join(root, "tests", "fuzz", "corpus")

def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def read(*p):
    with open(os.path.join(fx, *p), "rb") as f:
        return f.read()

for t in glob.glob(os.path.join(out, "*")):   # keep regress-* seeds
    for f in glob.glob(os.path.join(t, "*")):
        if not os.path.basename(f).startswith("regress-"):
            os.remove(f)

# ---- safetensors: hand-made small files covering dtypes, metadata, empty tensors
def st(entries, meta=None, pad=b""):
    hdr, data, off = {}, b"", 0
    for name, dtype, shape, raw in entries:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw; off += len(raw)
    if meta is not None:
        hdr["__metadata__"] = meta
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data + pad
put("safetensors", "f32", st([("w", "F32", [2, 3], struct.pack("<6f", *range(6)))]))
put("safetensors", "mixed", st([("a.weight", "BF16", [4], b"\x80\x3f" * 4), ("b", "U8", [3], b"abc"),
                                 ("c", "F16", [1, 1], b"\x00\x3c"), ("d", "I64", [1], b"\x01" + b"\0" * 7),
                                 ("e", "F64", [], b"\0" * 8), ("z", "F32", [0, 4], b"")],
                                {"format": "pt", "note": "x"}))
put("safetensors", "meta-only", st([], {"format": "pt"}))
put("safetensors", "empty-header", struct.pack("<Q", 2) + b"{}")
ad = read("models", "tiny-qwen2", "peft-adapter", "adapter_model.safetensors")
n = struct.unpack("<Q", ad[:8])[0]
put("safetensors", "peft-header", ad[:8 + n] + b"\0" * 64)   # header of a real adapter, data cut short

# ---- json / config
for m in ("tiny-qwen2", "tiny-llama", "tiny-mistral"):
    put("config", m, read("models", m, "config.json"))
    put("json", m + "-config", read("models", m, "config.json"))
put("config", "nested-text-config", json.dumps({"model_type": "qwen2", "text_config": json.loads(read("models", "tiny-qwen2", "config.json"))}))
put("json", "adapter_config", read("models", "tiny-qwen2", "peft-adapter", "adapter_config.json"))
put("json", "values", '[null,true,false,0,-0,1e308,-1.5e-300,"\\u00e9\\ud83d\\ude00\\u0000",{"a":{"b":[[],{}]}}]')
put("json", "gguf-expected", read("gguf", "expected.json")[:20000])

# ---- tokenizer.json (+ 0xff + tokenizer_config.json)
def shrink(tok, n):
    m = tok["model"]
    if isinstance(m.get("vocab"), dict):
        keep = {k: v for k, v in m["vocab"].items() if v < n}
        m["vocab"] = keep
        merges = []
        for mg in m.get("merges", []):
            a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
            if a in keep and b in keep and (a + b) in keep:
                merges.append(mg)
        m["merges"] = merges
    tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < n or t["id"] > 100000][:20]
    return tok
for name in ("tok-qwen2", "tok-llama3"):
    put("tokenizer", name, read("gguf", name, "tokenizer.json") + b"\xff" + read("gguf", name, "tokenizer_config.json"))
for name in ("mistral-7b", "gpt2"):
    tok = shrink(json.loads(read("tokenizers", name, "tokenizer.json")), 400)
    cfgp = os.path.join(fx, "tokenizers", name, "tokenizer_config.json")
    cfg = open(cfgp, "rb").read() if os.path.exists(cfgp) else b""
    put("tokenizer", name + "-small", json.dumps(tok).encode() + (b"\xff" + cfg if cfg else b""))

# ---- chat: flag byte, tokenizer_config.json (chat_template and special tokens), 0xff, messages
msgs = [("system", "You are terse."), ("user", "Hi there"), ("assistant", "Hello.", "thinking about it"), ("user", "Two?")]
def enc(ms):
    return b"\xfe".join(b"\x01".join(x.encode() for x in m) for m in ms)
for name in ("qwen2.5", "llama3.1", "mistral-7b", "qwen3"):
    c = json.loads(read("tokenizers", name, "tokenizer_config.json"))
    small = {k: c[k] for k in ("chat_template", "bos_token", "eos_token", "pad_token", "add_bos_token") if k in c}
    for flag in (0, 3):
        put("chat", "%s-%d" % (name, flag), bytes([flag]) + json.dumps(small).encode() + b"\xff" + enc(msgs))
put("chat", "gpt2-none", b"\x01{}\xff" + enc(msgs[:2]))

# ---- jsonl records
put("jsonl", "records", "\n".join([
    json.dumps({"text": "The quick brown fox."}),
    json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
    json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
    json.dumps({"text": "é \u2028 \\ \"", "meta": {"source": "a.md", "pages": [1, 2], "h": None}}),
    '{"messages":[1,2]}', '{"text": 12}', '[]', '{"step": 3, "loss": 1.5e-3, "lr": 2e-4}']) + "\n")
put("jsonl", "trainer_state", json.dumps({"step": 2, "epoch": 0, "losses": [2.5, 2.25], "rng": [1, 2, 3, 4],
                                          "settings": {"lr": 0.0002, "r": 8}}, indent=2).replace("\n", " ") + "\n")

# ---- pdf: the small fixtures
for name in ("bad-notpdf.pdf", "bad-truncated.pdf", "bad-unmapped.pdf", "footnote-long.ms.pdf", "guide.ms.pdf"):
    put("pdf", name, read("pdf", name))

total = sum(os.path.getsize(f) for f in glob.glob(os.path.join(out, "*", "*")))
print("seed corpora in tests/fuzz/corpus: %d files, %d KB" % (len(glob.glob(os.path.join(out, "*", "*"))), total // 1024))

#!/usr/bin/env python3
"""gen_gguf.py — golden values for the GGUF export, from llama.cpp's own `gguf` package.

    pip install gguf numpy        # reference tooling only; qlora never needs Python
    python3 tests/gen/gen_gguf.py [--qlora bin/qlora]

1. Writes two small tokenizers that fit the tiny fixture models' 512-token vocabulary,
   cut from the committed Qwen2.5 and Llama-3.1 tokenizers (first ids, the merges among
   them, a few special tokens moved to the top ids, the real chat templates):
   tests/fixtures/gguf/tok-qwen2/ and tok-llama3/.
2. Exports tiny-qwen2 and tiny-llama at f16, bf16 and q8_0 with qlora's recipe, reads each
   file with gguf-py's GGUFReader, and checks every key, type and value against what the
   converter's rules give (gguf.SpecialVocab for special ids, flags, merges and the chat
   template; the converter's token typing; its metadata keys), and every tensor's name,
   type, shape and bytes against numpy: the Q/K row permutation of Llama, f16/bf16 casts,
   and gguf.quants.quantize(..., Q8_0) byte for byte.
3. Writes tests/fixtures/gguf/expected.json: per export, every key with its gguf-py type
   and value (long arrays as count + FNV-1a-64 of their elements) and per tensor its type,
   shape and FNV-1a-64 of the bytes gguf-py's quantizer/casts produce. tests/lua/test_gguf.lua
   compares fresh exports against it.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile
import numpy as np
import gguf
from gguf import GGUFReader, GGUFValueType, GGMLQuantizationType as QT

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FX, "gguf")


def fnv(b: bytes) -> str:
    h = 0xcbf29ce484222325
    for c in b:
        h ^= c
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def fnv_np(a: np.ndarray) -> str:
    # vectorised FNV-1a over bytes is awkward; tensors here are small (<1 MB)
    return fnv(a.tobytes())


# ------------------------------------------------------------------ small tokenizers

def cut_tokenizer(src, dst, n_vocab, keep_added):
    tj = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
    tc = json.load(open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8"))
    n_added = len(keep_added)
    n_normal = n_vocab - n_added
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < n_normal}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(m)
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = merges
    old = {a["content"]: a for a in tj["added_tokens"]}
    added = []
    for k, content in enumerate(keep_added):
        a = dict(old[content])
        a["id"] = n_normal + k
        added.append(a)
    tj["added_tokens"] = added
    # TemplateProcessing keeps its token names; its ids follow the new numbering
    pp = tj.get("post_processor")
    if pp:
        for p in pp.get("processors", [pp]):
            for v in (p.get("special_tokens") or {}).values():
                v["ids"] = [n_normal + keep_added.index(t) for t in v["tokens"]]
    if "added_tokens_decoder" in tc:
        tc["added_tokens_decoder"] = {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added}
    if "additional_special_tokens" in tc:
        tc["additional_special_tokens"] = [t for t in tc["additional_special_tokens"] if t in keep_added]
    os.makedirs(dst, exist_ok=True)
    json.dump(tj, open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
    json.dump(tc, open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)


# ------------------------------------------------------------------ expected values (converter rules)

def load_st(path):
    """safetensors -> {name: float32 array} (bf16 widened exactly)."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        buf = np.frombuffer(data[b:e], dtype=np.uint8)
        if v["dtype"] == "BF16":
            a = (buf.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F32":
            a = buf.view(np.float32)
        elif v["dtype"] == "F16":
            a = buf.view(np.float16).astype(np.float32)
        else:
            raise SystemExit(f"{path}: {k}: dtype {v['dtype']}")
        out[k] = a.reshape(v["shape"])
    return out


def permute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GG = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
      "lm_head.weight": "output.weight"}
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    if hf in GG:
        return GG[hf]
    p = hf.split(".")
    mod, suffix = ".".join(p[3:-1]), p[-1]
    return f"blk.{p[2]}.{LAYER[mod]}.{suffix}"


def expected_tensors(model_dir, cfg, qtype):
    st = load_st(os.path.join(model_dir, "model.safetensors"))
    arch_llama = cfg["model_type"] in ("llama", "mistral")
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads")
    out = {}
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if arch_llama and rp.get("rope_type") == "llama3":
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // nh
        base = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
        freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factor, lo, hi = rp.get("factor", 8.0), rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        # qlora reads the original context where transformers does (the converter: top level, default 8192)
        old = rp.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings", 8192))
        f = []
        for fr in freqs:
            wl = 2 * np.pi / fr
            if wl < old / hi:
                f.append(1)
            elif wl > old / lo:
                f.append(factor)
            else:
                s = (old / wl - lo) / (hi - lo)
                f.append(1 / ((1 - s) / factor + s))
        out["rope_freqs.weight"] = (QT.F32, np.array(f, dtype=np.float32))
    for hf, a in st.items():
        name = gguf_name(hf)
        if arch_llama and (hf.endswith("q_proj.weight") or hf.endswith("q_proj.bias")):
            a = permute(a, nh, nh)
        if arch_llama and (hf.endswith("k_proj.weight") or hf.endswith("k_proj.bias")):
            a = permute(a, nh, nkv)
        if a.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
            t = QT.F32
        else:
            t = {"f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}[qtype]
        try:
            q = gguf.quants.quantize(a, t)
        except gguf.QuantError:
            t, q = QT.F16, gguf.quants.quantize(a, QT.F16)
        out[name] = (t, q)
    return out


def kv_value(f):
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        et = f.types[1] if len(f.types) > 1 else None
        vals = [f.contents(i) for i in range(len(f.data))]
        return "arr:" + et.name, vals
    return t.name, f.contents()


def summarize_value(tname, v):
    if isinstance(v, list) and len(v) > 16:
        if tname == "arr:STRING":
            blob = b"".join(len(s.encode()).to_bytes(8, "little") + s.encode() for s in v)
        elif tname == "arr:FLOAT32":
            blob = np.array(v, dtype=np.float32).tobytes()
        else:
            blob = np.array(v, dtype=np.int64).tobytes()
        return {"count": len(v), "fnv": fnv(blob), "first": v[:4]}
    return v


def check_export(path, model_dir, tok_dir, qtype, cfg):
    r = GGUFReader(path)
    keys = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        tname, v = kv_value(f)
        keys[name] = (tname, v)
    arch = "qwen2" if cfg["model_type"] == "qwen2" else "llama"
    A = lambda k: f"{arch}.{k}"
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rp = cfg.get("rope_parameters") or {}
    want = {
        "general.architecture": ("STRING", arch),
        "general.file_type": ("UINT32", {"f16": 1, "bf16": 32, "q8_0": 7}[qtype]),
        "general.quantization_version": ("UINT32", 2),
        A("block_count"): ("UINT32", cfg["num_hidden_layers"]),
        A("context_length"): ("UINT32", cfg["max_position_embeddings"]),
        A("embedding_length"): ("UINT32", cfg["hidden_size"]),
        A("feed_forward_length"): ("UINT32", cfg["intermediate_size"]),
        A("attention.head_count"): ("UINT32", cfg["num_attention_heads"]),
        A("attention.head_count_kv"): ("UINT32", cfg["num_key_value_heads"]),
        A("rope.freq_base"): ("FLOAT32", float(np.float32(rp.get("rope_theta", cfg.get("rope_theta", 10000.0))))),
        A("attention.layer_norm_rms_epsilon"): ("FLOAT32", float(np.float32(cfg["rms_norm_eps"]))),
    }
    if arch == "llama":
        want[A("vocab_size")] = ("UINT32", cfg["vocab_size"])
        want[A("rope.dimension_count")] = ("UINT32", head_dim)
    if "head_dim" in cfg:
        want[A("attention.key_length")] = ("UINT32", head_dim)
        want[A("attention.value_length")] = ("UINT32", head_dim)
    # tokenizer, by the converter's rules (_set_vocab_gpt2 + gguf.SpecialVocab on the merged folder)
    merged = tempfile.mkdtemp()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), merged)
    shutil.copy(os.path.join(model_dir, "config.json"), merged)
    sv = gguf.SpecialVocab(merged, load_merges=True)
    tj = json.load(open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8"))
    rev = {i: t for t, i in tj["model"]["vocab"].items()}
    added = {a["id"]: a for a in tj["added_tokens"]}
    for a in added.values():
        rev[a["id"]] = a["content"]
    toks, types = [], []
    for i in range(cfg["vocab_size"]):
        if i not in rev:
            toks.append(f"[PAD{i}]"); types.append(5); continue
        t = rev[i]
        if i in added:
            special = added[i]["special"] or (t.startswith("<|") and t.endswith("|>"))
            types.append(3 if special else 4)
        else:
            types.append(1)
        toks.append(t)
    want["tokenizer.ggml.model"] = ("STRING", "gpt2")
    want["tokenizer.ggml.tokens"] = ("arr:STRING", toks)
    want["tokenizer.ggml.token_type"] = ("arr:INT32", types)
    want["tokenizer.ggml.merges"] = ("arr:STRING", sv.merges)
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
             "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id", "eot": "eot_token_id"}
    for typ, tid in sv.special_token_ids.items():
        want["tokenizer.ggml." + names[typ]] = ("UINT32", tid)
    for typ, v in sv.add_special_token.items():
        want[f"tokenizer.ggml.add_{typ}_token"] = ("BOOL", v)
    if sv.chat_template:
        want["tokenizer.chat_template"] = ("STRING", sv.chat_template)
    shutil.rmtree(merged)
    for k, (t, v) in want.items():
        if k not in keys:
            raise SystemExit(f"{path}: key {k} missing")
        gt, gv = keys[k]
        if gt != t or gv != v:
            raise SystemExit(f"{path}: key {k}: got {gt} {str(gv)[:200]}, want {t} {str(v)[:200]}")
    # tensors
    exp = expected_tensors(model_dir, cfg, qtype)
    got = {t.name: t for t in r.tensors}
    if set(got) != set(exp):
        raise SystemExit(f"{path}: tensors {sorted(set(got) ^ set(exp))} differ")
    tensors = {}
    for name, (t, q) in exp.items():
        g = got[name]
        if g.tensor_type != t:
            raise SystemExit(f"{path}: {name}: type {g.tensor_type.name}, want {t.name}")
        shape = [int(x) for x in reversed(g.shape.tolist())]
        gb = np.asarray(g.data).tobytes()
        if gb != q.tobytes():
            raise SystemExit(f"{path}: {name}: bytes differ from gguf-py's {t.name}")
        tensors[name] = {"type": t.name, "shape": shape, "fnv": fnv(q.tobytes())}
    return {"keys": {k: {"type": t, "value": summarize_value(t, v)} for k, (t, v) in sorted(keys.items())},
            "tensors": tensors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=os.path.join(ROOT, "bin", "qlora"))
    a = ap.parse_args()
    toks = {
        "qwen2": ("qwen2.5", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        "llama3": ("llama3.1", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                "<|eot_id|>", "<|reserved_special_token_0|>"]),
    }
    for name, (src, keep) in toks.items():
        cut_tokenizer(os.path.join(FX, "tokenizers", src), os.path.join(OUT, "tok-" + name), 512, keep)
    summary = {}
    tmp = tempfile.mkdtemp()
    for model, tok in (("tiny-qwen2", "qwen2"), ("tiny-llama", "llama3")):
        mdir = os.path.join(FX, "models", model)
        tdir = os.path.join(OUT, "tok-" + tok)
        cfg = json.load(open(os.path.join(mdir, "config.json")))
        for qtype in ("f16", "bf16", "q8_0"):
            path = os.path.join(tmp, f"{model}-{qtype}.gguf")
            subprocess.run([a.qlora, os.path.join(ROOT, "recipes", "export_gguf.lua"), f"model={mdir}",
                            f"tokenizer={tdir}", f"out={path}", f"type={qtype}", "modelfile=false"], check=True)
            summary[f"{model}/{qtype}"] = check_export(path, mdir, tdir, qtype, cfg)
            print(f"ok {model} {qtype}: {len(summary[f'{model}/{qtype}']['tensors'])} tensors")
    shutil.rmtree(tmp)
    json.dump(summary, open(os.path.join(OUT, "expected.json"), "w"), indent=1, sort_keys=True, ensure_ascii=False)
    print("wrote", os.path.join(OUT, "expected.json"))


if __name__ == "__main__":
    main()

-- tests/lua/test_gguf.lua — qlora.gguf from Lua and the GGUF export of the tiny fixture
-- models against tests/fixtures/gguf/expected.json, written by tests/gen/gen_gguf.py from
-- llama.cpp's gguf package (gguf-py read our files; keys, types and values follow the
-- converter's rules and gguf.SpecialVocab; tensor bytes are gguf-py's own casts and its
-- Q8_0 quantizer, with llama.cpp's Q/K permutation for Llama); and the q4_k_m export
-- against llama-quantize's own output (tests/fixtures/gguf/q4_k_m.json, written by
-- tests/gen/check_llamacpp.sh).
local T = ...
local G, E = qlora.gguf, require("qlora.gguf_export")

local function fnv(s)
  local h = -3750763034362895579   -- 0xcbf29ce484222325 as a signed 64-bit integer
  for i = 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
  return string.format("%016x", h)
end

local function fnv_strings(list)
  local parts = {}
  for i, s in ipairs(list) do parts[i] = string.pack("<I8", #s) .. s end
  return fnv(table.concat(parts))
end

local TYPES = { UINT8 = "u8", INT8 = "i8", UINT16 = "u16", INT16 = "i16", UINT32 = "u32", INT32 = "i32",
  FLOAT32 = "f32", BOOL = "bool", STRING = "str", UINT64 = "u64", INT64 = "i64", FLOAT64 = "f64" }
local function our_type(t)
  local e = t:match("^arr:(.+)$")
  return e and ("arr:" .. TYPES[e]) or TYPES[t]
end

T.test("writer_reader_roundtrip", function()
  local dir = T.tmpdir()
  local path = dir .. "/rt.gguf"
  local w = assert(G.writer(path, { alignment = 64 }))
  w:kv("a.u8", "u8", 255):kv("a.i8", "i8", -128):kv("a.u16", "u16", 65535):kv("a.i16", "i16", -32768)
   :kv("a.u32", "u32", 4294967295):kv("a.i32", "i32", -2147483648):kv("a.u64", "u64", 1 << 62)
   :kv("a.i64", "i64", math.mininteger):kv("a.f32", "f32", 0.5):kv("a.f64", "f64", 0.1):kv("a.b", "bool", false)
   :kv("a.s", "str", "x\0y"):kv("a.as", "arr:str", { "p", "", "q r" }):kv("a.af", "arr:f32", { 1.5, -2 })
   :kv("a.ab", "arr:bool", { true, false }):kv("a.ai", "arr:i64", { 1, -1 }):kv("a.ae", "arr:u8", {})
  local x = qlora.tensor.randn({ 4, 64 }, { seed = 3 })
  w:tensor("f32", "f32", { 4, 64 }):tensor("f16", "f16", { 4, 64 }):tensor("bf16", "bf16", { 4, 64 })
   :tensor("q8", "q8_0", { 4, 64 }):tensor("raw", "f32", { 2 })
  w:begin()
  T.eq(w:current(), "f32")
  w:write(x):write(x):write(x:to("bf16")):write(x)
  w:write(string.pack("<ff", 1.25, -3))
  T.eq(w:current(), nil)
  w:close()
  local f = assert(G.open(path))
  T.eq(f:version(), 3); T.eq(f:alignment(), 64)
  local kv, ty = f:kv()
  T.eq(kv["a.u8"], 255); T.eq(kv["a.i8"], -128); T.eq(kv["a.u16"], 65535); T.eq(kv["a.i16"], -32768)
  T.eq(kv["a.u32"], 4294967295); T.eq(kv["a.i32"], -2147483648); T.eq(kv["a.u64"], 1 << 62)
  T.eq(kv["a.i64"], math.mininteger); T.eq(kv["a.f32"], 0.5); T.eq(kv["a.f64"], 0.1); T.eq(kv["a.b"], false)
  T.eq(kv["a.s"], "x\0y"); T.eq(kv["a.as"], { "p", "", "q r" }); T.eq(kv["a.af"], { 1.5, -2.0 })
  T.eq(kv["a.ab"], { true, false }); T.eq(kv["a.ai"], { 1, -1 }); T.eq(kv["a.ae"], {})
  T.eq(ty["a.as"], "arr:str"); T.eq(ty["a.u64"], "u64"); T.eq(ty["general.alignment"], "u32")
  local ts = f:tensors()
  T.eq(#ts, 5); T.eq(ts[4].type, "Q8_0"); T.eq(ts[4].shape, { 4, 64 }); T.eq(ts[4].ne, { 64, 4 })
  for _, t in ipairs(ts) do T.eq(t.offset % 64, 0) end
  T.eq(f:bytes("q8"), G.quantize_q8_0(x))
  T.near((f:tensor("f32") - x):abs():max():item(), 0, 0)
  T.near((f:tensor("bf16") - x:to("bf16"):float()):abs():max():item(), 0, 0)
  T.near((f:tensor("f16") - x:to("f16"):float()):abs():max():item(), 0, 0)
  T.eq(f:tensor("raw"):totable(), { 1.25, -3.0 })
  f:close()
  -- misuse raises; a writer dropped half-way leaves nothing behind
  local w2 = assert(G.writer(dir .. "/half.gguf"))
  T.raises(function() w2:kv("k", "u8", 256) end, "does not fit")
  T.raises(function() w2:kv("k", "nope", 1) end, "unknown GGUF value type")
  w2:tensor("t", "f32", { 8 }):begin():write(string.rep("\0", 16))
  T.raises(function() w2:close() end, "got 16 of its 32 bytes")
  T.truthy(not qlora.sys.exists(dir .. "/half.gguf"))
  local bad = io.open(dir .. "/bad.gguf", "wb"); bad:write("GGUF\3\0\0\0"); bad:close()
  local nf, err = G.open(dir .. "/bad.gguf")
  T.eq(nf, nil); T.truthy(err:find("bad.gguf", 1, true), err)
  os.execute("rm -rf '" .. dir .. "'")
end)

local expected
local function golden()
  if not expected then
    local fh = assert(io.open(T.fixture("gguf/expected.json"), "rb"))
    expected = qlora.json.decode(fh:read("a")); fh:close()
  end
  return expected
end

local function check_export(model, tok, qtype)
  local dir = T.tmpdir()
  local out = dir .. "/m.gguf"
  local res, err = E.export { model = T.fixture("models/" .. model), tokenizer = T.fixture("gguf/tok-" .. tok),
                              out = out, type = qtype }
  T.truthy(res, err)
  local want = golden()[model .. "/" .. qtype]
  local f = assert(G.open(out))
  local kv, ty = f:kv()
  local nkeys = 0
  for k in pairs(kv) do
    nkeys = nkeys + 1
    T.truthy(want.keys[k], "unexpected key " .. k)
  end
  for k, e in pairs(want.keys) do
    T.eq(ty[k], our_type(e.type), k)
    local v = e.value
    if type(v) == "table" and v.count then
      T.eq(#kv[k], v.count, k)
      local got
      if e.type == "arr:STRING" then got = fnv_strings(kv[k])
      elseif e.type == "arr:FLOAT32" then got = fnv(string.pack("<" .. string.rep("f", #kv[k]), table.unpack(kv[k])))
      else local p = {}; for i, x in ipairs(kv[k]) do p[i] = string.pack("<i8", x) end; got = fnv(table.concat(p)) end
      T.eq(got, v.fnv, k)
    elseif e.type == "FLOAT32" then T.near(kv[k], v, math.abs(v) * 1e-7, k)
    else T.eq(kv[k], v, k) end
  end
  local n = 0
  for _, t in ipairs(f:tensors()) do
    n = n + 1
    local e = want.tensors[t.name]
    T.truthy(e, "unexpected tensor " .. t.name)
    T.eq(t.type, e.type, t.name); T.eq(t.shape, e.shape, t.name)
    T.eq(fnv(f:bytes(t.name)), e.fnv, t.name .. " bytes")
  end
  local nwant = 0
  for _ in pairs(want.tensors) do nwant = nwant + 1 end
  T.eq(n, nwant, "tensor count")
  f:close()
  os.execute("rm -rf '" .. dir .. "'")
  return res
end

for _, qtype in ipairs({ "f16", "bf16", "q8_0" }) do
  T.test("export_tiny_qwen2_" .. qtype, function() check_export("tiny-qwen2", "qwen2", qtype) end)
  T.test("export_tiny_llama_" .. qtype, function() check_export("tiny-llama", "llama3", qtype) end)
end

-- ---------------------------------------------------------------- q4_k_m
-- tests/fixtures/gguf/q4_k_m.json: per model, the type and a hash of every tensor of
-- llama-quantize's Q4_K_M from our f32 export (tests/gen/check_llamacpp.lua); our q4_k_m
-- export must be the same bytes. The tiny fixtures' 64-wide rows take llama.cpp's
-- fallbacks (Q5_0, Q8_0); the wide models of tests/gen/gguf_models.lua, made here from
-- seeded randn, take Q4_K and Q6_K.
local ROOT = debug.getinfo(1, "S").source:match("^@(.*)tests/lua/[^/]+$") or "./"
if ROOT == "" then ROOT = "./" end
local GM = dofile(ROOT .. "tests/gen/gguf_models.lua")
local q4golden
local function q4k()
  if not q4golden then
    local fh = assert(io.open(T.fixture("gguf/q4_k_m.json"), "rb"))
    q4golden = qlora.json.decode(fh:read("a")); fh:close()
  end
  return q4golden
end

local function check_q4_k_m(name, dir, tok)
  local want = q4k().models[name]
  T.truthy(want, "q4_k_m.json has no " .. name)
  local tmp = T.tmpdir()
  if not dir then
    dir = GM.make(tmp .. "/" .. name, GM.specs[name])
    local fh = assert(io.open(dir .. "/model.safetensors", "rb"))
    local src = GM.hash(fh:read("a")); fh:close()
    T.eq(src, want.source, name .. ": the random model is not the one the golden was made from " ..
      "(tests/gen/gguf_models.lua or qlora's randn changed: rerun tests/gen/check_llamacpp.sh)")
    tok = T.fixture(GM.specs[name].tokenizer)
  end
  local out = tmp .. "/m.gguf"
  local res, err = E.export { model = dir, tokenizer = tok, out = out, type = "q4_k_m" }
  T.truthy(res, err)
  local f = assert(G.open(out))
  T.eq(f:get("general.file_type"), 15)
  local n, nwant, bad = 0, 0, {}
  for _ in pairs(want.tensors) do nwant = nwant + 1 end
  for _, t in ipairs(f:tensors()) do
    n = n + 1
    local e = want.tensors[t.name]
    T.truthy(e, "unexpected tensor " .. t.name)
    T.eq(t.type, e.type, t.name .. " type")
    if GM.hash(f:bytes(t.name)) ~= e.hash then bad[#bad + 1] = t.name .. " (" .. t.type .. ")" end
  end
  T.eq(n, nwant, "tensor count")
  T.eq(#bad, 0, name .. ": bytes differ from llama-quantize's in " .. table.concat(bad, ", "))
  -- the reader dequantizes every type back (an output weight: the dequantized rows
  -- approximate the source)
  local w = f:tensor("blk.0.ffn_down.weight")
  local src = qlora.tensor.load(dir .. "/model.safetensors")["model.layers.0.mlp.down_proj.weight"]:float()
  T.eq(w:size(), src:size())
  local rel = (w - src):abs():max():item() / src:abs():max():item()
  T.truthy(rel < 0.15, name .. ": dequantized ffn_down is off by " .. rel)
  f:close()
  os.execute("rm -rf '" .. tmp .. "'")
end

T.test("export_q4_k_m_tiny_qwen2", function()
  check_q4_k_m("tiny-qwen2", T.fixture("models/tiny-qwen2"), T.fixture("gguf/tok-qwen2"))
end)
T.test("export_q4_k_m_tiny_llama", function()
  check_q4_k_m("tiny-llama", T.fixture("models/tiny-llama"), T.fixture("gguf/tok-llama3"))
end)
T.test("export_q4_k_m_wide_qwen2", function() check_q4_k_m("wide-qwen2") end)
T.test("export_q4_k_m_wide_llama", function() check_q4_k_m("wide-llama") end)

-- the mix on real shapes, as llama-quantize --dry-run printed it for a Qwen2.5-7B-shaped and a
-- Qwen2.5-0.5B-shaped export (tests/gen/check_llamacpp.sh; a 7B file is too big to keep)
T.test("q4_k_m_mix_real_shapes", function()
  local mix = q4k().dry_run
  T.truthy(mix, "q4_k_m.json has no dry_run section")
  local nchecked = 0
  for model, m in pairs(mix) do
    local ctx = { n_layer = m.n_layer, tied = m.tied, is_70b = false }
    for name, e in pairs(m.tensors) do
      T.eq(E.q4_k_m_type(name, e.shape, ctx):upper(), e.type:upper(), model .. " " .. name)
      nchecked = nchecked + 1
    end
  end
  T.truthy(nchecked > 300, "only " .. nchecked .. " tensors in the dry-run record")
  -- 70B: attn_v outside the "more bits" layers goes to Q5_K (llama-quant.cpp; no 70B run here)
  local c70 = { n_layer = 80, tied = false, is_70b = true }
  T.eq(E.q4_k_m_type("blk.1.attn_v.weight", { 1024, 8192 }, c70), "q6_K")
  T.eq(E.q4_k_m_type("blk.11.attn_v.weight", { 1024, 8192 }, c70), "q5_K")
  T.eq(E.q4_k_m_type("blk.11.attn_v.weight", { 1024, 8160 }, c70), "q5_1")
  T.eq(E.q4_k_m_type("blk.11.attn_q.weight", { 8192, 100 }, c70), "f16")
end)

-- SentencePiece-style BPE (Mistral): llama.cpp merges the adjacent pair whose token has the
-- highest score, so the score is minus the rank of the first merge making the token (ranks
-- read from the fixture's tokenizer.json); with these, llama.cpp's ids equal Hugging Face's
-- on all 998 texts of tests/gen/check_llamacpp.lua (the converter's flat -1000: 235 of 998)
T.test("spm_scores_follow_merges", function()
  local tok = assert(E.tokenizer(T.fixture("tokenizers/mistral-7b"), { bos_token_id = 1, eos_token_id = 2 }, 32000))
  T.eq(tok.model, "llama")
  local id = {}
  for i, t in ipairs(tok.tokens) do id[t] = i end
  T.eq(tok.scores[id["\u{2581}t"]], 0.0)                 -- "▁ t", the first merge
  T.eq(tok.scores[id["\u{2581}\u{2581}"]], -58876.0)     -- "▁ ▁" comes late in Mistral's merges
  T.eq(tok.scores[id["\u{2581}Hello"]], -47271.0)        -- made first by "▁H ello"
  T.eq(tok.scores[id["<0x0A>"]], -1e9)                   -- bytes and specials: no merge makes them
  T.eq(tok.scores[id["<s>"]], -1e9)
end)

T.test("quantize_bindings", function()
  local x = qlora.tensor.randn({ 2, 256 }, { seed = 5 })
  for _, ty in ipairs({ "q4_K", "q5_K", "q6_K", "q5_0", "q5_1", "q8_0", "f16", "bf16", "f32" }) do
    local b = G.quantize(x, ty)
    local y = G.dequantize(b, ty, 512)
    T.eq(y:size(), { 512 })
    T.truthy((y - x:view({ 512 })):abs():max():item() < 0.5, ty)
  end
  T.eq(G.quantize_q8_0(x), G.quantize(x, "Q8_0"))
  T.raises(function() G.quantize(x, "q4_0") end, "not one of")
  T.raises(function() G.quantize(qlora.tensor.randn({ 100 }), "q4_K") end, "multiple of 256")
  T.raises(function() G.dequantize("abc", "q6_K", 256) end, "need 210 bytes")
end)

T.test("export_errors_and_modelfile", function()
  local dir = T.tmpdir()
  -- the real Qwen2.5 tokenizer has ids past the tiny model's 512
  local res, err = E.export { model = T.fixture("models/tiny-qwen2"), tokenizer = T.fixture("tokenizers/qwen2.5"),
                              out = dir .. "/x.gguf", type = "f16" }
  T.eq(res, nil); T.truthy(err:find("vocab_size 512", 1, true), err)
  T.truthy(not qlora.sys.exists(dir .. "/x.gguf"))
  res, err = E.export { model = T.fixture("models/tiny-qwen2"), out = dir .. "/x.gguf", type = "q4_0" }
  T.eq(res, nil); T.truthy(err:find("type=q4_0", 1, true), err)
  -- the recipe writes the GGUF and an Ollama Modelfile beside it
  local out, rc = T.sh(T.qlora .. " recipes/export_gguf.lua model=" .. T.fixture("models/tiny-llama") ..
    " tokenizer=" .. T.fixture("gguf/tok-llama3") .. " out=" .. dir .. "/tl.gguf type=q8_0")
  T.eq(rc, 0, out)
  local fh = assert(io.open(dir .. "/Modelfile")); local mf = fh:read("a"); fh:close()
  T.truthy(mf:find("FROM ./tl.gguf", 1, true), mf)
  T.truthy(mf:find('PARAMETER stop "<|eot_id|>"', 1, true), mf)
  T.truthy(mf:find("<|start_header_id|>assistant<|end_header_id|>", 1, true), mf)
  T.truthy(E.modelfile("a/q.gguf", "{{ '<|im_start|>' }}"):find('PARAMETER stop "<|im_end|>"', 1, true))
  os.execute("rm -rf '" .. dir .. "'")
end)

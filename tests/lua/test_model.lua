-- Models against transformers (tests/gen/gen_models.py): tiny random Qwen2
-- (tied embeddings, qkv biases) and Llama (llama3 RoPE scaling, GQA 4:1) in
-- bf16, and Mistral with a sliding window (6) shorter than the sequences; fp32
-- logits, loss, packed documents, greedy generation with the KV cache, and the
-- NF4 path against transformers + bitsandbytes 4-bit on the same checkpoint.
local T = ...
local tensor, model = qlora.tensor, qlora.model

-- max |a - r| / max |r|: the "max relative error" of the issue
local function rel(a, r) return ((a - r):abs():max() / r:abs():max()):item() end

for _, name in ipairs({ "tiny-qwen2", "tiny-llama", "tiny-mistral" }) do
  local dir = T.fixture("models/" .. name)
  local G
  local function golden() G = G or assert(tensor.load(dir .. "/golden.safetensors")); return G end

  T.test(name .. ": fp32 logits match transformers", function()
    local g = golden()
    local m = assert(model.load(dir))
    local lg = m:logits(g.ids:totable())
    T.eq(lg.shape, g.logits.shape)
    local e = rel(lg, g.logits)
    T.truthy(e <= 1e-4, "max relative error " .. e)
  end)

  T.test(name .. ": loss matches transformers (ignore index -100)", function()
    local g = golden()
    local m = assert(model.load(dir))
    local loss, sum, count = m:loss(g.ids:totable(), g.labels:totable())
    T.near(loss, g.loss:item(), 1e-5 * g.loss:item())
    T.eq(count, 2 * 23 - 4 - 3)   -- label 0 of a row is never a target
  end)

  T.test(name .. ": packed documents: positions restart, no attention across", function()
    local g = golden()
    local m = assert(model.load(dir))
    local lens = g["packed.doc_lens"]:totable()
    local ids = g["packed.ids"]:totable()[1]
    local e = rel(m:logits(ids, { doc_lens = lens }), g["packed.logits"][1])
    T.truthy(e <= 1e-4, "max relative error " .. e)
    local loss = m:loss(ids, g["packed.labels"]:totable()[1], { doc_lens = lens })
    T.near(loss, g["packed.loss"]:item(), 1e-5 * loss)
    -- without doc_lens the documents see each other: the logits must differ
    T.truthy(rel(m:logits(ids), g["packed.logits"][1]) > 1e-2, "packing must change the result")
  end)

  T.test(name .. ": greedy generation equals generate() for 32 tokens", function()
    local g = golden()
    local m = assert(model.load(dir))
    local streamed = {}
    local out = m:generate(g["greedy.prompt"]:totable()[1], {
      max_new_tokens = 32, stop = {}, on_token = function(id) streamed[#streamed + 1] = id end })
    T.eq(out, g["greedy.tokens"]:totable()[1])
    T.eq(streamed, out)
  end)

  T.test(name .. ": NF4 on load matches transformers + bitsandbytes 4-bit", function()
    local g = golden()
    local m = assert(model.load(dir, { quant = "nf4" }))
    T.eq(m:config().nf4, true)
    -- The NF4 bytes are identical to bitsandbytes' and dequantization is exact in fp32,
    -- so the same fp32 tolerance applies; NF4 itself moves the logits by ~25%.
    local e = rel(m:logits(g.ids:totable()), g["nf4.logits"])
    T.truthy(e <= 1e-4, "max relative error " .. e)
    T.truthy(rel(g["nf4.logits"], g.logits) > 0.05, "the nf4 golden must differ from fp32")
  end)
end

T.test("sampling: seeded, reproducible, honours stop ids", function()
  local m = assert(model.load(T.fixture("models/tiny-llama")))
  local p = { 5, 6, 7, 8 }
  local a = m:generate(p, { max_new_tokens = 16, temperature = 0.8, top_k = 50, top_p = 0.9, seed = 3, stop = {} })
  local b = m:generate(p, { max_new_tokens = 16, temperature = 0.8, top_k = 50, top_p = 0.9, seed = 3, stop = {} })
  local c = m:generate(p, { max_new_tokens = 16, temperature = 0.8, top_k = 50, top_p = 0.9, seed = 4, stop = {} })
  T.eq(a, b)
  T.truthy(table.concat(a, ",") ~= table.concat(c, ","), "a different seed gives a different sample")
  local s = m:generate(p, { max_new_tokens = 16, temperature = 0.8, top_k = 50, top_p = 0.9, seed = 3, stop = { a[3] } })
  local first = 1
  while a[first] ~= a[3] do first = first + 1 end
  T.eq(s, { table.unpack(a, 1, first) }, "stops at the first stop id, which it includes")
  local n = 0
  local cut = m:generate(p, { max_new_tokens = 16, stop = {}, on_token = function() n = n + 1; return n == 5 end })
  T.eq(#cut, 5)
end)

-- ---------------------------------------------------------------- bad input
local function copy_model(src)
  local d = T.tmpdir()
  os.execute(string.format("cp '%s'/config.json '%s'/model.safetensors '%s'/", src, src, d))
  return d
end
local function edit_config(d, from, to)
  local f = io.open(d .. "/config.json"); local s = f:read("a"); f:close()
  local n
  s, n = s:gsub(from, to)
  assert(n > 0, "pattern not found: " .. from)
  f = io.open(d .. "/config.json", "w"); f:write(s); f:close()
end
local function expect_error(d, pattern, opts)
  local m, err = model.load(d, opts)
  T.eq(m, nil)
  T.truthy(err:find(pattern), err)
  return err
end

T.test("bad input: missing or inconsistent config.json", function()
  local src = T.fixture("models/tiny-llama")
  local d = copy_model(src)
  os.remove(d .. "/config.json")
  expect_error(d, "config.json is missing")
  d = copy_model(src)
  edit_config(d, '"hidden_size": 64', '"hidden_size": 96')
  local err = expect_error(d, "do not belong together")
  T.truthy(err:find("model.safetensors", 1, true) and err:find("embed_tokens"), err)
  d = copy_model(src)
  edit_config(d, '"model_type": "llama"', '"model_type": "gpt_neox"')
  edit_config(d, '"LlamaForCausalLM"', '"GPTNeoXForCausalLM"')
  expect_error(d, "unsupported architecture")
  d = copy_model(src)
  edit_config(d, '"num_key_value_heads": 1', '"num_key_value_heads": 3')
  expect_error(d, "not a multiple")
  d = copy_model(src)
  edit_config(d, '"rope_type": "llama3"', '"rope_type": "yarn"')
  expect_error(d, "yarn")
  expect_error(T.tmpdir() .. "/nothing", "no such model folder")
end)

T.test("bad input: missing shard, missing tensor, dtype we do not take", function()
  local src = T.fixture("models/tiny-qwen2")
  local w = assert(tensor.load(src .. "/model.safetensors"))
  local keys = {}
  for k in pairs(w) do keys[#keys + 1] = k end
  table.sort(keys)
  -- a sharded checkpoint whose second shard is missing
  local d = copy_model(src)
  os.remove(d .. "/model.safetensors")
  local a, b, map = {}, {}, {}
  for i, k in ipairs(keys) do
    if i % 2 == 0 then a[k] = w[k]; map[#map + 1] = string.format('"%s": "model-00001-of-00002.safetensors"', k)
    else b[k] = w[k]; map[#map + 1] = string.format('"%s": "model-00002-of-00002.safetensors"', k) end
  end
  assert(tensor.save(d .. "/model-00001-of-00002.safetensors", a))
  assert(tensor.save(d .. "/model-00002-of-00002.safetensors", b))
  local f = io.open(d .. "/model.safetensors.index.json", "w")
  f:write('{"metadata": {}, "weight_map": {' .. table.concat(map, ", ") .. '}}')
  f:close()
  local m = assert(model.load(d))      -- complete: loads
  local g = assert(tensor.load(src .. "/golden.safetensors"))
  T.truthy(rel(m:logits(g.ids:totable()), g.logits) <= 1e-4)
  m:release()
  os.remove(d .. "/model-00002-of-00002.safetensors")
  expect_error(d, "model%-00002%-of%-00002.safetensors")
  -- a tensor missing
  d = copy_model(src)
  local missing = {}
  for k, t in pairs(w) do if k ~= "model.layers.1.mlp.up_proj.weight" then missing[k] = t end end
  assert(tensor.save(d .. "/model.safetensors", missing))
  expect_error(d, "model.layers.1.mlp.up_proj.weight' is missing")
  -- an integer weight
  local bad = {}
  for k, t in pairs(w) do bad[k] = t end
  bad["model.norm.weight"] = tensor.ones({ 64 }, { dtype = "i32" })
  assert(tensor.save(d .. "/model.safetensors", bad))
  expect_error(d, "I32")
end)

T.test("f32 and f16 checkpoints load and compute the same function", function()
  local src = T.fixture("models/tiny-llama")
  local g = assert(tensor.load(src .. "/golden.safetensors"))
  local w = assert(tensor.load(src .. "/model.safetensors"))
  for _, dt in ipairs({ "f32", "f16" }) do
    local d = T.tmpdir()
    os.execute(string.format("cp '%s'/config.json '%s'/", src, d))
    local conv = {}
    for k, t in pairs(w) do conv[k] = t:to(dt) end
    assert(tensor.save(d .. "/model.safetensors", conv))
    local m = assert(model.load(d))
    -- bf16 -> f32 is exact; bf16 -> f16 is exact too except below f16's normal range (6e-5)
    local e = rel(m:logits(g.ids:totable()), g.logits)
    T.truthy(e <= (dt == "f32" and 1e-4 or 1e-3), dt .. ": max relative error " .. e)
    os.execute("rm -rf '" .. d .. "'")
  end
end)

-- The decoder on a GPU (engine/model/decoder.c over the CUDA ops: bf16 activations, f32
-- accumulation) against transformers' f32 golden values. bf16 keeps 8 significant bits, so
-- logits agree to ~1e-2 of their scale and the mean loss to a few 1e-3 (not the CPU's 1e-4).
-- Greedy generation on the GPU is checked against its own full forward in test_gpu_train.lua.
if qlora.device.count() > 0 then
  for _, name in ipairs({ "tiny-qwen2", "tiny-llama", "tiny-mistral" }) do
    T.test(name .. ": CUDA: logits, packing and loss match transformers within bf16 tolerances", function()
      local dir = T.fixture("models/" .. name)
      local g = assert(tensor.load(dir .. "/golden.safetensors"))
      local m = assert(model.load(dir, { device = "cuda" }))
      local e = rel(m:logits(g.ids:totable()), g.logits)
      T.truthy(e <= 2e-2, "logits: max relative error " .. e)
      e = rel(m:logits(g["packed.ids"]:totable()[1], { doc_lens = g["packed.doc_lens"]:totable() }), g["packed.logits"][1])
      T.truthy(e <= 2e-2, "packed: max relative error " .. e)
      local loss = m:loss(g.ids:totable(), g.labels:totable())
      T.near(loss, g.loss:item(), 5e-3 * loss)
      local q = assert(model.load(dir, { quant = "nf4", device = "cuda" }))
      e = rel(q:logits(g.ids:totable()), g["nf4.logits"])
      T.truthy(e <= 2e-2, "nf4 logits: max relative error " .. e)
    end)
  end
end

T.test("a model on a device that does not exist is refused clearly", function()
  local m, err = model.load(T.fixture("models/tiny-llama"), { device = "cuda:7" })
  T.eq(m, nil)
  T.truthy(err:find("cuda") or err:find("CUDA"), err)
end)

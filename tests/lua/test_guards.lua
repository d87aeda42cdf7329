-- Guards of issue 12 on the Lua side of models and adapters: a merge never follows an
-- index's file names out of the base folder, an adapter keeps its model's weights alive
-- across model:release() and garbage collection in any order, and a tokenizer with ids
-- beyond the model's vocabulary is refused when both are loaded.
local T = ...
local model, lora = qlora.model, qlora.lora

local FIX = "models/tiny-qwen2"   -- vocab_size 512
local ids, labels = { 1, 5, 9, 13, 17, 21, 25, 29 }, { 1, 5, 9, 13, 17, 21, 25, 29 }

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, text) assert(qlora.sys.write_file(path, text)) end

-- a base folder whose index names a shard through "../outside", and that shard
T.test("merge refuses weight_map names that leave the base folder", function()
  local root = T.tmpdir()
  os.execute("mkdir -p '" .. root .. "/base' '" .. root .. "/outside'")
  local shard = read(T.fixture(FIX .. "/model.safetensors"))
  write(root .. "/base/config.json", read(T.fixture(FIX .. "/config.json")))
  write(root .. "/outside/model.safetensors", shard)
  local m = assert(model.load(T.fixture(FIX)))
  local lo = lora.new(m, { r = 2, seed = 1 })
  for _, value in ipairs({ '"../outside/model.safetensors"', '".."', '"/etc/hostname"', "5", "null" }) do
    write(root .. "/base/model.safetensors.index.json",
          '{"metadata": {}, "weight_map": {"model.embed_tokens.weight": ' .. value .. '}}')
    local note, err = lo:merge(root .. "/base", root .. "/merged")
    T.eq(note, nil, value)
    T.truthy(err:find("model.safetensors.index.json", 1, true) and err:find("model.embed_tokens.weight", 1, true),
             "the message names the index and the entry: " .. tostring(err))
    T.truthy(read(root .. "/outside/model.safetensors") == shard, "the shard outside was rewritten (" .. value .. ")")
    T.eq(read(root .. "/merged/config.json"), nil)
  end
  T.eq((T.sh("ls -A '" .. root .. "'")), "base\noutside\n")                -- no merged folder, no temporaries
  T.eq((T.sh("ls -A '" .. root .. "/outside'")), "model.safetensors\n")
  os.execute("rm -rf '" .. root .. "'")
end)

T.test("an adapter keeps its model's weights after model:release()", function()
  local m = assert(model.load(T.fixture(FIX)))
  local lo = lora.new(m, { r = 2, seed = 1 })
  local before = lo:loss(ids, labels)
  m:release()
  T.raises(function() m:config() end, "released")
  T.raises(function() lora.new(m, { r = 2 }) end, "released")
  T.eq(tostring(m), "model(released)")
  T.eq(lo:loss(ids, labels), before)          -- the weights are still there
  T.truthy(rawequal(lo.model, m))
  lo:release()                                 -- the last user: the weights go now
  lo:release()
  T.raises(function() lo:loss(ids, labels) end, "released")
  m:release()
end)

T.test("a model and its adapters can be collected in any order", function()
  for _, first in ipairs({ "model", "adapter" }) do
    local m = assert(model.load(T.fixture(FIX)))
    local a, b = lora.new(m, { r = 2, seed = 1 }), lora.new(m, { r = 4, seed = 2 })
    local want = b:loss(ids, labels)
    if first == "model" then
      m = nil
      collectgarbage(); collectgarbage()
      a:release()
      T.eq(b:loss(ids, labels), want)
      a, b = nil, nil
    else
      a, b = nil, nil
      collectgarbage(); collectgarbage()
      T.truthy(m:config().vocab_size == 512)
      m:release()
    end
    collectgarbage(); collectgarbage()
  end
  -- an adapter that fails to load holds nothing
  local m = assert(model.load(T.fixture(FIX)))
  local lo, err = lora.load(m, "/nonexistent/adapter")
  T.eq(lo, nil)
  T.truthy(err:find("adapter_config.json", 1, true), err)
  collectgarbage(); collectgarbage()
  do local close <close> = m end
  T.raises(function() m:config() end, "released")
end)

T.test("a tokenizer with ids beyond the model's vocabulary is refused at load time", function()
  local m = assert(model.load(T.fixture(FIX)))
  local tok = assert(qlora.tokenizer.load(T.fixture("tokenizers/gpt2")))   -- 50257 ids
  local ok, err = m:check_tokenizer(tok)
  T.eq(ok, nil)
  T.truthy(err:find("do not match", 1, true) and err:find("50256", 1, true) and err:find("512", 1, true), err)
  T.raises(function() m:check_tokenizer({}) end, "tokenizer")
  -- a model made for that tokenizer passes
  local dir = T.tmpdir()
  qlora.llm.random_model(dir .. "/m", { tokenizer = T.fixture("tokenizers/gpt2"), layers = 1, hidden = 32, heads = 2,
                                        kv_heads = 1 })
  T.eq(assert(model.load(dir .. "/m")):check_tokenizer(tok), true)
  -- the training recipe stops before training, with a message and no traceback
  write(dir .. "/d.jsonl", '{"text": "the quick brown fox"}\n')
  local out, rc = T.sh(T.qlora .. " recipes/train.lua model=" .. T.fixture(FIX) .. " tokenizer=" ..
                       T.fixture("tokenizers/gpt2") .. " data=" .. dir .. "/d.jsonl out=" .. dir .. "/run device=cpu steps=1")
  T.eq(rc, 2, out)
  T.truthy(out:find("do not match", 1, true), out)
  T.truthy(not out:find("traceback", 1, true), out)
  T.eq(read(dir .. "/run/metrics.jsonl"), nil)
  os.execute("rm -rf '" .. dir .. "'")
end)

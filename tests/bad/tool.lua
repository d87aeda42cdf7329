-- tests/bad/tool.lua — helpers of the bad-input catalogue (tests/bad/run.sh), run by the
-- qlora under test:
--   qlora tests/bad/tool.lua gen DIR           the good inputs every case starts from: a tiny
--        model (DIR/model), data (DIR/data.jsonl), a run with a checkpoint and an adapter
--        (DIR/run), a GGUF file (DIR/good.gguf), a larger model for the kill tests (DIR/big)
--   QLBAD_STMT='STMT' qlora tests/bad/tool.lua jset FILE    JSON file edited by a Lua statement on `t`
--        (null is `null`), written back indented
--   QLBAD_STMT='STMT' qlora tests/bad/tool.lua stset FILE   a safetensors header edited by a Lua statement
--        on `h` (the header table); the data bytes are kept as they are
--   qlora tests/bad/tool.lua open_gguf FILE    qlora.gguf.open and every tensor read; exit 2 with
--        the message on failure
--   qlora tests/bad/tool.lua ckpt RUN          every checkpoint-N in RUN is complete (its
--        trainer_state.json decodes, its optimizer and adapter files open); prints them
local json, sys = qlora.json, qlora.sys
local cmd = args[1]

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function run_stmt(src, env)
  setmetatable(env, { __index = _G })
  local fn = assert(load(src, "=edit", "t", env))
  fn()
end

if cmd == "gen" then
  local dir = assert(args[2], "gen DIR")
  local root = args.root or "."
  local tokdir = root .. "/tests/fixtures/gguf/tok-qwen2"
  qlora.llm.random_model(dir .. "/model", { tokenizer = tokdir, layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  qlora.llm.random_model(dir .. "/big", { tokenizer = tokdir, layers = 4, hidden = 512, heads = 8, kv_heads = 2 })
  local words = { "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "home" }
  local f = assert(io.open(dir .. "/data.jsonl", "w"))
  for i = 1, 40 do
    local w = {}
    for k = 1, 14 do w[k] = words[(i * 3 + k) % #words + 1] end
    f:write(json.encode({ text = table.concat(w, " ") }), "\n")
  end
  f:close()
  local m = assert(qlora.model.load(dir .. "/model", { quant = "none" }))
  local tok = assert(qlora.tokenizer.load(dir .. "/model"))
  local tr = qlora.train.new({ model = m, tokenizer = tok, data = dir .. "/data.jsonl", out = dir .. "/run",
                               base_name = dir .. "/model", lora = { r = 4, alpha = 8 }, seq_len = 32,
                               batch_size = 2, max_steps = 2, save_every = 2, eval_fraction = 0, lr = 1e-3,
                               quiet = true })
  tr:fit()
  local bm = assert(qlora.model.load(dir .. "/big", { quant = "none" }))
  assert(qlora.lora.new(bm, { r = 4, alpha = 8, seed = 1 }):save(dir .. "/big-adapter", dir .. "/big"))
  -- a GGUF file: a few keys and two tensors
  local w = assert(qlora.gguf.writer(dir .. "/good.gguf"))
  w:kv("general.architecture", "str", "llama")
  w:kv("general.name", "str", "bad-input catalogue")
  w:kv("llama.block_count", "u32", 1)
  w:kv("tokenizer.ggml.tokens", "arr:str", { "a", "b", "c" })
  w:tensor("t.f32", "f32", { 2, 4 })
  w:tensor("t.q8", "q8_0", { 1, 32 })
  w:begin()
  w:write(qlora.tensor.randn({ 2, 4 }, { seed = 1 }))
  w:write(qlora.tensor.randn({ 1, 32 }, { seed = 2 }))
  w:close()
elseif cmd == "jset" then
  local path = assert(args[2], "jset FILE STMT")
  local t = assert(json.decode(read(path), path))
  local env = { t = t, null = json.null }
  run_stmt(assert(os.getenv("QLBAD_STMT"), "jset FILE with QLBAD_STMT set"), env)
  local tmp = path .. ".edit"
  write(tmp, json.encode(env.t, { indent = 2 }))
  assert(os.rename(tmp, path))
elseif cmd == "stset" then
  local path = assert(args[2], "stset FILE STMT")
  local s = read(path)
  local n = string.unpack("<I8", s)
  local h = assert(json.decode(s:sub(9, 8 + n), path))
  local env = { h = h, null = json.null }
  run_stmt(assert(os.getenv("QLBAD_STMT"), "stset FILE with QLBAD_STMT set"), env)
  local hs = type(env.h) == "string" and env.h or json.encode(env.h)
  hs = hs .. (" "):rep((8 - #hs % 8) % 8)
  local tmp = path .. ".edit"
  write(tmp, string.pack("<I8", #hs) .. hs .. s:sub(9 + n))
  assert(os.rename(tmp, path))
elseif cmd == "ckpt" then
  local run = assert(args[2], "ckpt RUN")
  local found = {}
  for _, name in ipairs(sys.list_dir(run) or {}) do
    if name:match("^checkpoint%-%d+$") then
      local d = run .. "/" .. name
      local st = assert(json.decode(read(d .. "/trainer_state.json"), d .. "/trainer_state.json"))
      assert(math.type(st.step) == "integer", d .. ": step")
      assert(qlora.tensor.load(d .. "/optimizer.safetensors"))
      assert(qlora.tensor.load(d .. "/adapter_model.safetensors"))
      found[#found + 1] = name
    end
  end
  print(#found > 0 and table.concat(found, " ") or "none")
elseif cmd == "open_gguf" then
  -- what a user's script does: open, list, read every tensor; a failure is a message and exit 2
  local f, err = qlora.gguf.open(assert(args[2], "open_gguf FILE"))
  if not f then io.stderr:write(err, "\n"); os.exit(2) end
  f:kv()
  for _, t in ipairs(f:tensors()) do
    local ok, e = pcall(f.tensor, f, t.name)
    if not ok then io.stderr:write(tostring(e), "\n"); os.exit(2) end
  end
  f:close()
else
  error("tests/bad/tool.lua: gen, jset, stset, ckpt or open_gguf", 0)
end

-- Nothing lost, nothing crashes (issue 12, the Lua and recipe side): JSON output of
-- any size, merges that refuse to replace what is not a merge and leave nothing
-- half-written, checkpoints chosen and validated carefully, non-finite training
-- stopped with the last good checkpoint, bad records skipped with their file and line.
local T = ...
local train, json, sys = qlora.train, qlora.json, qlora.sys

local tiny, write_data = T.tiny_model, T.word_data

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- ------------------------------------------------------------------ json (item 1)

T.test("json.encode: output of any size round-trips (past the 1 KB buffer)", function()
  local v = { ("a"):rep(600), ("b"):rep(600) }
  T.eq(json.decode(json.encode(v)), v)
  local big = { losses = {}, name = ("x\"\\\n"):rep(5000), nested = {} }
  for i = 1, 5000 do big.losses[i] = i / 7 end
  for i = 1, 300 do big.nested["key" .. i] = { i, ("v"):rep(i), { deep = i } } end
  for _, opts in ipairs({ {}, { indent = 1 }, { indent = 2 } }) do
    local s = json.encode(big, opts)
    T.truthy(#s > 100000, "large output")
    T.eq(json.decode(s), big)
  end
end)

T.test("json.encode: an error deep inside a large value raises cleanly and leaks nothing", function()
  for _, bad in ipairs({ 0 / 0, math.huge, print }) do
    local v = { pad = ("p"):rep(5000), list = {} }
    for i = 1, 200 do v.list[i] = { k = ("q"):rep(50), n = i } end
    v.list[150].n = bad
    T.raises(function() json.encode(v, { indent = 2 }) end, "json.encode")
  end
  collectgarbage()
  T.eq(json.encode({ 1, "two", { three = 3 } }), '[1,"two",{"three":3}]')
end)

-- ------------------------------------------------------------------ merge (items 2, 4, 5, 13)

local function fixture_lora()
  local m = assert(qlora.model.load(T.fixture("models/tiny-qwen2")))
  return assert(qlora.lora.load(m, T.fixture("models/tiny-qwen2/peft-adapter"))), m
end

local function tree(dir)   -- every path under dir, sorted
  return (T.sh("cd '" .. dir .. "' && find . | sort"))
end

T.test("merge refuses an out folder that is not a previous merge, and deletes nothing", function()
  local lo = fixture_lora()
  local base = T.fixture("models/tiny-qwen2")
  local top = T.tmpdir()
  local run = top .. "/run"
  -- a training run: adapter, a checkpoint, metrics
  assert(sys.mkdir(run .. "/checkpoint-2"))
  assert(lo:save(run .. "/adapter", base))
  assert(sys.write_file(run .. "/checkpoint-2/trainer_state.json", "{}"))
  assert(sys.write_file(run .. "/metrics.jsonl", '{"step":1}\n'))
  local before = tree(run)
  local note, err = lo:merge(base, run)
  T.eq(note, nil)
  T.truthy(err:find("not a previous merge"), err)
  T.eq(tree(run), before, "the run is untouched")
  -- the adapter folder itself, a folder with one stray file, a file
  note, err = lo:merge(base, run .. "/adapter")
  T.truthy(not note and err:find("which a merge does not write"), err)
  T.truthy(sys.exists(run .. "/adapter/adapter_model.safetensors"))
  note, err = lo:merge(base, run .. "/metrics.jsonl")
  T.truthy(not note and err:find("not a folder"), err)
  T.eq(tree(run), before, "the run is untouched")
  -- the recipe says so and exits non-zero
  local out, rc = T.sh(T.qlora .. " recipes/merge.lua model=" .. base .. " adapter=" .. run .. "/adapter out=" .. run)
  T.truthy(rc ~= 0 and out:find("not a previous merge"), out)
  T.eq(tree(run), before, "the run is untouched by the recipe")
  -- a previous merge (and an empty folder) are replaced
  local merged = top .. "/merged"
  assert(sys.mkdir(merged))
  assert(lo:merge(base, merged))
  T.truthy(assert(lo:merge(base, merged .. "/")), "a previous merge is replaced")
  T.truthy(sys.exists(merged .. "/model.safetensors"))
  T.eq(sys.list_dir(top), { "merged", "run" }, "nothing else beside it")
  os.execute("rm -rf '" .. top .. "'")
end)

T.test("merge removes stale merged.tmp.PID folders of killed merges", function()
  local lo = fixture_lora()
  local dir = T.tmpdir()
  -- a pid that cannot be running (above pid_max), and one that is (ours: a live merge's)
  local stale, live = dir .. "/merged.tmp.2147483000", dir .. "/merged.tmp.1"
  assert(sys.mkdir(stale .. "/sub")); assert(sys.write_file(stale .. "/model.safetensors", "half"))
  assert(sys.mkdir(live))
  T.eq(sys.pid_alive(2147483000), false)
  T.eq(sys.pid_alive(sys.pid()), true)
  assert(lo:merge(T.fixture("models/tiny-qwen2"), dir .. "/merged"))
  T.eq(sys.exists(stale), false, "the stale temporary is gone")
  T.eq(sys.exists(live), true, "a temporary of a running process is left alone")
  T.eq(sys.list_dir(dir), { "merged", "merged.tmp.1" })
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("Ctrl-C during a merge stops it and leaves nothing behind", function()
  local lo = fixture_lora()
  local dir = T.tmpdir()
  sys.trap_interrupt(true)
  -- the flag is set as by a Ctrl-C during the merge (io.popen: os.execute ignores SIGINT while it waits)
  io.popen("kill -INT " .. sys.pid()):close()
  local note, err = lo:merge(T.fixture("models/tiny-qwen2"), dir .. "/merged")
  sys.trap_interrupt(false)
  T.eq(sys.interrupted(), true)
  T.eq(note, nil)
  T.truthy(err:find("interrupted"), err)
  T.eq(sys.list_dir(dir), {}, "no output and no temporary")
  -- without Ctrl-C it completes
  assert(lo:merge(T.fixture("models/tiny-qwen2"), dir .. "/merged"))
  T.eq(sys.list_dir(dir), { "merged" })
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("merge refuses an adapter with NaN or Inf values", function()
  local base = T.fixture("models/tiny-qwen2")
  local dir = T.tmpdir()
  local w, meta = qlora.tensor.load(base .. "/peft-adapter/adapter_model.safetensors")
  local k = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
  T.truthy(w[k], "the fixture has " .. k)
  w[k] = w[k] * (0 / 0)
  assert(sys.mkdir(dir .. "/nan"))
  assert(qlora.tensor.save(dir .. "/nan/adapter_model.safetensors", w, meta))
  assert(sys.write_file(dir .. "/nan/adapter_config.json", read(base .. "/peft-adapter/adapter_config.json")))
  local m = assert(qlora.model.load(base))
  local lo = assert(qlora.lora.load(m, dir .. "/nan"))
  local note, err = lo:merge(base, dir .. "/merged")
  T.eq(note, nil)
  T.truthy(err:find("non%-finite") and err:find("lora_B") and err:find("down_proj"), err)
  T.eq(sys.list_dir(dir), { "nan" }, "nothing written")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ------------------------------------------------------------------ checkpoints (items 3, 4, 17)

T.test("the newest checkpoint is chosen numerically, in paths with hyphens, ignoring temporaries", function()
  local run = T.tmpdir() .. "/my-runs/r-1"
  for _, n in ipairs({ "checkpoint-8", "checkpoint-10", "checkpoint-9", "checkpoint-12.tmp", "checkpoint-11" }) do
    assert(sys.mkdir(run .. "/" .. n))
    if n ~= "checkpoint-11" then assert(sys.write_file(run .. "/" .. n .. "/trainer_state.json", "{}")) end
  end
  assert(sys.write_file(run .. "/checkpoint-99", "a file, not a checkpoint"))
  local path, n = train.latest_checkpoint(run)
  T.eq(path, run .. "/checkpoint-10")
  T.eq(n, 10)
  T.eq(train.latest_checkpoint(run .. "/missing"), nil)
  T.truthy(not read("recipes/full.lua"):find("popen"), "full.lua asks qlora.train, not a shell")
  os.execute("rm -rf '" .. run .. "'")
end)

local function trainer(dir, extra)
  if not sys.exists(dir .. "/m/config.json") then tiny(dir .. "/m") end
  if not sys.exists(dir .. "/d.jsonl") then write_data(dir .. "/d.jsonl", 24) end
  local cfg = { model = assert(qlora.model.load(dir .. "/m", { quant = "nf4" })),
                tokenizer = assert(qlora.tokenizer.load(dir .. "/m")), data = dir .. "/d.jsonl", out = dir .. "/run",
                lora = { r = 4, alpha = 8 }, seq_len = 32, batch_size = 2, lr = 5e-3, max_steps = 4,
                eval_fraction = 0, seed = 1 }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return train.new(cfg)
end

T.test("a checkpoint save that fails removes its temporary and says why", function()
  local dir = T.tmpdir()
  local tr = trainer(dir)
  tr:step()
  local real = tr.lora
  tr.lora = setmetatable({ save_state = function() return nil, "out of space (a full disk)" end,
                           save = function(_, ...) return real:save(...) end,
                           params = function() return real:params() end },
                         { __index = function(_, k) return real[k] end })
  T.raises(function() tr:save(dir .. "/run/checkpoint-1") end, "checkpoint%-1 failed.*full disk")
  T.eq(sys.exists(dir .. "/run/checkpoint-1.tmp"), false, "no temporary left")
  T.eq(sys.exists(dir .. "/run/checkpoint-1"), false)
  tr.lora = real
  tr:save(dir .. "/run/checkpoint-1")
  T.eq(train.latest_checkpoint(dir .. "/run"), dir .. "/run/checkpoint-1")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("every value of trainer_state.json is checked, naming the file and the key", function()
  local dir = T.tmpdir()
  local tr = trainer(dir)
  for _ = 1, 50 do tr.state.losses[#tr.state.losses + 1] = 1 / 3 end   -- a state of more than 1 KB
  tr:step()
  local ck = tr:save(dir .. "/run/checkpoint-1")
  local good = read(ck .. "/trainer_state.json")
  T.truthy(#good > 1024)
  T.eq(trainer(dir, { resume = ck }).state.step, 1, "the checkpoint resumes")
  local function with(k, v)
    local st = json.decode(good)
    st[k] = v
    assert(sys.write_file(ck .. "/trainer_state.json", json.encode(st)))
  end
  local cases = { { "step", "two" }, { "step", -1 }, { "step", 1.5 }, { "epoch", json.null }, { "pos", {} },
                  { "max_steps", 0 }, { "lr", "fast" }, { "lr", -1 }, { "warmup", false }, { "schedule", "cos" },
                  { "seq_len", "32" }, { "losses", { 1, "x" } }, { "losses", 3 }, { "eval", { { step = 1 } } },
                  { "tokens", "many" }, { "dropout_step", -5 }, { "seed", 0.5 } }
  for _, c in ipairs(cases) do
    with(c[1], c[2])
    T.raises(function() trainer(dir, { resume = ck }) end, "trainer_state%.json: \"" .. c[1] .. "\" must be")
  end
  with("step", nil)
  T.raises(function() trainer(dir, { resume = ck }) end, "trainer_state%.json: \"step\" is missing")
  assert(sys.write_file(ck .. "/trainer_state.json", "[1, 2]"))
  T.raises(function() trainer(dir, { resume = ck }) end, "trainer_state%.json: must be a JSON object")
  assert(sys.write_file(ck .. "/trainer_state.json", good:sub(1, 100)))
  T.raises(function() trainer(dir, { resume = ck }) end, "trainer_state%.json")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ------------------------------------------------------------------ training (items 13, 15, 16)

T.test("a non-finite loss stops training, naming the step and the last good checkpoint", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  write_data(dir .. "/d.jsonl", 24)
  -- lr = 1e30: the first update blows the adapter up, the second step's loss is not finite
  local out, rc = T.sh(T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. dir ..
                       "/run seq_len=32 batch=2 steps=6 lr=1e30 warmup=0 r=4 save_every=1 eval_fraction=0")
  T.eq(rc, 1, out)
  T.truthy(out:find("step 2: the loss is") and out:find("not finite"), out)
  T.truthy(out:find("last good checkpoint is " .. dir .. "/run/checkpoint%-1"), out)
  T.truthy(not out:find("stack traceback"), out)
  T.truthy(not out:find("cannot be written in JSON"), out)
  for line in io.lines(dir .. "/run/metrics.jsonl") do T.truthy(json.decode(line), line) end
  T.eq(sys.exists(dir .. "/run/checkpoint-2"), false)
  T.eq(train.latest_checkpoint(dir .. "/run"), dir .. "/run/checkpoint-1")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- the issue's "done when": a 200-step run with save_every=50 resumes from every checkpoint, step for
-- step (dropout on, so the masks' positions must be restored too)
T.test("a 200-step run with save_every=50 resumes from each checkpoint to the same losses", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  write_data(dir .. "/d.jsonl", 60)
  local common = T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl seq_len=16 batch=2 " ..
                 "steps=200 lr=3e-3 r=4 alpha=8 dropout=0.1 save_every=50 eval_fraction=0 seed=7"
  local out, rc = T.sh(common .. " out=" .. dir .. "/full")
  T.eq(rc, 0, out)
  local function losses(path)
    local l = {}
    for line in io.lines(path) do
      local r = json.decode(line)
      if r.step and r.loss then l[r.step] = r.loss end
    end
    return l
  end
  local full = losses(dir .. "/full/metrics.jsonl")
  T.eq(#full, 200)
  for _, k in ipairs({ 50, 100, 150 }) do
    local run = dir .. "/r" .. k
    os.execute("cp -r '" .. dir .. "/full' '" .. run .. "'")
    -- what the run had written when it stopped after step k: its checkpoints up to k and the
    -- metrics rows up to k; no adapter
    for _, later in ipairs({ 50, 100, 150, 200 }) do
      if later > k then os.execute("rm -rf '" .. run .. "/checkpoint-" .. later .. "'") end
    end
    os.execute("rm -rf '" .. run .. "/adapter' '" .. run .. "/loss.svg'")
    local kept = {}
    for line in io.lines(run .. "/metrics.jsonl") do
      local r = json.decode(line)
      if not r.step or r.step <= k then kept[#kept + 1] = line end
    end
    local f = assert(io.open(run .. "/metrics.jsonl", "w"))
    f:write(table.concat(kept, "\n"), "\n")
    f:close()
    T.eq(losses(run .. "/metrics.jsonl")[k + 1], nil)
    out, rc = T.sh(common .. " out=" .. run .. " resume=" .. run .. "/checkpoint-" .. k)
    T.eq(rc, 0, out)
    T.truthy(out:find("resumed from"), out)
    local got = losses(run .. "/metrics.jsonl")
    for s = 1, 200 do T.eq(got[s], full[s], "resumed from checkpoint-" .. k .. ": loss at step " .. s) end
    T.eq(read(run .. "/adapter/adapter_model.safetensors"), read(dir .. "/full/adapter/adapter_model.safetensors"))
  end
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("bad chat records are skipped with a warning naming file and line", function()
  local tok = assert(qlora.tokenizer.load(T.fixture("tokenizers/qwen2.5")))
  for _, msgs in ipairs({ { 1, 2 }, { { role = "user" } }, { { role = 1, content = "x" } }, {}, { "a" } }) do
    local ids, why = train.encode_record(tok, { messages = msgs })
    T.eq(ids, nil)
    T.truthy(type(why) == "string", "a reason")
  end
  local dir = T.tmpdir()
  tiny(dir .. "/m", "qwen2.5")
  write_data(dir .. "/d.jsonl", 6, { [2] = '{"messages":[1,2]}', [4] = '{"prompt":"x"}' })
  local warnings = {}
  local real = io.stderr
  io.stderr = { write = function(_, ...) for _, s in ipairs({ ... }) do warnings[#warnings + 1] = s end end }
  local ok, tr = pcall(train.new, { model = assert(qlora.model.load(dir .. "/m")), tokenizer = tok, data = dir .. "/d.jsonl",
                                    seq_len = 32, batch_size = 2, eval_fraction = 0, lora = { r = 2 } })
  io.stderr = real
  T.truthy(ok, tostring(tr))
  T.eq(tr.skipped, 2)
  local w = table.concat(warnings)
  T.truthy(w:find("d%.jsonl:3: record skipped: message 1"), w)
  T.truthy(w:find("d%.jsonl:6: record skipped: unknown record"), w)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("a single record of more than a million tokens encodes", function()
  local tok = assert(qlora.tokenizer.load(T.fixture("tokenizers/gpt2")))
  local ids, labels = train.encode_record(tok, { text = (" a"):rep(1100000) })
  T.truthy(#ids > 1000000, #ids)
  T.eq(#labels, #ids)
  T.eq(labels[#labels], ids[#ids])
end)

-- ------------------------------------------------------------------ found by tests/bad (the catalogue)

T.test("merge refuses the base model's own folder as out (it would replace the original weights)", function()
  local dir = T.tmpdir()
  os.execute("cp -r '" .. T.fixture("models/tiny-qwen2") .. "' '" .. dir .. "/m'")
  local m = assert(qlora.model.load(dir .. "/m"))
  local lo = assert(qlora.lora.load(m, dir .. "/m/peft-adapter"))
  os.execute("rm -rf '" .. dir .. "/m/peft-adapter'")   -- so the folder looks like a previous merge
  local before = read(dir .. "/m/model.safetensors")
  for _, out in ipairs({ dir .. "/m", dir .. "/m/", dir .. "/./m" }) do
    local note, err = lo:merge(dir .. "/m", out)
    T.eq(note, nil)
    T.truthy(err:find("base model's folder"), err)
  end
  T.eq(read(dir .. "/m/model.safetensors"), before, "the base model is untouched")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("gguf export refuses to write over a file that is not a GGUF file", function()
  local dir = T.tmpdir()
  qlora.llm.random_model(dir .. "/m", { tokenizer = T.fixture("gguf/tok-qwen2"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  local E = require("qlora.gguf_export")
  local before = read(dir .. "/m/model.safetensors")
  local ok, err = E.export({ model = dir .. "/m", out = dir .. "/m/model.safetensors" })
  T.truthy(not ok and err:find("not a GGUF file"), err)
  T.eq(read(dir .. "/m/model.safetensors"), before, "the weights are untouched")
  ok, err = E.export({ model = dir .. "/m", out = dir .. "/m" })
  T.truthy(not ok and err:find("is a folder"), err)
  -- a previous export is replaced
  assert(E.export({ model = dir .. "/m", out = dir .. "/x.gguf" }))
  assert(E.export({ model = dir .. "/m", out = dir .. "/x.gguf" }))
  T.truthy(qlora.gguf.open(dir .. "/x.gguf"))
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("an atomic write removes the temporaries of killed writers of the same file", function()
  local dir = T.tmpdir()
  local stale, live = dir .. "/x.safetensors.tmp.2147483000", dir .. "/x.safetensors.tmp.1"
  assert(sys.write_file(stale, "half")); assert(sys.write_file(live, "a running writer's"))
  assert(sys.write_file(dir .. "/y.safetensors.tmp.2147483000", "another file's"))
  qlora.tensor.save(dir .. "/x.safetensors", { a = qlora.tensor.zeros({ 2 }) })
  T.eq(sys.list_dir(dir), { "x.safetensors", "x.safetensors.tmp.1", "y.safetensors.tmp.2147483000" })
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("resuming with other LoRA settings says so and trains the checkpoint's; a killed save's checkpoint-N.tmp is removed by the next run", function()
  local dir = T.tmpdir()
  local tr = trainer(dir)
  tr:fit()                                        -- 4 steps, checkpoint-4
  local ck = train.latest_checkpoint(dir .. "/run")
  T.truthy(ck)
  local other = trainer(dir, { resume = ck, lora = { r = 8, alpha = 16 } })
  T.eq(other.lora.r, 4)
  T.truthy(other.resume_note and other.resume_note:find("r=4 %(this run asked r=8%)")
           and other.resume_note:find("alpha=8 %(this run asked alpha=16%)"), tostring(other.resume_note))
  T.eq(trainer(dir, { resume = ck }).resume_note, nil, "the same settings: nothing to say")
  -- a save killed half way leaves checkpoint-6.tmp; it is not a run output and the next fit removes it
  assert(sys.mkdir(dir .. "/run/checkpoint-6.tmp"))
  assert(sys.write_file(dir .. "/run/checkpoint-6.tmp/half", "x"))
  for _, name in ipairs(train.run_outputs(dir .. "/run")) do T.truthy(not name:find("%.tmp"), name) end
  local tr2 = trainer(dir, { resume = ck })      -- the same settings: resumes (the run had ended at step 4)
  tr2:fit()
  T.eq(sys.exists(dir .. "/run/checkpoint-6.tmp"), false, "the temporary is gone")
  T.eq(train.latest_checkpoint(dir .. "/run"), ck)
  os.execute("rm -rf '" .. dir .. "'")
end)

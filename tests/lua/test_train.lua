-- The training loop (qlora.train, recipes/train.lua) on a tiny random model:
-- the loss goes down, accumulation equals a bigger batch, chat/instruction data
-- masks prompts, and a run killed with SIGKILL resumes to the same losses.
local T = ...
local train, json = qlora.train, qlora.json

local tiny, write_data = T.tiny_model, T.word_data

local function losses(metrics)
  local by_step = {}
  for line in io.lines(metrics) do
    local r = json.decode(line)
    by_step[r.step] = r.loss     -- a resumed run rewrites the steps after its checkpoint
  end
  return by_step
end

T.test("chat and instruction records train only the answer", function()
  local tok = assert(qlora.tokenizer.load(T.fixture("tokenizers/qwen2.5")))
  local function targets(ids, labels)
    local t = {}
    for i = 1, #ids do if labels[i] ~= -100 then t[#t + 1] = ids[i] end end
    return tok:decode(t)
  end
  local ids, labels = train.encode_record(tok, { messages = {
    { role = "user", content = "What is 2+2?" }, { role = "assistant", content = "Four." },
    { role = "user", content = "And 3+3?" }, { role = "assistant", content = "Six." } } })
  T.eq(targets(ids, labels), "Four.<|im_end|>\nSix.<|im_end|>\n")
  T.eq(ids, tok:apply_chat_template({ { role = "user", content = "What is 2+2?" }, { role = "assistant", content = "Four." },
    { role = "user", content = "And 3+3?" }, { role = "assistant", content = "Six." } }, { tokenize = true }))
  ids, labels = train.encode_record(tok, { instruction = "Translate", input = "chat", output = "cat" })
  T.eq(targets(ids, labels), "cat<|im_end|>\n")
  ids, labels = train.encode_record(tok, { text = "plain text" })
  T.eq(#ids, #labels)
  T.eq(labels, ids)
  local bad, why = train.encode_record(tok, { prompt = "x" })
  T.eq(bad, nil)
  T.truthy(why:find("unknown record"), why)
end)

T.test("packing keeps documents apart and fills rows", function()
  local ex = { { ids = { 1, 2, 3 }, labels = { 1, 2, 3 } }, { ids = { 4, 5 }, labels = { -100, 5 } },
               { ids = { 6, 7, 8, 9, 10, 11 }, labels = { 6, 7, 8, 9, 10, 11 } } }
  local rows, cut = train.pack(ex, { 1, 2, 3 }, 5, 0)
  T.eq(cut, 1)
  T.eq(#rows, 2)
  T.eq(rows[1].ids, { 1, 2, 3, 4, 5 })
  T.eq(rows[1].doc_lens, { 3, 2 })
  T.eq(rows[2].ids, { 6, 7, 8, 9, 10 })
  T.eq(train.permutation(10, 1, 0), train.permutation(10, 1, 0))
  T.truthy(table.concat(train.permutation(10, 1, 0), ",") ~= table.concat(train.permutation(10, 1, 1), ","))
end)

T.test("trainer: the loss goes down; accumulation equals a bigger batch", function()
  local dir = T.tmpdir()
  local m = assert(qlora.model.load(tiny(dir .. "/m"), { quant = "nf4" }))
  local tok = assert(qlora.tokenizer.load(dir .. "/m"))
  write_data(dir .. "/d.jsonl", 24)
  local function trainer(batch, accum)
    return train.new { model = m, tokenizer = tok, data = dir .. "/d.jsonl", lora = { r = 8, alpha = 16 },
                       seq_len = 32, batch_size = batch, grad_accum = accum, lr = 5e-3, warmup = 2,
                       max_steps = 20, eval_fraction = 0, seed = 1 }
  end
  local a, b = trainer(2, 1), trainer(1, 2)
  local first, last
  for s = 1, 20 do
    local ia, ib = a:step(), b:step()
    T.near(ia.loss, ib.loss, 1e-5 * ia.loss, "step " .. s .. ": batch 2 vs 2 x accumulation")
    first = first or ia.loss
    last = ia.loss
  end
  T.truthy(last < first - 0.5, string.format("loss %.3f -> %.3f", first, last))
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("a run killed with SIGKILL resumes to the same losses step for step", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  write_data(dir .. "/d.jsonl", 40)
  local common = T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl seq_len=32 batch=2 " ..
                 "steps=8 lr=5e-3 r=4 alpha=8 dropout=0.1 save_every=3 eval_fraction=0.1 seed=5"
  local out, rc = T.sh(common .. " out=" .. dir .. "/full")
  T.eq(rc, 0, out)
  local full = losses(dir .. "/full/metrics.jsonl")
  out, rc = T.sh("QLORA_KILL_AT=5 " .. common .. " out=" .. dir .. "/killed")
  T.truthy(rc ~= 0, "the process must have been killed: " .. out)
  T.truthy(io.open(dir .. "/killed/checkpoint-3/trainer_state.json"), "checkpoint-3 exists")
  T.eq(io.open(dir .. "/killed/checkpoint-6/trainer_state.json"), nil)
  out, rc = T.sh(common .. " out=" .. dir .. "/killed resume=" .. dir .. "/killed/checkpoint-3")
  T.eq(rc, 0, out)
  T.truthy(out:find("resumed from"), out)
  local resumed = losses(dir .. "/killed/metrics.jsonl")
  for s = 1, 8 do T.eq(resumed[s], full[s], "loss at step " .. s) end
  T.truthy(io.open(dir .. "/killed/adapter/adapter_model.safetensors"), "the finished run wrote the adapter")
  local svg = io.open(dir .. "/killed/loss.svg"):read("a")
  T.truthy(svg:find("<svg") and svg:find("polyline"), "loss plot")
  -- resuming with other settings is refused
  out, rc = T.sh(common:gsub("batch=2", "batch=4") .. " out=" .. dir .. "/killed resume=" .. dir .. "/killed/checkpoint-3")
  T.truthy(rc ~= 0 and out:find("batch_size"), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("recipes/train.lua checkpointing=host trains as checkpointing=false does; other words are refused", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  write_data(dir .. "/d.jsonl", 16)
  local function run(ck)
    local out = dir .. "/run-" .. ck
    local log, rc = T.sh(T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. out ..
                         " seq_len=32 batch=2 steps=4 lr=1e-2 r=4 save_every=0 device=cpu checkpointing=" .. ck .. " 2>&1")
    return rc == 0 and losses(out .. "/metrics.jsonl"), log, rc
  end
  local a, b = run("false"), run("host")
  T.truthy(a and b, "both runs finished")
  T.eq(#a, 4)
  for i = 1, 4 do T.eq(b[i], a[i], "step " .. i) end
  local _, log, rc = run("disk")
  T.eq(rc, 2, log)
  T.truthy(log:find("checkpointing=disk: must be true, false or host", 1, true), log)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("Ctrl-C during training saves a checkpoint and stops cleanly", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m")
  write_data(dir .. "/d.jsonl", 40)
  local run = dir .. "/run"
  local cmd = T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. run ..
              " seq_len=32 batch=2 steps=100000 lr=1e-3 r=4 save_every=0"
  -- start, wait for the first step's metrics line, then send SIGINT
  local _, rc = T.sh("(" .. cmd .. " > " .. dir .. "/log 2>&1 & p=$!; for i in $(seq 300); do " ..
                     "[ -s " .. run .. "/metrics.jsonl ] && break; sleep 0.1; done; kill -INT $p; wait $p)")
  local log = io.open(dir .. "/log"):read("a")
  T.eq(rc, 0, log)
  T.truthy(log:find("interrupted %(Ctrl%-C%)"), log)
  local ckpt = log:match("saved (%S+checkpoint%-%d+)")
  T.truthy(ckpt and io.open(ckpt .. "/trainer_state.json"), "a checkpoint was written: " .. log)
  T.truthy(io.open(run .. "/loss.svg"), "the plot is written too")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ---------------------------------------------------------------- sample generations at eval time
-- On the tiny fixture model (tests/fixtures/models/tiny-qwen2, vocab 512) with the 512-id
-- tokenizer cut from Qwen2.5's (tests/gen/gen_tiny_tokenizer.py), f32 weights on the CPU.

local function fixture_lm()
  local m = assert(qlora.model.load(T.fixture("models/tiny-qwen2"), { quant = "none" }))
  local tok = assert(qlora.tokenizer.load(T.fixture("tokenizers/tiny512")))
  assert(m:check_tokenizer(tok))
  return m, tok
end

-- the test's own greedy loop: the whole sequence through the adapter, the first largest logit
local function reference_greedy(lo, ids, n, stop)
  local seq, out = table.move(ids, 1, #ids, 1, {}), {}
  for _ = 1, n do
    local z = lo:logits({ seq }):totable()
    z = z[#z]
    local best, bv = 0, z[1]
    for i = 2, #z do if z[i] > bv then best, bv = i - 1, z[i] end end
    out[#out + 1], seq[#seq + 1] = best, best
    local halt = false
    for _, s in ipairs(stop) do halt = halt or s == best end
    if halt then break end
  end
  return out
end

local function chat_data(path, n)
  local f = io.open(path, "w")
  for i = 1, n do
    f:write(json.encode({ messages = { { role = "user", content = "count to " .. i },
                                       { role = "assistant", content = string.rep(" and", i % 4 + 1) .. " done" } } }), "\n")
  end
  f:close()
end

local rows_of = T.jsonl_rows

T.test("greedy with a fresh adapter (B = 0) equals model:generate's greedy (KV cache, C)", function()
  local m, tok = fixture_lm()
  local lo = qlora.lora.new(m, { r = 4, seed = 2 })
  for _, prompt in ipairs({ "the quick brown fox", "a" }) do
    local ids = tok:encode(prompt)
    T.eq(train.greedy(lo, ids, 12, {}), m:generate(ids, { max_new_tokens = 12, stop = {} }), prompt)
    local first = m:generate(ids, { max_new_tokens = 1, stop = {} })[1]
    T.eq(train.greedy(lo, ids, 12, { first }), { first }, "stops at a stop id")
  end
end)

T.test("samples at each evaluation equal a direct generation with that step's adapter", function()
  local dir = T.tmpdir()
  local m, tok = fixture_lm()
  write_data(dir .. "/d.jsonl", 24)
  local prompts = { "the quick brown", "a lazy dog and" }
  local t0 = os.time()
  local tr = train.new { model = m, tokenizer = tok, data = dir .. "/d.jsonl", out = dir .. "/run", lora = { r = 8, alpha = 16 },
                         seq_len = 32, batch_size = 2, lr = 3e-2, warmup = 0, max_steps = 4, eval_every = 2, save_every = 2,
                         eval_fraction = 0.1, seed = 4, samples = prompts, sample_tokens = 10 }
  T.eq(tr.sample_chat, false, "text data: raw prompts")
  T.eq(tr:sample_ids("the quick brown"), tok:encode("the quick brown"))
  tr:fit()
  local rows = rows_of(dir .. "/run/samples.jsonl")
  T.eq(#rows, 4, "two prompts at steps 2 and 4")
  local stop = { 2, tok.eos_id }   -- the model's eos (config.json) and the tokenizer's
  local base = {}
  for _, p in ipairs(prompts) do base[p] = tok:decode(m:generate(tok:encode(p), { max_new_tokens = 10, stop = stop }), { skip_special = true }) end
  for i, r in ipairs(rows) do
    T.eq(r.step, i <= 2 and 2 or 4)
    T.eq(r.prompt, prompts[(i - 1) % 2 + 1])
    T.truthy(math.type(r.time) == "integer" and r.time >= t0 and r.time <= os.time(), "time: " .. tostring(r.time))
    -- the adapter of that step, loaded from its checkpoint into a fresh model
    local m2 = assert(qlora.model.load(T.fixture("models/tiny-qwen2"), { quant = "none" }))
    local lo = assert(qlora.lora.load(m2, dir .. "/run/checkpoint-" .. r.step))
    local want = tok:decode(reference_greedy(lo, tok:encode(r.prompt), 10, stop), { skip_special = true })
    T.eq(r.text, want, "step " .. r.step .. " prompt " .. r.prompt)
    T.truthy(r.step ~= 4 or r.text ~= base[r.prompt], "the trained adapter changed the sample: " .. r.text)
  end
  os.execute("rm -rf '" .. dir .. "'")
end)

-- a batch whose every label is masked (here: chat records whose answer falls past seq_len, cut
-- away) has no token to learn; it used to give a 0/0 loss that metrics.jsonl could not hold
T.test("batches with no token to learn are skipped; data with none at all is refused", function()
  local dir = T.tmpdir()
  local m, tok = fixture_lm()
  local function data(path, n, long_every)
    local f = io.open(path, "w")
    for i = 1, n do
      local q = (long_every and i % long_every == 0 or not long_every) and string.rep("count the words ", 40) or "count to 3"
      f:write(json.encode({ messages = { { role = "user", content = q }, { role = "assistant", content = "done" } } }), "\n")
    end
    f:close()
  end
  data(dir .. "/mixed.jsonl", 24, 2)
  local tr = train.new { model = m, tokenizer = tok, data = dir .. "/mixed.jsonl", out = dir .. "/run", lora = { r = 4 },
                         seq_len = 128, batch_size = 1, lr = 1e-2, max_steps = 8, save_every = 0, eval_fraction = 0,
                         seed = 3 }
  tr:fit()
  T.truthy((tr.skipped_batches or 0) > 0, "some batches had nothing to learn")
  local n = 0
  for line in io.lines(dir .. "/run/metrics.jsonl") do
    local r = json.decode(line)
    T.truthy(type(r.loss) == "number" and r.loss == r.loss and r.loss < math.huge, line)
    n = n + 1
  end
  T.eq(n, 8)
  data(dir .. "/long.jsonl", 12)
  local tr2 = train.new { model = m, tokenizer = tok, data = dir .. "/long.jsonl", out = dir .. "/run2", lora = { r = 4 },
                          seq_len = 128, batch_size = 1, lr = 1e-2, max_steps = 4, save_every = 0, eval_fraction = 0 }
  local ok, err = pcall(tr2.fit, tr2)
  T.eq(ok, false)
  T.truthy(tostring(err):find("no batch has a token to learn") and tostring(err):find("seq_len=128"), tostring(err))
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("chat data: samples go through the chat template", function()
  local dir = T.tmpdir()
  local m, tok = fixture_lm()
  chat_data(dir .. "/c.jsonl", 16)
  local tr = train.new { model = m, tokenizer = tok, data = dir .. "/c.jsonl", out = dir .. "/run", lora = { r = 4 },
                         seq_len = 128, batch_size = 2, lr = 2e-2, max_steps = 2, eval_every = 2, save_every = 0,
                         seed = 1, samples = { "count to 3" }, sample_tokens = 6 }
  T.eq(tr.sample_chat, true)
  local ids = tok:apply_chat_template({ { role = "user", content = "count to 3" } }, { add_generation_prompt = true, tokenize = true })
  T.eq(tr:sample_ids("count to 3"), ids)
  T.truthy(tok:decode(ids):find("<|im_start|>assistant\n", 1, true))
  tr:fit()
  local rows = rows_of(dir .. "/run/samples.jsonl")
  T.eq(#rows, 1)
  T.eq(rows[1].text, tok:decode(reference_greedy(tr.lora, ids, 6, { 2, tok.eos_id }), { skip_special = true }))
  -- sample_chat = false overrides
  local tr2 = train.new { model = m, tokenizer = tok, data = dir .. "/c.jsonl", samples = { "x" }, sample_chat = false }
  T.eq(tr2:sample_ids("count to 3"), tok:encode("count to 3"))
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("samples do not change training: the same losses step for step", function()
  local dir = T.tmpdir()
  local m, tok = fixture_lm()
  write_data(dir .. "/d.jsonl", 24)
  local function run(out, samples)
    train.new { model = m, tokenizer = tok, data = dir .. "/d.jsonl", out = out, lora = { r = 4, dropout = 0.1 },
                seq_len = 32, batch_size = 2, lr = 1e-2, max_steps = 5, eval_every = 2, save_every = 0, seed = 9,
                samples = samples, sample_tokens = 5 }:fit()
    return rows_of(out .. "/metrics.jsonl")
  end
  local a, b = run(dir .. "/a", nil), run(dir .. "/b", { "the fox", "dog" })
  T.eq(#a, 5)
  for i = 1, 5 do
    T.eq(b[i].loss, a[i].loss, "step " .. i)
    T.eq(b[i].eval_loss, a[i].eval_loss, "eval at step " .. i)
  end
  T.eq(#rows_of(dir .. "/b/samples.jsonl"), 6, "3 evaluations x 2 prompts")
  T.eq(io.open(dir .. "/a/samples.jsonl"), nil)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("bad samples input is refused before training, naming the file", function()
  local dir = T.tmpdir()
  local m, tok = fixture_lm()
  write_data(dir .. "/d.jsonl", 8)
  local function new(samples, n)
    return train.new { model = m, tokenizer = tok, data = dir .. "/d.jsonl", samples = samples, sample_tokens = n }
  end
  T.raises(function() new(dir .. "/missing.txt") end, "samples=" .. dir:gsub("%p", "%%%0") .. "/missing%.txt: cannot read")
  local f = io.open(dir .. "/empty.txt", "w"); f:write("\n   \n\r\n"); f:close()
  T.raises(function() new(dir .. "/empty.txt") end, "empty%.txt: no prompts in the file")
  T.raises(function() new({}) end, "non%-empty list of prompts")
  T.raises(function() new({ "fine", "  " }) end, "prompt 2 must be a non%-empty string")
  T.raises(function() new({ "fine" }, 0) end, "sample_tokens must be an integer >= 1")
  f = io.open(dir .. "/p.txt", "w"); f:write("first prompt\r\n\nsecond one\n"); f:close()
  T.eq(train.read_prompts(dir .. "/p.txt"), { "first prompt", "second one" })
  -- the recipe says it before loading the model
  tiny(dir .. "/m")
  local cmd = T.qlora .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. dir .. "/run samples="
  local out, rc = T.sh(cmd .. dir .. "/empty.txt")
  T.eq(rc, 2, out)
  T.truthy(out:find("samples=" .. dir .. "/empty.txt: no prompts in the file", 1, true), out)
  T.truthy(not out:find("loaded in"), "before the model loads: " .. out)
  out, rc = T.sh(cmd .. dir)
  T.truthy(rc == 2 and out:find("samples=" .. dir .. ": is a folder", 1, true), out)
  T.eq(io.open(dir .. "/run/metrics.jsonl"), nil, "nothing was trained")
  os.execute("rm -rf '" .. dir .. "'")
end)

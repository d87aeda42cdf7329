-- The training loop (qlora.train, recipes/train.lua) on a tiny random model:
-- the loss goes down, accumulation equals a bigger batch, chat/instruction data
-- masks prompts, and a run killed with SIGKILL resumes to the same losses.
local T = ...
local train, llm, json = qlora.train, qlora.llm, qlora.json

local function tiny(dir)
  llm.random_model(dir, { tokenizer = T.fixture("tokenizers/gpt2"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  return dir
end

local function write_data(path, n)
  local words = { "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "home" }
  local f = io.open(path, "w")
  for i = 1, n do
    local w = {}
    for k = 1, 12 do w[k] = words[(i + k) % #words + 1] end
    f:write(json.encode({ text = table.concat(w, " ") }), "\n")
  end
  f:close()
end

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

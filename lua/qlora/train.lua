-- qlora.train — the training loop around qlora.lora's step.
--
-- Data: JSONL records in any of three shapes, tokenized with the model's tokenizer:
--   {"text": ...}                                     every token is a target
--   {"messages": [{"role": ..., "content": ...}]}     rendered with the chat template;
--                                                     only assistant turns are targets
--   {"instruction": ..., "input": ..., "output": ...} alpaca: only the output is a target
-- Examples are packed into rows of seq_len tokens; documents in one row never
-- see each other (positions restart, attention stops at the boundary).
--
--   local train = qlora.train
--   local tr = train.new{model = m, tokenizer = tok, data = "data/chunks.jsonl", out = "runs/x",
--                        lora = {r = 16, alpha = 32}, seq_len = 512, batch_size = 4, grad_accum = 1,
--                        lr = 2e-4, warmup = 0.03, schedule = "cosine", epochs = 1, max_steps = nil,
--                        weight_decay = 0, max_grad_norm = 1.0, seed = 0, eval_fraction = 0.05,
--                        save_every = 100, eval_every = 50, checkpointing = false, tensorboard = true,
--                        samples = nil, sample_tokens = 64, sample_chat = nil, clock = nil}
--   tr:step()      -> {step, loss, lr, grad_norm, tokens, seconds}
--   tr:evaluate()  -> mean loss on the held-out split
--   tr:save(dir)   -> writes a checkpoint (adapter, optimizer state, trainer state)
--   tr:fit()       -> the whole run: progress bar, metrics.jsonl, checkpoints, Ctrl-C, loss.svg
--                     metrics.jsonl: one row per step ({step, loss, lr, grad_norm, tokens, tokens_per_s,
--                     time (Unix seconds), eval_loss and eval_perplexity when evaluated: every eval_every
--                     steps and at the last step}); a new run starts a new file, a resumed run continues it.
--                     tensorboard (default true): the same scalars in a TensorBoard event file in out
--                     (qlora.tfevents; tags train/loss, train/learning_rate, train/grad_norm,
--                     train/tokens_per_s, eval/loss, eval/perplexity). samples (a list of prompts, or a
--                     file of one prompt per line): at each evaluation a greedy continuation of each
--                     (sample_tokens tokens at most) with the current adapter, one row each in
--                     out/samples.jsonl ({step, prompt, text, time}); sample_chat (default: chat data and
--                     a chat template) renders prompts as a user turn; clock: a function giving the event
--                     log's wall times (Unix seconds; default the system clock)
--   tr:sample(prompt [, n]) -> text, ids   greedy continuation with the current adapter: through the
--                     chat template when the data is chat data and the tokenizer has one, else raw text
--   train.read_prompts(path) -> prompts | nil, message   a samples file: one prompt per line
--   train.greedy(adapter, ids, n, stop) -> ids   greedy decoding with an adapter applied
--   train.run_outputs(dir) -> the names of a run's outputs already in dir (metrics.jsonl, checkpoint-N, ...)
--   train.new{..., resume = "runs/x/checkpoint-100"} continues a run exactly
local M = {}
local json, sys = qlora.json, qlora.sys
local tfevents = require("qlora.tfevents")

-- ---------------------------------------------------------------- schedules and clipping

-- multiplier of the base learning rate at optimizer step `step` (0-based), as
-- transformers' get_{cosine,linear,constant}_schedule_with_warmup
function M.schedule(kind, step, warmup, total)
  if step < warmup then return step / math.max(1, warmup) end
  if kind == "constant" then return 1.0 end
  local progress = (step - warmup) / math.max(1, total - warmup)
  if kind == "linear" then return math.max(0.0, 1.0 - progress) end
  if kind == "cosine" then return math.max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))) end
  error("unknown schedule '" .. tostring(kind) .. "' (cosine, linear or constant)")
end

-- torch.nn.utils.clip_grad_norm_: scales the gradients by min(1, max / (norm + 1e-6)); returns the norm before
function M.clip_grad_norm(lo, max_norm)
  local norm = lo:grad_norm()
  if max_norm and max_norm > 0 then
    local coef = max_norm / (norm + 1e-6)
    if coef < 1 then lo:scale_grad(coef) end
  end
  return norm
end

-- ---------------------------------------------------------------- device

-- The device to train on for a `device=` setting: "auto" (or nil) picks the first GPU
-- when doctor's checks would pass (a CUDA build, a visible GPU with bf16, a kernel that
-- ran on it), else the CPU. Returns the device string and why, or nil and the problem
-- for an explicit device that cannot be used.
function M.pick_device(setting)
  setting = setting or "auto"
  if setting == "cpu" then return "cpu", "asked for" end
  local r = qlora.device.probe()
  local g = r.gpus and r.gpus[1]
  local usable = r.cuda_built and g and g.kernel_ok and g.bf16
  if setting == "auto" then
    if usable then return "cuda", string.format("%s, sm_%d, doctor's checks pass", g.name, g.sm) end
    if not r.cuda_built then return "cpu", "this build has no CUDA" end
    if not g then return "cpu", "no CUDA GPU visible" end
    return "cpu", "the GPU cannot run this binary's kernels or has no bf16: run `qlora doctor`"
  end
  if setting:match("^cuda") then
    if not r.cuda_built then return nil, "device=" .. setting .. ": this build has no CUDA (./setup.sh --cuda=on with a CUDA toolkit)" end
    local idx = tonumber(setting:match("^cuda:(%d+)$") or "0")
    local gi = r.gpus and r.gpus[idx + 1]
    if not gi then return nil, "device=" .. setting .. ": no such GPU (run `qlora doctor`)" end
    if not gi.kernel_ok then return nil, "device=" .. setting .. ": " .. gi.name .. " cannot run this binary's kernels (run `qlora doctor`)" end
    if not gi.bf16 then return nil, "device=" .. setting .. ": " .. gi.name .. " has no bf16 (compute capability 8.0 or newer is needed)" end
    return setting, gi.name
  end
  return nil, "device must be auto, cpu, cuda or cuda:N, not '" .. tostring(setting) .. "'"
end

-- ---------------------------------------------------------------- data

-- reproducible permutation of 1..n for (seed, epoch): splitmix64 + Fisher-Yates,
-- the same on every machine and Lua build
local function splitmix(state)
  state = state + 0x9E3779B97F4A7C15
  local z = state
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return state, z ~ (z >> 31)
end
function M.permutation(n, seed, epoch)
  local p = {}
  for i = 1, n do p[i] = i end
  local s = (seed or 0) * 1000003 + (epoch or 0)
  for i = n, 2, -1 do
    local r
    s, r = splitmix(s)
    local j = (r >> 1) % i + 1
    p[i], p[j] = p[j], p[i]
  end
  return p
end

-- the records of a JSONL file and, for each, "path:line" (for messages about it)
function M.read_jsonl(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, path .. ": cannot open (" .. tostring(err) .. ")" end
  local recs, where, n = {}, {}, 0
  for line in f:lines() do
    n = n + 1
    if line:find("%S") then
      local v, e = json.decode(line, path .. ":" .. n)
      if not v then f:close(); return nil, e end
      if type(v) ~= "table" then f:close(); return nil, path .. ":" .. n .. ": a record must be a JSON object" end
      recs[#recs + 1] = v
      where[#recs] = path .. ":" .. n
    end
  end
  f:close()
  if #recs == 0 then return nil, path .. ": no records (an empty file?)" end
  return recs, where
end

local ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"

-- token ids and labels (-100 = not a target) of one record
function M.encode_record(tok, rec)
  local eos = tok.eos_id
  if type(rec.text) == "string" then
    local ids = tok:encode(rec.text)
    if eos and ids[#ids] ~= eos then ids[#ids + 1] = eos end
    return ids, table.move(ids, 1, #ids, 1, {})   -- a copy (table.unpack fails past ~1M tokens)
  end
  local messages = rec.messages
  if messages == nil and type(rec.instruction) == "string" and type(rec.output) == "string" then
    local prompt = rec.instruction
    if type(rec.input) == "string" and rec.input ~= "" then prompt = prompt .. "\n\n" .. rec.input end
    if tok.chat_template then
      messages = { { role = "user", content = prompt }, { role = "assistant", content = rec.output } }
    else  -- no chat template: the Alpaca prompt
      local p = tok:encode(ALPACA .. "### Instruction:\n" .. prompt .. "\n\n### Response:\n")
      local o = tok:encode(rec.output, { add_special = false })
      local ids, labels = {}, {}
      for _, t in ipairs(p) do ids[#ids + 1] = t; labels[#labels + 1] = -100 end
      for _, t in ipairs(o) do ids[#ids + 1] = t; labels[#labels + 1] = t end
      if eos then ids[#ids + 1] = eos; labels[#labels + 1] = eos end
      return ids, labels
    end
  end
  if type(messages) == "table" then
    if not tok.chat_template then return nil, "chat records need a tokenizer with a chat template" end
    if #messages == 0 then return nil, "\"messages\" must be a non-empty array of {\"role\": ..., \"content\": ...}" end
    for i, msg in ipairs(messages) do
      if type(msg) ~= "table" or type(msg.role) ~= "string" or type(msg.content) ~= "string" then
        return nil, string.format("message %d is not an object with a string \"role\" and \"content\"", i)
      end
    end
    local ok, ids = pcall(tok.apply_chat_template, tok, messages, { tokenize = true })
    if not ok then return nil, tostring(ids) end
    local labels = {}
    for i = 1, #ids do labels[i] = -100 end
    -- each assistant turn: the tokens after the prompt that leads to it
    for i, msg in ipairs(messages) do
      if msg.role == "assistant" then
        local before = tok:apply_chat_template(table.move(messages, 1, i - 1, 1, {}), { tokenize = true, add_generation_prompt = true })
        local through = tok:apply_chat_template(table.move(messages, 1, i, 1, {}), { tokenize = true })
        for k = 1, #before do
          if before[k] ~= ids[k] then return nil, "the chat template does not render turns as prefixes; cannot mask prompts" end
        end
        for k = #before + 1, math.min(#through, #ids) do labels[k] = ids[k] end
      end
    end
    return ids, labels
  end
  return nil, "unknown record: expected \"text\", \"messages\" or \"instruction\"/\"output\""
end

-- greedy packing, in the given order, into rows of seq_len; an example longer
-- than seq_len is cut to seq_len. Returns rows {ids, labels, doc_lens} and the count cut.
function M.pack(examples, order, seq_len, pad_id)
  local rows, cut = {}, 0
  local cur = { ids = {}, labels = {}, doc_lens = {} }
  local function flush()
    if #cur.ids == 0 then return end
    for _ = #cur.ids + 1, seq_len do cur.ids[#cur.ids + 1] = pad_id; cur.labels[#cur.labels + 1] = -100 end
    rows[#rows + 1] = cur
    cur = { ids = {}, labels = {}, doc_lens = {} }
  end
  for _, i in ipairs(order) do
    local ex = examples[i]
    local n = #ex.ids
    if n > seq_len then n = seq_len; cut = cut + 1 end
    if #cur.ids + n > seq_len then flush() end
    for k = 1, n do cur.ids[#cur.ids + 1] = ex.ids[k]; cur.labels[#cur.labels + 1] = ex.labels[k] end
    cur.doc_lens[#cur.doc_lens + 1] = n
  end
  flush()
  return rows, cut
end

-- targets in a row: label[i+1] ~= -100 with i+1 in the same document
local function row_targets(row)
  local t, start = 0, 0
  for _, len in ipairs(row.doc_lens) do
    for k = start + 2, start + len do if row.labels[k] ~= -100 then t = t + 1 end end
    start = start + len
  end
  return t
end

-- ---------------------------------------------------------------- the trainer

local Trainer = {}
Trainer.__index = Trainer

local function num(v, d) if v == nil then return d end return tonumber(v) end

function M.new(cfg)
  local self = setmetatable({ cfg = cfg }, Trainer)
  assert(cfg.model, "train.new: model is required")
  assert(cfg.tokenizer, "train.new: tokenizer is required")
  self.model, self.tok = cfg.model, cfg.tokenizer
  self.seq_len = num(cfg.seq_len, 512)
  self.batch_size = num(cfg.batch_size, 4)
  self.grad_accum = num(cfg.grad_accum, 1)
  self.lr = num(cfg.lr, 2e-4)
  self.seed = num(cfg.seed, 0)
  self.out = cfg.out
  -- data: records -> examples -> train / eval split (seeded)
  local recs, where = cfg.records, {}
  if not recs then
    recs, where = M.read_jsonl(assert(cfg.data, "train.new: data (a JSONL file) or records is required"))
    if not recs then error(where, 0) end   -- where is the message then
  end
  local examples, skipped, n_chat = {}, 0, 0
  for i, r in ipairs(recs) do
    local ok, ids, labels = pcall(M.encode_record, self.tok, r)
    if not ok then ids, labels = nil, tostring(ids) end
    if not ids then
      skipped = skipped + 1
      if skipped <= 3 then io.stderr:write(string.format("train: %s: record skipped: %s\n", where[i] or "record " .. i, labels)) end
    elseif #ids > 1 then
      examples[#examples + 1] = { ids = ids, labels = labels }
      if r.messages ~= nil or (type(r.instruction) == "string" and type(r.output) == "string") then
        n_chat = n_chat + 1
      end
    end
  end
  if #examples == 0 then error("train: no usable records in the data", 0) end
  local perm = M.permutation(#examples, self.seed, -1)
  local n_eval = 0
  local frac = num(cfg.eval_fraction, 0.05)
  if frac > 0 and #examples >= 4 then n_eval = math.max(1, math.floor(#examples * frac + 0.5)) end
  self.train_examples, self.eval_examples = {}, {}
  for k, i in ipairs(perm) do
    local dst = k <= n_eval and self.eval_examples or self.train_examples
    dst[#dst + 1] = examples[i]
  end
  self.skipped = skipped
  self.pad_id = self.tok.pad_id or self.tok.eos_id or 0
  -- rows of epoch 0 tell the length of an epoch
  local rows0, cut = M.pack(self.train_examples, M.permutation(#self.train_examples, self.seed, 0), self.seq_len, self.pad_id)
  self.rows_per_epoch = #rows0
  self.cut = cut
  self.steps_per_epoch = math.max(1, math.ceil(#rows0 / (self.batch_size * self.grad_accum)))
  self.max_steps = num(cfg.max_steps, nil) or math.ceil(num(cfg.epochs, 1) * self.steps_per_epoch)
  local w = num(cfg.warmup, 0.03)
  self.warmup = w < 1 and math.floor(w * self.max_steps + 0.5) or math.floor(w)
  self.schedule_kind = cfg.schedule or "cosine"
  -- adapter
  local lopts = cfg.lora or {}
  self.lora = cfg.adapter or qlora.lora.new(self.model, { r = num(lopts.r, 16), alpha = num(lopts.alpha, nil),
    dropout = num(lopts.dropout, 0), rslora = lopts.rslora, targets = lopts.targets, layers = lopts.layers,
    seed = self.seed })
  self.state = { step = 0, epoch = 0, pos = 0, tokens = 0, losses = {}, eval = {} }
  self.rows = rows0
  -- sample generations at eval time: checked here, before any training
  if cfg.samples ~= nil then
    local prompts, perr = cfg.samples, nil
    if type(prompts) == "string" then
      prompts, perr = M.read_prompts(prompts)
      if not prompts then error("train: " .. perr, 0) end
    end
    if type(prompts) ~= "table" or #prompts == 0 then
      error("train: samples must be a non-empty list of prompts (strings) or a file of them", 0)
    end
    for i, p in ipairs(prompts) do
      if type(p) ~= "string" or not p:find("%S") then
        error(string.format("train: samples: prompt %d must be a non-empty string", i), 0)
      end
    end
    self.prompts = prompts
  end
  self.sample_tokens = num(cfg.sample_tokens, 64)
  if math.type(self.sample_tokens) ~= "integer" or self.sample_tokens < 1 then
    error("train: sample_tokens must be an integer >= 1", 0)
  end
  -- samples go through the chat template when most records are chat-shaped (and it has one)
  if cfg.sample_chat ~= nil then self.sample_chat = cfg.sample_chat and true or false
  else self.sample_chat = self.tok.chat_template ~= nil and 2 * n_chat > #examples end
  if cfg.resume then self:load(cfg.resume) end
  return self
end

function Trainer:_rows_for_epoch(epoch)
  if epoch ~= self.rows_epoch then
    self.rows = M.pack(self.train_examples, M.permutation(#self.train_examples, self.seed, epoch), self.seq_len, self.pad_id)
    self.rows_epoch = epoch
  end
  return self.rows
end

-- the next micro-batch of rows (advances the data position, wrapping into the next epoch)
function Trainer:_next_rows()
  local st = self.state
  local rows = self:_rows_for_epoch(st.epoch)
  local out = {}
  for _ = 1, self.batch_size do
    if st.pos >= #rows then st.epoch = st.epoch + 1; st.pos = 0; rows = self:_rows_for_epoch(st.epoch) end
    st.pos = st.pos + 1
    out[#out + 1] = rows[st.pos]
  end
  return out
end

local function batch_of(rows)
  local ids, labels, lens = {}, {}, {}
  for i, r in ipairs(rows) do ids[i], labels[i], lens[i] = r.ids, r.labels, r.doc_lens end
  return ids, labels, { doc_lens = lens }
end

-- one optimizer step over grad_accum micro-batches; the loss is normalised by the
-- target tokens of the whole step (not per micro-batch)
function Trainer:step()
  local st, lo = self.state, self.lora
  local t0 = sys.now()
  -- rows whose every label is masked (chat or instruction records whose answers fall past
  -- seq_len) have nothing to learn from: such a batch is skipped, not turned into a 0/0 loss
  local micro, denom, skipped = {}, 0, 0
  while true do
    micro, denom = {}, 0
    for k = 1, self.grad_accum do
      micro[k] = self:_next_rows()
      for _, r in ipairs(micro[k]) do denom = denom + row_targets(r) end
    end
    if denom > 0 then break end
    skipped = skipped + 1
    local per_epoch = #self:_rows_for_epoch(st.epoch) // (self.batch_size * self.grad_accum)
    if skipped > math.max(1, per_epoch) then
      error(string.format("train: no batch has a token to learn: every label is masked (are the answers of the "
        .. "chat or instruction records past seq_len=%d?); raise seq_len or check the data", self.seq_len), 0)
    end
  end
  if skipped > 0 then
    self.skipped_batches = (self.skipped_batches or 0) + skipped
    io.stderr:write(string.format("train: step %d: %d batch%s with no token to learn skipped (every label masked: "
      .. "answers past seq_len=%d?)\n", st.step + 1, skipped, skipped == 1 and "" or "es", self.seq_len))
  end
  lo:zero_grad()
  local sum, count, tokens = 0, 0, 0
  for k = 1, self.grad_accum do
    local ids, labels, opts = batch_of(micro[k])
    opts.denom = math.max(1, denom)
    local ck = self.cfg.checkpointing
    opts.checkpointing = ck == "host" and "host" or (ck and true or false)
    local s, c = lo:forward_backward(ids, labels, opts)
    sum, count = sum + s, count + c
    tokens = tokens + #ids * self.seq_len
  end
  local norm = M.clip_grad_norm(lo, num(self.cfg.max_grad_norm, 1.0))
  if not (math.abs(sum) < math.huge and math.abs(norm) < math.huge) then   -- NaN or Inf: stop before AdamW spreads it
    self:_diverged(st.step + 1, not (math.abs(sum) < math.huge) and "loss" or "gradient norm",
                   not (math.abs(sum) < math.huge) and sum or norm)
  end
  local lr = self.lr * M.schedule(self.schedule_kind, st.step, self.warmup, self.max_steps)
  st.step = st.step + 1
  lo:adamw { lr = lr, beta1 = num(self.cfg.beta1, 0.9), beta2 = num(self.cfg.beta2, 0.999), eps = num(self.cfg.eps, 1e-8),
             weight_decay = num(self.cfg.weight_decay, 0), step = st.step }
  st.tokens = st.tokens + tokens
  local info = { step = st.step, loss = count > 0 and sum / count or 0 / 0, lr = lr, grad_norm = norm,
                 tokens = tokens, targets = count, seconds = sys.now() - t0, epoch = st.epoch }
  st.losses[#st.losses + 1] = info.loss
  return info
end

-- a non-finite loss or gradient: an error naming the step and the checkpoint to go back to
function Trainer:_diverged(step, what, value)
  local last = self.last_checkpoint
  error(string.format("train: step %d: the %s is %s (not finite), so training stopped; %s. "
    .. "Common causes: a learning rate too high (lr=%g), or NaN/Inf in the base weights or the data",
    step, what, tostring(value),
    last and ("the last good checkpoint is " .. last .. " (resume=" .. last .. " with a lower lr)")
         or "no checkpoint was saved before it", self.lr), 0)
end

function Trainer:evaluate()
  if #self.eval_examples == 0 then return nil end
  local order = {}
  for i = 1, #self.eval_examples do order[i] = i end
  local rows = M.pack(self.eval_examples, order, self.seq_len, self.pad_id)
  local sum, count = 0, 0
  for i = 1, #rows, self.batch_size do
    local ids, labels, opts = batch_of({ table.unpack(rows, i, math.min(#rows, i + self.batch_size - 1)) })
    local _, s, c = self.lora:loss(ids, labels, opts)
    sum, count = sum + s, count + c
  end
  local l = count > 0 and sum / count or 0 / 0
  self.state.eval[#self.state.eval + 1] = { step = self.state.step, loss = l }
  return l
end

-- ---------------------------------------------------------------- sample generations

-- the prompts of a samples file: one a line, blank lines skipped; nil, message naming the file
-- when it cannot be read or holds no prompt
function M.read_prompts(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "samples=" .. path .. ": cannot read the prompts file (" .. tostring(err) .. ")" end
  local text, rerr = f:read("a")
  f:close()
  if not text then return nil, "samples=" .. path .. ": cannot read the prompts file (" .. tostring(rerr) .. ")" end
  local prompts = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\r$", "")
    if line:find("%S") then prompts[#prompts + 1] = line end
  end
  if #prompts == 0 then return nil, "samples=" .. path .. ": no prompts in the file (one prompt per line)" end
  return prompts
end

-- greedy decoding with an adapter applied: the first largest logit, as model:generate's greedy.
-- There is no KV cache with an adapter, so each new token runs the whole sequence again (n tokens
-- cost n forward passes). Stops after n tokens or an id of stop (a list); returns the new ids.
function M.greedy(lo, ids, n, stop)
  local stops = {}
  for _, id in ipairs(stop or {}) do stops[id] = true end
  local seq = table.move(ids, 1, #ids, 1, {})
  local out = {}
  for _ = 1, n do
    local row = lo:logits({ seq }):select(1, -1):totable()
    local best = 1
    for t = 2, #row do if row[t] > row[best] then best = t end end
    local id = best - 1
    out[#out + 1] = id
    seq[#seq + 1] = id
    if stops[id] then break end
  end
  return out
end

-- the ids that end a sample: the model's eos ids and the tokenizer's
function Trainer:_stop_ids()
  local stop, seen = {}, {}
  local function add(id) if math.type(id) == "integer" and not seen[id] then seen[id] = true; stop[#stop + 1] = id end end
  local eos = self.model:config().eos_token_id
  if type(eos) == "table" then for _, id in ipairs(eos) do add(id) end else add(eos) end
  add(self.tok.eos_id)
  return stop
end

-- the prompt ids of a sample: one user turn through the chat template when tr.sample_chat, else the text
function Trainer:sample_ids(prompt)
  if self.sample_chat then
    return self.tok:apply_chat_template({ { role = "user", content = prompt } }, { add_generation_prompt = true, tokenize = true })
  end
  return self.tok:encode(prompt)
end

-- a greedy continuation of prompt (at most n tokens, default sample_tokens) with the current adapter
function Trainer:sample(prompt, n)
  local ids = M.greedy(self.lora, self:sample_ids(prompt), n or self.sample_tokens, self:_stop_ids())
  return self.tok:decode(ids, { skip_special = true }), ids
end

-- a checkpoint: written into dir.tmp, then renamed, so a crash never leaves half of one;
-- a failure (a full disk) removes dir.tmp again and raises
function Trainer:save(dir)
  local tmp = dir .. ".tmp"
  -- adapter weights that overflowed in the last update would make a checkpoint to nowhere
  for name, t in pairs(self.lora:params()) do
    local v = t:sum():item()
    if not (math.abs(v) < math.huge) then
      self:_diverged(self.state.step, "adapter weight " .. name:gsub("^base_model%.model%.", "") .. " after the update", v)
    end
  end
  local ok, err = pcall(function()
    assert(sys.remove_tree(tmp))
    assert(sys.mkdir(tmp))
    assert(self.lora:save(tmp, self.cfg.base_name or self.model:config().dir))
    assert(self.lora:save_state(tmp .. "/optimizer.safetensors"))
    local st = self.state
    local state = { step = st.step, epoch = st.epoch, pos = st.pos, tokens = st.tokens, seed = self.seed,
                    dropout_step = self.lora.dropout_step, lora_seed = self.lora.seed, losses = json.array(st.losses), eval = json.array(st.eval),
                    max_steps = self.max_steps, warmup = self.warmup, lr = self.lr, schedule = self.schedule_kind,
                    seq_len = self.seq_len, batch_size = self.batch_size, grad_accum = self.grad_accum }
    assert(sys.write_file(tmp .. "/trainer_state.json", json.encode(state, { indent = 1 })))
    assert(sys.remove_tree(dir))
    assert(sys.rename(tmp, dir))
  end)
  if not ok then
    sys.remove_tree(tmp)
    error("train: saving the checkpoint " .. dir .. " failed: " .. tostring(err), 0)
  end
  self.last_checkpoint = dir
  return dir
end

-- the fields of trainer_state.json: what each must be
local function is_int(lo) return function(v) return math.type(v) == "integer" and v >= lo end end
local function is_num(lo) return function(v) return type(v) == "number" and v >= lo and v < math.huge end end
local STATE_FIELDS = {
  { "step", is_int(0), "an integer >= 0" }, { "epoch", is_int(0), "an integer >= 0" },
  { "pos", is_int(0), "an integer >= 0" }, { "tokens", is_int(0), "an integer >= 0", optional = true },
  { "seed", is_int(math.mininteger), "an integer" },
  { "dropout_step", is_int(0), "an integer >= 0", optional = true },
  { "lora_seed", is_int(math.mininteger), "an integer", optional = true },
  { "max_steps", is_int(1), "an integer >= 1" }, { "warmup", is_num(0), "a number >= 0" },
  { "lr", function(v) return is_num(0)(v) and v > 0 end, "a number > 0" },
  { "schedule", function(v) return v == "cosine" or v == "linear" or v == "constant" end, "cosine, linear or constant" },
  { "seq_len", is_int(1), "an integer >= 1" }, { "batch_size", is_int(1), "an integer >= 1" },
  { "grad_accum", is_int(1), "an integer >= 1" },
  { "losses", function(v)
      if type(v) ~= "table" then return false end
      for i = 1, #v do if type(v[i]) ~= "number" then return false end end
      return next(v) == nil or #v > 0
    end, "an array of numbers", optional = true },
  { "eval", function(v)
      if type(v) ~= "table" then return false end
      for i = 1, #v do
        local e = v[i]
        if type(e) ~= "table" or math.type(e.step) ~= "integer" or type(e.loss) ~= "number" then return false end
      end
      return next(v) == nil or #v > 0
    end, "an array of {\"step\": integer, \"loss\": number}", optional = true },
}

-- reads and checks a checkpoint's trainer_state.json; errors name the file and the key
function M.read_state(dir)
  local path = dir .. "/trainer_state.json"
  local f = io.open(path, "rb")
  if not f then error(dir .. ": no trainer_state.json (not a checkpoint?)", 0) end
  local text = f:read("a")
  f:close()
  local st, err = json.decode(text or "", path)
  if not st then error(err, 0) end
  if type(st) ~= "table" or st[1] ~= nil then error(path .. ": must be a JSON object", 0) end
  for _, fld in ipairs(STATE_FIELDS) do
    local k, ok, what = fld[1], fld[2], fld[3]
    local v = st[k]
    if v == json.null and fld.optional then v = nil end
    if v == nil and not fld.optional then
      error(string.format("%s: \"%s\" is missing (the checkpoint is damaged: resume from another one)", path, k), 0)
    end
    if v ~= nil and not ok(v) then
      local shown = v == json.null and "null" or type(v) == "string" and string.format("%q", v)
                    or type(v) == "table" and (v[1] ~= nil and "a list" or "an object") or tostring(v)
      error(string.format("%s: \"%s\" must be %s, not %s (the checkpoint is damaged: resume from another one)",
                          path, k, what, shown), 0)
    end
    st[k] = v
  end
  return st
end

function Trainer:load(dir)
  local st = M.read_state(dir)
  for _, k in ipairs({ "seq_len", "batch_size", "grad_accum", "seed" }) do
    local mine = k == "seed" and self.seed or self[k]
    if st[k] ~= mine then
      error(string.format("%s: the checkpoint was made with %s=%s, this run has %s: resume with the same settings",
                          dir, k, tostring(st[k]), tostring(mine)), 0)
    end
  end
  local lo = assert(qlora.lora.load(self.model, dir))
  -- a resumed run trains the checkpoint's adapter: LoRA settings this run asked differently are
  -- said (self.resume_note; recipes/train.lua prints it), never silently dropped
  local asked, diffs = self.lora, {}
  if asked then
    for _, k in ipairs({ "r", "alpha", "dropout", "rslora" }) do
      local function show(v) return type(v) == "number" and string.format("%g", v) or tostring(v) end
      if asked[k] ~= lo[k] then diffs[#diffs + 1] = string.format("%s=%s (this run asked %s=%s)", k, show(lo[k]), k,
                                                                  show(asked[k])) end
    end
  end
  if #diffs > 0 then
    self.resume_note = string.format("%s: resuming with the checkpoint's LoRA settings %s; for other settings start a "
                                     .. "new run", dir, table.concat(diffs, ", "))
  end
  assert(lo:load_state(dir .. "/optimizer.safetensors"))
  lo:set_dropout_step(st.dropout_step or 0, st.lora_seed)
  self.lora = lo
  self.state = { step = st.step, epoch = st.epoch, pos = st.pos, tokens = st.tokens or 0,
                 losses = st.losses or {}, eval = st.eval or {} }
  self.max_steps, self.warmup, self.lr, self.schedule_kind = st.max_steps, st.warmup, st.lr, st.schedule
  self.resumed_from = dir
  self.last_checkpoint = dir
end

-- the newest complete checkpoint of a run folder: the checkpoint-N folder with the
-- largest N that holds a trainer_state.json (temporaries such as checkpoint-N.tmp are
-- ignored); returns its path and N, or nil
function M.latest_checkpoint(run)
  local names = sys.list_dir(run)
  local best, best_n
  for _, name in ipairs(names or {}) do
    local n = name:match("^checkpoint%-(%d+)$")
    n = n and math.tointeger(tonumber(n))
    local path = run .. "/" .. name
    if n and (not best_n or n > best_n) and sys.is_dir(path) and sys.exists(path .. "/trainer_state.json") then
      best, best_n = path, n
    end
  end
  return best, best_n
end

-- the training outputs a run folder already holds (names, sorted): metrics.jsonl, samples.jsonl,
-- loss.svg, adapter, checkpoint-N, TensorBoard event files; anything else in it is not a run's
-- (checkpoint-N.tmp, the leftover of a killed save, is not an output either: fit removes it)
function M.run_outputs(run)
  local found = {}
  for _, name in ipairs(sys.list_dir(run) or {}) do
    if name == "metrics.jsonl" or name == "samples.jsonl" or name == "loss.svg" or name == "adapter"
       or name:match("^checkpoint%-%d+$") or tfevents.is_event_file(name) then
      found[#found + 1] = name
    end
  end
  table.sort(found)
  return found
end

-- metrics.jsonl at the start of fit: a new run starts a new file; a resumed run keeps the
-- rows up to its checkpoint's step (the steps after it are done again)
local function start_metrics(path, step)
  if step == 0 then os.remove(path); return end
  local f = io.open(path, "rb")
  if not f then return end
  local keep = {}
  for line in f:lines() do
    local ok, r = pcall(json.decode, line)
    if ok and type(r) == "table" and math.type(r.step) == "integer" and r.step <= step then
      keep[#keep + 1] = line
    end
  end
  f:close()
  assert(sys.write_file(path, #keep > 0 and table.concat(keep, "\n") .. "\n" or ""))
end

-- ---------------------------------------------------------------- reporting

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, (s % 3600) // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return s .. "s"
end

-- a round step for about n intervals over range: 1, 2, 2.5 or 5 times a power of ten
local function nice_step(range, n)
  local raw = range / n
  local p = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs({ 1, 2, 2.5, 5, 10 }) do if m * p >= raw then return m * p end end
  return 10 * p
end

local function esc(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;")) end

-- loss curve as a small standalone SVG: training loss (line) and eval loss (dots) against
-- the step, with x ticks, y ticks at round values evenly spaced, axis labels and a legend
function M.plot_svg(losses, evals, path, title)
  local W, H, L, R, T, B = 640, 360, 70, 24, 40, 50
  local lo, hi = math.huge, -math.huge
  local n = #losses
  for _, v in ipairs(losses) do if v == v then lo, hi = math.min(lo, v), math.max(hi, v) end end
  for _, e in ipairs(evals or {}) do
    if e.loss == e.loss then lo, hi = math.min(lo, e.loss), math.max(hi, e.loss) end
    n = math.max(n, e.step or 0)
  end
  n = math.max(2, n)
  if lo == math.huge then lo, hi = 0, 1 end
  if hi - lo < 1e-9 then lo, hi = lo - 0.5, hi + 0.5 end
  local ys = nice_step(hi - lo, 5)
  lo, hi = math.floor(lo / ys + 1e-9) * ys, math.ceil(hi / ys - 1e-9) * ys
  if hi <= lo then hi = lo + ys end
  local function x(i) return L + (W - L - R) * (i - 1) / (n - 1) end
  local function y(v) return T + (H - T - B) * (hi - v) / (hi - lo) end
  local has_eval = evals and #evals > 0
  local out = { string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">', W, H),
    string.format('<rect width="%d" height="%d" fill="white"/>', W, H),
    string.format('<text x="%d" y="20" font-size="14">%s</text>', L,
                  esc(title or (has_eval and "training loss (line) and eval loss (dots)" or "training loss"))),
    string.format('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>', L, H - B, W - R, H - B),
    string.format('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>', L, T, L, H - B) }
  -- y ticks at multiples of ys, with light grid lines
  local k = 0
  while true do
    local v = lo + k * ys
    if v > hi + ys * 1e-6 then break end
    local yy = y(v)
    out[#out + 1] = string.format('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>', L + 1, yy, W - R, yy)
    out[#out + 1] = string.format('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="black"/>', L - 4, yy, L, yy)
    out[#out + 1] = string.format('<text x="%d" y="%.1f" text-anchor="end">%s</text>', L - 7, yy + 4,
                                  string.format("%.10g", tonumber(string.format("%.6g", v))))
    k = k + 1
  end
  -- x ticks at round step numbers
  local xs = math.max(1, math.floor(nice_step(n - 1, 6) + 0.5))
  for st = 0, n, xs do
    local s1 = math.max(1, st)
    out[#out + 1] = string.format('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>', x(s1), H - B, x(s1), H - B + 4)
    out[#out + 1] = string.format('<text x="%.1f" y="%d" text-anchor="middle">%d</text>', x(s1), H - B + 17, s1)
  end
  out[#out + 1] = string.format('<text x="%d" y="%d" text-anchor="middle">step</text>', (L + W - R) // 2, H - 12)
  out[#out + 1] = string.format('<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">loss</text>',
                                (T + H - B) // 2, (T + H - B) // 2)
  local pts = {}
  for i, v in ipairs(losses) do if v == v then pts[#pts + 1] = string.format("%.1f,%.1f", x(i), y(v)) end end
  out[#out + 1] = '<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="' .. table.concat(pts, " ") .. '"/>'
  for _, e in ipairs(evals or {}) do
    if e.loss == e.loss then
      out[#out + 1] = string.format('<circle cx="%.1f" cy="%.1f" r="3.5" fill="#d62728"/>', x(math.max(1, e.step)), y(e.loss))
    end
  end
  out[#out + 1] = string.format('<text x="%d" y="20" text-anchor="end"><tspan fill="#1f77b4">— train</tspan>%s</text>',
                                W - R, has_eval and ' <tspan fill="#d62728">● eval</tspan>' or "")
  out[#out + 1] = "</svg>"
  return sys.write_file(path, table.concat(out, "\n") .. "\n")
end

-- the whole run: steps until max_steps, checkpoints every save_every, eval every
-- eval_every, metrics.jsonl, a progress line, Ctrl-C saves and stops, loss.svg at the end
function Trainer:fit(opts)
  opts = opts or {}
  local st, out = self.state, self.out
  assert(out, "fit: out (a folder) is required")
  -- the run folder must be a folder we can write: said before the first step, as a message
  local made, why = sys.mkdir(out)
  if not made then
    error(string.format("train: cannot use %s as the run folder (%s): out= must be a folder you can write", out,
                        tostring(why)), 0)
  end
  -- leftovers of a save that was killed (kill -9, power loss) are never checkpoints
  for _, name in ipairs(sys.list_dir(out) or {}) do
    if name:match("^checkpoint%-%d+%.tmp$") then sys.remove_tree(out .. "/" .. name) end
  end
  local metrics = out .. "/metrics.jsonl"
  local probe_ok, ferr = pcall(start_metrics, metrics, st.step)
  local f
  if probe_ok then f, ferr = io.open(metrics, "ab") end
  if not f then
    error(string.format("train: cannot write %s (%s): out= must be a folder you can write", metrics, tostring(ferr)), 0)
  end
  f:close()
  -- sample generations: samples.jsonl as metrics.jsonl (a new run starts it, a resumed run keeps its rows)
  local samples = out .. "/samples.jsonl"
  if self.prompts then
    local sok, serr = pcall(start_metrics, samples, st.step)
    if not sok then error(string.format("train: cannot write %s (%s)", samples, tostring(serr)), 0) end
  elseif st.step == 0 then
    os.remove(samples)
  end
  -- the TensorBoard event log: a new run replaces the old files; each run (resumed or not) writes
  -- a new file that starts with SessionLog START at the first step it will log, as TensorFlow's
  -- sessions did. On a later START, TensorBoard drops the steps logged at or past it: a resumed
  -- run's steps past its checkpoint, which the killed run had logged, show once
  local events
  if st.step == 0 then
    for _, name in ipairs(sys.list_dir(out) or {}) do
      if tfevents.is_event_file(name) then os.remove(out .. "/" .. name) end
    end
  end
  if self.cfg.tensorboard ~= false then
    local werr
    events, werr = tfevents.open(out, { clock = self.cfg.clock })
    if not events then error("train: " .. werr .. ": out= must be a folder you can write", 0) end
    local rok, rerr = pcall(events.restart, events, st.step + 1)
    if not rok then events:close(); error("train: " .. tostring(rerr), 0) end
  end
  local save_every, eval_every = num(self.cfg.save_every, 0), num(self.cfg.eval_every, 0)
  local tty = sys.isatty(1)
  local t_start, tok_start = sys.now(), st.tokens
  self.start_step = st.step
  sys.trap_interrupt(true)
  local stopped, final_eval
  local ok, err = pcall(function()
    while st.step < self.max_steps do
      local info = self:step()
      local elapsed = sys.now() - t_start
      local tps = (st.tokens - tok_start) / math.max(1e-9, elapsed)
      local eta = (self.max_steps - st.step) * elapsed / math.max(1, st.step - (self.start_step or 0))
      info.tokens_per_s = tps
      info.time = os.time()
      -- the held-out split every eval_every steps and after the last step (its row carries it)
      local eval_now = (eval_every > 0 and st.step % eval_every == 0) or st.step == self.max_steps
      if eval_now then
        info.eval_loss = self:evaluate()
        if info.eval_loss and not (math.abs(info.eval_loss) < math.huge) then
          self:_diverged(st.step, "evaluation loss", info.eval_loss)
        end
        if info.eval_loss then
          local ppl = math.exp(info.eval_loss)
          if ppl < math.huge then info.eval_perplexity = ppl end
          if st.step == self.max_steps then final_eval = info.eval_loss end
        end
      end
      assert(sys.append_line(metrics, json.encode(info)))
      if events then
        local v = { { "train/loss", info.loss }, { "train/learning_rate", info.lr }, { "train/grad_norm", info.grad_norm },
                    { "train/tokens_per_s", tps } }
        if info.eval_loss then v[#v + 1] = { "eval/loss", info.eval_loss } end
        if info.eval_perplexity then v[#v + 1] = { "eval/perplexity", info.eval_perplexity } end
        local wok, werr = pcall(events.scalars, events, st.step, v)
        if not wok then error("train: " .. tostring(werr), 0) end
      end
      -- greedy samples from the fixed prompts with the adapter as it is now, at each evaluation
      if eval_now and self.prompts then
        for _, prompt in ipairs(self.prompts) do
          local text = self:sample(prompt)
          assert(sys.append_line(samples, json.encode({ step = st.step, prompt = prompt, text = text, time = os.time() })))
        end
      end
      local line = string.format("step %d/%d  loss %.4f  lr %.2e  gnorm %.3f  %.0f tok/s  ETA %s%s", st.step,
        self.max_steps, info.loss, info.lr, info.grad_norm, tps, fmt_time(eta),
        info.eval_loss and string.format("  eval %.4f", info.eval_loss) or "")
      if tty then
        local width = math.max(10, sys.term_width() - #line - 4)
        local done = math.floor(width * st.step / self.max_steps)
        io.write("\r[" .. string.rep("#", done) .. string.rep(".", width - done) .. "] " .. line)
        io.flush()
      elseif st.step == 1 or st.step % math.max(1, self.max_steps // 20) == 0 or st.step == self.max_steps then
        print(line)
      end
      if opts.on_step and opts.on_step(info) == false then stopped = "stopped by on_step"; break end
      if save_every > 0 and st.step % save_every == 0 then self:save(out .. "/checkpoint-" .. st.step) end
      if sys.interrupted() then stopped = "interrupted (Ctrl-C)"; break end
    end
  end)
  sys.trap_interrupt(false)
  if events then events:close() end
  if tty then io.write("\n") end
  if not ok then error(err, 0) end
  local final = self:save(out .. "/checkpoint-" .. st.step)
  if not stopped then
    self.lora:save(out .. "/adapter")
    if final_eval then print(string.format("eval loss %.4f (perplexity %.2f)", final_eval, math.exp(final_eval))) end
  else
    print("train: " .. stopped .. "; saved " .. final .. " (resume with resume=" .. final .. ")")
  end
  M.plot_svg(st.losses, st.eval, out .. "/loss.svg")
  return { stopped = stopped, checkpoint = final, adapter = not stopped and out .. "/adapter" or nil, steps = st.step }
end

function Trainer:summary()
  return string.format("%d training examples (%d held out, %d skipped, %d cut to seq_len %d) in %d rows per epoch; "
    .. "%d steps of %d x %d rows; LoRA r=%d alpha=%g on %d parameters", #self.train_examples, #self.eval_examples,
    self.skipped, self.cut, self.seq_len, self.rows_per_epoch, self.max_steps, self.grad_accum, self.batch_size,
    self.lora.r, self.lora.alpha, self.lora:num_params())
end

return M

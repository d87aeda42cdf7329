-- recipes/train.lua — QLoRA fine-tuning of a Hugging Face model on JSONL data.
--
--   bin/qlora recipes/train.lua model=path/to/Qwen2.5-7B data=data/chunks.jsonl out=runs/qwen-docs
--   bin/qlora recipes/train.lua --help          every setting, its default and range (from SETTINGS below)
--
-- Data: {"text": ...}, {"messages": [...]} (chat template; only assistant turns are
-- trained) or {"instruction", "input", "output"} records. Writes out/metrics.jsonl
-- (one line per step, a new file per run; a resumed run continues it), out/checkpoint-N/
-- (adapter, optimizer state, trainer state; resume= continues exactly), out/adapter/
-- (PEFT files), out/loss.svg and, with tensorboard=true (the default), a TensorBoard event file
-- (tensorboard --logdir out). samples=FILE (one prompt per line) adds greedy generations from
-- each prompt with the adapter of the moment at every evaluation to out/samples.jsonl.
-- An out= that holds another run is refused unless resume= continues it or overwrite=true
-- replaces it. Ctrl-C saves a checkpoint and stops. device=auto trains on the GPU when
-- `qlora doctor` would pass, else on the CPU reference; checkpoints resume on either. On a
-- GPU, checkpointing defaults to true; checkpointing=host keeps the layer checkpoints in page-locked
-- host memory instead of on the GPU, for the longest sequences.
local S = require("qlora.settings")
local SETTINGS = {
  { "model", "model", nil, "a Hugging Face model folder (config.json, safetensors, tokenizer)", required = true },
  { "data", "file", nil, "training data: a JSONL file", required = true },
  { "out", "path", "runs/qlora", "the run folder: metrics, checkpoints, adapter, plot" },
  { "tokenizer", "tokenizer", nil, "tokenizer folder or tokenizer.json (default: the model's)" },
  { "base_name", "string", nil, "base model name written into adapter_config.json (default: model=)" },
  { "quant", "enum", "nf4", "base weights while training", choices = { "nf4", "none" } },
  { "r", "int", 16, "LoRA rank", min = 1 },
  { "alpha", "number", 32, "LoRA alpha (scale alpha/r)", min = 0 },
  { "dropout", "number", 0, "LoRA dropout", min = 0, max = 0.99 },
  { "rslora", "bool", false, "rank-stabilised LoRA scaling (alpha/sqrt(r))" },
  { "targets", "string", "all", "all, or projections separated by commas (q_proj,v_proj,...)" },
  { "seq_len", "int", 512, "tokens per packed row", min = 2 },
  { "batch", "int", 4, "rows per micro-batch", min = 1 },
  { "accum", "int", 1, "micro-batches per optimizer step", min = 1 },
  { "lr", "number", 2e-4, "peak learning rate", min = 0 },
  { "warmup", "number", 0.03, "warmup: a fraction of the steps (< 1) or a number of steps", min = 0 },
  { "schedule", "enum", "cosine", "learning-rate schedule", choices = { "cosine", "linear", "constant" } },
  { "epochs", "number", 1, "passes over the data (when steps= is not given)", min = 0 },
  { "steps", "int", nil, "optimizer steps (default: from epochs=)", min = 1 },
  { "weight_decay", "number", 0, "AdamW weight decay", min = 0 },
  { "max_grad_norm", "number", 1.0, "gradient clipping (0: none)", min = 0 },
  { "eval_fraction", "number", 0.05, "share of the records held out for evaluation", min = 0, max = 0.9 },
  { "eval_every", "int", 0, "evaluate every N steps (0: only at the end)", min = 0 },
  { "save_every", "int", 100, "checkpoint every N steps (0: only at the end)", min = 0, stamp = false },
  { "tensorboard", "bool", true, "also log the scalars to a TensorBoard event file in out= (tensorboard --logdir out)",
    stamp = false },
  { "samples", "file", nil, "prompts, one a line: greedy samples at each evaluation into out/samples.jsonl",
    stamp = false },
  { "sample_tokens", "int", 64, "tokens per sample at most", min = 1, stamp = false },
  { "checkpointing", "bool", nil, "activation checkpointing (default: true on a GPU, false on the CPU); host: "
    .. "the checkpoints wait in host memory (long sequences)", also = { "host" } },
  { "seed", "int", 0, "seed of the data order, split, LoRA init and dropout" },
  { "device", "enum", "auto", "auto (the GPU when doctor passes), cpu, cuda or cuda:N", choices = { "auto", "cpu", "cuda" },
    pattern = "^cuda:%d+$", shown = "auto|cpu|cuda|cuda:N" },
  { "threads", "int", nil, "CPU threads (default: all cores)", min = 1, stamp = false },
  { "resume", "dir", nil, "a checkpoint folder to continue from (out/checkpoint-N)", stamp = false },
  { "overwrite", "bool", false, "replace the training output already in out=", stamp = false },
}
local cfg = S.parse(args, SETTINGS)
local model_dir, data, out = cfg.model, cfg.data, cfg.out
if not cfg.tokenizer and not qlora.sys.exists(model_dir .. "/tokenizer.json") then
  io.stderr:write("train: " .. model_dir .. " has no tokenizer.json: give tokenizer=PATH\n"); os.exit(2)
end
-- out= holding another run: refused, unless resumed or replaced (never appended to)
local previous = qlora.train.run_outputs(out)
if #previous > 0 and not cfg.resume then
  if not cfg.overwrite then
    local last = qlora.train.latest_checkpoint(out)
    io.stderr:write(string.format("train: %s already holds a training run (%s). Continue it with resume=%s, "
      .. "choose another out=, or replace it with overwrite=true\n", out, table.concat(previous, ", "),
      last or (out .. "/checkpoint-N")))
    os.exit(2)
  end
  for _, name in ipairs(previous) do assert(qlora.sys.remove_tree(out .. "/" .. name)) end
  print("train: overwrite=true: removed the earlier run's " .. table.concat(previous, ", ") .. " from " .. out)
end
if cfg.threads then qlora.sys.threads(cfg.threads) end
-- the sample prompts are read before the model loads: an empty or unreadable file is said now
local prompts
if cfg.samples then
  local perr
  prompts, perr = qlora.train.read_prompts(cfg.samples)
  if not prompts then io.stderr:write("train: " .. perr .. "\n"); os.exit(2) end
end

local device, why = qlora.train.pick_device(cfg.device)
if not device then io.stderr:write("train: " .. why .. "\n"); os.exit(2) end
print("train: device " .. device .. " (" .. why .. ")")
local t0 = qlora.sys.now()
local model, err = qlora.model.load(model_dir, { quant = cfg.quant, device = device })
if not model then io.stderr:write("train: " .. err .. "\n"); os.exit(2) end
local tok, terr = qlora.tokenizer.load(cfg.tokenizer or model_dir)
if not tok then io.stderr:write("train: " .. terr .. "\n"); os.exit(2) end
local tok_ok, mismatch = model:check_tokenizer(tok)
if not tok_ok then io.stderr:write("train: " .. mismatch .. "\n"); os.exit(2) end
print(string.format("train: %s loaded in %.1f s (%s)", model_dir, qlora.sys.now() - t0, tostring(model)))

local targets
if cfg.targets ~= "all" then
  targets = {}
  for t in cfg.targets:gmatch("[^,]+") do targets[#targets + 1] = t end
end
local checkpointing = cfg.checkpointing
if checkpointing == nil then checkpointing = device ~= "cpu" end
local ok, tr = pcall(qlora.train.new, {
  model = model, tokenizer = tok, data = data, out = out, base_name = cfg.base_name or model_dir,
  lora = { r = cfg.r, alpha = cfg.alpha, dropout = cfg.dropout, rslora = cfg.rslora, targets = targets },
  seq_len = cfg.seq_len, batch_size = cfg.batch, grad_accum = cfg.accum, lr = cfg.lr, warmup = cfg.warmup,
  schedule = cfg.schedule, epochs = cfg.epochs, max_steps = cfg.steps, weight_decay = cfg.weight_decay,
  max_grad_norm = cfg.max_grad_norm, eval_fraction = cfg.eval_fraction, save_every = cfg.save_every,
  eval_every = cfg.eval_every, checkpointing = checkpointing, seed = cfg.seed, resume = cfg.resume,
  tensorboard = cfg.tensorboard, samples = prompts, sample_tokens = cfg.sample_tokens,
})
if not ok then io.stderr:write("train: " .. tostring(tr) .. "\n"); os.exit(2) end
print("train: " .. tr:summary())
if tr.resumed_from then print(string.format("train: resumed from %s at step %d", tr.resumed_from, tr.state.step)) end
if tr.resume_note then io.stderr:write("train: " .. tr.resume_note .. "\n") end
-- test hook: QLORA_KILL_AT=N kills this process with SIGKILL after step N (the resume test)
local kill_at = tonumber(os.getenv("QLORA_KILL_AT") or "")
local fit_ok, res = xpcall(tr.fit, function(e)
  -- the trainer's own stops (a non-finite loss, a failed save) are messages, not bugs
  if type(e) == "string" and e:match("^train: ") then return e end
  return debug.traceback(tostring(e), 2)
end, tr, { on_step = function(info)
  if kill_at and info.step == kill_at then
    local f = io.open("/proc/self/stat")
    local pid = f and f:read("n")
    if pid then os.execute("kill -9 " .. math.tointeger(pid)) end
  end
end })
if not fit_ok then io.stderr:write(res, "\n"); os.exit(1) end
print(string.format("train: %d steps; metrics %s/metrics.jsonl, plot %s/loss.svg%s%s%s", res.steps, out, out,
                    cfg.tensorboard and (", TensorBoard: tensorboard --logdir " .. out) or "",
                    prompts and (", samples " .. out .. "/samples.jsonl") or "",
                    res.adapter and (", adapter " .. res.adapter) or ""))

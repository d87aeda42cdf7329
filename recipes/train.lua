-- recipes/train.lua — QLoRA fine-tuning of a Hugging Face model on JSONL data.
--
--   qlora recipes/train.lua model=path/to/Qwen2.5-7B data=data/chunks.jsonl out=runs/qwen-docs
--       [quant=nf4|none] [r=16] [alpha=32] [dropout=0.05] [targets=all|q_proj,v_proj,...]
--       [seq_len=512] [batch=4] [accum=4] [lr=2e-4] [warmup=0.03] [schedule=cosine|linear|constant]
--       [epochs=1] [steps=N] [weight_decay=0] [max_grad_norm=1.0] [eval_fraction=0.05]
--       [save_every=100] [eval_every=50] [checkpointing=false|true] [seed=0] [threads=N]
--       [device=auto|cpu|cuda|cuda:N]
--       [resume=runs/qwen-docs/checkpoint-100]
--
-- Data: {"text": ...}, {"messages": [...]} (chat template; only assistant turns are
-- trained) or {"instruction", "input", "output"} records. Writes out/metrics.jsonl
-- (one line per step), out/checkpoint-N/ (adapter, optimizer state, trainer state;
-- resume= continues exactly), out/adapter/ (PEFT files) and out/loss.svg.
-- Ctrl-C saves a checkpoint and stops. device=auto (the default) trains on the GPU when
-- `qlora doctor` would pass (a CUDA build, a GPU, a kernel that runs on it), else on the
-- CPU reference; checkpoints resume on either. On a GPU, checkpointing defaults to true.
local function flag(v, d) if v == nil then return d end return v == "true" or v == "1" or v == "yes" end
local model_dir = args.model or error("model=path/to/hf-model is required", 0)
local data = args.data or error("data=path/to/file.jsonl is required", 0)
local out = args.out or "runs/qlora"
if args.threads then qlora.sys.threads(tonumber(args.threads)) end

local device, why = qlora.train.pick_device(args.device)
if not device then io.stderr:write("train: " .. why .. "\n"); os.exit(2) end
print("train: device " .. device .. " (" .. why .. ")")
local t0 = qlora.sys.now()
local model, err = qlora.model.load(model_dir, { quant = args.quant or "nf4", device = device })
if not model then io.stderr:write("train: " .. err .. "\n"); os.exit(2) end
local tok, terr = qlora.tokenizer.load(args.tokenizer or model_dir)
if not tok then io.stderr:write("train: " .. terr .. "\n"); os.exit(2) end
local tok_ok, mismatch = model:check_tokenizer(tok)
if not tok_ok then io.stderr:write("train: " .. mismatch .. "\n"); os.exit(2) end
print(string.format("train: %s loaded in %.1f s (%s)", model_dir, qlora.sys.now() - t0, tostring(model)))

local targets
if args.targets and args.targets ~= "all" then
  targets = {}
  for t in args.targets:gmatch("[^,]+") do targets[#targets + 1] = t end
end
local ok, tr = pcall(qlora.train.new, {
  model = model, tokenizer = tok, data = data, out = out, base_name = args.base_name or model_dir,
  lora = { r = tonumber(args.r or "16"), alpha = tonumber(args.alpha or "32"), dropout = tonumber(args.dropout or "0"),
           rslora = flag(args.rslora, false), targets = targets },
  seq_len = tonumber(args.seq_len or "512"), batch_size = tonumber(args.batch or "4"),
  grad_accum = tonumber(args.accum or "1"), lr = tonumber(args.lr or "2e-4"), warmup = tonumber(args.warmup or "0.03"),
  schedule = args.schedule or "cosine", epochs = tonumber(args.epochs or "1"), max_steps = tonumber(args.steps),
  weight_decay = tonumber(args.weight_decay or "0"), max_grad_norm = tonumber(args.max_grad_norm or "1.0"),
  eval_fraction = tonumber(args.eval_fraction or "0.05"), save_every = tonumber(args.save_every or "100"),
  eval_every = tonumber(args.eval_every or "0"), checkpointing = flag(args.checkpointing, device ~= "cpu"),
  seed = tonumber(args.seed or "0"), resume = args.resume,
})
if not ok then io.stderr:write("train: " .. tostring(tr) .. "\n"); os.exit(2) end
print("train: " .. tr:summary())
if tr.resumed_from then print(string.format("train: resumed from %s at step %d", tr.resumed_from, tr.state.step)) end
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
print(string.format("train: %d steps; metrics %s/metrics.jsonl, plot %s/loss.svg%s", res.steps, out, out,
                    res.adapter and (", adapter " .. res.adapter) or ""))

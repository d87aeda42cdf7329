-- recipes/full.lua — the whole job, PDFs to a fine-tuned model:
--   PDF -> Markdown -> cleaned Markdown -> token-bounded chunks (JSONL) -> QLoRA training -> merged model
--
--   qlora recipes/full.lua                                   a smoke run on the bundled samples
--   qlora recipes/full.lua model=models/Qwen2.5-7B pdfs=data/raw_pdfs out=runs/docs
--
-- Copy this file to customise it per corpus: the table below is the whole
-- configuration, and any key=value argument overrides an entry. Every stage is
-- incremental: its outputs are reused when they are newer than its inputs, so a
-- rerun after adding PDFs redoes only what changed.
local config = {
  pdfs = nil,               -- folder of PDFs (default: recipes/samples, the smoke run)
  work = nil,               -- intermediate files (default: <out>/data)
  out = "runs/full",        -- where the run, its adapter and the merged model go
  model = nil,              -- a Hugging Face model folder; nil: a tiny random model (smoke run)
  quant = "nf4",            -- base weights while training: nf4 or none
  max_tokens = 512,         -- chunk size in tokens
  seq_len = 512, batch = 4, accum = 1, lr = 2e-4, epochs = 1, steps = nil,
  r = 16, alpha = 32, dropout = 0.05,
  save_every = 100, eval_every = 0,
  device = "auto",          -- auto: the GPU when `qlora doctor` passes, else the CPU; or cpu, cuda, cuda:N
  gguf = nil,               -- f16, bf16 or q8_0: also export the merged model to GGUF + an Ollama Modelfile
}

local sys = qlora.sys
for k, v in pairs(args) do
  if type(k) == "string" then config[k] = v end
end
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local qlora_bin = arg[-1] or "qlora"
local smoke = config.model == nil
config.pdfs = config.pdfs or (here .. "/samples")
config.work = config.work or (config.out .. "/data")
assert(sys.mkdir(config.out))
assert(sys.mkdir(config.work))

local function stage(name, cmd)
  print(string.format("== %s", name))
  local t0 = sys.now()
  local ok, how, code = os.execute(cmd)
  if not ok then
    io.stderr:write(string.format("full: stage %s failed (%s %s); its message is above. Fix it and rerun: finished stages are reused.\n",
                                  name, tostring(how), tostring(code)))
    os.exit(1)
  end
  print(string.format("   %s done in %.1f s", name, sys.now() - t0))
end
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function newer(a, b)   -- a exists and is at least as new as b
  local ta, tb = sys.mtime(a), sys.mtime(b)
  return ta ~= nil and tb ~= nil and ta >= tb
end

if smoke then
  config.model = config.out .. "/tiny-model"
  if not sys.exists(config.model .. "/config.json") then
    qlora.llm.random_model(config.model, { tokenizer = here .. "/../tests/fixtures/tokenizers/gpt2", layers = 2, hidden = 64,
                                           heads = 4, kv_heads = 2 })
  end
  config.seq_len, config.batch, config.max_tokens = 128, 2, 96
  config.steps = config.steps or 20
  config.lr = 3e-3
  print("full: SMOKE RUN — no model= given, so the pipeline runs end to end on the bundled sample PDFs with a tiny")
  print("      model of random weights made on the fly (" .. config.model .. "). Its text is noise by construction.")
  print("      For the real thing: qlora recipes/full.lua model=path/to/Qwen2.5-7B pdfs=path/to/pdfs")
end

local md, clean, chunks = config.work .. "/md", config.work .. "/clean", config.work .. "/chunks.jsonl"
stage("pdf_to_md", string.format("%s %s/pdf_to_md.lua src=%s dst=%s", q(qlora_bin), here, q(config.pdfs), q(md)))
stage("clean", string.format("%s %s/clean.lua src=%s dst=%s", q(qlora_bin), here, q(md), q(clean)))
stage("chunk", string.format("%s %s/chunk.lua src=%s dst=%s max_tokens=%s tokenizer=%s", q(qlora_bin), here, q(clean),
                             q(chunks), config.max_tokens, q(config.model)))

local run = config.out .. "/train"
if newer(run .. "/adapter/adapter_model.safetensors", chunks) then
  print("== train: " .. run .. "/adapter is newer than the data; reusing it")
else
  local extra = config.steps and (" steps=" .. config.steps) or (" epochs=" .. config.epochs)
  local resume = ""
  -- an interrupted run continues from its newest complete checkpoint (checkpoint-N.tmp
  -- leftovers of a failed save are not checkpoints)
  local last = qlora.train.latest_checkpoint(run)
  if last and newer(last .. "/trainer_state.json", chunks) then resume = " resume=" .. q(last) end
  stage("train", string.format("%s %s/train.lua model=%s data=%s out=%s quant=%s seq_len=%s batch=%s accum=%s lr=%s "
    .. "r=%s alpha=%s dropout=%s save_every=%s eval_every=%s device=%s%s%s", q(qlora_bin), here, q(config.model), q(chunks),
    q(run), config.quant, config.seq_len, config.batch, config.accum, config.lr, config.r, config.alpha, config.dropout,
    config.save_every, config.eval_every, q(config.device), extra, resume))
end

local merged = config.out .. "/merged"
if newer(merged .. "/config.json", run .. "/adapter/adapter_model.safetensors") then
  print("== merge: " .. merged .. " is up to date")
else
  stage("merge", string.format("%s %s/merge.lua model=%s adapter=%s out=%s", q(qlora_bin), here, q(config.model),
                               q(run .. "/adapter"), q(merged)))
end

if config.gguf then
  local gguf = config.out .. "/model.gguf"
  if newer(gguf, merged .. "/config.json") then
    print("== gguf: " .. gguf .. " is up to date")
  else
    stage("gguf", string.format("%s %s/export_gguf.lua model=%s out=%s type=%s", q(qlora_bin), here, q(merged), q(gguf),
                                q(config.gguf)))
  end
end

print(string.format("full: done. Merged model: %s; loss curve: %s/loss.svg; metrics: %s/metrics.jsonl", merged, run, run))
print(string.format("      try it: qlora -e 'qlora.llm.load(%q):generate(\"Hello\", {max_new_tokens = 20})'", merged))

-- recipes/full.lua — the whole job, PDFs to a fine-tuned model:
--   PDF -> Markdown -> cleaned Markdown -> token-bounded chunks (JSONL) -> QLoRA training -> merged model
--
--   bin/qlora recipes/full.lua                                   a smoke run on the bundled samples
--   bin/qlora recipes/full.lua model=models/Qwen2.5-7B pdfs=data/raw_pdfs out=runs/docs
--   bin/qlora recipes/full.lua --help                            every setting, its default and range
--
-- Copy this file to customise it per corpus: SETTINGS below is the whole configuration
-- (the defaults are the third column), and any key=value argument, or config=FILE.lua,
-- overrides an entry. Every stage writes its settings and the identity of its inputs
-- beside its output (NAME.manifest.json) and is redone only when one of them changed,
-- saying which; an interrupted training run is resumed.
local S = require("qlora.settings")
local SETTINGS = {
  { "pdfs", "dir", nil, "folder of PDFs (default: recipes/samples, the smoke run)" },
  { "work", "path", nil, "intermediate files (default: <out>/data)" },
  { "out", "path", "runs/full", "where the run, its adapter and the merged model go" },
  { "model", "model", nil, "a Hugging Face model folder (default: a tiny random model, the smoke run)" },
  { "quant", "enum", "nf4", "base weights while training", choices = { "nf4", "none" } },
  { "max_tokens", "int", 512, "chunk size in tokens", min = 8 },
  { "seq_len", "int", 512, "tokens per packed training row", min = 2 },
  { "batch", "int", 4, "rows per micro-batch", min = 1 },
  { "accum", "int", 1, "micro-batches per optimizer step", min = 1 },
  { "lr", "number", 2e-4, "peak learning rate", min = 0 },
  { "epochs", "number", 1, "passes over the data (when steps= is not given)", min = 0 },
  { "steps", "int", nil, "optimizer steps (default: from epochs=)", min = 1 },
  { "r", "int", 16, "LoRA rank", min = 1 },
  { "alpha", "number", 32, "LoRA alpha", min = 0 },
  { "dropout", "number", 0.05, "LoRA dropout", min = 0, max = 0.99 },
  { "save_every", "int", 100, "checkpoint every N steps (0: only at the end)", min = 0 },
  { "eval_every", "int", 0, "evaluate the held-out split every N steps (0: only at the end)", min = 0 },
  { "tensorboard", "bool", true, "a TensorBoard event file beside the metrics (tensorboard --logdir <out>)" },
  { "samples", "file", nil, "prompts, one a line: greedy samples at each evaluation into <out>/train/samples.jsonl" },
  { "sample_tokens", "int", 64, "tokens per sample at most", min = 1 },
  { "device", "enum", "auto", "auto (the GPU when doctor passes, else the CPU), cpu, cuda or cuda:N",
    choices = { "auto", "cpu", "cuda" }, pattern = "^cuda:%d+$", shown = "auto|cpu|cuda|cuda:N" },
  { "gguf", "enum", nil, "also export the merged model to GGUF (+ an Ollama Modelfile)", choices = { "f16", "bf16", "q8_0" } },
  { "overwrite", "bool", false, "replace a training run in <out>/train that this recipe did not record" },
}
local config, given = S.parse(args, SETTINGS)

local sys, mf = qlora.sys, require("qlora.manifest")
-- the other recipes, the samples: beside this file, or (for a copy made with `qlora cp`) the installed ones
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
if not sys.exists(here .. "/pdf_to_md.lua") then here = require("qlora.recipes").dir() or here end
local qlora_bin = S.program()
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
-- a stage's command line from a table of settings (sorted, so the manifest and the command agree)
local function command(recipe, settings)
  local keys, parts = {}, { q(qlora_bin), q(here .. "/" .. recipe) }
  for k in pairs(settings) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. q(settings[k]) end
  return table.concat(parts, " ")
end

if smoke then
  config.model = config.out .. "/tiny-model"
  if not sys.exists(config.model .. "/config.json") then
    qlora.llm.random_model(config.model, { tokenizer = here .. "/../tests/fixtures/tokenizers/gpt2", layers = 2, hidden = 64,
                                           heads = 4, kv_heads = 2 })
  end
  -- small shapes for the tiny model, unless given
  for k, v in pairs({ seq_len = 128, batch = 2, max_tokens = 96, steps = 20, lr = 3e-3 }) do
    if not given[k] then config[k] = v end
  end
  print("full: SMOKE RUN — no model= given, so the pipeline runs end to end on the bundled sample PDFs with a tiny")
  print("      model of random weights made on the fly (" .. config.model .. "). Its text is noise by construction.")
  print("      For the real thing: " .. qlora_bin .. " " .. arg[0] .. " model=path/to/Qwen2.5-7B pdfs=path/to/pdfs")
end

local md, clean, chunks = config.work .. "/md", config.work .. "/clean", config.work .. "/chunks.jsonl"
-- these three stages keep their own manifests (see each recipe)
stage("pdf_to_md", command("pdf_to_md.lua", { src = config.pdfs, dst = md }))
stage("clean", command("clean.lua", { src = md, dst = clean }))
stage("chunk", command("chunk.lua", { src = clean, dst = chunks, max_tokens = config.max_tokens, tokenizer = config.model }))

-- training: reused when the settings, the data and the model are those recorded in
-- train.manifest.json and the run finished; resumed when it did not finish; else redone
local run = config.out .. "/train"
local targs = { model = config.model, data = chunks, out = run, quant = config.quant, seq_len = config.seq_len,
                batch = config.batch, accum = config.accum, lr = config.lr, r = config.r, alpha = config.alpha,
                dropout = config.dropout, eval_every = config.eval_every }
if config.steps then targs.steps = config.steps else targs.epochs = config.epochs end
local inputs = mf.files({ chunks })
for p, id in pairs(mf.files({ config.model })) do inputs[p] = id end
local want = mf.new("train", targs, inputs)
local rec = mf.read(run)
local why = mf.diff(rec, want)
local last = qlora.train.latest_checkpoint(run)
-- settings that do not change the adapter: passed on, never a reason to train again
local extra = { save_every = config.save_every, device = config.device, tensorboard = config.tensorboard,
                samples = config.samples, sample_tokens = config.sample_tokens }
if not why and rec.complete and sys.exists(run .. "/adapter/adapter_model.safetensors") then
  print("== train: " .. run .. " finished with the same settings, data and model; reusing it")
else
  if not why and last then
    extra.resume = last
    print("== train: resuming the unfinished run from " .. last)
  elseif #qlora.train.run_outputs(run) > 0 then
    if not rec and not config.overwrite then
      io.stderr:write("full: " .. run .. " holds a training run that this recipe did not record (no " .. mf.path(run) ..
                      "); use another out=, or overwrite=true to replace it\n")
      os.exit(2)
    end
    extra.overwrite = true
    print("== train: training again, replacing the earlier run: " .. (why or "it did not finish"))
  end
  assert(mf.write(run, want, false))
  for k, v in pairs(extra) do targs[k] = v end
  stage("train", command("train.lua", targs))
  for k in pairs(extra) do targs[k] = nil end
  assert(mf.write(run, want, true))
end

local merged = config.out .. "/merged"
local mwant = mf.new("merge", { model = config.model }, mf.files({ config.model, run .. "/adapter" }))
local mwhy = not sys.exists(merged .. "/config.json") and "no merged model yet" or mf.diff(mf.read(merged), mwant)
if not mwhy then
  print("== merge: " .. merged .. " is up to date")
else
  print("== merge: " .. mwhy)
  stage("merge", command("merge.lua", { model = config.model, adapter = run .. "/adapter", out = merged }))
  assert(mf.write(merged, mwant))
end

if config.gguf then
  local gguf = config.out .. "/model.gguf"
  local gwant = mf.new("gguf", { type = config.gguf }, mf.files({ merged }))
  local gwhy = mf.why(gguf, gwant)
  if not gwhy then
    print("== gguf: " .. gguf .. " is up to date")
  else
    print("== gguf: " .. gwhy)
    stage("gguf", command("export_gguf.lua", { model = merged, out = gguf, type = config.gguf }))
    assert(mf.write(gguf, gwant))
  end
end

print(string.format("full: done. Merged model: %s; loss curve: %s/loss.svg; metrics: %s/metrics.jsonl", merged, run, run))
print(string.format("      try it: %s -e 'qlora.llm.load(%q):generate(\"Hello\", {max_new_tokens = 20})'", qlora_bin, merged))

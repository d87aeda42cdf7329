-- recipes/full.lua, the README's main command, as a smoke run: bundled sample
-- PDFs -> Markdown -> clean -> chunks -> QLoRA training of a tiny random model ->
-- merged model folder that loads and generates; a rerun reuses every stage.
local T = ...

T.test("full.lua runs the whole pipeline on the built-in default", function()
  local out = T.tmpdir() .. "/run"
  local log, rc = T.sh(T.qlora .. " recipes/full.lua out=" .. out .. " steps=3")
  T.eq(rc, 0, log)
  T.truthy(log:find("SMOKE RUN"), "says plainly that it is a smoke run")
  for _, f in ipairs({ "/data/md/guide.md", "/data/chunks.jsonl", "/train/metrics.jsonl", "/train/loss.svg",
                       "/train/adapter/adapter_config.json", "/merged/config.json", "/merged/model.safetensors" }) do
    T.truthy(qlora.sys.exists(out .. f), "missing " .. f)
  end
  local lm = assert(qlora.llm.load(out .. "/merged"))
  local text = lm:generate("Hello", { max_new_tokens = 4, write = false, stop = {} })
  T.truthy(#text > 0)
  local again, rc2 = T.sh(T.qlora .. " recipes/full.lua out=" .. out .. " steps=3")
  T.eq(rc2, 0, again)
  T.truthy(again:find("reusing it") and again:find("up to date"), again)
  os.execute("rm -rf '" .. out .. "'")
end)

-- The recipes as a practitioner meets them (issue 10): declared, validated settings
-- (qlora.settings), run manifests (qlora.manifest), `qlora ls` / `cp` / NAME, the
-- documentation that used to be wrong, metrics.jsonl and the loss plot.
local T = ...
local sys, json = qlora.sys, qlora.json
local S = require("qlora.settings")
local q = T.qlora
local absq = q:sub(1, 1) == "/" and q or (os.getenv("PWD") .. "/" .. q)   -- for commands run in another folder
local RECIPES = { "chunk", "clean", "doctor", "export_gguf", "full", "merge", "pdf_to_md", "train" }

local function read(p) local f = io.open(p, "rb"); if not f then return nil end local s = f:read("a"); f:close(); return s end
local function write(p, s) local f = assert(io.open(p, "wb")); f:write(s); f:close() end
local tiny, data, rows = T.tiny_model, T.word_data, T.jsonl_rows

-- ------------------------------------------------------------------ settings

T.test("misspelt and mistyped settings are refused, all at once, before any work", function()
  local out = T.tmpdir() .. "/run"
  local log, rc = T.sh(q .. " recipes/full.lua out=" .. out .. " modle=models/Qwen batch=abc lr=fast stpes=3")
  T.eq(rc, 2, log)
  T.truthy(log:find("modle: unknown setting (did you mean model?)", 1, true), log)
  T.truthy(log:find("stpes: unknown setting (did you mean steps?)", 1, true), log)
  T.truthy(log:find("batch=abc: must be an integer", 1, true), log)
  T.truthy(log:find("lr=fast: must be a number", 1, true), log)
  T.truthy(not log:find("SMOKE RUN"), log)
  T.eq(sys.exists(out), false, "nothing was made")
  log, rc = T.sh(q .. " recipes/train.lua model=x data=y schedule=cosin")
  T.truthy(rc == 2 and log:find("did you mean cosine?", 1, true), log)
end)

T.test("required inputs are checked before any stage runs", function()
  local dir = T.tmpdir()
  local log, rc = T.sh(q .. " recipes/full.lua out=" .. dir .. "/run model=" .. dir .. "/missing-model")
  T.eq(rc, 2, log)
  T.truthy(log:find("model=" .. dir .. "/missing-model: no such folder", 1, true), log)
  T.eq(sys.exists(dir .. "/run/data/md"), false, "pdf_to_md did not run")
  T.truthy(not log:find("traceback"), log)
  -- train.lua says the data is missing before it loads the model
  tiny(dir .. "/m")
  log, rc = T.sh(q .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/missing.jsonl out=" .. dir .. "/t")
  T.eq(rc, 2, log)
  T.truthy(log:find("data=" .. dir .. "/missing.jsonl: no such file", 1, true), log)
  T.truthy(not log:find("loaded in") and not log:find("device"), "the model was not loaded: " .. log)
  log, rc = T.sh(q .. " recipes/merge.lua adapter=" .. dir .. " out=" .. dir .. "/x")
  T.truthy(rc == 2 and log:find("model= is required", 1, true), log)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("config=FILE.lua holds the same keys; the command line wins", function()
  local dir = T.tmpdir()
  local decl = assert(S.describe("recipes/train.lua"))
  tiny(dir .. "/m"); data(dir .. "/d.jsonl", 4)
  write(dir .. "/c.lua", "return { model = '" .. dir .. "/m', data = '" .. dir .. "/d.jsonl', r = 4, lr = 1e-3, rslora = true }")
  local cfg = assert(S.resolve({ config = dir .. "/c.lua", r = "8" }, decl))
  T.eq(cfg.r, 8); T.eq(cfg.lr, 1e-3); T.eq(cfg.rslora, true); T.eq(cfg.batch, 4)
  write(dir .. "/bad.lua", "r = 'four'\nbatchsize = 2\n")
  local none, problems = S.resolve({ config = dir .. "/bad.lua", model = dir .. "/m", data = dir .. "/d.jsonl" }, decl)
  T.eq(none, nil)
  local all = table.concat(problems, "\n")
  T.truthy(all:find("bad.lua: batchsize: unknown setting (did you mean batch?)", 1, true), all)
  T.truthy(all:find("bad.lua: r=four: must be an integer", 1, true), all)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("every recipe declares its settings, and --help is made from the declaration", function()
  for _, name in ipairs(RECIPES) do
    local decl = assert(S.describe("recipes/" .. name .. ".lua"))
    local log, rc = T.sh(q .. " recipes/" .. name .. ".lua --help")
    T.eq(rc, 0, name .. ": " .. log)
    T.truthy(log:find("usage: ", 1, true), log)
    for _, d in ipairs(decl) do
      T.truthy(log:find("\n  " .. d[1] .. "=", 1, true), name .. " --help lacks " .. d[1])
      T.truthy(d[4] and #d[4] > 0, name .. "." .. d[1] .. " has help")
    end
  end
  -- the header comments document no default other than the declared one
  for _, name in ipairs(RECIPES) do
    local decl = assert(S.describe("recipes/" .. name .. ".lua"))
    local by = {}
    for _, d in ipairs(decl) do by[d[1]] = d end
    for _, line in ipairs(S.header("recipes/" .. name .. ".lua")) do
      for k, v in line:gmatch("%[([%w_]+)=([^%]|%s]+)%]") do
        local d = by[k]
        T.truthy(d, name .. ": the header documents " .. k .. "=, which is not a setting")
        if not v:match("^%u+$") then
          T.eq(v, tostring(d[3]), name .. ": the header says " .. k .. "=" .. v .. ", the default is " .. tostring(d[3]))
        end
      end
    end
  end
end)

T.test("doctor's advice names a recipe and a device= it accepts; hints name the program as run", function()
  local log = T.sh(q .. " doctor")
  local train = assert(S.describe("recipes/train.lua"))
  local full = assert(S.describe("recipes/full.lua"))
  if qlora.sys.build().cuda and not log:find("device=") then T.skip("this machine's GPU passes doctor: no advice to check") end
  T.truthy(log:find("recipes/train.lua", 1, true), log)
  local n = 0
  for v in log:gmatch("device=([%w:]+)") do
    n = n + 1
    for _, decl in ipairs({ train, full }) do
      local dev
      for _, d in ipairs(decl) do if d[1] == "device" then dev = d end end
      local ok = false
      for _, c in ipairs(dev.choices) do if c == v then ok = true end end
      T.truthy(ok or v:match(dev.pattern), "device=" .. v .. " is accepted")
    end
  end
  T.truthy(n > 0, "doctor names device=: " .. log)
  -- the hints of full.lua name the qlora that runs it, not a `qlora` that may not be on PATH
  local out = T.tmpdir() .. "/run"
  local run, rc = T.sh(q .. " recipes/full.lua out=" .. out .. " steps=1")
  T.eq(rc, 0, run)
  T.truthy(run:find("For the real thing: " .. q .. " recipes/full.lua", 1, true), run)
  T.truthy(run:find("try it: " .. q .. " -e", 1, true), run)
  os.execute("rm -rf '" .. out .. "'")
end)

T.test("the README's REPL example runs line by line in the REPL", function()
  local readme = assert(read("README.md"))
  local block = readme:match("Trying a model from the REPL:%s*```lua\n(.-)```")
  T.truthy(block, "the README has the REPL example")
  local dir = T.tmpdir()
  tiny(dir .. "/m", "qwen2.5")
  local lines = {}
  for line in block:gmatch("[^\n]+") do
    if not line:find(":chat()", 1, true) then   -- interactive
      lines[#lines + 1] = (line:gsub('qlora%.llm%.load%("[^"]+"', 'qlora.llm.load("' .. dir .. '/m"')
                               :gsub("max_new_tokens = %d+", "max_new_tokens = 3"))
    end
  end
  write(dir .. "/in.lua", table.concat(lines, "\n") .. "\nprint('END')\n")
  local log, rc = T.sh(q .. " < " .. dir .. "/in.lua")
  T.eq(rc, 0, log)
  T.truthy(log:find("END", 1, true), log)
  T.truthy(not log:find("nil value") and not log:find("error", 1, true), log)
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ------------------------------------------------------------------ manifests

T.test("a changed setting redoes exactly the stages it affects, saying why", function()
  local out = T.tmpdir() .. "/run"
  local log, rc = T.sh(q .. " recipes/full.lua out=" .. out .. " steps=2")
  T.eq(rc, 0, log)
  T.truthy(sys.exists(out .. "/train.manifest.json") and sys.exists(out .. "/data/chunks.jsonl.manifest.json"))
  log, rc = T.sh(q .. " recipes/full.lua out=" .. out .. " steps=2 r=4")
  T.eq(rc, 0, log)
  T.truthy(log:find("r changed (16 -> 4)", 1, true), log)
  T.truthy(not log:find("reusing it"), log)
  T.truthy(log:find("chunks.jsonl is up to date", 1, true), "chunking is not redone: " .. log)
  T.eq(json.decode(read(out .. "/train/adapter/adapter_config.json")).r, 4)
  local steps = {}
  for _, r in ipairs(rows(out .. "/train/metrics.jsonl")) do steps[#steps + 1] = r.step end
  T.eq(steps, { 1, 2 }, "metrics.jsonl of the new run only")
  -- a chunking setting redoes chunk and what follows, not the PDF stages
  log, rc = T.sh(q .. " recipes/full.lua out=" .. out .. " steps=2 r=4 max_tokens=64")
  T.eq(rc, 0, log)
  T.truthy(log:find("max_tokens changed (96 -> 64)", 1, true), log)
  T.truthy(log:find("clean: 2 files up to date", 1, true), log)
  T.truthy(log:find("training again", 1, true) and log:find("chunks.jsonl changed", 1, true), log)
  -- an input replaced by a file of another size is noticed whatever its time
  log, rc = T.sh("touch -d '2001-01-01' " .. out .. "/data/md/guide.md && echo x >> " .. out .. "/data/md/guide.md && touch -d '2001-01-01' "
                 .. out .. "/data/md/guide.md && " .. q .. " recipes/clean.lua src=" .. out .. "/data/md dst=" .. out .. "/data/clean")
  T.eq(rc, 0, log)
  T.truthy(log:find("guide.md changed", 1, true), log)
  os.execute("rm -rf '" .. out .. "'")
end)

T.test("out= holding another run is refused unless resumed or overwritten; metrics never appended", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m"); data(dir .. "/d.jsonl", 30)
  local common = q .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. dir ..
                 "/run seq_len=32 batch=2 r=4 lr=5e-3 save_every=2 eval_fraction=0.1 steps=4"
  local log, rc = T.sh(common)
  T.eq(rc, 0, log)
  log, rc = T.sh(common)
  T.eq(rc, 2, log)
  T.truthy(log:find("already holds a training run", 1, true) and log:find("overwrite=true", 1, true), log)
  log, rc = T.sh(common .. " overwrite=true")
  T.eq(rc, 0, log)
  local steps = {}
  for _, r in ipairs(rows(dir .. "/run/metrics.jsonl")) do steps[#steps + 1] = r.step end
  T.eq(steps, { 1, 2, 3, 4 })
  -- killed after step 3, resumed from checkpoint-2: steps 3 and 4 once each
  log, rc = T.sh("QLORA_KILL_AT=3 " .. common .. " overwrite=true")
  T.truthy(rc ~= 0, log)
  log, rc = T.sh(common .. " resume=" .. dir .. "/run/checkpoint-2")
  T.eq(rc, 0, log)
  steps = {}
  for _, r in ipairs(rows(dir .. "/run/metrics.jsonl")) do steps[#steps + 1] = r.step end
  T.eq(steps, { 1, 2, 3, 4 }, "a resumed run continues the file")
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ------------------------------------------------------------------ metrics and plot

T.test("metrics rows have timestamps; the final eval loss is in metrics.jsonl", function()
  local dir = T.tmpdir()
  tiny(dir .. "/m"); data(dir .. "/d.jsonl", 30)
  local t0 = os.time()
  local log, rc = T.sh(q .. " recipes/train.lua model=" .. dir .. "/m data=" .. dir .. "/d.jsonl out=" .. dir ..
                       "/run seq_len=32 batch=2 r=4 steps=3 eval_fraction=0.2")
  T.eq(rc, 0, log)
  local r = rows(dir .. "/run/metrics.jsonl")
  T.eq(#r, 3)
  for _, row in ipairs(r) do T.truthy(math.type(row.time) == "integer" and row.time >= t0 - 1, "time in " .. json.encode(row)) end
  T.truthy(type(r[3].eval_loss) == "number", "the last row has the final eval loss")
  T.near(r[3].eval_perplexity, math.exp(r[3].eval_loss), 1e-6 * r[3].eval_perplexity)
  T.truthy(log:find(string.format("eval loss %.4f", r[3].eval_loss), 1, true), log)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("the loss plot has ticks, labels, round y ticks and no clipped dots", function()
  local dir = T.tmpdir()
  local losses = {}
  for i = 1, 37 do losses[i] = 3.2 * math.exp(-i / 12) + 0.4 end
  assert(qlora.train.plot_svg(losses, { { step = 10, loss = 2.1 }, { step = 37, loss = 3.55 } }, dir .. "/l.svg"))
  local svg = read(dir .. "/l.svg")
  T.truthy(svg:find(">step<", 1, true) and svg:find(">loss<", 1, true), "axis labels")
  T.truthy(svg:find("training loss (line) and eval loss (dots)", 1, true), "the title says train and eval")
  local W, H = svg:match('width="(%d+)" height="(%d+)"')
  W, H = tonumber(W), tonumber(H)
  local yt, xt = {}, {}
  for yv, label in svg:gmatch('<text x="%d+" y="([%d.]+)" text%-anchor="end">([%d.%-]+)</text>') do
    yt[#yt + 1] = { tonumber(yv), tonumber(label) }
  end
  for label in svg:gmatch('<text x="[%d.]+" y="%d+" text%-anchor="middle">(%d+)</text>') do xt[#xt + 1] = tonumber(label) end
  T.truthy(#yt >= 3, "y ticks: " .. svg)
  T.truthy(#xt >= 3 and xt[#xt] <= 37 and xt[#xt] >= 30, "x ticks up to the last step")
  local dv, dy = yt[2][2] - yt[1][2], yt[2][1] - yt[1][1]
  for i = 2, #yt do
    T.near(yt[i][2] - yt[i - 1][2], dv, 1e-9, "y ticks evenly spaced in value")
    T.near(yt[i][1] - yt[i - 1][1], dy, 0.11, "y ticks evenly spaced on the page")
  end
  local m = math.abs(dv) / 10 ^ math.floor(math.log(math.abs(dv), 10))
  T.truthy(m == 1 or m == 2 or m == 2.5 or m == 5, "round tick step " .. dv)
  for cx, cy, r in svg:gmatch('<circle cx="([%d.]+)" cy="([%d.]+)" r="([%d.]+)"') do
    cx, cy, r = tonumber(cx), tonumber(cy), tonumber(r)
    T.truthy(cx - r >= 0 and cx + r <= W and cy - r >= 0 and cy + r <= H, "dot inside the image")
  end
  os.execute("rm -rf '" .. dir .. "'")
end)

-- ------------------------------------------------------------------ ls, cp, NAME

T.test("qlora ls lists the recipes; cp copies one; a recipe runs by name", function()
  local log, rc = T.sh(q .. " ls")
  T.eq(rc, 0, log)
  for _, name in ipairs(RECIPES) do T.truthy(log:find("\n" .. name .. " ", 1, true) or log:find("^" .. name .. " "), name .. ": " .. log) end
  T.truthy(log:find("QLoRA fine%-tuning"), log)
  local dir = T.tmpdir()
  -- from another folder: found beside the program
  log, rc = T.sh("cd " .. dir .. " && " .. absq .. " cp full my_corpus.lua")
  T.eq(rc, 0, log)
  T.eq(read(dir .. "/my_corpus.lua"), read("recipes/full.lua"))
  log, rc = T.sh("cd " .. dir .. " && " .. absq .. " cp full my_corpus.lua")
  T.truthy(rc ~= 0 and log:find("already exists"), log)
  log, rc = T.sh("cd " .. dir .. " && " .. absq .. " full --help")
  T.eq(rc, 0, log)
  T.truthy(log:find("max_tokens=N", 1, true), log)
  log, rc = T.sh("cd " .. dir .. " && " .. absq .. " nosuchrecipe")
  T.truthy(rc == 2 and log:find("ls` lists the recipes", 1, true), log)
  -- the copy runs from its own folder, finding the other recipes beside the program
  log, rc = T.sh("cd " .. dir .. " && " .. absq .. " my_corpus.lua out=" .. dir .. "/run steps=1")
  T.eq(rc, 0, log)
  T.truthy(sys.exists(dir .. "/run/merged/config.json"), log)
  os.execute("rm -rf '" .. dir .. "'")
end)

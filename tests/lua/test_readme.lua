-- Documentation that tests itself: every shell command and Lua snippet of README.md (its
-- ```sh and ```lua blocks) and every command line the recipes' --help shows runs here, so
-- they cannot drift from the program.
--
-- They run in a sandbox folder laid out like the repository (bin/ is the binary under test,
-- recipes/ and lua/ are linked) where the files the documentation names exist as small
-- stand-ins, listed in STAND_INS with what they stand for. A ```sh block runs as one shell
-- script, line by line (so `export` carries on, as in a terminal), each line's exit status
-- checked; `A && B` runs as A then B. A ```lua block runs as a file through `qlora FILE.lua`
-- when it declares locals, else line by line through the REPL (each line its own chunk, as
-- the README says). The commands that cannot run here are in SKIP with the reason, and each
-- shows in the suite's output as a skipped test; a SKIP or STAND_INS entry that no command
-- uses any more fails the test, so the lists stay exact.
local T = ...
local q = T.qlora

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- commands (as written, comment removed) that cannot run here, and why
local SKIP = {
  ["./setup.sh"] = "installs Debian packages as root and rebuilds the tree; the suite runs on the build it was given",
  ["tests/run"] = "the test suite itself",
  ["bin/qlora recipes/full.lua model=models/Qwen2.5-7B pdfs=data/raw_pdfs out=runs/docs"] = "needs a 7B model (Qwen2.5-7B, 15 GB) and a folder of real PDFs",
  ["bin/qlora recipes/train.lua model=path/to/Qwen2.5-7B data=data/chunks.jsonl out=runs/qwen-docs"] = "needs a 7B model (the smoke run of full.lua trains and merges the same way)",
  ["bin/qlora recipes/merge.lua model=path/to/Qwen2.5-7B adapter=runs/x/adapter out=models/qwen-docs"] = "needs a 7B model and its trained adapter",
  ["ollama create qwen-docs -f models/Modelfile && ollama run qwen-docs"] = "Ollama is another program (not part of qlora); the Modelfile it reads is checked by test_gguf",
  ["llama-cli -m models/qwen-docs.gguf -p \"The capital of France is\" -n 32"] = "llama.cpp is another program (not part of qlora)",
  ["ollama create qwen-docs -f models/Modelfile      llama-cli -m models/qwen-docs.gguf -cnv"] = "Ollama and llama.cpp are other programs (not part of qlora)",
}

-- commands changed to run here: the documented text -> what runs instead
local function bindir_and_config()
  local dir = q:match("^(.*)/[^/]*$") or "."
  local parent, sub = dir:match("^(.*)/(%a+)$")
  if sub == "asan" or sub == "debug" then return parent, "QL_CONFIG=" .. sub .. " " end
  return dir, ""
end
local REPO = io.popen("pwd"):read("l")
local SUBSTITUTE = {
  -- ./setup.sh --prefix builds first: here the build under test is installed as it is
  ["./setup.sh --prefix=$HOME/.local"] = function()
    local bindir, config = bindir_and_config()
    return string.format("(cd %s && %s./setup.sh --no-build --bindir=%s --prefix=$HOME/.local)", shq(REPO), config, shq(bindir))
  end,
}

-- exit statuses other than 0 that a command documents
local EXIT = { ["bin/qlora doctor"] = { [0] = true, [3] = true, [4] = true, [5] = true, [6] = true } }

-- the files and folders the documentation names, made in the sandbox
local STAND_INS = {
  ["models/Qwen2.5-0.5B-Instruct"] = "a random Qwen2 model with Qwen2.5's tokenizer and chat template (the real one is a 1 GB download)",
  ["models/qwen-docs"] = "the merged model: a random Qwen2 model with Qwen2.5's tokenizer",
  ["MODEL"] = "a model folder: a random Qwen2 model with Qwen2.5's tokenizer",
  ["data/raw_pdfs"] = "the sample PDFs of recipes/samples",
  ["model.safetensors"] = "tests/fixtures/models/tiny-qwen2/model.safetensors",
  ["FILE.lua"] = "a recipe that prints its arguments",
}

-- ---------------------------------------------------------------- extraction

local function strip_comment(line)
  return (line:gsub("%s+#%s.*$", ""):gsub("%s+$", ""))
end

-- README.md's fenced blocks: {lang =, lines = {...}, at = line number}
local function readme_blocks()
  local blocks, cur, n = {}, nil, 0
  for line in (read("README.md") .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    local fence, lang = line:match("^(```+)%s*(%S*)")
    if fence and not cur then cur = { lang = lang, lines = {}, at = n }
    elseif fence and cur then blocks[#blocks + 1] = cur; cur = nil
    elseif cur then cur.lines[#cur.lines + 1] = line end
  end
  return blocks
end

-- the command lines in a recipe's --help: indented lines that start with the program
local PROGRAMS = { "bin/qlora ", "qlora ", "ollama ", "llama-cli " }
local function help_commands(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local body = line:match("^%s+(%S.*)$")
    if body then
      for _, p in ipairs(PROGRAMS) do
        if body:sub(1, #p) == p then
          -- the help's own explanation follows two or more spaces ("--help    every setting")
          local cmd = body:gsub("%s%s+[%a(].*$", "")
          if p == "ollama " then cmd = body end   -- two commands side by side: kept whole, skipped
          out[#out + 1] = (cmd:gsub("%s+$", ""))
          break
        end
      end
    end
  end
  return out
end

-- ---------------------------------------------------------------- the sandbox

local used_skip, used_stand_in = {}, {}

local function sandbox()
  local dir = T.tmpdir()
  local bin = q:match("^(.*)/[^/]*$") or "."
  if bin:sub(1, 1) ~= "/" then bin = REPO .. "/" .. bin end
  os.execute(string.format("ln -s %s %s/bin && ln -s %s/recipes %s/recipes && ln -s %s/lua %s/lua && mkdir -p %s/home %s/models %s/data/raw_pdfs",
    shq(bin), dir, shq(REPO), dir, shq(REPO), dir, dir, dir, dir))
  for _, m in ipairs({ "models/Qwen2.5-0.5B-Instruct", "models/qwen-docs", "MODEL" }) do
    qlora.llm.random_model(dir .. "/" .. m, { tokenizer = T.fixture("tokenizers/qwen2.5"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  end
  os.execute(string.format("cp %s/recipes/samples/*.pdf %s/data/raw_pdfs/", shq(REPO), dir))
  os.execute(string.format("cp %s %s/model.safetensors", shq(T.fixture("models/tiny-qwen2/model.safetensors")), dir))
  write(dir .. "/FILE.lua", "print('FILE.lua got', args.key, args[1])\n")
  return dir
end

local SB   -- made on first use; each block runs in a folder of its own, linked to its contents
local workdirs = 0

-- a fresh working folder in the sandbox, with the sandbox's contents linked in
local function workdir()
  SB = SB or sandbox()
  workdirs = workdirs + 1
  local w = SB .. "/w" .. workdirs
  local links = {}
  for _, e in ipairs({ "bin", "recipes", "lua", "home", "models", "data", "MODEL", "model.safetensors", "FILE.lua" }) do
    links[#links + 1] = "ln -s " .. shq(SB .. "/" .. e) .. " " .. shq(w .. "/" .. e)
  end
  assert(os.execute("mkdir -p " .. shq(w) .. " && " .. table.concat(links, " && ")))
  return w
end

local function note_stand_ins(text)
  for k in pairs(STAND_INS) do if text:find(k, 1, true) then used_stand_in[k] = true end end
end

-- runs shell lines in one shell in folder dir; returns {{cmd, out, rc}, ...}
local function run_lines(dir, lines)
  local script = { "cd " .. shq(dir), "export HOME=" .. shq(SB .. "/home"), "exec < /dev/null" }
  for i, l in ipairs(lines) do
    script[#script + 1] = "echo '__begin " .. i .. "'"
    script[#script + 1] = l
    script[#script + 1] = "echo \"__end " .. i .. " $?\""
  end
  local path = dir .. "/.commands.sh"
  write(path, table.concat(script, "\n") .. "\n")
  local out = T.sh("bash " .. shq(path))
  local res = {}
  for i, l in ipairs(lines) do
    local body, rc = out:match("__begin " .. i .. "\n(.-)__end " .. i .. " (%d+)")
    res[i] = { cmd = l, out = body or out, rc = tonumber(rc) }
  end
  return res
end

-- a documented command: skipped, substituted or as written
local function prepare(cmd)
  if SKIP[cmd] then used_skip[cmd] = true; return nil, SKIP[cmd] end
  note_stand_ins(cmd)
  local sub = SUBSTITUTE[cmd]
  return sub and sub() or cmd
end

local function check_results(res, where)
  local bad = {}
  for _, r in ipairs(res) do
    local ok = (EXIT[r.doc] or { [0] = true })[r.rc or -1]
    if not ok then bad[#bad + 1] = string.format("%s\n  `%s` exited %s:\n%s", where, r.doc, tostring(r.rc), r.out) end
    if r.out:find("stack traceback", 1, true) then bad[#bad + 1] = where .. ": `" .. r.doc .. "` raised:\n" .. r.out end
  end
  T.eq(#bad, 0, table.concat(bad, "\n"))
end

-- a block (or a recipe's help) of shell lines: one test that runs those that can, in a folder
-- of its own or in `shared` (the recipes' commands, which read each other's outputs), and one
-- skipped test for each other command, showing why
local shown_skips = {}
local function shell_test(name, lines, shared)
  local run, docs = {}, {}
  for _, line in ipairs(lines) do
    local l = strip_comment(line)
    if l ~= "" then
      local parts = {}
      if SKIP[l] then parts[1] = l   -- a line skipped whole (two commands side by side)
      else for part in (l .. " && "):gmatch("(.-)%s*&&%s+") do parts[#parts + 1] = part end end
      for _, part in ipairs(parts) do
        local cmd, why = prepare(part)
        if cmd then run[#run + 1] = cmd; docs[#docs + 1] = part
        elseif not shown_skips[part] then
          shown_skips[part] = true
          T.test(name .. ": " .. part, function() T.skip(why) end)
        end
      end
    end
  end
  if #run == 0 then return end
  T.test(name .. ": " .. #run .. " commands", function()
    local dir = shared and shared() or workdir()
    local res = run_lines(dir, run)
    for i, r in ipairs(res) do r.doc = docs[i] end
    check_results(res, name)
  end)
end

-- ---------------------------------------------------------------- README.md

local blocks = readme_blocks()
local counts = { sh = 0, lua = 0 }
for _, b in ipairs(blocks) do
  local name = "README.md:" .. b.at
  if b.lang == "sh" then
    counts.sh = counts.sh + 1
    shell_test(name .. " (sh)", b.lines)
  elseif b.lang == "lua" then
    counts.lua = counts.lua + 1
    local text = table.concat(b.lines, "\n") .. "\n"
    local script = text:find("^local ") or text:find("\nlocal ")
    T.test(name .. " (lua, " .. (script and "a file" or "REPL lines") .. ")", function()
      note_stand_ins(text)
      local dir = workdir()
      write(dir .. "/snippet.lua", text)
      local res = run_lines(dir, { script and "bin/qlora snippet.lua" or "bin/qlora < snippet.lua" })
      res[1].doc = name
      check_results(res, name)
      -- the REPL reports errors and goes on: none may appear
      T.truthy(not res[1].out:find("stdin:%d+:") and not res[1].out:find("qlora: "), name .. ":\n" .. res[1].out)
    end)
  else
    -- a block without a language: the pipeline diagram, not code
    T.truthy(table.concat(b.lines, "\n"):find("-->", 1, true), "README.md:" .. b.at .. ": a block with no language that is not the diagram")
  end
end

-- ---------------------------------------------------------------- the recipes' --help

-- pipeline order: a stage's documented command reads what the one before wrote
local ORDER = { "pdf_to_md", "clean", "chunk", "train", "merge", "export_gguf", "full", "chat", "doctor" }
local recipes = {}
for _, f in ipairs(qlora.sys.list_dir("recipes") or {}) do
  local n = f:match("^(.+)%.lua$")
  if n then recipes[n] = true end
end
local order = {}
for _, n in ipairs(ORDER) do if recipes[n] then order[#order + 1] = n; recipes[n] = nil end end
local rest = {}
for n in pairs(recipes) do rest[#rest + 1] = n end
table.sort(rest)
for _, n in ipairs(rest) do order[#order + 1] = n end   -- a new recipe is covered too
local recipes_dir
local function recipes_workdir() recipes_dir = recipes_dir or workdir(); return recipes_dir end
for _, n in ipairs(order) do
  local help, rc = T.sh(q .. " recipes/" .. n .. ".lua --help")
  if rc ~= 0 then
    T.test("recipes/" .. n .. ".lua --help", function() error("exit " .. tostring(rc) .. ":\n" .. help) end)
  else
    local cmds = help_commands(help)
    shell_test("recipes/" .. n .. ".lua --help", cmds, recipes_workdir)
  end
end

-- ---------------------------------------------------------------- the lists stay exact

T.test("every README block was found, every SKIP and stand-in is in use", function()
  T.truthy(counts.sh >= 4 and counts.lua >= 2, string.format("README.md: %d sh and %d lua blocks", counts.sh, counts.lua))
  for k in pairs(SKIP) do T.truthy(used_skip[k], "SKIP entry no command uses: " .. k) end
  for k in pairs(STAND_INS) do T.truthy(used_stand_in[k], "stand-in no command uses: " .. k) end
  if SB then os.execute("rm -rf " .. shq(SB)) end
end)

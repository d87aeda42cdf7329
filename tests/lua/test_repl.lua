-- The REPL and `qlora chat` as a person uses them, on a terminal: a pseudo-terminal made by
-- util-linux's `script` (in every Debian: bsdutils), fed through a FIFO, its transcript read
-- back as it grows (an expect loop). Ctrl-C is the byte 0x03 typed into the terminal, so the
-- kernel sends SIGINT exactly as a keyboard does. Also: results printed once and readably,
-- help() for every public function, and the chat's turns through the chat template.
local T = ...
local q = T.qlora
local sys = qlora.sys

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sleep(s) os.execute("sleep " .. s) end
local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- ---------------------------------------------------------------- a terminal session

local Pty = {}
Pty.__index = Pty

-- starts cmd on a pseudo-terminal; env: a string of NAME=value words put before it
local function pty(cmd, env)
  local _, has = T.sh("command -v script")
  if has ~= 0 then T.skip("util-linux's script is not installed (Debian: bsdutils)") end
  local dir = T.tmpdir()
  local self = setmetatable({ dir = dir, mark = 1, log = dir .. "/out" }, Pty)
  assert(os.execute("mkfifo " .. shq(dir .. "/in")))
  -- TERM=dumb: plain echo; timeout: a hung session cannot hang the suite. script runs cmd
  -- through $SHELL -c; "exec" makes qlora that process, else a dash in between (SHELL unset,
  -- as on CI) takes the Ctrl-C's SIGINT too, dies, and script ends the session with 130.
  os.execute(string.format("(env TERM=dumb %s timeout 120 script -qfec %s /dev/null < %s > %s 2>&1; echo $? > %s) &",
                           env or "", shq("exec " .. cmd), shq(dir .. "/in"), shq(self.log), shq(dir .. "/rc")))
  self.fin = assert(io.open(dir .. "/in", "r+"))   -- read-write: never blocks on the FIFO
  return self
end

function Pty:send(s) self.fin:write(s); self.fin:flush() end

function Pty:text() return read_all(self.log) or "" end

-- waits until pat (plain text) appears after the last match; returns the text between
function Pty:expect(pat, timeout)
  local t0 = sys.now()
  while true do
    local out = self:text()
    local a, b = out:find(pat, self.mark, true)
    if a then
      local between = out:sub(self.mark, a - 1)
      self.mark = b + 1
      return between
    end
    if sys.now() - t0 > (timeout or 30) then
      self:close()
      error(string.format("no %q on the terminal after %ds; the transcript:\n%s", pat, timeout or 30, out), 2)
    end
    sleep(0.05)
  end
end

-- the exit status of the program (after Ctrl-D or a kill)
function Pty:wait(timeout)
  local t0 = sys.now()
  while not read_all(self.dir .. "/rc") do
    if sys.now() - t0 > (timeout or 30) then error("the session did not end; transcript:\n" .. self:text(), 2) end
    sleep(0.05)
  end
  return tonumber(read_all(self.dir .. "/rc"))
end

function Pty:close()
  if self.fin then self.fin:close(); self.fin = nil end
end

function Pty:cleanup()
  self:close()
  os.execute("rm -rf " .. shq(self.dir))
end

local function repl(hist)
  return pty(q, "QLORA_HISTORY=" .. shq(hist or ""))
end

local function tiny_model(tokenizer)
  return T.tiny_model(T.tmpdir() .. "/m", tokenizer)
end

-- ---------------------------------------------------------------- Ctrl-C

T.test("Ctrl-C on a half-typed line clears it; the REPL goes on", function()
  local p = repl()
  p:expect("qlora> ")
  p:send("x = 1 +")
  p:expect("x = 1 +")
  p:send("\3")                                    -- Ctrl-C
  p:expect("qlora> ")                             -- a fresh prompt, not an exit
  p:send("y = 5\n")
  p:expect("qlora> ")
  -- Ctrl-C typed right behind other keys, while the line editor may still be at work on them:
  -- each one must still give a fresh prompt (a Ctrl-C that landed then was once lost)
  for _ = 1, 30 do
    p:send("abc\3")
    p:expect("qlora> ")
  end
  p:send("y * 2\n")
  p:expect("10")
  p:send("for i = 1, 2 do\n")                     -- Ctrl-C in a continued chunk drops the chunk
  p:expect(">> ")
  p:send("\3")
  p:expect("qlora> ")
  p:send("x == nil and 'dropped' or 'ran'\n")
  T.truthy(p:expect("qlora> "):find("dropped", 1, true), p:text())
  p:send("qlora.tens\t.aran\t(1, 4):numel()\n")    -- Tab completes module and function names
  p:expect("qlora.tensor.arange(1, 4):numel()")
  p:expect("3")
  p:send("\4")                                    -- Ctrl-D leaves
  T.eq(p:wait(), 0, p:text())
  T.truthy(not p:text():find("stdin:", 1, true), "no syntax error from the dropped lines: " .. p:text())
  p:cleanup()
end)

T.test("Ctrl-C interrupts a running call, the globals stay", function()
  local m = tiny_model("gpt2")
  local p = repl()
  p:expect("qlora> ")
  p:send("kept = 42\n")
  p:expect("qlora> ")
  p:send("while true do end\n")                   -- pure Lua
  sleep(0.3)
  p:send("\3")
  p:expect("interrupted")
  p:expect("qlora> ")
  p:send("kept\n")
  p:expect("42")
  -- a loop of C calls (generation) that come back to Lua between tokens
  p:send(string.format("lm = qlora.llm.load(%q)\n", m))
  p:expect("qlora> ")
  p:send("while true do lm:generate('Hello', {max_new_tokens = 50, stop = {}, write = false}) end\n")
  sleep(0.5)
  p:send("\3")
  p:expect("interrupted")
  p:expect("qlora> ")
  p:send("kept + #lm:generate('Hi', {max_new_tokens = 2, stop = {}, write = false}) * 0\n")
  p:expect("42")                                  -- the state and the model still work
  p:send("\4")
  T.eq(p:wait(), 0, p:text())
  p:cleanup()
  os.execute("rm -rf " .. shq(m:match("^(.*)/m$")))
end)

-- ---------------------------------------------------------------- history

T.test("history is written line by line: a killed REPL keeps it, the next one recalls it", function()
  local dir = T.tmpdir()
  local hist = dir .. "/history"
  local p = repl(hist)
  p:expect("qlora> ")
  p:send("hist_a = 1\n")
  p:expect("qlora> ")
  p:send("hist_b = 'second'\n")
  p:expect("qlora> ")
  p:send("qlora.sys.pid()\n")
  local pid = tonumber(p:expect("qlora> "):match("\n(%d+)"))
  T.truthy(pid, "the REPL's pid: " .. p:text())
  os.execute("kill -KILL " .. pid)                -- no exit handler runs
  p:wait()
  local text = read_all(hist) or ""
  T.truthy(text:find("hist_a = 1\n", 1, true) and text:find("hist_b = 'second'\n", 1, true),
           "the history file after kill -9: " .. text)
  p:cleanup()
  -- a new session: Up recalls the last line
  p = repl(hist)
  p:expect("qlora> ")
  p:send("hist_b = nil\n")
  p:expect("qlora> ")
  p:send("\27[A\27[A\27[A\n")                    -- Up 3 times: past "hist_b = nil" and "qlora.sys.pid()"
  p:expect("qlora> ")
  p:send("hist_b\n")
  p:expect("second")
  p:send("\4")
  T.eq(p:wait(), 0, p:text())
  p:cleanup()
  -- QLORA_HISTORY= (empty) keeps none
  local before = read_all(hist)
  p = repl("")
  p:expect("qlora> ")
  p:send("not_kept = 1\n")
  p:expect("qlora> ")
  p:send("\4")
  T.eq(p:wait(), 0)
  p:cleanup()
  T.eq(read_all(hist), before)
  os.execute("rm -rf " .. shq(dir))
end)

-- ---------------------------------------------------------------- printing results

-- the REPL fed through a pipe (same reading and printing code after the line is read)
local function piped(input)
  local path = os.tmpname()
  local f = io.open(path, "w"); f:write(input); f:close()
  local out, rc = T.sh(q .. " < " .. path)
  os.remove(path)
  return out, rc
end

local function count(s, pat)
  local n, at = 0, 1
  while true do
    local a, b = s:find(pat, at, true)
    if not a then return n end
    n, at = n + 1, b + 1
  end
end

T.test("a generated text is printed once, with no table: 0x...", function()
  local m = tiny_model("qwen2.5")
  local lm = assert(qlora.llm.load(m))
  local text = lm:generate("Hello", { max_new_tokens = 8, stop = {}, write = false })
  local answer = lm:ask("Hi", { max_new_tokens = 6, write = false })
  T.truthy(#text > 0 and #answer > 0)
  local out, rc = piped(string.format("lm = qlora.llm.load(%q)\nlm:generate('Hello', {max_new_tokens = 8, stop = {}})\n" ..
                                      "lm:ask('Hi', {max_new_tokens = 6})\nprint('after')\n", m))
  T.eq(rc, 0, out)
  T.eq(count(out, text), 1, "the generated text once: " .. out)
  T.eq(count(out, answer), 1, "the answer once: " .. out)
  T.truthy(not out:find("table: 0x", 1, true), out)
  T.truthy(out:find(text .. "\n", 1, true), "the streamed line is ended before the next output: " .. out)
  T.truthy(out:find("\nafter\n", 1, true), out)
  -- and on a terminal
  local p = repl()
  p:expect("qlora> ")
  p:send(string.format("lm = qlora.llm.load(%q)\n", m))
  p:expect("qlora> ")
  p:send("lm:generate('Hello', {max_new_tokens = 8, stop = {}})\n")
  p:expect("stop = {}})")
  local shown = p:expect("qlora> ")
  T.eq(count(shown, text), 1, "once on the terminal: " .. shown)
  T.truthy(not shown:find("table: ", 1, true), shown)
  p:send("\4")
  T.eq(p:wait(), 0)
  p:cleanup()
  os.execute("rm -rf " .. shq(m:match("^(.*)/m$")))
end)

T.test("results: tables as short literals, strings and numbers as print shows them", function()
  local out, rc = piped("{1, 2, {a = 'x'}}\n'plain', 3\nqlora.tensor.ones{2}:totable()\nt = {} ; t.self = t\nt\n" ..
                        "(function() local r = {} for i = 1, 100 do r[i] = i end return r end)()\n")
  T.eq(rc, 0, out)
  T.truthy(out:find('{1, 2, {a = "x"}}\n', 1, true), out)
  T.truthy(out:find("plain\t3\n", 1, true), out)
  T.truthy(out:find("{1.0, 1.0}\n", 1, true), out)
  T.truthy(out:find("{self = {...}}\n", 1, true), out)
  T.truthy(out:find("... (100 items)}", 1, true), out)
  T.truthy(not out:find("table: 0x", 1, true), out)
end)

-- ---------------------------------------------------------------- help()

T.test("help() shows the documentation of functions, modules and objects", function()
  local out, rc = piped("help()\nhelp(qlora.tensor.randn)\nhelp(qlora.tensor.randn{2})\nhelp(qlora.llm.load)\n" ..
                        "help('qlora.chunk.split')\nhelp(qlora.json)\nhelp('nosuch.thing')\n")
  T.eq(rc, 0, out)
  T.truthy(out:find("qlora.tokenizer", 1, true) and out:find("qlora.llm", 1, true), "help() lists the modules: " .. out)
  T.truthy(out:find("qlora.tensor.randn(shape", 1, true), out)
  T.truthy(out:find("t:matmul(other)", 1, true) and out:find("t.shape", 1, true), "help(t): methods and fields: " .. out)
  T.truthy(out:find("qlora.llm.load(dir, opts)", 1, true) and out:find("opts.quant", 1, true), out)
  T.truthy(out:find("chunk.split(md, opts) -> {", 1, true), out)
  T.truthy(out:find("qlora.json.decode(text", 1, true) and out:find("qlora.json.null", 1, true), out)
  T.truthy(out:find("nothing is called 'nosuch.thing'", 1, true), out)
end)

-- The Lua functions that have no documentation yet, each in a file this change may not edit
-- (train.lua and gguf_export.lua belong to other work). The test fails when one of them gains
-- documentation too, so that this list only shrinks.
local KNOWN_UNDOCUMENTED = {
  ["qlora.train:permutation"] = "train.lua: no comment above it and no header entry",
  ["qlora.train:load"] = "train.lua: Trainer:load has no comment above it",
  ["qlora.train:summary"] = "train.lua: Trainer:summary has no comment above it",
  ["qlora.gguf_export:gguf_name"] = "gguf_export.lua: no comment above it",
  ["qlora.gguf_export:llama3_rope_factors"] = "gguf_export.lua: its comment sits above a helper defined between",
  ["qlora.gguf_export:chat_format"] = "gguf_export.lua: no comment above it",
}

T.test("every public function of the qlora modules has help text", function()
  local H = require("qlora.help")
  local docs = require("qlora.docs")
  local missing = {}
  -- C bindings: each documented table, as registered
  local owners = 0
  for owner, o in pairs(docs.owners) do
    owners = owners + 1
    for _, n in ipairs(o.undocumented) do missing[#missing + 1] = owner .. "." .. n .. " (C: no row in its docs table)" end
  end
  T.truthy(owners >= 18, "the bindings registered their docs (" .. owners .. " tables)")
  -- every module: each function reached from it, by value
  local objects = {
    tensor = qlora.tensor.randn { 2, 2 },
    tokenizer = assert(qlora.tokenizer.load(T.fixture("tokenizers/gpt2"))),
    model = assert(qlora.model.load(T.fixture("models/tiny-qwen2"))),
  }
  objects.lora = qlora.lora.new(objects.model, { r = 2 })
  for _, name in ipairs(H.modules()) do
    local mod = qlora[name]
    T.truthy(type(mod) == "table", "qlora." .. name .. " loads")
    for k, v in pairs(mod) do
      if type(v) == "function" and type(k) == "string" and k:sub(1, 1) ~= "_" and not H.doc(v) and
         not KNOWN_UNDOCUMENTED["qlora." .. name .. ":" .. k] then
        missing[#missing + 1] = "qlora." .. name .. "." .. k
      end
    end
  end
  for what, obj in pairs(objects) do
    local mt = getmetatable(obj)
    local o = docs.owners[mt.__name]
    T.truthy(o, what .. ": its methods are documented under " .. tostring(mt.__name))
    for _, n in ipairs(o.names) do
      local v = obj[n]
      if type(v) == "function" then T.truthy(H.doc(v), what .. ":" .. n) end
    end
  end
  -- every Lua module file: each function it defines (methods of its classes included)
  local dir = package.searchpath("qlora.help", package.path):match("^(.*)/[^/]*$")
  local files = 0
  for _, f in ipairs(sys.list_dir(dir)) do
    local mod = f:match("^([%w_]+)%.lua$")
    if mod then
      files = files + 1
      for _, fn in ipairs(H.source_functions(dir .. "/" .. f)) do
        local key = "qlora." .. mod .. ":" .. fn.name
        local documented = H.lua_doc(dir .. "/" .. f, fn.line) ~= nil
        if fn.public and not documented and not KNOWN_UNDOCUMENTED[key] then
          missing[#missing + 1] = string.format("%s/%s:%d %s", dir, f, fn.line, fn.name)
        end
        if KNOWN_UNDOCUMENTED[key] then
          T.truthy(not documented, key .. " is documented now: take it off KNOWN_UNDOCUMENTED")
        end
      end
    end
  end
  T.truthy(files >= 10, "the Lua modules were found in " .. dir)
  objects.lora:release()
  objects.model:release()
  objects.tokenizer:close()
  T.eq(missing, {}, "functions without help text")
end)

-- ---------------------------------------------------------------- qlora chat

T.test("qlora chat MODEL: the chat template, the conversation carried, answers streamed", function()
  local m = tiny_model("qwen2.5")
  local lm = assert(qlora.llm.load(m, { quant = "nf4" }))
  local opts = { max_new_tokens = 6, write = false }
  local h = { { role = "user", content = "Hello there" } }
  local a1 = lm:ask(h, opts)
  h[2] = { role = "assistant", content = a1 }
  h[3] = { role = "user", content = "And again" }
  local a2 = lm:ask(h, opts)
  local path = os.tmpname()
  local f = io.open(path, "w"); f:write("Hello there\nAnd again\n"); f:close()
  local out, rc = T.sh(q .. " chat " .. shq(m) .. " max_new_tokens=6 < " .. path)
  os.remove(path)
  T.eq(rc, 0, out)
  T.truthy(out:find("you> model> " .. a1 .. "\nyou> model> " .. a2 .. "\nyou> \n", 1, true),
           string.format("expected the answers %q then %q: %s", a1, a2, out))
  -- the prompt of the second turn is the template over the whole conversation
  local seen
  local orig = lm.model
  lm.model = setmetatable({ generate = function(_, ids, o) seen = ids; return orig:generate(ids, o) end }, { __index = orig })
  local lines = { "Hello there", "And again" }
  local i = 0
  local write = io.write
  io.write = function() end                       -- the chat's own output: checked above through qlora chat
  local ok, hist = pcall(lm.chat, lm, { max_new_tokens = 6, read = function() i = i + 1; return lines[i] end })
  io.write = write
  lm.model = orig
  T.truthy(ok, hist)
  T.eq(#hist, 4)
  T.eq(seen, lm.tokenizer:apply_chat_template(h, { add_generation_prompt = true, tokenize = true }))
  os.execute("rm -rf " .. shq(m:match("^(.*)/m$")))
end)

T.test("qlora chat: clear errors for a missing model, tokenizer or chat template", function()
  local out, rc = T.sh(q .. " chat")
  T.eq(rc, 2)
  T.truthy(out:find("model= is required", 1, true), out)
  out, rc = T.sh(q .. " chat /nonexistent/model")
  T.eq(rc, 2)
  T.truthy(out:find("no such folder", 1, true), out)
  out, rc = T.sh(q .. " chat " .. shq(T.fixture("models/tiny-qwen2")))
  T.eq(rc, 2)
  T.truthy(out:find("tokenizer", 1, true), out)
  local m = tiny_model("gpt2")                    -- GPT-2 has no chat template
  out, rc = T.sh(q .. " chat " .. shq(m) .. " < /dev/null")
  T.eq(rc, 2)
  T.truthy(out:find("no chat template", 1, true), out)
  out, rc = T.sh(q .. " chat " .. shq(m) .. " tempreature=1")
  T.eq(rc, 2)
  T.truthy(out:find("did you mean temperature", 1, true), out)
  os.execute("rm -rf " .. shq(m:match("^(.*)/m$")))
end)

T.test("qlora chat: Ctrl-C stops an answer, the chat goes on", function()
  local m = tiny_model("qwen2.5")
  local p = pty(q .. " chat " .. shq(m) .. " max_new_tokens=4000")
  p:expect("you> ")
  p:send("Hi\n")
  p:expect("model> ")
  sleep(0.5)
  p:send("\3")
  p:expect("[stopped]", 60)
  p:expect("you> ")
  p:send("\4")
  T.eq(p:wait(), 0, p:text())
  p:cleanup()
  os.execute("rm -rf " .. shq(m:match("^(.*)/m$")))
end)

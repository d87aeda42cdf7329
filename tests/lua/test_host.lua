-- The qlora program itself: recipes with key=value arguments, -e, --version,
-- the strict-globals guard, the REPL (fed through a pipe), doctor's exit code,
-- and qlora.so loaded into Debian's stock lua5.4.
local T = ...
local q = T.qlora

T.test("--version names the version, commit and build", function()
  local out, rc = T.sh(q .. " --version")
  T.eq(rc, 0)
  T.truthy(out:find("qlora " .. qlora.version, 1, true), out)
  T.truthy(out:find("commit"), out)
  T.truthy(out:find("CUDA architectures"), out)
end)

T.test("-e runs code with the modules loaded", function()
  local out, rc = T.sh(q .. [[ -e 'print(require"qlora".tensor.randn{2,3}.shape[2])']])
  T.eq(rc, 0)
  T.eq(out, "3\n")
  local _, rc2 = T.sh(q .. [[ -e 'error("boom")']])
  T.eq(rc2, 1)
end)

T.test("recipes get key=value arguments and a guard on globals", function()
  local dir = T.tmpdir()
  local f = io.open(dir .. "/r.lua", "w")
  f:write('print(args.name, args.n, arg[0] ~= nil)\n')
  f:close()
  local out, rc = T.sh(q .. " " .. dir .. "/r.lua name=x n=3")
  T.eq(rc, 0)
  T.eq(out, "x\t3\ttrue\n")
  f = io.open(dir .. "/typo.lua", "w")
  f:write('local total = 1\nprint(totl)\n')
  f:close()
  out, rc = T.sh(q .. " " .. dir .. "/typo.lua")
  T.eq(rc, 1)
  T.truthy(out:find("undeclared global 'totl'", 1, true), out)
  out, rc = T.sh(q .. " " .. dir .. "/missing.lua")
  T.eq(rc, 2)
  T.truthy(out:find("no such file"), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("REPL prints expressions, runs statements, continues multi-line input", function()
  local input = "x = 6 * 7\nx\nfor i = 1, 2 do\n  print('line', i)\nend\nqlora.tensor.ones{2}:sum():item()\nerror('oops')\n1 + 1\n"
  local path = os.tmpname()
  local f = io.open(path, "w"); f:write(input); f:close()
  local out, rc = T.sh(q .. " < " .. path)
  os.remove(path)
  T.eq(rc, 0)
  T.truthy(out:find("42\n", 1, true), out)
  T.truthy(out:find("line\t1\nline\t2\n", 1, true), out)
  T.truthy(out:find("2.0\n", 1, true), out)
  T.truthy(out:find("oops", 1, true), out)
  T.truthy(out:find("\n2\n", 1, true), "the REPL goes on after an error: " .. out)
end)

T.test("doctor exits with its documented code", function()
  local out, rc = T.sh(q .. " doctor")
  local build = qlora.sys.build()
  if not build.cuda then
    T.eq(rc, 3)
    T.truthy(out:find("CPU%-only build"), out)
  else
    T.truthy(rc == 0 or rc == 4 or rc == 5 or rc == 6, "exit code " .. tostring(rc) .. ": " .. out)
    T.truthy(out:find("fix:") or rc == 0, out)
  end
end)

T.test("qlora.so loads into Debian's stock lua5.4", function()
  local _, has = T.sh("command -v lua5.4")
  if has ~= 0 then T.skip("lua5.4 is not installed") end
  if os.getenv("ASAN_OPTIONS") then T.skip("an ASan-built module cannot load into an uninstrumented lua5.4") end
  local dir = q:match("^(.*)/[^/]*$") or "."
  local out, rc = T.sh("lua5.4 -e 'package.cpath=\"" .. dir .. "/?.so;\"..package.cpath; " ..
                       "local q = require \"qlora\"; print(q.version, q.tensor.ones{3}:sum():item())'")
  T.eq(rc, 0)
  T.eq(out, qlora.version .. "\t3.0\n")
end)

-- `./setup.sh --prefix=DIR` (here with --no-build: what the suite runs is built already)
-- installs the program, qlora.so, the Lua modules and the recipes; from another folder
-- the installed qlora lists, copies, explains and runs recipes, and chats.
T.test("setup.sh --prefix installs a qlora that works from any folder", function()
  local f = io.open("setup.sh", "r")
  if not f then T.skip("run from the repository root (tests/run does)") end
  f:close()
  local dir = q:match("^(.*)/[^/]*$") or "."
  local bindir, config = dir, ""
  local parent, sub = dir:match("^(.*)/(%a+)$")
  if sub == "asan" or sub == "debug" then bindir, config = parent, "QL_CONFIG=" .. sub .. " " end
  local tmp = T.tmpdir()
  local prefix = tmp .. "/a/b/prefix"             -- deep: nothing of the repository above it
  local out, rc = T.sh(config .. "./setup.sh --no-build --prefix=" .. prefix .. " --bindir=" .. bindir)
  T.eq(rc, 0, out)
  local iq = prefix .. "/bin/qlora"
  local elsewhere = tmp .. "/work"
  os.execute("mkdir -p '" .. elsewhere .. "'")
  local function run(cmd) return T.sh("cd '" .. elsewhere .. "' && " .. cmd) end
  out, rc = run(iq .. " ls")
  T.eq(rc, 0, out)
  T.truthy(out:find("(in " .. prefix .. "/bin/../share/qlora/recipes)", 1, true), "the installed recipes: " .. out)
  for _, name in ipairs({ "full", "train", "chat", "merge", "pdf_to_md" }) do
    T.truthy(out:find("\n" .. name .. " ", 1, true) or out:find("^" .. name .. " "), name .. " listed: " .. out)
  end
  out, rc = run(iq .. " cp full x.lua")
  T.eq(rc, 0, out)
  local a, b = io.open(elsewhere .. "/x.lua"):read("a"), io.open("recipes/full.lua"):read("a")
  T.eq(a, b, "the copy is the recipe")
  out, rc = run(iq .. " full --help")
  T.eq(rc, 0, out)
  T.truthy(out:find("usage:", 1, true) and out:find("model=DIR", 1, true), out)
  out, rc = run(iq .. " chat --help")
  T.eq(rc, 0, out)
  T.truthy(out:find("max_new_tokens=N", 1, true), out)
  out, rc = run(iq .. [[ -e 'print(qlora.llm ~= nil, package.searchpath("qlora.llm", package.path))']])
  T.eq(rc, 0, out)
  T.truthy(out:find("true\t" .. prefix .. "/bin/../share/qlora/lua/qlora/llm.lua", 1, true), out)
  out, rc = run(iq .. " doctor")
  T.truthy(rc == 3 or rc == 4 or rc == 0 or rc == 5 or rc == 6, "doctor ran from the install: " .. out)
  -- a copied recipe finds the installed stages and samples
  out, rc = run(iq .. " x.lua --help")
  T.eq(rc, 0, out)
  -- chat with a tiny model, from there
  local m = tmp .. "/m"
  qlora.llm.random_model(m, { tokenizer = T.fixture("tokenizers/qwen2.5"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  out, rc = run("printf 'Hi\\n' | " .. iq .. " chat '" .. m .. "' max_new_tokens=3")
  T.eq(rc, 0, out)
  T.truthy(out:find("you> model> ", 1, true), out)
  -- the module for a stock lua5.4
  local _, has = T.sh("command -v lua5.4")
  if has == 0 and not os.getenv("ASAN_OPTIONS") then
    out, rc = run("lua5.4 -e 'package.cpath=\"" .. prefix .. "/lib/lua/5.4/?.so;\"..package.cpath; print(require(\"qlora\").version)'")
    T.eq(rc, 0, out)
    T.eq(out, qlora.version .. "\n")
  end
  -- bad input: --no-build without --prefix
  out, rc = T.sh("./setup.sh --no-build")
  T.eq(rc, 2, out)
  T.truthy(out:find("--prefix", 1, true), out)
  os.execute("rm -rf '" .. tmp .. "'")
end)

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

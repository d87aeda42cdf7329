-- tests/lua/run.lua — runs every tests/lua/test_*.lua through the qlora host.
-- A test file receives `T` with:
--   T.test(name, fn)          register a test (fn raises to fail)
--   T.skip(reason)            inside a test: mark it skipped
--   T.eq(a, b [, msg])        equality (deep for tables)
--   T.near(a, b, tol [, msg]) |a-b| <= tol
--   T.raises(fn, pattern)     fn must raise an error matching pattern
--   T.fixture(name)           path under tests/fixtures
--   T.tiny_model(dir [, tok]) a 1-layer random model (tokenizer fixture tok, default gpt2) in dir
--   T.word_data(path, n [, extra])  n JSONL text records of 12 words (extra[i]: a raw line after record i)
--   T.jsonl_rows(path)        the decoded records of a JSONL file
-- Prints one line per test and "N passed, N failed, N skipped".
local pattern = arg and arg[1] or ""
if pattern == "" then pattern = nil end
local root = (arg and arg[0] or "tests/lua/run.lua"):gsub("tests/lua/run%.lua$", "")
if root == "" then root = "./" end

local T = {}
local tests = {}
local SKIP = {}

function T.test(name, fn) tests[#tests + 1] = { name = T.file .. "/" .. name, fn = fn } end
function T.skip(reason) error(setmetatable({ reason = reason }, SKIP), 0) end

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
local function show(v)
  if type(v) ~= "table" then return string.format("%q", v):gsub("\n", "n") end
  local parts = {}
  for i, x in ipairs(v) do parts[i] = show(x); if i > 20 then parts[i] = "..."; break end end
  return "{" .. table.concat(parts, ", ") .. "}"
end
function T.eq(a, b, msg)
  if not deep_eq(a, b) then
    error((msg and msg .. ": " or "") .. "got " .. show(a) .. ", expected " .. show(b), 2)
  end
end
function T.near(a, b, tol, msg)
  if not (math.abs(a - b) <= tol) then
    error(string.format("%sgot %.9g, expected %.9g (tol %g)", msg and msg .. ": " or "", a, b, tol), 2)
  end
end
function T.truthy(v, msg) if not v then error(msg or "expected a true value", 2) end return v end
function T.raises(fn, pat)
  local ok, err = pcall(fn)
  if ok then error("expected an error matching '" .. pat .. "'", 2) end
  if not tostring(err):find(pat) then
    error("error '" .. tostring(err) .. "' does not match '" .. pat .. "'", 2)
  end
end
function T.fixture(name)
  local dir = os.getenv("QL_FIXTURES") or (root .. "tests/fixtures")
  return dir .. "/" .. name
end
-- the qlora binary running these tests (arg[-1]), for tests of the host itself
T.qlora = arg and arg[-1] or "qlora"
function T.sh(cmd)  -- runs a shell command, returns its output and exit code
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return out:gsub("__rc=%d+%s*$", ""), rc
end
function T.tiny_model(dir, tok)
  qlora.llm.random_model(dir, { tokenizer = T.fixture("tokenizers/" .. (tok or "gpt2")), layers = 1, hidden = 32,
                                heads = 2, kv_heads = 1 })
  return dir
end
function T.word_data(path, n, extra)
  local words = { "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "home" }
  local f = assert(io.open(path, "w"))
  for i = 1, n do
    local w = {}
    for k = 1, 12 do w[k] = words[(i + k) % #words + 1] end
    f:write(qlora.json.encode({ text = table.concat(w, " ") }), "\n")
    if extra and extra[i] then f:write(extra[i], "\n") end
  end
  f:close()
end
function T.jsonl_rows(path)
  local t = {}
  for line in io.lines(path) do t[#t + 1] = qlora.json.decode(line) end
  return t
end
function T.tmpdir()
  local d = os.tmpname(); os.remove(d)
  os.execute("mkdir -p '" .. d .. "'")
  return d
end

-- collect test files
local files = {}
local p = io.popen('ls "' .. root .. 'tests/lua"/test_*.lua 2>/dev/null')
for line in p:lines() do files[#files + 1] = line end
p:close()
table.sort(files)
for _, f in ipairs(files) do
  T.file = f:match("([^/]+)%.lua$")
  local chunk, err = loadfile(f)
  if not chunk then
    tests[#tests + 1] = { name = T.file .. "/load", fn = function() error(err, 0) end }
  else
    local ok, e = pcall(chunk, T)
    if not ok then tests[#tests + 1] = { name = T.file .. "/load", fn = function() error(e, 0) end } end
  end
end

local passed, failed, skipped = 0, 0, 0
for _, t in ipairs(tests) do
  if not pattern or t.name:find(pattern, 1, true) then
    local t0 = os.clock()
    local ok, err = xpcall(t.fn, function(e)
      if getmetatable(e) == SKIP then return e end
      return debug.traceback(tostring(e), 2)
    end)
    collectgarbage()
    local ms = (os.clock() - t0) * 1000
    if ok then passed = passed + 1; print(string.format("ok    lua/%s (%.0f ms)", t.name, ms))
    elseif getmetatable(err) == SKIP then skipped = skipped + 1; print("skip  lua/" .. t.name .. ": " .. err.reason)
    else failed = failed + 1; print("FAIL  lua/" .. t.name .. "\n    " .. tostring(err):gsub("\n", "\n    ")) end
  end
end
print(string.format("%d passed, %d failed, %d skipped", passed, failed, skipped))
os.exit(failed == 0 and 0 or 1)

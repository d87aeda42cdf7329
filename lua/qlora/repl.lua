-- qlora.repl — the Lua side of the interactive REPL (lua/host/repl.c): how results are
-- printed, what a call already showed, and help().
--
--   R.format(v) -> text            one value as the REPL prints it: strings and numbers as
--                                  print does, objects by their __tostring, tables as a short
--                                  literal ({1, 2, 3}, {dtype = "f32", n = 2}) instead of table: 0x...
--   R.print_results(...)           prints a call's results, a line for all of them, leaving out
--                                  those the call already showed (R.shown)
--   R.shown(...)                   for code that streams: these values are on the screen already
--                                  (lm:generate streams its text, then returns it: printed once)
--   R.line_open(open)              the streamed output ended mid-line (true) or at a line's end:
--                                  the next prompt then starts on a new line
--   R.begin()                      called by the REPL before each call: forgets what was shown
--   R.help(x)                      help(): qlora.help.text(x) printed (help() lists the modules)
--   R.history_path                 the history file the REPL writes (set by the REPL)
--
-- Streaming code asks for this module with package.loaded["qlora.repl"]: outside the REPL
-- it is not loaded and nothing is marked.
local R = {}

local shown, open_line = {}, false

function R.begin() shown = {}; open_line = false end

function R.shown(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil then shown[#shown + 1] = v end
  end
end

function R.line_open(open) open_line = open and true or false end

local function was_shown(v)
  for _, s in ipairs(shown) do if rawequal(s, v) then return true end end
  return false
end

local MAX_ITEMS, MAX_CHARS, MAX_DEPTH = 12, 600, 2

local function is_ident(k) return type(k) == "string" and k:match("^[%a_][%w_]*$") end

local function fmt(v, depth, seen)
  local t = type(v)
  if t == "string" then return depth == 0 and v or string.format("%q", v):gsub("\\\n", "\\n") end
  if t ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  if type(mt) == "table" and rawget(mt, "__tostring") then return tostring(v) end
  if seen[v] then return "{...}" end
  if depth >= MAX_DEPTH then return "{...}" end
  seen[v] = true
  local parts, n = {}, #v
  for i = 1, math.min(n, MAX_ITEMS) do parts[#parts + 1] = fmt(v[i], depth + 1, seen) end
  if n > MAX_ITEMS then parts[#parts + 1] = string.format("... (%d items)", n) end
  local keys = {}
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "string" or ta == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  for i, k in ipairs(keys) do
    if i > MAX_ITEMS then parts[#parts + 1] = string.format("... (%d more keys)", #keys - MAX_ITEMS); break end
    local key = is_ident(k) and k or ("[" .. fmt(k, MAX_DEPTH, seen) .. "]")
    parts[#parts + 1] = key .. " = " .. fmt(v[k], depth + 1, seen)
  end
  seen[v] = nil
  local s = "{" .. table.concat(parts, ", ") .. "}"
  if #s > MAX_CHARS then s = s:sub(1, MAX_CHARS) .. " ...}" end
  return s
end

function R.format(v) return (fmt(v, 0, {})) end

function R.print_results(...)
  local out = {}
  local n = select("#", ...)
  for i = 1, n do
    local v = select(i, ...)
    if not was_shown(v) then out[#out + 1] = R.format(v) end
  end
  if open_line then io.write("\n"); open_line = false end
  if #out > 0 then io.write(table.concat(out, "\t"), "\n") end
  io.flush()
end

-- after a call that printed nothing of its results: close a streamed line
function R.finish()
  if open_line then io.write("\n"); open_line = false; io.flush() end
end

function R.help(x)
  local text = require("qlora.help").text(x)
  if x == nil then
    text = text .. "\nThe REPL: Tab completes names; Ctrl-C clears the line or interrupts a running call; " ..
           "Ctrl-D leaves." .. (R.history_path and ("\nHistory: " .. R.history_path .. " (written as you go; $QLORA_HISTORY sets it)") or "")
  end
  print(text)
end

return R

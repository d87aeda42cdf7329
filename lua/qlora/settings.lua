-- qlora.settings — declared, validated key=value settings for recipes.
--
-- A recipe declares each of its settings once, as a row:
--   { name, type, default, "one-line help", choices = {...}, min = n, max = n, required = true, stamp = false }
-- types: "string"; "int", "number" (min/max); "bool" (true/false, 1/0, yes/no; words in
-- also = {...} are taken as themselves, like checkpointing=host); "enum" (choices);
-- "path" (not checked); inputs that must exist before anything runs: "file", "dir", "model" (a folder
-- with config.json), "tokenizer" (a folder with tokenizer.json, or a tokenizer.json).
-- stamp = false marks a setting that does not change the result (threads, device choice of
-- reporting): run manifests leave it out.
--
--   local cfg = require("qlora.settings").parse(args, SETTINGS)
--
-- gives a table of typed values, after reading config=FILE.lua (a Lua file that returns a
-- table of the same keys, or assigns them; the command line wins over it). `--help` (or -h)
-- prints the recipe's header comment and a table made from the declaration, then exits 0.
-- Unknown keys (with "did you mean"), values of the wrong type or out of range, and required
-- inputs that are missing are all reported at once, before the recipe does any work; the
-- process exits with status 2. S.resolve(args, SETTINGS) returns cfg or nil, message instead.
-- S.describe(recipe_path) returns a recipe's declaration without running it.
local S = {}
local sys = qlora.sys

-- the program as the user typed it (bin/qlora, /usr/local/bin/qlora), for printed hints
function S.program()
  local p = rawget(_G, "arg") and arg[-1]
  return p or "qlora"
end

local function bool_of(s)
  s = tostring(s):lower()
  if s == "true" or s == "1" or s == "yes" or s == "on" then return true end
  if s == "false" or s == "0" or s == "no" or s == "off" then return false end
  return nil
end

-- optimal-string-alignment distance (typos: one insertion, deletion, substitution or swap each)
local function distance(a, b)
  local d = {}
  for i = 0, #a do d[i] = { [0] = i } end
  for j = 0, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[#a][#b]
end

-- the name in names closest to a mistyped key ("stpes" -> "steps"), or nil when none is close
function S.suggest(key, names)
  local best, bd = nil, math.huge
  for _, n in ipairs(names) do
    local dd = distance(key:lower(), n:lower())
    if dd < bd then best, bd = n, dd end
  end
  if best and bd <= math.max(1, math.min(2, #key // 3)) then return best end
  if best and (best:find(key, 1, true) or key:find(best, 1, true)) and #key >= 3 then return best end
  return nil
end

local function what(d)
  local t = d[2]
  local range = ""
  if d.min and d.max then range = string.format(" from %s to %s", d.min, d.max)
  elseif d.min then range = " >= " .. tostring(d.min)
  elseif d.max then range = " <= " .. tostring(d.max) end
  if t == "int" then return "an integer" .. range end
  if t == "number" then return "a number" .. range end
  if t == "bool" then
    if d.also then return "true, false or " .. table.concat(d.also, ", ") end
    return "true or false"
  end
  if t == "enum" then return "one of " .. table.concat(d.choices, ", ") end
  return "a " .. t
end

-- one value from a string (command line) or a Lua value (config file); returns value or nil, why
local function convert(d, v)
  local t = d[2]
  if type(v) ~= "string" then
    if type(v) == "number" or type(v) == "boolean" then v = tostring(v)
    else return nil, "must be " .. what(d) .. ", not a " .. type(v) end
  end
  if t == "int" or t == "number" then
    local n = tonumber(v)
    if t == "int" then n = n and math.tointeger(n) end
    if not n or n ~= n then return nil, "must be " .. what(d) end
    if (d.min and n < d.min) or (d.max and n > d.max) then return nil, "must be " .. what(d) end
    return n
  elseif t == "bool" then
    local b = bool_of(v)
    for _, w in ipairs(b == nil and d.also or {}) do if v == w then return w end end
    if b == nil then return nil, "must be " .. what(d) end
    return b
  elseif t == "enum" then
    for _, c in ipairs(d.choices) do if c == v then return v end end
    if d.pattern and v:match(d.pattern) then return v end
    local s = S.suggest(v, d.choices)
    return nil, "must be " .. (d.shown or table.concat(d.choices, ", ")) .. (s and " (did you mean " .. s .. "?)" or "")
  end
  if v == "" then return nil, "is empty" end
  return v
end

-- the input a path-typed setting names must exist: nil when it does, else why
local function check_input(d, v)
  local t = d[2]
  if t == "file" then
    if sys.is_dir(v) then return "is a folder, not a file" end
    local f = io.open(v, "rb")
    if not f then return "no such file" end
    f:close()
  elseif t == "dir" then
    if not sys.is_dir(v) then return sys.exists(v) and "is not a folder" or "no such folder" end
  elseif t == "model" then
    if not sys.is_dir(v) then return sys.exists(v) and "is not a folder (a Hugging Face model folder is needed)" or "no such folder" end
    if not sys.exists(v .. "/config.json") then return "has no config.json (not a Hugging Face model folder)" end
  elseif t == "tokenizer" then
    if sys.is_dir(v) then
      if not sys.exists(v .. "/tokenizer.json") then return "has no tokenizer.json" end
    elseif not sys.exists(v) and v:sub(1, 1) ~= "{" then return "no such file or folder" end
  end
  return nil
end

local function index(decl)
  local by, names = {}, {}
  for _, d in ipairs(decl) do by[d[1]] = d; names[#names + 1] = d[1] end
  return by, names
end

-- reads config=FILE.lua: a file that returns a table, or assigns key = value
local function read_config(path)
  local env = {}
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  local ok, res = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(res) end
  if res ~= nil and type(res) ~= "table" then return nil, path .. ": must return a table of settings" end
  return res or env
end

function S.resolve(args, decl)
  local by, names = index(decl)
  local problems, cfg, given, bad = {}, {}, {}, {}
  local function add(src, k, v)
    local d = by[k]
    if not d then
      local s = S.suggest(k, names)
      problems[#problems + 1] = string.format("%s%s: unknown setting%s", src, k, s and (" (did you mean " .. s .. "?)") or "")
      return
    end
    local val, why = convert(d, v)
    if val == nil then problems[#problems + 1] = string.format("%s%s=%s: %s", src, k, tostring(v), why); bad[k] = true; return end
    cfg[k], given[k] = val, true
  end
  for i, v in ipairs(args) do
    problems[#problems + 1] = string.format("'%s': not a setting (settings are key=value)", tostring(v))
    if i > 5 then break end
  end
  local cfile = args.config
  if cfile then
    local t, err = read_config(cfile)
    if not t then problems[#problems + 1] = "config=" .. cfile .. ": " .. tostring(err)
    else
      local keys = {}
      for k in pairs(t) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do if args[k] == nil then add(cfile .. ": ", k, t[k]) end end
    end
  end
  local keys = {}
  for k in pairs(args) do if type(k) == "string" and k ~= "config" then keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do add("", k, args[k]) end
  for _, d in ipairs(decl) do
    local k = d[1]
    if cfg[k] == nil then cfg[k] = d[3] end
    if cfg[k] == nil and d.required then
      problems[#problems + 1] = string.format("%s= is required: %s", k, d[4])
    elseif cfg[k] ~= nil and not bad[k] then
      local why = check_input(d, cfg[k])
      if why then problems[#problems + 1] = string.format("%s=%s: %s", k, cfg[k], why) end
    end
  end
  if #problems > 0 then return nil, problems end
  return setmetatable(cfg, { __index = function(_, k)
    if not by[k] then error("setting '" .. tostring(k) .. "' is not declared", 2) end
  end }), given
end

-- the header comment of a recipe file (its leading -- lines), without the comment marks
function S.header(path)
  local lines = {}
  local f = io.open(path, "r")
  if not f then return lines end
  for line in f:lines() do
    if line:sub(1, 2) ~= "--" then break end
    lines[#lines + 1] = line:gsub("^%-%- ?", "")
  end
  f:close()
  return lines
end

local function shown_default(v)
  if v == nil then return "" end
  return tostring(v)
end

-- the text of `--help`: the recipe's header comment, a usage line and a table of the settings
-- (name=TYPE, default, help and range) made from the declaration
function S.help(decl, path)
  local out = {}
  for _, l in ipairs(S.header(path)) do out[#out + 1] = l end
  out[#out + 1] = ""
  out[#out + 1] = string.format("usage: %s %s key=value ... [config=FILE.lua]", S.program(), path)
  out[#out + 1] = "  (config=FILE.lua: a Lua file returning a table of these keys; the command line overrides it)"
  out[#out + 1] = ""
  local rows, w1, w2 = {}, 0, 0
  for _, d in ipairs(decl) do
    local meta = d.metavar or (d[2] == "enum" and (d.shown or table.concat(d.choices, "|"))) or
                 ({ int = "N", number = "X", bool = "true|false", model = "DIR", tokenizer = "PATH", string = "TEXT" })[d[2]] or d[2]:upper()
    local left = d[1] .. "=" .. meta
    local def = d.required and "required" or shown_default(d[3])
    rows[#rows + 1] = { left, def, d[4] .. ((d.min or d.max) and " (" .. what(d) .. ")" or "") }
    w1, w2 = math.max(w1, #left), math.max(w2, #def)
  end
  if #rows == 0 then out[#out + 1] = "  (no settings)"; return table.concat(out, "\n") .. "\n" end
  out[#out + 1] = string.format("  %-" .. w1 .. "s  %-" .. w2 .. "s  %s", "setting", "default", "")
  for _, r in ipairs(rows) do out[#out + 1] = string.format("  %-" .. w1 .. "s  %-" .. w2 .. "s  %s", r[1], r[2], r[3]) end
  return table.concat(out, "\n") .. "\n"
end

-- raised by parse() while S.describe() loads a recipe: carries the declaration
local DESCRIBE = {}

-- the recipe's settings from args (key=value words and config=FILE.lua): typed values, or the
-- problems reported and exit 2; --help prints S.help and exits 0. Returns cfg and the set of
-- keys given (on the command line or in the config file)
function S.parse(args, decl)
  if S.describing then error(setmetatable({ decl = decl }, DESCRIBE), 0) end
  local path = rawget(_G, "arg") and arg[0] or "recipe"
  local name = path:match("([^/]+)%.lua$") or path
  for _, v in ipairs(args) do
    if v == "--help" or v == "-h" or v == "help" then io.write(S.help(decl, path)); os.exit(0) end
  end
  local cfg, problems = S.resolve(args, decl)
  if not cfg then
    io.stderr:write(string.format("%s: %s\n", name, #problems == 1 and problems[1]
                                  or ("problems with the settings:\n  " .. table.concat(problems, "\n  "))))
    io.stderr:write(string.format("%s: nothing was done; `%s %s --help` lists the settings\n", name, S.program(), path))
    os.exit(2)
  end
  return cfg, problems   -- problems: the keys given (on the command line or in config=) -> true
end

-- a recipe's declaration, without running it (nil, message if it declares none)
function S.describe(path)
  -- a recipe without a declaration runs on until it stops: never let it end this process
  local fake_os = setmetatable({ exit = function() error("os.exit", 0) end }, { __index = os })
  local env = setmetatable({ args = {}, arg = { [0] = path }, os = fake_os }, { __index = _G })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  S.describing = true
  local ok, e = pcall(chunk)
  S.describing = false
  if not ok and getmetatable(e) == DESCRIBE then return e.decl end
  return nil, path .. ": no settings declared" .. (ok and "" or ": " .. tostring(e))
end

-- the settings that change a stage's result (stamp ~= false), for run manifests
function S.stamp(cfg, decl)
  local t = {}
  for _, d in ipairs(decl) do if d.stamp ~= false and cfg[d[1]] ~= nil then t[d[1]] = cfg[d[1]] end end
  return t
end

return S

-- qlora.help — the documentation behind help() in the REPL, from where it is written once:
-- C bindings: the docs table beside each luaL_Reg table in lua/l_*.c (package.loaded["qlora.docs"],
-- filled by ql_lua_docs); Lua modules: the comment block right above `function M.name(` and
-- the module's header entry naming it (`--   mod.name(args) -> ...`, with its indented lines).
--
--   H.doc(f) -> text | nil         the documentation of one function
--   H.text(x) -> text              what help(x) prints: x a function, a module, an object (its
--                                  methods), a name ("qlora.llm.load", "llm"), or nil (the overview)
--   H.help(x)                      prints H.text(x); the REPL's help()
--   H.modules() -> {names}         the qlora modules: the native ones and lua/qlora/*.lua
--   H.source_functions(path) -> {{name =, line =, public =}, ...}   the functions a Lua module
--                                  file defines (`function X.name(` / `function X:name(`)
--   H.lua_doc(path, line) -> text | nil   the documentation of the function defined at path:line
local H = {}

local function docs() return package.loaded["qlora.docs"] or { fns = {}, owners = {} } end

-- ---------------------------------------------------------------- Lua sources

local file_cache = {}
local function lines_of(path)
  local c = file_cache[path]
  if c then return c end
  local f = io.open(path, "r")
  if not f then return nil end
  c = {}
  for l in f:lines() do c[#c + 1] = l end
  f:close()
  file_cache[path] = c
  return c
end

-- "lua/qlora/llm.lua" -> "qlora.llm"
local function module_of(path)
  local name = path:match("qlora/([%w_]+)%.lua$")
  return name and ("qlora." .. name) or (path:match("([^/]+)%.lua$") or path)
end

local function indent_of(s) return #(s:match("^(%s*)")) end

-- the header entry of `sep .. name` in a module header: the line naming it and the lines
-- indented below it
local function header_entry(lines, sep, name)
  local header = {}
  for _, l in ipairs(lines) do
    if l:sub(1, 2) ~= "--" then break end
    header[#header + 1] = l:gsub("^%-%- ?", "")
  end
  local pat = "[%w_]%" .. sep .. name .. "%s*[%({]"
  for i, l in ipairs(header) do
    if l:find(pat) then
      local out, ind = { (l:gsub("^%s+", "")) }, indent_of(l)
      for j = i + 1, #header do
        local m = header[j]
        if m:match("^%s*$") or indent_of(m) <= ind then break end
        out[#out + 1] = "  " .. m:gsub("^%s+", "")
      end
      return out
    end
  end
  return nil
end

function H.lua_doc(path, line)
  local lines = lines_of(path)
  if not lines or not lines[line] then return nil end
  local owner, sep, name, params = lines[line]:match("^%s*function%s+([%w_]+)([.:])([%w_]+)%s*(%b())")
  if not name then return nil end
  local body = {}
  local i = line - 1
  while i >= 1 and lines[i]:match("^%s*%-%-") and not lines[i]:match("^%s*%-%-%s*%-%-%-%-") do i = i - 1 end
  for j = i + 1, line - 1 do body[#body + 1] = "  " .. lines[j]:gsub("^%s*%-%- ?", "") end
  local entry = header_entry(lines, sep, name)
  if #body == 0 and not entry then return nil end
  local mod, exported = module_of(path), nil
  for j = #lines, 1, -1 do
    exported = lines[j]:match("^return%s+([%w_]+)%s*$")
    if exported or lines[j]:match("%S") then break end
  end
  local sig = (sep == "." and owner == exported) and (mod .. "." .. name .. params)
              or (owner:lower() .. sep .. name .. params)
  local out = { sig }
  for _, l in ipairs(entry or {}) do out[#out + 1] = "  " .. l end
  for _, l in ipairs(body) do out[#out + 1] = l end
  return table.concat(out, "\n")
end

function H.source_functions(path)
  local out = {}
  for n, l in ipairs(lines_of(path) or {}) do
    local name = l:match("^function%s+[%w_]+[.:]([%w_]+)%s*%(")
    if name then out[#out + 1] = { name = name, line = n, public = name:sub(1, 1) ~= "_" } end
  end
  return out
end

-- ---------------------------------------------------------------- lookups

function H.doc(f)
  if type(f) ~= "function" then return nil end
  local t = docs().fns[f]
  if t then return t end
  local info = debug.getinfo(f, "S")
  if info.what ~= "Lua" or info.source:sub(1, 1) ~= "@" then return nil end
  return H.lua_doc(info.source:sub(2), info.linedefined)
end

local function first_line(s) return (s:match("^[^\n]*")) end

-- the folder of the pure-Lua modules
local function lua_dir()
  local p = package.searchpath("qlora.help", package.path)
  return p and p:match("^(.*)/[^/]*$")
end

function H.modules()
  local seen, out = {}, {}
  local q = package.loaded.qlora or rawget(_G, "qlora")
  for k, v in pairs(q or {}) do if type(v) == "table" then seen[k] = true end end
  local d = lua_dir()
  for _, f in ipairs(d and qlora.sys.list_dir(d) or {}) do
    local n = f:match("^([%w_]+)%.lua$")
    if n then seen[n] = true end
  end
  for k in pairs(seen) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- the header comment of a Lua module file, without the comment marks
local function lua_header(path)
  local out = {}
  for _, l in ipairs(lines_of(path) or {}) do
    if l:sub(1, 2) ~= "--" then break end
    out[#out + 1] = (l:gsub("^%-%- ?", ""))
  end
  return out
end

-- the source file of the first Lua function in t (a Lua module or a class table)
local function source_of(t)
  for _, v in pairs(t) do
    if type(v) == "function" then
      local info = debug.getinfo(v, "S")
      if info.what == "Lua" and info.source:sub(1, 1) == "@" then return info.source:sub(2) end
    end
  end
  return nil
end

local function sorted_functions(t)
  local names = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

local function listing(out, t)
  for _, k in ipairs(sorted_functions(t)) do
    local d = H.doc(t[k])
    out[#out + 1] = "  " .. (d and first_line(d) or (k .. "  (no documentation)"))
  end
end

local function owner_text(owner, o)
  local out = { owner .. (o.about and (" — " .. o.about) or "") }
  for _, n in ipairs(o.names) do
    local d = o.text[n]
    out[#out + 1] = "  " .. first_line(d)
  end
  return table.concat(out, "\n")
end

local function module_name(t)
  local q = package.loaded.qlora or rawget(_G, "qlora")
  for k, v in pairs(q or {}) do if rawequal(v, t) then return "qlora." .. k end end
  for k, v in pairs(package.loaded) do if rawequal(v, t) and type(k) == "string" then return k end end
  return nil
end

local function resolve(name)
  local v = _G
  for part in name:gmatch("[^.:]+") do
    if type(v) ~= "table" and type(v) ~= "userdata" then return nil end
    local ok, r = pcall(function() return v[part] end)
    if not ok then return nil end
    v = r
  end
  return v
end

function H.text(x)
  local d = docs()
  if x == nil then
    local out = { "qlora " .. tostring(qlora.version) .. " — modules (help(qlora.NAME) lists a module's functions):" }
    for _, k in ipairs(H.modules()) do
      local o = d.owners["qlora." .. k]
      local about = o and o.about
      if not about then
        local dir = lua_dir()
        local h = dir and lua_header(dir .. "/" .. k .. ".lua")[1]
        about = h and h:gsub("^%S+%s+—%s*", ""):gsub("^lua/qlora/%S+%s+—%s*", "")
      end
      out[#out + 1] = string.format("  qlora.%-12s %s", k, about or "")
    end
    out[#out + 1] = "help(x): x a function, a module, an object (t = qlora.tensor.randn{2, 3}; help(t)) or a name (help \"qlora.llm.load\")."
    return table.concat(out, "\n")
  end
  if type(x) == "string" then
    local v = resolve(x)
    if v == nil then v = resolve("qlora." .. x) end
    if v == nil then return "help: nothing is called '" .. x .. "' (help() lists the modules)" end
    return H.text(v)
  end
  if type(x) == "function" then
    local t = H.doc(x)
    if t then return t end
    local info = debug.getinfo(x, "S")
    return "no documentation for this function (" .. (info.what == "C" and "a C function" or info.short_src .. ":" .. info.linedefined) .. ")"
  end
  local mt = getmetatable(x)
  local tname = type(mt) == "table" and rawget(mt, "__name")
  if type(tname) == "string" and d.owners[tname] then return owner_text(tname, d.owners[tname]) end
  if type(x) == "table" then
    local name = module_name(x)
    if name and d.owners[name] then
      local text = owner_text(name, d.owners[name])
      local extra = {}
      for _, k in ipairs(sorted_functions(x)) do
        if not d.owners[name].text[k] then extra[#extra + 1] = k end
      end
      if #extra > 0 then text = text .. "\n  also here, as functions: " .. table.concat(extra, " ") end
      return text
    end
    local src = source_of(x)
    local out = {}
    if name and src then
      for _, l in ipairs(lua_header(src)) do out[#out + 1] = l end
      out[#out + 1] = ""
      out[#out + 1] = "functions:"
      listing(out, x)
      return table.concat(out, "\n")
    end
    local methods = type(mt) == "table" and type(rawget(mt, "__index")) == "table" and rawget(mt, "__index")
    if methods then
      out[#out + 1] = "methods:"
      listing(out, methods)
      if #sorted_functions(x) > 0 then out[#out + 1] = "functions:"; listing(out, x) end
      return table.concat(out, "\n")
    end
    local keys = {}
    for k in pairs(x) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    return "a table with no documentation; its keys: " .. table.concat(keys, "  ")
  end
  return "a " .. type(x) .. " (help() lists the modules)"
end

function H.help(x) print(H.text(x)) end

return H

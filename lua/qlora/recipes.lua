-- qlora.recipes — finding, listing and copying the recipes (`qlora ls`, `qlora cp`, `qlora NAME`).
--
-- Recipes are found the way the Lua modules are: beside the program, in <exe>/../recipes
-- (the repository's bin/), <exe>/../../recipes (bin/asan/, bin/debug/) or
-- <exe>/../share/qlora/recipes (an install), then ./recipes.
--
--   R.dir()               -> the recipes folder, or nil
--   R.find(name)          -> the path of recipe `name` ("full", "full.lua"), or nil, message
--   R.list()              -> { {name = "full", path = ..., about = "the whole job, ..."}, ... }
--   R.copy(name, dest)    -> dest, or nil, message (never replaces an existing file)
--   R.main(cmd, argv)     -> exit code; `ls` and `cp` of the qlora program
local M = {}
local sys = qlora.sys

-- the folders searched for recipes, in order
function M.dirs()
  local exe = sys.exe_dir() or "."
  -- <exe>/../../recipes: bin/asan/qlora and bin/debug/qlora, as lua/qlora.c finds the modules
  return { exe .. "/../recipes", exe .. "/../../recipes", exe .. "/../share/qlora/recipes", "recipes" }
end

function M.dir()
  for _, d in ipairs(M.dirs()) do
    if sys.exists(d .. "/full.lua") then return d end
  end
  return nil
end

function M.find(name)
  local file = name:match("%.lua$") and name or name .. ".lua"
  for _, d in ipairs(M.dirs()) do
    local p = d .. "/" .. file
    if sys.exists(p) and not sys.is_dir(p) then return p end
  end
  return nil, "no recipe named '" .. name .. "' (`qlora ls` lists them)"
end

-- the one-line description of a recipe: its first header line, after "recipes/x.lua — "
local function about(path)
  local f = io.open(path, "r")
  if not f then return "" end
  local line = f:read("l") or ""
  f:close()
  return (line:gsub("^%-%-%s*", ""):gsub("^%S+%.lua%s*—%s*", ""):gsub("^%S+%.lua%s*%-+%s*", ""):gsub(":$", ""))
end

function M.list()
  local d = M.dir()
  if not d then return nil, "no recipes folder found beside " .. tostring(sys.exe_dir()) .. " or in ./recipes" end
  local out = {}
  for _, name in ipairs(sys.list_dir(d) or {}) do
    local n = name:match("^(.+)%.lua$")
    if n then out[#out + 1] = { name = n, path = d .. "/" .. name, about = about(d .. "/" .. name) } end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out, d
end

function M.copy(name, dest)
  local src, err = M.find(name)
  if not src then return nil, err end
  if sys.exists(dest) then
    if sys.is_dir(dest) then dest = dest:gsub("/+$", "") .. "/" .. src:match("([^/]+)$") end
    if sys.exists(dest) then return nil, dest .. " already exists (not replaced)" end
  end
  local f = assert(io.open(src, "rb"))
  local text = f:read("a")
  f:close()
  local ok, werr = sys.write_file(dest, text)
  if not ok then return nil, werr end
  return dest
end

function M.main(cmd, argv)
  local prog = (rawget(_G, "arg") and arg[-1]) or "qlora"
  if cmd == "ls" then
    local list, d = M.list()
    if not list then io.stderr:write("qlora: " .. d .. "\n"); return 1 end
    local w = 0
    for _, r in ipairs(list) do w = math.max(w, #r.name) end
    for _, r in ipairs(list) do print(string.format("%-" .. w .. "s  %s", r.name, r.about)) end
    print(string.format("\n(in %s) run one: %s NAME key=value ...   settings: %s NAME --help   copy one: %s cp NAME my.lua",
                        d, prog, prog, prog))
    return 0
  elseif cmd == "cp" then
    if not argv[1] or not argv[2] then io.stderr:write("usage: " .. prog .. " cp NAME DEST.lua\n"); return 2 end
    local dest, err = M.copy(argv[1], argv[2])
    if not dest then io.stderr:write("qlora: cp: " .. err .. "\n"); return 1 end
    print(string.format("%s: copy of recipe %s; run it with %s %s key=value ...", dest, argv[1], prog, dest))
    return 0
  end
  return 2
end

return M

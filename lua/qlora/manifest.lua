-- qlora.manifest — what a pipeline stage was made from, so that it is redone exactly when
-- that changes (never by file times alone).
--
-- A manifest is a JSON file beside a stage's output (<output>.manifest.json):
--   { "stage": "chunk", "settings": {key: "value", ...}, "inputs": {path: {"size": n, "mtime_ms": n}, ...},
--     "qlora": version, "complete": true|false }
-- Settings are kept as strings (what the stage was given); inputs by path, size and
-- modification time (milliseconds), so a replaced file of the same size is noticed too.
--
--   local mf = require("qlora.manifest")
--   local want = mf.new("chunk", settings, mf.files({"data/clean"}, ".md"))
--   local why = mf.why(out, want)        -- nil: up to date; else a sentence saying what changed
--   ... do the work ...
--   mf.write(out, want)                  -- after success
local M = {}
local json, sys = qlora.json, qlora.sys

-- where the manifest of a stage's output lives: <output>.manifest.json
function M.path(output) return (output:gsub("/+$", "")) .. ".manifest.json" end

local function ident(p)
  local mt = sys.mtime(p)
  return { size = sys.size(p) or 0, mtime_ms = mt and math.floor(mt * 1000 + 0.5) or 0 }
end

-- identities of files: each path a file, or a folder whose files (ending in ext, recursively
-- through qlora.pdf.list_files, which skips folder links; or only its top level when ext is
-- nil) are taken; missing paths are left out
function M.files(paths, ext)
  local t = {}
  for _, p in ipairs(paths) do
    if sys.is_dir(p) then
      if ext then
        for _, f in ipairs(qlora.pdf.list_files(p, ext) or {}) do t[f] = ident(f) end
      else
        for _, name in ipairs(sys.list_dir(p) or {}) do
          local f = p .. "/" .. name
          if not sys.is_dir(f) then t[f] = ident(f) end
        end
      end
    elseif sys.exists(p) then
      t[p] = ident(p)
    end
  end
  return t
end

-- the manifest a stage wants: its name, its settings (kept as strings) and its inputs (M.files)
function M.new(stage, settings, inputs)
  local s = {}
  for k, v in pairs(settings or {}) do s[k] = tostring(v) end
  return { stage = stage, settings = s, inputs = inputs or {}, qlora = qlora.version }
end

-- the manifest recorded beside output, or nil (none, or not a manifest)
function M.read(output)
  local f = io.open(M.path(output), "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local ok, t = pcall(json.decode, text)
  if not ok or type(t) ~= "table" or type(t.settings) ~= "table" or type(t.inputs) ~= "table" then return nil end
  return t
end

local function sorted_keys(...)
  local seen, keys = {}, {}
  for _, t in ipairs({ ... }) do
    for k in pairs(t) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  end
  table.sort(keys)
  return keys
end

-- what differs between a recorded manifest and the wanted one: nil when nothing does
function M.diff(old, want)
  if not old then return "no record of an earlier run (" .. "no manifest)" end
  local why = {}
  for _, k in ipairs(sorted_keys(old.settings, want.settings)) do
    local a, b = old.settings[k], want.settings[k]
    if a ~= b then why[#why + 1] = string.format("%s changed (%s -> %s)", k, a or "unset", b or "unset") end
  end
  local n = 0
  for _, p in ipairs(sorted_keys(old.inputs, want.inputs)) do
    local a, b = old.inputs[p], want.inputs[p]
    local w
    if not a then w = p .. " is new"
    elseif not b then w = p .. " is gone"
    elseif a.size ~= b.size then w = string.format("%s changed (%d -> %d bytes)", p, a.size, b.size)
    elseif a.mtime_ms ~= b.mtime_ms then w = p .. " was modified" end
    if w then
      n = n + 1
      if n <= 3 then why[#why + 1] = w end
    end
  end
  if n > 3 then why[#why + 1] = string.format("and %d more inputs changed", n - 3) end
  if #why == 0 then return nil end
  return table.concat(why, "; ")
end

-- nil when output exists and its manifest matches want; else why it must be made again
function M.why(output, want)
  if not sys.exists(output) then return output .. " does not exist yet" end
  return M.diff(M.read(output), want)
end

-- records want beside output (atomically); complete = false marks a stage left unfinished
function M.write(output, want, complete)
  want.complete = complete ~= false
  return sys.write_file(M.path(output), json.encode(want, { indent = 1 }))
end

return M

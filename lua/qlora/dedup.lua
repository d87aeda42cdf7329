-- lua/qlora/dedup.lua — corpus-level cleaning on top of qlora.text:
-- boilerplate lines repeated across documents, exact duplicate paragraphs,
-- and near-duplicate documents (MinHash with LSH banding).
--   dedup.boilerplate(docs [, {min_docs=3, min_frac=0.5}]) -> set of lines
--   dedup.strip_lines(text, set) -> text without those lines
--   dedup.paragraphs(docs) -> docs with repeated paragraphs (after the first) removed, count
--   dedup.near_duplicates(docs [, {threshold=0.8, n=64, bands=16}]) -> set of indexes to drop
-- docs is a list of strings. Lines inside ``` fences and headings are never boilerplate.
local text = require("qlora").text
local M = {}

local function each_line(s)
  return (s .. "\n"):gmatch("(.-)\n")
end

function M.boilerplate(docs, opts)
  opts = opts or {}
  local min_docs = opts.min_docs or 3
  local min_frac = opts.min_frac or 0.5
  local count = {}
  for _, d in ipairs(docs) do
    local seen, fence = {}, false
    for l in each_line(d) do
      if l:match("^%s*```") then fence = not fence
      elseif not fence and not l:match("^#") and l:match("%S") and #l < 200 then
        local k = l:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
        if not seen[k] then seen[k] = true; count[k] = (count[k] or 0) + 1 end
      end
    end
  end
  local set, need = {}, math.max(min_docs, math.ceil(min_frac * #docs))
  for k, c in pairs(count) do if c >= need then set[k] = true end end
  return set
end

function M.strip_lines(s, set)
  local out, fence = {}, false
  for l in each_line(s) do
    if l:match("^%s*```") then fence = not fence end
    local k = l:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    if fence or not set[k] then out[#out + 1] = l end
  end
  return (table.concat(out, "\n"):gsub("\n\n\n+", "\n\n"))
end

-- paragraphs are separated by blank lines; short ones (< 40 bytes) are kept
function M.paragraphs(docs)
  local seen, removed, out = {}, 0, {}
  for i, d in ipairs(docs) do
    local keep = {}
    for para in (d .. "\n\n"):gmatch("(.-)\n\n+") do
      if #para >= 40 and not para:match("^#") then
        local fp = text.fingerprint(para)
        if seen[fp] then removed = removed + 1 else seen[fp] = true; keep[#keep + 1] = para end
      elseif para:match("%S") then
        keep[#keep + 1] = para
      end
    end
    out[i] = table.concat(keep, "\n\n") .. "\n"
  end
  return out, removed
end

function M.near_duplicates(docs, opts)
  opts = opts or {}
  local threshold, n, bands = opts.threshold or 0.8, opts.n or 64, opts.bands or 16
  local rows = n // bands
  local sigs, buckets, drop = {}, {}, {}
  for i, d in ipairs(docs) do
    local sig = text.minhash(d, { k = opts.k or 5, n = n })
    sigs[i] = sig
    local dup = false
    local cands = {}
    for b = 0, bands - 1 do
      local key = b .. ":" .. sig:sub(b * rows * 4 + 1, (b + 1) * rows * 4)
      local bucket = buckets[key]
      if bucket then
        for _, j in ipairs(bucket) do cands[j] = true end
      end
    end
    for j in pairs(cands) do
      if text.similarity(sig, sigs[j]) >= threshold then dup = true; break end
    end
    if dup then drop[i] = true
    else
      for b = 0, bands - 1 do
        local key = b .. ":" .. sig:sub(b * rows * 4 + 1, (b + 1) * rows * 4)
        buckets[key] = buckets[key] or {}
        table.insert(buckets[key], i)
      end
    end
  end
  return drop
end

return M

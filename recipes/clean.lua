-- recipes/clean.lua — cleans Markdown files for training.
--
--   qlora recipes/clean.lua src=data/md dst=data/clean [nfkc=true] [fold_quotes=false]
--        [boilerplate=true] [dedup_paragraphs=true] [near_dup=0.8] [force=false]
--
-- Per file: Unicode normalisation (NFKC by default), control/zero-width/private-use
-- characters removed, ligatures and odd spaces fixed (qlora.text.clean). Over the
-- corpus: lines repeated in many files are dropped (boilerplate), repeated
-- paragraphs keep their first occurrence, near-duplicate files (MinHash similarity
-- >= near_dup) are left out. Outputs are written atomically. Corpus-level steps
-- need every file, so the run is incremental only when no input changed.
local text, dedup, sys, pdf = qlora.text, qlora.dedup, qlora.sys, qlora.pdf
local function flag(v, d) if v == nil then return d end return v == "true" or v == "1" or v == "yes" end
local src, dst = args.src or "data/md", args.dst or "data/clean"
local files, err = pdf.list_files(src, ".md")
if not files then io.stderr:write("clean: " .. err .. "\n"); os.exit(2) end

local stale = flag(args.force, false)
for _, f in ipairs(files) do
  local out = dst .. "/" .. f:sub(#src + 2)
  local tin, tout = sys.mtime(f), sys.mtime(out)
  if not tout or tout < tin then stale = true end
end
if not stale then print(string.format("clean: %d files up to date", #files)); return end

local t0 = sys.now()
local docs = {}
local opts = { nfkc = flag(args.nfkc, true), fold_quotes = flag(args.fold_quotes, false) }
for i, f in ipairs(files) do
  local fh = assert(io.open(f, "rb"))
  docs[i] = text.clean(fh:read("a"), opts)
  fh:close()
end
local nlines = 0
if flag(args.boilerplate, true) and #docs >= 3 then
  local set = dedup.boilerplate(docs)
  for _ in pairs(set) do nlines = nlines + 1 end
  for i, d in ipairs(docs) do docs[i] = dedup.strip_lines(d, set) end
end
local nparas = 0
if flag(args.dedup_paragraphs, true) then docs, nparas = dedup.paragraphs(docs) end
local drop = {}
local thr = tonumber(args.near_dup or "0.8")
if thr and thr > 0 then drop = dedup.near_duplicates(docs, { threshold = thr }) end
local written, dropped = 0, 0
for i, f in ipairs(files) do
  local out = dst .. "/" .. f:sub(#src + 2)
  if drop[i] then dropped = dropped + 1; os.remove(out)
  else
    local dir = out:match("^(.*)/[^/]*$")
    if dir then assert(sys.mkdir(dir)) end
    assert(sys.write_file(out, docs[i]))
    written = written + 1
  end
end
print(string.format("clean: %d files written, %d near-duplicates left out, %d boilerplate lines, %d repeated paragraphs removed (%.1f s)",
  written, dropped, nlines, nparas, sys.now() - t0))

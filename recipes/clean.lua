-- recipes/clean.lua — cleans Markdown files for training.
--
--   bin/qlora recipes/clean.lua src=data/md dst=data/clean
--   bin/qlora recipes/clean.lua --help          every setting, its default and range
--
-- Per file: Unicode normalisation (NFKC by default), control/zero-width/private-use
-- characters removed, ligatures and odd spaces fixed (qlora.text.clean). Over the
-- corpus: lines repeated in many files are dropped (boilerplate), repeated
-- paragraphs keep their first occurrence, near-duplicate files (MinHash similarity
-- >= near_dup) are left out. Outputs are written atomically. Corpus-level steps
-- need every file, so the run is redone when any input or setting changed
-- (recorded in dst.manifest.json), and says why.
local S = require("qlora.settings")
local SETTINGS = {
  { "src", "dir", "data/md", "folder of Markdown files (.md)", stamp = false },
  { "dst", "path", "data/clean", "folder for the cleaned files", stamp = false },
  { "nfkc", "bool", true, "Unicode NFKC normalisation" },
  { "fold_quotes", "bool", false, "curly quotes to straight ones" },
  { "boilerplate", "bool", true, "drop lines repeated in many files (3 files or more)" },
  { "dedup_paragraphs", "bool", true, "keep only the first of repeated paragraphs" },
  { "near_dup", "number", 0.8, "leave out files this similar to an earlier one (0: keep all)", min = 0, max = 1 },
  { "force", "bool", false, "redo even when the outputs are up to date", stamp = false },
}
local cfg = S.parse(args, SETTINGS)
local text, dedup, sys, pdf = qlora.text, qlora.dedup, qlora.sys, qlora.pdf
local src, dst = cfg.src, cfg.dst
local files, err = pdf.list_files(src, ".md")
if not files then io.stderr:write("clean: " .. err .. "\n"); os.exit(2) end

-- redone when a setting or an input changed (all of it: the corpus-level steps need every file)
local mf = require("qlora.manifest")
local want = mf.new("clean", S.stamp(cfg, SETTINGS), mf.files(files))
local why = cfg.force and "force=true" or mf.why(dst, want)
if not why then print(string.format("clean: %d files up to date (same settings and inputs)", #files)); return end
print("clean: cleaning " .. dst .. ": " .. why)

local t0 = sys.now()
local docs = {}
local opts = { nfkc = cfg.nfkc, fold_quotes = cfg.fold_quotes }
for i, f in ipairs(files) do
  local fh = assert(io.open(f, "rb"))
  docs[i] = text.clean(fh:read("a"), opts)
  fh:close()
end
local nlines = 0
if cfg.boilerplate and #docs >= 3 then
  local set = dedup.boilerplate(docs)
  for _ in pairs(set) do nlines = nlines + 1 end
  for i, d in ipairs(docs) do docs[i] = dedup.strip_lines(d, set) end
end
local nparas = 0
if cfg.dedup_paragraphs then docs, nparas = dedup.paragraphs(docs) end
local drop = {}
local thr = cfg.near_dup
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
assert(mf.write(dst, want))
print(string.format("clean: %d files written, %d near-duplicates left out, %d boilerplate lines, %d repeated paragraphs removed (%.1f s)",
  written, dropped, nlines, nparas, sys.now() - t0))

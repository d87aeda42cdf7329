-- recipes/pdf_to_md.lua — PDFs to Markdown, one .md per .pdf.
--
--   qlora recipes/pdf_to_md.lua src=data/raw_pdfs dst=data/md [page_markers=true]
--        [threads=N] [password=...] [use_outline=true] [keep_furniture=false] [force=false]
--
-- Incremental: a .md newer than its .pdf is skipped (force=true redoes all).
-- Parallel over files; a progress bar with pages/s shows on a terminal. A file
-- that fails (encrypted, corrupt, scanned) is reported with its reason and the
-- run goes on; the summary at the end lists them. Exit status 1 when any failed.
local pdf, sys = qlora.pdf, qlora.sys

local function flag(v, default)
  if v == nil then return default end
  return v == "true" or v == "1" or v == "yes"
end
local src = args.src or "data/raw_pdfs"
local dst = args.dst or "data/md"
if args.threads then sys.threads(tonumber(args.threads)) end
local opts = {
  page_markers = flag(args.page_markers, true),
  use_outline = flag(args.use_outline, true),
  keep_furniture = flag(args.keep_furniture, false),
  password = args.password,
}

local files, err = pdf.list_files(src, ".pdf")
if not files then io.stderr:write("pdf_to_md: " .. err .. "\n"); os.exit(2) end
local jobs, skipped = {}, 0
for _, f in ipairs(files) do
  local rel = f:sub(#src + 2):gsub("%.[Pp][Dd][Ff]$", ".md")
  local out = dst .. "/" .. rel
  local tin, tout = sys.mtime(f), sys.mtime(out)
  if not flag(args.force, false) and tout and tin and tout >= tin then
    skipped = skipped + 1
  else
    local dir = out:match("^(.*)/[^/]*$")
    if dir then assert(sys.mkdir(dir)) end
    jobs[#jobs + 1] = { src = f, dst = out }
  end
end

local results, seconds = pdf.convert(jobs, opts)
local ok, pages, failed = 0, 0, {}
for _, r in ipairs(results) do
  if r.ok then ok = ok + 1; pages = pages + r.pages else failed[#failed + 1] = r end
end
for _, r in ipairs(failed) do io.stderr:write("failed: " .. r.error .. "\n") end
print(string.format("pdf_to_md: %d converted (%d pages, %.1f s, %.0f pages/s), %d up to date, %d failed",
  ok, pages, seconds, seconds > 0 and pages / seconds or 0, skipped, #failed))
if #failed > 0 then os.exit(1) end

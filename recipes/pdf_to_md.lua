-- recipes/pdf_to_md.lua — PDFs to Markdown, one .md per .pdf.
--
--   qlora recipes/pdf_to_md.lua src=data/raw_pdfs dst=data/md [page_markers=true]
--        [threads=N] [password=...] [use_outline=true] [keep_furniture=false] [force=false]
--        [timeout=120]
--
-- Incremental: a .md newer than its .pdf is skipped (force=true redoes all).
-- Parallel over files; a progress bar with pages/s shows on a terminal. A file
-- that fails (encrypted, corrupt, scanned) is reported with its reason and the
-- run goes on; so is a file that takes longer than timeout= seconds (0: no
-- limit). Links to folders under src are not followed. Converted files whose
-- text is damaged (pages without a Unicode mapping: garbage that needs OCR;
-- files MuPDF had to repair; pages with errors) are named with a warning.
-- The summary at the end counts them all. Exit status 1 when any failed.
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
  timeout = tonumber(args.timeout or "120"),
}
if not opts.timeout or opts.timeout < 0 then
  io.stderr:write("pdf_to_md: timeout= must be a number of seconds (0: no limit), not '" .. tostring(args.timeout) .. "'\n")
  os.exit(2)
end

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
local ok, pages, failed, timed_out, damaged = 0, 0, {}, 0, 0
for _, r in ipairs(results) do
  if r.ok then
    ok = ok + 1; pages = pages + r.pages
    local st, what = r.stats, {}
    if st.unmapped_pages > 0 then
      what[#what + 1] = string.format("%d page%s (first: page %d) of text without a Unicode mapping, converted to garbage: "
        .. "OCR the file (e.g. ocrmypdf --force-ocr) and convert that", st.unmapped_pages,
        st.unmapped_pages == 1 and "" or "s", st.first_unmapped)
    end
    if st.repaired then what[#what + 1] = "the file is damaged and was repaired on reading: check the Markdown, or get a good copy" end
    if st.damaged_pages > 0 then
      what[#what + 1] = string.format("%d page%s damaged (skipped or read in part)", st.damaged_pages, st.damaged_pages == 1 and "" or "s")
    end
    if #what > 0 then
      damaged = damaged + 1
      io.stderr:write("damaged: " .. r.src .. ": " .. table.concat(what, "; ") .. "\n")
    end
  else
    failed[#failed + 1] = r
    if r.timeout then timed_out = timed_out + 1 end
  end
end
for _, r in ipairs(failed) do io.stderr:write((r.timeout and "timed out: " or "failed: ") .. r.error .. "\n") end
print(string.format("pdf_to_md: %d converted (%d pages, %.1f s, %.0f pages/s), %d up to date, %d failed%s%s",
  ok, pages, seconds, seconds > 0 and pages / seconds or 0, skipped, #failed,
  timed_out > 0 and string.format(" (%d past the time limit of %g s)", timed_out, opts.timeout) or "",
  damaged > 0 and string.format(", %d with damaged text (see above)", damaged) or ""))
if #failed > 0 then os.exit(1) end

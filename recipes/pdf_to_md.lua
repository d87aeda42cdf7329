-- recipes/pdf_to_md.lua — PDFs to Markdown, one .md per .pdf.
--
--   bin/qlora recipes/pdf_to_md.lua src=data/raw_pdfs dst=data/md
--   bin/qlora recipes/pdf_to_md.lua --help      every setting, its default and range
--
-- Incremental: a PDF whose size and time are those recorded in dst.manifest.json
-- when it was converted is skipped, unless a setting changed (force=true redoes all).
-- Parallel over files; a progress bar with pages/s shows on a terminal. A file
-- that fails (encrypted, corrupt, scanned) is reported with its reason and the
-- run goes on; so is a file that takes longer than timeout= seconds (0: no
-- limit). Links to folders under src are not followed. Converted files whose
-- text is damaged (pages without a Unicode mapping: garbage that needs OCR;
-- files MuPDF had to repair; pages with errors) are named with a warning.
-- The summary at the end counts them all. Exit status 1 when any failed.
local S = require("qlora.settings")
local SETTINGS = {
  { "src", "dir", "data/raw_pdfs", "folder of PDFs (searched recursively)", stamp = false },
  { "dst", "path", "data/md", "folder for the Markdown files", stamp = false },
  { "page_markers", "bool", true, "mark page starts (<!-- page N -->) for chunk page ranges" },
  { "use_outline", "bool", true, "heading levels from the PDF's outline when it has one" },
  { "keep_furniture", "bool", false, "keep running headers, footers and page numbers" },
  { "password", "string", nil, "password of encrypted PDFs", stamp = false },
  { "timeout", "number", 120, "seconds per file at most (0: no limit)", min = 0, stamp = false },
  { "threads", "int", nil, "parallel files (default: all cores)", min = 1, stamp = false },
  { "force", "bool", false, "convert every file again", stamp = false },
}
local cfg = S.parse(args, SETTINGS)
local pdf, sys = qlora.pdf, qlora.sys
local src, dst = cfg.src, cfg.dst
if cfg.threads then sys.threads(cfg.threads) end
local opts = { page_markers = cfg.page_markers, use_outline = cfg.use_outline, keep_furniture = cfg.keep_furniture,
               password = cfg.password, timeout = cfg.timeout }

if sys.exists(dst) and not sys.is_dir(dst) then
  io.stderr:write("pdf_to_md: dst=" .. dst .. " is a file, not a folder: give a folder for the Markdown files\n")
  os.exit(2)
end
local files, err = pdf.list_files(src, ".pdf")
if not files then io.stderr:write("pdf_to_md: " .. err .. "\n"); os.exit(2) end
-- per file: converted again when its PDF changed (size or time) or its .md is missing;
-- all of them when a setting changed (dst.manifest.json records both)
local mf = require("qlora.manifest")
local want = mf.new("pdf_to_md", S.stamp(cfg, SETTINGS), mf.files(files))
local old = mf.read(dst)
local settings_why = old and mf.diff({ settings = old.settings, inputs = {} }, { settings = want.settings, inputs = {} })
if cfg.force then settings_why = "force=true" end
if settings_why then print("pdf_to_md: converting every file: " .. settings_why) end
local jobs, skipped, done = {}, 0, {}
for _, f in ipairs(files) do
  local rel = f:sub(#src + 2):gsub("%.[Pp][Dd][Ff]$", ".md")
  local out = dst .. "/" .. rel
  local rec = old and old.inputs[f]
  local id = want.inputs[f]
  if not settings_why and rec and rec.size == id.size and rec.mtime_ms == id.mtime_ms and sys.exists(out) then
    skipped = skipped + 1
    done[f] = id
  else
    local dir = out:match("^(.*)/[^/]*$")
    local made, why = true, nil
    if dir then made, why = sys.mkdir(dir) end
    if not made then io.stderr:write("pdf_to_md: cannot create " .. dir .. ": " .. tostring(why) .. "\n"); os.exit(2) end
    jobs[#jobs + 1] = { src = f, dst = out }
  end
end

-- Ctrl-C (or any failure of the run as a whole) ends with a message, not a traceback; files
-- already converted are complete (each is written to a temporary, then renamed)
local conv_ok, results, seconds = pcall(pdf.convert, jobs, opts)
if not conv_ok then
  local msg = tostring(results)
  if msg:lower():find("interrupt") then
    io.stderr:write("pdf_to_md: interrupted (Ctrl-C); the files converted so far are complete; rerun to convert the rest\n")
    os.exit(130)
  end
  io.stderr:write("pdf_to_md: " .. msg .. "\n")
  os.exit(1)
end
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
-- the manifest records the files converted now or before (failed ones are tried again next time)
for _, r in ipairs(results) do if r.ok then done[r.src] = want.inputs[r.src] end end
want.inputs = done
assert(sys.mkdir(dst))
assert(mf.write(dst, want))
for _, r in ipairs(failed) do io.stderr:write((r.timeout and "timed out: " or "failed: ") .. r.error .. "\n") end
print(string.format("pdf_to_md: %d converted (%d pages, %.1f s, %.0f pages/s), %d up to date, %d failed%s%s",
  ok, pages, seconds, seconds > 0 and pages / seconds or 0, skipped, #failed,
  timed_out > 0 and string.format(" (%d past the time limit of %g s)", timed_out, opts.timeout) or "",
  damaged > 0 and string.format(", %d with damaged text (see above)", damaged) or ""))
if #failed > 0 then os.exit(1) end

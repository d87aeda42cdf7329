-- tests/lua/test_pdf.lua — qlora.pdf from Lua on the committed fixtures.
local T = ...
local pdf = require("qlora").pdf
T.test("open_page_outline", function()
  local d <close> = assert(pdf.open(T.fixture("pdf/report.odt.pdf")))
  T.eq(d:page_count(), 3)
  T.eq(d:outline()[2].title, "Scope and goals")
  local p = d:page(1)
  T.eq(p.lines[1].spans[1].text, "Introduction")
  T.truthy(p.lines[1].spans[1].bold)
end)
T.test("to_markdown_and_errors", function()
  local md, st = pdf.to_markdown(T.fixture("pdf/guide.wk.pdf"), { page_markers = true })
  T.truthy(md:find("## Installation\n", 1, true))
  T.eq(st.pages, 3)
  local none, msg = pdf.to_markdown(T.fixture("pdf/bad-encrypted.pdf"))
  T.eq(none, nil)
  T.truthy(msg:find("encrypted", 1, true))
end)
T.test("convert_continues_after_failures", function()
  local dir = T.tmpdir()
  local jobs = {}
  for _, n in ipairs({ "guide.ms", "bad-truncated", "report.latex" }) do
    jobs[#jobs + 1] = { src = T.fixture("pdf/" .. n .. ".pdf"), dst = dir .. "/" .. n .. ".md" }
  end
  local res = pdf.convert(jobs, { progress = false })
  T.eq({ res[1].ok, res[2].ok, res[3].ok }, { true, false, true })
  T.truthy(res[2].error:find("corrupt", 1, true))
  T.truthy(io.open(dir .. "/report.latex.md")):close()
end)
T.test("convert_time_limit_reports_and_goes_on", function()
  local dir = T.tmpdir()
  local jobs = {}
  for _, n in ipairs({ "guide.ms", "report.latex" }) do
    jobs[#jobs + 1] = { src = T.fixture("pdf/" .. n .. ".pdf"), dst = dir .. "/" .. n .. ".md" }
  end
  local res = pdf.convert(jobs, { progress = false, timeout = 1e-6 })
  for i, r in ipairs(res) do
    T.eq(r.ok, false); T.eq(r.timeout, true)
    T.truthy(r.error:find(jobs[i].src, 1, true) and r.error:find("time limit", 1, true), r.error)
  end
  T.eq(io.open(dir .. "/guide.ms.md"), nil)
  res = pdf.convert(jobs, { progress = false, timeout = 60 })
  T.eq({ res[1].ok, res[2].ok, res[1].timeout }, { true, true, nil })
  T.eq(res[2].stats.pages, 3)
  local none, msg, why = pdf.to_markdown(T.fixture("pdf/report.latex.pdf"), { timeout = 1e-6 })
  T.eq({ none, why }, { nil, "timeout" })
  T.truthy(msg:find("time limit", 1, true))
  T.raises(function() pdf.to_markdown(T.fixture("pdf/report.latex.pdf"), { timeout = "soon" }) end, "timeout must be")
end)
T.test("damage_in_stats", function()
  local _, st = pdf.to_markdown(T.fixture("pdf/bad-unmapped.pdf"))
  T.eq({ st.unmapped_pages, st.first_unmapped, st.repaired }, { 1, 1, false })
  _, st = pdf.to_markdown(T.fixture("pdf/guide.ms.pdf"))
  T.eq({ st.unmapped_pages, st.first_unmapped, st.damaged_pages, st.repaired }, { 0, nil, 0, false })
end)
T.test("list_files_does_not_follow_folder_links", function()
  local dir = T.tmpdir()
  os.execute("mkdir -p '" .. dir .. "/sub' && cp '" .. T.fixture("pdf/guide.ms.pdf") .. "' '" .. dir .. "/a.pdf' && cp '"
    .. T.fixture("pdf/guide.ms.pdf") .. "' '" .. dir .. "/sub/b.pdf' && ln -s . '" .. dir .. "/self1' && ln -s . '"
    .. dir .. "/sub/self2' && ln -s .. '" .. dir .. "/sub/up' && ln -s '" .. dir .. "/sub' '" .. dir .. "/sublink' && ln -s a.pdf '"
    .. dir .. "/c.pdf'")
  T.eq(pdf.list_files(dir, ".pdf"), { dir .. "/a.pdf", dir .. "/c.pdf", dir .. "/sub/b.pdf" })
  -- the recipe over the same folder: each PDF once, no hang
  local out, rc = T.sh("timeout 60 '" .. T.qlora .. "' recipes/pdf_to_md.lua src='" .. dir .. "' dst='" .. dir .. "-md'")
  T.eq(rc, 0, out)
  T.truthy(out:find("3 converted", 1, true), out)
end)
T.test("recipe_reports_timeouts_and_damage", function()
  local dir = T.tmpdir()
  os.execute("cp '" .. T.fixture("pdf/guide.ms.pdf") .. "' '" .. T.fixture("pdf/bad-unmapped.pdf") .. "' '" .. dir .. "/'")
  local out, rc = T.sh("timeout 60 '" .. T.qlora .. "' recipes/pdf_to_md.lua src='" .. dir .. "' dst='" .. dir .. "-md'")
  T.eq(rc, 0, out)
  T.truthy(out:find("damaged: " .. dir .. "/bad-unmapped.pdf: 1 page (first: page 1) of text without a Unicode mapping", 1, true), out)
  T.truthy(out:find("OCR", 1, true), out)
  T.truthy(out:find("2 converted", 1, true) and out:find("1 with damaged text", 1, true), out)
  out, rc = T.sh("timeout 60 '" .. T.qlora .. "' recipes/pdf_to_md.lua src='" .. dir .. "' dst='" .. dir .. "-md2' timeout=0.000001")
  T.eq(rc, 1, out)
  T.truthy(out:find("timed out: " .. dir .. "/guide.ms.pdf: ", 1, true), out)
  T.truthy(out:find("2 failed (2 past the time limit of 1e-06 s)", 1, true), out)
end)

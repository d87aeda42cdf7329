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

-- tests/lua/test_chunk.lua — qlora.chunk splitting and JSONL.
local T = ...
local chunk = require("qlora").chunk
local function words(n, w) local t = {}; for i = 1, n do t[i] = w or "word" end; return table.concat(t, " ") .. "." end
T.test("bounds_and_blocks", function()
  local code = "```\n" .. string.rep("x = 1\n", 30) .. "```"
  local md = "<!-- page 1 -->\n\n# A\n\n" .. words(50) .. "\n\n" .. code .. "\n\n<!-- page 2 -->\n\n## B\n\n" .. words(60)
  local cs = chunk.split(md, { max_tokens = 100, counter = function(s) local n = 0; for _ in s:gmatch("%S+") do n = n + 1 end; return n end })
  for _, c in ipairs(cs) do T.truthy(c.tokens <= 100, "chunk over the limit") end
  local found = false
  for _, c in ipairs(cs) do if c.text:find(code, 1, true) then found = true end end
  T.truthy(found, "code block was split")
  T.eq(cs[#cs].headings, { "A", "B" })
  T.eq(cs[#cs].page_last, 2)
end)
T.test("jsonl", function()
  local s = chunk.to_jsonl({ { text = 'a "q"\n\tb', headings = {}, tokens = 3 } })
  T.eq(s, '{"text":"a \\"q\\"\\n\\tb"}\n')
end)

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
-- Issue 9: the "\n\n" between joined blocks (and the fences around pieces of
-- a code block) were not counted, so chunks went over max_tokens. Exact now:
-- every chunk of the sample PDFs' text, counted whole by a real tokenizer.
T.test("exact_budgets_with_a_real_tokenizer", function()
  local pdf, tokenizer = require("qlora").pdf, require("qlora").tokenizer
  for _, tname in ipairs({ "qwen2.5", "llama3.1" }) do
    local tok = assert(tokenizer.load(T.fixture("tokenizers/" .. tname)))
    local counter = function(s) return tok:count(s) end
    for _, f in ipairs({ "guide", "report" }) do
      local md = assert(pdf.to_markdown("recipes/samples/" .. f .. ".pdf", { page_markers = true }))
      local words = {}
      for w in md:gsub("<!%-%- page %d+ %-%->", ""):gmatch("%S+") do words[w] = true end
      for _, max in ipairs({ 32, 48, 64, 100, 128, 256, 512 }) do
        for _, overlap in ipairs({ 0, 16 }) do
          local cs = chunk.split(md, { max_tokens = max, counter = counter, overlap = overlap })
          local seen = {}
          for i, c in ipairs(cs) do
            local n = tok:count(c.text)
            T.eq(c.tokens, n, "tokens field")
            T.truthy(n <= max, string.format("%s %s max=%d overlap=%d: chunk %d has %d tokens", tname, f, max, overlap, i, n))
            for w in c.text:gmatch("%S+") do seen[w] = true end
          end
          for w in pairs(words) do
            T.truthy(seen[w] or w == "```", string.format("%s max=%d: '%s' lost", f, max, w))
          end
        end
      end
    end
  end
end)

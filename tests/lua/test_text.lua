-- tests/lua/test_text.lua — qlora.text cleaning and duplicate detection.
local T = ...
local q = require("qlora")
local text, dedup = q.text, q.dedup
T.test("clean", function()
  T.eq(text.clean("\u{FB01}ne\u{200B} x\u{E000}  y\u{00A0}z\n\n\n\nw"), "fine x y z\n\nw\n")
  T.eq(text.clean("“a” — b…", { fold_quotes = true }), "\"a\" - b...\n")
  -- CJK and ZWNJ survive; NFC composes
  T.eq(text.clean("中文 می\u{200C}خواهم e\u{301}", { nfkc = false }), "中文 می\u{200C}خواهم é\n")
  -- code fences keep their spaces
  T.eq(text.clean("```\na    b\n```"), "```\na    b\n```\n")
end)
T.test("near_duplicates", function()
  local a = "The quick brown fox jumps over the lazy dog near the river bank today."
  local drop = dedup.near_duplicates({ a, a:gsub("today", "again"), "Completely different words here, nothing shared." })
  T.eq(drop, { [2] = true })
  local docs, n = dedup.paragraphs({ a .. "\n\nunique one paragraph that is long enough here", a })
  T.eq(n, 1)
end)

-- bench/tokenizer.lua — qlora.tokenizer throughput on a corpus file.
--   qlora bench/tokenizer.lua CORPUS NAME... 
-- CORPUS holds records separated by NUL bytes (bench/tokenizer_bench.py writes
-- it); NAME is a directory under tests/fixtures/tokenizers. Prints one line per
-- tokenizer: "NAME single MB/s batch MB/s ids" (single: tok:encode per record
-- on one thread; batch: tok:encode_batch on qlora.sys.threads() threads).
local corpus, names = arg[1], { table.unpack(arg, 2) }
local f = assert(io.open(corpus, "rb"))
local data = f:read("a")
f:close()
local recs, bytes = {}, #data
for r in (data .. "\0"):gmatch("([^%z]*)%z") do recs[#recs + 1] = r end
local now = qlora.sys.now
for _, name in ipairs(names) do
  local tok = assert(qlora.tokenizer.load("tests/fixtures/tokenizers/" .. name))
  local best, nids = math.huge, 0
  for _ = 1, 3 do
    local t0 = now()
    nids = 0
    for i = 1, #recs do nids = nids + #tok:encode(recs[i], { add_special = false }) end
    best = math.min(best, now() - t0)
  end
  local bbest = math.huge
  for _ = 1, 3 do
    local t0 = now()
    tok:encode_batch(recs, { add_special = false })
    bbest = math.min(bbest, now() - t0)
  end
  print(string.format("%s %.2f %.2f %d", name, bytes / 1e6 / best, bytes / 1e6 / bbest, nids))
  tok:close()
end

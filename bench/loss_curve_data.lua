-- bench/loss_curve_data.lua — the token rows of the loss-curve comparison (bench/loss_curve.sh):
-- a real corpus through the pipeline (recipes/pdf_to_md, clean, chunk), its chunks tokenized,
-- shuffled with a fixed seed, each followed by the end-of-text token, packed and cut into rows.
--   qlora bench/loss_curve_data.lua chunks=CHUNKS.jsonl tokenizer=DIR out=rows.safetensors [rows=300] [seq=1024]
-- Writes an int32 tensor "ids" [rows, seq] (safetensors), read by both sides.
local chunks = assert(args.chunks, "chunks=CHUNKS.jsonl")
local tok = assert(qlora.tokenizer.load(assert(args.tokenizer, "tokenizer=DIR")))
local out = assert(args.out, "out=FILE.safetensors")
local R, S = tonumber(args.rows or "300"), tonumber(args.seq or "1024")
local eos = assert(tok:token_to_id("<|endoftext|>") or tok:token_to_id("</s>"), "no end-of-text token")

local texts = {}
for line in io.lines(chunks) do texts[#texts + 1] = qlora.json.decode(line).text end
math.randomseed(1234)
for i = #texts, 2, -1 do local j = math.random(i); texts[i], texts[j] = texts[j], texts[i] end
local flat = {}
for _, t in ipairs(texts) do
  for _, id in ipairs(tok:encode(t)) do flat[#flat + 1] = id end
  flat[#flat + 1] = eos
  if #flat >= R * S then break end
end
assert(#flat >= R * S, string.format("the corpus has %d tokens, %d are needed", #flat, R * S))
local rows = {}
for r = 1, R do
  local row = {}
  for c = 1, S do row[c] = flat[(r - 1) * S + c] end
  rows[r] = row
end
local t = qlora.tensor.from(rows, "i32")
assert(qlora.tensor.save(out, { ids = t }))
print(string.format("loss_curve_data: %d chunks, %d rows of %d tokens (of %d) -> %s", #texts, R, S, #flat, out))

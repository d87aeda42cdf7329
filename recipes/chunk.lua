-- recipes/chunk.lua — Markdown files to token-bounded chunks in JSONL.
--
--   qlora recipes/chunk.lua src=data/clean dst=data/chunks.jsonl [max_tokens=512]
--        [overlap=64] [format=text|chat|instruct] [meta=false] [tokenizer=PATH] [force=false]
--
-- One JSONL record per chunk ({"text": ...} by default). With meta=true each
-- record also carries source, heading path and page range. Token counts come
-- from qlora.tokenizer when tokenizer=PATH is given (tok:count), else from an
-- approximate counter. The output is written atomically and skipped when it is
-- newer than every input.
local chunk, sys, pdf = qlora.chunk, qlora.sys, qlora.pdf
local src, dst = args.src or "data/clean", args.dst or "data/chunks.jsonl"
local files, err = pdf.list_files(src, ".md")
if not files then io.stderr:write("chunk: " .. err .. "\n"); os.exit(2) end
local tout = sys.mtime(dst)
local stale = args.force == "true" or not tout
for _, f in ipairs(files) do if not stale and sys.mtime(f) > tout then stale = true end end
if not stale then print("chunk: " .. dst .. " is up to date"); return end

local counter = chunk.approx_counter
if args.tokenizer then
  local tok = assert(qlora.tokenizer.load(args.tokenizer))
  counter = function(s) return tok:count(s) end
end
local all, t0 = {}, sys.now()
for _, f in ipairs(files) do
  local fh = assert(io.open(f, "rb"))
  local md = fh:read("a"); fh:close()
  for _, c in ipairs(chunk.split(md, { max_tokens = tonumber(args.max_tokens or "512"),
                                       overlap = tonumber(args.overlap or "64"),
                                       source = f:sub(#src + 2), counter = counter })) do
    all[#all + 1] = c
  end
end
local dir = dst:match("^(.*)/[^/]*$")
if dir then assert(sys.mkdir(dir)) end
assert(chunk.write_jsonl(dst, all, { format = args.format or "text", meta = args.meta == "true" }))
print(string.format("chunk: %d files -> %d chunks in %s (%.1f s)", #files, #all, dst, sys.now() - t0))

-- recipes/chunk.lua — Markdown files to token-bounded chunks in JSONL.
--
--   bin/qlora recipes/chunk.lua src=data/clean dst=data/chunks.jsonl tokenizer=MODEL
--   bin/qlora recipes/chunk.lua --help          every setting, its default and range
--
-- One JSONL record per chunk ({"text": ...} by default). With meta=true each
-- record also carries source, heading path and page range. Token counts come
-- from qlora.tokenizer when tokenizer=PATH is given (tok:count), else from an
-- approximate counter. The output is written atomically, with dst.manifest.json
-- beside it (the settings and the identity of each input); it is made again when
-- any of them changed, and the run says why.
local S = require("qlora.settings")
local SETTINGS = {
  { "src", "dir", "data/clean", "folder of Markdown files (.md)", stamp = false },
  { "dst", "path", "data/chunks.jsonl", "the JSONL file to write", stamp = false },
  { "tokenizer", "tokenizer", nil, "a model folder or tokenizer.json to count tokens (default: an approximation)" },
  { "max_tokens", "int", 512, "tokens per chunk at most", min = 8 },
  { "overlap", "int", 64, "tokens repeated between neighbouring chunks", min = 0 },
  { "format", "enum", "text", "record shape", choices = { "text", "chat", "instruct" } },
  { "meta", "bool", false, "add source, heading path and pages to each record" },
  { "force", "bool", false, "redo even when the output is up to date", stamp = false },
}
local cfg = S.parse(args, SETTINGS)
local chunk, sys, pdf = qlora.chunk, qlora.sys, qlora.pdf
local src, dst = cfg.src, cfg.dst
local files, err = pdf.list_files(src, ".md")
if not files then io.stderr:write("chunk: " .. err .. "\n"); os.exit(2) end
-- redone when a setting or an input (the Markdown files, the tokenizer) changed
local mf = require("qlora.manifest")
local inputs = mf.files(files)
if cfg.tokenizer then
  for p, id in pairs(mf.files({ cfg.tokenizer }, nil)) do inputs[p] = id end
end
local want = mf.new("chunk", S.stamp(cfg, SETTINGS), inputs)
local why = cfg.force and "force=true" or mf.why(dst, want)
if not why then print("chunk: " .. dst .. " is up to date (same settings and inputs)"); return end
print("chunk: making " .. dst .. ": " .. why)

local counter = chunk.approx_counter
if cfg.tokenizer then
  local tok = assert(qlora.tokenizer.load(cfg.tokenizer))
  counter = function(s) return tok:count(s) end
end
local all, t0 = {}, sys.now()
for _, f in ipairs(files) do
  local fh = assert(io.open(f, "rb"))
  local md = fh:read("a"); fh:close()
  for _, c in ipairs(chunk.split(md, { max_tokens = cfg.max_tokens, overlap = cfg.overlap,
                                       source = f:sub(#src + 2), counter = counter })) do
    all[#all + 1] = c
  end
end
local dir = dst:match("^(.*)/[^/]*$")
if dir then assert(sys.mkdir(dir)) end
assert(chunk.write_jsonl(dst, all, { format = cfg.format, meta = cfg.meta }))
assert(mf.write(dst, want))
print(string.format("chunk: %d files -> %d chunks in %s (%.1f s)", #files, #all, dst, sys.now() - t0))

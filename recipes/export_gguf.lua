-- recipes/export_gguf.lua — a merged Hugging Face model to GGUF for llama.cpp and Ollama.
--
--   bin/qlora recipes/export_gguf.lua model=models/qwen-docs out=models/qwen-docs.gguf type=q8_0
--   ... type=q4_k_m    the 4-bit mix Ollama users pick, equal to llama-quantize's Q4_K_M
--   bin/qlora recipes/export_gguf.lua --help    every setting, its default and choices
--
-- Qwen2/2.5 (arch qwen2), Llama 2/3.x and Mistral (arch llama). The weights are
-- streamed one tensor at a time from the mapped safetensors; the file is written
-- atomically. Beside the GGUF goes an Ollama Modelfile (FROM ./<file>, the chat
-- template in Ollama's Go-template form, stop tokens); then:
--   ollama create qwen-docs -f models/Modelfile      llama-cli -m models/qwen-docs.gguf -cnv
local E = require("qlora.gguf_export")
local S = require("qlora.settings")
local SETTINGS = {
  { "model", "model", nil, "a merged Hugging Face model folder (recipes/merge.lua's out=)", required = true },
  { "out", "path", nil, "the GGUF file (default: <model>.gguf)" },
  { "type", "enum", "f16", "tensor type in the file (q4_k_m: llama-quantize's Q4_K_M mix)",
    choices = { "f16", "bf16", "q8_0", "q4_k_m", "f32" } },
  { "tokenizer", "tokenizer", nil, "tokenizer folder (default: the model's)" },
  { "name", "string", nil, "general.name in the file (default: the folder's name)" },
  { "modelfile", "bool", true, "write an Ollama Modelfile beside the GGUF" },
}
local cfg = S.parse(args, SETTINGS)
local model = cfg.model
local out = cfg.out or (model:gsub("/+$", "") .. ".gguf")
local res, err = E.export { model = model, out = out, type = cfg.type, tokenizer = cfg.tokenizer,
                            name = cfg.name, log = function(s) io.stderr:write("\r" .. s); io.stderr:flush() end }
io.stderr:write("\n")
if not res then io.stderr:write("export_gguf: " .. err .. "\n"); os.exit(1) end
print(string.format("export_gguf: %s, %d tensors, %s, %.1f MB (%.1f s) -> %s", res.arch, res.tensors,
                    cfg.type, (qlora.sys.size(out) or 0) / 1e6, res.seconds, out))
if cfg.modelfile then
  local path = (out:match("^(.*)/[^/]+$") or ".") .. "/Modelfile"
  local okw, werr = qlora.sys.write_file(path, E.modelfile(out, res.chat_template))
  if not okw then io.stderr:write("export_gguf: " .. werr .. "\n"); os.exit(1) end
  print("export_gguf: Ollama Modelfile -> " .. path)
end

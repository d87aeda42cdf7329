-- recipes/export_gguf.lua — a merged Hugging Face model to GGUF for llama.cpp and Ollama.
--
--   qlora recipes/export_gguf.lua model=models/qwen-docs out=models/qwen-docs.gguf [type=f16|bf16|q8_0]
--        [tokenizer=DIR] [name=NAME] [modelfile=true]
--
-- Qwen2/2.5 (arch qwen2), Llama 2/3.x and Mistral (arch llama). The weights are
-- streamed one tensor at a time from the mapped safetensors; the file is written
-- atomically. Beside the GGUF goes an Ollama Modelfile (FROM ./<file>, the chat
-- template in Ollama's Go-template form, stop tokens); then:
--   ollama create qwen-docs -f models/Modelfile      llama-cli -m models/qwen-docs.gguf -cnv
local E = require("qlora.gguf_export")
local model = args.model or error("model=path/to/merged-model is required", 0)
local out = args.out or (model:gsub("/+$", "") .. ".gguf")
local res, err = E.export { model = model, out = out, type = args.type or "f16", tokenizer = args.tokenizer,
                            name = args.name, log = function(s) io.stderr:write("\r" .. s); io.stderr:flush() end }
io.stderr:write("\n")
if not res then io.stderr:write("export_gguf: " .. err .. "\n"); os.exit(1) end
print(string.format("export_gguf: %s, %d tensors, %s, %.1f MB (%.1f s) -> %s", res.arch, res.tensors,
                    args.type or "f16", (qlora.sys.size(out) or 0) / 1e6, res.seconds, out))
if args.modelfile ~= "false" then
  local path = (out:match("^(.*)/[^/]+$") or ".") .. "/Modelfile"
  local okw, werr = qlora.sys.write_file(path, E.modelfile(out, res.chat_template))
  if not okw then io.stderr:write("export_gguf: " .. werr .. "\n"); os.exit(1) end
  print("export_gguf: Ollama Modelfile -> " .. path)
end

-- recipes/merge.lua — an adapter merged into its base model, as a new HF model folder.
--
--   bin/qlora recipes/merge.lua model=path/to/Qwen2.5-7B adapter=runs/x/adapter out=models/qwen-docs
--   bin/qlora recipes/merge.lua --help          the settings
--
-- Merges into the original bf16/f16 weights of model= (never the NF4 copy used for
-- training), streaming shard by shard. When model= is a 4-bit (bitsandbytes)
-- checkpoint the weights are dequantized first and the note says what that costs.
-- Writes safetensors shards (+ index), config.json and the tokenizer files. An existing
-- out= folder is replaced only when it holds a previous merge (anything else is refused,
-- never deleted); an adapter with NaN or Inf values is refused; Ctrl-C stops cleanly.
local S = require("qlora.settings")
local SETTINGS = {
  { "model", "model", nil, "the base model folder the adapter was trained on", required = true },
  { "adapter", "dir", nil, "the adapter folder (runs/x/adapter or runs/x/checkpoint-N)", required = true },
  { "out", "path", nil, "the folder for the merged model (a previous merge there is replaced)", required = true },
}
local cfg = S.parse(args, SETTINGS)
local base, adapter, out = cfg.model, cfg.adapter, cfg.out
local model, err = qlora.model.load(base, { quant = "none" })
if not model then io.stderr:write("merge: " .. err .. "\n"); os.exit(2) end
local lo, lerr = qlora.lora.load(model, adapter)
if not lo then io.stderr:write("merge: " .. lerr .. "\n"); os.exit(2) end
local t0 = qlora.sys.now()
-- Ctrl-C stops the merge at the next tensor and leaves nothing behind (the merge is
-- written beside out= and renamed into place only when complete)
qlora.sys.interrupted()   -- forget any earlier Ctrl-C
qlora.sys.trap_interrupt(true)
local note, merr = lo:merge(base, out)
qlora.sys.trap_interrupt(false)
local ctrl_c = qlora.sys.interrupted()
if not note then
  if ctrl_c and merr:find("interrupted") then
    io.stderr:write("merge: interrupted (Ctrl-C); nothing was written to " .. out .. "\n")
    os.exit(130)
  end
  io.stderr:write("merge: " .. merr .. "\n")
  os.exit(1)
end
print(string.format("merge: %s (%.1f s) -> %s", note, qlora.sys.now() - t0, out))
if ctrl_c then print("merge: Ctrl-C came as the merge was finishing; the merged model is complete") end

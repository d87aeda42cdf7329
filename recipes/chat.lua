-- recipes/chat.lua — an interactive chat with a model: its chat template, the answer streamed.
--
--   bin/qlora chat models/Qwen2.5-0.5B-Instruct
--   bin/qlora recipes/chat.lua model=models/Qwen2.5-0.5B-Instruct quant=none max_new_tokens=128
--   bin/qlora chat --help                 the settings
--
-- Loads the model folder (config.json, safetensors, tokenizer.json) on the CPU by default,
-- renders each turn with the tokenizer's chat template, the conversation so far included,
-- and streams the answer as it is generated (greedy unless temperature= is given). An
-- empty line or Ctrl-D leaves; Ctrl-C stops the answer being written. Input may be piped:
-- printf 'Hello\n' | bin/qlora chat MODEL. This is qlora.llm's lm:chat() (help(qlora.llm)).
local S = require("qlora.settings")
local SETTINGS = {
  { "model", "model", nil, "a Hugging Face model folder with its tokenizer (also: qlora chat MODEL)", required = true },
  { "quant", "enum", "nf4", "base weights: nf4 (4-bit, a 7B in ~4 GiB) or none (as stored)", choices = { "nf4", "none" } },
  { "device", "enum", "cpu", "where the model runs", choices = { "cpu", "cuda" }, pattern = "^cuda:%d+$", shown = "cpu|cuda|cuda:N" },
  { "system", "string", nil, "a system message that opens the conversation" },
  { "max_new_tokens", "int", 512, "tokens per answer at most", min = 1 },
  { "temperature", "number", 0, "sampling temperature (0: greedy, the same answer every time)", min = 0 },
  { "top_p", "number", 1, "nucleus sampling: the smallest set of tokens with this probability", min = 0, max = 1 },
  { "top_k", "int", 0, "sample among the k likeliest tokens (0: all)", min = 0 },
  { "seed", "int", 0, "sampling seed", min = 0 },
  { "threads", "int", nil, "CPU threads (default: all cores)", min = 1 },
}
-- `qlora chat MODEL`: the first bare argument is the model
if args[1] and args.model == nil and args[1] ~= "--help" and args[1] ~= "-h" and args[1] ~= "help" then
  args.model = table.remove(args, 1)
end
local cfg = S.parse(args, SETTINGS)
if cfg.threads then qlora.sys.threads(cfg.threads) end

local t0 = qlora.sys.now()
local lm, err = qlora.llm.load(cfg.model, { quant = cfg.quant, device = cfg.device })
if not lm then io.stderr:write("chat: " .. tostring(err) .. "\n"); os.exit(2) end
if not lm.tokenizer.chat_template then
  io.stderr:write("chat: " .. cfg.model .. ": the tokenizer has no chat template (no chat_template.jinja, and no " ..
                  "chat_template in tokenizer_config.json): a base model continues text instead; try " ..
                  "qlora -e 'qlora.llm.load(\"" .. cfg.model .. "\"):generate(\"Once upon a time\")'\n")
  os.exit(2)
end
print(string.format("chat: %s (%s, %s) loaded in %.1f s; an empty line or Ctrl-D leaves, Ctrl-C stops an answer",
                    cfg.model, cfg.quant, cfg.device, qlora.sys.now() - t0))
lm:chat({ system = cfg.system, max_new_tokens = cfg.max_new_tokens, temperature = cfg.temperature,
          top_p = cfg.top_p, top_k = cfg.top_k, seed = cfg.seed })

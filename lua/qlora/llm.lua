-- qlora.llm — a model together with its tokenizer, for trying models by text.
--
--   local lm = qlora.llm.load("models/Qwen2.5-0.5B-Instruct", {quant = "nf4"})
--   lm:generate("The capital of France is", {max_new_tokens = 32})   -- streams, returns the text
--   lm:ask("Why is the sky blue?")                                   -- one chat turn (chat template)
--   lm:chat()                                                        -- interactive chat; empty line leaves
--
--   qlora.llm.random_model(dir, {tokenizer = "path/to/tokenizer dir", layers = 2, hidden = 64})
--     writes a tiny random Qwen2-shaped model using that tokenizer's vocabulary: a smoke-test
--     model that runs everywhere (its text is noise, by construction).
local M = {}
local LM = {}
LM.__index = LM

function M.load(dir, opts)
  opts = opts or {}
  local model, err = qlora.model.load(dir, { quant = opts.quant or "none" })
  if not model then return nil, err end
  local tok, terr = qlora.tokenizer.load(dir)
  if not tok then
    return nil, dir .. ": the model loaded but its tokenizer did not (" .. tostring(terr) ..
      "); qlora.llm needs tokenizer.json beside config.json"
  end
  local ok, mismatch = model:check_tokenizer(tok)
  if not ok then return nil, mismatch end
  return setmetatable({ model = model, tokenizer = tok, dir = dir }, LM)
end

-- generates from text or ids; streams decoded text to opts.write (io.write by default; false = silent)
function LM:generate(prompt, opts)
  opts = opts or {}
  local tok = self.tokenizer
  local ids = type(prompt) == "string" and tok:encode(prompt) or prompt
  local write = opts.write
  if write == nil then write = function(s) io.write(s); io.flush() end end
  local out, shown = {}, 0
  local gen_opts = {}
  for k, v in pairs(opts) do gen_opts[k] = v end
  gen_opts.write = nil
  gen_opts.on_token = function(id)
    out[#out + 1] = id
    if write then
      local text = tok:decode(out, { skip_special = true })
      -- hold back an incomplete UTF-8 sequence (shown as U+FFFD) until its bytes arrive
      if text:sub(-3) ~= "\239\191\189" and #text > shown then
        write(text:sub(shown + 1))
        shown = #text
      end
    end
    if opts.on_token then return opts.on_token(id) end
  end
  self.model:generate(ids, gen_opts)
  local text = tok:decode(out, { skip_special = true })
  if write and #text > shown then write(text:sub(shown + 1)) end
  return text, out
end

-- one chat turn: messages (or a question string) rendered with the tokenizer's chat template
function LM:ask(messages, opts)
  if type(messages) == "string" then messages = { { role = "user", content = messages } } end
  local ids = self.tokenizer:apply_chat_template(messages, { add_generation_prompt = true, tokenize = true })
  opts = opts or {}
  if opts.max_new_tokens == nil then opts.max_new_tokens = 256 end
  local text = self:generate(ids, opts)
  if opts.write ~= false then io.write("\n") end
  return text
end

function LM:chat(opts)
  local history = {}
  if opts and opts.system then history[1] = { role = "system", content = opts.system } end
  while true do
    io.write("you> ")
    io.flush()
    local line = io.read("l")
    if not line or line == "" then break end
    history[#history + 1] = { role = "user", content = line }
    io.write("model> ")
    local answer = self:ask(history, opts and { temperature = opts.temperature, max_new_tokens = opts.max_new_tokens } or nil)
    history[#history + 1] = { role = "assistant", content = answer }
  end
end

function LM:__tostring() return "llm(" .. tostring(self.model) .. ")" end

-- ---------------------------------------------------------------- a tiny random model

local function copy(src, dst)
  local i = assert(io.open(src, "rb"))
  local data = i:read("a")
  i:close()
  assert(qlora.sys.write_file(dst, data))
end

function M.random_model(dir, opts)
  opts = opts or {}
  local T = qlora.tensor
  local tdir = assert(opts.tokenizer, "random_model: opts.tokenizer = a folder with tokenizer.json")
  local tok = assert(qlora.tokenizer.load(tdir))
  local V = tok.vocab_size
  local H, L = opts.hidden or 64, opts.layers or 2
  local heads, kv = opts.heads or 4, opts.kv_heads or 2
  local I = opts.intermediate or 2 * H
  local hd = H // heads
  local seed = opts.seed or 1
  assert(qlora.sys.mkdir(dir))
  local w, k = {}, 0
  local function rnd(shape, scale)
    k = k + 1
    return (T.randn(shape, { seed = seed, stream = k }) * (scale or 0.08)):to("bf16")
  end
  w["model.embed_tokens.weight"] = rnd({ V, H })
  w["model.norm.weight"] = T.ones({ H }, { dtype = "bf16" })
  for l = 0, L - 1 do
    local p = "model.layers." .. l .. "."
    w[p .. "input_layernorm.weight"] = T.ones({ H }, { dtype = "bf16" })
    w[p .. "post_attention_layernorm.weight"] = T.ones({ H }, { dtype = "bf16" })
    w[p .. "self_attn.q_proj.weight"] = rnd({ heads * hd, H })
    w[p .. "self_attn.q_proj.bias"] = rnd({ heads * hd }, 0.02)
    w[p .. "self_attn.k_proj.weight"] = rnd({ kv * hd, H })
    w[p .. "self_attn.k_proj.bias"] = rnd({ kv * hd }, 0.02)
    w[p .. "self_attn.v_proj.weight"] = rnd({ kv * hd, H })
    w[p .. "self_attn.v_proj.bias"] = rnd({ kv * hd }, 0.02)
    w[p .. "self_attn.o_proj.weight"] = rnd({ H, heads * hd })
    w[p .. "mlp.gate_proj.weight"] = rnd({ I, H })
    w[p .. "mlp.up_proj.weight"] = rnd({ I, H })
    w[p .. "mlp.down_proj.weight"] = rnd({ H, I })
  end
  assert(T.save(dir .. "/model.safetensors", w, { format = "pt" }))
  local eos = tok.eos_id or 0
  local config = string.format([[{
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
  "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
  "num_attention_heads": %d, "num_key_value_heads": %d, "max_position_embeddings": 4096,
  "rope_theta": 10000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "bos_token_id": %s, "eos_token_id": %d,
  "qlora_note": "random weights made by qlora.llm.random_model: a smoke-test model"
}
]], V, H, I, L, heads, kv, tok.bos_id and tostring(tok.bos_id) or "null", eos)
  assert(qlora.sys.write_file(dir .. "/config.json", config))
  copy(tdir .. "/tokenizer.json", dir .. "/tokenizer.json")
  local cfg = io.open(tdir .. "/tokenizer_config.json", "rb")
  if cfg then cfg:close(); copy(tdir .. "/tokenizer_config.json", dir .. "/tokenizer_config.json") end
  tok:close()
  return dir
end

return M

-- qlora.llm — a model together with its tokenizer, for trying models by text.
--
--   local lm = qlora.llm.load("models/Qwen2.5-0.5B-Instruct", {quant = "nf4"})
--   lm:generate("The capital of France is", {max_new_tokens = 32})   -- streams, returns the text
--   lm:ask("Why is the sky blue?")                                   -- one chat turn (chat template)
--   lm:chat()                                                        -- interactive chat; empty line leaves
--   (`qlora chat MODEL` is lm:chat() from the command line: recipes/chat.lua)
--
--   qlora.llm.random_model(dir, {tokenizer = "path/to/tokenizer dir", layers = 2, hidden = 64})
--     writes a tiny random Qwen2-shaped model using that tokenizer's vocabulary: a smoke-test
--     model that runs everywhere (its text is noise, by construction).
local M = {}
local LM = {}
LM.__index = LM

-- a model folder and its tokenizer: opts.quant ("none" by default, or "nf4"), opts.device ("cpu"
-- by default, "cuda[:N]"); returns lm or nil, message
function M.load(dir, opts)
  opts = opts or {}
  local model, err = qlora.model.load(dir, { quant = opts.quant or "none", device = opts.device })
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

-- the REPL (qlora.repl), when this runs in it: told what was streamed, so that it is not printed twice
local function repl() return package.loaded["qlora.repl"] end

-- generates from text or ids; streams decoded text to opts.write (io.write by default; false = silent);
-- returns the text and the new ids. opts: as model:generate's (max_new_tokens, temperature, top_k,
-- top_p, seed, stop, on_token)
function LM:generate(prompt, opts)
  opts = opts or {}
  local tok = self.tokenizer
  local ids = type(prompt) == "string" and tok:encode(prompt) or prompt
  local write = opts.write
  local to_stdout = write == nil
  if to_stdout then
    write = function(s)
      io.write(s)
      io.flush()
      local r = repl()
      if r then r.line_open(s:sub(-1) ~= "\n") end
    end
  end
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
  if to_stdout and repl() then repl().shown(text, out) end
  return text, out
end

-- one chat turn: messages (or a question string) rendered with the tokenizer's chat template,
-- the answer streamed (opts as generate's; max_new_tokens 256 by default); returns the answer
function LM:ask(messages, opts)
  if type(messages) == "string" then messages = { { role = "user", content = messages } } end
  local ids = self.tokenizer:apply_chat_template(messages, { add_generation_prompt = true, tokenize = true })
  opts = opts or {}
  if opts.max_new_tokens == nil then opts.max_new_tokens = 256 end
  local text = self:generate(ids, opts)
  if opts.write == nil then
    io.write("\n")
    if repl() then repl().line_open(false) end
  end
  return text
end

-- an interactive chat with the chat template, streaming each answer; the conversation so far
-- goes with every turn. An empty line or the end of input (Ctrl-D) leaves; Ctrl-C stops the
-- answer being written. opts: system (a system message), temperature, max_new_tokens, top_k,
-- top_p, seed; read (a function returning the next line, default: io.read after a "you> " prompt).
-- Returns the messages of the conversation.
function LM:chat(opts)
  opts = opts or {}
  local sys = qlora.sys
  local history = {}
  if opts.system then history[1] = { role = "system", content = opts.system } end
  if not self.tokenizer.chat_template then
    error((self.dir or "the model") .. ": the tokenizer has no chat template (chat_template.jinja or " ..
          "tokenizer_config.json's chat_template), so it cannot chat; lm:generate(text) continues plain text", 2)
  end
  local read = opts.read or function()
    io.write("you> ")
    io.flush()
    local l = io.read("l")
    if not l then io.write("\n") end
    return l
  end
  while true do
    local line = read()
    if not line or line == "" then break end
    history[#history + 1] = { role = "user", content = line }
    io.write("model> ")
    io.flush()
    local stopped = false
    local gen = { temperature = opts.temperature, max_new_tokens = opts.max_new_tokens, top_k = opts.top_k,
                  top_p = opts.top_p, seed = opts.seed,
                  on_token = function() if sys.interrupted() then stopped = true; return true end end }
    sys.interrupted()            -- forget an earlier Ctrl-C
    sys.trap_interrupt(true)     -- Ctrl-C now stops this answer, not the chat
    local ok, answer = pcall(self.ask, self, history, gen)
    sys.trap_interrupt(false)
    if not ok then error(answer, 0) end
    if stopped then io.write("[stopped]\n") end
    history[#history + 1] = { role = "assistant", content = answer }
  end
  if repl() then repl().shown(history) end   -- the conversation is on the screen already
  return history
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

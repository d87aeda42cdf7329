-- tests/gen/gguf_models.lua — small random models whose rows are whole k-quant
-- super-blocks (256 values), so a q4_k_m export of them uses Q4_K and Q6_K itself
-- rather than the Q5_0/Q8_0 fallbacks the 64-wide fixture models get. Made on the fly
-- (8 layers at hidden 256 would be 10 MB as a fixture) from qlora's seeded randn, the
-- same numbers on every machine; tests/fixtures/gguf/q4_k_m.json records a hash of each
-- model's safetensors so that a change here is told apart from a quantizer fault.
--
--   local GM = dofile("tests/gen/gguf_models.lua")
--   GM.make(dir, GM.specs["wide-qwen2"])  -> dir (config.json + model.safetensors)
--
-- Used by tests/lua/test_gguf.lua and tests/gen/check_llamacpp.lua. With 8 layers,
-- llama.cpp's "more bits" rule picks layers 0, 3, 6 and 7 for Q6_K attn_v / ffn_down.
local M = {}

M.specs = {
  ["wide-qwen2"] = { family = "qwen2", layers = 8, hidden = 256, intermediate = 512, heads = 4, kv_heads = 2,
                     vocab = 512, tied = true, seed = 11, tokenizer = "gguf/tok-qwen2" },
  ["wide-llama"] = { family = "llama", layers = 8, hidden = 256, intermediate = 512, heads = 4, kv_heads = 1,
                     vocab = 512, tied = false, seed = 12, tokenizer = "gguf/tok-llama3" },
}

function M.make(dir, s)
  local T = qlora.tensor
  local H, I, L, V = s.hidden, s.intermediate, s.layers, s.vocab
  local hd = H // s.heads
  local w, k = {}, 0
  local function rnd(shape, scale, mean)
    k = k + 1
    local t = T.randn(shape, { seed = s.seed, stream = k }) * scale
    if mean then t = t + mean end
    return t:to("bf16")
  end
  w["model.embed_tokens.weight"] = rnd({ V, H }, 1.0)
  w["model.norm.weight"] = rnd({ H }, 0.1, 1.0)
  for l = 0, L - 1 do
    local p = "model.layers." .. l .. "."
    w[p .. "input_layernorm.weight"] = rnd({ H }, 0.1, 1.0)
    w[p .. "post_attention_layernorm.weight"] = rnd({ H }, 0.1, 1.0)
    w[p .. "self_attn.q_proj.weight"] = rnd({ s.heads * hd, H }, 0.08)
    w[p .. "self_attn.k_proj.weight"] = rnd({ s.kv_heads * hd, H }, 0.08)
    w[p .. "self_attn.v_proj.weight"] = rnd({ s.kv_heads * hd, H }, 0.08)
    w[p .. "self_attn.o_proj.weight"] = rnd({ H, s.heads * hd }, 0.08)
    if s.family == "qwen2" then
      w[p .. "self_attn.q_proj.bias"] = rnd({ s.heads * hd }, 0.05)
      w[p .. "self_attn.k_proj.bias"] = rnd({ s.kv_heads * hd }, 0.05)
      w[p .. "self_attn.v_proj.bias"] = rnd({ s.kv_heads * hd }, 0.05)
    end
    w[p .. "mlp.gate_proj.weight"] = rnd({ I, H }, 0.08)
    w[p .. "mlp.up_proj.weight"] = rnd({ I, H }, 0.08)
    w[p .. "mlp.down_proj.weight"] = rnd({ H, I }, 0.06)
  end
  if not s.tied then w["lm_head.weight"] = rnd({ V, H }, 0.08) end
  assert(qlora.sys.mkdir(dir))
  assert(T.save(dir .. "/model.safetensors", w, { format = "pt" }))
  local rope = s.family == "llama"
    and '"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, ' ..
        '"high_freq_factor": 4.0, "original_max_position_embeddings": 64}, "rms_norm_eps": 1e-05'
    or '"rope_theta": 1000000.0, "rms_norm_eps": 1e-06'
  local config = string.format([[{
  "architectures": ["%s"], "model_type": "%s", "hidden_act": "silu",
  "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
  "num_attention_heads": %d, "num_key_value_heads": %d, "max_position_embeddings": 256,
  %s, "tie_word_embeddings": %s, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2
}
]], s.family == "llama" and "LlamaForCausalLM" or "Qwen2ForCausalLM", s.family, V, H, I, L, s.heads, s.kv_heads,
    rope, tostring(s.tied))
  assert(qlora.sys.write_file(dir .. "/config.json", config))
  return dir
end

-- a hash of a string, 8 bytes at a time (FNV-1a-64's constants on little-endian 64-bit
-- words, then the tail byte by byte): fast enough in Lua for a few MB of tensor data
function M.hash(s)
  local h = -3750763034362895579   -- 0xcbf29ce484222325 as a signed 64-bit integer
  local n = #s - #s % 8
  for i = 1, n, 8 do h = (h ~ string.unpack("<i8", s, i)) * 0x100000001b3 end
  for i = n + 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
  return string.format("%016x", h)
end

return M

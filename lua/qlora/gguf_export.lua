-- qlora.gguf_export — a Hugging Face model folder (merged by recipes/merge.lua) to one
-- GGUF file for llama.cpp, Ollama and LM Studio, written the way llama.cpp's
-- convert_hf_to_gguf.py writes it (its rules, re-stated here; see the notes below).
--
--   qlora.gguf_export.export{model = DIR, out = "model.gguf", type = "f16"|"bf16"|"q8_0"|"q4_k_m"|"f32",
--                            tokenizer = DIR (default: model), name = "...", log = print}
--     -> {tensors = n, elements = n, arch = "qwen2"|"llama", chat_template = s, seconds = s} | nil, message
--   qlora.gguf_export.modelfile(gguf_path, chat_template) -> text of an Ollama Modelfile
--   qlora.gguf_export.q4_k_m_type(name, shape, ctx) -> ggml type name of one weight in a q4_k_m file
--
-- Families (one table below): Qwen2/Qwen2.5 -> arch "qwen2" (q/k/v biases, no Q/K
-- permutation); Llama 2/3.x and Mistral -> arch "llama", whose Q and K rows are
-- permuted from the Hugging Face rotate-half layout to ggml's interleaved pairs.
-- Memory: tensors are read from the mapped safetensors and written one at a time;
-- only a permuted Q/K matrix is copied. Each source tensor's pages go back to the kernel
-- once written and a shard is unmapped when the next one opens, so resident memory stays
-- near one tensor's size (a 7B export peaks at ~1 GB; docs/gguf.md). Weights (2-D) take the chosen type, norms and
-- biases stay f32, a q8_0 row that is not a multiple of 32 falls back to f16, as the
-- converter does. Llama-3 "llama3" RoPE scaling becomes the rope_freqs.weight tensor.
-- q4_k_m is the per-tensor mix llama-quantize writes for Q4_K_M (see q4_k_m_type), its
-- blocks those of ggml's reference quantizer (engine/formats/gguf_quant.c), so the file
-- equals llama-quantize's output from our f32 export tensor for tensor.
-- Deliberate difference: the converter reads original_max_position_embeddings for
-- that tensor from the top of config.json (8192 when absent); we read it where
-- transformers does (rope_scaling / rope_parameters), so the factors match the model.
local M = {}
local json = qlora.json
local null = json.null

local function val(v) if v == null then return nil end return v end

local function read_json(path)
  local fh = io.open(path, "rb")
  if not fh then return nil end
  local text = fh:read("a"); fh:close()
  local v, err = json.decode(text, path)
  if v == nil then error(err, 0) end
  return v
end

local function file_exists(p) local f = io.open(p, "rb"); if f then f:close() return true end return false end

-- family table: HF model_type -> GGUF arch and whether Q/K rows are permuted
M.families = {
  qwen2 = { arch = "qwen2", permute = false },
  llama = { arch = "llama", permute = true },
  mistral = { arch = "llama", permute = true },
}

-- llama.cpp file types (general.file_type) and ggml type names per export type
local FILE_TYPE = { f32 = 0, f16 = 1, q8_0 = 7, q4_k_m = 15, bf16 = 32 }

-- HF tensor name -> GGUF name (nil: not exported)
local LAYER = {
  ["input_layernorm.weight"] = "attn_norm.weight",
  ["post_attention_layernorm.weight"] = "ffn_norm.weight",
  ["self_attn.q_proj.weight"] = "attn_q.weight", ["self_attn.q_proj.bias"] = "attn_q.bias",
  ["self_attn.k_proj.weight"] = "attn_k.weight", ["self_attn.k_proj.bias"] = "attn_k.bias",
  ["self_attn.v_proj.weight"] = "attn_v.weight", ["self_attn.v_proj.bias"] = "attn_v.bias",
  ["self_attn.o_proj.weight"] = "attn_output.weight", ["self_attn.o_proj.bias"] = "attn_output.bias",
  ["mlp.gate_proj.weight"] = "ffn_gate.weight",
  ["mlp.up_proj.weight"] = "ffn_up.weight",
  ["mlp.down_proj.weight"] = "ffn_down.weight",
}
local LAYER_ORDER = { "attn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias",
  "attn_v.weight", "attn_v.bias", "attn_output.weight", "attn_output.bias", "ffn_norm.weight",
  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight" }

function M.gguf_name(hf)
  if hf == "model.embed_tokens.weight" then return "token_embd.weight" end
  if hf == "model.norm.weight" then return "output_norm.weight" end
  if hf == "lm_head.weight" then return "output.weight" end
  local n, rest = hf:match("^model%.layers%.(%d+)%.(.+)$")
  if n and LAYER[rest] then return "blk." .. n .. "." .. LAYER[rest] end
  return nil
end

-- the hyperparameters, reading both config.json shapes (transformers 4.x and 5.x)
function M.hparams(cfg)
  local function need(k)
    local v = val(cfg[k])
    if v == nil then error("config.json has no " .. k, 0) end
    return v
  end
  local h = {
    model_type = need("model_type"), n_layer = need("num_hidden_layers"), n_embd = need("hidden_size"),
    n_ff = need("intermediate_size"), n_head = need("num_attention_heads"), vocab_size = need("vocab_size"),
    n_ctx = val(cfg.max_position_embeddings), eps = val(cfg.rms_norm_eps),
    tied = val(cfg.tie_word_embeddings) == true, sliding_window = val(cfg.sliding_window),
  }
  h.n_head_kv = val(cfg.num_key_value_heads) or h.n_head
  h.head_dim = val(cfg.head_dim) or h.n_embd // h.n_head
  local rp = val(cfg.rope_parameters)
  if type(rp) == "table" and rp.full_attention then rp = rp.full_attention end
  local rs = val(cfg.rope_scaling)
  h.rope_theta = (type(rp) == "table" and val(rp.rope_theta)) or val(cfg.rope_theta) or 10000.0
  local sc = type(rs) == "table" and rs or (type(rp) == "table" and rp) or {}
  h.rope_type = val(sc.rope_type) or val(sc.type) or "default"
  h.rope = sc
  return h
end

-- llama3 RoPE factors (rope_freqs.weight): 1 for high frequencies, factor for low ones,
-- the smooth mix between, as llama.cpp divides the base frequencies by them. Every step
-- is rounded to f32, as the converter computes it (torch float32 scalars).
local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end
function M.llama3_rope_factors(h)
  local rs = h.rope
  local factor = val(rs.factor) or 8.0
  local lo, hi = val(rs.low_freq_factor) or 1.0, val(rs.high_freq_factor) or 4.0
  local old = val(rs.original_max_position_embeddings) or 8192
  local lo_wl, hi_wl = old / lo, old / hi
  local out = {}
  for i = 0, h.head_dim - 1, 2 do
    local freq = f32(1.0 / f32(h.rope_theta ^ f32(i / h.head_dim)))
    local wl = f32(f32(2 * math.pi) / freq)
    local f
    if wl < hi_wl then f = 1.0
    elseif wl > lo_wl then f = factor
    else
      local smooth = f32(f32(f32(f32(old) / wl) - f32(lo)) / f32(hi - lo))
      f = f32(1 / f32(f32(f32(1 - smooth) / f32(factor)) + smooth))
    end
    out[#out + 1] = f
  end
  return out
end

-- ---------------------------------------------------------------- q4_k_m

-- llama.cpp's Q4_K_M recipe (llama-quant.cpp, llama_tensor_get_type) for the dense
-- llama/qwen2 weights we write. Q4_K by default; Q6_K for the output matrix (the token
-- embeddings when tied) and for attn_v and ffn_down in the layers "more bits" picks: the
-- first and last eighth of the layers and every third one between; a 70B (80 layers,
-- and for llama grouped-query attention) gets Q5_K for its other attn_v. A row that is
-- not a whole number of 256-value super-blocks takes the fallback llama.cpp uses
-- (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; the output matrix goes to Q8_0 directly),
-- and F16 when not even 32 divides it. ctx = {n_layer, tied, is_70b}.
local function more_bits(i, n) return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2 end
local FALLBACK = { q4_K = "q5_0", q5_K = "q5_1", q6_K = "q8_0" }
function M.q4_k_m_type(name, shape, ctx)
  local ne0 = shape[#shape]
  local t = "q4_K"
  local layer = tonumber(name:match("^blk%.(%d+)%."))
  if name == "output.weight" or (ctx.tied and name == "token_embd.weight") then
    t = ne0 % 256 == 0 and "q6_K" or "q8_0"
  elseif name == "token_embd.weight" then
    t = "q4_K"
  elseif name:find("attn_v.weight", 1, true) then
    if more_bits(layer, ctx.n_layer) then t = "q6_K" elseif ctx.is_70b then t = "q5_K" end
  elseif name:find("ffn_down", 1, true) then
    if more_bits(layer, ctx.n_layer) then t = "q6_K" end
  end
  if ne0 % (t == "q8_0" and 32 or 256) ~= 0 then t = FALLBACK[t] or t end
  if ne0 % 32 ~= 0 then t = "f16" end
  return t
end

-- ---------------------------------------------------------------- tokenizer

local function looks_special(t)
  if t == "<pad>" or t == "<mask>" or t == "<2mass>" or t == "[@BOS@]" then return true end
  if t:sub(1, 2) == "<|" and t:sub(-2) == "|>" then return true end
  if t:sub(1, 4) == "<\u{ff5c}" and t:sub(-4) == "\u{ff5c}>" then return true end
  if t:sub(1, 7) == "<unused" and t:sub(-1) == ">" then return true end
  return false
end

-- pre-tokenizer name llama.cpp knows, from the split regex (the converter hashes the
-- token ids of a probe text instead; these regexes are what those names select)
local PRE = {
  { "\\p{N}{1,3}", "llama-bpe" },     -- Llama 3
  { "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?", "qwen2" },
  { "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+", "gpt-2" },
}
local function pre_name(tj)
  local function find_regex(p)
    if type(p) ~= "table" then return nil end
    if p.type == "Split" and type(p.pattern) == "table" then return val(p.pattern.Regex) end
    for _, q in ipairs(val(p.pretokenizers) or {}) do
      local r = find_regex(q)
      if r then return r end
    end
  end
  local re = find_regex(val(tj.pre_tokenizer))
  if not re then
    if type(val(tj.pre_tokenizer)) == "table" and tj.pre_tokenizer.type == "ByteLevel" then return "gpt-2" end
    return nil
  end
  for _, e in ipairs(PRE) do if re:find(e[1], 1, true) then return e[2] end end
  return nil
end

-- special token ids and add-bos/eos flags as gguf-py's SpecialVocab finds them
local SPECIAL_TYPES = { "bos", "eos", "unk", "sep", "pad", "cls", "mask" }
local function special_vocab(tj, tc, cfg, n_vocab)
  local ids, add, order = {}, {}, {}
  local added = val(tj.added_tokens) or {}
  tc = tc and (function() local c = {}; for k, v in pairs(tc) do c[k] = v end; return c end)()
  local function set(typ, id)
    if math.type(id) ~= "integer" then return end
    if id < 0 then error("invalid value for special token type " .. typ .. ": " .. id, 0) end
    if n_vocab and id >= n_vocab then return end
    if ids[typ] == nil then ids[typ] = id; order[#order + 1] = typ end
  end
  local types = { table.unpack(SPECIAL_TYPES) }
  if tc then
    local bos, cls, eos, sep = val(tc.bos_token), val(tc.cls_token), val(tc.eos_token), val(tc.sep_token)
    if not bos and cls then tc.bos_token = cls; bos = cls end
    if not eos and sep then tc.eos_token = sep; eos = sep end
    local post = val(tj.post_processor)
    if type(post) == "table" then
      for _, p in ipairs(val(post.processors) or { post }) do
        if p.type == "RobertaProcessing" then
          add.bos, add.eos, add.sep = true, true, true
        elseif p.type == "TemplateProcessing" then
          local single, pair = val(p.single) or {}, val(p.pair) or {}
          local function special_id(e) return type(e) == "table" and type(e.SpecialToken) == "table" and e.SpecialToken.id or nil end
          local function seq_id(e) return type(e) == "table" and type(e.Sequence) == "table" and e.Sequence.id or nil end
          local first, last
          if #single > 1 then
            first = special_id(single[1])
            if first then add.bos = (first == bos or first == cls) end
            last = special_id(single[#single])
            if last then
              if last ~= eos then
                types[#types + 1] = "eot"; tc.eot_token = eos
                tc.eos_token = last; eos = last
              end
              add.eos = (last == eos)
            end
          end
          -- "A [sep] B" in the pair template decides add_sep (SpecialVocab's reading)
          if #pair > 0 then
            local i0 = (first and special_id(pair[1]) == first) and 2 or 1
            local i1 = (last and special_id(pair[#pair]) == last) and #pair - 1 or #pair
            if i1 >= i0 and seq_id(pair[i0]) == "A" and seq_id(pair[i1]) == "B" and i1 - i0 >= 2 then
              local mid = { table.unpack(pair, i0 + 1, i1 - 1) }
              local add_sep = false
              local e = special_id(mid[1])
              if e and (e == sep or e == eos) and not last then add_sep = true end
              if #mid == 2 then
                e = special_id(mid[2])
                if e and (e == sep or e == eos) then add_sep = true end
              end
              add.sep = add_sep
              if add_sep and not sep then tc.sep_token = eos end
            end
          end
        end
      end
    end
    for _, typ in ipairs(types) do
      local a = val(tc["add_" .. typ .. "_token"])
      if type(a) == "boolean" then add[typ] = a end
      local entry = val(tc[typ .. "_token"])
      local content = type(entry) == "string" and entry or (type(entry) == "table" and val(entry.content)) or nil
      if type(content) == "string" then
        for _, at in ipairs(added) do
          if at.content == content then set(typ, at.id); break end
        end
      end
    end
  end
  for _, typ in ipairs(types) do set(typ, val(cfg[typ .. "_token_id"])) end
  return ids, add, order
end

-- tokens, token types, merges and the rest, from tokenizer.json / tokenizer_config.json
function M.tokenizer(dir, cfg, vocab_size)
  local tj = read_json(dir .. "/tokenizer.json")
  if not tj then return nil, dir .. "/tokenizer.json is missing: GGUF needs the tokenizer (copy it beside the model)" end
  local tc = read_json(dir .. "/tokenizer_config.json")
  local model = tj.model
  if type(model) ~= "table" or model.type ~= "BPE" then
    return nil, dir .. "/tokenizer.json: only BPE tokenizers are exported (this one is " .. tostring(model and model.type) .. ")"
  end
  local byte_fallback = val(model.byte_fallback) == true
  local rev = {}
  for tok, id in pairs(model.vocab) do rev[id] = tok end
  local added_by_id = {}
  for _, at in ipairs(val(tj.added_tokens) or {}) do rev[at.id] = at.content; added_by_id[at.id] = at end
  for id in pairs(rev) do
    if id >= vocab_size then
      return nil, string.format("%s: token id %d is past the model's vocab_size %d (config.json): the tokenizer " ..
        "does not belong to this model", dir, id, vocab_size)
    end
  end
  local t = { tokens = {}, types = {} }
  if byte_fallback then
    -- SentencePiece-style BPE (Mistral, Llama 2) as gguf-py's LlamaHfVocab writes it, but
    -- for the scores. llama.cpp tokenizes this "llama" vocabulary SentencePiece's way:
    -- it merges the adjacent pair whose joined text is the token of highest score. The
    -- converter, given only tokenizer.json, writes -1000 for every token, and llama.cpp
    -- then merges left to right instead of in the merges' order (" Hello" became
    -- "▁▁|Hello", Hugging Face's "▁|▁Hello"). A token's score here is minus the rank of
    -- the first merge that makes it, so the highest-scoring pair is the merge Hugging
    -- Face's BPE would apply; a token no merge makes gets -1e9 (never preferred).
    t.model, t.pre, t.scores = "llama", "default", {}
    local rank = {}
    for r, m in ipairs(val(model.merges) or {}) do
      local a, b
      if type(m) == "table" then a, b = m[1], m[2] else a, b = m:match("^(.-) (.*)$") end
      local id = a and model.vocab[a .. b]
      if id and not rank[id] then rank[id] = r - 1 end
    end
    local specials = {}
    for _, at in pairs(added_by_id) do if at.special then specials[at.id] = true end end
    for i = 0, vocab_size - 1 do
      local tok = rev[i] or ("[PAD" .. i .. "]")
      t.tokens[i + 1] = tok
      t.scores[i + 1] = rank[i] and -rank[i] or -1e9
      if not rev[i] then t.types[i + 1] = 5
      elseif tok:match("^<0x%x%x>$") then t.types[i + 1] = 6
      elseif specials[i] then t.types[i + 1] = 3
      elseif added_by_id[i] and not model.vocab[tok] then t.types[i + 1] = 4
      else t.types[i + 1] = 1 end
    end
  else
    t.model = "gpt2"
    t.pre = pre_name(tj)
    if not t.pre then return nil, dir .. "/tokenizer.json: its pre-tokenizer regex is not one llama.cpp names (qwen2, llama-bpe, gpt-2)" end
    for i = 0, vocab_size - 1 do
      local tok = rev[i]
      if tok == nil then t.tokens[i + 1], t.types[i + 1] = "[PAD" .. i .. "]", 5
      else
        local at = added_by_id[i]
        if at then
          if at.special or looks_special(tok) then t.types[i + 1] = 3
          else tok = tok:gsub("\u{2581}", " "); t.types[i + 1] = 4 end
        else t.types[i + 1] = 1 end
        t.tokens[i + 1] = tok
      end
    end
    local merges = val(model.merges) or {}
    t.merges = {}
    for i, m in ipairs(merges) do
      if type(m) == "table" then   -- [a, b] (transformers >= 4.45): spaces inside parts as U+0120
        t.merges[i] = m[1]:gsub(" ", "\u{120}") .. " " .. m[2]:gsub(" ", "\u{120}")
      else t.merges[i] = m end
    end
  end
  t.special, t.add, t.special_order = special_vocab(tj, tc, cfg, byte_fallback and vocab_size or nil)
  t.chat_template = tc and type(val(tc.chat_template)) == "string" and tc.chat_template or nil
  if not t.chat_template and file_exists(dir .. "/chat_template.jinja") then
    local fh = io.open(dir .. "/chat_template.jinja", "rb"); t.chat_template = fh:read("a"); fh:close()
  end
  return t
end

-- ---------------------------------------------------------------- tensors

-- every tensor of the folder: name -> {file = path}; the files are mapped lazily
local function index_tensors(dir)
  local idx = read_json(dir .. "/model.safetensors.index.json")
  local where = {}
  if idx then
    for name, file in pairs(idx.weight_map) do where[name] = dir .. "/" .. file end
  elseif file_exists(dir .. "/model.safetensors") then
    local tensors = qlora.tensor.load(dir .. "/model.safetensors")
    for name in pairs(tensors) do where[name] = dir .. "/model.safetensors" end
  else
    return nil, dir .. ": no model.safetensors or model.safetensors.index.json"
  end
  return where
end

-- Q/K rows of each head from [first half | second half] to interleaved pairs:
-- out row 2i+j of a head = in row j*(d/2)+i (the converter's reshape(h, 2, d/2)·swap)
local function permute_rows(t, n_head)
  local rows = t:size(1)
  local half = rows // n_head // 2
  if t:dim() == 1 then return t:view({ n_head, 2, half }):transpose(2, 3):contiguous():view({ rows }) end
  local cols = t:size(2)
  return t:view({ n_head, 2, half, cols }):transpose(2, 3):contiguous():view({ rows, cols })
end

function M.export(opts)
  local dir = opts.model or error("model= is required", 0)
  local out = opts.out or error("out= is required", 0)
  local qtype = (opts.type or "f16"):lower()
  local log = opts.log or function() end
  if not FILE_TYPE[qtype] then return nil, "type=" .. qtype .. ": use f16, bf16, q8_0, q4_k_m or f32" end
  local t0 = qlora.sys.now()
  local w   -- the writer, aborted (its temporary removed) on any error, Ctrl-C included
  local ok, res = pcall(function()
    -- an existing out= is replaced only when it is a GGUF file (a previous export), never a user's other file
    if qlora.sys.is_dir(out) then error(out .. ": is a folder; out= names the .gguf file to write", 0) end
    if qlora.sys.exists(out) then
      local f = io.open(out, "rb")
      local magic = f and f:read(4)
      if f then f:close() end
      if magic ~= "GGUF" then
        error(out .. ": exists and is not a GGUF file, so it is left as it is; choose another out=", 0)
      end
    end
    local cfg = read_json(dir .. "/config.json") or error(dir .. "/config.json is missing", 0)
    local h = M.hparams(cfg)
    local fam = M.families[h.model_type]
    if not fam then error(dir .. ": model_type '" .. tostring(h.model_type) .. "' is not exported (qwen2, llama, mistral are)", 0) end
    local arch = fam.arch
    local tok, terr = M.tokenizer(opts.tokenizer or dir, cfg, h.vocab_size)
    if not tok then error(terr, 0) end
    local where, werr = index_tensors(dir)
    if not where then error(werr, 0) end

    -- the tensors to write, in llama.cpp's usual order
    local plan, by_gguf = {}, {}
    for hf in pairs(where) do
      local g = M.gguf_name(hf)
      if g then by_gguf[g] = hf
      elseif not hf:match("rotary_emb%.inv_freq$") then
        error(dir .. ": tensor '" .. hf .. "' has no GGUF name (an unexpected module for " .. h.model_type .. ")", 0)
      end
    end
    local function add(g) if by_gguf[g] then plan[#plan + 1] = { gguf = g, hf = by_gguf[g] } end end
    if h.rope_type == "llama3" and arch == "llama" then plan[#plan + 1] = { gguf = "rope_freqs.weight", extra = true } end
    add("token_embd.weight")
    for l = 0, h.n_layer - 1 do
      for _, s in ipairs(LAYER_ORDER) do add("blk." .. l .. "." .. s) end
    end
    add("output_norm.weight")
    if not h.tied then add("output.weight") end
    for _, need in ipairs({ "token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight" }) do
      if not by_gguf[need] then error(dir .. ": no tensor for " .. need, 0) end
    end

    local files = {}
    local function source(hf)
      local f = where[hf]
      if not files[f] then
        files = nil
        collectgarbage()   -- unmaps the previous shard now, not whenever the collector runs
        files = { [f] = qlora.tensor.load(f) }   -- one mapped file at a time
      end
      return files[f][hf] or error(f .. ": tensor '" .. hf .. "' is missing", 0)
    end

    local werr2
    w, werr2 = qlora.gguf.writer(out)
    if not w then error(werr2, 0) end
    local function kv(k, ty, v) if v ~= nil then w:kv(k, ty, v) end end
    local function akv(k, ty, v) if v ~= nil then w:kv(arch .. "." .. k, ty, v) end end
    kv("general.architecture", "str", arch)
    kv("general.type", "str", "model")
    kv("general.name", "str", opts.name or dir:gsub("/+$", ""):match("([^/]+)$"))
    akv("block_count", "u32", h.n_layer)
    akv("context_length", "u32", h.n_ctx)
    akv("embedding_length", "u32", h.n_embd)
    akv("feed_forward_length", "u32", h.n_ff)
    akv("attention.head_count", "u32", h.n_head)
    akv("attention.head_count_kv", "u32", h.n_head_kv)
    akv("rope.freq_base", "f32", h.rope_theta)
    akv("attention.layer_norm_rms_epsilon", "f32", h.eps)
    if val(cfg.head_dim) then
      akv("attention.key_length", "u32", h.head_dim)
      akv("attention.value_length", "u32", h.head_dim)
    end
    kv("general.file_type", "u32", FILE_TYPE[qtype])
    if arch == "llama" then
      akv("vocab_size", "u32", h.vocab_size)
      akv("rope.dimension_count", "u32", h.head_dim)
    end
    local rs = h.rope
    if (h.rope_type == "linear" or h.rope_type == "yarn") and val(rs.factor) then
      akv("rope.scaling.type", "str", h.rope_type)
      akv("rope.scaling.factor", "f32", rs.factor)
      if h.rope_type == "yarn" then akv("rope.scaling.original_context_length", "u32", val(rs.original_max_position_embeddings)) end
    end
    kv("general.quantization_version", "u32", 2)
    kv("tokenizer.ggml.model", "str", tok.model)
    kv("tokenizer.ggml.pre", "str", tok.pre)
    w:kv("tokenizer.ggml.tokens", "arr:str", tok.tokens)
    if tok.scores then w:kv("tokenizer.ggml.scores", "arr:f32", tok.scores) end
    w:kv("tokenizer.ggml.token_type", "arr:i32", tok.types)
    if tok.merges then w:kv("tokenizer.ggml.merges", "arr:str", tok.merges) end
    local key_of = { bos = "bos_token_id", eos = "eos_token_id", unk = "unknown_token_id", sep = "seperator_token_id",
                     pad = "padding_token_id", cls = "cls_token_id", mask = "mask_token_id", eot = "eot_token_id" }
    for _, typ in ipairs(tok.special_order) do kv("tokenizer.ggml." .. key_of[typ], "u32", tok.special[typ]) end
    for _, typ in ipairs({ "bos", "eos", "sep" }) do
      if tok.add[typ] ~= nil then kv("tokenizer.ggml.add_" .. typ .. "_token", "bool", tok.add[typ]) end
    end
    kv("tokenizer.chat_template", "str", tok.chat_template)

    -- tensor infos: shapes from the safetensors headers (no data read yet)
    local rope_factors = h.rope_type == "llama3" and arch == "llama" and M.llama3_rope_factors(h) or nil
    local mix = { n_layer = h.n_layer, tied = not by_gguf["output.weight"] or h.tied,
                  is_70b = h.n_layer == 80 and (arch == "qwen2" or h.n_head ~= h.n_head_kv) }
    for _, p in ipairs(plan) do
      if p.extra then p.shape, p.type = { #rope_factors }, "f32"
      else
        local t = source(p.hf)
        p.shape = t:size()
        if #p.shape == 1 or p.gguf:match("_norm%.weight$") or not p.gguf:match("%.weight$") then p.type = "f32"
        elseif qtype == "q4_k_m" then p.type = M.q4_k_m_type(p.gguf, p.shape, mix)
        elseif qtype == "q8_0" and p.shape[#p.shape] % 32 ~= 0 then p.type = "f16"
        else p.type = qtype end
      end
      w:tensor(p.gguf, p.type, p.shape)
    end
    w:begin()
    local nbytes = 0
    for i, p in ipairs(plan) do
      local t
      if p.extra then t = qlora.tensor.from(rope_factors)
      else
        t = source(p.hf)
        local src = t
        if fam.permute and p.gguf:match("attn_q%.") then t = permute_rows(t, h.n_head)
        elseif fam.permute and p.gguf:match("attn_k%.") then t = permute_rows(t, h.n_head_kv) end
        if t.dtype ~= "f32" and t.dtype ~= "f16" and t.dtype ~= "bf16" then t = t:float() end
        if t ~= src then qlora.gguf.release_pages(src) end   -- a copy is written, not the source
      end
      w:write(t)
      nbytes = nbytes + t:numel()
      if p.extra or t ~= source(p.hf) then t:release() end   -- copies freed now, not at the next collection
      if i % 16 == 0 or i == #plan then log(string.format("gguf: %d/%d tensors", i, #plan)) end
    end
    files = nil
    w:close()
    return { tensors = #plan, arch = arch, elements = nbytes, chat_template = tok.chat_template }
  end)
  if not ok then
    if w then w:abort() end
    return nil, tostring(res)
  end
  res.seconds = qlora.sys.now() - t0
  return res
end

-- ---------------------------------------------------------------- Ollama

-- Go templates for Ollama, by the chat format the model's Jinja template uses
local TEMPLATES = {
  chatml = {
    template = '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' ..
      '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n',
    stop = { "<|im_start|>", "<|im_end|>" },
  },
  llama3 = {
    template = '{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}' ..
      '{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}' ..
      '<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>',
    stop = { "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>" },
  },
  mistral = {
    template = '[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]',
    stop = { "[INST]", "[/INST]" },
  },
}

function M.chat_format(chat_template)
  if type(chat_template) ~= "string" then return nil end
  if chat_template:find("<|im_start|>", 1, true) then return "chatml" end
  if chat_template:find("<|start_header_id|>", 1, true) then return "llama3" end
  if chat_template:find("[INST]", 1, true) then return "mistral" end
  return nil
end

function M.modelfile(gguf_path, chat_template)
  local base = gguf_path:match("([^/]+)$")
  local lines = { "# Ollama: ollama create NAME -f Modelfile   (then: ollama run NAME)", "FROM ./" .. base, "" }
  local fmt = M.chat_format(chat_template)
  local t = fmt and TEMPLATES[fmt]
  if t then
    lines[#lines + 1] = 'TEMPLATE """' .. t.template .. '"""'
    for _, s in ipairs(t.stop) do lines[#lines + 1] = 'PARAMETER stop "' .. s .. '"' end
  else
    lines[#lines + 1] = "# no chat template recognised: plain completion"
  end
  return table.concat(lines, "\n") .. "\n"
end

return M

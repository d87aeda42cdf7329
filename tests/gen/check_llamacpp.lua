-- tests/gen/check_llamacpp.lua — qlora's GGUF export checked in llama.cpp itself.
-- Run by tests/gen/check_llamacpp.sh (which builds llamacpp_run), never at test time:
--
--   bin/qlora tests/gen/check_llamacpp.lua run=/tmp/llamacpp_run out=/tmp/dir [write=1] [only=PATTERN]
--                                          [dry=NAME:FILE.gguf,...] [version="llama.cpp ..."]
--
-- 1. q4_k_m against llama.cpp's quantizer: each model exported at f32, quantized by
--    llama_model_quantize to Q4_K_M (what llama-quantize runs; no imatrix, so ggml's
--    reference quantizers), and exported by qlora at q4_k_m:
--    every tensor's type and bytes and every key must be the same. write=1 records the
--    types and byte hashes in tests/fixtures/gguf/q4_k_m.json for tests/lua/test_gguf.lua.
-- 2. Logits and greedy tokens: each export (f32, f16, bf16, q8_0, q4_k_m) run by llama.cpp
--    on a fixed prompt against qlora's CPU forward (f32) of the original weights, and for
--    the quantized types also of the weights dequantized back from the GGUF file.
-- 3. Tokenizers: llama.cpp's tokenizer reading our GGUF against qlora's (HF-exact) ids on
--    tests/fixtures/tokenizers/cases.json and the lines of seed.txt.
local E = require("qlora.gguf_export")
local G, T = qlora.gguf, qlora.tensor
local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)tests/gen/[^/]+$") or "./")
if ROOT == "" then ROOT = "./" end
local FX = ROOT .. "tests/fixtures/"
local GM = dofile(ROOT .. "tests/gen/gguf_models.lua")
local RUN = args.run or error("run= the llamacpp_run binary", 0)
local OUT = args.out or error("out= a scratch folder", 0)
local ONLY = args.only
os.execute("mkdir -p '" .. OUT .. "'")

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo __rc=$?")
  local o = p:read("a"); p:close()
  local rc = tonumber(o:match("__rc=(%d+)%s*$"))
  return o:gsub("__rc=%d+%s*$", ""), rc
end

local hash = GM.hash

local function read(path) local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s end

-- the models: the two tiny fixtures (64-wide rows: q4_k_m falls back to Q5_0/Q8_0) and the
-- two wide ones of gguf_models.lua (whole 256-value super-blocks: Q4_K/Q6_K)
local MODELS = {
  { name = "tiny-qwen2", dir = FX .. "models/tiny-qwen2", tok = FX .. "gguf/tok-qwen2" },
  { name = "tiny-llama", dir = FX .. "models/tiny-llama", tok = FX .. "gguf/tok-llama3" },
}
for _, name in ipairs({ "wide-qwen2", "wide-llama" }) do
  local s = GM.specs[name]
  local dir = GM.make(OUT .. "/" .. name, s)
  MODELS[#MODELS + 1] = { name = name, dir = dir, tok = FX .. s.tokenizer, wide = true,
                          source = hash(read(dir .. "/model.safetensors")) }
end

local function export(m, qtype)
  local out = string.format("%s/%s-%s.gguf", OUT, m.name, qtype)
  local res, err = E.export { model = m.dir, tokenizer = m.tok, out = out, type = qtype }
  assert(res, err)
  return out
end

local function wanted(name) return not ONLY or name:find(ONLY, 1, true) end

-- ------------------------------------------------------------------ 1. q4_k_m bytes
local golden = { llama_cpp = args.version or "", models = {} }
local bytes_ok = true
print("== q4_k_m: qlora's export against llama.cpp's Q4_K_M of qlora's f32 export")
for _, m in ipairs(MODELS) do
  if wanted(m.name) then
    local f32 = export(m, "f32")
    local ref = OUT .. "/" .. m.name .. "-llama-quantize.gguf"
    local log, rc = sh(string.format("'%s' quantize '%s' '%s'", RUN, f32, ref))
    assert(rc == 0, log)
    local ours = export(m, "q4_k_m")
    local a, b = assert(G.open(ours)), assert(G.open(ref))
    local rec = { source = m.source, tensors = {} }
    local same, n, counts = 0, 0, {}
    local bt = {}
    for _, t in ipairs(b:tensors()) do bt[t.name] = t end
    for _, t in ipairs(a:tensors()) do
      n = n + 1
      local r = bt[t.name]
      local mine = a:bytes(t.name)
      local ok = r and r.type == t.type and b:bytes(t.name) == mine
      if ok then same = same + 1 else
        bytes_ok = false
        print(string.format("   DIFFERENT %s: ours %s, llama-quantize %s", t.name, t.type, r and r.type or "(absent)"))
      end
      counts[t.type] = (counts[t.type] or 0) + 1
      rec.tensors[t.name] = { type = r and r.type or "?", hash = r and hash(b:bytes(t.name)) or "?" }
    end
    local nb = #b:tensors()
    -- every key and value as llama-quantize leaves them (it copies ours and sets file_type 15)
    local ka, ta = a:kv()
    local kb, tb = b:kv()
    local kdiff = {}
    for k, v in pairs(kb) do
      local x, y = v, ka[k]
      if type(x) == "table" then x, y = qlora.json.encode(x), y and qlora.json.encode(y) end
      if x ~= y or ta[k] ~= tb[k] then kdiff[#kdiff + 1] = k end
    end
    for k in pairs(ka) do if kb[k] == nil then kdiff[#kdiff + 1] = k end end
    if #kdiff > 0 then bytes_ok = false end
    local mix = {}
    for ty, c in pairs(counts) do mix[#mix + 1] = ty .. " x" .. c end
    table.sort(mix)
    print(string.format("   %-11s %d/%d tensors identical (llama-quantize wrote %d), keys differing: %s   [%s]", m.name,
                        same, n, nb, #kdiff > 0 and table.concat(kdiff, ",") or "none", table.concat(mix, ", ")))
    golden.models[m.name] = rec
    a:close(); b:close()
  end
end

-- ------------------------------------------------------------------ 2. logits and tokens
-- weights read back from a GGUF file into a Hugging Face folder (f32), Q/K rows of llama
-- permuted back, so qlora's forward runs on exactly the numbers llama.cpp multiplies
local function unpermute(t, n_head)
  local rows = t:size(1)
  local half = rows // n_head // 2
  if t:dim() == 1 then return t:view({ n_head, half, 2 }):transpose(2, 3):contiguous():view({ rows }) end
  local cols = t:size(2)
  return t:view({ n_head, half, 2, cols }):transpose(2, 3):contiguous():view({ rows, cols })
end
local function dequantized_model(m, gguf, dir)
  os.execute("mkdir -p '" .. dir .. "'")
  local cfg = qlora.json.decode(read(m.dir .. "/config.json"))
  local h = E.hparams(cfg)
  local permute = E.families[h.model_type].permute
  local src = T.load(m.dir .. "/model.safetensors")
  local f = assert(G.open(gguf))
  local w = {}
  for hf in pairs(src) do
    local g = E.gguf_name(hf)
    if g then
      local t = f:tensor(g)
      if permute and g:match("attn_q%.") then t = unpermute(t, h.n_head)
      elseif permute and g:match("attn_k%.") then t = unpermute(t, h.n_head_kv) end
      w[hf] = t
    end
  end
  f:close()
  assert(T.save(dir .. "/model.safetensors", w, { format = "pt" }))
  local fh = io.open(dir .. "/config.json", "wb"); fh:write(read(m.dir .. "/config.json")); fh:close()
  return dir
end

local function llamacpp(gguf, ids, n_new)
  local out, rc = sh(string.format("'%s' logits '%s' %d %s", RUN, gguf, n_new, table.concat(ids, " ")))
  assert(rc == 0, out)
  local logits, greedy = {}, {}
  for line in out:gmatch("[^\n]+") do
    local tag, rest = line:match("^(%a) (.*)$")
    if tag == "L" then
      local row = {}
      for v in rest:gmatch("%S+") do row[#row + 1] = tonumber(v) end
      table.remove(row, 1)
      logits[#logits + 1] = row
    elseif tag == "G" then
      for v in rest:gmatch("%S+") do greedy[#greedy + 1] = tonumber(v) end
    end
  end
  return logits, greedy
end

local function compare(ref_logits, ref_greedy, logits, greedy)
  local maxd, maxl, agree = 0, 0, 0
  for p, row in ipairs(logits) do
    local r = ref_logits[p]
    local am, bm = 1, 1
    for k = 1, #row do
      maxd = math.max(maxd, math.abs(row[k] - r[k]))
      maxl = math.max(maxl, math.abs(r[k]))
      if row[k] > row[am] then am = k end
      if r[k] > r[bm] then bm = k end
    end
    if am == bm then agree = agree + 1 end
  end
  local same = 0
  for i = 1, #ref_greedy do if greedy[i] == ref_greedy[i] then same = same + 1 else break end end
  return maxd, maxl, agree, same
end

local function qlora_run(dir, ids, n_new)
  local model = assert(qlora.model.load(dir))
  local lt = model:logits(ids):totable()
  local g = model:generate(ids, { max_new_tokens = n_new, temperature = 0, stop = {} })
  model:release()
  return lt, g
end

local N_NEW = 24
local TYPES = { "f32", "f16", "bf16", "q8_0", "q4_k_m" }
local tokens_ok = true
print("\n== logits and greedy tokens: llama.cpp on the export vs qlora's f32 CPU forward")
print(string.format("   %-11s %-7s %-8s %12s %10s %9s %8s", "model", "type", "qlora on", "max|dlogit|", "max|logit|",
                    "argmax", "greedy"))
for _, m in ipairs(MODELS) do
  if wanted(m.name) then
    local tok = assert(qlora.tokenizer.load(m.tok))
    local ids = tok:encode("The capital of France is Paris, and the capital of Germany is", { add_special = false })
    tok:close()
    local ref_l, ref_g = qlora_run(m.dir, ids, N_NEW)
    for _, qt in ipairs(TYPES) do
      local gguf = export(m, qt)
      local l, g = llamacpp(gguf, ids, N_NEW)
      local d, ml, ag, same = compare(ref_l, ref_g, l, g)
      print(string.format("   %-11s %-7s %-8s %12.3g %10.3g %6d/%-2d %5d/%-2d", m.name, qt, "original", d, ml, ag, #ids,
                          same, N_NEW))
      if qt == "f32" or qt == "f16" then tokens_ok = tokens_ok and same == N_NEW end
      if qt ~= "f32" then
        local dq = dequantized_model(m, gguf, OUT .. "/" .. m.name .. "-" .. qt .. "-dequant")
        local dl, dg = qlora_run(dq, ids, N_NEW)
        local d2, ml2, ag2, same2 = compare(dl, dg, l, g)
        print(string.format("   %-11s %-7s %-8s %12.3g %10.3g %6d/%-2d %5d/%-2d", "", "", "same wts", d2, ml2, ag2, #ids,
                            same2, N_NEW))
      end
    end
  end
end

-- ------------------------------------------------------------------ 3. tokenizers
print("\n== tokenizer ids: llama.cpp reading our GGUF vs qlora (HF-exact) on cases.json + seed.txt lines")
local cases = qlora.json.decode(read(FX .. "tokenizers/cases.json"))
local seed_lines = {}
for line in read(FX .. "tokenizers/seed.txt"):gmatch("[^\n]+") do seed_lines[#seed_lines + 1] = line end
local TOKS = {
  { name = "qwen2.5", dir = FX .. "tokenizers/qwen2.5" },
  { name = "llama3.1", dir = FX .. "tokenizers/llama3.1" },
  { name = "mistral-7b", dir = FX .. "tokenizers/mistral-7b" },
  { name = "tok-qwen2 (512)", dir = FX .. "gguf/tok-qwen2", cases = "qwen2.5" },
  { name = "tok-llama3 (512)", dir = FX .. "gguf/tok-llama3", cases = "llama3.1" },
}
for _, tk in ipairs(TOKS) do
  if wanted(tk.name) then
    local dir = OUT .. "/tokmodel-" .. tk.name:gsub("%W", "_")
    os.execute("rm -rf '" .. dir .. "'")
    qlora.llm.random_model(dir, { tokenizer = tk.dir, layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
    local gguf = dir .. ".gguf"
    assert(E.export { model = dir, out = gguf, type = "f16" })
    local texts = {}
    for _, c in ipairs(cases[tk.cases or tk.name]) do texts[#texts + 1] = c.text end
    for _, l in ipairs(seed_lines) do texts[#texts + 1] = l end
    texts[#texts + 1] = table.concat(seed_lines, "\n")
    local tok = assert(qlora.tokenizer.load(tk.dir))
    local function llama_ids(list, add)
      local rec = {}
      for i, x in ipairs(list) do rec[i] = #x .. "\n" .. x end
      local tf = dir .. ".texts"
      local fh = io.open(tf, "wb"); fh:write(table.concat(rec)); fh:close()
      local out, rc = sh(string.format("( '%s' tokenize '%s' '%s' %d 2>'%s.err' )", RUN, gguf, tf, add and 1 or 0, tf))
      assert(rc == 0, out)
      local lines = {}
      for line in (out .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
      -- tokens llama.cpp turns into control tokens by their look (its load warnings)
      local control = {}
      for id in read(tf .. ".err"):gmatch("control%-looking token: *(%d+)") do control[id] = true end
      return lines, control
    end
    for _, add in ipairs({ false, true }) do
      local lines = llama_ids(texts, add)
      local same, first_bad, ntok, bad, ours = 0, nil, 0, {}, {}
      for i, s in ipairs(texts) do
        local ids = tok:encode(s, { add_special = add })
        ntok = ntok + #ids
        if table.concat(ids, " ") == lines[i] then same = same + 1
        else
          bad[#bad + 1] = s; ours[#ours + 1] = table.concat(ids, " ")
          if not first_bad then first_bad = string.format("%q: ours {%s}, llama.cpp {%s}", s:sub(1, 60),
                                                         ours[#ours]:sub(1, 120), (lines[i] or ""):sub(1, 120)) end
        end
      end
      -- llama.cpp applies no Unicode normalizer (Qwen2's tokenizer.json has NFC): a text that
      -- differs is given again as Hugging Face's normalizer leaves it (decode(encode(text)))
      local after, ctl = 0, 0
      if #bad > 0 then
        local norm = {}
        for i, s in ipairs(bad) do norm[i] = tok:decode(tok:encode(s, { add_special = false })) end
        local l2, control = llama_ids(norm, add)
        for i = 1, #bad do
          local heuristic = false
          for id in (l2[i] or ""):gmatch("%d+") do heuristic = heuristic or control[id] end
          if l2[i] == ours[i] then after = after + 1
          elseif heuristic then
            ctl = ctl + 1
            print(string.format("     llama.cpp's control-token heuristic: %q: ours {%s}, llama.cpp {%s}", bad[i]:sub(1, 80),
                                ours[i]:sub(1, 160), (l2[i] or ""):sub(1, 160)))
          else print(string.format("     not explained: %q: ours {%s}, llama.cpp {%s}", bad[i]:sub(1, 80), ours[i]:sub(1, 160),
                                   (l2[i] or ""):sub(1, 160))) end
        end
      end
      if same + after + ctl ~= #texts then tokens_ok = false end
      print(string.format("   %-17s add_special=%-5s %d/%d texts identical (%d tokens)%s", tk.name, tostring(add), same,
                          #texts, ntok, #bad > 0 and string.format("; of the %d others, %d identical once normalized " ..
                          "as the tokenizer's normalizer does, %d differ by llama.cpp's control-token heuristic; " ..
                          "first difference %s", #bad, after, ctl, first_bad) or ""))
    end
    tok:close()
  end
end

-- ------------------------------------------------------------------ 4. the mix on real shapes
-- dry=NAME:FILE,...: f16 exports of real-shaped models (see check_llamacpp.sh); llama.cpp's
-- --dry-run choice for every weight against ours
golden.dry_run = {}
for spec in (args.dry or ""):gmatch("[^,]+") do
  local name, file = spec:match("^([^:]+):(.+)$")
  local out, rc = sh(string.format("( '%s' quantize '%s' /dev/null dry 2>/dev/null )", RUN, file))
  assert(rc == 0, out)
  local chosen = {}
  for n, ty in ("\n" .. out):gmatch("\nT (%S+) (%S+)") do chosen[n] = ty end
  local f = assert(G.open(file))
  local kv = f:kv()
  local arch = kv["general.architecture"]
  local rec = { n_layer = kv[arch .. ".block_count"], tied = true, tensors = {} }
  for _, t in ipairs(f:tensors()) do if t.name == "output.weight" then rec.tied = false end end
  local same, n = 0, 0
  for _, t in ipairs(f:tensors()) do
    if #t.shape == 2 and t.name:match("weight$") and not t.name:match("_norm%.weight$") then
      n = n + 1
      local ours = E.q4_k_m_type(t.name, t.shape, { n_layer = rec.n_layer, tied = rec.tied, is_70b = false })
      if ours:upper() == (chosen[t.name] or "?"):upper() then same = same + 1
      else print(string.format("   DIFFERENT %s %s: ours %s, llama.cpp %s", name, t.name, ours, tostring(chosen[t.name]))) end
      rec.tensors[t.name] = { type = chosen[t.name], shape = t.shape }
    end
  end
  if same ~= n then bytes_ok = false end
  f:close()
  golden.dry_run[name] = rec
  print(string.format("== q4_k_m mix on %s (%d layers): %d/%d weights get llama.cpp's type", name, rec.n_layer, same, n))
end

if args.write == "1" and not ONLY then
  local path = FX .. "gguf/q4_k_m.json"
  local fh = assert(io.open(path, "wb"))
  fh:write(qlora.json.encode(golden, { indent = 1 }))
  fh:write("\n"); fh:close()
  print("\nwrote " .. path)
end
print(string.format("\nq4_k_m bytes: %s; f32/f16 greedy tokens and tokenizer ids: %s", bytes_ok and "identical" or "DIFFERENT",
                    tokens_ok and "identical" or "DIFFERENT"))
os.exit((bytes_ok and tokens_ok) and 0 or 1)

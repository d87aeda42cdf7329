-- qlora.tokenizer from Lua: ids and decode against HF tokenizers
-- (tests/gen/gen_tokenizer.py -> cases.lua), chat templates against
-- transformers (tests/gen/gen_tokenizer_chat.py -> chat.lua).
local T = ...
local tokenizer = qlora.tokenizer
local names = { "qwen2.5", "qwen3", "llama3.1", "mistral-7b", "gpt2" }
local cases = dofile(T.fixture("tokenizers/cases.lua"))
local chat = dofile(T.fixture("tokenizers/chat.lua"))

local cache = {}
local function load(name)
  if not cache[name] then cache[name] = assert(tokenizer.load(T.fixture("tokenizers/" .. name))) end
  return cache[name]
end

T.test("encode and decode match HF tokenizers", function()
  for _, name in ipairs(names) do
    local tok = load(name)
    for i, c in ipairs(cases[name]) do
      T.eq(tok:encode(c.text, { add_special = false }), c.ids, name .. " case " .. i)
      T.eq(tok:encode(c.text), c.ids_special, name .. " case " .. i .. " with special tokens")
      T.eq(tok:count(c.text, { add_special = false }), #c.ids, name .. " count " .. i)
      T.eq(tok:decode(c.ids), c.decoded, name .. " decode " .. i)
    end
  end
end)

T.test("encode_batch equals encode", function()
  local tok = load("qwen2.5")
  local texts = {}
  for i, c in ipairs(cases["qwen2.5"]) do texts[i] = c.text end
  local got = tok:encode_batch(texts, { add_special = false })
  T.eq(#got, #texts)
  for i, c in ipairs(cases["qwen2.5"]) do T.eq(got[i], c.ids, "batch item " .. i) end
end)

T.test("chat templates match transformers", function()
  for _, c in ipairs(chat.cases) do
    local tok = load(c.tokenizer)
    local s = tok:apply_chat_template(chat.conversations[c.conv], {
      add_generation_prompt = c.add_generation_prompt, enable_thinking = c.enable_thinking })
    T.eq(s, c.expected, c.tokenizer .. " conversation " .. c.conv)
  end
  local ids = load("qwen2.5"):apply_chat_template({ { role = "user", content = "hi" } }, { tokenize = true })
  T.eq(ids[1], 151644)
end)

T.test("special tokens and config", function()
  local tok = load("qwen2.5")
  T.eq(tok.eos_token, "<|im_end|>")
  T.eq(tok.eos_id, 151645)
  T.eq(tok:token_to_id("<|im_start|>"), 151644)
  T.eq(tok:id_to_token(151644), "<|im_start|>")
  T.eq(tok:decode({ 151644, 872, 198, 6023, 151645 }, { skip_special = true }), "user\nhi")
  T.truthy(tok.chat_template and tok.chat_template:find("im_start", 1, true))
  T.eq(load("llama3.1").bos_id, 128000)
end)

T.test("errors", function()
  local tok, err = tokenizer.load("/nonexistent/dir")
  T.eq(tok, nil)
  T.truthy(err:find("tokenizer.json"), err)
  tok, err = tokenizer.load('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
  T.eq(tok, nil)
  T.truthy(err:find("merges%[0%]"), err)
  local t2 = assert(tokenizer.load(T.fixture("tokenizers/gpt2")))
  T.eq(t2:encode("hello world"), { 31373, 995 })
  t2:close()
  T.raises(function() t2:encode("x") end, "after close")
  T.raises(function() load("gpt2"):apply_chat_template({ { role = "user", content = "x" } }) end, "chat_template")
end)

-- every template of tests/fixtures/chat_templates/golden.json (tests/gen/gen_chat_templates.py,
-- transformers' apply_chat_template), rendered by the Jinja interpreter; the file templates are
-- loaded as chat_template.jinja beside a tiny tokenizer.json, with the model's special tokens
T.test("chat templates as Jinja match transformers", function()
  local golden = assert(qlora.json.decode(assert(io.open(T.fixture("chat_templates/golden.json"), "rb")):read("a")))
  local toks = {}
  for name, spec in pairs(golden.templates) do
    if spec.tokenizer then
      toks[name] = assert(tokenizer.load(T.fixture(spec.tokenizer)))
    else
      local dir = T.tmpdir() .. "/" .. name
      assert(qlora.sys.mkdir(dir))
      assert(qlora.sys.write_file(dir .. "/tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'))
      local cfg = { chat_template = "overridden by chat_template.jinja" }
      for k, v in pairs(spec.tokens) do cfg[k] = v end
      assert(qlora.sys.write_file(dir .. "/tokenizer_config.json", qlora.json.encode(cfg)))
      local fh = assert(io.open(T.fixture("chat_templates/" .. spec.file), "rb"))
      assert(qlora.sys.write_file(dir .. "/chat_template.jinja", fh:read("a")))
      fh:close()
      toks[name] = assert(tokenizer.load(dir))
    end
  end
  local n = 0
  for _, c in ipairs(golden.cases) do
    local opts = { add_generation_prompt = c.add_generation_prompt, enable_thinking = c.enable_thinking,
                   tools = c.tools and golden.tools or nil, now = golden.now }
    local conv = golden.conversations[c.conv + 1]
    local label = c.template .. " conversation " .. c.conv
    if c.error then
      T.raises(function() toks[c.template]:apply_chat_template(conv, opts) end, c.error:gsub("%p", "%%%0"))
    else
      T.eq(toks[c.template]:apply_chat_template(conv, opts), c.expected, label)
    end
    n = n + 1
  end
  T.truthy(n >= 100, "golden cases: " .. n)
  -- tools = {} is an empty list of tools: rendered as no tools (it used to be refused as an object)
  for _, c in ipairs(golden.cases) do
    if not c.tools and not c.error then
      local conv = golden.conversations[c.conv + 1]
      local opts = { add_generation_prompt = c.add_generation_prompt, enable_thinking = c.enable_thinking, now = golden.now }
      local without = toks[c.template]:apply_chat_template(conv, opts)
      opts.tools = {}
      T.eq(toks[c.template]:apply_chat_template(conv, opts), without, c.template .. ": tools = {}")
    end
  end
  -- the assistant tokens of a training record come from the same rendering
  local ids, labels = qlora.train.encode_record(toks["qwen3"], { messages = golden.conversations[3] })
  T.truthy(ids, labels)
  local kept = {}
  for i, l in ipairs(labels) do if l ~= -100 then kept[#kept + 1] = ids[i] end end
  T.truthy(#kept > 0 and #kept < #ids)
end)

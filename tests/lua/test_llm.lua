-- qlora.llm: model + tokenizer plumbing on a tiny random model built with the
-- GPT-2 and Qwen2.5 tokenizers: streamed text equals the decoded ids, chat turns
-- go through the tokenizer's chat template, and the model folder round-trips.
local T = ...
local llm = qlora.llm

T.test("random_model writes a loadable HF folder; streaming equals decode", function()
  local dir = T.tmpdir() .. "/m"
  llm.random_model(dir, { tokenizer = T.fixture("tokenizers/gpt2"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  local lm = assert(llm.load(dir))
  T.eq(lm.model:config().vocab_size, lm.tokenizer.vocab_size)
  local streamed = {}
  local text, ids = lm:generate("Hello world", { max_new_tokens = 12, stop = {}, write = function(s) streamed[#streamed + 1] = s end })
  T.eq(#ids, 12)
  T.eq(table.concat(streamed), text)
  T.eq(text, lm.tokenizer:decode(ids, { skip_special = true }))
  -- greedy is deterministic; the same prompt as ids gives the same continuation
  local text2 = lm:generate(lm.tokenizer:encode("Hello world"), { max_new_tokens = 12, stop = {}, write = false })
  T.eq(text2, text)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("ask() renders the chat template and stops at eos", function()
  local dir = T.tmpdir() .. "/m"
  llm.random_model(dir, { tokenizer = T.fixture("tokenizers/qwen2.5"), layers = 1, hidden = 32, heads = 2, kv_heads = 1 })
  local lm = assert(llm.load(dir))
  local seen
  local orig = lm.model
  -- record the prompt ids the model receives
  lm.model = setmetatable({ generate = function(_, ids, o) seen = ids; return orig:generate(ids, o) end }, { __index = orig })
  lm:ask("hi", { max_new_tokens = 3, write = false })
  local expect = lm.tokenizer:apply_chat_template({ { role = "user", content = "hi" } }, { add_generation_prompt = true, tokenize = true })
  T.eq(seen, expect)
  T.truthy(lm.tokenizer:decode(seen):find("<|im_start|>assistant\n", 1, true))
  os.execute("rm -rf '" .. dir .. "'")
end)

T.test("load without a tokenizer explains what is missing", function()
  local lm, err = llm.load(T.fixture("models/tiny-qwen2"))
  T.eq(lm, nil)
  T.truthy(err:find("tokenizer"), err)
end)

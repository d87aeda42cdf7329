-- LoRA training step on the CPU reference against PEFT (tests/gen/gen_train.py):
-- the loss and every adapter gradient, packed documents, gradient accumulation,
-- gradient checkpointing, and 20 AdamW steps with warmup + cosine and clipping.
local T = ...
local tensor, model, lora = qlora.tensor, qlora.model, qlora.lora

local function rel(a, r) return ((a - r):abs():max() / r:abs():max()):item() end

local function worst_grad(lo, g, prefix)
  local worst, wk, n = 0, nil, 0
  for k, t in pairs(lo:grads()) do
    local r = assert(g[prefix .. k], "golden lacks " .. prefix .. k)
    local e = rel(t, r)
    n = n + 1
    if e > worst then worst, wk = e, k end
  end
  return worst, wk, n
end

for _, name in ipairs({ "tiny-qwen2", "tiny-llama" }) do
  local dir = T.fixture("models/" .. name)
  local function setup()
    local g = assert(tensor.load(dir .. "/train_golden.safetensors"))
    local m = assert(model.load(dir))
    local lo = assert(lora.load(m, dir .. "/peft-adapter"))
    return g, m, lo
  end

  T.test(name .. ": loss and all 56 adapter gradients match PEFT (fp32, <= 1e-4)", function()
    local g, _, lo = setup()
    local sum, n = lo:forward_backward(g["batch.ids"]:totable(), g["batch.labels"]:totable())
    T.near(sum / n, g.loss:item(), 1e-5 * g.loss:item())
    local worst, wk, count = worst_grad(lo, g, "grad.")
    T.eq(count, 2 * 7 * 2)
    T.truthy(worst <= 1e-4, string.format("%s: relative error %.3g", wk, worst))
  end)

  T.test(name .. ": packed documents: loss and gradients match PEFT run per document", function()
    local g, _, lo = setup()
    local mg = assert(tensor.load(dir .. "/golden.safetensors"))   -- the packed row of gen_models.py
    local lens = mg["packed.doc_lens"]:totable()
    local sum, n = lo:forward_backward(mg["packed.ids"]:totable()[1], mg["packed.labels"]:totable()[1], { doc_lens = lens })
    T.near(sum / n, g["packed.loss"]:item(), 1e-5 * sum / n)
    local worst, wk = worst_grad(lo, g, "packed.grad.")
    T.truthy(worst <= 1e-4, string.format("%s: relative error %.3g", wk, worst))
  end)

  T.test(name .. ": k micro-batches with a shared denominator equal one batch", function()
    local g, _, lo = setup()
    local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
    local _, total = lo:forward_backward(ids, labels)
    local full = lo:grads()
    lo:zero_grad()
    local s1, n1 = lo:forward_backward({ ids[1] }, { labels[1] }, { denom = total })
    local s2, n2 = lo:forward_backward({ ids[2] }, { labels[2] }, { denom = total })
    T.eq(n1 + n2, total)
    T.truthy(n1 ~= n2, "the rows have different target counts, so a per-micro-batch mean would be wrong")
    -- the same sums in another order (two products accumulated instead of one over both rows):
    -- equal to f32 rounding, which OpenBLAS's kernel choice for this CPU puts at ~1e-6 of the scale
    for k, t in pairs(lo:grads()) do T.truthy(rel(t, full[k]) <= 1e-5, k) end
    -- the bug other stacks had: averaging per micro-batch gives a different gradient
    lo:zero_grad()
    lo:forward_backward({ ids[1] }, { labels[1] }, { denom = n1 * 2 })
    lo:forward_backward({ ids[2] }, { labels[2] }, { denom = n2 * 2 })
    local worst = 0
    for k, t in pairs(lo:grads()) do worst = math.max(worst, rel(t, full[k])) end
    T.truthy(worst > 1e-3, "mean-of-means must differ from the token mean")
  end)

  T.test(name .. ": gradient checkpointing gives the same gradients", function()
    local g, _, lo = setup()
    local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
    lo:forward_backward(ids, labels)
    local a = lo:grads()
    lo:zero_grad()
    lo:forward_backward(ids, labels, { checkpointing = true })
    for k, t in pairs(lo:grads()) do T.eq((t - a[k]):abs():max():item(), 0, k) end
  end)

  -- checkpointing = "host": the layer inputs go out through two staging buffers and come back one
  -- layer ahead (decoder.c). On the CPU the copies are plain, so any slip of layer or slot order
  -- shows as a different gradient; the second and third steps reuse the host memory of the first.
  T.test(name .. ": checkpoints in host memory give the same gradients, step after step", function()
    local g, _, lo = setup()
    local mg = assert(tensor.load(dir .. "/golden.safetensors"))
    local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
    local pids, lens = mg["packed.ids"]:totable()[1], mg["packed.doc_lens"]:totable()
    local cases = {
      { ids, labels, {} },
      { { pids }, { mg["packed.labels"]:totable()[1] }, { doc_lens = lens } },
      { { ids[2] }, { labels[2] }, {} },   -- a smaller batch after a larger one
    }
    for i, c in ipairs(cases) do
      lo:zero_grad()
      local s1, n1 = lo:forward_backward(c[1], c[2], { doc_lens = c[3].doc_lens, checkpointing = true })
      local a = lo:grads()
      lo:zero_grad()
      local s2, n2 = lo:forward_backward(c[1], c[2], { doc_lens = c[3].doc_lens, checkpointing = "host" })
      T.eq(s2, s1, "loss, case " .. i)
      T.eq(n2, n1)
      for k, t in pairs(lo:grads()) do T.eq((t - a[k]):abs():max():item(), 0, k .. ", case " .. i) end
    end
    T.raises(function() lo:forward_backward(ids, labels, { checkpointing = "disk" }) end, 'true, false or "host"')
  end)

  T.test(name .. ": 20 AdamW steps follow torch (warmup + cosine, clipping at 1.0)", function()
    local g, _, lo = setup()
    local train = qlora.train
    local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
    local want, norms = g["traj.loss"]:totable(), g["traj.gnorm"]:totable()
    for step = 1, 20 do
      lo:zero_grad()
      local sum, n = lo:forward_backward(ids, labels)
      T.near(sum / n, want[step], 2e-5 * want[step], "loss at step " .. step)
      local norm = train.clip_grad_norm(lo, 1.0)
      T.near(norm, norms[step], 1e-4 * norms[step], "grad norm at step " .. step)
      local lr = 2e-3 * train.schedule("cosine", step - 1, 3, 20)
      lo:adamw { lr = lr, weight_decay = 0.01, step = step }
    end
    local worst, wk = 0
    for k, t in pairs(lo:params()) do
      local e = rel(t, g["final." .. k])
      if e > worst then worst, wk = e, k end
    end
    T.truthy(worst <= 1e-4, string.format("final %s: relative error %.3g", wk or "?", worst))
  end)

  T.test(name .. ": our adapter files have PEFT's keys, shapes and dtypes, and load back", function()
    local g, m, lo = setup()
    local out = T.tmpdir()
    assert(lo:save(out))
    local mine = assert(tensor.load(out .. "/adapter_model.safetensors"))
    local peft = assert(tensor.load(dir .. "/peft-adapter/adapter_model.safetensors"))
    for k, t in pairs(peft) do
      T.truthy(mine[k], "missing " .. k)
      T.eq(mine[k].shape, t.shape, k)
      T.eq(mine[k].dtype, t.dtype, k)
      T.eq((mine[k] - t):abs():max():item(), 0, k)
    end
    for k in pairs(mine) do T.truthy(peft[k], "extra key " .. k) end
    local back = assert(lora.load(m, out))
    T.eq(back.r, 4); T.eq(back.alpha, 8)
    local cfg = io.open(out .. "/adapter_config.json"):read("a")
    T.truthy(cfg:find('"peft_type": "LORA"', 1, true) and cfg:find('"task_type": "CAUSAL_LM"', 1, true), cfg)
    os.execute("rm -rf '" .. out .. "'")
  end)
end

T.test("new adapters start as PEFT does: B = 0 (no change), A ~ U(+-1/sqrt(in))", function()
  local m = assert(model.load(T.fixture("models/tiny-llama")))
  local lo = lora.new(m, { r = 8, alpha = 16, targets = { "q_proj", "v_proj" }, layers = { 1 }, seed = 3 })
  T.eq(lo:num_params(), 8 * (64 + 64) + 8 * (64 + 16))
  local p = lo:params()
  local n = 0
  for k, t in pairs(p) do
    n = n + 1
    T.truthy(k:find("layers%.1%."), k)
    if k:find("lora_B") then T.eq(t:abs():max():item(), 0, k)
    else
      local bound = 1 / math.sqrt(64)
      T.truthy(t:abs():max():item() <= bound and t:abs():max():item() > 0.9 * bound, k)
    end
  end
  T.eq(n, 4)
  local g = assert(tensor.load(T.fixture("models/tiny-llama/golden.safetensors")))
  T.truthy(rel(lo:logits(g.ids:totable()), g.logits) <= 1e-4, "a fresh adapter changes nothing")
  T.raises(function() lora.new(m, { targets = { "lm_head" } }) end, "unknown LoRA target")
end)

T.test("rslora scales by alpha / sqrt(r)", function()
  local m = assert(model.load(T.fixture("models/tiny-qwen2")))
  local g = assert(tensor.load(T.fixture("models/tiny-qwen2/golden.safetensors")))
  local ids, labels = g.ids:totable(), g.labels:totable()
  -- one AdamW step from B = 0, then the loss: equal scales give equal results
  local function after_one_step(opts)
    opts.seed = 1
    local lo = lora.new(m, opts)
    lo:forward_backward(ids, labels)
    lo:adamw { lr = 1e-2, step = 1 }
    return (lo:loss(ids, labels))
  end
  local rs = after_one_step { r = 4, alpha = 8, rslora = true }     -- 8 / sqrt(4) = 4
  local same = after_one_step { r = 4, alpha = 16 }                  -- 16 / 4 = 4
  local other = after_one_step { r = 4, alpha = 8 }                  -- 8 / 4 = 2
  T.eq(rs, same)
  T.truthy(math.abs(rs - other) > 1e-6, "a different scale must change the result")
end)

T.test("dropout applies in training steps only, with a new mask each step", function()
  local m = assert(model.load(T.fixture("models/tiny-qwen2")))
  local g = assert(tensor.load(T.fixture("models/tiny-qwen2/golden.safetensors")))
  local ids, labels = g.ids:totable(), g.labels:totable()
  local lo = lora.new(m, { r = 4, alpha = 8, dropout = 0.3, seed = 1 })
  lo:forward_backward(ids, labels)            -- one step so B is no longer zero
  lo:adamw { lr = 1e-2, step = 1 }
  local eval1, eval2 = lo:loss(ids, labels), lo:loss(ids, labels)
  T.eq(eval1, eval2)                           -- evaluation: no dropout, deterministic
  local s_eval = lo:forward_backward(ids, labels, { train = false })
  local s1, n1 = lo:forward_backward(ids, labels, { train = true })
  local s2 = lo:forward_backward(ids, labels, { train = true })
  T.near(s_eval / n1, eval1, 1e-9 * eval1)     -- train = false is the evaluation forward
  T.truthy(s1 ~= s_eval and s2 ~= s_eval and s1 ~= s2, "dropout changes the loss and its mask changes per step")
end)

-- The MLP a slice of rows at a time (decoder.c; by default above 8192 tokens, here forced to
-- 5 or 7 rows): each token's MLP is its own, so the loss is that of the whole batch and the
-- gradients are the same sums in another order. With dropout the slices must draw each
-- element's mask as the whole batch does, or the two runs would differ by far more.
T.test("the MLP in slices of rows: the same loss and gradients, with dropout and host checkpoints", function()
  local m = assert(model.load(T.fixture("models/tiny-qwen2")))
  local g = assert(tensor.load(T.fixture("models/tiny-qwen2/golden.safetensors")))
  local ids, labels = g.ids:totable(), g.labels:totable()
  T.truthy(#ids * #ids[1] > 14, "more rows than two slices")
  for _, drop in ipairs({ 0, 0.3 }) do
    local lo = lora.new(m, { r = 4, alpha = 8, dropout = drop, seed = 1 })
    lo:forward_backward(ids, labels)            -- B is no longer zero
    lo:adamw { lr = 1e-2, step = 1 }
    local function run(opts)
      lo:zero_grad()
      lo:set_dropout_step(7)
      local s = lo:forward_backward(ids, labels, opts)
      return s, lo:grads()
    end
    local s0, g0 = run({})
    for _, o in ipairs({ { checkpointing = true, mlp_rows = 5 }, { checkpointing = "host", mlp_rows = 7 } }) do
      local s, gs = run(o)
      local what = string.format("dropout %.1f, mlp_rows %d", drop, o.mlp_rows)
      T.near(s, s0, 1e-6 * math.abs(s0), "loss, " .. what)
      for k, t in pairs(gs) do
        T.truthy(rel(t, g0[k]) <= 1e-5, string.format("%s, %s: relative error %.3g", k, what, rel(t, g0[k])))
      end
    end
    -- every layer's activations kept: no slices (mlp_rows has nothing to act on), same numbers
    local s1 = run({ mlp_rows = 5 })
    T.eq(s1, s0)
    local l0, l5 = lo:loss(ids, labels), lo:loss(ids, labels, { mlp_rows = 5 })
    T.near(l5, l0, 1e-6 * l0, "evaluation loss in slices, dropout " .. drop)
  end
end)

for _, name in ipairs({ "tiny-qwen2", "tiny-llama" }) do
  T.test(name .. ": merge equals PEFT's merge_and_unload bit for bit; transformers' logits on it", function()
    local dir = T.fixture("models/" .. name)
    local g = assert(tensor.load(dir .. "/train_golden.safetensors"))
    local m = assert(model.load(dir))
    local lo = assert(lora.load(m, dir .. "/peft-adapter"))
    local out = T.tmpdir() .. "/merged"
    local note = assert(lo:merge(dir, out))
    T.truthy(note:find("original weights"), note)
    local w = assert(tensor.load(out .. "/model.safetensors"))
    local n = 0
    for k, t in pairs(g) do
      if k:match("^merged%.model%.") then
        n = n + 1
        local mine = assert(w[k:sub(8)], k)
        T.eq(mine.dtype, "bf16")
        T.eq((mine:float() - t:float()):abs():max():item(), 0, k)
      end
    end
    T.eq(n, 14)
    local mm = assert(model.load(out))
    T.truthy(rel(mm:logits(g["batch.ids"]:totable()), g["merged.logits_bf16"]) <= 1e-4)
    os.execute("rm -rf '" .. out .. "'")
  end)
end

T.test("merge from a 4-bit checkpoint dequantizes (never re-quantizes) and says so", function()
  local dir = T.fixture("models/tiny-llama")
  local w = assert(tensor.load(dir .. "/model.safetensors"))
  local q = {}
  for k, t in pairs(w) do q[k] = (k:find("_proj%.weight$") and qlora.nf4.quantize(t)) or t end
  local bnb = T.tmpdir() .. "/bnb"
  qlora.sys.mkdir(bnb)
  assert(qlora.nf4.save(bnb .. "/model.safetensors", q))
  local cfg = io.open(dir .. "/config.json"):read("a")
  cfg = cfg:gsub('^{', '{\n  "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true, ' ..
                       '"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true},', 1)
  assert(qlora.sys.write_file(bnb .. "/config.json", cfg))
  local m4 = assert(model.load(bnb))
  T.eq(m4:config().nf4, true)
  local lo = assert(lora.load(m4, dir .. "/peft-adapter"))
  local out = T.tmpdir() .. "/merged4"
  local note = assert(lo:merge(bnb, out))
  T.truthy(note:find("4%-bit"), note)
  local merged = assert(tensor.load(out .. "/model.safetensors"))
  local k = "model.layers.0.self_attn.q_proj.weight"
  T.eq(merged[k].dtype, "bf16")
  T.eq(merged[k .. ".absmax"], nil)
  T.truthy(not io.open(out .. "/config.json"):read("a"):find("quantization_config"), "the merged config is not 4-bit")
  assert(model.load(out))
  os.execute("rm -rf '" .. bnb .. "' '" .. out .. "'")
end)

T.test("a merge that fails leaves no output folder behind", function()
  local m = assert(model.load(T.fixture("models/tiny-qwen2")))
  local lo = assert(lora.load(m, T.fixture("models/tiny-qwen2/peft-adapter")))
  local out = T.tmpdir() .. "/merged"
  -- the wrong base model: its projections have other shapes
  local note, err = lo:merge(T.fixture("models/tiny-llama"), out)
  T.eq(note, nil)
  T.truthy(err:find("shape") or err:find("adapter"), err)
  T.eq(qlora.sys.exists(out), false)
  local left = io.popen("ls -d '" .. out .. "'.tmp* 2>/dev/null"):read("a")
  T.eq(left, "")
end)

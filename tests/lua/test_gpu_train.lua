-- Training on the GPU against the CPU reference (tests/gpu/run.sh runs this on the GPU
-- machine; without a CUDA device every test skips). The same model and adapter are
-- loaded on both; the CUDA decoder computes in bf16 with f32 accumulation, so the
-- comparisons use the tolerances below, each justified where it is set.
local T = ...
local tensor, model, lora, train = qlora.tensor, qlora.model, qlora.lora, qlora.train

local has_gpu = qlora.device.count() > 0
local function need_gpu() if not has_gpu then T.skip("no CUDA device") end end

-- max |a - r| / max |r| over a whole tensor: the error relative to the tensor's scale
local function rel(a, r) return ((a - r):abs():max() / r:abs():max()):item() end

-- bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per value). A loss is a
-- mean over many tokens of f32 logsumexps of bf16-rounded products: errors average out,
-- so 5e-3 relative is several roundings' worth. A gradient passes through ~10 bf16
-- roundings per layer on its way back (activations, dy casts, products): 3e-2 of the
-- tensor's largest value.
local LOSS_TOL, GRAD_TOL = 5e-3, 3e-2
-- With checkpointing the GPU keeps each layer's input as bf16 (decoder.c) and the residual
-- stream continues from that rounded value, as the recomputation sees it: one more rounding of
-- the stream per layer, which every later activation and gradient inherits. Measured on the
-- H200 (2026-12-02) for the packed NF4 case below: worst 0.029-0.032 across the three attention
-- kernels (flash, gemm, warp), while the steps without checkpointing stay at or below 0.026;
-- 4e-2 keeps a margin over that.
local CKPT_GRAD_TOL = 4e-2

for _, name in ipairs({ "tiny-qwen2", "tiny-llama", "tiny-mistral" }) do
  local dir = T.fixture("models/" .. name)
  -- the same adapter on a CPU model and a GPU model: the fixture's PEFT adapter, or (tiny-mistral
  -- has none) a fresh one given a non-zero B by one CPU step and saved, so both load the same numbers
  local function pair(opts)
    local c = assert(model.load(dir, opts))
    local g = assert(model.load(dir, { device = "cuda", quant = opts and opts.quant }))
    local adapter = dir .. "/peft-adapter"
    if not io.open(adapter .. "/adapter_config.json") then
      adapter = T.tmpdir()
      local lo = assert(lora.new(c, { r = 4, alpha = 8, seed = 3 }))
      local ids = assert(tensor.load(dir .. "/golden.safetensors")).ids:totable()
      lo:forward_backward(ids, ids); lo:adamw { lr = 1e-2, step = 1 }
      assert(lo:save(adapter))
    end
    return c, g, assert(lora.load(c, adapter)), assert(lora.load(g, adapter))
  end

  local function batch()
    local tg = io.open(dir .. "/train_golden.safetensors") and assert(tensor.load(dir .. "/train_golden.safetensors"))
    if tg then return tg["batch.ids"]:totable(), tg["batch.labels"]:totable() end
    local gd = assert(tensor.load(dir .. "/golden.safetensors"))
    return gd.ids:totable(), gd.labels:totable()
  end

  T.test(name .. ": GPU step: loss and every LoRA gradient match the CPU reference", function()
    need_gpu()
    local _, _, lc, lg = pair()
    local ids, labels = batch()
    local sc, nc = lc:forward_backward(ids, labels)
    local sg, ng = lg:forward_backward(ids, labels)
    T.eq(ng, nc)
    T.near(sg / ng, sc / nc, LOSS_TOL * sc / nc, "loss")
    local want, worst, wk, count = lc:grads(), 0, nil, 0
    for k, t in pairs(lg:grads()) do
      local e = rel(t, want[k])
      count = count + 1
      if e > worst then worst, wk = e, k end
    end
    T.truthy(count > 0)
    print(string.format("    worst gradient error %.4f of tolerance %.2f (%s)", worst, GRAD_TOL, wk))
    T.truthy(worst <= GRAD_TOL, string.format("%s: relative error %.3g", wk, worst))
  end)

  T.test(name .. ": GPU step with packed documents, checkpointing and NF4 weights", function()
    need_gpu()
    local _, _, lc, lg = pair({ quant = "nf4" })
    local gd = assert(tensor.load(dir .. "/golden.safetensors"))
    local ids, lens = gd["packed.ids"]:totable()[1], gd["packed.doc_lens"]:totable()
    local sc, nc = lc:forward_backward(ids, ids, { doc_lens = lens })
    local sg, ng = lg:forward_backward(ids, ids, { doc_lens = lens, checkpointing = true })
    T.eq(ng, nc)
    T.near(sg / ng, sc / nc, LOSS_TOL * sc / nc, "loss")
    local want, worst, wk = lc:grads(), 0, nil
    for k, t in pairs(lg:grads()) do
      local e = rel(t, want[k])
      if e > worst then worst, wk = e, k end
    end
    print(string.format("    worst gradient error %.4f of tolerance %.2f (%s)", worst, CKPT_GRAD_TOL, wk))
    T.truthy(worst <= CKPT_GRAD_TOL, string.format("%s: relative error %.3g", wk, worst))
  end)

  -- checkpointing = "host": the same kernels on the same values, only the layer inputs travel
  -- through page-locked host memory on a copy stream (decoder_ops.cu, ordered by events), so
  -- the loss and the gradients must be those of the checkpoints kept on the device, up to the
  -- device's own run-to-run noise (the loss sum is a double atomicAdd over rows; cuBLASLt may
  -- reduce in any order), measured here by running the device checkpoints twice. A copy that
  -- raced its compute would give NaN or wrong layers, far outside that. Three steps: the host
  -- memory and the copy stream's events are reused.
  T.test(name .. ": GPU checkpoints in host memory give the device checkpoints' gradients", function()
    need_gpu()
    local _, _, _, lg = pair({ quant = "nf4" })
    local gd = assert(tensor.load(dir .. "/golden.safetensors"))
    local ids, lens = gd["packed.ids"]:totable()[1], gd["packed.doc_lens"]:totable()
    local function run(ck)
      lg:zero_grad()
      local s = lg:forward_backward(ids, ids, { doc_lens = lens, checkpointing = ck })
      return s, lg:grads()
    end
    for step = 1, 3 do
      local s1, g1 = run(true)
      local s1b, g1b = run(true)
      local s2, g2 = run("host")
      T.truthy(math.abs(s2 - s1) <= 2 * math.abs(s1b - s1) + 1e-12 * math.abs(s1),
               string.format("loss at step %d: %.17g host, %.17g and %.17g device", step, s2, s1, s1b))
      local exact = true
      for k, t in pairs(g2) do
        local d, noise = (t - g1[k]):abs():max():item(), (g1b[k] - g1[k]):abs():max():item()
        local scale = g1[k]:abs():max():item()
        exact = exact and d == 0
        T.truthy(d <= 2 * noise + 1e-4 * scale, string.format("%s at step %d: %.3g apart, device noise %.3g", k, step, d, noise))
      end
      if step == 1 then print("    host checkpoints bit-equal to device ones: " .. tostring(exact)) end
    end
  end)

  -- the MLP in slices of 5 rows (decoder.c; by default only above 8192 tokens) against the
  -- whole batch on the GPU, with host checkpoints too: the same products on fewer rows, so
  -- only cuBLASLt's choice of kernel for the smaller shapes may round differently
  T.test(name .. ": GPU step with the MLP in slices of rows matches the whole-batch step", function()
    need_gpu()
    local _, _, _, lg = pair({ quant = "nf4" })
    local ids, labels = batch()
    lg:zero_grad()
    local s0 = lg:forward_backward(ids, labels, { checkpointing = true })
    local want = lg:grads()
    for _, ck in ipairs({ true, "host" }) do
      lg:zero_grad()
      local s1 = lg:forward_backward(ids, labels, { checkpointing = ck, mlp_rows = 5 })
      T.near(s1, s0, 1e-3 * math.abs(s0), "loss")
      local worst, wk = 0, nil
      for k, t in pairs(lg:grads()) do
        local e = rel(t, want[k])
        if e > worst then worst, wk = e, k end
      end
      print(string.format("    slices (%s): worst gradient difference %.4f (%s)", tostring(ck), worst, wk))
      T.truthy(worst <= 2e-2, string.format("%s: relative difference %.3g", wk, worst))
    end
  end)

  T.test(name .. ": GPU logits and greedy generation agree with the CPU", function()
    need_gpu()
    local c, g = pair()
    local gd = assert(tensor.load(dir .. "/golden.safetensors"))
    local ids = gd.ids:totable()
    local e = rel(g:logits(ids), c:logits(ids))
    -- logits come out of an f32-accumulated product of bf16 hidden states: 2e-2 of the scale
    T.truthy(e <= 2e-2, "logits: relative error " .. e)
    -- the KV-cache path against the full forward on the device: every generated token is the
    -- argmax of the full forward's logits at its position (or within bf16 noise of it)
    local prompt = gd["greedy.prompt"]:totable()[1]
    local out = g:generate(prompt, { max_new_tokens = 16, stop = {} })
    T.eq(#out, 16)
    local all = {}
    for _, t in ipairs(prompt) do all[#all + 1] = t end
    for _, t in ipairs(out) do all[#all + 1] = t end
    local lg = g:logits(all)
    for i, t in ipairs(out) do
      local row = lg[#prompt + i - 1]
      local best = row:max():item()
      T.truthy(row[t + 1]:item() >= best - 2e-2 * math.abs(best) - 1e-3,
               string.format("token %d: %d is not the argmax of the full forward", i, t))
    end
  end)
end

-- The loss and the gradient norm of every step against torch's (PEFT on the CPU, fp32). The
-- parameters themselves are not compared element by element: AdamW's first steps move each
-- element by about lr * sign(gradient), so bf16 noise in a near-zero gradient component flips
-- that element's step; the trajectory shows in the losses and norms.
T.test("tiny-qwen2: 20 GPU AdamW steps follow torch's trajectory (warmup + cosine, clipping)", function()
  need_gpu()
  local dir = T.fixture("models/tiny-qwen2")
  local g = assert(tensor.load(dir .. "/train_golden.safetensors"))
  local m = assert(model.load(dir, { device = "cuda" }))
  local lo = assert(lora.load(m, dir .. "/peft-adapter"))
  local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
  local want, norms = g["traj.loss"]:totable(), g["traj.gnorm"]:totable()
  for step = 1, 20 do
    lo:zero_grad()
    local sum, n = lo:forward_backward(ids, labels)
    T.near(sum / n, want[step], LOSS_TOL * want[step], "loss at step " .. step)
    local norm = train.clip_grad_norm(lo, 1.0)
    T.near(norm, norms[step], GRAD_TOL * norms[step], "grad norm at step " .. step)
    lo:adamw { lr = 2e-3 * train.schedule("cosine", step - 1, 3, 20), weight_decay = 0.01, step = step }
  end
end)

T.test("tiny-qwen2: a GPU checkpoint resumes on the CPU and the other way round, exactly", function()
  need_gpu()
  local dir = T.fixture("models/tiny-qwen2")
  local g = assert(tensor.load(dir .. "/train_golden.safetensors"))
  local ids, labels = g["batch.ids"]:totable(), g["batch.labels"]:totable()
  local mg = assert(model.load(dir, { device = "cuda" }))
  local mc = assert(model.load(dir))
  local lg = assert(lora.load(mg, dir .. "/peft-adapter"))
  for step = 1, 3 do
    lg:zero_grad(); lg:forward_backward(ids, labels); lg:adamw { lr = 1e-3, step = step }
  end
  local tmp = T.tmpdir()
  assert(lg:save(tmp)); assert(lg:save_state(tmp .. "/optimizer.safetensors"))
  local lc = assert(lora.load(mc, tmp))
  assert(lc:load_state(tmp .. "/optimizer.safetensors"))
  local pg, pc = lg:params(), lc:params()
  for k, t in pairs(pg) do T.eq((t - pc[k]):abs():max():item(), 0, k) end
  -- one more step on each from the same state: same update up to bf16 gradient noise
  lg:zero_grad(); lg:forward_backward(ids, labels); lg:adamw { lr = 1e-3, step = 4 }
  lc:zero_grad(); lc:forward_backward(ids, labels); lc:adamw { lr = 1e-3, step = 4 }
  local pg2, pc2 = lg:params(), lc:params()
  for k, t in pairs(pg2) do T.truthy(rel(t, pc2[k]) <= 1e-2, k) end
  -- and back: the CPU state onto a fresh GPU adapter, bit for bit
  local tmp2 = T.tmpdir()
  assert(lc:save(tmp2)); assert(lc:save_state(tmp2 .. "/optimizer.safetensors"))
  local lg2 = assert(lora.load(mg, tmp2))
  assert(lg2:load_state(tmp2 .. "/optimizer.safetensors"))
  for k, t in pairs(lg2:params()) do T.eq((t - pc2[k]):abs():max():item(), 0, k) end
  os.execute("rm -rf '" .. tmp .. "' '" .. tmp2 .. "'")
end)

T.test("GPU out of memory: a clear error that says what to lower, and the device stays usable", function()
  need_gpu()
  local dir = T.fixture("models/tiny-qwen2")
  local m = assert(model.load(dir, { device = "cuda" }))
  local lo = assert(lora.new(m, { r = 4, alpha = 8 }))
  -- rows long enough that the planned activations exceed any GPU (V = 512: ~8 GB per 1M tokens)
  local row = {}
  for i = 1, 1 << 20 do row[i] = i % 500 end
  local rows = {}
  for i = 1, 64 do rows[i] = row end
  local ok, err = pcall(function() return lo:forward_backward(rows, rows) end)
  T.truthy(not ok, "64M tokens cannot fit")
  err = tostring(err)
  T.truthy(err:find("out of memory") and (err:find("seq_len") or err:find("batch")), err)
  -- still usable
  local gd = assert(tensor.load(dir .. "/golden.safetensors"))
  local s, n = lo:forward_backward(gd.ids:totable(), gd.ids:totable())
  T.truthy(n > 0 and s == s)
end)

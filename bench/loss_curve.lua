-- bench/loss_curve.lua — the qlora side of bench/loss_curve.sh: QLoRA training on the same token
-- rows from the peer's initial adapter, with the peer's settings (bench/loss_curve_peer.py).
--   qlora bench/loss_curve.lua model=DIR rows=ROWS.safetensors adapter=ADAPTER0_DIR steps=300 lr=1e-3 [device=cuda]
-- NF4 base (quantized on load, the bytes of bitsandbytes), the PEFT adapter loaded as saved,
-- one row per step, gradient checkpointing, grad-norm clipping at 1.0 (qlora.train.clip_grad_norm,
-- torch's clip_grad_norm_ formula), AdamW (0.9, 0.999, 1e-8, no weight decay).
-- Prints "loss_curve qlora STEP LOSS" lines.
local device = args.device or "cuda"
local m = assert(qlora.model.load(assert(args.model, "model=DIR"), { quant = "nf4", device = device }))
local lo = assert(qlora.lora.load(m, assert(args.adapter, "adapter=DIR")))
local rows = assert(qlora.tensor.load(assert(args.rows, "rows=FILE"))).ids:totable()
local steps, lr = tonumber(args.steps or "300"), tonumber(args.lr or "1e-3")
for k = 1, steps do
  local row = rows[(k - 1) % #rows + 1]
  lo:zero_grad()
  local sum, count = lo:forward_backward({ row }, { row }, { checkpointing = device ~= "cpu" })
  qlora.train.clip_grad_norm(lo, 1.0)
  lo:adamw { lr = lr, step = k, weight_decay = 0 }
  print(string.format("loss_curve qlora %d %.6f", k, sum / count))
end

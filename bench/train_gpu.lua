-- bench/train_gpu.lua — QLoRA training steps/s and peak memory of qlora; the peer is
-- bench/peer_train.py (transformers + bitsandbytes + PEFT) with the same settings.
--   qlora bench/train_gpu.lua dir=MODEL_DIR [seq=2048] [batch=1] [steps=10] [device=cuda] [ckpt=1|0|host] [warmup=2]
-- NF4 base (quantized on load), LoRA r=16, alpha=32, dropout 0 on all seven projections,
-- gradient checkpointing (ckpt=0: every layer's activations kept instead; ckpt=host: the layer
-- checkpoints in page-locked host memory), AdamW lr 2e-4; random token ids from a fixed seed, labels = ids.
-- Two warm-up steps (warmup=N), then `steps` timed ones. Each step reads its loss back, so on a CUDA
-- device it returns after the device has finished: no explicit synchronisation is needed.
-- Prints one machine-readable line
--   qlora_train shape=DIR_BASENAME seq=S batch=B tokens_per_s=X peak_gib=Y used_gib=Z step_ms=W loss=L
-- peak_gib: the engine's own accounting of device memory (load + training);
-- used_gib: total - free at the end (the process's view, allocator caches included).
-- Also runs on the CPU: device=cpu dir=tests/fixtures/models/tiny-qwen2 seq=64 steps=2.
local dir = assert(args.dir, "dir=MODEL_FOLDER")
local S = tonumber(args.seq or "2048")
local B = tonumber(args.batch or "1")
local steps = tonumber(args.steps or "10")
local warmup = tonumber(args.warmup or "2")
local device = args.device or "cuda"
local ckpt = args.ckpt == "host" and "host" or (args.ckpt or "1") ~= "0"
local shape = dir:gsub("/+$", ""):match("([^/]+)$")
local gib = 2 ^ 30

local t0 = qlora.sys.now()
local m = assert(qlora.model.load(dir, { quant = "nf4", device = device }))
local lo = assert(qlora.lora.new(m, { r = 16, alpha = 32, dropout = 0, targets = "all", seed = 0 }))
local load_s = qlora.sys.now() - t0
print(string.format("qlora_train load %.1f s (%s, nf4); trainable %d params; at %s UTC", load_s, device,
  lo:num_params(), os.date("!%H:%M:%S")))

-- random ids in [0, vocab) from a fixed seed; labels = ids
local V = m:config().vocab_size
math.randomseed(0)
local ids = {}
for r = 1, B do
  local row = {}
  for t = 1, S do row[t] = math.random(0, V - 1) end
  ids[r] = row
end

local function step(k)
  lo:zero_grad()
  local sum, count = lo:forward_backward(ids, ids, { checkpointing = ckpt })
  lo:grad_norm()
  lo:adamw { lr = 2e-4, step = k }
  return sum / count
end

for k = 1, warmup do print(string.format("qlora_train warm-up %d: loss %.4f; at %s UTC", k, step(k), os.date("!%H:%M:%S"))) end
local loss
t0 = qlora.sys.now()
for k = 1, steps do loss = step(warmup + k) end
local dt = qlora.sys.now() - t0

local mem = qlora.device.memory(device)
local used = (mem.total and mem.free) and (mem.total - mem.free) / gib or 0 / 0
print(string.format("qlora_train shape=%s%s seq=%d batch=%d tokens_per_s=%.1f peak_gib=%.3f used_gib=%.3f step_ms=%.1f loss=%.4f",
  shape, ckpt == "host" and "-hostckpt" or ckpt and "" or "-nockpt", S, B, B * S * steps / dt, mem.peak / gib, used, dt / steps * 1e3, loss))
print(string.format("qlora_train %s %s: load %.1f s, host peak RSS %.2f GiB", qlora.version, device, load_s,
  (qlora.sys.peak_rss() or 0) / gib))

-- bench/model_forward.lua — CPU forward tokens/s of the fp32 reference (logits for
-- one sequence), best of 3; the peer is bench/peer_forward.py on the same folder.
--   qlora bench/model_forward.lua dir=DIR [seq=128] [quant=none|nf4] [device=cpu|cuda] [gen=32]
-- Also times greedy generation of gen tokens after a seq-token prompt (KV cache).
local dir = assert(args.dir, "dir=MODEL_FOLDER")
local T = tonumber(args.seq or "128")
local m = assert(qlora.model.load(dir, { quant = args.quant or "none", device = args.device or "cpu", graph = args.graph == "1" }))
local V = m:config().vocab_size
local ids = {}
for i = 1, T do ids[i] = (i * 7919) % (V - 3) + 3 end
m:logits(ids)
local best = math.huge
for _ = 1, 3 do
  local t0 = qlora.sys.now()
  m:logits(ids)
  best = math.min(best, qlora.sys.now() - t0)
end
print(string.format("qlora %s %s threads %d: forward %.1f tokens/s (%d tokens, best of 3, quant=%s)",
  qlora.version, args.device or "cpu", qlora.sys.threads(), T / best, T, args.quant or "none"))
local gen = tonumber(args.gen or "32")
if gen > 0 then
  local t0 = qlora.sys.now()
  local out = m:generate(ids, { max_new_tokens = gen, stop = {} })
  local dt = qlora.sys.now() - t0
  print(string.format("qlora generate: %d new tokens after %d in %.2f s (%.1f tokens/s incl. the prompt)", #out, T, dt, #out / dt))
end

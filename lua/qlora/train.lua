-- qlora.train — the training loop around qlora.lora's step: learning-rate
-- schedules, gradient clipping, (the trainer itself follows below).
local M = {}

-- multiplier of the base learning rate at optimizer step `step` (0-based), as
-- transformers' get_{cosine,linear,constant}_schedule_with_warmup
function M.schedule(kind, step, warmup, total)
  if step < warmup then return step / math.max(1, warmup) end
  if kind == "constant" then return 1.0 end
  local progress = (step - warmup) / math.max(1, total - warmup)
  if kind == "linear" then return math.max(0.0, 1.0 - progress) end
  if kind == "cosine" then return math.max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))) end
  error("unknown schedule '" .. tostring(kind) .. "' (cosine, linear or constant)")
end

-- torch.nn.utils.clip_grad_norm_: scales the gradients by min(1, max / (norm + 1e-6)); returns the norm before
function M.clip_grad_norm(lo, max_norm)
  local norm = lo:grad_norm()
  if max_norm and max_norm > 0 then
    local coef = max_norm / (norm + 1e-6)
    if coef < 1 then lo:scale_grad(coef) end
  end
  return norm
end

return M

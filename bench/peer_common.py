"""What the peer scripts of bench/ share (imported after whatever must come first, e.g. Unsloth):
the Python stack's QLoRA model as the seed's users set it up, and the timed step loop with its
machine-readable line.

    qlora_peft_model(model_dir)  transformers + bitsandbytes NF4 (double quantization, bf16
                                 compute) + PEFT LoRA r=16, alpha=32, dropout 0 on all seven
                                 projections, prepare_model_for_kbit_training with gradient
                                 checkpointing, in train mode
    timed_steps(tag, model, params, opt, ids, steps, shape)
                                 two warm-ups (the first may compile), then STEPS steps between
                                 synchronisations (clipping at 1.0); prints
    peer_train shape=SHAPE seq=S batch=B tokens_per_s=X peak_alloc_gib=Y peak_reserved_gib=Z step_ms=W loss=L
"""
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def qlora_peft_model(model_dir):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=TARGETS)
    model = get_peft_model(model, lcfg)
    model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
    return model


def timed_steps(tag, model, params, opt, ids, steps, shape):
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the grad norm, as a training loop computes it
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for k in range(2):
        print(f"{tag} warm-up {k + 1}: loss {step():.4f}", flush=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    B, S = ids.shape
    gib = 2 ** 30
    print(f"peer_train shape={shape} seq={S} batch={B} tokens_per_s={B * S * steps / dt:.1f} "
          f"peak_alloc_gib={torch.cuda.max_memory_allocated() / gib:.3f} "
          f"peak_reserved_gib={torch.cuda.max_memory_reserved() / gib:.3f} "
          f"step_ms={dt / steps * 1e3:.1f} loss={loss:.4f}", flush=True)

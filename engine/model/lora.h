/*
 * lora.h — LoRA adapters on the seven projections of a decoder, and the CPU
 * reference of QLoRA training: forward and backward through the frozen base
 * (f32/bf16/f16/NF4) with gradients only for the adapters, AdamW, gradient
 * norms, PEFT adapter files and merging into the original weights.
 *
 * An adapter on a linear W [out, in] adds  scale * B (A dropout(x)),
 * A [r, in], B [out, r], both f32; scale = alpha / r (rslora: alpha / sqrt r).
 * Initialisation as PEFT: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform,
 * a = sqrt 5), B = 0.
 */
#ifndef QL_LORA_H
#define QL_LORA_H

#include "model.h"

enum { QL_T_Q, QL_T_K, QL_T_V, QL_T_O, QL_T_GATE, QL_T_UP, QL_T_DOWN, QL_NTARGETS };
extern const char *const ql_lora_target_names[QL_NTARGETS];   /* "q_proj", ... "down_proj" */

typedef struct ql_lora_mod {
    int in, out, r;
    float scale;
    float *A, *B;                  /* [r, in], [out, r] */
    float *gA, *gB;                /* gradients, same shapes */
    float *mA, *vA, *mB, *vB;      /* AdamW moments */
} ql_lora_mod;

typedef struct ql_lora {
    int layers, r;
    float alpha, dropout;
    int rslora;
    unsigned targets;              /* bit t set: target t adapted */
    uint8_t *layer_on;             /* [layers]: 1 where the layer carries adapters */
    ql_lora_mod *mods;             /* [layers * QL_NTARGETS]; in == 0 where absent */
    uint64_t seed;                 /* init and dropout randomness */
    uint64_t dropout_step;         /* advances once per forward in training mode */
    /* Training on a device (ql_lora_to_device): parameters, gradients and moments live
       there, every adapter's A then B in the order of mods, flat; the host arrays above
       are a copy refreshed by ql_lora_sync_host. NULL on the CPU. */
    ql_device device;
    float *d_p, *d_g, *d_m, *d_v;  /* backend memory [d_n] each */
    int64_t d_n;
    int64_t *d_off;                /* [layers * QL_NTARGETS] offset of each adapter's A */
} ql_lora;

/* targets: bitmask of QL_T_*; layer_on: NULL = every layer */
ql_lora *ql_lora_new(const ql_model *m, int r, float alpha, int rslora, float dropout, unsigned targets,
                     const uint8_t *layer_on, uint64_t seed);
void ql_lora_free(ql_lora *l);
ql_lora_mod *ql_lora_at(const ql_lora *l, int layer, int target);   /* NULL when not adapted */
int64_t ql_lora_num_params(const ql_lora *l);

/* Moves training to dev (a copy of parameters and moments; gradients zero). The CPU is a no-op. */
ql_status ql_lora_to_device(ql_lora *l, ql_device dev);
/* Device -> host arrays (parameters, gradients, moments), before saving or reading them. */
ql_status ql_lora_sync_host(ql_lora *l);
/* Host arrays -> device (after loading optimizer state into them). */
ql_status ql_lora_sync_device(ql_lora *l);
/* AdamW over n f32 values: the one formula (lora.c) that every backend reproduces. */
void ql_adamw_f32(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2,
                  double eps, double wd, int64_t step);

/* ---------------- training forward/backward (through the decoder, decoder.h) ----------------
   Accumulates into gA/gB the gradient of  (sum of token losses) / denom,
   so k micro-batches with denom = total target tokens give exactly the
   gradient of one batch of all of them. Returns the loss sum and count.
   train: apply dropout. checkpointing (ql_ckpt): keep only each layer's input and
   recompute the layer during backward (less memory, ~1.3x the work); with
   QL_CKPT_HOST those inputs wait in page-locked host memory, copied out and back
   while the device computes (two layers' worth stay on the device). */
typedef enum ql_ckpt { QL_CKPT_NONE = 0, QL_CKPT_DEVICE = 1, QL_CKPT_HOST = 2 } ql_ckpt;
ql_status ql_lora_forward_backward(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels,
                                   double denom, int train, int checkpointing, double *loss_sum, int64_t *count);
/* Forward only, with adapters: logits [n, V] or the loss (no gradients). */
ql_status ql_lora_logits(ql_model *m, ql_lora *l, const ql_batch *b, float *logits);
ql_status ql_lora_loss(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels, double *sum, int64_t *count);

/* On a device these run there; errors (a failed kernel) are returned. */
ql_status ql_lora_zero_grad(ql_lora *l);
ql_status ql_lora_grad_norm(const ql_lora *l, double *norm);   /* L2 norm over every gradient */
ql_status ql_lora_scale_grad(ql_lora *l, float s);
/* torch.optim.AdamW: decoupled weight decay, bias corrections; step counts from 1 */
ql_status ql_lora_adamw(ql_lora *l, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);

/* ---------------- files ---------------- */
/* PEFT layout: adapter_config.json + adapter_model.safetensors in dir (created; written atomically). */
ql_status ql_lora_save_peft(const ql_lora *l, const char *dir, const char *base_model);
ql_lora *ql_lora_load_peft(const ql_model *m, const char *dir);
/* Optimizer state (moments) beside the adapter, for exact resume. */
ql_status ql_lora_save_state(const ql_lora *l, const char *path);
ql_status ql_lora_load_state(ql_lora *l, const char *path);

/* Merged checkpoint: base weights from base_dir (bf16/f16/f32, or bitsandbytes 4-bit,
   which is dequantized and said so in *note) plus scale * B A on every adapted
   projection, written to out_dir shard by shard, tensor by tensor, in the base's
   dtype (bf16 rounding to nearest even). Copies config.json (without a
   quantization_config) and the tokenizer files. Written beside out_dir as
   "<out_dir>.tmp.<pid>" and renamed into place (such folders of dead processes are
   removed); an existing out_dir is replaced only when it holds a previous merge, else
   refused. Refuses adapters with NaN/Inf values; stops when ql_sigint_pending(). */
ql_status ql_lora_merge(const ql_lora *l, const char *base_dir, const char *out_dir, char *note, size_t note_cap);

#endif

/*
 * decoder.h — the one decoder: a layer function and a step function written
 * once (decoder.c) over a table of op pairs that every backend provides.
 * Logits, loss, generation with a KV cache and LoRA training all go through
 * it, on the CPU (the f32 reference, cpu ops in decoder_cpu.c) and on CUDA
 * (bf16 activations with f32 accumulation, kernels/decoder_ops.cu).
 *
 * Buffers are raw pointers in the backend's memory (host memory for the CPU,
 * device memory for CUDA). Each pointer has one of three kinds, written in
 * the shape comments:
 *   R  the residual stream and its gradient: f32 on every backend
 *   A  activations that feed products: ops->act (f32 on the CPU, bf16 on CUDA)
 *   S  per-row statistics (inverse rms, attention logsumexp): f32
 * Letters: n tokens, H hidden, Q = heads * hd, KV = kv_heads * hd, NI
 * intermediate, r LoRA rank, V vocabulary, nk keys.
 */
#ifndef QL_DECODER_H
#define QL_DECODER_H

#include "lora.h"
#include "model.h"

/* A batch as the ops see it: the host arrays of ql_batch and, on a device,
   copies of them there (the same pointers on the CPU). */
typedef struct ql_dec_batch {
    int64_t n;
    const int32_t *ids, *pos, *lo, *hi;          /* host [n] */
    const int32_t *d_ids, *d_pos, *d_lo, *d_hi;  /* backend memory [n] */
    /* for the attention backward on a device: the queries that see key j are
       [d_qlo[j], d_qhi[j]) (ql_dec_key_ranges) */
    const int32_t *d_qlo, *d_qhi;
} ql_dec_batch;

/* The frozen projection and its adapter as the ops see them. */
typedef struct ql_dec_lin {
    const ql_linear *base;       /* weights in the backend's memory */
    const ql_lora_mod *mod;      /* NULL: no adapter */
    /* adapter parameters and gradient accumulators in the backend's memory:
       A [r, in], B [out, r] f32; gA, gB NULL when no gradients are wanted */
    const float *A, *B;
    float *gA, *gB;
    /* dropout: the mask of element e of x is ql_rng_uniform(seed, stream, elem0 + e) < p */
    float dropout;               /* 0: none (also when not training) */
    uint64_t seed, stream;
    uint64_t elem0;              /* x's first element in the whole batch (a slice of rows: row0 * in) */
    int layer;                   /* the block it belongs to */
    const ql_linear *next;       /* the frozen projection the decoder runs next, a hint that lets a
                                    backend dequantize its weight ahead (NULL: none known) */
} ql_dec_lin;

typedef struct ql_dec_ops ql_dec_ops;

#define QL_DEC_SUBPARTS 8

/* What an op may use besides its arguments: the backend's scratch, planned once. */
typedef struct ql_dec_ctx {
    const ql_dec_ops *ops;
    ql_model *m;
    ql_device dev;
    int64_t n;                   /* tokens of the batch the plan was made for */
    int64_t mr;                  /* rows of the MLP's slices (n: one slice) */
    int train;                   /* the plan is a training step's */
    const ql_lora *lora;         /* the adapter the plan was made for (NULL: none) */
    const float *inv_freq;       /* [head_dim / 2] RoPE frequencies in the backend's memory */
    void *tmp;                   /* A [max(n max(H, Q), mr NI)] dropout's masked inputs (NULL without
                                    dropout, and outside training) */
    void *tr;                    /* A [n, r] */
    void *aux;                   /* backend-private scratch of aux_size bytes (CUDA: weight
                                    dequantization, f32 scratch, lm_head chunks) */
    size_t aux_bytes;
    int profiling;               /* QL_PROFILE: the backend may time parts of its ops into sub_ms */
    double sub_ms[QL_DEC_SUBPARTS];   /* named by ops->sub_names */
    int64_t cached;              /* backend-private: what its scratch holds for this step (0: nothing) */
    const void *slots[2];        /* backend-private: which weights its dequantization buffers hold */
    int slots_ready;             /* backend-private: this step has ordered itself after the last one's */
} ql_dec_ctx;

struct ql_dec_ops {
    const char *name;
    ql_dtype act;                                  /* dtype of A buffers */
    const char *sub_names[QL_DEC_SUBPARTS];        /* parts a backend times under QL_PROFILE (NULL: none) */
    /* memory for the plan (backend allocator; device memory is counted in ql_memory) */
    void *(*alloc)(ql_device dev, size_t bytes);   /* NULL + ql_fail on failure */
    void (*free)(ql_device dev, void *p, size_t bytes);
    ql_status (*upload)(ql_device dev, void *dst, const void *src, size_t bytes);
    ql_status (*download)(ql_device dev, void *dst, const void *src, size_t bytes);
    ql_status (*memset0)(ql_device dev, void *p, size_t bytes);
    /* waits for the device's queued work (QL_PROFILE timings) */
    ql_status (*sync)(ql_device dev);
    /* bytes of backend-private scratch a batch of n tokens needs, its MLP in slices of mr rows
       (lora may be NULL); train: a training step (the backward's scratch is planned) */
    size_t (*aux_size)(const ql_model *m, const ql_lora *l, int64_t n, int64_t mr, int train);

    /* x R [n, H] = rows ids of the embedding table (m->embed, or its device copy) */
    ql_status (*embed)(ql_dec_ctx *c, const ql_dec_batch *b, float *x);
    /* y A [n, H] = w * x * r, r S [n] = 1 / sqrt(mean(x^2) + eps) (r may be NULL); x R */
    ql_status (*rmsnorm)(ql_dec_ctx *c, const float *x, const ql_tensor *w, int64_t n, void *y, float *r);
    /* dx R += d/dx (w * x * r(x)) given dy R */
    ql_status (*rmsnorm_bwd)(ql_dec_ctx *c, const float *x, const ql_tensor *w, const float *r, const float *dy,
                             int64_t n, float *dx);
    /* out R = a R + b A (out may be a) */
    ql_status (*residual)(ql_dec_ctx *c, float *out, const float *a, const void *b, int64_t count);
    /* dst R = f32(src A): checkpoints of layer inputs kept as A values (a copy when act is f32:
       on the device such checkpoints stay R, but host ones come back through A staging) */
    ql_status (*widen)(ql_dec_ctx *c, const void *src, int64_t count, float *dst);
    /* A view of R values: the R pointer itself when act is f32, else a cast into dst (count values) */
    const void *(*as_act)(ql_dec_ctx *c, const float *src, int64_t count, void *dst, ql_status *st);
    /* rotate-half RoPE in place on x A [n, nh * hd] at the batch's positions; inverse rotates back */
    ql_status (*rope)(ql_dec_ctx *c, void *x, const ql_dec_batch *b, int nh, int inverse);
    /* out A [n, Q] = softmax(q k^T / sqrt(hd)) v over each query's key range [lo, hi)
       (clipped to the sliding window), keys k, v A [nk, KV]; lse S [n, heads] (may be NULL).
       keys_are_batch: k, v are the batch's own rows (else a KV cache indexed by lo/hi). */
    ql_status (*attn)(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                      int keys_are_batch, void *out, float *lse);
    /* gradients of attn over the batch's own keys: dq A [n, Q], dk, dv A [n, KV] (written) from
       dout R [n, Q]; out and lse as the forward left them */
    ql_status (*attn_bwd)(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                          const void *out, const float *lse, const float *dout, void *dq, void *dk, void *dv);
    /* h A = silu(g) * u over count values */
    ql_status (*swiglu)(ql_dec_ctx *c, const void *g, const void *u, void *h, int64_t count);
    /* dg, du A from dh R */
    ql_status (*swiglu_bwd)(ql_dec_ctx *c, const void *g, const void *u, const float *dh, void *dg, void *du,
                            int64_t count);
    /* y A [n, out] = x W^T + b + scale * (dropout(x) A^T) B^T; xa A [n, r] keeps dropout(x) A^T.
       y NULL: only xa (a recomputation that needs the adapter's input side, not the output) */
    ql_status (*linear)(ql_dec_ctx *c, const ql_dec_lin *L, const void *x, int64_t n, void *y, void *xa);
    /* dx R [n, in] (+)= dy W + scale * ((dy B) A through the dropout mask); gA, gB accumulate */
    ql_status (*linear_bwd)(ql_dec_ctx *c, const ql_dec_lin *L, const void *x, const void *xa, const void *dy,
                            int64_t n, float *dx, int accumulate);
    /* cross-entropy through lm_head of the final-normed xf A [n, H] for every target
       (token i predicts labels[i + 1] inside its document), adding the loss sum to *sum
       and the count to *count; dxf R [n, H] (may be NULL) += d (sum / denom) / d xf */
    ql_status (*lm_head_ce)(ql_dec_ctx *c, const ql_dec_batch *b, const int32_t *labels, const void *xf,
                            double denom, double *sum, int64_t *count, float *dxf);
    /* logits of rows [r0, r0 + rows) of xf A [n, H] to host memory (f32 [rows, V]) */
    ql_status (*lm_head_logits)(ql_dec_ctx *c, const void *xf, int64_t r0, int64_t rows, float *host);
    /* KV cache: rows of k, v A [n, KV] stored at the batch positions of layer l */
    ql_status (*kv_store)(ql_dec_ctx *c, ql_kv_cache *kv, int layer, const ql_dec_batch *b, const void *k,
                          const void *v);

    /* ---- layer checkpoints in host memory (checkpointing = QL_CKPT_HOST); all NULL on a
       backend without them. Two staging buffers in the backend's memory take turns (slot 0, 1).
       ck_store copies bytes of the staging buffer src to host, ck_fetch host into the staging
       buffer dst; each starts after the work queued before it and may return before its copy is
       done. ck_ready: the work queued after it waits for the slot's last copy. host_alloc gives
       page-locked host memory for them (NULL + ql_fail when short); host_free takes it back
       once no copy is pending (the decoder syncs first). */
    ql_status (*ck_store)(ql_dec_ctx *c, int slot, void *host, const void *src, size_t bytes);
    /* (with act f32, as_act gives the R buffer itself as src, which the next layers overwrite:
       such a backend's ck_store must have copied when it returns, as the CPU's does) */
    ql_status (*ck_fetch)(ql_dec_ctx *c, int slot, void *dst, const void *host, size_t bytes);
    ql_status (*ck_ready)(ql_dec_ctx *c, int slot);
    void *(*host_alloc)(ql_device dev, size_t bytes);
    void (*host_free)(ql_device dev, void *p);

    /* ---- optimizer over one flat f32 array of count values (all adapters) */
    ql_status (*adamw)(ql_device dev, float *p, const float *g, float *m, float *v, int64_t count, double lr,
                       double b1, double b2, double eps, double wd, int64_t step);
    /* sum of squares, in double */
    ql_status (*sumsq)(ql_device dev, const float *g, int64_t count, double *out);
    ql_status (*scale)(ql_device dev, float *g, int64_t count, float s);
};

extern const ql_dec_ops ql_dec_cpu_ops;
#ifdef QL_CUDA
extern const ql_dec_ops ql_dec_cuda_ops;   /* kernels/decoder_ops.cu */
#endif
/* the ops for a device, or NULL + ql_fail */
const ql_dec_ops *ql_dec_ops_for(ql_device dev);

/* For key j of a causal packed batch, the queries i with lo[i] <= j < hi[i]
   (hi[i] - window <= j with a sliding window) as [qlo[j], qhi[j]); they are
   contiguous for causal documents. Fails when a key's queries are not. */
ql_status ql_dec_key_ranges(const int32_t *lo, const int32_t *hi, int64_t n, int window, int32_t *qlo, int32_t *qhi);

/* ---------------------------------------------------------------- the step */

/* What the decoder computes for one batch. */
typedef enum ql_dec_mode {
    QL_DEC_LOGITS,               /* logits to the host (all rows, or the last when last_only) */
    QL_DEC_LOSS,                 /* loss sum and count, no gradients */
    QL_DEC_TRAIN                 /* loss, and adapter gradients of sum / denom accumulated */
} ql_dec_mode;

typedef struct ql_dec_step {
    ql_dec_mode mode;
    const ql_batch *batch;
    const int32_t *labels;       /* LOSS, TRAIN */
    ql_lora *lora;               /* may be NULL (the base model) */
    ql_kv_cache *cache;          /* LOGITS only */
    double denom;                /* TRAIN */
    int train;                   /* apply dropout */
    int checkpointing;           /* ql_ckpt: keep only layer inputs (in the backend's memory or
                                    in host memory); recompute in backward */
    int64_t mlp_rows;            /* the MLP in slices of this many tokens, its [rows, NI] buffers
                                    planned for one slice (not with every activation kept);
                                    0: QL_DEC_MLP_ROWS */
    float *logits;               /* LOGITS: host [n, V] */
    double loss_sum;             /* out */
    int64_t count;               /* out */
} ql_dec_step;

/* The MLP's intermediates (gate, up, their product and gradients) are the largest buffers of
   a step: ~6 NI bytes a token in bf16 plus 8 NI in f32 gradients (a 7B at 64k tokens: 17 GiB).
   Longer batches run the MLP a slice of rows at a time, which is exact (each token's MLP is its
   own) and costs only repeated weight dequantization; in the backward the slice's forward is
   recomputed beside its gradient. */
#define QL_DEC_MLP_ROWS 8192
ql_status ql_decoder_run(ql_model *m, ql_dec_step *s);
/* frees the planned buffers a model keeps between steps */
void ql_decoder_release(ql_model *m);

#endif

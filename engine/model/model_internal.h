/*
 * model_internal.h — the pieces of the CPU reference (model.c) that the CPU
 * op table (decoder_cpu.c) is made of.
 */
#ifndef QL_MODEL_INTERNAL_H
#define QL_MODEL_INTERNAL_H

#include "model.h"

/* rows [r0, r1) of an [out, in] weight (f32, bf16, f16 or nf4) widened to f32 into dst */
ql_status ql_weight_rows_f32(const ql_tensor *w, int64_t r0, int64_t r1, int64_t in, float *dst);
/* m->scratch holds at least n floats */
ql_status ql_model_scratch(ql_model *m, int64_t n);
/* fn(ud, W, r0, r1) over blocks of rows [r0, r1) of an [out, in] weight as f32: the weight
   itself when it is f32 and contiguous (one block), else rows widened into m->scratch */
ql_status ql_weight_blocks(ql_model *m, const ql_tensor *w, int64_t in, int64_t out,
                           ql_status (*fn)(void *ud, const float *W, int64_t r0, int64_t r1), void *ud);
/* y[n, out] = x[n, in] @ W^T (+ b), W widened a block of rows at a time */
ql_status ql_linear_fwd(ql_model *m, const ql_linear *L, const float *x, int64_t n, float *y);
/* y = x * rsqrt(mean(x^2) + eps) * w per row of H */
void ql_rmsnorm(const float *x, const float *w, int64_t n, int H, double eps, float *y);
/* the same, also keeping each row's inverse rms in r[n] (the backward needs it) */
void ql_rmsnorm_r(const float *x, const float *w, int64_t n, int H, double eps, float *y, float *r);
/* rotate-half RoPE of nh heads per row at positions pos; inverse = 1 rotates back (backward) */
void ql_rope(float *x, int64_t n, int nh, int hd, const int32_t *pos, const float *inv_freq, int inverse);
/* logsumexp(z) - z[target] over a row of V logits; *mx, *se: its max and sum of exp(z - max) */
double ql_ce_row(const float *z, int64_t V, int32_t target, float *mx, double *se);
void ql_embed_rows(const ql_tensor *E, const int32_t *ids, int64_t n, int H, float *x);

typedef struct ql_attn_job {
    const float *q, *k, *v;       /* q [n, Q]; k, v [nk, KV] */
    float *out;                   /* [n, Q] */
    const int32_t *lo, *hi;
    int heads, kv_heads, hd, window;
    int64_t n;
    int failed;                   /* set by a task that found no memory: its outputs are not written */
} ql_attn_job;
/* ql_parallel_for body over n * heads (query, head) pairs; sets j->failed when out of memory */
void ql_attn_range(void *arg, int64_t b, int64_t e);
/* cross-entropy of a batch's targets through lm_head from final-normed hidden xf [n, H];
   with dxf (not NULL) also adds d (sum / denom) / d xf, the vocabulary walked in blocks */
ql_status ql_lm_head_ce(ql_model *m, const ql_batch *b, const int32_t *labels, const float *xf, double denom,
                        double *sum, int64_t *count, float *dxf);
/* the whole batch: BLAS for causal documents over the batch's own keys, else ql_attn_range;
   QL_ENOMEM when a task found no memory for its scores */
ql_status ql_attention(ql_attn_job *j, int keys_are_batch);
/* n bf16 values widened to f32, on all threads */
void ql_bf16_to_f32_n(const uint16_t *src, float *dst, int64_t n);

#endif

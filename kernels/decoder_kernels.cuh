/*
 * decoder_kernels.cuh — launchers of the decoder's CUDA kernels, used by the
 * CUDA op table (decoder_ops.cu). Kernels live in decoder_kernels.cu
 * (elementwise, norms, RoPE, cross-entropy rows, optimizer), attention.cu
 * and gemm.cu.
 *
 * Every launcher takes device pointers, queues work on the legacy default
 * stream, checks the launch and returns QL_OK or QL_EDEVICE with CUDA's
 * message. Zero counts are no-ops. bf16 values are uint16_t (bit pattern);
 * every computation is in f32 and each bf16 result is rounded once, to
 * nearest even (the CPU's ql_f32_to_bf16). Index math is 64-bit.
 * Dtype letters as in engine/model/decoder.h: R f32, A bf16, S f32.
 */
#ifndef QL_DECODER_KERNELS_CUH
#define QL_DECODER_KERNELS_CUH

#include "common.cuh"

/* ---------------------------------------------------------------- decoder_kernels.cu */

/* x R [n, H] = rows ids[i] of E [V, H] (dtype edt: f32, bf16 or f16), widened to f32 */
ql_status qlk_embed(const void *E, ql_dtype edt, int64_t H, const int32_t *ids, int64_t n, float *x);
/* per row of H: r = 1 / sqrtf(sum(x^2) / H + eps) (sum in f32), y A = bf16(w * (x * r));
   w [H] of dtype wdt (f32, bf16 or f16); r S [n] may be NULL */
ql_status qlk_rmsnorm(const float *x, const void *w, ql_dtype wdt, int64_t n, int64_t H, float eps, uint16_t *y,
                      float *r);
/* dx R += r * w * dy - x * (sum_j(w_j dy_j x_j) * r^3 / H), per row (the dot in f32 or better) */
ql_status qlk_rmsnorm_bwd(const float *x, const void *w, ql_dtype wdt, const float *r, const float *dy, int64_t n,
                          int64_t H, float *dx);
/* out R = a R + f32(b A) elementwise (out may equal a) */
ql_status qlk_residual(float *out, const float *a, const uint16_t *b, int64_t count);
/* dst A = bf16(src) for src of dtype sdt (f32, bf16, f16) */
ql_status qlk_to_bf16(const void *src, ql_dtype sdt, uint16_t *dst, int64_t count);
/* dst R = f32(src A) */
ql_status qlk_widen(const uint16_t *src, float *dst, int64_t count);
/* rotate-half RoPE in place on x A [n, nh * hd]: for d < hd/2, ang = (float)pos[i] * inv_freq[d],
   c = cosf(ang), s = sinf(ang) (inverse: s = -s); a = x[d], b = x[d + hd/2];
   x[d] = a*c - b*s, x[d + hd/2] = b*c + a*s. inv_freq: device f32 [hd/2] */
ql_status qlk_rope(uint16_t *x, const int32_t *pos, const float *inv_freq, int64_t n, int nh, int hd, int inverse);
/* h A = silu(g) * u = g / (1 + expf(-g)) * u */
ql_status qlk_swiglu(const uint16_t *g, const uint16_t *u, uint16_t *h, int64_t count);
/* sg = 1 / (1 + expf(-g)); du = dh * g * sg; dg = dh * u * sg * (1 + g * (1 - sg)) */
ql_status qlk_swiglu_bwd(const uint16_t *g, const uint16_t *u, const float *dh, uint16_t *dg, uint16_t *du,
                         int64_t count);
/* dropout with the CPU's mask: element e is dropped when ql_rng_uniform(seed, stream, e0 + e) < p (rng.h),
   kept ones are multiplied by 1 / (1 - p) (as float, computed as 1.0f / (1.0f - p)).
   qlk_dropout: y A = mask(x A); qlk_dropout_add: dst R += mask(src R) */
ql_status qlk_dropout(const uint16_t *x, uint16_t *y, int64_t count, float p, uint64_t seed, uint64_t stream,
                      uint64_t e0);
ql_status qlk_dropout_add(const float *src, float *dst, int64_t count, float p, uint64_t seed, uint64_t stream,
                          uint64_t e0);
/* y A [n, out] += b [out] (dtype bdt), once rounded */
ql_status qlk_add_bias(uint16_t *y, const void *b, ql_dtype bdt, int64_t n, int64_t out);
/* dst A [k, H] = src A rows rows[0..k) (device int32) */
ql_status qlk_gather_rows(const uint16_t *src, const int32_t *rows, int64_t k, int64_t H, uint16_t *dst);
/* dst R rows[q] += src R [k, H] row q (rows are distinct) */
ql_status qlk_scatter_add_rows(const float *src, const int32_t *rows, int64_t k, int64_t H, float *dst);
/* cache A [max_len, KV]: row pos[i] = src A row i, for i < n */
ql_status qlk_kv_store(uint16_t *cache, const uint16_t *src, const int32_t *pos, int64_t n, int64_t KV);
/* Cross-entropy of rows of logits z f32 [k, V] against tgt (device int32 [k]):
   per row lse = log(sum exp(z - max)) + max (accumulate in f32 or better), *loss_sum (device double)
   += sum over rows of (lse - z[tgt]); dz A [k, V] (may be NULL) = bf16((exp(z - lse) - onehot) / denom). */
ql_status qlk_ce_rows(const float *z, const int32_t *tgt, int64_t k, int64_t V, double denom, double *loss_sum,
                      uint16_t *dz);
/* torch.optim.AdamW step over count f32 values, bit for bit the CPU's formula in engine/model/lora.c
   (adamw): the host computes the scalars exactly as that function does and passes them in;
   every device operation rounds as the CPU's (use __fmul_rn/__fadd_rn/__fdiv_rn/__fsqrt_rn, never
   fused). decay = (float)(1 - lr*wd), w1 = (float)(1 - b1), fb2 = (float)b2, w2 = (float)(1 - b2),
   neg_step = (float)(-(lr / bc1)), bc2_sqrt = (float)sqrt(bc2), eps = (float)eps. */
ql_status qlk_adamw(float *p, const float *g, float *m, float *v, int64_t count, float decay, float w1, float fb2,
                    float w2, float neg_step, float bc2_sqrt, float eps);
/* *out (device double) = sum of g[i]^2 (products in double) */
ql_status qlk_sumsq(const float *g, int64_t count, double *out);
/* g *= s */
ql_status qlk_scale(float *g, int64_t count, float s);

/* ---------------------------------------------------------------- attention.cu */

/* Causal attention over per-query key ranges. q A [n, heads*hd], k, v A [nk, kvh*hd]; query i of
   head h attends to keys [lo_i, hi_i) (lo_i raised to hi_i - window when window > 0) of kv head
   h / (heads / kvh); scores q.k / sqrtf(hd), softmax in f32; out A [n, heads*hd];
   lse S [n, heads] (may be NULL) = log(sum exp(s - max)) + max over the row's scaled scores.
   lo, hi: device int32 [n]. hd: 16..256, even. */
ql_status qlk_attn_fwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo, const int32_t *hi,
                       int64_t n, int heads, int kvh, int hd, int window, uint16_t *out, float *lse);
/* The gradients over the batch's own keys (nk == n): dout R [n, heads*hd];
   P_ij = exp(s_ij - lse_i), D_i = sum_d dout_i * out_i (per head), dP_ij = dout_i . v_j,
   dS_ij = P_ij (dP_ij - D_i); dq_i = sum_j dS_ij k_j / sqrt(hd); dk_j = sum_i dS_ij q_i / sqrt(hd)
   (summed over the query heads of the group); dv_j = sum_i P_ij dout_i (likewise).
   qlo, qhi: device int32 [n], the queries that see key j (ql_dec_key_ranges).
   dq A [n, heads*hd], dk, dv A [n, kvh*hd] are written (not accumulated). */
ql_status qlk_attn_bwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out, const float *lse,
                       const float *dout, const int32_t *lo, const int32_t *hi, const int32_t *qlo, const int32_t *qhi,
                       int64_t n, int heads, int kvh, int hd, int window, uint16_t *dq, uint16_t *dk, uint16_t *dv);

/* ---------------------------------------------------------------- flash_attn.cu */

/* Tensor-core attention over the batch's own keys without an n x n matrix (mma.sync, sm_80+),
   same contracts as qlk_attn_fwd / qlk_attn_bwd; hd a multiple of 16 up to 128. The backward
   takes device scratch of qlk_flash_scratch bytes (dout as bf16, and D). */
int qlk_flash_supported(int hd);
size_t qlk_flash_scratch(int64_t n, int heads, int kvh, int hd);
ql_status qlk_flash_fwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo, const int32_t *hi,
                        int64_t n, int heads, int kvh, int hd, int window, uint16_t *out, float *lse);
ql_status qlk_flash_bwd(const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out, const float *lse,
                        const float *dout, const int32_t *lo, const int32_t *hi, const int32_t *qlo, const int32_t *qhi,
                        int64_t n, int heads, int kvh, int hd, int window, uint16_t *dq, uint16_t *dk, uint16_t *dv,
                        void *scratch);

/* ---------------------------------------------------------------- attention_gemm.cu */

/* D S [n, heads] = per (token, head) sum_d dout R * out A */
ql_status qlk_attn_rowdot(const float *dout, const uint16_t *out, int64_t n, int heads, int hd, float *D);

/* The training path of attention through tensor-core products, per segment of the batch
   (documents no outside query looks into) of at most QL_ATTN_GEMM_MAX tokens; same
   contracts as qlk_attn_fwd / qlk_attn_bwd over the batch's own keys, plus the host copies
   lo_h, hi_h of the ranges and device scratch of qlk_attn_gemm_scratch bytes. */
#define QL_ATTN_GEMM_MAX 4096
/* 1 when the batch's ranges split into such segments */
int qlk_attn_gemm_fits(const int32_t *lo_h, const int32_t *hi_h, int64_t n);
size_t qlk_attn_gemm_scratch(int64_t n, int heads, int kvh, int hd);
ql_status qlk_attn_fwd_gemm(int dev, const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *lo_h,
                            const int32_t *hi_h, const int32_t *lo, const int32_t *hi, int64_t n, int heads, int kvh,
                            int hd, int window, uint16_t *out, float *lse, void *scratch);
ql_status qlk_attn_bwd_gemm(int dev, const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out,
                            const float *lse, const float *dout, const int32_t *lo_h, const int32_t *hi_h,
                            const int32_t *lo, const int32_t *hi, int64_t n, int heads, int kvh, int hd, int window,
                            uint16_t *dq, uint16_t *dk, uint16_t *dv, void *scratch);

/* ---------------------------------------------------------------- gemm.cu */

/* Row-major C [M, N] = alpha * op(A) @ op(B) + beta * C through cuBLASLt with f32 compute.
   op(A) is A [M, K] (lda >= K) or, with ta, A stored [K, M] transposed (lda >= M); op(B) is
   B [K, N] (ldb >= N) or, with tb, B stored [N, K] (ldb >= K). A and B: bf16 (both the same);
   C: bf16 or f32. beta = 0 never reads C. Descriptors and the chosen algorithm are cached per shape. */
ql_status qlk_gemm(int dev, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const void *A,
                   int64_t lda, const void *B, int64_t ldb, ql_dtype abdt, float beta, void *C, int64_t ldc,
                   ql_dtype cdt);

#endif

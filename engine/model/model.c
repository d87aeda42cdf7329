/*
 * model.c — the CPU reference forward of model.h: embeddings, RMSNorm, RoPE
 * (rotate-half layout), grouped-query attention over per-token key ranges,
 * SwiGLU MLP, lm_head; chunked cross-entropy; KV-cache generation.
 * Everything computes in f32 from the stored weights (bf16/f16 widened
 * exactly, NF4 dequantized as bitsandbytes does). These are the CPU op
 * table's pieces (decoder_cpu.c); the layer and the step that use them are
 * decoder.c's, for every backend.
 */
#include "model.h"
#include "decoder.h"
#include "model_internal.h"
#include "nf4.h"
#include "nf4_backend.h"
#include "platform.h"
#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SCRATCH_FLOATS (16 << 20)   /* at most 64 MiB of widened weight rows at a time */

/* ---------------------------------------------------------------- weights as f32 */

/* rows [r0, r1) of a [out, in] weight as f32 into dst */
typedef struct { const uint16_t *src; float *dst; } widen_job;
static void widen_range(void *arg, int64_t b, int64_t e)
{
    const widen_job *w = arg;
    uint32_t *d = (uint32_t *)w->dst;   /* bf16 -> f32 is a 16-bit shift: a loop the compiler vectorizes */
    for (int64_t i = b; i < e; i++) d[i] = (uint32_t)w->src[i] << 16;
}

void ql_bf16_to_f32_n(const uint16_t *src, float *dst, int64_t n)
{
    widen_job w = { src, dst };
    ql_parallel_for(n, 1 << 18, widen_range, &w);
}

ql_status ql_weight_rows_f32(const ql_tensor *w, int64_t r0, int64_t r1, int64_t in, float *dst)
{
    int64_t n = (r1 - r0) * in;
    if (w->dtype == QL_NF4) {
        ql_nf4 q;
        QL_TRY(ql_nf4_view(&q, w));
        return ql_nf4_dequantize_range_f32(&q, r0 * in, n, dst);
    }
    const char *base = (const char *)ql_tensor_data(w);
    switch (w->dtype) {
    case QL_F32: memcpy(dst, base + r0 * in * 4, (size_t)n * 4); break;
    case QL_BF16: ql_bf16_to_f32_n((const uint16_t *)base + r0 * in, dst, n); break;
    case QL_F16: { const uint16_t *p = (const uint16_t *)base + r0 * in; for (int64_t i = 0; i < n; i++) dst[i] = ql_f16_to_f32(p[i]); break; }
    default: return ql_fail(QL_EINVAL, "weights must be f32, bf16, f16 or nf4");
    }
    return QL_OK;
}

ql_status ql_model_scratch(ql_model *m, int64_t n)
{
    if (m->scratch_cap >= n) return QL_OK;
    free(m->scratch);
    m->scratch = malloc((size_t)n * sizeof(float));
    m->scratch_cap = m->scratch ? n : 0;
    return m->scratch ? QL_OK : ql_fail(QL_ENOMEM, "out of host memory for %lld weight values", (long long)n);
}

ql_status ql_weight_blocks(ql_model *m, const ql_tensor *w, int64_t in, int64_t out,
                           ql_status (*fn)(void *ud, const float *W, int64_t r0, int64_t r1), void *ud)
{
    if (w->dtype == QL_F32 && ql_tensor_is_contiguous(w)) return fn(ud, ql_tensor_data(w), 0, out);
    int64_t rows = SCRATCH_FLOATS / in;
    if (rows < 1) rows = 1;
    if (rows > out) rows = out;
    QL_TRY(ql_model_scratch(m, rows * in));
    for (int64_t r0 = 0; r0 < out; r0 += rows) {
        int64_t r1 = r0 + rows < out ? r0 + rows : out;
        QL_TRY(ql_weight_rows_f32(w, r0, r1, in, m->scratch));
        QL_TRY(fn(ud, m->scratch, r0, r1));
    }
    return QL_OK;
}

typedef struct { const float *x; float *y; int64_t n, in, out; } fwd_block;
static ql_status fwd_block_fn(void *ud, const float *W, int64_t r0, int64_t r1)
{
    const fwd_block *f = ud;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)f->n, (int)(r1 - r0), (int)f->in, 1.0f, f->x, (int)f->in, W,
                (int)f->in, 0.0f, f->y + r0, (int)f->out);
    return QL_OK;
}

/* y[n, out] = x[n, in] @ W^T (+ b). Weights are widened to f32 a block of rows at a time. */
ql_status ql_linear_fwd(ql_model *m, const ql_linear *L, const float *x, int64_t n, float *y)
{
    int64_t in = L->in, out = L->out;
    if (n == 0) return QL_OK;
    fwd_block f = { x, y, n, in, out };
    QL_TRY(ql_weight_blocks(m, L->w, in, out, fwd_block_fn, &f));
    if (L->b) {
        const float *b = ql_tensor_data(L->b);
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out; j++) y[i * out + j] += b[j];
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- per-layer pieces */

/* y = x * rsqrt(mean(x^2) + eps) * w, per row of H; r (may be NULL) keeps each row's rsqrt */
void ql_rmsnorm_r(const float *x, const float *w, int64_t n, int H, double eps, float *y, float *r)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * H;
        float *yi = y + i * H;
        float ss = 0;
        for (int j = 0; j < H; j++) ss += xi[j] * xi[j];
        float ri = 1.0f / sqrtf(ss / (float)H + (float)eps);
        if (r) r[i] = ri;
        for (int j = 0; j < H; j++) yi[j] = w[j] * (xi[j] * ri);
    }
}

void ql_rmsnorm(const float *x, const float *w, int64_t n, int H, double eps, float *y)
{
    ql_rmsnorm_r(x, w, n, H, eps, y, NULL);
}

/* rotate-half RoPE on nh heads of each row of x [n, nh*hd]; inverse rotates by
   minus the angle (the backward pass: the rotation is orthogonal) */
void ql_rope(float *x, int64_t n, int nh, int hd, const int32_t *pos, const float *inv_freq, int inverse)
{
    int half = hd / 2;
    for (int64_t i = 0; i < n; i++)
        for (int d = 0; d < half; d++) {
            float ang = (float)pos[i] * inv_freq[d];
            float c = cosf(ang), s = inverse ? -sinf(ang) : sinf(ang);
            for (int h = 0; h < nh; h++) {
                float *v = x + i * (int64_t)nh * hd + (int64_t)h * hd;
                float a = v[d], b = v[d + half];
                v[d] = a * c + (-b) * s;
                v[d + half] = b * c + a * s;
            }
        }
}

/* cross-entropy of one row of logits z[V] against target: logsumexp(z) - z[target];
   *mx and *se return the row maximum and sum of exp(z - mx) for a gradient */
double ql_ce_row(const float *z, int64_t V, int32_t target, float *mx, double *se)
{
    float m = -INFINITY;
    for (int64_t t = 0; t < V; t++) if (z[t] > m) m = z[t];
    double e = 0;
    for (int64_t t = 0; t < V; t++) e += exp((double)z[t] - m);
    *mx = m;
    *se = e;
    return (log(e) + m) - z[target];
}

void ql_attn_range(void *arg, int64_t b, int64_t e)
{
    ql_attn_job *j = arg;
    int Q = j->heads * j->hd, KV = j->kv_heads * j->hd, g = j->heads / j->kv_heads;
    float scale = 1.0f / sqrtf((float)j->hd);
    int64_t maxlen = 0;
    for (int64_t t = b; t < e; t++) {
        int64_t i = t / j->heads;
        if (j->hi[i] - j->lo[i] > maxlen) maxlen = j->hi[i] - j->lo[i];
    }
    float *p = malloc(sizeof(float) * (size_t)(maxlen > 0 ? maxlen : 1));
    if (!p) { __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED); return; }
    for (int64_t t = b; t < e; t++) {
        int64_t i = t / j->heads;
        int h = (int)(t % j->heads), kh = h / g;
        const float *qi = j->q + i * Q + (int64_t)h * j->hd;
        int64_t lo = j->lo[i], hi = j->hi[i];
        if (j->window > 0 && hi - j->window > lo) lo = hi - j->window;   /* Mistral's sliding window */
        float mx = -INFINITY;
        for (int64_t s = lo; s < hi; s++) {
            const float *ks = j->k + s * KV + (int64_t)kh * j->hd;
            float dot = 0;
            for (int d = 0; d < j->hd; d++) dot += qi[d] * ks[d];
            p[s - lo] = dot * scale;
            if (p[s - lo] > mx) mx = p[s - lo];
        }
        float sum = 0;
        for (int64_t s = lo; s < hi; s++) { p[s - lo] = expf(p[s - lo] - mx); sum += p[s - lo]; }
        float *oi = j->out + i * Q + (int64_t)h * j->hd;
        memset(oi, 0, sizeof(float) * (size_t)j->hd);
        for (int64_t s = lo; s < hi; s++) {
            float w = p[s - lo] / sum;
            const float *vs = j->v + s * KV + (int64_t)kh * j->hd;
            for (int d = 0; d < j->hd; d++) oi[d] += w * vs[d];
        }
    }
    free(p);
}

/* the scalar path over queries [s, stop) of j */
static ql_status attn_scalar(const ql_attn_job *j, int64_t s, int64_t stop)
{
    int64_t Q = (int64_t)j->heads * j->hd;
    ql_attn_job sub = *j;
    sub.q = j->q + s * Q;
    sub.out = j->out + s * Q;
    sub.lo = j->lo + s;
    sub.hi = j->hi + s;
    sub.n = stop - s;
    sub.failed = 0;
    ql_parallel_for(sub.n * j->heads, 16, ql_attn_range, &sub);
    if (sub.failed)
        return ql_fail(QL_ENOMEM, "out of host memory for the attention scores of %lld queries; use a shorter "
                                  "seq_len or a smaller batch", (long long)sub.n);
    return QL_OK;
}

/* Attention of a batch. Runs of queries that form one causal document over the
   batch's own keys (lo constant, hi = i + 1) go through BLAS, a (run x run) score
   matrix per head with the upper triangle masked; everything else (the KV cache,
   sliding windows) through the scalar ql_attn_range. Both compute softmax(q k^T /
   sqrt(hd)) v over the same keys. */
ql_status ql_attention(ql_attn_job *j, int keys_are_batch)
{
    int64_t n = j->n;
    int Q = j->heads * j->hd, KV = j->kv_heads * j->hd, g = j->heads / j->kv_heads, hd = j->hd;
    float scale = 1.0f / sqrtf((float)hd);
    int64_t i = 0;
    while (i < n) {
        int64_t s = i, e = i;
        if (keys_are_batch && j->lo[i] == i)
            while (e < n && j->lo[e] == s && j->hi[e] == e + 1) e++;
        int64_t len = e - s;
        if (len < 16 || (j->window > 0 && len > j->window)) {
            /* scalar: this query alone (or a short run) */
            int64_t stop = len > 0 ? e : i + 1;
            QL_TRY(attn_scalar(j, s, stop));
            i = stop;
            continue;
        }
        float *S = malloc(sizeof(float) * (size_t)(len * len));
        if (!S) {   /* no room for the score matrix: the scalar path needs less */
            QL_TRY(attn_scalar(j, s, e));
            i = e;
            continue;
        }
        for (int h = 0; h < j->heads; h++) {
            int kh = h / g;
            const float *Qh = j->q + s * Q + (int64_t)h * hd, *Kh = j->k + s * KV + (int64_t)kh * hd;
            const float *Vh = j->v + s * KV + (int64_t)kh * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)len, (int)len, hd, 1.0f, Qh, Q, Kh, KV, 0.0f, S, (int)len);
            for (int64_t r = 0; r < len; r++) {
                float *row = S + r * len, mx = -INFINITY, sum = 0;
                for (int64_t c = 0; c <= r; c++) { row[c] *= scale; if (row[c] > mx) mx = row[c]; }
                for (int64_t c = 0; c <= r; c++) { row[c] = expf(row[c] - mx); sum += row[c]; }
                for (int64_t c = 0; c <= r; c++) row[c] /= sum;
                for (int64_t c = r + 1; c < len; c++) row[c] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)len, hd, (int)len, 1.0f, S, (int)len, Vh, KV, 0.0f,
                        j->out + s * Q + (int64_t)h * hd, Q);
        }
        free(S);
        i = e;
    }
    return QL_OK;
}

void ql_embed_rows(const ql_tensor *E, const int32_t *ids, int64_t n, int H, float *x)
{
    const char *base = ql_tensor_data(E);
    for (int64_t i = 0; i < n; i++) {
        float *xi = x + i * H;
        int64_t r = ids[i];
        switch (E->dtype) {
        case QL_F32: memcpy(xi, base + r * H * 4, (size_t)H * 4); break;
        case QL_BF16: for (int j = 0; j < H; j++) xi[j] = ql_bf16_to_f32(((const uint16_t *)base)[r * H + j]); break;
        default: for (int j = 0; j < H; j++) xi[j] = ql_f16_to_f32(((const uint16_t *)base)[r * H + j]); break;
        }
    }
}

/* ---------------------------------------------------------------- forward (decoder.c) */

ql_status ql_model_logits(ql_model *m, const ql_batch *b, ql_kv_cache *cache, float *logits)
{
    ql_dec_step st = { .mode = QL_DEC_LOGITS, .batch = b, .cache = cache, .logits = logits };
    return ql_decoder_run(m, &st);
}

void ql_batch_ranges(int rows, int T, const int32_t *doc_lens, const int *ndocs, int32_t *pos, int32_t *lo, int32_t *hi)
{
    int d = 0;
    for (int r = 0; r < rows; r++) {
        int start = 0;
        int nd = doc_lens ? ndocs[r] : 1;
        for (int k = 0; k < nd; k++) {
            int len = doc_lens ? doc_lens[d++] : T;
            for (int t = 0; t < len && start + t < T; t++) {
                int64_t i = (int64_t)r * T + start + t;
                pos[i] = t;
                lo[i] = r * T + start;
                hi[i] = (int32_t)(i + 1);
            }
            start += len;
        }
        for (int t = start; t < T; t++) {   /* padding after the documents: its own tiny document */
            int64_t i = (int64_t)r * T + t;
            pos[i] = 0; lo[i] = (int32_t)i; hi[i] = (int32_t)(i + 1);
        }
    }
}

/* Cross-entropy through lm_head for every target of a batch (token i predicts
   labels[i + 1] when i + 1 is in its document), from the final-normed hidden
   states xf [n, H]. The vocabulary is walked a block of lm_head rows at a time
   with a running logsumexp per token, so the weight is widened once per 256
   tokens (twice with gradients) and full logits never exist. dxf (may be
   NULL): d (sum of losses / denom) / d xf is added to it. */
ql_status ql_lm_head_ce(ql_model *m, const ql_batch *b, const int32_t *labels, const float *xf, double denom,
                        double *sum, int64_t *count, float *dxf)
{
    const ql_linear *L = &m->lm_head;
    int64_t n = b->n, H = m->cfg.hidden, V = m->cfg.vocab;
    enum { TC = 256 };
    int64_t k = 0;
    for (int64_t i = 0; i + 1 < n; i++) {
        if (!(b->lo[i + 1] <= i && labels[i + 1] != -100)) continue;
        if (labels[i + 1] < 0 || labels[i + 1] >= V) return ql_fail(QL_EINVAL, "label %d outside the vocabulary", labels[i + 1]);
        k++;
    }
    if (k == 0) return QL_OK;
    int f32 = L->w->dtype == QL_F32 && ql_tensor_is_contiguous(L->w);
    int64_t rb = SCRATCH_FLOATS / H;
    if (rb < 1) rb = 1;
    if (rb > V) rb = V;
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)k);
    int32_t *tgt = malloc(sizeof(int32_t) * (size_t)k);
    float *xs = malloc(sizeof(float) * (size_t)(TC * H)), *lg = malloc(sizeof(float) * (size_t)(TC * rb));
    float *dxs = dxf ? malloc(sizeof(float) * (size_t)(TC * H)) : NULL;
    double mx[TC], se[TC];
    float zt[TC];
    ql_status s = rows && tgt && xs && lg && (!dxf || dxs) ? QL_OK : ql_fail(QL_ENOMEM, "out of host memory");
    if (s == QL_OK && !f32) s = ql_model_scratch(m, rb * H);
    k = 0;
    for (int64_t i = 0; s == QL_OK && i + 1 < n; i++)
        if (b->lo[i + 1] <= i && labels[i + 1] != -100) { rows[k] = i; tgt[k] = labels[i + 1]; k++; }
    for (int64_t c0 = 0; s == QL_OK && c0 < k; c0 += TC) {
        int tc = (int)(k - c0 < TC ? k - c0 : TC);
        for (int q = 0; q < tc; q++) {
            memcpy(xs + (int64_t)q * H, xf + rows[c0 + q] * H, sizeof(float) * (size_t)H);
            mx[q] = -INFINITY;
            se[q] = 0;
        }
        for (int pass = 0; pass < (dxf ? 2 : 1) && s == QL_OK; pass++) {
            if (pass == 1) memset(dxs, 0, sizeof(float) * (size_t)(tc * H));
            for (int64_t v0 = 0; v0 < V; v0 += rb) {
                int64_t v1 = v0 + rb < V ? v0 + rb : V, w = v1 - v0;
                const float *W = f32 ? (const float *)ql_tensor_data(L->w) + v0 * H : m->scratch;
                if (!f32 && (s = ql_weight_rows_f32(L->w, v0, v1, H, m->scratch))) break;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tc, (int)w, (int)H, 1.0f, xs, (int)H, W, (int)H,
                            0.0f, lg, (int)w);
                for (int q = 0; q < tc; q++) {
                    float *z = lg + (int64_t)q * w;
                    int32_t t = tgt[c0 + q];
                    if (pass == 0) {   /* running logsumexp */
                        float bm = -INFINITY;
                        for (int64_t j = 0; j < w; j++) if (z[j] > bm) bm = z[j];
                        if (bm > mx[q]) { se[q] *= exp(mx[q] - bm); mx[q] = bm; }
                        for (int64_t j = 0; j < w; j++) se[q] += exp((double)z[j] - mx[q]);
                        if (t >= v0 && t < v1) zt[q] = z[t - v0];
                    } else {           /* d/dz of (logsumexp - z_t) / denom */
                        double lse = log(se[q]) + mx[q];
                        for (int64_t j = 0; j < w; j++) z[j] = (float)(exp((double)z[j] - lse) / denom);
                        if (t >= v0 && t < v1) z[t - v0] -= (float)(1.0 / denom);
                    }
                }
                if (pass == 1)   /* d xs += dlogits @ W_block */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tc, (int)H, (int)w, 1.0f, lg, (int)w, W,
                                (int)H, 1.0f, dxs, (int)H);
            }
            if (pass == 0)
                for (int q = 0; q < tc; q++) { *sum += (log(se[q]) + mx[q]) - zt[q]; (*count)++; }
        }
        if (s == QL_OK && dxf)
            for (int q = 0; q < tc; q++)
                for (int64_t j = 0; j < H; j++) dxf[rows[c0 + q] * H + j] += dxs[(int64_t)q * H + j];
    }
    free(rows); free(tgt); free(xs); free(lg); free(dxs);
    return s;
}

ql_status ql_model_loss(ql_model *m, const ql_batch *b, const int32_t *labels, double *sum, int64_t *count)
{
    ql_dec_step st = { .mode = QL_DEC_LOSS, .batch = b, .labels = labels };
    ql_status s = ql_decoder_run(m, &st);
    *sum = st.loss_sum;
    *count = st.count;
    return s;
}

/* ---------------------------------------------------------------- generation */

ql_kv_cache *ql_kv_cache_new(const ql_model *m, int max_len)
{
    ql_kv_cache *c = calloc(1, sizeof *c);
    int L = m->cfg.layers;
    int64_t KV = (int64_t)m->cfg.kv_heads * m->cfg.head_dim;
    if (!c) { ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    c->layers = L;
    c->max_len = max_len;
    if (m->device.type != QL_DEV_CPU) {   /* the cache lives with the layers, in the decoder's activation dtype */
        const ql_dec_ops *ops = ql_dec_ops_for(m->device);
        if (!ops) { ql_kv_cache_free(c); return NULL; }
        c->dk = calloc((size_t)L, sizeof(ql_tensor *));
        c->dv = calloc((size_t)L, sizeof(ql_tensor *));
        int64_t shape[2] = { max_len, KV };
        int ok = c->dk && c->dv;
        for (int l = 0; ok && l < L; l++) {
            c->dk[l] = ql_tensor_new(ops->act, 2, shape, m->device);
            c->dv[l] = ql_tensor_new(ops->act, 2, shape, m->device);
            ok = c->dk[l] && c->dv[l];
        }
        if (!ok) { ql_kv_cache_free(c); ql_fail_context(QL_ENOMEM, "KV cache on the GPU: "); return NULL; }
        return c;
    }
    c->k = calloc((size_t)L, sizeof(float *));
    c->v = calloc((size_t)L, sizeof(float *));
    int ok = c->k && c->v;
    for (int l = 0; ok && l < L; l++) {
        c->k[l] = malloc(sizeof(float) * (size_t)(max_len * KV));
        c->v[l] = malloc(sizeof(float) * (size_t)(max_len * KV));
        ok = c->k[l] && c->v[l];
    }
    if (!ok) {
        ql_kv_cache_free(c);
        ql_fail(QL_ENOMEM, "out of host memory for a KV cache of %d positions", max_len);
        return NULL;
    }
    return c;
}

void ql_kv_cache_free(ql_kv_cache *c)
{
    if (!c) return;
    for (int l = 0; l < c->layers; l++) {
        if (c->k) free(c->k[l]);
        if (c->v) free(c->v[l]);
        if (c->dk) ql_tensor_release(c->dk[l]);
        if (c->dv) ql_tensor_release(c->dv[l]);
    }
    free(c->dk);
    free(c->dv);
    free(c->k);
    free(c->v);
    free(c);
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* picks the next id from logits z[V] */
static int32_t sample(float *z, int V, const ql_sample_opts *o, uint64_t step)
{
    if (o->temperature <= 0) {
        int32_t best = 0;
        for (int t = 1; t < V; t++) if (z[t] > z[best]) best = t;
        return best;
    }
    for (int t = 0; t < V; t++) z[t] /= o->temperature;
    float *sorted = malloc(sizeof(float) * (size_t)V);
    float cut = -INFINITY;
    if (sorted && (o->top_k > 0 || (o->top_p > 0 && o->top_p < 1))) {
        memcpy(sorted, z, sizeof(float) * (size_t)V);
        qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
        if (o->top_k > 0 && o->top_k < V) cut = sorted[o->top_k - 1];
        if (o->top_p > 0 && o->top_p < 1) {
            double se = 0, acc = 0;
            for (int t = 0; t < V; t++) se += exp((double)sorted[t] - sorted[0]);
            for (int t = 0; t < V; t++) {
                acc += exp((double)sorted[t] - sorted[0]) / se;
                if (acc >= o->top_p) { if (sorted[t] > cut) cut = sorted[t]; break; }
            }
        }
    }
    free(sorted);
    float mx = -INFINITY;
    for (int t = 0; t < V; t++) if (z[t] >= cut && z[t] > mx) mx = z[t];
    double se = 0;
    for (int t = 0; t < V; t++) if (z[t] >= cut) se += exp((double)z[t] - mx);
    double r = ql_rng_uniform(o->seed, 0x5a3e, step) * se, acc = 0;
    int32_t last = 0;
    for (int t = 0; t < V; t++) {
        if (z[t] < cut) continue;
        acc += exp((double)z[t] - mx);
        last = t;
        if (acc > r) return t;
    }
    return last;
}

ql_status ql_model_generate(ql_model *m, const int32_t *prompt, int n, const ql_sample_opts *o, int32_t *out, int *nout)
{
    *nout = 0;
    if (n <= 0) return ql_fail(QL_EINVAL, "generate: the prompt is empty");
    int total = n + o->max_new_tokens;
    ql_kv_cache *cache = ql_kv_cache_new(m, total);
    if (!cache) return QL_ENOMEM;
    int V = m->cfg.vocab;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n * 3);
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    ql_status s = pos && logits ? QL_OK : ql_fail(QL_ENOMEM, "out of host memory");
    int32_t *lo = pos + n, *hi = lo + n;
    if (s == QL_OK) {
        for (int i = 0; i < n; i++) {
            pos[i] = i;
            lo[i] = 0;
            hi[i] = i + 1;
        }
        ql_batch b = { n, prompt, pos, lo, hi };
        s = ql_model_logits(m, &b, cache, logits);
    }
    float *z = logits + (int64_t)(n - 1) * V;
    for (int step = 0; s == QL_OK && step < o->max_new_tokens; step++) {
        int32_t id = sample(z, V, o, (uint64_t)step);
        out[(*nout)++] = id;
        int stop = 0;
        if (o->nstop < 0) { for (int e = 0; e < m->cfg.n_eos; e++) stop |= id == m->cfg.eos_ids[e]; }
        else for (int e = 0; e < o->nstop; e++) stop |= id == o->stop[e];
        if (o->on_token && o->on_token(o->ud, id)) stop = 1;
        if (stop || step + 1 == o->max_new_tokens) break;
        int32_t p = n + step, l = 0, h = p + 1;
        ql_batch b = { 1, &id, &p, &l, &h };
        s = ql_model_logits(m, &b, cache, logits);
        z = logits;
    }
    free(pos);
    free(logits);
    ql_kv_cache_free(cache);
    return s;
}

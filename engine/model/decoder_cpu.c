/*
 * decoder_cpu.c — the CPU op table of the decoder (decoder.h): the f32
 * reference. Every A buffer is f32 here, so R and A are the same kind and
 * as_act never copies. The forward pieces are model.c's (the functions the
 * inference forward always used), the backward pieces mirror them; the
 * numbers are those of the earlier separate CPU forward and training code,
 * bit for bit.
 */
#include "decoder.h"
#include "model_internal.h"
#include "platform.h"
#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


/* ---------------------------------------------------------------- memory */

static void *cpu_alloc(ql_device dev, size_t bytes)
{
    (void)dev;
    void *p = malloc(bytes ? bytes : 1);
    if (!p) ql_fail(QL_ENOMEM, "out of host memory for %.1f MiB of activations; use a shorter seq_len, a smaller "
                               "batch, or gradient checkpointing", (double)bytes / 1048576.0);
    return p;
}
static void cpu_free(ql_device dev, void *p, size_t bytes) { (void)dev; (void)bytes; free(p); }
static ql_status cpu_copy(ql_device dev, void *dst, const void *src, size_t n)
{
    (void)dev;
    if (n) memcpy(dst, src, n);
    return QL_OK;
}
static ql_status cpu_memset0(ql_device dev, void *p, size_t n)
{
    (void)dev;
    if (n) memset(p, 0, n);
    return QL_OK;
}

/* ---------------------------------------------------------------- checkpoints in host memory */

/* Checkpoints in host memory: the CPU's memory is host memory, so these are plain copies; they
   exist so that the decoder's order of stores, fetches and slots is tested everywhere.
   QL_CPU_ASYNC_COPIES=1 (for tests) makes them as late as a device's copy stream may be: a copy
   is only queued and runs when ck_ready asks for its slot (the queue in order up to that slot's
   last copy, as a stream would) or at a sync; as_act then copies into its dst as a cast does.
   What a device would leave undefined becomes NaN: a fetch's destination from the moment it is
   queued, and a store's copy when its source changed before it ran. A decoder that reads a
   staging buffer before its ck_ready, or overwrites one before its store ran, then gets NaN
   gradients (tests/c/test_decoder_cpu.c). */
typedef struct pending_copy { void *dst; const void *src; size_t bytes; int slot; uint64_t hash; } pending_copy;
static pending_copy *pending;
static size_t npending, cap_pending;

static int async_copies(void)
{
    const char *e = getenv("QL_CPU_ASYNC_COPIES");   /* read each time: a test sets it for one step */
    return e && e[0] == '1';
}

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* runs the queued copies in order, the first upto of them */
static void run_pending(size_t upto)
{
    if (!upto) return;
    for (size_t i = 0; i < upto; i++) {
        pending_copy *c = &pending[i];
        if (c->hash && (fnv1a(c->src, c->bytes) | 1) != c->hash) memset(c->dst, 0xff, c->bytes);   /* a torn copy */
        else memcpy(c->dst, c->src, c->bytes);
    }
    memmove(pending, pending + upto, sizeof *pending * (npending - upto));
    npending -= upto;
}

static ql_status cpu_ck_copy(int slot, void *dst, const void *src, size_t bytes, int store)
{
    if (!async_copies()) {
        memcpy(dst, src, bytes);
        return QL_OK;
    }
    if (npending == cap_pending) {
        size_t cap = cap_pending ? 2 * cap_pending : 16;
        pending_copy *p = realloc(pending, sizeof *p * cap);
        if (!p) return ql_fail(QL_ENOMEM, "out of host memory");
        pending = p;
        cap_pending = cap;
    }
    /* the stream runs its copies in order: the earlier ones that read or write what this one
       writes come first (here, now) */
    size_t upto = 0;
    for (size_t i = 0; i < npending; i++) {
        const char *a = dst, *s0 = pending[i].src, *d0 = pending[i].dst;
        if ((s0 < a + bytes && a < s0 + pending[i].bytes) || (d0 < a + bytes && a < d0 + pending[i].bytes)) upto = i + 1;
    }
    run_pending(upto);
    /* a store's source must stay as it is until the copy runs; a fetch's destination is
       undefined until then */
    pending[npending++] = (pending_copy){ dst, src, bytes, slot, store ? fnv1a(src, bytes) | 1 : 0 };
    if (!store) memset(dst, 0xff, bytes);
    return QL_OK;
}
static ql_status cpu_ck_store(ql_dec_ctx *c, int slot, void *host, const void *src, size_t bytes)
{
    (void)c;
    return cpu_ck_copy(slot, host, src, bytes, 1);
}
static ql_status cpu_ck_fetch(ql_dec_ctx *c, int slot, void *dst, const void *host, size_t bytes)
{
    (void)c;
    return cpu_ck_copy(slot, dst, host, bytes, 0);
}
static ql_status cpu_ck_ready(ql_dec_ctx *c, int slot)
{
    (void)c;
    size_t upto = 0;
    for (size_t i = 0; i < npending; i++) if (pending[i].slot == slot) upto = i + 1;
    run_pending(upto);
    return QL_OK;
}
/* ---------------------------------------------------------------- norms, residual, RoPE */

static ql_status cpu_sync(ql_device dev)
{
    (void)dev;
    run_pending(npending);   /* the checkpoint copies still queued (QL_CPU_ASYNC_COPIES) */
    return QL_OK;
}

static size_t cpu_aux_size(const ql_model *m, const ql_lora *l, int64_t n, int64_t mr, int train)
{
    (void)m; (void)l; (void)n; (void)mr; (void)train;
    return 0;   /* the CPU widens weights into m->scratch */
}

static ql_status cpu_embed(ql_dec_ctx *c, const ql_dec_batch *b, float *x)
{
    ql_embed_rows(c->m->embed, b->ids, b->n, c->m->cfg.hidden, x);
    return QL_OK;
}

static ql_status cpu_rmsnorm(ql_dec_ctx *c, const float *x, const ql_tensor *w, int64_t n, void *y, float *r)
{
    ql_rmsnorm_r(x, ql_tensor_data(w), n, c->m->cfg.hidden, c->m->cfg.eps, y, r);
    return QL_OK;
}

/* dx += d/dx of y = w * x * r(x), given dy */
static ql_status cpu_rmsnorm_bwd(ql_dec_ctx *c, const float *x, const ql_tensor *wt, const float *r, const float *dy,
                                 int64_t n, float *dx)
{
    int H = c->m->cfg.hidden;
    const float *w = ql_tensor_data(wt);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * H, *dyi = dy + i * H;
        float *dxi = dx + i * H;
        double dot = 0;
        for (int j = 0; j < H; j++) dot += (double)w[j] * dyi[j] * xi[j];
        float ri = r[i], k = (float)(dot * (double)ri * ri * ri / H);
        for (int j = 0; j < H; j++) dxi[j] += ri * w[j] * dyi[j] - xi[j] * k;
    }
    return QL_OK;
}

static ql_status cpu_residual(ql_dec_ctx *c, float *out, const float *a, const void *bv, int64_t count)
{
    (void)c;
    const float *b = bv;
    for (int64_t i = 0; i < count; i++) out[i] = a[i] + b[i];
    return QL_OK;
}

static ql_status cpu_widen(ql_dec_ctx *c, const void *src, int64_t count, float *dst)
{
    (void)c;
    memcpy(dst, src, sizeof(float) * (size_t)count);
    return QL_OK;
}

static void *cpu_host_alloc(ql_device dev, size_t bytes) { return cpu_alloc(dev, bytes); }
static void cpu_host_free(ql_device dev, void *p) { (void)dev; free(p); }

static const void *cpu_as_act(ql_dec_ctx *c, const float *src, int64_t count, void *dst, ql_status *st)
{
    (void)c;
    *st = QL_OK;
    if (dst && async_copies()) {   /* as a device's cast into dst (see the checkpoint copies) */
        memcpy(dst, src, sizeof(float) * (size_t)count);
        return dst;
    }
    return src;
}

static ql_status cpu_rope(ql_dec_ctx *c, void *x, const ql_dec_batch *b, int nh, int inverse)
{
    ql_rope(x, b->n, nh, c->m->cfg.head_dim, b->pos, c->m->inv_freq, inverse);
    return QL_OK;
}

/* ---------------------------------------------------------------- attention */

static ql_status cpu_attn(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                          int keys_are_batch, void *out, float *lse)
{
    (void)lse;   /* the CPU backward recomputes the probabilities */
    const ql_model_config *cf = &c->m->cfg;
    ql_attn_job j = { q, k, v, out, b->lo, b->hi, cf->heads, cf->kv_heads, cf->head_dim, cf->sliding_window, b->n, 0 };
    return ql_attention(&j, keys_are_batch);
}

typedef struct {
    const float *q, *k, *v, *datt;
    float *dq, *dk, *dv;
    const int32_t *lo, *hi;
    int heads, kv_heads, hd, window;
    int64_t n;
    int failed;                   /* set by a task that found no memory: its gradients are not written */
} attn_bwd_job;

/* one task per kv head: it alone writes that head's dk, dv */
static void attn_bwd_range(void *arg, int64_t b, int64_t e)
{
    attn_bwd_job *j = arg;
    int Q = j->heads * j->hd, KV = j->kv_heads * j->hd, g = j->heads / j->kv_heads, hd = j->hd;
    float scale = 1.0f / sqrtf((float)hd);
    int64_t maxlen = 1;
    for (int64_t i = 0; i < j->n; i++) if (j->hi[i] - j->lo[i] > maxlen) maxlen = j->hi[i] - j->lo[i];
    float *p = malloc(sizeof(float) * (size_t)maxlen * 2);
    if (!p) { __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED); return; }
    float *dp = p + maxlen;
    for (int64_t kh = b; kh < e; kh++)
        for (int64_t i = 0; i < j->n; i++)
            for (int h = (int)kh * g; h < (int)kh * g + g; h++) {
                const float *qi = j->q + i * Q + (int64_t)h * hd, *di = j->datt + i * Q + (int64_t)h * hd;
                float *dqi = j->dq + i * Q + (int64_t)h * hd;
                int64_t lo = j->lo[i], hi = j->hi[i];
                if (j->window > 0 && hi - j->window > lo) lo = hi - j->window;
                /* recompute the probabilities exactly as the forward did */
                float mx = -INFINITY;
                for (int64_t s = lo; s < hi; s++) {
                    const float *ks = j->k + s * KV + kh * hd;
                    float dot = 0;
                    for (int d = 0; d < hd; d++) dot += qi[d] * ks[d];
                    p[s - lo] = dot * scale;
                    if (p[s - lo] > mx) mx = p[s - lo];
                }
                float sum = 0;
                for (int64_t s = lo; s < hi; s++) { p[s - lo] = expf(p[s - lo] - mx); sum += p[s - lo]; }
                double pdp = 0;
                for (int64_t s = lo; s < hi; s++) {
                    p[s - lo] /= sum;
                    const float *vs = j->v + s * KV + kh * hd;
                    float dot = 0;
                    for (int d = 0; d < hd; d++) dot += di[d] * vs[d];
                    dp[s - lo] = dot;
                    pdp += (double)p[s - lo] * dot;
                }
                for (int64_t s = lo; s < hi; s++) {
                    float ds = p[s - lo] * (dp[s - lo] - (float)pdp) * scale;
                    const float *ks = j->k + s * KV + kh * hd;
                    float *dks = j->dk + s * KV + kh * hd, *dvs = j->dv + s * KV + kh * hd;
                    for (int d = 0; d < hd; d++) {
                        dqi[d] += ds * ks[d];
                        dks[d] += ds * qi[d];
                        dvs[d] += p[s - lo] * di[d];
                    }
                }
            }
    free(p);
}

static ql_status cpu_attn_bwd(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                              const void *out, const float *lse, const float *dout, void *dq, void *dk, void *dv)
{
    (void)out; (void)lse;
    const ql_model_config *cf = &c->m->cfg;
    int64_t n = b->n, Q = (int64_t)cf->heads * cf->head_dim, KV = (int64_t)cf->kv_heads * cf->head_dim;
    memset(dq, 0, sizeof(float) * (size_t)(n * Q));
    memset(dk, 0, sizeof(float) * (size_t)(n * KV));
    memset(dv, 0, sizeof(float) * (size_t)(n * KV));
    attn_bwd_job j = { q, k, v, dout, dq, dk, dv, b->lo, b->hi, cf->heads, cf->kv_heads, cf->head_dim,
                       cf->sliding_window, n, 0 };
    ql_parallel_for(cf->kv_heads, 1, attn_bwd_range, &j);
    if (j.failed)
        return ql_fail(QL_ENOMEM, "out of host memory for the attention backward of %lld tokens; use a shorter "
                                  "seq_len or a smaller batch", (long long)n);
    return QL_OK;
}

/* ---------------------------------------------------------------- SwiGLU */

static ql_status cpu_swiglu(ql_dec_ctx *c, const void *gv, const void *uv, void *hv, int64_t count)
{
    (void)c;
    const float *g = gv, *u = uv;
    float *h = hv;
    for (int64_t i = 0; i < count; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return QL_OK;
}

static ql_status cpu_swiglu_bwd(ql_dec_ctx *c, const void *gv, const void *uv, const float *dh, void *dgv, void *duv,
                                int64_t count)
{
    (void)c;
    const float *g = gv, *u = uv;
    float *dg = dgv, *du = duv;
    for (int64_t i = 0; i < count; i++) {
        float gi = g[i], sg = 1.0f / (1.0f + expf(-gi)), silu = gi * sg;
        du[i] = dh[i] * silu;
        dg[i] = dh[i] * u[i] * (sg * (1.0f + gi * (1.0f - sg)));
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- linear + LoRA */

/* dst (+)= dropout(src) with the mask of (seed, stream, elem0 + element) */
static void apply_dropout(const ql_dec_lin *L, const float *src, int64_t count, float *dst, int accumulate)
{
    float keep = 1.0f / (1.0f - L->dropout);
    for (int64_t i = 0; i < count; i++) {
        float v = ql_rng_uniform(L->seed, L->stream, L->elem0 + (uint64_t)i) < L->dropout ? 0.0f : src[i] * keep;
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

static const float *dropout_x(const ql_dec_lin *L, const float *x, int64_t count, float *out)
{
    if (!(L->dropout > 0)) return x;
    apply_dropout(L, x, count, out, 0);
    return out;
}

static ql_status cpu_linear(ql_dec_ctx *c, const ql_dec_lin *L, const void *xv, int64_t n, void *yv, void *xav)
{
    const float *x = xv;
    float *y = yv, *xa = xav;
    if (y) QL_TRY(ql_linear_fwd(c->m, L->base, x, n, y));
    const ql_lora_mod *mod = L->mod;
    if (!mod || n == 0) return QL_OK;
    const float *xd = dropout_x(L, x, n * mod->in, c->tmp);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, mod->r, mod->in, 1.0f, xd, mod->in, L->A, mod->in,
                0.0f, xa, mod->r);
    if (y)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, mod->out, mod->r, mod->scale, xa, mod->r, L->B,
                    mod->r, 1.0f, y, mod->out);
    return QL_OK;
}

typedef struct { const float *dy; float *dx; int64_t n, in, out; int accumulate; } bwd_block;
static ql_status bwd_block_fn(void *ud, const float *W, int64_t r0, int64_t r1)
{
    const bwd_block *b = ud;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)b->n, (int)b->in, (int)(r1 - r0), 1.0f, b->dy + r0,
                (int)b->out, W, (int)b->in, (r0 == 0 && !b->accumulate) ? 0.0f : 1.0f, b->dx, (int)b->in);
    return QL_OK;
}

/* dx (+)= dy W for a frozen [out, in] weight, widened a block of rows at a time */
static ql_status base_bwd(ql_model *m, const ql_linear *L, const float *dy, int64_t n, float *dx, int accumulate)
{
    if (n == 0) return QL_OK;
    bwd_block b = { dy, dx, n, L->in, L->out, accumulate };
    return ql_weight_blocks(m, L->w, L->in, L->out, bwd_block_fn, &b);
}

static ql_status cpu_linear_bwd(ql_dec_ctx *c, const ql_dec_lin *L, const void *xv, const void *xav, const void *dyv,
                                int64_t n, float *dx, int accumulate)
{
    const float *x = xv, *xa = xav, *dy = dyv;
    QL_TRY(base_bwd(c->m, L->base, dy, n, dx, accumulate));
    const ql_lora_mod *mod = L->mod;
    if (!mod || n == 0) return QL_OK;
    int r = mod->r, in = mod->in, out = mod->out;
    float *tmp = c->tmp, *tr = c->tr;
    /* gB += scale dy^T xa */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, (int)n, mod->scale, dy, out, xa, r, 1.0f, L->gB, r);
    /* tr = dy B [n, r]; gA += scale tr^T dropout(x) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, r, out, 1.0f, dy, out, L->B, r, 0.0f, tr, r);
    const float *xd = dropout_x(L, x, n * in, tmp);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, (int)n, mod->scale, tr, r, xd, in, 1.0f, L->gA, in);
    /* dx += scale (tr A) through the dropout mask */
    if (L->dropout > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, in, r, mod->scale, tr, r, L->A, in, 0.0f, tmp, in);
        apply_dropout(L, tmp, n * in, dx, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, in, r, mod->scale, tr, r, L->A, in, 1.0f, dx, in);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- lm_head */

static ql_status cpu_lm_head_ce(ql_dec_ctx *c, const ql_dec_batch *db, const int32_t *labels, const void *xf,
                                double denom, double *sum, int64_t *count, float *dxf)
{
    ql_batch b = { db->n, db->ids, db->pos, db->lo, db->hi };
    return ql_lm_head_ce(c->m, &b, labels, xf, denom, sum, count, dxf);
}

static ql_status cpu_lm_head_logits(ql_dec_ctx *c, const void *xf, int64_t r0, int64_t rows, float *host)
{
    return ql_linear_fwd(c->m, &c->m->lm_head, (const float *)xf + r0 * c->m->cfg.hidden, rows, host);
}

static ql_status cpu_kv_store(ql_dec_ctx *c, ql_kv_cache *kv, int l, const ql_dec_batch *b, const void *kp,
                              const void *vp)
{
    int64_t KV = (int64_t)c->m->cfg.kv_heads * c->m->cfg.head_dim;
    const float *k = kp, *v = vp;
    for (int64_t i = 0; i < b->n; i++) {
        memcpy(kv->k[l] + (int64_t)b->pos[i] * KV, k + i * KV, sizeof(float) * (size_t)KV);
        memcpy(kv->v[l] + (int64_t)b->pos[i] * KV, v + i * KV, sizeof(float) * (size_t)KV);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- optimizer */

static ql_status cpu_adamw(ql_device dev, float *p, const float *g, float *m, float *v, int64_t count, double lr,
                           double b1, double b2, double eps, double wd, int64_t step)
{
    (void)dev;
    ql_adamw_f32(p, g, m, v, count, lr, b1, b2, eps, wd, step);
    return QL_OK;
}

static ql_status cpu_sumsq(ql_device dev, const float *g, int64_t count, double *out)
{
    (void)dev;
    double s = 0;
    for (int64_t k = 0; k < count; k++) s += (double)g[k] * g[k];
    *out = s;
    return QL_OK;
}

static ql_status cpu_scale(ql_device dev, float *g, int64_t count, float s)
{
    (void)dev;
    for (int64_t k = 0; k < count; k++) g[k] *= s;
    return QL_OK;
}

const ql_dec_ops ql_dec_cpu_ops = {
    .name = "cpu",
    .act = QL_F32,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memset0 = cpu_memset0,
    .aux_size = cpu_aux_size,
    .sync = cpu_sync,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .residual = cpu_residual,
    .as_act = cpu_as_act,
    .widen = cpu_widen,
    .rope = cpu_rope,
    .attn = cpu_attn,
    .attn_bwd = cpu_attn_bwd,
    .swiglu = cpu_swiglu,
    .swiglu_bwd = cpu_swiglu_bwd,
    .linear = cpu_linear,
    .linear_bwd = cpu_linear_bwd,
    .lm_head_ce = cpu_lm_head_ce,
    .lm_head_logits = cpu_lm_head_logits,
    .kv_store = cpu_kv_store,
    .adamw = cpu_adamw,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .ck_store = cpu_ck_store,
    .ck_fetch = cpu_ck_fetch,
    .ck_ready = cpu_ck_ready,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
};

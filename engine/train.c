/*
 * train.c — the CPU reference of a QLoRA training step (lora.h): forward
 * through the frozen base with adapters, chunked cross-entropy, and the
 * backward pass written as explicit functions mirroring the forward ones,
 * producing gradients for the adapters only. The frozen path computes with
 * the very functions of model.c, so without adapters the forward equals the
 * inference forward bit for bit.
 *
 * Letters: n tokens, H hidden, NI intermediate, Q = heads * hd, KV = kv_heads * hd,
 * r LoRA rank, V vocab.
 */
#include "lora.h"
#include "model_internal.h"
#include "platform.h"
#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SCRATCH_FLOATS (16 << 20)

/* ---------------------------------------------------------------- activations of one layer */

typedef struct acts {
    float *r1, *xn1;          /* [n], [n, H] */
    float *q, *k, *v;         /* [n, Q] [n, KV] [n, KV]; q and k after RoPE */
    float *att;               /* [n, Q] */
    float *xmid, *r2, *xn2;   /* [n, H] [n] [n, H] */
    float *g, *u, *hsw;       /* [n, NI] each; hsw = silu(g) * u */
    float *xa[QL_NTARGETS];   /* [n, r]: dropout(x) A^T per adapted target */
} acts;

static int64_t acts_floats(const ql_model *m, const ql_lora *l, int64_t n)
{
    const ql_model_config *c = &m->cfg;
    int64_t Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim;
    return n * (2 + 3 * (int64_t)c->hidden + 2 * Q + 2 * KV + 3 * (int64_t)c->inter + (l ? QL_NTARGETS * (int64_t)l->r : 0));
}

static void acts_carve(acts *a, float *p, const ql_model *m, const ql_lora *l, int64_t n)
{
    const ql_model_config *c = &m->cfg;
    int64_t H = c->hidden, Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim, NI = c->inter;
    a->r1 = p; p += n;
    a->xn1 = p; p += n * H;
    a->q = p; p += n * Q;
    a->k = p; p += n * KV;
    a->v = p; p += n * KV;
    a->att = p; p += n * Q;
    a->xmid = p; p += n * H;
    a->r2 = p; p += n;
    a->xn2 = p; p += n * H;
    a->g = p; p += n * NI;
    a->u = p; p += n * NI;
    a->hsw = p; p += n * NI;
    for (int t = 0; t < QL_NTARGETS; t++) { a->xa[t] = l ? p : NULL; if (l) p += n * l->r; }
}

/* ---------------------------------------------------------------- pieces */

/* dx += d/dx of y = w * x * r(x), given dy */
static void rmsnorm_bwd(const float *x, const float *w, const float *r, const float *dy, int64_t n, int H, float *dx)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * H, *dyi = dy + i * H;
        float *dxi = dx + i * H;
        double dot = 0;
        for (int j = 0; j < H; j++) dot += (double)w[j] * dyi[j] * xi[j];
        float ri = r[i], c = (float)(dot * (double)ri * ri * ri / H);
        for (int j = 0; j < H; j++) dxi[j] += ri * w[j] * dyi[j] - xi[j] * c;
    }
}

typedef struct dropctx { const ql_lora *l; int train; int layer; } dropctx;

/* dst (+)= dropout(src) for the adapter of target t: the mask is a function of
   (seed, dropout step, layer, target, element), so backward regenerates the
   forward's mask exactly */
static void apply_dropout(const dropctx *dc, int t, const float *src, int64_t count, float *dst, int accumulate)
{
    const ql_lora *l = dc->l;
    uint64_t stream = (l->dropout_step << 16) ^ ((uint64_t)dc->layer << 4) ^ (uint64_t)t ^ 0xd50ull << 48;
    float keep = 1.0f / (1.0f - l->dropout);
    for (int64_t i = 0; i < count; i++) {
        float v = ql_rng_uniform(l->seed, stream, (uint64_t)i) < l->dropout ? 0.0f : src[i] * keep;
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

static int dropout_on(const dropctx *dc) { return dc->train && dc->l->dropout > 0; }

/* dropout(x) into out, or x itself when no dropout applies */
static const float *dropout_x(const dropctx *dc, int t, const float *x, int64_t count, float *out)
{
    if (!dropout_on(dc)) return x;
    apply_dropout(dc, t, x, count, out, 0);
    return out;
}

/* y = x W^T + b + scale (dropout(x) A^T) B^T; xa = dropout(x) A^T kept for backward */
static ql_status lin_fwd(ql_model *m, const ql_linear *L, const ql_lora_mod *mod, int t, const dropctx *dc,
                         const float *x, int64_t n, float *y, float *xa, float *tmp)
{
    QL_TRY(ql_linear_fwd(m, L, x, n, y));
    if (!mod || n == 0) return QL_OK;
    const float *xd = dropout_x(dc, t, x, n * mod->in, tmp);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, mod->r, mod->in, 1.0f, xd, mod->in, mod->A, mod->in,
                0.0f, xa, mod->r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, mod->out, mod->r, mod->scale, xa, mod->r, mod->B, mod->r,
                1.0f, y, mod->out);
    return QL_OK;
}

/* dx (+)= dy W for a frozen [out, in] weight, widened a block of rows at a time */
static ql_status base_bwd(ql_model *m, const ql_linear *L, const float *dy, int64_t n, float *dx, int accumulate)
{
    int64_t in = L->in, out = L->out;
    if (n == 0) return QL_OK;
    if (L->w->dtype == QL_F32 && ql_tensor_is_contiguous(L->w)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)in, (int)out, 1.0f, dy, (int)out,
                    ql_tensor_data(L->w), (int)in, accumulate ? 1.0f : 0.0f, dx, (int)in);
        return QL_OK;
    }
    int64_t rows = SCRATCH_FLOATS / in;
    if (rows < 1) rows = 1;
    if (rows > out) rows = out;
    QL_TRY(ql_model_scratch(m, rows * in));
    for (int64_t r0 = 0; r0 < out; r0 += rows) {
        int64_t r1 = r0 + rows < out ? r0 + rows : out;
        QL_TRY(ql_weight_rows_f32(L->w, r0, r1, in, m->scratch));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)in, (int)(r1 - r0), 1.0f, dy + r0, (int)out,
                    m->scratch, (int)in, (r0 == 0 && !accumulate) ? 0.0f : 1.0f, dx, (int)in);
    }
    return QL_OK;
}

/* backward of lin_fwd: dx (+)= dy W + adapter path; accumulates gA, gB */
static ql_status lin_bwd(ql_model *m, const ql_linear *L, ql_lora_mod *mod, int t, const dropctx *dc,
                         const float *x, const float *xa, const float *dy, int64_t n, float *dx, int accumulate,
                         float *tmp, float *tr)
{
    QL_TRY(base_bwd(m, L, dy, n, dx, accumulate));
    if (!mod || n == 0) return QL_OK;
    int r = mod->r, in = mod->in, out = mod->out;
    /* gB += scale dy^T xa */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, (int)n, mod->scale, dy, out, xa, r, 1.0f, mod->gB, r);
    /* tr = dy B [n, r]; gA += scale tr^T dropout(x) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, r, out, 1.0f, dy, out, mod->B, r, 0.0f, tr, r);
    const float *xd = dropout_x(dc, t, x, n * in, tmp);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, (int)n, mod->scale, tr, r, xd, in, 1.0f, mod->gA, in);
    /* dx += scale (tr A) through the dropout mask */
    if (dropout_on(dc)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, in, r, mod->scale, tr, r, mod->A, in, 0.0f, tmp, in);
        apply_dropout(dc, t, tmp, n * in, dx, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, in, r, mod->scale, tr, r, mod->A, in, 1.0f, dx, in);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- attention backward */

typedef struct {
    const float *q, *k, *v, *datt;
    float *dq, *dk, *dv;
    const int32_t *lo, *hi;
    int heads, kv_heads, hd, window;
    int64_t n;
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
    if (!p) return;
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

/* ---------------------------------------------------------------- one layer */

typedef struct work {
    float *tmp;     /* [n, max(H, Q, NI)] dropout scratch and gradient of the adapter path */
    float *tr;      /* [n, r] */
} work;

static ql_status layer_fwd(ql_model *m, ql_lora *l, int layer, const ql_batch *b, int train, const float *xin, acts *a,
                           float *xout, work *w)
{
    const ql_model_config *c = &m->cfg;
    const ql_block *B = &m->blocks[layer];
    int64_t n = b->n, H = c->hidden, NI = c->inter;
    dropctx dc = { l, train, layer };
    ql_lora_mod *mods[QL_NTARGETS];
    for (int t = 0; t < QL_NTARGETS; t++) mods[t] = ql_lora_at(l, layer, t);
    ql_rmsnorm_r(xin, ql_tensor_data(B->attn_norm), n, (int)H, c->eps, a->xn1, a->r1);
    QL_TRY(lin_fwd(m, &B->q, mods[QL_T_Q], QL_T_Q, &dc, a->xn1, n, a->q, a->xa[QL_T_Q], w->tmp));
    QL_TRY(lin_fwd(m, &B->k, mods[QL_T_K], QL_T_K, &dc, a->xn1, n, a->k, a->xa[QL_T_K], w->tmp));
    QL_TRY(lin_fwd(m, &B->v, mods[QL_T_V], QL_T_V, &dc, a->xn1, n, a->v, a->xa[QL_T_V], w->tmp));
    ql_rope(a->q, n, c->heads, c->head_dim, b->pos, m->inv_freq, 0);
    ql_rope(a->k, n, c->kv_heads, c->head_dim, b->pos, m->inv_freq, 0);
    ql_attn_job j = { a->q, a->k, a->v, a->att, b->lo, b->hi, c->heads, c->kv_heads, c->head_dim, c->sliding_window, n };
    ql_attention(&j, 1);
    QL_TRY(lin_fwd(m, &B->o, mods[QL_T_O], QL_T_O, &dc, a->att, n, a->xmid, a->xa[QL_T_O], w->tmp));
    for (int64_t i = 0; i < n * H; i++) a->xmid[i] = xin[i] + a->xmid[i];
    ql_rmsnorm_r(a->xmid, ql_tensor_data(B->mlp_norm), n, (int)H, c->eps, a->xn2, a->r2);
    QL_TRY(lin_fwd(m, &B->gate, mods[QL_T_GATE], QL_T_GATE, &dc, a->xn2, n, a->g, a->xa[QL_T_GATE], w->tmp));
    QL_TRY(lin_fwd(m, &B->up, mods[QL_T_UP], QL_T_UP, &dc, a->xn2, n, a->u, a->xa[QL_T_UP], w->tmp));
    for (int64_t i = 0; i < n * NI; i++) a->hsw[i] = a->g[i] / (1.0f + expf(-a->g[i])) * a->u[i];
    QL_TRY(lin_fwd(m, &B->down, mods[QL_T_DOWN], QL_T_DOWN, &dc, a->hsw, n, xout, a->xa[QL_T_DOWN], w->tmp));
    for (int64_t i = 0; i < n * H; i++) xout[i] = a->xmid[i] + xout[i];
    return QL_OK;
}

/* dx: in: d loss / d layer output; out: d loss / d layer input */
static ql_status layer_bwd(ql_model *m, ql_lora *l, int layer, const ql_batch *b, int train, const float *xin, acts *a,
                           float *dx, float *g1, float *g2, float *g3, work *w)
{
    const ql_model_config *c = &m->cfg;
    const ql_block *B = &m->blocks[layer];
    int64_t n = b->n, H = c->hidden, NI = c->inter;
    int64_t Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim;
    dropctx dc = { l, train, layer };
    ql_lora_mod *mods[QL_NTARGETS];
    for (int t = 0; t < QL_NTARGETS; t++) mods[t] = ql_lora_at(l, layer, t);
    /* MLP: dx is d xout = d xmid (residual) = d down-output */
    float *dh = g1, *dg = g2, *du = g3;                       /* [n, NI] each */
    QL_TRY(lin_bwd(m, &B->down, mods[QL_T_DOWN], QL_T_DOWN, &dc, a->hsw, a->xa[QL_T_DOWN], dx, n, dh, 0, w->tmp, w->tr));
    for (int64_t i = 0; i < n * NI; i++) {
        float gi = a->g[i], sg = 1.0f / (1.0f + expf(-gi)), silu = gi * sg;
        du[i] = dh[i] * silu;
        dg[i] = dh[i] * a->u[i] * (sg * (1.0f + gi * (1.0f - sg)));
    }
    float *dxn2 = g1;                                          /* reuse: [n, H] fits in [n, NI]? see alloc */
    QL_TRY(lin_bwd(m, &B->gate, mods[QL_T_GATE], QL_T_GATE, &dc, a->xn2, a->xa[QL_T_GATE], dg, n, dxn2, 0, w->tmp, w->tr));
    QL_TRY(lin_bwd(m, &B->up, mods[QL_T_UP], QL_T_UP, &dc, a->xn2, a->xa[QL_T_UP], du, n, dxn2, 1, w->tmp, w->tr));
    rmsnorm_bwd(a->xmid, ql_tensor_data(B->mlp_norm), a->r2, dxn2, n, (int)H, dx);   /* dx is now d xmid */
    /* attention */
    float *datt = g1, *dq = g2, *dk = g3, *dv = g3 + n * KV;
    QL_TRY(lin_bwd(m, &B->o, mods[QL_T_O], QL_T_O, &dc, a->att, a->xa[QL_T_O], dx, n, datt, 0, w->tmp, w->tr));
    memset(dq, 0, sizeof(float) * (size_t)(n * Q));
    memset(dk, 0, sizeof(float) * (size_t)(n * KV * 2));
    attn_bwd_job j = { a->q, a->k, a->v, datt, dq, dk, dv, b->lo, b->hi, c->heads, c->kv_heads, c->head_dim,
                       c->sliding_window, n };
    ql_parallel_for(c->kv_heads, 1, attn_bwd_range, &j);
    ql_rope(dq, n, c->heads, c->head_dim, b->pos, m->inv_freq, 1);
    ql_rope(dk, n, c->kv_heads, c->head_dim, b->pos, m->inv_freq, 1);
    float *dxn1 = g1;
    QL_TRY(lin_bwd(m, &B->q, mods[QL_T_Q], QL_T_Q, &dc, a->xn1, a->xa[QL_T_Q], dq, n, dxn1, 0, w->tmp, w->tr));
    QL_TRY(lin_bwd(m, &B->k, mods[QL_T_K], QL_T_K, &dc, a->xn1, a->xa[QL_T_K], dk, n, dxn1, 1, w->tmp, w->tr));
    QL_TRY(lin_bwd(m, &B->v, mods[QL_T_V], QL_T_V, &dc, a->xn1, a->xa[QL_T_V], dv, n, dxn1, 1, w->tmp, w->tr));
    rmsnorm_bwd(xin, ql_tensor_data(B->attn_norm), a->r1, dxn1, n, (int)H, dx);       /* dx is now d xin */
    return QL_OK;
}

/* ---------------------------------------------------------------- the step */

typedef struct run {
    float *arena;
    float **xin;        /* [layers + 1] layer inputs; xin[layers] = final pre-norm hidden */
    acts *A;            /* [layers] when activations are kept, else [1] */
    float *g1, *g2, *g3;
    work w;
} run;

static void run_free(run *r) { free(r->arena); free(r->xin); free(r->A); memset(r, 0, sizeof *r); }

static ql_status run_alloc(run *r, const ql_model *m, const ql_lora *l, int64_t n, int keep_all, int with_grads)
{
    const ql_model_config *c = &m->cfg;
    int L = c->layers;
    int64_t H = c->hidden, NI = c->inter, Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim;
    int64_t widest = H > Q ? H : Q;
    if (NI > widest) widest = NI;
    int64_t gsize = widest > 2 * KV ? widest : 2 * KV;       /* g3 holds dk and dv */
    int64_t nacts = keep_all ? L : 1;
    int64_t total = (int64_t)(L + 1) * n * H + nacts * acts_floats(m, l, n) + n * widest + n * (l ? l->r : 1) +
                    (with_grads ? 3 * n * gsize : 0);
    memset(r, 0, sizeof *r);
    r->arena = malloc(sizeof(float) * (size_t)(total > 0 ? total : 1));
    r->xin = calloc((size_t)L + 1, sizeof(float *));
    r->A = calloc((size_t)nacts, sizeof(acts));
    if (!r->arena || !r->xin || !r->A) {
        run_free(r);
        return ql_fail(QL_ENOMEM, "out of host memory for the activations of %lld tokens (%.1f GiB); use a shorter "
                                  "seq_len, a smaller batch, or gradient checkpointing",
                       (long long)n, (double)total * 4 / 1073741824.0);
    }
    float *p = r->arena;
    for (int i = 0; i <= L; i++) { r->xin[i] = p; p += n * H; }
    for (int64_t i = 0; i < nacts; i++) { acts_carve(&r->A[i], p, m, l, n); p += acts_floats(m, l, n); }
    r->w.tmp = p; p += n * widest;
    r->w.tr = p; p += n * (l ? l->r : 1);
    if (with_grads) { r->g1 = p; p += n * gsize; r->g2 = p; p += n * gsize; r->g3 = p; }
    return QL_OK;
}

static ql_status check_batch(const ql_model *m, const ql_batch *b)
{
    for (int64_t i = 0; i < b->n; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= m->cfg.vocab)
            return ql_fail(QL_EINVAL, "token id %d at position %lld is outside the vocabulary (0..%d)", b->ids[i], (long long)i, m->cfg.vocab - 1);
        if (b->lo[i] < 0 || b->hi[i] <= b->lo[i] || b->hi[i] > b->n || b->hi[i] - 1 != i)
            return ql_fail(QL_EINVAL, "token %lld: bad attention range [%d, %d)", (long long)i, b->lo[i], b->hi[i]);
    }
    return QL_OK;
}

/* forward through every layer; xin[L] receives the final pre-norm hidden */
static ql_status forward_all(ql_model *m, ql_lora *l, const ql_batch *b, int train, run *r, int keep_all)
{
    int L = m->cfg.layers;
    ql_embed_rows(m->embed, b->ids, b->n, m->cfg.hidden, r->xin[0]);
    for (int i = 0; i < L; i++) QL_TRY(layer_fwd(m, l, i, b, train, r->xin[i], &r->A[keep_all ? i : 0], r->xin[i + 1], &r->w));
    return QL_OK;
}

/* loss over target tokens of the final hidden x [n, H]; with dx != NULL also
   dx = d (sum / denom) / d x, through the final norm and lm_head */
/* loss over target tokens of the final pre-norm hidden x [n, H]; with dx != NULL also
   dx = d (sum / denom) / d x, through the final norm and lm_head */
static ql_status loss_head(ql_model *m, const ql_batch *b, const int32_t *labels, const float *x, double denom,
                           double *sum, int64_t *count, float *dx)
{
    const ql_model_config *c = &m->cfg;
    int64_t n = b->n, H = c->hidden;
    float *xf = malloc(sizeof(float) * (size_t)(n * H)), *rr = malloc(sizeof(float) * (size_t)n);
    float *dxf = dx ? calloc((size_t)(n * H), sizeof(float)) : NULL;
    ql_status s = xf && rr && (!dx || dxf) ? QL_OK : ql_fail(QL_ENOMEM, "out of host memory");
    if (s == QL_OK) {
        ql_rmsnorm_r(x, ql_tensor_data(m->norm), n, (int)H, c->eps, xf, rr);
        s = ql_lm_head_ce(m, b, labels, xf, denom, sum, count, dxf);
    }
    if (s == QL_OK && dx) {
        memset(dx, 0, sizeof(float) * (size_t)(n * H));
        rmsnorm_bwd(x, ql_tensor_data(m->norm), rr, dxf, n, (int)H, dx);
    }
    free(xf); free(rr); free(dxf);
    return s;
}

ql_status ql_lora_forward_backward(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels, double denom,
                                   int train, int checkpointing, double *loss_sum, int64_t *count)
{
    *loss_sum = 0;
    *count = 0;
    if (!(denom > 0)) return ql_fail(QL_EINVAL, "the loss denominator (target tokens) must be positive");
    QL_TRY(check_batch(m, b));
    int L = m->cfg.layers;
    int keep_all = !checkpointing;
    run r;
    QL_TRY(run_alloc(&r, m, l, b->n, keep_all, 1));
    ql_status s = forward_all(m, l, b, train, &r, keep_all);
    float *dx = NULL;
    if (s == QL_OK) {
        dx = malloc(sizeof(float) * (size_t)(b->n * m->cfg.hidden));
        s = dx ? loss_head(m, b, labels, r.xin[L], denom, loss_sum, count, dx) : ql_fail(QL_ENOMEM, "out of host memory");
    }
    for (int i = L - 1; s == QL_OK && i >= 0; i--) {
        acts *a = &r.A[keep_all ? i : 0];
        if (!keep_all) {  /* recompute this layer's activations from its saved input */
            float *scratch_out = r.g1;   /* the recomputed output is not needed */
            s = layer_fwd(m, l, i, b, train, r.xin[i], a, scratch_out, &r.w);
            if (s) break;
        }
        s = layer_bwd(m, l, i, b, train, r.xin[i], a, dx, r.g1, r.g2, r.g3, &r.w);
    }
    if (train && l) l->dropout_step++;
    free(dx);
    run_free(&r);
    return s;
}

ql_status ql_lora_loss(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels, double *sum, int64_t *count)
{
    *sum = 0;
    *count = 0;
    QL_TRY(check_batch(m, b));
    run r;
    QL_TRY(run_alloc(&r, m, l, b->n, 0, 0));
    ql_status s = forward_all(m, l, b, 0, &r, 0);
    if (s == QL_OK) s = loss_head(m, b, labels, r.xin[m->cfg.layers], 1.0, sum, count, NULL);
    run_free(&r);
    return s;
}

ql_status ql_lora_logits(ql_model *m, ql_lora *l, const ql_batch *b, float *logits)
{
    QL_TRY(check_batch(m, b));
    run r;
    QL_TRY(run_alloc(&r, m, l, b->n, 0, 0));
    ql_status s = forward_all(m, l, b, 0, &r, 0);
    int64_t n = b->n, H = m->cfg.hidden;
    float *xf = s == QL_OK ? malloc(sizeof(float) * (size_t)(n * H)) : NULL;
    if (s == QL_OK && !xf) s = ql_fail(QL_ENOMEM, "out of host memory");
    if (s == QL_OK) {
        ql_rmsnorm(r.xin[m->cfg.layers], ql_tensor_data(m->norm), n, (int)H, m->cfg.eps, xf);
        s = ql_linear_fwd(m, &m->lm_head, xf, n, logits);
    }
    free(xf);
    run_free(&r);
    return s;
}

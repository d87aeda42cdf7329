/*
 * decoder.c — the decoder, once: the layer forward, the layer backward and
 * the step that serves logits (with or without a KV cache), loss and LoRA
 * training on every backend, over the op table of decoder.h.
 *
 * Buffers for a batch are planned from the shapes (plan_carve) and carved
 * from one allocation that the model keeps between calls (grown when a
 * larger batch comes). Training keeps every layer's input (R) and, without
 * checkpointing, every layer's activations; with checkpointing a layer's
 * activations are recomputed from its input during the backward pass.
 *
 * Letters: n tokens, H hidden, Q = heads * hd, KV = kv_heads * hd, NI
 * intermediate, r LoRA rank, L layers.
 */
#include "decoder.h"
#include "backend.h"
#include "model_internal.h"
#include "platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ql_dec_ops *ql_dec_ops_for(ql_device dev)
{
    if (dev.type == QL_DEV_CPU) return &ql_dec_cpu_ops;
#ifdef QL_CUDA
    if (dev.type == QL_DEV_CUDA) return ql_backend_for(dev) ? &ql_dec_cuda_ops : NULL;
#endif
    ql_fail(QL_EUNSUPPORTED, "this build has no decoder for that device (built without CUDA)");
    return NULL;
}

/* ---------------------------------------------------------------- the plan */

/* what a model keeps between calls */
typedef struct ql_dec_state {
    const ql_dec_ops *ops;
    ql_device dev;
    void *arena;
    size_t bytes;
    float *inv_freq;             /* backend memory [hd / 2] */
    void *host_ck;               /* page-locked host memory for QL_CKPT_HOST's layer inputs */
    size_t host_ck_bytes;
} ql_dec_state;

typedef struct acts {
    float *r1;                   /* S [n] */
    void *xn1, *q, *k, *v, *att; /* A [n, H] [n, Q] [n, KV] [n, KV] [n, Q]; q, k after RoPE */
    float *lse;                  /* S [n, heads] */
    float *xmid, *r2;            /* R [n, H], S [n] */
    void *xn2, *g, *u, *hsw;     /* A [n, H] [mr, NI] x3; hsw = silu(g) * u */
    void *xa[QL_NTARGETS];       /* A [n, r] */
} acts;

typedef struct plan {
    int64_t n;
    int64_t mr;                  /* MLP slice rows (n: one slice); g, u, hsw, dh are [mr, NI] */
    int nx, nacts, nck;          /* residual buffers, activation sets, A checkpoints */
    int ck_host;                 /* the checkpoints are in host memory, staged through stage[2] */
    float **x;                   /* [nx] R [n, H] */
    void **ck;                   /* [nck] A [n, H] layer inputs (checkpointing, act narrower than R,
                                    or in host memory: set after the plan, from host_ck) */
    void *stage[2];              /* A [n, H] (ck_host) */
    acts *A;                     /* [nacts] */
    void *xf;                    /* A [n, H] final-normed (yo's memory) */
    float *rf;                   /* S [n] */
    float *dx, *dxf;             /* R [n, H] (TRAIN; dxf in gR's memory) */
    float *gR;                   /* R [max(n max(H, Q), mr NI)] */
    void *gA1, *gA2, *gA3;       /* A [max(mr NI, n Q)], [max(mr NI, n 2 KV)], [n, H] */
    void *yo;                    /* A [n, H] */
    int32_t *ids, *pos, *lo, *hi, *qlo, *qhi;   /* backend memory [n] each */
} plan;

/* a bump allocator over the arena; with base == NULL it only counts */
typedef struct carver { char *base; size_t off; } carver;
static void *carve(carver *c, size_t bytes)
{
    size_t at = (c->off + 255) & ~(size_t)255;
    c->off = at + bytes;
    return c->base ? c->base + at : NULL;
}

static void plan_carve(carver *cv, plan *p, ql_dec_ctx *ctx, const ql_model *m, const ql_lora *l, int64_t n,
                       ql_dec_mode mode, int keep_all, int ck_host, int64_t mr, size_t ea, acts *actv, float **xv,
                       void **ckv)
{
    const ql_model_config *c = &m->cfg;
    int64_t H = c->hidden, NI = c->inter, Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim;
    int64_t r = l ? l->r : 1, HQ = H > Q ? H : Q;
    int64_t W = n * HQ > mr * NI ? n * HQ : mr * NI;   /* values of the widest [rows, width] buffer */
    size_t R4 = sizeof(float);
    p->n = n;
    p->mr = mr;
    /* Training keeps every layer's input. Checkpointing with activations narrower than f32 keeps
       them as activations (half the bytes: 0.4 GiB on a 7B at seq 2048) and runs the residual
       stream through two f32 buffers; otherwise they are the stream's own f32 buffers. */
    p->ck_host = ck_host;
    p->nck = ck_host || (mode == QL_DEC_TRAIN && !keep_all && ea < R4 && ctx->ops->widen) ? c->layers : 0;
    p->nx = mode != QL_DEC_TRAIN ? 1 : p->nck ? 2 : c->layers + 1;
    p->nacts = mode == QL_DEC_TRAIN && keep_all ? c->layers : 1;
    p->x = xv;
    p->ck = ckv;
    p->A = actv;
    for (int i = 0; i < p->nx; i++) xv[i] = carve(cv, (size_t)(n * H) * R4);
    for (int i = 0; i < 2; i++) p->stage[i] = ck_host ? carve(cv, (size_t)(n * H) * ea) : NULL;
    for (int i = 0; i < p->nck; i++) ckv[i] = ck_host ? NULL : carve(cv, (size_t)(n * H) * ea);
    for (int i = 0; i < p->nacts; i++) {
        acts *a = &actv[i];
        a->r1 = carve(cv, (size_t)n * R4);
        a->xn1 = carve(cv, (size_t)(n * H) * ea);
        a->q = carve(cv, (size_t)(n * Q) * ea);
        a->k = carve(cv, (size_t)(n * KV) * ea);
        a->v = carve(cv, (size_t)(n * KV) * ea);
        a->att = carve(cv, (size_t)(n * Q) * ea);
        a->lse = carve(cv, (size_t)(n * c->heads) * R4);
        a->xmid = carve(cv, (size_t)(n * H) * R4);
        a->r2 = carve(cv, (size_t)n * R4);
        a->xn2 = carve(cv, (size_t)(n * H) * ea);
        a->g = carve(cv, (size_t)(mr * NI) * ea);
        a->u = carve(cv, (size_t)(mr * NI) * ea);
        a->hsw = carve(cv, (size_t)(mr * NI) * ea);
        for (int t = 0; t < QL_NTARGETS; t++) a->xa[t] = l ? carve(cv, (size_t)(n * r) * ea) : NULL;
    }
    p->yo = carve(cv, (size_t)(n * H) * ea);
    p->xf = p->yo;   /* the last layer's down output is consumed before the final norm writes xf, and
                        no later use of yo (recomputations make only the down adapter's xa) */
    p->rf = carve(cv, (size_t)n * R4);
    /* dropout's masked inputs only (a training step's: evaluation has no dropout) */
    ctx->tmp = mode == QL_DEC_TRAIN && l && l->dropout > 0 ? carve(cv, (size_t)W * ea) : NULL;
    ctx->tr = carve(cv, (size_t)(n * r) * ea);
    if (mode == QL_DEC_TRAIN) {
        int64_t a1 = mr * NI > n * Q ? mr * NI : n * Q, a2 = mr * NI > n * 2 * KV ? mr * NI : n * 2 * KV;
        p->dx = carve(cv, (size_t)(n * H) * R4);
        p->gR = carve(cv, (size_t)W * R4);
        p->dxf = p->gR;   /* free until the first layer's backward; W >= n * H */
        p->gA1 = carve(cv, (size_t)a1 * ea);
        p->gA2 = carve(cv, (size_t)a2 * ea);
        p->gA3 = carve(cv, (size_t)(n * H) * ea);
    } else {
        p->dx = p->dxf = p->gR = NULL;
        p->gA1 = p->gA2 = p->gA3 = NULL;
    }
    int32_t **ia[6] = { &p->ids, &p->pos, &p->lo, &p->hi, &p->qlo, &p->qhi };
    for (int i = 0; i < 6; i++) *ia[i] = carve(cv, sizeof(int32_t) * (size_t)n);
    ctx->mr = mr;
    ctx->train = mode == QL_DEC_TRAIN;
    ctx->aux_bytes = ctx->ops->aux_size(m, l, n, mr, ctx->train);
    ctx->aux = ctx->aux_bytes ? carve(cv, ctx->aux_bytes) : NULL;
}

void ql_decoder_release(ql_model *m)
{
    ql_dec_state *st = m->dec;
    if (!st) return;
    /* no copy or side-stream work may still be reading or writing what is freed */
    if (st->host_ck || st->arena) (void)st->ops->sync(st->dev);
    if (st->host_ck) st->ops->host_free(st->dev, st->host_ck);
    if (st->arena) st->ops->free(st->dev, st->arena, st->bytes);
    if (st->inv_freq && st->dev.type != QL_DEV_CPU)
        st->ops->free(st->dev, st->inv_freq, sizeof(float) * (size_t)(m->cfg.head_dim / 2));
    free(st);
    m->dec = NULL;
}

/* the model's state for its device, with an arena of at least bytes */
static ql_status state_for(ql_model *m, const ql_dec_ops *ops, size_t bytes, ql_dec_state **out)
{
    ql_dec_state *st = m->dec;
    if (st && (st->ops != ops || !ql_device_eq(st->dev, m->device))) { ql_decoder_release(m); st = NULL; }
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st) return ql_fail(QL_ENOMEM, "out of host memory");
        st->ops = ops;
        st->dev = m->device;
        m->dec = st;
        size_t fb = sizeof(float) * (size_t)(m->cfg.head_dim / 2);
        if (m->device.type == QL_DEV_CPU) st->inv_freq = m->inv_freq;
        else {
            st->inv_freq = ops->alloc(m->device, fb);
            if (!st->inv_freq) return QL_ENOMEM;
            QL_TRY(ops->upload(m->device, st->inv_freq, m->inv_freq, fb));
        }
    }
    if (st->bytes < bytes) {
        /* no copy or side-stream work of an earlier step may still be writing into it */
        if (st->arena) { QL_TRY(ops->sync(st->dev)); ops->free(st->dev, st->arena, st->bytes); }
        st->arena = NULL;
        st->bytes = 0;
        /* exactly what is asked: training batches are packed to one length, and a slack of a
           quarter (what this once kept) is half a GiB on a 7B at seq 2048 */
        st->arena = ops->alloc(st->dev, bytes);
        if (!st->arena) return ql_fail_context(QL_ENOMEM, "planning the activations of a batch: ");
        st->bytes = bytes;
    }
    *out = st;
    return QL_OK;
}

/* the state's host memory for checkpoints, at least bytes (kept between steps, like the arena) */
static ql_status host_ck_for(ql_dec_state *st, size_t bytes)
{
    if (st->host_ck_bytes >= bytes) return QL_OK;
    if (st->host_ck) {
        QL_TRY(st->ops->sync(st->dev));
        st->ops->host_free(st->dev, st->host_ck);
    }
    st->host_ck_bytes = 0;
    st->host_ck = st->ops->host_alloc(st->dev, bytes);
    if (!st->host_ck)
        return ql_fail_context(QL_ENOMEM, "keeping the layer checkpoints in host memory (checkpointing=host, "
                                          "%.1f GiB; checkpointing=true keeps them on the device): ", (double)bytes / (1u << 30));
    st->host_ck_bytes = bytes;
    return QL_OK;
}

/* ---------------------------------------------------------------- QL_PROFILE */

/* With QL_PROFILE=1 in the environment every op is followed by a device sync and
   timed; each call of ql_decoder_run prints one line of milliseconds per part to
   stderr. The syncs cost some speed: for the breakdown, not for tokens/s. */
enum { P_LINEAR, P_LINEAR_BWD, P_ATTN, P_ATTN_BWD, P_NORM, P_ROPE, P_SWIGLU, P_RESID, P_HEAD, P_EMBED, P_NPARTS };
static const char *const prof_names[P_NPARTS] = {
    "linear", "linear_bwd", "attention", "attention_bwd", "norms", "rope", "swiglu", "residual+casts", "lm_head+ce", "embed"
};
typedef struct prof { int on; double ms[P_NPARTS]; } prof;

static int prof_wanted(void)
{
    static int v = -1;
    if (v < 0) { const char *e = getenv("QL_PROFILE"); v = e && e[0] == '1'; }
    return v;
}

/* runs expr; with profiling, syncs and adds its time to part */
#define OP(part, expr) do {                                                        \
        double t0_ = R->prof->on ? ql_now() : 0;                                   \
        QL_TRY(expr);                                                              \
        if (R->prof->on) {                                                         \
            QL_TRY(R->ops->sync(R->m->device));                                    \
            R->prof->ms[part] += (ql_now() - t0_) * 1e3;                           \
        }                                                                          \
    } while (0)

/* ---------------------------------------------------------------- one layer */

typedef struct run {
    ql_model *m;
    ql_lora *l;
    const ql_dec_ops *ops;
    ql_dec_ctx *ctx;
    const ql_dec_batch *b;
    int train;
    ql_kv_cache *cache;
    void *yo;                    /* A [n, H] the down projection's output */
    prof *prof;
    int64_t mr;                  /* MLP slice rows (plan.mr) */
} run;

/* projection t of block layer (NULL past either end): the decoder's hints of what comes next */
static const ql_linear *proj(const ql_model *m, int layer, int t)
{
    if (layer < 0 || layer >= m->cfg.layers) return NULL;
    const ql_block *B = &m->blocks[layer];
    const ql_linear *p[QL_NTARGETS] = { &B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down };
    return p[t];
}

/* a pointer rows further into a [*, width] buffer of elem-byte values */
static void *rows_at(const void *base, int64_t rows, int64_t width, size_t elem)
{
    return base ? (char *)base + (size_t)rows * (size_t)width * elem : NULL;
}

/* the MLP forward of rows [r0, r0 + m): g, u, hsw for them; with y, the down projection into
   y's rows (y NULL: only the down adapter's xa, for the backward) */
static ql_status mlp_slice_fwd(const run *R, ql_dec_lin *L, acts *a, int64_t r0, int64_t m, void *y)
{
    const ql_model_config *c = &R->m->cfg;
    const ql_dec_ops *o = R->ops;
    ql_dec_ctx *x = R->ctx;
    int64_t H = c->hidden, NI = c->inter;
    size_t ea = o->act == QL_F32 ? 4 : 2;
    const void *xn2 = rows_at(a->xn2, r0, H, ea);
    void *xa[QL_NTARGETS];
    for (int t = QL_T_GATE; t <= QL_T_DOWN; t++) {
        L[t].elem0 = (uint64_t)r0 * (uint64_t)L[t].base->in;
        xa[t] = L[t].mod ? rows_at(a->xa[t], r0, L[t].mod->r, ea) : NULL;
    }
    L[QL_T_GATE].next = L[QL_T_UP].base;
    /* up's successor: down (a forward, or the backward of this slice), L[QL_T_DOWN].next is the caller's */
    L[QL_T_UP].next = L[QL_T_DOWN].base;
    OP(P_LINEAR, o->linear(x, &L[QL_T_GATE], xn2, m, a->g, xa[QL_T_GATE]));
    OP(P_LINEAR, o->linear(x, &L[QL_T_UP], xn2, m, a->u, xa[QL_T_UP]));
    OP(P_SWIGLU, o->swiglu(x, a->g, a->u, a->hsw, m * NI));
    if (y) OP(P_LINEAR, o->linear(x, &L[QL_T_DOWN], a->hsw, m, rows_at(y, r0, H, ea), xa[QL_T_DOWN]));
    else if (L[QL_T_DOWN].mod) OP(P_LINEAR, o->linear(x, &L[QL_T_DOWN], a->hsw, m, NULL, xa[QL_T_DOWN]));
    return QL_OK;
}

static void lin_of(const run *R, int layer, int t, int grads, ql_dec_lin *L)
{
    const ql_block *B = &R->m->blocks[layer];
    const ql_linear *bases[QL_NTARGETS] = { &B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down };
    memset(L, 0, sizeof *L);
    L->base = bases[t];
    L->layer = layer;
    const ql_lora *l = R->l;
    const ql_lora_mod *mod = ql_lora_at(l, layer, t);
    if (!mod) return;
    L->mod = mod;
    if (l->d_p) {   /* the adapter's copy in the backend's memory */
        int64_t off = l->d_off[layer * QL_NTARGETS + t], na = (int64_t)mod->r * mod->in;
        L->A = l->d_p + off;
        L->B = l->d_p + off + na;
        L->gA = grads ? l->d_g + off : NULL;
        L->gB = grads ? l->d_g + off + na : NULL;
    } else {
        L->A = mod->A;
        L->B = mod->B;
        L->gA = grads ? mod->gA : NULL;
        L->gB = grads ? mod->gB : NULL;
    }
    if (R->train && l->dropout > 0) {
        L->dropout = l->dropout;
        L->seed = l->seed;
        /* the mask of (seed, dropout step, layer, target, element): the backward regenerates it */
        L->stream = (l->dropout_step << 16) ^ ((uint64_t)layer << 4) ^ (uint64_t)t ^ 0xd50ull << 48;
    }
}

/* xout R = layer(xin R); xout may be xin. xout NULL: a recomputation for the backward, which
   needs every activation but not the output: the down projection (29% of a layer's products)
   only computes its adapter's xa */
static ql_status layer_fwd(const run *R, int layer, const float *xin, acts *a, float *xout)
{
    const ql_model_config *c = &R->m->cfg;
    const ql_block *B = &R->m->blocks[layer];
    const ql_dec_ops *o = R->ops;
    ql_dec_ctx *x = R->ctx;
    int64_t n = R->b->n, H = c->hidden;
    ql_dec_lin L[QL_NTARGETS];
    for (int t = 0; t < QL_NTARGETS; t++) lin_of(R, layer, t, 0, &L[t]);
    /* what comes after each projection: the next in the block; after o, gate (also when a
       recomputation leaves the MLP to the backward's slices); after the MLP, the next block's q
       (a forward) or this block's backward, whose first weight is down */
    for (int t = QL_T_Q; t < QL_T_DOWN; t++) L[t].next = L[t + 1].base;
    int sliced_recompute = !xout && R->mr < n;
    L[QL_T_DOWN].next = xout ? proj(R->m, layer + 1, QL_T_Q) : NULL;
    OP(P_NORM, o->rmsnorm(x, xin, B->attn_norm, n, a->xn1, a->r1));
    OP(P_LINEAR, o->linear(x, &L[QL_T_Q], a->xn1, n, a->q, a->xa[QL_T_Q]));
    OP(P_LINEAR, o->linear(x, &L[QL_T_K], a->xn1, n, a->k, a->xa[QL_T_K]));
    OP(P_LINEAR, o->linear(x, &L[QL_T_V], a->xn1, n, a->v, a->xa[QL_T_V]));
    OP(P_ROPE, o->rope(x, a->q, R->b, c->heads, 0));
    OP(P_ROPE, o->rope(x, a->k, R->b, c->kv_heads, 0));
    const void *K = a->k, *V = a->v;
    if (R->cache) {
        OP(P_ATTN, o->kv_store(x, R->cache, layer, R->b, a->k, a->v));
        if (R->cache->dk) { K = ql_tensor_data(R->cache->dk[layer]); V = ql_tensor_data(R->cache->dv[layer]); }
        else { K = R->cache->k[layer]; V = R->cache->v[layer]; }
    }
    OP(P_ATTN, o->attn(x, R->b, a->q, K, V, R->cache == NULL, a->att, a->lse));
    /* xmid = xin + o(att): the o output goes to xn2 first (free until the MLP norm) */
    OP(P_LINEAR, o->linear(x, &L[QL_T_O], a->att, n, a->xn2, a->xa[QL_T_O]));
    OP(P_RESID, o->residual(x, a->xmid, xin, a->xn2, n * H));
    OP(P_NORM, o->rmsnorm(x, a->xmid, B->mlp_norm, n, a->xn2, a->r2));
    /* a recomputation with the MLP in slices leaves the MLP to the backward, slice by slice */
    if (sliced_recompute) return QL_OK;
    for (int64_t r0 = 0; r0 < n; r0 += R->mr) {
        /* between forward slices, down is followed by the next slice's gate */
        L[QL_T_DOWN].next = r0 + R->mr < n ? L[QL_T_GATE].base : xout ? proj(R->m, layer + 1, QL_T_Q) : NULL;
        QL_TRY(mlp_slice_fwd(R, L, a, r0, n - r0 < R->mr ? n - r0 : R->mr, xout ? R->yo : NULL));
    }
    if (xout) OP(P_RESID, o->residual(x, xout, a->xmid, R->yo, n * H));
    return QL_OK;
}

/* dx R: in, d loss / d layer output; out, d loss / d layer input */
static ql_status layer_bwd(const run *R, const plan *p, int layer, const float *xin, acts *a, float *dx)
{
    const ql_model_config *c = &R->m->cfg;
    const ql_block *B = &R->m->blocks[layer];
    const ql_dec_ops *o = R->ops;
    ql_dec_ctx *x = R->ctx;
    int64_t n = R->b->n, H = c->hidden, NI = c->inter, KV = (int64_t)c->kv_heads * c->head_dim;
    size_t ea = o->act == QL_F32 ? 4 : 2;
    ql_dec_lin L[QL_NTARGETS];
    for (int t = 0; t < QL_NTARGETS; t++) lin_of(R, layer, t, 1, &L[t]);
    ql_status st = QL_OK;
    /* the backward's order: down, gate, up (a slice at a time: the next slice's gate, after the
       last o), o, q, k, v, then the previous block: its recomputation, which starts with q, or
       with every activation kept, its backward, which starts with down */
    L[QL_T_O].next = L[QL_T_Q].base;
    L[QL_T_Q].next = L[QL_T_K].base;
    L[QL_T_K].next = L[QL_T_V].base;
    L[QL_T_V].next = proj(R->m, layer - 1, p->nacts > 1 ? QL_T_DOWN : QL_T_Q);
    /* MLP, a slice of rows at a time (one slice of n unless p->mr < n, when the slice's forward
       is recomputed here): dx is d xout = d xmid (residual) = d down output. Each token's MLP
       and its norm are its own, so the slices' dx rows are independent; the adapters'
       gradients accumulate over the slices. */
    for (int64_t r0 = 0; r0 < n; r0 += p->mr) {
        int64_t m = n - r0 < p->mr ? n - r0 : p->mr;
        const ql_linear *after = r0 + p->mr < n ? L[QL_T_GATE].base : L[QL_T_O].base;
        if (p->mr < n) QL_TRY(mlp_slice_fwd(R, L, a, r0, m, NULL));   /* sets gate's and up's hints */
        L[QL_T_DOWN].next = L[QL_T_GATE].base;
        L[QL_T_GATE].next = L[QL_T_UP].base;
        L[QL_T_UP].next = after;
        const void *xn2 = rows_at(a->xn2, r0, H, ea);
        void *xa[QL_NTARGETS];
        for (int t = QL_T_GATE; t <= QL_T_DOWN; t++) {
            L[t].elem0 = (uint64_t)r0 * (uint64_t)L[t].base->in;
            xa[t] = L[t].mod ? rows_at(a->xa[t], r0, L[t].mod->r, ea) : NULL;
        }
        float *dxs = (float *)rows_at(dx, r0, H, sizeof(float));
        const void *dd;
        OP(P_RESID, (dd = o->as_act(x, dxs, m * H, rows_at(p->gA3, r0, H, ea), &st), st));
        float *dh = p->gR;                                       /* R [m, NI] */
        OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_DOWN], a->hsw, xa[QL_T_DOWN], dd, m, dh, 0));
        void *dg = p->gA1, *du = p->gA2;                         /* A [m, NI] */
        OP(P_SWIGLU, o->swiglu_bwd(x, a->g, a->u, dh, dg, du, m * NI));
        float *dxn2 = p->gR;                                     /* R [m, H] */
        OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_GATE], xn2, xa[QL_T_GATE], dg, m, dxn2, 0));
        OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_UP], xn2, xa[QL_T_UP], du, m, dxn2, 1));
        OP(P_NORM, o->rmsnorm_bwd(x, (const float *)rows_at(a->xmid, r0, H, sizeof(float)), B->mlp_norm, a->r2 + r0,
                                  dxn2, m, dxs));                /* dx's rows are now d xmid */
    }
    /* attention */
    const void *dm;
    OP(P_RESID, (dm = o->as_act(x, dx, n * H, p->gA3, &st), st));
    float *datt = p->gR;                                         /* R [n, Q] */
    OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_O], a->att, a->xa[QL_T_O], dm, n, datt, 0));
    void *dq = p->gA1, *dk = p->gA2, *dv = (char *)p->gA2 + (size_t)(n * KV) * ea;
    OP(P_ATTN_BWD, o->attn_bwd(x, R->b, a->q, a->k, a->v, a->att, a->lse, datt, dq, dk, dv));
    OP(P_ROPE, o->rope(x, dq, R->b, c->heads, 1));
    OP(P_ROPE, o->rope(x, dk, R->b, c->kv_heads, 1));
    float *dxn1 = p->gR;                                         /* R [n, H] */
    OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_Q], a->xn1, a->xa[QL_T_Q], dq, n, dxn1, 0));
    OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_K], a->xn1, a->xa[QL_T_K], dk, n, dxn1, 1));
    OP(P_LINEAR_BWD, o->linear_bwd(x, &L[QL_T_V], a->xn1, a->xa[QL_T_V], dv, n, dxn1, 1));
    OP(P_NORM, o->rmsnorm_bwd(x, xin, B->attn_norm, a->r1, dxn1, n, dx));     /* dx is now d xin */
    return QL_OK;
}

/* ---------------------------------------------------------------- checks */

static ql_status check_batch(const ql_model *m, const ql_batch *b, const ql_kv_cache *cache, int causal)
{
    for (int64_t i = 0; i < b->n; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= m->cfg.vocab)
            return ql_fail(QL_EINVAL, "token id %d at position %lld is outside the vocabulary (0..%d)", b->ids[i],
                           (long long)i, m->cfg.vocab - 1);
        if (causal) {
            if (b->lo[i] < 0 || b->hi[i] <= b->lo[i] || b->hi[i] > b->n || b->hi[i] - 1 != i)
                return ql_fail(QL_EINVAL, "token %lld: bad attention range [%d, %d)", (long long)i, b->lo[i], b->hi[i]);
            continue;
        }
        if (b->lo[i] < 0 || b->hi[i] <= b->lo[i])
            return ql_fail(QL_EINVAL, "token %lld attends to an empty key range [%d, %d)", (long long)i, b->lo[i], b->hi[i]);
        int64_t limit = cache ? cache->max_len : b->n;
        if (b->hi[i] > limit)
            return ql_fail(QL_EINVAL, "token %lld attends past the %s (%d > %lld)", (long long)i, cache ? "cache" : "batch",
                           b->hi[i], (long long)limit);
        if (cache && (b->pos[i] < 0 || b->pos[i] >= cache->max_len))
            return ql_fail(QL_EINVAL, "position %d is outside the KV cache of %d", b->pos[i], cache->max_len);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- the step */

/* the forward, and for training the backward, over a planned batch */
static ql_status step_body(run *R, plan *p, ql_dec_step *s, int keep_all)
{
    ql_model *m = R->m;
    const ql_dec_ops *ops = R->ops;
    ql_dec_ctx *ctx = R->ctx;
    const ql_dec_batch *db = R->b;
    int64_t n = db->n, H = m->cfg.hidden;
    int L = m->cfg.layers;
    OP(P_EMBED, ops->embed(ctx, db, p->x[0]));
    ql_status st = QL_OK;
    for (int i = 0; i < L; i++) {
        float *xin, *xout;
        if (p->ck_host) {
            /* to host memory through a staging buffer: the copy of layer i - 2 must be done
               before its buffer takes layer i */
            int slot = i & 1;
            xin = p->x[slot];
            xout = p->x[slot ^ 1];
            QL_TRY(ops->ck_ready(ctx, slot));
            const void *a = NULL;
            OP(P_RESID, (a = ops->as_act(ctx, xin, n * H, p->stage[slot], &st), st));
            QL_TRY(ops->ck_store(ctx, slot, p->ck[i], a, (size_t)(n * H) * (ops->act == QL_F32 ? 4 : 2)));
            if (a != (const void *)xin) OP(P_RESID, ops->widen(ctx, a, n * H, xin));
        } else if (p->nck) {
            /* the stream continues from the checkpoint as the recomputation will see it */
            xin = p->x[i & 1];
            xout = p->x[(i + 1) & 1];
            OP(P_RESID, (ops->as_act(ctx, xin, n * H, p->ck[i], &st), st));
            OP(P_RESID, ops->widen(ctx, p->ck[i], n * H, xin));
        } else {
            xin = p->x[p->nx > 1 ? i : 0];
            xout = p->x[p->nx > 1 ? i + 1 : 0];
        }
        QL_TRY(layer_fwd(R, i, xin, &p->A[keep_all ? i : 0], xout));
    }
    float *xl = p->x[p->nck ? L & 1 : p->nx > 1 ? L : 0];
    if (s->mode == QL_DEC_LOGITS) {
        OP(P_NORM, ops->rmsnorm(ctx, xl, m->norm, n, p->xf, NULL));
        OP(P_HEAD, ops->lm_head_logits(ctx, p->xf, 0, n, s->logits));
        if (s->cache)
            for (int64_t i = 0; i < n; i++) if (db->pos[i] + 1 > s->cache->len) s->cache->len = db->pos[i] + 1;
        return QL_OK;
    }
    OP(P_NORM, ops->rmsnorm(ctx, xl, m->norm, n, p->xf, p->rf));
    if (s->mode == QL_DEC_LOSS) {
        OP(P_HEAD, ops->lm_head_ce(ctx, db, s->labels, p->xf, 1.0, &s->loss_sum, &s->count, NULL));
        return QL_OK;
    }
    /* backward */
    size_t rb = sizeof(float) * (size_t)(n * H);
    QL_TRY(ops->memset0(m->device, p->dxf, rb));
    OP(P_HEAD, ops->lm_head_ce(ctx, db, s->labels, p->xf, s->denom, &s->loss_sum, &s->count, p->dxf));
    QL_TRY(ops->memset0(m->device, p->dx, rb));
    OP(P_NORM, ops->rmsnorm_bwd(ctx, xl, m->norm, p->rf, p->dxf, n, p->dx));
    size_t ckb = (size_t)(n * H) * (ops->act == QL_F32 ? 4 : 2);
    /* host checkpoints come back one layer ahead: layer i - 1's copy runs during layer i */
    if (p->ck_host) QL_TRY(ops->ck_fetch(ctx, (L - 1) & 1, p->stage[(L - 1) & 1], p->ck[L - 1], ckb));
    for (int i = L - 1; i >= 0; i--) {
        acts *a = &p->A[keep_all ? i : 0];
        float *xin = p->x[i];
        if (p->ck_host) {
            if (i > 0) QL_TRY(ops->ck_fetch(ctx, (i - 1) & 1, p->stage[(i - 1) & 1], p->ck[i - 1], ckb));
            QL_TRY(ops->ck_ready(ctx, i & 1));
            xin = p->x[0];
            OP(P_RESID, ops->widen(ctx, p->stage[i & 1], n * H, xin));
        } else if (p->nck) {
            xin = p->x[0];
            OP(P_RESID, ops->widen(ctx, p->ck[i], n * H, xin));
        }
        /* recompute this layer's activations from its saved input; the output is not needed */
        if (!keep_all) QL_TRY(layer_fwd(R, i, xin, a, NULL));
        QL_TRY(layer_bwd(R, p, i, xin, a, p->dx));
    }
    if (s->train && R->l) R->l->dropout_step++;
    return QL_OK;
}

ql_status ql_decoder_run(ql_model *m, ql_dec_step *s)
{
    const ql_batch *b = s->batch;
    ql_dec_mode mode = s->mode;
    int64_t n = b->n;
    int L = m->cfg.layers;
    s->loss_sum = 0;
    s->count = 0;
    if (mode == QL_DEC_TRAIN && !(s->denom > 0)) return ql_fail(QL_EINVAL, "the loss denominator (target tokens) must be positive");
    if (mode != QL_DEC_LOGITS && s->cache) return ql_fail(QL_EINVAL, "a KV cache serves logits only");
    if (n <= 0) return mode == QL_DEC_LOGITS ? QL_OK : ql_fail(QL_EINVAL, "an empty batch");
    QL_TRY(check_batch(m, b, s->cache, mode != QL_DEC_LOGITS || (!s->cache && s->lora)));
    const ql_dec_ops *ops = ql_dec_ops_for(m->device);
    if (!ops) return QL_ENODEV;
    ql_lora *l = s->lora;
    if (l && (l->d_p != NULL) != (m->device.type != QL_DEV_CPU))
        return ql_fail(QL_EINVAL, "the adapter and the model live on different devices");
    int keep_all = mode == QL_DEC_TRAIN && !s->checkpointing;
    int ck_host = mode == QL_DEC_TRAIN && s->checkpointing == QL_CKPT_HOST;
    size_t ea = ops->act == QL_F32 ? 4 : 2;
    int64_t mr = n;   /* MLP slices: not when every layer's activations are kept for the backward */
    if (!keep_all) {
        int64_t want = s->mlp_rows > 0 ? s->mlp_rows : QL_DEC_MLP_ROWS;
        if (want < n) mr = want;
    }
    if (ck_host && !(ops->ck_store && ops->ck_fetch && ops->ck_ready && ops->host_alloc && ops->widen))
        return ql_fail(QL_EUNSUPPORTED, "the %s decoder cannot keep checkpoints in host memory: use checkpointing=true",
                       ops->name);

    /* plan: count, get the arena, carve */
    plan p;
    ql_dec_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.ops = ops;
    ctx.m = m;
    ctx.dev = m->device;
    ctx.n = n;
    ctx.lora = l;
    acts *actv = calloc((size_t)(keep_all ? L : 1), sizeof(acts));
    float **xv = calloc((size_t)L + 1, sizeof(float *));
    void **ckv = calloc((size_t)L + 1, sizeof(void *));
    int32_t *host_q = NULL;
    if (!actv || !xv || !ckv) { free(actv); free(xv); free(ckv); return ql_fail(QL_ENOMEM, "out of host memory"); }
    carver cv = { NULL, 0 };
    plan_carve(&cv, &p, &ctx, m, l, n, mode, keep_all, ck_host, mr, ea, actv, xv, ckv);
    ql_dec_state *st = NULL;
    ql_status rc = state_for(m, ops, cv.off, &st);
    if (rc != QL_OK) goto done;
    cv.base = st->arena;
    cv.off = 0;
    plan_carve(&cv, &p, &ctx, m, l, n, mode, keep_all, ck_host, mr, ea, actv, xv, ckv);
    if (ck_host) {
        size_t each = ((size_t)(n * m->cfg.hidden) * ea + 255) & ~(size_t)255;
        if ((rc = host_ck_for(st, each * (size_t)L)) != QL_OK) goto done;
        for (int i = 0; i < L; i++) ckv[i] = (char *)st->host_ck + each * (size_t)i;
    }
    ctx.inv_freq = st->inv_freq;

    /* the batch in the backend's memory */
    ql_dec_batch db = { n, b->ids, b->pos, b->lo, b->hi, b->ids, b->pos, b->lo, b->hi, NULL, NULL };
    if (m->device.type != QL_DEV_CPU) {
        size_t ib = sizeof(int32_t) * (size_t)n;
        if ((rc = ops->upload(m->device, p.ids, b->ids, ib)) || (rc = ops->upload(m->device, p.pos, b->pos, ib)) ||
            (rc = ops->upload(m->device, p.lo, b->lo, ib)) || (rc = ops->upload(m->device, p.hi, b->hi, ib)))
            goto done;
        db.d_ids = p.ids; db.d_pos = p.pos; db.d_lo = p.lo; db.d_hi = p.hi;
        if (mode == QL_DEC_TRAIN) {
            host_q = malloc(2 * ib);
            if (!host_q) { rc = ql_fail(QL_ENOMEM, "out of host memory"); goto done; }
            if ((rc = ql_dec_key_ranges(b->lo, b->hi, n, m->cfg.sliding_window, host_q, host_q + n)) ||
                (rc = ops->upload(m->device, p.qlo, host_q, ib)) || (rc = ops->upload(m->device, p.qhi, host_q + n, ib)))
                goto done;
            db.d_qlo = p.qlo; db.d_qhi = p.qhi;
        }
    }
    prof pf;
    memset(&pf, 0, sizeof pf);
    pf.on = prof_wanted();
    ctx.profiling = pf.on;
    double t_start = ql_now();
    run R = { m, l, ops, &ctx, &db, mode == QL_DEC_TRAIN && s->train, s->cache, p.yo, &pf, p.mr };
    rc = step_body(&R, &p, s, keep_all);
    if (rc != QL_OK && m->device.type != QL_DEV_CPU) {
        /* a step that stopped halfway may leave copies or dequantizations queued on the side
           streams, which the next step, planned differently, must not meet: wait for them,
           keeping this error's message */
        char why[512];
        snprintf(why, sizeof why, "%s", ql_last_error());
        (void)ops->sync(m->device);
        ql_fail(rc, "%s", why);
    }
    if (rc == QL_OK && pf.on) {
        rc = ops->sync(m->device);
        double total = (ql_now() - t_start) * 1e3, sum = 0;
        fprintf(stderr, "profile: %s n=%lld", mode == QL_DEC_TRAIN ? "train" : mode == QL_DEC_LOSS ? "loss" : "logits",
                (long long)n);
        for (int i = 0; i < P_NPARTS; i++) if (pf.ms[i] > 0) { fprintf(stderr, " %s %.1f", prof_names[i], pf.ms[i]); sum += pf.ms[i]; }
        fprintf(stderr, " other %.1f total %.1f ms", total - sum, total);
        for (int i = 0; i < QL_DEC_SUBPARTS; i++)
            if (ops->sub_names[i]) fprintf(stderr, "%s%s %.1f", i == 0 ? " (within linear: " : ", ", ops->sub_names[i], ctx.sub_ms[i]);
        fprintf(stderr, "%s\n", ops->sub_names[0] ? ")" : "");
    }
done:
    free(actv);
    free(xv);
    free(ckv);
    free(host_q);
    return rc;
}


/* ---------------------------------------------------------------- lora.h's entry points */

ql_status ql_lora_forward_backward(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels, double denom,
                                   int train, int checkpointing, double *loss_sum, int64_t *count)
{
    ql_dec_step st = { .mode = QL_DEC_TRAIN, .batch = b, .labels = labels, .lora = l, .denom = denom,
                       .train = train, .checkpointing = checkpointing };
    ql_status s = ql_decoder_run(m, &st);
    *loss_sum = st.loss_sum;
    *count = st.count;
    return s;
}

ql_status ql_lora_loss(ql_model *m, ql_lora *l, const ql_batch *b, const int32_t *labels, double *sum, int64_t *count)
{
    ql_dec_step st = { .mode = QL_DEC_LOSS, .batch = b, .labels = labels, .lora = l };
    ql_status s = ql_decoder_run(m, &st);
    *sum = st.loss_sum;
    *count = st.count;
    return s;
}

ql_status ql_lora_logits(ql_model *m, ql_lora *l, const ql_batch *b, float *logits)
{
    ql_dec_step st = { .mode = QL_DEC_LOGITS, .batch = b, .lora = l, .logits = logits };
    return ql_decoder_run(m, &st);
}

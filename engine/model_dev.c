/*
 * model_dev.c — the decoder forward written with the tensor ops of tensor.h,
 * so it runs on any backend: on a GPU every op is a CUDA kernel or a cuBLASLt
 * product. Same function as the CPU reference of model.c (f32 activations,
 * weights widened or dequantized to f32 per product, RMSNorm as x * rsqrt(mean
 * x^2 + eps) * w, rotate-half RoPE with host-computed angles, attention over
 * the same key ranges through a mask). Not the fast training path: each op
 * materializes its result.
 */
#include "model.h"
#include "model_internal.h"
#include "platform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* tensors made while computing, released together (a growable list) */
typedef struct pool { ql_tensor **t; int n, cap; } pool;

static ql_tensor *keep(pool *p, ql_tensor *t)
{
    if (!t) return NULL;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 128;
        ql_tensor **nt = realloc(p->t, sizeof *nt * (size_t)cap);
        if (!nt) { ql_tensor_release(t); ql_fail(QL_ENOMEM, "out of host memory"); return NULL; }
        p->t = nt;
        p->cap = cap;
    }
    p->t[p->n++] = t;
    return t;
}
static void drain(pool *p)
{
    while (p->n > 0) ql_tensor_release(p->t[--p->n]);
    free(p->t);
    p->t = NULL;
    p->cap = 0;
}

#define K(expr) keep(P, (expr))
#define TRY(var, expr) do { if (!((var) = K(expr))) goto fail; } while (0)
/* for the helpers below, which keep their result in the pool themselves */
#define TRYH(var, expr) do { if (!((var) = (expr))) goto fail; } while (0)

static ql_tensor *rmsnorm(pool *P, ql_tensor *x, ql_tensor *w, double eps)
{
    ql_tensor *sq, *ms, *ms2, *r, *xr, *y;
    TRY(sq, ql_unary(QL_SQUARE, x));
    TRY(ms, ql_reduce(QL_MEAN, sq, 1, 1));
    TRY(ms2, ql_binary_scalar(QL_ADD, ms, eps, 0));
    TRY(r, ql_unary(QL_RSQRT, ms2));
    TRY(xr, ql_binary(QL_MUL, x, r));
    TRY(y, ql_binary(QL_MUL, xr, w));
    return y;
fail:
    return NULL;
}

/* y = x W^T (+ b), W dequantized or widened to f32 on the device first */
static ql_tensor *linear(pool *P, ql_tensor *x, const ql_linear *L)
{
    ql_tensor *w, *wt, *y;
    TRY(w, L->w->dtype == QL_F32 ? ql_tensor_retain(L->w) : ql_tensor_to(L->w, QL_F32, ql_tensor_device(L->w)));
    TRY(wt, ql_tensor_transpose(w, 0, 1));
    TRY(y, ql_matmul(x, wt));
    if (L->b) TRY(y, ql_binary(QL_ADD, y, L->b));
    return y;
fail:
    return NULL;
}

/* rotate-half RoPE of x [n, nh * hd] with cos/sin [n, 1, hd/2] */
static ql_tensor *rope(pool *P, ql_tensor *x, int64_t n, int nh, int hd, ql_tensor *c, ql_tensor *s)
{
    int64_t shape[3] = { n, nh, hd }, flat[2] = { n, (int64_t)nh * hd };
    ql_tensor *v, *a, *b, *ac, *bs, *bc, *as, *r1, *r2, *out, *o1, *o2;
    TRY(v, ql_tensor_view(x, 3, shape));
    TRY(a, ql_tensor_slice(v, 2, 0, hd / 2, 1));
    TRY(b, ql_tensor_slice(v, 2, hd / 2, hd, 1));
    TRY(ac, ql_binary(QL_MUL, a, c));
    TRY(bs, ql_binary(QL_MUL, b, s));
    TRY(r1, ql_binary(QL_SUB, ac, bs));
    TRY(bc, ql_binary(QL_MUL, b, c));
    TRY(as, ql_binary(QL_MUL, a, s));
    TRY(r2, ql_binary(QL_ADD, bc, as));
    TRY(out, ql_tensor_new(QL_F32, 3, shape, ql_tensor_device(x)));
    TRY(o1, ql_tensor_slice(out, 2, 0, hd / 2, 1));
    TRY(o2, ql_tensor_slice(out, 2, hd / 2, hd, 1));
    if (ql_tensor_copy_(o1, r1) != QL_OK || ql_tensor_copy_(o2, r2) != QL_OK) goto fail;
    return K(ql_tensor_view(out, 2, flat));
fail:
    return NULL;
}

/* [nk, kvh * hd] -> [heads, nk, hd], each kv head repeated for its g query heads */
static ql_tensor *heads_of(pool *P, ql_tensor *x, int64_t nk, int kvh, int g, int hd)
{
    int64_t s4[4] = { nk, kvh, 1, hd }, e4[4] = { nk, kvh, g, hd }, s3[3] = { nk, (int64_t)kvh * g, hd };
    int perm[3] = { 1, 0, 2 };
    ql_tensor *v, *e, *r, *p;
    TRY(v, ql_tensor_view(x, 4, s4));
    TRY(e, ql_tensor_expand(v, 4, e4));
    TRY(r, ql_tensor_reshape(e, 3, s3));
    TRY(p, ql_tensor_permute(r, perm));
    return p;
fail:
    return NULL;
}

ql_status ql_model_logits_dev(ql_model *m, const ql_batch *b, ql_kv_cache *cache, float *logits)
{
    const ql_model_config *c = &m->cfg;
    ql_device dev = m->device;
    int64_t n = b->n, H = c->hidden, hd = c->head_dim, half = hd / 2, V = c->vocab;
    int heads = c->heads, kvh = c->kv_heads, g = heads / kvh;
    pool Pool = { NULL, 0, 0 }, *P = &Pool;
    ql_tensor *x = NULL;   /* the residual stream, owned outside the pool */
    ql_status st = QL_OK;
    float *host = NULL;
    for (int64_t i = 0; i < n; i++)
        if (b->ids[i] < 0 || b->ids[i] >= c->vocab)
            return ql_fail(QL_EINVAL, "token id %d at position %lld is outside the vocabulary (0..%d)", b->ids[i], (long long)i, c->vocab - 1);
    /* keys: the batch itself, or the cache (positions must follow each other) */
    int64_t nk = n;
    if (cache) {
        nk = 0;
        for (int64_t i = 0; i < n; i++) {
            if (b->pos[i] != b->pos[0] + i || b->pos[i] >= cache->max_len)
                return ql_fail(QL_EINVAL, "device KV cache: positions must be consecutive and below %d", cache->max_len);
            if (b->hi[i] > nk) nk = b->hi[i];
        }
    }
    /* host side: embeddings, RoPE angles, the attention mask */
    size_t need = (size_t)(n * H + 2 * n * half + n * nk);
    host = malloc(sizeof(float) * (need ? need : 1));
    if (!host) return ql_fail(QL_ENOMEM, "out of host memory");
    float *emb = host, *cs = emb + n * H, *sn = cs + n * half, *mask = sn + n * half;
    ql_embed_rows(m->embed, b->ids, n, (int)H, emb);
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < half; d++) {
            float ang = (float)b->pos[i] * m->inv_freq[d];
            cs[i * half + d] = cosf(ang);
            sn[i * half + d] = sinf(ang);
        }
    for (int64_t i = 0; i < n; i++) {
        int64_t lo = b->lo[i], hi = b->hi[i];
        if (c->sliding_window > 0 && hi - c->sliding_window > lo) lo = hi - c->sliding_window;
        for (int64_t j = 0; j < nk; j++) mask[i * nk + j] = (j >= lo && j < hi) ? 0.0f : -INFINITY;
    }
    int64_t sx[2] = { n, H }, sc[3] = { n, 1, half }, sm[2] = { n, nk };
    ql_tensor *cosv, *sinv, *mk;
    if (!(x = ql_tensor_from_host(QL_F32, 2, sx, emb, QL_F32, dev))) goto fail;
    TRY(cosv, ql_tensor_from_host(QL_F32, 3, sc, cs, QL_F32, dev));
    TRY(sinv, ql_tensor_from_host(QL_F32, 3, sc, sn, QL_F32, dev));
    TRY(mk, ql_tensor_from_host(QL_F32, 2, sm, mask, QL_F32, dev));
    int perm[3] = { 1, 0, 2 };
    float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < c->layers; l++) {
        const ql_block *B = &m->blocks[l];
        int mark = P->n;
        ql_tensor *xn, *q, *k, *v, *qr, *kr, *K_, *V_;
        TRYH(xn, rmsnorm(P, x, B->attn_norm, c->eps));
        TRYH(q, linear(P, xn, &B->q));
        TRYH(k, linear(P, xn, &B->k));
        TRYH(v, linear(P, xn, &B->v));
        TRYH(qr, rope(P, q, n, heads, (int)hd, cosv, sinv));
        TRYH(kr, rope(P, k, n, kvh, (int)hd, cosv, sinv));
        K_ = kr; V_ = v;
        if (cache) {
            ql_tensor *dk, *dv;
            TRY(dk, ql_tensor_slice(cache->dk[l], 0, b->pos[0], b->pos[0] + n, 1));
            TRY(dv, ql_tensor_slice(cache->dv[l], 0, b->pos[0], b->pos[0] + n, 1));
            if (ql_tensor_copy_(dk, kr) != QL_OK || ql_tensor_copy_(dv, v) != QL_OK) goto fail;
            TRY(K_, ql_tensor_slice(cache->dk[l], 0, 0, nk, 1));
            TRY(V_, ql_tensor_slice(cache->dv[l], 0, 0, nk, 1));
        }
        int64_t s3[3] = { n, heads, hd }, flatq[2] = { n, (int64_t)heads * hd };
        ql_tensor *qv, *qh, *kh, *vh, *kt, *S, *Ss, *Sm, *Pr, *O, *Op, *Oc, *Of, *o;
        TRY(qv, ql_tensor_view(qr, 3, s3));
        TRY(qh, ql_tensor_permute(qv, perm));                     /* [heads, n, hd] */
        TRYH(kh, heads_of(P, K_, nk, kvh, g, (int)hd));            /* [heads, nk, hd] */
        TRYH(vh, heads_of(P, V_, nk, kvh, g, (int)hd));
        TRY(kt, ql_tensor_transpose(kh, 1, 2));                   /* [heads, hd, nk] */
        TRY(S, ql_matmul(qh, kt));                                /* [heads, n, nk] */
        TRY(Ss, ql_binary_scalar(QL_MUL, S, scale, 0));
        TRY(Sm, ql_binary(QL_ADD, Ss, mk));
        TRY(Pr, ql_softmax(Sm, 2));
        TRY(O, ql_matmul(Pr, vh));                                /* [heads, n, hd] */
        TRY(Op, ql_tensor_permute(O, perm));                      /* [n, heads, hd] */
        TRY(Oc, ql_tensor_contiguous(Op));
        TRY(Of, ql_tensor_view(Oc, 2, flatq));
        TRYH(o, linear(P, Of, &B->o));
        ql_tensor *xm, *xn2, *gg, *uu, *sg, *hh, *dd, *xo;
        TRY(xm, ql_binary(QL_ADD, x, o));
        TRYH(xn2, rmsnorm(P, xm, B->mlp_norm, c->eps));
        TRYH(gg, linear(P, xn2, &B->gate));
        TRYH(uu, linear(P, xn2, &B->up));
        TRY(sg, ql_unary(QL_SILU, gg));
        TRY(hh, ql_binary(QL_MUL, sg, uu));
        TRYH(dd, linear(P, hh, &B->down));
        TRY(xo, ql_binary(QL_ADD, xm, dd));
        /* the new residual replaces the old one; this layer's temporaries go */
        ql_tensor_retain(xo);
        while (P->n > mark) ql_tensor_release(P->t[--P->n]);
        ql_tensor_release(x);
        x = xo;
    }
    ql_tensor *xf, *lg, *lh;
    TRYH(xf, rmsnorm(P, x, m->norm, c->eps));
    TRYH(lg, linear(P, xf, &m->lm_head));
    TRY(lh, ql_tensor_to(lg, QL_F32, ql_cpu()));
    memcpy(logits, ql_tensor_data(lh), sizeof(float) * (size_t)(n * V));
    if (cache) for (int64_t i = 0; i < n; i++) if (b->pos[i] + 1 > cache->len) cache->len = b->pos[i] + 1;
    drain(P);
    ql_tensor_release(x);
    free(host);
    return QL_OK;
fail:
    st = ql_last_error()[0] ? QL_EDEVICE : ql_fail(QL_EDEVICE, "model forward on the device failed");
    drain(P);
    ql_tensor_release(x);
    free(host);
    return st;
}

static ql_status move(ql_tensor **t, ql_device dev)
{
    if (!*t) return QL_OK;
    ql_tensor *d = ql_tensor_to(*t, (*t)->dtype, dev);
    if (!d) return ql_fail_context(QL_ENOMEM, "moving the model to the GPU: ");
    ql_tensor_release(*t);
    *t = d;
    return QL_OK;
}

ql_status ql_model_to_device(ql_model *m, ql_device dev)
{
    if (dev.type == QL_DEV_CPU) return QL_OK;
    for (int l = 0; l < m->cfg.layers; l++) {
        ql_block *B = &m->blocks[l];
        ql_linear *L[7] = { &B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down };
        QL_TRY(move(&B->attn_norm, dev));
        QL_TRY(move(&B->mlp_norm, dev));
        for (int k = 0; k < 7; k++) { QL_TRY(move(&L[k]->w, dev)); QL_TRY(move(&L[k]->b, dev)); }
    }
    QL_TRY(move(&m->norm, dev));
    /* lm_head: its own device copy (a tied one shares the host embedding table) */
    ql_tensor *lm = ql_tensor_to(m->lm_head.w, m->lm_head.w->dtype, dev);
    if (!lm) return ql_fail_context(QL_ENOMEM, "moving lm_head to the GPU: ");
    ql_tensor_release(m->lm_head.w);
    m->lm_head.w = lm;
    m->device = dev;
    return QL_OK;
}

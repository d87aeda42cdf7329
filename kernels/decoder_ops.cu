/*
 * decoder_ops.cu — the CUDA op table of the decoder (engine/model/decoder.h):
 * bf16 activations (A buffers), f32 residual stream, statistics and
 * gradients, f32 LoRA parameters (cast to bf16 per product), every product
 * through cuBLASLt with f32 accumulation (gemm.cu), attention by flash_attn.cu
 * (attention_gemm.cu and attention.cu by QL_ATTN, and for KV-cache decoding),
 * the other kernels in decoder_kernels.cu.
 *
 * Frozen weights that are not bf16 (NF4, f32, f16) are dequantized or cast
 * into one reused bf16 buffer (the largest weight's size) right before
 * their product. The backend-private scratch of a batch (aux, planned by
 * decoder.c from aux_size) holds that buffer (two with dequantization
 * ahead), the adapters' bf16 copies, the lm_head chunks and, for training,
 * the attention backward's scratch and with dropout an f32 buffer.
 *
 * Everything runs in order on the legacy default stream, except the copies
 * of checkpoints kept in host memory (a copy stream ordered by events); the
 * loss sum is read back once per batch, which is also where an asynchronous
 * kernel error surfaces.
 */
#include "decoder_kernels.cuh"

extern "C" {
#include "decoder.h"
#include "model_internal.h"
#include "nf4.h"
#include "platform.h"
}

#include <math.h>
#include <stdlib.h>

#define CE_CHUNK 64    /* lm_head rows per chunk: f32 logits + bf16 gradient = 6 V bytes a row, 59 MB for
                          Qwen2.5's 152k vocabulary (half of 128 rows' share of the 7 GiB budget) */

/* ---------------------------------------------------------------- memory */

static void *cu_alloc(ql_device dev, size_t bytes)
{
    void *p = ql_cuda_backend.alloc(dev.index, bytes);
    if (p) ql_memory_count(dev, (int64_t)bytes);
    return p;
}
static void cu_free(ql_device dev, void *p, size_t bytes)
{
    if (!p) return;
    ql_cuda_backend.free(dev.index, p);
    ql_memory_count(dev, -(int64_t)bytes);
}
static ql_status cu_upload(ql_device dev, void *dst, const void *src, size_t n)
{
    return n ? ql_cuda_backend.from_host(dev.index, dst, src, n) : QL_OK;
}
static ql_status cu_download(ql_device dev, void *dst, const void *src, size_t n)
{
    return n ? ql_cuda_backend.to_host(dev.index, dst, src, n) : QL_OK;
}
static ql_status cu_sync(ql_device dev) { return ql_cuda_backend.sync(dev.index); }

static ql_status cu_memset0(ql_device dev, void *p, size_t n)
{
    QL_TRY(ql_cuda_set_device(dev.index));
    if (n) QL_CU(cudaMemsetAsync(p, 0, n, 0));
    return QL_OK;
}

/* ---------------------------------------------------------------- the aux layout */

struct aux_layout {
    uint16_t *wbuf;              /* bf16 [max out*in] frozen weight */
    float *absmax;               /* f32 [max blocks] NF4 scales */
    uint16_t *wbuf2;             /* the second buffer of dequantization ahead (NULL when off) */
    float *absmax2;
    int64_t wmax, bmax;          /* the buffers' capacity: values, NF4 blocks */
    uint16_t *abf, *bbf;         /* bf16 adapter copies [max r*in], [max out*r] */
    uint16_t *lbf;               /* bf16 copy of one layer's adapters [max layer block] */
    float *f32;                  /* [max(n max(H, Q), mr NI)]: dropout only */
    float *logits;               /* [CE_CHUNK, V] */
    uint16_t *dz;                /* [CE_CHUNK, V] */
    uint16_t *xs;                /* [CE_CHUNK, H] */
    float *dxs;                  /* [CE_CHUNK, H] */
    int32_t *rows, *tgt;         /* [n] */
    double *loss;                /* [1] */
    void *attn;                  /* flash_attn.cu's scratch of the backward */
    size_t bytes;
};

static size_t up(size_t x) { return (x + 255) & ~(size_t)255; }

/* QL_DEQUANT_AHEAD=0: every NF4 weight is dequantized on the default stream right before its
   product, into one buffer; otherwise the next projection's weight is dequantized into a second
   buffer on a side stream while the current product runs (weight_bf16) */
static int dequant_ahead(void)
{
    static int v = -1;
    if (v < 0) { const char *e = getenv("QL_DEQUANT_AHEAD"); v = !(e && !strcmp(e, "0")); }
    return v;
}

static int needs_copy(const ql_tensor *w) { return !(w->dtype == QL_BF16 && ql_tensor_is_contiguous(w)); }

static void aux_plan(const ql_model *m, const ql_lora *l, int64_t n, int64_t mr, int train, char *base, aux_layout *a)
{
    const ql_model_config *c = &m->cfg;
    int64_t H = c->hidden, NI = c->inter, Q = (int64_t)c->heads * c->head_dim, V = c->vocab;
    int64_t HQ = H > Q ? H : Q;
    int64_t W = n * HQ > mr * NI ? n * HQ : mr * NI;   /* the widest [rows, in] of one linear call */
    int64_t wmax = 0, bmax = 0, amax = 0, bbmax = 0, lmax = 0;
    for (int i = 0; i < c->layers; i++) {
        if (l && l->d_off && i < l->layers) {
            int64_t b1 = i + 1 < l->layers ? l->d_off[(i + 1) * QL_NTARGETS] : l->d_n;
            if (b1 - l->d_off[i * QL_NTARGETS] > lmax) lmax = b1 - l->d_off[i * QL_NTARGETS];
        }
        const ql_block *B = &m->blocks[i];
        const ql_linear *L[7] = { &B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down };
        for (int t = 0; t < 7; t++) {
            int64_t e = (int64_t)L[t]->out * L[t]->in;
            if (needs_copy(L[t]->w) && e > wmax) wmax = e;
            if (L[t]->w->dtype == QL_NF4) {
                int64_t nb = (e + L[t]->w->quant->blocksize - 1) / L[t]->w->quant->blocksize;
                if (nb > bmax) bmax = nb;
            }
            if (l) {
                const ql_lora_mod *mod = ql_lora_at(l, i, t);
                if (mod && (int64_t)mod->r * mod->in > amax) amax = (int64_t)mod->r * mod->in;
                if (mod && (int64_t)mod->out * mod->r > bbmax) bbmax = (int64_t)mod->out * mod->r;
            }
        }
    }
    if (needs_copy(m->lm_head.w) && V * H > wmax) wmax = V * H;
    if (m->lm_head.w->dtype == QL_NF4) {
        int64_t nb = (V * H + m->lm_head.w->quant->blocksize - 1) / m->lm_head.w->quant->blocksize;
        if (nb > bmax) bmax = nb;
    }
    size_t off = 0;
#define TAKE(field, type, count) do { a->field = base ? (type *)(base + off) : NULL; off += up(sizeof(type) * (size_t)(count)); } while (0)
    TAKE(wbuf, uint16_t, wmax);
    TAKE(absmax, float, bmax);
    TAKE(wbuf2, uint16_t, dequant_ahead() && bmax > 0 ? wmax : 0);
    TAKE(absmax2, float, dequant_ahead() && bmax > 0 ? bmax : 0);
    TAKE(abf, uint16_t, amax);
    TAKE(bbf, uint16_t, bbmax);
    TAKE(lbf, uint16_t, lmax);
    TAKE(f32, float, train && l && l->dropout > 0 ? W : 0);   /* only the dropout path of the backward */
    TAKE(logits, float, (int64_t)CE_CHUNK * V);
    TAKE(dz, uint16_t, (int64_t)CE_CHUNK * V);
    TAKE(xs, uint16_t, (int64_t)CE_CHUNK * H);
    TAKE(dxs, float, (int64_t)CE_CHUNK * H);
    TAKE(rows, int32_t, n);
    TAKE(tgt, int32_t, n);
    TAKE(loss, double, 1);
    TAKE(attn, char, train ? qlk_flash_scratch(n, c->heads, c->kv_heads, c->head_dim) : 0);
#undef TAKE
    a->wmax = wmax;
    a->bmax = bmax;
    if (!(dequant_ahead() && bmax > 0)) a->wbuf2 = NULL, a->absmax2 = NULL;
    a->bytes = off;
}

static size_t cu_aux_size(const ql_model *m, const ql_lora *l, int64_t n, int64_t mr, int train)
{
    aux_layout a;
    aux_plan(m, l, n, mr, train, NULL, &a);
    return a.bytes;
}

static aux_layout aux_of(ql_dec_ctx *c)
{
    aux_layout a;
    aux_plan(c->m, c->lora, c->n, c->mr, c->train, (char *)c->aux, &a);
    return a;
}

/* w as bf16 into buf on stream s (NF4 on any stream; other dtypes only on the default one) */
static ql_status dequant_into(const ql_tensor *w, uint16_t *buf, float *absmax, cudaStream_t s)
{
    int64_t n = ql_tensor_numel(w);
    if (w->dtype == QL_NF4) {
        const ql_quant *q = w->quant;
        int dq = q->double_quant;
        return ql_cuda_nf4_dequantize_bf16_fast(
            (const uint8_t *)ql_tensor_data(w), dq, dq ? (const uint8_t *)ql_tensor_data(q->absmax) : NULL,
            dq ? NULL : (const float *)ql_tensor_data(q->absmax), dq ? (const float *)ql_tensor_data(q->nested_absmax) : NULL,
            dq ? (const float *)ql_tensor_data(q->nested_code) : NULL, q->nested_offset, n, q->blocksize, buf, absmax,
            (void *)s);
    }
    if (!ql_tensor_is_contiguous(w)) return ql_fail(QL_EUNSUPPORTED, "a strided frozen weight on the GPU");
    return qlk_to_bf16(ql_tensor_data(w), w->dtype, buf, n);
}

/* The side stream of dequantization ahead, per device: non-blocking (neither it nor the default
   stream waits for the other unless told); go: recorded on the default stream, where a side
   dequantization must wait (the products that read its buffer before); ready[slot]: recorded
   after it, where the product that needs it waits; idle: after the side stream's latest work,
   which a step waits for before it first touches the buffers. */
#define DQ_MAXDEV 64
struct dq_side { cudaStream_t s; cudaEvent_t go, ready[2], idle; int made; };
static dq_side dq_sides[DQ_MAXDEV];

static ql_status side_for(ql_device dev, dq_side **out)
{
    if (dev.index < 0 || dev.index >= DQ_MAXDEV) return ql_fail(QL_EINVAL, "device index %d out of range", dev.index);
    QL_TRY(ql_cuda_set_device(dev.index));
    dq_side *d = &dq_sides[dev.index];
    if (!d->made) {
        QL_CU(cudaStreamCreateWithFlags(&d->s, cudaStreamNonBlocking));
        QL_CU(cudaEventCreateWithFlags(&d->go, cudaEventDisableTiming));
        QL_CU(cudaEventCreateWithFlags(&d->ready[0], cudaEventDisableTiming));
        QL_CU(cudaEventCreateWithFlags(&d->ready[1], cudaEventDisableTiming));
        QL_CU(cudaEventCreateWithFlags(&d->idle, cudaEventDisableTiming));
        d->made = 1;
    }
    *out = d;
    return QL_OK;
}

/* A frozen weight as bf16 [out, in]: the tensor itself, or a copy in one of the two
   dequantization buffers (c->slots says which weight each holds for this step). With next (the
   decoder's hint of the following projection) and dequantization ahead on, next's NF4 weight is
   then dequantized into the other buffer on the side stream, overlapping the product that is
   about to use this one. Without a second buffer, everything happens in wbuf on the default
   stream, as before. */
static ql_status weight_bf16(ql_dec_ctx *c, const ql_tensor *w, const ql_linear *next, const uint16_t **out)
{
    if (!needs_copy(w)) { *out = (const uint16_t *)ql_tensor_data(w); return QL_OK; }
    aux_layout a = aux_of(c);
    uint16_t *buf[2] = { a.wbuf, a.wbuf2 };
    float *am[2] = { a.absmax, a.absmax2 };
    if (!a.wbuf2) {
        if (c->slots[0] != (const void *)w) QL_TRY(dequant_into(w, a.wbuf, a.absmax, 0));
        c->slots[0] = w;
        *out = a.wbuf;
        return QL_OK;
    }
    dq_side *sd = NULL;
    QL_TRY(side_for(c->dev, &sd));
    if (!c->slots_ready) {   /* a previous step's orphaned prefetch must not land in this step's buffers */
        QL_CU(cudaStreamWaitEvent(0, sd->idle, 0));
        c->slots_ready = 1;
    }
    int s = c->slots[0] == (const void *)w ? 0 : c->slots[1] == (const void *)w ? 1 : -1;
    if (s >= 0) {
        QL_CU(cudaStreamWaitEvent(0, sd->ready[s], 0));   /* a no-op for a buffer filled on this stream */
    } else {
        /* not ahead (no hint, or another weight came): on the default stream, after the side
           stream's pending work, in the buffer the hint will not want */
        s = next && c->slots[1] == (const void *)next->w ? 0 : 1;
        QL_CU(cudaStreamWaitEvent(0, sd->idle, 0));
        c->slots[s] = NULL;
        QL_TRY(dequant_into(w, buf[s], am[s], 0));
        c->slots[s] = w;
    }
    *out = buf[s];
    const ql_tensor *nw = next ? next->w : NULL;
    int o = 1 - s;
    /* (a hint is one of the model's projections, which the buffers were planned for; anything
       larger is not fetched ahead) */
    if (nw && nw != w && nw->dtype == QL_NF4 && c->slots[o] != (const void *)nw && ql_tensor_numel(nw) <= a.wmax &&
        (ql_tensor_numel(nw) + nw->quant->blocksize - 1) / nw->quant->blocksize <= a.bmax) {
        c->slots[o] = NULL;
        QL_CU(cudaEventRecord(sd->go, 0));   /* after the products queued so far, which read buf[o] */
        QL_CU(cudaStreamWaitEvent(sd->s, sd->go, 0));
        QL_TRY(dequant_into(nw, buf[o], am[o], sd->s));
        QL_CU(cudaEventRecord(sd->ready[o], sd->s));
        QL_CU(cudaEventRecord(sd->idle, sd->s));
        c->slots[o] = nw;
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- norms, RoPE, attention, SwiGLU */

static ql_status cu_embed(ql_dec_ctx *c, const ql_dec_batch *b, float *x)
{
    const ql_tensor *E = c->m->embed;
    int64_t H = c->m->cfg.hidden;
    if (!ql_tensor_is_contiguous(E) || E->dtype == QL_NF4)
        return ql_fail(QL_EINVAL, "the embedding table must be a contiguous f32/bf16/f16 tensor");
    if (ql_tensor_device(E).type == QL_DEV_CPU) {   /* an untied table kept in host memory (model_load.c) */
        cudaPointerAttributes pa;
        if (cudaPointerGetAttributes(&pa, ql_tensor_data(E)) == cudaSuccess && pa.type == cudaMemoryTypeHost &&
            pa.devicePointer)   /* page-locked and mapped: the kernel reads its rows over the bus */
            return qlk_embed(pa.devicePointer, E->dtype, H, b->d_ids, b->n, x);
        (void)cudaGetLastError();
        float *rows = (float *)malloc(sizeof(float) * (size_t)(b->n * H));
        if (!rows) return ql_fail(QL_ENOMEM, "out of host memory for %lld embedding rows", (long long)b->n);
        ql_embed_rows(E, b->ids, b->n, (int)H, rows);
        ql_status s = cu_upload(c->dev, x, rows, sizeof(float) * (size_t)(b->n * H));
        free(rows);
        return s;
    }
    return qlk_embed(ql_tensor_data(E), E->dtype, H, b->d_ids, b->n, x);
}

static ql_status cu_rmsnorm(ql_dec_ctx *c, const float *x, const ql_tensor *w, int64_t n, void *y, float *r)
{
    return qlk_rmsnorm(x, ql_tensor_data(w), w->dtype, n, c->m->cfg.hidden, (float)c->m->cfg.eps, (uint16_t *)y, r);
}

static ql_status cu_rmsnorm_bwd(ql_dec_ctx *c, const float *x, const ql_tensor *w, const float *r, const float *dy,
                                int64_t n, float *dx)
{
    return qlk_rmsnorm_bwd(x, ql_tensor_data(w), w->dtype, r, dy, n, c->m->cfg.hidden, dx);
}

static ql_status cu_residual(ql_dec_ctx *c, float *out, const float *a, const void *b, int64_t count)
{
    (void)c;
    return qlk_residual(out, a, (const uint16_t *)b, count);
}

static ql_status cu_widen(ql_dec_ctx *c, const void *src, int64_t count, float *dst)
{
    (void)c;
    return qlk_widen((const uint16_t *)src, dst, count);
}

static const void *cu_as_act(ql_dec_ctx *c, const float *src, int64_t count, void *dst, ql_status *st)
{
    (void)c;
    *st = qlk_to_bf16(src, QL_F32, (uint16_t *)dst, count);
    return dst;
}

/* ---------------------------------------------------------------- checkpoints in host memory */

/* One copy stream per device beside the legacy default stream (non-blocking, so that the default
   stream does not wait for it, nor it for the default stream), and events that order the two:
   a copy starts after the compute queued before it (comp), the compute queued after ck_ready
   waits for the slot's last copy (done[slot]). */
#define CK_MAXDEV 64
struct ck_queue { cudaStream_t copy; cudaEvent_t comp, done[2]; int made; };
static ck_queue ck_q[CK_MAXDEV];

static ql_status ck_queue_for(ql_device dev, ck_queue **out)
{
    if (dev.index < 0 || dev.index >= CK_MAXDEV) return ql_fail(QL_EINVAL, "device index %d out of range", dev.index);
    QL_TRY(ql_cuda_set_device(dev.index));
    ck_queue *q = &ck_q[dev.index];
    if (!q->made) {
        QL_CU(cudaStreamCreateWithFlags(&q->copy, cudaStreamNonBlocking));
        QL_CU(cudaEventCreateWithFlags(&q->comp, cudaEventDisableTiming));
        QL_CU(cudaEventCreateWithFlags(&q->done[0], cudaEventDisableTiming));
        QL_CU(cudaEventCreateWithFlags(&q->done[1], cudaEventDisableTiming));
        q->made = 1;
    }
    *out = q;
    return QL_OK;
}

static ql_status ck_copy(ql_dec_ctx *c, int slot, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    ck_queue *q = NULL;
    QL_TRY(ck_queue_for(c->dev, &q));
    QL_CU(cudaEventRecord(q->comp, 0));
    QL_CU(cudaStreamWaitEvent(q->copy, q->comp, 0));
    QL_CU(cudaMemcpyAsync(dst, src, bytes, kind, q->copy));
    QL_CU(cudaEventRecord(q->done[slot & 1], q->copy));
    return QL_OK;
}
static ql_status cu_ck_store(ql_dec_ctx *c, int slot, void *host, const void *src, size_t bytes)
{
    return ck_copy(c, slot, host, src, bytes, cudaMemcpyDeviceToHost);
}
static ql_status cu_ck_fetch(ql_dec_ctx *c, int slot, void *dst, const void *host, size_t bytes)
{
    return ck_copy(c, slot, dst, host, bytes, cudaMemcpyHostToDevice);
}
static ql_status cu_ck_ready(ql_dec_ctx *c, int slot)
{
    ck_queue *q = NULL;
    QL_TRY(ck_queue_for(c->dev, &q));
    QL_CU(cudaStreamWaitEvent(0, q->done[slot & 1], 0));
    return QL_OK;
}
static void *cu_host_alloc(ql_device dev, size_t bytes)
{
    if (ql_cuda_set_device(dev.index) != QL_OK) return NULL;
    return ql_cuda_backend.host_alloc(bytes);
}
static void cu_host_free(ql_device dev, void *p)
{
    (void)dev;
    ql_cuda_backend.host_free(p);
}

static ql_status cu_rope(ql_dec_ctx *c, void *x, const ql_dec_batch *b, int nh, int inverse)
{
    return qlk_rope((uint16_t *)x, b->d_pos, c->inv_freq, b->n, nh, c->m->cfg.head_dim, inverse);
}

/* Which kernels attend over the batch's own keys: flash_attn.cu (the default), or by QL_ATTN:
   "gemm" (products per segment, attention_gemm.cu), "warp" (attention.cu, which also serves
   KV-cache decoding). Flash needs sm_80+ and a head dim that is a multiple of 16 up to 128;
   gemm needs segments of at most QL_ATTN_GEMM_MAX tokens; warp takes anything. */
enum { ATTN_FLASH, ATTN_GEMM, ATTN_WARP };
static int attention_path(const ql_model_config *cf, const ql_dec_batch *b)
{
    const char *e = getenv("QL_ATTN");
    int want = !e || !e[0] ? ATTN_FLASH : !strcmp(e, "gemm") ? ATTN_GEMM : !strcmp(e, "warp") ? ATTN_WARP : ATTN_FLASH;
    if (want == ATTN_FLASH && qlk_flash_supported(cf->head_dim)) return ATTN_FLASH;
    if (want != ATTN_WARP && qlk_attn_gemm_fits(b->lo, b->hi, b->n)) return ATTN_GEMM;
    return ATTN_WARP;
}

static ql_status cu_attn(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                         int keys_are_batch, void *out, float *lse)
{
    const ql_model_config *cf = &c->m->cfg;
    const uint16_t *q_ = (const uint16_t *)q, *k_ = (const uint16_t *)k, *v_ = (const uint16_t *)v;
    int path = keys_are_batch ? attention_path(cf, b) : ATTN_WARP;
    if (path == ATTN_FLASH)
        return qlk_flash_fwd(q_, k_, v_, b->d_lo, b->d_hi, b->n, cf->heads, cf->kv_heads, cf->head_dim,
                             cf->sliding_window, (uint16_t *)out, lse);
    if (path == ATTN_GEMM) {
        void *scratch = ql_cuda_tmp_alloc(c->dev.index, qlk_attn_gemm_scratch(b->n, cf->heads, cf->kv_heads, cf->head_dim));
        if (!scratch) return QL_ENOMEM;
        ql_status s = qlk_attn_fwd_gemm(c->dev.index, q_, k_, v_, b->lo, b->hi, b->d_lo, b->d_hi, b->n, cf->heads,
                                        cf->kv_heads, cf->head_dim, cf->sliding_window, (uint16_t *)out, lse, scratch);
        ql_cuda_tmp_free(c->dev.index, scratch);
        return s;
    }
    return qlk_attn_fwd(q_, k_, v_, b->d_lo, b->d_hi, b->n, cf->heads, cf->kv_heads, cf->head_dim, cf->sliding_window,
                        (uint16_t *)out, lse);
}

static ql_status cu_attn_bwd(ql_dec_ctx *c, const ql_dec_batch *b, const void *q, const void *k, const void *v,
                             const void *out, const float *lse, const float *dout, void *dq, void *dk, void *dv)
{
    const ql_model_config *cf = &c->m->cfg;
    const uint16_t *q_ = (const uint16_t *)q, *k_ = (const uint16_t *)k, *v_ = (const uint16_t *)v;
    int path = attention_path(cf, b);
    if (path != ATTN_GEMM && !b->d_qlo) return ql_fail(QL_EINVAL, "attention backward: the batch has no key ranges");
    if (path == ATTN_FLASH) {
        aux_layout a = aux_of(c);
        return qlk_flash_bwd(q_, k_, v_, (const uint16_t *)out, lse, dout, b->d_lo, b->d_hi, b->d_qlo, b->d_qhi, b->n,
                             cf->heads, cf->kv_heads, cf->head_dim, cf->sliding_window, (uint16_t *)dq, (uint16_t *)dk,
                             (uint16_t *)dv, a.attn);
    }
    if (path == ATTN_GEMM) {
        void *scratch = ql_cuda_tmp_alloc(c->dev.index, qlk_attn_gemm_scratch(b->n, cf->heads, cf->kv_heads, cf->head_dim));
        if (!scratch) return QL_ENOMEM;
        ql_status s = qlk_attn_bwd_gemm(c->dev.index, q_, k_, v_, (const uint16_t *)out, lse, dout, b->lo, b->hi, b->d_lo,
                                        b->d_hi, b->n, cf->heads, cf->kv_heads, cf->head_dim, cf->sliding_window,
                                        (uint16_t *)dq, (uint16_t *)dk, (uint16_t *)dv, scratch);
        ql_cuda_tmp_free(c->dev.index, scratch);
        return s;
    }
    return qlk_attn_bwd(q_, k_, v_, (const uint16_t *)out, lse, dout, b->d_lo, b->d_hi, b->d_qlo, b->d_qhi, b->n,
                        cf->heads, cf->kv_heads, cf->head_dim, cf->sliding_window, (uint16_t *)dq, (uint16_t *)dk,
                        (uint16_t *)dv);
}

static ql_status cu_swiglu(ql_dec_ctx *c, const void *g, const void *u, void *h, int64_t count)
{
    (void)c;
    return qlk_swiglu((const uint16_t *)g, (const uint16_t *)u, (uint16_t *)h, count);
}

static ql_status cu_swiglu_bwd(ql_dec_ctx *c, const void *g, const void *u, const float *dh, void *dg, void *du,
                               int64_t count)
{
    (void)c;
    return qlk_swiglu_bwd((const uint16_t *)g, (const uint16_t *)u, dh, (uint16_t *)dg, (uint16_t *)du, count);
}

/* ---------------------------------------------------------------- linear + LoRA */

/* QL_PROFILE's parts of a linear: 0 dequantization, 1 the frozen product, 2 the adapters' bf16
   casts, 3 the adapter's forward, 4 its backward's gB and dy B (both read dy), 5 its gA and dx */
static double sub_t0(ql_dec_ctx *c)
{
    if (!c->profiling) return 0;
    cudaDeviceSynchronize();
    return ql_now();
}
static void sub_add(ql_dec_ctx *c, int part, double t0)
{
    if (!c->profiling) return;
    cudaDeviceSynchronize();
    c->sub_ms[part] += (ql_now() - t0) * 1e3;
}

/* The adapter's A and B as bf16 copies in aux. An adapter of the step's LoRA lies in its flat
   parameter array, where each layer's adapters are one block: the whole block is cast once and
   kept while the step stays in that layer (c->cached: layer + 1), one cast for a layer's seven
   products instead of two per product (the parameters do not change during a step).
   QL_ADAPTER_CAST=each casts per product, as before. Others (the op tests' own A, B) are cast
   each time. */
static int cast_each(void)
{
    static int v = -1;
    if (v < 0) { const char *e = getenv("QL_ADAPTER_CAST"); v = e && !strcmp(e, "each"); }
    return v;
}
static ql_status adapter_bf16(ql_dec_ctx *c, const ql_dec_lin *L, const uint16_t **A, const uint16_t **B)
{
    double t = sub_t0(c);
    aux_layout a = aux_of(c);
    const ql_lora_mod *mod = L->mod;
    const ql_lora *l = c->lora;
    int64_t na = (int64_t)mod->r * mod->in;
    if (!cast_each() && l && l->d_p && l->d_off && L->layer >= 0 && L->layer < l->layers && L->A >= l->d_p &&
        L->A + na <= l->d_p + l->d_n && L->B == L->A + na) {
        int64_t b0 = l->d_off[L->layer * QL_NTARGETS];
        int64_t b1 = L->layer + 1 < l->layers ? l->d_off[(L->layer + 1) * QL_NTARGETS] : l->d_n;
        int64_t off = L->A - l->d_p;
        if (off >= b0 && off + na + (int64_t)mod->out * mod->r <= b1) {
            if (c->cached != L->layer + 1) {
                QL_TRY(qlk_to_bf16(l->d_p + b0, QL_F32, a.lbf, b1 - b0));
                c->cached = L->layer + 1;
            }
            *A = a.lbf + (off - b0);
            *B = *A + na;
            sub_add(c, 2, t);
            return QL_OK;
        }
    }
    QL_TRY(qlk_to_bf16(L->A, QL_F32, a.abf, na));
    QL_TRY(qlk_to_bf16(L->B, QL_F32, a.bbf, (int64_t)mod->out * mod->r));
    *A = a.abf;
    *B = a.bbf;
    sub_add(c, 2, t);
    return QL_OK;
}

/* The adapter's term goes first and the frozen product adds onto it (beta = 1): the big product
   reads y in its epilogue, where it costs next to nothing, instead of a second pass over y after it.
   The same for dx in the backward (without dropout, whose mask needs its own pass). */
static ql_status cu_linear(ql_dec_ctx *c, const ql_dec_lin *L, const void *x, int64_t n, void *y, void *xa)
{
    int dev = c->dev.index;
    const ql_linear *base = L->base;
    int64_t in = base->in, out = base->out;
    if (n == 0) return QL_OK;
    const ql_lora_mod *mod = L->mod;
    double t;
    if (mod) {
        const uint16_t *A, *B;
        QL_TRY(adapter_bf16(c, L, &A, &B));
        t = sub_t0(c);
        const void *xd = x;
        if (L->dropout > 0) {
            QL_TRY(qlk_dropout((const uint16_t *)x, (uint16_t *)c->tmp, n * in, L->dropout, L->seed, L->stream, L->elem0));
            xd = c->tmp;
        }
        int r = mod->r;
        QL_TRY(qlk_gemm(dev, 0, 1, n, r, in, 1.0f, xd, in, A, in, QL_BF16, 0.0f, xa, r, QL_BF16));
        if (y) QL_TRY(qlk_gemm(dev, 0, 1, n, out, r, mod->scale, xa, r, B, r, QL_BF16, 0.0f, y, out, QL_BF16));
        sub_add(c, 3, t);
    }
    if (!y) return QL_OK;   /* only xa was wanted (decoder.h) */
    const uint16_t *W;
    t = sub_t0(c);
    QL_TRY(weight_bf16(c, base->w, L->next, &W));
    sub_add(c, 0, t);
    t = sub_t0(c);
    QL_TRY(qlk_gemm(dev, 0, 1, n, out, in, 1.0f, x, in, W, in, QL_BF16, mod ? 1.0f : 0.0f, y, out, QL_BF16));
    if (base->b) QL_TRY(qlk_add_bias((uint16_t *)y, ql_tensor_data(base->b), base->b->dtype, n, out));
    sub_add(c, 1, t);
    return QL_OK;
}

static ql_status cu_linear_bwd(ql_dec_ctx *c, const ql_dec_lin *L, const void *x, const void *xa, const void *dy,
                               int64_t n, float *dx, int accumulate)
{
    int dev = c->dev.index;
    const ql_linear *base = L->base;
    int64_t in = base->in, out = base->out;
    if (n == 0) return QL_OK;
    const ql_lora_mod *mod = L->mod;
    const uint16_t *W;
    double t;
    /* with dropout the frozen product goes first: the adapter's dx term is added through the mask */
    int frozen_first = !mod || L->dropout > 0;
    if (frozen_first) {
        t = sub_t0(c);
        QL_TRY(weight_bf16(c, base->w, L->next, &W));
        sub_add(c, 0, t);
        t = sub_t0(c);
        /* dx [n, in] (+)= dy [n, out] @ W [out, in] */
        QL_TRY(qlk_gemm(dev, 0, 0, n, in, out, 1.0f, dy, out, W, in, QL_BF16, accumulate ? 1.0f : 0.0f, dx, in, QL_F32));
        sub_add(c, 1, t);
        if (!mod) return QL_OK;
    }
    int r = mod->r;
    const uint16_t *A, *B;
    QL_TRY(adapter_bf16(c, L, &A, &B));
    t = sub_t0(c);
    /* gB [out, r] += scale dy^T xa */
    QL_TRY(qlk_gemm(dev, 1, 0, out, r, n, mod->scale, dy, out, xa, r, QL_BF16, 1.0f, L->gB, r, QL_F32));
    /* tr [n, r] = dy B */
    QL_TRY(qlk_gemm(dev, 0, 0, n, r, out, 1.0f, dy, out, B, r, QL_BF16, 0.0f, c->tr, r, QL_BF16));
    sub_add(c, 4, t);
    t = sub_t0(c);
    const void *xd = x;
    if (L->dropout > 0) {
        QL_TRY(qlk_dropout((const uint16_t *)x, (uint16_t *)c->tmp, n * in, L->dropout, L->seed, L->stream, L->elem0));
        xd = c->tmp;
    }
    /* gA [r, in] += scale tr^T dropout(x) */
    QL_TRY(qlk_gemm(dev, 1, 0, r, in, n, mod->scale, c->tr, r, xd, in, QL_BF16, 1.0f, L->gA, in, QL_F32));
    /* dx += scale (tr A), through the dropout mask */
    if (L->dropout > 0) {
        aux_layout a = aux_of(c);
        QL_TRY(qlk_gemm(dev, 0, 0, n, in, r, mod->scale, c->tr, r, A, in, QL_BF16, 0.0f, a.f32, in, QL_F32));
        QL_TRY(qlk_dropout_add(a.f32, dx, n * in, L->dropout, L->seed, L->stream, L->elem0));
    } else {
        QL_TRY(qlk_gemm(dev, 0, 0, n, in, r, mod->scale, c->tr, r, A, in, QL_BF16, accumulate ? 1.0f : 0.0f, dx, in,
                        QL_F32));
    }
    sub_add(c, 5, t);
    if (!frozen_first) {
        t = sub_t0(c);
        QL_TRY(weight_bf16(c, base->w, L->next, &W));
        sub_add(c, 0, t);
        t = sub_t0(c);
        QL_TRY(qlk_gemm(dev, 0, 0, n, in, out, 1.0f, dy, out, W, in, QL_BF16, 1.0f, dx, in, QL_F32));
        sub_add(c, 1, t);
    }
    return QL_OK;
}

/* ---------------------------------------------------------------- lm_head */

static ql_status cu_lm_head_ce(ql_dec_ctx *c, const ql_dec_batch *b, const int32_t *labels, const void *xf,
                               double denom, double *sum, int64_t *count, float *dxf)
{
    int64_t n = b->n, H = c->m->cfg.hidden, V = c->m->cfg.vocab;
    int dev = c->dev.index;
    aux_layout a = aux_of(c);
    /* the targets, chosen on the host as the CPU does (token i predicts labels[i + 1] in its document) */
    int32_t *host = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * n));
    if (!host) return ql_fail(QL_ENOMEM, "out of host memory");
    int64_t k = 0;
    ql_status s = QL_OK;
    for (int64_t i = 0; i + 1 < n; i++) {
        if (!(b->lo[i + 1] <= i && labels[i + 1] != -100)) continue;
        if (labels[i + 1] < 0 || labels[i + 1] >= V) { s = ql_fail(QL_EINVAL, "label %d outside the vocabulary", labels[i + 1]); break; }
        host[k] = (int32_t)i;
        host[n + k] = labels[i + 1];
        k++;
    }
    if (s == QL_OK && k > 0) {
        s = cu_upload(c->dev, a.rows, host, sizeof(int32_t) * (size_t)k);
        if (s == QL_OK) s = cu_upload(c->dev, a.tgt, host + n, sizeof(int32_t) * (size_t)k);
    }
    free(host);
    if (s != QL_OK || k == 0) return s;
    const uint16_t *W;
    QL_TRY(weight_bf16(c, c->m->lm_head.w, NULL, &W));
    QL_TRY(cu_memset0(c->dev, a.loss, sizeof(double)));
    for (int64_t c0 = 0; c0 < k; c0 += CE_CHUNK) {
        int64_t tc = k - c0 < CE_CHUNK ? k - c0 : CE_CHUNK;
        QL_TRY(qlk_gather_rows((const uint16_t *)xf, a.rows + c0, tc, H, a.xs));
        QL_TRY(qlk_gemm(dev, 0, 1, tc, V, H, 1.0f, a.xs, H, W, H, QL_BF16, 0.0f, a.logits, V, QL_F32));
        QL_TRY(qlk_ce_rows(a.logits, a.tgt + c0, tc, V, denom, a.loss, dxf ? a.dz : NULL));
        if (dxf) {
            QL_TRY(qlk_gemm(dev, 0, 0, tc, H, V, 1.0f, a.dz, V, W, H, QL_BF16, 0.0f, a.dxs, H, QL_F32));
            QL_TRY(qlk_scatter_add_rows(a.dxs, a.rows + c0, tc, H, dxf));
        }
    }
    double got = 0;
    QL_TRY(cu_download(c->dev, &got, a.loss, sizeof got));
    *sum += got;
    *count += k;
    return QL_OK;
}

static ql_status cu_lm_head_logits(ql_dec_ctx *c, const void *xf, int64_t r0, int64_t rows, float *host)
{
    int64_t H = c->m->cfg.hidden, V = c->m->cfg.vocab;
    aux_layout a = aux_of(c);
    const uint16_t *W;
    QL_TRY(weight_bf16(c, c->m->lm_head.w, NULL, &W));
    for (int64_t i = 0; i < rows; i += CE_CHUNK) {
        int64_t tc = rows - i < CE_CHUNK ? rows - i : CE_CHUNK;
        const uint16_t *x = (const uint16_t *)xf + (r0 + i) * H;
        QL_TRY(qlk_gemm(c->dev.index, 0, 1, tc, V, H, 1.0f, x, H, W, H, QL_BF16, 0.0f, a.logits, V, QL_F32));
        QL_TRY(cu_download(c->dev, host + i * V, a.logits, sizeof(float) * (size_t)(tc * V)));
    }
    if (c->m->lm_head.b) return ql_fail(QL_EUNSUPPORTED, "an lm_head bias on the GPU");
    return QL_OK;
}

static ql_status cu_kv_store(ql_dec_ctx *c, ql_kv_cache *kv, int l, const ql_dec_batch *b, const void *k, const void *v)
{
    int64_t KV = (int64_t)c->m->cfg.kv_heads * c->m->cfg.head_dim;
    QL_TRY(qlk_kv_store((uint16_t *)ql_tensor_data(kv->dk[l]), (const uint16_t *)k, b->d_pos, b->n, KV));
    return qlk_kv_store((uint16_t *)ql_tensor_data(kv->dv[l]), (const uint16_t *)v, b->d_pos, b->n, KV);
}

/* ---------------------------------------------------------------- optimizer */

static ql_status cu_adamw(ql_device dev, float *p, const float *g, float *m, float *v, int64_t count, double lr,
                          double b1, double b2, double eps, double wd, int64_t step)
{
    QL_TRY(ql_cuda_set_device(dev.index));
    /* the scalars exactly as ql_adamw_f32 computes them */
    double bc1 = 1.0 - pow(b1, (double)step), bc2 = 1.0 - pow(b2, (double)step);
    float decay = (float)(1.0 - lr * wd), w1 = (float)(1.0 - b1), fb2 = (float)b2, w2 = (float)(1.0 - b2);
    float neg_step = (float)(-(lr / bc1)), bc2_sqrt = (float)sqrt(bc2), feps = (float)eps;
    return qlk_adamw(p, g, m, v, count, decay, w1, fb2, w2, neg_step, bc2_sqrt, feps);
}

static ql_status cu_sumsq(ql_device dev, const float *g, int64_t count, double *out)
{
    QL_TRY(ql_cuda_set_device(dev.index));
    double *d = (double *)ql_cuda_tmp_alloc(dev.index, sizeof(double));
    if (!d) return QL_ENOMEM;
    ql_status s = qlk_sumsq(g, count, d);
    if (s == QL_OK) s = cu_download(dev, out, d, sizeof(double));
    ql_cuda_tmp_free(dev.index, d);
    return s;
}

static ql_status cu_scale(ql_device dev, float *g, int64_t count, float s)
{
    QL_TRY(ql_cuda_set_device(dev.index));
    return qlk_scale(g, count, s);
}

static ql_dec_ops make_ops(void)
{
    ql_dec_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.act = QL_BF16;
    o.sub_names[0] = "dequant";
    o.sub_names[1] = "frozen products";
    o.sub_names[2] = "adapter casts";
    o.sub_names[3] = "adapters fwd";
    o.sub_names[4] = "adapters gB+dyB";
    o.sub_names[5] = "adapters gA+dx";
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.upload = cu_upload;
    o.download = cu_download;
    o.memset0 = cu_memset0;
    o.aux_size = cu_aux_size;
    o.sync = cu_sync;
    o.embed = cu_embed;
    o.rmsnorm = cu_rmsnorm;
    o.rmsnorm_bwd = cu_rmsnorm_bwd;
    o.residual = cu_residual;
    o.as_act = cu_as_act;
    o.widen = cu_widen;
    o.rope = cu_rope;
    o.attn = cu_attn;
    o.attn_bwd = cu_attn_bwd;
    o.swiglu = cu_swiglu;
    o.swiglu_bwd = cu_swiglu_bwd;
    o.linear = cu_linear;
    o.linear_bwd = cu_linear_bwd;
    o.lm_head_ce = cu_lm_head_ce;
    o.lm_head_logits = cu_lm_head_logits;
    o.kv_store = cu_kv_store;
    o.adamw = cu_adamw;
    o.sumsq = cu_sumsq;
    o.scale = cu_scale;
    o.ck_store = cu_ck_store;
    o.ck_fetch = cu_ck_fetch;
    o.ck_ready = cu_ck_ready;
    o.host_alloc = cu_host_alloc;
    o.host_free = cu_host_free;
    return o;
}

extern "C" const ql_dec_ops ql_dec_cuda_ops = make_ops();

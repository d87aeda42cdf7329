/*
 * test_decoder_ops.c — every op of the decoder's CUDA table against the CPU
 * reference table (engine/model/decoder.h), one op at a time on the tiny
 * Qwen2 fixture's weights.
 *
 * Inputs are random values that bf16 represents exactly, so both tables see
 * the same numbers and every difference comes from the CUDA side's own
 * roundings. Tolerances, as |g - c| <= tol * max|c| over the output:
 *   TOL_ACT  1e-2  a bf16 output: one rounding (2^-9 relative) of a value whose
 *                  f32 computation already differs in order (2-3 ulp of bf16 at most)
 *   TOL_PROD 2e-2  outputs of products whose inputs were rounded to bf16 on the
 *                  way (LoRA xa, tr; attention probabilities; the lm_head gradient)
 *   TOL_F32  1e-4  f32 outputs computed from the same inputs in another order
 *   exact         embedding rows, AdamW (the same formula, every step rounded
 *                  the same way), gradient scaling
 * Every test skips with "no CUDA device" when there is none.
 */
#include "qltest.h"

#ifdef QL_CUDA

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "decoder.h"
#include "model.h"
#include "nf4.h"
#include "rng.h"

#define TOL_ACT 1e-2
#define TOL_PROD 2e-2
#define TOL_F32 1e-4

typedef struct fixture {
    ql_model *mc, *mg;
    ql_lora *lora;               /* only sizes the CUDA scratch (rank-8 adapters with dropout) */
    ql_dec_ctx cc, cg;
    int64_t n;
    int32_t *ids, *pos, *lo, *hi, *qlo, *qhi;   /* host */
    ql_dec_batch bc, bg;
    void *dev[64];
    size_t devb[64];
    int ndev;
} fixture;

static const ql_dec_ops *CPU = &ql_dec_cpu_ops, *GPU = &ql_dec_cuda_ops;

static void *dalloc(fixture *f, size_t bytes)
{
    if (f->ndev == (int)(sizeof f->dev / sizeof f->dev[0])) { CHECK_MSG(0, "test fixture: too many device buffers"); return NULL; }
    void *p = GPU->alloc(ql_cuda(0), bytes);
    CHECK_MSG(p != NULL, "device alloc: %s", ql_last_error());
    f->dev[f->ndev] = p;
    f->devb[f->ndev++] = bytes;
    return p;
}

/* n values of scale s that bf16 holds exactly */
static float *rnd(int64_t n, uint64_t stream, float s)
{
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = ql_bf16_to_f32(ql_f32_to_bf16(s * ql_rng_normal(7, stream, (uint64_t)i)));
    return x;
}

static void *up_act(fixture *f, const float *x, int64_t n)
{
    uint16_t *h = malloc(2 * (size_t)n);
    for (int64_t i = 0; i < n; i++) h[i] = ql_f32_to_bf16(x[i]);
    void *d = dalloc(f, 2 * (size_t)n);
    CHECK_OK(GPU->upload(ql_cuda(0), d, h, 2 * (size_t)n));
    free(h);
    return d;
}
static float *up_f32(fixture *f, const float *x, int64_t n)
{
    float *d = dalloc(f, 4 * (size_t)n);
    CHECK_OK(GPU->upload(ql_cuda(0), d, x, 4 * (size_t)n));
    return d;
}
static int32_t *up_i32(fixture *f, const int32_t *x, int64_t n)
{
    int32_t *d = dalloc(f, 4 * (size_t)(n ? n : 1));
    CHECK_OK(GPU->upload(ql_cuda(0), d, x, 4 * (size_t)n));
    return d;
}
static float *down_act(const void *d, int64_t n)
{
    uint16_t *h = malloc(2 * (size_t)n);
    float *x = malloc(4 * (size_t)n);
    CHECK_OK(GPU->download(ql_cuda(0), h, d, 2 * (size_t)n));
    for (int64_t i = 0; i < n; i++) x[i] = ql_bf16_to_f32(h[i]);
    free(h);
    return x;
}
static float *down_f32(const void *d, int64_t n)
{
    float *x = malloc(4 * (size_t)n);
    CHECK_OK(GPU->download(ql_cuda(0), x, d, 4 * (size_t)n));
    return x;
}

/* |g - c| <= tol * max|c| everywhere; prints the worst element */
static void close_(const float *g, const float *c, int64_t n, double tol, const char *what, int line)
{
    double mx = 0, worst = 0;
    int64_t wi = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(c[i]) > mx) mx = fabs(c[i]);
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - c[i]);
        if (!(e <= worst) || isnan(g[i])) { worst = isnan(g[i]) ? INFINITY : e; wi = i; }
    }
    if (!(worst <= tol * (mx > 0 ? mx : 1)))
        qltest_failf(__FILE__, line, "%s: |gpu - cpu| = %.3g at %lld (gpu %.6g, cpu %.6g), %.3g of max|cpu| %.3g (tol %g)",
                     what, worst, (long long)wi, g[wi], c[wi], worst / (mx > 0 ? mx : 1), mx, tol);
}
#define CLOSE(g, c, n, tol, what) close_(g, c, n, tol, what, __LINE__)

/* attention shapes other than the fixture's (heads, kv heads, head dim), for the attention tests
   only: the other ops would read weights of the fixture's shapes */
static int ov_heads, ov_kvh, ov_hd;

static int setup(fixture *f, int64_t n, int window)
{
    memset(f, 0, sizeof *f);
    if (ql_cuda_backend.device_count() <= 0) { qltest_skip("no CUDA device"); return 0; }
    const char *dir = qltest_fixture("models/tiny-qwen2");
    ql_model_load_opts o = { 0 };
    o.device = ql_cpu();
    f->mc = ql_model_load(dir, &o);
    o.device = ql_cuda(0);
    f->mg = ql_model_load(dir, &o);
    CHECK_MSG(f->mc && f->mg, "loading %s: %s", dir, ql_last_error());
    if (!f->mc || !f->mg) return 0;
    f->mc->cfg.sliding_window = f->mg->cfg.sliding_window = window;
    int rope_dims = f->mc->cfg.head_dim / 2;   /* inv_freq was made for the fixture's head dim */
    if (ov_hd) {
        f->mc->cfg.heads = f->mg->cfg.heads = ov_heads;
        f->mc->cfg.kv_heads = f->mg->cfg.kv_heads = ov_kvh;
        f->mc->cfg.head_dim = f->mg->cfg.head_dim = ov_hd;
    }
    f->n = n;
    const ql_model_config *c = &f->mc->cfg;
    f->ids = malloc(sizeof(int32_t) * (size_t)n * 6);
    f->pos = f->ids + n; f->lo = f->pos + n; f->hi = f->lo + n; f->qlo = f->hi + n; f->qhi = f->qlo + n;
    for (int64_t i = 0; i < n; i++) f->ids[i] = (int32_t)((i * 7919 + 13) % c->vocab);
    /* one row of three documents and padding */
    int32_t lens[3] = { (int32_t)(n / 2), (int32_t)(n / 3), 2 };
    int nd = 3;
    ql_batch_ranges(1, (int)n, lens, &nd, f->pos, f->lo, f->hi);
    CHECK_OK(ql_dec_key_ranges(f->lo, f->hi, n, window, f->qlo, f->qhi));
    ql_dec_batch bc = { n, f->ids, f->pos, f->lo, f->hi, f->ids, f->pos, f->lo, f->hi, f->qlo, f->qhi };
    f->bc = bc;
    ql_dec_batch bg = { n, f->ids, f->pos, f->lo, f->hi, up_i32(f, f->ids, n), up_i32(f, f->pos, n),
                        up_i32(f, f->lo, n), up_i32(f, f->hi, n), up_i32(f, f->qlo, n), up_i32(f, f->qhi, n) };
    f->bg = bg;
    int64_t H = c->hidden, Q = (int64_t)c->heads * c->head_dim, W = c->inter > H ? c->inter : H, r = 8;
    if (Q > W) W = Q;
    ql_dec_ctx cc = { .ops = CPU, .m = f->mc, .dev = ql_cpu(), .n = n, .inv_freq = f->mc->inv_freq,
                      .tmp = malloc(4 * (size_t)(n * W)), .tr = malloc(4 * (size_t)(n * r)) };
    f->cc = cc;
    /* dropout > 0 so that the scratch of the dropout path is planned too */
    f->lora = ql_lora_new(f->mg, (int)r, 16, 0, 0.25f, (1u << QL_NTARGETS) - 1, NULL, 1);
    CHECK(f->lora != NULL);
    size_t ab = GPU->aux_size(f->mg, f->lora, n, n, 1);
    ql_dec_ctx cg = { .ops = GPU, .m = f->mg, .dev = ql_cuda(0), .n = n, .mr = n, .train = 1, .lora = f->lora,
                      .inv_freq = up_f32(f, f->mc->inv_freq, rope_dims), .tmp = dalloc(f, 2 * (size_t)(n * W)),
                      .tr = dalloc(f, 2 * (size_t)(n * r)), .aux = dalloc(f, ab), .aux_bytes = ab };
    f->cg = cg;
    return !qltest_failed_now();
}

static void teardown(fixture *f)
{
    for (int i = 0; i < f->ndev; i++) GPU->free(ql_cuda(0), f->dev[i], f->devb[i]);
    free(f->ids);
    free(f->cc.tmp);
    free(f->cc.tr);
    ql_lora_free(f->lora);
    ql_model_free(f->mc);
    ql_model_free(f->mg);
}

/* ---------------------------------------------------------------- tests */

QL_TEST(decoder_ops_norm_residual_embed_rope_swiglu)
{
    fixture f;
    if (!setup(&f, 37, 0)) { teardown(&f); return; }
    const ql_model_config *c = &f.mc->cfg;
    int64_t n = f.n, H = c->hidden, Q = (int64_t)c->heads * c->head_dim, NI = c->inter;
    /* embed: exact */
    float *xe = malloc(4 * (size_t)(n * H)), *de = dalloc(&f, 4 * (size_t)(n * H));
    CHECK_OK(CPU->embed(&f.cc, &f.bc, xe));
    CHECK_OK(GPU->embed(&f.cg, &f.bg, de));
    float *ge = down_f32(de, n * H);
    CLOSE(ge, xe, n * H, 0, "embed");
    /* an untied table stays in host memory (model_load.c): page-locked, the kernel reads its rows
       over the bus; pageable, the rows are gathered on the host and uploaded. Both exact. */
    const ql_tensor *E = f.mc->embed;
    size_t eb = (size_t)ql_dtype_bytes(E->dtype, ql_tensor_numel(E));
    void *pin = ql_cuda_backend.host_alloc(eb);
    CHECK(pin != NULL);
    if (pin) {
        memcpy(pin, ql_tensor_data(E), eb);
        ql_tensor *kept = f.mg->embed;
        ql_tensor *ph = ql_tensor_wrap(E->dtype, E->ndim, E->shape, pin, eb, NULL, NULL);
        ql_tensor *pg = ql_tensor_wrap(E->dtype, E->ndim, E->shape, ql_tensor_data(E), eb, NULL, NULL);
        float *gp = NULL, *gq = NULL;
        f.mg->embed = ph;
        CHECK_OK(GPU->embed(&f.cg, &f.bg, de));
        CLOSE((gp = down_f32(de, n * H)), xe, n * H, 0, "embed from page-locked host memory");
        f.mg->embed = pg;
        CHECK_OK(GPU->embed(&f.cg, &f.bg, de));
        CLOSE((gq = down_f32(de, n * H)), xe, n * H, 0, "embed from pageable host memory");
        f.mg->embed = kept;
        ql_tensor_release(ph);
        ql_tensor_release(pg);
        ql_cuda_backend.host_free(pin);
        free(gp);
        free(gq);
    }
    /* widen (bf16 checkpoints back to f32): exact */
    {
        float *w = rnd(n * H, 9, 3.0f), *wd = dalloc(&f, 4 * (size_t)(n * H));
        CHECK(GPU->widen != NULL && CPU->widen == NULL);
        CHECK_OK(GPU->widen(&f.cg, up_act(&f, w, n * H), n * H, wd));
        float *wg = down_f32(wd, n * H);
        for (int64_t i = 0; i < n * H; i++) w[i] = ql_bf16_to_f32(ql_f32_to_bf16(w[i]));
        CLOSE(wg, w, n * H, 0, "widen");
        free(w);
        free(wg);
    }
    /* rmsnorm */
    float *x = rnd(n * H, 1, 1.5f), *yc = malloc(4 * (size_t)(n * H)), *rc = malloc(4 * (size_t)n);
    float *dx_ = up_f32(&f, x, n * H), *dr = dalloc(&f, 4 * (size_t)n);
    void *dy = dalloc(&f, 2 * (size_t)(n * H));
    CHECK_OK(CPU->rmsnorm(&f.cc, x, f.mc->blocks[0].attn_norm, n, yc, rc));
    CHECK_OK(GPU->rmsnorm(&f.cg, dx_, f.mg->blocks[0].attn_norm, n, dy, dr));
    float *yg = down_act(dy, n * H), *rg = down_f32(dr, n);
    CLOSE(yg, yc, n * H, TOL_ACT, "rmsnorm y");
    CLOSE(rg, rc, n, TOL_F32, "rmsnorm r");
    /* rmsnorm backward, accumulating into a non-zero dx */
    float *gy = rnd(n * H, 2, 1.0f), *acc = rnd(n * H, 3, 0.5f), *accg = up_f32(&f, acc, n * H);
    CHECK_OK(CPU->rmsnorm_bwd(&f.cc, x, f.mc->blocks[0].attn_norm, rc, gy, n, acc));
    CHECK_OK(GPU->rmsnorm_bwd(&f.cg, dx_, f.mg->blocks[0].attn_norm, up_f32(&f, rc, n), up_f32(&f, gy, n * H), n, accg));
    float *accr = down_f32(accg, n * H);
    CLOSE(accr, acc, n * H, TOL_F32, "rmsnorm backward");
    /* residual: exact inputs, one f32 add */
    float *b = rnd(n * H, 4, 1.0f), *outc = malloc(4 * (size_t)(n * H)), *outd = dalloc(&f, 4 * (size_t)(n * H));
    CHECK_OK(CPU->residual(&f.cc, outc, x, b, n * H));
    CHECK_OK(GPU->residual(&f.cg, outd, dx_, up_act(&f, b, n * H), n * H));
    float *outg = down_f32(outd, n * H);
    CLOSE(outg, outc, n * H, 0, "residual");
    /* RoPE forward and inverse on q-shaped rows */
    float *q = rnd(n * Q, 5, 1.0f);
    void *dq = up_act(&f, q, n * Q);
    float *qc = malloc(4 * (size_t)(n * Q));
    memcpy(qc, q, 4 * (size_t)(n * Q));
    CHECK_OK(CPU->rope(&f.cc, qc, &f.bc, c->heads, 0));
    CHECK_OK(GPU->rope(&f.cg, dq, &f.bg, c->heads, 0));
    float *qg = down_act(dq, n * Q);
    CLOSE(qg, qc, n * Q, TOL_ACT, "rope");
    CHECK_OK(GPU->rope(&f.cg, dq, &f.bg, c->heads, 1));
    float *qb = down_act(dq, n * Q);
    CLOSE(qb, q, n * Q, 2 * TOL_ACT, "rope then inverse rope");
    /* SwiGLU forward and backward */
    float *g = rnd(n * NI, 6, 2.0f), *u = rnd(n * NI, 7, 1.0f), *dh = rnd(n * NI, 8, 1.0f);
    float *hc = malloc(4 * (size_t)(n * NI)), *dgc = malloc(4 * (size_t)(n * NI)), *duc = malloc(4 * (size_t)(n * NI));
    void *gd = up_act(&f, g, n * NI), *ud = up_act(&f, u, n * NI), *hd = dalloc(&f, 2 * (size_t)(n * NI));
    void *dgd = dalloc(&f, 2 * (size_t)(n * NI)), *dud = dalloc(&f, 2 * (size_t)(n * NI));
    CHECK_OK(CPU->swiglu(&f.cc, g, u, hc, n * NI));
    CHECK_OK(GPU->swiglu(&f.cg, gd, ud, hd, n * NI));
    CHECK_OK(CPU->swiglu_bwd(&f.cc, g, u, dh, dgc, duc, n * NI));
    CHECK_OK(GPU->swiglu_bwd(&f.cg, gd, ud, up_f32(&f, dh, n * NI), dgd, dud, n * NI));
    float *hg = down_act(hd, n * NI), *dgg = down_act(dgd, n * NI), *dug = down_act(dud, n * NI);
    CLOSE(hg, hc, n * NI, TOL_ACT, "swiglu");
    CLOSE(dgg, dgc, n * NI, TOL_ACT, "swiglu dg");
    CLOSE(dug, duc, n * NI, TOL_ACT, "swiglu du");
    float *frees[] = { xe, ge, x, yc, rc, yg, rg, gy, acc, accr, b, outc, outg, q, qc, qg, qb, g, u, dh, hc, dgc, duc,
                       hg, dgg, dug };
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) free(frees[i]);
    teardown(&f);
}

static void attention_case(int64_t n, int window)
{
    fixture f;
    if (!setup(&f, n, window)) { teardown(&f); return; }
    const ql_model_config *c = &f.mc->cfg;
    int64_t Q = (int64_t)c->heads * c->head_dim, KV = (int64_t)c->kv_heads * c->head_dim;
    float *q = rnd(n * Q, 11, 1.0f), *k = rnd(n * KV, 12, 1.0f), *v = rnd(n * KV, 13, 1.0f), *dout = rnd(n * Q, 14, 1.0f);
    float *oc = malloc(4 * (size_t)(n * Q));
    void *qd = up_act(&f, q, n * Q), *kd = up_act(&f, k, n * KV), *vd = up_act(&f, v, n * KV), *od = dalloc(&f, 2 * (size_t)(n * Q));
    float *lse = dalloc(&f, 4 * (size_t)(n * c->heads));
    CHECK_OK(CPU->attn(&f.cc, &f.bc, q, k, v, 1, oc, NULL));
    CHECK_OK(GPU->attn(&f.cg, &f.bg, qd, kd, vd, 1, od, lse));
    float *og = down_act(od, n * Q);
    CLOSE(og, oc, n * Q, TOL_ACT, "attention output");
    /* lse against a double computation over the same bf16 inputs */
    float *lg = down_f32(lse, n * c->heads), *lr = malloc(4 * (size_t)(n * c->heads));
    int g = c->heads / c->kv_heads, hd = c->head_dim;
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < c->heads; h++) {
            int64_t lo = f.lo[i], hi = f.hi[i];
            if (window > 0 && hi - window > lo) lo = hi - window;
            double mx = -INFINITY, se = 0;
            for (int pass = 0; pass < 2; pass++)
                for (int64_t j = lo; j < hi; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)q[i * Q + h * hd + d] * k[j * KV + (h / g) * hd + d];
                    s /= sqrt((double)hd);
                    if (pass == 0) mx = s > mx ? s : mx;
                    else se += exp(s - mx);
                }
            lr[i * c->heads + h] = (float)(log(se) + mx);
        }
    CLOSE(lg, lr, n * c->heads, TOL_F32, "attention logsumexp");
    /* backward: from the same forward output on each side */
    float *dqc = malloc(4 * (size_t)(n * Q)), *dkc = malloc(4 * (size_t)(n * KV)), *dvc = malloc(4 * (size_t)(n * KV));
    void *dqd = dalloc(&f, 2 * (size_t)(n * Q)), *dkd = dalloc(&f, 2 * (size_t)(n * KV)), *dvd = dalloc(&f, 2 * (size_t)(n * KV));
    CHECK_OK(CPU->attn_bwd(&f.cc, &f.bc, q, k, v, oc, NULL, dout, dqc, dkc, dvc));
    CHECK_OK(GPU->attn_bwd(&f.cg, &f.bg, qd, kd, vd, od, lse, up_f32(&f, dout, n * Q), dqd, dkd, dvd));
    float *dqg = down_act(dqd, n * Q), *dkg = down_act(dkd, n * KV), *dvg = down_act(dvd, n * KV);
    CLOSE(dqg, dqc, n * Q, TOL_PROD, "attention dq");
    CLOSE(dkg, dkc, n * KV, TOL_PROD, "attention dk");
    CLOSE(dvg, dvc, n * KV, TOL_PROD, "attention dv");
    float *frees[] = { q, k, v, dout, oc, og, lg, lr, dqc, dkc, dvc, dqg, dkg, dvg };
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) free(frees[i]);
    teardown(&f);
}

/* every path over the batch's own keys: flash_attn.cu (the default), the products per segment
   (attention_gemm.cu), then the warp kernels (attention.cu) that also serve KV-cache decoding */
static void attention_all(int64_t n, int window)
{
    attention_case(n, window);
    /* flash with grouped queries the way long batches run it: each block sums its kv head's group
       of query heads in registers (flash_attn.cu's group_loop, by default from 16384 tokens) */
    setenv("QL_FLASH_GROUP", "loop", 1);
    attention_case(n, window);
    unsetenv("QL_FLASH_GROUP");
    setenv("QL_ATTN", "gemm", 1);
    attention_case(n, window);
    setenv("QL_ATTN", "warp", 1);
    attention_case(n, window);
    unsetenv("QL_ATTN");
}
QL_TEST(decoder_ops_attention) { attention_all(37, 0); }
QL_TEST(decoder_ops_attention_window) { attention_all(61, 5); }
QL_TEST(decoder_ops_attention_long) { attention_all(700, 0); }

/* the head dims of real models (64: Qwen2.5-0.5B, SmolLM2; 128: Qwen2.5-7B, Llama 3, Mistral) and
   an odd multiple of 16, with grouped queries, across several tiles of queries and keys */
static void attention_shape(int heads, int kvh, int hd, int64_t n, int window)
{
    ov_heads = heads; ov_kvh = kvh; ov_hd = hd;
    attention_all(n, window);
    ov_heads = ov_kvh = ov_hd = 0;
}
QL_TEST(decoder_ops_attention_hd64) { attention_shape(6, 2, 64, 301, 0); }
QL_TEST(decoder_ops_attention_hd128) { attention_shape(4, 1, 128, 333, 0); }
QL_TEST(decoder_ops_attention_hd80_window) { attention_shape(2, 2, 80, 200, 37); }

static void linear_case(int target, float dropout)
{
    fixture f;
    if (!setup(&f, 29, 0)) { teardown(&f); return; }
    int64_t n = f.n;
    const ql_block *Bc = &f.mc->blocks[1], *Bg = &f.mg->blocks[1];
    const ql_linear *lc[7] = { &Bc->q, &Bc->k, &Bc->v, &Bc->o, &Bc->gate, &Bc->up, &Bc->down };
    const ql_linear *lg[7] = { &Bg->q, &Bg->k, &Bg->v, &Bg->o, &Bg->gate, &Bg->up, &Bg->down };
    int in = lc[target]->in, out = lc[target]->out, r = 8;
    ql_lora_mod mod = { .in = in, .out = out, .r = r, .scale = 2.0f };
    float *A = rnd((int64_t)r * in, 21, 0.2f), *B = rnd((int64_t)out * r, 22, 0.2f);
    float *gA = calloc((size_t)r * in, 4), *gB = calloc((size_t)out * r, 4);
    /* elem0: the masks of a slice of rows that starts further into the batch (decoder.c's MLP slices) */
    ql_dec_lin Lc = { lc[target], &mod, A, B, gA, gB, dropout, 5, 77, 1000, 0, NULL };
    ql_dec_lin Lg = { lg[target], &mod, up_f32(&f, A, (int64_t)r * in), up_f32(&f, B, (int64_t)out * r),
                      up_f32(&f, gA, (int64_t)r * in), up_f32(&f, gB, (int64_t)out * r), dropout, 5, 77, 1000, 0, NULL };
    float *x = rnd(n * in, 23, 1.0f), *dy = rnd(n * out, 24, 1.0f);
    float *yc = malloc(4 * (size_t)(n * out)), *xac = malloc(4 * (size_t)(n * r));
    void *xd = up_act(&f, x, n * in), *yd = dalloc(&f, 2 * (size_t)(n * out)), *xad = dalloc(&f, 2 * (size_t)(n * r));
    CHECK_OK(CPU->linear(&f.cc, &Lc, x, n, yc, xac));
    CHECK_OK(GPU->linear(&f.cg, &Lg, xd, n, yd, xad));
    float *yg = down_act(yd, n * out), *xag = down_act(xad, n * r);
    CLOSE(xag, xac, n * r, TOL_ACT, "linear xa");
    CLOSE(yg, yc, n * out, TOL_PROD, "linear y");
    /* backward from the CPU's xa on both sides (so only the backward differs), accumulating into dx */
    float *dxc = rnd(n * in, 25, 0.5f), *dxd = up_f32(&f, dxc, n * in);
    CHECK_OK(CPU->linear_bwd(&f.cc, &Lc, x, xac, dy, n, dxc, 1));
    CHECK_OK(GPU->linear_bwd(&f.cg, &Lg, xd, up_act(&f, xac, n * r), up_act(&f, dy, n * out), n, dxd, 1));
    float *dxg = down_f32(dxd, n * in), *gAg = down_f32(Lg.gA, (int64_t)r * in), *gBg = down_f32(Lg.gB, (int64_t)out * r);
    CLOSE(dxg, dxc, n * in, TOL_PROD, "linear dx");
    CLOSE(gBg, gB, (int64_t)out * r, TOL_PROD, "linear gB");
    CLOSE(gAg, gA, (int64_t)r * in, TOL_PROD, "linear gA");
    float *frees[] = { A, B, gA, gB, x, dy, yc, xac, yg, xag, dxc, dxg, gAg, gBg };
    for (size_t i = 0; i < sizeof frees / sizeof frees[0]; i++) free(frees[i]);
    teardown(&f);
}

QL_TEST(decoder_ops_linear_lora_q_bias) { linear_case(0, 0); }
QL_TEST(decoder_ops_linear_lora_down) { linear_case(6, 0); }
QL_TEST(decoder_ops_linear_lora_dropout) { linear_case(4, 0.25f); }

QL_TEST(decoder_ops_lm_head)
{
    fixture f;
    if (!setup(&f, 45, 0)) { teardown(&f); return; }
    const ql_model_config *c = &f.mc->cfg;
    int64_t n = f.n, H = c->hidden, V = c->vocab;
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) labels[i] = i % 5 == 0 ? -100 : (int32_t)((i * 31) % V);
    float *xf = rnd(n * H, 31, 1.0f);
    void *xd = up_act(&f, xf, n * H);
    double sc = 0, sg = 0;
    int64_t kc = 0, kg = 0;
    float *dc = calloc((size_t)(n * H), 4), *dd = up_f32(&f, dc, n * H);
    CHECK_OK(CPU->lm_head_ce(&f.cc, &f.bc, labels, xf, 7.0, &sc, &kc, dc));
    CHECK_OK(GPU->lm_head_ce(&f.cg, &f.bg, labels, xd, 7.0, &sg, &kg, dd));
    CHECK_EQ_INT(kg, kc);
    CHECK_NEAR(sg, sc, 1e-3 * fabs(sc));
    float *dg = down_f32(dd, n * H);
    CLOSE(dg, dc, n * H, TOL_PROD, "lm_head dxf");
    float *lc = malloc(4 * (size_t)(n * V)), *lg = malloc(4 * (size_t)(n * V));
    CHECK_OK(CPU->lm_head_logits(&f.cc, xf, 0, n, lc));
    CHECK_OK(GPU->lm_head_logits(&f.cg, xd, 0, n, lg));
    CLOSE(lg, lc, n * V, TOL_ACT, "lm_head logits");
    free(labels); free(xf); free(dc); free(dg); free(lc); free(lg);
    teardown(&f);
}

QL_TEST(decoder_ops_optimizer)
{
    if (ql_cuda_backend.device_count() <= 0) { qltest_skip("no CUDA device"); return; }
    fixture f;
    memset(&f, 0, sizeof f);
    int64_t n = 100003;
    float *p = rnd(n, 41, 0.1f), *g = rnd(n, 42, 0.01f), *m = rnd(n, 43, 0.001f), *v = rnd(n, 44, 1e-5f);
    for (int64_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *pd = up_f32(&f, p, n), *gd = up_f32(&f, g, n), *md = up_f32(&f, m, n), *vd = up_f32(&f, v, n);
    for (int step = 1; step <= 3; step++) {
        CHECK_OK(CPU->adamw(ql_cpu(), p, g, m, v, n, 2e-4, 0.9, 0.999, 1e-8, 0.01, step));
        CHECK_OK(GPU->adamw(ql_cuda(0), pd, gd, md, vd, n, 2e-4, 0.9, 0.999, 1e-8, 0.01, step));
    }
    float *pg = down_f32(pd, n), *mg = down_f32(md, n), *vg = down_f32(vd, n);
    CHECK_MSG(!memcmp(pg, p, 4 * (size_t)n) && !memcmp(mg, m, 4 * (size_t)n) && !memcmp(vg, v, 4 * (size_t)n),
              "AdamW on the GPU is not bit-identical to the CPU");
    double sc, sg;
    CHECK_OK(CPU->sumsq(ql_cpu(), g, n, &sc));
    CHECK_OK(GPU->sumsq(ql_cuda(0), gd, n, &sg));
    CHECK_NEAR(sg, sc, 1e-12 * sc);
    CHECK_OK(CPU->scale(ql_cpu(), g, n, 0.37f));
    CHECK_OK(GPU->scale(ql_cuda(0), gd, n, 0.37f));
    float *gg = down_f32(gd, n);
    CHECK_MSG(!memcmp(gg, g, 4 * (size_t)n), "gradient scaling differs");
    free(p); free(g); free(m); free(v); free(pg); free(mg); free(vg); free(gg);
    teardown(&f);
}

/* The decoder's NF4 -> bf16 dequantization (8 elements a thread, scales decoded inline)
   gives the CPU's bytes, with and without double quantization, over block sizes and
   lengths that take the vector path (multiples of 8, odd multiples included) and the fallback. */
QL_TEST(decoder_ops_nf4_dequant_bytes_equal_cpu)
{
    if (ql_cuda_backend.device_count() <= 0) { qltest_skip("no CUDA device"); return; }
    const int64_t lens[] = { 4096 * 16, 1000 * 64 + 24, 4096 * 16 + 2 };
    const int bss[] = { 64, 128, 32 };
    for (int li = 0; li < 3; li++)
        for (int bi = 0; bi < 3; bi++)
            for (int dq = 0; dq <= 1; dq++) {
                int64_t n = lens[li];
                ql_tensor *x = ql_tensor_rand(QL_F32, 1, &n, 1, 9, (uint64_t)(li * 7 + bi * 2 + dq), ql_cpu());
                ql_tensor *qc = x ? ql_tensor_quantize_nf4(x, bss[bi], dq, ql_cpu()) : NULL;
                ql_tensor *qg = qc ? ql_tensor_to(qc, QL_NF4, ql_cuda(0)) : NULL;
                ql_tensor *ref = qc ? ql_tensor_to(qc, QL_BF16, ql_cpu()) : NULL;
                CHECK_MSG(x && qc && qg && ref, "setup: %s", ql_last_error());
                if (!(x && qc && qg && ref)) { ql_tensor_release(x); ql_tensor_release(qc); ql_tensor_release(qg); ql_tensor_release(ref); return; }
                const ql_quant *q = qg->quant;
                int64_t nb = (n + q->blocksize - 1) / q->blocksize;
                uint16_t *out = ql_cuda_backend.alloc(0, 2 * (size_t)n);
                float *tmp = ql_cuda_backend.alloc(0, 4 * (size_t)nb);
                CHECK_OK(ql_cuda_nf4_dequantize_bf16_fast(
                    ql_tensor_data(qg), dq, dq ? ql_tensor_data(q->absmax) : NULL, dq ? NULL : ql_tensor_data(q->absmax),
                    dq ? ql_tensor_data(q->nested_absmax) : NULL, dq ? ql_tensor_data(q->nested_code) : NULL,
                    q->nested_offset, n, q->blocksize, out, tmp, NULL));
                uint16_t *host = malloc(2 * (size_t)n);
                CHECK_OK(ql_cuda_backend.to_host(0, host, out, 2 * (size_t)n));
                CHECK_MSG(!memcmp(host, ql_tensor_data(ref), 2 * (size_t)n),
                          "n %lld, blocksize %d, double quant %d: bf16 bytes differ from the CPU's", (long long)n, bss[bi], dq);
                free(host);
                ql_cuda_backend.free(0, out);
                ql_cuda_backend.free(0, tmp);
                ql_tensor_release(x); ql_tensor_release(qc); ql_tensor_release(qg); ql_tensor_release(ref);
            }
}

#endif

/*
 * test_cuda.c — the CUDA backend against the CPU reference, through the
 * public tensor API (tensor.h). Inputs are made on the CPU and moved, so both
 * backends see the same values; results come back to the CPU to compare.
 *
 * Bit-for-bit: fill, arange, rand, casts, views + contiguous, device copies.
 * Within float rounding: unary/binary math, reductions, softmax, matmul (a
 * named tolerance per dtype, loosened for bf16 where one output rounding of
 * the f32 accumulator can land one bf16 ulp apart).
 *
 * Every test but the probe skips with "no CUDA device" when there is none;
 * without QL_CUDA this file compiles to nothing.
 */
#include "qltest.h"

#ifdef QL_CUDA

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "device.h"
#include "tensor.h"

/* ---------------------------------------------------------------- helpers */

/* tensors made during one test, released at its end */
static ql_tensor *pool[256];
static int npool;

static ql_tensor *keep_(ql_tensor *t, const char *expr, int line)
{
    if (!t) { qltest_failf(__FILE__, line, "%s -> NULL: %s", expr, ql_last_error()); return NULL; }
    if (npool < (int)(sizeof pool / sizeof pool[0])) pool[npool++] = t;
    return t;
}
#define KEEP(expr) keep_((expr), #expr, __LINE__)

static void drop_all(void)
{
    while (npool > 0) ql_tensor_release(pool[--npool]);
}

static int have_cuda(void)
{
    if (ql_cuda_backend.device_count() > 0) return 1;
    qltest_skip("no CUDA device");
    return 0;
}

static ql_device gpu(void) { return ql_cuda(0); }

/* same dtype on the CPU, contiguous */
static ql_tensor *to_cpu(ql_tensor *t) { return t ? KEEP(ql_tensor_to(t, t->dtype, ql_cpu())) : NULL; }
static ql_tensor *to_gpu(ql_tensor *t) { return t ? KEEP(ql_tensor_to(t, t->dtype, gpu())) : NULL; }
static ql_tensor *to_cpu_f32(ql_tensor *t) { return t ? KEEP(ql_tensor_to(t, QL_F32, ql_cpu())) : NULL; }

/* the CUDA result g equals the CPU result c bit for bit */
static int same_bits_(ql_tensor *c, ql_tensor *g, const char *what, int line)
{
    if (!c || !g) return 0;
    ql_tensor *gc = to_cpu(g), *cc = KEEP(ql_tensor_contiguous(c));
    if (!gc || !cc) return 0;
    if (!ql_shape_eq(cc, gc) || cc->dtype != gc->dtype) {
        qltest_failf(__FILE__, line, "%s: shape or dtype differs", what);
        return 0;
    }
    int64_t n = ql_tensor_numel(cc);
    size_t es = n ? ql_tensor_nbytes(cc) / (size_t)n : 0;
    const unsigned char *a = ql_tensor_data(gc), *r = ql_tensor_data(cc);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(a + i * es, r + i * es, es) == 0) continue;
        if (bad < 4)
            qltest_failf(__FILE__, line, "%s: element %lld differs: cuda %.9g cpu %.9g", what, (long long)i,
                         ql_tensor_get_flat(gc, i), ql_tensor_get_flat(cc, i));
        bad++;
    }
    if (bad > 4) qltest_failf(__FILE__, line, "%s: %lld of %lld elements differ", what, (long long)bad, (long long)n);
    return bad == 0;
}
#define SAME_BITS(c, g, what) same_bits_((c), (g), (what), __LINE__)

static int close_(ql_tensor *c, ql_tensor *g, double atol, double rtol, const char *what, int line)
{
    if (!c || !g) return 0;
    ql_tensor *gf = to_cpu_f32(g), *cf = to_cpu_f32(c);
    if (!gf || !cf) return 0;
    if (!ql_shape_eq(cf, gf)) { qltest_failf(__FILE__, line, "%s: shapes differ", what); return 0; }
    int ok = qltest_allclose_f32(__FILE__, line, ql_tensor_data(gf), ql_tensor_data(cf), ql_tensor_numel(cf),
                                 atol, rtol);
    if (!ok) qltest_failf(__FILE__, line, "  (in %s)", what);
    return ok;
}
#define CLOSE(c, g, atol, rtol, what) close_((c), (g), (atol), (rtol), (what), __LINE__)

/* random CPU tensor and its GPU twin */
static ql_tensor *cpu_rand(ql_dtype dt, int nd, const int64_t *shape, int normal, uint64_t seed)
{
    return KEEP(ql_tensor_rand(dt, nd, shape, normal, seed, 0, ql_cpu()));
}

static const ql_dtype float_types[3] = { QL_F32, QL_BF16, QL_F16 };

/* ---------------------------------------------------------------- probe (runs everywhere) */

QL_TEST(cuda_probe_reports_cleanly)
{
    ql_device_report r;
    memset(&r, 0, sizeof r);
    CHECK_OK(ql_cuda_probe(&r));
    CHECK(r.runtime_version > 0);
    CHECK(r.cublaslt_version > 0);
    if (r.count_error) {
        CHECK_EQ_INT(r.device_count, 0);
        CHECK(r.count_error_msg[0] != 0);
        CHECK_EQ_INT(ql_cuda_backend.device_count(), 0);
        return;
    }
    CHECK_EQ_INT(r.device_count, ql_cuda_backend.device_count());
    for (int i = 0; i < r.device_count; i++) {
        const ql_gpu_info *g = &r.gpus[i];
        CHECK(g->name[0] != 0);
        CHECK(g->total_mem > 0 && g->free_mem > 0 && g->free_mem <= g->total_mem);
        CHECK(g->sm_count > 0);
        CHECK_MSG(g->kernel_ok, "gpu %d: probe kernel failed: %s", i, g->kernel_error_msg);
        CHECK(g->binary_version > 0);
        CHECK_EQ_INT(g->bf16, g->cc_major >= 8);
        printf("    gpu %d: %s, cc %d.%d, %d SMs, %.1f/%.1f GiB free, SASS %d PTX %d jit %d\n", i, g->name,
               g->cc_major, g->cc_minor, g->sm_count, g->free_mem / 1073741824.0, g->total_mem / 1073741824.0,
               g->binary_version, g->ptx_version, g->jit);
    }
}

/* ---------------------------------------------------------------- creation */

QL_TEST(cuda_full_and_arange_bits)
{
    if (!have_cuda()) return;
    const ql_dtype all[6] = { QL_F32, QL_BF16, QL_F16, QL_I32, QL_I64, QL_U8 };
    const double vals[5] = { 0.0, 1.5, -3.3, 1e-3, 70000.7 };
    int64_t shape[2] = { 5, 37 };
    for (int d = 0; d < 6; d++)
        for (int v = 0; v < 5; v++) {
            if (all[d] == QL_U8 && vals[v] < 0) continue;
            ql_tensor *c = KEEP(ql_tensor_full(all[d], 2, shape, vals[v], ql_cpu()));
            ql_tensor *g = KEEP(ql_tensor_full(all[d], 2, shape, vals[v], gpu()));
            char what[64];
            snprintf(what, sizeof what, "full %s %g", ql_dtype_name(all[d]), vals[v]);
            SAME_BITS(c, g, what);
        }
    struct { double a, b, s; ql_dtype dt; } ar[] = {
        { 0, 10, 0.1, QL_F32 }, { -5, 5, 0.37, QL_BF16 }, { 1, 2000, 3, QL_F16 }, { 0, 100, 1, QL_I64 },
        { -7, 1000, 7, QL_I32 }, { 0.25, 1e5, 0.75, QL_F32 },
    };
    for (size_t k = 0; k < sizeof ar / sizeof ar[0]; k++) {
        ql_tensor *c = KEEP(ql_tensor_arange(ar[k].a, ar[k].b, ar[k].s, ar[k].dt, ql_cpu()));
        ql_tensor *g = KEEP(ql_tensor_arange(ar[k].a, ar[k].b, ar[k].s, ar[k].dt, gpu()));
        SAME_BITS(c, g, "arange");
    }
    /* fill_ through a strided view */
    ql_tensor *c = KEEP(ql_tensor_full(QL_BF16, 2, shape, 2.0, ql_cpu()));
    ql_tensor *g = KEEP(ql_tensor_full(QL_BF16, 2, shape, 2.0, gpu()));
    ql_tensor *cv = KEEP(ql_tensor_slice(c, 1, 1, 30, 3)), *gv = KEEP(ql_tensor_slice(g, 1, 1, 30, 3));
    if (cv && gv) {
        CHECK_OK(ql_tensor_fill_(cv, -0.7));
        CHECK_OK(ql_tensor_fill_(gv, -0.7));
        SAME_BITS(c, g, "fill_ of a strided slice");
    }
    drop_all();
}

QL_TEST(cuda_rand_bits)
{
    if (!have_cuda()) return;
    int64_t shapes[3][2] = { { 37, 129 }, { 1, 1 }, { 1024, 1031 } };
    for (int d = 0; d < 3; d++)
        for (int normal = 0; normal < 2; normal++)
            for (int s = 0; s < 3; s++) {
                ql_tensor *c = KEEP(ql_tensor_rand(float_types[d], 2, shapes[s], normal, 1234 + s, 7, ql_cpu()));
                ql_tensor *g = KEEP(ql_tensor_rand(float_types[d], 2, shapes[s], normal, 1234 + s, 7, gpu()));
                char what[64];
                snprintf(what, sizeof what, "rand %s normal=%d shape %d", ql_dtype_name(float_types[d]), normal, s);
                SAME_BITS(c, g, what);
                drop_all();
            }
}

/* ---------------------------------------------------------------- casts */

QL_TEST(cuda_cast_bits)
{
    if (!have_cuda()) return;
    enum { NS = 40, NR = 4000 };
    static float v[NS + NR];
    const float specials[NS] = {
        0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 6e-8f, 2.98e-8f,
        1e-40f, -1e-45f, 3.4e38f, -3.4e38f, 1.00390625f, 1.01171875f, 1.0009765625f, 1.00048828125f,
        -2.5f, 0.1f, 1.0f / 3.0f, 6.1e-5f, 6.09e-5f, 5.96e-8f, 1.19e-7f, 255.5f, 256.0f, 127.5f, 0.5f,
        -0.5f, 1.5f, 2.5f, -1.5f, 1e10f, -1e-10f, 3.0e-39f, 1.17549435e-38f, 4096.5f, 8191.5f,
    };
    memcpy(v, specials, sizeof specials);
    for (int i = 0; i < NR; i++) {  /* deterministic spread over many exponents */
        uint32_t h = (uint32_t)i * 2654435761u;
        v[NS + i] = ((h >> 8) / 16777216.0f - 0.5f) * ldexpf(1.0f, (int)(h % 60) - 30);
    }
    int64_t n = NS + NR;
    ql_tensor *src = KEEP(ql_tensor_from_host(QL_F32, 1, &n, v, QL_F32, ql_cpu()));
    ql_tensor *gsrc = to_gpu(src);
    /* every float pair, both ways */
    for (int a = 0; a < 3; a++) {
        ql_tensor *ca = KEEP(ql_tensor_to(src, float_types[a], ql_cpu()));
        ql_tensor *ga = KEEP(ql_tensor_to(gsrc, float_types[a], gpu()));
        SAME_BITS(ca, ga, "f32 -> float type");
        for (int b = 0; b < 3; b++) {
            char what[64];
            snprintf(what, sizeof what, "cast %s -> %s", ql_dtype_name(float_types[a]), ql_dtype_name(float_types[b]));
            ql_tensor *cb = KEEP(ql_tensor_to(ca, float_types[b], ql_cpu()));
            ql_tensor *gb = KEEP(ql_tensor_to(ga, float_types[b], gpu()));
            SAME_BITS(cb, gb, what);
        }
    }
    /* integers: values inside every target's range, no NaN */
    static float w[2000];
    for (int i = 0; i < 2000; i++) w[i] = (float)((i * 37) % 256) + (i % 3) * 0.25f;
    int64_t m = 2000;
    ql_tensor *isrc = KEEP(ql_tensor_from_host(QL_F32, 1, &m, w, QL_F32, ql_cpu()));
    ql_tensor *gisrc = to_gpu(isrc);
    const ql_dtype ints[3] = { QL_I32, QL_I64, QL_U8 };
    for (int a = 0; a < 3; a++) {
        ql_tensor *ci = KEEP(ql_tensor_to(isrc, ints[a], ql_cpu()));
        ql_tensor *gi = KEEP(ql_tensor_to(gisrc, ints[a], gpu()));
        SAME_BITS(ci, gi, "f32 -> int");
        for (int b = 0; b < 3; b++) {
            ql_tensor *cb = KEEP(ql_tensor_to(ci, ints[b], ql_cpu()));
            ql_tensor *gb = KEEP(ql_tensor_to(gi, ints[b], gpu()));
            SAME_BITS(cb, gb, "int -> int");
        }
        for (int b = 0; b < 3; b++) {
            ql_tensor *cb = KEEP(ql_tensor_to(ci, float_types[b], ql_cpu()));
            ql_tensor *gb = KEEP(ql_tensor_to(gi, float_types[b], gpu()));
            SAME_BITS(cb, gb, "int -> float");
        }
    }
    drop_all();
}

/* ---------------------------------------------------------------- views */

QL_TEST(cuda_views_contiguous_bits)
{
    if (!have_cuda()) return;
    int64_t shape[3] = { 6, 7, 8 };
    for (int d = 0; d < 3; d++) {
        ql_tensor *c = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, shape, 1, 11), float_types[d], ql_cpu()));
        ql_tensor *g = to_gpu(c);
        if (!c || !g) break;
        int perm[3] = { 2, 0, 1 };
        ql_tensor *cs[5], *gs[5];
        cs[0] = KEEP(ql_tensor_transpose(c, 0, 2));       gs[0] = KEEP(ql_tensor_transpose(g, 0, 2));
        cs[1] = KEEP(ql_tensor_slice(c, 1, 1, 6, 2));     gs[1] = KEEP(ql_tensor_slice(g, 1, 1, 6, 2));
        cs[2] = KEEP(ql_tensor_permute(c, perm));         gs[2] = KEEP(ql_tensor_permute(g, perm));
        cs[3] = KEEP(ql_tensor_select(c, 2, 5));          gs[3] = KEEP(ql_tensor_select(g, 2, 5));
        ql_tensor *cn = KEEP(ql_tensor_slice(c, 0, 0, 1, 1)), *gn = KEEP(ql_tensor_slice(g, 0, 0, 1, 1));
        cs[4] = cn ? KEEP(ql_tensor_expand(cn, 3, shape)) : NULL;
        gs[4] = gn ? KEEP(ql_tensor_expand(gn, 3, shape)) : NULL;
        for (int k = 0; k < 5; k++) {
            if (!cs[k] || !gs[k]) continue;
            ql_tensor *cc = KEEP(ql_tensor_contiguous(cs[k])), *gc = KEEP(ql_tensor_contiguous(gs[k]));
            CHECK(gc == NULL || ql_tensor_is_contiguous(gc));
            char what[64];
            snprintf(what, sizeof what, "%s view %d contiguous", ql_dtype_name(float_types[d]), k);
            SAME_BITS(cc, gc, what);
        }
        /* a strided copy_ into a strided destination, with a cast */
        ql_tensor *cd = KEEP(ql_tensor_full(QL_F32, 3, shape, 0.0, ql_cpu()));
        ql_tensor *gd = KEEP(ql_tensor_full(QL_F32, 3, shape, 0.0, gpu()));
        ql_tensor *cdt = KEEP(ql_tensor_transpose(cd, 1, 2)), *gdt = KEEP(ql_tensor_transpose(gd, 1, 2));
        ql_tensor *cst = KEEP(ql_tensor_transpose(c, 1, 2)), *gst = KEEP(ql_tensor_transpose(g, 1, 2));
        if (cdt && gdt && cst && gst) {
            ql_tensor *cperm = KEEP(ql_tensor_contiguous(cst));
            ql_tensor *gperm = to_gpu(cperm);
            CHECK_OK(ql_tensor_copy_(cdt, cperm));
            CHECK_OK(ql_tensor_copy_(gdt, gperm));
            SAME_BITS(cd, gd, "copy_ into a transposed view with a cast");
        }
        drop_all();
    }
}

/* ---------------------------------------------------------------- elementwise */

/* one output rounding apart: a bf16 ulp is up to 2^-7 relative, an f16 ulp 2^-10 */
static double ftol(ql_dtype dt) { return dt == QL_F32 ? 2e-6 : dt == QL_BF16 ? 1e-2 : 2e-3; }

QL_TEST(cuda_unary_ops)
{
    if (!have_cuda()) return;
    int64_t shape[2] = { 33, 65 };
    for (int d = 0; d < 3; d++) {
        ql_dtype dt = float_types[d];
        ql_tensor *x = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, shape, 1, 21), dt, ql_cpu()));
        ql_tensor *xa = KEEP(ql_unary(QL_ABS, x));            /* positive inputs for log/sqrt/rsqrt/recip */
        ql_tensor *xp = xa ? KEEP(ql_binary_scalar(QL_ADD, xa, 0.1, 0)) : NULL;
        ql_tensor *xt = KEEP(ql_tensor_transpose(x, 0, 1));    /* a strided input */
        ql_tensor *gx = to_gpu(x), *gxp = to_gpu(xp);
        ql_tensor *gxt = gx ? KEEP(ql_tensor_transpose(gx, 0, 1)) : NULL;
        if (!gx || !gxp || !gxt || !xp || !xt) break;
        for (int op = 0; op < QL_NUNARY; op++) {
            int pos = op == QL_LOG || op == QL_SQRT || op == QL_RSQRT || op == QL_RECIP;
            ql_tensor *cin = pos ? xp : x, *gin = pos ? gxp : gx;
            char what[64];
            snprintf(what, sizeof what, "%s %s", ql_unary_name((ql_unary_op)op), ql_dtype_name(dt));
            /* f32: a few ulp (CUDA's libm differs from glibc's in the last bits) */
            CLOSE(KEEP(ql_unary((ql_unary_op)op, cin)), KEEP(ql_unary((ql_unary_op)op, gin)), ftol(dt), ftol(dt), what);
            if (!pos)
                CLOSE(KEEP(ql_unary((ql_unary_op)op, xt)), KEEP(ql_unary((ql_unary_op)op, gxt)), ftol(dt), ftol(dt), what);
        }
        drop_all();
    }
}

QL_TEST(cuda_binary_broadcast)
{
    if (!have_cuda()) return;
    int64_t sa[3] = { 4, 1, 6 }, sb[2] = { 5, 1 };
    for (int d = 0; d < 3; d++) {
        ql_dtype dt = float_types[d];
        ql_tensor *a = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, sa, 1, 31), dt, ql_cpu()));
        ql_tensor *b0 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, sb, 1, 32), dt, ql_cpu()));
        ql_tensor *babs = b0 ? KEEP(ql_unary(QL_ABS, b0)) : NULL;
        ql_tensor *b = babs ? KEEP(ql_binary_scalar(QL_ADD, babs, 0.5, 0)) : NULL;   /* |b| >= 0.5 for div/pow */
        ql_tensor *aabs = a ? KEEP(ql_unary(QL_ABS, a)) : NULL;
        ql_tensor *ap = aabs ? KEEP(ql_binary_scalar(QL_ADD, aabs, 0.1, 0)) : NULL;
        ql_tensor *ga = to_gpu(a), *gb = to_gpu(b), *gap = to_gpu(ap);
        if (!ga || !gb || !gap) break;
        for (int op = 0; op < QL_NBINARY; op++) {
            int pw = op == QL_POW;
            char what[64];
            snprintf(what, sizeof what, "%s %s", ql_binary_name((ql_binary_op)op), ql_dtype_name(dt));
            double tol = op >= QL_EQ ? 0.0 : ftol(dt);
            CLOSE(KEEP(ql_binary((ql_binary_op)op, pw ? ap : a, b)), KEEP(ql_binary((ql_binary_op)op, pw ? gap : ga, gb)),
                  tol, tol, what);
            /* scalar forms, both sides */
            CLOSE(KEEP(ql_binary_scalar((ql_binary_op)op, pw ? ap : a, 1.5, 0)),
                  KEEP(ql_binary_scalar((ql_binary_op)op, pw ? gap : ga, 1.5, 0)), tol, tol, what);
            CLOSE(KEEP(ql_binary_scalar((ql_binary_op)op, b, 0.75, 1)),
                  KEEP(ql_binary_scalar((ql_binary_op)op, gb, 0.75, 1)), tol, tol, what);
        }
        drop_all();
    }
}

/* same-shape contiguous operands: the unrolled contiguous kernels, with a ragged tail */
QL_TEST(cuda_elementwise_contiguous_large)
{
    if (!have_cuda()) return;
    int64_t n = 1000003;
    for (int d = 0; d < 3; d++) {
        ql_dtype dt = float_types[d];
        ql_tensor *a = KEEP(ql_tensor_to(cpu_rand(QL_F32, 1, &n, 1, 35), dt, ql_cpu()));
        ql_tensor *b0 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 1, &n, 0, 36), dt, ql_cpu()));
        ql_tensor *b = b0 ? KEEP(ql_binary_scalar(QL_ADD, b0, 0.5, 0)) : NULL;  /* in [0.5, 1.5) */
        ql_tensor *ga = to_gpu(a), *gb = to_gpu(b);
        if (!ga || !gb) break;
        for (int op = 0; op < QL_NBINARY; op++) {
            if (op == QL_POW) continue;  /* negative bases: NaN on both, covered above */
            char what[64];
            snprintf(what, sizeof what, "contiguous %s %s", ql_binary_name((ql_binary_op)op), ql_dtype_name(dt));
            double tol = op >= QL_EQ ? 0.0 : ftol(dt);
            CLOSE(KEEP(ql_binary((ql_binary_op)op, a, b)), KEEP(ql_binary((ql_binary_op)op, ga, gb)), tol, tol, what);
        }
        CLOSE(KEEP(ql_unary(QL_SILU, a)), KEEP(ql_unary(QL_SILU, ga)), ftol(dt), ftol(dt), "contiguous silu");
        CLOSE(KEEP(ql_unary(QL_EXP, b)), KEEP(ql_unary(QL_EXP, gb)), ftol(dt), ftol(dt), "contiguous exp");
        for (int e = 0; e < 3; e++) {
            SAME_BITS(KEEP(ql_tensor_to(a, float_types[e], ql_cpu())), KEEP(ql_tensor_to(ga, float_types[e], gpu())),
                      "contiguous cast");
        }
        drop_all();
    }
}

/* the caching allocator hands blocks back and forth without losing data */
QL_TEST(cuda_allocator_reuse)
{
    if (!have_cuda()) return;
    size_t fr0 = 0, tot = 0;
    CHECK_OK(ql_cuda_backend.mem_info(0, &fr0, &tot));
    for (int round = 0; round < 3; round++)
        for (int64_t n = 1; n < 3000000; n = n * 7 + 3) {
            ql_tensor *x = KEEP(ql_tensor_full(QL_F32, 1, &n, (double)(n % 97), gpu()));
            ql_tensor *y = x ? KEEP(ql_binary_scalar(QL_MUL, x, 2.0, 0)) : NULL;
            ql_tensor *s = y ? KEEP(ql_reduce(QL_SUM, y, 0, 0)) : NULL;
            ql_tensor *sc = s ? to_cpu(s) : NULL;
            if (sc) CHECK_NEAR(ql_tensor_get_flat(sc, 0), 2.0 * (double)(n % 97) * (double)n, 1e-5 * 2.0 * 97 * (double)n);
            drop_all();
        }
    size_t fr1 = 0;
    CHECK_OK(ql_cuda_backend.mem_info(0, &fr1, &tot));
    /* cached blocks count as free: nothing leaked beyond the cuBLASLt workspace */
    CHECK_MSG(fr1 + ((size_t)64 << 20) >= fr0, "free memory fell from %zu to %zu", fr0, fr1);
}

/* ---------------------------------------------------------------- reductions, softmax */

QL_TEST(cuda_reductions)
{
    if (!have_cuda()) return;
    int64_t shape[3] = { 17, 301, 5 };
    const ql_reduce_op ops[5] = { QL_SUM, QL_MEAN, QL_MAX, QL_MIN, QL_ARGMAX };
    for (int d = 0; d < 2; d++) {
        ql_dtype dt = float_types[d];
        ql_tensor *x = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, shape, 1, 41), dt, ql_cpu()));
        ql_tensor *xt = x ? KEEP(ql_tensor_transpose(x, 0, 1)) : NULL;  /* [301, 17, 5], strided */
        ql_tensor *gx = to_gpu(x);
        ql_tensor *gxt = gx ? KEEP(ql_tensor_transpose(gx, 0, 1)) : NULL;
        if (!xt || !gxt) break;
        for (int o = 0; o < 5; o++)
            for (int dim = -1; dim < 3; dim++)
                for (int keep = 0; keep < 2; keep++) {
                    int rd = dim < 0 ? QL_ALLDIMS : dim;
                    char what[80];
                    snprintf(what, sizeof what, "reduce op %d dim %d keepdim %d %s", (int)ops[o], dim, keep,
                             ql_dtype_name(dt));
                    /* sums of up to 25585 N(0,1) values: f32 order differences of ~1e-6 * sqrt(n) */
                    double atol = ops[o] == QL_SUM ? (dt == QL_F32 ? 2e-4 : 0.25) : ftol(dt);
                    double rtol = ops[o] >= QL_MAX ? 0.0 : ftol(dt);
                    CLOSE(KEEP(ql_reduce(ops[o], xt, rd, keep)), KEEP(ql_reduce(ops[o], gxt, rd, keep)), atol, rtol, what);
                }
        drop_all();
    }
    /* long rows, few outputs: the block-per-row path */
    int64_t big[2] = { 3, 100003 };
    ql_tensor *x = cpu_rand(QL_F32, 2, big, 0, 42), *gx = to_gpu(x);
    if (x && gx)
        for (int o = 0; o < 5; o++) {
            double atol = ops[o] == QL_SUM ? 0.5 : 1e-5;  /* sum of 1e5 uniforms ~ 5e4 */
            CLOSE(KEEP(ql_reduce(ops[o], x, 1, 0)), KEEP(ql_reduce(ops[o], gx, 1, 0)), atol, 1e-5, "long rows");
        }
    drop_all();
}

QL_TEST(cuda_softmax)
{
    if (!have_cuda()) return;
    int64_t s1[2] = { 7, 33 }, s2[2] = { 3, 5000 }, s3[3] = { 2, 4, 100 };
    int64_t *shapes[3] = { s1, s2, s3 };
    int nds[3] = { 2, 2, 3 };
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 3; s++) {
            ql_dtype dt = float_types[d];
            ql_tensor *x0 = cpu_rand(QL_F32, nds[s], shapes[s], 1, 51);
            ql_tensor *xs = x0 ? KEEP(ql_binary_scalar(QL_MUL, x0, 4.0, 0)) : NULL;
            ql_tensor *x = xs ? KEEP(ql_tensor_to(xs, dt, ql_cpu())) : NULL;
            ql_tensor *gx = to_gpu(x);
            if (!gx) continue;
            char what[64];
            snprintf(what, sizeof what, "softmax %s shape %d", ql_dtype_name(dt), s);
            CLOSE(KEEP(ql_softmax(x, -1)), KEEP(ql_softmax(gx, -1)), dt == QL_F32 ? 1e-7 : 1e-3, ftol(dt), what);
            CLOSE(KEEP(ql_softmax(x, 0)), KEEP(ql_softmax(gx, 0)), dt == QL_F32 ? 1e-7 : 1e-3, ftol(dt), what);
            drop_all();
        }
}

/* ---------------------------------------------------------------- matmul */

static void check_matmul(ql_tensor *ca, ql_tensor *cb, ql_tensor *ga, ql_tensor *gb, int64_t K, ql_dtype dt,
                         const char *what)
{
    /* f32: order of the f32 sums; bf16/f16: one output rounding apart (a bf16 ulp is 2^-8 relative) */
    double atol = dt == QL_F32 ? 2e-5 * sqrt((double)K) : 4e-3 * sqrt((double)K);
    double rtol = dt == QL_F32 ? 2e-5 : dt == QL_BF16 ? 1.6e-2 : 2e-3;
    CLOSE(KEEP(ql_matmul(ca, cb)), KEEP(ql_matmul(ga, gb)), atol, rtol, what);
}

QL_TEST(cuda_matmul)
{
    if (!have_cuda()) return;
    const int64_t mkn[][3] = { { 1, 1, 1 }, { 3, 5, 7 }, { 17, 33, 65 }, { 64, 128, 96 }, { 129, 257, 63 }, { 2, 1000, 3 } };
    const ql_dtype dts[3] = { QL_F32, QL_BF16, QL_F16 };
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof mkn / sizeof mkn[0]; s++) {
            ql_dtype dt = dts[d];
            int64_t M = mkn[s][0], K = mkn[s][1], N = mkn[s][2];
            char what[96];
            int64_t sa[2] = { M, K }, sb[2] = { K, N }, sat[2] = { K, M }, sbt[2] = { N, K };
            ql_tensor *a = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, sa, 1, 61 + s), dt, ql_cpu()));
            ql_tensor *b = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, sb, 1, 71 + s), dt, ql_cpu()));
            ql_tensor *at0 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, sat, 1, 81 + s), dt, ql_cpu()));
            ql_tensor *bt0 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, sbt, 1, 91 + s), dt, ql_cpu()));
            ql_tensor *ga = to_gpu(a), *gb = to_gpu(b), *gat0 = to_gpu(at0), *gbt0 = to_gpu(bt0);
            if (!ga || !gb || !gat0 || !gbt0) { drop_all(); continue; }
            ql_tensor *at = KEEP(ql_tensor_transpose(at0, 0, 1)), *bt = KEEP(ql_tensor_transpose(bt0, 0, 1));
            ql_tensor *gat = KEEP(ql_tensor_transpose(gat0, 0, 1)), *gbt = KEEP(ql_tensor_transpose(gbt0, 0, 1));
            snprintf(what, sizeof what, "matmul %s [%lld,%lld]x[%lld,%lld]", ql_dtype_name(dt), (long long)M,
                     (long long)K, (long long)K, (long long)N);
            check_matmul(a, b, ga, gb, K, dt, what);
            check_matmul(at, b, gat, gb, K, dt, "matmul, a transposed");
            check_matmul(a, bt, ga, gbt, K, dt, "matmul, b transposed");
            check_matmul(at, bt, gat, gbt, K, dt, "matmul, both transposed");
            drop_all();
        }
    /* batched, broadcast batch, and operands with no unit stride (a copy first) */
    for (int d = 0; d < 2; d++) {
        ql_dtype dt = dts[d];
        int64_t s3a[3] = { 4, 19, 40 }, s3b[3] = { 4, 40, 23 }, s2b[2] = { 40, 23 };
        int64_t s4a[4] = { 2, 1, 19, 40 }, s4b[4] = { 1, 3, 40, 23 }, swide[3] = { 4, 19, 80 };
        ql_tensor *a = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, s3a, 1, 101), dt, ql_cpu()));
        ql_tensor *b = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, s3b, 1, 102), dt, ql_cpu()));
        ql_tensor *b2 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 2, s2b, 1, 103), dt, ql_cpu()));
        ql_tensor *a4 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 4, s4a, 1, 104), dt, ql_cpu()));
        ql_tensor *b4 = KEEP(ql_tensor_to(cpu_rand(QL_F32, 4, s4b, 1, 105), dt, ql_cpu()));
        ql_tensor *aw = KEEP(ql_tensor_to(cpu_rand(QL_F32, 3, swide, 1, 106), dt, ql_cpu()));
        ql_tensor *as = aw ? KEEP(ql_tensor_slice(aw, 2, 0, 80, 2)) : NULL;  /* [4, 19, 40], last stride 2 */
        ql_tensor *ga = to_gpu(a), *gb = to_gpu(b), *gb2 = to_gpu(b2), *ga4 = to_gpu(a4), *gb4 = to_gpu(b4);
        ql_tensor *gaw = to_gpu(aw);
        ql_tensor *gas = gaw ? KEEP(ql_tensor_slice(gaw, 2, 0, 80, 2)) : NULL;
        if (!ga || !gb || !gb2 || !ga4 || !gb4 || !as || !gas) { drop_all(); continue; }
        check_matmul(a, b, ga, gb, 40, dt, "batched matmul");
        check_matmul(a, b2, ga, gb2, 40, dt, "batched @ 2-d (batch stride 0)");
        check_matmul(a4, b4, ga4, gb4, 40, dt, "broadcast batch dims");
        check_matmul(as, b, gas, gb, 40, dt, "a with no unit stride");
        ql_tensor *bt = KEEP(ql_tensor_transpose(b, 1, 2)), *gbt = KEEP(ql_tensor_transpose(gb, 1, 2));
        ql_tensor *bs = KEEP(ql_tensor_transpose(bt, 1, 2)), *gbs = KEEP(ql_tensor_transpose(gbt, 1, 2));
        check_matmul(a, bs, ga, gbs, 40, dt, "batched, b transposed twice");
        drop_all();
    }
}

/* ---------------------------------------------------------------- devices, memory */

QL_TEST(cuda_cross_device_copies)
{
    if (!have_cuda()) return;
    int64_t shape[2] = { 31, 17 };
    ql_tensor *c = cpu_rand(QL_F32, 2, shape, 1, 111);
    ql_tensor *g = to_gpu(c);
    SAME_BITS(c, g, "cpu -> cuda -> cpu");
    /* cast while crossing, both directions */
    SAME_BITS(KEEP(ql_tensor_to(c, QL_BF16, ql_cpu())), KEEP(ql_tensor_to(c, QL_BF16, gpu())), "cpu f32 -> cuda bf16");
    SAME_BITS(KEEP(ql_tensor_to(c, QL_F16, ql_cpu())), g ? KEEP(ql_tensor_to(g, QL_F16, ql_cpu())) : NULL,
              "cuda f32 -> cpu f16");
    /* copy_ from the GPU into a strided CPU view and from a strided CPU view to the GPU */
    int64_t tshape[2] = { 17, 31 };
    ql_tensor *cd = KEEP(ql_tensor_full(QL_F32, 2, tshape, 0.0, ql_cpu()));
    ql_tensor *cdt = cd ? KEEP(ql_tensor_transpose(cd, 0, 1)) : NULL;
    if (cdt && g) {
        CHECK_OK(ql_tensor_copy_(cdt, g));
        SAME_BITS(cdt, g, "cuda -> strided cpu view");
    }
    ql_tensor *ct = c ? KEEP(ql_tensor_transpose(c, 0, 1)) : NULL;
    ql_tensor *gd = KEEP(ql_tensor_full(QL_BF16, 2, tshape, 0.0, gpu()));
    if (ct && gd) {
        CHECK_OK(ql_tensor_copy_(gd, ct));
        SAME_BITS(KEEP(ql_tensor_to(ct, QL_BF16, ql_cpu())), gd, "strided cpu view -> cuda bf16");
    }
    if (ql_cuda_backend.device_count() > 1) {
        ql_tensor *g1 = g ? KEEP(ql_tensor_to(g, QL_F32, ql_cuda(1))) : NULL;
        SAME_BITS(c, g1, "cuda:0 -> cuda:1");
    }
    drop_all();
}

QL_TEST(cuda_out_of_memory_message)
{
    if (!have_cuda()) return;
    int64_t huge = (int64_t)1 << 48;  /* 1 PiB of f32 */
    ql_clear_error();
    ql_tensor *t = ql_tensor_new(QL_F32, 1, &huge, gpu());
    CHECK(t == NULL);
    if (t) ql_tensor_release(t);
    const char *msg = ql_last_error();
    CHECK_MSG(strstr(msg, "out of memory") != NULL, "message: %s", msg);
    CHECK_MSG(strstr(msg, "free") != NULL && strstr(msg, "batch") != NULL, "message: %s", msg);
    /* the backend entry itself */
    void *p = ql_cuda_backend.alloc(0, (size_t)1 << 50);
    CHECK(p == NULL);
    if (p) ql_cuda_backend.free(0, p);
    CHECK_MSG(strstr(ql_last_error(), "GiB") != NULL, "message: %s", ql_last_error());
    /* the device is still fine afterwards */
    int64_t shape[1] = { 1000 };
    ql_tensor *x = KEEP(ql_tensor_full(QL_F32, 1, shape, 3.0, gpu()));
    ql_tensor *s = x ? KEEP(ql_reduce(QL_SUM, x, 0, 0)) : NULL;
    ql_tensor *sc = s ? to_cpu(s) : NULL;
    if (sc) CHECK_NEAR(ql_tensor_get_flat(sc, 0), 3000.0, 1e-3);
    size_t fr = 0, tot = 0;
    CHECK_OK(ql_cuda_backend.mem_info(0, &fr, &tot));
    CHECK(fr > 0 && tot >= fr);
    drop_all();
}


/* NF4 on the GPU: the same bytes as the CPU quantizer (which equals bitsandbytes),
   double quantization included, and the same dequantized values */
QL_TEST(cuda_nf4_bytes_equal_cpu)
{
    if (!have_cuda()) return;
    int64_t shapes[][2] = { { 64, 64 }, { 33, 47 }, { 150, 130 }, { 1, 1 } };
    int blocksizes[] = { 32, 64, 256, 4096 };
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
    for (size_t bi = 0; bi < sizeof blocksizes / sizeof blocksizes[0]; bi++) {
        for (int dq = 0; dq <= 1; dq++) {
            ql_tensor *x = KEEP(ql_tensor_rand(QL_F32, 2, shapes[k], 1, 11 + k, 0, ql_cpu()));
            if (!x) continue;
            ql_tensor *qc = KEEP(ql_tensor_quantize_nf4(x, blocksizes[bi], dq, ql_cpu()));
            ql_tensor *qg = KEEP(ql_tensor_quantize_nf4(to_gpu(x), blocksizes[bi], dq, gpu()));
            if (!qc || !qg) continue;
            ql_tensor *back = KEEP(ql_tensor_to(qg, QL_NF4, ql_cpu()));   /* moves bytes and state */
            if (!back) continue;
            CHECK(memcmp(ql_tensor_data(qc), ql_tensor_data(back), ql_tensor_nbytes(qc)) == 0);
            CHECK(memcmp(ql_tensor_data(qc->quant->absmax), ql_tensor_data(back->quant->absmax),
                         ql_tensor_nbytes(qc->quant->absmax)) == 0);
            if (dq) {
                CHECK(memcmp(ql_tensor_data(qc->quant->nested_absmax), ql_tensor_data(back->quant->nested_absmax),
                             ql_tensor_nbytes(qc->quant->nested_absmax)) == 0);
                CHECK(qc->quant->nested_offset == back->quant->nested_offset);
            }
            SAME_BITS(KEEP(ql_tensor_to(qc, QL_F32, ql_cpu())), to_cpu(KEEP(ql_tensor_to(qg, QL_F32, gpu()))), "nf4 dequantized f32");
            SAME_BITS(KEEP(ql_tensor_to(qc, QL_BF16, ql_cpu())), to_cpu(KEEP(ql_tensor_to(qg, QL_BF16, gpu()))), "nf4 dequantized bf16");
        }
        drop_all();
    }
}

#endif /* QL_CUDA */

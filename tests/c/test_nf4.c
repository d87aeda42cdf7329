/*
 * test_nf4.c — NF4 against bitsandbytes' own output (tests/fixtures/nf4,
 * written by tests/gen/gen_nf4.py): packed bytes, absmax, double-quant
 * statistics, dequantized fp32 and bf16, the quant_state JSON, and the two
 * code tables, all compared bit for bit. Plus round trip and bad input.
 */
#include "qltest.h"
#include "nf4.h"
#include "ql.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- fixture reader */

typedef struct { char tag[9]; uint32_t type; uint64_t count; const uint8_t *data; } fx_rec;
typedef struct { uint8_t *buf; size_t size; fx_rec rec[32]; int nrec; } fx_file;

static int fx_load(fx_file *f, const char *name)
{
    memset(f, 0, sizeof *f);
    char rel[256];
    snprintf(rel, sizeof rel, "nf4/%s.bin", name);
    FILE *fp = fopen(qltest_fixture(rel), "rb");
    if (!fp) { CHECK_MSG(0, "cannot open fixture %s (run tests/gen/gen_nf4.py)", qltest_fixture(rel)); return 0; }
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->buf = malloc((size_t)sz);
    f->size = (size_t)sz;
    if (!f->buf || fread(f->buf, 1, f->size, fp) != f->size) { fclose(fp); CHECK_MSG(0, "read %s", rel); return 0; }
    fclose(fp);
    if (f->size < 8 || memcmp(f->buf, "QLNF4FX1", 8)) { CHECK_MSG(0, "%s: bad magic", rel); return 0; }
    size_t p = 8;
    static const size_t esz[4] = { 1, 4, 2, 8 };
    while (p + 20 <= f->size && f->nrec < 32) {
        fx_rec *r = &f->rec[f->nrec++];
        memcpy(r->tag, f->buf + p, 8); r->tag[8] = 0;
        memcpy(&r->type, f->buf + p + 8, 4);
        memcpy(&r->count, f->buf + p + 12, 8);
        p += 20;
        if (r->type > 3 || r->count > (f->size - p) / esz[r->type]) { CHECK_MSG(0, "%s: truncated", rel); return 0; }
        r->data = f->buf + p;
        p += r->count * esz[r->type];
    }
    return 1;
}

static const fx_rec *fx_get(const fx_file *f, const char *tag)
{
    for (int i = 0; i < f->nrec; i++)
        if (!strcmp(f->rec[i].tag, tag)) return &f->rec[i];
    return NULL;
}

static int64_t fx_i64(const fx_file *f, const char *tag)
{
    const fx_rec *r = fx_get(f, tag);
    int64_t v = 0;
    if (r && r->type == 3 && r->count >= 1) memcpy(&v, r->data, 8);
    else CHECK_MSG(0, "fixture record %s missing", tag);
    return v;
}

static void fx_free(fx_file *f) { free(f->buf); memset(f, 0, sizeof *f); }

/* same generator as gen_nf4.py prng_input */
static float *prng_input(uint64_t s, int64_t rows, int64_t cols)
{
    float *x = malloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        int32_t v = (int32_t)(s >> 40) - (1 << 23);
        x[i] = (float)v * ldexpf(1.0f, (int)(-23 + (i / cols) % 9 - 4));
    }
    return x;
}

static uint64_t fnv1a64(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001B3ull; }
    return h;
}

/* first mismatching index of two byte-compared arrays of elements of size es, or -1 */
static int64_t first_diff(const void *a, const void *b, int64_t n, size_t es)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp((const uint8_t *)a + i * es, (const uint8_t *)b + i * es, es)) return i;
    return -1;
}

#define CHECK_BYTES(what, a, b, n, es) do { int64_t d__ = first_diff(a, b, n, es);                  \
    if (d__ >= 0) qltest_failf(__FILE__, __LINE__, "%s: %s differs from bitsandbytes at [%lld] of %lld", \
                               name, what, (long long)d__, (long long)(n)); } while (0)

static const fx_rec *need(const fx_file *f, const char *tag, uint32_t type, uint64_t count)
{
    const fx_rec *r = fx_get(f, tag);
    if (!r || r->type != type || r->count != count) {
        CHECK_MSG(0, "fixture record %s missing or of the wrong size", tag);
        return NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- tests */

QL_TEST(nf4_tables_match_bnb)
{
    fx_file f;
    if (!fx_load(&f, "tables")) return;
    const char *name = "tables";
    float code[16], map[256];
    ql_nf4_code(code);
    ql_nf4_dynamic_map(map);
    const fx_rec *c = need(&f, "nf4code", 1, 16), *m = need(&f, "dynmap", 1, 256);
    if (c) CHECK_BYTES("NF4 code", code, c->data, 16, 4);
    if (m) CHECK_BYTES("dynamic map", map, m->data, 256, 4);
    fx_free(&f);
}

static void check_case(const char *name)
{
    fx_file f;
    if (!fx_load(&f, name)) return;
    const fx_rec *shape = need(&f, "shape", 3, 2);
    if (!shape) { fx_free(&f); return; }
    int64_t dims[2];
    memcpy(dims, shape->data, 16);
    int64_t n = dims[0] * dims[1];
    int bs = (int)fx_i64(&f, "bs"), dq = (int)fx_i64(&f, "dq");
    int64_t nb = (n + bs - 1) / bs, nn = (nb + 255) / 256;

    float *x;
    const fx_rec *rx = fx_get(&f, "x");
    if (rx) { x = malloc((size_t)n * 4); if (need(&f, "x", 1, (uint64_t)n)) memcpy(x, rx->data, (size_t)n * 4); }
    else x = prng_input((uint64_t)fx_i64(&f, "seed"), dims[0], dims[1]);

    /* 1. our quantization == bnb's bytes */
    ql_nf4 q;
    CHECK_OK(ql_nf4_quantize(&q, x, dims[0], dims[1], bs, dq));
    CHECK_EQ_INT(q.nblocks, nb);
    const fx_rec *packed = need(&f, "packed", 0, (uint64_t)((n + 1) / 2));
    if (packed && q.packed) CHECK_BYTES("packed", q.packed, packed->data, (n + 1) / 2, 1);

    /* bnb's stored state for dequantization (copied: fixture records are unaligned) */
    ql_nf4 b;
    memset(&b, 0, sizeof b);
    b.n = n; b.rows = dims[0]; b.cols = dims[1]; b.ndim = 2; b.blocksize = bs; b.nblocks = nb;
    b.double_quant = dq; b.nested_blocksize = 256;
    ql_nf4_code(b.code);
    b.packed = packed ? (uint8_t *)packed->data : NULL;
    if (dq) {
        const fx_rec *aq = need(&f, "absmaxq", 0, (uint64_t)nb), *na = need(&f, "nabsmax", 1, (uint64_t)nn),
                     *off = need(&f, "noffset", 1, 1), *nc = need(&f, "ncode", 1, 256);
        if (off) {
            CHECK_BYTES("nested_offset", &q.nested_offset, off->data, 1, 4);
            memcpy(&b.nested_offset, off->data, 4);
        }
        if (aq && q.absmax_q) CHECK_BYTES("absmax (u8)", q.absmax_q, aq->data, nb, 1);
        if (na && q.nested_absmax) CHECK_BYTES("nested_absmax", q.nested_absmax, na->data, nn, 4);
        if (nc) { CHECK_BYTES("nested_quant_map", q.nested_code, nc->data, 256, 4); memcpy(b.nested_code, nc->data, 1024); }
        b.absmax_q = aq ? (uint8_t *)aq->data : NULL;
        if (na) { b.nested_absmax = malloc((size_t)nn * 4); memcpy(b.nested_absmax, na->data, (size_t)nn * 4); }
        b.nested_nblocks = nn;
    } else {
        const fx_rec *am = need(&f, "absmax", 1, (uint64_t)nb);
        if (am && q.absmax) CHECK_BYTES("absmax", q.absmax, am->data, nb, 4);
        if (am) { b.absmax = malloc((size_t)nb * 4); memcpy(b.absmax, am->data, (size_t)nb * 4); }
    }

    /* 2. dequantization of bnb's state == bnb's dequantization; ours too */
    float *deq = malloc((size_t)n * 4), *deq2 = malloc((size_t)n * 4);
    uint16_t *bf = malloc((size_t)n * 2), *bf2 = malloc((size_t)n * 2);
    CHECK_OK(ql_nf4_dequantize_f32(&b, deq));
    CHECK_OK(ql_nf4_dequantize_bf16(&b, bf));
    CHECK_OK(ql_nf4_dequantize_f32(&q, deq2));
    CHECK_OK(ql_nf4_dequantize_bf16(&q, bf2));
    const fx_rec *rd = fx_get(&f, "deq");
    if (rd) {
        const fx_rec *rb = need(&f, "deqbf", 2, (uint64_t)n);
        if (need(&f, "deq", 1, (uint64_t)n)) {
            CHECK_BYTES("dequantized f32 (bnb state)", deq, rd->data, n, 4);
            CHECK_BYTES("dequantized f32 (our state)", deq2, rd->data, n, 4);
        }
        if (rb) {
            CHECK_BYTES("dequantized bf16 (bnb state)", bf, rb->data, n, 2);
            CHECK_BYTES("dequantized bf16 (our state)", bf2, rb->data, n, 2);
        }
    } else {
        uint64_t hf = (uint64_t)fx_i64(&f, "deqhash"), hb = (uint64_t)fx_i64(&f, "bfhash");
        CHECK_MSG(fnv1a64(deq, (size_t)n * 4) == hf, "%s: dequantized f32 hash differs from bitsandbytes", name);
        CHECK_MSG(fnv1a64(bf, (size_t)n * 2) == hb, "%s: dequantized bf16 hash differs from bitsandbytes", name);
        CHECK_MSG(fnv1a64(deq2, (size_t)n * 4) == hf, "%s: dequantized f32 (our state) hash differs", name);
    }

    /* 3. range dequantization == slices of the whole (odd starts, block crossings) */
    int64_t starts[] = { 0, 1, bs - 1, n / 3, n - 1 };
    for (int k = 0; k < 5; k++) {
        int64_t s = starts[k] < n ? starts[k] : 0, cnt = n - s < 2 * bs + 3 ? n - s : 2 * bs + 3;
        float tmp[2 * 4096 + 3];
        uint16_t tb[2 * 4096 + 3];
        CHECK_OK(ql_nf4_dequantize_range_f32(&b, s, cnt, tmp));
        CHECK_OK(ql_nf4_dequantize_range_bf16(&b, s, cnt, tb));
        CHECK_BYTES("range f32", tmp, deq + s, cnt, 4);
        CHECK_BYTES("range bf16", tb, bf + s, cnt, 2);
    }

    /* 4. quant_state JSON, written and parsed */
    const fx_rec *js = fx_get(&f, "json");
    if (js) {
        char buf[512];
        CHECK_OK(ql_nf4_state_json(&q, NULL, buf, sizeof buf));
        CHECK_MSG(strlen(buf) == js->count && !memcmp(buf, js->data, js->count),
                  "%s: json\n  ours %s\n  bnb  %.*s", name, buf, (int)js->count, (const char *)js->data);
        ql_nf4 p;
        CHECK_OK(ql_nf4_parse_state_json((const char *)js->data, js->count, &p));
        CHECK_EQ_INT(p.blocksize, bs);
        CHECK_EQ_INT(p.rows, dims[0]);
        CHECK_EQ_INT(p.cols, dims[1]);
        CHECK_EQ_INT(p.nblocks, nb);
        CHECK_EQ_INT(p.double_quant, dq);
        CHECK(!strcmp(p.dtype, "float32"));
        if (dq) CHECK_BYTES("parsed nested_offset", &p.nested_offset, &b.nested_offset, 1, 4);
    }

    free(deq); free(deq2); free(bf); free(bf2); free(x);
    free(b.absmax); free(b.nested_absmax);
    ql_nf4_free(&q);
    fx_free(&f);
}

QL_TEST(nf4_mix64_dq) { check_case("mix64_dq"); }
QL_TEST(nf4_odd_nodq) { check_case("odd_nodq"); }
QL_TEST(nf4_odd_dq) { check_case("odd_dq"); }
QL_TEST(nf4_bs32_dq) { check_case("bs32_dq"); }
QL_TEST(nf4_bs128_nodq) { check_case("bs128_nodq"); }
QL_TEST(nf4_raggedzero_dq) { check_case("raggedzero_dq"); }
QL_TEST(nf4_raggedzero_nodq) { check_case("raggedzero_nodq"); }
QL_TEST(nf4_one_dq) { check_case("one_dq"); }
QL_TEST(nf4_zeros_dq) { check_case("zeros_dq"); }
QL_TEST(nf4_big_dq) { check_case("big_dq"); }
QL_TEST(nf4_big_bs4096_nodq) { check_case("big_bs4096_nodq"); }
QL_TEST(nf4_big_bs4096_dq) { check_case("big_bs4096_dq"); }

QL_TEST(nf4_roundtrip)
{
    /* dequantized weights re-quantize to the same bytes, and every value is
       within half the widest NF4 gap ((1 - 0.6962)/2 * absmax) of the input */
    int64_t rows = 37, cols = 90, n = rows * cols;
    float *x = prng_input(99, rows, cols), *d = malloc((size_t)n * 4);
    ql_nf4 q, r;
    CHECK_OK(ql_nf4_quantize(&q, x, rows, cols, 64, 0));
    CHECK_OK(ql_nf4_dequantize_f32(&q, d));
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += !(fabsf(d[i] - x[i]) <= 0.15191f * q.absmax[i / 64]);
    CHECK_EQ_INT(bad, 0);
    CHECK_OK(ql_nf4_quantize(&r, d, rows, cols, 64, 0));
    const char *name = "roundtrip";
    if (q.packed && r.packed) CHECK_BYTES("re-quantized packed", r.packed, q.packed, (n + 1) / 2, 1);
    ql_nf4_free(&q); ql_nf4_free(&r);
    free(x); free(d);
}

QL_TEST(nf4_py_float_repr)
{
    /* offsets written the way Python's json.dumps writes floats (strings from CPython) */
    static const struct { float v; const char *s; } cases[] = {
        { 2.5603463649749756f, "2.5603463649749756" }, { 1e-05f, "9.999999747378752e-06" },
        { 0.0001f, "9.999999747378752e-05" }, { 0.5f, "0.5" }, { 123.0f, "123.0" },
        { 1e16f, "1.0000000272564224e+16" }, { 3e-39f, "3.000000645916e-39" }, { 0.0f, "0.0" },
        { 1e17f, "9.999999843067494e+16" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ql_nf4 q;
        memset(&q, 0, sizeof q);
        q.blocksize = 64; q.ndim = 2; q.rows = 2; q.cols = 3; q.double_quant = 1; q.nested_blocksize = 256;
        q.nested_offset = cases[i].v;
        char buf[256], want[256];
        snprintf(want, sizeof want, "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
                 "\"shape\": [2, 3], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
                 "\"nested_offset\": %s}", cases[i].s);
        CHECK_OK(ql_nf4_state_json(&q, "bfloat16", buf, sizeof buf));
        CHECK_MSG(!strcmp(buf, want), "json\n  got  %s\n  want %s", buf, want);
    }
}

QL_TEST(nf4_bad_input)
{
    float x[128] = { 0 };
    ql_nf4 q;
    int bad_bs[] = { 0, 16, 48, 63, 8192, -64 };
    for (size_t i = 0; i < sizeof bad_bs / sizeof bad_bs[0]; i++) {
        CHECK_EQ_INT(ql_nf4_quantize(&q, x, 2, 64, bad_bs[i], 0), QL_EINVAL);
        CHECK(strstr(ql_last_error(), "blocksize") != NULL);
    }
    CHECK_EQ_INT(ql_nf4_quantize(&q, x, -1, 64, 64, 0), QL_EINVAL);
    CHECK_EQ_INT(ql_nf4_quantize(&q, x, INT64_MAX / 2, 64, 64, 0), QL_EINVAL);
    CHECK_EQ_INT(ql_nf4_quantize(&q, NULL, 2, 64, 64, 0), QL_EINVAL);
    CHECK_EQ_INT(ql_nf4_quantize(NULL, x, 2, 64, 64, 0), QL_EINVAL);
    x[70] = NAN;
    CHECK_EQ_INT(ql_nf4_quantize(&q, x, 2, 64, 64, 1), QL_EINVAL);
    CHECK(strstr(ql_last_error(), "block 1") != NULL);
    x[70] = INFINITY;
    CHECK_EQ_INT(ql_nf4_quantize(&q, x, 2, 64, 64, 0), QL_EINVAL);
    x[70] = 0;

    /* empty weight: fine, nothing allocated */
    CHECK_OK(ql_nf4_quantize(&q, x, 0, 64, 64, 1));
    CHECK_EQ_INT(q.nblocks, 0);
    CHECK_OK(ql_nf4_dequantize_f32(&q, NULL));
    ql_nf4_free(&q);
    ql_nf4_free(&q); /* idempotent */

    /* ranges */
    float out[8];
    CHECK_OK(ql_nf4_quantize(&q, x, 2, 64, 64, 0));
    CHECK_EQ_INT(ql_nf4_dequantize_range_f32(&q, 127, 2, out), QL_EINVAL);
    CHECK_EQ_INT(ql_nf4_dequantize_range_f32(&q, -1, 1, out), QL_EINVAL);
    CHECK_OK(ql_nf4_dequantize_range_f32(&q, 128, 0, out));
    char small[16];
    CHECK_EQ_INT(ql_nf4_state_json(&q, NULL, small, sizeof small), QL_EINVAL);
    ql_nf4_free(&q);

    /* quant_state JSON */
    ql_nf4 p;
    const char *fp4 = "{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [4, 64]}";
    CHECK_EQ_INT(ql_nf4_parse_state_json(fp4, strlen(fp4), &p), QL_EUNSUPPORTED);
    const char *trunc = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"shape\": [4, ";
    CHECK_EQ_INT(ql_nf4_parse_state_json(trunc, strlen(trunc), &p), QL_EFORMAT);
    const char *bs = "{\"quant_type\": \"nf4\", \"blocksize\": 100, \"dtype\": \"bfloat16\", \"shape\": [4, 64]}";
    CHECK_EQ_INT(ql_nf4_parse_state_json(bs, strlen(bs), &p), QL_EFORMAT);
    const char *noshape = "{\"quant_type\": \"nf4\", \"blocksize\": 64}";
    CHECK_EQ_INT(ql_nf4_parse_state_json(noshape, strlen(noshape), &p), QL_EFORMAT);
    const char *ok = "{\"quant_type\": \"nf4\", \"blocksize\": 128, \"dtype\": \"float16\", \"shape\": [3584, 18944],"
                     " \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.021445}";
    CHECK_OK(ql_nf4_parse_state_json(ok, strlen(ok), &p));
    CHECK_EQ_INT(p.n, 3584LL * 18944);
    CHECK_EQ_INT(p.nblocks, 3584LL * 18944 / 128);
    CHECK_EQ_INT(p.nested_nblocks, (3584LL * 18944 / 128 + 255) / 256);
    CHECK(p.double_quant == 1 && p.nested_offset == 0.021445f && !strcmp(p.dtype, "float16"));
    CHECK_EQ_INT(ql_nf4_validate(&p), QL_EINVAL); /* arrays not attached yet */
}

/* ql_fmaf (the fma the NF4 tables are built with) is correctly rounded: the C library's fmaf
   where it is right (glibc), on random triples and on short significands that make the
   exact sum land on ties between floats; and the tie MinGW-w64's fmaf gets wrong. */
#ifndef _WIN32
static uint32_t xs32(uint32_t *s) { *s ^= *s << 13; *s ^= *s >> 17; *s ^= *s << 5; return *s; }
static float short_float(uint32_t *s, int bits, int exp_range)
{
    int32_t m = (int32_t)(xs32(s) & ((1u << bits) - 1)) | (1 << bits);
    int e = (int)(xs32(s) % (uint32_t)(2 * exp_range + 1)) - exp_range - bits;
    return (xs32(s) & 1 ? -1.0f : 1.0f) * ldexpf((float)m, e);
}
#endif
QL_TEST(nf4_fmaf_correctly_rounded)
{
    float got = ql_fmaf(0.1125f, 1.0f, 0.1f), want = 0x1.b33334p-3f;
    CHECK_MSG(got == want, "ql_fmaf(0.1125, 1, 0.1) = %a, want %a", got, want);
#ifndef _WIN32
    uint32_t s = 12345;
    int64_t bad = 0;
    for (int i = 0; i < 2000000; i++) {
        float a, b, c;
        if (i % 3 == 1) {   /* short significands: exact products, sums on and near ties */
            a = short_float(&s, 12, 8); b = short_float(&s, 12, 8); c = short_float(&s, 23, 16);
        } else if (i % 3 == 2) {
            /* a product that is a tie between floats, nudged by a c far below a double's ulp of
               it: rounding the sum to double first lands on the tie and goes the wrong way */
            a = short_float(&s, 12, 4); b = short_float(&s, 12, 4);
            c = ldexpf(xs32(&s) & 1 ? 1.0f : -1.0f, -60 - (int)(xs32(&s) % 40)) * fabsf(a * b);
        } else {
            uint32_t u[3] = { xs32(&s), xs32(&s), xs32(&s) };
            memcpy(&a, &u[0], 4); memcpy(&b, &u[1], 4); memcpy(&c, &u[2], 4);
            if (!isfinite(a) || !isfinite(b) || !isfinite(c)) continue;
        }
        float r = ql_fmaf(a, b, c), e = fmaf(a, b, c);
        if (memcmp(&r, &e, 4) != 0 && !(isnan(r) && isnan(e))) {
            if (bad++ < 5) qltest_failf(__FILE__, __LINE__, "ql_fmaf(%a, %a, %a) = %a, fmaf = %a", a, b, c, r, e);
        }
    }
    CHECK_MSG(bad == 0, "%lld of 2000000 differ from the C library's fmaf", (long long)bad);
#endif
}

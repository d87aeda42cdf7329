/*
 * test_gguf_quant.c — the GGUF block quantizers (engine/formats/gguf_quant.c) against
 * llama.cpp's own: tests/fixtures/gguf/kquants.safetensors holds 16 rows of 512 values
 * chosen to reach every branch of the scale searches and, per type (Q4_K, Q5_K, Q6_K,
 * Q5_0, Q5_1, Q8_0), the blocks ggml_quantize_chunk wrote for them (the reference path
 * llama-quantize takes without an importance matrix), and the FNV-1a-64 of what ggml's
 * dequantization gives back. Written by tests/gen/gen_kquants.c (see check_llamacpp.sh).
 * Our blocks must be the same bytes, our dequantization the same floats. Plus the facts
 * no fixture is needed for: sizes, the round trip error bound, and the writer and reader
 * carrying every type.
 */
#include "qltest.h"
#include "gguf.h"
#include "gguf_quant.h"
#include "safetensors.h"
#include "platform.h"

#include <stdlib.h>
#include <string.h>

static uint64_t fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

static const struct { uint32_t t; const char *name; } TYPES[] = {
    { QL_GGML_Q4_K, "q4_K" }, { QL_GGML_Q5_K, "q5_K" }, { QL_GGML_Q6_K, "q6_K" },
    { QL_GGML_Q5_0, "q5_0" }, { QL_GGML_Q5_1, "q5_1" }, { QL_GGML_Q8_0, "q8_0" },
};
#define NTYPES (int)(sizeof TYPES / sizeof TYPES[0])

QL_TEST(gguf_quant_matches_llamacpp)
{
    ql_st_file *f = ql_st_open(qltest_fixture("gguf/kquants.safetensors"));
    if (!f) { CHECK_MSG(0, "%s (run tests/gen/check_llamacpp.sh)", ql_last_error()); return; }
    int ix = ql_st_find(f, "input");
    CHECK(ix >= 0);
    if (ix < 0) { ql_st_close(f); return; }
    const ql_st_entry *e = ql_st_entry_at(f, ix);
    int64_t n = e->shape[0] * e->shape[1], cols = e->shape[1];
    float *x = malloc((size_t)n * 4), *back = malloc((size_t)n * 4);
    memcpy(x, ql_st_data(f, ix), (size_t)n * 4);   /* copied: fixture data need not be aligned */
    uint8_t *q = malloc((size_t)n * 4);
    for (int k = 0; k < NTYPES; k++) {
        int iq = ql_st_find(f, TYPES[k].name);
        CHECK_MSG(iq >= 0, "fixture has no %s", TYPES[k].name);
        if (iq < 0) continue;
        const uint8_t *want = ql_st_data(f, iq);
        size_t nb = (size_t)ql_st_entry_at(f, iq)->shape[0];
        size_t got = ql_gguf_quantize(TYPES[k].t, x, q, n);
        CHECK_EQ_INT(got, nb);
        if (got != nb) continue;
        uint32_t block, bytes;
        ql_ggml_type_block(TYPES[k].t, &block, &bytes);
        int bad = 0;
        for (size_t b = 0; b < nb / bytes && bad < 4; b++)
            if (memcmp(q + b * bytes, want + b * bytes, bytes)) {
                size_t j = 0;
                while (q[b * bytes + j] == want[b * bytes + j]) j++;
                CHECK_MSG(0, "%s block %zu (row %lld) differs from llama.cpp's at byte %zu: %02x, llama.cpp %02x",
                          TYPES[k].name, b, (long long)(b * block / (size_t)cols), j, q[b * bytes + j], want[b * bytes + j]);
                bad++;
            }
        /* dequantizing llama.cpp's blocks gives ggml's floats */
        CHECK(ql_gguf_dequantize(TYPES[k].t, want, back, n));
        char key[64];
        snprintf(key, sizeof key, "dequant.%s", TYPES[k].name);
        const char *h = ql_st_meta_get(f, key);
        char mine[32];
        snprintf(mine, sizeof mine, "%016llx", (unsigned long long)fnv(back, (size_t)n * 4));
        CHECK_MSG(h && !strcmp(h, mine), "%s: dequantized floats hash %s, ggml's %s", TYPES[k].name, mine, h ? h : "(missing)");
    }
    free(q); free(x); free(back);
    ql_st_close(f);
}

/* block sizes, the error bound of a round trip, and refusals of a partial block */
QL_TEST(gguf_quant_roundtrip)
{
    enum { N = 4096 };
    float *x = malloc(N * 4), *y = malloc(N * 4);
    uint8_t *q = malloc(N * 4);
    uint64_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = ((float)(s >> 40) / (float)(1u << 24) - 0.5f) * 0.1f;
    }
    /* worst case per value: half a step of the code grid, loosened for the 6-bit scales */
    static const struct { uint32_t t; size_t bytes; float tol; } C[] = {
        { QL_GGML_Q4_K, 144 * N / 256, 0.1f / 15 }, { QL_GGML_Q5_K, 176 * N / 256, 0.1f / 31 },
        { QL_GGML_Q6_K, 210 * N / 256, 0.1f / 63 }, { QL_GGML_Q5_0, 22 * N / 32, 0.1f / 31 },
        { QL_GGML_Q5_1, 24 * N / 32, 0.1f / 31 }, { QL_GGML_Q8_0, 34 * N / 32, 0.1f / 254 },
    };
    for (size_t k = 0; k < sizeof C / sizeof C[0]; k++) {
        CHECK_EQ_INT(ql_gguf_quantize(C[k].t, x, q, N), C[k].bytes);
        CHECK(ql_gguf_dequantize(C[k].t, q, y, N));
        float worst = 0;
        for (int i = 0; i < N; i++) worst = fmaxf(worst, fabsf(y[i] - x[i]));
        CHECK_MSG(worst <= C[k].tol, "%s: round trip error %g > %g", ql_ggml_type_name(C[k].t), worst, C[k].tol);
    }
    CHECK_EQ_INT(ql_gguf_quantize(QL_GGML_Q4_K, x, q, 128), 0);    /* half a super-block */
    CHECK_EQ_INT(ql_gguf_quantize(QL_GGML_Q5_0, x, q, 48), 0);
    CHECK_EQ_INT(ql_gguf_quantize(2 /* Q4_0: not written */, x, q, 32), 0);
    CHECK(!ql_gguf_type_supported(2));
    free(x); free(y); free(q);
}

/* every type through the writer and back through the reader; a 256-block type refuses
   a row that is not a whole number of super-blocks */
QL_TEST(gguf_quant_writer_reader)
{
    char path[512];
    snprintf(path, sizeof path, "/tmp/qltest_gguf_quant_%ld.gguf", ql_pid());
    enum { R = 3, C = 512 };
    float *x = malloc(R * C * 4), *want = malloc(R * C * 4);
    uint8_t *q = malloc(R * C * 4);
    for (int i = 0; i < R * C; i++) x[i] = sinf((float)i * 0.37f) * (1.0f + (float)(i % 7));
    ql_gguf_writer *w = ql_gguf_writer_new(path, 0);
    int64_t ne[2] = { C, R };
    for (int k = 0; k < NTYPES; k++) CHECK_OK(ql_gguf_writer_add_tensor(w, TYPES[k].name, (ql_ggml_type)TYPES[k].t, 2, ne));
    int64_t odd[2] = { 96, 2 };
    CHECK(ql_gguf_writer_add_tensor(w, "odd", QL_GGML_Q4_K, 2, odd) != QL_OK);
    CHECK(strstr(ql_last_error(), "multiple of 256") != NULL);
    CHECK(ql_gguf_writer_add_tensor(w, "q4_0", (ql_ggml_type)2, 2, ne) == QL_EUNSUPPORTED);
    CHECK_OK(ql_gguf_writer_begin(w));
    for (int k = 0; k < NTYPES; k++) {
        CHECK_OK(ql_gguf_writer_write_f32(w, x, 256));          /* a super-block at a time works */
        CHECK_OK(ql_gguf_writer_write_f32(w, x + 256, R * C - 256));
    }
    CHECK_OK(ql_gguf_writer_close(w));
    ql_gguf_file *f = ql_gguf_open(path);
    CHECK(f != NULL);
    if (!f) { free(x); free(want); free(q); return; }
    for (int k = 0; k < NTYPES; k++) {
        int64_t i = ql_gguf_find_tensor(f, TYPES[k].name);
        CHECK(i >= 0);
        size_t nb = ql_gguf_quantize(TYPES[k].t, x, q, R * C);
        CHECK_EQ_INT(ql_gguf_tensor_at(f, i)->nbytes, nb);
        CHECK(!memcmp(ql_gguf_tensor_data(f, i), q, nb));
        ql_tensor *t = ql_gguf_tensor_f32(f, i);
        CHECK(t && ql_tensor_numel(t) == R * C && t->shape[0] == R);
        ql_gguf_dequantize(TYPES[k].t, q, want, R * C);
        if (t) CHECK(!memcmp(ql_tensor_data(t), want, R * C * 4));
        ql_tensor_release(t);
    }
    ql_gguf_close(f);
    remove(path);
    free(x); free(want); free(q);
}

/*
 * gen_kquants.c — golden blocks for qlora's GGUF quantizers (engine/formats/gguf_quant.c),
 * made by llama.cpp's ggml itself. Run by tests/gen/check_llamacpp.sh, which builds it
 * against a llama.cpp build:
 *
 *   cc -O2 -std=c11 tests/gen/gen_kquants.c -I$LLAMA/ggml/include \
 *      $BUILD/ggml/src/libggml-base.a -lm -lpthread -o /tmp/gen_kquants
 *   /tmp/gen_kquants tests/fixtures/gguf/kquants.safetensors "<llama.cpp version>"
 *
 * Writes a safetensors file: "input", F32 [16, 512], rows chosen to reach every branch
 * of the scale searches (weights-like normals rounded to bf16, zeros, constants, one
 * sign only, outliers, values below the zero threshold, f16-subnormal scales, large
 * values, exact ties, sub-blocks of zeros among normal ones); and per type T of Q4_K,
 * Q5_K, Q6_K, Q5_0, Q5_1, Q8_0 a U8 tensor "T" with the blocks ggml_quantize_chunk
 * writes for the input without an importance matrix (the call llama-quantize makes, so
 * its reference path), plus in the metadata "dequant.T" the FNV-1a-64 of the f32 bytes
 * ggml's to_float gives back from those blocks. tests/c/test_gguf_quant.c checks both.
 * This program is reference tooling: nothing in qlora links ggml.
 */
#include "ggml.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 16
#define COLS 512

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next_u64(void)   /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(void) { return ((next_u64() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }
static float to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static void make_input(float *x)
{
    for (int r = 0; r < ROWS; r++) {
        float *row = x + r * COLS;
        for (int i = 0; i < COLS; i++) {
            float v = 0;
            switch (r) {
            case 0: v = to_bf16((float)(0.02 * normal())); break;                 /* a weight matrix row */
            case 1: v = (float)normal(); break;
            case 2: v = 0; break;                                                 /* all zero */
            case 3: v = 0.5f; break;                                              /* constant */
            case 4: v = -0.25f; break;
            case 5: v = (float)uniform(); break;                                  /* one sign only */
            case 6: v = (float)(-2.0 * uniform()); break;
            case 7: v = (i % 37 == 5) ? (float)(10.0 * normal()) : 0.0f; break;   /* sparse outliers */
            case 8: v = (float)(1e-20 * normal()); break;                         /* below the zero threshold */
            case 9: v = (float)(3e-6 * normal()); break;                          /* f16-subnormal scales */
            case 10: v = (float)(2e3 * normal()); break;                          /* large */
            case 11: v = (float)(normal() * exp(1.5 * normal())); break;          /* heavy tails */
            case 12: v = (i / 32) % 2 ? 0.0f : to_bf16((float)(0.05 * normal())); break;   /* zero sub-blocks */
            case 13: v = (float)((int)(uniform() * 33) - 16) / 16.0f; break;      /* a grid: exact ties */
            case 14: v = (float)(0.02 * normal()); break;                         /* f32 weights */
            case 15: v = (float)((2 * uniform() - 1) * ((i / 16) % 16 == 3 ? 100.0 : 1.0)); break;
            }
            row[i] = v;
        }
    }
}

static uint64_t fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: %s OUT.safetensors VERSION\n", argv[0]); return 2; }
    static const struct { enum ggml_type t; const char *name; } types[] = {
        { GGML_TYPE_Q4_K, "q4_K" }, { GGML_TYPE_Q5_K, "q5_K" }, { GGML_TYPE_Q6_K, "q6_K" },
        { GGML_TYPE_Q5_0, "q5_0" }, { GGML_TYPE_Q5_1, "q5_1" }, { GGML_TYPE_Q8_0, "q8_0" },
    };
    enum { NT = sizeof types / sizeof types[0] };
    static float x[ROWS * COLS], back[ROWS * COLS];
    make_input(x);
    uint8_t *q[NT];
    size_t qn[NT];
    char hdr[8192], meta[2048];
    int mlen = snprintf(meta, sizeof meta, "\"__metadata__\":{\"generator\":\"tests/gen/gen_kquants.c\",\"llama.cpp\":\"%s\"", argv[2]);
    for (int k = 0; k < NT; k++) {
        qn[k] = ggml_row_size(types[k].t, COLS) * ROWS;
        q[k] = calloc(1, qn[k]);
        ggml_quantize_init(types[k].t);
        size_t got = ggml_quantize_chunk(types[k].t, x, q[k], 0, ROWS, COLS, NULL);
        if (got != qn[k]) { fprintf(stderr, "%s: %zu bytes, expected %zu\n", types[k].name, got, qn[k]); return 1; }
        ggml_get_type_traits(types[k].t)->to_float(q[k], back, ROWS * COLS);
        mlen += snprintf(meta + mlen, sizeof meta - mlen, ",\"dequant.%s\":\"%016llx\"", types[k].name,
                         (unsigned long long)fnv(back, sizeof back));
    }
    meta[mlen++] = '}';
    meta[mlen] = 0;
    size_t off = sizeof x;
    int n = snprintf(hdr, sizeof hdr, "{%s,\"input\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}",
                     meta, ROWS, COLS, off);
    for (int k = 0; k < NT; k++) {
        n += snprintf(hdr + n, sizeof hdr - n, ",\"%s\":{\"dtype\":\"U8\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                      types[k].name, qn[k], off, off + qn[k]);
        off += qn[k];
    }
    hdr[n++] = '}';
    while (n % 8) hdr[n++] = ' ';
    FILE *fp = fopen(argv[1], "wb");
    if (!fp) { perror(argv[1]); return 1; }
    uint64_t hl = (uint64_t)n;
    fwrite(&hl, 8, 1, fp);
    fwrite(hdr, 1, (size_t)n, fp);
    fwrite(x, 1, sizeof x, fp);
    for (int k = 0; k < NT; k++) { fwrite(q[k], 1, qn[k], fp); free(q[k]); }
    if (fclose(fp)) { perror(argv[1]); return 1; }
    printf("%s: %zu bytes of blocks for %d types\n", argv[1], off - sizeof x, (int)NT);
    return 0;
}

/*
 * test_gguf.c — the GGUF writer and reader: every metadata type (scalars,
 * strings, arrays of each) and tensor type (F32, F16, BF16, Q8_0) round-trips;
 * Q8_0 follows ggml's rounding rules (checked on hand-made blocks here; byte
 * equality with gguf-py's quantizer on real weights is in tests/lua/test_gguf.lua
 * against tests/fixtures/gguf); alignment; atomic writes; and corrupted files
 * (truncations, bad counts, types, offsets, duplicates) rejected with a message
 * naming the file.
 */
#include "qltest.h"
#include "gguf.h"
#include "platform.h"

#include <stdlib.h>
#include <string.h>

static char tmp_path[512];
static const char *tmpfile_name(const char *base)
{
    snprintf(tmp_path, sizeof tmp_path, "/tmp/qltest_gguf_%ld_%s", ql_pid(), base);
    return tmp_path;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, fp);
    fclose(fp);
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    fwrite(b, 1, n, fp);
    fclose(fp);
}

/* writes one file with every metadata type and four tensors */
static ql_status write_sample(const char *path, uint32_t alignment, float *src, int64_t rows, int64_t cols)
{
    ql_gguf_writer *w = ql_gguf_writer_new(path, alignment);
    if (!w) return QL_EINVAL;
    uint8_t u8 = 200; int8_t i8 = -100; uint16_t u16 = 60000; int16_t i16 = -30000;
    uint32_t u32 = 4000000000u; int32_t i32 = -2000000000; float f32 = 1.5f; uint8_t b = 1;
    uint64_t u64 = 18000000000000000000ull; int64_t i64 = -9000000000000000000ll; double f64 = 3.141592653589793;
    ql_gguf_writer_kv(w, "general.architecture", QL_GGUF_STR, "llama", 5);
    ql_gguf_writer_kv(w, "t.u8", QL_GGUF_U8, &u8, 0);
    ql_gguf_writer_kv(w, "t.i8", QL_GGUF_I8, &i8, 0);
    ql_gguf_writer_kv(w, "t.u16", QL_GGUF_U16, &u16, 0);
    ql_gguf_writer_kv(w, "t.i16", QL_GGUF_I16, &i16, 0);
    ql_gguf_writer_kv(w, "t.u32", QL_GGUF_U32, &u32, 0);
    ql_gguf_writer_kv(w, "t.i32", QL_GGUF_I32, &i32, 0);
    ql_gguf_writer_kv(w, "t.f32", QL_GGUF_F32, &f32, 0);
    ql_gguf_writer_kv(w, "t.bool", QL_GGUF_BOOL, &b, 0);
    ql_gguf_writer_kv(w, "t.u64", QL_GGUF_U64, &u64, 0);
    ql_gguf_writer_kv(w, "t.i64", QL_GGUF_I64, &i64, 0);
    ql_gguf_writer_kv(w, "t.f64", QL_GGUF_F64, &f64, 0);
    ql_gguf_writer_kv(w, "t.str", QL_GGUF_STR, "h\xc3\xa9llo\0x", 8);   /* UTF-8 and an inner NUL */
    ql_gguf_writer_kv(w, "t.empty", QL_GGUF_STR, "", 0);
    int32_t ai[3] = { -1, 0, 7 };
    float af[2] = { 0.25f, -2.0f };
    uint8_t ab[3] = { 1, 0, 1 };
    int64_t al[1] = { INT64_MIN };
    ql_gguf_writer_kv_array(w, "t.arr_i32", QL_GGUF_I32, 3, ai);
    ql_gguf_writer_kv_array(w, "t.arr_f32", QL_GGUF_F32, 2, af);
    ql_gguf_writer_kv_array(w, "t.arr_bool", QL_GGUF_BOOL, 3, ab);
    ql_gguf_writer_kv_array(w, "t.arr_i64", QL_GGUF_I64, 1, al);
    ql_gguf_writer_kv_array(w, "t.arr_empty", QL_GGUF_U8, 0, NULL);
    const char *ss[3] = { "a", "", "\xc4\xa0the" };
    ql_gguf_writer_kv_str_array(w, "t.arr_str", 3, ss, NULL);
    int64_t ne[2] = { cols, rows };
    int64_t ne1[1] = { cols };
    ql_gguf_writer_add_tensor(w, "w.f32", QL_GGML_F32, 2, ne);
    ql_gguf_writer_add_tensor(w, "w.f16", QL_GGML_F16, 2, ne);
    ql_gguf_writer_add_tensor(w, "w.bf16", QL_GGML_BF16, 2, ne);
    ql_gguf_writer_add_tensor(w, "w.q8_0", QL_GGML_Q8_0, 2, ne);
    ql_gguf_writer_add_tensor(w, "norm", QL_GGML_F32, 1, ne1);
    ql_status s = ql_gguf_writer_begin(w);
    int64_t n = rows * cols;
    for (int k = 0; s == QL_OK && k < 4; k++) {
        /* first tensor in two uneven pieces, the others whole */
        if (k == 0) {
            s = ql_gguf_writer_write_f32(w, src, 3);
            if (s == QL_OK) s = ql_gguf_writer_write_f32(w, src + 3, (size_t)(n - 3));
        } else s = ql_gguf_writer_write_f32(w, src, (size_t)n);
    }
    if (s == QL_OK) s = ql_gguf_writer_write_f32(w, src, (size_t)cols);
    if (s != QL_OK) { ql_gguf_writer_abort(w); return s; }
    return ql_gguf_writer_close(w);
}

static float *sample_data(int64_t n)
{
    float *x = malloc((size_t)n * sizeof *x);
    uint32_t st = 12345;
    for (int64_t i = 0; i < n; i++) {
        st = st * 1664525u + 1013904223u;
        x[i] = ((float)(int32_t)st / 2147483648.0f) * 3.0f;
    }
    x[5] = 0.0f; x[6] = -1e-9f; x[7] = 70000.0f;   /* f16 overflow, tiny values */
    if (n >= 96) for (int j = 64; j < 96; j++) x[j] = 0.0f;   /* an all-zero Q8_0 block */
    return x;
}

QL_TEST(gguf_roundtrip_every_type)
{
    const int64_t rows = 6, cols = 64, n = rows * cols;
    float *x = sample_data(n);
    const char *path = tmpfile_name("rt.gguf");
    CHECK_OK(write_sample(path, 0, x, rows, cols));
    ql_gguf_file *f = ql_gguf_open(path);
    CHECK_MSG(f, "open: %s", ql_last_error());
    if (!f) { free(x); return; }
    CHECK_EQ_INT(ql_gguf_version(f), 3);
    CHECK_EQ_INT(ql_gguf_alignment(f), 32);
    CHECK_EQ_INT(ql_gguf_kv_count(f), 20);
    const ql_gguf_kv *kv;
    uint64_t len;
    CHECK((kv = ql_gguf_find(f, "t.u8")) && kv->type == QL_GGUF_U8 && ql_gguf_kv_int(kv, 0) == 200);
    CHECK((kv = ql_gguf_find(f, "t.i8")) && kv->type == QL_GGUF_I8 && ql_gguf_kv_int(kv, 0) == -100);
    CHECK((kv = ql_gguf_find(f, "t.u16")) && kv->type == QL_GGUF_U16 && ql_gguf_kv_int(kv, 0) == 60000);
    CHECK((kv = ql_gguf_find(f, "t.i16")) && kv->type == QL_GGUF_I16 && ql_gguf_kv_int(kv, 0) == -30000);
    CHECK((kv = ql_gguf_find(f, "t.u32")) && kv->type == QL_GGUF_U32 && ql_gguf_kv_int(kv, 0) == 4000000000ll);
    CHECK((kv = ql_gguf_find(f, "t.i32")) && kv->type == QL_GGUF_I32 && ql_gguf_kv_int(kv, 0) == -2000000000);
    CHECK((kv = ql_gguf_find(f, "t.f32")) && kv->type == QL_GGUF_F32 && ql_gguf_kv_float(kv, 0) == 1.5);
    CHECK((kv = ql_gguf_find(f, "t.bool")) && kv->type == QL_GGUF_BOOL && ql_gguf_kv_int(kv, 0) == 1);
    CHECK((kv = ql_gguf_find(f, "t.u64")) && kv->type == QL_GGUF_U64 && ql_gguf_kv_uint(kv, 0) == 18000000000000000000ull);
    CHECK((kv = ql_gguf_find(f, "t.i64")) && kv->type == QL_GGUF_I64 && ql_gguf_kv_int(kv, 0) == -9000000000000000000ll);
    CHECK((kv = ql_gguf_find(f, "t.f64")) && kv->type == QL_GGUF_F64 && ql_gguf_kv_float(kv, 0) == 3.141592653589793);
    CHECK((kv = ql_gguf_find(f, "t.str")) && kv->type == QL_GGUF_STR);
    const char *s = kv ? ql_gguf_kv_str(kv, 0, &len) : NULL;
    CHECK(s && len == 8 && !memcmp(s, "h\xc3\xa9llo\0x", 8));
    CHECK((kv = ql_gguf_find(f, "t.empty")) && kv->type == QL_GGUF_STR && kv->n == 0);
    CHECK((kv = ql_gguf_find(f, "t.arr_i32")) && kv->type == QL_GGUF_ARR && kv->arr_type == QL_GGUF_I32 && kv->n == 3 &&
          ql_gguf_kv_int(kv, 0) == -1 && ql_gguf_kv_int(kv, 2) == 7);
    CHECK((kv = ql_gguf_find(f, "t.arr_f32")) && kv->arr_type == QL_GGUF_F32 && ql_gguf_kv_float(kv, 1) == -2.0);
    CHECK((kv = ql_gguf_find(f, "t.arr_bool")) && kv->arr_type == QL_GGUF_BOOL && ql_gguf_kv_int(kv, 1) == 0 && ql_gguf_kv_int(kv, 2) == 1);
    CHECK((kv = ql_gguf_find(f, "t.arr_i64")) && kv->arr_type == QL_GGUF_I64 && ql_gguf_kv_int(kv, 0) == INT64_MIN);
    CHECK((kv = ql_gguf_find(f, "t.arr_empty")) && kv->arr_type == QL_GGUF_U8 && kv->n == 0);
    CHECK((kv = ql_gguf_find(f, "t.arr_str")) && kv->arr_type == QL_GGUF_STR && kv->n == 3);
    if (kv) {
        s = ql_gguf_kv_str(kv, 0, &len); CHECK(s && len == 1 && s[0] == 'a');
        s = ql_gguf_kv_str(kv, 1, &len); CHECK(s && len == 0);
        s = ql_gguf_kv_str(kv, 2, &len); CHECK(s && len == 5 && !memcmp(s, "\xc4\xa0the", 5));
        CHECK(ql_gguf_kv_str(kv, 3, &len) == NULL);
    }
    CHECK(ql_gguf_find(f, "nope") == NULL);
    CHECK_EQ_INT(ql_gguf_tensor_count(f), 5);
    static const uint32_t types[4] = { QL_GGML_F32, QL_GGML_F16, QL_GGML_BF16, QL_GGML_Q8_0 };
    for (int k = 0; k < 5; k++) {
        const ql_gguf_tensor_info *t = ql_gguf_tensor_at(f, k);
        CHECK(t->offset % 32 == 0);
        CHECK(((uintptr_t)ql_gguf_tensor_data(f, k) - (uintptr_t)ql_gguf_tensor_data(f, 0)) % 32 == 0);
        if (k == 4) { CHECK(t->ndim == 1 && t->ne[0] == cols); continue; }
        CHECK(t->type == types[k] && t->ndim == 2 && t->ne[0] == cols && t->ne[1] == rows);
        ql_tensor *y = ql_gguf_tensor_f32(f, k);
        CHECK_MSG(y, "%s", ql_last_error());
        if (!y) continue;
        CHECK(y->ndim == 2 && y->shape[0] == rows && y->shape[1] == cols);
        const float *yy = ql_tensor_data(y);
        for (int64_t i = 0; i < n; i++) {
            float want = x[i];
            if (k == 1) want = ql_f16_to_f32(ql_f32_to_f16(x[i]));
            if (k == 2) want = ql_bf16_to_f32(ql_f32_to_bf16(x[i]));
            if (k == 3) {   /* within half a step of the block's scale */
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[i / 32 * 32 + j]));
                float d = ql_f16_to_f32(ql_f32_to_f16(amax / 127.0f));
                if (!(fabsf(yy[i] - x[i]) <= d * 0.5f + amax * 1e-3f)) { CHECK_MSG(0, "q8_0 element %lld: %g vs %g", (long long)i, yy[i], x[i]); break; }
                continue;
            }
            if (memcmp(&yy[i], &want, 4)) { CHECK_MSG(0, "tensor %d element %lld: %g vs %g", k, (long long)i, yy[i], want); break; }
        }
        ql_tensor_release(y);
    }
    CHECK(ql_gguf_find_tensor(f, "w.q8_0") == 3 && ql_gguf_find_tensor(f, "x") == -1);
    ql_gguf_close(f);
    remove(path);
    free(x);
}

QL_TEST(gguf_q8_0_rules)
{
    /* ggml: d = amax/127 as f16; q = roundf(x/d): halves away from zero; zeros give d = 0 */
    float x[64];
    for (int j = 0; j < 32; j++) x[j] = 0.0f;
    x[0] = 127.0f; x[1] = 2.5f; x[2] = -2.5f; x[3] = 0.5f; x[4] = -0.5f; x[5] = -127.0f; x[6] = 1.49f;
    for (int j = 32; j < 64; j++) x[j] = 0.0f;
    uint8_t out[68];
    ql_gguf_quantize_q8_0(x, out, 64);
    uint16_t d;
    memcpy(&d, out, 2);
    CHECK_EQ_INT(d, 0x3c00);   /* 1.0 in f16 */
    CHECK_EQ_INT((int8_t)out[2], 127);
    CHECK_EQ_INT((int8_t)out[3], 3);
    CHECK_EQ_INT((int8_t)out[4], -3);
    CHECK_EQ_INT((int8_t)out[5], 1);
    CHECK_EQ_INT((int8_t)out[6], -1);
    CHECK_EQ_INT((int8_t)out[7], -127);
    CHECK_EQ_INT((int8_t)out[8], 1);
    memcpy(&d, out + 34, 2);
    CHECK_EQ_INT(d, 0);
    for (int j = 0; j < 32; j++) CHECK_EQ_INT(out[36 + j], 0);
}

QL_TEST(gguf_alignment_and_atomic)
{
    const int64_t rows = 2, cols = 32;
    float *x = sample_data(rows * cols);
    const char *path = tmpfile_name("al.gguf");
    CHECK_OK(write_sample(path, 64, x, rows, cols));
    ql_gguf_file *f = ql_gguf_open(path);
    CHECK_MSG(f, "%s", ql_last_error());
    if (f) {
        CHECK_EQ_INT(ql_gguf_alignment(f), 64);
        const ql_gguf_kv *kv = ql_gguf_find(f, "general.alignment");
        CHECK(kv && kv->type == QL_GGUF_U32 && ql_gguf_kv_int(kv, 0) == 64);
        CHECK(ql_gguf_data_offset(f) % 64 == 0);
        for (int k = 0; k < 5; k++) CHECK(ql_gguf_tensor_at(f, k)->offset % 64 == 0);
        ql_gguf_close(f);
    }
    CHECK(ql_gguf_writer_new(path, 48) == NULL);
    /* a writer given too little data leaves the old file untouched and no temporary */
    int64_t before = ql_file_size(path);
    ql_gguf_writer *w = ql_gguf_writer_new(path, 0);
    int64_t ne[1] = { 32 };
    CHECK_OK(ql_gguf_writer_add_tensor(w, "a", QL_GGML_F32, 1, ne));
    CHECK_OK(ql_gguf_writer_begin(w));
    CHECK_OK(ql_gguf_writer_write_f32(w, x, 16));
    CHECK(ql_gguf_writer_close(w) == QL_EINVAL);
    CHECK(strstr(ql_last_error(), "got 64 of its 128 bytes") != NULL);
    CHECK_EQ_INT(ql_file_size(path), before);
    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, ql_pid());
    CHECK(!ql_file_exists(tmpname));
    /* misuse is refused with a message */
    w = ql_gguf_writer_new(path, 0);
    uint32_t v = 1;
    CHECK_OK(ql_gguf_writer_kv(w, "k", QL_GGUF_U32, &v, 0));
    CHECK(ql_gguf_writer_kv(w, "k", QL_GGUF_U32, &v, 0) == QL_EINVAL);
    /* general.alignment fixes the layout: a u32 power of two only, whatever the call */
    uint32_t al[1] = { 64 }, odd = 48;
    CHECK(ql_gguf_writer_kv_array(w, "general.alignment", QL_GGUF_U32, 1, al) == QL_EINVAL);
    CHECK(ql_gguf_writer_kv(w, "general.alignment", QL_GGUF_U64, &(uint64_t){ 64 }, 0) == QL_EINVAL);
    CHECK(ql_gguf_writer_kv(w, "general.alignment", QL_GGUF_U32, &odd, 0) == QL_EINVAL);
    CHECK(ql_gguf_writer_add_tensor(w, "q", QL_GGML_Q8_0, 1, (int64_t[]){ 33 }) == QL_EINVAL);
    CHECK(ql_gguf_writer_add_tensor(w, "0123456789012345678901234567890123456789012345678901234567890123",
                                    QL_GGML_F32, 1, ne) == QL_EINVAL);
    CHECK_OK(ql_gguf_writer_add_tensor(w, "t", QL_GGML_F32, 1, ne));
    CHECK(ql_gguf_writer_add_tensor(w, "t", QL_GGML_F32, 1, ne) == QL_EINVAL);
    CHECK_OK(ql_gguf_writer_begin(w));
    CHECK(ql_gguf_writer_kv(w, "late", QL_GGUF_U32, &v, 0) == QL_EINVAL);
    CHECK(ql_gguf_writer_write_f32(w, x, 64) == QL_EINVAL);   /* more than declared */
    ql_gguf_writer_abort(w);
    remove(path);
    free(x);
}

/* a corrupted copy of a good file must be refused, naming the file */
static void expect_bad(const uint8_t *good, size_t n, size_t at, const void *bytes, size_t k, size_t cut,
                       const char *want)
{
    uint8_t *b = malloc(n);
    memcpy(b, good, n);
    if (bytes) memcpy(b + at, bytes, k);
    const char *path = tmpfile_name("bad.gguf");
    spit(path, b, cut ? cut : n);
    ql_gguf_file *f = ql_gguf_open(path);
    CHECK_MSG(!f, "a corrupt file (%s) was accepted", want);
    if (f) ql_gguf_close(f);
    else {
        CHECK_MSG(strstr(ql_last_error(), path) != NULL, "message does not name the file: %s", ql_last_error());
        CHECK_MSG(strstr(ql_last_error(), want) != NULL, "message '%s' lacks '%s'", ql_last_error(), want);
    }
    remove(path);
    free(b);
}

QL_TEST(gguf_reader_rejects_corrupt_files)
{
    float *x = sample_data(64);
    const char *path = tmpfile_name("good.gguf");
    ql_gguf_writer *w = ql_gguf_writer_new(path, 0);
    uint32_t v = 7;
    ql_gguf_writer_kv(w, "a", QL_GGUF_U32, &v, 0);
    const char *ss[2] = { "x", "yz" };
    ql_gguf_writer_kv_str_array(w, "c", 2, ss, NULL);
    int64_t ne[2] = { 32, 2 };
    ql_gguf_writer_add_tensor(w, "w", QL_GGML_F16, 2, ne);
    ql_gguf_writer_begin(w);
    ql_gguf_writer_write_f32(w, x, 64);
    CHECK_OK(ql_gguf_writer_close(w));
    size_t n = 0;
    char p2[512];
    snprintf(p2, sizeof p2, "%s", path);
    uint8_t *g = slurp(p2, &n);
    ql_gguf_file *f = ql_gguf_open(p2);
    CHECK_MSG(f, "%s", ql_last_error());
    if (f) ql_gguf_close(f);
    /* layout: 24 header | kv "a": 8+1+4+4 (24..41) | kv "c": 8+1+4 + 4+8 + (8+1) + (8+2) (41..85)
       | tensor info: 8+1 + 4 + 16 + 4 + 8 (85..126) | padding | data at 128: 128 bytes */
    CHECK_EQ_INT(n, 256);
    uint32_t u32;
    uint64_t u64;
    expect_bad(g, n, 0, "GGUX", 4, 0, "not a GGUF file");
    u32 = 9; expect_bad(g, n, 4, &u32, 4, 0, "version 9");
    u32 = 0x03000000; expect_bad(g, n, 4, &u32, 4, 0, "big-endian");
    u64 = 1ull << 40; expect_bad(g, n, 8, &u64, 8, 0, "tensor count");
    u64 = 1ull << 40; expect_bad(g, n, 16, &u64, 8, 0, "key/value count");
    u64 = 1000; expect_bad(g, n, 24, &u64, 8, 0, "key runs past the end");
    u32 = 13; expect_bad(g, n, 33, &u32, 4, 0, "unknown value type 13");
    expect_bad(g, n, 32, "c", 1, 0, "appears twice");
    u32 = 99; expect_bad(g, n, 54, &u32, 4, 0, "unknown array element type");
    u64 = 1ull << 60; expect_bad(g, n, 58, &u64, 8, 0, "array runs past");
    u64 = 1ull << 50; expect_bad(g, n, 66, &u64, 8, 0, "string value runs past");
    u32 = 5; expect_bad(g, n, 94, &u32, 4, 0, "5 dimensions");
    u32 = 77; expect_bad(g, n, 114, &u32, 4, 0, "unknown ggml type 77");
    u32 = 12; expect_bad(g, n, 114, &u32, 4, 0, "blocks");
    u64 = 8; expect_bad(g, n, 118, &u64, 8, 0, "not aligned");
    u64 = 64; expect_bad(g, n, 118, &u64, 8, 0, "runs past the end");
    expect_bad(g, n, 0, NULL, 0, 200, "truncated");
    expect_bad(g, n, 0, NULL, 0, 100, "runs past the end");
    expect_bad(g, n, 0, NULL, 0, 10, "too short");
    free(g);
    remove(p2);
    free(x);
}

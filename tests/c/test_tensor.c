/*
 * test_tensor.c — engine-level checks of the tensor core that need no peer:
 * Philox known-answer vectors, view/stride rules, matmul against a scalar
 * double-precision reference on strided inputs, thread splitting, error codes.
 * (Numerics against PyTorch live in tests/lua/test_tensor.lua.)
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "platform.h"
#include "rng.h"
#include "safetensors.h"
#include "tensor.h"

void ql_cpu_matmul_ref(float *c, const float *a, const float *b, int64_t M, int64_t K, int64_t N);

QL_TEST(philox_known_answers)
{
    /* Random123 kat_vectors, philox4x32 10 rounds */
    ql_u32x4 r = ql_philox(0, 0, 0);
    CHECK_EQ_INT(r.x, 0x6627e8d5u); CHECK_EQ_INT(r.y, 0xe169c58du);
    CHECK_EQ_INT(r.z, 0xbc57ac4cu); CHECK_EQ_INT(r.w, 0x9b00dbd8u);
    r = ql_philox(0xffffffffffffffffull, 0xffffffffffffffffull, 0xffffffffffffffffull);
    CHECK_EQ_INT(r.x, 0x408f276du); CHECK_EQ_INT(r.y, 0x41c83b0eu);
    CHECK_EQ_INT(r.z, 0xa20bc7c6u); CHECK_EQ_INT(r.w, 0x6d5451fdu);
    r = ql_philox(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull, 0x0370734413198a2eull);
    CHECK_EQ_INT(r.x, 0xd16cfe09u); CHECK_EQ_INT(r.y, 0x94fdccebu);
    CHECK_EQ_INT(r.z, 0x5001e420u); CHECK_EQ_INT(r.w, 0x24126ea1u);
}

QL_TEST(deterministic_log_cos_accuracy)
{
    double worst = 0;
    for (int i = 1; i <= 100000; i++) {
        double x = i / 100000.0, e = fabs(ql_det_log(x) - log(x));
        if (e > worst) worst = e;
        double c = fabs(ql_det_cos2pi(x - 1e-5) - cos(2 * 3.14159265358979323846 * (x - 1e-5)));
        if (c > worst) worst = c;
    }
    CHECK_MSG(worst < 1e-14, "worst error %g", worst);
}

static ql_tensor *randn2(int64_t r, int64_t c, uint64_t seed)
{
    int64_t s[2] = { r, c };
    return ql_tensor_rand(QL_F32, 2, s, 1, seed, 0, ql_cpu());
}

QL_TEST(matmul_strided_against_reference)
{
    int64_t dims[][3] = { { 1, 1, 1 }, { 7, 13, 5 }, { 64, 33, 17 }, { 3, 0, 4 } };
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        int64_t M = dims[d][0], K = dims[d][1], N = dims[d][2];
        ql_tensor *a = randn2(M, K, 1), *bt = randn2(N, K, 2);
        ql_tensor *b = ql_tensor_transpose(bt, 0, 1);          /* [K, N] strided */
        ql_tensor *c = ql_matmul(a, b);
        CHECK(c != NULL);
        if (!c) { ql_tensor_release(a); ql_tensor_release(bt); ql_tensor_release(b); continue; }
        ql_tensor *bc = ql_tensor_contiguous(b);
        float *ref = malloc(sizeof(float) * (size_t)(M * N + 1));
        ql_cpu_matmul_ref(ref, ql_tensor_data(a), ql_tensor_data(bc), M, K, N);
        CHECK_ALLCLOSE(ql_tensor_data(c), ref, M * N, 1e-5, 1e-5);
        free(ref);
        ql_tensor_release(a); ql_tensor_release(bt); ql_tensor_release(b);
        ql_tensor_release(bc); ql_tensor_release(c);
    }
}

QL_TEST(view_rules)
{
    int64_t s3[3] = { 2, 3, 4 }, s2[2] = { 6, 4 }, bad[2] = { 5, 5 }, inf[2] = { -1, 2 };
    ql_tensor *t = ql_tensor_full(QL_F32, 3, s3, 1, ql_cpu());
    ql_tensor *v = ql_tensor_view(t, 2, s2);
    CHECK(v && v->storage == t->storage);
    ql_tensor *w = ql_tensor_view(t, 2, bad);
    CHECK(w == NULL);
    CHECK(strstr(ql_last_error(), "cannot view") != NULL);
    ql_tensor *x = ql_tensor_view(t, 2, inf);
    CHECK(x && x->shape[0] == 12);
    /* a transposed tensor cannot be flattened as a view, only reshaped (copy) */
    ql_tensor *tt = ql_tensor_transpose(t, 0, 2);
    int64_t flat = 24;
    CHECK(ql_tensor_view(tt, 1, &flat) == NULL);
    ql_tensor *r = ql_tensor_reshape(tt, 1, &flat);
    CHECK(r && r->storage != t->storage);
    /* a slice along the last dim keeps merging the leading dims possible */
    ql_tensor *sl = ql_tensor_slice(t, 2, 1, 3, 1);           /* [2,3,2] */
    int64_t m2[2] = { 6, 2 };
    ql_tensor *sv = ql_tensor_view(sl, 2, m2);
    CHECK(sv != NULL);
    ql_tensor_release(t); ql_tensor_release(v); ql_tensor_release(x); ql_tensor_release(tt);
    ql_tensor_release(r); ql_tensor_release(sl); ql_tensor_release(sv);
}

static void count_range(void *arg, int64_t b, int64_t e)
{
    int *hits = arg;
    for (int64_t i = b; i < e; i++) __atomic_add_fetch(&hits[i], 1, __ATOMIC_RELAXED);
}

QL_TEST(parallel_for_covers_each_index_once)
{
    int n = 100003;
    int *hits = calloc((size_t)n, sizeof(int));
    ql_parallel_for(n, 7, count_range, hits);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += hits[i] != 1;
    CHECK_EQ_INT(bad, 0);
    free(hits);
}

QL_TEST(errors_are_codes_not_crashes)
{
    int64_t s[1] = { -3 };
    CHECK(ql_tensor_new(QL_F32, 1, s, ql_cpu()) == NULL);
    CHECK(strstr(ql_last_error(), "negative") != NULL);
    int64_t huge[4] = { 1ll << 20, 1ll << 20, 1ll << 20, 1ll << 20 };
    CHECK(ql_tensor_new(QL_F32, 4, huge, ql_cpu()) == NULL);
    ql_device d;
    CHECK(ql_device_parse("tpu", &d) == QL_EINVAL);
#ifndef QL_CUDA
    int64_t one = 1;
    CHECK(ql_tensor_new(QL_F32, 1, &one, ql_cuda(0)) == NULL);
    CHECK(strstr(ql_last_error(), "without CUDA") != NULL);
#endif
    CHECK(ql_st_open("/nonexistent/file.safetensors") == NULL);
    CHECK(strstr(ql_last_error(), "/nonexistent/file.safetensors") != NULL);
}

QL_TEST(atomic_file_abort_leaves_nothing)
{
    char path[] = "/tmp/qltest_atomicXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("old", f);
    fclose(f);
    ql_atomic_file af;
    CHECK_OK(ql_atomic_open(&af, path));
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", af.tmp);
    fputs("half-written", af.fp);
    ql_atomic_abort(&af);
    CHECK(!ql_file_exists(tmp));
    f = fopen(path, "r");
    char buf[16] = { 0 };
    CHECK(f && fgets(buf, sizeof buf, f));
    CHECK(strcmp(buf, "old") == 0);
    if (f) fclose(f);
    remove(path);
}

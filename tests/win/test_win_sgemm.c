/*
 * test_win_sgemm.c — qlwin_sgemm, the Windows test build's stand-in for
 * OpenBLAS (qlwin_sgemm.h), on every layout the engine's matmul passes
 * (transposed or not, padded leading dimensions, column-major, alpha, beta,
 * empty sizes) against a double-precision reference; built natively
 * (tests/win/run.sh --native) it is also held against OpenBLAS's cblas_sgemm.
 */
#include "qltest.h"

#include <cblas.h>
#include <stdlib.h>

#include "qlwin_sgemm.h"
#include "rng.h"

/* the reference, on the same arguments: element (i, j) of the row-major result */
static double ref_at(int ta, int tb, int K, const float *A, int lda, const float *B, int ldb, int i, int j)
{
    double acc = 0;
    for (int k = 0; k < K; k++)
        acc += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (double)(tb ? B[j * ldb + k] : B[k * ldb + j]);
    return acc;
}

static void fill(float *x, int n, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        ql_u32x4 r = ql_philox(seed, (uint64_t)i, 0);
        x[i] = (float)((double)r.x / 4294967296.0 * 2 - 1);
    }
}

QL_TEST(win_sgemm_layouts)
{
    int dims[][3] = { { 1, 1, 1 }, { 7, 13, 5 }, { 33, 17, 64 }, { 3, 4, 0 }, { 0, 5, 3 }, { 16, 1, 9 } };
    int worst_case = -1;
    double worst = 0;
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int pad = 0; pad < 2; pad++) {
                    int M = dims[d][0], N = dims[d][1], K = dims[d][2];
                    int lda = (ta ? M : K) + pad * 3, ldb = (tb ? K : N) + pad * 5, ldc = N + pad * 2;
                    int ra = ta ? K : M, rb = tb ? N : K;
                    float *A = malloc(sizeof(float) * (size_t)(ra * lda + 1));
                    float *B = malloc(sizeof(float) * (size_t)(rb * ldb + 1));
                    float *C = malloc(sizeof(float) * (size_t)(M * ldc + 1));
                    float *C0 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
                    fill(A, ra * lda, 1 + d);
                    fill(B, rb * ldb, 2 + d);
                    fill(C0, M * ldc, 3 + d);
                    float alpha = pad ? 0.5f : 1.0f, beta = pad ? -2.0f : 0.0f;
                    for (int i = 0; i < M * ldc; i++) C[i] = beta == 0 ? INFINITY : C0[i];   /* beta 0 never reads C */
                    qlwin_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double r = alpha * ref_at(ta, tb, K, A, lda, B, ldb, i, j) + (beta == 0 ? 0 : beta * C0[i * ldc + j]);
                            double e = fabs(C[i * ldc + j] - r) / (1 + fabs(r));
                            if (!(e <= worst)) { worst = e; worst_case = (int)d * 8 + ta * 4 + tb * 2 + pad; }
                        }
#ifdef QLWIN_HAVE_OPENBLAS
                    /* against OpenBLAS, on the same inputs; only the summation order differs */
                    float *C2 = malloc(sizeof(float) * (size_t)(M * ldc + 1));
                    for (int i = 0; i < M * ldc; i++) C2[i] = beta == 0 ? 0 : C0[i];
                    if (M && N)
                        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                                    M, N, K, alpha, A, lda, B, ldb, beta, C2, ldc);
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++)
                            CHECK_MSG(fabs(C[i * ldc + j] - C2[i * ldc + j]) <= 1e-5 * (1 + fabs(C2[i * ldc + j])),
                                      "case %zu/%d%d%d (%d,%d): %.9g vs OpenBLAS %.9g", d, ta, tb, pad, i, j,
                                      C[i * ldc + j], C2[i * ldc + j]);
                    free(C2);
#endif
                    free(A); free(B); free(C); free(C0);
                }
    /* one rounding of an exact double sum: within a float ulp or two of the reference */
    CHECK_MSG(worst < 1e-6, "worst relative error %g in case %d", worst, worst_case);
}

QL_TEST(win_sgemm_column_major)
{
    /* column-major A (2x3) times B (3x2): the same numbers as row-major A^T ... */
    float A[6] = { 1, 4, 2, 5, 3, 6 };            /* columns of [[1,2,3],[4,5,6]] */
    float B[6] = { 7, 9, 11, 8, 10, 12 };         /* columns of [[7,8],[9,10],[11,12]] */
    float C[4] = { 0 };
    qlwin_sgemm(102, 111, 111, 2, 2, 3, 1.0f, A, 2, B, 3, 0.0f, C, 2);
    /* [[58, 64], [139, 154]] stored by columns */
    CHECK(C[0] == 58 && C[1] == 139 && C[2] == 64 && C[3] == 154);
}

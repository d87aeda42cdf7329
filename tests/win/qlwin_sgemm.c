/*
 * qlwin_sgemm.c — C = alpha op(A) op(B) + beta C in plain C (qlwin_sgemm.h).
 * Each element is a double-precision dot product rounded once, so it stays
 * within a few float ulps of OpenBLAS (which sums in float, blocked) and of
 * the engine's double reference; speed is not the point.
 */
#include "qlwin_sgemm.h"

#include <stddef.h>

enum { ROW_MAJOR = 101, COL_MAJOR = 102, NO_TRANS = 111 };

void qlwin_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    if (order == COL_MAJOR) {
        /* column-major C is row-major C^T = op(B)^T op(A)^T: the same call with A and B swapped */
        qlwin_sgemm(ROW_MAJOR, transb, transa, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    int ta = transa != NO_TRANS, tb = transb != NO_TRANS;
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * (size_t)ldc;
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * (size_t)lda + (size_t)i] : A[(size_t)i * (size_t)lda + (size_t)k];
                float b = tb ? B[(size_t)j * (size_t)ldb + (size_t)k] : B[(size_t)k * (size_t)ldb + (size_t)j];
                acc += (double)a * (double)b;
            }
            /* beta 0: C is not read (it may hold garbage or NaN), as BLAS specifies */
            c[j] = beta == 0.0f ? (float)(alpha * acc) : (float)(alpha * acc + (double)beta * c[j]);
        }
    }
}

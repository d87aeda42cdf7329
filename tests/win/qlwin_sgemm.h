/*
 * qlwin_sgemm.h — the one BLAS routine the engine's CPU backend calls
 * (cblas_sgemm), as plain C: the Windows test build's stand-in for OpenBLAS,
 * which Debian does not ship for MinGW. The arguments are cblas_sgemm's with
 * its enums as int (CblasRowMajor 101, CblasColMajor 102, CblasNoTrans 111,
 * CblasTrans 112, CblasConjTrans 113), so this header and a real <cblas.h> can
 * be included together when the two are compared (test_win_sgemm.c).
 */
#ifndef QLWIN_SGEMM_H
#define QLWIN_SGEMM_H

void qlwin_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

#endif

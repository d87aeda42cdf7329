/*
 * gemm.cu — the decoder's matrix products on raw device pointers through
 * cuBLASLt (qlk_gemm in decoder_kernels.cuh), with the matmul descriptors,
 * layouts and the heuristic's algorithm cached per shape.
 *
 * Row-major C [M, N] = alpha op(A) op(B) + beta C is the column-major
 * C^T = alpha op(B)^T op(A)^T + beta C^T, so cuBLASLt's first operand is our
 * B and its second our A; a row-major matrix read as column-major is its own
 * transpose, which turns each "transposed" flag into the other.
 *
 * Types: A and B bf16, C bf16 or f32, CUBLAS_COMPUTE_32F with f32 scales.
 * One cache per process (a small open-addressed table under a mutex); the
 * handle and the 32 MiB workspace are matmul_cublaslt.cu's.
 */
#include "decoder_kernels.cuh"

#include <cublasLt.h>
#include <mutex>

ql_status ql_cuda_lt(int dev, cublasLtHandle_t *h, void **ws, size_t *ws_size);   /* matmul_cublaslt.cu */

struct gemm_key {
    int dev, ta, tb, cdt, beta0;
    int64_t M, N, K, lda, ldb, ldc;
    uint32_t align;              /* min alignment of the four pointers, bytes */
};

struct gemm_plan {
    int used;
    gemm_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    size_t ws_needed;
};

#define GEMM_CACHE 512
static gemm_plan g_plans[GEMM_CACHE];
static std::mutex g_mu;

static bool key_eq(const gemm_key &a, const gemm_key &b) { return memcmp(&a, &b, sizeof a) == 0; }

static uint64_t key_hash(const gemm_key &k)
{
    const unsigned char *p = (const unsigned char *)&k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof k; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static uint32_t ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    uint32_t a = 256;
    while (a > 2 && (u & (a - 1))) a >>= 1;
    return a;
}

static ql_status lt_err(cublasStatus_t s, const char *what)
{
    ql_status code = s == CUBLAS_STATUS_ALLOC_FAILED ? QL_ENOMEM : QL_EDEVICE;
    return ql_fail(code, "cuBLASLt: %s failed: %s (status %d)", what, cublasLtGetStatusString(s), (int)s);
}
#define LT(call) do { cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) return lt_err(s_, #call); } while (0)

static ql_status plan_make(gemm_plan *p, const gemm_key &k, cublasLtHandle_t h, size_t ws_size)
{
    cudaDataType_t ab = CUDA_R_16BF, ct = k.cdt == QL_F32 ? CUDA_R_32F : CUDA_R_16BF;
    /* cuBLASLt's first operand X = our B, second Y = our A (see the header) */
    cublasOperation_t tx = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N, ty = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &tx, sizeof tx));
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &ty, sizeof ty));
    /* X stored: tb ? [K rows, N cols] : [N rows, K cols] column-major, ld = ldb */
    LT(cublasLtMatrixLayoutCreate(&p->la, ab, k.tb ? k.K : k.N, k.tb ? k.N : k.K, k.ldb));
    /* Y stored: ta ? [M rows, K cols] : [K rows, M cols], ld = lda */
    LT(cublasLtMatrixLayoutCreate(&p->lb, ab, k.ta ? k.M : k.K, k.ta ? k.K : k.M, k.lda));
    LT(cublasLtMatrixLayoutCreate(&p->lc, ct, k.N, k.M, k.ldc));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    uint32_t al = k.align;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size, sizeof ws_size);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(h, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_err(s, "cublasLtMatmulAlgoGetHeuristic");
    if (found < 1)
        return ql_fail(QL_EDEVICE, "cuBLASLt has no algorithm for a %lld x %lld x %lld bf16 product (ta %d, tb %d)",
                       (long long)k.M, (long long)k.N, (long long)k.K, k.ta, k.tb);
    p->algo = res.algo;
    p->ws_needed = res.workspaceSize;
    p->key = k;
    p->used = 1;
    return QL_OK;
}

static void plan_drop(gemm_plan *p)
{
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof *p);
}

ql_status qlk_gemm(int dev, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const void *A, int64_t lda,
                   const void *B, int64_t ldb, ql_dtype abdt, float beta, void *C, int64_t ldc, ql_dtype cdt)
{
    if (M <= 0 || N <= 0) return QL_OK;
    if (abdt != QL_BF16 || (cdt != QL_BF16 && cdt != QL_F32))
        return ql_fail(QL_EINVAL, "qlk_gemm: bf16 operands and a bf16 or f32 result only");
    if (K <= 0) {   /* an empty sum: C = beta C */
        if (beta != 0) return ql_fail(QL_EINVAL, "qlk_gemm: K = 0 with beta != 0 is not supported");
        for (int64_t i = 0; i < M; i++)
            QL_CU(cudaMemsetAsync((char *)C + (size_t)(i * ldc) * (cdt == QL_F32 ? 4 : 2), 0,
                                  (size_t)N * (cdt == QL_F32 ? 4 : 2), 0));
        return QL_OK;
    }
    cublasLtHandle_t h;
    void *ws;
    size_t ws_size;
    QL_TRY(ql_cuda_lt(dev, &h, &ws, &ws_size));
    gemm_key k;
    memset(&k, 0, sizeof k);
    k.dev = dev; k.ta = ta; k.tb = tb; k.cdt = cdt; k.beta0 = beta == 0;
    k.M = M; k.N = N; k.K = K; k.lda = lda; k.ldb = ldb; k.ldc = ldc;
    uint32_t al = ptr_align(A), a2 = ptr_align(B), a3 = ptr_align(C);
    if (a2 < al) al = a2;
    if (a3 < al) al = a3;
    k.align = al;
    gemm_plan *p = NULL;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        uint64_t hsh = key_hash(k);
        for (int probe = 0; probe < GEMM_CACHE; probe++) {
            gemm_plan *c = &g_plans[(hsh + probe) % GEMM_CACHE];
            if (c->used && key_eq(c->key, k)) { p = c; break; }
            if (!c->used) {
                ql_status st = plan_make(c, k, h, ws_size);
                if (st != QL_OK) { plan_drop(c); return st; }
                p = c;
                break;
            }
        }
        if (!p) {   /* full: replace the home slot */
            gemm_plan *c = &g_plans[hsh % GEMM_CACHE];
            plan_drop(c);
            ql_status st = plan_make(c, k, h, ws_size);
            if (st != QL_OK) { plan_drop(c); return st; }
            p = c;
        }
    }
    /* X = B, Y = A */
    cublasStatus_t s = cublasLtMatmul(h, p->op, &alpha, B, p->la, A, p->lb, &beta, C, p->lc, C, p->lc, &p->algo, ws,
                                      ws_size, 0);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_err(s, "cublasLtMatmul");
    return QL_OK;
}

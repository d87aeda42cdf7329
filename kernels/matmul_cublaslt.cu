/*
 * matmul_cublaslt.cu — dst[b] = a[b] @ b[b] through cuBLASLt, f32 accumulation.
 *
 * Letters: B batch, M rows of a and dst, K inner, N columns of b and dst.
 * dst [B, M, N] (or [M, N]) contiguous row-major; a [B, M, K], b [B, K, N] with
 * any strides: a matrix whose last stride is 1 goes in as row-major, one whose
 * second-last stride is 1 as column-major (a transpose flag), anything else is
 * first copied contiguous. Batches use strided batch; a batch stride of 0
 * broadcasts. cuBLASLt is column-major, so we compute dst^T = b^T a^T:
 * the Lt "A" operand is our b and the Lt "B" operand is our a.
 *
 * Types: f32 operands run in CUBLAS_COMPUTE_32F (full f32; TF32 only when the
 * environment sets QL_CUDA_ALLOW_TF32=1); bf16 and f16 operands stay bf16/f16
 * with CUBLAS_COMPUTE_32F and an f32 scale. Operands of another dtype than dst
 * are cast first.
 *
 * One cuBLASLt handle and a 32 MiB workspace per device, created on first use.
 */
#include "common.cuh"

#include <cublasLt.h>
#include <mutex>
#include <stdlib.h>

#define QL_LT_WORKSPACE (32u << 20)

struct lt_ctx {
    cublasLtHandle_t handle;
    void *ws;
    size_t ws_size;
};
static lt_ctx g_lt[QL_MAX_GPUS];
static std::mutex g_lt_mu;

static ql_status lt_fail(cublasStatus_t s, const char *what, int line)
{
    ql_status code = s == CUBLAS_STATUS_ALLOC_FAILED ? QL_ENOMEM : QL_EDEVICE;
    return ql_fail(code, "cuBLASLt: %s failed: %s (%s, status %d) at %s:%d", what,
                   cublasLtGetStatusString(s), cublasLtGetStatusName(s), (int)s, __FILE__, line);
}
#define QL_LT(call)                                                                 \
    do {                                                                            \
        cublasStatus_t ql_s_ = (call);                                              \
        if (ql_s_ != CUBLAS_STATUS_SUCCESS) { st = lt_fail(ql_s_, #call, __LINE__); goto done; } \
    } while (0)

static ql_status lt_get(int dev, lt_ctx **out)
{
    if (dev < 0 || dev >= QL_MAX_GPUS) return ql_fail(QL_ENODEV, "cuBLASLt: no device cuda:%d", dev);
    std::lock_guard<std::mutex> lock(g_lt_mu);
    lt_ctx *c = &g_lt[dev];
    if (!c->handle) {
        cublasLtHandle_t h = NULL;
        cublasStatus_t s = cublasLtCreate(&h);
        if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtCreate", __LINE__);
        void *ws = ql_cuda_tmp_alloc(dev, QL_LT_WORKSPACE);
        if (!ws) { cublasLtDestroy(h); return QL_ENOMEM; }
        c->ws = ws;
        c->ws_size = QL_LT_WORKSPACE;
        c->handle = h;
    }
    *out = c;
    return QL_OK;
}

/* the device's handle and workspace, for gemm.cu */
ql_status ql_cuda_lt(int dev, cublasLtHandle_t *h, void **ws, size_t *ws_size)
{
    lt_ctx *c;
    QL_TRY(lt_get(dev, &c));
    *h = c->handle;
    *ws = c->ws;
    *ws_size = c->ws_size;
    return QL_OK;
}

static int allow_tf32(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("QL_CUDA_ALLOW_TF32");
        v = e && e[0] == '1';
    }
    return v;
}

/* How one row-major [R, C] operand (strides sr, sc) goes to cuBLASLt. */
struct lt_operand {
    int rowmajor;     /* 1: stored row-major (ld = row stride); 0: column-major (ld = col stride) */
    int64_t ld;
};

/* 1 when usable as is, 0 when it needs a contiguous copy */
static int lt_layout(int64_t R, int64_t C, int64_t sr, int64_t sc, lt_operand *o)
{
    if ((sc == 1 || C == 1) && (R == 1 || sr >= C) && sr >= 0) {
        o->rowmajor = 1;
        o->ld = R == 1 ? (C > 0 ? C : 1) : sr;
        if (o->ld < 1) o->ld = 1;
        return 1;
    }
    if ((sr == 1 || R == 1) && (C == 1 || sc >= R) && sc >= 0) {
        o->rowmajor = 0;
        o->ld = C == 1 ? (R > 0 ? R : 1) : sc;
        if (o->ld < 1) o->ld = 1;
        return 1;
    }
    return 0;
}

static uint32_t align_of(const void *p, int64_t batch_stride_bytes, int64_t batch)
{
    uintptr_t u = (uintptr_t)p;
    if (batch > 1 && batch_stride_bytes) u |= (uintptr_t)batch_stride_bytes;
    uint32_t a = 256;
    while (a > 1 && (u & (a - 1))) a >>= 1;
    return a;
}

static cudaDataType_t lt_type(ql_dtype t)
{
    return t == QL_F32 ? CUDA_R_32F : t == QL_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* *out = a contiguous copy of t in dtype dt on t's device (caller releases). */
static ql_status lt_contig(const ql_tensor *t, ql_dtype dt, ql_tensor **out)
{
    int dev = ql_cuda_dev_of(t);
    ql_tensor *c = ql_tensor_new(dt, t->ndim, t->shape, ql_cuda(dev));
    if (!c) return QL_ENOMEM;
    ql_status st = ql_cuda_copy(c, t);
    if (st != QL_OK) { ql_tensor_release(c); return st; }
    *out = c;
    return QL_OK;
}

ql_status ql_cuda_matmul(ql_tensor *dst, const ql_tensor *a0, const ql_tensor *b0)
{
    int dev = ql_cuda_dev_of(dst);
    QL_TRY(ql_cuda_set_device(dev));
    ql_dtype dt = dst->dtype;
    if (dt != QL_F32 && dt != QL_BF16 && dt != QL_F16)
        return ql_fail(QL_EUNSUPPORTED, "CUDA matmul: dtype %s (use f32, bf16 or f16)", ql_dtype_name(dt));
    if (dst->ndim < 2 || dst->ndim > 3 || a0->ndim != dst->ndim || b0->ndim != dst->ndim)
        return ql_fail(QL_EINVAL, "CUDA matmul: expects [B, M, K] @ [B, K, N] or 2-d operands");
    if (!ql_tensor_is_contiguous(dst))
        return ql_fail(QL_EINVAL, "CUDA matmul: dst must be contiguous");

    int nd = dst->ndim;
    int64_t B = nd == 3 ? dst->shape[0] : 1;
    int64_t M = dst->shape[nd - 2], N = dst->shape[nd - 1], K = a0->shape[nd - 1];
    if (M == 0 || N == 0 || B == 0) return QL_OK;
    if (K == 0) {
        QL_CU(cudaMemsetAsync(ql_tensor_data(dst), 0, ql_tensor_nbytes(dst), 0));
        return QL_OK;
    }
    if (B > INT32_MAX) return ql_fail(QL_EUNSUPPORTED, "CUDA matmul: batch %lld too large", (long long)B);

    ql_status st = QL_OK;
    ql_tensor *ta = NULL, *tb = NULL;  /* contiguous copies when needed */
    const ql_tensor *a = a0, *b = b0;
    lt_operand la, lb;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t Ad = NULL, Bd = NULL, Cd = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    lt_ctx *ctx = NULL;

    if (a->dtype != dt || !lt_layout(M, K, a->stride[nd - 2], a->stride[nd - 1], &la) ||
        (nd == 3 && a->stride[0] < 0)) {
        QL_TRY(lt_contig(a, dt, &ta));
        a = ta;
        lt_layout(M, K, a->stride[nd - 2], a->stride[nd - 1], &la);
    }
    if (b->dtype != dt || !lt_layout(K, N, b->stride[nd - 2], b->stride[nd - 1], &lb) ||
        (nd == 3 && b->stride[0] < 0)) {
        st = lt_contig(b, dt, &tb);
        if (st != QL_OK) goto done;
        b = tb;
        lt_layout(K, N, b->stride[nd - 2], b->stride[nd - 1], &lb);
    }

    st = lt_get(dev, &ctx);
    if (st != QL_OK) goto done;
    {
        cudaDataType_t ty = lt_type(dt);
        cublasComputeType_t ct = (dt == QL_F32 && allow_tf32()) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        size_t es = (size_t)ql_dtype_bytes(dt, 1);
        int64_t sa = nd == 3 ? a->stride[0] : 0, sb = nd == 3 ? b->stride[0] : 0;
        if (B == 1) sa = sb = 0;
        int32_t bc = (int32_t)B;
        int64_t sd = M * N;

        /* Lt operand A := our b (stored row-major: N x K col-major with op N; else K x N with op T) */
        cublasOperation_t opA = lb.rowmajor ? CUBLAS_OP_N : CUBLAS_OP_T;
        cublasOperation_t opB = la.rowmajor ? CUBLAS_OP_N : CUBLAS_OP_T;
        QL_LT(cublasLtMatmulDescCreate(&op, ct, CUDA_R_32F));
        QL_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
        QL_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
        QL_LT(cublasLtMatrixLayoutCreate(&Ad, ty, lb.rowmajor ? N : K, lb.rowmajor ? K : N, lb.ld));
        QL_LT(cublasLtMatrixLayoutCreate(&Bd, ty, la.rowmajor ? K : M, la.rowmajor ? M : K, la.ld));
        QL_LT(cublasLtMatrixLayoutCreate(&Cd, ty, N, M, N));
        if (B > 1) {
            QL_LT(cublasLtMatrixLayoutSetAttribute(Ad, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
            QL_LT(cublasLtMatrixLayoutSetAttribute(Ad, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb));
            QL_LT(cublasLtMatrixLayoutSetAttribute(Bd, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
            QL_LT(cublasLtMatrixLayoutSetAttribute(Bd, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa));
            QL_LT(cublasLtMatrixLayoutSetAttribute(Cd, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
            QL_LT(cublasLtMatrixLayoutSetAttribute(Cd, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sd, sizeof sd));
        }
        const void *pa = ql_tensor_data(a), *pb = ql_tensor_data(b);
        void *pd = ql_tensor_data(dst);
        uint32_t alA = align_of(pb, sb * (int64_t)es, B), alB = align_of(pa, sa * (int64_t)es, B);
        uint32_t alC = align_of(pd, sd * (int64_t)es, B);
        QL_LT(cublasLtMatmulPreferenceCreate(&pref));
        QL_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ctx->ws_size, sizeof ctx->ws_size));
        QL_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alA, sizeof alA));
        QL_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alB, sizeof alB));
        QL_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alC, sizeof alC));
        QL_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alC, sizeof alC));

        cublasLtMatmulHeuristicResult_t res;
        int nres = 0;
        memset(&res, 0, sizeof res);
        QL_LT(cublasLtMatmulAlgoGetHeuristic(ctx->handle, op, Ad, Bd, Cd, Cd, pref, 1, &res, &nres));
        if (nres < 1) {
            st = ql_fail(QL_EUNSUPPORTED, "cuBLASLt has no algorithm for %s matmul [%lld, %lld, %lld] x "
                         "[%lld, %lld] (alignments %u/%u/%u)", ql_dtype_name(dt), (long long)B, (long long)M,
                         (long long)K, (long long)K, (long long)N, alA, alB, alC);
            goto done;
        }
        float alpha = 1.0f, beta = 0.0f;
        QL_LT(cublasLtMatmul(ctx->handle, op, &alpha, pb, Ad, pa, Bd, &beta, pd, Cd, pd, Cd,
                             &res.algo, ctx->ws, ctx->ws_size, 0));
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = ql_cuda_fail(e, "cublasLtMatmul", __FILE__, __LINE__);
    }
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (Cd) cublasLtMatrixLayoutDestroy(Cd);
    if (Bd) cublasLtMatrixLayoutDestroy(Bd);
    if (Ad) cublasLtMatrixLayoutDestroy(Ad);
    if (op) cublasLtMatmulDescDestroy(op);
    /* temporaries are freed only after the product that reads them has run */
    if (ta || tb) {
        if (cudaStreamSynchronize(0) != cudaSuccess && st == QL_OK)
            st = ql_cuda_fail(cudaGetLastError(), "cudaStreamSynchronize", __FILE__, __LINE__);
        if (ta) ql_tensor_release(ta);
        if (tb) ql_tensor_release(tb);
    }
    return st;
}

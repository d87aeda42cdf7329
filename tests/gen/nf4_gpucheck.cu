// GPU vs CPU-reference NF4 check (not committed). Usage: nf4_gpucheck
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#define QL_CUDA 1
extern "C" {
#include "ql.h"
#include "nf4.h"
}
static int fails = 0;
#define CK(x) do { cudaError_t e = (x); if (e) { printf("cuda %s: %s\n", #x, cudaGetErrorString(e)); exit(1);} } while (0)
#define OK(x) do { ql_status s = (x); if (s) { printf("%s: %s\n", #x, ql_last_error()); exit(1);} } while (0)
static void cmp(const char *what, const void *a, const void *b, size_t n, size_t es) {
    for (size_t i = 0; i < n; i++) if (memcmp((char*)a + i*es, (char*)b + i*es, es)) {
        printf("  MISMATCH %s at %zu of %zu\n", what, i, n); fails++; return; }
}
static uint64_t rs = 88172645463325252ull;
static float rnd() { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return ((float)((rs >> 40) & 0xffffff) / 16777216.0f - 0.5f); }
static void one(const char *name, const float *x, int64_t rows, int64_t cols, int bs) {
    int64_t n = rows * cols, nb = (n + bs - 1) / bs, nn = (nb + 255) / 256;
    for (int dq = 0; dq < 2; dq++) {
        ql_nf4 q; OK(ql_nf4_quantize(&q, x, rows, cols, bs, dq));
        float *dx, *dabs, *dcode, *dabsf, *dout, *dnabs; uint8_t *dp, *dq8; uint16_t *dbf;
        CK(cudaMalloc(&dx, n*4)); CK(cudaMalloc(&dabs, nb*4)); CK(cudaMalloc(&dcode, 1024)); CK(cudaMalloc(&dabsf, nb*4));
        CK(cudaMalloc(&dout, n*4)); CK(cudaMalloc(&dnabs, nn*4)); CK(cudaMalloc(&dp, (n+1)/2)); CK(cudaMalloc(&dq8, nb)); CK(cudaMalloc(&dbf, n*2));
        CK(cudaMemcpy(dx, x, n*4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dcode, q.nested_code, 1024, cudaMemcpyHostToDevice));
        OK(ql_cuda_nf4_quantize(dx, n, bs, dp, dabs, NULL));
        uint8_t *hp = (uint8_t*)malloc((n+1)/2); float *habs = (float*)malloc(nb*4);
        CK(cudaMemcpy(hp, dp, (n+1)/2, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(habs, dabs, nb*4, cudaMemcpyDeviceToHost));
        cmp("packed", hp, q.packed, (n+1)/2, 1);
        if (!dq) { cmp("absmax", habs, q.absmax, nb, 4); CK(cudaMemcpy(dabsf, dabs, nb*4, cudaMemcpyDeviceToDevice)); }
        else {
            float off = ql_nf4_torch_mean(habs, nb);
            cmp("offset", &off, &q.nested_offset, 1, 4);
            OK(ql_cuda_nf4_quantize_nested(dabs, nb, off, dcode, dq8, dnabs, NULL));
            uint8_t *hq = (uint8_t*)malloc(nb); float *hn = (float*)malloc(nn*4);
            CK(cudaMemcpy(hq, dq8, nb, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(hn, dnabs, nn*4, cudaMemcpyDeviceToHost));
            cmp("absmax_q", hq, q.absmax_q, nb, 1); cmp("nested_absmax", hn, q.nested_absmax, nn, 4);
            OK(ql_cuda_nf4_absmax_dequant(dq8, dnabs, dcode, off, nb, dabsf, NULL));
            float *ha = (float*)malloc(nb*4), *hr = (float*)malloc(nb*4);
            CK(cudaMemcpy(ha, dabsf, nb*4, cudaMemcpyDeviceToHost)); OK(ql_nf4_absmax_f32(&q, hr));
            cmp("absmax_f32", ha, hr, nb, 4); free(ha); free(hr); free(hq); free(hn);
        }
        OK(ql_cuda_nf4_dequantize_f32(dp, dabsf, n, bs, dout, NULL));
        OK(ql_cuda_nf4_dequantize_bf16(dp, dabsf, n, bs, dbf, NULL));
        CK(cudaDeviceSynchronize());
        float *hf = (float*)malloc(n*4), *rf = (float*)malloc(n*4); uint16_t *hb = (uint16_t*)malloc(n*2), *rb = (uint16_t*)malloc(n*2);
        CK(cudaMemcpy(hf, dout, n*4, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(hb, dbf, n*2, cudaMemcpyDeviceToHost));
        OK(ql_nf4_dequantize_f32(&q, rf)); OK(ql_nf4_dequantize_bf16(&q, rb));
        cmp("deq f32", hf, rf, n, 4); cmp("deq bf16", hb, rb, n, 2);
        printf("%-10s [%lld,%lld] bs%-4d dq%d %s\n", name, (long long)rows, (long long)cols, bs, dq, fails ? "(fails so far)" : "ok");
        free(hf); free(rf); free(hb); free(rb); free(hp); free(habs);
        cudaFree(dx); cudaFree(dabs); cudaFree(dcode); cudaFree(dabsf); cudaFree(dout); cudaFree(dnabs); cudaFree(dp); cudaFree(dq8); cudaFree(dbf);
        ql_nf4_free(&q);
    }
}
int main() {
    int shapes[][2] = { {64,64}, {33,47}, {150,130}, {1,1}, {1,100}, {3,5001}, {1024,1000}, {4096,4097} };
    int bss[] = { 32, 64, 128, 256, 4096 };
    float code[16]; ql_nf4_code(code);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t n = (int64_t)shapes[s][0] * shapes[s][1];
        float *x = (float*)malloc(n * 4);
        for (int64_t i = 0; i < n; i++) {
            float r = rnd(); int kind = (int)((rs >> 8) % 16);
            float mag = powf(2.0f, (float)((i / 64) % 40) - 20.0f);
            x[i] = r * mag;
            if (kind == 0) x[i] = 0;
            if (kind == 1) x[i] = ((code[(rs>>20)%15] + code[(rs>>20)%15+1]) / 2) * mag; /* midpoint ties */
            if (kind == 2 && (i % 64) == 0) x[i] = mag * 0.5f;
        }
        for (int64_t i = 128; i < 192 && i < n; i++) x[i] = 0;        /* zero block */
        for (int64_t i = 256; i < 320 && i < n; i++) x[i] *= 1e-36f; /* subnormal-ish */
        for (size_t b = 0; b < sizeof bss / sizeof bss[0]; b++) one("rand", x, shapes[s][0], shapes[s][1], bss[b]);
        free(x);
    }
    printf("%s: %d mismatches\n", fails ? "FAIL" : "PASS", fails);
    return fails != 0;
}

/*
 * bench_matmul.c — why the CPU matmul goes to OpenBLAS: GFLOP/s of
 * ql_matmul (OpenBLAS sgemm, threaded) against the scalar reference kernel
 * and a cache-blocked plain-C kernel of our own, at the shapes training
 * uses. Run: bin/bench_matmul [threads]. Peer in the same run: bench/peer_matmul.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"
#include "tensor.h"

void ql_cpu_matmul_ref(float *c, const float *a, const float *b, int64_t M, int64_t K, int64_t N);

/* a straightforward blocked kernel: i-k-j loop order over 64x256 tiles, threaded over rows */
typedef struct { const float *a, *b; float *c; int64_t M, K, N; } mm_arg;
static void blocked_rows(void *p, int64_t r0, int64_t r1)
{
    mm_arg *m = p;
    for (int64_t i = r0; i < r1; i++) memset(m->c + i * m->N, 0, sizeof(float) * (size_t)m->N);
    for (int64_t kk = 0; kk < m->K; kk += 256)
        for (int64_t i = r0; i < r1; i++) {
            float *ci = m->c + i * m->N;
            int64_t kend = kk + 256 < m->K ? kk + 256 : m->K;
            for (int64_t k = kk; k < kend; k++) {
                float aik = m->a[i * m->K + k];
                const float *bk = m->b + k * m->N;
                for (int64_t j = 0; j < m->N; j++) ci[j] += aik * bk[j];
            }
        }
}

static double gflops(double secs, int64_t M, int64_t K, int64_t N) { return 2.0 * M * K * N / secs / 1e9; }

int main(int argc, char **argv)
{
    if (argc > 1) ql_set_num_threads(atoi(argv[1]));
    int64_t shapes[][3] = { { 512, 512, 512 }, { 2048, 896, 896 }, { 2048, 896, 4864 }, { 1024, 4096, 1024 } };
    printf("threads %d\n%-20s %12s %12s %12s\n", ql_num_threads(), "M x K x N", "openblas", "blocked-C", "scalar-ref");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        int64_t sa[2] = { M, K }, sb[2] = { K, N };
        ql_tensor *a = ql_tensor_rand(QL_F32, 2, sa, 1, 1, 0, ql_cpu());
        ql_tensor *b = ql_tensor_rand(QL_F32, 2, sb, 1, 2, 0, ql_cpu());
        double best = 1e9;
        for (int r = 0; r < 3; r++) {
            double t0 = ql_now();
            ql_tensor *c = ql_matmul(a, b);
            double dt = ql_now() - t0;
            if (dt < best) best = dt;
            ql_tensor_release(c);
        }
        double blas = gflops(best, M, K, N);
        float *c = malloc(sizeof(float) * (size_t)(M * N));
        mm_arg m = { ql_tensor_data(a), ql_tensor_data(b), c, M, K, N };
        best = 1e9;
        for (int r = 0; r < 2; r++) {
            double t0 = ql_now();
            ql_parallel_for(M, 16, blocked_rows, &m);
            double dt = ql_now() - t0;
            if (dt < best) best = dt;
        }
        double blk = gflops(best, M, K, N);
        /* the scalar reference on a slice of rows (it is slow), scaled */
        int64_t Ms = M < 64 ? M : 64;
        double t0 = ql_now();
        ql_cpu_matmul_ref(c, ql_tensor_data(a), ql_tensor_data(b), Ms, K, N);
        double ref = gflops(ql_now() - t0, Ms, K, N);
        char name[64];
        snprintf(name, sizeof name, "%lldx%lldx%lld", (long long)M, (long long)K, (long long)N);
        printf("%-20s %9.1f GF %9.1f GF %9.2f GF\n", name, blas, blk, ref);
        free(c);
        ql_tensor_release(a);
        ql_tensor_release(b);
    }
    return 0;
}

/*
 * attn_ranges.c — the inverse of a batch's attention ranges: for each key j,
 * the queries i that see it (lo_i <= j < hi_i, lo_i raised to hi_i - window
 * under a sliding window), as one interval [qlo_j, qhi_j). The CUDA attention
 * backward (kernels/attention.cu) gives each key to one warp that loops over
 * exactly these queries, so no atomics are needed for dk and dv.
 *
 * For causal packed documents (ql_batch_ranges: rows of documents, padding
 * tokens as one-token documents) the queries of a key are always contiguous;
 * any layout where they are not is refused with QL_EINVAL. A key no query
 * sees gets the empty interval [j, j).
 *
 * O(n): qlo by painting keys with queries in increasing order (each key is
 * painted once, a "next unpainted key" forest with path halving skips painted
 * ones), qhi likewise in decreasing order, and the number of queries per key
 * from a difference array; the set is contiguous iff that count equals
 * qhi - qlo.
 */
#include <stdlib.h>

#include "decoder.h"

/* next unpainted key >= k (nx[n] == n is the sentinel) */
static int32_t next_free(int32_t *nx, int32_t k)
{
    while (nx[k] != k) {
        nx[k] = nx[nx[k]];
        k = nx[k];
    }
    return k;
}

/* paints the keys of [b, e) not painted yet with value v */
static void paint(int32_t *nx, int32_t b, int32_t e, int32_t v, int32_t *dst)
{
    for (int32_t k = next_free(nx, b); k < e; k = next_free(nx, k)) {
        dst[k] = v;
        nx[k] = k + 1;
    }
}

ql_status ql_dec_key_ranges(const int32_t *lo, const int32_t *hi, int64_t n, int window, int32_t *qlo, int32_t *qhi)
{
    if (n < 0 || n > INT32_MAX - 1)
        return ql_fail(QL_EINVAL, "attention key ranges: %lld tokens is out of range", (long long)n);
    if (n == 0) return QL_OK;
    if (!lo || !hi || !qlo || !qhi) return ql_fail(QL_EINVAL, "attention key ranges: a NULL array");
    for (int64_t i = 0; i < n; i++)
        if (lo[i] < 0 || hi[i] < lo[i] || hi[i] > n)
            return ql_fail(QL_EINVAL, "attention key ranges: token %lld attends to keys [%d, %d), outside the batch "
                           "of %lld keys", (long long)i, lo[i], hi[i], (long long)n);
    int32_t *nx = malloc(sizeof(int32_t) * (size_t)(n + 1));
    int64_t *cnt = calloc((size_t)n + 1, sizeof(int64_t));
    if (!nx || !cnt) {
        free(nx);
        free(cnt);
        return ql_fail(QL_ENOMEM, "out of host memory for the attention key ranges of %lld tokens", (long long)n);
    }
    /* first key each query sees, with the window applied */
#define FIRST(i) ((int32_t)(window > 0 && (int64_t)hi[i] - window > lo[i] ? hi[i] - window : lo[i]))
    for (int64_t j = 0; j < n; j++) qlo[j] = qhi[j] = -1;
    for (int64_t k = 0; k <= n; k++) nx[k] = (int32_t)k;
    for (int64_t i = 0; i < n; i++) {
        int32_t b = FIRST(i), e = hi[i];
        if (b >= e) continue;
        paint(nx, b, e, (int32_t)i, qlo);        /* the smallest query of each key */
        cnt[b]++;
        cnt[e]--;
    }
    for (int64_t k = 0; k <= n; k++) nx[k] = (int32_t)k;
    for (int64_t i = n - 1; i >= 0; i--) {
        int32_t b = FIRST(i), e = hi[i];
        if (b < e) paint(nx, b, e, (int32_t)(i + 1), qhi);   /* one past the largest */
    }
#undef FIRST
    ql_status s = QL_OK;
    int64_t seen = 0;
    for (int64_t j = 0; j < n; j++) {
        seen += cnt[j];
        if (seen == 0) {
            qlo[j] = qhi[j] = (int32_t)j;
            continue;
        }
        if (seen != (int64_t)qhi[j] - qlo[j]) {
            s = ql_fail(QL_EINVAL, "attention key ranges: key %lld is seen by %lld of the queries %d..%d, not by all "
                        "of them; the CUDA attention backward needs each key's queries to be contiguous (causal "
                        "packed documents)", (long long)j, (long long)seen, qlo[j], qhi[j] - 1);
            break;
        }
    }
    free(nx);
    free(cnt);
    return s;
}

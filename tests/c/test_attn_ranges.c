/*
 * test_attn_ranges.c — ql_dec_key_ranges (engine/model/attn_ranges.c), the
 * queries that see each key, against a brute-force O(n^2) enumeration on
 * layouts made by ql_batch_ranges (several rows and documents, padding,
 * windows 0, 1, 3 and longer than the documents); refusal of layouts where a
 * key's queries are not contiguous. Also the index math of the CUDA attention
 * kernels (kernels/attn_index.h) on the CPU: every output element is written
 * by exactly one lane, every entry of a tile is taken by exactly one group.
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "model.h"
#include "ql.h"
#include "../../kernels/attn_index.h"

/* brute force: the queries that see key j, and whether they are contiguous */
static int brute_ranges(const int32_t *lo, const int32_t *hi, int64_t n, int window, int32_t *qlo, int32_t *qhi)
{
    int ok = 1;
    for (int64_t j = 0; j < n; j++) {
        int64_t first = -1, last = -1, count = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t b = lo[i];
            if (window > 0 && (int64_t)hi[i] - window > b) b = (int64_t)hi[i] - window;
            if (b <= j && j < hi[i]) {
                if (first < 0) first = i;
                last = i;
                count++;
            }
        }
        if (count == 0) { qlo[j] = qhi[j] = (int32_t)j; continue; }
        qlo[j] = (int32_t)first;
        qhi[j] = (int32_t)(last + 1);
        if (count != last + 1 - first) ok = 0;
    }
    return ok;
}

/* one layout: rows of T tokens, the documents of each row (lengths may sum to less than T: padding) */
static void check_layout(int rows, int T, const int32_t *doc_lens, const int *ndocs)
{
    int64_t n = (int64_t)rows * T;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n), *lo = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *hi = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *qlo = malloc(sizeof(int32_t) * (size_t)n), *qhi = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *blo = malloc(sizeof(int32_t) * (size_t)n), *bhi = malloc(sizeof(int32_t) * (size_t)n);
    ql_batch_ranges(rows, T, doc_lens, ndocs, pos, lo, hi);
    const int windows[] = { 0, 1, 3, 5, 1000, -1 };
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        int window = windows[w];
        CHECK(brute_ranges(lo, hi, n, window, blo, bhi));   /* causal layouts are contiguous */
        memset(qlo, 0x55, sizeof(int32_t) * (size_t)n);
        memset(qhi, 0x55, sizeof(int32_t) * (size_t)n);
        CHECK_OK(ql_dec_key_ranges(lo, hi, n, window, qlo, qhi));
        int bad = 0;
        for (int64_t j = 0; j < n && bad < 3; j++)
            if (qlo[j] != blo[j] || qhi[j] != bhi[j]) {
                CHECK_MSG(0, "rows %d T %d window %d key %lld: [%d, %d), expected [%d, %d)", rows, T, window,
                          (long long)j, qlo[j], qhi[j], blo[j], bhi[j]);
                bad++;
            }
    }
    free(pos); free(lo); free(hi); free(qlo); free(qhi); free(blo); free(bhi);
}

QL_TEST(attn_key_ranges_batches)
{
    check_layout(1, 1, NULL, NULL);
    check_layout(1, 9, NULL, NULL);
    check_layout(3, 7, NULL, NULL);                                  /* one document per row */
    {
        const int32_t lens[] = { 4, 5, 2, 1, 6 };
        const int nd[] = { 2, 3 };
        check_layout(2, 9, lens, nd);                                /* rows filled exactly */
    }
    {
        const int32_t lens[] = { 3, 2, 7, 1, 1, 1 };
        const int nd[] = { 2, 1, 3 };
        check_layout(3, 10, lens, nd);                               /* padding after the documents */
    }
    {
        const int32_t lens[] = { 12 };
        const int nd[] = { 1, 0, 1 };
        const int32_t lens2[] = { 12, 5 };
        check_layout(3, 16, lens, (const int[]){ 1, 0, 0 });          /* rows of padding only */
        check_layout(3, 16, lens2, nd);
    }
    {
        /* a longer pseudo-random batch */
        int32_t lens[64];
        int nd[4], d = 0;
        uint32_t r = 12345;
        for (int row = 0; row < 4; row++) {
            int used = 0;
            nd[row] = 0;
            while (d < 64) {
                r = r * 1664525u + 1013904223u;
                int len = 1 + (int)((r >> 16) % 23);
                if (used + len > 96) break;
                lens[d++] = len;
                used += len;
                nd[row]++;
            }
        }
        check_layout(4, 96, lens, nd);
    }
}

QL_TEST(attn_key_ranges_edges)
{
    /* keys nobody sees get [j, j) */
    const int32_t lo[] = { 0, 0, 0, 3 }, hi[] = { 1, 1, 3, 4 };
    int32_t qlo[4], qhi[4];
    CHECK_OK(ql_dec_key_ranges(lo, hi, 4, 0, qlo, qhi));
    CHECK_EQ_INT(qlo[0], 0); CHECK_EQ_INT(qhi[0], 3);
    CHECK_EQ_INT(qlo[1], 2); CHECK_EQ_INT(qhi[1], 3);
    CHECK_EQ_INT(qlo[2], 2); CHECK_EQ_INT(qhi[2], 3);
    CHECK_EQ_INT(qlo[3], 3); CHECK_EQ_INT(qhi[3], 4);
    const int32_t lo2[] = { 0, 0, 2 }, hi2[] = { 1, 1, 3 };
    CHECK_OK(ql_dec_key_ranges(lo2, hi2, 3, 0, qlo, qhi));
    CHECK_EQ_INT(qlo[1], 1); CHECK_EQ_INT(qhi[1], 1);
    /* with a window of 1 each query sees only its last key */
    const int32_t lo3[] = { 0, 0, 0, 0 }, hi3[] = { 1, 2, 3, 4 };
    CHECK_OK(ql_dec_key_ranges(lo3, hi3, 4, 1, qlo, qhi));
    for (int j = 0; j < 4; j++) { CHECK_EQ_INT(qlo[j], j); CHECK_EQ_INT(qhi[j], j + 1); }
    /* n == 0 is a no-op */
    CHECK_OK(ql_dec_key_ranges(NULL, NULL, 0, 0, NULL, NULL));
}

QL_TEST(attn_key_ranges_refused)
{
    int32_t qlo[4], qhi[4];
    /* key 0 is seen by queries 0 and 2 but not 1 */
    const int32_t lo[] = { 0, 1, 0 }, hi[] = { 1, 2, 3 };
    ql_clear_error();
    CHECK_EQ_INT(ql_dec_key_ranges(lo, hi, 3, 0, qlo, qhi), QL_EINVAL);
    CHECK(strstr(ql_last_error(), "contiguous") != NULL);
    /* a hole made by the window: key 1 is seen by queries 1 and 3, not 2 (window 1 clips it) */
    const int32_t lo2[] = { 0, 0, 0, 0 }, hi2[] = { 1, 2, 3, 2 };
    CHECK_EQ_INT(ql_dec_key_ranges(lo2, hi2, 4, 1, qlo, qhi), QL_EINVAL);
    int32_t blo[4], bhi[4];
    CHECK(!brute_ranges(lo2, hi2, 4, 1, blo, bhi));
    /* ranges outside the batch */
    const int32_t lo3[] = { 0, 0 }, hi3[] = { 1, 3 };
    CHECK_EQ_INT(ql_dec_key_ranges(lo3, hi3, 2, 0, qlo, qhi), QL_EINVAL);
    const int32_t lo4[] = { 0, -1 }, hi4[] = { 1, 2 };
    CHECK_EQ_INT(ql_dec_key_ranges(lo4, hi4, 2, 0, qlo, qhi), QL_EINVAL);
}

/* ---------------------------------------------------------------- the kernels' index math */

static const int head_dims[] = { 16, 18, 24, 32, 48, 62, 64, 66, 80, 96, 128, 130, 160, 192, 200, 256 };

QL_TEST(attn_index_outputs_once)
{
    for (size_t t = 0; t < sizeof head_dims / sizeof head_dims[0]; t++) {
        int hd = head_dims[t], np = ql_attn_np(hd), width = ql_attn_width(hd), pairs = hd / 2;
        CHECK(np >= 1 && np <= 4);
        CHECK(width == 8 || width == 16 || width == 32);
        CHECK(np == 1 || width == 32);
        CHECK(width * np >= pairs);
        for (int split = 0; split <= 1; split++) {
            const int64_t n = 13;
            const int heads = 3;
            int64_t Q = (int64_t)heads * hd;
            int *hits = calloc((size_t)(n * Q), sizeof(int));
            for (int64_t bx = 0; bx < ql_attn_blocks(n, split); bx++)
                for (int h = 0; h < heads; h++)
                    for (int warp = 0; warp < QL_ATTN_WPB; warp++) {
                        int64_t row = ql_attn_row(bx, warp, split);
                        /* the kernels' store condition: a live row, part 0, lanes of group 0 */
                        if (row >= n || ql_attn_part(warp, split) != 0) continue;
                        for (int lane = 0; lane < width; lane++)
                            for (int c = 0; c < np; c++) {
                                int p = ql_attn_pair(lane, c, width);
                                if (p >= pairs) continue;
                                hits[row * Q + (int64_t)h * hd + 2 * p]++;
                                hits[row * Q + (int64_t)h * hd + 2 * p + 1]++;
                            }
                    }
            int64_t bad = 0;
            for (int64_t e = 0; e < n * Q; e++) bad += hits[e] != 1;
            CHECK_MSG(bad == 0, "hd %d split %d: %lld elements not written exactly once", hd, split, (long long)bad);
            free(hits);
            /* with split, the parts of a row take every tile once */
            for (int64_t len = 1; len < 700; len += 37) {
                int64_t nt = (len + 31) / 32, seen = 0;
                for (int warp = 0; warp < QL_ATTN_WPB; warp++) {
                    int part = ql_attn_part(warp, split), nparts = ql_attn_nparts(split);
                    if (!split && warp > 0) break;
                    for (int64_t t0 = 32 * (int64_t)part; t0 < len; t0 += 32 * (int64_t)nparts) seen++;
                }
                CHECK_EQ_INT(seen, nt);
            }
        }
        /* phase 2: every entry of a tile of cnt taken by exactly one group */
        int groups = 32 / width;
        for (int cnt = 1; cnt <= 32; cnt++) {
            int taken[32] = { 0 };
            for (int base = 0; base < cnt; base += groups)
                for (int lane = 0; lane < 32; lane += width) {
                    int jj = base + lane / width;
                    if (jj < cnt) taken[jj]++;
                }
            for (int jj = 0; jj < cnt; jj++) CHECK_EQ_INT(taken[jj], 1);
        }
    }
}

QL_TEST(attn_index_window)
{
    CHECK_EQ_INT(ql_attn_first(0, 10, 0), 0);
    CHECK_EQ_INT(ql_attn_first(0, 10, -3), 0);
    CHECK_EQ_INT(ql_attn_first(0, 10, 3), 7);
    CHECK_EQ_INT(ql_attn_first(8, 10, 3), 8);
    CHECK_EQ_INT(ql_attn_first(0, 10, 10), 0);
    CHECK(ql_attn_sees(0, 10, 3, 7));
    CHECK(!ql_attn_sees(0, 10, 3, 6));
    CHECK(!ql_attn_sees(0, 10, 3, 10));
}

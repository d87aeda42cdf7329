/*
 * attn_index.h — the index math of the attention kernels (attention.cu), as
 * plain C inline functions that compile for the host and the device, so that
 * tests/c/test_attn_ranges.c checks on the CPU the same mapping the kernels use
 * (every output element written by exactly one lane, every key of a tile
 * visited by exactly one lane group).
 *
 * Layout: one warp owns one row (a query of a head, or a key of a kv head).
 * Phase 1 of a tile: lane t scores key (or query) t0 + t. Phase 2: the head
 * dim is split in pairs of values (one 4-byte bf16x2 load); lanes form
 * `groups` groups of `width` lanes, lane l owns pairs (l % width) + 32 c for
 * c < np, and group g takes the tile's entries g, g + groups, ... . With
 * hd <= 64 (np == 1) the width is the smallest power of two >= hd / 2, so a
 * small head keeps all 32 lanes busy; wider heads use one group of 32.
 */
#ifndef QL_ATTN_INDEX_H
#define QL_ATTN_INDEX_H

#include <stdint.h>

#ifdef __CUDACC__
#define QL_AI __host__ __device__ __forceinline__
#else
#define QL_AI static inline
#endif

#define QL_ATTN_WPB 8      /* warps per block */
#define QL_ATTN_MAXHD 256

/* first key of query range [lo, hi) under a sliding window (window <= 0: none) */
QL_AI int64_t ql_attn_first(int32_t lo, int32_t hi, int window)
{
    int64_t b = lo;
    if (window > 0 && (int64_t)hi - window > b) b = (int64_t)hi - window;
    return b;
}

/* does a query with range [lo, hi) see key j? */
QL_AI int ql_attn_sees(int32_t lo, int32_t hi, int window, int64_t j)
{
    return ql_attn_first(lo, hi, window) <= j && j < (int64_t)hi;
}

/* pairs per lane for head dim hd (1..4 for hd 16..256) */
QL_AI int ql_attn_np(int hd) { return (hd / 2 + 31) / 32; }

/* lanes per group in phase 2 (8, 16 or 32) */
QL_AI int ql_attn_width(int hd)
{
    int pairs = hd / 2, w = 8;
    if (pairs > 32) return 32;
    while (w < pairs) w *= 2;
    return w;
}

/* pair c of a lane (< hd / 2 when the lane owns one, else >= hd / 2) */
QL_AI int ql_attn_pair(int lane, int c, int width) { return (lane & (width - 1)) + 32 * c; }

/* The row of a warp: without split, warp w of block bx owns row bx * WPB + w
   (part 0 of 1); with split, the block's warps share row bx and warp w takes
   the tiles w, w + WPB, ... of its range (part w of WPB). */
QL_AI int64_t ql_attn_row(int64_t bx, int warp, int split) { return split ? bx : bx * QL_ATTN_WPB + warp; }
QL_AI int ql_attn_part(int warp, int split) { return split ? warp : 0; }
QL_AI int ql_attn_nparts(int split) { return split ? QL_ATTN_WPB : 1; }

/* blocks along x for n rows */
QL_AI int64_t ql_attn_blocks(int64_t n, int split) { return split ? n : (n + QL_ATTN_WPB - 1) / QL_ATTN_WPB; }

#endif

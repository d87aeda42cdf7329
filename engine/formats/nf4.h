/*
 * nf4.h — NF4 4-bit weight quantization, byte-identical to bitsandbytes 0.50
 * (quantize_4bit(quant_type="nf4") with or without compress_statistics,
 * CPU backend), plus the quant_state JSON that transformers stores.
 *
 * Plain C11 on raw host arrays: no Lua, no CUDA. The CUDA kernels in
 * kernels/nf4.cu follow the same arithmetic; their launchers are declared at
 * the end of this file (QL_CUDA builds only).
 *
 * Letters: n = number of elements (rows*cols, row-major [out, in]);
 *          B = blocksize (32..4096, power of two); nb = ceil(n / B);
 *          nn = ceil(nb / 256) nested blocks.
 *
 * Layout (as bitsandbytes stores it, docs/nf4.md has the details):
 *   packed   u8 [ceil(n/2)]   byte j = (q[2j] << 4) | q[2j+1]: the first
 *                             element is the HIGH nibble; an odd n pads the
 *                             last low nibble with the code of 0.0 (7).
 *   absmax   f32[nb]          per-block max|x|                   (no double quant)
 *   absmax_q u8 [nb]          (absmax - offset) coded with the
 *                             signed 8-bit dynamic map, blocks of 256 (double quant)
 *   nested_absmax f32[nn], nested_offset f32, nested_code f32[256].
 * Dequantize: absmax_f32[b] = fl(fl(nested_code[absmax_q[b]] * nested_absmax[b/256]) + offset)
 *             w[i]          = fl(code[nibble(i)] * absmax_f32[i/B])  (then RNE to bf16)
 *
 * Thread safety: functions touch only their arguments; quantize and the whole
 * dequantizers use ql_parallel_for.
 */
#ifndef QL_NF4_H
#define QL_NF4_H

#include "ql.h"

#define QL_NF4_NESTED_BLOCKSIZE 256

typedef struct ql_nf4 {             /* one quantized weight, bitsandbytes layout */
    int64_t  n;                     /* number of elements (rows*cols) */
    int64_t  rows, cols;            /* logical shape [out, in]; a 1-D weight has rows = 1 */
    int      ndim;                  /* 1 or 2: how the shape is written in the JSON */
    int      blocksize;             /* 32..4096, power of two; 64 by default */
    int64_t  nblocks;               /* ceil(n / blocksize) */
    uint8_t *packed;                /* [ceil(n/2)] */
    int      double_quant;          /* 1: absmax stored as u8 + nested stats */
    float   *absmax;                /* [nblocks] when !double_quant, else NULL */
    uint8_t *absmax_q;              /* [nblocks] when double_quant, else NULL */
    int      nested_blocksize;      /* 256 */
    int64_t  nested_nblocks;        /* ceil(nblocks / 256) when double_quant, else 0 */
    float   *nested_absmax;         /* [nested_nblocks] */
    float    nested_offset;         /* fp32 mean of the block absmax (torch CPU order) */
    float    nested_code[256];      /* signed dynamic map (ql_nf4_dynamic_map) */
    float    code[16];              /* NF4 table (quant_map) */
    char     dtype[16];             /* original dtype for the JSON: "bfloat16", "float16", "float32" */
    int      owned;                 /* 1: the arrays were malloc'ed here and ql_nf4_free frees them;
                                       0: they are borrowed (e.g. point into a mapped file) */
} ql_nf4;

/* Quantizes x [rows, cols] (fp32, row-major). blocksize 32..4096 power of two;
   double_quant 1 = compress_statistics=True. Non-finite inputs are rejected.
   n == 0 gives an empty result (no blocks, NULL arrays) and QL_OK.
   out->dtype is set to "float32"; set it to the source dtype ("bfloat16") when
   the floats came from bf16 weights (bf16 -> f32 is exact, so the result is
   the same as quantizing the bf16 tensor). On failure *out is left freed. */
ql_status ql_nf4_quantize(ql_nf4 *out, const float *x, int64_t rows, int64_t cols,
                          int blocksize, int double_quant);

/* Whole-tensor dequantization into out[n]: bitsandbytes' fp32 result exactly,
   and the same values rounded to bf16 (round to nearest even). */
ql_status ql_nf4_dequantize_f32(const ql_nf4 *q, float *out);
ql_status ql_nf4_dequantize_bf16(const ql_nf4 *q, uint16_t *out);

/* Elements [begin, begin + count) of the flattened weight (any begin, e.g. a
   row: begin = r*cols, count = cols). Single-threaded, for tile-wise use. */
ql_status ql_nf4_dequantize_range_f32(const ql_nf4 *q, int64_t begin, int64_t count, float *out);
ql_status ql_nf4_dequantize_range_bf16(const ql_nf4 *q, int64_t begin, int64_t count, uint16_t *out);

/* The absmax of block b as fp32 (undoing the double quantization). */
float ql_nf4_block_absmax(const ql_nf4 *q, int64_t b);
/* All nblocks of them into out[nblocks] (what the GPU dequantizer wants). */
ql_status ql_nf4_absmax_f32(const ql_nf4 *q, float *out);

/* Frees what the struct owns and zeroes it. Safe on a zeroed struct; idempotent. */
void ql_nf4_free(ql_nf4 *q);

/* Checks that the fields are consistent (sizes, blocksize, pointers present). */
ql_status ql_nf4_validate(const ql_nf4 *q);

/* Tables. ql_nf4_code: bitsandbytes' get_4bit_type("nf4"), index = nibble.
   ql_nf4_dynamic_map: create_dynamic_map(signed=True, max_exponent_bits=7,
   total_bits=8), 256 sorted values, computed the way torch does. */
/* a * b + c rounded once (as C's fmaf), computed in double with round-to-odd so that it does
   not depend on the C library: MinGW-w64's fmaf rounds some ties the wrong way, which moved
   the NF4 tables off bitsandbytes' */
float ql_fmaf(float a, float b, float c);
void ql_nf4_code(float out[16]);
void ql_nf4_dynamic_map(float out[256]);

/* fp32 mean of x[n] summed in the order torch 2.x uses on a CPU with AVX2
   (8-lane cascade sum), then divided by n: bitsandbytes' nested_offset =
   absmax.mean(). torch splits sums of n >= 32768 over its threads, which
   changes the last bit: _threads takes torch.get_num_threads() of the run to
   match; ql_nf4_torch_mean (used by ql_nf4_quantize) is the 1-thread order. */
float ql_nf4_torch_mean(const float *x, int64_t n);
float ql_nf4_torch_mean_threads(const float *x, int64_t n, int torch_threads);

/* One value to bf16 bits, round to nearest even (NaN stays NaN). */
uint16_t ql_nf4_f32_to_bf16(float f);

/* quant_state JSON as transformers stores it in
   "<prefix>.weight.quant_state.bitsandbytes__nf4" (json.dumps layout), e.g.
   {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out, in],
    "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}
   Uses q->dtype (or "bfloat16" when empty). Fails with QL_EINVAL if cap is too small. */
ql_status ql_nf4_state_json(const ql_nf4 *q, const char *dtype, char *buf, size_t cap);

/* Parses that JSON into q: blocksize, shape (rows, cols, n, ndim, nblocks),
   dtype, double_quant (1 when nested_* keys are present), nested_blocksize,
   nested_nblocks, nested_offset; fills code and nested_code with the default
   tables. Array pointers are left NULL and owned = 0: point them at the
   safetensors data (weight, weight.absmax, weight.nested_absmax,
   weight.nested_quant_map -> copy into nested_code) and call ql_nf4_validate. */
ql_status ql_nf4_parse_state_json(const char *json, size_t len, ql_nf4 *q);

/* ---- CUDA launchers (kernels/nf4.cu), device pointers, stream may be NULL ----
   Same arithmetic as the CPU path above; byte-identical results.
   Quantize: x[n] f32 -> packed[ceil(n/2)], absmax[nb] f32 (always written).
   Double quantization on the GPU takes the offset from the host because the
   mean must be summed in torch's CPU order: compute absmax on the device,
   copy it back, offset = ql_nf4_torch_mean(absmax, nb), then call
   ql_cuda_nf4_quantize_nested. */
#ifdef QL_CUDA
ql_status ql_cuda_nf4_quantize(const float *x, int64_t n, int blocksize,
                               uint8_t *packed, float *absmax, void *stream);
ql_status ql_cuda_nf4_quantize_nested(const float *absmax, int64_t nblocks, float offset,
                                      const float *nested_code /* device [256] */,
                                      uint8_t *absmax_q, float *nested_absmax, void *stream);
/* absmax_q, nested_absmax, nested_code, offset -> absmax_f32[nblocks] */
ql_status ql_cuda_nf4_absmax_dequant(const uint8_t *absmax_q, const float *nested_absmax,
                                     const float *nested_code, float offset, int64_t nblocks,
                                     float *absmax_f32, void *stream);
ql_status ql_cuda_nf4_dequantize_f32(const uint8_t *packed, const float *absmax_f32, int64_t n,
                                     int blocksize, float *out, void *stream);
ql_status ql_cuda_nf4_dequantize_bf16(const uint8_t *packed, const float *absmax_f32, int64_t n,
                                      int blocksize, uint16_t *out, void *stream);
/* The decoder's dequantization: packed -> bf16 with the double-quantized scales decoded
   inline (absmax_q u8 + nested_absmax + nested_code + offset when double_quant, else
   absmax f32 in absmax_f32), 8 packed bytes in and 32 bytes out per thread; byte-identical
   to ql_cuda_nf4_absmax_dequant followed by ql_cuda_nf4_dequantize_bf16 (which it falls
   back to for sizes that are not a multiple of 16 or unaligned pointers, with absmax_tmp
   [nblocks] f32 as the scratch for the decoded scales). */
ql_status ql_cuda_nf4_dequantize_bf16_fast(const uint8_t *packed, int double_quant, const uint8_t *absmax_q,
                                           const float *absmax_f32, const float *nested_absmax,
                                           const float *nested_code, float offset, int64_t n, int blocksize,
                                           uint16_t *out, float *absmax_tmp, void *stream);
#endif

#endif

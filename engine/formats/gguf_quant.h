/*
 * gguf_quant.h — the ggml block types a GGUF export writes besides Q8_0 (gguf.h):
 * the k-quant super-blocks Q4_K, Q5_K and Q6_K (256 values each), and Q5_0 and Q5_1
 * (32 values), which llama.cpp's quantizer uses instead of Q4_K and Q5_K for a tensor
 * whose rows are not a multiple of 256 (Qwen2.5-0.5B's 896-wide rows, for instance).
 *
 * Every quantizer gives, byte for byte, the blocks of ggml's reference quantizer, the
 * path llama-quantize takes when it has no importance matrix: the same search for the
 * scales, the same float operations in the same order (this file is built as ISO C, so
 * GCC does not fuse a multiply and an add), the same round-to-nearest-even f16 scales.
 * tests/fixtures/gguf/kquants.safetensors holds llama.cpp's own output for the check.
 *
 * Block layouts (little-endian; f16 = IEEE half; "value i" counts inside the block):
 *   Q4_K, 144 bytes: f16 d, f16 dmin, u8 scales[12], u8 qs[128].
 *     Eight sub-blocks of 32 values, each with a 6-bit scale s and a 6-bit min m packed
 *     in scales[]: sub-block j < 4 keeps s in the low 6 bits of scales[j] and m in those
 *     of scales[j+4]; j >= 4 keeps the low 4 bits of s and m in the two nibbles of
 *     scales[j+4] and their top 2 bits in the top 2 bits of scales[j-4] (s) and scales[j] (m).
 *     value = d*s*q - dmin*m with q in 0..15; byte 32g+l of qs holds value 64g+l in its
 *     low nibble and value 64g+32+l in its high nibble (g = 0..3, l = 0..31).
 *   Q5_K, 176 bytes: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128].
 *     As Q4_K with q in 0..31: the low 4 bits as in Q4_K, the fifth bit of value 64g+l
 *     in bit 2g of qh[l] and that of value 64g+32+l in bit 2g+1.
 *   Q6_K, 210 bytes: u8 ql[128], u8 qh[64], i8 scales[16], f16 d.
 *     Sixteen sub-blocks of 16 values with an 8-bit signed scale each; value = d*s*(q-32),
 *     q in 0..63. In half h (values 128h..128h+127), for l = 0..31: ql[64h+l] holds the low
 *     4 bits of values l (low nibble) and l+64 (high), ql[64h+32+l] those of l+32 and l+96,
 *     and qh[32h+l] the top 2 bits of values l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
 *   Q5_0, 22 bytes: f16 d, u32 qh, u8 qs[16]; value = d*(q-16), q in 0..31; qs[j] holds the
 *     low 4 bits of values j (low nibble) and j+16 (high), bit i of qh the fifth bit of value i.
 *   Q5_1, 24 bytes: f16 d, f16 m, u32 qh, u8 qs[16]; value = d*q + m, packed as Q5_0.
 * Never includes Lua.
 */
#ifndef QL_GGUF_QUANT_H
#define QL_GGUF_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* n values (a multiple of the block size) to n/block blocks at out */
void ql_gguf_quantize_q4_k(const float *x, void *out, int64_t n);
void ql_gguf_quantize_q5_k(const float *x, void *out, int64_t n);
void ql_gguf_quantize_q6_k(const float *x, void *out, int64_t n);
void ql_gguf_quantize_q5_0(const float *x, void *out, int64_t n);
void ql_gguf_quantize_q5_1(const float *x, void *out, int64_t n);

/* Any type the writer takes (F32, F16, BF16, Q8_0 and the five above): n values to
   their bytes, returned; 0 when the type is not one of them. n a multiple of the block. */
size_t ql_gguf_quantize(uint32_t type, const float *x, void *out, int64_t n);
/* The same types back to f32 (ggml's dequantization formulas); 0 if unsupported, else 1. */
int ql_gguf_dequantize(uint32_t type, const void *in, float *y, int64_t n);
/* 1 when ql_gguf_quantize / ql_gguf_dequantize handle the type */
int ql_gguf_type_supported(uint32_t type);

#endif

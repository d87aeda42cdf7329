/*
 * gguf.h — the GGUF file format (version 3) of llama.cpp and ggml: a streaming
 * writer and a validating reader.
 *
 * Layout (all little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value
 * count; the key/values (string key, u32 value type, value); the tensor infos
 * (string name, u32 dims, u64 ne[dims], u32 ggml type, u64 offset); zero padding
 * to the alignment (general.alignment, default 32); then the tensor data, each
 * tensor at its offset (relative to the data start, a multiple of the alignment)
 * and padded to the alignment. A string is a u64 byte count and the bytes (no NUL).
 * ne[0] is the innermost dimension: a PyTorch weight [out, in] has ne = {in, out}.
 *
 * Writer: key/values and tensor infos are declared first (kept in memory, a few
 * MB for a 150k vocabulary), ql_gguf_writer_begin writes them, then the tensors'
 * data is streamed in declaration order, converted on the fly from f32/f16/bf16
 * to the declared type (F32, F16, BF16, Q8_0 and the k-quants of gguf_quant.h),
 * so memory stays bounded by one chunk. The file is written atomically: a temporary renamed into place by
 * close, removed by abort or on any failure.
 *
 * Reader: maps the file and checks every count, length, type, offset, size and
 * the alignment against the file before anything is used; messages name the
 * file and the fault. Values point into the mapping. Assumes a little-endian host.
 * Never includes Lua.
 */
#ifndef QL_GGUF_H
#define QL_GGUF_H

#include "tensor.h"

#define QL_GGUF_VERSION 3
#define QL_GGUF_DEFAULT_ALIGNMENT 32
#define QL_GGUF_MAX_DIMS 4
#define QL_GGUF_MAX_NAME 64          /* tensor names are shorter (ggml's GGML_MAX_NAME) */

/* metadata value types, numbered as in the file */
typedef enum ql_gguf_vtype {
    QL_GGUF_U8 = 0, QL_GGUF_I8 = 1, QL_GGUF_U16 = 2, QL_GGUF_I16 = 3,
    QL_GGUF_U32 = 4, QL_GGUF_I32 = 5, QL_GGUF_F32 = 6, QL_GGUF_BOOL = 7,
    QL_GGUF_STR = 8, QL_GGUF_ARR = 9, QL_GGUF_U64 = 10, QL_GGUF_I64 = 11,
    QL_GGUF_F64 = 12, QL_GGUF_NVTYPES
} ql_gguf_vtype;

/* ggml tensor types, numbered as in ggml: the ones the writer converts to (gguf_quant.h
   has the quantizers of the last five) */
typedef enum ql_ggml_type {
    QL_GGML_F32 = 0, QL_GGML_F16 = 1, QL_GGML_Q5_0 = 6, QL_GGML_Q5_1 = 7, QL_GGML_Q8_0 = 8,
    QL_GGML_Q4_K = 12, QL_GGML_Q5_K = 13, QL_GGML_Q6_K = 14, QL_GGML_BF16 = 30
} ql_ggml_type;

const char *ql_gguf_vtype_name(uint32_t t);          /* "u32", "str", "arr"...; NULL if unknown */
int         ql_gguf_vtype_parse(const char *name);   /* -1 if unknown */
size_t      ql_gguf_vtype_size(uint32_t t);          /* scalar bytes; 0 for str/arr/unknown */
/* ggml type facts for every type ggml defines (Q4_K, IQ2_XS, ...): name ("Q8_0"),
   elements per block and bytes per block; 0 / NULL for an unknown number. */
const char *ql_ggml_type_name(uint32_t t);
int         ql_ggml_type_parse(const char *name);    /* "q8_0", "F16" ...; -1 if unknown */
int         ql_ggml_type_block(uint32_t t, uint32_t *block, uint32_t *bytes);   /* 0 if unknown */

/* Q8_0 exactly as ggml's quantize_row_q8_0_ref: blocks of 32, d = amax/127 stored
   as f16 (round to nearest even), q = roundf(x * (1/d)) (halves away from zero).
   n is a multiple of 32; out holds n/32 blocks of 34 bytes. */
void ql_gguf_quantize_q8_0(const float *x, void *out, int64_t n);

/* ---------------------------------------------------------------- writer */

typedef struct ql_gguf_writer ql_gguf_writer;

/* alignment 0 means 32; another power of two is written as general.alignment */
ql_gguf_writer *ql_gguf_writer_new(const char *path, uint32_t alignment);
/* A scalar (value points to the C type: uint32_t for U32, uint8_t 0/1 for BOOL,
   double for F64...) or a string (value = bytes, len = byte count). Keys are unique. */
ql_status ql_gguf_writer_kv(ql_gguf_writer *w, const char *key, ql_gguf_vtype type,
                            const void *value, size_t len);
/* An array of n numeric/bool elements packed as in the file. */
ql_status ql_gguf_writer_kv_array(ql_gguf_writer *w, const char *key, ql_gguf_vtype elem,
                                  uint64_t n, const void *data);
/* An array of n strings; lens NULL means NUL-terminated. */
ql_status ql_gguf_writer_kv_str_array(ql_gguf_writer *w, const char *key, uint64_t n,
                                      const char *const *s, const size_t *lens);
/* Declares the next tensor; ne in ggml order (ne[0] innermost), 1..4 dims. */
ql_status ql_gguf_writer_add_tensor(ql_gguf_writer *w, const char *name, ql_ggml_type type,
                                    int ndim, const int64_t *ne);
/* Writes header, key/values and tensor infos; then only data may follow. */
ql_status ql_gguf_writer_begin(ql_gguf_writer *w);
/* Raw bytes of the tensors, in order, already in their declared type. */
ql_status ql_gguf_writer_write(ql_gguf_writer *w, const void *data, size_t n);
/* Elements of the current tensor as f32, converted to its type (a quantized type:
   n a multiple of its block, 32 or 256 values; blocks never straddle calls). */
ql_status ql_gguf_writer_write_f32(ql_gguf_writer *w, const float *x, size_t n);
/* The whole current tensor from a CPU tensor of dtype f32, f16 or bf16 with as
   many elements as declared (any shape; made contiguous one chunk at a time is
   not needed: it must be contiguous). Converted in bounded chunks. */
ql_status ql_gguf_writer_write_tensor(ql_gguf_writer *w, const ql_tensor *t);
/* Hands the pages of t's memory back to the kernel when that memory is not qlora's own
   (a tensor over a mapped checkpoint: the storage has a release function): resident memory
   would otherwise grow to the size of the model as its tensors are read once each. Uses
   Linux's MADV_PAGEOUT, which reclaims without discarding, so it is safe on any memory;
   a no-op elsewhere and for tensors qlora allocated. write_tensor does it after writing. */
void ql_gguf_release_pages(const ql_tensor *t);
/* Checks that every tensor was written, then renames the file into place. Frees w. */
ql_status ql_gguf_writer_close(ql_gguf_writer *w);
void      ql_gguf_writer_abort(ql_gguf_writer *w);   /* removes the temporary; frees w */
/* name of the tensor the next data goes to; NULL when all were written */
const char *ql_gguf_writer_current(const ql_gguf_writer *w);

/* ---------------------------------------------------------------- reader */

typedef struct ql_gguf_file ql_gguf_file;

typedef struct ql_gguf_kv {
    const char *key;          /* NUL-terminated copy */
    uint32_t type;            /* ql_gguf_vtype */
    uint32_t arr_type;        /* ARR: element type */
    uint64_t n;               /* ARR: elements; STR: bytes; else 1 */
    const uint8_t *data;      /* scalar bytes, string bytes or the first array element */
    const uint64_t *str_off;  /* ARR of STR: offset of element i's length prefix from data */
} ql_gguf_kv;

typedef struct ql_gguf_tensor_info {
    const char *name;
    uint32_t ndim;
    int64_t ne[QL_GGUF_MAX_DIMS];   /* ggml order; unused dims are 1 */
    uint32_t type;                  /* ql_ggml_type (any ggml type number) */
    uint64_t offset;                /* from the data start */
    uint64_t nbytes;
} ql_gguf_tensor_info;

ql_gguf_file *ql_gguf_open(const char *path);    /* NULL with a message naming the file */
void ql_gguf_close(ql_gguf_file *f);
const char *ql_gguf_path(const ql_gguf_file *f);
uint32_t ql_gguf_version(const ql_gguf_file *f);
uint32_t ql_gguf_alignment(const ql_gguf_file *f);
uint64_t ql_gguf_data_offset(const ql_gguf_file *f);     /* file offset of the data section */
int64_t ql_gguf_kv_count(const ql_gguf_file *f);
const ql_gguf_kv *ql_gguf_kv_at(const ql_gguf_file *f, int64_t i);
const ql_gguf_kv *ql_gguf_find(const ql_gguf_file *f, const char *key);   /* NULL if absent */
/* element i (0 for a scalar) of a kv: integer/bool types, float types, strings */
int64_t  ql_gguf_kv_int(const ql_gguf_kv *kv, uint64_t i);
uint64_t ql_gguf_kv_uint(const ql_gguf_kv *kv, uint64_t i);
double   ql_gguf_kv_float(const ql_gguf_kv *kv, uint64_t i);
const char *ql_gguf_kv_str(const ql_gguf_kv *kv, uint64_t i, uint64_t *len);   /* not NUL-terminated */
int64_t ql_gguf_tensor_count(const ql_gguf_file *f);
const ql_gguf_tensor_info *ql_gguf_tensor_at(const ql_gguf_file *f, int64_t i);
int64_t ql_gguf_find_tensor(const ql_gguf_file *f, const char *name);    /* -1 if absent */
const void *ql_gguf_tensor_data(const ql_gguf_file *f, int64_t i);
/* Tensor i as a new f32 CPU tensor in PyTorch order (ne reversed), for F32, F16,
   BF16, Q8_0 and gguf_quant.h's types. */
ql_tensor *ql_gguf_tensor_f32(const ql_gguf_file *f, int64_t i);

#endif

/*
 * safetensors.h — reading and writing the safetensors format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
 * then the data; offsets count from the end of the header. The header is
 * untrusted: ql_st_open checks every length, offset, shape and dtype against
 * the file size before anything is used, and maps the file instead of reading
 * it. Tensors from ql_st_tensor point into the mapping, which lives until the
 * last such tensor and the file handle are gone.
 */
#ifndef QL_SAFETENSORS_H
#define QL_SAFETENSORS_H

#include "tensor.h"

typedef struct ql_st_file ql_st_file;

typedef struct ql_st_entry {
    char *name;
    char dtype[16];            /* as written: "BF16", "F32", "U8", "F64", ... */
    int supported;             /* dtype maps to a ql_dtype */
    ql_dtype qdtype;
    int ndim;
    int64_t shape[QL_MAXDIM];
    uint64_t begin, end;       /* byte offsets relative to the data section */
} ql_st_entry;

/* NULL on failure, with a message naming the file and what is wrong with it. */
ql_st_file *ql_st_open(const char *path);
void ql_st_close(ql_st_file *f);
const char *ql_st_path(const ql_st_file *f);
int ql_st_count(const ql_st_file *f);
const char *ql_st_name(const ql_st_file *f, int i);
const ql_st_entry *ql_st_entry_at(const ql_st_file *f, int i);
int ql_st_find(const ql_st_file *f, const char *name);    /* index or -1 */
/* a CPU tensor viewing the mapped bytes (read-only memory: copy before writing) */
ql_tensor *ql_st_tensor(ql_st_file *f, int i);
/* lets the OS drop entry i's pages from memory (after it was copied or quantized) */
void ql_st_drop(const ql_st_file *f, int i);
/* raw bytes of entry i */
const void *ql_st_data(const ql_st_file *f, int i);
int ql_st_meta_count(const ql_st_file *f);
const char *ql_st_meta_key(const ql_st_file *f, int i);
const char *ql_st_meta_value(const ql_st_file *f, int i);
const char *ql_st_meta_get(const ql_st_file *f, const char *key);   /* NULL when absent */

/* Tensors of any dtype, device and layout are saved by ql_tensors_save (nf4_io.h). */
/* Raw host buffers, written atomically (a temporary file renamed over path, so
   a failure never leaves half a file), in name order. */
typedef struct ql_st_raw {
    const char *name;
    const char *dtype;         /* safetensors dtype string */
    int ndim;
    int64_t shape[QL_MAXDIM];
    const void *data;
    uint64_t nbytes;
} ql_st_raw;
ql_status ql_st_save_raw(const char *path, int n, const ql_st_raw *entries,
                         int nmeta, const char *const *meta_keys, const char *const *meta_values);

/* Streaming writer: the header (entries in the given order; their data
   pointers are ignored) is written first, then exactly the announced bytes in
   order; close renames the temporary file into place, abort removes it. */
typedef struct ql_st_writer ql_st_writer;
ql_st_writer *ql_st_writer_open(const char *path, int n, const ql_st_raw *entries,
                                int nmeta, const char *const *meta_keys, const char *const *meta_values);
ql_status ql_st_writer_write(ql_st_writer *w, const void *data, size_t n);
ql_status ql_st_writer_close(ql_st_writer *w);
void      ql_st_writer_abort(ql_st_writer *w);

#endif

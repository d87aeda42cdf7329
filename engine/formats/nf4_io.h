/*
 * nf4_io.h — NF4 weights in the layout transformers + bitsandbytes save
 * (`*-bnb-4bit` checkpoints): for a weight key K ("model.layers.0.mlp.up_proj.weight")
 *   K                                    U8  [ceil(n/2), 1]   packed nibbles
 *   K.absmax                             U8 [nb] (double quant) or F32 [nb]
 *   K.quant_map                          F32 [16]
 *   K.nested_absmax                      F32 [ceil(nb/256)]   (double quant)
 *   K.nested_quant_map                   F32 [256]            (double quant)
 *   K.quant_state.bitsandbytes__nf4      U8  [len]            JSON: blocksize, shape, dtype, nested_offset
 * Reading is zero-copy: the NF4 tensor's arrays view the mapped file.
 */
#ifndef QL_NF4_IO_H
#define QL_NF4_IO_H

#include "safetensors.h"

/* 1 when the file holds K.quant_state.bitsandbytes__nf4 for weight key K */
int ql_nf4_st_has(const ql_st_file *f, const char *weight_key);
/* The NF4 tensor stored under weight_key; NULL with a message naming the file and key. */
ql_tensor *ql_nf4_st_read(ql_st_file *f, const char *weight_key);

/* The six (or four, without double quantization) safetensors entries of an NF4
   CPU tensor under weight_key. Names and the JSON live in *store until
   ql_nf4_st_entries_free; data pointers borrow from t. Returns the count. */
typedef struct ql_nf4_st_store { char *names[6]; char *json; } ql_nf4_st_store;
int  ql_nf4_st_entries(const ql_tensor *t, const char *weight_key, ql_st_raw out[6], ql_nf4_st_store *store);
void ql_nf4_st_entries_free(ql_nf4_st_store *store);

/* Saves tensors of any dtype, device and layout to a safetensors file, atomically:
   contiguous CPU copies are made where needed, and nf4 tensors are written in
   the layout above (refused with a clear message when allow_nf4 is 0). */
ql_status ql_tensors_save(const char *path, int n, const char *const *names, ql_tensor *const *tensors, int allow_nf4,
                          int nmeta, const char *const *meta_keys, const char *const *meta_values);

#endif

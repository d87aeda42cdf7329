/*
 * nf4_io.c — the transformers/bitsandbytes 4-bit key layout (nf4_io.h).
 */
#include "nf4_io.h"
#include "nf4.h"
#include "nf4_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int find_sub(const ql_st_file *f, const char *key, const char *suffix)
{
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", key, suffix);
    return ql_st_find(f, name);
}

int ql_nf4_st_has(const ql_st_file *f, const char *weight_key)
{
    return find_sub(f, weight_key, "quant_state.bitsandbytes__nf4") >= 0;
}

static ql_tensor *entry(ql_st_file *f, const char *key, const char *suffix, ql_dtype want, int64_t count, int required)
{
    int i = suffix ? find_sub(f, key, suffix) : ql_st_find(f, key);
    if (i < 0) {
        if (required) ql_fail(QL_EFORMAT, "%s: 4-bit weight '%s' lacks '%s%s%s'; the checkpoint is incomplete",
                              ql_st_path(f), key, key, suffix ? "." : "", suffix ? suffix : "");
        return NULL;
    }
    const ql_st_entry *e = ql_st_entry_at(f, i);
    int64_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= e->shape[d];
    if (!e->supported || e->qdtype != want || (count >= 0 && n != count)) {
        ql_fail(QL_EFORMAT, "%s: '%s%s%s' is %s with %lld elements, expected %s with %lld", ql_st_path(f), key,
                suffix ? "." : "", suffix ? suffix : "", e->dtype, (long long)n, ql_dtype_info_of(want)->st_name, (long long)count);
        return NULL;
    }
    ql_tensor *t = ql_st_tensor(f, i);
    if (!t) return NULL;
    ql_tensor *flat = ql_tensor_view(t, 1, &n);
    ql_tensor_release(t);
    return flat;
}

ql_tensor *ql_nf4_st_read(ql_st_file *f, const char *key)
{
    int js = find_sub(f, key, "quant_state.bitsandbytes__nf4");
    if (js < 0) { ql_fail(QL_EFORMAT, "%s: '%s' is not a 4-bit weight (no quant_state)", ql_st_path(f), key); return NULL; }
    const ql_st_entry *je = ql_st_entry_at(f, js);
    ql_nf4 meta;
    if (ql_nf4_parse_state_json(ql_st_data(f, js), (size_t)(je->end - je->begin), &meta) != QL_OK) {
        ql_fail_context(QL_EFORMAT, "%s: %s.quant_state: ", ql_st_path(f), key);
        return NULL;
    }
    int64_t shape[2] = { meta.rows, meta.cols };
    int ndim = meta.ndim == 1 ? 1 : 2;
    if (ndim == 1) shape[0] = meta.cols;
    ql_tensor *packed = entry(f, key, NULL, QL_U8, (meta.n + 1) / 2, 1);
    if (!packed) return NULL;
    ql_tensor *absmax = entry(f, key, "absmax", meta.double_quant ? QL_U8 : QL_F32, meta.nblocks, 1);
    ql_tensor *nabs = NULL, *ncode = NULL;
    if (absmax && meta.double_quant) {
        nabs = entry(f, key, "nested_absmax", QL_F32, meta.nested_nblocks, 1);
        ncode = nabs ? entry(f, key, "nested_quant_map", QL_F32, 256, 1) : NULL;
    }
    ql_tensor *qmap = absmax && (!meta.double_quant || ncode) ? entry(f, key, "quant_map", QL_F32, 16, 0) : NULL;
    ql_tensor *r = NULL;
    if (absmax && (!meta.double_quant || ncode)) {
        /* a quant_map other than NF4 (fp4 checkpoints) is refused */
        if (qmap) {
            float code[16];
            ql_nf4_code(code);
            if (memcmp(code, ql_tensor_data(qmap), sizeof code) != 0) {
                ql_fail(QL_EUNSUPPORTED, "%s: '%s' uses a 4-bit code other than NF4 (fp4?): re-quantize with "
                                         "bnb_4bit_quant_type=\"nf4\" or load the bf16 checkpoint", ql_st_path(f), key);
                goto done;
            }
        }
        /* the NF4 tensor shares the packed bytes' storage */
        r = malloc(sizeof *r);
        ql_quant *q = calloc(1, sizeof *q);
        if (!r || !q) { free(r); free(q); r = NULL; ql_fail(QL_ENOMEM, "out of memory"); goto done; }
        *r = *packed;
        r->refcount = 1;
        __atomic_add_fetch(&packed->storage->refcount, 1, __ATOMIC_ACQ_REL);
        r->dtype = QL_NF4;
        r->ndim = ndim;
        r->offset = packed->offset * 2;  /* element offset of nibbles */
        for (int d = 0; d < ndim; d++) r->shape[d] = shape[d];
        r->stride[ndim - 1] = 1;
        if (ndim == 2) r->stride[0] = shape[1];
        q->refcount = 1;
        q->blocksize = meta.blocksize;
        q->double_quant = meta.double_quant;
        q->nested_blocksize = meta.nested_blocksize;
        q->nested_offset = meta.nested_offset;
        q->orig_dtype = !strcmp(meta.dtype, "float16") ? QL_F16 : !strcmp(meta.dtype, "float32") ? QL_F32 : QL_BF16;
        q->absmax = ql_tensor_retain(absmax);
        q->nested_absmax = ql_tensor_retain(nabs);
        q->nested_code = ql_tensor_retain(ncode);
        r->quant = q;
        ql_nf4 check;
        if (ql_nf4_view(&check, r) != QL_OK) {
            ql_fail_context(QL_EFORMAT, "%s: '%s': ", ql_st_path(f), key);
            ql_tensor_release(r);
            r = NULL;
        }
    }
done:
    ql_tensor_release(packed);
    ql_tensor_release(absmax);
    ql_tensor_release(nabs);
    ql_tensor_release(ncode);
    ql_tensor_release(qmap);
    return r;
}

void ql_nf4_st_entries_free(ql_nf4_st_store *s)
{
    for (int i = 0; i < 6; i++) free(s->names[i]);
    free(s->json);
    memset(s, 0, sizeof *s);
}

static const float *code_table(void)
{
    static float code[16];
    static int init;
    if (!init) { ql_nf4_code(code); init = 1; }
    return code;
}

int ql_nf4_st_entries(const ql_tensor *t, const char *key, ql_st_raw out[6], ql_nf4_st_store *s)
{
    memset(s, 0, sizeof *s);
    ql_nf4 q;
    if (ql_nf4_view(&q, t) != QL_OK) return -1;
    if (ql_tensor_device(t).type != QL_DEV_CPU) { ql_fail(QL_EINVAL, "%s: move the nf4 tensor to the cpu before saving", key); return -1; }
    s->json = malloc(512);
    if (!s->json || ql_nf4_state_json(&q, NULL, s->json, 512) != QL_OK) { ql_nf4_st_entries_free(s); return -1; }
    const char *suffix[6] = { NULL, "absmax", "quant_map", "nested_absmax", "nested_quant_map",
                              "quant_state.bitsandbytes__nf4" };
    int n = 0;
    for (int i = 0; i < 6; i++) {
        if (!q.double_quant && (i == 3 || i == 4)) continue;
        size_t len = strlen(key) + 64;
        s->names[n] = malloc(len);
        if (!s->names[n]) { ql_nf4_st_entries_free(s); ql_fail(QL_ENOMEM, "out of memory"); return -1; }
        if (suffix[i]) snprintf(s->names[n], len, "%s.%s", key, suffix[i]);
        else snprintf(s->names[n], len, "%s", key);
        ql_st_raw *e = &out[n];
        memset(e, 0, sizeof *e);
        e->name = s->names[n];
        switch (i) {
        case 0: e->dtype = "U8"; e->ndim = 2; e->shape[0] = (q.n + 1) / 2; e->shape[1] = 1; e->data = q.packed; e->nbytes = (uint64_t)((q.n + 1) / 2); break;
        case 1: e->ndim = 1; e->shape[0] = q.nblocks;
            if (q.double_quant) { e->dtype = "U8"; e->data = q.absmax_q; e->nbytes = (uint64_t)q.nblocks; }
            else { e->dtype = "F32"; e->data = q.absmax; e->nbytes = (uint64_t)q.nblocks * 4; }
            break;
        case 2: e->dtype = "F32"; e->ndim = 1; e->shape[0] = 16; e->data = code_table(); e->nbytes = 64; break;
        case 3: e->dtype = "F32"; e->ndim = 1; e->shape[0] = q.nested_nblocks; e->data = q.nested_absmax; e->nbytes = (uint64_t)q.nested_nblocks * 4; break;
        case 4: e->dtype = "F32"; e->ndim = 1; e->shape[0] = 256; e->data = ql_tensor_data(t->quant->nested_code); e->nbytes = 1024; break;
        case 5: e->dtype = "U8"; e->ndim = 1; e->shape[0] = (int64_t)strlen(s->json); e->data = s->json; e->nbytes = strlen(s->json); break;
        }
        n++;
    }
    return n;
}

ql_status ql_tensors_save(const char *path, int n, const char *const *names, ql_tensor *const *tensors, int allow_nf4,
                          int nmeta, const char *const *mk, const char *const *mv)
{
    size_t cap = (size_t)(n > 0 ? n : 1);
    ql_st_raw *raw = calloc(cap * 6, sizeof *raw);          /* an nf4 tensor takes up to six entries */
    ql_tensor **hold = calloc(cap, sizeof *hold);
    ql_nf4_st_store *stores = calloc(cap, sizeof *stores);
    ql_status s = raw && hold && stores ? QL_OK : ql_fail(QL_ENOMEM, "out of memory");
    int k = 0;
    for (int i = 0; s == QL_OK && i < n; i++) {
        ql_tensor *t = tensors[i];
        if (t->dtype == QL_NF4 && !allow_nf4) {
            s = ql_fail(QL_EUNSUPPORTED, "%s: tensor '%s' is nf4: save it with qlora.nf4 (transformers 4-bit layout) "
                                         "or dequantize it first", path, names[i]);
            break;
        }
        /* a contiguous CPU copy when needed (nf4 tensors are always contiguous) */
        hold[i] = ql_tensor_device(t).type != QL_DEV_CPU ? ql_tensor_to(t, t->dtype, ql_cpu())
                : t->dtype == QL_NF4 ? ql_tensor_retain(t) : ql_tensor_contiguous(t);
        if (!hold[i]) { s = ql_fail_context(QL_EINVAL, "%s: tensor '%s': ", path, names[i]); break; }
        if (t->dtype == QL_NF4) {
            int e = ql_nf4_st_entries(hold[i], names[i], raw + k, &stores[i]);
            if (e < 0) { s = ql_fail_context(QL_EINVAL, "%s: ", path); break; }
            k += e;
            continue;
        }
        ql_st_raw *r = &raw[k++];
        r->name = names[i];
        r->dtype = ql_dtype_info_of(t->dtype)->st_name;
        r->ndim = t->ndim;
        memcpy(r->shape, t->shape, sizeof t->shape);
        r->data = ql_tensor_data(hold[i]);
        r->nbytes = ql_tensor_nbytes(hold[i]);
    }
    if (s == QL_OK) s = ql_st_save_raw(path, k, raw, nmeta, mk, mv);
    for (int i = 0; hold && i < n; i++) ql_tensor_release(hold[i]);
    for (int i = 0; stores && i < n; i++) ql_nf4_st_entries_free(&stores[i]);
    free(raw);
    free(hold);
    free(stores);
    return s;
}

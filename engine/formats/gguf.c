/*
 * gguf.c — see gguf.h. The writer keeps the key/values and tensor infos in
 * memory until begin, then streams data; the reader validates everything
 * against the file size before handing out a pointer.
 */
#include "gguf.h"
#include "gguf_quant.h"
#include "platform.h"
#include "strbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

/* ---------------------------------------------------------------- type facts */

static const char *const vtype_names[QL_GGUF_NVTYPES] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"
};
static const uint8_t vtype_sizes[QL_GGUF_NVTYPES] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };

const char *ql_gguf_vtype_name(uint32_t t) { return t < QL_GGUF_NVTYPES ? vtype_names[t] : NULL; }
size_t ql_gguf_vtype_size(uint32_t t) { return t < QL_GGUF_NVTYPES ? vtype_sizes[t] : 0; }

int ql_gguf_vtype_parse(const char *name)
{
    for (int i = 0; i < QL_GGUF_NVTYPES; i++) if (!strcmp(name, vtype_names[i])) return i;
    return -1;
}

/* every ggml type number in use: name, elements per block, bytes per block
   (ggml.c's type_traits; 4, 5, 31-33, 36-38 are retired numbers) */
static const struct { uint32_t t; const char *name; uint32_t block, bytes; } ggml_types[] = {
    { 0, "F32", 1, 4 }, { 1, "F16", 1, 2 }, { 2, "Q4_0", 32, 18 }, { 3, "Q4_1", 32, 20 },
    { 6, "Q5_0", 32, 22 }, { 7, "Q5_1", 32, 24 }, { 8, "Q8_0", 32, 34 }, { 9, "Q8_1", 32, 40 },
    { 10, "Q2_K", 256, 84 }, { 11, "Q3_K", 256, 110 }, { 12, "Q4_K", 256, 144 },
    { 13, "Q5_K", 256, 176 }, { 14, "Q6_K", 256, 210 }, { 15, "Q8_K", 256, 292 },
    { 16, "IQ2_XXS", 256, 66 }, { 17, "IQ2_XS", 256, 74 }, { 18, "IQ3_XXS", 256, 98 },
    { 19, "IQ1_S", 256, 50 }, { 20, "IQ4_NL", 32, 18 }, { 21, "IQ3_S", 256, 110 },
    { 22, "IQ2_S", 256, 82 }, { 23, "IQ4_XS", 256, 136 }, { 24, "I8", 1, 1 }, { 25, "I16", 1, 2 },
    { 26, "I32", 1, 4 }, { 27, "I64", 1, 8 }, { 28, "F64", 1, 8 }, { 29, "IQ1_M", 256, 56 },
    { 30, "BF16", 1, 2 }, { 34, "TQ1_0", 256, 54 }, { 35, "TQ2_0", 256, 66 },
    { 39, "MXFP4", 32, 17 },
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

int ql_ggml_type_block(uint32_t t, uint32_t *block, uint32_t *bytes)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].t == t) { *block = ggml_types[i].block; *bytes = ggml_types[i].bytes; return 1; }
    return 0;
}

const char *ql_ggml_type_name(uint32_t t)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++) if (ggml_types[i].t == t) return ggml_types[i].name;
    return NULL;
}

int ql_ggml_type_parse(const char *name)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++) {
        const char *a = ggml_types[i].name, *b = name;
        while (*a && *b && (*a == *b || (*a >= 'A' && *a <= 'Z' && *a + 32 == *b))) { a++; b++; }
        if (!*a && !*b) return (int)ggml_types[i].t;
    }
    return -1;
}

/* ---------------------------------------------------------------- Q8_0 */

void ql_gguf_quantize_q8_0(const float *x, void *out, int64_t n)
{
    uint8_t *y = out;
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) { float v = fabsf(x[j]); amax = amax > v ? amax : v; }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = ql_f32_to_f16(d);
        y[0] = (uint8_t)h; y[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 32; j++) {
            volatile float v = x[j] * id;   /* one rounded product, never fused into something else */
            y[2 + j] = (uint8_t)(int8_t)roundf(v);
        }
    }
}

/* ---------------------------------------------------------------- writer */

typedef struct wtensor {
    char *name;
    uint32_t type, ndim;
    int64_t ne[QL_GGUF_MAX_DIMS];
    uint64_t offset, nbytes, nelem;
} wtensor;

struct ql_gguf_writer {
    char *path;
    uint32_t alignment;
    int have_alignment_kv;
    ql_strbuf kv;                 /* serialized key/values */
    uint64_t nkv;
    char **keys;                  /* for the duplicate check */
    size_t nkeys, capkeys;
    wtensor *t;
    size_t nt, capt;
    uint64_t data_size;
    int begun;
    ql_atomic_file af;
    size_t cur;                   /* tensor being written */
    uint64_t cur_done;            /* its bytes written */
    ql_status err;                /* sticky: after a failure only abort makes sense */
    uint8_t *buf;                 /* CHUNK converted elements */
};

#define CHUNK 65536   /* elements converted at a time (a multiple of 32) */

static void put_u32(ql_strbuf *b, uint32_t v) { ql_strbuf_add(b, &v, 4); }
static void put_u64(ql_strbuf *b, uint64_t v) { ql_strbuf_add(b, &v, 8); }
static void put_str(ql_strbuf *b, const char *s, size_t n) { put_u64(b, n); ql_strbuf_add(b, s, n); }

ql_gguf_writer *ql_gguf_writer_new(const char *path, uint32_t alignment)
{
    if (!alignment) alignment = QL_GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1)) {
        ql_fail(QL_EINVAL, "%s: GGUF alignment %u is not a power of two", path, alignment);
        return NULL;
    }
    ql_gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) { free(w); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    w->alignment = alignment;
    return w;
}


static ql_status wfail(ql_gguf_writer *w, ql_status s) { if (!w->err) w->err = s; return s; }

static ql_status check_state(ql_gguf_writer *w, const char *what, int want_begun)
{
    if (w->err) return ql_fail(w->err, "%s: an earlier GGUF write failed; abort this writer", w->path);
    if (w->begun != want_begun)
        return ql_fail(QL_EINVAL, "%s: %s %s ql_gguf_writer_begin", w->path, what,
                       want_begun ? "needs" : "must come before");
    return QL_OK;
}

/* every key goes through here: general.alignment, which fixes the file's layout, must be a u32
   (readers refuse any other type) */
static ql_status add_key(ql_gguf_writer *w, const char *key, ql_gguf_vtype type)
{
    QL_TRY(check_state(w, "metadata", 0));
    if (!key || !*key) return ql_fail(QL_EINVAL, "%s: empty GGUF metadata key", w->path);
    if (!strcmp(key, "general.alignment") && type != QL_GGUF_U32)
        return ql_fail(QL_EINVAL, "%s: general.alignment must be a u32", w->path);
    for (size_t i = 0; i < w->nkeys; i++)
        if (!strcmp(w->keys[i], key)) return ql_fail(QL_EINVAL, "%s: GGUF metadata key '%s' set twice", w->path, key);
    if (w->nkeys == w->capkeys) {
        size_t nc = w->capkeys ? w->capkeys * 2 : 64;
        char **nk = realloc(w->keys, nc * sizeof *nk);
        if (!nk) return ql_fail(QL_ENOMEM, "out of memory");
        w->keys = nk; w->capkeys = nc;
    }
    if (!(w->keys[w->nkeys] = strdup(key))) return ql_fail(QL_ENOMEM, "out of memory");
    w->nkeys++;
    put_str(&w->kv, key, strlen(key));
    w->nkv++;
    return QL_OK;
}

ql_status ql_gguf_writer_kv(ql_gguf_writer *w, const char *key, ql_gguf_vtype type, const void *value, size_t len)
{
    if ((unsigned)type >= QL_GGUF_NVTYPES || type == QL_GGUF_ARR)
        return ql_fail(QL_EINVAL, "%s: key '%s': use ql_gguf_writer_kv_array for arrays (type %d)", w->path, key, (int)type);
    if (!strcmp(key, "general.alignment")) {
        uint32_t a = 0;
        if (type == QL_GGUF_U32) {
            memcpy(&a, value, 4);
            if (!a || (a & (a - 1))) return ql_fail(QL_EINVAL, "%s: general.alignment %u is not a power of two", w->path, a);
        }
        QL_TRY(add_key(w, key, type));   /* refuses any type but u32 */
        w->alignment = a;
        w->have_alignment_kv = 1;
    } else QL_TRY(add_key(w, key, type));
    put_u32(&w->kv, (uint32_t)type);
    if (type == QL_GGUF_STR) put_str(&w->kv, value, len);
    else if (type == QL_GGUF_BOOL) { uint8_t b = *(const uint8_t *)value ? 1 : 0; ql_strbuf_add(&w->kv, &b, 1); }
    else ql_strbuf_add(&w->kv, value, vtype_sizes[type]);
    return w->kv.oom ? wfail(w, ql_fail(QL_ENOMEM, "out of memory")) : QL_OK;
}

ql_status ql_gguf_writer_kv_array(ql_gguf_writer *w, const char *key, ql_gguf_vtype elem, uint64_t n, const void *data)
{
    if ((unsigned)elem >= QL_GGUF_NVTYPES || elem == QL_GGUF_ARR || elem == QL_GGUF_STR)
        return ql_fail(QL_EINVAL, "%s: key '%s': array elements must be numbers or bools here", w->path, key);
    if (n > SIZE_MAX / 8) return ql_fail(QL_EINVAL, "%s: key '%s': array too long", w->path, key);
    QL_TRY(add_key(w, key, QL_GGUF_ARR));
    put_u32(&w->kv, QL_GGUF_ARR);
    put_u32(&w->kv, (uint32_t)elem);
    put_u64(&w->kv, n);
    if (elem == QL_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++) { uint8_t b = ((const uint8_t *)data)[i] ? 1 : 0; ql_strbuf_add(&w->kv, &b, 1); }
    else if (n) ql_strbuf_add(&w->kv, data, (size_t)n * vtype_sizes[elem]);
    return w->kv.oom ? wfail(w, ql_fail(QL_ENOMEM, "out of memory")) : QL_OK;
}

ql_status ql_gguf_writer_kv_str_array(ql_gguf_writer *w, const char *key, uint64_t n,
                                      const char *const *s, const size_t *lens)
{
    QL_TRY(add_key(w, key, QL_GGUF_ARR));
    put_u32(&w->kv, QL_GGUF_ARR);
    put_u32(&w->kv, QL_GGUF_STR);
    put_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) put_str(&w->kv, s[i], lens ? lens[i] : strlen(s[i]));
    return w->kv.oom ? wfail(w, ql_fail(QL_ENOMEM, "out of memory")) : QL_OK;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

ql_status ql_gguf_writer_add_tensor(ql_gguf_writer *w, const char *name, ql_ggml_type type, int ndim, const int64_t *ne)
{
    QL_TRY(check_state(w, "tensors", 0));
    size_t nl = name ? strlen(name) : 0;
    if (!nl || nl >= QL_GGUF_MAX_NAME)
        return ql_fail(QL_EINVAL, "%s: tensor name '%s' must have 1 to %d bytes", w->path, name ? name : "", QL_GGUF_MAX_NAME - 1);
    uint32_t block, bytes;
    if (!ql_gguf_type_supported(type))
        return ql_fail(QL_EUNSUPPORTED, "%s: tensor '%s': the writer takes F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K, "
                       "Q5_0 and Q5_1, not %s",
                       w->path, name, ql_ggml_type_name(type) ? ql_ggml_type_name(type) : "an unknown type");
    ql_ggml_type_block(type, &block, &bytes);
    if (ndim < 1 || ndim > QL_GGUF_MAX_DIMS)
        return ql_fail(QL_EINVAL, "%s: tensor '%s' has %d dimensions (1 to 4)", w->path, name, ndim);
    uint64_t nel = 1;
    for (int d = 0; d < ndim; d++) {
        if (ne[d] < 0 || (ne[d] && nel > (uint64_t)INT64_MAX / (uint64_t)ne[d]))
            return ql_fail(QL_EINVAL, "%s: tensor '%s': bad dimension %lld", w->path, name, (long long)ne[d]);
        nel *= (uint64_t)ne[d];
    }
    if (ne[0] % block)
        return ql_fail(QL_EINVAL, "%s: tensor '%s': %s needs rows of a multiple of %u elements, not %lld",
                       w->path, name, ql_ggml_type_name(type), block, (long long)ne[0]);
    for (size_t i = 0; i < w->nt; i++)
        if (!strcmp(w->t[i].name, name)) return ql_fail(QL_EINVAL, "%s: tensor '%s' declared twice", w->path, name);
    if (w->nt == w->capt) {
        size_t nc = w->capt ? w->capt * 2 : 64;
        wtensor *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt) return ql_fail(QL_ENOMEM, "out of memory");
        w->t = nt; w->capt = nc;
    }
    wtensor *t = &w->t[w->nt];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return ql_fail(QL_ENOMEM, "out of memory");
    t->type = type;
    t->ndim = (uint32_t)ndim;
    for (int d = 0; d < QL_GGUF_MAX_DIMS; d++) t->ne[d] = d < ndim ? ne[d] : 1;
    t->nelem = nel;
    t->nbytes = nel / block * bytes;
    w->nt++;
    return QL_OK;
}

static ql_status wr(ql_gguf_writer *w, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, w->af.fp) != n)
        return wfail(w, ql_fail(QL_EIO, "%s: write failed; is the disk full?", w->path));
    return QL_OK;
}

static ql_status pad(ql_gguf_writer *w, uint64_t pos)
{
    static const uint8_t zeros[256];
    uint64_t n = align_up(pos, w->alignment) - pos;
    while (n) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        QL_TRY(wr(w, zeros, k));
        n -= k;
    }
    return QL_OK;
}

ql_status ql_gguf_writer_begin(ql_gguf_writer *w)
{
    QL_TRY(check_state(w, "begin", 0));
    if (w->alignment != QL_GGUF_DEFAULT_ALIGNMENT && !w->have_alignment_kv) {
        uint32_t a = w->alignment;
        QL_TRY(ql_gguf_writer_kv(w, "general.alignment", QL_GGUF_U32, &a, 4));
    }
    ql_strbuf h = { 0 };
    ql_strbuf_add(&h, "GGUF", 4);
    put_u32(&h, QL_GGUF_VERSION);
    put_u64(&h, w->nt);
    put_u64(&h, w->nkv);
    if (w->kv.n) ql_strbuf_add(&h, w->kv.p, w->kv.n);
    uint64_t off = 0;
    for (size_t i = 0; i < w->nt; i++) {
        wtensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, t->type);
        t->offset = off;
        put_u64(&h, off);
        off = align_up(off + t->nbytes, w->alignment);
    }
    w->data_size = off;
    if (h.oom) { free(h.p); return wfail(w, ql_fail(QL_ENOMEM, "out of memory")); }
    free(w->kv.p);
    memset(&w->kv, 0, sizeof w->kv);
    if (ql_atomic_open(&w->af, w->path) != QL_OK) { free(h.p); return wfail(w, QL_EIO); }
    w->begun = 1;
    ql_status s = wr(w, h.p, h.n);
    if (s == QL_OK) s = pad(w, h.n);
    free(h.p);
    w->cur = 0;
    w->cur_done = 0;
    return s;
}

const char *ql_gguf_writer_current(const ql_gguf_writer *w)
{
    return w->begun && w->cur < w->nt ? w->t[w->cur].name : NULL;
}

/* after the current tensor's last byte: its padding, then the next tensor */
static ql_status finish_tensor(ql_gguf_writer *w)
{
    while (w->cur < w->nt && w->cur_done == w->t[w->cur].nbytes) {
        QL_TRY(pad(w, w->t[w->cur].nbytes));
        w->cur++;
        w->cur_done = 0;
    }
    return QL_OK;
}

ql_status ql_gguf_writer_write(ql_gguf_writer *w, const void *data, size_t n)
{
    QL_TRY(check_state(w, "data", 1));
    const uint8_t *p = data;
    QL_TRY(finish_tensor(w));   /* zero-size tensors */
    while (n) {
        if (w->cur >= w->nt) return wfail(w, ql_fail(QL_EINVAL, "%s: more tensor data than declared", w->path));
        wtensor *t = &w->t[w->cur];
        uint64_t k = t->nbytes - w->cur_done;
        if (k > n) k = n;
        QL_TRY(wr(w, p, (size_t)k));
        p += k; n -= (size_t)k;
        w->cur_done += k;
        QL_TRY(finish_tensor(w));
    }
    return QL_OK;
}


ql_status ql_gguf_writer_write_f32(ql_gguf_writer *w, const float *x, size_t n)
{
    QL_TRY(check_state(w, "data", 1));
    QL_TRY(finish_tensor(w));
    if (!w->buf && !(w->buf = malloc(CHUNK * 4))) return ql_fail(QL_ENOMEM, "out of memory");
    uint8_t *buf = w->buf;
    while (n) {
        if (w->cur >= w->nt) return wfail(w, ql_fail(QL_EINVAL, "%s: more tensor data than declared", w->path));
        wtensor *t = &w->t[w->cur];
        uint32_t block, bytes;
        ql_ggml_type_block(t->type, &block, &bytes);
        uint64_t left = (t->nbytes - w->cur_done) / bytes * block;   /* elements left in this tensor */
        size_t k = n < CHUNK ? n : CHUNK;
        if (k > left) k = (size_t)left;
        if (k % block)
            return wfail(w, ql_fail(QL_EINVAL, "%s: tensor '%s': %s data must come in whole blocks of %u",
                                    w->path, t->name, ql_ggml_type_name(t->type), block));
        size_t nb = ql_gguf_quantize(t->type, x, buf, (int64_t)k);   /* at most 4 bytes a value: fits */
        QL_TRY(ql_gguf_writer_write(w, buf, nb));
        x += k; n -= k;
    }
    return QL_OK;
}

/* pages of [p, p+n) back to the kernel (see ql_gguf_release_pages) */
static void page_out(const void *p, size_t n)
{
#if defined(__linux__) && defined(MADV_PAGEOUT)
    long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || !p || !n) return;
    uintptr_t a = (uintptr_t)p & ~((uintptr_t)ps - 1);   /* the pages it touches: an edge page shared */
    uintptr_t e = ((uintptr_t)p + n + (uintptr_t)ps - 1) & ~((uintptr_t)ps - 1);   /* is read back if needed */
    madvise((void *)a, e - a, MADV_PAGEOUT);   /* an old kernel says EINVAL: nothing lost */
#else
    (void)p; (void)n;
#endif
}

static int foreign(const ql_tensor *t)
{
    return t && t->storage && t->storage->release && ql_tensor_device(t).type == QL_DEV_CPU;
}

void ql_gguf_release_pages(const ql_tensor *t)
{
    if (foreign(t)) page_out(ql_tensor_data(t), (size_t)ql_dtype_bytes(t->dtype, ql_tensor_numel(t)));
}

#define RELEASE_EVERY ((size_t)16 << 20)   /* source bytes between page-outs */

ql_status ql_gguf_writer_write_tensor(ql_gguf_writer *w, const ql_tensor *src)
{
    QL_TRY(check_state(w, "data", 1));
    QL_TRY(finish_tensor(w));
    if (w->cur >= w->nt) return wfail(w, ql_fail(QL_EINVAL, "%s: more tensors than declared", w->path));
    wtensor *t = &w->t[w->cur];
    if (w->cur_done) return ql_fail(QL_EINVAL, "%s: tensor '%s' was already partly written", w->path, t->name);
    if (ql_tensor_device(src).type != QL_DEV_CPU || !ql_tensor_is_contiguous(src))
        return ql_fail(QL_EINVAL, "%s: tensor '%s': pass a contiguous CPU tensor", w->path, t->name);
    if ((uint64_t)ql_tensor_numel(src) != t->nelem)
        return ql_fail(QL_EINVAL, "%s: tensor '%s' was declared with %llu elements but the data has %lld",
                       w->path, t->name, (unsigned long long)t->nelem, (long long)ql_tensor_numel(src));
    const uint8_t *p = ql_tensor_data(src);
    ql_dtype dt = src->dtype;
    if (dt != QL_F32 && dt != QL_F16 && dt != QL_BF16)
        return ql_fail(QL_EINVAL, "%s: tensor '%s': data must be f32, f16 or bf16, not %s", w->path, t->name, ql_dtype_name(dt));
    const int same = (dt == QL_F16 && t->type == QL_GGML_F16) || (dt == QL_BF16 && t->type == QL_GGML_BF16);
    const size_t esz = dt == QL_F32 ? 4 : 2;
    /* whole quantization blocks per step (CHUNK is a multiple of every block), each step's
       source pages handed back when the memory is a mapped file (ql_gguf_release_pages) */
    const size_t step = same ? RELEASE_EVERY / esz : CHUNK;
    const int drop = foreign(src);
    float *f = NULL;
    if (!same && dt != QL_F32 && !(f = malloc(CHUNK * sizeof *f))) return ql_fail(QL_ENOMEM, "out of memory");
    ql_status s = QL_OK;
    size_t since = 0;
    for (uint64_t i = 0; s == QL_OK && i < t->nelem; i += step) {
        size_t k = t->nelem - i < step ? (size_t)(t->nelem - i) : step;
        const uint8_t *q = p + i * esz;
        if (same) s = ql_gguf_writer_write(w, q, k * esz);   /* same type: bytes as they are */
        else if (dt == QL_F32) s = ql_gguf_writer_write_f32(w, (const float *)q, k);
        else {
            const uint16_t *h = (const uint16_t *)q;
            if (dt == QL_F16) for (size_t j = 0; j < k; j++) f[j] = ql_f16_to_f32(h[j]);
            else for (size_t j = 0; j < k; j++) f[j] = ql_bf16_to_f32(h[j]);
            s = ql_gguf_writer_write_f32(w, f, k);
        }
        since += k * esz;
        if (drop && (since >= RELEASE_EVERY || i + k == t->nelem)) {
            page_out(q + k * esz - since, since);
            since = 0;
        }
    }
    free(f);
    return s;
}

static void writer_free(ql_gguf_writer *w)
{
    for (size_t i = 0; i < w->nkeys; i++) free(w->keys[i]);
    for (size_t i = 0; i < w->nt; i++) free(w->t[i].name);
    free(w->keys); free(w->t); free(w->kv.p); free(w->buf); free(w->path);
    free(w);
}

void ql_gguf_writer_abort(ql_gguf_writer *w)
{
    if (!w) return;
    if (w->begun) ql_atomic_abort(&w->af);
    writer_free(w);
}

ql_status ql_gguf_writer_close(ql_gguf_writer *w)
{
    ql_status s = w->err ? ql_fail(w->err, "%s: an earlier GGUF write failed; nothing was saved", w->path) : QL_OK;
    if (s == QL_OK && !w->begun) s = ql_gguf_writer_begin(w);
    if (s == QL_OK) s = finish_tensor(w);
    if (s == QL_OK && w->cur < w->nt)
        s = ql_fail(QL_EINVAL, "%s: tensor '%s' (%zu of %zu) got %llu of its %llu bytes; nothing was saved",
                    w->path, w->t[w->cur].name, w->cur + 1, w->nt,
                    (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes);
    if (s != QL_OK) { ql_gguf_writer_abort(w); return s; }
    s = ql_atomic_commit(&w->af);
    writer_free(w);
    return s;
}

/* ---------------------------------------------------------------- reader */

struct ql_gguf_file {
    char *path;
    ql_mapping m;
    uint32_t version, alignment;
    uint64_t data_off;
    int64_t nkv, nt;
    ql_gguf_kv *kv;
    ql_gguf_tensor_info *t;
    char *names;         /* keys and tensor names, NUL-terminated, one block */
};

typedef struct {
    const uint8_t *p, *base, *end;
    const char *path;
} rd;

static ql_status rfail(rd *r, const char *what)
{
    return ql_fail(QL_EFORMAT, "%s: bad GGUF at byte %llu: %s; the file is corrupt, truncated or not a GGUF file",
                   r->path, (unsigned long long)(r->p - r->base), what);
}

static ql_status need(rd *r, uint64_t n, const char *what)
{
    return (uint64_t)(r->end - r->p) < n ? rfail(r, what) : QL_OK;
}

static ql_status rd_u32(rd *r, uint32_t *v, const char *what)
{
    QL_TRY(need(r, 4, what)); memcpy(v, r->p, 4); r->p += 4; return QL_OK;
}

static ql_status rd_u64(rd *r, uint64_t *v, const char *what)
{
    QL_TRY(need(r, 8, what)); memcpy(v, r->p, 8); r->p += 8; return QL_OK;
}

/* a string: its bytes stay in the file */
static ql_status rd_str(rd *r, const uint8_t **s, uint64_t *n, const char *what)
{
    QL_TRY(rd_u64(r, n, what));
    if ((uint64_t)(r->end - r->p) < *n) { r->p -= 8; return rfail(r, what); }
    *s = r->p;
    r->p += *n;
    return QL_OK;
}

/* skips a value of type t, checking it fits; string array element offsets go to off */
static ql_status rd_value(rd *r, uint32_t t, int depth, uint32_t *arr_type, uint64_t *n, uint64_t **off)
{
    char what[64];
    if (t >= QL_GGUF_NVTYPES) {
        snprintf(what, sizeof what, "unknown value type %u", t);
        return rfail(r, what);
    }
    if (t == QL_GGUF_STR) { const uint8_t *s; return rd_str(r, &s, n, "string value runs past the end"); }
    if (t != QL_GGUF_ARR) {
        *n = 1;
        QL_TRY(need(r, vtype_sizes[t], "value runs past the end"));
        if (t == QL_GGUF_BOOL && *r->p > 1) return rfail(r, "bool value other than 0 or 1");
        r->p += vtype_sizes[t];
        return QL_OK;
    }
    if (depth > 8) return rfail(r, "arrays nested too deep");
    uint32_t et;
    QL_TRY(rd_u32(r, &et, "array type runs past the end"));
    QL_TRY(rd_u64(r, n, "array length runs past the end"));
    if (arr_type) *arr_type = et;
    if (et >= QL_GGUF_NVTYPES) { r->p -= 12; snprintf(what, sizeof what, "unknown array element type %u", et); return rfail(r, what); }
    if (et != QL_GGUF_STR && et != QL_GGUF_ARR) {
        if (*n > (uint64_t)(r->end - r->p) / vtype_sizes[et]) return rfail(r, "array runs past the end of the file");
        if (et == QL_GGUF_BOOL)
            for (uint64_t i = 0; i < *n; i++) if (r->p[i] > 1) return rfail(r, "bool array element other than 0 or 1");
        r->p += *n * vtype_sizes[et];
        return QL_OK;
    }
    /* each string or nested array takes at least 8 bytes */
    if (*n > (uint64_t)(r->end - r->p) / 8) return rfail(r, "array runs past the end of the file");
    uint64_t *o = NULL;
    if (et == QL_GGUF_STR && off) {
        o = malloc((size_t)(*n ? *n : 1) * sizeof *o);
        if (!o) return ql_fail(QL_ENOMEM, "out of memory");
    }
    const uint8_t *start = r->p;
    for (uint64_t i = 0; i < *n; i++) {
        uint64_t m;
        if (o) o[i] = (uint64_t)(r->p - start);
        ql_status s = rd_value(r, et, depth + 1, NULL, &m, NULL);
        if (s) { free(o); return s; }
    }
    if (off) *off = o;
    return QL_OK;
}

static int has_nul(const uint8_t *s, uint64_t n) { return memchr(s, 0, (size_t)n) != NULL; }

static int cmp_off(const void *a, const void *b)
{
    const ql_gguf_tensor_info *x = *(ql_gguf_tensor_info *const *)a, *y = *(ql_gguf_tensor_info *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* the first name that appears twice, or NULL */
static const char *find_dup(const char **names, int64_t n)
{
    if (n < 2) return NULL;
    qsort(names, (size_t)n, sizeof *names, cmp_name);
    for (int64_t i = 1; i < n; i++) if (!strcmp(names[i - 1], names[i])) return names[i];
    return NULL;
}

ql_gguf_file *ql_gguf_open(const char *path)
{
    ql_gguf_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path ? path : ""))) { free(f); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    if (ql_map_file(path, &f->m) != QL_OK) { ql_gguf_close(f); return NULL; }
    rd r = { f->m.data, f->m.data, (const uint8_t *)f->m.data + f->m.size, f->path };
    ql_status s = QL_OK;
    uint64_t nt = 0, nkv = 0;
    if (f->m.size < 24) {
        ql_fail(QL_EFORMAT, "%s: %zu bytes is too short for a GGUF file (truncated?)", path, f->m.size);
        ql_gguf_close(f);
        return NULL;
    }
    if (memcmp(r.p, "GGUF", 4)) {
        ql_fail(QL_EFORMAT, "%s: not a GGUF file (it does not start with \"GGUF\")", path);
        ql_gguf_close(f);
        return NULL;
    }
    r.p += 4;
    rd_u32(&r, &f->version, "");
    if (f->version == 0x03000000u || f->version == 0x02000000u) s = ql_fail(QL_EUNSUPPORTED, "%s: a big-endian GGUF file; convert it to little-endian (gguf-py's gguf_convert_endian)", path);
    else if (f->version == 1) s = ql_fail(QL_EUNSUPPORTED, "%s: GGUF version 1 is obsolete; re-convert the model", path);
    else if (f->version != 2 && f->version != 3) s = ql_fail(QL_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are)", path, f->version);
    if (s == QL_OK) s = rd_u64(&r, &nt, "");
    if (s == QL_OK) s = rd_u64(&r, &nkv, "");
    /* a key/value takes at least 13 bytes, a tensor info at least 28 */
    if (s == QL_OK && nkv > f->m.size / 13) s = rfail(&r, "key/value count larger than the file can hold");
    if (s == QL_OK && nt > f->m.size / 28) s = rfail(&r, "tensor count larger than the file can hold");
    if (s != QL_OK) { ql_gguf_close(f); return NULL; }
    f->nkv = (int64_t)nkv;
    f->nt = (int64_t)nt;
    f->kv = calloc((size_t)nkv + 1, sizeof *f->kv);
    f->t = calloc((size_t)nt + 1, sizeof *f->t);
    if (!f->kv || !f->t) { ql_fail(QL_ENOMEM, "out of memory"); ql_gguf_close(f); return NULL; }
    /* names are copied into one block: the key and tensor name bytes are at most the file size */
    ql_strbuf names = { 0 };
    uint64_t *name_off = malloc(((size_t)nkv + (size_t)nt + 1) * sizeof *name_off);
    if (!name_off) { ql_fail(QL_ENOMEM, "out of memory"); ql_gguf_close(f); return NULL; }
    f->alignment = QL_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; s == QL_OK && i < nkv; i++) {
        ql_gguf_kv *kv = &f->kv[i];
        const uint8_t *k = NULL;
        uint64_t kn;
        const uint8_t *at = r.p;
        if ((s = rd_str(&r, &k, &kn, "key runs past the end"))) break;
        if (!kn || has_nul(k, kn)) { r.p = at; s = rfail(&r, "empty key or a NUL byte in a key"); break; }
        name_off[i] = names.n;
        ql_strbuf_add(&names, k, (size_t)kn);
        ql_strbuf_add(&names, "", 1);
        if ((s = rd_u32(&r, &kv->type, "value type runs past the end"))) break;
        const uint8_t *v = r.p;
        uint64_t *off = NULL;
        if ((s = rd_value(&r, kv->type, 0, &kv->arr_type, &kv->n, &off))) {
            ql_fail_context(s, "key '%.*s': ", (int)(kn > 200 ? 200 : kn), (const char *)k);
            break;
        }
        kv->str_off = off;
        kv->data = kv->type == QL_GGUF_STR ? v + 8 : kv->type == QL_GGUF_ARR ? v + 12 : v;
        if (kn == 17 && !memcmp(k, "general.alignment", 17)) {
            uint32_t a = 0;
            if (kv->type != QL_GGUF_U32) { s = ql_fail(QL_EFORMAT, "%s: general.alignment is a %s, not a u32", path, ql_gguf_vtype_name(kv->type)); break; }
            memcpy(&a, v, 4);
            if (!a || (a & (a - 1))) { s = ql_fail(QL_EFORMAT, "%s: general.alignment %u is not a power of two", path, a); break; }
            f->alignment = a;
        }
    }
    for (uint64_t i = 0; s == QL_OK && i < nt; i++) {
        ql_gguf_tensor_info *t = &f->t[i];
        const uint8_t *nm = NULL;
        uint64_t nn;
        const uint8_t *at = r.p;
        char what[200];
        if ((s = rd_str(&r, &nm, &nn, "tensor name runs past the end"))) break;
        if (!nn || nn >= QL_GGUF_MAX_NAME || has_nul(nm, nn)) {
            r.p = at;
            snprintf(what, sizeof what, "tensor #%llu has a name of %llu bytes (1 to %d, no NUL)",
                     (unsigned long long)i, (unsigned long long)nn, QL_GGUF_MAX_NAME - 1);
            s = rfail(&r, what);
            break;
        }
        name_off[nkv + i] = names.n;
        ql_strbuf_add(&names, nm, (size_t)nn);
        ql_strbuf_add(&names, "", 1);
        if ((s = rd_u32(&r, &t->ndim, "tensor info runs past the end"))) break;
        if (t->ndim < 1 || t->ndim > QL_GGUF_MAX_DIMS) {
            snprintf(what, sizeof what, "tensor '%.*s' has %u dimensions (1 to 4)", (int)nn, (const char *)nm, t->ndim);
            s = rfail(&r, what);
            break;
        }
        uint64_t nel = 1;
        for (uint32_t d = 0; d < QL_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; s == QL_OK && d < t->ndim; d++) {
            uint64_t v;
            if ((s = rd_u64(&r, &v, "tensor info runs past the end"))) break;
            if (v > (uint64_t)INT64_MAX || (v && nel > (uint64_t)INT64_MAX / v)) {
                snprintf(what, sizeof what, "tensor '%.*s' has an impossible size", (int)nn, (const char *)nm);
                s = rfail(&r, what);
                break;
            }
            t->ne[d] = (int64_t)v;
            nel *= v;
        }
        if (s) break;
        if ((s = rd_u32(&r, &t->type, "tensor info runs past the end"))) break;
        uint32_t block, bytes;
        if (!ql_ggml_type_block(t->type, &block, &bytes)) {
            snprintf(what, sizeof what, "tensor '%.*s' has unknown ggml type %u", (int)nn, (const char *)nm, t->type);
            s = rfail(&r, what);
            break;
        }
        if (t->ne[0] % block) {
            s = ql_fail(QL_EFORMAT, "%s: tensor '%.*s': rows of %lld elements are not whole %s blocks of %u",
                        path, (int)nn, (const char *)nm, (long long)t->ne[0], ql_ggml_type_name(t->type), block);
            break;
        }
        if (nel / block > UINT64_MAX / bytes) {
            snprintf(what, sizeof what, "tensor '%.*s' has an impossible size", (int)nn, (const char *)nm);
            s = rfail(&r, what);
            break;
        }
        t->nbytes = nel / block * bytes;
        if ((s = rd_u64(&r, &t->offset, "tensor info runs past the end"))) break;
    }
    if (s == QL_OK && names.oom) s = ql_fail(QL_ENOMEM, "out of memory");
    if (s == QL_OK) {
        f->names = names.p;
        names.p = NULL;
        for (int64_t i = 0; i < f->nkv; i++) f->kv[i].key = f->names + name_off[i];
        for (int64_t i = 0; i < f->nt; i++) f->t[i].name = f->names + name_off[f->nkv + i];
    }
    free(names.p);
    free(name_off);
    if (s != QL_OK) { ql_gguf_close(f); return NULL; }
    /* unique keys and names */
    int64_t nmax = f->nkv > f->nt ? f->nkv : f->nt;
    const char **tmp = malloc((size_t)(nmax + 1) * sizeof *tmp);
    if (!tmp) { ql_fail(QL_ENOMEM, "out of memory"); ql_gguf_close(f); return NULL; }
    for (int64_t i = 0; i < f->nkv; i++) tmp[i] = f->kv[i].key;
    const char *dup = find_dup(tmp, f->nkv);
    if (dup) s = ql_fail(QL_EFORMAT, "%s: metadata key '%s' appears twice", path, dup);
    for (int64_t i = 0; s == QL_OK && i < f->nt; i++) tmp[i] = f->t[i].name;
    if (s == QL_OK && (dup = find_dup(tmp, f->nt))) s = ql_fail(QL_EFORMAT, "%s: tensor '%s' appears twice", path, dup);
    free(tmp);
    /* the data section and every tensor in it */
    uint64_t pos = (uint64_t)(r.p - r.base);
    f->data_off = align_up(pos, f->alignment);
    uint64_t data_size = f->data_off <= f->m.size ? f->m.size - f->data_off : 0;
    if (s == QL_OK && f->nt > 0 && f->data_off > f->m.size)
        s = ql_fail(QL_EFORMAT, "%s: the file ends before its data section (truncated)", path);
    for (int64_t i = 0; s == QL_OK && i < f->nt; i++) {
        ql_gguf_tensor_info *t = &f->t[i];
        if (t->offset % f->alignment)
            s = ql_fail(QL_EFORMAT, "%s: tensor '%s' at data offset %llu is not aligned to %u bytes",
                        path, t->name, (unsigned long long)t->offset, f->alignment);
        else if (t->offset > data_size || t->nbytes > data_size - t->offset)
            s = ql_fail(QL_EFORMAT, "%s: tensor '%s' (%llu bytes at data offset %llu) runs past the end of the file "
                                    "(%llu data bytes): the file is truncated", path, t->name,
                        (unsigned long long)t->nbytes, (unsigned long long)t->offset, (unsigned long long)data_size);
    }
    if (s == QL_OK && f->nt > 1) {
        ql_gguf_tensor_info **order = malloc((size_t)f->nt * sizeof *order);
        if (!order) s = ql_fail(QL_ENOMEM, "out of memory");
        else {
            for (int64_t i = 0; i < f->nt; i++) order[i] = &f->t[i];
            qsort(order, (size_t)f->nt, sizeof *order, cmp_off);
            for (int64_t i = 1; s == QL_OK && i < f->nt; i++)
                if (order[i]->offset < order[i - 1]->offset + order[i - 1]->nbytes)
                    s = ql_fail(QL_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data section",
                                path, order[i - 1]->name, order[i]->name);
            free(order);
        }
    }
    if (s != QL_OK) { ql_gguf_close(f); return NULL; }
    return f;
}

void ql_gguf_close(ql_gguf_file *f)
{
    if (!f) return;
    if (f->kv) for (int64_t i = 0; i < f->nkv; i++) free((void *)f->kv[i].str_off);
    free(f->kv); free(f->t); free(f->names);
    ql_unmap_file(&f->m);
    free(f->path);
    free(f);
}

const char *ql_gguf_path(const ql_gguf_file *f) { return f->path; }
uint32_t ql_gguf_version(const ql_gguf_file *f) { return f->version; }
uint32_t ql_gguf_alignment(const ql_gguf_file *f) { return f->alignment; }
uint64_t ql_gguf_data_offset(const ql_gguf_file *f) { return f->data_off; }
int64_t ql_gguf_kv_count(const ql_gguf_file *f) { return f->nkv; }
const ql_gguf_kv *ql_gguf_kv_at(const ql_gguf_file *f, int64_t i) { return i >= 0 && i < f->nkv ? &f->kv[i] : NULL; }
int64_t ql_gguf_tensor_count(const ql_gguf_file *f) { return f->nt; }
const ql_gguf_tensor_info *ql_gguf_tensor_at(const ql_gguf_file *f, int64_t i) { return i >= 0 && i < f->nt ? &f->t[i] : NULL; }

const ql_gguf_kv *ql_gguf_find(const ql_gguf_file *f, const char *key)
{
    for (int64_t i = 0; i < f->nkv; i++) if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

int64_t ql_gguf_find_tensor(const ql_gguf_file *f, const char *name)
{
    for (int64_t i = 0; i < f->nt; i++) if (!strcmp(f->t[i].name, name)) return i;
    return -1;
}

const void *ql_gguf_tensor_data(const ql_gguf_file *f, int64_t i)
{
    return i >= 0 && i < f->nt ? (const uint8_t *)f->m.data + f->data_off + f->t[i].offset : NULL;
}

/* element i of a scalar (i = 0) or of a numeric array */
static const uint8_t *elem(const ql_gguf_kv *kv, uint64_t i, uint32_t *t)
{
    *t = kv->type == QL_GGUF_ARR ? kv->arr_type : kv->type;
    uint64_t n = kv->type == QL_GGUF_ARR ? kv->n : 1;
    if (i >= n || *t == QL_GGUF_STR || *t == QL_GGUF_ARR) return NULL;
    return kv->data + i * vtype_sizes[*t];
}

int64_t ql_gguf_kv_int(const ql_gguf_kv *kv, uint64_t i)
{
    uint32_t t;
    const uint8_t *p = elem(kv, i, &t);
    if (!p) return 0;
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; float f; double d; } v;
    memcpy(&v, p, vtype_sizes[t]);
    switch (t) {
    case QL_GGUF_U8: case QL_GGUF_BOOL: return v.u8;
    case QL_GGUF_I8: return v.i8;
    case QL_GGUF_U16: return v.u16;
    case QL_GGUF_I16: return v.i16;
    case QL_GGUF_U32: return v.u32;
    case QL_GGUF_I32: return v.i32;
    case QL_GGUF_U64: return (int64_t)v.u64;
    case QL_GGUF_I64: return v.i64;
    case QL_GGUF_F32: return (int64_t)v.f;
    case QL_GGUF_F64: return (int64_t)v.d;
    }
    return 0;
}

uint64_t ql_gguf_kv_uint(const ql_gguf_kv *kv, uint64_t i)
{
    uint32_t t;
    const uint8_t *p = elem(kv, i, &t);
    if (p && t == QL_GGUF_U64) { uint64_t v; memcpy(&v, p, 8); return v; }
    return (uint64_t)ql_gguf_kv_int(kv, i);
}

double ql_gguf_kv_float(const ql_gguf_kv *kv, uint64_t i)
{
    uint32_t t;
    const uint8_t *p = elem(kv, i, &t);
    if (!p) return 0;
    if (t == QL_GGUF_F32) { float v; memcpy(&v, p, 4); return v; }
    if (t == QL_GGUF_F64) { double v; memcpy(&v, p, 8); return v; }
    if (t == QL_GGUF_U64) return (double)ql_gguf_kv_uint(kv, i);
    return (double)ql_gguf_kv_int(kv, i);
}

const char *ql_gguf_kv_str(const ql_gguf_kv *kv, uint64_t i, uint64_t *len)
{
    *len = 0;
    if (kv->type == QL_GGUF_STR) { if (i) return NULL; *len = kv->n; return (const char *)kv->data; }
    if (kv->type != QL_GGUF_ARR || kv->arr_type != QL_GGUF_STR || i >= kv->n || !kv->str_off) return NULL;
    const uint8_t *p = kv->data + kv->str_off[i];
    memcpy(len, p, 8);
    return (const char *)p + 8;
}

ql_tensor *ql_gguf_tensor_f32(const ql_gguf_file *f, int64_t i)
{
    const ql_gguf_tensor_info *t = ql_gguf_tensor_at(f, i);
    if (!t) { ql_fail(QL_EINVAL, "%s: no tensor #%lld", f->path, (long long)i); return NULL; }
    if (!ql_gguf_type_supported(t->type)) {
        ql_fail(QL_EUNSUPPORTED, "%s: tensor '%s' is %s; qlora reads F32, F16, BF16, Q8_0, Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1",
                f->path, t->name, ql_ggml_type_name(t->type));
        return NULL;
    }
    int64_t shape[QL_GGUF_MAX_DIMS];
    for (uint32_t d = 0; d < t->ndim; d++) shape[d] = t->ne[t->ndim - 1 - d];
    ql_tensor *o = ql_tensor_new(QL_F32, (int)t->ndim, shape, ql_cpu());
    if (!o) return NULL;
    float *y = ql_tensor_data(o);
    ql_gguf_dequantize(t->type, ql_gguf_tensor_data(f, i), y, ql_tensor_numel(o));   /* rows are whole blocks (open checked) */
    return o;
}

/*
 * tokenizer.c — loading tokenizer.json, encode and decode (see tokenizer.h).
 *
 * The byte-level models (GPT-2, Llama 3, Qwen) are run on raw bytes: at load
 * the vocabulary's byte-to-unicode strings ("Ġthe") are mapped back to bytes
 * (" the"), so the ByteLevel pre-tokenizer step costs nothing and BPE starts
 * from one symbol per byte. BPE merges are looked up by (left id, right id) in
 * an open-addressing table. Words under 64 symbols merge by the quadratic
 * scan (fastest for short words); longer ones with a heap, as HF does; both
 * apply the lowest-rank pair first, leftmost on ties.
 *
 * Per-call scratch lives in an enc_ctx (no thread-local state), so a loaded
 * ql_tokenizer is read-only and shared by threads.
 */
#include "tokenizer_internal.h"
#include "strbuf.h"
#include "jinja.h"
#include "json.h"
#include "platform.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>
#include <threads.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

#define NOID (-1)

/* ------------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 31; h *= 0x7fb5d329728ea185ull;
    h ^= h >> 27; h *= 0x81dadef4bc2dd44dull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        p += 8; n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    return mix64(h ^ v);
}

/* string -> id map over strings stored in a blob (offset/length per id) */
typedef struct strmap {
    int32_t *slot; /* id or NOID */
    uint32_t mask;
} strmap;

typedef struct blobstr { uint32_t off, len; } blobstr;

/* ------------------------------------------------------------------ pieces */

typedef enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWER, NORM_PREPEND, NORM_REPLACE } norm_kind;
typedef struct norm_op {
    norm_kind kind;
    char *a; size_t alen; /* prepend text / replace pattern */
    char *b; size_t blen; /* replace content */
} norm_op;

typedef enum { PRE_GPT2, PRE_QWEN, PRE_LLAMA3, PRE_PCRE, PRE_BYTELEVEL, PRE_METASPACE } pre_kind;
typedef enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } split_behavior;
typedef struct pre_op {
    pre_kind kind;
    int add_prefix_space, use_regex;     /* ByteLevel */
    split_behavior behavior; int invert; /* Split */
    pcre2_code *re;
    char repl[8]; size_t repl_len;       /* Metaspace replacement */
    int prepend_scheme;                  /* 0 always, 1 first, 2 never */
    int split;                           /* Metaspace split */
} pre_op;

typedef struct added_tok {
    int32_t id;
    char *content; size_t len;
    int lstrip, rstrip, single_word, normalized, special;
} added_tok;

typedef struct trie_node { int32_t child, sibling, tok; uint8_t byte; } trie_node;
typedef struct trie {
    trie_node *nodes; int n, cap;
    uint8_t first[256];
} trie;

typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } dec_kind;
typedef struct merge_ent { uint64_t key, val; } merge_ent;

typedef struct dec_op {
    dec_kind kind;
    char *a; size_t alen, blen; char *b;
    int start, stop;
    int prepend_scheme;
} dec_op;

struct ql_tokenizer {
    char *name;
    int32_t nids;             /* max id + 1 */
    char *blob; size_t blob_len, blob_cap;
    blobstr *tok;             /* [nids] token string as in the JSON; len UINT32_MAX if none */
    blobstr *raw;             /* [nids] model key (raw bytes for byte-level); len UINT32_MAX if none */
    strmap model_map;         /* raw key -> id, model vocabulary only */
    strmap tok_map;           /* token string -> id, vocabulary and added tokens */
    uint8_t *special;         /* [nids] 1 for special added tokens */
    uint8_t *is_added;        /* [nids] */

    int byte_level;
    int32_t byte_id[256];     /* byte-level: the id of each single byte */
    int32_t fallback_id[256]; /* <0xXX> */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;

    merge_ent *merges;        /* (left<<32 | right) -> (rank<<32 | new id), open addressing */
    uint64_t mmask;
    uint64_t serial;          /* identifies this tokenizer to the per-thread word caches */
    int sp_split;             /* SentencePiece-style: words may be cut before each U+2581 that follows another character */
    int32_t *char_id;         /* [0x10000] non-byte-level: id of each BMP character, NOID if none */

    norm_op *norm; int nnorm;
    pre_op *pre; int npre;
    added_tok *added; int nadded;
    trie trie_raw, trie_norm;

    int32_t *post_pre, *post_suf; int npost_pre, npost_suf;
    dec_op *dec; int ndec; int has_decoder;

    char *bos, *eos, *pad, *unk, *chat_template;
    ql_jinja *chat_jinja;        /* chat_template parsed once at load (NULL: none, or it does not parse) */
    int32_t bos_id, eos_id, pad_id;
};

/* ------------------------------------------------------------------ small helpers */

void ql_tok_ids_free(ql_tok_ids *v)
{
    free(v->ids);
    v->ids = NULL; v->n = v->cap = 0;
}

static int ids_reserve(ql_tok_ids *v, size_t extra)
{
    if (v->n + extra <= v->cap) return 1;
    size_t nc = v->cap ? v->cap : 64;
    while (nc < v->n + extra) nc *= 2;
    int32_t *ni = realloc(v->ids, nc * sizeof *ni);
    if (!ni) return 0;
    v->ids = ni; v->cap = nc;
    return 1;
}

static inline int ids_push(ql_tok_ids *v, int32_t id)
{
    if (v->n == v->cap && !ids_reserve(v, 1)) return 0;
    v->ids[v->n++] = id;
    return 1;
}


static char *xstrndup(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) { memcpy(r, s, n); r[n] = 0; }
    return r;
}

static int utf8_enc(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* GPT-2 byte <-> unicode map: printable bytes map to themselves, the rest to U+0100 + k. */
static uint32_t byte_to_cp[256];
static int16_t cp_to_byte[0x144];
static once_flag bytemap_once = ONCE_FLAG_INIT;
static void bytemap_build(void)
{
    int k = 0;
    for (int i = 0; i < 0x144; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_to_cp[b] = keep ? (uint32_t)b : (uint32_t)(0x100 + k++);
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

/* Maps a byte-level token string to raw bytes in out (capacity >= len);
   returns the byte count or -1 when a character is outside the map. */
static long bytelevel_to_raw(const char *s, size_t len, char *out)
{
    size_t i = 0, o = 0;
    while (i < len) {
        int l;
        uint32_t cp = ql_u8dec((const uint8_t *)s, len, i, &l);
        if (cp >= 0x144 || cp_to_byte[cp] < 0) return -1;
        out[o++] = (char)cp_to_byte[cp];
        i += (size_t)l;
    }
    return (long)o;
}

/* ------------------------------------------------------------------ blob and maps */

static int blob_add(ql_tokenizer *t, const char *s, size_t n, blobstr *out)
{
    if (t->blob_len + n + 1 > t->blob_cap) {
        size_t nc = t->blob_cap ? t->blob_cap : (1u << 20);
        while (nc < t->blob_len + n + 1) nc *= 2;
        char *nb = realloc(t->blob, nc);
        if (!nb) return 0;
        t->blob = nb; t->blob_cap = nc;
    }
    memcpy(t->blob + t->blob_len, s, n);
    t->blob[t->blob_len + n] = 0;
    out->off = (uint32_t)t->blob_len;
    out->len = (uint32_t)n;
    t->blob_len += n + 1;
    return 1;
}

static int strmap_init(strmap *m, size_t count)
{
    size_t cap = 16;
    while (cap < count * 2 + 16) cap *= 2;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return 0;
    for (size_t i = 0; i < cap; i++) m->slot[i] = NOID;
    m->mask = (uint32_t)(cap - 1);
    return 1;
}

static inline int32_t strmap_get(const ql_tokenizer *t, const strmap *m, const blobstr *keys,
                                 const void *s, size_t n)
{
    uint32_t h = (uint32_t)hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t id = m->slot[h];
        if (id == NOID) return NOID;
        if (keys[id].len == n && !memcmp(t->blob + keys[id].off, s, n)) return id;
        h = (h + 1) & m->mask;
    }
}

/* Inserts id (its key already in keys[id]); keeps an existing entry. */
static void strmap_put(const ql_tokenizer *t, strmap *m, const blobstr *keys, int32_t id)
{
    const char *s = t->blob + keys[id].off;
    size_t n = keys[id].len;
    uint32_t h = (uint32_t)hash_bytes((const uint8_t *)s, n) & m->mask;
    for (;;) {
        int32_t o = m->slot[h];
        if (o == NOID) { m->slot[h] = id; return; }
        if (keys[o].len == n && !memcmp(t->blob + keys[o].off, s, n)) return;
        h = (h + 1) & m->mask;
    }
}

static inline int merge_get(const ql_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *nid)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = mix64(k) & t->mmask;
    for (;;) {
        const merge_ent *e = &t->merges[h];
        if (e->key == k) { *rank = (uint32_t)(e->val >> 32); *nid = (int32_t)(uint32_t)e->val; return 1; }
        if (e->key == UINT64_MAX) return 0;
        h = (h + 1) & t->mmask;
    }
}

static void merge_put(ql_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t nid)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = mix64(k) & t->mmask;
    while (t->merges[h].key != UINT64_MAX && t->merges[h].key != k) h = (h + 1) & t->mmask;
    t->merges[h].key = k; /* a repeated pair takes the later rank, as HF's HashMap collect does */
    t->merges[h].val = ((uint64_t)rank << 32) | (uint32_t)nid;
}

/* ------------------------------------------------------------------ trie of added tokens */

static int trie_add(trie *tr, const char *s, size_t n, int32_t tok)
{
    if (!tr->nodes) {
        tr->cap = 64;
        tr->nodes = malloc((size_t)tr->cap * sizeof *tr->nodes);
        if (!tr->nodes) return 0;
        tr->nodes[0] = (trie_node){ -1, -1, -1, 0 };
        tr->n = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            if (tr->n == tr->cap) {
                trie_node *nn = realloc(tr->nodes, (size_t)tr->cap * 2 * sizeof *nn);
                if (!nn) return 0;
                tr->nodes = nn; tr->cap *= 2;
            }
            c = tr->n++;
            tr->nodes[c] = (trie_node){ -1, tr->nodes[cur].child, -1, b };
            tr->nodes[cur].child = c;
        }
        cur = c;
    }
    if (tr->nodes[cur].tok < 0) tr->nodes[cur].tok = tok; /* first listed wins on duplicates */
    if (n) tr->first[(uint8_t)s[0]] = 1;
    return 1;
}

/* Longest token matching at s[i]; returns its index or -1 and sets *end. */
static inline int32_t trie_match(const trie *tr, const uint8_t *s, size_t n, size_t i, size_t *end)
{
    int32_t cur = 0, best = -1;
    for (size_t j = i; j < n; j++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[j]) c = tr->nodes[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->nodes[c].tok >= 0) { best = tr->nodes[c].tok; *end = j + 1; }
    }
    return best;
}

/* ------------------------------------------------------------------ encode context */

typedef struct word_cache word_cache;
typedef struct enc_ctx {
    const ql_tokenizer *t;
    word_cache *cache;
    ql_tok_ids *out;
    int32_t *sym; uint32_t *rank; int32_t *nid; int32_t *prev, *next; uint64_t *heap;
    size_t cap;
    ql_strbuf norm;        /* normalized text of the current segment */
    int oom;
} enc_ctx;

static void ctx_free(enc_ctx *c)
{
    free(c->sym); free(c->rank); free(c->nid); free(c->prev); free(c->next); free(c->heap);
    free(c->norm.p);
    memset(c, 0, sizeof *c);
}

static int ctx_reserve(enc_ctx *c, size_t n)
{
    if (n <= c->cap) return 1;
    size_t nc = c->cap ? c->cap : 256;
    while (nc < n) nc *= 2;
    int32_t *a = realloc(c->sym, nc * sizeof *a); if (a) c->sym = a;
    uint32_t *r = realloc(c->rank, nc * sizeof *r); if (r) c->rank = r;
    int32_t *b = realloc(c->nid, nc * sizeof *b); if (b) c->nid = b;
    int32_t *p = realloc(c->prev, nc * sizeof *p); if (p) c->prev = p;
    int32_t *q = realloc(c->next, nc * sizeof *q); if (q) c->next = q;
    uint64_t *h = realloc(c->heap, nc * 2 * sizeof *h); if (h) c->heap = h;
    if (!a || !r || !b || !p || !q || !h) { c->oom = 1; return 0; }
    c->cap = nc;
    return 1;
}

/* ------------------------------------------------------------------ BPE */

static void bpe_merge_small(enc_ctx *c, size_t n)
{
    const ql_tokenizer *t = c->t;
    int32_t *sym = c->sym, *nid = c->nid;
    uint32_t *rank = c->rank;
    for (size_t i = 0; i + 1 < n; i++)
        if (!merge_get(t, sym[i], sym[i + 1], &rank[i], &nid[i])) rank[i] = UINT32_MAX;
    while (n > 1) {
        uint32_t best = UINT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < best) { best = rank[i]; bi = i; }
        if (best == UINT32_MAX) break;
        sym[bi] = nid[bi];
        memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof *sym);
        memmove(rank + bi, rank + bi + 1, (n - bi - 2) * sizeof *rank);
        memmove(nid + bi, nid + bi + 1, (n - bi - 2) * sizeof *nid);
        n--;
        if (bi > 0 && !merge_get(t, sym[bi - 1], sym[bi], &rank[bi - 1], &nid[bi - 1])) rank[bi - 1] = UINT32_MAX;
        if (bi + 1 < n && !merge_get(t, sym[bi], sym[bi + 1], &rank[bi], &nid[bi])) rank[bi] = UINT32_MAX;
    }
    for (size_t i = 0; i < n; i++) ids_push(c->out, sym[i]);
}

static void heap_push(uint64_t *h, size_t *hn, uint64_t v)
{
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *hn)
{
    uint64_t top = h[0], v = h[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        if (l + 1 < n && h[l + 1] < h[l]) l++;
        if (h[l] >= v) break;
        h[i] = h[l];
        i = l;
    }
    if (n) h[i] = v;
    return top;
}

static void bpe_merge_heap(enc_ctx *c, size_t n)
{
    const ql_tokenizer *t = c->t;
    int32_t *sym = c->sym, *prev = c->prev, *next = c->next;
    uint64_t *h = c->heap;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) { prev[i] = (int32_t)i - 1; next[i] = i + 1 < n ? (int32_t)i + 1 : -1; }
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r; int32_t id;
        if (merge_get(t, sym[i], sym[i + 1], &r, &id)) heap_push(h, &hn, ((uint64_t)r << 32) | i);
    }
    while (hn) {
        uint64_t top = heap_pop(h, &hn);
        uint32_t r = (uint32_t)(top >> 32), pos = (uint32_t)top;
        if (sym[pos] == NOID || next[pos] < 0) continue;
        int32_t nx = next[pos];
        uint32_t r2; int32_t id;
        if (!merge_get(t, sym[pos], sym[nx], &r2, &id) || r2 != r) continue; /* stale entry */
        sym[pos] = id;
        sym[nx] = NOID;
        next[pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = (int32_t)pos;
        if (prev[pos] >= 0 && merge_get(t, sym[prev[pos]], sym[pos], &r2, &id))
            heap_push(h, &hn, ((uint64_t)r2 << 32) | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && merge_get(t, sym[pos], sym[next[pos]], &r2, &id))
            heap_push(h, &hn, ((uint64_t)r2 << 32) | pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) ids_push(c->out, sym[i]);
}

/* Per-thread word cache: direct-mapped, words up to WC_KEY bytes giving up
   to WC_IDS ids. Owned by the thread (freed at its exit by the tss
   destructor); cleared when used with another tokenizer. */
#define WC_SLOTS 16384
#define WC_KEY 22
#define WC_IDS 8
typedef struct wc_ent { uint64_t h; uint8_t klen, nids; char key[WC_KEY]; int32_t ids[WC_IDS]; } wc_ent;
typedef struct word_cache { uint64_t serial; wc_ent e[WC_SLOTS]; } word_cache;
static tss_t wc_key;
static once_flag wc_once = ONCE_FLAG_INIT;
static _Atomic int wc_ok;   /* atomic: set once under call_once, read by every thread */
static void wc_init(void) { atomic_store(&wc_ok, tss_create(&wc_key, free) == thrd_success); }
static word_cache *wc_get(const ql_tokenizer *t)
{
    call_once(&wc_once, wc_init);
    if (!atomic_load(&wc_ok)) return NULL;
    word_cache *w = tss_get(wc_key);
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w || tss_set(wc_key, w) != thrd_success) { free(w); return NULL; }
    }
    if (w->serial != t->serial) {
        memset(w->e, 0, sizeof w->e);
        w->serial = t->serial;
    }
    return w;
}

static void bpe_piece(enc_ctx *c, const uint8_t *s, size_t n);
static void bpe_word_cached(enc_ctx *c, const uint8_t *s, size_t n);

/* BPE on one pre-token, through the word cache. */
static void bpe_word(enc_ctx *c, const uint8_t *s, size_t n)
{
    const ql_tokenizer *t = c->t;
    if (n == 0) return;
    if (t->sp_split) { /* cut before each U+2581 (E2 96 81) that follows another character */
        size_t st = 0;
        for (size_t i = 1; i + 2 < n; i++) {
            if (s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81 &&
                !(i >= 3 && s[i - 3] == 0xE2 && s[i - 2] == 0x96 && s[i - 1] == 0x81)) {
                bpe_word_cached(c, s + st, i - st);
                st = i;
            }
        }
        bpe_word_cached(c, s + st, n - st);
        return;
    }
    bpe_word_cached(c, s, n);
}

static void bpe_word_cached(enc_ctx *c, const uint8_t *s, size_t n)
{
    if (n == 0) return;
    if (n > WC_KEY || !c->cache) { bpe_piece(c, s, n); return; }
    uint64_t h = hash_bytes(s, n);
    wc_ent *e = &c->cache->e[h & (WC_SLOTS - 1)];
    if (e->h == h && e->klen == n && !memcmp(e->key, s, n)) {
        if (!ids_reserve(c->out, e->nids)) { c->oom = 1; return; }
        memcpy(c->out->ids + c->out->n, e->ids, e->nids * sizeof(int32_t));
        c->out->n += e->nids;
        return;
    }
    size_t before = c->out->n;
    bpe_piece(c, s, n);
    size_t got = c->out->n - before;
    if (got <= WC_IDS && !c->oom) {
        e->h = h; e->klen = (uint8_t)n; e->nids = (uint8_t)got;
        memcpy(e->key, s, n);
        memcpy(e->ids, c->out->ids + before, got * sizeof(int32_t));
    }
}

/* BPE on one piece of a pre-token. */
static void bpe_piece(enc_ctx *c, const uint8_t *s, size_t n)
{
    const ql_tokenizer *t = c->t;
    if (t->ignore_merges || n == 1) {
        int32_t id = strmap_get(t, &t->model_map, t->raw, s, n);
        if (id != NOID) { ids_push(c->out, id); return; }
    }
    if (!ctx_reserve(c, n + 1)) return;
    size_t k = 0;
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_id[s[i]];
            if (id != NOID) c->sym[k++] = id;
            else if (t->unk_id != NOID) c->sym[k++] = t->unk_id;
        }
    } else {
        int32_t unk_pending = 0;
        for (size_t i = 0; i < n;) {
            int l;
            uint32_t cp = ql_u8dec(s, n, i, &l);
            int32_t id = cp < 0x10000 ? t->char_id[cp] : strmap_get(t, &t->model_map, t->raw, s + i, (size_t)l);
            if (id != NOID) {
                if (unk_pending) { c->sym[k++] = t->unk_id; unk_pending = 0; }
                c->sym[k++] = id;
            } else {
                int done = 0;
                if (t->byte_fallback) {
                    int ok = 1;
                    for (int j = 0; j < l; j++) if (t->fallback_id[s[i + j]] == NOID) ok = 0;
                    if (ok) {
                        if (!ctx_reserve(c, k + (size_t)l + (n - i) + 1)) return;
                        for (int j = 0; j < l; j++) c->sym[k++] = t->fallback_id[s[i + j]];
                        done = 1;
                    }
                }
                if (!done && t->unk_id != NOID) {
                    if (unk_pending && !t->fuse_unk) c->sym[k++] = t->unk_id;
                    unk_pending = 1;
                }
            }
            i += (size_t)l;
        }
        if (unk_pending) c->sym[k++] = t->unk_id;
    }
    if (k == 0) return;
    if (!ids_reserve(c->out, k)) { c->oom = 1; return; }
    if (k <= 64) bpe_merge_small(c, k);
    else bpe_merge_heap(c, k);
}

/* ------------------------------------------------------------------ pre-tokenizers */

static void pretok(enc_ctx *c, int stage, const uint8_t *s, size_t n, int at_start);

static void emit_split(enc_ctx *c, int stage, const uint8_t *s, size_t n, int at_start)
{
    if (n) pretok(c, stage + 1, s, n, at_start);
}

static void pretok(enc_ctx *c, int stage, const uint8_t *s, size_t n, int at_start)
{
    const ql_tokenizer *t = c->t;
    if (c->oom) return;
    if (stage >= t->npre) { bpe_word(c, s, n); return; }
    const pre_op *op = &t->pre[stage];
    switch (op->kind) {
    case PRE_QWEN: case PRE_LLAMA3: {
        int d = op->kind == PRE_QWEN ? 1 : 3;
        for (size_t i = 0; i < n;) {
            size_t m = ql_tok_match_qwen(s, n, i, d);
            emit_split(c, stage, s + i, m, at_start && i == 0);
            i += m;
        }
        return;
    }
    case PRE_GPT2:
        for (size_t i = 0; i < n;) {
            size_t m = ql_tok_match_gpt2(s, n, i);
            emit_split(c, stage, s + i, m, at_start && i == 0);
            i += m;
        }
        return;
    case PRE_BYTELEVEL: {
        if (op->add_prefix_space && (n == 0 || s[0] != ' ')) {
            uint8_t *b = malloc(n + 1);
            if (!b) { c->oom = 1; return; }
            b[0] = ' ';
            memcpy(b + 1, s, n);
            pre_op tmp = *op;
            (void)tmp;
            if (op->use_regex) {
                for (size_t i = 0; i < n + 1;) {
                    size_t m = ql_tok_match_gpt2(b, n + 1, i);
                    emit_split(c, stage, b + i, m, at_start && i == 0);
                    i += m;
                }
            } else {
                emit_split(c, stage, b, n + 1, at_start);
            }
            free(b);
            return;
        }
        if (op->use_regex) {
            for (size_t i = 0; i < n;) {
                size_t m = ql_tok_match_gpt2(s, n, i);
                emit_split(c, stage, s + i, m, at_start && i == 0);
                i += m;
            }
        } else {
            emit_split(c, stage, s, n, at_start);
        }
        return;
    }
    case PRE_METASPACE: {
        /* replace ' ' by the replacement, prepend it, then split before each replacement */
        size_t cnt = 0;
        for (size_t i = 0; i < n; i++) cnt += s[i] == ' ';
        size_t cap = n + (cnt + 1) * op->repl_len + 1;
        uint8_t *b = malloc(cap);
        if (!b) { c->oom = 1; return; }
        size_t m = 0;
        int prepend = op->prepend_scheme == 0 || (op->prepend_scheme == 1 && at_start);
        if (prepend && !(n >= op->repl_len && !memcmp(s, op->repl, op->repl_len)) && !(n && s[0] == ' ')) {
            memcpy(b, op->repl, op->repl_len); m = op->repl_len;
        }
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') { memcpy(b + m, op->repl, op->repl_len); m += op->repl_len; }
            else b[m++] = s[i];
        }
        if (op->split) {
            size_t st = 0;
            for (size_t i = 0; i < m;) {
                if (i > st && i + op->repl_len <= m && !memcmp(b + i, op->repl, op->repl_len)) {
                    emit_split(c, stage, b + st, i - st, at_start && st == 0);
                    st = i;
                }
                i += (i + op->repl_len <= m && !memcmp(b + i, op->repl, op->repl_len)) ? op->repl_len : 1;
            }
            emit_split(c, stage, b + st, m - st, at_start && st == 0);
        } else {
            emit_split(c, stage, b, m, at_start);
        }
        free(b);
        return;
    }
    case PRE_PCRE: {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(op->re, NULL);
        if (!md) { c->oom = 1; return; }
        /* collect matches, then emit per behavior */
        size_t pos = 0, last = 0, pend_start = 0;
        int have_pend = 0;
        while (pos <= n) {
            int rc = pcre2_match(op->re, s, n, pos, 0, md, NULL);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) { /* empty match: skip one character */
                if (ms >= n) break;
                int l; ql_u8dec(s, n, ms, &l);
                pos = ms + (size_t)l;
                continue;
            }
            size_t gs = last, ge = ms;  /* gap before the match */
            size_t a0 = op->invert ? ms : gs, a1 = op->invert ? me : ge;   /* "non-delimiter" part */
            size_t d0 = op->invert ? gs : ms, d1 = op->invert ? ge : me;   /* delimiter part */
            (void)a0; (void)a1;
            switch (op->behavior) {
            case SPLIT_ISOLATED:
                emit_split(c, stage, s + gs, ge - gs, at_start && gs == 0);
                emit_split(c, stage, s + ms, me - ms, at_start && ms == 0);
                break;
            case SPLIT_REMOVED:
                if (!op->invert) emit_split(c, stage, s + gs, ge - gs, at_start && gs == 0);
                else emit_split(c, stage, s + ms, me - ms, at_start && ms == 0);
                break;
            case SPLIT_MERGED_PREV:
                emit_split(c, stage, s + (have_pend ? pend_start : gs), me - (have_pend ? pend_start : gs), at_start);
                have_pend = 0;
                break;
            case SPLIT_MERGED_NEXT:
                emit_split(c, stage, s + gs, ge - gs, at_start && gs == 0);
                pend_start = ms; have_pend = 1;
                break;
            case SPLIT_CONTIGUOUS:
                emit_split(c, stage, s + gs, ge - gs, at_start && gs == 0);
                emit_split(c, stage, s + d0, d1 - d0, 0);
                break;
            }
            last = me;
            pos = me;
        }
        if (op->behavior == SPLIT_MERGED_NEXT && have_pend) emit_split(c, stage, s + pend_start, n - pend_start, 0);
        else if (!(op->behavior == SPLIT_REMOVED && op->invert)) emit_split(c, stage, s + last, n - last, at_start && last == 0);
        pcre2_match_data_free(md);
        return;
    }
    }
}

/* ------------------------------------------------------------------ normalizers */

/* NFC (opts = UTF8PROC_COMPOSE) by pieces: the text is cut before every
   NFC-inert character (see tokenizer_pretok.c); a piece of one inert
   character is copied, longer pieces go through utf8proc. Other forms run
   utf8proc on the whole text. Invalid UTF-8 is copied unchanged. */
static void nfc_like(const char *s, size_t n, int opts, ql_strbuf *out)
{
    const uint8_t *u = (const uint8_t *)s;
    if (opts != UTF8PROC_COMPOSE) {
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t rl = utf8proc_map(u, (utf8proc_ssize_t)n, &r, (utf8proc_option_t)(opts | UTF8PROC_STABLE));
        if (rl < 0) ql_strbuf_add(out, s, n); else ql_strbuf_add(out, r, (size_t)rl);
        free(r);
        return;
    }
    size_t copied = 0, i = 0;
    while (i < n) {
        /* skip inert characters that are followed by an inert character (or the end) */
        int l;
        uint32_t cp = u[i] < 0x80 ? (l = 1, u[i]) : ql_u8dec(u, n, i, &l);
        size_t j = i + (size_t)l;
        int inert = cp >= 0x110000 || (ql_tok_ucls[cp] & UC_INERT);
        if (inert) {
            if (j >= n) { i = j; break; }
            int l2;
            uint32_t c2 = u[j] < 0x80 ? (l2 = 1, u[j]) : ql_u8dec(u, n, j, &l2);
            if (c2 >= 0x110000 || (ql_tok_ucls[c2] & UC_INERT)) { i = j; continue; }
        }
        /* a piece [i, k): this character and the non-inert ones after it */
        size_t k = j;
        while (k < n) {
            int l2;
            uint32_t c2 = u[k] < 0x80 ? (l2 = 1, u[k]) : ql_u8dec(u, n, k, &l2);
            if (c2 >= 0x110000 || (ql_tok_ucls[c2] & UC_INERT)) break;
            k += (size_t)l2;
        }
        ql_strbuf_add(out, s + copied, i - copied);
        utf8proc_uint8_t *r = NULL;
        utf8proc_ssize_t rl = utf8proc_map(u + i, (utf8proc_ssize_t)(k - i), &r,
                                           (utf8proc_option_t)(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
        if (rl < 0) ql_strbuf_add(out, s + i, k - i); else ql_strbuf_add(out, r, (size_t)rl);
        free(r);
        copied = i = k;
    }
    ql_strbuf_add(out, s + copied, n - copied);
}

/* Applies the normalizer chain to s; result in c->norm. */
static void normalize(enc_ctx *c, const char *s, size_t n)
{
    const ql_tokenizer *t = c->t;
    ql_strbuf a = { 0 }, b = { 0 };
    ql_strbuf_add(&a, s, n);
    for (int k = 0; k < t->nnorm && !a.oom; k++) {
        const norm_op *op = &t->norm[k];
        b.n = 0;
        ql_strbuf_add(&b, "", 0);
        switch (op->kind) {
        case NORM_NFC: nfc_like(a.p, a.n, UTF8PROC_COMPOSE, &b); break;
        case NORM_NFD: nfc_like(a.p, a.n, UTF8PROC_DECOMPOSE, &b); break;
        case NORM_NFKC: nfc_like(a.p, a.n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, &b); break;
        case NORM_NFKD: nfc_like(a.p, a.n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, &b); break;
        case NORM_LOWER:
            for (size_t i = 0; i < a.n;) {
                int l;
                uint32_t cp = ql_u8dec((const uint8_t *)a.p, a.n, i, &l);
                if (cp >= 0x110000) ql_strbuf_add(&b, a.p + i, 1);
                else { char e[4]; ql_strbuf_add(&b, e, (size_t)utf8_enc((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), e)); }
                i += (size_t)l;
            }
            break;
        case NORM_PREPEND:
            if (a.n) ql_strbuf_add(&b, op->a, op->alen);
            ql_strbuf_add(&b, a.p, a.n);
            break;
        case NORM_REPLACE: {
            size_t i = 0, run = 0;
            while (op->alen && i < a.n) {
                const char *q = memchr(a.p + i, op->a[0], a.n - i);
                if (!q) break;
                i = (size_t)(q - a.p);
                if (i + op->alen <= a.n && !memcmp(a.p + i, op->a, op->alen)) {
                    ql_strbuf_add(&b, a.p + run, i - run);
                    ql_strbuf_add(&b, op->b, op->blen);
                    i += op->alen;
                    run = i;
                } else {
                    i++;
                }
            }
            ql_strbuf_add(&b, a.p + run, a.n - run);
            break;
        }
        }
        ql_strbuf tmp = a; a = b; b = tmp;
    }
    if (a.oom || b.oom) c->oom = 1;
    c->norm.n = 0;
    ql_strbuf_add(&c->norm, a.p ? a.p : "", a.n);
    free(a.p); free(b.p);
}

/* ------------------------------------------------------------------ added tokens */

static int is_ws_at_end(const uint8_t *s, size_t i, size_t *start)
{
    /* the character ending at i, if whitespace: sets *start to its start */
    if (i == 0) return 0;
    size_t j = i - 1;
    while (j > 0 && (s[j] & 0xC0) == 0x80 && i - j < 4) j--;
    int l;
    uint32_t cp = ql_u8dec(s, i, j, &l);
    if (j + (size_t)l != i || !(ql_ucls(cp) & UC_WS)) return 0;
    *start = j;
    return 1;
}

static int word_char_before(const uint8_t *s, size_t i)
{
    if (i == 0) return 0;
    size_t j = i - 1;
    while (j > 0 && (s[j] & 0xC0) == 0x80 && i - j < 4) j--;
    int l;
    uint32_t cp = ql_u8dec(s, i, j, &l);
    return cp == '_' || (ql_ucls(cp) & UC_WORD);
}

static int word_char_at(const uint8_t *s, size_t n, size_t i)
{
    if (i >= n) return 0;
    int l;
    uint32_t cp = ql_u8dec(s, n, i, &l);
    return cp == '_' || (ql_ucls(cp) & UC_WORD);
}

typedef void (*segment_fn)(enc_ctx *c, const uint8_t *s, size_t n, int at_start);

/* Splits s by the tokens of tr (leftmost-longest, as HF's aho-corasick):
   pushes token ids, calls fn on the text between them. */
static void split_added(enc_ctx *c, const trie *tr, const uint8_t *s, size_t n, int at_start, segment_fn fn)
{
    const ql_tokenizer *t = c->t;
    size_t seg = 0, i = 0;
    if (tr->nodes) {
        while (i < n) {
            if (!tr->first[s[i]]) { i++; continue; }
            size_t end = 0;
            int32_t k = trie_match(tr, s, n, i, &end);
            if (k < 0) { i++; continue; }
            const added_tok *a = &t->added[k];
            size_t start = i, stop = end;
            if (a->single_word && (word_char_before(s, start) || word_char_at(s, n, stop))) { i = end; continue; }
            if (a->lstrip) {
                size_t ws;
                while (start > seg && is_ws_at_end(s, start, &ws)) start = ws;
            }
            if (a->rstrip) {
                while (stop < n) {
                    int l;
                    uint32_t cp = ql_u8dec(s, n, stop, &l);
                    if (!(ql_ucls(cp) & UC_WS)) break;
                    stop += (size_t)l;
                }
            }
            if (start > seg) fn(c, s + seg, start - seg, at_start && seg == 0);
            ids_push(c->out, a->id);
            seg = i = stop;
        }
    }
    if (n > seg) fn(c, s + seg, n - seg, at_start && seg == 0);
}

static void segment_pretok(enc_ctx *c, const uint8_t *s, size_t n, int at_start)
{
    pretok(c, 0, s, n, at_start);
}

static void segment_normalize(enc_ctx *c, const uint8_t *s, size_t n, int at_start)
{
    const ql_tokenizer *t = c->t;
    if (t->nnorm == 0) { split_added(c, &t->trie_norm, s, n, at_start, segment_pretok); return; }
    normalize(c, (const char *)s, n);
    /* the normalized text must outlive nested use of c->norm: take it */
    ql_strbuf mine = c->norm;
    c->norm = (ql_strbuf){ 0 };
    split_added(c, &t->trie_norm, (const uint8_t *)mine.p, mine.n, at_start, segment_pretok);
    if (!c->norm.p) c->norm = mine; else free(mine.p);
}

static ql_status encode_ctx(enc_ctx *c, const char *text, size_t len, int add_special)
{
    const ql_tokenizer *t = c->t;
    ql_tok_ids *out = c->out;
    if (!c->cache) c->cache = wc_get(t);
    if (add_special) for (int i = 0; i < t->npost_pre; i++) ids_push(out, t->post_pre[i]);
    split_added(c, &t->trie_raw, (const uint8_t *)text, len, 1, segment_normalize);
    if (add_special) for (int i = 0; i < t->npost_suf; i++) ids_push(out, t->post_suf[i]);
    if (c->oom || (out->n > out->cap)) return ql_fail(QL_ENOMEM, "tokenizer: out of memory while encoding");
    return QL_OK;
}

ql_status ql_tokenizer_encode(const ql_tokenizer *tok, const char *text, size_t len, int add_special,
                              ql_tok_ids *out)
{
    if (!tok || (!text && len)) return ql_fail(QL_EINVAL, "ql_tokenizer_encode: NULL tokenizer or text");
    enc_ctx c = { 0 };
    c.t = tok; c.out = out;
    if (!ids_reserve(out, len / 3 + 8)) return ql_fail(QL_ENOMEM, "tokenizer: out of memory while encoding");
    ql_status s = encode_ctx(&c, text ? text : "", len, add_special);
    ctx_free(&c);
    return s;
}

ql_status ql_tokenizer_count(const ql_tokenizer *tok, const char *text, size_t len, int add_special,
                             size_t *count)
{
    ql_tok_ids v = { 0 };
    ql_status s = ql_tokenizer_encode(tok, text, len, add_special, &v);
    *count = v.n;
    ql_tok_ids_free(&v);
    return s;
}

typedef struct batch_job {
    const ql_tokenizer *tok;
    const char *const *texts; const size_t *lens;
    ql_tok_ids *outs;
    int add_special;
    int failed;
} batch_job;

static void batch_run(void *arg, int64_t b, int64_t e)
{
    batch_job *j = arg;
    enc_ctx c = { 0 };
    c.t = j->tok;
    for (int64_t i = b; i < e; i++) {
        c.out = &j->outs[i];
        c.out->n = 0;
        size_t len = j->lens ? j->lens[i] : strlen(j->texts[i]);
        if (encode_ctx(&c, j->texts[i] ? j->texts[i] : "", len, j->add_special) != QL_OK) j->failed = 1;
    }
    ctx_free(&c);
}

ql_status ql_tokenizer_encode_batch(const ql_tokenizer *tok, const char *const *texts, const size_t *lens,
                                    size_t n, int add_special, ql_tok_ids *outs)
{
    if (!tok) return ql_fail(QL_EINVAL, "ql_tokenizer_encode_batch: NULL tokenizer");
    batch_job j = { tok, texts, lens, outs, add_special, 0 };
    ql_parallel_for((int64_t)n, 1, batch_run, &j);
    if (j.failed) return ql_fail(QL_ENOMEM, "tokenizer: out of memory while encoding a batch");
    return QL_OK;
}

/* ------------------------------------------------------------------ decode */

typedef struct strlist { ql_strbuf *v; size_t n, cap; } strlist;

static ql_strbuf *sl_push(strlist *l)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        ql_strbuf *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return NULL;
        l->v = nv; l->cap = nc;
    }
    ql_strbuf *b = &l->v[l->n++];
    *b = (ql_strbuf){ 0 };
    ql_strbuf_add(b, "", 0);
    return b;
}
static void sl_free(strlist *l) { for (size_t i = 0; i < l->n; i++) free(l->v[i].p); free(l->v); *l = (strlist){ 0 }; }

/* Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD. */
static void utf8_lossy(const char *s, size_t n, ql_strbuf *out)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        int l;
        uint32_t cp = ql_u8dec(u, n, i, &l);
        if (cp < 0x110000) { ql_strbuf_add(out, s + i, (size_t)l); i += (size_t)l; continue; }
        /* length of the maximal prefix of a valid sequence */
        uint8_t c0 = u[i];
        size_t need = c0 >= 0xF0 && c0 <= 0xF4 ? 4 : c0 >= 0xE0 && c0 <= 0xEF ? 3 : c0 >= 0xC2 && c0 <= 0xDF ? 2 : 1;
        size_t k = 1;
        if (need > 1) {
            uint8_t lo = 0x80, hi = 0xBF;
            if (c0 == 0xE0) lo = 0xA0; else if (c0 == 0xED) hi = 0x9F;
            else if (c0 == 0xF0) lo = 0x90; else if (c0 == 0xF4) hi = 0x8F;
            if (i + 1 < n && u[i + 1] >= lo && u[i + 1] <= hi) {
                k = 2;
                while (k < need && i + k < n && (u[i + k] & 0xC0) == 0x80) k++;
            }
        }
        ql_strbuf_add(out, "\xEF\xBF\xBD", 3);
        i += k;
    }
}

ql_status ql_tokenizer_decode(const ql_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                              char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    strlist a = { 0 }, b = { 0 };
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->nids || t->tok[id].len == UINT32_MAX) continue; /* HF skips unknown ids */
        if (skip_special && t->special[id]) continue;
        ql_strbuf *s = sl_push(&a);
        if (!s) goto oom;
        ql_strbuf_add(s, t->blob + t->tok[id].off, t->tok[id].len);
    }
    for (int k = 0; k < t->ndec; k++) {
        const dec_op *op = &t->dec[k];
        b.n = 0;
        switch (op->kind) {
        case DEC_BYTELEVEL: {
            ql_strbuf raw = { 0 };
            ql_strbuf_add(&raw, "", 0);
            for (size_t i = 0; i < a.n; i++) {
                char *tmp = malloc(a.v[i].n + 1);
                if (!tmp) { free(raw.p); goto oom; }
                long r = bytelevel_to_raw(a.v[i].p, a.v[i].n, tmp);
                if (r >= 0) ql_strbuf_add(&raw, tmp, (size_t)r);
                else ql_strbuf_add(&raw, a.v[i].p, a.v[i].n);
                free(tmp);
            }
            ql_strbuf *s = sl_push(&b);
            if (!s) { free(raw.p); goto oom; }
            utf8_lossy(raw.p, raw.n, s);
            free(raw.p);
            break;
        }
        case DEC_REPLACE:
            for (size_t i = 0; i < a.n; i++) {
                ql_strbuf *s = sl_push(&b);
                if (!s) goto oom;
                const char *p = a.v[i].p;
                size_t m = a.v[i].n;
                for (size_t j = 0; j < m;) {
                    if (op->alen && j + op->alen <= m && !memcmp(p + j, op->a, op->alen)) {
                        ql_strbuf_add(s, op->b, op->blen); j += op->alen;
                    } else { ql_strbuf_add(s, p + j, 1); j++; }
                }
            }
            break;
        case DEC_BYTEFALLBACK: {
            ql_strbuf pend = { 0 };
            size_t npend = 0;
            ql_strbuf_add(&pend, "", 0);
            for (size_t i = 0; i <= a.n; i++) {
                int isbyte = 0;
                unsigned v = 0;
                if (i < a.n && a.v[i].n == 6 && !memcmp(a.v[i].p, "<0x", 3) && a.v[i].p[5] == '>') {
                    int h1, h2;
                    char c1 = a.v[i].p[3], c2 = a.v[i].p[4];
                    h1 = (c1 >= '0' && c1 <= '9') ? c1 - '0' : (c1 >= 'A' && c1 <= 'F') ? c1 - 'A' + 10 : (c1 >= 'a' && c1 <= 'f') ? c1 - 'a' + 10 : -1;
                    h2 = (c2 >= '0' && c2 <= '9') ? c2 - '0' : (c2 >= 'A' && c2 <= 'F') ? c2 - 'A' + 10 : (c2 >= 'a' && c2 <= 'f') ? c2 - 'a' + 10 : -1;
                    if (h1 >= 0 && h2 >= 0) { isbyte = 1; v = (unsigned)(h1 * 16 + h2); }
                }
                if (isbyte) { char ch = (char)v; ql_strbuf_add(&pend, &ch, 1); npend++; continue; }
                if (npend) {
                    int valid = 1;
                    for (size_t j = 0; j < pend.n;) {
                        int l;
                        if (ql_u8dec((const uint8_t *)pend.p, pend.n, j, &l) >= 0x110000) { valid = 0; break; }
                        j += (size_t)l;
                    }
                    if (valid) { ql_strbuf *s = sl_push(&b); if (!s) { free(pend.p); goto oom; } ql_strbuf_add(s, pend.p, pend.n); }
                    else for (size_t j = 0; j < npend; j++) { ql_strbuf *s = sl_push(&b); if (!s) { free(pend.p); goto oom; } ql_strbuf_add(s, "\xEF\xBF\xBD", 3); }
                    pend.n = 0; npend = 0;
                }
                if (i < a.n) { ql_strbuf *s = sl_push(&b); if (!s) { free(pend.p); goto oom; } ql_strbuf_add(s, a.v[i].p, a.v[i].n); }
            }
            free(pend.p);
            break;
        }
        case DEC_FUSE: {
            ql_strbuf *s = sl_push(&b);
            if (!s) goto oom;
            for (size_t i = 0; i < a.n; i++) ql_strbuf_add(s, a.v[i].p, a.v[i].n);
            break;
        }
        case DEC_STRIP:
            for (size_t i = 0; i < a.n; i++) {
                ql_strbuf *s = sl_push(&b);
                if (!s) goto oom;
                const char *p = a.v[i].p;
                size_t st = 0, en = a.v[i].n;
                for (int r = 0; r < op->start && st + op->alen <= en && !memcmp(p + st, op->a, op->alen); r++) st += op->alen;
                for (int r = 0; r < op->stop && en >= st + op->alen && !memcmp(p + en - op->alen, op->a, op->alen); r++) en -= op->alen;
                ql_strbuf_add(s, p + st, en - st);
            }
            break;
        case DEC_METASPACE:
            for (size_t i = 0; i < a.n; i++) {
                ql_strbuf *s = sl_push(&b);
                if (!s) goto oom;
                ql_strbuf tmp = { 0 };
                ql_strbuf_add(&tmp, "", 0);
                const char *p = a.v[i].p;
                size_t m = a.v[i].n;
                for (size_t j = 0; j < m;) {
                    if (op->alen && j + op->alen <= m && !memcmp(p + j, op->a, op->alen)) { ql_strbuf_add(&tmp, " ", 1); j += op->alen; }
                    else { ql_strbuf_add(&tmp, p + j, 1); j++; }
                }
                size_t st = (i == 0 && op->prepend_scheme != 2 && tmp.n && tmp.p[0] == ' ') ? 1 : 0;
                ql_strbuf_add(s, tmp.p + st, tmp.n - st);
                free(tmp.p);
            }
            break;
        }
        strlist x = a; a = b; b = x;
        sl_free(&b);
    }
    ql_strbuf res = { 0 };
    ql_strbuf_add(&res, "", 0);
    for (size_t i = 0; i < a.n; i++) {
        if (!t->has_decoder && i) ql_strbuf_add(&res, " ", 1);
        ql_strbuf_add(&res, a.v[i].p, a.v[i].n);
    }
    sl_free(&a); sl_free(&b);
    if (res.oom) { free(res.p); return ql_fail(QL_ENOMEM, "tokenizer: out of memory while decoding"); }
    *out = res.p;
    if (out_len) *out_len = res.n;
    return QL_OK;
oom:
    sl_free(&a); sl_free(&b);
    return ql_fail(QL_ENOMEM, "tokenizer: out of memory while decoding");
}

/* ------------------------------------------------------------------ queries */

int32_t ql_tokenizer_vocab_size(const ql_tokenizer *t) { return t->nids; }
int32_t ql_tokenizer_token_to_id(const ql_tokenizer *t, const char *s, size_t len)
{
    return strmap_get(t, &t->tok_map, t->tok, s, len);
}
const char *ql_tokenizer_id_to_token(const ql_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->nids || t->tok[id].len == UINT32_MAX) return NULL;
    if (len) *len = t->tok[id].len;
    return t->blob + t->tok[id].off;
}
int ql_tokenizer_is_special(const ql_tokenizer *t, int32_t id) { return id >= 0 && id < t->nids && t->special[id]; }
const char *ql_tokenizer_bos_token(const ql_tokenizer *t) { return t->bos; }
const char *ql_tokenizer_eos_token(const ql_tokenizer *t) { return t->eos; }
const char *ql_tokenizer_pad_token(const ql_tokenizer *t) { return t->pad; }
int32_t ql_tokenizer_bos_id(const ql_tokenizer *t) { return t->bos_id; }
int32_t ql_tokenizer_eos_id(const ql_tokenizer *t) { return t->eos_id; }
int32_t ql_tokenizer_pad_id(const ql_tokenizer *t) { return t->pad_id; }
const char *ql_tokenizer_chat_template(const ql_tokenizer *t) { return t->chat_template; }
const ql_jinja *ql_tokenizer_chat_jinja(const ql_tokenizer *t) { return t->chat_jinja; }

/* parses chat_template once, for every rendering; a template that does not parse is kept
   unparsed, and apply_chat_template reports why when it is used */
static void chat_parse(ql_tokenizer *t)
{
    ql_jinja_free(t->chat_jinja);
    t->chat_jinja = NULL;
    if (t->chat_template && ql_jinja_parse(t->chat_template, strlen(t->chat_template), "chat_template", &t->chat_jinja))
        ql_clear_error();
}
const char *ql_tokenizer_unk_token(const ql_tokenizer *t) { return t->unk; }

/* ------------------------------------------------------------------ free */

void ql_tokenizer_free(ql_tokenizer *t)
{
    if (!t) return;
    free(t->name); free(t->blob); free(t->tok); free(t->raw);
    free(t->model_map.slot); free(t->tok_map.slot); free(t->special); free(t->is_added);
    free(t->merges); free(t->char_id);
    for (int i = 0; i < t->nnorm; i++) { free(t->norm[i].a); free(t->norm[i].b); }
    free(t->norm);
    for (int i = 0; i < t->npre; i++) if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie_raw.nodes); free(t->trie_norm.nodes);
    free(t->post_pre); free(t->post_suf);
    for (int i = 0; i < t->ndec; i++) { free(t->dec[i].a); free(t->dec[i].b); }
    free(t->dec);
    free(t->bos); free(t->eos); free(t->pad); free(t->unk); free(t->chat_template);
    ql_jinja_free(t->chat_jinja);
    free(t);
}

/* ------------------------------------------------------------------ loading */

#define GPT2_RE "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define QWEN_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define LLAMA3_RE "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct loader {
    ql_tokenizer *t;
    const char *name;
} loader;

static ql_status lfail(loader *L, ql_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
#include <stdarg.h>
static ql_status lfail(loader *L, ql_status code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ql_fail(code, "%s: %s", L->name, msg);
}

static const char *jtype(const ql_json *v) { return v ? ql_json_type_name(v->type) : "missing"; }

static int json_int(const ql_json *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!v || v->type != QL_JSON_NUMBER) return 0;
    double d = v->u.num;
    /* the range first (NaN fails it too): converting a double outside int64_t is undefined */
    if (!(d >= (double)lo && d <= (double)hi) || d >= 0x1p63 || d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

static int has_bytelevel(const ql_json *pre)
{
    const char *ty = ql_json_str(ql_json_get(pre, "type"));
    if (!ty) return 0;
    if (!strcmp(ty, "ByteLevel")) return 1;
    if (!strcmp(ty, "Sequence")) {
        const ql_json *arr = ql_json_get(pre, "pretokenizers");
        for (size_t i = 0; i < ql_json_len(arr); i++) if (has_bytelevel(ql_json_at(arr, i))) return 1;
    }
    return 0;
}

static ql_status load_normalizer(loader *L, const ql_json *n, const char *path)
{
    ql_tokenizer *t = L->t;
    if (!n || n->type == QL_JSON_NULL) return QL_OK;
    const char *ty = ql_json_str(ql_json_get(n, "type"));
    if (!ty) return lfail(L, QL_EFORMAT, "%s.type: expected a string, got %s", path, jtype(ql_json_get(n, "type")));
    if (!strcmp(ty, "Sequence")) {
        const ql_json *arr = ql_json_get(n, "normalizers");
        if (!ql_json_is(arr, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "%s.normalizers: expected an array", path);
        for (size_t i = 0; i < arr->n; i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", path, i);
            QL_TRY(load_normalizer(L, ql_json_at(arr, i), sub));
        }
        return QL_OK;
    }
    norm_op op = { 0 };
    if (!strcmp(ty, "NFC")) op.kind = NORM_NFC;
    else if (!strcmp(ty, "NFD")) op.kind = NORM_NFD;
    else if (!strcmp(ty, "NFKC")) op.kind = NORM_NFKC;
    else if (!strcmp(ty, "NFKD")) op.kind = NORM_NFKD;
    else if (!strcmp(ty, "Lowercase")) op.kind = NORM_LOWER;
    else if (!strcmp(ty, "Prepend")) {
        const ql_json *p = ql_json_get(n, "prepend");
        if (!ql_json_str(p)) return lfail(L, QL_EFORMAT, "%s.prepend: expected a string", path);
        op.kind = NORM_PREPEND;
        op.a = xstrndup(p->u.str, p->n); op.alen = p->n;
    } else if (!strcmp(ty, "Replace")) {
        const ql_json *pat = ql_json_get(ql_json_get(n, "pattern"), "String");
        const ql_json *con = ql_json_get(n, "content");
        if (!ql_json_str(pat))
            return lfail(L, QL_EUNSUPPORTED, "%s: only Replace normalizers with a String pattern are supported", path);
        if (!ql_json_str(con)) return lfail(L, QL_EFORMAT, "%s.content: expected a string", path);
        op.kind = NORM_REPLACE;
        op.a = xstrndup(pat->u.str, pat->n); op.alen = pat->n;
        op.b = xstrndup(con->u.str, con->n); op.blen = con->n;
    } else {
        return lfail(L, QL_EUNSUPPORTED, "%s: normalizer type '%s' is not supported (supported: NFC, NFD, NFKC, NFKD, "
                     "Lowercase, Prepend, Replace, Sequence)", path, ty);
    }
    norm_op *nn = realloc(t->norm, (size_t)(t->nnorm + 1) * sizeof *nn);
    if (!nn) { free(op.a); free(op.b); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
    t->norm = nn;
    t->norm[t->nnorm++] = op;
    return QL_OK;
}

static ql_status add_pre(loader *L, pre_op *op)
{
    ql_tokenizer *t = L->t;
    pre_op *np = realloc(t->pre, (size_t)(t->npre + 1) * sizeof *np);
    if (!np) { if (op->re) pcre2_code_free(op->re); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
    t->pre = np;
    t->pre[t->npre++] = *op;
    return QL_OK;
}

static ql_status load_pretok(loader *L, const ql_json *p, const char *path)
{
    if (!p || p->type == QL_JSON_NULL) return QL_OK;
    const char *ty = ql_json_str(ql_json_get(p, "type"));
    if (!ty) return lfail(L, QL_EFORMAT, "%s.type: expected a string, got %s", path, jtype(ql_json_get(p, "type")));
    pre_op op = { 0 };
    if (!strcmp(ty, "Sequence")) {
        const ql_json *arr = ql_json_get(p, "pretokenizers");
        if (!ql_json_is(arr, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "%s.pretokenizers: expected an array", path);
        for (size_t i = 0; i < arr->n; i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", path, i);
            QL_TRY(load_pretok(L, ql_json_at(arr, i), sub));
        }
        return QL_OK;
    }
    if (!strcmp(ty, "ByteLevel")) {
        op.kind = PRE_BYTELEVEL;
        op.add_prefix_space = ql_json_bool(ql_json_get(p, "add_prefix_space"), 1);
        op.use_regex = ql_json_bool(ql_json_get(p, "use_regex"), 1);
        return add_pre(L, &op);
    }
    if (!strcmp(ty, "Split")) {
        const ql_json *pat = ql_json_get(p, "pattern");
        const ql_json *rx = ql_json_get(pat, "Regex"), *st = ql_json_get(pat, "String");
        const char *beh = ql_json_str(ql_json_get(p, "behavior"));
        if (!beh) return lfail(L, QL_EFORMAT, "%s.behavior: expected a string", path);
        if (!strcmp(beh, "Isolated")) op.behavior = SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) op.behavior = SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) op.behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) op.behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) op.behavior = SPLIT_CONTIGUOUS;
        else return lfail(L, QL_EFORMAT, "%s.behavior: unknown split behavior '%s'", path, beh);
        op.invert = ql_json_bool(ql_json_get(p, "invert"), 0);
        if (!ql_json_str(rx) && !ql_json_str(st))
            return lfail(L, QL_EFORMAT, "%s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", path);
        if (rx && op.behavior == SPLIT_ISOLATED && !op.invert) {
            if (!strcmp(rx->u.str, GPT2_RE)) { op.kind = PRE_GPT2; return add_pre(L, &op); }
            if (!strcmp(rx->u.str, QWEN_RE)) { op.kind = PRE_QWEN; return add_pre(L, &op); }
            if (!strcmp(rx->u.str, LLAMA3_RE)) { op.kind = PRE_LLAMA3; return add_pre(L, &op); }
        }
        if (op.behavior == SPLIT_CONTIGUOUS)
            return lfail(L, QL_EUNSUPPORTED, "%s: Split behavior 'Contiguous' is not supported", path);
        int err;
        PCRE2_SIZE off;
        const ql_json *src = rx ? rx : st;
        uint32_t flags = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (rx ? 0 : PCRE2_LITERAL);
        op.kind = PRE_PCRE;
        op.re = pcre2_compile((PCRE2_SPTR)src->u.str, src->n, flags, &err, &off, NULL);
        if (!op.re) {
            PCRE2_UCHAR buf[256];
            pcre2_get_error_message(err, buf, sizeof buf);
            return lfail(L, QL_EUNSUPPORTED, "%s.pattern: PCRE2 cannot compile the regex at offset %zu: %s", path,
                         (size_t)off, (char *)buf);
        }
        pcre2_jit_compile(op.re, PCRE2_JIT_COMPLETE);
        return add_pre(L, &op);
    }
    if (!strcmp(ty, "Metaspace")) {
        const ql_json *r = ql_json_get(p, "replacement");
        if (!ql_json_str(r) || r->n == 0 || r->n >= sizeof op.repl)
            return lfail(L, QL_EFORMAT, "%s.replacement: expected a one-character string", path);
        op.kind = PRE_METASPACE;
        memcpy(op.repl, r->u.str, r->n); op.repl_len = r->n;
        const char *ps = ql_json_str(ql_json_get(p, "prepend_scheme"));
        if (ps) op.prepend_scheme = !strcmp(ps, "first") ? 1 : !strcmp(ps, "never") ? 2 : 0;
        else op.prepend_scheme = ql_json_bool(ql_json_get(p, "add_prefix_space"), 1) ? 0 : 2;
        op.split = ql_json_bool(ql_json_get(p, "split"), 1);
        return add_pre(L, &op);
    }
    return lfail(L, QL_EUNSUPPORTED, "%s: pre-tokenizer type '%s' is not supported (supported: ByteLevel, Split, "
                 "Metaspace, Sequence)", path, ty);
}

static ql_status push_id(loader *L, int32_t **arr, int *n, int32_t id)
{
    int32_t *na = realloc(*arr, (size_t)(*n + 1) * sizeof *na);
    if (!na) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
    *arr = na;
    (*arr)[(*n)++] = id;
    return QL_OK;
}

static ql_status load_post(loader *L, const ql_json *p, const char *path)
{
    ql_tokenizer *t = L->t;
    if (!p || p->type == QL_JSON_NULL) return QL_OK;
    const char *ty = ql_json_str(ql_json_get(p, "type"));
    if (!ty) return lfail(L, QL_EFORMAT, "%s.type: expected a string", path);
    if (!strcmp(ty, "ByteLevel")) return QL_OK; /* offsets only */
    if (!strcmp(ty, "Sequence")) {
        const ql_json *arr = ql_json_get(p, "processors");
        if (!ql_json_is(arr, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "%s.processors: expected an array", path);
        for (size_t i = 0; i < arr->n; i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.processors[%zu]", path, i);
            QL_TRY(load_post(L, ql_json_at(arr, i), sub));
        }
        return QL_OK;
    }
    if (!strcmp(ty, "TemplateProcessing")) {
        const ql_json *single = ql_json_get(p, "single"), *sp = ql_json_get(p, "special_tokens");
        if (!ql_json_is(single, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "%s.single: expected an array", path);
        int seen_seq = 0;
        for (size_t i = 0; i < single->n; i++) {
            const ql_json *it = ql_json_at(single, i);
            if (ql_json_get(it, "Sequence")) { seen_seq = 1; continue; }
            const char *name = ql_json_str(ql_json_get(ql_json_get(it, "SpecialToken"), "id"));
            if (!name) return lfail(L, QL_EFORMAT, "%s.single[%zu]: expected SpecialToken or Sequence", path, i);
            const ql_json *ids = ql_json_get(ql_json_get(sp, name), "ids");
            if (!ql_json_is(ids, QL_JSON_ARRAY))
                return lfail(L, QL_EFORMAT, "%s.special_tokens: '%s' is used by the template but not defined", path, name);
            for (size_t k = 0; k < ids->n; k++) {
                int64_t v;
                if (!json_int(ql_json_at(ids, k), 0, INT32_MAX, &v))
                    return lfail(L, QL_EFORMAT, "%s.special_tokens.%s.ids[%zu]: expected a token id", path, name, k);
                if (seen_seq) QL_TRY(push_id(L, &t->post_suf, &t->npost_suf, (int32_t)v));
                else QL_TRY(push_id(L, &t->post_pre, &t->npost_pre, (int32_t)v));
            }
        }
        return QL_OK;
    }
    if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
        int64_t cls, sep;
        if (!json_int(ql_json_at(ql_json_get(p, "cls"), 1), 0, INT32_MAX, &cls) ||
            !json_int(ql_json_at(ql_json_get(p, "sep"), 1), 0, INT32_MAX, &sep))
            return lfail(L, QL_EFORMAT, "%s: cls and sep must be [token, id] pairs", path);
        QL_TRY(push_id(L, &t->post_pre, &t->npost_pre, (int32_t)cls));
        return push_id(L, &t->post_suf, &t->npost_suf, (int32_t)sep);
    }
    return lfail(L, QL_EUNSUPPORTED, "%s: post-processor type '%s' is not supported (supported: TemplateProcessing, "
                 "ByteLevel, BertProcessing, RobertaProcessing, Sequence)", path, ty);
}

static ql_status add_dec(loader *L, dec_op *op)
{
    ql_tokenizer *t = L->t;
    dec_op *nd = realloc(t->dec, (size_t)(t->ndec + 1) * sizeof *nd);
    if (!nd) { free(op->a); free(op->b); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
    t->dec = nd;
    t->dec[t->ndec++] = *op;
    return QL_OK;
}

static ql_status load_decoder(loader *L, const ql_json *d, const char *path)
{
    if (!d || d->type == QL_JSON_NULL) return QL_OK;
    L->t->has_decoder = 1;
    const char *ty = ql_json_str(ql_json_get(d, "type"));
    if (!ty) return lfail(L, QL_EFORMAT, "%s.type: expected a string", path);
    dec_op op = { 0 };
    if (!strcmp(ty, "Sequence")) {
        const ql_json *arr = ql_json_get(d, "decoders");
        if (!ql_json_is(arr, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "%s.decoders: expected an array", path);
        for (size_t i = 0; i < arr->n; i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", path, i);
            QL_TRY(load_decoder(L, ql_json_at(arr, i), sub));
        }
        return QL_OK;
    }
    if (!strcmp(ty, "ByteLevel")) { op.kind = DEC_BYTELEVEL; return add_dec(L, &op); }
    if (!strcmp(ty, "ByteFallback")) { op.kind = DEC_BYTEFALLBACK; return add_dec(L, &op); }
    if (!strcmp(ty, "Fuse")) { op.kind = DEC_FUSE; return add_dec(L, &op); }
    if (!strcmp(ty, "Replace")) {
        const ql_json *pat = ql_json_get(ql_json_get(d, "pattern"), "String"), *con = ql_json_get(d, "content");
        if (!ql_json_str(pat) || !ql_json_str(con))
            return lfail(L, QL_EUNSUPPORTED, "%s: only Replace decoders with a String pattern are supported", path);
        op.kind = DEC_REPLACE;
        op.a = xstrndup(pat->u.str, pat->n); op.alen = pat->n;
        op.b = xstrndup(con->u.str, con->n); op.blen = con->n;
        return add_dec(L, &op);
    }
    if (!strcmp(ty, "Strip")) {
        const ql_json *con = ql_json_get(d, "content");
        int64_t a = 0, b = 0;
        if (!ql_json_str(con) || !json_int(ql_json_get(d, "start"), 0, 1 << 20, &a) ||
            !json_int(ql_json_get(d, "stop"), 0, 1 << 20, &b))
            return lfail(L, QL_EFORMAT, "%s: Strip needs content (string), start and stop (integers)", path);
        op.kind = DEC_STRIP;
        op.a = xstrndup(con->u.str, con->n); op.alen = con->n;
        op.start = (int)a; op.stop = (int)b;
        return add_dec(L, &op);
    }
    if (!strcmp(ty, "Metaspace")) {
        const ql_json *r = ql_json_get(d, "replacement");
        if (!ql_json_str(r)) return lfail(L, QL_EFORMAT, "%s.replacement: expected a string", path);
        op.kind = DEC_METASPACE;
        op.a = xstrndup(r->u.str, r->n); op.alen = r->n;
        const char *ps = ql_json_str(ql_json_get(d, "prepend_scheme"));
        if (ps) op.prepend_scheme = !strcmp(ps, "first") ? 1 : !strcmp(ps, "never") ? 2 : 0;
        else op.prepend_scheme = ql_json_bool(ql_json_get(d, "add_prefix_space"), 1) ? 0 : 2;
        return add_dec(L, &op);
    }
    return lfail(L, QL_EUNSUPPORTED, "%s: decoder type '%s' is not supported (supported: ByteLevel, Metaspace, Replace, "
                 "ByteFallback, Fuse, Strip, Sequence)", path, ty);
}

static char *config_token(const ql_json *cfg, const char *key)
{
    const ql_json *v = ql_json_get(cfg, key);
    if (ql_json_is(v, QL_JSON_OBJECT)) v = ql_json_get(v, "content");
    return ql_json_str(v) ? xstrndup(v->u.str, v->n) : NULL;
}

static ql_status load_config(loader *L, const ql_json *cfg)
{
    ql_tokenizer *t = L->t;
    if (!cfg) return QL_OK;
    if (cfg->type != QL_JSON_OBJECT) return lfail(L, QL_EFORMAT, "tokenizer_config.json: expected a JSON object");
    t->bos = config_token(cfg, "bos_token");
    t->eos = config_token(cfg, "eos_token");
    t->pad = config_token(cfg, "pad_token");
    t->unk = config_token(cfg, "unk_token");
    const ql_json *ct = ql_json_get(cfg, "chat_template");
    if (ql_json_is(ct, QL_JSON_ARRAY)) { /* [{name, template}]: take "default" or the first */
        const ql_json *pick = NULL;
        for (size_t i = 0; i < ct->n; i++) {
            const char *nm = ql_json_str(ql_json_get(ql_json_at(ct, i), "name"));
            if (!pick || (nm && !strcmp(nm, "default"))) pick = ql_json_get(ql_json_at(ct, i), "template");
        }
        ct = pick;
    }
    if (ql_json_str(ct)) t->chat_template = xstrndup(ct->u.str, ct->n);
    return QL_OK;
}

static int32_t lookup_tok(const ql_tokenizer *t, const char *s)
{
    return s ? strmap_get(t, &t->tok_map, t->tok, s, strlen(s)) : NOID;
}

static ql_status load_model(loader *L, const ql_json *root)
{
    ql_tokenizer *t = L->t;
    const ql_json *model = ql_json_get(root, "model");
    if (!ql_json_is(model, QL_JSON_OBJECT)) return lfail(L, QL_EFORMAT, "model: expected an object, got %s", jtype(model));
    const char *mt = ql_json_str(ql_json_get(model, "type"));
    if (mt && strcmp(mt, "BPE"))
        return lfail(L, QL_EUNSUPPORTED, "model.type '%s' is not supported; only BPE models are (GPT-2, Llama 3, "
                     "Qwen, Mistral)", mt);
    const ql_json *vocab = ql_json_get(model, "vocab"), *merges = ql_json_get(model, "merges");
    if (!ql_json_is(vocab, QL_JSON_OBJECT)) return lfail(L, QL_EFORMAT, "model.vocab: expected an object, got %s", jtype(vocab));
    if (!ql_json_is(merges, QL_JSON_ARRAY)) return lfail(L, QL_EFORMAT, "model.merges: expected an array, got %s", jtype(merges));
    const char *csp = ql_json_str(ql_json_get(model, "continuing_subword_prefix"));
    const char *ews = ql_json_str(ql_json_get(model, "end_of_word_suffix"));
    if ((csp && *csp) || (ews && *ews))
        return lfail(L, QL_EUNSUPPORTED, "model: continuing_subword_prefix / end_of_word_suffix are not supported");
    const ql_json *dropout = ql_json_get(model, "dropout");
    if (dropout && dropout->type == QL_JSON_NUMBER && dropout->u.num > 0)
        return lfail(L, QL_EUNSUPPORTED, "model.dropout: BPE dropout is not supported (set it to null for inference)");
    t->byte_fallback = ql_json_bool(ql_json_get(model, "byte_fallback"), 0);
    t->fuse_unk = ql_json_bool(ql_json_get(model, "fuse_unk"), 0);
    t->ignore_merges = ql_json_bool(ql_json_get(model, "ignore_merges"), 0);
    t->byte_level = has_bytelevel(ql_json_get(root, "pre_tokenizer"));

    /* ids */
    const ql_json *added = ql_json_get(root, "added_tokens");
    if (added && added->type != QL_JSON_NULL && added->type != QL_JSON_ARRAY)
        return lfail(L, QL_EFORMAT, "added_tokens: expected an array, got %s", jtype(added));
    int64_t maxid = -1;
    for (uint32_t i = 0; i < vocab->n; i++) {
        int64_t v;
        if (!json_int(ql_json_value_at(vocab, i), 0, INT32_MAX - 1, &v))
            return lfail(L, QL_EFORMAT, "model.vocab[\"%s\"]: expected a non-negative integer id",
                         ql_json_key_at(vocab, i)->u.str);
        if (v > maxid) maxid = v;
    }
    for (size_t i = 0; i < ql_json_len(added); i++) {
        int64_t v;
        if (!json_int(ql_json_get(ql_json_at(added, i), "id"), 0, INT32_MAX - 1, &v))
            return lfail(L, QL_EFORMAT, "added_tokens[%zu].id: expected a non-negative integer", i);
        if (v > maxid) maxid = v;
    }
    if (maxid > 16 * 1024 * 1024) return lfail(L, QL_EFORMAT, "token ids up to %lld: too large a vocabulary", (long long)maxid);
    t->nids = (int32_t)(maxid + 1);
    size_t nids = (size_t)t->nids + 1;
    t->tok = malloc(nids * sizeof *t->tok);
    t->raw = malloc(nids * sizeof *t->raw);
    t->special = calloc(nids, 1);
    t->is_added = calloc(nids, 1);
    if (!t->tok || !t->raw || !t->special || !t->is_added ||
        !strmap_init(&t->model_map, vocab->n) || !strmap_init(&t->tok_map, vocab->n + ql_json_len(added)))
        return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
    for (size_t i = 0; i < nids; i++) t->tok[i].len = t->raw[i].len = UINT32_MAX;

    char *tmp = NULL;
    size_t tmpcap = 0;
    for (uint32_t i = 0; i < vocab->n; i++) {
        const ql_json *k = ql_json_key_at(vocab, i);
        int32_t id = (int32_t)ql_json_value_at(vocab, i)->u.num;
        if (t->tok[id].len != UINT32_MAX)
            { free(tmp); return lfail(L, QL_EFORMAT, "model.vocab: id %d is used twice (\"%s\")", id, k->u.str); }
        if (!blob_add(t, k->u.str, k->n, &t->tok[id])) { free(tmp); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
        if (t->byte_level) {
            if (k->n + 1 > tmpcap) {
                tmpcap = (k->n + 1) * 2;
                char *nt = realloc(tmp, tmpcap);
                if (!nt) { free(tmp); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
                tmp = nt;
            }
            long r = bytelevel_to_raw(k->u.str, k->n, tmp);
            if (r >= 0 && !blob_add(t, tmp, (size_t)r, &t->raw[id])) { free(tmp); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
        } else {
            t->raw[id] = t->tok[id];
        }
    }
    free(tmp);
    for (uint32_t i = 0; i < vocab->n; i++) {
        int32_t id = (int32_t)ql_json_value_at(vocab, i)->u.num;
        if (t->raw[id].len != UINT32_MAX) strmap_put(t, &t->model_map, t->raw, id);
        strmap_put(t, &t->tok_map, t->tok, id);
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = strmap_get(t, &t->model_map, t->raw, &c, 1);
        char fb[8];
        snprintf(fb, sizeof fb, "<0x%02X>", b);
        t->fallback_id[b] = t->byte_fallback ? lookup_tok(t, fb) : NOID;
    }
    const char *unk = ql_json_str(ql_json_get(model, "unk_token"));
    t->unk_id = NOID;
    if (unk) {
        t->unk_id = lookup_tok(t, unk);
        if (t->unk_id == NOID) return lfail(L, QL_EFORMAT, "model.unk_token '%s' is not in model.vocab", unk);
    }

    if (!t->byte_level) {
        t->char_id = malloc(0x10000 * sizeof *t->char_id);
        if (!t->char_id) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
        for (uint32_t cp = 0; cp < 0x10000; cp++) {
            char e[4];
            int l = (cp >= 0xD800 && cp <= 0xDFFF) ? 0 : utf8_enc(cp, e);
            t->char_id[cp] = l ? strmap_get(t, &t->model_map, t->raw, e, (size_t)l) : NOID;
        }
        /* words can be cut before U+2581 when no token holds it after another character */
        t->sp_split = 1;
        for (int32_t id = 0; id < t->nids && t->sp_split; id++) {
            if (t->raw[id].len == UINT32_MAX) continue;
            const uint8_t *p = (const uint8_t *)t->blob + t->raw[id].off;
            size_t m = t->raw[id].len;
            for (size_t i = 1; i + 2 < m; i++)
                if (p[i] == 0xE2 && p[i + 1] == 0x96 && p[i + 2] == 0x81 &&
                    !(i >= 3 && p[i - 3] == 0xE2 && p[i - 2] == 0x96 && p[i - 1] == 0x81)) { t->sp_split = 0; break; }
        }
    }

    /* merges */
    size_t cap = 16;
    while (cap < (size_t)merges->n * 2 + 16) cap *= 2;
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
    memset(t->merges, 0xFF, cap * sizeof *t->merges);
    t->mmask = cap - 1;
    char *cat = NULL;
    size_t catcap = 0;
    for (uint32_t i = 0; i < merges->n; i++) {
        const ql_json *m = ql_json_at(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (m->type == QL_JSON_STRING) {
            const char *sp = memchr(m->u.str, ' ', m->n);
            if (!sp || memchr(sp + 1, ' ', m->n - (size_t)(sp + 1 - m->u.str)))
                { free(cat); return lfail(L, QL_EFORMAT, "model.merges[%u]: \"%s\" is not two tokens separated by one space", i, m->u.str); }
            a = m->u.str; al = (size_t)(sp - a); b = sp + 1; bl = m->n - al - 1;
        } else if (m->type == QL_JSON_ARRAY && m->n == 2 && ql_json_str(&m->u.items[0]) && ql_json_str(&m->u.items[1])) {
            a = m->u.items[0].u.str; al = m->u.items[0].n; b = m->u.items[1].u.str; bl = m->u.items[1].n;
        } else {
            free(cat);
            return lfail(L, QL_EFORMAT, "model.merges[%u]: expected \"a b\" or [\"a\", \"b\"], got %s", i, jtype(m));
        }
        if (al + bl + 1 > catcap) {
            catcap = (al + bl + 1) * 2;
            char *nc = realloc(cat, catcap);
            if (!nc) { free(cat); return ql_fail(QL_ENOMEM, "%s: out of memory", L->name); }
            cat = nc;
        }
        memcpy(cat, a, al); memcpy(cat + al, b, bl);
        int32_t ia = strmap_get(t, &t->tok_map, t->tok, a, al);
        int32_t ib = strmap_get(t, &t->tok_map, t->tok, b, bl);
        int32_t in = strmap_get(t, &t->tok_map, t->tok, cat, al + bl);
        if (ia == NOID || ib == NOID || in == NOID) {
            free(cat);
            return lfail(L, QL_EFORMAT, "model.merges[%u]: \"%.*s\" + \"%.*s\": %s is not in model.vocab (the file is "
                         "inconsistent; re-download it)", i, (int)al, a, (int)bl, b,
                         ia == NOID ? "the first token" : ib == NOID ? "the second token" : "the merged token");
        }
        merge_put(t, ia, ib, i, in);
    }
    free(cat);

    /* added tokens */
    t->nadded = (int)ql_json_len(added);
    t->added = calloc((size_t)t->nadded + 1, sizeof *t->added);
    if (!t->added) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
    for (int i = 0; i < t->nadded; i++) {
        const ql_json *a = ql_json_at(added, (size_t)i);
        const ql_json *c = ql_json_get(a, "content");
        if (!ql_json_str(c) || c->n == 0) return lfail(L, QL_EFORMAT, "added_tokens[%d].content: expected a non-empty string", i);
        added_tok *at = &t->added[i];
        at->id = (int32_t)ql_json_get(a, "id")->u.num;
        at->content = xstrndup(c->u.str, c->n);
        at->len = c->n;
        at->lstrip = ql_json_bool(ql_json_get(a, "lstrip"), 0);
        at->rstrip = ql_json_bool(ql_json_get(a, "rstrip"), 0);
        at->single_word = ql_json_bool(ql_json_get(a, "single_word"), 0);
        at->special = ql_json_bool(ql_json_get(a, "special"), 0);
        at->normalized = ql_json_bool(ql_json_get(a, "normalized"), !at->special);
        if (!at->content) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
        if (t->tok[at->id].len == UINT32_MAX || t->tok[at->id].len != c->n || memcmp(t->blob + t->tok[at->id].off, c->u.str, c->n)) {
            if (!blob_add(t, c->u.str, c->n, &t->tok[at->id])) return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
        }
        strmap_put(t, &t->tok_map, t->tok, at->id);
        t->special[at->id] = (uint8_t)at->special;
        t->is_added[at->id] = 1;
        if (!trie_add(at->normalized ? &t->trie_norm : &t->trie_raw, c->u.str, c->n, i))
            return ql_fail(QL_ENOMEM, "%s: out of memory", L->name);
    }
    return QL_OK;
}

ql_status ql_tokenizer_from_json(const char *json, size_t len, const char *config_json, size_t config_len,
                                 const char *name, ql_tokenizer **out)
{
    *out = NULL;
    if (!name) name = "tokenizer.json";
    ql_tok_ucls_init();
    call_once(&bytemap_once, bytemap_build);
    ql_json_doc *doc = NULL, *cdoc = NULL;
    ql_status s = ql_json_parse(json, len, name, &doc);
    if (s != QL_OK) return s;
    if (config_json) {
        char cname[1024];
        snprintf(cname, sizeof cname, "%s (tokenizer_config.json)", name);
        s = ql_json_parse(config_json, config_len, cname, &cdoc);
        if (s != QL_OK) { ql_json_free(doc); return s; }
    }
    ql_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { ql_json_free(doc); ql_json_free(cdoc); return ql_fail(QL_ENOMEM, "%s: out of memory", name); }
    t->name = xstrndup(name, strlen(name));
    {
        static _Atomic uint64_t next_serial = 1;
        t->serial = next_serial++;
    }
    t->bos_id = t->eos_id = t->pad_id = NOID;
    loader L = { t, name };
    const ql_json *root = ql_json_root(doc);
    if (root->type != QL_JSON_OBJECT) s = lfail(&L, QL_EFORMAT, "expected a JSON object at the top level");
    if (s == QL_OK) s = load_model(&L, root);
    if (s == QL_OK) s = load_normalizer(&L, ql_json_get(root, "normalizer"), "normalizer");
    if (s == QL_OK) s = load_pretok(&L, ql_json_get(root, "pre_tokenizer"), "pre_tokenizer");
    if (s == QL_OK) s = load_post(&L, ql_json_get(root, "post_processor"), "post_processor");
    if (s == QL_OK) s = load_decoder(&L, ql_json_get(root, "decoder"), "decoder");
    if (s == QL_OK && cdoc) s = load_config(&L, ql_json_root(cdoc));
    ql_json_free(doc);
    ql_json_free(cdoc);
    if (s != QL_OK) { ql_tokenizer_free(t); return s; }
    t->bos_id = lookup_tok(t, t->bos);
    t->eos_id = lookup_tok(t, t->eos);
    t->pad_id = lookup_tok(t, t->pad);
    chat_parse(t);
    *out = t;
    return QL_OK;
}

static char *path_join(const char *dir, const char *file)
{
    size_t a = strlen(dir), b = strlen(file);
    char *r = malloc(a + b + 2);
    if (!r) return NULL;
    memcpy(r, dir, a);
    r[a] = '/';
    memcpy(r + a + 1, file, b + 1);
    return r;
}

ql_status ql_tokenizer_load(const char *path, ql_tokenizer **out)
{
    *out = NULL;
    char *jpath = NULL, *cpath = NULL, *tpath = NULL;
    if (ql_is_dir(path)) {
        jpath = path_join(path, "tokenizer.json");
        cpath = path_join(path, "tokenizer_config.json");
        tpath = path_join(path, "chat_template.jinja");
    } else {
        jpath = xstrndup(path, strlen(path));
        const char *slash = strrchr(path, '/');
        if (slash) {
            char *dir = xstrndup(path, (size_t)(slash - path));
            cpath = dir ? path_join(dir, "tokenizer_config.json") : NULL;
            tpath = dir ? path_join(dir, "chat_template.jinja") : NULL;
            free(dir);
        } else {
            cpath = xstrndup("tokenizer_config.json", 21);
            tpath = xstrndup("chat_template.jinja", 19);
        }
    }
    if (!jpath || !cpath || !tpath) { free(jpath); free(cpath); free(tpath); return ql_fail(QL_ENOMEM, "out of memory"); }
    if (!ql_file_exists(jpath)) {
        ql_status s = ql_fail(QL_EIO, "%s: no such file (pass a directory holding tokenizer.json, or the path of a "
                              "tokenizer.json)", jpath);
        free(jpath); free(cpath); free(tpath);
        return s;
    }
    ql_mapping m = { 0 }, cm = { 0 };
    ql_status s = ql_map_file(jpath, &m);
    int have_cfg = 0;
    if (s == QL_OK && ql_file_exists(cpath) && strcmp(cpath, jpath)) {
        s = ql_map_file(cpath, &cm);
        have_cfg = s == QL_OK;
    }
    if (s == QL_OK)
        s = ql_tokenizer_from_json(m.data ? m.data : "", m.size, have_cfg ? (cm.data ? cm.data : "") : NULL,
                                   cm.size, jpath, out);
    ql_unmap_file(&m);
    if (have_cfg) ql_unmap_file(&cm);
    /* transformers 5 saves the template as chat_template.jinja; it wins over tokenizer_config.json's */
    if (s == QL_OK && ql_file_exists(tpath)) {
        ql_mapping tm = { 0 };
        s = ql_map_file(tpath, &tm);
        if (s == QL_OK) {
            char *ct = xstrndup(tm.data ? tm.data : "", tm.size);
            ql_unmap_file(&tm);
            if (!ct) s = ql_fail(QL_ENOMEM, "%s: out of memory", tpath);
            else { free((*out)->chat_template); (*out)->chat_template = ct; chat_parse(*out); }
        }
        if (s != QL_OK) { ql_tokenizer_free(*out); *out = NULL; }
    }
    free(jpath); free(cpath); free(tpath);
    return s;
}

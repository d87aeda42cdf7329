/*
 * model.h — decoder-only transformers as Hugging Face defines them: Llama
 * (2, 3, 3.1, 3.2 with llama3 RoPE scaling), Mistral and Qwen2/Qwen2.5 (qkv
 * biases, tied or untied embeddings). Loading reads config.json and
 * model.safetensors or a sharded index; linear weights may be quantized to
 * NF4 while loading (one tensor at a time) or come pre-quantized from a
 * bitsandbytes checkpoint.
 *
 * The forward is decoder.c's, one for every backend; the CPU's ops are the
 * reference: fp32 compute over the stored weights. Dimension letters: N tokens in a batch,
 * H hidden, I intermediate, V vocab, Q = heads * head_dim, KV = kv_heads * head_dim.
 */
#ifndef QL_MODEL_H
#define QL_MODEL_H

#include "tensor.h"

typedef enum ql_arch { QL_ARCH_LLAMA = 0, QL_ARCH_MISTRAL, QL_ARCH_QWEN2 } ql_arch;
typedef enum ql_rope_type { QL_ROPE_DEFAULT = 0, QL_ROPE_LLAMA3, QL_ROPE_LINEAR } ql_rope_type;

#define QL_MAX_EOS 8

typedef struct ql_model_config {
    ql_arch arch;
    char model_type[32];         /* "llama", "mistral", "qwen2" */
    int vocab, hidden, inter, layers, heads, kv_heads, head_dim;
    double rope_theta, eps;
    int tie_embeddings;          /* lm_head shares embed_tokens */
    int qkv_bias;                /* Qwen2 */
    int max_pos;
    int sliding_window;          /* Mistral v0.1: 4096; 0 = none */
    ql_rope_type rope_type;
    double rope_factor, low_freq_factor, high_freq_factor;
    int orig_max_pos;
    int bos_id, pad_id;          /* -1 when absent */
    int eos_ids[QL_MAX_EOS], n_eos;
    ql_dtype dtype;              /* dtype named by the config */
} ql_model_config;

/* Parses config.json (transformers 4.x and 5.x shapes); errors name the file and field. */
ql_status ql_model_config_load(const char *path, ql_model_config *c);

typedef struct ql_linear {
    ql_tensor *w;                /* [out, in]: f32, bf16, f16 or nf4 */
    ql_tensor *b;                /* [out] or NULL */
    int in, out;
} ql_linear;

typedef struct ql_block {
    ql_tensor *attn_norm, *mlp_norm;   /* [H] */
    ql_linear q, k, v, o, gate, up, down;
} ql_block;

typedef struct ql_model {
    ql_model_config cfg;
    char *dir;
    ql_tensor *embed;            /* [V, H] */
    ql_block *blocks;            /* [layers] */
    ql_tensor *norm;             /* [H] */
    ql_linear lm_head;           /* w is embed when tied */
    int nf4;                     /* linear weights are NF4 */
    float *scratch;              /* f32 copy of one weight matrix at a time */
    int64_t scratch_cap;
    float *inv_freq;             /* [head_dim / 2] */
    struct ql_st_file **shards;
    int nshards;
    ql_device device;            /* where every weight lives and the decoder runs */
    struct ql_dec_state *dec;    /* the decoder's planned buffers (decoder.c) */
} ql_model;

typedef struct ql_model_load_opts {
    int quant_nf4;               /* quantize linear weights to NF4 while loading */
    int blocksize;               /* NF4 blocksize (64) */
    int double_quant;            /* NF4 double quantization (1) */
    ql_device device;            /* cpu (the reference) or cuda:N (the layers move there after loading) */
    /* progress: called after each layer (may be NULL) */
    void (*progress)(void *ud, int layer, int layers);
    void *progress_ud;
} ql_model_load_opts;

ql_model *ql_model_load(const char *dir, const ql_model_load_opts *opts);
void ql_model_free(ql_model *m);
/* bytes of weights held in memory (quantized + other tensors), and in the mapped files */
int64_t ql_model_weight_bytes(const ql_model *m);

/* ---------------- forward ----------------
   A batch is N tokens. Each token has a position (RoPE) and attends to the
   key range [lo, hi) of the key sequence (its own document, causally; with a
   KV cache the cache positions). ql_batch_causal fills ranges for rows of
   packed documents. */
typedef struct ql_batch {
    int64_t n;                   /* tokens */
    const int32_t *ids;          /* [n] */
    const int32_t *pos;          /* [n] positions for RoPE */
    const int32_t *lo, *hi;      /* [n] key ranges (indices into the batch, or into the cache) */
} ql_batch;

/* KV cache for generation: keys/values of every layer for max_len positions. */
typedef struct ql_kv_cache {
    int layers, max_len, len;
    float **k, **v;              /* [layers][max_len * KV] on the host (CPU models) */
    struct ql_tensor **dk, **dv; /* [layers] of [max_len, KV] on the model's device (CUDA models) */
} ql_kv_cache;

ql_kv_cache *ql_kv_cache_new(const ql_model *m, int max_len);
void ql_kv_cache_free(ql_kv_cache *c);

/* Logits [n, V] to host memory. With a cache, the batch's keys are stored at cache
   positions pos[i] and ranges index the cache. */
ql_status ql_model_logits(ql_model *m, const ql_batch *b, ql_kv_cache *cache, float *logits);
/* Cross-entropy of labels[i+1] given token i, over tokens with label != -100
   (HF convention: labels aligned with ids; the shift happens here). Vocabulary
   logits are computed a few tokens at a time, never for the whole batch.
   sum of losses and count returned separately (mean = sum / count). */
ql_status ql_model_loss(ql_model *m, const ql_batch *b, const int32_t *labels, double *sum, int64_t *count);

/* Fills pos/lo/hi for `rows` rows of length T whose documents have the given
   lengths (doc_lens per row, summing to T; NULL = one document per row). */
void ql_batch_ranges(int rows, int T, const int32_t *doc_lens, const int *ndocs,
                     int32_t *pos, int32_t *lo, int32_t *hi);

/* moves layers, norms, the embedding and lm_head of a loaded model to dev (the decoder then
   runs there: decoder.h) */
ql_status ql_model_to_device(ql_model *m, ql_device dev);

/* ---------------- generation ---------------- */
typedef struct ql_sample_opts {
    int max_new_tokens;
    float temperature;           /* 0 = greedy */
    int top_k;                   /* 0 = off */
    float top_p;                 /* 1 = off */
    uint64_t seed;
    const int32_t *stop; int nstop;   /* stop ids (eos by default when nstop < 0) */
    /* called for every new token; return non-zero to stop */
    int (*on_token)(void *ud, int32_t id);
    void *ud;
} ql_sample_opts;

/* Generates after prompt[0..n); writes up to max_new_tokens ids to out, returns the count in *nout. */
ql_status ql_model_generate(ql_model *m, const int32_t *prompt, int n, const ql_sample_opts *o,
                            int32_t *out, int *nout);

#endif

/*
 * model_load.c — config.json and weights of a Hugging Face model directory
 * (see model.h). Every failure names the file, the field or tensor, and the fix.
 */
#include "model.h"
#include "backend.h"
#include "decoder.h"
#include "json.h"
#include "nf4_io.h"
#include "platform.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- config */

/* Limits on the sizes config.json may give, far above every real model, so that no
   product of two of them overflows and nothing is allocated from a corrupt value
   before the weights are checked against it. */
#define CFG_MAX_DIM    (1 << 22)   /* hidden, intermediate, vocab; heads x head_dim */
#define CFG_MAX_COUNT  (1 << 14)   /* layers, heads, head_dim */

/* an integer in [-1, max] (config ids use -1 for "none") */
static ql_status cfg_int(const char *path, const ql_json *root, const char *key, int *out, int dflt, int required, int max)
{
    const ql_json *v = ql_json_get(root, key);
    if (!v || ql_json_is(v, QL_JSON_NULL)) {
        if (required) return ql_fail(QL_EFORMAT, "%s: missing \"%s\"; is this a transformers config.json?", path, key);
        *out = dflt;
        return QL_OK;
    }
    double d = ql_json_num(v, NAN);
    if (!ql_json_is(v, QL_JSON_NUMBER) || d != floor(d) || d < -1 || d > 1e9)
        return ql_fail(QL_EFORMAT, "%s: \"%s\" must be an integer", path, key);
    if (d > max)
        return ql_fail(QL_EFORMAT, "%s: \"%s\" is %.0f, more than any model qlora can hold (at most %d); the "
                                   "config is corrupt", path, key, d, max);
    *out = (int)d;
    return QL_OK;
}

static double cfg_num(const ql_json *obj, const char *key, double dflt)
{
    const ql_json *v = ql_json_get(obj, key);
    return ql_json_is(v, QL_JSON_NUMBER) ? ql_json_num(v, dflt) : dflt;
}

ql_status ql_model_config_load(const char *path, ql_model_config *c)
{
    memset(c, 0, sizeof *c);
    ql_json_doc *doc;
    if (ql_json_parse_file(path, &doc) != QL_OK)
        return ql_fail_context(QL_EFORMAT, "model config: ");
    const ql_json *r = ql_json_root(doc);
    ql_status s = QL_OK;
    if (!ql_json_is(r, QL_JSON_OBJECT)) { s = ql_fail(QL_EFORMAT, "%s: not a JSON object", path); goto done; }
    const char *mt = ql_json_str(ql_json_get(r, "model_type"));
    const char *arch = ql_json_str(ql_json_at(ql_json_get(r, "architectures"), 0));
    if (!mt && !arch) { s = ql_fail(QL_EFORMAT, "%s: neither \"model_type\" nor \"architectures\" is set", path); goto done; }
    if ((mt && !strcmp(mt, "qwen2")) || (arch && !strcmp(arch, "Qwen2ForCausalLM"))) c->arch = QL_ARCH_QWEN2;
    else if ((mt && !strcmp(mt, "llama")) || (arch && !strcmp(arch, "LlamaForCausalLM"))) c->arch = QL_ARCH_LLAMA;
    else if ((mt && !strcmp(mt, "mistral")) || (arch && !strcmp(arch, "MistralForCausalLM"))) c->arch = QL_ARCH_MISTRAL;
    else {
        s = ql_fail(QL_EUNSUPPORTED, "%s: unsupported architecture \"%s\": qlora runs Llama (2, 3, 3.1, 3.2), "
                                     "Mistral and Qwen2/Qwen2.5 models", path, arch ? arch : mt);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", c->arch == QL_ARCH_QWEN2 ? "qwen2" : c->arch == QL_ARCH_LLAMA ? "llama" : "mistral");
    const int big = 1000000000;
    if ((s = cfg_int(path, r, "vocab_size", &c->vocab, 0, 1, CFG_MAX_DIM)) ||
        (s = cfg_int(path, r, "hidden_size", &c->hidden, 0, 1, CFG_MAX_DIM)) ||
        (s = cfg_int(path, r, "intermediate_size", &c->inter, 0, 1, CFG_MAX_DIM)) ||
        (s = cfg_int(path, r, "num_hidden_layers", &c->layers, 0, 1, CFG_MAX_COUNT)) ||
        (s = cfg_int(path, r, "num_attention_heads", &c->heads, 0, 1, CFG_MAX_COUNT)) ||
        (s = cfg_int(path, r, "num_key_value_heads", &c->kv_heads, c->heads, 0, CFG_MAX_COUNT)) ||
        (s = cfg_int(path, r, "head_dim", &c->head_dim, 0, 0, CFG_MAX_COUNT)) ||
        (s = cfg_int(path, r, "max_position_embeddings", &c->max_pos, 4096, 0, big)) ||
        (s = cfg_int(path, r, "bos_token_id", &c->bos_id, -1, 0, big)) ||
        (s = cfg_int(path, r, "pad_token_id", &c->pad_id, -1, 0, big)))
        goto done;
    if (c->vocab <= 0 || c->hidden <= 0 || c->inter <= 0 || c->layers <= 0 || c->heads <= 0 || c->kv_heads <= 0) {
        s = ql_fail(QL_EFORMAT, "%s: sizes must be positive (vocab_size, hidden_size, intermediate_size, "
                                "num_hidden_layers, num_attention_heads, num_key_value_heads)", path);
        goto done;
    }
    if (c->head_dim <= 0) {
        if (c->hidden % c->heads) { s = ql_fail(QL_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->hidden, c->heads); goto done; }
        c->head_dim = c->hidden / c->heads;
    }
    if (c->heads % c->kv_heads) {
        s = ql_fail(QL_EFORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->heads, c->kv_heads);
        goto done;
    }
    if ((int64_t)c->heads * c->head_dim > CFG_MAX_DIM) {
        s = ql_fail(QL_EFORMAT, "%s: num_attention_heads %d x head_dim %d = %lld is more than any model qlora can hold "
                                "(at most %d); the config is corrupt", path, c->heads, c->head_dim,
                    (long long)c->heads * c->head_dim, CFG_MAX_DIM);
        goto done;
    }
    if (c->head_dim % 2) { s = ql_fail(QL_EFORMAT, "%s: head_dim %d must be even for RoPE", path, c->head_dim); goto done; }
    const char *act = ql_json_str(ql_json_get(r, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) { s = ql_fail(QL_EUNSUPPORTED, "%s: hidden_act \"%s\" is not supported (silu only)", path, act); goto done; }
    c->eps = cfg_num(r, "rms_norm_eps", 1e-6);
    c->tie_embeddings = ql_json_bool(ql_json_get(r, "tie_word_embeddings"), 0);
    c->qkv_bias = c->arch == QL_ARCH_QWEN2 || ql_json_bool(ql_json_get(r, "attention_bias"), 0);
    if (ql_json_bool(ql_json_get(r, "mlp_bias"), 0)) { s = ql_fail(QL_EUNSUPPORTED, "%s: mlp_bias is not supported", path); goto done; }
    if (c->arch != QL_ARCH_QWEN2 && ql_json_bool(ql_json_get(r, "attention_bias"), 0)) {
        s = ql_fail(QL_EUNSUPPORTED, "%s: attention_bias on a Llama-family model is not supported", path);
        goto done;
    }
    const ql_json *sw = ql_json_get(r, "sliding_window");
    int use_sw = c->arch == QL_ARCH_MISTRAL || ql_json_bool(ql_json_get(r, "use_sliding_window"), 0);
    c->sliding_window = 0;
    if (use_sw && ql_json_is(sw, QL_JSON_NUMBER) && (s = cfg_int(path, r, "sliding_window", &c->sliding_window, 0, 0, big)))
        goto done;
    /* eos: int or list */
    const ql_json *eos = ql_json_get(r, "eos_token_id");
    if (ql_json_is(eos, QL_JSON_NUMBER)) {
        if ((s = cfg_int(path, r, "eos_token_id", &c->eos_ids[0], -1, 0, big))) goto done;
        c->n_eos = 1;
    } else if (ql_json_is(eos, QL_JSON_ARRAY))
        for (size_t i = 0; i < ql_json_len(eos) && c->n_eos < QL_MAX_EOS; i++) {
            double d = ql_json_num(ql_json_at(eos, i), NAN);
            if (!(d >= -1 && d <= big) || d != floor(d)) {
                s = ql_fail(QL_EFORMAT, "%s: \"eos_token_id\" item %zu must be an integer token id", path, i);
                goto done;
            }
            c->eos_ids[c->n_eos++] = (int)d;
        }
    /* dtype: "torch_dtype" (4.x) or "dtype" (5.x) */
    const char *dt = ql_json_str(ql_json_get(r, "dtype"));
    if (!dt) dt = ql_json_str(ql_json_get(r, "torch_dtype"));
    c->dtype = dt && !strcmp(dt, "float32") ? QL_F32 : dt && !strcmp(dt, "float16") ? QL_F16 : QL_BF16;
    /* RoPE: rope_parameters (5.x) or rope_theta + rope_scaling (4.x) */
    const ql_json *rp = ql_json_get(r, "rope_parameters");
    const ql_json *rs = ql_json_is(rp, QL_JSON_OBJECT) ? rp : ql_json_get(r, "rope_scaling");
    c->rope_theta = cfg_num(r, "rope_theta", cfg_num(rp, "rope_theta", 10000.0));
    c->rope_type = QL_ROPE_DEFAULT;
    if (ql_json_is(rs, QL_JSON_OBJECT)) {
        const char *t = ql_json_str(ql_json_get(rs, "rope_type"));
        if (!t) t = ql_json_str(ql_json_get(rs, "type"));
        if (!t || !strcmp(t, "default")) c->rope_type = QL_ROPE_DEFAULT;
        else if (!strcmp(t, "llama3")) c->rope_type = QL_ROPE_LLAMA3;
        else if (!strcmp(t, "linear")) c->rope_type = QL_ROPE_LINEAR;
        else { s = ql_fail(QL_EUNSUPPORTED, "%s: rope type \"%s\" is not supported (default, linear, llama3)", path, t); goto done; }
        c->rope_factor = cfg_num(rs, "factor", 1.0);
        c->low_freq_factor = cfg_num(rs, "low_freq_factor", 1.0);
        c->high_freq_factor = cfg_num(rs, "high_freq_factor", 4.0);
        double omp = cfg_num(rs, "original_max_position_embeddings", 8192);
        if (!(omp >= 1 && omp <= big)) {
            s = ql_fail(QL_EFORMAT, "%s: rope original_max_position_embeddings must be a positive integer", path);
            goto done;
        }
        c->orig_max_pos = (int)omp;
        if (c->rope_type != QL_ROPE_DEFAULT && !(c->rope_factor > 0)) { s = ql_fail(QL_EFORMAT, "%s: rope factor must be positive", path); goto done; }
        if (c->rope_type == QL_ROPE_LLAMA3 && !(c->high_freq_factor > c->low_freq_factor)) {
            s = ql_fail(QL_EFORMAT, "%s: llama3 rope needs high_freq_factor > low_freq_factor", path);
            goto done;
        }
    }
    if (!(c->rope_theta > 0)) { s = ql_fail(QL_EFORMAT, "%s: rope_theta must be positive", path); goto done; }
done:
    ql_json_free(doc);
    return s;
}

/* ---------------------------------------------------------------- weights */

typedef struct loader {
    ql_model *m;
    const ql_model_load_opts *o;
    const ql_json *weight_map;     /* from the index, or NULL */
    ql_json_doc *index;
} loader;

static ql_st_file *shard_of(loader *ld, const char *key, int *idx)
{
    ql_model *m = ld->m;
    for (int s = 0; s < m->nshards; s++) {
        int i = ql_st_find(m->shards[s], key);
        if (i >= 0) { *idx = i; return m->shards[s]; }
    }
    return NULL;
}

static ql_status bad_shape(ql_st_file *f, const char *key, const ql_tensor *t, int64_t a, int64_t b)
{
    char got[128];
    ql_shape_str(t, got, sizeof got);
    if (b > 0)
        return ql_fail(QL_EFORMAT, "%s: '%s' has shape %s but config.json implies [%lld, %lld]; the weights and "
                                   "config.json do not belong together", ql_st_path(f), key, got, (long long)a, (long long)b);
    return ql_fail(QL_EFORMAT, "%s: '%s' has shape %s but config.json implies [%lld]; the weights and config.json do "
                               "not belong together", ql_st_path(f), key, got, (long long)a);
}

/* a stored tensor with the expected shape (b <= 0: 1-D), converted to f32 when to_f32 */
static ql_tensor *get(loader *ld, const char *key, int64_t a, int64_t b, int required, int to_f32)
{
    int i = -1;
    ql_st_file *f = shard_of(ld, key, &i);
    if (!f) {
        if (required) ql_fail(QL_EFORMAT, "%s: tensor '%s' is missing from the checkpoint; is the download complete "
                                          "and does config.json match the weights?", ld->m->dir, key);
        return NULL;
    }
    const ql_st_entry *e = ql_st_entry_at(f, i);
    if (!e->supported || (e->qdtype != QL_BF16 && e->qdtype != QL_F16 && e->qdtype != QL_F32)) {
        ql_fail(QL_EUNSUPPORTED, "%s: '%s' is %s; qlora takes bf16, f16 or f32 weights (or bitsandbytes 4-bit)",
                ql_st_path(f), key, e->dtype);
        return NULL;
    }
    ql_tensor *t = ql_st_tensor(f, i);
    if (!t) return NULL;
    int ok = b > 0 ? (t->ndim == 2 && t->shape[0] == a && t->shape[1] == b) : (t->ndim == 1 && t->shape[0] == a);
    if (!ok) { bad_shape(f, key, t, a, b); ql_tensor_release(t); return NULL; }
    if (to_f32 && t->dtype != QL_F32) {
        ql_tensor *c = ql_tensor_to(t, QL_F32, ql_cpu());
        ql_tensor_release(t);
        t = c;
    }
    return t;
}

static ql_status load_linear(loader *ld, const char *prefix, const char *name, int in, int out, int bias, ql_linear *L)
{
    char key[512];
    L->in = in; L->out = out;
    snprintf(key, sizeof key, "%s.%s.weight", prefix, name);
    int i = -1;
    ql_st_file *f = shard_of(ld, key, &i);
    if (f && ql_nf4_st_has(f, key)) {             /* bitsandbytes checkpoint */
        L->w = ql_nf4_st_read(f, key);
        if (!L->w) return QL_EFORMAT;
        if (L->w->ndim != 2 || L->w->shape[0] != out || L->w->shape[1] != in) return bad_shape(f, key, L->w, out, in);
        ld->m->nf4 = 1;
    } else {
        L->w = get(ld, key, out, in, 1, 0);
        if (!L->w) return QL_EFORMAT;
        if (ld->o && ld->o->quant_nf4) {
            ql_tensor *q = ql_tensor_quantize_nf4(L->w, ld->o->blocksize > 0 ? ld->o->blocksize : 64, ld->o->double_quant, ql_cpu());
            if (!q) return ql_fail_context(QL_EINVAL, "%s: quantizing '%s': ", ld->m->dir, key);
            ql_tensor_release(L->w);
            L->w = q;
            ql_st_drop(f, i);   /* the bf16 source pages are no longer needed */
            ld->m->nf4 = 1;
        }
    }
    if (bias) {
        snprintf(key, sizeof key, "%s.%s.bias", prefix, name);
        L->b = get(ld, key, out, 0, 1, 1);
        if (!L->b) return QL_EFORMAT;
    }
    return QL_OK;
}

static ql_status open_shards(loader *ld)
{
    ql_model *m = ld->m;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", m->dir);
    if (ql_file_exists(path)) {
        if (ql_json_parse_file(path, &ld->index) != QL_OK) return ql_fail_context(QL_EFORMAT, "model index: ");
        ld->weight_map = ql_json_get(ql_json_root(ld->index), "weight_map");
        if (!ql_json_is(ld->weight_map, QL_JSON_OBJECT)) return ql_fail(QL_EFORMAT, "%s: no \"weight_map\" object", path);
        size_t n = ql_json_len(ld->weight_map);
        m->shards = calloc(n + 1, sizeof *m->shards);
        if (!m->shards) return ql_fail(QL_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            const ql_json *fv = ql_json_value_at(ld->weight_map, i);
            const char *file = ql_json_str(fv);
            char what[256];
            snprintf(what, sizeof what, "weight_map entry \"%.200s\"", ql_json_str(ql_json_key_at(ld->weight_map, i)));
            QL_TRY(ql_check_file_name(file, ql_json_len(fv), path, what));
            int seen = 0;
            for (int s = 0; s < m->nshards && !seen; s++) {
                const char *p = ql_st_path(m->shards[s]);
                size_t lp = strlen(p), lf = strlen(file);
                seen = lp >= lf && !strcmp(p + lp - lf, file) && (lp == lf || p[lp - lf - 1] == '/');
            }
            if (seen) continue;
            char sp[4096];
            snprintf(sp, sizeof sp, "%s/%s", m->dir, file);
            if (!ql_file_exists(sp))
                return ql_fail(QL_EIO, "%s: shard %s named by model.safetensors.index.json is missing; download it again", m->dir, file);
            ql_st_file *f = ql_st_open(sp);
            if (!f) return QL_EFORMAT;
            m->shards[m->nshards++] = f;
        }
        return QL_OK;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", m->dir);
    if (!ql_file_exists(path)) {
        char bin[4096];
        snprintf(bin, sizeof bin, "%s/pytorch_model.bin", m->dir);
        if (ql_file_exists(bin))
            return ql_fail(QL_EUNSUPPORTED, "%s: only pytorch_model.bin (pickle) is there; qlora reads safetensors: "
                                            "convert with transformers' save_pretrained(safe_serialization=True)", m->dir);
        return ql_fail(QL_EIO, "%s: no model.safetensors or model.safetensors.index.json", m->dir);
    }
    m->shards = calloc(1, sizeof *m->shards);
    if (!m->shards) return ql_fail(QL_ENOMEM, "out of memory");
    m->shards[0] = ql_st_open(path);
    if (!m->shards[0]) return QL_EFORMAT;
    m->nshards = 1;
    return QL_OK;
}

static void compute_inv_freq(ql_model *m)
{
    const ql_model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* as transformers: base ** (arange(0, dim, 2).float() / dim) in f32, then 1 / that */
        float e = (float)(2 * i) / (float)c->head_dim;
        float inv = 1.0f / powf((float)c->rope_theta, e);
        if (c->rope_type == QL_ROPE_LINEAR) inv = inv / (float)c->rope_factor;
        else if (c->rope_type == QL_ROPE_LLAMA3) {
            float factor = (float)c->rope_factor, low = (float)c->low_freq_factor, high = (float)c->high_freq_factor;
            float old = (float)c->orig_max_pos;
            float low_wl = old / low, high_wl = old / high;
            float wl = 2.0f * 3.14159265358979323846f / inv;
            float llama = wl > low_wl ? inv / factor : inv;
            float smooth = (old / wl - low) / (high - low);
            float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
            int medium = !(wl < high_wl) && !(wl > low_wl);
            inv = medium ? smoothed : llama;
        }
        m->inv_freq[i] = inv;
    }
}

ql_model *ql_model_load(const char *dir, const ql_model_load_opts *opts)
{
    ql_model *m = calloc(1, sizeof *m);
    if (!m) { ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    m->dir = strdup(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!ql_is_dir(dir)) { ql_fail(QL_EIO, "%s: no such model folder", dir); ql_model_free(m); return NULL; }
    if (!ql_file_exists(path)) {
        ql_fail(QL_EIO, "%s: config.json is missing; a Hugging Face model folder holds config.json and model*.safetensors", dir);
        ql_model_free(m);
        return NULL;
    }
    if (ql_model_config_load(path, &m->cfg) != QL_OK) { ql_model_free(m); return NULL; }
    loader ld = { m, opts, NULL, NULL };
    ql_model_config *c = &m->cfg;
    ql_status s = open_shards(&ld);
    m->blocks = calloc((size_t)c->layers, sizeof *m->blocks);
    m->inv_freq = calloc((size_t)c->head_dim / 2, sizeof(float));
    if (s == QL_OK && (!m->blocks || !m->inv_freq)) s = ql_fail(QL_ENOMEM, "out of memory");
    if (s == QL_OK) {
        compute_inv_freq(m);
        m->embed = get(&ld, "model.embed_tokens.weight", c->vocab, c->hidden, 1, 0);
        m->norm = m->embed ? get(&ld, "model.norm.weight", c->hidden, 0, 1, 1) : NULL;
        if (!m->embed || !m->norm) s = QL_EFORMAT;
    }
    int Q = c->heads * c->head_dim, KV = c->kv_heads * c->head_dim;
    for (int l = 0; s == QL_OK && l < c->layers; l++) {
        char p[256], key[512];
        ql_block *b = &m->blocks[l];
        snprintf(p, sizeof p, "model.layers.%d", l);
        snprintf(key, sizeof key, "%s.input_layernorm.weight", p);
        b->attn_norm = get(&ld, key, c->hidden, 0, 1, 1);
        snprintf(key, sizeof key, "%s.post_attention_layernorm.weight", p);
        b->mlp_norm = b->attn_norm ? get(&ld, key, c->hidden, 0, 1, 1) : NULL;
        if (!b->attn_norm || !b->mlp_norm) { s = QL_EFORMAT; break; }
        snprintf(p, sizeof p, "model.layers.%d.self_attn", l);
        if ((s = load_linear(&ld, p, "q_proj", c->hidden, Q, c->qkv_bias, &b->q)) ||
            (s = load_linear(&ld, p, "k_proj", c->hidden, KV, c->qkv_bias, &b->k)) ||
            (s = load_linear(&ld, p, "v_proj", c->hidden, KV, c->qkv_bias, &b->v)) ||
            (s = load_linear(&ld, p, "o_proj", Q, c->hidden, 0, &b->o)))
            break;
        snprintf(p, sizeof p, "model.layers.%d.mlp", l);
        if ((s = load_linear(&ld, p, "gate_proj", c->hidden, c->inter, 0, &b->gate)) ||
            (s = load_linear(&ld, p, "up_proj", c->hidden, c->inter, 0, &b->up)) ||
            (s = load_linear(&ld, p, "down_proj", c->inter, c->hidden, 0, &b->down)))
            break;
        if (opts && opts->progress) opts->progress(opts->progress_ud, l + 1, c->layers);
    }
    if (s == QL_OK) {
        m->lm_head.in = c->hidden;
        m->lm_head.out = c->vocab;
        int i = -1;
        if (!c->tie_embeddings || shard_of(&ld, "lm_head.weight", &i)) {
            m->lm_head.w = get(&ld, "lm_head.weight", c->vocab, c->hidden, !c->tie_embeddings, 0);
            if (!m->lm_head.w && !c->tie_embeddings) s = QL_EFORMAT;
        }
        if (s == QL_OK && !m->lm_head.w) m->lm_head.w = ql_tensor_retain(m->embed);
    }
    ql_json_free(ld.index);
    if (s == QL_OK && opts && opts->device.type != QL_DEV_CPU) s = ql_model_to_device(m, opts->device);
    if (s != QL_OK) { ql_model_free(m); return NULL; }
    return m;
}

static void free_linear(ql_linear *L) { ql_tensor_release(L->w); ql_tensor_release(L->b); }

void ql_model_free(ql_model *m)
{
    if (!m) return;
    ql_decoder_release(m);
    for (int l = 0; m->blocks && l < m->cfg.layers; l++) {
        ql_block *b = &m->blocks[l];
        ql_tensor_release(b->attn_norm); ql_tensor_release(b->mlp_norm);
        free_linear(&b->q); free_linear(&b->k); free_linear(&b->v); free_linear(&b->o);
        free_linear(&b->gate); free_linear(&b->up); free_linear(&b->down);
    }
    free(m->blocks);
    ql_tensor_release(m->embed);
    ql_tensor_release(m->norm);
    free_linear(&m->lm_head);
    for (int s = 0; s < m->nshards; s++) ql_st_close(m->shards[s]);
    free(m->shards);
    free(m->scratch);
    free(m->inv_freq);
    free(m->dir);
    free(m);
}

static int64_t owned_bytes(const ql_tensor *t)
{
    if (!t) return 0;
    int64_t n = t->storage->release ? 0 : (int64_t)t->storage->nbytes;  /* mapped storages have a release */
    if (t->quant) {
        n += t->quant->absmax ? (int64_t)t->quant->absmax->storage->nbytes : 0;
        n += t->quant->nested_absmax ? (int64_t)t->quant->nested_absmax->storage->nbytes : 0;
    }
    return n;
}

int64_t ql_model_weight_bytes(const ql_model *m)
{
    int64_t n = owned_bytes(m->embed) + owned_bytes(m->norm);
    for (int l = 0; l < m->cfg.layers; l++) {
        const ql_block *b = &m->blocks[l];
        const ql_linear *L[7] = { &b->q, &b->k, &b->v, &b->o, &b->gate, &b->up, &b->down };
        for (int k = 0; k < 7; k++) n += owned_bytes(L[k]->w) + owned_bytes(L[k]->b);
        n += owned_bytes(b->attn_norm) + owned_bytes(b->mlp_norm);
    }
    if (m->lm_head.w != m->embed) n += owned_bytes(m->lm_head.w);
    return n;
}

/* ---------------------------------------------------------------- to a device */

static void pinned_release(ql_storage *s) { ((const ql_backend *)s->owner)->host_free(s->data); }

/* *t (a host tensor) copied into the device backend's page-locked host memory, which its
   kernels read directly; *t is left as it is when the backend has none or it runs out */
static void pin_on_host(ql_tensor **t, ql_device dev)
{
    const ql_backend *be = ql_backend_for(dev);
    if (!be || !be->host_alloc || !ql_tensor_is_contiguous(*t)) return;
    size_t nbytes = (size_t)ql_dtype_bytes((*t)->dtype, ql_tensor_numel(*t));
    void *p = be->host_alloc(nbytes);
    if (!p) { ql_clear_error(); return; }   /* the pageable copy serves, only slower */
    memcpy(p, ql_tensor_data(*t), nbytes);
    ql_tensor *w = ql_tensor_wrap((*t)->dtype, (*t)->ndim, (*t)->shape, p, nbytes, pinned_release, (void *)be);
    if (!w) { be->host_free(p); ql_clear_error(); return; }
    ql_tensor_release(*t);
    *t = w;
}

static ql_status move(ql_tensor **t, ql_device dev)
{
    if (!*t) return QL_OK;
    ql_tensor *d = ql_tensor_to(*t, (*t)->dtype, dev);
    if (!d) return ql_fail_context(QL_ENOMEM, "moving the model to the GPU: ");
    ql_tensor_release(*t);
    *t = d;
    return QL_OK;
}

ql_status ql_model_to_device(ql_model *m, ql_device dev)
{
    if (dev.type == QL_DEV_CPU) return QL_OK;
    for (int l = 0; l < m->cfg.layers; l++) {
        ql_block *B = &m->blocks[l];
        ql_linear *L[7] = { &B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down };
        QL_TRY(move(&B->attn_norm, dev));
        QL_TRY(move(&B->mlp_norm, dev));
        for (int k = 0; k < 7; k++) { QL_TRY(move(&L[k]->w, dev)); QL_TRY(move(&L[k]->b, dev)); }
    }
    QL_TRY(move(&m->norm, dev));
    /* A tied embedding goes with the lm_head it is. An untied one stays in host memory, page-
       locked where the backend can (its kernels then gather a batch's rows over the bus), which
       keeps a 7B's 1 GiB table off the GPU. */
    int tied = m->lm_head.w == m->embed;
    if (tied) {
        QL_TRY(move(&m->embed, dev));
        ql_tensor_release(m->lm_head.w);
        m->lm_head.w = ql_tensor_retain(m->embed);
    } else {
        QL_TRY(move(&m->lm_head.w, dev));
        pin_on_host(&m->embed, dev);
    }
    m->device = dev;
    return QL_OK;
}

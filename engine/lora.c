/*
 * lora.c — adapter parameters, AdamW, PEFT files and merging (lora.h).
 * The forward/backward lives in train.c.
 */
#include "lora.h"
#include "json.h"
#include "model_internal.h"
#include "nf4_io.h"
#include "platform.h"
#include "rng.h"
#include "safetensors.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const ql_lora_target_names[QL_NTARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
};

static const ql_linear *base_linear(const ql_model *m, int layer, int t)
{
    const ql_block *b = &m->blocks[layer];
    const ql_linear *L[QL_NTARGETS] = { &b->q, &b->k, &b->v, &b->o, &b->gate, &b->up, &b->down };
    return L[t];
}

ql_lora_mod *ql_lora_at(const ql_lora *l, int layer, int t)
{
    if (!l || layer < 0 || layer >= l->layers || t < 0 || t >= QL_NTARGETS) return NULL;
    ql_lora_mod *mod = &l->mods[layer * QL_NTARGETS + t];
    return mod->in ? mod : NULL;
}

static ql_status mod_alloc(ql_lora_mod *mod, int in, int out, int r, float scale)
{
    mod->in = in; mod->out = out; mod->r = r; mod->scale = scale;
    size_t na = (size_t)r * in, nb = (size_t)out * r;
    float *mem = calloc(3 * (na + nb), sizeof(float));   /* A B gA gB mA vA mB vB share one block */
    float *mom = calloc(2 * (na + nb), sizeof(float));
    if (!mem || !mom) { free(mem); free(mom); mod->in = 0; return ql_fail(QL_ENOMEM, "out of memory for LoRA parameters"); }
    mod->A = mem; mod->B = mem + na; mod->gA = mod->B + nb; mod->gB = mod->gA + na;
    mod->mA = mom; mod->vA = mom + na; mod->mB = mod->vA + na; mod->vB = mod->mB + nb;
    (void)mod->gB;
    return QL_OK;
}

static void mod_free(ql_lora_mod *mod)
{
    if (mod->in) { free(mod->A); free(mod->mA); }
    memset(mod, 0, sizeof *mod);
}

ql_lora *ql_lora_new(const ql_model *m, int r, float alpha, int rslora, float dropout, unsigned targets,
                     const uint8_t *layer_on, uint64_t seed)
{
    if (r <= 0 || r > 4096) { ql_fail(QL_EINVAL, "LoRA rank must be 1..4096, not %d", r); return NULL; }
    if (!(alpha > 0)) { ql_fail(QL_EINVAL, "LoRA alpha must be positive"); return NULL; }
    if (!(dropout >= 0 && dropout < 1)) { ql_fail(QL_EINVAL, "LoRA dropout must be in [0, 1)"); return NULL; }
    if (!(targets & ((1u << QL_NTARGETS) - 1))) { ql_fail(QL_EINVAL, "LoRA needs at least one target projection"); return NULL; }
    int L = m->cfg.layers;
    ql_lora *l = calloc(1, sizeof *l);
    if (!l) { ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    l->layers = L; l->r = r; l->alpha = alpha; l->rslora = rslora; l->dropout = dropout; l->targets = targets;
    l->seed = seed;
    l->layer_on = calloc((size_t)L, 1);
    l->mods = calloc((size_t)L * QL_NTARGETS, sizeof *l->mods);
    if (!l->layer_on || !l->mods) { ql_lora_free(l); ql_fail(QL_ENOMEM, "out of memory"); return NULL; }
    float scale = rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
    for (int i = 0; i < L; i++) {
        l->layer_on[i] = layer_on ? layer_on[i] : 1;
        if (!l->layer_on[i]) continue;
        for (int t = 0; t < QL_NTARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            const ql_linear *bl = base_linear(m, i, t);
            ql_lora_mod *mod = &l->mods[i * QL_NTARGETS + t];
            if (mod_alloc(mod, bl->in, bl->out, r, scale) != QL_OK) { ql_lora_free(l); return NULL; }
            /* PEFT: A ~ kaiming_uniform(a = sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
            float bound = 1.0f / sqrtf((float)bl->in);
            uint64_t stream = 0x10a0000ull + (uint64_t)(i * QL_NTARGETS + t);
            for (int64_t k = 0; k < (int64_t)r * bl->in; k++)
                mod->A[k] = (2.0f * ql_rng_uniform(seed, stream, (uint64_t)k) - 1.0f) * bound;
        }
    }
    return l;
}

void ql_lora_free(ql_lora *l)
{
    if (!l) return;
    for (int i = 0; l->mods && i < l->layers * QL_NTARGETS; i++) mod_free(&l->mods[i]);
    free(l->mods);
    free(l->layer_on);
    free(l);
}

int64_t ql_lora_num_params(const ql_lora *l)
{
    int64_t n = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++)
        if (l->mods[i].in) n += (int64_t)l->mods[i].r * (l->mods[i].in + l->mods[i].out);
    return n;
}

void ql_lora_zero_grad(ql_lora *l)
{
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        memset(m->gA, 0, sizeof(float) * (size_t)m->r * m->in);
        memset(m->gB, 0, sizeof(float) * (size_t)m->out * m->r);
    }
}

double ql_lora_grad_norm(const ql_lora *l)
{
    double s = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        const ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) s += (double)m->gA[k] * m->gA[k];
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) s += (double)m->gB[k] * m->gB[k];
    }
    return sqrt(s);
}

void ql_lora_scale_grad(ql_lora *l, float f)
{
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) m->gA[k] *= f;
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) m->gB[k] *= f;
    }
}

/* torch.optim.AdamW (_single_tensor_adamw) in f32 with torch's order of
   operations; the scalars (bias corrections, step size) in double as Python
   computes them, rounded to f32 where torch's kernels take them */
static void adamw(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2,
                  double eps, double wd, int64_t step)
{
    double bc1 = 1.0 - pow(b1, (double)step), bc2 = 1.0 - pow(b2, (double)step);
    float decay = (float)(1.0 - lr * wd), w1 = (float)(1.0 - b1), fb2 = (float)b2, w2 = (float)(1.0 - b2);
    float neg_step = (float)(-(lr / bc1)), bc2_sqrt = (float)sqrt(bc2), feps = (float)eps;
    for (int64_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] = m[i] + w1 * (g[i] - m[i]);                /* exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * fb2;                               /* exp_avg_sq.mul_(beta2) */
        v[i] = v[i] + w2 * g[i] * g[i];                  /*   .addcmul_(grad, grad, 1 - beta2) */
        float denom = sqrtf(v[i]) / bc2_sqrt + feps;
        p[i] = p[i] + neg_step * m[i] / denom;           /* addcdiv_(exp_avg, denom, -step_size) */
    }
}

void ql_lora_adamw(ql_lora *l, float lr, float b1, float b2, float eps, float wd, int64_t step)
{
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        adamw(m->A, m->gA, m->mA, m->vA, (int64_t)m->r * m->in, lr, b1, b2, eps, wd, step);
        adamw(m->B, m->gB, m->mB, m->vB, (int64_t)m->out * m->r, lr, b1, b2, eps, wd, step);
    }
}

/* ---------------------------------------------------------------- PEFT files */

static void peft_key(char *buf, size_t cap, int layer, int t, const char *ab)
{
    snprintf(buf, cap, "base_model.model.model.layers.%d.%s.%s.lora_%s.weight", layer,
             t <= QL_T_O ? "self_attn" : "mlp", ql_lora_target_names[t], ab);
}

ql_status ql_lora_save_peft(const ql_lora *l, const char *dir, const char *base_model)
{
    QL_TRY(ql_mkdir_p(dir));
    int n = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) n += l->mods[i].in ? 2 : 0;
    ql_st_raw *e = calloc((size_t)(n + 1), sizeof *e);
    char (*names)[160] = calloc((size_t)(n + 1), sizeof *names);
    if (!e || !names) { free(e); free(names); return ql_fail(QL_ENOMEM, "out of memory"); }
    int k = 0;
    for (int i = 0; i < l->layers; i++)
        for (int t = 0; t < QL_NTARGETS; t++) {
            const ql_lora_mod *m = ql_lora_at(l, i, t);
            if (!m) continue;
            peft_key(names[k], sizeof names[k], i, t, "A");
            e[k] = (ql_st_raw){ names[k], "F32", 2, { m->r, m->in }, m->A, (uint64_t)m->r * m->in * 4 };
            k++;
            peft_key(names[k], sizeof names[k], i, t, "B");
            e[k] = (ql_st_raw){ names[k], "F32", 2, { m->out, m->r }, m->B, (uint64_t)m->out * m->r * 4 };
            k++;
        }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    const char *mk[1] = { "format" }, *mv[1] = { "pt" };
    ql_status s = ql_st_save_raw(path, n, e, 1, mk, mv);
    free(e);
    free(names);
    if (s != QL_OK) return s;
    /* adapter_config.json */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ql_atomic_file af;
    QL_TRY(ql_atomic_open(&af, path));
    FILE *fp = af.fp;
    fprintf(fp, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": \"");
    for (const char *c = base_model ? base_model : ""; *c; c++) { if (*c == '"' || *c == '\\') fputc('\\', fp); fputc(*c, fp); }
    fprintf(fp, "\",\n  \"r\": %d,\n  \"lora_alpha\": %.9g,\n  \"lora_dropout\": %.9g,\n  \"use_rslora\": %s,\n",
            l->r, l->alpha, l->dropout, l->rslora ? "true" : "false");
    fprintf(fp, "  \"target_modules\": [");
    int first = 1;
    for (int t = 0; t < QL_NTARGETS; t++)
        if (l->targets & (1u << t)) { fprintf(fp, "%s\"%s\"", first ? "" : ", ", ql_lora_target_names[t]); first = 0; }
    fprintf(fp, "],\n  \"layers_to_transform\": ");
    int all = 1;
    for (int i = 0; i < l->layers; i++) all &= l->layer_on[i] != 0;
    if (all) fprintf(fp, "null");
    else {
        fprintf(fp, "[");
        first = 1;
        for (int i = 0; i < l->layers; i++) if (l->layer_on[i]) { fprintf(fp, "%s%d", first ? "" : ", ", i); first = 0; }
        fprintf(fp, "]");
    }
    fprintf(fp, ",\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"modules_to_save\": null,\n"
                "  \"init_lora_weights\": true,\n  \"rank_pattern\": {},\n  \"alpha_pattern\": {},\n"
                "  \"use_dora\": false,\n  \"inference_mode\": true,\n  \"library\": \"qlora " QL_VERSION "\"\n}\n");
    return ql_atomic_commit(&af);
}

ql_lora *ql_lora_load_peft(const ql_model *m, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    ql_json_doc *doc;
    if (!ql_file_exists(path)) { ql_fail(QL_EIO, "%s: no adapter_config.json (is this a PEFT adapter folder?)", dir); return NULL; }
    if (ql_json_parse_file(path, &doc) != QL_OK) return NULL;
    const ql_json *r = ql_json_root(doc);
    ql_lora *l = NULL;
    ql_st_file *f = NULL;
    const char *pt = ql_json_str(ql_json_get(r, "peft_type"));
    if (pt && strcmp(pt, "LORA") != 0) { ql_fail(QL_EUNSUPPORTED, "%s: peft_type %s is not LORA", path, pt); goto done; }
    if (ql_json_bool(ql_json_get(r, "use_dora"), 0)) { ql_fail(QL_EUNSUPPORTED, "%s: DoRA adapters are not supported", path); goto done; }
    const char *bias = ql_json_str(ql_json_get(r, "bias"));
    if (bias && strcmp(bias, "none") != 0) { ql_fail(QL_EUNSUPPORTED, "%s: bias \"%s\" is not supported (none only)", path, bias); goto done; }
    if (ql_json_len(ql_json_get(r, "rank_pattern")) || ql_json_len(ql_json_get(r, "alpha_pattern"))) {
        ql_fail(QL_EUNSUPPORTED, "%s: rank_pattern/alpha_pattern are not supported", path);
        goto done;
    }
    int rank = (int)ql_json_num(ql_json_get(r, "r"), 0);
    float alpha = (float)ql_json_num(ql_json_get(r, "lora_alpha"), rank);
    float dropout = (float)ql_json_num(ql_json_get(r, "lora_dropout"), 0);
    int rs = ql_json_bool(ql_json_get(r, "use_rslora"), 0);
    const ql_json *tm = ql_json_get(r, "target_modules");
    unsigned targets = 0;
    if (ql_json_str(tm) && !strcmp(ql_json_str(tm), "all-linear")) targets = (1u << QL_NTARGETS) - 1;
    for (size_t i = 0; i < ql_json_len(tm) && ql_json_is(tm, QL_JSON_ARRAY); i++) {
        const char *name = ql_json_str(ql_json_at(tm, i));
        int found = 0;
        for (int t = 0; name && t < QL_NTARGETS; t++) if (!strcmp(name, ql_lora_target_names[t])) { targets |= 1u << t; found = 1; }
        if (!found) { ql_fail(QL_EUNSUPPORTED, "%s: target module \"%s\" is not one of the seven projections", path, name ? name : "?"); goto done; }
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    f = ql_st_open(path);
    if (!f) goto done;
    /* layers: those with keys present */
    uint8_t *on = calloc((size_t)m->cfg.layers, 1);
    if (!on) { ql_fail(QL_ENOMEM, "out of memory"); goto done; }
    char key[256];
    for (int i = 0; i < m->cfg.layers; i++)
        for (int t = 0; t < QL_NTARGETS; t++) {
            peft_key(key, sizeof key, i, t, "A");
            if (ql_st_find(f, key) >= 0) { on[i] = 1; targets |= 1u << t; }
        }
    l = ql_lora_new(m, rank, alpha, rs, dropout, targets, on, 0);
    free(on);
    if (!l) goto done;
    for (int i = 0; i < m->cfg.layers && l; i++)
        for (int t = 0; t < QL_NTARGETS && l; t++) {
            ql_lora_mod *mod = ql_lora_at(l, i, t);
            if (!mod) continue;
            for (int ab = 0; ab < 2; ab++) {
                peft_key(key, sizeof key, i, t, ab ? "B" : "A");
                int k = ql_st_find(f, key);
                int64_t want0 = ab ? mod->out : mod->r, want1 = ab ? mod->r : mod->in;
                const ql_st_entry *e = k >= 0 ? ql_st_entry_at(f, k) : NULL;
                if (!e) { ql_fail(QL_EFORMAT, "%s: '%s' is missing", path, key); ql_lora_free(l); l = NULL; break; }
                ql_tensor *w = ql_st_tensor(f, k);
                if (!w || w->ndim != 2 || w->shape[0] != want0 || w->shape[1] != want1) {
                    ql_fail(QL_EFORMAT, "%s: '%s' should be [%lld, %lld] for this model and r = %d", path, key,
                            (long long)want0, (long long)want1, rank);
                    ql_tensor_release(w); ql_lora_free(l); l = NULL; break;
                }
                ql_tensor *w32 = ql_tensor_to(w, QL_F32, ql_cpu());
                ql_tensor_release(w);
                if (!w32) { ql_lora_free(l); l = NULL; break; }
                memcpy(ab ? mod->B : mod->A, ql_tensor_data(w32), sizeof(float) * (size_t)(want0 * want1));
                ql_tensor_release(w32);
            }
        }
done:
    ql_st_close(f);
    ql_json_free(doc);
    return l;
}

/* moments and step-independent state, for exact resume */
ql_status ql_lora_save_state(const ql_lora *l, const char *path)
{
    int n = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) n += l->mods[i].in ? 4 : 0;
    ql_st_raw *e = calloc((size_t)n + 1, sizeof *e);
    char (*names)[64] = calloc((size_t)n + 1, sizeof *names);
    if (!e || !names) { free(e); free(names); return ql_fail(QL_ENOMEM, "out of memory"); }
    int k = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        const ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        const float *arr[4] = { m->mA, m->vA, m->mB, m->vB };
        const char *nm[4] = { "mA", "vA", "mB", "vB" };
        for (int a = 0; a < 4; a++) {
            snprintf(names[k], sizeof names[k], "%d.%s", i, nm[a]);
            int64_t r0 = a < 2 ? m->r : m->out, r1 = a < 2 ? m->in : m->r;
            e[k] = (ql_st_raw){ names[k], "F32", 2, { r0, r1 }, arr[a], (uint64_t)(r0 * r1 * 4) };
            k++;
        }
    }
    ql_status s = ql_st_save_raw(path, n, e, 0, NULL, NULL);
    free(e);
    free(names);
    return s;
}

ql_status ql_lora_load_state(ql_lora *l, const char *path)
{
    ql_st_file *f = ql_st_open(path);
    if (!f) return QL_EIO;
    ql_status s = QL_OK;
    for (int i = 0; s == QL_OK && i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        float *arr[4] = { m->mA, m->vA, m->mB, m->vB };
        const char *nm[4] = { "mA", "vA", "mB", "vB" };
        for (int a = 0; a < 4 && s == QL_OK; a++) {
            char key[64];
            snprintf(key, sizeof key, "%d.%s", i, nm[a]);
            int k = ql_st_find(f, key);
            int64_t n = (int64_t)(a < 2 ? m->r : m->out) * (a < 2 ? m->in : m->r);
            const ql_st_entry *e = k >= 0 ? ql_st_entry_at(f, k) : NULL;
            if (!e || strcmp(e->dtype, "F32") || (int64_t)(e->end - e->begin) != n * 4)
                s = ql_fail(QL_EFORMAT, "%s: optimizer state '%s' is missing or has the wrong size for this adapter", path, key);
            else memcpy(arr[a], ql_st_data(f, k), (size_t)n * 4);
        }
    }
    ql_st_close(f);
    return s;
}

/* ---------------------------------------------------------------- merge (stub until written) */
ql_status ql_lora_merge(const ql_lora *l, const char *base_dir, const char *out_dir, char *note, size_t note_cap)
{
    (void)l; (void)base_dir; (void)out_dir; (void)note; (void)note_cap;
    return ql_fail(QL_EUNSUPPORTED, "merge: not written yet");
}

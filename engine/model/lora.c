/*
 * lora.c — adapter parameters, AdamW, PEFT files and merging (lora.h).
 * The forward/backward lives in train.c.
 */
#include "lora.h"
#include "decoder.h"
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

static void device_free(ql_lora *l)
{
    const ql_dec_ops *o = l->d_p ? ql_dec_ops_for(l->device) : NULL;
    if (o) o->free(l->device, l->d_p, sizeof(float) * (size_t)(4 * l->d_n));
    free(l->d_off);
    l->d_p = l->d_g = l->d_m = l->d_v = NULL;
    l->d_off = NULL;
    l->d_n = 0;
    l->device = ql_cpu();
}

void ql_lora_free(ql_lora *l)
{
    if (!l) return;
    device_free(l);
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

/* ---------------------------------------------------------------- on a device */

/* one pass over every adapter: copies between its host arrays and the flat device ones */
typedef enum { TO_DEV, TO_HOST } xfer_dir;
static ql_status xfer(ql_lora *l, xfer_dir dir, int with_grads)
{
    const ql_dec_ops *o = ql_dec_ops_for(l->device);
    if (!o) return QL_ENODEV;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        int64_t off = l->d_off[i], na = (int64_t)m->r * m->in, nb = (int64_t)m->out * m->r;
        float *host[4][2] = { { m->A, m->B }, { m->mA, m->mB }, { m->vA, m->vB }, { m->gA, m->gB } };
        float *dev[4] = { l->d_p, l->d_m, l->d_v, l->d_g };
        for (int k = 0; k < (with_grads ? 4 : 3); k++) {
            size_t ba = sizeof(float) * (size_t)na, bb = sizeof(float) * (size_t)nb;
            if (dir == TO_DEV) {
                QL_TRY(o->upload(l->device, dev[k] + off, host[k][0], ba));
                QL_TRY(o->upload(l->device, dev[k] + off + na, host[k][1], bb));
            } else {
                QL_TRY(o->download(l->device, host[k][0], dev[k] + off, ba));
                QL_TRY(o->download(l->device, host[k][1], dev[k] + off + na, bb));
            }
        }
    }
    return QL_OK;
}

ql_status ql_lora_to_device(ql_lora *l, ql_device dev)
{
    if (dev.type == QL_DEV_CPU) return QL_OK;
    const ql_dec_ops *o = ql_dec_ops_for(dev);
    if (!o) return QL_ENODEV;
    device_free(l);
    int64_t n = 0;
    l->d_off = calloc((size_t)l->layers * QL_NTARGETS, sizeof(int64_t));
    if (!l->d_off) return ql_fail(QL_ENOMEM, "out of host memory");
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        l->d_off[i] = n;
        if (l->mods[i].in) n += (int64_t)l->mods[i].r * (l->mods[i].in + l->mods[i].out);
    }
    float *p = o->alloc(dev, sizeof(float) * (size_t)(4 * n));
    if (!p) { free(l->d_off); l->d_off = NULL; return ql_fail_context(QL_ENOMEM, "LoRA parameters and AdamW state: "); }
    l->device = dev;
    l->d_n = n;
    l->d_p = p; l->d_g = p + n; l->d_m = p + 2 * n; l->d_v = p + 3 * n;
    ql_status s = o->memset0(dev, l->d_g, sizeof(float) * (size_t)n);
    if (s == QL_OK) s = xfer(l, TO_DEV, 0);
    if (s != QL_OK) device_free(l);
    return s;
}

ql_status ql_lora_sync_host(ql_lora *l) { return l->d_p ? xfer(l, TO_HOST, 1) : QL_OK; }
ql_status ql_lora_sync_device(ql_lora *l) { return l->d_p ? xfer(l, TO_DEV, 1) : QL_OK; }

ql_status ql_lora_zero_grad(ql_lora *l)
{
    if (l->d_p) return ql_dec_ops_for(l->device)->memset0(l->device, l->d_g, sizeof(float) * (size_t)l->d_n);
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        memset(m->gA, 0, sizeof(float) * (size_t)m->r * m->in);
        memset(m->gB, 0, sizeof(float) * (size_t)m->out * m->r);
    }
    return QL_OK;
}

ql_status ql_lora_grad_norm(const ql_lora *l, double *norm)
{
    double s = 0;
    if (l->d_p) {
        QL_TRY(ql_dec_ops_for(l->device)->sumsq(l->device, l->d_g, l->d_n, &s));
        *norm = sqrt(s);
        return QL_OK;
    }
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        const ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) s += (double)m->gA[k] * m->gA[k];
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) s += (double)m->gB[k] * m->gB[k];
    }
    *norm = sqrt(s);
    return QL_OK;
}

ql_status ql_lora_scale_grad(ql_lora *l, float f)
{
    if (l->d_p) return ql_dec_ops_for(l->device)->scale(l->device, l->d_g, l->d_n, f);
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) m->gA[k] *= f;
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) m->gB[k] *= f;
    }
    return QL_OK;
}

/* torch.optim.AdamW (_single_tensor_adamw) in f32 with torch's order of
   operations; the scalars (bias corrections, step size) in double as Python
   computes them, rounded to f32 where torch's kernels take them */
void ql_adamw_f32(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2,
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

ql_status ql_lora_adamw(ql_lora *l, float lr, float b1, float b2, float eps, float wd, int64_t step)
{
    if (l->d_p)   /* the same formula over the flat arrays */
        return ql_dec_ops_for(l->device)->adamw(l->device, l->d_p, l->d_g, l->d_m, l->d_v, l->d_n, lr, b1, b2, eps, wd,
                                                 step);
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        ql_adamw_f32(m->A, m->gA, m->mA, m->vA, (int64_t)m->r * m->in, lr, b1, b2, eps, wd, step);
        ql_adamw_f32(m->B, m->gB, m->mB, m->vB, (int64_t)m->out * m->r, lr, b1, b2, eps, wd, step);
    }
    return QL_OK;
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
                "  \"use_dora\": false,\n  \"inference_mode\": true\n}\n");
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
    double rd = ql_json_num(ql_json_get(r, "r"), 0), ad = ql_json_num(ql_json_get(r, "lora_alpha"), rd);
    double dd = ql_json_num(ql_json_get(r, "lora_dropout"), 0);
    if (!(rd >= 1 && rd <= 4096) || rd != floor(rd)) { ql_fail(QL_EFORMAT, "%s: \"r\" must be an integer in 1..4096", path); goto done; }
    if (!(ad > 0 && ad <= 1e30)) { ql_fail(QL_EFORMAT, "%s: \"lora_alpha\" must be a positive number", path); goto done; }
    if (!(dd >= 0 && dd < 1)) { ql_fail(QL_EFORMAT, "%s: \"lora_dropout\" must be in [0, 1)", path); goto done; }
    int rank = (int)rd;
    float alpha = (float)ad, dropout = (float)dd;
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

/* ---------------------------------------------------------------- merge */

static const char *const nf4_aux[] = { ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                       ".quant_state.bitsandbytes__nf4" };

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* the adapter for a weight key "model.layers.I.(self_attn|mlp).NAME.weight", or NULL */
static const ql_lora_mod *mod_for_key(const ql_lora *l, const char *key)
{
    int layer;
    char kind[16], name[32];
    if (sscanf(key, "model.layers.%d.%15[a-z_].%31[a-z_].weight", &layer, kind, name) != 3) return NULL;
    char check[160];
    snprintf(check, sizeof check, "model.layers.%d.%s.%s.weight", layer, kind, name);
    if (strcmp(check, key) != 0) return NULL;
    for (int t = 0; t < QL_NTARGETS; t++)
        if (!strcmp(name, ql_lora_target_names[t])) return ql_lora_at(l, layer, t);
    return NULL;
}

static void store_row(float *src, int64_t n, const char *dtype, void *dst)
{
    if (!strcmp(dtype, "F32")) memcpy(dst, src, (size_t)n * 4);
    else if (!strcmp(dtype, "F16")) for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ql_f32_to_f16(src[i]);
    else for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ql_f32_to_bf16(src[i]);
}

/* writes weight w [out, in] (+ scale B A when mod) in dtype, a block of rows at a time */
static ql_status write_merged(ql_st_writer *wr, const ql_tensor *w, const ql_lora_mod *mod, const char *dtype)
{
    int64_t out = w->shape[0], in = w->shape[1];
    int64_t rows = (4 << 20) / (in > 0 ? in : 1);
    if (rows < 1) rows = 1;
    if (rows > out) rows = out;
    float *f = malloc(sizeof(float) * (size_t)(rows * in));
    void *o = malloc((size_t)(rows * in) * 4);
    ql_status s = f && o ? QL_OK : ql_fail(QL_ENOMEM, "out of host memory");
    size_t esize = !strcmp(dtype, "F32") ? 4 : 2;
    for (int64_t r0 = 0; s == QL_OK && r0 < out; r0 += rows) {
        int64_t r1 = r0 + rows < out ? r0 + rows : out;
        if ((s = ql_weight_rows_f32(w, r0, r1, in, f))) break;
        if (mod)   /* f += scale * B[r0:r1] @ A */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), (int)in, mod->r, mod->scale,
                        mod->B + r0 * mod->r, mod->r, mod->A, (int)in, 1.0f, f, (int)in);
        store_row(f, (r1 - r0) * in, dtype, o);
        s = ql_st_writer_write(wr, o, (size_t)((r1 - r0) * in) * esize);
    }
    free(f);
    free(o);
    return s;
}

typedef struct { int idx; uint64_t begin; } by_offset;
static int cmp_offset(const void *a, const void *b)
{
    const by_offset *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static ql_status merge_shard(const ql_lora *l, const char *in_path, const char *out_path, int *adapted, int *four_bit,
                             FILE *index_map, const char *out_name, int *first_key, uint64_t *total)
{
    ql_st_file *f = ql_st_open(in_path);
    if (!f) return QL_EIO;
    int n = ql_st_count(f);
    by_offset *order = malloc(sizeof *order * (size_t)(n + 1));
    ql_st_raw *e = calloc((size_t)n + 1, sizeof *e);
    int *src = malloc(sizeof(int) * (size_t)(n + 1));
    ql_status s = order && e && src ? QL_OK : ql_fail(QL_ENOMEM, "out of memory");
    int k = 0;
    for (int i = 0; s == QL_OK && i < n; i++) { order[i].idx = i; order[i].begin = ql_st_entry_at(f, i)->begin; }
    if (s == QL_OK) qsort(order, (size_t)n, sizeof *order, cmp_offset);
    for (int oi = 0; s == QL_OK && oi < n; oi++) {
        int i = order[oi].idx;
        const ql_st_entry *en = ql_st_entry_at(f, i);
        int aux = 0;
        for (size_t a = 0; a < sizeof nf4_aux / sizeof nf4_aux[0]; a++) {
            if (!ends_with(en->name, nf4_aux[a])) continue;
            char base[1024];
            snprintf(base, sizeof base, "%.*s", (int)(strlen(en->name) - strlen(nf4_aux[a])), en->name);
            if (ql_nf4_st_has(f, base)) aux = 1;
        }
        if (aux) continue;
        ql_st_raw *r = &e[k];
        r->name = en->name;
        if (ql_nf4_st_has(f, en->name)) {
            ql_tensor *q = ql_nf4_st_read(f, en->name);
            if (!q) { s = QL_EFORMAT; break; }
            r->dtype = q->quant->orig_dtype == QL_F32 ? "F32" : q->quant->orig_dtype == QL_F16 ? "F16" : "BF16";
            r->ndim = q->ndim;
            memcpy(r->shape, q->shape, sizeof q->shape);
            r->nbytes = (uint64_t)ql_tensor_numel(q) * (!strcmp(r->dtype, "F32") ? 4 : 2);
            ql_tensor_release(q);
            *four_bit = 1;
        } else {
            r->dtype = en->dtype;
            r->ndim = en->ndim;
            memcpy(r->shape, en->shape, sizeof en->shape);
            r->nbytes = en->end - en->begin;
        }
        src[k++] = i;
    }
    ql_st_writer *w = NULL;
    if (s == QL_OK) {
        const char *mk[1] = { "format" }, *mv[1] = { "pt" };
        w = ql_st_writer_open(out_path, k, e, 1, mk, mv);
        if (!w) s = QL_EIO;
    }
    for (int j = 0; s == QL_OK && j < k; j++) {
        if (ql_sigint_pending()) { s = ql_fail(QL_EIO, "merge interrupted (Ctrl-C)"); break; }   /* trapped by the caller */
        int i = src[j];
        const ql_st_entry *en = ql_st_entry_at(f, i);
        const ql_lora_mod *mod = mod_for_key(l, en->name);
        if (index_map) {
            fprintf(index_map, "%s\n    \"%s\": \"%s\"", *first_key ? "" : ",", en->name, out_name);
            *first_key = 0;
        }
        *total += e[j].nbytes;
        if (mod || ql_nf4_st_has(f, en->name)) {
            ql_tensor *wt = ql_nf4_st_has(f, en->name) ? ql_nf4_st_read(f, en->name) : ql_st_tensor(f, i);
            if (!wt) { s = QL_EFORMAT; break; }
            if (wt->ndim != 2 || (mod && (wt->shape[0] != mod->out || wt->shape[1] != mod->in))) {
                s = ql_fail(QL_EFORMAT, "%s: '%s' does not have the shape the adapter was trained for", in_path, en->name);
                ql_tensor_release(wt);
                break;
            }
            s = write_merged(w, wt, mod, e[j].dtype);
            ql_tensor_release(wt);
            if (mod) (*adapted)++;
        } else {
            s = ql_st_writer_write(w, ql_st_data(f, i), (size_t)(en->end - en->begin));
        }
        ql_st_drop(f, i);
    }
    if (w) { if (s == QL_OK) s = ql_st_writer_close(w); else ql_st_writer_abort(w); }
    free(order); free(e); free(src);
    ql_st_close(f);
    return s;
}

static ql_status copy_file(const char *from, const char *to)
{
    ql_mapping m;
    QL_TRY(ql_map_file(from, &m));
    ql_atomic_file af;
    ql_status s = ql_atomic_open(&af, to);
    if (s == QL_OK) {
        if (m.size) fwrite(m.data, 1, m.size, af.fp);
        s = ql_atomic_commit(&af);
    }
    ql_unmap_file(&m);
    return s;
}

static ql_status merge_into(const ql_lora *l, const char *base_dir, const char *out_dir, char *note, size_t note_cap)
{
    char path[4096], out[8192];
    snprintf(path, sizeof path, "%s/config.json", base_dir);
    ql_json_doc *cfg = NULL;
    if (!ql_file_exists(path)) return ql_fail(QL_EIO, "%s: config.json is missing: merge needs the base model's folder", base_dir);
    QL_TRY(ql_json_parse_file(path, &cfg));
    ql_status s = ql_mkdir_p(out_dir);
    int adapted = 0, four_bit = 0;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", base_dir);
    if (s == QL_OK && ql_file_exists(path)) {
        ql_json_doc *idx = NULL;
        s = ql_json_parse_file(path, &idx);
        const ql_json *wm = s == QL_OK ? ql_json_get(ql_json_root(idx), "weight_map") : NULL;
        if (s == QL_OK && !ql_json_is(wm, QL_JSON_OBJECT)) s = ql_fail(QL_EFORMAT, "%s: no weight_map", path);
        /* the shard files, in order of first appearance */
        size_t nw = ql_json_len(wm);
        const char **files = calloc(nw + 1, sizeof *files);
        if (s == QL_OK && !files) s = ql_fail(QL_ENOMEM, "out of memory");
        int nf = 0;
        for (size_t i = 0; s == QL_OK && i < nw; i++) {
            const ql_json *fv = ql_json_value_at(wm, i);
            const char *fn = ql_json_str(fv);
            char what[256];
            snprintf(what, sizeof what, "weight_map entry \"%.200s\"", ql_json_str(ql_json_key_at(wm, i)));
            if ((s = ql_check_file_name(fn, ql_json_len(fv), path, what)) != QL_OK) break;
            int seen = 0;
            for (int j = 0; j < nf; j++) seen |= !strcmp(files[j], fn);
            if (!seen) files[nf++] = fn;
        }
        snprintf(out, sizeof out, "%s/model.safetensors.index.json", out_dir);
        ql_atomic_file af;
        if (s == QL_OK) s = ql_atomic_open(&af, out);
        if (s == QL_OK) {
            int first = 1;
            uint64_t total = 0;
            fprintf(af.fp, "{\n  \"weight_map\": {");
            for (int j = 0; s == QL_OK && j < nf; j++) {
                char ip[4096], op[8192];
                snprintf(ip, sizeof ip, "%s/%s", base_dir, files[j]);
                snprintf(op, sizeof op, "%s/%s", out_dir, files[j]);
                s = merge_shard(l, ip, op, &adapted, &four_bit, af.fp, files[j], &first, &total);
            }
            fprintf(af.fp, "\n  },\n  \"metadata\": {\"total_size\": %llu}\n}\n", (unsigned long long)total);
            if (s == QL_OK) s = ql_atomic_commit(&af);
            else ql_atomic_abort(&af);
        }
        free(files);
        ql_json_free(idx);
    } else if (s == QL_OK) {
        snprintf(path, sizeof path, "%s/model.safetensors", base_dir);
        snprintf(out, sizeof out, "%s/model.safetensors", out_dir);
        int first = 1;
        uint64_t total = 0;
        s = merge_shard(l, path, out, &adapted, &four_bit, NULL, "model.safetensors", &first, &total);
    }
    int expected = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) expected += l->mods[i].in != 0;
    if (s == QL_OK && adapted != expected)
        s = ql_fail(QL_EFORMAT, "%s: only %d of the adapter's %d projections were found in the base weights; "
                                "is this the model the adapter was trained on?", base_dir, adapted, expected);
    /* config.json without quantization_config, and the tokenizer files */
    if (s == QL_OK) {
        snprintf(out, sizeof out, "%s/config.json", out_dir);
        ql_atomic_file af;
        s = ql_atomic_open(&af, out);
        if (s == QL_OK) {
            ql_json_write(af.fp, ql_json_root(cfg), 2, "quantization_config");
            s = ql_atomic_commit(&af);
        }
    }
    static const char *const extra[] = { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                         "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                                         "chat_template.jinja" };
    for (size_t i = 0; s == QL_OK && i < sizeof extra / sizeof extra[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", base_dir, extra[i]);
        snprintf(out, sizeof out, "%s/%s", out_dir, extra[i]);
        if (ql_file_exists(path)) s = copy_file(path, out);
    }
    if (s == QL_OK && note)
        snprintf(note, note_cap, four_bit
                 ? "merged into weights dequantized from the 4-bit checkpoint: the merged model keeps NF4's rounding "
                   "error; merge into the original bf16 checkpoint (base=...) to avoid it"
                 : "merged %d projections into the original weights of %s", adapted, base_dir);
    ql_json_free(cfg);
    return s;
}

/* a non-finite value in A or B would merge into a model whose every output is NaN */
static ql_status check_finite(const ql_lora *l)
{
    for (int i = 0; i < l->layers * QL_NTARGETS; i++) {
        const ql_lora_mod *mod = &l->mods[i];
        if (!mod->in) continue;
        const float *w[2] = { mod->A, mod->B };
        size_t n[2] = { (size_t)mod->r * mod->in, (size_t)mod->out * mod->r };
        for (int k = 0; k < 2; k++)
            for (size_t j = 0; j < n[k]; j++)
                if (!isfinite(w[k][j]))
                    return ql_fail(QL_EFORMAT, "the adapter's lora_%s of layer %d %s holds a non-finite value (%g): "
                                   "training diverged; merge an earlier checkpoint (or retrain with a lower lr)",
                                   k ? "B" : "A", i / QL_NTARGETS, ql_lora_target_names[i % QL_NTARGETS], (double)w[k][j]);
    }
    return QL_OK;
}

/* what a merge writes: an existing out_dir holding only these (and config.json) is a
   previous merge, which a new merge replaces; anything else is refused, never deleted */
static int merge_file_name(const char *name)
{
    static const char *const names[] = { "config.json", "model.safetensors.index.json", "tokenizer.json",
                                         "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                                         "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) if (!strcmp(name, names[i])) return 1;
    return ends_with(name, ".safetensors") && strcmp(name, "adapter_model.safetensors") && strcmp(name, "optimizer.safetensors");
}

static ql_status check_replaceable(const char *out_dir)
{
    if (!ql_file_exists(out_dir)) return QL_OK;
    if (!ql_is_dir(out_dir))
        return ql_fail(QL_EINVAL, "%s: exists and is not a folder; the merged model needs a folder of its own (choose another out=)", out_dir);
    char *names;
    size_t len;
    QL_TRY(ql_list_dir(out_dir, &names, &len));
    ql_status s = QL_OK;
    int has_config = 0;
    char path[4096];
    for (size_t at = 0; s == QL_OK && at < len; at += strlen(names + at) + 1) {
        const char *nm = names + at;
        snprintf(path, sizeof path, "%s/%s", out_dir, nm);
        if (!merge_file_name(nm) || ql_is_dir(path))
            s = ql_fail(QL_EINVAL, "%s holds '%s', which a merge does not write: it is not a previous merge, so it is "
                        "left as it is; choose a new or empty folder for out=", out_dir, nm);
        has_config |= !strcmp(nm, "config.json");
    }
    if (s == QL_OK && len && !has_config)
        s = ql_fail(QL_EINVAL, "%s is not empty and holds no config.json: it is not a previous merge, so it is left as it "
                    "is; choose a new or empty folder for out=", out_dir);
    free(names);
    return s;
}

/* "<out_dir>.tmp.<pid>" folders of merges that were killed (their process is gone) */
static void remove_stale_temporaries(const char *out_dir)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out_dir);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%s.tmp.", base);
    if (slash == parent) parent[1] = 0;
    else if (slash) *slash = 0;
    const char *dir = slash ? parent : ".";
    char *names;
    size_t len;
    if (ql_list_dir(dir, &names, &len) != QL_OK) return;
    for (size_t at = 0; at < len; at += strlen(names + at) + 1) {
        const char *nm = names + at;
        if (strncmp(nm, prefix, strlen(prefix))) continue;
        char *end;
        long pid = strtol(nm + strlen(prefix), &end, 10);
        if (*end || end == nm + strlen(prefix) || pid == ql_pid() || ql_pid_alive(pid)) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, nm);
        ql_remove_tree(path);
    }
    free(names);
}

/* the merged folder is written beside out_dir and renamed into place at the end,
   so a failure (disk full, a bad shard, Ctrl-C) never leaves half a model there */
ql_status ql_lora_merge(const ql_lora *l, const char *base_dir, const char *out_arg, char *note, size_t note_cap)
{
    char out_dir[4096];   /* without trailing slashes, so that the temporary lies beside it, not inside */
    snprintf(out_dir, sizeof out_dir, "%s", out_arg);
    for (size_t n = strlen(out_dir); n > 1 && out_dir[n - 1] == '/'; n--) out_dir[n - 1] = 0;
    QL_TRY(check_finite(l));
    /* the base model's own folder looks like a previous merge, but replacing it loses the original weights */
    if (ql_same_file(out_dir, base_dir))
        return ql_fail(QL_EINVAL, "%s is the base model's folder (model=): a merge into it would replace the original "
                       "weights; choose a new folder for out=", out_dir);
    QL_TRY(check_replaceable(out_dir));
    remove_stale_temporaries(out_dir);
    char tmp[4200];
    if (strlen(out_dir) > 4096) return ql_fail(QL_EINVAL, "merge: the output path is longer than 4096 bytes");
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_dir, (long)ql_pid());
    ql_remove_tree(tmp);
    ql_status s = merge_into(l, base_dir, tmp, note, note_cap);
    if (s == QL_OK && (s = check_replaceable(out_dir)) == QL_OK) {   /* again: it may have changed meanwhile */
        if (ql_file_exists(out_dir) && ql_remove_tree(out_dir) != QL_OK) s = ql_fail_context(QL_EIO, "merge: ");
        else if (ql_rename(tmp, out_dir) != QL_OK) s = QL_EIO;
    }
    if (s != QL_OK) ql_remove_tree(tmp);
    return s;
}

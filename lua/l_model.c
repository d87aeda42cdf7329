/*
 * l_model.c — qlora.model: Hugging Face checkpoints.
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.model) in the REPL).
 * Token ids are 0-based, as in the tokenizer files.
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "model.h"

#define MODEL_MT "qlora.Model"

/* users: adapters working on the model; released: release() was called while it had users */
typedef struct ql_lua_model { ql_model *m; int users; int released; } lmodel;

ql_model *ql_lua_checkmodel(lua_State *L, int idx)
{
    lmodel *u = luaL_checkudata(L, idx, MODEL_MT);
    if (!u->m || u->released) luaL_error(L, "this model was released");
    return u->m;
}

ql_lua_model *ql_lua_model_use(lua_State *L, int idx)
{
    ql_lua_checkmodel(L, idx);
    lmodel *u = lua_touserdata(L, idx);
    u->users++;
    return u;
}

ql_model *ql_lua_model_ptr(const ql_lua_model *h) { return h->m; }

void ql_lua_model_unuse(ql_lua_model *u)
{
    if (--u->users == 0 && u->released) {
        ql_model_free(u->m);
        u->m = NULL;
    }
}

static int l_load(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    ql_model_load_opts o = { 0, 64, 1, { QL_DEV_CPU, 0 }, NULL, NULL };
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "quant");
        const char *q = luaL_optstring(L, -1, "none");
        if (!strcmp(q, "nf4")) o.quant_nf4 = 1;
        else if (strcmp(q, "none") != 0) return luaL_error(L, "quant must be \"nf4\" or \"none\", not \"%s\"", q);
        lua_getfield(L, 2, "device");
        const char *d = luaL_optstring(L, -1, "cpu");
        if (ql_device_parse(d, &o.device) != QL_OK) return ql_lua_error(L);
        lua_pop(L, 2);
    }
    lmodel *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->m = NULL;
    u->users = u->released = 0;
    luaL_setmetatable(L, MODEL_MT);
    u->m = ql_model_load(dir, &o);
    if (!u->m) return ql_lua_fail(L);
    return 1;
}

/* model:release(), __gc, __close; with adapters still using the model it is only marked
   released, and the last adapter to go frees it */
static int m_release(lua_State *L)
{
    lmodel *u = luaL_checkudata(L, 1, MODEL_MT);
    if (u->users > 0) { u->released = 1; return 0; }
    ql_model_free(u->m);
    u->m = NULL;
    return 0;
}

static int m_config(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    const ql_model_config *c = &m->cfg;
    lua_newtable(L);
#define SETI(k, v) (lua_pushinteger(L, (v)), lua_setfield(L, -2, k))
#define SETN(k, v) (lua_pushnumber(L, (v)), lua_setfield(L, -2, k))
    lua_pushstring(L, c->model_type); lua_setfield(L, -2, "model_type");
    lua_pushstring(L, m->dir); lua_setfield(L, -2, "dir");
    SETI("vocab_size", c->vocab); SETI("hidden_size", c->hidden); SETI("intermediate_size", c->inter);
    SETI("num_hidden_layers", c->layers); SETI("num_attention_heads", c->heads);
    SETI("num_key_value_heads", c->kv_heads); SETI("head_dim", c->head_dim);
    SETN("rope_theta", c->rope_theta); SETN("rms_norm_eps", c->eps);
    lua_pushboolean(L, c->tie_embeddings); lua_setfield(L, -2, "tie_word_embeddings");
    lua_pushboolean(L, m->nf4); lua_setfield(L, -2, "nf4");
    char devs[32];
    ql_device_str(m->device, devs, sizeof devs);
    lua_pushstring(L, devs); lua_setfield(L, -2, "device");
    SETI("bos_token_id", c->bos_id);
    lua_createtable(L, c->n_eos, 0);
    for (int i = 0; i < c->n_eos; i++) { lua_pushinteger(L, c->eos_ids[i]); lua_seti(L, -2, i + 1); }
    lua_setfield(L, -2, "eos_token_id");
    return 1;
}

/* ids from a Lua array, an array of rows, or an integer tensor; returns rows and T */
int32_t *ql_lua_ids(lua_State *L, int idx, int *rows, int *T)
{
    ql_tensor *t = ql_lua_totensor(L, idx);
    if (t) {
        if (t->ndim < 1 || t->ndim > 2) luaL_error(L, "ids tensor must be 1-D or 2-D");
        *rows = t->ndim == 2 ? (int)t->shape[0] : 1;
        *T = (int)t->shape[t->ndim - 1];
        ql_tensor *h = ql_tensor_to(t, QL_I32, ql_cpu());
        if (!h) ql_lua_error(L);
        int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(*rows * *T + 1), 0);
        memcpy(ids, ql_tensor_data(h), sizeof(int32_t) * (size_t)(*rows * *T));
        ql_tensor_release(h);
        return ids;
    }
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_geti(L, idx, 1);
    int nested = lua_istable(L, -1);
    lua_pop(L, 1);
    *rows = nested ? (int)luaL_len(L, idx) : 1;
    if (nested) { lua_geti(L, idx, 1); *T = (int)luaL_len(L, -1); lua_pop(L, 1); }
    else *T = (int)luaL_len(L, idx);
    if (*rows <= 0 || *T <= 0) luaL_error(L, "ids must not be empty");
    int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(*rows * *T), 0);
    for (int r = 0; r < *rows; r++) {
        if (nested) { lua_geti(L, idx, r + 1); if ((int)luaL_len(L, -1) != *T) luaL_error(L, "all rows of ids must have the same length"); }
        int tbl = nested ? lua_gettop(L) : idx;
        for (int t = 0; t < *T; t++) {
            lua_geti(L, tbl, t + 1);
            if (!lua_isinteger(L, -1)) luaL_error(L, "ids must be integers");
            ids[r * *T + t] = (int32_t)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        if (nested) lua_pop(L, 1);
    }
    return ids;
}

/* pos/lo/hi for the batch, honouring opts.doc_lens (a flat list for one row, or one list per row) */
void ql_lua_batch_ranges(lua_State *L, int opts, int rows, int T, int32_t *pos, int32_t *lo, int32_t *hi)
{
    int32_t *lens = NULL;
    int *nd = NULL;
    if (lua_istable(L, opts)) {
        lua_getfield(L, opts, "doc_lens");
        if (lua_istable(L, -1)) {
            int t = lua_gettop(L);
            lua_geti(L, t, 1);
            int nested = lua_istable(L, -1);
            lua_pop(L, 1);
            nd = lua_newuserdatauv(L, sizeof(int) * (size_t)rows, 0);
            lens = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(rows * T + 1), 0);
            int k = 0;
            for (int r = 0; r < rows; r++) {
                if (nested) lua_geti(L, t, r + 1);
                else if (rows != 1) luaL_error(L, "doc_lens: give one list per row");
                int src = nested ? lua_gettop(L) : t;
                int n = (int)luaL_len(L, src), sum = 0;
                nd[r] = n;
                for (int i = 1; i <= n; i++) {
                    lua_geti(L, src, i);
                    lens[k] = (int32_t)luaL_checkinteger(L, -1);
                    if (lens[k] <= 0) luaL_error(L, "doc_lens must be positive");
                    sum += lens[k++];
                    lua_pop(L, 1);
                }
                if (sum > T) luaL_error(L, "doc_lens of row %d add up to %d, more than the row length %d", r + 1, sum, T);
                if (nested) lua_pop(L, 1);
            }
        }
    }
    ql_batch_ranges(rows, T, lens, nd, pos, lo, hi);
}

static int m_logits(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    int rows, T;
    int32_t *ids = ql_lua_ids(L, 2, &rows, &T);
    int64_t n = (int64_t)rows * T;
    int32_t *r = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)n * 3, 0);
    ql_lua_batch_ranges(L, 3, rows, T, r, r + n, r + 2 * n);
    int64_t shape[3] = { rows, T, m->cfg.vocab };
    int nested;
    if (ql_lua_totensor(L, 2)) nested = ql_lua_totensor(L, 2)->ndim == 2;
    else { lua_geti(L, 2, 1); nested = lua_istable(L, -1); lua_pop(L, 1); }
    ql_tensor *out = nested ? ql_tensor_new(QL_F32, 3, shape, ql_cpu()) : ql_tensor_new(QL_F32, 2, shape + 1, ql_cpu());
    if (!out) return ql_lua_error(L);
    ql_batch b = { n, ids, r, r + n, r + 2 * n };
    if (ql_model_logits(m, &b, NULL, ql_tensor_data(out)) != QL_OK) { ql_tensor_release(out); return ql_lua_error(L); }
    return ql_lua_pushtensor(L, out);
}

static int m_loss(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    int rows, T, lrows, lT;
    int32_t *ids = ql_lua_ids(L, 2, &rows, &T);
    int32_t *labels = ql_lua_ids(L, 3, &lrows, &lT);
    if (lrows != rows || lT != T) return luaL_error(L, "labels must have the shape of ids");
    int64_t n = (int64_t)rows * T;
    int32_t *r = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)n * 3, 0);
    ql_lua_batch_ranges(L, 4, rows, T, r, r + n, r + 2 * n);
    ql_batch b = { n, ids, r, r + n, r + 2 * n };
    double sum;
    int64_t count;
    if (ql_model_loss(m, &b, labels, &sum, &count) != QL_OK) return ql_lua_error(L);
    lua_pushnumber(L, count ? sum / (double)count : 0.0 / 0.0);
    lua_pushnumber(L, sum);
    lua_pushinteger(L, count);
    return 3;
}

typedef struct { lua_State *L; int fn; int err; } gen_cb;

static int on_token(void *ud, int32_t id)
{
    gen_cb *g = ud;
    lua_pushvalue(g->L, g->fn);
    lua_pushinteger(g->L, id);
    if (lua_pcall(g->L, 1, 1, 0) != LUA_OK) { g->err = 1; return 1; }   /* error stays on the stack */
    int stop = lua_toboolean(g->L, -1);
    lua_pop(g->L, 1);
    return stop;
}

static int m_generate(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    int rows, n;
    int32_t *prompt = ql_lua_ids(L, 2, &rows, &n);
    if (rows != 1) return luaL_error(L, "generate takes one prompt");
    ql_sample_opts o = { 32, 0.0f, 0, 1.0f, 0, NULL, -1, NULL, NULL };
    gen_cb cb = { L, 0, 0 };
    int32_t *stop = NULL;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "max_new_tokens"); o.max_new_tokens = (int)luaL_optinteger(L, -1, 32); lua_pop(L, 1);
        lua_getfield(L, 3, "temperature"); o.temperature = (float)luaL_optnumber(L, -1, 0); lua_pop(L, 1);
        lua_getfield(L, 3, "top_k"); o.top_k = (int)luaL_optinteger(L, -1, 0); lua_pop(L, 1);
        lua_getfield(L, 3, "top_p"); o.top_p = (float)luaL_optnumber(L, -1, 1); lua_pop(L, 1);
        lua_getfield(L, 3, "seed"); o.seed = (uint64_t)luaL_optinteger(L, -1, 0); lua_pop(L, 1);
        lua_getfield(L, 3, "stop");
        if (lua_istable(L, -1)) {
            int k = (int)luaL_len(L, -1);
            stop = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(k + 1), 0);
            for (int i = 0; i < k; i++) { lua_geti(L, -2, i + 1); stop[i] = (int32_t)luaL_checkinteger(L, -1); lua_pop(L, 1); }
            o.stop = stop; o.nstop = k;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        lua_getfield(L, 3, "on_token");
        if (lua_isfunction(L, -1)) { cb.fn = lua_gettop(L); o.on_token = on_token; o.ud = &cb; }
        else lua_pop(L, 1);
    }
    if (o.max_new_tokens < 0 || o.max_new_tokens > 1 << 20) return luaL_error(L, "max_new_tokens out of range");
    int32_t *out = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(o.max_new_tokens + 1), 0);
    int nout = 0;
    ql_status s = o.max_new_tokens ? ql_model_generate(m, prompt, n, &o, out, &nout) : QL_OK;
    if (cb.err) return lua_error(L);   /* the callback's error */
    if (s != QL_OK) return ql_lua_error(L);
    lua_createtable(L, nout, 0);
    for (int i = 0; i < nout; i++) { lua_pushinteger(L, out[i]); lua_seti(L, -2, i + 1); }
    return 1;
}

/* m:check_tokenizer(tok) -> true | nil, message: every id of the tokenizer (tok.vocab_size,
   its largest id + 1) has a row in the model's embedding */
static int m_check_tokenizer(lua_State *L)
{
    ql_model *m = ql_lua_checkmodel(L, 1);
    if (lua_getfield(L, 2, "vocab_size") != LUA_TNUMBER || !lua_isinteger(L, -1))
        return luaL_argerror(L, 2, "a tokenizer (with vocab_size)");
    lua_Integer n = lua_tointeger(L, -1);
    if (n > m->cfg.vocab) {
        lua_pushnil(L);
        lua_pushfstring(L, "the tokenizer and the model do not match: the tokenizer has ids up to %I but the model's "
                           "vocab_size is %d (%s/config.json); give the tokenizer that belongs to this model",
                        (lua_Integer)(n - 1), m->cfg.vocab, m->dir);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int m_memory(lua_State *L) { lua_pushinteger(L, ql_model_weight_bytes(ql_lua_checkmodel(L, 1))); return 1; }

static int m_tostring(lua_State *L)
{
    lmodel *u = luaL_checkudata(L, 1, MODEL_MT);
    if (!u->m || u->released) { lua_pushstring(L, "model(released)"); return 1; }
    const ql_model_config *c = &u->m->cfg;
    lua_pushfstring(L, "model(%s, %d layers, hidden %d, vocab %d%s, %s)", c->model_type, c->layers, c->hidden, c->vocab,
                    u->m->nf4 ? ", nf4" : "", u->m->dir);
    return 1;
}

static const luaL_Reg methods[] = {
    { "config", m_config }, { "logits", m_logits }, { "loss", m_loss }, { "generate", m_generate },
    { "memory", m_memory }, { "check_tokenizer", m_check_tokenizer }, { "release", m_release }, { NULL, NULL }
};

static const luaL_Reg functions[] = { { "load", l_load }, { NULL, NULL } };

static const ql_lua_doc method_docs[] = {
    { "", "a loaded Hugging Face model (qlora.model.load); token ids are 0-based, as in the tokenizer files" },
    { "config", "config() -> table of config.json facts (vocab_size, hidden_size, ...)" },
    { "logits", "logits(ids [, {doc_lens = {...}}]) -> tensor [T, V]\n"
                "  ids: a Lua array or an integer tensor; a table of rows gives [B, T, V]; doc_lens packs documents" },
    { "loss", "loss(ids, labels [, {doc_lens}]) -> mean, sum, count   labels aligned with ids; -100 is ignored" },
    { "generate", "generate(ids, {max_new_tokens = 32, temperature = 0, top_k = 0, top_p = 1, seed = 0,\n"
                  "  stop = {ids} (default: eos), on_token = function(id) ... end}) -> array of new ids\n"
                  "  greedy at temperature 0; on_token returning true stops" },
    { "memory", "memory() -> bytes of weights held" },
    { "check_tokenizer", "check_tokenizer(tok) -> true | nil, message   every token id of tok has an embedding row" },
    { "release", "release()   frees the weights now, or with the last adapter using them" },
    { NULL, NULL }
};
static const ql_lua_doc docs[] = {
    { "", "Hugging Face checkpoints: loading (NF4 on load), forward, loss, generation" },
    { "load", "load(dir [, {quant = \"nf4\" | \"none\", device = \"cpu\" | \"cuda[:N]\"}]) -> model | nil, message\n"
              "  cpu: the fp32 reference; cuda: the weights move to the GPU and the decoder runs there in bf16 with f32 accumulation" },
    { NULL, NULL }
};

int luaopen_qlora_model(lua_State *L)
{
    if (luaL_newmetatable(L, MODEL_MT)) {
        luaL_newlib(L, methods);
        ql_lua_docs(L, -1, MODEL_MT, "m:", method_docs);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, m_release); lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, m_release); lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, m_tostring); lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    ql_lua_docs(L, -1, "qlora.model", "qlora.model.", docs);
    return 1;
}

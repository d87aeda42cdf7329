/*
 * l_text.c — qlora.text: corpus text cleaning on utf8proc (engine/text/text.c).
 * Each function's documentation: the docs table(s) beside the luaL_Reg tables below
 * (help(qlora.text) in the REPL).
 * Corpus-level boilerplate and duplicate removal: qlora.dedup (lua/qlora/dedup.lua).
 */
#include "qlora.h"

#include <stdlib.h>
#include <string.h>

#include "text.h"

static int opt_bool(lua_State *L, int idx, const char *k, int def)
{
    if (!lua_istable(L, idx)) return def;
    lua_getfield(L, idx, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}
static lua_Integer opt_int(lua_State *L, int idx, const char *k, lua_Integer def)
{
    if (!lua_istable(L, idx)) return def;
    lua_getfield(L, idx, k);
    lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    return v;
}

static int l_clean(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    ql_text_opts o;
    ql_text_opts_default(&o);
    o.nfkc = opt_bool(L, 2, "nfkc", o.nfkc);
    o.fold_quotes = opt_bool(L, 2, "fold_quotes", o.fold_quotes);
    o.collapse_spaces = opt_bool(L, 2, "collapse_spaces", o.collapse_spaces);
    o.max_blank_lines = (int)opt_int(L, 2, "max_blank_lines", o.max_blank_lines);
    char *out; size_t on;
    if (ql_text_clean(s, n, &o, &out, &on) != QL_OK) return ql_lua_error(L);
    lua_pushlstring(L, out, on);
    free(out);
    return 1;
}

static int l_minhash(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int k = (int)opt_int(L, 2, "k", 5), np = (int)opt_int(L, 2, "n", 64);
    uint32_t sig[256];
    if (ql_text_minhash(s, n, k, np, sig) != QL_OK) return ql_lua_error(L);
    lua_pushlstring(L, (const char *)sig, (size_t)np * sizeof sig[0]);
    return 1;
}

static int l_similarity(lua_State *L)
{
    size_t na, nb;
    const char *a = luaL_checklstring(L, 1, &na), *b = luaL_checklstring(L, 2, &nb);
    if (na != nb || na % 4 || na == 0) return luaL_error(L, "text.similarity: signatures of different sizes (%d and %d bytes): make both with the same n", (int)na, (int)nb);
    uint32_t x, y; int eq = 0, m = (int)(na / 4);
    for (int i = 0; i < m; i++) { memcpy(&x, a + 4 * i, 4); memcpy(&y, b + 4 * i, 4); eq += x == y; }
    lua_pushnumber(L, (double)eq / m);
    return 1;
}

static int l_fingerprint(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)ql_text_fingerprint(s, n));
    lua_pushstring(L, hex);
    return 1;
}

static const luaL_Reg funcs[] = {
    {"clean", l_clean}, {"minhash", l_minhash}, {"similarity", l_similarity},
    {"fingerprint", l_fingerprint}, {NULL, NULL}
};

static const ql_lua_doc docs[] = {
    { "", "corpus text cleaning on utf8proc; corpus-level boilerplate and duplicates: qlora.dedup" },
    { "clean", "clean(s [, {nfkc = true, fold_quotes = false, collapse_spaces = true, max_blank_lines = 1}]) -> s\n"
               "  Unicode normalisation, control/zero-width/private-use characters removed, ligatures and odd spaces fixed" },
    { "minhash", "minhash(s [, {k = 5, n = 64}]) -> signature   a binary string of n uint32 (k-word shingles)" },
    { "similarity", "similarity(sig_a, sig_b) -> x   estimated Jaccard similarity in [0, 1]" },
    { "fingerprint", "fingerprint(s) -> 16 hex digits of the folded text (exact duplicates)" },
    { NULL, NULL }
};

int luaopen_qlora_text(lua_State *L)
{
    luaL_newlib(L, funcs);
    ql_lua_docs(L, -1, "qlora.text", "qlora.text.", docs);
    return 1;
}

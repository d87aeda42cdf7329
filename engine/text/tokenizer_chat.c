/*
 * tokenizer_chat.c — chat templates rendered by the Jinja2 interpreter (jinja.c).
 *
 * Builds the variables transformers' apply_chat_template gives a template, as
 * one JSON object, and renders the tokenizer's chat_template with them:
 *   messages            each message with None-valued keys dropped; a message
 *                       with reasoning (reasoning_content, thinking or reasoning)
 *                       gets it under "thinking" (first) and "reasoning_content",
 *                       as transformers' _alias_reasoning_fields does
 *   tools, documents    the caller's tools, or none; documents none
 *   add_generation_prompt, enable_thinking
 *   bos_token, eos_token, unk_token, pad_token   those set in tokenizer_config.json
 *   the caller's extra variables, last, so they override the ones above.
 * Golden renderings: tests/gen/gen_chat_templates.py (transformers).
 */
#include "jinja.h"
#include "tokenizer_internal.h"
#include "json.h"
#include "strbuf.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add_cstr(ql_strbuf *b, const char *s) { ql_strbuf_add(b, s, strlen(s)); }

static void add_json_str(ql_strbuf *b, const char *s, size_t n)
{
    add_cstr(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; ql_strbuf_add(b, esc, 2); }
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); add_cstr(b, esc); }
        else ql_strbuf_add(b, s + i, 1);
    }
    add_cstr(b, "\"");
}

/* a JSON value re-serialised (ql_json_write goes to a FILE: a memory stream) */
static ql_status add_json_value(ql_strbuf *b, const ql_json *v)
{
    char *p = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&p, &n);
    if (!fp) return ql_fail(QL_ENOMEM, "apply_chat_template: out of memory");
    ql_json_write(fp, v, 0, NULL);
    if (fclose(fp) != 0) { free(p); return ql_fail(QL_ENOMEM, "apply_chat_template: out of memory"); }
    ql_strbuf_add(b, p, n);
    free(p);
    return QL_OK;
}

static int key_is(const ql_json *k, const char *s) { return k->n == strlen(s) && !memcmp(k->u.str, s, k->n); }

/* a message given as JSON: None-valued keys dropped, reasoning aliased */
static ql_status add_json_message(ql_strbuf *b, const char *json, size_t idx)
{
    char name[64];
    snprintf(name, sizeof name, "message %zu", idx + 1);
    ql_json_doc *doc = NULL;
    ql_status s = ql_json_parse(json, strlen(json), name, &doc);
    if (s != QL_OK) return s;
    const ql_json *m = ql_json_root(doc);
    if (m->type != QL_JSON_OBJECT) {
        ql_json_free(doc);
        return ql_fail(QL_EINVAL, "apply_chat_template: %s is not a JSON object", name);
    }
    static const char *const rnames[] = { "reasoning_content", "thinking", "reasoning" };
    const ql_json *reasoning = NULL;
    for (int r = 0; r < 3 && !reasoning; r++) {
        const ql_json *v = ql_json_get(m, rnames[r]);
        if (v && v->type != QL_JSON_NULL) reasoning = v;
    }
    add_cstr(b, "{");
    int first = 1, wrote_rc = 0;
    if (reasoning && !ql_json_get(m, "thinking")) {
        add_cstr(b, "\"thinking\":");
        s = add_json_value(b, reasoning);
        first = 0;
    }
    for (size_t i = 0; i < m->n && s == QL_OK; i++) {
        const ql_json *k = &m->u.items[2 * i], *v = &m->u.items[2 * i + 1];
        int is_thinking = reasoning && key_is(k, "thinking"), is_rc = reasoning && key_is(k, "reasoning_content");
        if (v->type == QL_JSON_NULL && !is_thinking && !is_rc) continue;
        if (!first) add_cstr(b, ",");
        first = 0;
        add_json_str(b, k->u.str, k->n);
        add_cstr(b, ":");
        s = add_json_value(b, is_thinking || is_rc ? reasoning : v);
        wrote_rc |= is_rc;
    }
    if (s == QL_OK && reasoning && !wrote_rc) {
        if (!first) add_cstr(b, ",");
        add_cstr(b, "\"reasoning_content\":");
        s = add_json_value(b, reasoning);
    }
    add_cstr(b, "}");
    ql_json_free(doc);
    return s;
}

static void add_token_var(ql_strbuf *b, const char *name, const char *tok)
{
    if (!tok) return;
    add_cstr(b, ",\"");
    add_cstr(b, name);
    add_cstr(b, "\":");
    add_json_str(b, tok, strlen(tok));
}

/* the members of a JSON object text, appended as ",k:v,..." (checked by parsing) */
static ql_status add_members(ql_strbuf *b, const char *json, const char *what)
{
    ql_json_doc *doc = NULL;
    ql_status s = ql_json_parse(json, strlen(json), what, &doc);
    if (s != QL_OK) return s;
    const ql_json *o = ql_json_root(doc);
    if (o->type != QL_JSON_OBJECT) { ql_json_free(doc); return ql_fail(QL_EINVAL, "apply_chat_template: %s must be a JSON object", what); }
    for (size_t i = 0; i < o->n && s == QL_OK; i++) {
        add_cstr(b, ",");
        add_json_str(b, o->u.items[2 * i].u.str, o->u.items[2 * i].n);
        add_cstr(b, ":");
        s = add_json_value(b, &o->u.items[2 * i + 1]);
    }
    ql_json_free(doc);
    return s;
}

static ql_status build_vars(const ql_tokenizer *t, const ql_chat_msg *msgs, size_t n, const ql_chat_opts *o,
                            ql_strbuf *b)
{
    ql_status s = QL_OK;
    add_cstr(b, "{\"messages\":[");
    for (size_t i = 0; i < n && s == QL_OK; i++) {
        if (i) add_cstr(b, ",");
        const ql_chat_msg *m = &msgs[i];
        if (m->json) { s = add_json_message(b, m->json, i); continue; }
        add_cstr(b, "{");
        if (m->reasoning) { add_cstr(b, "\"thinking\":"); add_json_str(b, m->reasoning, strlen(m->reasoning)); add_cstr(b, ","); }
        add_cstr(b, "\"role\":");
        add_json_str(b, m->role, strlen(m->role));
        add_cstr(b, ",\"content\":");
        add_json_str(b, m->content, strlen(m->content));
        if (m->reasoning) { add_cstr(b, ",\"reasoning_content\":"); add_json_str(b, m->reasoning, strlen(m->reasoning)); }
        add_cstr(b, "}");
    }
    if (s != QL_OK) return s;
    add_cstr(b, "],\"tools\":");
    if (o->tools_json) {
        ql_json_doc *doc = NULL;
        s = ql_json_parse(o->tools_json, strlen(o->tools_json), "tools", &doc);
        if (s != QL_OK) return s;
        if (ql_json_root(doc)->type != QL_JSON_ARRAY && ql_json_root(doc)->type != QL_JSON_NULL) {
            ql_json_free(doc);
            return ql_fail(QL_EINVAL, "apply_chat_template: tools must be a JSON array of tool schemas");
        }
        s = add_json_value(b, ql_json_root(doc));
        ql_json_free(doc);
        if (s != QL_OK) return s;
    } else {
        add_cstr(b, "null");
    }
    add_cstr(b, ",\"documents\":null,\"add_generation_prompt\":");
    add_cstr(b, o->add_generation_prompt ? "true" : "false");
    add_token_var(b, "bos_token", ql_tokenizer_bos_token(t));
    add_token_var(b, "eos_token", ql_tokenizer_eos_token(t));
    add_token_var(b, "unk_token", ql_tokenizer_unk_token(t));
    add_token_var(b, "pad_token", ql_tokenizer_pad_token(t));
    add_cstr(b, ",\"enable_thinking\":");
    add_cstr(b, o->enable_thinking ? "true" : "false");
    if (o->vars_json) s = add_members(b, o->vars_json, "template variables");
    add_cstr(b, "}");
    return s;
}

ql_status ql_tokenizer_apply_chat(const ql_tokenizer *t, const ql_chat_msg *msgs, size_t n,
                                  const ql_chat_opts *opts, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    ql_chat_opts dflt = { 0, 1, NULL, NULL, 0 };
    if (!opts) opts = &dflt;
    const char *tmpl = ql_tokenizer_chat_template(t);
    if (!tmpl)
        return ql_fail(QL_EUNSUPPORTED, "apply_chat_template: the tokenizer has no chat_template (no chat_template.jinja "
                       "beside it, and tokenizer_config.json missing or without one)");
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].json && (!msgs[i].role || !msgs[i].content))
            return ql_fail(QL_EINVAL, "apply_chat_template: message %zu needs a role and a content string", i + 1);
    ql_strbuf b = { 0 };
    ql_status s = build_vars(t, msgs, n, opts, &b);
    if (s == QL_OK && b.oom) s = ql_fail(QL_ENOMEM, "apply_chat_template: out of memory");
    if (s != QL_OK) { free(b.p); return s; }
    ql_json_doc *vars = NULL;
    s = ql_json_parse(b.p, b.n, "chat template variables", &vars);
    free(b.p);
    if (s != QL_OK) return s;
    /* parsed once at load; parsed here only to say why a template does not parse */
    const ql_jinja *j = ql_tokenizer_chat_jinja(t);
    ql_jinja *own = NULL;
    if (!j && (s = ql_jinja_parse(tmpl, strlen(tmpl), "chat_template", &own)) == QL_OK) j = own;
    if (s == QL_OK) {
        ql_jinja_opts jo = { opts->now };
        s = ql_jinja_render(j, ql_json_root(vars), &jo, out, out_len);
    }
    ql_jinja_free(own);
    ql_json_free(vars);
    return s;
}

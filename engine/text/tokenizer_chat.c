/*
 * tokenizer_chat.c — chat templates by exact per-family formatters.
 *
 * No Jinja interpreter: the chat_template of tokenizer_config.json is only
 * used to recognise the family (tokenizer.c: detect_family), and each family's
 * template is re-implemented here line by line for text-only messages (no
 * tools / tool_calls). Golden strings come from transformers'
 * apply_chat_template (tests/gen/gen_tokenizer_chat.py).
 *   ChatML (Qwen2 / Qwen2.5): default system prompt when none is given.
 *   Qwen3: no default system prompt; <think> blocks of assistant turns before
 *          the last user query are dropped; enable_thinking=false appends an
 *          empty think block to the generation prompt.
 *   Llama 3: bos_token + header + trimmed content + <|eot_id|> per message.
 */
#include "strbuf.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

static void cb_str(ql_strbuf *b, const char *s) { ql_strbuf_add(b, s, strlen(s)); }

/* a span of a string */
typedef struct span { const char *p; size_t n; } span;
static span sp(const char *s) { span r = { s, strlen(s) }; return r; }
static void cb_span(ql_strbuf *b, span s) { ql_strbuf_add(b, s.p, s.n); }

static span lstrip_nl(span s) { while (s.n && s.p[0] == '\n') { s.p++; s.n--; } return s; }
static span rstrip_nl(span s) { while (s.n && s.p[s.n - 1] == '\n') s.n--; return s; }

/* Python str.isspace() characters (used by Jinja's trim = str.strip()) */
static size_t py_space_at(const char *p, size_t n)
{
    unsigned char c = (unsigned char)p[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
    if (n >= 2 && c == 0xC2 && ((unsigned char)p[1] == 0x85 || (unsigned char)p[1] == 0xA0)) return 2;
    if (n >= 3) {
        unsigned c1 = (unsigned char)p[1], c2 = (unsigned char)p[2];
        if (c == 0xE1 && c1 == 0x9A && c2 == 0x80) return 3;                     /* U+1680 */
        if (c == 0xE2 && c1 == 0x80 && (c2 <= 0x8A || c2 == 0xA8 || c2 == 0xA9 || c2 == 0xAF)) return 3;
        if (c == 0xE2 && c1 == 0x81 && c2 == 0x9F) return 3;                     /* U+205F */
        if (c == 0xE3 && c1 == 0x80 && c2 == 0x80) return 3;                     /* U+3000 */
    }
    return 0;
}
static span py_strip(span s)
{
    size_t k;
    while (s.n && (k = py_space_at(s.p, s.n)) != 0) { s.p += k; s.n -= k; }
    for (;;) {
        size_t cut = 0;
        for (size_t back = 1; back <= 3 && back <= s.n; back++) {
            size_t st = s.n - back;
            if (((unsigned char)s.p[st] & 0xC0) == 0x80) continue;
            if (py_space_at(s.p + st, back) == back) cut = back;
            break;
        }
        if (!cut) break;
        s.n -= cut;
    }
    return s;
}

static const char *memmem_last(span h, const char *needle)
{
    size_t m = strlen(needle);
    if (h.n < m) return NULL;
    for (size_t i = h.n - m + 1; i-- > 0;)
        if (!memcmp(h.p + i, needle, m)) return h.p + i;
    return NULL;
}
static const char *memmem_first(span h, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= h.n; i++)
        if (!memcmp(h.p + i, needle, m)) return h.p + i;
    return NULL;
}

static int is_role(const ql_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }

/* tool responses, as both Qwen templates write them */
static void tool_msg(ql_strbuf *b, const ql_chat_msg *m, size_t i, size_t n)
{
    if (i == 0 || !is_role(&m[-1], "tool")) cb_str(b, "<|im_start|>user");
    cb_str(b, "\n<tool_response>\n");
    cb_str(b, m->content);
    cb_str(b, "\n</tool_response>");
    if (i + 1 == n || !is_role(&m[1], "tool")) cb_str(b, "<|im_end|>\n");
}

static void chatml(ql_strbuf *b, const ql_chat_msg *m, size_t n, const ql_chat_opts *o)
{
    if (n && is_role(&m[0], "system")) {
        cb_str(b, "<|im_start|>system\n"); cb_str(b, m[0].content); cb_str(b, "<|im_end|>\n");
    } else {
        cb_str(b, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i > 0) || is_role(&m[i], "assistant")) {
            cb_str(b, "<|im_start|>"); cb_str(b, m[i].role); cb_str(b, "\n");
            cb_str(b, m[i].content); cb_str(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "tool")) {
            tool_msg(b, &m[i], i, n);
        }
    }
    if (o->add_generation_prompt) cb_str(b, "<|im_start|>assistant\n");
}

static int wrapped_tool_response(const char *s)
{
    size_t n = strlen(s), a = strlen("<tool_response>"), z = strlen("</tool_response>");
    return n >= a && !memcmp(s, "<tool_response>", a) && n >= z && !memcmp(s + n - z, "</tool_response>", z);
}

static void qwen3(ql_strbuf *b, const ql_chat_msg *m, size_t n, const ql_chat_opts *o)
{
    if (n && is_role(&m[0], "system")) {
        cb_str(b, "<|im_start|>system\n"); cb_str(b, m[0].content); cb_str(b, "<|im_end|>\n");
    }
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;)
        if (is_role(&m[k], "user") && !wrapped_tool_response(m[k].content)) { last_query = k; break; }
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i > 0)) {
            cb_str(b, "<|im_start|>"); cb_str(b, m[i].role); cb_str(b, "\n");
            cb_str(b, m[i].content); cb_str(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "assistant")) {
            span content = sp(m[i].content), reasoning = { "", 0 };
            if (m[i].reasoning) {
                reasoning = sp(m[i].reasoning);
            } else if (memmem_first(content, "</think>")) {
                const char *last = memmem_last(content, "</think>");
                span after = { last + 8, (size_t)(content.p + content.n - (last + 8)) };
                const char *first = memmem_first(content, "</think>");
                span before = { content.p, (size_t)(first - content.p) };
                before = rstrip_nl(before);
                const char *th = memmem_last(before, "<think>");
                if (th) { before.n -= (size_t)(th + 7 - before.p); before.p = th + 7; }
                reasoning = lstrip_nl(before);
                content = lstrip_nl(after);
            }
            cb_str(b, "<|im_start|>assistant\n");
            if (i > last_query && (i + 1 == n || reasoning.n)) {
                cb_str(b, "<think>\n");
                cb_span(b, rstrip_nl(lstrip_nl(reasoning)));
                cb_str(b, "\n</think>\n\n");
                cb_span(b, lstrip_nl(content));
            } else {
                cb_span(b, content);
            }
            cb_str(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "tool")) {
            tool_msg(b, &m[i], i, n);
        }
    }
    if (o->add_generation_prompt) {
        cb_str(b, "<|im_start|>assistant\n");
        if (!o->enable_thinking) cb_str(b, "<think>\n\n</think>\n\n");
    }
}

static void llama3(ql_strbuf *b, const ql_tokenizer *t, const ql_chat_msg *m, size_t n, const ql_chat_opts *o)
{
    const char *bos = ql_tokenizer_bos_token(t);
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && bos) cb_str(b, bos);
        cb_str(b, "<|start_header_id|>"); cb_str(b, m[i].role); cb_str(b, "<|end_header_id|>\n\n");
        cb_span(b, py_strip(sp(m[i].content)));
        cb_str(b, "<|eot_id|>");
    }
    if (o->add_generation_prompt) cb_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

ql_status ql_tokenizer_apply_chat(const ql_tokenizer *t, const ql_chat_msg *msgs, size_t n,
                                  const ql_chat_opts *opts, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    ql_chat_opts dflt = { 0, 1 };
    if (!opts) opts = &dflt;
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return ql_fail(QL_EINVAL, "apply_chat_template: message %zu needs a role and a content string", i + 1);
    ql_strbuf b = { 0 };
    ql_strbuf_add(&b, "", 0);
    switch (ql_tokenizer_chat_family(t)) {
    case QL_CHAT_CHATML: chatml(&b, msgs, n, opts); break;
    case QL_CHAT_QWEN3: qwen3(&b, msgs, n, opts); break;
    case QL_CHAT_LLAMA3: llama3(&b, t, msgs, n, opts); break;
    default:
        free(b.p);
        return ql_fail(QL_EUNSUPPORTED, "apply_chat_template: %s; supported are the ChatML (Qwen2.5), Qwen3 and "
                       "Llama 3 templates", ql_tokenizer_chat_template(t) ? "this model's chat template is not one we "
                       "recognise" : "the tokenizer has no chat_template (tokenizer_config.json missing or without one)");
    }
    if (b.oom) { free(b.p); return ql_fail(QL_ENOMEM, "apply_chat_template: out of memory"); }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return QL_OK;
}

/*
 * test_chat_templates.c — the Jinja2 renderer (engine/text/jinja.c) and chat
 * templates against transformers' apply_chat_template, byte for byte
 * (tests/fixtures/chat_templates/golden.json from tests/gen/gen_chat_templates.py:
 * Qwen2.5, Qwen3, Llama 3.1/3.2, Mistral 7B / Nemo, SmolLM2, Phi-3/3.5, Gemma 2),
 * plus the renderer's own behaviour on small templates and on broken ones.
 */
#include "qltest.h"

#include "jinja.h"
#include "json.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(const char *tmpl, const char *vars_json, ql_status *st)
{
    ql_jinja *j = NULL;
    ql_json_doc *vars = NULL;
    char *out = NULL;
    *st = ql_jinja_parse(tmpl, strlen(tmpl), "t", &j);
    if (*st == QL_OK && vars_json) *st = ql_json_parse(vars_json, strlen(vars_json), "vars", &vars);
    if (*st == QL_OK) {
        ql_jinja_opts o = { 1772884800 };
        *st = ql_jinja_render(j, vars ? ql_json_root(vars) : NULL, &o, &out, NULL);
    }
    ql_jinja_free(j);
    ql_json_free(vars);
    return out;
}

static void expect(const char *tmpl, const char *vars, const char *want)
{
    ql_status st;
    char *got = render(tmpl, vars, &st);
    CHECK_MSG(st == QL_OK && got && !strcmp(got, want), "%s\n--- got\n%s\n--- want\n%s\n(%s)", tmpl, got ? got : "",
              want, st == QL_OK ? "" : ql_last_error());
    free(got);
}

static void expect_error(const char *tmpl, const char *vars, const char *msg)
{
    ql_status st;
    char *got = render(tmpl, vars, &st);
    CHECK_MSG(st != QL_OK && !got && strstr(ql_last_error(), msg), "%s: expected an error with '%s', got %s", tmpl, msg,
              st == QL_OK ? (got ? got : "") : ql_last_error());
    free(got);
}

QL_TEST(jinja_renders_like_jinja2)
{
    /* whitespace: trim_blocks, lstrip_blocks, - markers, comments */
    expect("  {% if true %}\n  x\n  {% endif %}\n  y {# c #}\n  {#- d #}\nz", NULL, "  x\n  y z");
    expect("{%- for m in ms -%}\n  {{- m -}}\n{%- endfor -%}\n", "{\"ms\": [1, 2]}", "12");
    /* loops, scopes, namespace, loop controls */
    expect("{% for m in [1,2,3] %}{% if loop.first %}{% set x = 1 %}{% endif %}{{ x }}|{% endfor %}{{ x }}", NULL, "1|||");
    expect("{% set ns = namespace(a=1) %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}", NULL, "4");
    expect("{% for x in xs if x > 1 %}{{ loop.index }}/{{ loop.length }}:{{ x }}{% if not loop.last %},{% endif %}"
           "{% else %}none{% endfor %}", "{\"xs\": [1,2,3]}", "1/2:2,2/2:3");
    expect("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}"
           "{% endfor %}", NULL, "02");
    expect("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "{\"d\": {\"x\": 1, \"y\": \"z\"}}", "x=1;y=z;");
    /* macros, call blocks, block set, filter blocks */
    expect("{% macro f(a, b='d') %}[{{ a }}-{{ b }}]{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}", NULL, "[1-d][2-3]");
    expect("{% macro w() %}<{{ caller() }}>{% endmacro %}{% call w() %}in{% endcall %}", NULL, "<in>");
    expect("{% set x %} b {{ 1 }}{% endset %}[{{ x }}]{% filter upper %}abc{% endfilter %}", NULL, "[ b 1]ABC");
    /* values as Python prints them; strings by code point */
    expect("{{ [1,'a',none,true,{'k':1.5}] }}{{ 3/1 }} {{ 1e-5 }} {{ 0.1+0.2 }} {{ -7 % 3 }} {{ -1 // 2 }}", NULL,
           "[1, 'a', None, True, {'k': 1.5}]3.0 1e-05 0.30000000000000004 2 -1");
    expect("{{ s[1] }}{{ s|length }}{{ s[::-1] }}{{ s[-2:] }}", "{\"s\": \"日本語\"}", "本3語本日本語");
    /* filters, tests, methods */
    expect("{{ ms|selectattr('role','equalto','user')|map(attribute='content')|join(', ') }}",
           "{\"ms\": [{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"x\",\"content\":\"b\"},{\"role\":\"user\",\"content\":\"c\"}]}",
           "a, c");
    expect("{{ t|tojson }}|{{ t|tojson(indent=2) }}", "{\"t\": {\"a\": [1, \"é\\n\"], \"b\": null}}",
           "{\"a\": [1, \"é\\n\"], \"b\": null}|{\n  \"a\": [\n    1,\n    \"é\\n\"\n  ],\n  \"b\": null\n}");
    expect("{{ 'a,b,,c'.split(',') }} {{ ' x y '.split() }} {{ 'xxhixx'.strip('x') }} {{ 'a\\nb'|indent(2, true) }}",
           NULL, "['a', 'b', '', 'c'] ['x', 'y'] hi   a\n  b");
    expect("{{ x is defined }}{{ y is none }}{{ 1 is number }}{{ {} is mapping }}{{ 'a' in 'cat' }}{{ 1 < 2 < 3 }}",
           "{\"y\": null}", "FalseTrueTrueTrueTrueTrue");
    expect("{% if strftime_now is defined %}{{ strftime_now('%d %b %Y') }}{% endif %}", NULL, "07 Mar 2026");
    /* errors name the line and never crash */
    expect_error("{{ raise_exception('no system role') }}", NULL, "no system role");
    expect_error("a\n{% if x %}", NULL, "t:2: unclosed block");
    expect_error("{{ x.y }}", NULL, "'x' is undefined");
    expect_error("{% for %}", NULL, "expected a name");
    expect_error("{{ 'abc }}", NULL, "unterminated string");
    expect_error("{{ (((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
                 "((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
                 "1 }}", NULL, "nested too deeply");
    expect_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, "nested too deeply");
    expect_error("{{ range(100000000)|length }}", NULL, "over the limit");
    expect_error("{% set l = [] %}{{ l.append(1) }}", NULL, "immutable");
}

/* a tiny tokenizer carrying a chat template and special tokens in its config */
static const char TINY[] = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";

static void json_escape(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

static ql_tokenizer *template_tokenizer(const ql_json *spec)
{
    const char *tokdir = ql_json_str(ql_json_get(spec, "tokenizer"));
    ql_tokenizer *t = NULL;
    if (tokdir) {
        CHECK_OK(ql_tokenizer_load(qltest_fixture(tokdir), &t));
        return t;
    }
    char path[512];
    snprintf(path, sizeof path, "chat_templates/%s", ql_json_str(ql_json_get(spec, "file")));
    FILE *f = fopen(qltest_fixture(path), "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return NULL;
    char *tmpl = calloc(1, 1 << 20);
    size_t tn = fread(tmpl, 1, (1 << 20) - 1, f);
    fclose(f);
    tmpl[tn] = 0;
    char *cfg = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&cfg, &n);
    fputs("{\"chat_template\": ", fp);
    json_escape(fp, tmpl);
    const ql_json *toks = ql_json_get(spec, "tokens");
    for (size_t i = 0; toks && i < ql_json_len(toks); i++) {
        fputs(", ", fp);
        json_escape(fp, ql_json_str(ql_json_key_at(toks, i)));
        fputs(": ", fp);
        json_escape(fp, ql_json_str(ql_json_value_at(toks, i)));
    }
    fputs("}", fp);
    fclose(fp);
    CHECK_OK(ql_tokenizer_from_json(TINY, sizeof TINY - 1, cfg, n, path, &t));
    free(cfg);
    free(tmpl);
    return t;
}

/* one message as JSON text (for messages with fields beyond role/content/reasoning_content) */
static char *message_json(const ql_json *m)
{
    char *p = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&p, &n);
    ql_json_write(fp, m, 0, NULL);
    fclose(fp);
    return p;
}

/* Integer edge cases from hostile templates: no trap on INT64_MIN // -1, no endless loop or
   huge output from repeating a string (Python's results, wrapping where its integers would grow) */
QL_TEST(jinja_hostile_arithmetic)
{
    expect("{{ (-9223372036854775807 - 1) // -1 }}", NULL, "-9223372036854775808");
    expect("{{ (-9223372036854775807 - 1) % -1 }}", NULL, "0");
    expect("{{ 7 // -1 }}|{{ 7 % -1 }}|{{ -7 // 2 }}|{{ -7 % 2 }}", NULL, "-7|0|-4|1");
    expect("[{{ '' * 9223372036854775807 }}]", NULL, "[]");
    expect("[{{ 'ab' * -3 }}]", NULL, "[]");
    expect_error("{{ 'ab' * 9223372036854775807 }}", NULL, "output limit");
}

QL_TEST(chat_templates_match_transformers)
{
    ql_json_doc *doc;
    if (ql_json_parse_file(qltest_fixture("chat_templates/golden.json"), &doc) != QL_OK) {
        CHECK_MSG(0, "%s", ql_last_error());
        return;
    }
    const ql_json *root = ql_json_root(doc), *templates = ql_json_get(root, "templates");
    const ql_json *convs = ql_json_get(root, "conversations"), *cases = ql_json_get(root, "cases");
    const char *tools = ql_json_str(ql_json_get(root, "tools"));
    int64_t now = (int64_t)ql_json_num(ql_json_get(root, "now"), 0);
    size_t nt = ql_json_len(templates), matched = 0, total = ql_json_len(cases);
    ql_tokenizer **toks = calloc(nt, sizeof *toks);
    for (size_t k = 0; k < nt; k++) toks[k] = template_tokenizer(ql_json_value_at(templates, k));
    for (size_t i = 0; i < total; i++) {
        const ql_json *cs = ql_json_at(cases, i);
        const char *tn = ql_json_str(ql_json_get(cs, "template"));
        ql_tokenizer *t = NULL;
        for (size_t k = 0; k < nt; k++) if (!strcmp(tn, ql_json_str(ql_json_key_at(templates, k)))) t = toks[k];
        if (!t) continue;
        int ci = (int)ql_json_num(ql_json_get(cs, "conv"), 0);
        const ql_json *conv = ql_json_at(convs, (size_t)ci);
        size_t n = ql_json_len(conv);
        ql_chat_msg *msgs = calloc(n + 1, sizeof *msgs);
        for (size_t j = 0; j < n; j++) {
            const ql_json *m = ql_json_at(conv, j);
            if (ql_json_get(m, "tool_calls") || ql_json_get(m, "tool_call_id")) { msgs[j].json = message_json(m); continue; }
            msgs[j].role = ql_json_str(ql_json_get(m, "role"));
            msgs[j].content = ql_json_str(ql_json_get(m, "content"));
            msgs[j].reasoning = ql_json_str(ql_json_get(m, "reasoning_content"));
        }
        ql_chat_opts o = { ql_json_bool(ql_json_get(cs, "add_generation_prompt"), 0),
                           ql_json_bool(ql_json_get(cs, "enable_thinking"), 1),
                           ql_json_bool(ql_json_get(cs, "tools"), 0) ? tools : NULL, NULL, now };
        char *out = NULL;
        size_t ol = 0;
        ql_status s = ql_tokenizer_apply_chat(t, msgs, n, &o, &out, &ol);
        const ql_json *want = ql_json_get(cs, "expected");
        const char *err = ql_json_str(ql_json_get(cs, "error"));
        if (err) {
            CHECK_MSG(s != QL_OK && strstr(ql_last_error(), err), "%s conversation %d: expected the error '%s', got %s", tn,
                      ci, err, s == QL_OK ? out : ql_last_error());
            matched += s != QL_OK && strstr(ql_last_error(), err);
        } else {
            int ok = s == QL_OK && out && ol == want->n && !memcmp(out, want->u.str, ol);
            CHECK_MSG(ok, "%s conversation %d (generation prompt %d, thinking %d):\n--- got\n%s\n--- transformers\n%s", tn,
                      ci, o.add_generation_prompt, o.enable_thinking, s == QL_OK ? out : ql_last_error(), want->u.str);
            matched += ok;
        }
        free(out);
        for (size_t j = 0; j < n; j++) free((char *)msgs[j].json);
        free(msgs);
    }
    CHECK_MSG(matched == total && total >= 100, "%zu of %zu chat template cases match transformers", matched, total);
    for (size_t k = 0; k < nt; k++) ql_tokenizer_free(toks[k]);
    free(toks);
    ql_json_free(doc);
}

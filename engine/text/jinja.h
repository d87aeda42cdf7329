/*
 * jinja.h — a Jinja2 template renderer for chat templates.
 *
 * Covers the subset of Jinja2 that Hugging Face chat templates use, with the
 * environment transformers' apply_chat_template renders them in
 * (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
 * its tojson / raise_exception / strftime_now / namespace / dict globals):
 *   statements  if/elif/else, for (tuple targets, `if` filter, else, loop.*),
 *               break/continue, set (names, namespace attributes, block set),
 *               macro/call (caller), filter blocks, generation (transformers'
 *               AssistantTracker tag: rendered as its body), comments, raw,
 *               whitespace control ({%- -%}, {{- -}}, {#- -#}, +)
 *   expressions literals, lists, tuples, dicts, attribute/item access,
 *               slices with steps, arithmetic, ~, comparisons, in / not in,
 *               and/or/not, conditional expressions, calls
 *   filters, tests, string/dict methods: see the tables in jinja.c.
 * Values follow Python: strings index and count by code point, str() of a
 * list is its Python repr, 3/1 is 3.0. Template variables come from a JSON
 * object (numbers that are integral become ints). Errors (syntax, a template's
 * raise_exception, a type error) come back as QL_EINVAL / QL_EFORMAT with the
 * template name and line; the renderer never aborts. A parsed template is
 * immutable and may be rendered from several threads at once.
 * Never includes Lua.
 */
#ifndef QL_JINJA_H
#define QL_JINJA_H

#include "json.h"
#include "ql.h"

typedef struct ql_jinja ql_jinja;

/* Parses src[0..len). name labels error messages ("chat_template"). */
ql_status ql_jinja_parse(const char *src, size_t len, const char *name, ql_jinja **out);
void ql_jinja_free(ql_jinja *t);

typedef struct ql_jinja_opts {
    int64_t now;   /* strftime_now's clock, seconds since 1970 read as UTC; 0: the local time now */
} ql_jinja_opts;

/* Renders with the members of vars (a JSON object, or NULL) as the global
   variables; the output is malloc'd and NUL-terminated in *out (*out_len bytes). */
ql_status ql_jinja_render(const ql_jinja *t, const ql_json *vars, const ql_jinja_opts *opts, char **out,
                          size_t *out_len);

#endif

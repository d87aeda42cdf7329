/*
 * json.h — a small strict JSON parser (RFC 8259) producing a read-only DOM.
 *
 * The whole document lives in one arena owned by ql_json_doc; values are
 * borrowed pointers into it and die with ql_json_free. Strings are unescaped,
 * validated UTF-8 and NUL-terminated (they may also contain "\u0000", so use
 * the length). Object members keep file order; duplicate keys are kept and
 * ql_json_get returns the first. Limits: nesting depth QL_JSON_MAX_DEPTH,
 * document size < 4 GiB. Errors name the source, line and column:
 *   "tokenizer.json:12:7: expected ',' or '}' in object".
 * Never includes Lua.
 */
#ifndef QL_JSON_H
#define QL_JSON_H

#include "ql.h"

#define QL_JSON_MAX_DEPTH 256

typedef enum ql_json_type {
    QL_JSON_NULL = 0,
    QL_JSON_FALSE,
    QL_JSON_TRUE,
    QL_JSON_NUMBER,
    QL_JSON_STRING,
    QL_JSON_ARRAY,
    QL_JSON_OBJECT
} ql_json_type;

typedef struct ql_json ql_json;
struct ql_json {
    ql_json_type type;
    uint32_t n;            /* string: bytes; array: items; object: members */
    union {
        double num;        /* QL_JSON_NUMBER */
        const char *str;   /* QL_JSON_STRING, NUL-terminated */
        ql_json *items;    /* ARRAY: n values; OBJECT: 2n values, key then value */
    } u;
};

typedef struct ql_json_doc ql_json_doc;

/* Parses text[0..len). name labels error messages (a file name). */
ql_status ql_json_parse(const char *text, size_t len, const char *name, ql_json_doc **out);
/* Maps and parses a file. */
ql_status ql_json_parse_file(const char *path, ql_json_doc **out);
void ql_json_free(ql_json_doc *doc);
const ql_json *ql_json_root(const ql_json_doc *doc);

/* Accessors; all accept NULL and wrong types and then return NULL / 0 / dflt. */
const ql_json *ql_json_get(const ql_json *obj, const char *key);     /* object member */
const ql_json *ql_json_at(const ql_json *arr, size_t i);             /* array item */
const ql_json *ql_json_key_at(const ql_json *obj, size_t i);         /* i-th key (string) */
const ql_json *ql_json_value_at(const ql_json *obj, size_t i);       /* i-th value */
size_t ql_json_len(const ql_json *v);                                /* items / members / bytes */
const char *ql_json_str(const ql_json *v);                           /* NULL unless a string */
double ql_json_num(const ql_json *v, double dflt);
int ql_json_bool(const ql_json *v, int dflt);                        /* true/false, else dflt */
int ql_json_is(const ql_json *v, ql_json_type t);
const char *ql_json_type_name(ql_json_type t);
/* Writes v as JSON (indent spaces per level, 0 = compact); members of the top-level
   object named skip_key are left out (NULL: none). */
#include <stdio.h>
void ql_json_write(FILE *fp, const ql_json *v, int indent, const char *skip_key);

#endif

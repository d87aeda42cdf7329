/*
 * fuzz_json.c — the strict JSON parser (ql_json_parse) on any bytes; a parsed
 * document is walked through the accessors and written back out, and what is
 * written must parse again.
 */
#include "fuzz.h"
#include "json.h"

static size_t walk(const ql_json *v, int depth)
{
    size_t n = 1;
    if (depth > QL_JSON_MAX_DEPTH + 1) abort();
    if (ql_json_is(v, QL_JSON_ARRAY))
        for (size_t i = 0; i < ql_json_len(v); i++) n += walk(ql_json_at(v, i), depth + 1);
    if (ql_json_is(v, QL_JSON_OBJECT))
        for (size_t i = 0; i < ql_json_len(v); i++) {
            const ql_json *k = ql_json_key_at(v, i);
            if (!ql_json_str(k)) abort();
            if (!ql_json_get(v, ql_json_str(k))) abort();
            n += walk(ql_json_value_at(v, i), depth + 1);
        }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ql_json_doc *doc = NULL;
    if (ql_json_parse((const char *)data, size, "fuzz.json", &doc) != QL_OK) return 0;
    walk(ql_json_root(doc), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    ql_json_write(fp, ql_json_root(doc), size & 1 ? 2 : 0, NULL);
    fclose(fp);
    ql_json_doc *again = NULL;
    if (ql_json_parse(buf, len, "rewritten.json", &again) != QL_OK) {
        fprintf(stderr, "ql_json_write wrote what ql_json_parse refuses: %s\n", ql_last_error());
        abort();
    }
    ql_json_free(again);
    free(buf);
    ql_json_free(doc);
    return 0;
}

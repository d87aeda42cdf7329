/*
 * fuzz_tokenizer.c — tokenizer.json loading (ql_tokenizer_from_json). The input
 * is tokenizer.json, optionally followed by a 0xff byte and tokenizer_config.json;
 * a tokenizer that loads encodes and decodes a fixed text and its own input.
 */
#include "fuzz.h"
#include "tokenizer.h"

static const char sample[] = "Hello world! 123 ünïcödé\n\t  <|im_start|> <s> [INST] 你好 🙂";

static void exercise(const ql_tokenizer *tok, const char *text, size_t len)
{
    ql_tok_ids ids = { 0 };
    if (ql_tokenizer_encode(tok, text, len, 1, &ids) == QL_OK) {
        char *s = NULL;
        size_t n = 0;
        if (ql_tokenizer_decode(tok, ids.ids, ids.n, 0, &s, &n) == QL_OK) free(s);
        for (size_t i = 0; i < ids.n; i++) {
            size_t l;
            (void)ql_tokenizer_id_to_token(tok, ids.ids[i], &l);
            (void)ql_tokenizer_is_special(tok, ids.ids[i]);
        }
    }
    ql_tok_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t j = 0;
    while (j < size && data[j] != 0xff) j++;
    const char *cfg = j < size ? (const char *)data + j + 1 : NULL;
    size_t cfg_len = j < size ? size - j - 1 : 0;
    ql_tokenizer *tok = NULL;
    if (ql_tokenizer_from_json((const char *)data, j, cfg, cfg_len, "fuzz/tokenizer.json", &tok) != QL_OK) return 0;
    exercise(tok, sample, sizeof sample - 1);
    exercise(tok, (const char *)data, j < 512 ? j : 512);
    (void)ql_tokenizer_vocab_size(tok);
    (void)ql_tokenizer_bos_token(tok); (void)ql_tokenizer_eos_token(tok); (void)ql_tokenizer_pad_token(tok);
    (void)ql_tokenizer_token_to_id(tok, "hello", 5);
    ql_tokenizer_free(tok);
    return 0;
}

/*
 * fuzz_chat.c — chat templates: ql_tokenizer_apply_chat (the tokenizer's
 * apply_chat_template) with a fuzzed tokenizer_config.json (its chat_template
 * picks the formatter) and fuzzed messages, over a small fixed tokenizer.json.
 * Input: one flag byte (bit 0 add_generation_prompt, bit 1 enable_thinking),
 * tokenizer_config.json up to a 0xff byte, then messages separated by 0xfe,
 * each "role 0x01 content [0x01 reasoning]". The rendered text is encoded.
 * The tokenizer.json comes from $QL_FUZZ_TOKENIZER or the repository's
 * tests/fixtures/gguf/tok-qwen2/tokenizer.json.
 */
#include "fuzz.h"
#include "tokenizer.h"

#ifndef QL_FUZZ_ROOT
#define QL_FUZZ_ROOT "."
#endif

static char *tok_json;
static size_t tok_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    const char *p = getenv("QL_FUZZ_TOKENIZER");
    if (!p) p = QL_FUZZ_ROOT "/tests/fixtures/gguf/tok-qwen2/tokenizer.json";
    FILE *f = fopen(p, "rb");
    if (!f) { perror(p); abort(); }
    fseek(f, 0, SEEK_END);
    tok_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    tok_json = malloc(tok_len);
    if (!tok_json || fread(tok_json, 1, tok_len, f) != tok_len) abort();
    fclose(f);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    ql_chat_opts opts = { .add_generation_prompt = data[0] & 1, .enable_thinking = (data[0] >> 1) & 1 };
    size_t pos = 1;
    char *cfg = fuzz_piece(data, size, &pos, 0xff);
    ql_tokenizer *tok = NULL;
    if (ql_tokenizer_from_json(tok_json, tok_len, cfg, strlen(cfg), "fuzz", &tok) != QL_OK) { free(cfg); return 0; }
    free(cfg);
    ql_chat_msg msgs[16];
    char *owned[48];
    size_t n = 0, no = 0;
    while (pos < size && n < 16) {
        char *m = fuzz_piece(data, size, &pos, 0xfe);
        size_t mp = 0, ml = strlen(m);
        char *role = fuzz_piece((const uint8_t *)m, ml, &mp, 0x01);
        char *content = fuzz_piece((const uint8_t *)m, ml, &mp, 0x01);
        char *reasoning = mp < ml ? fuzz_piece((const uint8_t *)m, ml, &mp, 0x01) : NULL;
        free(m);
        owned[no++] = role; owned[no++] = content;
        if (reasoning) owned[no++] = reasoning;
        msgs[n++] = (ql_chat_msg){ .role = role, .content = content, .reasoning = reasoning };
    }
    char *out = NULL;
    size_t len = 0;
    if (ql_tokenizer_apply_chat(tok, msgs, n, &opts, &out, &len) == QL_OK) {
        if (strlen(out) > len) abort();
        ql_tok_ids ids = { 0 };
        (void)ql_tokenizer_encode(tok, out, len, 0, &ids);
        ql_tok_ids_free(&ids);
        free(out);
    }
    for (size_t i = 0; i < no; i++) free(owned[i]);
    ql_tokenizer_free(tok);
    return 0;
}

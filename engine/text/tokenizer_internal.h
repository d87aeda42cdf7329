/*
 * tokenizer_internal.h — the tokenizer's private data structures, shared by
 * tokenizer.c (loading, encode, decode), tokenizer_pretok.c (the hand-written
 * pre-tokenizer matchers and the Unicode class table) and tokenizer_chat.c
 * (chat templates). Not part of the engine API.
 */
#ifndef QL_TOKENIZER_INTERNAL_H
#define QL_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

#include <stdint.h>
#include <string.h>

/* ---- Unicode classes (tokenizer_pretok.c) ---- */
enum { UC_L = 1, UC_N = 2, UC_WS = 4, UC_INERT = 8, UC_WORD = 16 };
extern uint8_t ql_tok_ucls[0x110000];
void ql_tok_ucls_init(void); /* idempotent, thread-safe */

/* Decodes the UTF-8 character at s[i] (i < n). Invalid bytes decode to
   0x110000 (class 0) with length 1. */
static inline uint32_t ql_u8dec(const uint8_t *s, size_t n, size_t i, int *len)
{
    uint32_t c = s[i];
    if (c < 0x80) { *len = 1; return c; }
    if (c >= 0xC2 && c < 0xE0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
        *len = 2; return ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
    }
    if (c >= 0xE0 && c < 0xF0 && i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
        uint32_t r = ((c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
        if (r >= 0x800 && (r < 0xD800 || r > 0xDFFF)) { *len = 3; return r; }
    }
    if (c >= 0xF0 && c < 0xF5 && i + 3 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
        (s[i + 3] & 0xC0) == 0x80) {
        uint32_t r = ((c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
                     ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
        if (r >= 0x10000 && r < 0x110000) { *len = 4; return r; }
    }
    *len = 1;
    return 0x110000;
}

static inline uint8_t ql_ucls(uint32_t cp) { return cp < 0x110000 ? ql_tok_ucls[cp] : 0; }

/* Hand-written equivalents of the known Split regexes: length of the match
   starting at s[i] (always > 0; these patterns match at every position). */
size_t ql_tok_match_gpt2(const uint8_t *s, size_t n, size_t i);
size_t ql_tok_match_qwen(const uint8_t *s, size_t n, size_t i, int max_digits);

/* the tokenizer's chat_template, parsed at load (NULL when it has none or it does not parse) */
struct ql_jinja;
const struct ql_jinja *ql_tokenizer_chat_jinja(const ql_tokenizer *t);

#endif

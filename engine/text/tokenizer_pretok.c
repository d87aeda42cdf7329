/*
 * tokenizer_pretok.c — hand-written matchers for the pre-tokenizer regexes of
 * GPT-2, Llama 3 and Qwen2, and the Unicode class table they use.
 *
 * HF tokenizers runs these patterns with Oniguruma (leftmost alternative wins,
 * greedy with backtracking). Each matcher below reproduces that for one
 * position; the comments give the alternative being decided. Classes:
 * \p{L} = Lu Ll Lt Lm Lo, \p{N} = Nd Nl No, \s = Oniguruma's Unicode \s
 * (U+0009-000D, U+0085 and the Zs, Zl, Zp categories). The tables come from
 * utf8proc, so characters newer than its Unicode version may differ.
 */
#include "tokenizer_internal.h"

#include <threads.h>
#include <utf8proc.h>

uint8_t ql_tok_ucls[0x110000];
static once_flag ucls_once = ONCE_FLAG_INIT;

static void ucls_build(void)
{
    for (uint32_t c = 0; c < 0x110000; c++) {
        const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
        uint8_t k = 0;
        switch (p->category) {
        case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: k |= UC_L | UC_WORD; break;
        case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: k |= UC_N | UC_WORD; break;
        case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: k |= UC_WS; break;
        case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_PC: k |= UC_WORD; break;
        default: break;
        }
        if ((c >= 0x09 && c <= 0x0D) || c == 0x85) k |= UC_WS;
        /* NFC-inert: combining class 0, no canonical decomposition, never the
           second character of a canonical composition, not a Hangul vowel or
           trailing jamo. NFC never changes such a character, and never moves
           or composes anything across the boundary before it, so NFC can be
           applied separately to the pieces that start at inert characters.
           (utf8proc marks second characters with comb_index >= 0x8000.) */
        int canon_decomp = p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0;
        int second = p->comb_index != UINT16_MAX && p->comb_index >= 0x8000;
        int jamo_vt = c >= 0x1160 && c <= 0x11FF;
        if (c >= 0xD800 && c <= 0xDFFF) jamo_vt = 1; /* surrogates never occur; keep them out */
        if (p->combining_class == 0 && !canon_decomp && !second && !jamo_vt) k |= UC_INERT;
        ql_tok_ucls[c] = k;
    }
}

void ql_tok_ucls_init(void) { call_once(&ucls_once, ucls_build); }

/* End of the run of characters starting at i whose class has any bit of mask. */
static inline size_t run_of(const uint8_t *s, size_t n, size_t i, uint8_t mask)
{
    while (i < n) {
        if (s[i] < 0x80) {
            if (!(ql_tok_ucls[s[i]] & mask)) break;
            i++;
        } else {
            int l;
            uint32_t c = ql_u8dec(s, n, i, &l);
            if (!(ql_ucls(c) & mask)) break;
            i += (size_t)l;
        }
    }
    return i;
}

/* End of the run of "other" characters (not \s, \p{L}, \p{N}) from i. */
static inline size_t run_other(const uint8_t *s, size_t n, size_t i)
{
    while (i < n) {
        int l;
        uint32_t c = s[i] < 0x80 ? (l = 1, s[i]) : ql_u8dec(s, n, i, &l);
        if (ql_ucls(c) & (UC_L | UC_N | UC_WS)) break;
        i += (size_t)l;
    }
    return i;
}

/* \s+(?!\S) | \s+ at i, where s[i] is whitespace; also returns the end of the
   whole whitespace run and the start of its last character. */
static inline size_t ws_tail(const uint8_t *s, size_t n, size_t i)
{
    size_t e = i, last = i;
    while (e < n) {
        int l;
        uint32_t c = s[e] < 0x80 ? (l = 1, s[e]) : ql_u8dec(s, n, e, &l);
        if (!(ql_ucls(c) & UC_WS)) break;
        last = e;
        e += (size_t)l;
    }
    if (e == n) return e - i;         /* \s+ then end of text */
    if (last > i) return last - i;    /* \s+(?!\S): give back the last whitespace */
    return e - i;                     /* \s+ of one character */
}

/* 'd 'll 'm 're 's 't 've after the apostrophe at i; ci: case-insensitive
   (Oniguruma's (?i) also folds U+017F LATIN SMALL LETTER LONG S to s). */
static inline size_t contraction(const uint8_t *s, size_t n, size_t i, int ci)
{
    if (i + 1 >= n) return 0;
    unsigned a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (ci) {
        if (a == 0xC5 && b == 0xBF) return 3; /* 'ſ */
        if (a >= 'A' && a <= 'Z') a += 32;
        if (b >= 'A' && b <= 'Z') b += 32;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' || a == 'v') && b == 'e') return 3;
    if (a == 'l' && b == 'l') return 3;
    return 0;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
size_t ql_tok_match_gpt2(const uint8_t *s, size_t n, size_t i)
{
    if (s[i] == '\'') {
        size_t k = contraction(s, n, i, 0);
        if (k) return k;
    }
    size_t k = (s[i] == ' ' && i + 1 < n) ? i + 1 : i;
    int l;
    uint32_t c = ql_u8dec(s, n, k, &l);
    uint8_t cl = ql_ucls(c);
    if (cl & UC_L) return run_of(s, n, k, UC_L) - i;
    if (cl & UC_N) return run_of(s, n, k, UC_N) - i;
    if (!(cl & UC_WS)) return run_other(s, n, k) - i;
    return ws_tail(s, n, i);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
   with D = max_digits (1 for Qwen2, 3 for Llama 3). */
size_t ql_tok_match_qwen(const uint8_t *s, size_t n, size_t i, int max_digits)
{
    int l0;
    uint32_t c0 = ql_u8dec(s, n, i, &l0);
    uint8_t k0 = ql_ucls(c0);
    if (c0 == '\'') {
        size_t k = contraction(s, n, i, 1);
        if (k) return k;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (k0 & UC_L) return run_of(s, n, i, UC_L) - i;
    if (!(k0 & UC_N) && c0 != '\r' && c0 != '\n' && i + (size_t)l0 < n) {
        int l1;
        uint32_t c1 = ql_u8dec(s, n, i + (size_t)l0, &l1);
        if (ql_ucls(c1) & UC_L) return run_of(s, n, i + (size_t)l0, UC_L) - i;
    }
    /* \p{N}{1,D} */
    if (k0 & UC_N) {
        size_t j = i;
        for (int d = 0; d < max_digits && j < n; d++) {
            int l;
            uint32_t c = ql_u8dec(s, n, j, &l);
            if (!(ql_ucls(c) & UC_N)) break;
            j += (size_t)l;
        }
        return j - i;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t k = i;
    if (c0 == ' ' && i + 1 < n) {
        int l1;
        uint32_t c1 = ql_u8dec(s, n, i + 1, &l1);
        if (!(ql_ucls(c1) & (UC_L | UC_N | UC_WS))) k = i + 1;
    }
    if (k > i || !(k0 & UC_WS)) {
        size_t j = run_other(s, n, k);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j - i;
    }
    /* \s*[\r\n]+ : the whitespace run up to and including its last \r or \n */
    size_t e = i, lastnl = (size_t)-1;
    while (e < n) {
        int l;
        uint32_t c = s[e] < 0x80 ? (l = 1, s[e]) : ql_u8dec(s, n, e, &l);
        if (!(ql_ucls(c) & UC_WS)) break;
        if (c == '\r' || c == '\n') lastnl = e;
        e += (size_t)l;
    }
    if (lastnl != (size_t)-1) return lastnl + 1 - i;
    return ws_tail(s, n, i);
}

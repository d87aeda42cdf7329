/*
 * text.h — text cleaning for training corpora, on utf8proc: Unicode
 * normalisation, removal of control / zero-width / private-use characters,
 * ligature and whitespace fixes, optional quote/dash folding, and MinHash
 * signatures for near-duplicate detection. Script-neutral: nothing assumes
 * spaces between words (MinHash shingles are characters), ZWJ/ZWNJ are kept
 * because Indic, Persian and emoji text need them. Inputs with invalid UTF-8
 * get U+FFFD for each bad byte rather than an error.
 */
#ifndef QL_TEXT_H
#define QL_TEXT_H

#include "ql.h"

typedef struct ql_text_opts {
    int nfkc;            /* 1: NFKC (folds ligatures, full-width forms); 0: NFC */
    int fold_quotes;     /* curly quotes -> ASCII quotes, dashes -> '-', ellipsis -> "..." */
    int collapse_spaces; /* runs of spaces/tabs -> one space outside ``` code fences (default 1) */
    int max_blank_lines; /* consecutive blank lines kept (default 1) */
} ql_text_opts;

void ql_text_opts_default(ql_text_opts *o);

/* Cleans n bytes of UTF-8; *out is malloc'd and NUL-terminated. */
ql_status ql_text_clean(const char *in, size_t n, const ql_text_opts *o, char **out, size_t *outn);

/* MinHash of character k-grams of the case-folded, whitespace-free text:
   sig[0..nperm) (nperm <= 256). Texts shorter than k give one shingle. */
ql_status ql_text_minhash(const char *in, size_t n, int k, int nperm, uint32_t *sig);

/* 64-bit hash of the case-folded text with whitespace removed (exact duplicates). */
uint64_t ql_text_fingerprint(const char *in, size_t n);

#endif

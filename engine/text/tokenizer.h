/*
 * tokenizer.h — Hugging Face tokenizer.json-compatible tokenizer.
 *
 * Loads a tokenizer.json (and tokenizer_config.json next to it when present)
 * and encodes text to exactly the ids the HF `tokenizers` library produces.
 * Supported: BPE models (byte-level like GPT-2 / Llama 3 / Qwen, and
 * SentencePiece-style with byte_fallback like Mistral), both merges formats,
 * ignore_merges, fuse_unk; normalizers NFC/NFD/NFKC/NFKD, Lowercase, Prepend,
 * Replace (string patterns), Sequence; pre-tokenizers Split (the GPT-2,
 * Llama 3 and Qwen2 regexes by hand-written matchers, other regexes through
 * PCRE2), ByteLevel, Metaspace, Sequence; added tokens with lstrip, rstrip,
 * single_word, normalized; post-processors TemplateProcessing, ByteLevel,
 * Bert/Roberta, Sequence; decoders ByteLevel, Metaspace, Replace,
 * ByteFallback, Fuse, Strip, Sequence.
 *
 * A loaded tokenizer is immutable: every function below may be called from
 * many threads at once. Ids are int32. Text is UTF-8; invalid bytes in input
 * are tokenized as lone bytes rather than rejected.
 */
#ifndef QL_TOKENIZER_H
#define QL_TOKENIZER_H

#include "ql.h"

typedef struct ql_tokenizer ql_tokenizer;

/* A growable id array; zero-initialise, free with ql_tok_ids_free. */
typedef struct ql_tok_ids {
    int32_t *ids;
    size_t n, cap;
} ql_tok_ids;
void ql_tok_ids_free(ql_tok_ids *v);

/* path: a directory holding tokenizer.json (and optionally
   tokenizer_config.json), or the path of a tokenizer.json itself. */
ql_status ql_tokenizer_load(const char *path, ql_tokenizer **out);
/* From memory. config_json may be NULL. name labels error messages. */
ql_status ql_tokenizer_from_json(const char *json, size_t len, const char *config_json, size_t config_len,
                                 const char *name, ql_tokenizer **out);
void ql_tokenizer_free(ql_tokenizer *tok);

/* Appends the ids of text to out (out->n grows). add_special: run the
   post-processor (e.g. prepend <|begin_of_text|> / <s>), as HF's
   add_special_tokens=True. */
ql_status ql_tokenizer_encode(const ql_tokenizer *tok, const char *text, size_t len, int add_special,
                              ql_tok_ids *out);
/* Number of ids encode would produce. */
ql_status ql_tokenizer_count(const ql_tokenizer *tok, const char *text, size_t len, int add_special,
                             size_t *count);
/* Encodes n texts on ql_num_threads() threads; outs[i] must be zeroed or reusable. */
ql_status ql_tokenizer_encode_batch(const ql_tokenizer *tok, const char *const *texts, const size_t *lens,
                                    size_t n, int add_special, ql_tok_ids *outs);

/* Decodes ids to a malloc'd NUL-terminated string (*out_len bytes), as HF
   decode(): the decoder chain, then invalid UTF-8 replaced by U+FFFD.
   skip_special drops special added tokens. */
ql_status ql_tokenizer_decode(const ql_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                              char **out, size_t *out_len);

int32_t ql_tokenizer_vocab_size(const ql_tokenizer *tok);         /* max id + 1 */
int32_t ql_tokenizer_token_to_id(const ql_tokenizer *tok, const char *s, size_t len); /* -1 if none */
const char *ql_tokenizer_id_to_token(const ql_tokenizer *tok, int32_t id, size_t *len); /* NULL if none */
int ql_tokenizer_is_special(const ql_tokenizer *tok, int32_t id);

/* From tokenizer_config.json (NULL / -1 when absent). */
const char *ql_tokenizer_bos_token(const ql_tokenizer *tok);
const char *ql_tokenizer_eos_token(const ql_tokenizer *tok);
const char *ql_tokenizer_pad_token(const ql_tokenizer *tok);
int32_t ql_tokenizer_bos_id(const ql_tokenizer *tok);
int32_t ql_tokenizer_eos_id(const ql_tokenizer *tok);
int32_t ql_tokenizer_pad_id(const ql_tokenizer *tok);
const char *ql_tokenizer_chat_template(const ql_tokenizer *tok);  /* the raw Jinja text */

const char *ql_tokenizer_unk_token(const ql_tokenizer *tok);

/* Chat templates: the template (chat_template.jinja beside the tokenizer, else
   tokenizer_config.json's chat_template, its "default" one when it is a list)
   is rendered by a Jinja2 interpreter (jinja.h) with the variables transformers'
   apply_chat_template passes: messages, tools, documents, add_generation_prompt,
   the special tokens (bos_token, eos_token, pad_token, unk_token), enable_thinking,
   and any extra ones. Nothing is recognised by substring; a template that needs
   something the interpreter lacks fails with a message naming it. */
typedef struct ql_chat_msg {
    const char *role;      /* "system", "user", "assistant", "tool", ... */
    const char *content;   /* UTF-8, NUL-terminated */
    const char *reasoning; /* reasoning_content (Qwen3 and others), or NULL */
    const char *json;      /* or NULL; else the whole message as a JSON object (tool_calls, content
                              parts, ...), and the three fields above are ignored */
} ql_chat_msg;

typedef struct ql_chat_opts {
    int add_generation_prompt;
    int enable_thinking;     /* passed as the template variable enable_thinking (true / false) */
    const char *tools_json;  /* a JSON array of tool schemas, or NULL (tools = none) */
    const char *vars_json;   /* a JSON object of further template variables, or NULL */
    int64_t now;             /* strftime_now's clock (seconds since 1970 read as UTC); 0: now */
} ql_chat_opts;

/* Renders messages as transformers' apply_chat_template(tokenize=False) does;
   malloc'd string in *out. */
ql_status ql_tokenizer_apply_chat(const ql_tokenizer *tok, const ql_chat_msg *msgs, size_t n,
                                  const ql_chat_opts *opts, char **out, size_t *out_len);

#endif

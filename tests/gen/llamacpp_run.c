/*
 * llamacpp_run.c — runs a GGUF file in llama.cpp (through libllama's C API) for
 * tests/gen/check_llamacpp.sh, which builds it against a llama.cpp build. Reference
 * tooling only: nothing in qlora links llama.cpp.
 *
 *   llamacpp_run logits MODEL.gguf N_NEW ID ID ...
 *       evaluates the prompt ids in one batch (no BOS added), then N_NEW greedy steps
 *       one token at a time; prints "L <pos> <v0> <v1> ..." (every prompt position's
 *       logits, %.9g) and "G <id> <id> ..." (the greedy continuation). KV cache in f32
 *       and flash attention off, so only the weights' type and the kernels' summation
 *       order separate it from an f32 reference.
 *   llamacpp_run quantize IN.gguf OUT.gguf [dry]
 *       llama_model_quantize to Q4_K_M with llama-quantize's defaults and no importance
 *       matrix (what `llama-quantize IN OUT Q4_K_M` does); "dry" only prints each tensor's
 *       chosen type ("T <name> <type>"), reading no data.
 *   llamacpp_run tokenize MODEL.gguf FILE ADD_SPECIAL
 *       FILE holds records "<byte count>\n<bytes>"; prints one line of ids per record,
 *       tokenized with add_special = ADD_SPECIAL (0/1) and parse_special = true.
 */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int dry;   /* quantize dry run: the per-tensor log lines go to stdout as "T name type" */
static char line[4096];
static size_t line_n;

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (dry && (level == GGML_LOG_LEVEL_INFO || level == GGML_LOG_LEVEL_CONT)) {
        /* "[  i/  n] name - [shape], type = f16, size = ... -> ... (q6_K)" or "size = ..." when kept */
        size_t k = strlen(text);
        if (line_n + k < sizeof line) { memcpy(line + line_n, text, k); line_n += k; line[line_n] = 0; }
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            char name[256], type[32];
            const char *paren = strrchr(line, '(');
            if (line[0] == '[' && sscanf(strchr(line, ']') + 1, " %255s", name) == 1) {
                if (paren && strstr(line, "->") && sscanf(paren + 1, "%31[^)]", type) == 1) printf("T %s %s\n", name, type);
                else if (strstr(line, "size =")) {
                    const char *t = strstr(line, "type =");
                    if (t && sscanf(t + 6, " %31[^,]", type) == 1) printf("T %s %s\n", name, type);
                }
            }
            memmove(line, nl + 1, line_n - (size_t)(nl + 1 - line) + 1);
            line_n = strlen(line);
        }
        return;
    }
    if (level >= GGML_LOG_LEVEL_WARN && level != GGML_LOG_LEVEL_CONT) fputs(text, stderr);
}

static int argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[b]) b = i;
    return b;
}

static int run_logits(const char *path, int n_new, int n, const llama_token *ids)
{
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "%s: llama.cpp could not load it\n", path); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int nv = llama_vocab_n_tokens(vocab);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_new + 8);
    cp.n_batch = cp.n_ubatch = (uint32_t)(n + 8);
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "%s: no llama.cpp context\n", path); return 1; }
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) { fprintf(stderr, "%s: llama_decode failed\n", path); return 1; }
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        printf("L %d", i);
        for (int k = 0; k < nv; k++) printf(" %.9g", l[k]);
        printf("\n");
    }
    llama_token next = argmax(llama_get_logits_ith(ctx, n - 1), nv);
    printf("G");
    for (int s = 0; s < n_new; s++) {
        printf(" %d", next);
        if (s + 1 == n_new) break;
        struct llama_batch one = llama_batch_get_one(&next, 1);
        if (llama_decode(ctx, one)) { fprintf(stderr, "%s: llama_decode failed\n", path); return 1; }
        next = argmax(llama_get_logits_ith(ctx, -1), nv);
    }
    printf("\n");
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

static int run_tokenize(const char *path, const char *file, int add_special)
{
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = 1;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "%s: llama.cpp could not load it\n", path); return 1; }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    FILE *fp = fopen(file, "rb");
    if (!fp) { perror(file); return 1; }
    long len;
    while (fscanf(fp, "%ld", &len) == 1) {
        fgetc(fp);   /* the newline */
        char *text = malloc((size_t)len + 1);
        if (fread(text, 1, (size_t)len, fp) != (size_t)len) { fprintf(stderr, "%s: truncated\n", file); return 1; }
        int cap = (int)len * 2 + 16;
        llama_token *tok = malloc(sizeof *tok * (size_t)cap);
        int k = llama_tokenize(vocab, text, (int32_t)len, tok, cap, add_special, 1);
        if (k < 0) { fprintf(stderr, "tokenize failed (%d)\n", k); return 1; }
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", tok[i]);
        printf("\n");
        free(tok);
        free(text);
    }
    fclose(fp);
    llama_model_free(model);
    return 0;
}

static int run_quantize(const char *in, const char *out, int dry_run)
{
    llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
    qp.nthread = 2;
    qp.dry_run = dry_run;
    dry = dry_run;
    uint32_t rc = llama_model_quantize(in, out, &qp);
    dry = 0;
    if (rc) fprintf(stderr, "%s: llama_model_quantize failed (%u)\n", in, rc);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    llama_log_set(quiet, NULL);
    llama_backend_init();
    if (argc >= 5 && !strcmp(argv[1], "logits")) {
        int n = argc - 4;
        llama_token *ids = malloc(sizeof *ids * (size_t)n);
        for (int i = 0; i < n; i++) ids[i] = atoi(argv[4 + i]);
        int rc = run_logits(argv[2], atoi(argv[3]), n, ids);
        free(ids);
        return rc;
    }
    if (argc == 5 && !strcmp(argv[1], "tokenize")) return run_tokenize(argv[2], argv[3], atoi(argv[4]));
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "quantize"))
        return run_quantize(argv[2], argv[3], argc == 5 && !strcmp(argv[4], "dry"));
    fprintf(stderr, "usage: %s logits MODEL N_NEW ID... | tokenize MODEL FILE ADD_SPECIAL | quantize IN OUT [dry]\n",
            argv[0]);
    return 2;
}

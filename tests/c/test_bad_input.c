/*
 * test_bad_input.c — hostile and absurd inputs to the engine's readers (issue 12):
 * file names from an index that point outside their folder, sizes in config.json
 * and safetensors headers that overflow, and parallel sections that run out of
 * memory. Each case must end in an error that names the file and the key, with
 * no sanitizer report. The bad files are written by the tests into /tmp.
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "decoder.h"
#include "json.h"
#include "model.h"
#include "platform.h"
#include "safetensors.h"
#include "tokenizer.h"

/* a fresh folder under /tmp; path receives its name */
static int tmp_folder(char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/qltest_badXXXXXX");
    return mkdtemp(path) != NULL;
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* a safetensors file of header json (padded to 8 bytes) and nbytes zero data bytes */
static void write_st(const char *path, const char *json, size_t nbytes)
{
    size_t n = strlen(json), pad = (8 - n % 8) % 8;
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    uint64_t h = n + pad;
    for (int i = 0; i < 8; i++) fputc((int)((h >> (8 * i)) & 0xff), f);
    fputs(json, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    for (size_t i = 0; i < nbytes; i++) fputc(0, f);
    fclose(f);
}

static int has(const char *text, const char *part) { return text && strstr(text, part) != NULL; }

/* ---------------------------------------------------------------- file names */

QL_TEST(bad_input_file_names_stay_inside_the_folder)
{
    const char *bad[] = { "../outside/shard.safetensors", "..", ".", "", "/etc/passwd", "a/b.safetensors",
                          "a\\b.safetensors" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ql_status s = ql_check_file_name(bad[i], strlen(bad[i]), "idx.json", "weight_map entry \"w\"");
        CHECK_MSG(s == QL_EFORMAT, "'%s' accepted", bad[i]);
        CHECK_MSG(has(ql_last_error(), "idx.json") && has(ql_last_error(), "weight_map entry"), "%s", ql_last_error());
    }
    CHECK(ql_check_file_name("shard\0/../x", 11, "idx.json", "entry") == QL_EFORMAT);   /* an escaped NUL */
    CHECK(ql_check_file_name(NULL, 0, "idx.json", "entry") == QL_EFORMAT);               /* not a string */
    CHECK(has(ql_last_error(), "not a string"));
    CHECK_OK(ql_check_file_name("model-00001-of-00002.safetensors", 32, "idx.json", "entry"));
    CHECK_OK(ql_check_file_name("..x", 3, "idx.json", "entry"));
}

/* model loading reads the index through the same check: a non-string value, a name
   with "..", each named in the message */
QL_TEST(bad_input_model_index_names)
{
    char dir[256];
    CHECK(tmp_folder(dir, sizeof dir));
    write_text(dir, "config.json", "{\"model_type\": \"qwen2\", \"vocab_size\": 16, \"hidden_size\": 8, "
                                   "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2}");
    const char *maps[] = { "{\"weight_map\": {\"model.embed_tokens.weight\": 5}}",
                           "{\"weight_map\": {\"model.embed_tokens.weight\": \"..\"}}",
                           "{\"weight_map\": {\"model.embed_tokens.weight\": \"../outside/x.safetensors\"}}" };
    for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
        write_text(dir, "model.safetensors.index.json", maps[i]);
        ql_model *m = ql_model_load(dir, NULL);
        CHECK(m == NULL);
        ql_model_free(m);
        CHECK_MSG(has(ql_last_error(), "model.safetensors.index.json") &&
                  has(ql_last_error(), "model.embed_tokens.weight"), "case %zu: %s", i, ql_last_error());
    }
    ql_remove_tree(dir);
}

/* ---------------------------------------------------------------- sizes in config.json */

static ql_status config_with(const char *dir, const char *extra, ql_model_config *c)
{
    char text[1024], path[512];
    snprintf(text, sizeof text, "{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, "
                                "\"intermediate_size\": 32, %s}", extra);
    write_text(dir, "config.json", text);
    snprintf(path, sizeof path, "%s/config.json", dir);
    return ql_model_config_load(path, c);
}

QL_TEST(bad_input_config_sizes_are_bounded)
{
    char dir[256];
    CHECK(tmp_folder(dir, sizeof dir));
    ql_model_config c;
    static const struct { const char *extra, *key; } cases[] = {
        { "\"num_hidden_layers\": 1e9, \"num_attention_heads\": 2", "num_hidden_layers" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 1e9, \"head_dim\": 4", "num_attention_heads" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 16384, \"num_key_value_heads\": 1, \"head_dim\": 16384",
          "head_dim" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"head_dim\": 1e9", "head_dim" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"use_sliding_window\": true, "
          "\"sliding_window\": 1e300", "sliding_window" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"eos_token_id\": [1, 1e300]", "eos_token_id" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"eos_token_id\": -1e300", "eos_token_id" },
        { "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"rope_scaling\": {\"rope_type\": \"llama3\", "
          "\"factor\": 8, \"original_max_position_embeddings\": 1e300}", "original_max_position_embeddings" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ql_status s = config_with(dir, cases[i].extra, &c);
        CHECK_MSG(s == QL_EFORMAT, "case %zu accepted: %s", i, cases[i].extra);
        CHECK_MSG(has(ql_last_error(), cases[i].key) && has(ql_last_error(), "config.json"),
                  "case %zu: the message does not name %s: %s", i, cases[i].key, ql_last_error());
    }
    /* a real model's sizes still pass */
    CHECK_OK(config_with(dir, "\"num_hidden_layers\": 80, \"num_attention_heads\": 64, \"num_key_value_heads\": 8, "
                              "\"head_dim\": 128, \"max_position_embeddings\": 131072, \"eos_token_id\": [1, 2]", &c));
    CHECK_EQ_INT(c.layers, 80);
    CHECK_EQ_INT(c.heads * c.head_dim, 8192);
    /* and the whole load stops at the config, before allocating anything from it */
    char st[300];
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    write_st(st, "{}", 0);
    config_with(dir, "\"num_hidden_layers\": 1e9, \"num_attention_heads\": 2", &c);
    ql_model *m = ql_model_load(dir, NULL);
    CHECK(m == NULL);
    CHECK_MSG(has(ql_last_error(), "num_hidden_layers"), "%s", ql_last_error());
    ql_model_free(m);
    ql_remove_tree(dir);
}

/* ---------------------------------------------------------------- safetensors headers */

QL_TEST(bad_input_safetensors_sizes_are_bounded)
{
    char dir[256], path[300];
    CHECK(tmp_folder(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    static const struct { const char *json, *why; } cases[] = {
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-9223372036854775808,0]}}", "integer too large" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,99999999999999999999]}}", "integer too large" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[-1,0]}}", "data_offsets" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,2],\"data_offsets\":[0,8]}}", "2^53" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904,4611686018427387904],\"data_offsets\":[0,0]}}",
          "2^53" },
        { "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", "2^53" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(path, cases[i].json, 8);
        ql_st_file *f = ql_st_open(path);
        CHECK_MSG(f == NULL, "case %zu accepted", i);
        ql_st_close(f);
        CHECK_MSG(has(ql_last_error(), "bad.safetensors") && has(ql_last_error(), cases[i].why),
                  "case %zu: %s", i, ql_last_error());
    }
    /* the largest offset that is a number still parses (and is then too far) */
    write_st(path, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[9223372036854775806,9223372036854775807]}}", 8);
    ql_st_file *f = ql_st_open(path);
    CHECK(f == NULL);
    CHECK_MSG(has(ql_last_error(), "truncated"), "%s", ql_last_error());
    ql_st_close(f);
    /* zero-size tensors of ordinary shapes stay fine */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4096],\"data_offsets\":[0,0]}}", 0);
    f = ql_st_open(path);
    CHECK_MSG(f != NULL, "%s", ql_last_error());
    ql_st_close(f);
    ql_remove_tree(dir);
}

/* ---------------------------------------------------------------- out of memory in parallel sections */

/* Runs fn with the address space capped a little above what the process uses, so that
   one large allocation fails. Not under AddressSanitizer, whose shadow memory needs a
   huge address space (ASan builds run the other cases). Returns 0 when skipped. */
static int with_small_address_space(void (*fn)(void *), void *arg)
{
#if defined(__SANITIZE_ADDRESS__)
    (void)fn; (void)arg;
    qltest_skip("address-space limits do not work under AddressSanitizer");
    return 0;
#else
    long pages = 0, page = sysconf(_SC_PAGESIZE);
    FILE *st = fopen("/proc/self/statm", "r");
    if (!st || fscanf(st, "%ld", &pages) != 1) { if (st) fclose(st); qltest_skip("no /proc/self/statm"); return 0; }
    fclose(st);
    struct rlimit old, lim;
    if (getrlimit(RLIMIT_AS, &old) != 0) { qltest_skip("getrlimit failed"); return 0; }
    lim = old;
    lim.rlim_cur = (rlim_t)pages * (rlim_t)page + (256u << 20);
    if (old.rlim_max != RLIM_INFINITY && lim.rlim_cur > old.rlim_max) { qltest_skip("hard limit too low"); return 0; }
    if (setrlimit(RLIMIT_AS, &lim) != 0) { qltest_skip("setrlimit failed"); return 0; }
    void *probe = malloc((size_t)1 << 30);   /* the cap must make 1 GiB fail, or the test would read past k, v */
    int capped = probe == NULL;
    free(probe);
    if (capped) fn(arg);
    setrlimit(RLIMIT_AS, &old);
    if (!capped) qltest_skip("the address-space cap did not take effect");
    return capped;
#endif
}

/* one query whose key range is 2^28 long: its score buffer (1 GiB, 2 GiB in the
   backward) cannot be had, and the keys are never read once that fails */
typedef struct { ql_status fwd, bwd; float out[4], dq[4], dk[4], dv[4]; } oom_result;

static void attention_without_memory(void *arg)
{
    oom_result *r = arg;
    static const float q[4] = { 1, 2, 3, 4 }, k[4] = { 1, 0, 0, 1 }, v[4] = { 5, 6, 7, 8 }, dout[4] = { 1, 1, 1, 1 };
    int32_t lo[1] = { 0 }, hi[1] = { 1 << 28 }, pos[1] = { 0 }, ids[1] = { 0 };
    for (int i = 0; i < 4; i++) r->out[i] = r->dq[i] = r->dk[i] = r->dv[i] = -7.0f;
    ql_model m;
    memset(&m, 0, sizeof m);
    m.cfg.heads = 1; m.cfg.kv_heads = 1; m.cfg.head_dim = 4; m.cfg.hidden = 4;
    ql_dec_ctx c;
    memset(&c, 0, sizeof c);
    c.ops = &ql_dec_cpu_ops; c.m = &m; c.dev = ql_cpu(); c.n = 1;
    ql_dec_batch b = { 1, ids, pos, lo, hi, ids, pos, lo, hi, NULL, NULL };
    /* the forward with keys from a cache (not the batch), so the scalar task runs */
    r->fwd = ql_dec_cpu_ops.attn(&c, &b, q, k, v, 0, r->out, NULL);
    r->bwd = ql_dec_cpu_ops.attn_bwd(&c, &b, q, k, v, r->out, NULL, dout, r->dq, r->dk, r->dv);
}

QL_TEST(bad_input_attention_out_of_memory_is_an_error)
{
    oom_result r;
    if (!with_small_address_space(attention_without_memory, &r)) return;
    CHECK_MSG(r.fwd == QL_ENOMEM, "forward: %s", ql_status_name(r.fwd));
    CHECK_MSG(r.bwd == QL_ENOMEM, "backward: %s", ql_status_name(r.bwd));
    CHECK_MSG(has(ql_last_error(), "out of host memory"), "%s", ql_last_error());
}

/* found by tests/fuzz/fuzz_json (corpus/json/regress-write-1e308): writing a number
   outside long long converted it before checking its range (UBSan) */
QL_TEST(bad_input_json_write_huge_numbers)
{
    static const char text[] = "[1e308,-1e300,9.5e15,-9223372036854775809,3,-0.5]";
    ql_json_doc *doc = NULL;
    CHECK_OK(ql_json_parse(text, sizeof text - 1, "huge.json", &doc));
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    ql_json_write(fp, ql_json_root(doc), 0, NULL);
    fclose(fp);
    CHECK_MSG(has(buf, "1e+308") && has(buf, ",3,-0.5]"), "%s", buf);
    ql_json_doc *again = NULL;
    CHECK_OK(ql_json_parse(buf, len, "rewritten.json", &again));
    CHECK(ql_json_num(ql_json_at(ql_json_root(again), 0), 0) == 1e308);
    ql_json_free(again);
    ql_json_free(doc);
    free(buf);
    /* corpus/json/regress-parse-2e308: a number that overflows to infinity could not be
       written back; it is refused with its position */
    doc = NULL;
    CHECK(ql_json_parse("[0, -2e308]", 11, "inf.json", &doc) != QL_OK);
    CHECK_MSG(has(ql_last_error(), "inf.json:1:5") && has(ql_last_error(), "out of range"), "%s", ql_last_error());
    ql_json_free(doc);
}

/* found by tests/fuzz/fuzz_tokenizer (corpus/tokenizer/regress-int-4e124): a vocabulary id
   far outside int64_t was converted before its range was checked (UBSan) */
QL_TEST(bad_input_tokenizer_ids_out_of_range)
{
    static const char *const ids[] = { "4e124", "-1", "1.5", "9223372036854775807", "1e300" };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": %s}, \"merges\": []}}", ids[i]);
        ql_tokenizer *tok = NULL;
        CHECK_MSG(ql_tokenizer_from_json(json, strlen(json), NULL, 0, "ids.json", &tok) != QL_OK, "id %s accepted", ids[i]);
        CHECK_MSG(has(ql_last_error(), "ids.json") && has(ql_last_error(), "model.vocab[\"b\"]"), "%s", ql_last_error());
        ql_tokenizer_free(tok);
    }
}

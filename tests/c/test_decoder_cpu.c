/*
 * test_decoder_cpu.c — the decoder's order of checkpoint copies (decoder.c, checkpointing
 * QL_CKPT_HOST) held to what a device's copy stream allows, on the CPU: with
 * QL_CPU_ASYNC_COPIES=1 the CPU ops queue each copy and run it only when ck_ready asks for
 * its slot (decoder_cpu.c), so a staging buffer read before its copy landed, or overwritten
 * before its store ran, turns the gradients to NaN. Host checkpoints must give the gradients
 * of device checkpoints bit for bit, with the MLP whole and in slices of rows, on the tiny
 * Qwen2 and Llama fixtures with their PEFT adapters, over packed documents. The fixtures have
 * two layers, too few for a staging buffer to be reused: the test runs them as five (blocks
 * 0, 1, 0, 1, 0; the adapter covers the first two).
 */
#include "qltest.h"

#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "lora.h"
#include "model.h"
#include "ql.h"

/* every adapter's gradients, flat, in the order of mods */
static float *grads_of(const ql_lora *l, int64_t *count)
{
    int64_t n = 0;
    for (int i = 0; i < l->layers * QL_NTARGETS; i++)
        if (l->mods[i].in) n += (int64_t)l->mods[i].r * (l->mods[i].in + l->mods[i].out);
    float *g = malloc(sizeof(float) * (size_t)(n ? n : 1)), *p = g;
    for (int i = 0; g && i < l->layers * QL_NTARGETS; i++) {
        const ql_lora_mod *m = &l->mods[i];
        if (!m->in) continue;
        memcpy(p, m->gA, sizeof(float) * (size_t)m->r * (size_t)m->in);
        p += (int64_t)m->r * m->in;
        memcpy(p, m->gB, sizeof(float) * (size_t)m->out * (size_t)m->r);
        p += (int64_t)m->out * m->r;
    }
    *count = n;
    return g;
}

static void host_checkpoints_case(const char *name)
{
    char dir[1024], adapter[1100];
    snprintf(dir, sizeof dir, "%s", qltest_fixture(name));
    snprintf(adapter, sizeof adapter, "%s/peft-adapter", dir);
    ql_model_load_opts o = { 0 };
    o.device = ql_cpu();
    ql_model *m = ql_model_load(dir, &o);
    CHECK_MSG(m != NULL, "loading %s: %s", dir, ql_last_error());
    if (!m) return;
    ql_lora *l = ql_lora_load_peft(m, adapter);
    CHECK_MSG(l != NULL, "loading %s: %s", adapter, ql_last_error());
    if (!l) { ql_model_free(m); return; }
    /* two rows of 29 tokens: three documents, then one */
    enum { ROWS = 2, T = 29 };
    int64_t n = ROWS * T;
    int32_t ids[ROWS * T], pos[ROWS * T], lo[ROWS * T], hi[ROWS * T];
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 7919 + 13) % m->cfg.vocab);
    int32_t lens[4] = { 11, 13, 5, 29 };
    int nd[2] = { 3, 1 };
    ql_batch_ranges(ROWS, T, lens, nd, pos, lo, hi);
    ql_batch b = { n, ids, pos, lo, hi };
    /* five layers from the two: the blocks are shared, so the model gets its own back before it is freed */
    ql_block *own = m->blocks, deep[5];
    int own_layers = m->cfg.layers;
    for (int i = 0; i < 5; i++) deep[i] = own[i % 2];
    m->blocks = deep;
    m->cfg.layers = 5;
    const int64_t slices[] = { 0, 7 };   /* the whole MLP; slices of 7 rows */
    for (size_t k = 0; k < sizeof slices / sizeof slices[0]; k++) {
        double want_sum = 0, got_sum = 0;
        int64_t cw = 0, cg = 0;
        CHECK_OK(ql_lora_zero_grad(l));
        ql_dec_step sd = { .mode = QL_DEC_TRAIN, .batch = &b, .labels = ids, .lora = l, .denom = 40,
                           .checkpointing = QL_CKPT_DEVICE, .mlp_rows = slices[k] };
        CHECK_OK(ql_decoder_run(m, &sd));
        want_sum = sd.loss_sum;
        float *want = grads_of(l, &cw);
        CHECK_OK(ql_lora_zero_grad(l));
        setenv("QL_CPU_ASYNC_COPIES", "1", 1);
        ql_dec_step sh = sd;
        sh.checkpointing = QL_CKPT_HOST;
        CHECK_OK(ql_decoder_run(m, &sh));
        unsetenv("QL_CPU_ASYNC_COPIES");
        got_sum = sh.loss_sum;
        float *got = grads_of(l, &cg);
        CHECK_EQ_INT(cg, cw);
        CHECK_MSG(got_sum == want_sum, "%s, mlp_rows %lld: loss sum %.9g with host checkpoints, %.9g on the device", name,
                  (long long)slices[k], got_sum, want_sum);
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < cw && want && got; i++)
            if (got[i] != want[i]) { if (first < 0) first = i; bad++; }
        CHECK_MSG(bad == 0, "%s, mlp_rows %lld: %lld of %lld gradient values differ (first at %lld: %.9g vs %.9g)", name,
                  (long long)slices[k], (long long)bad, (long long)cw, (long long)first,
                  first >= 0 ? got[first] : 0.0, first >= 0 ? want[first] : 0.0);
        CHECK_MSG(cw > 1000, "%s: only %lld gradient values", name, (long long)cw);
        free(want);
        free(got);
    }
    ql_decoder_release(m);
    m->blocks = own;
    m->cfg.layers = own_layers;
    ql_lora_free(l);
    ql_model_free(m);
}

QL_TEST(decoder_cpu_host_checkpoints_async_qwen2) { host_checkpoints_case("models/tiny-qwen2"); }
QL_TEST(decoder_cpu_host_checkpoints_async_llama) { host_checkpoints_case("models/tiny-llama"); }

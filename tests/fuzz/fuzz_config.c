/*
 * fuzz_config.c — config.json through ql_model_config_load: any bytes give a
 * config or an error, and an accepted config has sizes a model could be built from.
 */
#include "fuzz.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ql_model_config c;
    memset(&c, 0, sizeof c);
    if (ql_model_config_load(fuzz_file(data, size, "-config.json"), &c) != QL_OK) return 0;
    if (c.vocab <= 0 || c.hidden <= 0 || c.layers <= 0 || c.heads <= 0 || c.kv_heads <= 0 ||
        c.head_dim <= 0 || c.inter <= 0 || c.n_eos < 0 || c.n_eos > QL_MAX_EOS) {
        fprintf(stderr, "accepted config with vocab %d hidden %d layers %d heads %d kv %d head_dim %d inter %d n_eos %d\n",
                c.vocab, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.inter, c.n_eos);
        abort();
    }
    return 0;
}

/*
 * fuzz_safetensors.c — the safetensors header parser (ql_st_open) on any bytes:
 * every entry, every metadata pair and every tensor's bytes are touched, so an
 * offset the header check let through is read under ASan.
 */
#include "fuzz.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ql_st_file *f = ql_st_open(fuzz_file(data, size, ".safetensors"));
    if (!f) return 0;
    unsigned sum = 0;
    for (int i = 0; i < ql_st_count(f); i++) {
        const ql_st_entry *e = ql_st_entry_at(f, i);
        const unsigned char *p = ql_st_data(f, i);
        for (uint64_t k = e->begin; k < e->end; k += 61) sum += p[k - e->begin];
        if (e->end > e->begin) sum += p[e->end - e->begin - 1];
        if (ql_st_find(f, ql_st_name(f, i)) < 0) abort();
        if (e->supported) {
            ql_tensor *t = ql_st_tensor(f, i);
            if (t) ql_tensor_release(t);
        }
    }
    for (int i = 0; i < ql_st_meta_count(f); i++)
        sum += (unsigned)strlen(ql_st_meta_key(f, i)) + (unsigned)strlen(ql_st_meta_value(f, i));
    ql_st_close(f);
    return (int)(sum & 0);
}

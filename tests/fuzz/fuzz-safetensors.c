/*
 * fuzz-safetensors: libFuzzer target for the safetensors header parser.
 * Any input must be either accepted, with every view inside the input, or
 * rejected with a status; never a crash, leak or out-of-bounds read (ASan).
 */
#include <stdint.h>
#include <string.h>

#include "dmoe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dmoe_safetensors *st = NULL;
    if (dmoe_safetensors_open_memory(data, size, &st) != DMOE_OK) return 0;
    int64_t n = dmoe_safetensors_count(st);
    for (int64_t i = 0; i < n; i++) {
        dmoe_st_tensor_info info;
        if (dmoe_safetensors_get(st, i, &info) != DMOE_OK) __builtin_trap();
        const uint8_t *p = (const uint8_t *)info.data;
        if (p < data || p + info.n_bytes > data + size) __builtin_trap();
        volatile uint8_t sink = 0;
        for (size_t b = 0; b < info.n_bytes; b++) sink ^= p[b]; /* ASan checks each read */
        (void)sink;
        dmoe_st_tensor_info again;
        if (dmoe_safetensors_find(st, info.name, &again) != DMOE_OK || again.data != info.data)
            __builtin_trap();
    }
    dmoe_safetensors_close(st);
    return 0;
}

/*
 * store-none.c: the store's entry points in a build without cJSON. Each one
 * reports DMOE_ERR_UNSUPPORTED, so callers get a clear message, not a link error.
 */
#include "../dmoe-impl.h"

static dmoe_status no_store(void) {
    return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED,
                       "dmoe was built without cJSON: install libcjson-dev and rebuild");
}

dmoe_status dmoe_safetensors_open(const char *path, dmoe_safetensors **out) {
    (void)path;
    (void)out;
    return no_store();
}

dmoe_status dmoe_safetensors_open_memory(const void *buf, size_t len, dmoe_safetensors **out) {
    (void)buf;
    (void)len;
    (void)out;
    return no_store();
}

void dmoe_safetensors_close(dmoe_safetensors *st) { (void)st; }
int64_t dmoe_safetensors_count(const dmoe_safetensors *st) { (void)st; return 0; }

dmoe_status dmoe_safetensors_get(const dmoe_safetensors *st, int64_t idx, dmoe_st_tensor_info *out) {
    (void)st;
    (void)idx;
    (void)out;
    return no_store();
}

dmoe_status dmoe_safetensors_find(const dmoe_safetensors *st, const char *name,
                                  dmoe_st_tensor_info *out) {
    (void)st;
    (void)name;
    (void)out;
    return no_store();
}

const char *dmoe_safetensors_metadata(const dmoe_safetensors *st, const char *key) {
    (void)st;
    (void)key;
    return NULL;
}

dmoe_status dmoe_model_open(const char *dir, dmoe_model **out) {
    (void)dir;
    (void)out;
    return no_store();
}
void dmoe_model_close(dmoe_model *model) { (void)model; }
const char *dmoe_model_arch(const dmoe_model *model) { (void)model; return NULL; }
int32_t dmoe_model_n_moe_layers(const dmoe_model *model) { (void)model; return 0; }

dmoe_status dmoe_model_moe_layer(const dmoe_model *model, int32_t i, int32_t *layer_idx,
                                 dmoe_layer_desc *desc) {
    (void)model;
    (void)i;
    (void)layer_idx;
    (void)desc;
    return no_store();
}

dmoe_status dmoe_model_load_layer(dmoe_model *model, dmoe_context *ctx, int32_t layer_idx,
                                  const dmoe_layer_desc *desc, dmoe_layer **out) {
    (void)model;
    (void)ctx;
    (void)layer_idx;
    (void)desc;
    (void)out;
    return no_store();
}

dmoe_status dmoe_model_load_layer_offloaded(dmoe_model *model, dmoe_context *ctx, int32_t layer_idx,
                                            const dmoe_layer_desc *desc, int32_t n_slots, dmoe_layer **out) {
    (void)n_slots;
    return dmoe_model_load_layer(model, ctx, layer_idx, desc, out);
}

dmoe_status dmoe_model_write_synthetic(const char *dir, const char *arch, const dmoe_layer_desc *desc,
                                       int32_t n_layers, uint64_t seed) {
    (void)dir;
    (void)arch;
    (void)desc;
    (void)n_layers;
    (void)seed;
    return no_store();
}

/*
 * test-path-api: the path field of dmoe_layer_desc and the resident API's
 * argument checks on host backends (no GPU needed):
 *  - dmoe_layer_desc_init sets DMOE_PATH_AUTO; dmoe_path_name names each path;
 *  - a path outside the enum is refused with DMOE_ERR_INVALID_ARGUMENT (out
 *    untouched), every valid path is accepted and ignored by host backends;
 *  - dmoe_layer_query_path validates its arguments and answers
 *    DMOE_ERR_UNSUPPORTED on host backends (one path);
 *  - the resident API: defaults of dmoe_resident_desc_init, NULL handling,
 *    DMOE_ERR_UNSUPPORTED on host backends, DMOE_ERR_TIMEOUT's name and text.
 */
#include <string.h>

#include "test-util.h"

static void make_desc(dmoe_layer_desc *d) {
    dmoe_layer_desc_init(d);
    d->hidden = 64;
    d->ffn = 32;
    d->n_experts = 8;
    d->top_k = 2;
    d->max_tokens = 16;
}

int main(void) {
    dmoe_layer_desc d;
    make_desc(&d);
    TU_CHECK(d.path == DMOE_PATH_AUTO);
    TU_CHECK(strcmp(dmoe_path_name(DMOE_PATH_AUTO), "auto") == 0);
    TU_CHECK(strcmp(dmoe_path_name(DMOE_PATH_STAGED), "staged") == 0);
    TU_CHECK(strcmp(dmoe_path_name(DMOE_PATH_FUSED), "fused") == 0);
    TU_CHECK(strcmp(dmoe_path_name((dmoe_path)7), "unknown") == 0);
    TU_CHECK(strcmp(dmoe_status_name(DMOE_ERR_TIMEOUT), "DMOE_ERR_TIMEOUT") == 0);
    TU_CHECK(strstr(dmoe_status_str(DMOE_ERR_TIMEOUT), "timed out") != NULL);

    const dmoe_backend backends[2] = {DMOE_BACKEND_CPU_REF, DMOE_BACKEND_CPU};
    for (int b = 0; b < 2; b++) {
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = backends[b];
        cd.n_threads = 1;
        dmoe_context *ctx = NULL;
        if (dmoe_context_create(&cd, &ctx) != DMOE_OK) {
            printf("  %s: no context (%s), skipped\n", dmoe_backend_name(backends[b]), dmoe_context_last_error(NULL));
            continue;
        }
        dmoe_layer *sentinel = (dmoe_layer *)&d, *layer = sentinel;
        const int bad_paths[3] = {-1, 3, 1000};
        for (int i = 0; i < 3; i++) {
            make_desc(&d);
            d.path = (dmoe_path)bad_paths[i];
            TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_ERR_INVALID_ARGUMENT);
            TU_CHECK(layer == sentinel);
            TU_CHECK(strstr(dmoe_context_last_error(ctx), "path") != NULL);
        }
        const dmoe_path good[3] = {DMOE_PATH_AUTO, DMOE_PATH_STAGED, DMOE_PATH_FUSED};
        for (int i = 0; i < 3; i++) {
            make_desc(&d);
            d.path = good[i];
            layer = NULL;
            TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK);
            if (!layer) continue;
            TU_CHECK(dmoe_layer_get_desc(layer)->path == good[i]);
            dmoe_path p = (dmoe_path)42;
            TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, 1, &p), DMOE_ERR_UNSUPPORTED);
            TU_CHECK(p == (dmoe_path)42);
            TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, 0, &p), DMOE_ERR_INVALID_ARGUMENT);
            TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, 17, &p), DMOE_ERR_INVALID_ARGUMENT);
            TU_CHECK_STATUS(ctx, dmoe_layer_query_path(layer, 1, NULL), DMOE_ERR_NULL_POINTER);
            TU_CHECK_STATUS(NULL, dmoe_layer_query_path(NULL, 1, &p), DMOE_ERR_NULL_POINTER);

            /* the resident mode is cuda only */
            dmoe_resident *r = (dmoe_resident *)sentinel;
            TU_CHECK_STATUS(ctx, dmoe_resident_create(layer, NULL, &r), DMOE_ERR_UNSUPPORTED);
            TU_CHECK(r == (dmoe_resident *)sentinel);
            TU_CHECK_STATUS(ctx, dmoe_resident_create(layer, NULL, NULL), DMOE_ERR_NULL_POINTER);
            dmoe_layer_destroy(layer);
        }
        dmoe_context_destroy(ctx);
    }

    dmoe_resident_desc rd;
    memset(&rd, 0x5a, sizeof rd);
    dmoe_resident_desc_init(&rd);
    TU_CHECK(rd.max_tokens == 0 && rd.reject_nonfinite == 1 && rd.shutdown_timeout_ms > 0);
    dmoe_resident_desc_init(NULL);
    dmoe_resident *nr = NULL;
    TU_CHECK_STATUS(NULL, dmoe_resident_create(NULL, &rd, &nr), DMOE_ERR_NULL_POINTER);
    TU_CHECK_STATUS(NULL, dmoe_resident_submit(NULL, 1), DMOE_ERR_NULL_POINTER);
    TU_CHECK_STATUS(NULL, dmoe_resident_wait(NULL, 1), DMOE_ERR_NULL_POINTER);
    dmoe_resident_info info;
    TU_CHECK_STATUS(NULL, dmoe_resident_query(NULL, &info), DMOE_ERR_NULL_POINTER);
    TU_CHECK(dmoe_resident_destroy(NULL) == DMOE_OK);
    TU_CHECK(dmoe_resident_input(NULL) == NULL && dmoe_resident_output(NULL) == NULL);
    TU_CHECK(dmoe_resident_max_supported() >= 0);
    return tu_finish("test-path-api");
}

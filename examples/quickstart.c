/*
 * quickstart.c: one MoE layer forward with the dmoe C API.
 *
 * Builds a small layer (H=256, F=128, 8 experts, top-2, bf16), gives it
 * weights in the Hugging Face layout, and runs y = MoE(x) for 4 tokens on the
 * fast CPU backend. Real programs load weights from a model directory with
 * dmoe_model_load_layer(); here they are made up.
 *
 *   cc quickstart.c -Iinclude -Lbuild/lib -ldmoe -lpthread -lm   (or: build/bin/quickstart)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmoe.h"

enum { H = 256, F = 128, E = 8, K = 2, T = 4 };

/* float -> bf16, round to nearest even (finite inputs) */
static uint16_t bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static uint16_t *random_bf16(size_t n, float scale) {
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++) p[i] = bf16(scale * ((float)rand() / RAND_MAX - 0.5f));
    return p;
}

int main(void) {
    dmoe_context *ctx = NULL;
    dmoe_layer *layer = NULL;
    uint16_t *router = NULL, *w13 = NULL, *w2 = NULL, *x = NULL, *y = NULL;
    int rc = 1;

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd); /* backend cpu, all cores */
    dmoe_status st = dmoe_context_create(&cd, &ctx);
    if (st != DMOE_OK) goto done;

    dmoe_layer_desc ld;
    dmoe_layer_desc_init(&ld); /* softmax top-k, renormalised, bf16 */
    ld.hidden = H;
    ld.ffn = F;
    ld.n_experts = E;
    ld.top_k = K;
    ld.max_tokens = T;
    if ((st = dmoe_layer_create(ctx, &ld, &layer)) != DMOE_OK) goto done;

    router = random_bf16((size_t)E * H, 0.2f);      /* (E, H) */
    w13 = random_bf16((size_t)E * 2 * F * H, 0.2f); /* (E, 2F, H): gate rows, then up rows */
    w2 = random_bf16((size_t)E * H * F, 0.2f);      /* (E, H, F) */
    x = random_bf16((size_t)T * H, 2.0f);           /* (T, H) */
    y = calloc((size_t)T * H, sizeof *y);           /* (T, H) */
    if (!router || !w13 || !w2 || !x || !y) goto done;

    dmoe_weights w = {0}; /* views: the layer reads this memory, it does not copy it */
    w.router = router;
    w.w13 = w13;
    w.w2 = w2;
    if ((st = dmoe_layer_set_weights(layer, &w)) != DMOE_OK) goto done;

    dmoe_tensor tx = dmoe_tensor_2d(x, DMOE_DTYPE_BF16, T, H, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(y, DMOE_DTYPE_BF16, T, H, DMOE_DEVICE_HOST);
    if ((st = dmoe_forward(layer, &tx, &ty, NULL)) != DMOE_OK) goto done;

    for (int t = 0; t < T; t++) {
        uint32_t u = (uint32_t)y[t * H] << 16; /* bf16 -> float */
        float v;
        memcpy(&v, &u, sizeof v);
        printf("y[%d][0] = %+.4f\n", t, v);
    }
    rc = 0;
done:
    if (st != DMOE_OK)
        fprintf(stderr, "%s: %s\n", dmoe_status_name(st), dmoe_context_last_error(ctx));
    dmoe_layer_destroy(layer); /* NULL is a no-op */
    dmoe_context_destroy(ctx);
    free(router);
    free(w13);
    free(w2);
    free(x);
    free(y);
    return rc;
}

/* test-smoke: cpu-ref forward runs on a tiny layer and equals route + experts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dmoe.h"
int main(void) {
    enum { H = 16, F = 8, E = 4, K = 2, T = 3 };
    static float router[E * H], w13[E * 2 * F * H], w2[E * H * F], x[T * H], y[T * H], y2[T * H], wts[T * K];
    static int32_t ids[T * K];
    srand(1);
    float *all[] = {router, w13, w2, x};
    size_t n[] = {E * H, E * 2 * F * H, E * H * F, T * H};
    for (int a = 0; a < 4; a++) for (size_t i = 0; i < n[a]; i++) all[a][i] = (float)rand() / RAND_MAX - 0.5f;
    dmoe_context_desc cd; dmoe_context_desc_init(&cd); cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx; if (dmoe_context_create(&cd, &ctx)) { puts(dmoe_context_last_error(NULL)); return 1; }
    dmoe_layer_desc ld; dmoe_layer_desc_init(&ld);
    ld.hidden = H; ld.ffn = F; ld.n_experts = E; ld.top_k = K; ld.act_dtype = ld.weight_dtype = DMOE_DTYPE_F32; ld.max_tokens = T;
    dmoe_layer *layer; if (dmoe_layer_create(ctx, &ld, &layer)) { puts(dmoe_context_last_error(ctx)); return 1; }
    dmoe_weights w; memset(&w, 0, sizeof w); w.router = router; w.w13 = w13; w.w2 = w2;
    if (dmoe_layer_set_weights(layer, &w)) { puts(dmoe_context_last_error(ctx)); return 1; }
    dmoe_tensor tx = dmoe_tensor_2d(x, DMOE_DTYPE_F32, T, H, -1), ty = dmoe_tensor_2d(y, DMOE_DTYPE_F32, T, H, -1);
    dmoe_tensor ty2 = dmoe_tensor_2d(y2, DMOE_DTYPE_F32, T, H, -1);
    dmoe_tensor ti = dmoe_tensor_2d(ids, DMOE_DTYPE_I32, T, K, -1), tw = dmoe_tensor_2d(wts, DMOE_DTYPE_F32, T, K, -1);
    if (dmoe_forward(layer, &tx, &ty, NULL) || dmoe_route(layer, &tx, &ti, &tw, NULL) || dmoe_experts(layer, &tx, &ti, &tw, &ty2, NULL)) { puts(dmoe_context_last_error(ctx)); return 1; }
    int bad = memcmp(y, y2, sizeof y) != 0;
    printf("ids %d %d w %f %f y0 %f -> %s\n", ids[0], ids[1], wts[0], wts[1], y[0], bad ? "FAIL" : "ok");
    dmoe_layer_destroy(layer); dmoe_context_destroy(ctx);
    return bad;
}

/*
 * test-cuda-graph: a cuda forward captured in a CUDA graph (stream capture in
 * global mode, so any synchronising or allocating call inside the forward
 * fails the capture) and replayed 100 times on new inputs copied into the
 * captured x buffer. Every replay must equal an eager forward on the same
 * input bit for bit; a few replays are also checked against cpu-ref. The
 * same forward with programmatic dependent launch off (DMOE_CUDA_PDL=0) must
 * give the same bits too.
 */
#include <math.h>

#include "gpu-util.h"

static void check_against_ref(tu_layer *l, const tu_model *m, const void *x, const void *y,
                              void *d_x, int64_t T, const char *what) {
    const dmoe_layer_desc *d = &m->desc;
    const int64_t H = d->hidden, K = d->top_k;
    int32_t *d_ids = (int32_t *)gpu_alloc(sizeof(int32_t) * (size_t)(T * K));
    float *d_w = (float *)gpu_alloc(sizeof(float) * (size_t)(T * K));
    dmoe_tensor tx = dmoe_tensor_2d(d_x, d->act_dtype, T, H, 0);
    dmoe_tensor ti = dmoe_tensor_2d(d_ids, DMOE_DTYPE_I32, T, K, 0);
    dmoe_tensor tw = dmoe_tensor_2d(d_w, DMOE_DTYPE_F32, T, K, 0);
    TU_CHECK_STATUS(l->ctx, dmoe_route(l->layer, &tx, &ti, &tw, NULL), DMOE_OK);
    int32_t *ids = (int32_t *)tu_malloc(sizeof(int32_t) * (size_t)(T * K));
    float *w = (float *)tu_malloc(sizeof(float) * (size_t)(T * K));
    gpu_download(ids, d_ids, sizeof(int32_t) * (size_t)(T * K));
    gpu_download(w, d_w, sizeof(float) * (size_t)(T * K));
    void *yref = tu_malloc((size_t)(T * H) * 2);
    TU_CHECK(tu_reference_experts(m, x, T, ids, w, yref) == DMOE_OK);
    TU_CHECK(tu_compare(what, y, d->act_dtype, yref, d->act_dtype, T, H, NULL, 1e-2));
    gpu_free(d_ids); gpu_free(d_w); tu_free(ids); tu_free(w); tu_free(yref);
}

static void run(tu_rng *rng, int64_t T) {
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 1024;
    d.ffn = 512;
    d.n_experts = 64;
    d.top_k = 6;
    d.n_shared_experts = 1;
    d.shared_ffn = 256;
    d.max_tokens = 128;
    const int64_t H = d.hidden;
    const size_t xb = (size_t)(T * H) * 2;
    tu_model m;
    gpu_model g;
    tu_layer l;
    tu_model_random(&m, &d, rng);
    gpu_model_upload(&g, &m);
    if (gpu_layer_open(&l, &d, &g) != DMOE_OK) {
        TU_CHECK(0);
        return;
    }
    cudaStream_t s;
    GPU_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    void *d_x = gpu_alloc(xb), *d_y = gpu_alloc(xb), *d_ye = gpu_alloc(xb);
    void *x = tu_malloc(xb), *y = tu_malloc(xb), *ye = tu_malloc(xb);
    dmoe_tensor tx = dmoe_tensor_2d(d_x, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor ty = dmoe_tensor_2d(d_y, DMOE_DTYPE_BF16, T, H, 0);
    dmoe_tensor tye = dmoe_tensor_2d(d_ye, DMOE_DTYPE_BF16, T, H, 0);

    /* warm up eagerly (first launches set kernel attributes), then capture */
    tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
    GPU_CHECK(cudaMemcpy(d_x, x, xb, cudaMemcpyHostToDevice));
    TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &ty, s), DMOE_OK);
    GPU_CHECK(cudaStreamSynchronize(s));
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    GPU_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    dmoe_status st = dmoe_forward(l.layer, &tx, &ty, s);
    cudaError_t cerr = cudaStreamEndCapture(s, &graph);
    TU_CHECKF(st == DMOE_OK, "forward during capture: %s", dmoe_context_last_error(l.ctx));
    TU_CHECKF(cerr == cudaSuccess, "capture: %s", cudaGetErrorString(cerr));
    if (st != DMOE_OK || cerr != cudaSuccess) return;
    GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    size_t n_nodes = 0;
    GPU_CHECK(cudaGraphGetNodes(graph, NULL, &n_nodes));

    int64_t differ = 0;
    for (int r = 0; r < 100; r++) {
        tu_fill_uniform(rng, x, DMOE_DTYPE_BF16, T * H, -1.0, 1.0);
        GPU_CHECK(cudaMemcpyAsync(d_x, x, xb, cudaMemcpyHostToDevice, s));
        gpu_poison(d_y, xb);
        GPU_CHECK(cudaGraphLaunch(exec, s));
        GPU_CHECK(cudaMemcpyAsync(y, d_y, xb, cudaMemcpyDeviceToHost, s));
        TU_CHECK_STATUS(l.ctx, dmoe_forward(l.layer, &tx, &tye, s), DMOE_OK);
        GPU_CHECK(cudaMemcpyAsync(ye, d_ye, xb, cudaMemcpyDeviceToHost, s));
        GPU_CHECK(cudaStreamSynchronize(s));
        if (memcmp(y, ye, xb) != 0) differ++;
        if (r == 0 || r == 1 || r == 50 || r == 99) {
            char what[96];
            snprintf(what, sizeof what, "graph replay %d T=%lld", r, (long long)T);
            check_against_ref(&l, &m, x, y, d_x, T, what);
        }
    }
    printf("  T=%lld: graph of %zu nodes, 100 replays, %lld differ from eager%s\n", (long long)T,
           n_nodes, (long long)differ, differ ? "  <-- FAIL" : "");
    TU_CHECK(differ == 0);

    /* the same bits without programmatic dependent launch */
    setenv("DMOE_CUDA_PDL", "0", 1);
    tu_layer l2;
    if (gpu_layer_open(&l2, &d, &g) == DMOE_OK) {
        TU_CHECK_STATUS(l2.ctx, dmoe_forward(l2.layer, &tx, &tye, s), DMOE_OK);
        GPU_CHECK(cudaMemcpyAsync(ye, d_ye, xb, cudaMemcpyDeviceToHost, s));
        GPU_CHECK(cudaStreamSynchronize(s));
        TU_CHECKF(memcmp(y, ye, xb) == 0, "T=%lld: PDL off gives other bits", (long long)T);
        printf("  T=%lld: forward without PDL %s\n", (long long)T, memcmp(y, ye, xb) == 0 ? "same bits" : "DIFFERS  <-- FAIL");
        tu_layer_close(&l2);
    } else {
        TU_CHECK(0);
    }
    unsetenv("DMOE_CUDA_PDL");
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(s);
    gpu_free(d_x); gpu_free(d_y); gpu_free(d_ye);
    tu_free(x); tu_free(y); tu_free(ye);
    tu_layer_close(&l);
    gpu_model_free(&g);
    tu_model_free(&m);
}

int main(void) {
    if (gpu_skip("test-cuda-graph")) return TU_SKIP;
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    run(&rng, 8);
    run(&rng, 100);
    return tu_finish("test-cuda-graph");
}

/*
 * cuda-context.h: what the CUDA backend keeps per context (the device and its
 * properties, read once) and the small launch helpers every op uses. Private
 * to src/cuda.
 */
#ifndef DMOE_CUDA_CONTEXT_H
#define DMOE_CUDA_CONTEXT_H

#include "cuda-ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dmoe_cuda_context {
    int32_t device;
    int32_t num_sms;
    int32_t cc_major, cc_minor;
    size_t smem_optin;     /* largest dynamic shared memory a block may opt in to */
    size_t l2_bytes;
    int32_t pdl;           /* 1: launch dependent kernels with programmatic stream serialisation */
    int32_t print_config;  /* DMOE_PRINT_CONFIG=1 */
    struct dmoe_pool *pool; /* all device memory of the context's layers (src/pool.c) */
    char pool_name[64];     /* "cuda device N": for the pool's messages */
    char name[256];
} dmoe_cuda_context;

static inline dmoe_cuda_context *dmoe__cuda_ctx(dmoe_context *ctx) {
    return (dmoe_cuda_context *)ctx->backend_data;
}

#ifdef __cplusplus
}

/* Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic
 * dependent launch when pdl is set: the kernel may then start while the
 * previous kernel on the stream drains, so it must call dmoe_griddep_wait()
 * before it touches anything that kernel writes (and it must write nothing
 * before that). */
template <typename... KArgs, typename... Args>
static inline cudaError_t dmoe_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t stream, int pdl, Args... args) {
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    /* Only on streams the caller created: the legacy and per-thread default
     * streams keep plain ordering. */
    const int on = pdl && stream != 0 && stream != cudaStreamLegacy && stream != cudaStreamPerThread;
    cfg.numAttrs = on ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...);
}

/* The most dynamic shared memory a block of kernel may ask for on device:
 * the opt-in maximum minus the kernel's static shared memory. */
template <typename... KArgs>
static inline cudaError_t dmoe_smem_most(void (*kernel)(KArgs...), int device, size_t *most) {
    int optin = 0;
    cudaFuncAttributes fa;
    cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess) err = cudaFuncGetAttributes(&fa, (const void *)kernel);
    if (err != cudaSuccess) return err;
    *most = (size_t)optin > fa.sharedSizeBytes ? (size_t)optin - fa.sharedSizeBytes : 0;
    return cudaSuccess;
}

/* Raises a kernel's dynamic shared memory limit, once per device, to the most
 * it can have (dmoe_smem_most): a later, larger request (a layer with more
 * experts, a larger T) then needs no new call, and two threads never lower it
 * under each other. bytes above that most: cudaErrorInvalidValue. Raised on
 * the first request of any size, since the default 48 KB bounds the dynamic
 * plus the static shared memory (a 43 KB request of a kernel with 6 KB of
 * static arrays failed at launch: the router's last block at E = 674, T = 16,
 * found by bench/shape-sweep.py). The attribute is per device and set outside
 * any stream work, so capture is safe. */
template <typename... KArgs>
static inline cudaError_t dmoe_set_smem(void (*kernel)(KArgs...), size_t bytes, int device,
                                        unsigned long long *done_mask) {
    if (bytes == 0) return cudaSuccess;
    unsigned long long bit = device < 64 ? 1ull << device : 0;
    if (bit && (*done_mask & bit)) return cudaSuccess;
    size_t most = 0;
    cudaError_t err = dmoe_smem_most(kernel, device, &most);
    if (err != cudaSuccess) return err;
    if (bytes > most) return cudaErrorInvalidValue;
    err = cudaFuncSetAttribute((const void *)kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most);
    if (err == cudaSuccess) *done_mask |= bit;
    return err;
}

/* Resident blocks per SM of a kernel, cached per device in *cache (0 = unknown). */
template <typename... KArgs>
static inline int dmoe_occupancy(void (*kernel)(KArgs...), int threads, size_t smem, int device,
                                 int *cache) {
    if (device < 64 && cache[device] > 0) return cache[device];
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, (const void *)kernel, threads, smem) !=
            cudaSuccess ||
        n < 1)
        n = 1;
    if (device < 64) cache[device] = n;
    return n;
}
#endif

#endif /* DMOE_CUDA_CONTEXT_H */

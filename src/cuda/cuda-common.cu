/*
 * cuda-common.cu: the host side of CUDA error reporting (DMOE_CUDA_CHECK in
 * cuda-ops.h lands here).
 */
#include "cuda-ops.h"

extern "C" dmoe_status dmoe__cuda_error(dmoe_context *ctx, cudaError_t err, const char *expr,
                                        const char *file, int line) {
    /* Clear a non-sticky error so it is not reported again by the next check;
     * sticky errors (a fault in a kernel) stay and fail every later call. */
    (void)cudaGetLastError();
    const char *base = strrchr(file, '/');
    return dmoe__error(ctx, DMOE_ERR_CUDA, "%s (%s) in %s at %s:%d", cudaGetErrorString(err),
                       cudaGetErrorName(err), expr, base ? base + 1 : file, line);
}

/* PLACEHOLDER for the CUDA backend: reports availability only. */
#include <cuda_runtime.h>
#include "../dmoe-impl.h"
static int cuda_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
extern "C" const dmoe_backend_iface dmoe__backend_cuda = {
    "cuda", 16, 32, cuda_available, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};

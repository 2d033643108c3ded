// dev/launch-cost.cu: what one graph-replayed launch of an (almost) empty kernel
// costs for the grid shapes the fused kernel could use: blocks per SM, threads,
// dynamic shared memory, cooperative or not; warm and after a 256 MB write flush
// (the bench's). Each block records its start / end in %globaltimer so the spread
// of block starts (dispatch) shows beside the event time.
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a launch-cost.cu -o lc
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

struct Args { unsigned long long *stamps; int pad[64]; };

__device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

template <int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) empty_kernel(const Args a) {
    extern __shared__ unsigned char sm[];
    if (threadIdx.x == 0) {
        unsigned long long t0 = gtime();
        sm[0] = 1;
        a.stamps[2 * blockIdx.x] = t0;
        a.stamps[2 * blockIdx.x + 1] = gtime();
    }
}

template <int THREADS, int MINB>
static void one(const char *name, int per_sm_want, size_t smem, bool coop, void *flush, size_t flush_bytes,
                unsigned long long *stamps, int nsm) {
    auto k = empty_kernel<THREADS, MINB>;
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, THREADS, smem));
    if (per_sm < per_sm_want) { printf("%-34s occupancy %d < %d, skipped\n", name, per_sm, per_sm_want); return; }
    cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    Args a = {}; a.stamps = stamps;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(per_sm_want * nsm); cfg.blockDim = dim3(THREADS); cfg.dynamicSmemBytes = smem; cfg.stream = s;
    cudaLaunchAttribute at[1]; at[0].id = cudaLaunchAttributeCooperative; at[0].val.cooperative = 1;
    cfg.attrs = at; cfg.numAttrs = coop ? 1 : 0;
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CK(cudaLaunchKernelEx(&cfg, k, a));
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    for (int fl = 0; fl < 2; fl++) {
        std::vector<float> ts; std::vector<double> spread;
        for (int it = 0; it < 220; it++) {
            if (fl) CK(cudaMemsetAsync(flush, it & 255, flush_bytes, s));
            CK(cudaEventRecord(e0, s));
            CK(cudaGraphLaunch(ge, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaStreamSynchronize(s));
            float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
            if (it >= 20) {
                ts.push_back(ms * 1000.f);
                std::vector<unsigned long long> h(2 * cfg.gridDim.x);
                CK(cudaMemcpy(h.data(), stamps, h.size() * 8, cudaMemcpyDeviceToHost));
                unsigned long long mn = ~0ull, mx = 0;
                for (unsigned b = 0; b < cfg.gridDim.x; b++) { mn = std::min(mn, h[2 * b]); mx = std::max(mx, h[2 * b]); }
                spread.push_back((mx - mn) / 1000.0);
            }
        }
        std::sort(ts.begin(), ts.end()); std::sort(spread.begin(), spread.end());
        printf("%-34s %s grid %4u x %3d smem %6zu: %s graph us med %.2f p10 %.2f p90 %.2f | block-start spread us %.2f\n", name,
               coop ? "coop " : "plain", cfg.gridDim.x, THREADS, smem, fl ? "flush" : "warm ", ts[ts.size() / 2],
               ts[ts.size() / 10], ts[ts.size() * 9 / 10], spread[spread.size() / 2]);
    }
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g)); CK(cudaStreamDestroy(s));
}

int main() {
    int nsm; CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    size_t fb = 256u << 20; void *flush; CK(cudaMalloc(&flush, fb));
    unsigned long long *stamps; CK(cudaMalloc(&stamps, 2 * 8 * 4 * nsm * sizeof(unsigned long long)));
    for (int coop = 1; coop >= 0; coop--) {
        one<192, 2>("2/SM x 192 (today)", 2, 75 * 1024, coop, flush, fb, stamps, nsm);
        one<192, 2>("2/SM x 192 small smem", 2, 1024, coop, flush, fb, stamps, nsm);
        one<192, 1>("1/SM x 192", 1, 75 * 1024, coop, flush, fb, stamps, nsm);
        one<384, 1>("1/SM x 384 (two units a block)", 1, 150 * 1024, coop, flush, fb, stamps, nsm);
        one<384, 1>("1/SM x 384 small smem", 1, 1024, coop, flush, fb, stamps, nsm);
        one<128, 4>("4/SM x 128", 4, 40 * 1024, coop, flush, fb, stamps, nsm);
    }
    return 0;
}

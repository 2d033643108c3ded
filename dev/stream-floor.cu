// dev/stream-floor.cu: the best a single-launch decode forward could do under gpu_bench.py's timing, measured
// rather than added up. A qwen3-30b-a3b-shaped weight set (E experts of 3*H*F bf16) lives on the device; each
// timed call picks K distinct experts at random (the set is written to a device array before the flush, untimed)
// and one graph-replayed kernel reads exactly those experts' bytes (every block a contiguous slice of each
// expert, 16-byte non-coherent loads with the L2 evict-first policy, 8 in flight per thread) and reduces them to
// one word -- no arithmetic beyond an xor, no routing. Variants:
//   stream      : the K experts are known at launch (the ideal: launch + bytes + the flush's write-backs)
//   router+wait : first the router matrix (E x H bf16) is read by the grid, each block arrives on a counter
//                 and waits for all (a grid-wide hand-off like the fused kernel's), then the stream
//   empty       : the same grid, no loads (launch cost)
// Each under no flush (inputs rotated only), the bench's 256 MB write flush (memset), and a 256 MB read flush.
// Times: CUDA events around the graph launch, median of REPS after warm-up; floor = K*3*H*F*2 / copy rate.
// Build: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a dev/stream-floor.cu -o sf
// Run:   ./sf [H F E K]       (default 2048 768 128 8; olmoe: 2048 1024 64 8)
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <algorithm>
#include <vector>

#define CK(x)                                                                   \
    do {                                                                        \
        cudaError_t e_ = (x);                                                   \
        if (e_ != cudaSuccess) {                                                \
            printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

struct Args {
    const uint4 *w;        // E experts, each ebytes / 16 uint4
    long long e16;         // uint4 per expert
    const int *ids;        // K expert ids (device)
    int K;
    const uint4 *router;   // router matrix
    long long r16;         // uint4 in the router
    unsigned *counter;     // arrival counter (router+wait), reset by the last block out
    unsigned *exitc;
    unsigned *sink;
    int mode;              // 0 empty, 1 stream, 2 router+wait
};

static __device__ __forceinline__ uint4 ld_ef(const uint4 *p, uint64_t pol) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p), "l"(pol));
    return v;
}

__global__ void __launch_bounds__(256, 2) sf_kernel(const Args a) {
    if (a.mode == 0) return;
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    const long long nthr = (long long)gridDim.x * blockDim.x;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    if (a.mode == 2) {
        for (long long i = tid; i < a.r16; i += nthr) {
            uint4 v = ld_ef(a.router + i, pol);
            acc ^= v.x ^ v.y ^ v.z ^ v.w;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.counter) : "memory");
            unsigned v = 0;
            do {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.counter) : "memory");
            } while (v < gridDim.x);
        }
        __syncthreads();
    }
    // every block reads a contiguous slice of each expert; 8 loads in flight per thread
    const long long per_blk = (a.e16 + gridDim.x - 1) / gridDim.x;
    for (int k = 0; k < a.K; k++) {
        const uint4 *e = a.w + (long long)a.ids[k] * a.e16;
        long long lo = blockIdx.x * per_blk, hi = lo + per_blk < a.e16 ? lo + per_blk : a.e16;
        for (long long i = lo + threadIdx.x; i < hi; i += 8 * blockDim.x) {
            uint4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                long long j = i + (long long)u * blockDim.x;
                v[u] = j < hi ? ld_ef(e + j, pol) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
        }
    }
    if (acc == 0x9e3779b9u) a.sink[0] = acc;  // keeps the loads
    if (a.mode == 2) {
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned old;
            asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(a.exitc) : "memory");
            if (old == gridDim.x - 1) {
                *a.counter = 0;
                *a.exitc = 0;
            }
        }
    }
}

__global__ void read_flush(const uint4 *p, long long n, unsigned *sink) {
    unsigned acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint4 v;
        asm volatile("ld.global.cs.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p + i));
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

int main(int argc, char **argv) {
    long long H = 2048, F = 768;
    int E = 128, K = 8;
    if (argc >= 5) {
        H = atoll(argv[1]);
        F = atoll(argv[2]);
        E = atoi(argv[3]);
        K = atoi(argv[4]);
    }
    const int REPS = 100, WARM = 10;
    const long long ebytes = 3 * H * F * 2, e16 = ebytes / 16;
    int nsm;
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    uint4 *w, *router, *flush;
    int *ids;
    unsigned *ctr, *sink;
    CK(cudaMalloc(&w, ebytes * E));
    CK(cudaMemset(w, 0x3c, ebytes * E));
    const long long r16 = (long long)E * H * 2 / 16;
    CK(cudaMalloc(&router, r16 * 16));
    CK(cudaMemset(router, 0x3c, r16 * 16));
    const size_t fbytes = 256u << 20;
    CK(cudaMalloc(&flush, fbytes));
    CK(cudaMalloc(&ids, K * sizeof(int)));
    CK(cudaMalloc(&ctr, 256));
    CK(cudaMemset(ctr, 0, 256));
    CK(cudaMalloc(&sink, 256));

    // the copy rate, as gpu_bench.py measures it (device-to-device copy of 1 GiB: read + write bytes / time)
    float bw;
    {
        void *a, *b;
        size_t n = 1ull << 30;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<float> t;
        for (int i = 0; i < 12; i++) {
            CK(cudaEventRecord(e0));
            CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 2) t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        bw = 2.0f * n / (t[t.size() / 2] * 1e-3f);
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    const double floor_us = (double)K * ebytes / bw * 1e6;
    printf("%s, %d SMs: H=%lld F=%lld E=%d K=%d, %.1f MB of experts a call, copy %.0f GB/s, floor %.2f us\n", prop.name,
           nsm, H, F, E, K, K * ebytes / 1e6, bw / 1e9, floor_us);

    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    srand(1);
    std::vector<int> hid(K);
    int *hpin;
    CK(cudaMallocHost(&hpin, K * sizeof(int)));
    const char *mname[] = {"empty", "stream", "router+wait"};
    const char *fname[] = {"no flush", "write flush", "read flush"};
    for (int blocks_per_sm = 1; blocks_per_sm <= 2; blocks_per_sm++)
        for (int mode = 0; mode < 3; mode++) {
            Args a = {w, e16, ids, K, router, r16, ctr, ctr + 32, sink, mode};
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            sf_kernel<<<blocks_per_sm * nsm, 256, 0, s>>>(a);
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            for (int fl = 0; fl < 3; fl++) {
                std::vector<float> ts;
                for (int it = 0; it < WARM + REPS; it++) {
                    for (int k = 0; k < K; k++) {  // K distinct experts
                        int e;
                        bool dup;
                        do {
                            e = rand() % E;
                            dup = false;
                            for (int j = 0; j < k; j++) dup |= hpin[j] == e;
                        } while (dup);
                        hpin[k] = e;
                    }
                    CK(cudaMemcpyAsync(ids, hpin, K * sizeof(int), cudaMemcpyHostToDevice, s));
                    if (fl == 1) CK(cudaMemsetAsync(flush, it & 255, fbytes, s));
                    if (fl == 2) read_flush<<<4 * nsm, 256, 0, s>>>(flush, fbytes / 16, sink);
                    CK(cudaEventRecord(e0, s));
                    CK(cudaGraphLaunch(ge, s));
                    CK(cudaEventRecord(e1, s));
                    CK(cudaStreamSynchronize(s));
                    float ms;
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    if (it >= WARM) ts.push_back(ms * 1000.f);
                }
                std::sort(ts.begin(), ts.end());
                float med = ts[ts.size() / 2];
                printf("%-12s grid %3d x 256  %-11s  graph us med %7.2f  p10 %7.2f  p90 %7.2f  floor/med %.3f\n",
                       mname[mode], blocks_per_sm * nsm, fname[fl], med, ts[ts.size() / 10], ts[ts.size() * 9 / 10],
                       mode ? floor_us / med : 0.0);
            }
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }
    CK(cudaGetLastError());
    return 0;
}

/*
 * dev/sm90-gemm-01.cu: check and time the sm90 grouped GEMMs
 * (src/cuda/sm90-grouped-gemm.cu, included below: one translation unit, so
 * numbered experiments can instantiate its internals) on MoE shapes.
 *
 * For every case: random routing (T tokens, K distinct experts each) and the
 * plan (offsets, pairs) built on the host; inputs drawn from a hash so the host
 * can recompute any element (values k/128 * 2^-s, exact in bf16 and f16).
 *   check 1: every element of act and part against cuBLAS per expert (fp32
 *            output) on the same inputs: relative L2 error, worst error, NaN
 *            (outputs are poisoned with NaN before each run);
 *   check 2: a few rows recomputed on the host in float64 (validates check 1).
 * Timing: CUDA events around single launches, warm-up, median; TFLOP/s of the
 * useful work (2 * rows * cols * k), fraction of 781 TFLOP/s (KERNELS.md) and
 * of a dense 8192^3 cuBLAS bf16 GEMM measured in the same process, and the
 * per-expert cuBLAS loop as a baseline.
 *
 * Build (sm_90a, cuBLAS for the reference):
 *   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc \
 *        -Xcompiler -fopenmp dev/sm90-gemm-01.cu -lcublas -o devbin/sm90-gemm-01
 * Run: devbin/sm90-gemm-01 [check|perf|all] [perf case names, comma list]
 */
#include <algorithm>
#include <functional>
#include <cublas_v2.h>
#include <omp.h>
#include <vector>

#include "../src/cuda/sm90-grouped-gemm.cu"

/* ---- stubs for the two core functions the op calls (the harness links no core) ---- */
extern "C" dmoe_status dmoe__cuda_error(dmoe_context *ctx, cudaError_t err, const char *expr,
                                        const char *file, int line) {
    fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(err), file, line, expr);
    return DMOE_ERR_CUDA;
}
extern "C" dmoe_status dmoe__error(dmoe_context *ctx, dmoe_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dmoe error %d: ", (int)status);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return status;
}

/* the plain swap entry points ask the heuristics (heuristics.cu, not linked here) */
extern "C" int32_t dmoe__cuda_swap_tokens(const dmoe_cuda_grouped_args *a) { return 64; }

#define CK(x)                                                                                 \
    do {                                                                                      \
        cudaError_t e_ = (x);                                                                 \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)
#define CB(x)                                                                      \
    do {                                                                           \
        cublasStatus_t s_ = (x);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
            fprintf(stderr, "%s:%d %s: cublas %d\n", __FILE__, __LINE__, #x, (int)s_); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)
#define CD(x)                                                                   \
    do {                                                                        \
        dmoe_status s_ = (x);                                                   \
        if (s_ != DMOE_OK) {                                                    \
            fprintf(stderr, "%s:%d %s: status %d\n", __FILE__, __LINE__, #x, (int)s_); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

/* ---- deterministic inputs ---- */
__host__ __device__ inline uint32_t hash32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}
/* k/128 * 2^-shift with k in [-128, 127]: exact in bf16 and f16 */
__host__ __device__ inline float hval(uint64_t seed, uint64_t i, int shift) {
    const int k = (int)(hash32(seed * 0x9E3779B97F4A7C15ULL + i) & 255) - 128;
    return ldexpf((float)k, -7 - shift);
}
template <typename T> __global__ void fill_kernel(T *out, size_t n, uint64_t seed, int shift) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = (T)hval(seed, i, shift);
}
template <typename T> __global__ void gather_kernel(T *xg, const T *x, const int32_t *pairs,
                                                    int64_t n_rows, int64_t H, int K) {
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const int64_t t = pairs[r] / K;
        for (int64_t h = threadIdx.x; h < H; h += blockDim.x) xg[r * H + h] = x[t * H + h];
    }
}
/* act_in = bf16(silu(C1 gate) * C1 up): GEMM2's input, the same for all variants */
template <typename T> __global__ void swiglu_kernel(T *act, const float *c1, int64_t n_rows, int64_t F) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n_rows * F;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = i / F, f = i % F;
        const float g = c1[s * 2 * F + f], u = c1[s * 2 * F + F + f];
        act[i] = (T)(g / (1.0f + expf(-g)) * u);
    }
}

struct cmp_acc {
    double d2, r2, maxd;
    unsigned long long nonfinite, bad, first_bad;
};
__device__ inline void atomic_max_d(double *a, double v) {
    unsigned long long *p = (unsigned long long *)a, old = *p, assumed;
    while (__longlong_as_double(old) < v) {
        assumed = old;
        old = atomicCAS(p, assumed, __double_as_longlong(v));
        if (old == assumed) break;
    }
}
/* mode 1: ref = silu(c[s, f]) * c[s, F + f] (ldc 2F); mode 2: ref = w[pairs[s]] * c[s, n] */
template <typename T>
__global__ void compare_kernel(const T *got, const float *c, int64_t n_rows, int64_t n, int mode,
                               const int32_t *pairs, const float *topk_w, double atol,
                               cmp_acc *acc) {
    double d2 = 0, r2 = 0, maxd = 0;
    unsigned long long nf = 0, bad = 0, first = ~0ull;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n_rows * n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = i / n, j = i % n;
        float ref;
        if (mode == 1) {
            const float g = c[s * 2 * n + j], u = c[s * 2 * n + n + j];
            ref = g / (1.0f + expf(-g)) * u;
        } else {
            ref = topk_w[pairs[s]] * c[s * n + j];
        }
        const float v = (float)got[i];
        if (!isfinite(v)) {
            nf++;
            if (i < first) first = i;
            continue;
        }
        const double d = fabs((double)v - ref);
        d2 += d * d;
        r2 += (double)ref * ref;
        maxd = fmax(maxd, d);
        if (d > atol + 0.03 * fabs(ref)) {
            bad++;
            if (i < first) first = i;
        }
    }
    for (int o = 16; o; o >>= 1) {
        d2 += __shfl_xor_sync(~0u, d2, o);
        r2 += __shfl_xor_sync(~0u, r2, o);
        maxd = fmax(maxd, __shfl_xor_sync(~0u, maxd, o));
        nf += __shfl_xor_sync(~0u, nf, o);
        bad += __shfl_xor_sync(~0u, bad, o);
        first = min(first, __shfl_xor_sync(~0u, first, o));
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&acc->d2, d2);
        atomicAdd(&acc->r2, r2);
        atomic_max_d(&acc->maxd, maxd);
        atomicAdd(&acc->nonfinite, nf);
        atomicAdd(&acc->bad, bad);
        atomicMin(&acc->first_bad, first);
    }
}

/* ---- one case ---- */
struct shape {
    const char *name;
    int64_t T, H, F;
    int E, K;
    dmoe_dtype dtype;
    int skew; /* 0 uniform routing; 1 every token to experts k + t%3 */
    bool time;
};

static float g_dense_tflops = 0;
static cublasHandle_t g_blas;

template <typename Fn> static float time_median(Fn fn, int warm, int reps) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < warm; ++i) fn();
    std::vector<float> ms;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(a));
        fn();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float m;
        CK(cudaEventElapsedTime(&m, a, b));
        ms.push_back(m);
    }
    CK(cudaGetLastError());
    std::sort(ms.begin(), ms.end());
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms[ms.size() / 2];
}

static void measure_dense(void) {
    const int n = 8192;
    void *A, *B, *C;
    CK(cudaMalloc(&A, (size_t)n * n * 2));
    CK(cudaMalloc(&B, (size_t)n * n * 2));
    CK(cudaMalloc(&C, (size_t)n * n * 2));
    fill_kernel<<<1024, 256>>>((__nv_bfloat16 *)A, (size_t)n * n, 1, 0);
    fill_kernel<<<1024, 256>>>((__nv_bfloat16 *)B, (size_t)n * n, 2, 0);
    const float one = 1, zero = 0;
    float ms = time_median([&] {
        CB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B,
                        CUDA_R_16BF, n, &zero, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT));
    }, 3, 10);
    g_dense_tflops = (float)(2.0 * n * n * n / (ms * 1e-3) / 1e12);
    printf("dense cuBLAS bf16 8192^3: %.3f ms, %.1f TFLOP/s\n", ms, g_dense_tflops);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
}

static bool report(const char *what, const cmp_acc &h, int64_t n) {
    const double rel = sqrt(h.d2 / (h.r2 > 0 ? h.r2 : 1));
    const bool ok = h.nonfinite == 0 && h.bad == 0 && rel < 1e-2;
    printf("    %-14s rel_l2 %.2e  max_abs %.2e  nonfinite %llu  bad %llu", what, rel, h.maxd,
           h.nonfinite, h.bad);
    if (!ok && h.first_bad != ~0ull)
        printf("  first bad (row %llu, col %llu)", h.first_bad / n, h.first_bad % n);
    printf("  %s\n", ok ? "ok" : "FAIL");
    return ok;
}

static int g_failures = 0;

template <typename T> static void run_case(const shape &c) {
    const int64_t T_ = c.T, H = c.H, F = c.F, NR = c.T * c.K;
    const int E = c.E, K = c.K;
    printf("== %s: T=%lld H=%lld F=%lld E=%d K=%d %s%s\n", c.name, (long long)T_, (long long)H,
           (long long)F, E, K, c.dtype == DMOE_DTYPE_BF16 ? "bf16" : "f16",
           c.skew ? " skewed routing" : "");
    /* routing and plan on the host */
    std::vector<int32_t> ids(NR), offsets(E + 1, 0), pairs(NR), counts(E, 0);
    std::vector<float> topw(NR);
    for (int64_t t = 0; t < T_; ++t) {
        for (int k = 0; k < K; ++k) {
            int e;
            if (c.skew) {
                e = (k + (int)(t % 3)) % E;
            } else {
                for (uint64_t tries = 0;; ++tries) {
                    e = (int)(hash32(777 + (uint64_t)(t * K + k) * 1000003ull + tries * 7919) % E);
                    bool dup = false;
                    for (int j = 0; j < k; ++j) dup |= ids[t * K + j] == e;
                    if (!dup) break;
                }
            }
            ids[t * K + k] = e;
            topw[t * K + k] = 0.25f + 0.75f * (hash32(99 + t * K + k) & 1023) / 1024.0f;
        }
    }
    for (int64_t p = 0; p < NR; ++p) counts[ids[p]]++;
    for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
    {
        std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
        for (int64_t p = 0; p < NR; ++p) pairs[fill[ids[p]]++] = (int32_t)p;
    }
    const int sh_w1 = (int)floor(log2(sqrt((double)H))), sh_w2 = (int)floor(log2(sqrt((double)F)));

    T *x, *w13, *w2, *act_out, *act_in, *part, *xg;
    float *c1, *c2, *d_topw;
    int32_t *d_off, *d_pairs;
    cmp_acc *d_acc;
    CK(cudaMalloc(&x, T_ * H * sizeof(T)));
    CK(cudaMalloc(&w13, (size_t)E * 2 * F * H * sizeof(T)));
    CK(cudaMalloc(&w2, (size_t)E * H * F * sizeof(T)));
    CK(cudaMalloc(&act_out, NR * F * sizeof(T)));
    CK(cudaMalloc(&act_in, NR * F * sizeof(T)));
    CK(cudaMalloc(&part, NR * H * sizeof(T)));
    CK(cudaMalloc(&xg, NR * H * sizeof(T)));
    CK(cudaMalloc(&c1, NR * 2 * F * sizeof(float)));
    CK(cudaMalloc(&c2, NR * H * sizeof(float)));
    CK(cudaMalloc(&d_topw, NR * sizeof(float)));
    CK(cudaMalloc(&d_off, (E + 1) * sizeof(int32_t)));
    CK(cudaMalloc(&d_pairs, NR * sizeof(int32_t)));
    CK(cudaMalloc(&d_acc, sizeof(cmp_acc)));
    fill_kernel<<<2048, 256>>>(x, T_ * H, 11, 0);
    fill_kernel<<<2048, 256>>>(w13, (size_t)E * 2 * F * H, 12, sh_w1);
    fill_kernel<<<2048, 256>>>(w2, (size_t)E * H * F, 13, sh_w2);
    CK(cudaGetLastError());
    CK(cudaMemcpy(d_topw, topw.data(), NR * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_off, offsets.data(), (E + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_pairs, pairs.data(), NR * sizeof(int32_t), cudaMemcpyHostToDevice));

    /* reference: cuBLAS per expert, fp32 outputs */
    const cudaDataType dt = c.dtype == DMOE_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const float one = 1, zero = 0;
    gather_kernel<<<4096, 256>>>(xg, x, d_pairs, NR, H, K);
    for (int e = 0; e < E; ++e) {
        if (!counts[e]) continue;
        CB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * F), counts[e], (int)H, &one,
                        w13 + (size_t)e * 2 * F * H, dt, (int)H, xg + (size_t)offsets[e] * H, dt,
                        (int)H, &zero, c1 + (size_t)offsets[e] * 2 * F, CUDA_R_32F, (int)(2 * F),
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    swiglu_kernel<<<4096, 256>>>(act_in, c1, NR, F);
    for (int e = 0; e < E; ++e) {
        if (!counts[e]) continue;
        CB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)H, counts[e], (int)F, &one,
                        w2 + (size_t)e * H * F, dt, (int)F, act_in + (size_t)offsets[e] * F, dt,
                        (int)F, &zero, c2 + (size_t)offsets[e] * H, CUDA_R_32F, (int)H,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    CK(cudaDeviceSynchronize());

    dmoe_cuda_grouped_args a1, a2;
    memset(&a1, 0, sizeof a1);
    a1.n_rows = NR;
    a1.n_tokens = T_;
    a1.top_k = K;
    a1.n_experts = E;
    a1.k_dim = H;
    a1.n_dim = F;
    a1.offsets = d_off;
    a1.pairs = d_pairs;
    a1.dtype = c.dtype;
    CK(cudaDeviceGetAttribute(&a1.num_sms, cudaDevAttrMultiProcessorCount, 0));
    a2 = a1;
    a2.k_dim = F;
    a2.n_dim = H;

    auto compare = [&](const T *got, const float *ref, int64_t n, int mode, const char *what) {
        /* pass 1 for the scale, pass 2 with atol = 2% of the rms */
        cmp_acc h = {0, 0, 0, 0, 0, ~0ull};
        CK(cudaMemcpy(d_acc, &h, sizeof h, cudaMemcpyHostToDevice));
        compare_kernel<<<2048, 256>>>(got, ref, NR, n, mode, d_pairs, d_topw, 1e30, d_acc);
        CK(cudaMemcpy(&h, d_acc, sizeof h, cudaMemcpyDeviceToHost));
        const double rms = sqrt(h.r2 / (double)(NR * n));
        cmp_acc h2 = {0, 0, 0, 0, 0, ~0ull};
        CK(cudaMemcpy(d_acc, &h2, sizeof h2, cudaMemcpyHostToDevice));
        compare_kernel<<<2048, 256>>>(got, ref, NR, n, mode, d_pairs, d_topw, 0.02 * rms, d_acc);
        CK(cudaMemcpy(&h2, d_acc, sizeof h2, cudaMemcpyDeviceToHost));
        if (!report(what, h2, n)) g_failures++;
    };

    /* host float64 rows: the first and last slot of the fullest expert, and two more */
    auto cpu_check = [&](const char *vname) {
        int emax = (int)(std::max_element(counts.begin(), counts.end()) - counts.begin());
        std::vector<int64_t> rows = {offsets[emax], offsets[emax + 1] - 1, NR / 3, NR - 1};
        std::vector<T> got1(F), got2(H), in2(F);
        double worst1 = 0, worst2 = 0;
        for (int64_t s : rows) {
            int e = (int)(std::upper_bound(offsets.begin(), offsets.end(), (int32_t)s) -
                          offsets.begin()) - 1;
            const int64_t t = pairs[s] / K;
            CK(cudaMemcpy(got1.data(), act_out + s * F, F * sizeof(T), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(got2.data(), part + s * H, H * sizeof(T), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(in2.data(), act_in + s * F, F * sizeof(T), cudaMemcpyDeviceToHost));
            double n1 = 0, d1 = 0, n2 = 0, d2 = 0;
#pragma omp parallel for reduction(+ : n1, d1)
            for (int64_t f = 0; f < F; ++f) {
                double g = 0, u = 0;
                for (int64_t h = 0; h < H; ++h) {
                    const double xv = hval(11, t * H + h, 0);
                    g += xv * hval(12, ((size_t)e * 2 * F + f) * H + h, sh_w1);
                    u += xv * hval(12, ((size_t)e * 2 * F + F + f) * H + h, sh_w1);
                }
                const double r = g / (1 + exp(-g)) * u, v = (float)got1[f];
                n1 += r * r;
                d1 += (v - r) * (v - r);
            }
#pragma omp parallel for reduction(+ : n2, d2)
            for (int64_t h = 0; h < H; ++h) {
                double acc = 0;
                for (int64_t f = 0; f < F; ++f)
                    acc += (double)(float)in2[f] * hval(13, ((size_t)e * H + h) * F + f, sh_w2);
                const double r = topw[pairs[s]] * acc, v = (float)got2[h];
                n2 += r * r;
                d2 += (v - r) * (v - r);
            }
            worst1 = std::max(worst1, sqrt(d1 / std::max(n1, 1e-300)));
            worst2 = std::max(worst2, sqrt(d2 / std::max(n2, 1e-300)));
        }
        const bool ok = worst1 < 1e-2 && worst2 < 1e-2;
        if (!ok) g_failures++;
        printf("    %-14s host fp64 rows: gemm1 rel_l2 %.2e  gemm2 rel_l2 %.2e  %s\n", vname,
               worst1, worst2, ok ? "ok" : "FAIL");
    };

    const double fl1 = 2.0 * NR * 2 * F * H, fl2 = 2.0 * NR * H * F;
    int hit = 0;
    for (int e = 0; e < E; ++e) hit += counts[e] > 0;
    /* weight bytes of the experts hit (GB/s columns; copy ceiling ~3000 read+write) */
    const double wb1 = (double)hit * 2 * F * H * sizeof(T), wb2 = (double)hit * H * F * sizeof(T);
    struct variant_fns {
        const char *name;
        std::function<void()> g1, g2;
    };
    /* The library's entry points. Earlier variants (tile shapes, schedules,
     * epilogues) and their numbers are in bench/sm90-gemm-notes.md. */
    std::vector<variant_fns> vs = {
        variant_fns{"lib",
                    [&] { CD(dmoe__cuda_gemm1_sm90(nullptr, &a1, x, w13, act_out, 0)); },
                    [&] { CD(dmoe__cuda_gemm2_sm90(nullptr, &a2, act_in, w2, d_topw, part, 0)); }}};
    /* v06: swap-AB (weights on the M side), 16/32/64/128 rows per item; every
     * one on the check cases, on timed cases those that fit the mean rows. */
    static const char *swap_names[] = {"swap16", "swap32", "swap64", "swap128"};
    const double mean_rows = (double)NR / E;
    for (int i = 0; i < 4; ++i) {
        const int nt = 16 << i;
        if (c.time && (mean_rows > 256 || nt > 4 * mean_rows + 16 || nt * 4 < mean_rows)) continue;
        vs.push_back(variant_fns{
            swap_names[i],
            [&, nt] { CD(dmoe__cuda_gemm1_sm90_swap_n(nullptr, &a1, nt, x, w13, act_out, 0)); },
            [&, nt] {
                CD(dmoe__cuda_gemm2_sm90_swap_n(nullptr, &a2, nt, act_in, w2, d_topw, part, 0));
            }});
    }
    for (size_t v = 0; v < vs.size(); ++v) {
        CK(cudaMemset(act_out, 0xff, NR * F * sizeof(T)));
        CK(cudaMemset(part, 0xff, NR * H * sizeof(T)));
        vs[v].g1();
        vs[v].g2();
        CK(cudaDeviceSynchronize());
        printf("  variant %s\n", vs[v].name);
        compare(act_out, c1, F, 1, "gemm1 act");
        compare(part, c2, H, 2, "gemm2 part");
        if (v < 2 || !c.time) cpu_check(vs[v].name);
    }
    if (c.time) {
        /* interleaved: rep r times every variant once, so drift (clocks, heat) hits all alike */
        const int reps = fl1 > 1e12 ? 9 : 15;
        std::vector<std::vector<float>> t1(vs.size()), t2(vs.size());
        cudaEvent_t ea, eb;
        CK(cudaEventCreate(&ea));
        CK(cudaEventCreate(&eb));
        auto once = [&](const std::function<void()> &fn) {
            CK(cudaEventRecord(ea));
            fn();
            CK(cudaEventRecord(eb));
            CK(cudaEventSynchronize(eb));
            float m;
            CK(cudaEventElapsedTime(&m, ea, eb));
            return m;
        };
        for (auto &v : vs) { v.g1(); v.g2(); }
        for (int r = 0; r < reps; ++r)
            for (size_t v = 0; v < vs.size(); ++v) {
                t1[v].push_back(once(vs[v].g1));
                t2[v].push_back(once(vs[v].g2));
            }
        for (size_t v = 0; v < vs.size(); ++v) {
            std::sort(t1[v].begin(), t1[v].end());
            std::sort(t2[v].begin(), t2[v].end());
            const float ms1 = t1[v][reps / 2], ms2 = t2[v][reps / 2];
            const double tf1 = fl1 / (ms1 * 1e-3) / 1e12, tf2 = fl2 / (ms2 * 1e-3) / 1e12;
            printf("  RESULT %-16s %-10s gemm1 %9.1f us %6.1f TFLOP/s (%.2f of 781, %.2f of dense)"
                   " %6.0f GB/s [min %.1f max %.1f] | gemm2 %9.1f us %6.1f TFLOP/s (%.2f of 781,"
                   " %.2f of dense) %6.0f GB/s [min %.1f max %.1f] | both %.1f us\n",
                   c.name, vs[v].name, ms1 * 1e3, tf1, tf1 / 781, tf1 / g_dense_tflops,
                   wb1 / (ms1 * 1e-3) / 1e9, t1[v].front() * 1e3, t1[v].back() * 1e3, ms2 * 1e3,
                   tf2, tf2 / 781, tf2 / g_dense_tflops, wb2 / (ms2 * 1e-3) / 1e9,
                   t2[v].front() * 1e3, t2[v].back() * 1e3, (ms1 + ms2) * 1e3);
        }
        /* baseline: cuBLAS per expert, bf16 out, gather and SwiGLU excluded */
        float msb1 = time_median([&] {
            for (int e = 0; e < E; ++e)
                if (counts[e])
                    cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * F), counts[e], (int)H,
                                 &one, w13 + (size_t)e * 2 * F * H, dt, (int)H,
                                 xg + (size_t)offsets[e] * H, dt, (int)H, &zero,
                                 (void *)c1 /* scratch */, dt, (int)(2 * F), CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT);
        }, 1, 5);
        float msb2 = time_median([&] {
            for (int e = 0; e < E; ++e)
                if (counts[e])
                    cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)H, counts[e], (int)F, &one,
                                 w2 + (size_t)e * H * F, dt, (int)F,
                                 act_in + (size_t)offsets[e] * F, dt, (int)F, &zero,
                                 part, dt, (int)H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        }, 1, 5);
        printf("  RESULT %-16s %-10s gemm1 %9.1f us %6.1f TFLOP/s | gemm2 %9.1f us %6.1f TFLOP/s\n",
               c.name, "cublas-loop", msb1 * 1e3, fl1 / (msb1 * 1e-3) / 1e12, msb2 * 1e3,
               fl2 / (msb2 * 1e-3) / 1e12);
    }
    int emin = *std::min_element(counts.begin(), counts.end());
    int emaxc = *std::max_element(counts.begin(), counts.end());
    printf("  rows per expert: min %d max %d mean %.1f\n", emin, emaxc, (double)NR / E);
    cudaFree(x); cudaFree(w13); cudaFree(w2); cudaFree(act_out); cudaFree(act_in);
    cudaFree(part); cudaFree(xg); cudaFree(c1); cudaFree(c2); cudaFree(d_topw);
    cudaFree(d_off); cudaFree(d_pairs); cudaFree(d_acc);
    CK(cudaGetLastError());
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "all";
    CB(cublasCreate(&g_blas));

    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, cc %d.%d\n", prop.name, prop.multiProcessorCount, prop.major,
           prop.minor);
    const bool check = strcmp(mode, "perf") != 0, perf = strcmp(mode, "check") != 0;
    const char *only = argc > 2 ? argv[2] : nullptr; /* perf cases whose name is in this list */
    const shape checks[] = {
        {"odd-2880", 257, 2880, 1408, 60, 6, DMOE_DTYPE_BF16, 0, false},
        {"tails-f16", 100, 1000, 200, 64, 3, DMOE_DTYPE_F16, 0, false},
        {"tails-bf16", 100, 1000, 200, 64, 3, DMOE_DTYPE_BF16, 0, false},
        {"one-token", 1, 64, 8, 4, 2, DMOE_DTYPE_BF16, 0, false},
        {"skew", 2000, 512, 384, 8, 2, DMOE_DTYPE_BF16, 1, false},
        {"skew-f16", 3000, 520, 136, 40, 4, DMOE_DTYPE_F16, 1, false},
    };
    const shape perfs[] = {
        {"mixtral-T2048", 2048, 4096, 14336, 8, 2, DMOE_DTYPE_BF16, 0, true},
        {"mixtral-T8192", 8192, 4096, 14336, 8, 2, DMOE_DTYPE_BF16, 0, true},
        {"dsv3-T8192", 8192, 7168, 2048, 256, 8, DMOE_DTYPE_BF16, 0, true},
        {"qwen3a3b-T8192", 8192, 2048, 768, 128, 8, DMOE_DTYPE_BF16, 0, true},
        /* few rows per expert (v06: swap-AB) */
        {"mixtral-T128", 128, 4096, 14336, 8, 2, DMOE_DTYPE_BF16, 0, true},
        {"qwen3a3b-T512", 512, 2048, 768, 128, 8, DMOE_DTYPE_BF16, 0, true},
        {"olmoe-T512", 512, 2048, 1024, 64, 8, DMOE_DTYPE_BF16, 0, true},
        {"dsv3-T2048", 2048, 7168, 2048, 256, 8, DMOE_DTYPE_BF16, 0, true},
        {"qwen3a3b-T2048", 2048, 2048, 768, 128, 8, DMOE_DTYPE_BF16, 0, true},
        {"olmoe-T2048", 2048, 2048, 1024, 64, 8, DMOE_DTYPE_BF16, 0, true},
        {"dsv3-T16", 16, 7168, 2048, 256, 8, DMOE_DTYPE_BF16, 0, true},
        {"qwen3a3b-T128", 128, 2048, 768, 128, 8, DMOE_DTYPE_BF16, 0, true},
        {"mixtral-T16", 16, 4096, 14336, 8, 2, DMOE_DTYPE_BF16, 0, true},
    };
    if (perf) measure_dense();
    if (check)
        for (const shape &c : checks) {
            if (c.dtype == DMOE_DTYPE_BF16) run_case<__nv_bfloat16>(c);
            else run_case<__half>(c);
        }
    if (perf)
        for (const shape &c : perfs)
            if (!only || strstr(only, c.name)) run_case<__nv_bfloat16>(c);
    printf("%s: %d failures\n", g_failures ? "FAILED" : "PASSED", g_failures);
    cublasDestroy(g_blas);
    return g_failures ? 1 : 0;
}

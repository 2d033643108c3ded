/*
 * cli-util.c: the CLI's plumbing: the option walker, number conversions,
 * parallel random fills, memory, threads, the clock, and the seam where a
 * backend's device memory will plug in (host only for now).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- options ---- */

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
}

void cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "dmoe %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'dmoe %s --help'.\n", cmd);
    exit(2);
}

void cli_unknown_option(const cli_args *a) {
    cli_usage_error(a->cmd, "unknown option '%s'", a->name);
}

int cli_args_next(cli_args *a) {
    if (a->idx >= a->argc) return 0;
    const char *arg = a->argv[a->idx++];
    if (arg[0] != '-' || arg[1] == '\0')
        cli_usage_error(a->cmd, "unexpected argument '%s' (options start with --)", arg);
    const char *eq = strchr(arg, '=');
    a->inline_value = NULL;
    if (eq) {
        size_t n = (size_t)(eq - arg);
        if (n >= sizeof a->name_buf) cli_usage_error(a->cmd, "option too long: '%s'", arg);
        memcpy(a->name_buf, arg, n);
        a->name_buf[n] = '\0';
        a->name = a->name_buf;
        a->inline_value = eq + 1;
    } else {
        a->name = arg;
    }
    return 1;
}

int cli_is(const cli_args *a, const char *name) { return strcmp(a->name, name) == 0; }

const char *cli_value(cli_args *a) {
    if (a->inline_value) return a->inline_value;
    if (a->idx >= a->argc) cli_usage_error(a->cmd, "option '%s' needs a value", a->name);
    return a->argv[a->idx++];
}

void cli_no_value(cli_args *a) {
    if (a->inline_value) cli_usage_error(a->cmd, "option '%s' takes no value", a->name);
}

static int64_t parse_int(const cli_args *a, const char *v, int64_t min, int64_t max) {
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end != '\0')
        cli_usage_error(a->cmd, "option '%s' needs an integer, got '%s'", a->name, v);
    if (n < min || n > max)
        cli_usage_error(a->cmd, "option '%s' must be in [%lld, %lld], got %lld", a->name,
                        (long long)min, (long long)max, n);
    return (int64_t)n;
}

int64_t cli_value_int(cli_args *a, int64_t min, int64_t max) {
    return parse_int(a, cli_value(a), min, max);
}

double cli_value_double(cli_args *a, double min, double max) {
    const char *v = cli_value(a);
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end != '\0' || !isfinite(d))
        cli_usage_error(a->cmd, "option '%s' needs a number, got '%s'", a->name, v);
    if (d < min || d > max)
        cli_usage_error(a->cmd, "option '%s' must be in [%g, %g], got %g", a->name, min, max, d);
    return d;
}

int cli_value_int_list(cli_args *a, int64_t *out, int cap, int64_t min, int64_t max) {
    const char *v = cli_value(a);
    char buf[512];
    if (strlen(v) >= sizeof buf) cli_usage_error(a->cmd, "list for '%s' is too long", a->name);
    strcpy(buf, v);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (n == cap) cli_usage_error(a->cmd, "at most %d values for '%s'", cap, a->name);
        out[n++] = parse_int(a, tok, min, max);
    }
    if (n == 0) cli_usage_error(a->cmd, "option '%s' needs at least one value", a->name);
    return n;
}

/* ---- numbers ---- */

float cli_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t cli_f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float cli_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    uint32_t u =
        exp == 31 ? sign | 0x7f800000u | (man << 13) : sign | ((exp + 112u) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t cli_f32_to_f16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
    if (au >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    if (au < 0x38800000u) {                       /* below 2^-14: subnormal */
        float a;
        memcpy(&a, &au, sizeof a);
        return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f)); /* exact scaling, RNE */
    }
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13)); /* rebias 127 -> 15 */
}

float cli_load(const void *p, dmoe_dtype dt, int64_t idx) {
    switch (dt) {
    case DMOE_DTYPE_F32: return ((const float *)p)[idx];
    case DMOE_DTYPE_BF16: return cli_bf16_to_f32(((const uint16_t *)p)[idx]);
    case DMOE_DTYPE_F16: return cli_f16_to_f32(((const uint16_t *)p)[idx]);
    default: return NAN;
    }
}

void cli_poison(void *p, dmoe_dtype dt, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        for (int64_t i = 0; i < n; i++) ((float *)p)[i] = NAN;
    } else {
        const uint16_t nan16 = dt == DMOE_DTYPE_BF16 ? 0x7fc0u : 0x7e00u;
        for (int64_t i = 0; i < n; i++) ((uint16_t *)p)[i] = nan16;
    }
}

/* ---- memory, threads, time ---- */

void *cli_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 4096, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

void cli_free(void *p) { free(p); }

int cli_online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int64_t cli_llc_bytes(void) {
    /* sysfs first: in virtual machines glibc's sysconf may report the host's
     * cache (or the sum over sockets). */
    int best_level = 0;
    int64_t best = 0;
    for (int i = 0; i < 16; i++) {
        char path[96];
        int level = 0;
        long long kb = 0;
        char unit = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        FILE *f = fopen(path, "r");
        if (!f) break;
        int ok = fscanf(f, "%d", &level) == 1;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        f = fopen(path, "r");
        if (!f) continue;
        ok = ok && fscanf(f, "%lld%c", &kb, &unit) >= 1;
        fclose(f);
        if (ok && level > best_level) {
            best_level = level;
            best = (int64_t)kb * (unit == 'M' ? (1 << 20) : 1024);
        }
    }
    if (best > 0) return best;
#ifdef _SC_LEVEL3_CACHE_SIZE
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) return l3;
#endif
    return 0;
}

double cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct par_job {
    void (*fn)(void *arg, int64_t begin, int64_t end, int tid);
    void *arg;
    int64_t begin, end;
    int tid;
} par_job;

static void *par_main(void *p) {
    par_job *j = (par_job *)p;
    j->fn(j->arg, j->begin, j->end, j->tid);
    return NULL;
}

void cli_parallel_for(int n_threads, int64_t n,
                      void (*fn)(void *arg, int64_t begin, int64_t end, int tid), void *arg) {
    if (n_threads > n) n_threads = (int)(n > 0 ? n : 1);
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    par_job jobs[256];
    pthread_t th[256];
    int started[256] = {0};
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (par_job){fn, arg, n * t / n_threads, n * (t + 1) / n_threads, t};
        /* Thread 0 is the caller; a thread that cannot start runs inline. */
        if (t > 0) started[t] = pthread_create(&th[t], NULL, par_main, &jobs[t]) == 0;
    }
    par_main(&jobs[0]);
    for (int t = 1; t < n_threads; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else par_main(&jobs[t]);
    }
}

/* ---- random fills ---- */

typedef struct fill_job {
    void *dst;
    dmoe_dtype dt;
    double amp;
    uint64_t seed;
    float *copy;
} fill_job;

static void fill_range(void *arg, int64_t begin, int64_t end, int tid) {
    (void)tid;
    const fill_job *j = (const fill_job *)arg;
    for (int64_t i = begin; i < end; i++) {
        /* 24 random bits -> [0, 1) -> [-amp, amp) */
        double u = (double)(cli_rand_u64(j->seed, (uint64_t)i) >> 40) * (1.0 / 16777216.0);
        float v = (float)((2.0 * u - 1.0) * j->amp);
        switch (j->dt) {
        case DMOE_DTYPE_BF16: {
            uint16_t h = cli_f32_to_bf16(v);
            ((uint16_t *)j->dst)[i] = h;
            v = cli_bf16_to_f32(h);
            break;
        }
        case DMOE_DTYPE_F16: {
            uint16_t h = cli_f32_to_f16(v);
            ((uint16_t *)j->dst)[i] = h;
            v = cli_f16_to_f32(h);
            break;
        }
        default: ((float *)j->dst)[i] = v; break;
        }
        if (j->copy) j->copy[i] = v;
    }
}

void cli_fill_uniform(void *dst, dmoe_dtype dt, int64_t n, double amp, uint64_t seed,
                      float *f32_copy) {
    fill_job j = {dst, dt, amp, seed, f32_copy};
    /* Small arrays are not worth a thread start. */
    cli_parallel_for(n < (1 << 16) ? 1 : cli_online_cores(), n, fill_range, &j);
}

/* ---- device memory seam ----
 * Host backends read host memory, so "mirroring" returns the host array. The
 * cuda backend gets cudaMalloc'd copies on device 0, and its timing uses CUDA
 * events on the default stream (cli_timer_*). */
#ifdef DMOE_HAVE_CUDA
#include <cuda_runtime.h>

static int cuda_fail(const char *what, cudaError_t err) {
    fprintf(stderr, "dmoe: %s: %s\n", what, cudaGetErrorString(err));
    return -1;
}
#endif

int cli_backend_is_host(dmoe_backend be) { return be != DMOE_BACKEND_CUDA; }

int cli_device_of(dmoe_backend be) { return cli_backend_is_host(be) ? DMOE_DEVICE_HOST : 0; }

#ifndef DMOE_HAVE_CUDA
static int no_cuda_path(void) {
    fprintf(stderr, "dmoe: this build has no CUDA backend\n");
    return -1;
}
#endif

int cli_device_mirror(dmoe_backend be, const void *host, size_t bytes, void **out) {
    if (cli_backend_is_host(be)) {
        *out = (void *)host;
        return 0;
    }
#ifdef DMOE_HAVE_CUDA
    cudaError_t err = cudaMalloc(out, bytes ? bytes : 16);
    if (err != cudaSuccess) return cuda_fail("cudaMalloc", err);
    err = cudaMemcpy(*out, host, bytes, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) {
        cudaFree(*out);
        return cuda_fail("cudaMemcpy to the device", err);
    }
    return 0;
#else
    (void)bytes;
    return no_cuda_path();
#endif
}

int cli_device_output(dmoe_backend be, void *host, size_t bytes, void **out) {
    if (cli_backend_is_host(be)) {
        *out = host;
        return 0;
    }
#ifdef DMOE_HAVE_CUDA
    cudaError_t err = cudaMalloc(out, bytes ? bytes : 16);
    if (err != cudaSuccess) return cuda_fail("cudaMalloc", err);
    /* poison: a backend that leaves elements unwritten shows NaN, not old data */
    err = cudaMemset(*out, 0xff, bytes);
    return err == cudaSuccess ? 0 : cuda_fail("cudaMemset", err);
#else
    (void)bytes;
    return no_cuda_path();
#endif
}

int cli_device_download(dmoe_backend be, void *host, const void *dev, size_t bytes) {
    if (cli_backend_is_host(be)) {
        if (host != dev) memcpy(host, dev, bytes);
        return 0;
    }
#ifdef DMOE_HAVE_CUDA
    cudaError_t err = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
    return err == cudaSuccess ? 0 : cuda_fail("cudaMemcpy from the device", err);
#else
    return no_cuda_path();
#endif
}

void cli_device_release(dmoe_backend be, void *dev, const void *host) {
    (void)host; /* host backends own nothing here */
    if (cli_backend_is_host(be) || !dev) return;
#ifdef DMOE_HAVE_CUDA
    cudaFree(dev);
#endif
}

int cli_device_sync(dmoe_backend be) {
    if (cli_backend_is_host(be)) return 0;
#ifdef DMOE_HAVE_CUDA
    cudaError_t err = cudaDeviceSynchronize();
    return err == cudaSuccess ? 0 : cuda_fail("cudaDeviceSynchronize", err);
#else
    return no_cuda_path();
#endif
}

#ifdef DMOE_HAVE_CUDA
static cudaEvent_t timer_events[2];
#endif

void cli_timer_start(dmoe_backend be) {
#ifdef DMOE_HAVE_CUDA
    if (!cli_backend_is_host(be)) {
        if (!timer_events[0]) {
            cudaEventCreate(&timer_events[0]);
            cudaEventCreate(&timer_events[1]);
        }
        cudaEventRecord(timer_events[0], 0);
    }
#else
    (void)be;
#endif
}

double cli_timer_stop(dmoe_backend be, double host_t0) {
#ifdef DMOE_HAVE_CUDA
    if (!cli_backend_is_host(be)) {
        float ms = 0.f;
        cudaEventRecord(timer_events[1], 0);
        if (cudaEventSynchronize(timer_events[1]) != cudaSuccess ||
            cudaEventElapsedTime(&ms, timer_events[0], timer_events[1]) != cudaSuccess)
            return -1.0;
        return ms * 1e-3;
    }
#else
    (void)be;
#endif
    return cli_now_s() - host_t0;
}

double cli_device_copy_gbs(dmoe_backend be) {
#ifdef DMOE_HAVE_CUDA
    if (!cli_backend_is_host(be)) {
        /* bytes read + written by a 1 GB device-to-device copy, median of 7 */
        const size_t n = (size_t)1 << 30;
        void *a = NULL, *b = NULL;
        if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) {
            cudaFree(a);
            return 0.0;
        }
        cudaMemset(a, 1, n);
        double t[7];
        for (int i = 0; i < 8; i++) {
            cli_timer_start(be);
            cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
            double s = cli_timer_stop(be, 0.0);
            if (i > 0) t[i - 1] = s;
        }
        cudaFree(a);
        cudaFree(b);
        for (int i = 0; i < 7; i++)
            for (int j = i + 1; j < 7; j++)
                if (t[j] < t[i]) {
                    double x = t[i];
                    t[i] = t[j];
                    t[j] = x;
                }
        return t[3] > 0 ? 2.0 * (double)n / t[3] / 1e9 : 0.0;
    }
#else
    (void)be;
#endif
    return 0.0;
}

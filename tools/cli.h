/*
 * cli.h: what the dmoe CLI's commands share (the files in tools/).
 *
 *   options      a small argv walker: "--name value" or "--name=value"; a bad
 *                or unknown option prints a clear message and exits 2
 *   shapes       cli_shape: one MoE layer's sizes, routing and dtype, parsed
 *                from the same options in `check` and `bench`
 *   random data  counter-based splitmix64, so a value depends only on (seed,
 *                index) and arrays fill in parallel, identically for any
 *                thread count; weights are scaled like real models
 *                (uniform, variance 1/fan_in) so activations stay O(1)
 *   device       where a backend's tensors live. Host backends use host
 *                memory directly; the CUDA path is a TODO (see cli-util.c)
 *   threads      a parallel-for over contiguous ranges, and a monotonic clock
 *
 * The CLI uses only the public API (include/dmoe.h): it is a front end like
 * any other program, and is allowed to exit on errors.
 */
#ifndef DMOE_CLI_H
#define DMOE_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dmoe.h"

/* ---- options ---- */
typedef struct cli_args {
    const char *cmd; /* "check", "bench": prefixes every message */
    int argc;
    char **argv;
    int idx;          /* next argv element to read */
    const char *name; /* the current option, e.g. "--hidden" (without "=value") */
    char name_buf[64];
    const char *inline_value; /* the part after '=' or NULL */
} cli_args;

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv);
/* Advances to the next option; 0 at the end. A word that is not an option is
 * a usage error (the commands take none). */
int cli_args_next(cli_args *a);
/* Is the current option `name`? */
int cli_is(const cli_args *a, const char *name);
/* The current option's value; exits 2 when it has none. */
const char *cli_value(cli_args *a);
int64_t cli_value_int(cli_args *a, int64_t min, int64_t max);
double cli_value_double(cli_args *a, double min, double max);
/* A comma-separated list of integers in [min, max]; returns the count (<= cap). */
int cli_value_int_list(cli_args *a, int64_t *out, int cap, int64_t min, int64_t max);
/* Rejects an option that takes no value but was given one ("--bias=1"). */
void cli_no_value(cli_args *a);
/* Prints "dmoe CMD: <message>" and a pointer to --help, then exits 2. */
void cli_usage_error(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3), noreturn))
#endif
    ;
void cli_unknown_option(const cli_args *a)
#if defined(__GNUC__)
    __attribute__((noreturn))
#endif
    ;

/* ---- shapes ---- */
typedef struct cli_shape {
    int64_t hidden;     /* H */
    int64_t ffn;        /* F */
    int32_t n_experts;  /* E */
    int32_t top_k;      /* K */
    int32_t n_shared;   /* S */
    int64_t shared_ffn; /* Fs; 0 = F */
    int shared_gate;    /* 1: sigmoid gate on the shared output */
    dmoe_scoring scoring;
    int renormalize;
    int32_t n_group;
    int32_t topk_group;
    float scaling;    /* routed_scaling_factor */
    int bias;         /* correction bias */
    dmoe_dtype dtype; /* activations and weights */
} cli_shape;

/* H=1024 F=512 E=16 K=4, softmax with renormalisation, bf16. */
void cli_shape_default(cli_shape *s);
/* Handles the shape options common to check and bench (see CLI_SHAPE_HELP);
 * returns 1 when the current option was one of them. --dtype is left to the
 * commands (check accepts a list). */
int cli_shape_parse(cli_args *a, cli_shape *s);
/* Parses "f32" | "bf16" | "f16"; -1 when unknown. */
int cli_dtype_parse(const char *name, dmoe_dtype *out);
/* The layer description of a shape, for max_tokens tokens. */
void cli_shape_desc(const cli_shape *s, int64_t max_tokens, dmoe_layer_desc *d);
/* "H=2880 F=1408 E=60 K=6" (+ " S=1xFs[g]") */
void cli_shape_str(const cli_shape *s, char *buf, size_t len);
/* "softmax,renorm" / "sigmoid,bias,g8/4,x2.5" */
void cli_routing_str(const cli_shape *s, char *buf, size_t len);
/* Bytes of every weight of the layer. */
size_t cli_shape_weight_bytes(const cli_shape *s);

#define CLI_SHAPE_HELP                                                                     \
    "  --hidden H  --ffn F  --experts E  --topk K    layer sizes\n"                        \
    "  --shared N  --shared-ffn FS  --shared-gate    N shared experts of width FS\n"       \
    "                                                (default F), optionally gated by\n"   \
    "                                                sigmoid(gate . x) (Qwen2-MoE)\n"      \
    "  --scoring softmax|sigmoid  --no-renorm        router scores; renormalisation of\n"  \
    "                                                the top-k weights is on by default\n" \
    "  --groups G  --topk-groups g                   grouped top-k (DeepSeek-V3)\n"        \
    "  --scale-factor s  --bias                      routed_scaling_factor, correction\n"  \
    "                                                bias (used for selection only)\n"

/* ---- random data ---- */
/* The i-th value of the stream `seed` (splitmix64 of a counter). */
static inline uint64_t cli_rand_u64(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* A seed for sub-stream `tag` of `seed`, so arrays never share values. */
static inline uint64_t cli_seed_mix(uint64_t seed, uint64_t tag) { return cli_rand_u64(seed, tag); }

/* Fills n elements of dtype with uniform values in [-amp, amp), in parallel.
 * When f32_copy is given, it receives the values after rounding to dtype. */
void cli_fill_uniform(void *dst, dmoe_dtype dt, int64_t n, double amp, uint64_t seed,
                      float *f32_copy);

/* Host copies of one layer's weights (views for dmoe_weights), 4 KiB aligned. */
typedef struct cli_weights {
    void *router;      /* (E, H) */
    void *w13;         /* (E, 2F, H) */
    void *w2;          /* (E, H, F) */
    float *bias;       /* (E) or NULL */
    void *shared_w13;  /* (S, 2Fs, H) or NULL */
    void *shared_w2;   /* (S, H, Fs) or NULL */
    void *shared_gate; /* (1, H) or NULL */
    float *router_f32; /* (E, H) the router as the backends see it, when asked for */
} cli_weights;

/* Allocates and fills every weight of shape s; returns 0 or -1 (out of memory,
 * with a message on stderr). */
int cli_weights_create(const cli_shape *s, uint64_t seed, int keep_router_f32, cli_weights *w);
void cli_weights_destroy(cli_weights *w);
/* The dmoe_weights views of w (host memory). */
dmoe_weights cli_weights_views(const cli_weights *w);
/* The views of w on backend be's device (cli_device_mirror of each); 0 or -1. */
int cli_weights_on_backend(dmoe_backend be, const cli_shape *s, const cli_weights *w,
                           dmoe_weights *out);
void cli_weights_release(dmoe_backend be, dmoe_weights *v, const cli_weights *w);

/* ---- numbers ---- */
float cli_bf16_to_f32(uint16_t h);
uint16_t cli_f32_to_bf16(float f);
float cli_f16_to_f32(uint16_t h);
uint16_t cli_f32_to_f16(float f);
float cli_load(const void *p, dmoe_dtype dt, int64_t idx);
/* A quiet NaN in dtype everywhere: "not written" until a backend writes it. */
void cli_poison(void *p, dmoe_dtype dt, int64_t n);

/* ---- memory, threads, time ---- */
void *cli_alloc(size_t bytes); /* 4 KiB aligned, NULL on failure */
void cli_free(void *p);
int cli_online_cores(void);
/* Bytes of the last-level cache of cpu 0; 0 when unknown. */
int64_t cli_llc_bytes(void);
/* Calls fn(arg, begin, end, thread_idx) over [0, n) split into n_threads
 * contiguous ranges, on n_threads threads (the caller being one). */
void cli_parallel_for(int n_threads, int64_t n,
                      void (*fn)(void *arg, int64_t begin, int64_t end, int tid), void *arg);
double cli_now_s(void); /* CLOCK_MONOTONIC */

/* ---- device memory for a backend's tensors ----
 * Host backends read host memory, so "mirroring" a host array returns it as
 * it is; the cuda backend gets device copies (cudaMalloc + cudaMemcpy). */
int cli_device_of(dmoe_backend be); /* the dmoe_tensor.device value */
int cli_backend_is_host(dmoe_backend be);
/* A backend-side buffer with the contents of host[0..bytes); *out = host on
 * host backends (no copy). */
int cli_device_mirror(dmoe_backend be, const void *host, size_t bytes, void **out);
/* A backend-side buffer the backend writes; on host backends *out = host. */
int cli_device_output(dmoe_backend be, void *host, size_t bytes, void **out);
/* Brings dev back into host (a no-op when they are the same memory). */
int cli_device_download(dmoe_backend be, void *host, const void *dev, size_t bytes);
void cli_device_release(dmoe_backend be, void *dev, const void *host);
/* Waits for the backend's work to finish (host backends are synchronous). */
int cli_device_sync(dmoe_backend be);
/* Times work on the default stream with CUDA events (cuda) or the host clock
 * started at host_t0 (host backends); seconds, or < 0 on a CUDA failure. */
void cli_timer_start(dmoe_backend be);
double cli_timer_stop(dmoe_backend be, double host_t0);
/* Device copy bandwidth in GB/s (bytes read + written), 0 for host backends. */
double cli_device_copy_gbs(dmoe_backend be);

/* ---- presets (presets.c) ---- */
typedef struct cli_preset {
    const char *name;
    const char *note;
    cli_shape shape; /* dtype left at the default */
} cli_preset;

const cli_preset *cli_preset_find(const char *name);
void cli_preset_list(FILE *f); /* one line per preset */
/* Shrinks s by about `scale` (see presets.c for the rule); returns 0, or -1
 * with a message when scale < 1. */
int cli_shape_scale(cli_shape *s, double scale, char *note, size_t note_len);

/* ---- commands ---- */
int cli_cmd_check(int argc, char **argv);
int cli_cmd_bench(int argc, char **argv);

#endif /* DMOE_CLI_H */

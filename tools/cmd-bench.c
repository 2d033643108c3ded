/*
 * cmd-bench.c: `dmoe bench`, forward timings against the hardware floor.
 *
 * For each token count T (one "cell"): a few warm-up forwards, then timed
 * forwards that rotate over several input buffers (different tokens route to
 * different experts, so the same expert weights are not re-read from cache
 * every time). Each repetition's bytes come from the routing of the input it
 * used, counted on the host from dmoe_route before timing:
 *   bytes = unique experts touched * 3*H*F*es  + shared experts 3*H*Fs*es * S
 *         + router E*H*es (+ shared gate H*es) + x and y 2*T*H*es
 *   flops = 2*T*K*3*H*F + 2*T*H*E (router) + 2*T*S*3*H*Fs
 * floor = max(bytes / bandwidth, flops / peak); "% of floor" is floor / time.
 * On the CPU the bandwidth is measured in the same run (a timed read of a
 * buffer much larger than the last-level cache, on the bench's threads,
 * median of 5); the peak FLOP rate is not measured (a GEMM peak is not cheap
 * to find), so --peak-gflops defaults to 0 = unknown and the floor is bytes.
 * Medians over repetitions are reported. Times are CLOCK_MONOTONIC around
 * the call for host backends (they return when the work is done) and CUDA
 * events around it for cuda, whose bytes floor uses the device copy
 * bandwidth measured in the same run (bytes read + written).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

enum { MAX_CELLS = 32, MAX_INPUTS = 16 };

typedef struct bench_opts {
    cli_shape shape;
    const char *preset;
    double scale;
    char scale_note[160];
    int64_t tokens[MAX_CELLS];
    int n_tokens;
    dmoe_backend backend;
    int n_threads;
    int reps, warmup, n_inputs;
    double max_seconds;
    int json;
    double peak_gflops;   /* 0: unknown */
    double bandwidth_gbs; /* 0: measure */
    int64_t bw_mb;
    uint64_t seed;
    const char *model_dir; /* --model: weights from a Hugging Face model directory */
    int32_t model_layer;   /* --layer: decoder layer index; -1 = the first MoE layer */
    int32_t offload_slots; /* --offload N: experts in host memory, N of them cached on the GPU */
    int miss_policy;       /* --miss-policy: dmoe_miss_policy for --offload */
    int dtype_given;
} bench_opts;

typedef struct bench_row {
    int64_t tokens;
    int reps;
    double median_ms, min_ms;
    double tokens_per_s, gbs, gflops;
    double experts;      /* unique experts touched, mean over the inputs used */
    double bytes, flops; /* mean per forward */
    double floor_ms;     /* median */
    double frac;         /* median of floor / time */
    const char *floor_kind;
} bench_row;

/* ---- helpers ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xalloc(size_t bytes) {
    void *p = cli_alloc(bytes);
    if (!p) {
        fprintf(stderr, "dmoe bench: out of memory (%.1f MB)\n", (double)bytes / 1e6);
        exit(1);
    }
    return p;
}

/* ---- memory bandwidth ---- */

typedef struct bw_job {
    const uint64_t *buf;
    uint64_t sums[256]; /* one per thread: stores keep the loads alive */
} bw_job;

static void bw_range(void *arg, int64_t begin, int64_t end, int tid) {
    bw_job *j = (bw_job *)arg;
    /* Eight independent sums let the compiler vectorise and overlap loads. */
    uint64_t s[8] = {0};
    int64_t i = begin;
    for (; i + 8 <= end; i += 8)
        for (int k = 0; k < 8; k++) s[k] += j->buf[i + k];
    for (; i < end; i++) s[0] += j->buf[i];
    j->sums[tid] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

/* Read bandwidth in GB/s with n_threads threads over a buffer of mb MB. */
static double measure_bandwidth(int n_threads, int64_t mb) {
    const size_t bytes = (size_t)mb << 20;
    const int64_t n = (int64_t)(bytes / sizeof(uint64_t));
    bw_job *j = (bw_job *)calloc(1, sizeof *j);
    uint64_t *buf = (uint64_t *)cli_alloc(bytes);
    if (!j || !buf) {
        fprintf(stderr, "dmoe bench: cannot allocate %lld MB to measure bandwidth\n",
                (long long)mb);
        exit(1);
    }
    memset(buf, 1, bytes); /* page faults out of the way */
    j->buf = buf;
    double gbs[5];
    cli_parallel_for(n_threads, n, bw_range, j); /* warm-up */
    for (int r = 0; r < 5; r++) {
        double t0 = cli_now_s();
        cli_parallel_for(n_threads, n, bw_range, j);
        gbs[r] = (double)bytes / (cli_now_s() - t0) / 1e9;
    }
    cli_free(buf);
    free(j);
    return median(gbs, 5);
}

/* ---- one cell ---- */

typedef struct bench_env {
    const bench_opts *o;
    const cli_shape *s;
    dmoe_layer *layer;
    dmoe_context *ctx;
    void *x[MAX_INPUTS]; /* (T_max, H) each, on the backend */
    void *y;             /* (T_max, H) on the backend */
    double bandwidth_gbs;
} bench_env;

/* Unique experts the first T tokens of input i route to. */
static int experts_touched(bench_env *env, int i, int64_t T, int32_t *ids, float *wts,
                           unsigned char *seen) {
    const dmoe_backend be = env->o->backend;
    const int dev = cli_device_of(be);
    const int64_t K = env->s->top_k, E = env->s->n_experts;
    void *dids = NULL, *dw = NULL;
    if (cli_device_output(be, ids, (size_t)(T * K) * 4, &dids) ||
        cli_device_output(be, wts, (size_t)(T * K) * 4, &dw))
        exit(1);
    dmoe_tensor tx = dmoe_tensor_2d(env->x[i], env->s->dtype, T, env->s->hidden, dev);
    dmoe_tensor ti = dmoe_tensor_2d(dids, DMOE_DTYPE_I32, T, K, dev);
    dmoe_tensor tw = dmoe_tensor_2d(dw, DMOE_DTYPE_F32, T, K, dev);
    if (dmoe_route(env->layer, &tx, &ti, &tw, NULL) != DMOE_OK || cli_device_sync(be) ||
        cli_device_download(be, ids, dids, (size_t)(T * K) * 4)) {
        fprintf(stderr, "dmoe bench: dmoe_route: %s\n", dmoe_context_last_error(env->ctx));
        exit(1);
    }
    cli_device_release(be, dids, ids);
    cli_device_release(be, dw, wts);
    memset(seen, 0, (size_t)E);
    int n = 0;
    for (int64_t p = 0; p < T * K; p++) {
        if (ids[p] >= 0 && ids[p] < E && !seen[ids[p]]) {
            seen[ids[p]] = 1;
            n++;
        }
    }
    return n;
}

/* One timed forward. Host backends are synchronous, so the clock around the
 * call is the time; the cuda backend is timed with events on its stream. */
static double timed_forward(bench_env *env, int i, int64_t T) {
    const dmoe_backend be = env->o->backend;
    const int dev = cli_device_of(be);
    dmoe_tensor tx = dmoe_tensor_2d(env->x[i], env->s->dtype, T, env->s->hidden, dev);
    dmoe_tensor ty = dmoe_tensor_2d(env->y, env->s->dtype, T, env->s->hidden, dev);
    double t0 = cli_now_s();
    cli_timer_start(be);
    dmoe_status st = dmoe_forward(env->layer, &tx, &ty, NULL);
    double t = cli_timer_stop(be, t0);
    if (st == DMOE_OK && (t < 0 || cli_device_sync(be))) st = DMOE_ERR_CUDA;
    if (st != DMOE_OK) {
        fprintf(stderr, "dmoe bench: dmoe_forward: %s\n", dmoe_context_last_error(env->ctx));
        exit(1);
    }
    return t;
}

static void run_cell(bench_env *env, int64_t T, bench_row *row) {
    const bench_opts *o = env->o;
    const cli_shape *s = env->s;
    const double es = (double)dmoe_dtype_size(s->dtype);
    const double H = (double)s->hidden, F = (double)s->ffn, E = (double)s->n_experts;
    const double Fs = (double)(s->shared_ffn ? s->shared_ffn : s->ffn), S = (double)s->n_shared;
    const int n_in = o->n_inputs;

    int32_t *ids = (int32_t *)xalloc((size_t)(T * s->top_k) * 4);
    float *wts = (float *)xalloc((size_t)(T * s->top_k) * 4);
    unsigned char *seen = (unsigned char *)xalloc((size_t)s->n_experts);
    double bytes[MAX_INPUTS];
    const double fixed_bytes = S * 3.0 * H * Fs * es + E * H * es +
                               (s->shared_gate ? H * es : 0.0) + 2.0 * (double)T * H * es;
    const double flops = 2.0 * (double)T * (double)s->top_k * 3.0 * H * F +
                         2.0 * (double)T * H * E + 2.0 * (double)T * S * 3.0 * H * Fs;
    int touched[MAX_INPUTS];
    for (int i = 0; i < n_in; i++) {
        touched[i] = experts_touched(env, i, T, ids, wts, seen);
        bytes[i] = (double)touched[i] * 3.0 * H * F * es + fixed_bytes;
    }

    fprintf(stderr, "dmoe bench: T=%lld: %d warm-up, up to %d timed forwards (%.0f s cap)\n",
            (long long)T, o->warmup, o->reps, o->max_seconds);
    for (int w = 0; w < o->warmup; w++) timed_forward(env, w % n_in, T);

    double *ms = (double *)xalloc(sizeof(double) * (size_t)o->reps);
    double *floor_ms = (double *)xalloc(sizeof(double) * (size_t)o->reps);
    double *frac = (double *)xalloc(sizeof(double) * (size_t)o->reps);
    double *gbs = (double *)xalloc(sizeof(double) * (size_t)o->reps);
    double used_bytes = 0.0, used_experts = 0.0;
    int n_flop_floor = 0, r = 0;
    const double start = cli_now_s();
    for (; r < o->reps; r++) {
        const int i = r % n_in;
        double t = timed_forward(env, i, T);
        double f_bytes = bytes[i] / (env->bandwidth_gbs * 1e9);
        double f_flops = o->peak_gflops > 0 ? flops / (o->peak_gflops * 1e9) : 0.0;
        ms[r] = t * 1e3;
        floor_ms[r] = fmax(f_bytes, f_flops) * 1e3;
        n_flop_floor += f_flops > f_bytes;
        frac[r] = floor_ms[r] / ms[r];
        gbs[r] = bytes[i] / t / 1e9;
        used_bytes += bytes[i];
        used_experts += touched[i];
        if (r + 1 >= 3 && cli_now_s() - start > o->max_seconds) {
            r++;
            break;
        }
    }
    row->tokens = T;
    row->reps = r;
    row->bytes = used_bytes / r;
    row->experts = used_experts / r;
    row->flops = flops;
    row->floor_kind = n_flop_floor * 2 > r ? "flops" : "bytes";
    row->gbs = median(gbs, r);
    row->frac = median(frac, r);
    row->floor_ms = median(floor_ms, r);
    row->median_ms = median(ms, r); /* sorts ms: min is ms[0] after */
    row->min_ms = ms[0];
    row->tokens_per_s = (double)T / (row->median_ms * 1e-3);
    row->gflops = flops / (row->median_ms * 1e-3) / 1e9;
    cli_free(ms);
    cli_free(floor_ms);
    cli_free(frac);
    cli_free(gbs);
    cli_free(ids);
    cli_free(wts);
    cli_free(seen);
}

/* ---- options and output ---- */

static void bench_help(FILE *f) {
    fprintf(f,
            "usage: dmoe bench [--preset NAME [--scale S]] [shape options] [--tokens T1,T2,..]\n"
            "                  [--backend NAME] [--threads N] [--dtype D] [--reps N] [--warmup N]\n"
            "                  [--json] [--peak-gflops X] [--bandwidth-gbs X]\n"
            "\n"
            "Times dmoe_forward on random weights and inputs and prints, per token count: the\n"
            "median and best time, tokens/s, GB/s of the bytes the routing actually touched\n"
            "(unique experts x 3*H*F, shared experts, router, x and y), GFLOP/s\n"
            "(2*T*K*3*H*F + router 2*T*H*E + shared), and the fraction of the floor,\n"
            "floor = max(bytes / bandwidth, FLOPs / peak). On the CPU the read bandwidth is\n"
            "measured at the start of the run. Progress goes to stderr.\n"
            "\n"
            "presets (one MoE layer each; the default is qwen3-30b-a3b):\n");
    cli_preset_list(f);
    fprintf(f,
            "\n"
            "options:\n"
            "  --preset NAME        a model's layer; shape options given as well override it\n"
            "  --model DIR          a Hugging Face model directory (dmoe info DIR lists its\n"
            "                       MoE layers; dmoe synth DIR writes one): its real weights\n"
            "                       and routing (cuda: the layer is copied to the GPU)\n"
            "  --layer N            the decoder layer of --model (default: the first MoE one)\n"
            "  --offload N          with --model on cuda: the routed experts stay in pinned host\n"
            "                       memory, N of them cached on the GPU (expert cache)\n"
            "  --miss-policy P      with --offload: gpu (default: missed experts copied over\n"
            "                       PCIe), cpu (run on the host CPU, --threads) or auto\n"
            "                       (per forward, from measured PCIe and CPU bandwidths)\n"
            "  --scale S            shrink the layer about S times to fit a small machine:\n"
            "                       E is divided by S (kept >= K and valid for grouped top-k);\n"
            "                       what E cannot absorb divides F (and the shared FFN). H, K\n"
            "                       and the routing are kept, so the per-expert work is the\n"
            "                       model's. qwen3-30b-a3b --scale 4: 32 experts, 302 MB bf16\n"
            "  --tokens T1,T2,..    token counts (default 1,16,128)\n"
            "  --backend NAME       cpu or cuda (default: cuda if available, else cpu)\n"
            "  --threads N          CPU threads (default: all cores)\n"
            "  --dtype D            f32, bf16 (default) or f16, for weights and activations\n"
            "  --reps N             timed forwards per token count (default 20)\n"
            "  --warmup N           untimed forwards first (default 3)\n"
            "  --max-seconds S      stop a token count's timed forwards after S seconds, with at\n"
            "                       least 3 done (default 10)\n"
            "  --inputs N           input buffers rotated over (default 4, at most %d)\n"
            "  --seed N             random seed (default 1)\n"
            "  --json               one JSON object on stdout instead of the table\n"
            "  --peak-gflops X      the backend's peak FLOP rate; 0 (default) = unknown, so the\n"
            "                       floor is bytes only (a CPU GEMM peak is not measured)\n"
            "  --bandwidth-gbs X    use X GB/s for the bytes floor instead of measuring\n"
            "  --bandwidth-mb N     buffer for the bandwidth measurement (default 512 MB)\n"
            "shape options:\n" CLI_SHAPE_HELP,
            MAX_INPUTS);
}

/* The preset must apply before the options that override it, wherever it is. */
static const char *find_preset(int argc, char **argv) {
    const char *name = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) name = argv[++i];
        else if (strncmp(argv[i], "--preset=", 9) == 0) name = argv[i] + 9;
    }
    return name;
}

static void parse(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->scale = 1.0;
    o->reps = 20;
    o->warmup = 3;
    o->n_inputs = 4;
    o->max_seconds = 10.0;
    o->bw_mb = 512;
    o->seed = 1;
    o->model_layer = -1;
    o->backend = dmoe_backend_available(DMOE_BACKEND_CUDA) ? DMOE_BACKEND_CUDA : DMOE_BACKEND_CPU;
    dmoe_dtype dtype = DMOE_DTYPE_BF16;
    int shape_given = 0, scale_given = 0;
    cli_shape_default(&o->shape);
    o->preset = find_preset(argc, argv);
    if (o->preset) {
        const cli_preset *p = cli_preset_find(o->preset);
        if (!p) cli_usage_error("bench", "unknown preset '%s' (see dmoe bench --help)", o->preset);
        o->shape = p->shape;
    }
    cli_args a;
    cli_args_init(&a, "bench", argc, argv);
    while (cli_args_next(&a)) {
        if (cli_is(&a, "--help") || cli_is(&a, "-h")) {
            bench_help(stdout);
            exit(0);
        } else if (cli_shape_parse(&a, &o->shape)) {
            shape_given = 1;
        } else if (cli_is(&a, "--preset")) {
            (void)cli_value(&a); /* applied above */
        } else if (cli_is(&a, "--model")) {
            o->model_dir = cli_value(&a);
        } else if (cli_is(&a, "--layer")) {
            o->model_layer = (int32_t)cli_value_int(&a, 0, 1000000);
        } else if (cli_is(&a, "--offload")) {
            o->offload_slots = (int32_t)cli_value_int(&a, 1, 1000000);
        } else if (cli_is(&a, "--miss-policy")) {
            const char *v = cli_value(&a);
            if (strcmp(v, "gpu") == 0) o->miss_policy = DMOE_MISS_GPU;
            else if (strcmp(v, "cpu") == 0) o->miss_policy = DMOE_MISS_CPU;
            else if (strcmp(v, "auto") == 0) o->miss_policy = DMOE_MISS_AUTO;
            else cli_usage_error("bench", "--miss-policy: expected gpu, cpu or auto");
        } else if (cli_is(&a, "--scale")) {
            o->scale = cli_value_double(&a, 1.0, 1e6);
            scale_given = 1;
        } else if (cli_is(&a, "--tokens")) {
            o->n_tokens = cli_value_int_list(&a, o->tokens, MAX_CELLS, 1, DMOE_MAX_TOKENS);
        } else if (cli_is(&a, "--backend")) {
            const char *v = cli_value(&a);
            if (dmoe_backend_from_name(v, &o->backend) != DMOE_OK)
                cli_usage_error("bench", "unknown backend '%s' (cpu-ref, cpu, cuda)", v);
        } else if (cli_is(&a, "--threads")) {
            o->n_threads = (int)cli_value_int(&a, 0, 1024);
        } else if (cli_is(&a, "--dtype")) {
            const char *v = cli_value(&a);
            if (cli_dtype_parse(v, &dtype) != 0)
                cli_usage_error("bench", "--dtype must be f32, bf16 or f16, got '%s'", v);
            o->dtype_given = 1;
        } else if (cli_is(&a, "--reps")) {
            o->reps = (int)cli_value_int(&a, 1, 100000);
        } else if (cli_is(&a, "--warmup")) {
            o->warmup = (int)cli_value_int(&a, 0, 100000);
        } else if (cli_is(&a, "--max-seconds")) {
            o->max_seconds = cli_value_double(&a, 0.0, 1e6);
        } else if (cli_is(&a, "--inputs")) {
            o->n_inputs = (int)cli_value_int(&a, 1, MAX_INPUTS);
        } else if (cli_is(&a, "--seed")) {
            o->seed = (uint64_t)cli_value_int(&a, 0, INT64_MAX);
        } else if (cli_is(&a, "--json")) {
            cli_no_value(&a);
            o->json = 1;
        } else if (cli_is(&a, "--peak-gflops")) {
            o->peak_gflops = cli_value_double(&a, 0.0, 1e9);
        } else if (cli_is(&a, "--bandwidth-gbs")) {
            o->bandwidth_gbs = cli_value_double(&a, 1e-3, 1e6);
        } else if (cli_is(&a, "--bandwidth-mb")) {
            o->bw_mb = cli_value_int(&a, 1, 1 << 20);
        } else {
            cli_unknown_option(&a);
        }
    }
    if (o->model_dir && (o->preset || shape_given || scale_given))
        cli_usage_error("bench", "--model takes the layer's shape from the model directory: drop %s",
                        o->preset ? "--preset" : scale_given ? "--scale" : "the shape options");
    if (!o->preset && !shape_given) {
        o->preset = "qwen3-30b-a3b";
        o->shape = cli_preset_find(o->preset)->shape;
    }
    o->shape.dtype = dtype;
    if (cli_shape_scale(&o->shape, o->scale, o->scale_note, sizeof o->scale_note) != 0)
        cli_usage_error("bench", "%s", o->scale_note);
    if (o->offload_slots > 0 && !o->model_dir)
        cli_usage_error("bench", "--offload needs --model (the experts of a model directory)");
    if (o->miss_policy != DMOE_MISS_GPU && o->offload_slots <= 0)
        cli_usage_error("bench", "--miss-policy needs --offload (it decides about experts the GPU cache lacks)");
    if (!o->n_tokens) {
        static const int64_t def[] = {1, 16, 128};
        memcpy(o->tokens, def, sizeof def);
        o->n_tokens = 3;
    }
}

static void print_table(const bench_opts *o, const bench_row *rows, int n) {
    printf("%7s %10s %10s %11s %8s %8s %8s %9s %6s %8s\n", "tokens", "median ms", "best ms",
           "tokens/s", "GB/s", "GFLOP/s", "experts", "floor ms", "floor", "% floor");
    for (int i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        printf("%7lld %10.3f %10.3f %11.1f %8.1f %8.1f %8.1f %9.3f %6s %7.1f%%\n",
               (long long)r->tokens, r->median_ms, r->min_ms, r->tokens_per_s, r->gbs, r->gflops,
               r->experts, r->floor_ms, r->floor_kind, 100.0 * r->frac);
    }
    (void)o;
}

static void print_json(const bench_opts *o, const bench_env *env, const char *bw_source,
                       const bench_row *rows, int n) {
    const cli_shape *s = &o->shape;
    printf("{\n  \"version\": \"%s\",\n  \"backend\": \"%s\",\n  \"threads\": %d,\n",
           dmoe_version_string(), dmoe_backend_name(o->backend),
           (int)dmoe_context_n_threads(env->ctx));
    printf("  \"preset\": %s%s%s,\n  \"scale\": %g,\n  \"offload_slots\": %d,\n", o->preset ? "\"" : "",
           o->preset ? o->preset : "null", o->preset ? "\"" : "", o->scale, (int)o->offload_slots);
    printf("  \"shape\": {\"hidden\": %lld, \"ffn\": %lld, \"experts\": %d, \"topk\": %d, "
           "\"shared\": %d, \"shared_ffn\": %lld, \"shared_gate\": %s, \"scoring\": \"%s\", "
           "\"renormalize\": %s, \"groups\": %d, \"topk_groups\": %d, \"scale_factor\": %g, "
           "\"bias\": %s, \"dtype\": \"%s\"},\n",
           (long long)s->hidden, (long long)s->ffn, (int)s->n_experts, (int)s->top_k,
           (int)s->n_shared,
           (long long)(s->n_shared ? (s->shared_ffn ? s->shared_ffn : s->ffn) : 0),
           s->shared_gate ? "true" : "false",
           s->scoring == DMOE_SCORING_SIGMOID ? "sigmoid" : "softmax",
           s->renormalize ? "true" : "false", (int)s->n_group, (int)s->topk_group,
           (double)s->scaling, s->bias ? "true" : "false", dmoe_dtype_name(s->dtype));
    printf("  \"weight_bytes\": %zu,\n  \"bandwidth_gbs\": %.3f,\n  \"bandwidth_source\": \"%s\",\n"
           "  \"peak_gflops\": %g,\n  \"seed\": %llu,\n  \"rows\": [\n",
           cli_shape_weight_bytes(s), env->bandwidth_gbs, bw_source, o->peak_gflops,
           (unsigned long long)o->seed);
    for (int i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        printf(
            "    {\"tokens\": %lld, \"reps\": %d, \"median_ms\": %.6f, \"best_ms\": %.6f, "
            "\"tokens_per_s\": %.3f, \"gbs\": %.3f, \"gflops\": %.3f, \"experts_touched\": %.3f, "
            "\"bytes\": %.0f, \"flops\": %.0f, \"floor\": \"%s\", \"floor_ms\": %.6f, "
            "\"fraction_of_floor\": %.4f}%s\n",
            (long long)r->tokens, r->reps, r->median_ms, r->min_ms, r->tokens_per_s, r->gbs,
            r->gflops, r->experts, r->bytes, r->flops, r->floor_kind, r->floor_ms, r->frac,
            i + 1 < n ? "," : "");
    }
    printf("  ]\n}\n");
}

/* --model: the shape and routing of one MoE layer of a model directory. */
static int model_shape(bench_opts *o, dmoe_model **model, int32_t *layer_idx, dmoe_layer_desc *d) {
    if (dmoe_model_open(o->model_dir, model) != DMOE_OK) {
        fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(NULL));
        return -1;
    }
    const int32_t n = dmoe_model_n_moe_layers(*model);
    int found = 0;
    for (int32_t i = 0; i < n && !found; i++) {
        if (dmoe_model_moe_layer(*model, i, layer_idx, d) != DMOE_OK) break;
        found = o->model_layer < 0 || *layer_idx == o->model_layer;
    }
    if (!found) {
        fprintf(stderr, "dmoe bench: decoder layer %d of %s is not an MoE layer (dmoe info %s lists them)\n",
                (int)o->model_layer, o->model_dir, o->model_dir);
        return -1;
    }
    cli_shape *s = &o->shape;
    s->hidden = d->hidden;
    s->ffn = d->ffn;
    s->n_experts = d->n_experts;
    s->top_k = d->top_k;
    s->n_shared = d->n_shared_experts;
    s->shared_ffn = d->shared_ffn;
    s->shared_gate = d->shared_gate == DMOE_SHARED_GATE_SIGMOID;
    s->scoring = d->routing.scoring;
    s->renormalize = d->routing.renormalize;
    s->n_group = d->routing.n_group;
    s->topk_group = d->routing.topk_group;
    s->scaling = d->routing.routed_scaling_factor;
    s->bias = d->routing.use_correction_bias;
    if (!o->dtype_given) s->dtype = d->weight_dtype;
    d->act_dtype = d->weight_dtype = s->dtype;
    snprintf(o->scale_note, sizeof o->scale_note, "%s layer %d (%s)%s", o->model_dir, (int)*layer_idx,
             dmoe_model_arch(*model),
             o->offload_slots > 0 ? ", experts offloaded to host memory (the floor ignores PCIe)" : "");
    o->preset = "model";
    return 0;
}

int cli_cmd_bench(int argc, char **argv) {
    bench_opts o;
    parse(argc, argv, &o);
    dmoe_model *model = NULL;
    int32_t model_layer = -1;
    dmoe_layer_desc model_desc;
    if (o.model_dir && model_shape(&o, &model, &model_layer, &model_desc) != 0) return 1;
    const cli_shape *s = &o.shape;
    if (!dmoe_backend_available(o.backend)) {
        fprintf(stderr, "dmoe bench: backend '%s' is not available in this build or machine\n",
                dmoe_backend_name(o.backend));
        return 1;
    }
    int64_t max_t = 1;
    for (int i = 0; i < o.n_tokens; i++) max_t = o.tokens[i] > max_t ? o.tokens[i] : max_t;
    const size_t wbytes = cli_shape_weight_bytes(s);
    const size_t xbytes = (size_t)(max_t * s->hidden) * dmoe_dtype_size(s->dtype);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double phys = pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
    /* an offloaded load holds the loader's copy and the cache's pinned copy of the experts */
    const size_t wneed = o.offload_slots > 0 ? 2 * wbytes : wbytes;
    if (phys > 0 && (double)(wneed + xbytes * (size_t)(o.n_inputs + 1)) > 0.8 * phys) {
        fprintf(stderr,
                "dmoe bench: this layer needs %.1f GB of host memory for its weights%s, more than 80%% "
                "of the %.1f GB here; shrink it with --scale\n",
                (double)wneed / 1e9, o.offload_slots > 0 ? " (two copies while offloading)" : "", phys / 1e9);
        return 1;
    }

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = o.backend;
    cd.n_threads = o.n_threads;
    bench_env env;
    memset(&env, 0, sizeof env);
    env.o = &o;
    env.s = s;
    if (dmoe_context_create(&cd, &env.ctx) != DMOE_OK) {
        fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    const int n_threads = (int)dmoe_context_n_threads(env.ctx);
    char shape[96], routing[96];
    cli_shape_str(s, shape, sizeof shape);
    cli_routing_str(s, routing, sizeof routing);
    /* The layer first: it validates the shape before any slow step. */
    dmoe_layer_desc d;
    cli_shape_desc(s, max_t, &d);
    if (model) {
        /* the model's layer, weights loaded (copied into dmoe's layout) */
        model_desc.max_tokens = max_t;
        fprintf(stderr, "dmoe bench: loading layer %d of %s\n", (int)model_layer, o.model_dir);
        const dmoe_status ls =
            o.offload_slots > 0
                ? dmoe_model_load_layer_offloaded(model, env.ctx, model_layer, &model_desc, o.offload_slots, &env.layer)
                : dmoe_model_load_layer(model, env.ctx, model_layer, &model_desc, &env.layer);
        if (ls != DMOE_OK) {
            fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(env.ctx));
            return 1;
        }
        if (o.miss_policy != DMOE_MISS_GPU) {
            if (dmoe_layer_set_miss_policy(env.layer, (dmoe_miss_policy)o.miss_policy, o.n_threads) != DMOE_OK) {
                fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(env.ctx));
                return 1;
            }
            dmoe_miss_info mi;
            if (dmoe_layer_miss_info(env.layer, &mi) == DMOE_OK)
                fprintf(stderr, "dmoe bench: miss policy %s: h2d %.1f GB/s, cpu %.1f GB/s + %.0f us (%d threads)\n",
                        o.miss_policy == DMOE_MISS_CPU ? "cpu" : "auto", mi.h2d_gbs, mi.cpu_gbs, mi.cpu_fixed_us,
                        (int)mi.n_threads);
        }
    } else if (dmoe_layer_create(env.ctx, &d, &env.layer) != DMOE_OK) {
        fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(env.ctx));
        return 1;
    }
    /* Before the weights exist, so the two buffers never add up in memory. */
    const char *bw_source = "given";
    env.bandwidth_gbs = o.bandwidth_gbs;
    if (env.bandwidth_gbs <= 0 && !cli_backend_is_host(o.backend)) {
        fprintf(stderr, "dmoe bench: measuring device copy bandwidth (1 GB, read + write)\n");
        env.bandwidth_gbs = cli_device_copy_gbs(o.backend);
        bw_source = "measured (device copy)";
    }
    if (env.bandwidth_gbs <= 0) {
        fprintf(stderr, "dmoe bench: measuring read bandwidth (%lld MB, %d threads)\n",
                (long long)o.bw_mb, n_threads);
        env.bandwidth_gbs = measure_bandwidth(n_threads, o.bw_mb);
        bw_source = "measured";
    }
    cli_weights w;
    dmoe_weights views;
    memset(&w, 0, sizeof w);
    memset(&views, 0, sizeof views);
    if (!model) {
        fprintf(stderr, "dmoe bench: filling %.1f MB of weights\n", (double)wbytes / 1e6);
        if (cli_weights_create(s, cli_seed_mix(o.seed, 1), 0, &w) != 0) return 1;
        if (cli_weights_on_backend(o.backend, s, &w, &views) != 0) return 1;
        if (dmoe_layer_set_weights(env.layer, &views) != DMOE_OK) {
            fprintf(stderr, "dmoe bench: %s\n", dmoe_context_last_error(env.ctx));
            return 1;
        }
    }
    void *host_x[MAX_INPUTS];
    for (int i = 0; i < o.n_inputs; i++) {
        host_x[i] = xalloc(xbytes);
        cli_fill_uniform(host_x[i], s->dtype, max_t * s->hidden, sqrt(3.0),
                         cli_seed_mix(o.seed, 100 + (uint64_t)i), NULL);
        if (cli_device_mirror(o.backend, host_x[i], xbytes, &env.x[i])) return 1;
    }
    void *host_y = xalloc(xbytes);
    if (cli_device_output(o.backend, host_y, xbytes, &env.y)) return 1;

    if (!o.json) {
        printf("dmoe bench: %s%s%s\n", o.preset ? o.preset : "custom shape",
               o.scale_note[0] ? ", " : "", o.scale_note);
        printf("layer:   %s, %s, %s, weights %.1f MB\n", shape, routing, dmoe_dtype_name(s->dtype),
               (double)wbytes / 1e6);
        printf("backend: %s, %d threads, seed %llu, %d inputs rotated\n", dmoe_backend_name(o.backend),
               o.backend == DMOE_BACKEND_CPU_REF ? 1 : n_threads, /* cpu-ref runs on one */
               (unsigned long long)o.seed, o.n_inputs);
        printf("floor:   read bandwidth %.1f GB/s (%s", env.bandwidth_gbs, bw_source);
        if (!strcmp(bw_source, "measured"))
            printf(": %lld MB, %d threads, median of 5", (long long)o.bw_mb, n_threads);
        if (o.peak_gflops > 0) printf("); peak %.1f GFLOP/s (given)\n", o.peak_gflops);
        else printf("); peak GFLOP/s unknown, so the floor is bytes only (--peak-gflops)\n");
        fflush(stdout);
    }
    bench_row rows[MAX_CELLS];
    for (int i = 0; i < o.n_tokens; i++) run_cell(&env, o.tokens[i], &rows[i]);
    if (o.json) print_json(&o, &env, bw_source, rows, o.n_tokens);
    else print_table(&o, rows, o.n_tokens);
    if (o.offload_slots > 0 && !o.json) {
        /* what the expert cache (and the miss policy) did over every forward above, warm-ups included */
        dmoe_expert_cache_stats cs;
        if (dmoe_layer_expert_cache_stats(env.layer, &cs) == DMOE_OK)
            printf("expert cache: %d slots, hits %llu, misses %llu (installs %llu, direct reads %llu), evictions "
                   "%llu, %.1f MB over PCIe, GEMM stalled on installs %.1f us in all\n",
                   (int)cs.n_slots, (unsigned long long)cs.hits, (unsigned long long)cs.misses,
                   (unsigned long long)cs.installs, (unsigned long long)cs.direct_reads,
                   (unsigned long long)cs.evictions, (double)cs.bytes_h2d / 1e6, (double)cs.stall_ns * 1e-3);
        dmoe_miss_info mi;
        if (o.miss_policy != DMOE_MISS_GPU && dmoe_layer_miss_info(env.layer, &mi) == DMOE_OK)
            printf("miss policy: forwards with misses on the CPU %llu, on the GPU %llu; CPU pairs %llu, CPU experts "
                   "%llu; refresh installs %llu\n",
                   (unsigned long long)mi.cpu_forwards, (unsigned long long)mi.gpu_forwards,
                   (unsigned long long)mi.cpu_pairs, (unsigned long long)mi.cpu_experts,
                   (unsigned long long)mi.refresh_installs);
    }

    for (int i = 0; i < o.n_inputs; i++) {
        cli_device_release(o.backend, env.x[i], host_x[i]);
        cli_free(host_x[i]);
    }
    cli_device_release(o.backend, env.y, host_y);
    cli_free(host_y);
    dmoe_layer_destroy(env.layer);
    if (!model) {
        cli_weights_release(o.backend, &views, &w);
        cli_weights_destroy(&w);
    }
    dmoe_model_close(model);
    dmoe_context_destroy(env.ctx);
    return 0;
}

/*
 * dmoe.c: the dmoe command line tool: dispatch, usage and `dmoe info`.
 *
 *   dmoe info [PATH]   build and machine; with PATH, a model directory or a
 *                      .safetensors file (cmd-model.c)
 *   dmoe check         every backend against cpu-ref (cmd-check.c)
 *   dmoe bench         timings against the memory/compute floor (cmd-bench.c)
 *   dmoe synth DIR     a synthetic model directory (cmd-model.c)
 *
 * Exit status: 0 success, 1 failure (a check failed, an error), 2 usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cmd-model.h"

static void usage(FILE *f) {
    fprintf(f,
            "dmoe %s: Mixture-of-Experts layers on CPUs and NVIDIA Hopper GPUs\n"
            "\n"
            "usage: dmoe COMMAND [options]    (dmoe COMMAND --help for its options)\n"
            "\n"
            "commands:\n"
            "  info [PATH]   version, build, backends, CPU; with PATH: a model directory's MoE\n"
            "                layers or a .safetensors file's tensors\n"
            "  check         run every available backend against the cpu-ref oracle on random\n"
            "                inputs over a grid of shapes; exit 1 on any mismatch\n"
            "  bench         time forward passes of a model preset or an explicit shape, with\n"
            "                GB/s, GFLOP/s and the fraction of the hardware floor\n"
            "  synth DIR     write a synthetic model directory (config.json + safetensors)\n"
            "\n"
            "examples:\n"
            "  dmoe check --quick\n"
            "  dmoe bench --preset qwen3-30b-a3b --scale 4 --tokens 1,16,128\n",
            dmoe_version_string());
}

/* ---- info ---- */

static void info_help(FILE *f) {
    fprintf(f, "usage: dmoe info [PATH]\n"
               "Without PATH: version, build options, backends and whether each is usable here,\n"
               "CPU threads, caches, memory and instruction sets.\n"
               "With PATH: a model directory's MoE layers, or a .safetensors file's tensors.\n");
}

static void print_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    printf("isa:        %s%s%s%s%s\n", __builtin_cpu_supports("avx2") ? "avx2 " : "",
           __builtin_cpu_supports("fma") ? "fma " : "",
           __builtin_cpu_supports("avx512f") ? "avx512f " : "",
           __builtin_cpu_supports("avx512bw") ? "avx512bw " : "",
#if __GNUC__ >= 11
           __builtin_cpu_supports("avx512bf16") ? "avx512bf16" : ""
#else
           ""
#endif
    );
#else
    printf("isa:        (not reported on this architecture)\n");
#endif
    const char *isa = getenv("DMOE_CPU_ISA");
    printf("            DMOE_CPU_ISA=%s\n",
           isa && *isa ? isa : "(unset: the best this CPU supports)");
}

static int cmd_info(int argc, char **argv) {
    if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
        info_help(stdout);
        return 0;
    }
    if (argc >= 1 && argv[0][0] == '-') cli_usage_error("info", "unknown option '%s'", argv[0]);
    if (argc > 1) cli_usage_error("info", "takes at most one PATH");
    if (argc == 1) return dmoe_cli_info_path(argv[0]);

    const char *ver = dmoe_version_string();
    printf("dmoe        %s\n", ver);
    printf("build:      CUDA backend compiled in: %s\n", strstr(ver, "cuda: yes") ? "yes" : "no");
    dmoe_safetensors *st = NULL;
    static const char probe[1] = {0};
    int store = dmoe_safetensors_open_memory(probe, sizeof probe, &st) != DMOE_ERR_UNSUPPORTED;
    dmoe_safetensors_close(st);
    printf("            model files (safetensors, cJSON): %s\n", store ? "yes" : "no");
    printf("backends:\n");
    for (int b = 0; b < DMOE_BACKEND_COUNT; b++) {
        const dmoe_backend be = (dmoe_backend)b;
        int avail = dmoe_backend_available(be);
        printf("  %-8s  %s", dmoe_backend_name(be), avail ? "available" : "not available");
        if (avail && cli_backend_is_host(be)) {
            dmoe_context_desc cd;
            dmoe_context_desc_init(&cd);
            cd.backend = be;
            dmoe_context *ctx = NULL;
            if (dmoe_context_create(&cd, &ctx) == DMOE_OK) {
                if (be == DMOE_BACKEND_CPU)
                    printf(", %d threads", (int)dmoe_context_n_threads(ctx));
                dmoe_context_destroy(ctx);
            } else {
                printf(" (but: %s)", dmoe_context_last_error(NULL));
            }
        }
        if (be == DMOE_BACKEND_CPU_REF) printf("  (the oracle: float64 accumulation, one thread)");
        if (be == DMOE_BACKEND_CUDA && !avail)
            printf(strstr(ver, "cuda: yes") ? "  (compiled in; no device found)"
                                            : "  (not compiled in)");
        printf("\n");
    }
    printf("cpu:        %d online cores", cli_online_cores());
    int64_t llc = cli_llc_bytes();
    if (llc > 0) printf(", last-level cache %lld MiB", (long long)(llc >> 20));
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
        printf(", memory %.1f GiB", (double)pages * (double)page / (1 << 30));
    printf("\n");
    print_isa();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("dmoe %s\n", dmoe_version_string());
        return 0;
    }
    if (strcmp(cmd, "info") == 0) return cmd_info(argc - 2, argv + 2);
    if (strcmp(cmd, "check") == 0) return cli_cmd_check(argc - 2, argv + 2);
    if (strcmp(cmd, "bench") == 0) return cli_cmd_bench(argc - 2, argv + 2);
    if (strcmp(cmd, "synth") == 0) return dmoe_cli_synth(argc - 2, argv + 2);
    fprintf(stderr, "dmoe: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}

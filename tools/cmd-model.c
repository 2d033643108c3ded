/*
 * cmd-model.c: the CLI's model-file commands.
 *   dmoe info PATH        a model directory's MoE layers, or a .safetensors file's tensors;
 *                         exits 1 with the reason on a defective file
 *   dmoe synth DIR [...]  writes a synthetic model directory (random bf16 weights)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd-model.h"
#include "dmoe.h"

static const char *scoring_name(dmoe_scoring s) { return s == DMOE_SCORING_SIGMOID ? "sigmoid" : "softmax"; }

static int info_file(const char *path) {
    dmoe_safetensors *st = NULL;
    if (dmoe_safetensors_open(path, &st) != DMOE_OK) {
        fprintf(stderr, "dmoe info: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    int64_t n = dmoe_safetensors_count(st);
    size_t total = 0;
    printf("%s: %lld tensors\n", path, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        dmoe_st_tensor_info t;
        dmoe_safetensors_get(st, i, &t);
        char shape[160] = "";
        size_t used = 0;
        for (int32_t d = 0; d < t.n_dims && used < sizeof shape; d++)
            used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                                     (long long)t.shape[d]);
        printf("  %-64s %-5s (%s)  %zu bytes\n", t.name, t.dtype_name, shape, t.n_bytes);
        total += t.n_bytes;
    }
    printf("  total %zu bytes\n", total);
    dmoe_safetensors_close(st);
    return 0;
}

static int info_dir(const char *dir) {
    dmoe_model *m = NULL;
    if (dmoe_model_open(dir, &m) != DMOE_OK) {
        fprintf(stderr, "dmoe info: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    int32_t n = dmoe_model_n_moe_layers(m);
    printf("%s: %s, %d MoE layers\n", dir, dmoe_model_arch(m), (int)n);
    printf("  %5s %6s %6s %5s %3s %8s %6s %6s %5s %6s %6s %s\n", "layer", "hidden", "ffn", "E", "K",
           "scoring", "renorm", "groups", "bias", "scale", "shared", "dtype");
    for (int32_t i = 0; i < n; i++) {
        int32_t L;
        dmoe_layer_desc d;
        dmoe_model_moe_layer(m, i, &L, &d);
        char groups[32], shared[48];
        snprintf(groups, sizeof groups, "%d/%d", (int)d.routing.topk_group, (int)d.routing.n_group);
        snprintf(shared, sizeof shared, "%dx%lld%s", (int)d.n_shared_experts, (long long)d.shared_ffn,
                 d.shared_gate == DMOE_SHARED_GATE_SIGMOID ? " gated" : "");
        printf("  %5d %6lld %6lld %5d %3d %8s %6s %6s %5s %6g %6s %s\n", (int)L, (long long)d.hidden,
               (long long)d.ffn, (int)d.n_experts, (int)d.top_k, scoring_name(d.routing.scoring),
               d.routing.renormalize ? "yes" : "no", d.routing.n_group > 1 ? groups : "-",
               d.routing.use_correction_bias ? "yes" : "no", (double)d.routing.routed_scaling_factor,
               d.n_shared_experts ? shared : "-", dmoe_dtype_name(d.weight_dtype));
    }
    dmoe_model_close(m);
    return 0;
}

int dmoe_cli_info_path(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "dmoe info: cannot open '%s'\n", path);
        return 1;
    }
    return S_ISDIR(sb.st_mode) ? info_dir(path) : info_file(path);
}

static void synth_usage(FILE *f) {
    fprintf(f,
            "usage: dmoe synth DIR [--arch A] [--layers N] [--hidden H] [--ffn F] [--experts E]\n"
            "                      [--topk K] [--shared-ffn FS] [--seed S]\n"
            "Writes DIR/config.json and DIR/model.safetensors with random bf16 weights.\n"
            "  --arch     mixtral | qwen2_moe | qwen3_moe (default) | olmoe | deepseek_v3\n"
            "  defaults:  2 layers, hidden 512, ffn 192, 32 experts, top-8 (a qwen3-30b-a3b\n"
            "             layer scaled down 4x in H, F and E); qwen2_moe and deepseek_v3 get one\n"
            "             shared expert (--shared-ffn, default 2*ffn); deepseek_v3 routes with\n"
            "             sigmoid, bias, 4 groups (top 2) and scaling 2.5\n");
}

int dmoe_cli_synth(int argc, char **argv) {
    const char *dir = NULL, *arch = "qwen3_moe";
    long layers = 2, seed = 1;
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = 512;
    d.ffn = 192;
    d.n_experts = 32;
    d.top_k = 8;
    long long shared_ffn = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            synth_usage(stdout);
            return 0;
        }
        if (a[0] != '-') {
            if (dir) {
                fprintf(stderr, "dmoe synth: more than one directory given\n");
                return 2;
            }
            dir = a;
            continue;
        }
        if (!v) {
            fprintf(stderr, "dmoe synth: %s needs a value\n", a);
            return 2;
        }
        char *end = NULL;
        errno = 0;
        long long n = strtoll(v, &end, 10);
        int numeric = end != v && *end == '\0' && errno == 0;
        /* the int32 fields: a larger value must not wrap into a small, valid one */
        int numeric32 = numeric && n >= INT32_MIN && n <= INT32_MAX;
        if (strcmp(a, "--arch") == 0) arch = v;
        else if (strcmp(a, "--layers") == 0 && numeric) layers = (long)n;
        else if (strcmp(a, "--hidden") == 0 && numeric) d.hidden = n;
        else if (strcmp(a, "--ffn") == 0 && numeric) d.ffn = n;
        else if (strcmp(a, "--experts") == 0 && numeric32) d.n_experts = (int32_t)n;
        else if (strcmp(a, "--topk") == 0 && numeric32) d.top_k = (int32_t)n;
        else if (strcmp(a, "--shared-ffn") == 0 && numeric) shared_ffn = n;
        else if (strcmp(a, "--seed") == 0 && numeric) seed = (long)n;
        else {
            fprintf(stderr, "dmoe synth: unknown option or bad value: %s %s\n", a, v);
            return 2;
        }
        i++;
    }
    if (!dir) {
        synth_usage(stderr);
        return 2;
    }
    if (strcmp(arch, "qwen2_moe") == 0 || strcmp(arch, "deepseek_v3") == 0) {
        d.n_shared_experts = 1;
        d.shared_ffn = shared_ffn ? shared_ffn : 2 * d.ffn;
    }
    if (strcmp(arch, "qwen2_moe") == 0) d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    if (strcmp(arch, "olmoe") == 0 || strcmp(arch, "qwen2_moe") == 0) d.routing.renormalize = 0;
    if (strcmp(arch, "deepseek_v3") == 0) {
        d.routing.scoring = DMOE_SCORING_SIGMOID;
        d.routing.use_correction_bias = 1;
        d.routing.routed_scaling_factor = 2.5f;
        if (d.n_experts % 4 == 0 && d.top_k <= 2 * (d.n_experts / 4)) {
            d.routing.n_group = 4;
            d.routing.topk_group = 2;
        }
    }
    if (layers < 1 || layers > 1000) {
        fprintf(stderr, "dmoe synth: --layers must be in [1, 1000]\n");
        return 2;
    }
    if (dmoe_model_write_synthetic(dir, arch, &d, (int32_t)layers, (uint64_t)seed) != DMOE_OK) {
        fprintf(stderr, "dmoe synth: %s\n", dmoe_context_last_error(NULL));
        return 1;
    }
    printf("wrote %s: %s, %ld MoE layers of H=%lld F=%lld E=%d K=%d\n", dir, arch, layers,
           (long long)d.hidden, (long long)d.ffn, (int)d.n_experts, (int)d.top_k);
    return 0;
}

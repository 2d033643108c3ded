/*
 * presets.c: the MoE layers of known models, for `dmoe bench --preset`, and
 * the --scale rule that shrinks one to fit a small machine.
 *
 * Shapes are one MoE layer of the model's Hugging Face config.json. Where a
 * model's FFN differs from dmoe's SwiGLU (gpt-oss: clamped SwiGLU with
 * biases), the preset keeps the shape, which is what sets the cost.
 *
 * --scale S: memory is dominated by the E routed experts, so S divides E,
 * which keeps what sets the per-token cost (H, F, K and the routing):
 *   E' = max(ceil(E / S), E_min), E_min = K, or n_group * ceil(K / topk_group)
 *        with grouped top-k (E' rounded up to a multiple of n_group), so the
 *        routing stays valid;
 *   when E cannot absorb all of S (E' * S > E), the rest, r = S * E' / E,
 *   divides F and the shared FFN width (rounded up to a multiple of 8, at
 *   least 8), so the weights shrink by about S in every case.
 * Example: qwen3-30b-a3b --scale 4 keeps H=2048 F=768 K=8 and has 32 experts:
 * 302 MB of bf16 weights instead of 1.2 GB.
 */
#include <math.h>
#include <string.h>

#include "cli.h"

/* Fields left out are 0: no shared experts, no groups, no bias. */
static const cli_preset presets[] = {
    {"mixtral-8x7b", "softmax top-2 of 8",
     {.hidden = 4096, .ffn = 14336, .n_experts = 8, .top_k = 2, .scoring = DMOE_SCORING_SOFTMAX,
      .renormalize = 1, .scaling = 1.0f, .dtype = DMOE_DTYPE_BF16}},
    {"qwen3-30b-a3b", "softmax top-8 of 128, renormalised",
     {.hidden = 2048, .ffn = 768, .n_experts = 128, .top_k = 8, .scoring = DMOE_SCORING_SOFTMAX,
      .renormalize = 1, .scaling = 1.0f, .dtype = DMOE_DTYPE_BF16}},
    {"deepseek-v3", "sigmoid + bias, top-8 of 256 in 4 of 8 groups, x2.5, 1 shared expert",
     {.hidden = 7168, .ffn = 2048, .n_experts = 256, .top_k = 8, .scoring = DMOE_SCORING_SIGMOID,
      .renormalize = 1, .bias = 1, .n_group = 8, .topk_group = 4, .scaling = 2.5f,
      .n_shared = 1, .shared_ffn = 2048, .dtype = DMOE_DTYPE_BF16}},
    {"olmoe-1b-7b", "softmax top-8 of 64, not renormalised",
     {.hidden = 2048, .ffn = 1024, .n_experts = 64, .top_k = 8, .scoring = DMOE_SCORING_SOFTMAX,
      .renormalize = 0, .scaling = 1.0f, .dtype = DMOE_DTYPE_BF16}},
    {"gpt-oss-20b", "top-4 of 32 (shape only: plain SwiGLU, no clamp or biases)",
     {.hidden = 2880, .ffn = 2880, .n_experts = 32, .top_k = 4, .scoring = DMOE_SCORING_SOFTMAX,
      .renormalize = 1, .scaling = 1.0f, .dtype = DMOE_DTYPE_BF16}},
};
enum { N_PRESETS = sizeof presets / sizeof presets[0] };

const cli_preset *cli_preset_find(const char *name) {
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

void cli_preset_list(FILE *f) {
    for (int i = 0; i < N_PRESETS; i++) {
        char shape[96];
        cli_shape_str(&presets[i].shape, shape, sizeof shape);
        fprintf(f, "    %-14s %-32s %s\n", presets[i].name, shape, presets[i].note);
    }
}

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int cli_shape_scale(cli_shape *s, double scale, char *note, size_t note_len) {
    if (!(scale >= 1.0)) {
        snprintf(note, note_len, "--scale must be >= 1, got %g", scale);
        return -1;
    }
    if (note_len) note[0] = '\0';
    if (scale == 1.0) return 0;
    const int grouped = s->n_group > 1;
    int64_t e_min = s->top_k;
    if (grouped) {
        int64_t tg = s->topk_group > 0 ? s->topk_group : 1;
        e_min = (int64_t)s->n_group * ((s->top_k + tg - 1) / tg);
    }
    int64_t e = (int64_t)ceil((double)s->n_experts / scale);
    if (e < e_min) e = e_min;
    if (grouped) e = round_up(e, s->n_group);
    if (e > s->n_experts) e = s->n_experts;
    double rest = scale * (double)e / (double)s->n_experts;
    const int64_t old_e = s->n_experts, old_f = s->ffn;
    s->n_experts = (int32_t)e;
    if (rest > 1.0 + 1e-9) {
        s->ffn = round_up((int64_t)ceil((double)s->ffn / rest), 8);
        if (s->ffn < 8) s->ffn = 8;
        if (s->n_shared && s->shared_ffn) {
            s->shared_ffn = round_up((int64_t)ceil((double)s->shared_ffn / rest), 8);
            if (s->shared_ffn < 8) s->shared_ffn = 8;
        }
    }
    snprintf(note, note_len, "--scale %g: E %lld -> %lld, F %lld -> %lld", scale, (long long)old_e,
             (long long)s->n_experts, (long long)old_f, (long long)s->ffn);
    return 0;
}

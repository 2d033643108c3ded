/*
 * synth.c: writes a synthetic Hugging Face model directory (config.json and
 * model.safetensors) with random bf16 weights, in the naming scheme of one of
 * the architectures model.c loads. It is the README's built-in default model
 * and the loader's test fixture. Only the MoE blocks are written (no
 * embeddings or attention): the loader needs nothing else.
 *
 * Weights are uniform in +-1/sqrt(fan_in) so activations stay O(1) through a
 * layer; the router gets a larger scale so routing is not a coin toss of ties.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "../dmoe-impl.h"

typedef struct synth_tensor {
    char name[200];
    int64_t rows, cols;  /* rows == 0: 1-D of cols */
    int f32;             /* 1: float32 (the correction bias), else bf16 */
    float scale;
} synth_tensor;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float uniform_pm1(uint64_t *s) { return (float)((splitmix(s) >> 40) * (2.0 / 16777216.0) - 1.0); }

typedef struct tensor_list {
    synth_tensor *t;
    int n, cap;
} tensor_list;

static int add(tensor_list *l, const char *name, int64_t rows, int64_t cols, float scale, int f32) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        synth_tensor *t = (synth_tensor *)realloc(l->t, (size_t)cap * sizeof *t);
        if (!t) return 0;
        l->t = t;
        l->cap = cap;
    }
    synth_tensor *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->scale = scale;
    t->f32 = f32;
    return 1;
}

static size_t tensor_bytes(const synth_tensor *t) {
    return (size_t)((t->rows ? t->rows : 1) * t->cols) * (t->f32 ? 4u : 2u);
}

static const char *const archs[] = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", NULL};

static dmoe_status build_list(const char *arch, const dmoe_layer_desc *d, int32_t n_layers,
                              tensor_list *l) {
    const int mixtral = strcmp(arch, "mixtral") == 0;
    const char *moe = mixtral ? "block_sparse_moe" : "mlp";
    const char *pg = mixtral ? "w1" : "gate_proj", *pu = mixtral ? "w3" : "up_proj",
               *pd = mixtral ? "w2" : "down_proj";
    const float sh = 1.0f / sqrtf((float)d->hidden), sf = 1.0f / sqrtf((float)d->ffn);
    char name[200];
    for (int32_t L = 0; L < n_layers; L++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.gate.weight", (int)L, moe);
        if (!add(l, name, d->n_experts, d->hidden, 4.0f * sh, 0)) goto oom;
        if (d->routing.use_correction_bias) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", (int)L);
            if (!add(l, name, 0, d->n_experts, 0.05f, 1)) goto oom;
        }
        for (int32_t e = 0; e < d->n_experts; e++) {
            const char *p[3] = {pg, pu, pd};
            for (int j = 0; j < 3; j++) {
                snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", (int)L, moe, (int)e, p[j]);
                if (!add(l, name, j < 2 ? d->ffn : d->hidden, j < 2 ? d->hidden : d->ffn, j < 2 ? sh : sf, 0))
                    goto oom;
            }
        }
        if (d->n_shared_experts > 0) {
            const char *shared = strcmp(arch, "qwen2_moe") == 0 ? "shared_expert" : "shared_experts";
            const char *p[3] = {pg, pu, pd};
            for (int j = 0; j < 3; j++) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.%s.%s.weight", (int)L, shared, p[j]);
                if (!add(l, name, j < 2 ? d->shared_ffn : d->hidden, j < 2 ? d->hidden : d->shared_ffn,
                         j < 2 ? sh : 1.0f / sqrtf((float)d->shared_ffn), 0))
                    goto oom;
            }
            if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert_gate.weight", (int)L);
                if (!add(l, name, 1, d->hidden, sh, 0)) goto oom;
            }
        }
    }
    return DMOE_OK;
oom:
    return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "synthetic model: tensor list");
}

/* Routing and shared-expert fields each architecture can express. */
static dmoe_status check_arch(const char *arch, const dmoe_layer_desc *d) {
    const int ds = strcmp(arch, "deepseek_v3") == 0, q2 = strcmp(arch, "qwen2_moe") == 0;
    const int mixtral = strcmp(arch, "mixtral") == 0;
    const dmoe_routing_desc *r = &d->routing;
    if (!ds && (r->scoring != DMOE_SCORING_SOFTMAX || r->n_group > 1 || r->use_correction_bias ||
                r->routed_scaling_factor != 1.0f))
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "%s routes with plain softmax top-k; use deepseek_v3 for sigmoid, groups, "
                           "bias or scaling", arch);
    if (ds && !r->use_correction_bias)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "deepseek_v3 always has e_score_correction_bias (the loader requires it): set "
                           "routing.use_correction_bias");
    if (mixtral && !r->renormalize)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "mixtral always renormalises");
    if (d->n_shared_experts > 1 || (d->n_shared_experts == 1 && !ds && !q2))
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "%s has no shared experts (qwen2_moe and deepseek_v3 have one)", arch);
    if ((d->shared_gate == DMOE_SHARED_GATE_SIGMOID) != (q2 && d->n_shared_experts == 1))
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "a sigmoid shared-expert gate goes with qwen2_moe's shared expert only");
    if (ds && d->n_shared_experts == 1 && d->shared_ffn % d->ffn != 0)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "deepseek_v3 shared_ffn must be a multiple of ffn (n_shared_experts * ffn)");
    return DMOE_OK;
}

static dmoe_status write_config(const char *dir, const char *arch, const dmoe_layer_desc *d,
                                int32_t n_layers) {
    const dmoe_routing_desc *r = &d->routing;
    cJSON *c = cJSON_CreateObject();
    if (!c) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "config.json");
    const int mixtral = strcmp(arch, "mixtral") == 0, olmoe = strcmp(arch, "olmoe") == 0;
    const int ds = strcmp(arch, "deepseek_v3") == 0;
    cJSON_AddStringToObject(c, "model_type", arch);
    cJSON_AddNumberToObject(c, "hidden_size", (double)d->hidden);
    cJSON_AddNumberToObject(c, "num_hidden_layers", n_layers);
    cJSON_AddNumberToObject(c, "num_experts_per_tok", d->top_k);
    cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
    if (mixtral || olmoe) {
        cJSON_AddNumberToObject(c, "intermediate_size", (double)d->ffn);
        cJSON_AddNumberToObject(c, mixtral ? "num_local_experts" : "num_experts", d->n_experts);
    } else {
        cJSON_AddNumberToObject(c, "moe_intermediate_size", (double)d->ffn);
        cJSON_AddNumberToObject(c, "intermediate_size", (double)d->ffn * 4); /* the dense layers' */
        cJSON_AddNumberToObject(c, ds ? "n_routed_experts" : "num_experts", d->n_experts);
    }
    if (!mixtral) cJSON_AddBoolToObject(c, "norm_topk_prob", r->renormalize);
    if (ds) {
        cJSON_AddStringToObject(c, "scoring_func", r->scoring == DMOE_SCORING_SIGMOID ? "sigmoid" : "softmax");
        cJSON_AddStringToObject(c, "topk_method", "noaux_tc");
        cJSON_AddNumberToObject(c, "n_group", r->n_group > 1 ? r->n_group : 1);
        cJSON_AddNumberToObject(c, "topk_group", r->n_group > 1 ? r->topk_group : 1);
        cJSON_AddNumberToObject(c, "routed_scaling_factor", r->routed_scaling_factor);
        cJSON_AddNumberToObject(c, "n_shared_experts", d->n_shared_experts ? (double)(d->shared_ffn / d->ffn) : 0);
        cJSON_AddNumberToObject(c, "first_k_dense_replace", 0);
    }
    if (strcmp(arch, "qwen2_moe") == 0)
        cJSON_AddNumberToObject(c, "shared_expert_intermediate_size",
                                d->n_shared_experts ? (double)d->shared_ffn : 0);
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    if (!text) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "config.json");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    cJSON_free(text);
    if (!ok) return dmoe__error(NULL, DMOE_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    return DMOE_OK;
}

static dmoe_status write_safetensors(const char *dir, const tensor_list *l, uint64_t seed) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "writer", "dmoe synthetic");
    size_t off = 0;
    for (int i = 0; i < l->n; i++) {
        const synth_tensor *t = &l->t[i];
        cJSON *o = cJSON_AddObjectToObject(h, t->name);
        cJSON_AddStringToObject(o, "dtype", t->f32 ? "F32" : "BF16");
        cJSON *shape = cJSON_AddArrayToObject(o, "shape");
        if (t->rows) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->rows));
        cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->cols));
        cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += tensor_bytes(t);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    }
    char *text = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    if (!text) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors header");
    size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    dmoe_status st = DMOE_OK;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = f && fwrite(len8, 1, 8, f) == 8 && fwrite(text, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    cJSON_free(text);
    enum { CHUNK = 1 << 16 };
    uint16_t *buf = (uint16_t *)malloc(CHUNK * sizeof(float));
    if (!buf) ok = 0;
    for (int i = 0; ok && i < l->n; i++) {
        const synth_tensor *t = &l->t[i];
        int64_t n = (t->rows ? t->rows : 1) * t->cols;
        for (int64_t done = 0; ok && done < n; done += CHUNK) {
            int64_t m = n - done < CHUNK ? n - done : CHUNK;
            if (t->f32) {
                float *fb = (float *)buf;
                for (int64_t j = 0; j < m; j++) fb[j] = t->scale * uniform_pm1(&seed);
                ok = fwrite(fb, 4, (size_t)m, f) == (size_t)m;
            } else {
                for (int64_t j = 0; j < m; j++) buf[j] = dmoe__f32_to_bf16(t->scale * uniform_pm1(&seed));
                ok = fwrite(buf, 2, (size_t)m, f) == (size_t)m;
            }
        }
    }
    free(buf);
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) st = dmoe__error(NULL, DMOE_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    return st;
}

dmoe_status dmoe_model_write_synthetic(const char *dir, const char *arch, const dmoe_layer_desc *desc,
                                       int32_t n_layers, uint64_t seed) {
    dmoe__clear_error(NULL);
    if (!dir || !arch || !desc)
        return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "dir, arch and desc are required");
    int known = 0;
    for (int i = 0; archs[i]; i++) known |= strcmp(arch, archs[i]) == 0;
    if (!known)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "unknown arch '%s' (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3)", arch);
    if (n_layers < 1 || n_layers > 1000)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "n_layers must be in [1, 1000]");
    /* Validate the shapes and routing the way a layer would. */
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    dmoe_status st = dmoe_context_create(&cd, &ctx);
    if (st != DMOE_OK) return st;
    dmoe_layer_desc d = *desc;
    d.max_tokens = 1;
    dmoe_layer *layer = NULL;
    st = dmoe_layer_create(ctx, &d, &layer);
    if (st != DMOE_OK) {
        /* the layer's message, without repeating the "NAME: " prefix dmoe__error gave it */
        const char *msg = dmoe_context_last_error(ctx), *name = dmoe_status_name(st);
        const size_t n = strlen(name);
        if (strncmp(msg, name, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') msg += n + 2;
        dmoe__error(NULL, st, "%s", msg);
    }
    dmoe_layer_destroy(layer);
    dmoe_context_destroy(ctx);
    if (st != DMOE_OK) return st;
    if ((st = check_arch(arch, desc)) != DMOE_OK) return st;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return dmoe__error(NULL, DMOE_ERR_IO, "cannot create '%s': %s", dir, strerror(errno));
    tensor_list l = {NULL, 0, 0};
    st = build_list(arch, desc, n_layers, &l);
    if (st == DMOE_OK) st = write_config(dir, arch, desc, n_layers);
    if (st == DMOE_OK) st = write_safetensors(dir, &l, seed);
    free(l.t);
    return st;
}

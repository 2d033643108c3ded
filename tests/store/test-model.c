/*
 * test-model: the model loader reads synthetic directories of every naming
 * scheme (mixtral, qwen2_moe with its gated shared expert, qwen3_moe, olmoe,
 * deepseek_v3 with bias, groups and shared experts), single-file and through
 * model.safetensors.index.json: the layer description matches what was
 * written, every weight lands at the right place of dmoe's layout (checked
 * against the file's own tensors), a loaded layer's forward equals a forward
 * over the file's views assembled by hand, and defective directories (missing
 * config field, missing tensor, wrong shape, unknown architecture, missing
 * shard, config numbers out of range or beyond int32) each fail with their
 * status.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmoe-impl.h"

static int failures = 0;
#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                \
            fprintf(stderr, " [%s]\n", dmoe_context_last_error(NULL));   \
            failures++;                                                  \
        }                                                                \
    } while (0)

static char root[256];

static void base_desc(dmoe_layer_desc *d) {
    dmoe_layer_desc_init(d);
    d->hidden = 24;
    d->ffn = 16;
    d->n_experts = 8;
    d->top_k = 2;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

/* Writes dir/model.safetensors.index.json mapping every tensor of dir/<shard> to <shard>, except
 * `moved` (if not NULL), mapped to `moved_to`; `extra` (if not NULL) is raw JSON members added
 * at the front of the map. */
static void write_index(const char *dir, const char *shard, const char *moved, const char *moved_to,
                        const char *extra) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, shard);
    dmoe_safetensors *st = NULL;
    if (dmoe_safetensors_open(path, &st) != DMOE_OK) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) exit(1);
    fprintf(f, "{\"metadata\":{},\"weight_map\":{%s", extra ? extra : "");
    const int64_t n = dmoe_safetensors_count(st);
    for (int64_t i = 0; i < n; i++) {
        dmoe_st_tensor_info info;
        dmoe_safetensors_get(st, i, &info);
        const int mv = moved && strcmp(info.name, moved) == 0;
        fprintf(f, "%s\"%s\":\"%s\"", i || extra ? "," : "", info.name, mv ? moved_to : shard);
    }
    fputs("}}", f);
    if (fclose(f) != 0) exit(1);
    dmoe_safetensors_close(st);
}

/* Compares the loaded arena with the file's tensors for layer L. */
static void check_layout(const dmoe_layer *layer, const char *dir, const char *moe, const char *pg,
                         const char *pu, const char *pd, int L) {
    char path[600], name[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dmoe_safetensors *st = NULL;
    if (dmoe_safetensors_open(path, &st) != DMOE_OK) {
        CHECK(0, "reopen %s", path);
        return;
    }
    const dmoe_layer_desc *d = &layer->desc;
    const size_t row_h = (size_t)d->hidden * 2, row_f = (size_t)d->ffn * 2;
    dmoe_st_tensor_info info;
    snprintf(name, sizeof name, "model.layers.%d.%s.gate.weight", L, moe);
    CHECK(dmoe_safetensors_find(st, name, &info) == DMOE_OK &&
              memcmp(info.data, layer->w.router, info.n_bytes) == 0, "router of layer %d", L);
    for (int e = 0; e < d->n_experts; e += d->n_experts - 1) { /* first and last expert */
        const uint8_t *w13 = (const uint8_t *)layer->w.w13 + (size_t)e * 2 * d->ffn * row_h;
        const uint8_t *w2 = (const uint8_t *)layer->w.w2 + (size_t)e * d->hidden * row_f;
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", L, moe, e, pg);
        CHECK(dmoe_safetensors_find(st, name, &info) == DMOE_OK && memcmp(info.data, w13, info.n_bytes) == 0,
              "%s -> w13[%d][0:F]", name, e);
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", L, moe, e, pu);
        CHECK(dmoe_safetensors_find(st, name, &info) == DMOE_OK &&
                  memcmp(info.data, w13 + (size_t)d->ffn * row_h, info.n_bytes) == 0,
              "%s -> w13[%d][F:2F]", name, e);
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", L, moe, e, pd);
        CHECK(dmoe_safetensors_find(st, name, &info) == DMOE_OK && memcmp(info.data, w2, info.n_bytes) == 0,
              "%s -> w2[%d]", name, e);
    }
    dmoe_safetensors_close(st);
}

static void test_arch(const char *arch, const dmoe_layer_desc *want, int use_index) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s%s", root, arch, use_index ? "-index" : "");
    dmoe_status s = dmoe_model_write_synthetic(dir, arch, want, 2, 42);
    CHECK(s == DMOE_OK, "write %s", arch);
    if (s != DMOE_OK) return;
    if (use_index) {
        /* move the weights to a shard named by an index */
        char from[600], to[600];
        snprintf(from, sizeof from, "%s/model.safetensors", dir);
        snprintf(to, sizeof to, "%s/model-00001-of-00001.safetensors", dir);
        CHECK(rename(from, to) == 0, "rename");
        write_index(dir, "model-00001-of-00001.safetensors", NULL, NULL, NULL);
    }
    dmoe_model *m = NULL;
    s = dmoe_model_open(dir, &m);
    CHECK(s == DMOE_OK, "open %s", arch);
    if (s != DMOE_OK) return;
    CHECK(strcmp(dmoe_model_arch(m), arch) == 0, "arch name");
    CHECK(dmoe_model_n_moe_layers(m) == 2, "%s: %d MoE layers, want 2", arch, dmoe_model_n_moe_layers(m));
    int32_t L = -1;
    dmoe_layer_desc d;
    CHECK(dmoe_model_moe_layer(m, 1, &L, &d) == DMOE_OK && L == 1, "second MoE layer is decoder layer 1");
    CHECK(d.hidden == want->hidden && d.ffn == want->ffn && d.n_experts == want->n_experts &&
              d.top_k == want->top_k && d.n_shared_experts == want->n_shared_experts &&
              d.shared_ffn == want->shared_ffn && d.shared_gate == want->shared_gate,
          "%s: shapes round trip", arch);
    CHECK(memcmp(&d.routing, &want->routing, sizeof d.routing) == 0, "%s: routing round trip", arch);
    CHECK(d.weight_dtype == DMOE_DTYPE_BF16, "%s: weights are bf16", arch);
    CHECK(dmoe_model_moe_layer(m, 2, &L, &d) == DMOE_ERR_INVALID_ARGUMENT, "layer index out of range");
    dmoe_model_moe_layer(m, 1, &L, &d);

    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    if (dmoe_context_create(&cd, &ctx) != DMOE_OK) {
        CHECK(0, "context");
        dmoe_model_close(m);
        return;
    }
    d.max_tokens = 4;
    dmoe_layer *layer = NULL;
    s = dmoe_model_load_layer(m, ctx, 1, &d, &layer);
    CHECK(s == DMOE_OK, "%s: load layer 1: %s", arch, dmoe_context_last_error(ctx));
    if (s == DMOE_OK && !use_index) {
        const int mixtral = strcmp(arch, "mixtral") == 0;
        check_layout(layer, dir, mixtral ? "block_sparse_moe" : "mlp", mixtral ? "w1" : "gate_proj",
                     mixtral ? "w3" : "up_proj", mixtral ? "w2" : "down_proj", 1);
    }
    /* f32 weights: converted on load; forward must agree with the bf16 layer */
    dmoe_layer_desc d32 = d;
    d32.weight_dtype = d32.act_dtype = DMOE_DTYPE_F32;
    dmoe_layer *layer32 = NULL;
    s = dmoe_model_load_layer(m, ctx, 1, &d32, &layer32);
    CHECK(s == DMOE_OK, "%s: load as f32", arch);
    if (layer && layer32) {
        enum { T = 4 };
        const int64_t H = d.hidden;
        uint16_t xb[T * 64], yb[T * 64];
        float xf[T * 64], yf[T * 64];
        for (int i = 0; i < T * H; i++) {
            xf[i] = dmoe__bf16_to_f32(dmoe__f32_to_bf16(sinf((float)i * 0.37f)));
            xb[i] = dmoe__f32_to_bf16(xf[i]);
        }
        dmoe_tensor tx = dmoe_tensor_2d(xb, DMOE_DTYPE_BF16, T, H, -1), ty = dmoe_tensor_2d(yb, DMOE_DTYPE_BF16, T, H, -1);
        dmoe_tensor tx32 = dmoe_tensor_2d(xf, DMOE_DTYPE_F32, T, H, -1), ty32 = dmoe_tensor_2d(yf, DMOE_DTYPE_F32, T, H, -1);
        CHECK(dmoe_forward(layer, &tx, &ty, NULL) == DMOE_OK, "forward bf16");
        CHECK(dmoe_forward(layer32, &tx32, &ty32, NULL) == DMOE_OK, "forward f32");
        double num = 0, den = 0;
        for (int i = 0; i < T * H; i++) {
            double a = dmoe__bf16_to_f32(yb[i]), b = yf[i];
            num += (a - b) * (a - b);
            den += b * b;
        }
        CHECK(den > 0 && sqrt(num / den) < 1e-2, "%s: bf16 vs f32 loaded layer rel err %g", arch, sqrt(num / den));
    }
    dmoe_layer_destroy(layer);
    dmoe_layer_destroy(layer32);
    /* a description that does not match the model is refused */
    dmoe_layer_desc bad = d;
    bad.top_k = 1;
    CHECK(dmoe_model_load_layer(m, ctx, 1, &bad, &layer) == DMOE_ERR_INVALID_ARGUMENT, "mismatched desc");
    CHECK(dmoe_model_load_layer(m, ctx, 7, &d, &layer) == DMOE_ERR_INVALID_ARGUMENT, "not an MoE layer");
    /* offloaded loading: a cuda feature (host backends refuse); bad slot counts first */
    dmoe_layer *sentinel = (dmoe_layer *)&d, *off = sentinel;
    CHECK(dmoe_model_load_layer_offloaded(m, ctx, 1, &d, 2, &off) == DMOE_ERR_UNSUPPORTED && off == sentinel,
          "%s: offloaded load on a host backend", arch);
    CHECK(dmoe_model_load_layer_offloaded(m, ctx, 1, &d, 0, &off) == DMOE_ERR_INVALID_ARGUMENT && off == sentinel,
          "%s: offloaded load with 0 slots", arch);
    dmoe_context_destroy(ctx);
    dmoe_model_close(m);
}

/* The index decides which shard a tensor comes from: a.safetensors and b.safetensors both hold a
 * whole model (different seeds); the index takes layer 0's router from b and the rest from a. A
 * tensor the named shard lacks, or a name listed twice, makes the directory corrupt. */
static void test_weight_map(void) {
    dmoe_layer_desc d;
    base_desc(&d);
    char dir[512], dir_b[512], from[600], to[600];
    snprintf(dir, sizeof dir, "%s/wm", root);
    snprintf(dir_b, sizeof dir_b, "%s/wm-b", root);
    CHECK(dmoe_model_write_synthetic(dir, "qwen3_moe", &d, 1, 11) == DMOE_OK, "write a");
    CHECK(dmoe_model_write_synthetic(dir_b, "qwen3_moe", &d, 1, 12) == DMOE_OK, "write b");
    snprintf(from, sizeof from, "%s/model.safetensors", dir);
    snprintf(to, sizeof to, "%s/a.safetensors", dir);
    CHECK(rename(from, to) == 0, "rename a");
    snprintf(from, sizeof from, "%s/model.safetensors", dir_b);
    snprintf(to, sizeof to, "%s/b.safetensors", dir);
    CHECK(rename(from, to) == 0, "rename b");
    const char *router = "model.layers.0.mlp.gate.weight", *expert = "model.layers.0.mlp.experts.3.up_proj.weight";
    write_index(dir, "a.safetensors", router, "b.safetensors", NULL);

    dmoe_safetensors *a = NULL, *b = NULL;
    snprintf(to, sizeof to, "%s/a.safetensors", dir);
    CHECK(dmoe_safetensors_open(to, &a) == DMOE_OK, "open a");
    snprintf(to, sizeof to, "%s/b.safetensors", dir);
    CHECK(dmoe_safetensors_open(to, &b) == DMOE_OK, "open b");
    dmoe_st_tensor_info ra, rb, ea, eb;
    CHECK(a && b && dmoe_safetensors_find(a, router, &ra) == DMOE_OK && dmoe_safetensors_find(b, router, &rb) == DMOE_OK &&
              dmoe_safetensors_find(a, expert, &ea) == DMOE_OK && dmoe_safetensors_find(b, expert, &eb) == DMOE_OK,
          "both shards hold the router and the expert");
    CHECK(memcmp(ra.data, rb.data, ra.n_bytes) != 0 && memcmp(ea.data, eb.data, ea.n_bytes) != 0, "shards differ");

    dmoe_model *m = NULL;
    CHECK(dmoe_model_open(dir, &m) == DMOE_OK, "open through the index");
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    dmoe_context_create(&cd, &ctx);
    if (m && ctx) {
        int32_t L;
        dmoe_layer_desc ld;
        dmoe_model_moe_layer(m, 0, &L, &ld);
        dmoe_layer *layer = NULL;
        CHECK(dmoe_model_load_layer(m, ctx, L, &ld, &layer) == DMOE_OK, "load");
        if (layer) {
            CHECK(memcmp(layer->w.router, rb.data, rb.n_bytes) == 0, "router taken from b, as the index says");
            const uint8_t *up3 = (const uint8_t *)layer->w.w13 + (size_t)(3 * 2 + 1) * d.ffn * d.hidden * 2;
            CHECK(memcmp(up3, ea.data, ea.n_bytes) == 0, "expert 3's up_proj taken from a, as the index says");
        }
        dmoe_layer_destroy(layer);
    }
    dmoe_model_close(m);
    dmoe_context_destroy(ctx);
    dmoe_safetensors_close(a);
    dmoe_safetensors_close(b);

    /* the index names a shard without that tensor (c holds one unrelated tensor) */
    snprintf(to, sizeof to, "%s/c.safetensors", dir);
    FILE *f = fopen(to, "wb");
    const char hdr[] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}  "; /* 56 bytes */
    const uint64_t hlen = sizeof hdr - 1;
    const float one = 1.f;
    CHECK(f && fwrite(&hlen, 8, 1, f) == 1 && fwrite(hdr, hlen, 1, f) == 1 && fwrite(&one, 4, 1, f) == 1 &&
              fclose(f) == 0, "write c");
    write_index(dir, "a.safetensors", router, "c.safetensors", NULL);
    m = (dmoe_model *)0x1;
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE && m == (dmoe_model *)0x1,
          "a tensor missing from the shard the index names");
    CHECK(strstr(dmoe_context_last_error(NULL), "c.safetensors") != NULL, "message names the shard");
    /* a name the map lists twice */
    write_index(dir, "a.safetensors", NULL, NULL, "\"model.layers.0.mlp.gate.weight\":\"b.safetensors\"");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE && m == (dmoe_model *)0x1, "a tensor listed twice");
    CHECK(strstr(dmoe_context_last_error(NULL), "twice") != NULL, "message says twice");
}

/* The model in dir opens, but loading its first MoE layer on cpu-ref fails with `want`, leaves the
 * output untouched and says `word` in the message. */
static void check_load_refused(const char *dir, dmoe_status want, const char *word, const char *what) {
    dmoe_model *m = NULL;
    CHECK(dmoe_model_open(dir, &m) == DMOE_OK, "%s: open", what);
    if (!m) return;
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    dmoe_context_create(&cd, &ctx);
    int32_t L;
    dmoe_layer_desc ld;
    dmoe_model_moe_layer(m, 0, &L, &ld);
    dmoe_layer *layer = (dmoe_layer *)0x1;
    CHECK(dmoe_model_load_layer(m, ctx, L, &ld, &layer) == want, "%s: status", what);
    CHECK(layer == (dmoe_layer *)0x1, "%s: output untouched", what);
    CHECK(strstr(dmoe_context_last_error(ctx), word) != NULL, "%s: message says %s", what, word);
    dmoe_context_destroy(ctx);
    dmoe_model_close(m);
}

/* Opens dir and reads its first MoE layer's expert groups; returns the open's status. */
static dmoe_status open_groups(const char *dir, int32_t *n_group, int32_t *topk_group) {
    dmoe_model *m = NULL;
    const dmoe_status st = dmoe_model_open(dir, &m);
    if (st == DMOE_OK) {
        int32_t L;
        dmoe_layer_desc ld;
        dmoe_model_moe_layer(m, 0, &L, &ld);
        *n_group = ld.routing.n_group;
        *topk_group = ld.routing.topk_group;
        dmoe_model_close(m);
    }
    return st;
}

static void test_defects(void) {
    dmoe_layer_desc d;
    base_desc(&d);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/defects", root);
    CHECK(dmoe_model_write_synthetic(dir, "qwen3_moe", &d, 1, 7) == DMOE_OK, "write");
    dmoe_model *m = NULL;
    snprintf(path, sizeof path, "%s/config.json", dir);

    write_file(path, "{\"model_type\":\"llama\",\"hidden_size\":24}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_UNSUPPORTED, "dense architecture");
    write_file(path, "{\"model_type\":\"qwen3_moe\",\"hidden_size\":24,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE, "missing num_experts");
    CHECK(strstr(dmoe_context_last_error(NULL), "num_local_experts") != NULL, "message names the field");
    write_file(path, "not json");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE, "config not JSON");
    /* fields of the wrong type are a corrupt config, not a silent default; DeepSeek-V2's topk_method
     * is one dmoe knows, or the model is refused (the remote code's default "gready" included) */
#define QWEN3_BASE "\"model_type\":\"qwen3_moe\",\"hidden_size\":24,\"num_hidden_layers\":1," \
                   "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2"
#define DSV2_BASE "\"model_type\":\"deepseek_v2\",\"hidden_size\":24,\"num_hidden_layers\":1," \
                  "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2,\"n_routed_experts\":8," \
                  "\"n_group\":2,\"topk_group\":1"
    static const struct {
        const char *config, *word;
        dmoe_status want;
    } refused[] = {
        {"{" QWEN3_BASE ",\"num_experts\":8.5}", "'num_experts' is not an integer", DMOE_ERR_CORRUPT_FILE},
        {"{" QWEN3_BASE ",\"num_experts\":8,\"norm_topk_prob\":\"yes\"}", "norm_topk_prob", DMOE_ERR_CORRUPT_FILE},
        {"{" QWEN3_BASE ",\"num_experts\":8,\"routed_scaling_factor\":\"2.5\"}", "routed_scaling_factor",
         DMOE_ERR_CORRUPT_FILE},
        {"{" QWEN3_BASE ",\"num_experts\":8,\"n_group\":2.5}", "n_group", DMOE_ERR_CORRUPT_FILE},
        {"{" DSV2_BASE ",\"topk_method\":\"gready\"}", "gready", DMOE_ERR_UNSUPPORTED},
        {"{" DSV2_BASE ",\"topk_method\":\"group_limited_greedy\"}", "group_limited_greedy", DMOE_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        write_file(path, refused[i].config);
        m = NULL;
        CHECK(dmoe_model_open(dir, &m) == refused[i].want && m == NULL, "refused: %s", refused[i].config);
        CHECK(strstr(dmoe_context_last_error(NULL), refused[i].word) != NULL, "message names %s", refused[i].word);
    }
    /* null is absent (some configs write "scoring_func": null) */
    write_file(path, "{" QWEN3_BASE ",\"num_experts\":8,\"scoring_func\":null,\"routed_scaling_factor\":null}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_OK, "null fields");
    dmoe_model_close(m);
    m = NULL;
    /* DeepSeek-V2 without topk_method routes greedily (no groups, as transformers does); noaux_tc keeps them */
    int32_t ng = -1, tg = -1;
    write_file(path, "{" DSV2_BASE "}");
    CHECK(open_groups(dir, &ng, &tg) == DMOE_OK && ng <= 1, "deepseek_v2 without topk_method: greedy, n_group %d",
          (int)ng);
    write_file(path, "{" DSV2_BASE ",\"topk_method\":\"noaux_tc\"}");
    CHECK(open_groups(dir, &ng, &tg) == DMOE_OK && ng == 2 && tg == 1, "deepseek_v2 noaux_tc keeps the groups");
    /* config claims a hidden size the tensors do not have: open works, load fails */
    write_file(path, "{\"model_type\":\"qwen3_moe\",\"hidden_size\":32,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2,\"num_experts\":8}");
    check_load_refused(dir, DMOE_ERR_CORRUPT_FILE, "shape", "lying config: shape mismatch");
    /* config numbers far beyond the limits: refused with a status, no integer overflow on the way */
    write_file(path, "{\"model_type\":\"qwen3_moe\",\"hidden_size\":1000000000000000,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":1000000000000000,\"num_experts_per_tok\":2,\"num_experts\":8}");
    check_load_refused(dir, DMOE_ERR_INVALID_ARGUMENT, "hidden", "huge sizes refused");
    write_file(path, "{\"model_type\":\"deepseek_v3\",\"hidden_size\":24,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":1000000000000000,\"num_experts_per_tok\":2,\"n_routed_experts\":8,"
                     "\"n_shared_experts\":1000000000000000}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE, "n_shared_experts = 1e15 (ns x ffn overflows)");
    CHECK(strstr(dmoe_context_last_error(NULL), "n_shared_experts") != NULL, "message names n_shared_experts");
    CHECK(m == NULL, "output untouched");
    /* group counts beyond int32 must not wrap into valid ones (2^32 + 4 -> 4, 2^32 + 2 -> 2) */
    write_file(path, "{\"model_type\":\"deepseek_v3\",\"hidden_size\":24,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2,\"n_routed_experts\":8,"
                     "\"n_group\":4294967300,\"topk_group\":4294967298}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_OK, "open with n_group = 2^32 + 4");
    if (m) {
        int32_t L;
        dmoe_layer_desc ld;
        dmoe_model_moe_layer(m, 0, &L, &ld);
        CHECK(ld.routing.n_group != 4 && ld.routing.topk_group != 2, "n_group %d, topk_group %d: wrapped",
              (int)ld.routing.n_group, (int)ld.routing.topk_group);
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = DMOE_BACKEND_CPU_REF;
        dmoe_context *ctx = NULL;
        dmoe_context_create(&cd, &ctx);
        dmoe_layer *layer = (dmoe_layer *)0x1;
        CHECK(dmoe_model_load_layer(m, ctx, L, &ld, &layer) == DMOE_ERR_INVALID_ARGUMENT, "n_group 2^32 + 4 refused");
        CHECK(strstr(dmoe_context_last_error(ctx), "n_group") != NULL, "message names n_group");
        dmoe_context_destroy(ctx);
        dmoe_model_close(m);
        m = NULL;
    }
    /* more experts in the config than in the file: the first missing tensor is named */
    write_file(path, "{\"model_type\":\"qwen3_moe\",\"hidden_size\":24,\"num_hidden_layers\":1,"
                     "\"moe_intermediate_size\":16,\"num_experts_per_tok\":2,\"num_experts\":8}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_OK, "reopen");
    dmoe_model_close(m);
    m = NULL;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_file(path, "{\"weight_map\":{\"a\":\"missing-shard.safetensors\"}}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_IO, "missing shard");
    write_file(path, "{\"weight_map\":{\"a\":\"../escape.safetensors\"}}");
    CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_CORRUPT_FILE, "shard path outside the directory");
    remove(path);
    /* a FIFO where a file should be is refused at once, not waited on (the alarm ends a hang) */
    snprintf(path, sizeof path, "%s/config.json", dir);
    remove(path);
    if (mkfifo(path, 0600) == 0) {
        alarm(20);
        CHECK(dmoe_model_open(dir, &m) == DMOE_ERR_IO, "config.json is a FIFO");
        alarm(0);
        CHECK(strstr(dmoe_context_last_error(NULL), "regular file") != NULL, "message says regular file");
        remove(path);
    }
    CHECK(dmoe_model_open("/nonexistent-dir", &m) == DMOE_ERR_IO, "missing directory");
    CHECK(m == NULL, "output untouched");
    /* the writer refuses what an architecture cannot express */
    d.routing.scoring = DMOE_SCORING_SIGMOID;
    CHECK(dmoe_model_write_synthetic(dir, "mixtral", &d, 1, 1) == DMOE_ERR_INVALID_ARGUMENT, "mixtral sigmoid");
    CHECK(dmoe_model_write_synthetic(dir, "gpt2", &d, 1, 1) == DMOE_ERR_INVALID_ARGUMENT, "unknown arch");
    /* a description the layer refuses: its message, with the status name once */
    dmoe_layer_desc bad = d;
    bad.hidden = 0;
    CHECK(dmoe_model_write_synthetic(dir, "qwen3_moe", &bad, 1, 1) == DMOE_ERR_INVALID_ARGUMENT, "hidden = 0");
    const char *msg = dmoe_context_last_error(NULL), *first = strstr(msg, "DMOE_ERR_INVALID_ARGUMENT");
    CHECK(first && !strstr(first + 1, "DMOE_ERR_INVALID_ARGUMENT") && strstr(msg, "hidden"),
          "message names hidden, status once: '%s'", msg);
    /* deepseek_v3 without a correction bias would be written, then refused by the loader */
    d.routing.use_correction_bias = 0;
    CHECK(dmoe_model_write_synthetic(dir, "deepseek_v3", &d, 1, 1) == DMOE_ERR_INVALID_ARGUMENT,
          "deepseek_v3 without correction bias");
    CHECK(strstr(dmoe_context_last_error(NULL), "correction_bias") != NULL, "message names the bias");
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/dmoe-model-XXXXXX");
    if (!mkdtemp(root)) return 1;
    dmoe_layer_desc d;

    base_desc(&d);
    test_arch("mixtral", &d, 0);
    test_arch("qwen3_moe", &d, 1);
    base_desc(&d);
    d.routing.renormalize = 0;
    test_arch("olmoe", &d, 0);
    base_desc(&d);
    d.routing.renormalize = 0;
    d.n_shared_experts = 1;
    d.shared_ffn = 40;
    d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
    test_arch("qwen2_moe", &d, 0);
    base_desc(&d);
    d.routing.scoring = DMOE_SCORING_SIGMOID;
    d.routing.use_correction_bias = 1;
    d.routing.n_group = 4;
    d.routing.topk_group = 2;
    d.routing.routed_scaling_factor = 2.5f;
    d.n_shared_experts = 1;
    d.shared_ffn = 32;
    test_arch("deepseek_v3", &d, 0);
    test_defects();
    test_weight_map();

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "note: could not remove %s\n", root);
    printf("%s (%d failures)\n", failures ? "FAILED" : "all model loader checks passed", failures);
    return failures != 0;
}

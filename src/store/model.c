/*
 * model.c: Hugging Face MoE model directories -> dmoe layers.
 *
 * A directory holds config.json and either model.safetensors or the shards
 * named by model.safetensors.index.json ("weight_map": tensor -> file). The
 * config's model_type picks a naming scheme (table `schemes`):
 *   router      model.layers.L.<moe>.gate.weight                 (E, H)
 *   experts     model.layers.L.<moe>.experts.e.<gate|up|down>.weight  (F, H) (F, H) (H, F)
 *   bias        model.layers.L.mlp.gate.e_score_correction_bias  (E)      deepseek_v3
 *   shared      model.layers.L.mlp.<shared>.<gate|up|down>.weight (Fs, H) (Fs, H) (H, Fs)
 *   shared gate model.layers.L.mlp.shared_expert_gate.weight      (1, H)   qwen2_moe
 * A decoder layer is an MoE layer when its router tensor exists. Loading a
 * layer copies (and converts, if the file's dtype differs) the per-expert
 * tensors into one arena in dmoe's layout: w13 (E, 2F, H), w2 (E, H, F).
 * Every tensor's dtype and shape is checked against the config first.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include "../dmoe-impl.h"

typedef struct scheme {
    const char *model_type;
    const char *moe;                     /* module holding the router and experts */
    const char *gate, *up, *down;        /* expert projection names */
    const char *shared;                  /* shared expert module under mlp, or NULL */
    int has_shared_gate;                 /* qwen2_moe's sigmoid gate */
    int default_renorm;                  /* when config has no norm_topk_prob */
    dmoe_scoring default_scoring;
} scheme;

static const scheme schemes[] = {
    {"mixtral", "block_sparse_moe", "w1", "w3", "w2", NULL, 0, 1, DMOE_SCORING_SOFTMAX},
    {"qwen2_moe", "mlp", "gate_proj", "up_proj", "down_proj", "shared_expert", 1, 0,
     DMOE_SCORING_SOFTMAX},
    {"qwen3_moe", "mlp", "gate_proj", "up_proj", "down_proj", NULL, 0, 0, DMOE_SCORING_SOFTMAX},
    {"olmoe", "mlp", "gate_proj", "up_proj", "down_proj", NULL, 0, 0, DMOE_SCORING_SOFTMAX},
    {"deepseek_v2", "mlp", "gate_proj", "up_proj", "down_proj", "shared_experts", 0, 0,
     DMOE_SCORING_SOFTMAX},
    {"deepseek_v3", "mlp", "gate_proj", "up_proj", "down_proj", "shared_experts", 0, 0,
     DMOE_SCORING_SIGMOID},
};
#define N_SCHEMES ((int)(sizeof schemes / sizeof schemes[0]))

#define MAX_NAME 512

struct dmoe_model {
    const scheme *sch;
    dmoe_layer_desc base;       /* shapes and routing from config.json */
    int32_t n_layers;           /* num_hidden_layers */
    int32_t n_moe;
    int32_t *moe_layers;        /* (n_moe) decoder layer indices */
    int64_t n_files;
    dmoe_safetensors **files;   /* (n_files) */
    int64_t n_refs;
    struct tensor_ref *refs;    /* (n_refs) every tensor the model has, sorted by name: where it is */
};

/* One tensor of the model: its name (owned by its shard) and its place. With an index, the shard
 * is the one weight_map names, whatever the other shards hold. */
typedef struct tensor_ref {
    const char *name;
    int64_t file, idx;
} tensor_ref;

/* ---- small helpers ---- */

static char *read_text(const char *path, dmoe_status *st) {
    /* a FIFO (or a device) would make fopen or fread wait forever: regular files only */
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        *st = dmoe__error(NULL, DMOE_ERR_IO, "'%s' is not a regular file", path);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        *st = dmoe__error(NULL, DMOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > (64L << 20) || fseek(f, 0, SEEK_SET) != 0 || !(buf = (char *)malloc((size_t)n + 1)) ||
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        *st = dmoe__error(NULL, DMOE_ERR_IO, "cannot read '%s' (or larger than 64 MB)", path);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int json_int(const cJSON *obj, const char *key, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e15)
        return 0;
    *out = (int64_t)v->valuedouble;
    return 1;
}

static int json_first_int(const cJSON *obj, const char *const *keys, int64_t *out) {
    for (int i = 0; keys[i]; i++)
        if (json_int(obj, keys[i], out)) return 1;
    return 0;
}

/* A config integer for an int32_t field, saturated: a value beyond int32 must stay out of
 * range (and be refused as such), not wrap into a small, valid-looking one. */
static int32_t sat_i32(int64_t v) {
    return (int32_t)(v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : v));
}

static dmoe_status need_int(const cJSON *cfg, const char *const *keys, int64_t *out) {
    if (json_first_int(cfg, keys, out)) return DMOE_OK;
    for (int i = 0; keys[i]; i++)
        if (cJSON_GetObjectItemCaseSensitive(cfg, keys[i]))
            return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: '%s' is not an integer", keys[i]);
    return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: missing integer field '%s'%s",
                       keys[0], keys[1] ? " (or an alias)" : "");
}

/* An optional config field: absent (or null) -> NULL; present -> it, which must pass `is`
 * (a field of the wrong type is a corrupt config, not a default). */
static dmoe_status opt_field(const cJSON *cfg, const char *key, cJSON_bool (*is)(const cJSON *),
                             const char *what, const cJSON **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return DMOE_OK;
    if (!is(v)) return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: '%s' is not %s", key, what);
    *out = v;
    return DMOE_OK;
}

static dmoe_status opt_int(const cJSON *cfg, const char *key, int64_t *out) {
    const cJSON *v;
    dmoe_status st = opt_field(cfg, key, cJSON_IsNumber, "an integer", &v);
    if (st != DMOE_OK || !v) return st;
    if (!json_int(cfg, key, out))
        return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: '%s' is not an integer", key);
    return DMOE_OK;
}

static int ref_cmp(const void *a, const void *b) {
    const tensor_ref *x = (const tensor_ref *)a, *y = (const tensor_ref *)b;
    const int c = strcmp(x->name, y->name);
    return c ? c : (x->file > y->file) - (x->file < y->file);
}

static int ref_name_cmp(const void *a, const void *b) {
    return strcmp(((const tensor_ref *)a)->name, ((const tensor_ref *)b)->name);
}

/* Finds a tensor by name where the model keeps it (the shard weight_map names). */
static int model_find(const dmoe_model *m, const char *name, dmoe_st_tensor_info *info) {
    const tensor_ref key = {name, 0, 0};
    const tensor_ref *r = m->n_refs ? (const tensor_ref *)bsearch(&key, m->refs, (size_t)m->n_refs,
                                                                  sizeof *r, ref_name_cmp)
                                    : NULL;
    return r && dmoe_safetensors_get(m->files[r->file], r->idx, info) == DMOE_OK;
}

void dmoe_model_close(dmoe_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->n_files; i++) dmoe_safetensors_close(m->files[i]);
    free(m->files);
    free(m->refs);
    free(m->moe_layers);
    free(m);
}

/* ---- opening: config, shards, MoE layer discovery ---- */

static dmoe_status parse_config(dmoe_model *m, const cJSON *cfg) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    if (!cJSON_IsString(mt))
        return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: no model_type string");
    for (int i = 0; i < N_SCHEMES; i++)
        if (strcmp(mt->valuestring, schemes[i].model_type) == 0) m->sch = &schemes[i];
    if (!m->sch)
        return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED,
                           "model_type '%.64s' is not an MoE architecture dmoe loads (mixtral, "
                           "qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3)",
                           mt->valuestring);
    static const char *const k_experts[] = {"num_local_experts", "num_experts", "n_routed_experts", NULL};
    static const char *const k_topk[] = {"num_experts_per_tok", NULL};
    static const char *const k_hidden[] = {"hidden_size", NULL};
    static const char *const k_ffn_moe[] = {"moe_intermediate_size", "intermediate_size", NULL};
    static const char *const k_ffn_dense[] = {"intermediate_size", NULL};
    static const char *const k_layers[] = {"num_hidden_layers", NULL};
    int64_t E, K, H, F, L;
    dmoe_status st;
    int mixtral_like = strcmp(m->sch->model_type, "mixtral") == 0 || strcmp(m->sch->model_type, "olmoe") == 0;
    if ((st = need_int(cfg, k_experts, &E)) || (st = need_int(cfg, k_topk, &K)) ||
        (st = need_int(cfg, k_hidden, &H)) || (st = need_int(cfg, mixtral_like ? k_ffn_dense : k_ffn_moe, &F)) ||
        (st = need_int(cfg, k_layers, &L)))
        return st;
    if (L < 1 || L > 100000)
        return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: num_hidden_layers=%lld", (long long)L);
    dmoe_layer_desc *d = &m->base;
    dmoe_layer_desc_init(d);
    d->hidden = H;
    d->ffn = F;
    d->n_experts = sat_i32(E);
    d->top_k = sat_i32(K);
    m->n_layers = (int32_t)L;

    const cJSON *norm, *sf, *rsf, *method;
    int64_t n_group = 0, topk_group = 0;
    if ((st = opt_field(cfg, "norm_topk_prob", cJSON_IsBool, "true or false", &norm)) ||
        (st = opt_field(cfg, "scoring_func", cJSON_IsString, "a string", &sf)) ||
        (st = opt_field(cfg, "routed_scaling_factor", cJSON_IsNumber, "a number", &rsf)) ||
        (st = opt_field(cfg, "topk_method", cJSON_IsString, "a string", &method)) ||
        (st = opt_int(cfg, "n_group", &n_group)) || (st = opt_int(cfg, "topk_group", &topk_group)))
        return st;
    d->routing.renormalize = norm ? cJSON_IsTrue(norm) : m->sch->default_renorm;
    d->routing.scoring = m->sch->default_scoring;
    if (sf) {
        if (strcmp(sf->valuestring, "softmax") == 0) d->routing.scoring = DMOE_SCORING_SOFTMAX;
        else if (strcmp(sf->valuestring, "sigmoid") == 0) d->routing.scoring = DMOE_SCORING_SIGMOID;
        else
            return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED, "config.json: scoring_func '%.32s'",
                               sf->valuestring);
    }
    if (rsf) d->routing.routed_scaling_factor = (float)rsf->valuedouble;
    /* topk_method: DeepSeek-V2 without one routes greedily (transformers' default), V3 by noaux_tc;
     * a method dmoe does not know is refused, not guessed */
    const int is_v2 = strcmp(m->sch->model_type, "deepseek_v2") == 0;
    const char *tm = method ? method->valuestring : is_v2 ? "greedy" : "noaux_tc";
    if (strcmp(tm, "greedy") != 0 && strcmp(tm, "noaux_tc") != 0 && strcmp(tm, "group_limited_greedy") != 0)
        return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED,
                           "config.json: topk_method '%.32s' (dmoe routes greedy and noaux_tc)", tm);
    if (strcmp(tm, "greedy") == 0) n_group = 0;
    if (n_group > 1 && strcmp(tm, "group_limited_greedy") == 0)
        return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED,
                           "topk_method 'group_limited_greedy' (group score = max) is not supported; "
                           "dmoe's grouped top-k scores a group by its top-2 sum (noaux_tc)");
    if (n_group > 1) {
        d->routing.n_group = sat_i32(n_group);
        d->routing.topk_group = sat_i32(topk_group);
    }
    if (strcmp(m->sch->model_type, "deepseek_v3") == 0) d->routing.use_correction_bias = 1;

    if (m->sch->shared && strcmp(m->sch->shared, "shared_experts") == 0) {
        int64_t ns = 0;
        if ((st = opt_int(cfg, "n_shared_experts", &ns))) return st;
        /* bounded first: ns * F must not overflow (F is at most 1e15 here, from json_int) */
        if (ns < 0 || ns > DMOE_MAX_EXPERTS)
            return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "config.json: n_shared_experts=%lld outside [0, %d]",
                               (long long)ns, DMOE_MAX_EXPERTS);
        if (ns > 0) {
            d->n_shared_experts = 1; /* DeepSeek stores its shared experts as one wide MLP */
            d->shared_ffn = ns * F;
        }
    } else if (m->sch->shared) {
        int64_t fs = 0;
        if ((st = opt_int(cfg, "shared_expert_intermediate_size", &fs))) return st;
        if (fs > 0) {
            d->n_shared_experts = 1;
            d->shared_ffn = fs;
            d->shared_gate = m->sch->has_shared_gate ? DMOE_SHARED_GATE_SIGMOID : DMOE_SHARED_GATE_NONE;
        }
    }
    return DMOE_OK;
}

/* Every tensor of shards [0, n_files) as (name, file, idx), sorted by (name, file). */
static tensor_ref *list_tensors(const dmoe_model *m, int64_t *n_out) {
    int64_t n = 0;
    for (int64_t f = 0; f < m->n_files; f++) n += dmoe_safetensors_count(m->files[f]);
    tensor_ref *all = (tensor_ref *)calloc((size_t)n + 1, sizeof *all);
    if (!all) return NULL;
    n = 0;
    for (int64_t f = 0; f < m->n_files; f++) {
        const int64_t c = dmoe_safetensors_count(m->files[f]);
        for (int64_t j = 0; j < c; j++) {
            dmoe_st_tensor_info info;
            if (dmoe_safetensors_get(m->files[f], j, &info) != DMOE_OK) continue;
            all[n].name = info.name;
            all[n].file = f;
            all[n++].idx = j;
        }
    }
    qsort(all, (size_t)n, sizeof *all, ref_cmp);
    *n_out = n;
    return all;
}

/* weight_map -> m->refs: each tensor taken from the shard the index names; a tensor that shard
 * lacks, or a name the map lists twice, makes the directory corrupt. */
static dmoe_status resolve_weight_map(dmoe_model *m, const cJSON *wm, const char **names, const char *path) {
    int64_t n_all = 0;
    tensor_ref *all = list_tensors(m, &n_all);
    const int n = cJSON_GetArraySize(wm);
    m->refs = (tensor_ref *)calloc((size_t)n + 1, sizeof *m->refs);
    if (!all || !m->refs) {
        free(all);
        return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model: tensor table");
    }
    dmoe_status st = DMOE_OK;
    for (const cJSON *e = wm->child; e && st == DMOE_OK; e = e->next) {
        tensor_ref key = {e->string, -1, 0};
        for (int64_t f = 0; f < m->n_files && key.file < 0; f++)
            if (strcmp(names[f], e->valuestring) == 0) key.file = f;
        const tensor_ref *hit =
            key.file < 0 ? NULL : (const tensor_ref *)bsearch(&key, all, (size_t)n_all, sizeof key, ref_cmp);
        if (!hit)
            st = dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s: weight_map puts '%.200s' in '%.200s', which has "
                             "no such tensor", path, e->string, e->valuestring);
        else
            m->refs[m->n_refs++] = *hit;
    }
    free(all);
    if (st != DMOE_OK) return st;
    qsort(m->refs, (size_t)m->n_refs, sizeof *m->refs, ref_name_cmp);
    for (int64_t i = 1; i < m->n_refs; i++)
        if (strcmp(m->refs[i - 1].name, m->refs[i].name) == 0)
            return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s: weight_map names '%.200s' twice", path,
                               m->refs[i].name);
    return DMOE_OK;
}

static dmoe_status open_shards(dmoe_model *m, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    struct stat sb;
    const char *single = "model.safetensors";
    if (stat(path, &sb) != 0) {
        m->files = (dmoe_safetensors **)calloc(1, sizeof *m->files);
        if (!m->files) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model: shard table");
        snprintf(path, sizeof path, "%s/%s", dir, single);
        dmoe_status st = dmoe_safetensors_open(path, &m->files[0]);
        if (st != DMOE_OK) return st;
        m->n_files = 1;
        m->refs = list_tensors(m, &m->n_refs); /* one file: its names are unique (the parser checks) */
        return m->refs ? DMOE_OK : dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model: tensor table");
    }
    dmoe_status st = DMOE_OK;
    char *text = read_text(path, &st);
    if (!text) return st;
    cJSON *idx = cJSON_Parse(text);
    free(text);
    const cJSON *wm = idx ? cJSON_GetObjectItemCaseSensitive(idx, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(idx);
        return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s: no weight_map object", path);
    }
    int n = cJSON_GetArraySize(wm);
    m->files = (dmoe_safetensors **)calloc((size_t)n + 1, sizeof *m->files);
    const char **names = (const char **)calloc((size_t)n + 1, sizeof *names);
    if (!m->files || !names) st = dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model: shard table");
    for (const cJSON *e = wm->child; e && st == DMOE_OK; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            st = dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s: bad shard name for '%s'", path, e->string);
            break;
        }
        int seen = 0;
        for (int64_t i = 0; i < m->n_files; i++) seen |= strcmp(names[i], e->valuestring) == 0;
        if (seen) continue;
        char shard[4096];
        snprintf(shard, sizeof shard, "%s/%s", dir, e->valuestring);
        st = dmoe_safetensors_open(shard, &m->files[m->n_files]);
        if (st == DMOE_OK) names[m->n_files++] = e->valuestring;
    }
    if (st == DMOE_OK) st = resolve_weight_map(m, wm, names, path);
    free(names);
    cJSON_Delete(idx);
    return st;
}

static void name_router(const dmoe_model *m, int32_t L, char *buf) {
    snprintf(buf, MAX_NAME, "model.layers.%d.%s.gate.weight", (int)L, m->sch->moe);
}

dmoe_status dmoe_model_open(const char *dir, dmoe_model **out) {
    dmoe__clear_error(NULL);
    if (!dir || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "dir and out are required");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    dmoe_status st = DMOE_OK;
    char *text = read_text(path, &st);
    if (!text) return st;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s is not a JSON object", path);
    }
    dmoe_model *m = (dmoe_model *)calloc(1, sizeof *m);
    if (!m) {
        cJSON_Delete(cfg);
        return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model object");
    }
    st = parse_config(m, cfg);
    cJSON_Delete(cfg);
    if (st == DMOE_OK) st = open_shards(m, dir);
    if (st == DMOE_OK) {
        m->moe_layers = (int32_t *)calloc((size_t)m->n_layers, sizeof(int32_t));
        if (!m->moe_layers) st = dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "model layers");
    }
    for (int32_t L = 0; st == DMOE_OK && L < m->n_layers; L++) {
        char name[MAX_NAME];
        dmoe_st_tensor_info info;
        name_router(m, L, name);
        if (model_find(m, name, &info)) m->moe_layers[m->n_moe++] = L;
    }
    if (st == DMOE_OK && m->n_moe == 0)
        st = dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "%s: no MoE layer found (no tensor named like "
                         "model.layers.N.%s.gate.weight)", dir, m->sch->moe);
    if (st != DMOE_OK) {
        dmoe_model_close(m);
        return st;
    }
    /* The layer dtype follows the first router's dtype where dmoe can use it. */
    char name[MAX_NAME];
    dmoe_st_tensor_info info;
    name_router(m, m->moe_layers[0], name);
    if (model_find(m, name, &info) && info.dtype >= 0 && info.dtype != DMOE_DTYPE_I32)
        m->base.act_dtype = m->base.weight_dtype = (dmoe_dtype)info.dtype;
    *out = m;
    return DMOE_OK;
}

const char *dmoe_model_arch(const dmoe_model *m) { return m ? m->sch->model_type : NULL; }
int32_t dmoe_model_n_moe_layers(const dmoe_model *m) { return m ? m->n_moe : 0; }

dmoe_status dmoe_model_moe_layer(const dmoe_model *m, int32_t i, int32_t *layer_idx,
                                 dmoe_layer_desc *desc) {
    if (!m || !layer_idx || !desc)
        return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "model, layer_idx and desc are required");
    if (i < 0 || i >= m->n_moe)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "MoE layer %d outside [0, %d)", (int)i,
                           (int)m->n_moe);
    *layer_idx = m->moe_layers[i];
    *desc = m->base;
    return DMOE_OK;
}

/* ---- loading one layer ---- */

typedef struct arena_view {
    size_t offset;
    size_t bytes;
} arena_view;

/* Copies tensor `name` of shape (rows, cols) into dst (dtype dt), converting. */
static dmoe_status copy_tensor(dmoe_context *ctx, const dmoe_model *m, const char *name, int64_t rows,
                               int64_t cols, void *dst, dmoe_dtype dt) {
    dmoe_st_tensor_info info;
    if (!model_find(m, name, &info))
        return dmoe__error(ctx, DMOE_ERR_CORRUPT_FILE, "tensor '%s' is missing", name);
    int shape_ok = (info.n_dims == 2 && info.shape[0] == rows && info.shape[1] == cols) ||
                   (rows == 1 && info.n_dims == 1 && info.shape[0] == cols);
    if (!shape_ok)
        return dmoe__error(ctx, DMOE_ERR_CORRUPT_FILE,
                           "tensor '%s' has shape (%lld, %lld) [%d dims], config says (%lld, %lld)", name,
                           (long long)info.shape[0], (long long)(info.n_dims > 1 ? info.shape[1] : 0),
                           (int)info.n_dims, (long long)rows, (long long)cols);
    if (info.dtype != DMOE_DTYPE_F32 && info.dtype != DMOE_DTYPE_BF16 && info.dtype != DMOE_DTYPE_F16)
        return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED_DTYPE, "tensor '%s' has dtype %s (dmoe loads F32, "
                           "BF16, F16)", name, info.dtype_name);
    const int64_t n = rows * cols;
    if ((dmoe_dtype)info.dtype == dt) {
        memcpy(dst, info.data, info.n_bytes);
    } else {
        for (int64_t i = 0; i < n; i++)
            dmoe__store_f32(dst, dt, i, dmoe__load_f32(info.data, (dmoe_dtype)info.dtype, i));
    }
    return DMOE_OK;
}

static int same_model_shape(const dmoe_layer_desc *a, const dmoe_layer_desc *b) {
    return a->hidden == b->hidden && a->ffn == b->ffn && a->n_experts == b->n_experts &&
           a->top_k == b->top_k && a->n_shared_experts == b->n_shared_experts &&
           a->shared_ffn == b->shared_ffn && a->shared_gate == b->shared_gate &&
           memcmp(&a->routing, &b->routing, sizeof a->routing) == 0;
}

/* Loads one layer; n_slots > 0: offloaded (routed experts in host memory, a
 * GPU cache of n_slots), else every weight where the backend keeps them. */
static dmoe_status load_layer(dmoe_model *m, dmoe_context *ctx, int32_t layer_idx,
                              const dmoe_layer_desc *desc, int32_t n_slots, dmoe_layer **out) {
    if (!ctx) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "ctx is NULL");
    dmoe__clear_error(ctx);
    if (!m || !desc || !out) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "model, desc and out are required");
    int32_t found = -1;
    for (int32_t i = 0; i < m->n_moe; i++)
        if (m->moe_layers[i] == layer_idx) found = i;
    if (found < 0)
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "decoder layer %d is not an MoE layer",
                           (int)layer_idx);
    if (!same_model_shape(desc, &m->base))
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                           "desc differs from the model's in more than dtypes and max_tokens");

    if (n_slots > 0) {
        if (!ctx->backend->weights_offloaded)
            return dmoe__error(ctx, DMOE_ERR_UNSUPPORTED,
                               "backend '%s' has no offloaded experts (cuda only; host backends keep every "
                               "weight in host memory anyway: dmoe_model_load_layer)",
                               ctx->backend->name);
        if (n_slots > desc->n_experts)
            return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_slots must be in [1, E=%d], got %d",
                               (int)desc->n_experts, (int)n_slots);
    }
    /* The layer validates desc first: the sizes below are products of its fields (E * 2F * H),
     * which only stay far from overflow within the limits. */
    dmoe_layer *layer = NULL;
    dmoe_status st = dmoe_layer_create(ctx, desc, &layer);
    if (st != DMOE_OK) return st;
    const int64_t H = desc->hidden, F = desc->ffn, E = desc->n_experts, Fs = desc->shared_ffn;
    const size_t es = dmoe_dtype_size(desc->weight_dtype);
    const int S = desc->n_shared_experts;
    /* arena: router | w13 | w2 | bias | shared_w13 | shared_w2 | shared_gate (v[0..6]), each
     * 64-byte aligned, laid out with the routed experts (w13, w2) LAST, so that everything
     * else is one prefix of small_bytes (what an offloaded layer copies to the device) */
    arena_view v[7];
    size_t sizes[7] = {(size_t)(E * H) * es,       (size_t)(E * 2 * F * H) * es, (size_t)(E * H * F) * es,
                       desc->routing.use_correction_bias ? (size_t)E * 4 : 0,
                       (size_t)(S * 2 * Fs * H) * es, (size_t)(S * H * Fs) * es,
                       desc->shared_gate == DMOE_SHARED_GATE_SIGMOID ? (size_t)H * es : 0};
    static const int order[7] = {0, 3, 4, 5, 6, 1, 2};
    size_t total = 0, small_bytes = 0;
    for (int j = 0; j < 7; j++) {
        const int i = order[j];
        if (i == 1) small_bytes = total;
        v[i].offset = total;
        v[i].bytes = sizes[i];
        total += (sizes[i] + 63) / 64 * 64;
    }
    uint8_t *arena = (uint8_t *)dmoe__malloc(ctx, total);
    if (!arena) {
        dmoe_layer_destroy(layer);
        return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "weight arena of %zu bytes", total);
    }
    layer->owned_weights = arena;
    const dmoe_dtype dt = desc->weight_dtype;
    const char *moe = m->sch->moe;
    char name[MAX_NAME];
    snprintf(name, sizeof name, "model.layers.%d.%s.gate.weight", (int)layer_idx, moe);
    st = copy_tensor(ctx, m, name, E, H, arena + v[0].offset, dt);
    for (int64_t e = 0; st == DMOE_OK && e < E; e++) {
        uint8_t *w13 = arena + v[1].offset + (size_t)(e * 2 * F * H) * es;
        uint8_t *w2 = arena + v[2].offset + (size_t)(e * H * F) * es;
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%lld.%s.weight", (int)layer_idx, moe,
                 (long long)e, m->sch->gate);
        st = copy_tensor(ctx, m, name, F, H, w13, dt);
        if (st != DMOE_OK) break;
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%lld.%s.weight", (int)layer_idx, moe,
                 (long long)e, m->sch->up);
        st = copy_tensor(ctx, m, name, F, H, w13 + (size_t)(F * H) * es, dt);
        if (st != DMOE_OK) break;
        snprintf(name, sizeof name, "model.layers.%d.%s.experts.%lld.%s.weight", (int)layer_idx, moe,
                 (long long)e, m->sch->down);
        st = copy_tensor(ctx, m, name, H, F, w2, dt);
    }
    if (st == DMOE_OK && desc->routing.use_correction_bias) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", (int)layer_idx);
        st = copy_tensor(ctx, m, name, 1, E, arena + v[3].offset, DMOE_DTYPE_F32);
    }
    if (st == DMOE_OK && S > 0) {
        const char *proj[3] = {m->sch->gate, m->sch->up, m->sch->down};
        for (int j = 0; st == DMOE_OK && j < 3; j++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.%s.%s.weight", (int)layer_idx,
                     m->sch->shared, proj[j]);
            uint8_t *dst = j < 2 ? arena + v[4].offset + (size_t)(j * Fs * H) * es : arena + v[5].offset;
            st = copy_tensor(ctx, m, name, j < 2 ? Fs : H, j < 2 ? H : Fs, dst, dt);
        }
    }
    if (st == DMOE_OK && desc->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert_gate.weight", (int)layer_idx);
        st = copy_tensor(ctx, m, name, 1, H, arena + v[6].offset, dt);
    }
    if (st == DMOE_OK) {
        dmoe_weights w;
        memset(&w, 0, sizeof w);
        w.router = arena + v[0].offset;
        w.w13 = arena + v[1].offset;
        w.w2 = arena + v[2].offset;
        if (desc->routing.use_correction_bias) w.correction_bias = (const float *)(arena + v[3].offset);
        if (S > 0) {
            w.shared_w13 = arena + v[4].offset;
            w.shared_w2 = arena + v[5].offset;
        }
        if (desc->shared_gate == DMOE_SHARED_GATE_SIGMOID) w.shared_gate = arena + v[6].offset;
        /* host backends keep the arena; cuda copies it to device memory and frees it
         * (offloaded: only the prefix before the experts; the experts go to the cache) */
        layer->owned_weights = NULL;
        st = n_slots > 0 ? dmoe__layer_adopt_arena_offloaded(layer, arena, small_bytes, &w, n_slots)
                         : dmoe__layer_adopt_arena(layer, arena, total, &w);
        if (st != DMOE_OK) dmoe__free(ctx, arena);
    }
    if (st != DMOE_OK) {
        dmoe_layer_destroy(layer);
        return st;
    }
    *out = layer;
    return DMOE_OK;
}

dmoe_status dmoe_model_load_layer(dmoe_model *m, dmoe_context *ctx, int32_t layer_idx,
                                  const dmoe_layer_desc *desc, dmoe_layer **out) {
    return load_layer(m, ctx, layer_idx, desc, 0, out);
}

dmoe_status dmoe_model_load_layer_offloaded(dmoe_model *m, dmoe_context *ctx, int32_t layer_idx,
                                            const dmoe_layer_desc *desc, int32_t n_slots, dmoe_layer **out) {
    if (ctx && n_slots < 1) {
        dmoe__clear_error(ctx);
        return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT, "n_slots must be >= 1, got %d", (int)n_slots);
    }
    return load_layer(m, ctx, layer_idx, desc, n_slots, out);
}

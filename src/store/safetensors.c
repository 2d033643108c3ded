/*
 * safetensors.c: a validating, zero-copy reader of .safetensors files.
 *
 * Layout of a file:
 *   u64 little-endian N | N bytes of JSON header | data section
 * The header is an object: "__metadata__" -> {string: string} (optional), and
 * for each tensor name -> {"dtype": "BF16", "shape": [d0, ...],
 * "data_offsets": [begin, end]} with offsets relative to the data section.
 *
 * Nothing in the header is trusted: the header must fit in the file (and in
 * 100 MB), numbers must be exact non-negative integers, shape x element size
 * must equal end - begin without overflow, and the byte ranges sorted by
 * begin must tile the data section exactly (no overlap, no hole), which is
 * what the format's own reader demands. Views point into the mmap, so each
 * tensor must also start at an address aligned to its element size.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../dmoe-impl.h"

#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_MAX_INT ((double)((uint64_t)1 << 53))

typedef struct st_entry {
    char *name;
    int dtype_idx;
    int32_t n_dims;
    int64_t shape[DMOE_ST_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

struct dmoe_safetensors {
    const uint8_t *base;  /* the whole file image */
    size_t len;
    int mapped;           /* 1: base came from mmap and is unmapped on close */
    const uint8_t *data;  /* data section */
    int64_t n;
    st_entry *entries;    /* (n) sorted by begin */
    char **meta_keys, **meta_values;
    int64_t n_meta;
};

static const struct {
    const char *name;
    size_t size;
    int32_t dmoe_dtype;
} st_dtypes[] = {
    {"BOOL", 1, -1}, {"U8", 1, -1},       {"I8", 1, -1},     {"F8_E5M2", 1, -1},
    {"F8_E4M3", 1, -1}, {"I16", 2, -1},   {"U16", 2, -1},    {"F16", 2, DMOE_DTYPE_F16},
    {"BF16", 2, DMOE_DTYPE_BF16}, {"I32", 4, DMOE_DTYPE_I32}, {"U32", 4, -1},
    {"F32", 4, DMOE_DTYPE_F32}, {"F64", 8, -1}, {"I64", 8, -1}, {"U64", 8, -1},
};
#define ST_N_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

void dmoe_safetensors_close(dmoe_safetensors *st) {
    if (!st) return;
    for (int64_t i = 0; i < st->n; i++) free(st->entries[i].name);
    free(st->entries);
    for (int64_t i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    if (st->mapped && st->base) munmap((void *)st->base, st->len);
    free(st);
}

/* An exact integer in [0, 2^53] from a JSON number. */
static int get_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return 0;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > ST_MAX_INT || v != (double)(uint64_t)v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = (const st_entry *)a, *y = (const st_entry *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

static dmoe_status corrupt(const char *what, const char *name) {
    return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "safetensors: %s%s%s%s", what,
                       name ? " (tensor '" : "", name ? name : "", name ? "')" : "");
}

static dmoe_status parse_metadata(dmoe_safetensors *st, const cJSON *meta) {
    if (!cJSON_IsObject(meta)) return corrupt("__metadata__ is not an object", NULL);
    int64_t n = cJSON_GetArraySize(meta);
    st->meta_keys = (char **)calloc((size_t)n + 1, sizeof(char *));
    st->meta_values = (char **)calloc((size_t)n + 1, sizeof(char *));
    if (!st->meta_keys || !st->meta_values)
        return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: metadata");
    for (const cJSON *kv = meta->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return dmoe__error(NULL, DMOE_ERR_CORRUPT_FILE, "safetensors: __metadata__ values must be strings "
                               "(key '%.200s')", kv->string ? kv->string : "");
        st->meta_keys[st->n_meta] = dup_str(kv->string);
        st->meta_values[st->n_meta] = dup_str(kv->valuestring);
        st->n_meta++;
        if (!st->meta_keys[st->n_meta - 1] || !st->meta_values[st->n_meta - 1])
            return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: metadata");
    }
    return DMOE_OK;
}

static dmoe_status parse_entry(const cJSON *item, st_entry *e) {
    const char *name = item->string;
    if (!cJSON_IsObject(item)) return corrupt("entry is not an object", name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dtype)) return corrupt("missing or non-string dtype", name);
    if (!cJSON_IsArray(shape)) return corrupt("missing or non-array shape", name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return corrupt("data_offsets must be an array of two integers", name);
    e->dtype_idx = -1;
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (strcmp(dtype->valuestring, st_dtypes[i].name) == 0) e->dtype_idx = i;
    if (e->dtype_idx < 0)
        return dmoe__error(NULL, DMOE_ERR_UNSUPPORTED_DTYPE,
                           "safetensors: unknown dtype '%.32s' (tensor '%s')", dtype->valuestring,
                           name);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > DMOE_ST_MAX_DIMS) return corrupt("more than 8 dimensions", name);
    e->n_dims = n_dims;
    /* count = product of dims, checked against overflow via the 2^53 bound */
    uint64_t count = 1;
    int32_t d = 0;
    for (const cJSON *dim = shape->child; dim; dim = dim->next, d++) {
        uint64_t v;
        if (!get_uint(dim, &v)) return corrupt("shape entries must be integers in [0, 2^53]", name);
        e->shape[d] = (int64_t)v;
        if (v != 0 && count > (uint64_t)ST_MAX_INT / v) return corrupt("shape overflows", name);
        count *= v;
    }
    if (!get_uint(offs->child, &e->begin) || !get_uint(offs->child->next, &e->end))
        return corrupt("data_offsets must be integers in [0, 2^53]", name);
    if (e->end < e->begin) return corrupt("data_offsets end before begin", name);
    size_t esz = st_dtypes[e->dtype_idx].size;
    if (count > (uint64_t)ST_MAX_INT / esz || count * esz != e->end - e->begin)
        return corrupt("byte range does not equal shape x dtype size", name);
    e->name = dup_str(name);
    if (!e->name) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: names");
    return DMOE_OK;
}

static dmoe_status parse(dmoe_safetensors *st) {
    if (st->len < 8) return corrupt("file shorter than its 8-byte header length", NULL);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | st->base[i];
    if (hlen > ST_MAX_HEADER) return corrupt("header length above 100 MB", NULL);
    if (hlen > st->len - 8) return corrupt("header length runs past the end of the file", NULL);
    st->data = st->base + 8 + hlen;
    const uint64_t data_len = st->len - 8 - hlen;

    /* JSON text has no NUL byte (a name would end at one), and after the object only the
     * format's space padding may follow */
    const char *htext = (const char *)st->base + 8, *hend = NULL;
    if (memchr(htext, 0, (size_t)hlen)) return corrupt("header holds a NUL byte", NULL);
    cJSON *root = cJSON_ParseWithLengthOpts(htext, (size_t)hlen, &hend, 0);
    if (!root) return corrupt("header is not valid JSON", NULL);
    for (const char *c = hend; c < htext + hlen; c++)
        if (*c != ' ' && *c != '\n' && *c != '\r' && *c != '\t') {
            cJSON_Delete(root);
            return corrupt("bytes other than space padding after the header's JSON object", NULL);
        }
    dmoe_status status = DMOE_OK;
    if (!cJSON_IsObject(root)) {
        status = corrupt("header is not a JSON object", NULL);
        goto done;
    }
    int64_t n_items = cJSON_GetArraySize(root);
    st->entries = (st_entry *)calloc((size_t)n_items + 1, sizeof(st_entry));
    if (!st->entries) {
        status = dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: entries");
        goto done;
    }
    for (const cJSON *item = root->child; item; item = item->next) {
        if (!item->string) {
            status = corrupt("entry without a name", NULL);
            goto done;
        }
        if (strcmp(item->string, "__metadata__") == 0) {
            if (st->meta_keys) {
                status = corrupt("__metadata__ appears twice", NULL);
                goto done;
            }
            if ((status = parse_metadata(st, item)) != DMOE_OK) goto done;
            continue;
        }
        for (int64_t i = 0; i < st->n; i++) {
            if (strcmp(st->entries[i].name, item->string) == 0) {
                status = corrupt("duplicate tensor name", item->string);
                goto done;
            }
        }
        if ((status = parse_entry(item, &st->entries[st->n])) != DMOE_OK) goto done;
        st->n++;
    }
    qsort(st->entries, (size_t)st->n, sizeof(st_entry), cmp_begin);
    uint64_t expect = 0;
    for (int64_t i = 0; i < st->n; i++) {
        const st_entry *e = &st->entries[i];
        if (e->begin < expect) {
            status = corrupt("byte ranges overlap", e->name);
            goto done;
        }
        if (e->begin > expect) {
            status = corrupt("hole in the data section before", e->name);
            goto done;
        }
        if (e->end > data_len) {
            status = corrupt("data_offsets run past the end of the file", e->name);
            goto done;
        }
        expect = e->end;
        size_t esz = st_dtypes[e->dtype_idx].size;
        if ((uintptr_t)(st->data + e->begin) % esz != 0) {
            status = dmoe__error(NULL, DMOE_ERR_MISALIGNED,
                                 "safetensors: tensor '%s' is not aligned to its %zu-byte elements "
                                 "(header length %llu is not padded)",
                                 e->name, esz, (unsigned long long)hlen);
            goto done;
        }
    }
    if (expect != data_len) status = corrupt("data section has bytes no tensor covers", NULL);
done:
    cJSON_Delete(root);
    return status;
}

static dmoe_status finish_open(dmoe_safetensors *st, dmoe_safetensors **out) {
    dmoe_status status = parse(st);
    if (status != DMOE_OK) {
        dmoe_safetensors_close(st);
        return status;
    }
    *out = st;
    return DMOE_OK;
}

dmoe_status dmoe_safetensors_open_memory(const void *buf, size_t len, dmoe_safetensors **out) {
    dmoe__clear_error(NULL);
    if (!buf || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "buf and out are required");
    dmoe_safetensors *st = (dmoe_safetensors *)calloc(1, sizeof *st);
    if (!st) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: file object");
    st->base = (const uint8_t *)buf;
    st->len = len;
    return finish_open(st, out);
}

dmoe_status dmoe_safetensors_open(const char *path, dmoe_safetensors **out) {
    dmoe__clear_error(NULL);
    if (!path || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "path and out are required");
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; the
     * regular-file check below refuses it (and the flag does nothing to files) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return dmoe__error(NULL, DMOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dmoe__error(NULL, DMOE_ERR_IO, "'%s' is not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    void *base = NULL;
    if (len > 0) {
        base = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED) {
            int err = errno;
            close(fd);
            return dmoe__error(NULL, DMOE_ERR_IO, "cannot map '%s': %s", path, strerror(err));
        }
    }
    close(fd);
    dmoe_safetensors *st = (dmoe_safetensors *)calloc(1, sizeof *st);
    if (!st) {
        if (base) munmap(base, len);
        return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "safetensors: file object");
    }
    static const uint8_t empty[1] = {0};
    st->base = base ? (const uint8_t *)base : empty;
    st->len = len;
    st->mapped = base != NULL;
    dmoe_status status = finish_open(st, out);
    if (status != DMOE_OK) {
        /* prefix the path to the parser's message */
        char msg[DMOE_ERROR_LEN];
        snprintf(msg, sizeof msg, "%s", dmoe_context_last_error(NULL));
        const char *colon = strchr(msg, ':');
        dmoe__error(NULL, status, "%s:%s", path, colon ? colon + 1 : msg);
    }
    return status;
}

int64_t dmoe_safetensors_count(const dmoe_safetensors *st) { return st ? st->n : 0; }

static void fill_info(const dmoe_safetensors *st, const st_entry *e, dmoe_st_tensor_info *out) {
    memset(out, 0, sizeof *out);
    out->name = e->name;
    out->dtype_name = st_dtypes[e->dtype_idx].name;
    out->dtype = st_dtypes[e->dtype_idx].dmoe_dtype;
    out->element_size = st_dtypes[e->dtype_idx].size;
    out->n_dims = e->n_dims;
    for (int32_t d = 0; d < e->n_dims; d++) out->shape[d] = e->shape[d];
    out->data = st->data + e->begin;
    out->n_bytes = (size_t)(e->end - e->begin);
}

dmoe_status dmoe_safetensors_get(const dmoe_safetensors *st, int64_t idx, dmoe_st_tensor_info *out) {
    if (!st || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "st and out are required");
    if (idx < 0 || idx >= st->n)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "tensor index %lld outside [0, %lld)",
                           (long long)idx, (long long)st->n);
    fill_info(st, &st->entries[idx], out);
    return DMOE_OK;
}

dmoe_status dmoe_safetensors_find(const dmoe_safetensors *st, const char *name,
                                  dmoe_st_tensor_info *out) {
    if (!st || !name || !out)
        return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "st, name and out are required");
    for (int64_t i = 0; i < st->n; i++) {
        if (strcmp(st->entries[i].name, name) == 0) {
            fill_info(st, &st->entries[i], out);
            return DMOE_OK;
        }
    }
    return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "no tensor named '%s'", name);
}

const char *dmoe_safetensors_metadata(const dmoe_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int64_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

/*
 * module.c: the C extension dmoe._C over libdmoe's public API.
 *
 * One entry point does the work, run(op, tensors..., config):
 *   op 0 forward: y (T, H) = MoE(x) with router (E, H), w13 (E, 2F, H), w2 (E, H, F)
 *   op 1 route:   topk_ids (T, K) int32, topk_weights (T, K) float32 from x and router
 *   op 2 experts: y (T, H) from x and caller-given topk_ids / topk_weights
 * optionally with correction_bias (E) float32 and shared experts
 * shared_w13 (S, 2Fs, H), shared_w2 (S, H, Fs), shared_gate (1, H).
 * Every tensor arrives through DLPack (dlpack-import.c), outputs included:
 * the Python side allocates them with the caller's library, so numpy in
 * gives numpy out and torch in gives torch out.
 *
 * Creating a dmoe layer sizes its workspace, so layers are cached: contexts
 * per (backend, device, threads), layers per (context, layer description)
 * with max_tokens rounded up to a power of two. A layer is shared by every
 * stream: calls on different streams must not overlap on the device (the
 * Python side documents this). A layer used during a CUDA graph capture is
 * pinned (pin=True): the graph holds its workspace, so it is never evicted.
 * A call binds the
 * caller's weights with dmoe_layer_set_weights (views, no copy; skipped when
 * the pointers are those already bound) and runs. The cache is touched only
 * with the GIL held; the compute runs with the GIL released under the
 * context's lock, because a layer must not run two calls at once and a
 * context's thread pool serves one call at a time. An entry in use is never
 * evicted.
 */
#include "dmoe-python.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pythread.h"

PyObject *dmoe_py_Error, *dmoe_py_TypeError, *dmoe_py_ValueError, *dmoe_py_MemoryError,
    *dmoe_py_Unsupported, *dmoe_py_RuntimeError;

/* ---- errors ---- */

static PyObject *exception_class(dmoe_status st) {
    switch (st) {
    case DMOE_ERR_UNSUPPORTED_DTYPE:
    case DMOE_ERR_DTYPE_MISMATCH: return dmoe_py_TypeError;
    case DMOE_ERR_NULL_POINTER:
    case DMOE_ERR_INVALID_ARGUMENT:
    case DMOE_ERR_BAD_SHAPE:
    case DMOE_ERR_MISALIGNED:
    case DMOE_ERR_NO_WEIGHTS:
    case DMOE_ERR_TOO_MANY_TOKENS:
    case DMOE_ERR_WRONG_DEVICE: return dmoe_py_ValueError;
    case DMOE_ERR_OUT_OF_MEMORY: return dmoe_py_MemoryError;
    case DMOE_ERR_BACKEND_UNAVAILABLE:
    case DMOE_ERR_UNSUPPORTED: return dmoe_py_Unsupported;
    default: return dmoe_py_RuntimeError;
    }
}

int dmoe_py_raise(dmoe_status st, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PyObject *cls = exception_class(st);
    PyObject *exc = PyObject_CallFunction(cls, "s", msg);
    if (!exc) return -1;
    PyObject *code = PyLong_FromLong((long)st);
    PyObject *name = PyUnicode_FromString(dmoe_status_name(st));
    if (code && name) {
        PyObject_SetAttrString(exc, "status", code);
        PyObject_SetAttrString(exc, "status_name", name);
    }
    Py_XDECREF(code);
    Py_XDECREF(name);
    PyErr_SetObject(cls, exc);
    Py_DECREF(exc);
    return -1;
}

/* ---- caches ---- */

typedef struct ctx_entry {
    dmoe_backend backend;
    int32_t device;
    int32_t n_threads;
    dmoe_context *ctx;
    PyThread_type_lock lock; /* held while a call computes on this context */
    int n_users;             /* cached layers plus calls in flight */
    struct ctx_entry *next;
} ctx_entry;

typedef struct layer_key {
    int32_t backend, device, n_threads;
    dmoe_layer_desc desc; /* max_tokens zeroed */
} layer_key;

typedef struct layer_entry {
    layer_key key;
    int64_t max_tokens;
    ctx_entry *ce;
    dmoe_layer *layer;
    dmoe_weights bound;
    int has_bound;
    int in_use;
    int pinned; /* used inside a CUDA graph capture: its workspace must outlive the graph */
    uint64_t last_used;
} layer_entry;

#define MAX_LAYERS 64

static ctx_entry *contexts;
static layer_entry *layers[MAX_LAYERS];
static int n_layers;
static uint64_t use_clock;
static uint64_t stat_layer_creates, stat_hits;

static void ctx_release(ctx_entry *ce) { ce->n_users--; }

static ctx_entry *ctx_get(dmoe_backend backend, int32_t device, int32_t n_threads) {
    for (ctx_entry *ce = contexts; ce; ce = ce->next)
        if (ce->backend == backend && ce->device == device && ce->n_threads == n_threads) {
            ce->n_users++;
            return ce;
        }
    dmoe_context_desc d;
    dmoe_context_desc_init(&d);
    d.backend = backend;
    d.device = device < 0 ? 0 : device;
    d.n_threads = n_threads;
    dmoe_context *ctx = NULL;
    dmoe_status st = dmoe_context_create(&d, &ctx);
    if (st != DMOE_OK) {
        dmoe_py_raise(st, "%s", dmoe_context_last_error(NULL));
        return NULL;
    }
    ctx_entry *ce = PyMem_Calloc(1, sizeof *ce);
    PyThread_type_lock lock = PyThread_allocate_lock();
    if (!ce || !lock) {
        PyMem_Free(ce);
        if (lock) PyThread_free_lock(lock);
        dmoe_context_destroy(ctx);
        PyErr_NoMemory();
        return NULL;
    }
    ce->backend = backend;
    ce->device = device;
    ce->n_threads = n_threads;
    ce->ctx = ctx;
    ce->lock = lock;
    ce->n_users = 1;
    ce->next = contexts;
    contexts = ce;
    return ce;
}

static void layer_free(layer_entry *le) {
    dmoe_layer_destroy(le->layer);
    ctx_release(le->ce);
    PyMem_Free(le);
}

/* Drops the least recently used idle layer; 0 if every layer is in use. */
static int evict_one(void) {
    int victim = -1;
    for (int i = 0; i < n_layers; i++)
        if (!layers[i]->in_use && !layers[i]->pinned &&
            (victim < 0 || layers[i]->last_used < layers[victim]->last_used))
            victim = i;
    if (victim < 0) return 0;
    layer_free(layers[victim]);
    layers[victim] = layers[--n_layers];
    return 1;
}

/* The most tokens one layer takes (dmoe.h: max_tokens <= 2^24, max_tokens * K <= 2^30). */
static int64_t max_tokens_cap(int64_t top_k) {
    int64_t cap = DMOE_MAX_TOKENS, by_k = ((int64_t)1 << 30) / (top_k > 0 ? top_k : 1);
    return by_k < cap ? by_k : cap;
}

static int64_t round_max_tokens(int64_t T, int32_t top_k) {
    int64_t cap = max_tokens_cap(top_k);
    int64_t m = 16;
    while (m < T && m < cap) m *= 2;
    if (m > cap) m = cap;
    return m < T ? T : m; /* T beyond the cap: let dmoe say so */
}

/* Finds or creates the layer for key with room for T tokens; marks it in use. */
static layer_entry *layer_get(const layer_key *key, int64_t T) {
    for (int i = 0; i < n_layers; i++) {
        layer_entry *le = layers[i];
        if (!le->in_use && le->max_tokens >= T && memcmp(&le->key, key, sizeof *key) == 0) {
            le->in_use = 1;
            le->last_used = ++use_clock;
            stat_hits++;
            return le;
        }
    }
    ctx_entry *ce = ctx_get((dmoe_backend)key->backend, key->device, key->n_threads);
    if (!ce) return NULL;
    dmoe_layer_desc desc;
    memcpy(&desc, &key->desc, sizeof desc);
    desc.max_tokens = round_max_tokens(T, desc.top_k);
    dmoe_layer *layer = NULL;
    dmoe_status st = dmoe_layer_create(ce->ctx, &desc, &layer);
    if (st != DMOE_OK) {
        dmoe_py_raise(st, "%s", dmoe_context_last_error(ce->ctx));
        ctx_release(ce);
        return NULL;
    }
    layer_entry *le = PyMem_Calloc(1, sizeof *le);
    if (!le) {
        dmoe_layer_destroy(layer);
        ctx_release(ce);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(&le->key, key, sizeof *key);
    le->max_tokens = desc.max_tokens;
    le->ce = ce;
    le->layer = layer;
    le->in_use = 1;
    le->last_used = ++use_clock;
    stat_layer_creates++;
    if (n_layers == MAX_LAYERS && !evict_one()) {
        /* Every cached layer is busy in another thread: run uncached. */
        le->key.backend = -1; /* never matches; freed after the call */
        return le;
    }
    layers[n_layers++] = le;
    return le;
}

static void layer_put(layer_entry *le) {
    le->in_use = 0;
    if (le->key.backend == -1) layer_free(le);
}

/* ---- run ---- */

enum { OP_FORWARD = 0, OP_ROUTE = 1, OP_EXPERTS = 2 };
enum {
    T_X, T_Y, T_IDS, T_WTS, T_ROUTER, T_W13, T_W2, T_BIAS, T_SW13, T_SW2, T_SGATE, T_COUNT
};
static const char *const default_names[T_COUNT] = {
    "x", "y", "topk_ids", "topk_weights", "router", "w13", "w2", "correction_bias",
    "shared_w13", "shared_w2", "shared_gate"};

/* ---- non-finite router logits ----
 * dmoe.h defines them (NaN = -FLT_MAX, +-inf = +-FLT_MAX), but routing given
 * logits goes through an identity router (see dmoe/_core.py), where a
 * non-finite logit times 0 would poison every other expert's logit. So host
 * logits that hold any are first copied to float32 with those rules applied. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float load_as_float(const void *p, dmoe_dtype dt, int64_t i) {
    if (dt == DMOE_DTYPE_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    if (dt == DMOE_DTYPE_F16) return half_to_float(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int has_non_finite(const void *p, dmoe_dtype dt, int64_t n) {
    if (dt == DMOE_DTYPE_F32) {
        const uint32_t *u = (const uint32_t *)p;
        for (int64_t i = 0; i < n; i++)
            if ((u[i] & 0x7f800000u) == 0x7f800000u) return 1;
        return 0;
    }
    const uint16_t mask = dt == DMOE_DTYPE_F16 ? 0x7c00u : 0x7f80u;
    const uint16_t *h = (const uint16_t *)p;
    for (int64_t i = 0; i < n; i++)
        if ((h[i] & mask) == mask) return 1;
    return 0;
}

/* A float32 copy of n logits with the dmoe.h rules for NaN and inf, or NULL. */
static float *sanitized_copy(const void *p, dmoe_dtype dt, int64_t n) {
    float *out = PyMem_RawMalloc((size_t)n * sizeof(float) + 1);
    if (!out) return NULL;
    for (int64_t i = 0; i < n; i++) {
        float v = load_as_float(p, dt, i);
        out[i] = isnan(v) ? -FLT_MAX : v > FLT_MAX ? FLT_MAX : v < -FLT_MAX ? -FLT_MAX : v;
    }
    return out;
}

static int is_float(dmoe_dtype d) {
    return d == DMOE_DTYPE_F32 || d == DMOE_DTYPE_BF16 || d == DMOE_DTYPE_F16;
}

static void dims_str(const py_tensor *t, char *buf, size_t len) {
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int32_t i = 0; i < t->n_dims && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld",
                                 (long long)t->shape[i]);
    if (t->n_dims == 1 && used < len) used += (size_t)snprintf(buf + used, len - used, ",");
    if (used < len) snprintf(buf + used, len - used, ")");
}

/* Checks t's shape against want (n dims; -1 = any extent). */
static int check_shape(const py_tensor *t, const char *name, int n, const int64_t *want,
                       const char *layout) {
    int ok = t->n_dims == n;
    for (int i = 0; ok && i < n; i++) ok = want[i] < 0 || t->shape[i] == want[i];
    if (ok) return 0;
    char got[96];
    dims_str(t, got, sizeof got);
    return dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s has shape %s, expected %s", name, got, layout);
}

static const char *device_str(int32_t dev, char *buf, size_t len) {
    if (dev == DMOE_DEVICE_HOST) snprintf(buf, len, "the host (cpu)");
    else snprintf(buf, len, "cuda:%d", (int)dev);
    return buf;
}

static PyObject *py_run(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"op", "x", "y", "topk_ids", "topk_weights", "router", "w13", "w2",
                             "correction_bias", "shared_w13", "shared_w2", "shared_gate",
                             "top_k", "scoring", "renormalize", "n_group", "topk_group",
                             "routed_scaling_factor", "backend", "n_threads", "stream", "names",
                             "sanitize", "pin", NULL};
    int op = -1;
    PyObject *objs[T_COUNT] = {0};
    int top_k = 0, scoring = 0, renormalize = 1, n_group = 0, topk_group = 0, n_threads = 0;
    double scale = 1.0;
    const char *backend_name = "cpu-ref";
    unsigned long long stream_ull = 0;
    PyObject *names_obj = Py_None;
    int sanitize = 0, pin = 0;
    float *clean_x = NULL; /* sanitized logits, owned */
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "iO|OOOOOOOOOOiipiidsiKOpp:run", kwlist, &op, &objs[T_X], &objs[T_Y],
            &objs[T_IDS], &objs[T_WTS], &objs[T_ROUTER], &objs[T_W13], &objs[T_W2], &objs[T_BIAS],
            &objs[T_SW13], &objs[T_SW2], &objs[T_SGATE], &top_k, &scoring, &renormalize,
            &n_group, &topk_group, &scale, &backend_name, &n_threads, &stream_ull, &names_obj,
            &sanitize, &pin))
        return NULL;
    if (op < OP_FORWARD || op > OP_EXPERTS)
        return PyErr_Format(PyExc_ValueError, "dmoe._C.run: unknown op %d", op), NULL;
    const char *names[T_COUNT];
    for (int i = 0; i < T_COUNT; i++) names[i] = default_names[i];
    if (names_obj != Py_None) {
        if (!PyDict_Check(names_obj))
            return PyErr_Format(PyExc_TypeError, "dmoe._C.run: names must be a dict"), NULL;
        for (int i = 0; i < T_COUNT; i++) {
            PyObject *v = PyDict_GetItemString(names_obj, default_names[i]); /* borrowed */
            if (v && PyUnicode_Check(v)) {
                const char *s = PyUnicode_AsUTF8(v);
                if (!s) return NULL;
                names[i] = s; /* lives as long as the dict, i.e. this call */
            }
        }
    }
    dmoe_backend backend;
    if (dmoe_backend_from_name(backend_name, &backend) != DMOE_OK)
        return dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT, "%s", dmoe_context_last_error(NULL)),
               NULL;
    const uintptr_t stream = (uintptr_t)stream_ull;

    /* Outputs are written; everything else only read. */
    const int writable[T_COUNT] = {
        [T_Y] = op != OP_ROUTE, [T_IDS] = op == OP_ROUTE, [T_WTS] = op == OP_ROUTE};
    /* Which tensors each op needs (1), may take (2) or ignores (0). */
    static const int need[3][T_COUNT] = {
        /*           x  y  ids wts rtr w13 w2 bias sw13 sw2 sgate */
        [OP_FORWARD] = {1, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2},
        [OP_ROUTE] = {1, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0},
        [OP_EXPERTS] = {1, 1, 1, 1, 0, 1, 1, 0, 2, 2, 2},
    };
    py_tensor t[T_COUNT];
    memset(t, 0, sizeof t);
    layer_entry *le = NULL;
    PyObject *result = NULL;
    char b1[64], b2[64];

    for (int i = 0; i < T_COUNT; i++) {
        PyObject *o = objs[i];
        int present = o && o != Py_None;
        if (need[op][i] == 1 && !present) {
            dmoe_py_raise(DMOE_ERR_NULL_POINTER, "%s is required", names[i]);
            goto done;
        }
        if (!present || need[op][i] == 0) continue;
        if (dmoe_py_import(o, names[i], stream, writable[i], &t[i]) < 0) goto done;
    }

    /* ---- shapes, dtypes, devices ---- */
    const py_tensor *x = &t[T_X], *w13 = &t[T_W13], *w2 = &t[T_W2];
    if (x->n_dims != 2) {
        dims_str(x, b1, sizeof b1);
        dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s must be 2-D (tokens, hidden), has shape %s",
                      names[T_X], b1);
        goto done;
    }
    if (!is_float(x->dtype)) {
        dmoe_py_raise(DMOE_ERR_UNSUPPORTED_DTYPE,
                      "%s must be float32, bfloat16 or float16, got %s", names[T_X],
                      dmoe_py_dtype_name(x->dtype));
        goto done;
    }
    const int64_t T = x->shape[0], H = x->shape[1];
    void *x_data = x->data;
    dmoe_dtype x_dtype = x->dtype;
    if (op == OP_ROUTE && sanitize && x->device == DMOE_DEVICE_HOST && T * H > 0 &&
        has_non_finite(x->data, x->dtype, T * H)) {
        clean_x = sanitized_copy(x->data, x->dtype, T * H);
        if (!clean_x) {
            PyErr_NoMemory();
            goto done;
        }
        x_data = clean_x;
        x_dtype = DMOE_DTYPE_F32;
    }
    if (op == OP_ROUTE && !w13->managed) {
        /* Routing alone: the router stands in for w13 and w2 below, with a
         * nominal F = 8 (the cuda backend wants multiples of 8). dmoe_route
         * reads only the router; set_weights checks pointers only. */
        if (!t[T_W2].managed) w2 = w13 = &t[T_ROUTER];
    }
    if (w13 == &t[T_ROUTER]) {
        char rl[64];
        snprintf(rl, sizeof rl, "(E, H=%lld)", (long long)H);
        if (check_shape(w13, names[T_ROUTER], 2, (int64_t[]){-1, H}, rl) < 0) goto done;
    } else if (w13->n_dims != 3 || w13->shape[2] != H || w13->shape[1] % 2 != 0) {
        dims_str(w13, b1, sizeof b1);
        dmoe_py_raise(DMOE_ERR_BAD_SHAPE,
                      "%s has shape %s, expected (E, 2*F, H=%lld): gate rows then up rows",
                      names[T_W13], b1, (long long)H);
        goto done;
    }
    const int64_t E = w13->shape[0], F = w13 == &t[T_ROUTER] ? 8 : w13->shape[1] / 2;
    const dmoe_dtype wdt = w13->dtype;
    if (!is_float(wdt)) {
        dmoe_py_raise(DMOE_ERR_UNSUPPORTED_DTYPE, "%s must be float32, bfloat16 or float16, got %s",
                      names[T_W13], dmoe_py_dtype_name(wdt));
        goto done;
    }
    char layout[96];
    snprintf(layout, sizeof layout, "(E=%lld, H=%lld, F=%lld)", (long long)E, (long long)H,
             (long long)F);
    if (w2 != &t[T_ROUTER] && check_shape(w2, names[T_W2], 3, (int64_t[]){E, H, F}, layout) < 0)
        goto done;
    if (t[T_ROUTER].managed) {
        snprintf(layout, sizeof layout, "(E=%lld, H=%lld)", (long long)E, (long long)H);
        if (check_shape(&t[T_ROUTER], names[T_ROUTER], 2, (int64_t[]){E, H}, layout) < 0)
            goto done;
    }
    if (t[T_BIAS].managed) {
        snprintf(layout, sizeof layout, "(E=%lld,)", (long long)E);
        if (check_shape(&t[T_BIAS], names[T_BIAS], 1, (int64_t[]){E}, layout) < 0) goto done;
        if (t[T_BIAS].dtype != DMOE_DTYPE_F32) {
            dmoe_py_raise(DMOE_ERR_DTYPE_MISMATCH, "%s must be float32, got %s", names[T_BIAS],
                          dmoe_py_dtype_name(t[T_BIAS].dtype));
            goto done;
        }
    }
    int64_t S = 0, Fs = 0;
    if (t[T_SW13].managed || t[T_SW2].managed) {
        if (!t[T_SW13].managed || !t[T_SW2].managed) {
            dmoe_py_raise(DMOE_ERR_NULL_POINTER, "%s and %s go together", names[T_SW13],
                          names[T_SW2]);
            goto done;
        }
        const py_tensor *s13 = &t[T_SW13];
        if (s13->n_dims != 3 || s13->shape[2] != H || s13->shape[1] % 2 != 0) {
            dims_str(s13, b1, sizeof b1);
            dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s has shape %s, expected (S, 2*Fs, H=%lld)",
                          names[T_SW13], b1, (long long)H);
            goto done;
        }
        S = s13->shape[0];
        Fs = s13->shape[1] / 2;
        snprintf(layout, sizeof layout, "(S=%lld, H=%lld, Fs=%lld)", (long long)S, (long long)H,
                 (long long)Fs);
        if (check_shape(&t[T_SW2], names[T_SW2], 3, (int64_t[]){S, H, Fs}, layout) < 0) goto done;
    }
    if (t[T_SGATE].managed) {
        const py_tensor *g = &t[T_SGATE];
        int ok = (g->n_dims == 2 && g->shape[0] == 1 && g->shape[1] == H) ||
                 (g->n_dims == 1 && g->shape[0] == H);
        if (!ok) {
            dims_str(g, b1, sizeof b1);
            dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s has shape %s, expected (1, H=%lld)",
                          names[T_SGATE], b1, (long long)H);
            goto done;
        }
        if (!S) {
            dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT, "%s needs shared experts", names[T_SGATE]);
            goto done;
        }
    }
    for (int i = T_ROUTER; i < T_COUNT; i++) {
        if (!t[i].managed || i == T_BIAS || t[i].dtype == wdt) continue;
        dmoe_py_raise(DMOE_ERR_DTYPE_MISMATCH,
                      "%s has dtype %s but %s has %s: every weight must have one dtype",
                      names[i], dmoe_py_dtype_name(t[i].dtype), names[T_W13],
                      dmoe_py_dtype_name(wdt));
        goto done;
    }
    const int is_cuda = backend == DMOE_BACKEND_CUDA;
    if (is_cuda && x->device == DMOE_DEVICE_HOST) {
        dmoe_py_raise(DMOE_ERR_WRONG_DEVICE, "%s is in host memory; backend 'cuda' needs CUDA "
                      "tensors", names[T_X]);
        goto done;
    }
    const int32_t want_dev = is_cuda ? x->device : DMOE_DEVICE_HOST;
    for (int i = 0; i < T_COUNT; i++) {
        if (!t[i].managed || t[i].device == want_dev) continue;
        dmoe_py_raise(DMOE_ERR_WRONG_DEVICE, "%s is on %s, but backend '%s' needs %s", names[i],
                      device_str(t[i].device, b1, sizeof b1), dmoe_backend_name(backend),
                      device_str(want_dev, b2, sizeof b2));
        goto done;
    }
    int64_t K = top_k;
    if (op == OP_EXPERTS) { /* the routing tensors give K */
        const py_tensor *ids = &t[T_IDS], *wts = &t[T_WTS];
        if (ids->n_dims != 2 || ids->shape[0] != T) {
            dims_str(ids, b1, sizeof b1);
            dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s has shape %s, expected (T=%lld, top_k)",
                          names[T_IDS], b1, (long long)T);
            goto done;
        }
        K = ids->shape[1];
        snprintf(layout, sizeof layout, "(T=%lld, top_k=%lld) like %s", (long long)T,
                 (long long)K, names[T_IDS]);
        if (check_shape(wts, names[T_WTS], 2, (int64_t[]){T, K}, layout) < 0) goto done;
        if (ids->dtype != DMOE_DTYPE_I32 || wts->dtype != DMOE_DTYPE_F32) {
            dmoe_py_raise(DMOE_ERR_DTYPE_MISMATCH,
                          "%s must be int32 and %s float32, got %s and %s", names[T_IDS],
                          names[T_WTS], dmoe_py_dtype_name(ids->dtype),
                          dmoe_py_dtype_name(wts->dtype));
            goto done;
        }
    }
    if (T == 0) { /* nothing to compute; the Python side normally answers this itself */
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    if (K >= 1 && K <= E && T > max_tokens_cap(K)) {
        /* Said here in the caller's terms: dmoe would blame a max_tokens they never set. */
        dmoe_py_raise(DMOE_ERR_TOO_MANY_TOKENS,
                      "%s has %lld tokens; one call takes at most %lld with top_k=%lld (dmoe.h: "
                      "2^24 tokens, tokens * top_k <= 2^30): split the batch",
                      names[T_X], (long long)T, (long long)max_tokens_cap(K), (long long)K);
        goto done;
    }

    /* ---- the layer ---- */
    layer_key key;
    memset(&key, 0, sizeof key);
    key.backend = (int32_t)backend;
    key.device = want_dev;
    key.n_threads = n_threads;
    dmoe_layer_desc d;
    dmoe_layer_desc_init(&d);
    d.hidden = H;
    d.ffn = F;
    d.n_experts = (int32_t)(E > INT32_MAX ? INT32_MAX : E);
    d.top_k = (int32_t)(K > INT32_MAX ? INT32_MAX : K);
    d.n_shared_experts = (int32_t)S;
    d.shared_ffn = Fs;
    d.shared_gate = t[T_SGATE].managed ? DMOE_SHARED_GATE_SIGMOID : DMOE_SHARED_GATE_NONE;
    if (op != OP_EXPERTS) { /* routing does not matter to experts: share their layers */
        d.routing.scoring = (dmoe_scoring)scoring;
        d.routing.renormalize = renormalize;
        d.routing.n_group = n_group;
        d.routing.topk_group = topk_group;
        d.routing.routed_scaling_factor = (float)scale;
        d.routing.use_correction_bias = t[T_BIAS].managed != NULL;
    }
    d.act_dtype = x_dtype;
    d.weight_dtype = wdt;
    d.max_tokens = 0;
    memcpy(&key.desc, &d, sizeof d);
    le = layer_get(&key, T);
    if (!le) goto done;
    if (pin) le->pinned = 1;

    dmoe_weights w;
    memset(&w, 0, sizeof w);
    /* experts never reads the router, but set_weights wants one: w13 holds
     * E*2F*H >= E*H elements, so it is a valid stand-in. */
    w.router = t[T_ROUTER].managed ? t[T_ROUTER].data : w13->data;
    w.w13 = w13->data;
    w.w2 = w2->data;
    w.correction_bias = (const float *)t[T_BIAS].data;
    w.shared_w13 = t[T_SW13].data;
    w.shared_w2 = t[T_SW2].data;
    w.shared_gate = t[T_SGATE].data;

    dmoe_tensor tx = dmoe_tensor_2d(x_data, x_dtype, T, H, want_dev);
    dmoe_tensor ty, tids, twts;
    memset(&ty, 0, sizeof ty);
    memset(&tids, 0, sizeof tids);
    memset(&twts, 0, sizeof twts);
    if (t[T_Y].managed) {
        const py_tensor *y = &t[T_Y];
        ty = dmoe_tensor_2d(y->data, y->dtype, y->n_dims > 0 ? y->shape[0] : 0,
                            y->n_dims > 1 ? y->shape[1] : 1, want_dev);
        ty.n_dims = y->n_dims;
    }
    if (t[T_IDS].managed) {
        const py_tensor *p = &t[T_IDS];
        tids = dmoe_tensor_2d(p->data, p->dtype, p->n_dims > 0 ? p->shape[0] : 0,
                              p->n_dims > 1 ? p->shape[1] : 1, want_dev);
        tids.n_dims = p->n_dims;
    }
    if (t[T_WTS].managed) {
        const py_tensor *p = &t[T_WTS];
        twts = dmoe_tensor_2d(p->data, p->dtype, p->n_dims > 0 ? p->shape[0] : 0,
                              p->n_dims > 1 ? p->shape[1] : 1, want_dev);
        twts.n_dims = p->n_dims;
    }

    ctx_entry *ce = le->ce;
    dmoe_status st = DMOE_OK;
    char err[1024];
    err[0] = '\0';
    ce->n_users++;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(ce->lock, WAIT_LOCK);
    if (!le->has_bound || memcmp(&le->bound, &w, sizeof w) != 0) {
        st = dmoe_layer_set_weights(le->layer, &w);
        le->has_bound = st == DMOE_OK;
        if (st == DMOE_OK) le->bound = w;
    }
    if (st == DMOE_OK) {
        void *s = (void *)stream;
        switch (op) {
        case OP_FORWARD: st = dmoe_forward(le->layer, &tx, &ty, s); break;
        case OP_ROUTE: st = dmoe_route(le->layer, &tx, &tids, &twts, s); break;
        default: st = dmoe_experts(le->layer, &tx, &tids, &twts, &ty, s); break;
        }
    }
    if (st != DMOE_OK) snprintf(err, sizeof err, "%s", dmoe_context_last_error(ce->ctx));
    PyThread_release_lock(ce->lock);
    Py_END_ALLOW_THREADS
    ctx_release(ce);
    if (st != DMOE_OK) {
        dmoe_py_raise(st, "%s", err[0] ? err : dmoe_status_str(st));
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (le) layer_put(le);
    {
        /* Deleters and capsule destructors may run Python code: not with an
         * exception set. Keep ours aside while the producers get their memory back. */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        for (int i = 0; i < T_COUNT; i++) dmoe_py_release(&t[i]);
        if (et) PyErr_Restore(et, ev, etb);
    }
    PyMem_RawFree(clean_x);
    return result;
}

/* ---- small functions ---- */

static PyObject *py_version(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(dmoe_version_string());
}

static PyObject *py_backend_available(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    dmoe_backend b;
    if (dmoe_backend_from_name(name, &b) != DMOE_OK)
        return dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT, "%s", dmoe_context_last_error(NULL)),
               NULL;
    return PyBool_FromLong(dmoe_backend_available(b));
}

static PyObject *py_status_name(PyObject *self, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(dmoe_status_name((dmoe_status)v));
}

static PyObject *py_cache_info(PyObject *self, PyObject *unused) {
    int n_ctx = 0;
    for (ctx_entry *ce = contexts; ce; ce = ce->next) n_ctx++;
    return Py_BuildValue("{s:i,s:i,s:K,s:K}", "contexts", n_ctx, "layers", n_layers,
                         "layer_creates", (unsigned long long)stat_layer_creates, "hits",
                         (unsigned long long)stat_hits);
}

/* Destroys idle layers (not those pinned by a CUDA graph capture), then
 * contexts nothing uses. */
static PyObject *py_clear_cache(PyObject *self, PyObject *unused) {
    while (evict_one()) {}
    ctx_entry **pp = &contexts;
    while (*pp) {
        ctx_entry *ce = *pp;
        if (ce->n_users == 0) {
            *pp = ce->next;
            dmoe_context_destroy(ce->ctx);
            PyThread_free_lock(ce->lock);
            PyMem_Free(ce);
        } else {
            pp = &ce->next;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))py_run, METH_VARARGS | METH_KEYWORDS,
     "run(op, x, y=None, topk_ids=None, topk_weights=None, router=None, w13=None, w2=None, "
     "correction_bias=None, shared_w13=None, shared_w2=None, shared_gate=None, top_k=0, "
     "scoring=0, renormalize=True, n_group=0, topk_group=0, routed_scaling_factor=1.0, "
     "backend='cpu-ref', n_threads=0, stream=0, names=None, sanitize=False, pin=False)\n\n"
     "op 0 = forward, 1 = route, 2 = experts. Outputs are written in place."},
    {"version", py_version, METH_NOARGS, "libdmoe's version string."},
    {"backend_available", py_backend_available, METH_O,
     "True if the named backend is compiled in and usable here."},
    {"status_name", py_status_name, METH_O, "The symbolic name of a dmoe_status value."},
    {"cache_info", py_cache_info, METH_NOARGS, "Counts of cached contexts and layers."},
    {"clear_cache", py_clear_cache, METH_NOARGS, "Frees idle cached layers and contexts."},
    {NULL, NULL, 0, NULL},
};

static void module_free(void *m) {
    (void)m;
    py_clear_cache(NULL, NULL);
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "dmoe._C", "C extension of dmoe over libdmoe (DLPack in, no copies).",
    -1, methods, NULL, NULL, NULL, module_free,
};

static PyObject *new_error(PyObject *m, const char *name, const char *doc, PyObject *base2) {
    char full[64];
    snprintf(full, sizeof full, "dmoe.%s", name);
    PyObject *bases = base2 ? PyTuple_Pack(2, dmoe_py_Error, base2) : NULL;
    if (base2 && !bases) return NULL;
    PyObject *cls = PyErr_NewExceptionWithDoc(full, doc, base2 ? bases : PyExc_Exception, NULL);
    Py_XDECREF(bases);
    if (!cls) return NULL;
    Py_INCREF(cls);
    if (PyModule_AddObject(m, name, cls) < 0) {
        Py_DECREF(cls);
        Py_DECREF(cls);
        return NULL;
    }
    return cls;
}

PyMODINIT_FUNC PyInit__C(void) {
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (!(dmoe_py_Error = new_error(m, "Error", "Base of every dmoe error; .status and "
                                    ".status_name give dmoe's status code.", NULL)))
        goto fail;
    if (!(dmoe_py_TypeError = new_error(m, "DmoeTypeError", "Wrong dtype, or not a DLPack array.",
                                        PyExc_TypeError)) ||
        !(dmoe_py_ValueError = new_error(m, "DmoeValueError",
                                         "Bad shape, layout, device or argument value.",
                                         PyExc_ValueError)) ||
        !(dmoe_py_MemoryError = new_error(m, "DmoeMemoryError", "dmoe ran out of memory.",
                                          PyExc_MemoryError)) ||
        !(dmoe_py_Unsupported = new_error(m, "UnsupportedError",
                                          "A backend or feature this build or machine lacks.",
                                          PyExc_NotImplementedError)) ||
        !(dmoe_py_RuntimeError = new_error(m, "DmoeRuntimeError",
                                           "CUDA, thread or internal failure.",
                                           PyExc_RuntimeError)))
        goto fail;
    PyModule_AddIntConstant(m, "OP_FORWARD", OP_FORWARD);
    PyModule_AddIntConstant(m, "OP_ROUTE", OP_ROUTE);
    PyModule_AddIntConstant(m, "OP_EXPERTS", OP_EXPERTS);
    PyModule_AddIntConstant(m, "MAX_TOKENS", DMOE_MAX_TOKENS);
    PyModule_AddIntConstant(m, "MAX_EXPERTS", DMOE_MAX_EXPERTS);
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

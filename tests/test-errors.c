/*
 * test-errors: every status the public API can return for bad input, each
 * produced by a specific bad argument, on cpu-ref and on the backend under
 * test. For every failing call it checks
 *   - the exact status;
 *   - that the outputs are untouched: *out handles keep their sentinel, the
 *     bytes of y, topk_ids, topk_weights (and x) are unchanged, and a layer
 *     keeps its previous weights after a failed dmoe_layer_set_weights;
 *   - that dmoe_context_last_error() (of the context, or of the thread for
 *     calls without one) names what was wrong: each case lists words that
 *     must appear in the message as whole words.
 * Messages are per thread: a failure on one thread leaves another thread's
 * message on the same context as it was (also under concurrent failures), and a
 * context created where a failed one was freed starts without a message.
 * It also checks dmoe_status_str / dmoe_status_name for every code of
 * DMOE_STATUS_LIST, the dtype and backend name helpers, and that boundary
 * values of the layer description are accepted.
 *
 * Not reachable from the API on a CPU-only build, so not produced here:
 * DMOE_ERR_CUDA, DMOE_ERR_IO and DMOE_ERR_CORRUPT_FILE (model files),
 * DMOE_ERR_THREAD (a failing pthread_create), DMOE_ERR_INTERNAL, and
 * DMOE_ERR_UNSUPPORTED unless the backend under test caps top_k below E.
 */
#include <ctype.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmoe-impl.h"
#include "test-util.h"

/* ---- messages ---- */

static int has_word(const char *msg, const char *word) {
    size_t n = strlen(word);
    for (const char *p = msg; (p = strstr(p, word)) != NULL; p++) {
        int before = p == msg || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (before && after) return 1;
    }
    return 0;
}

/* Checks status and message of a failed call; words: space-separated. */
static int expect(const char *what, dmoe_status got, dmoe_status want, const dmoe_context *ctx,
                  const char *words) {
    const char *msg = dmoe_context_last_error(ctx);
    int ok = 1;
    tu_n_checked++;
    if (got != want) {
        tu_fail_at(__FILE__, __LINE__, "%s: returned %s, expected %s (message \"%s\")", what,
                   dmoe_status_name(got), dmoe_status_name(want), msg);
        return 0;
    }
    if (want == DMOE_OK) return 1;
    TU_CHECKF(msg && msg[0], "%s: %s with an empty message", what, dmoe_status_name(got));
    const char *first = strstr(msg, "DMOE_ERR_");
    TU_CHECKF(!first || !strstr(first + 1, "DMOE_ERR_"), "%s: message \"%s\" repeats a status name",
              what, msg);
    char buf[256];
    snprintf(buf, sizeof buf, "%s", words ? words : "");
    for (char *w = strtok(buf, " "); w; w = strtok(NULL, " ")) {
        if (!has_word(msg, w)) {
            tu_fail_at(__FILE__, __LINE__, "%s: message \"%s\" does not mention '%s'", what, msg, w);
            ok = 0;
        }
    }
    return ok;
}

/* ---- status strings and small helpers ---- */

static void check_status_list(void) {
    int n = 0, n_distinct_ok = 1;
    int values[64];
#define CHECK_ONE(name, value, text)                                                        \
    TU_CHECKF(strcmp(dmoe_status_str(name), text) == 0, "dmoe_status_str(%s) = \"%s\"", #name, \
              dmoe_status_str(name));                                                        \
    TU_CHECKF(strcmp(dmoe_status_name(name), #name) == 0, "dmoe_status_name(%d) = \"%s\"",    \
              (int)(value), dmoe_status_name(name));                                         \
    TU_CHECKF((int)(name) == (value) && ((value) == 0) == (strcmp(#name, "DMOE_OK") == 0) &&  \
                  (value) <= 0,                                                              \
              "%s has value %d", #name, (int)(name));                                        \
    for (int i = 0; i < n; i++) n_distinct_ok &= values[i] != (value);                       \
    values[n++] = (value);
    DMOE_STATUS_LIST(CHECK_ONE)
#undef CHECK_ONE
    TU_CHECKF(n_distinct_ok, "DMOE_STATUS_LIST has repeated values");
    TU_CHECKF(n >= 18, "DMOE_STATUS_LIST has %d codes", n);
    TU_CHECK(strcmp(dmoe_status_str((dmoe_status)-999), "unknown status") == 0);
    TU_CHECK(strcmp(dmoe_status_str((dmoe_status)1), "unknown status") == 0);
    TU_CHECK(strcmp(dmoe_status_name((dmoe_status)-999), "DMOE_UNKNOWN_STATUS") == 0);
    printf("  %d status codes\n", n);
}

static void check_names(void) {
    TU_CHECK(dmoe_dtype_size(DMOE_DTYPE_F32) == 4 && dmoe_dtype_size(DMOE_DTYPE_BF16) == 2 &&
             dmoe_dtype_size(DMOE_DTYPE_F16) == 2 && dmoe_dtype_size(DMOE_DTYPE_I32) == 4);
    TU_CHECK(dmoe_dtype_size((dmoe_dtype)99) == 0 && dmoe_dtype_size((dmoe_dtype)-1) == 0);
    TU_CHECK(strcmp(dmoe_dtype_name(DMOE_DTYPE_BF16), "bf16") == 0);
    TU_CHECK(strcmp(dmoe_dtype_name(DMOE_DTYPE_F16), "f16") == 0);
    TU_CHECK(strcmp(dmoe_dtype_name(DMOE_DTYPE_F32), "f32") == 0);
    TU_CHECK(strcmp(dmoe_dtype_name(DMOE_DTYPE_I32), "i32") == 0);
    TU_CHECK(strcmp(dmoe_dtype_name((dmoe_dtype)99), "unknown") == 0);
    for (int b = 0; b < DMOE_BACKEND_COUNT; b++) {
        dmoe_backend out = (dmoe_backend)-5;
        TU_CHECK_STATUS(NULL, dmoe_backend_from_name(dmoe_backend_name((dmoe_backend)b), &out),
                        DMOE_OK);
        TU_CHECKF(out == (dmoe_backend)b, "backend name %s round trip gives %d",
                  dmoe_backend_name((dmoe_backend)b), (int)out);
    }
    TU_CHECK(strcmp(dmoe_backend_name((dmoe_backend)-1), "unknown") == 0);
    TU_CHECK(strcmp(dmoe_backend_name(DMOE_BACKEND_COUNT), "unknown") == 0);
    TU_CHECK(!dmoe_backend_available((dmoe_backend)-1) && !dmoe_backend_available(DMOE_BACKEND_COUNT));
    TU_CHECK(dmoe_backend_available(DMOE_BACKEND_CPU_REF) && dmoe_backend_available(DMOE_BACKEND_CPU));

    static const char *const bad_names[] = {"gpu", "", "CPU", "cpu-ref ", "cpuref", "cudaa"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        dmoe_backend out = (dmoe_backend)-5;
        char what[64];
        snprintf(what, sizeof what, "dmoe_backend_from_name(\"%s\")", bad_names[i]);
        expect(what, dmoe_backend_from_name(bad_names[i], &out), DMOE_ERR_INVALID_ARGUMENT, NULL,
               "backend");
        TU_CHECKF(out == (dmoe_backend)-5, "%s wrote its output", what);
    }
    dmoe_backend out = (dmoe_backend)-5;
    expect("dmoe_backend_from_name(NULL)", dmoe_backend_from_name(NULL, &out),
           DMOE_ERR_NULL_POINTER, NULL, "");
    TU_CHECK(out == (dmoe_backend)-5);
    expect("dmoe_backend_from_name(out NULL)", dmoe_backend_from_name("cpu", NULL),
           DMOE_ERR_NULL_POINTER, NULL, "");

    dmoe_tensor t = dmoe_tensor_2d(&out, DMOE_DTYPE_F16, 3, 5, 2);
    TU_CHECK(t.data == &out && t.dtype == DMOE_DTYPE_F16 && t.n_dims == 2 && t.shape[0] == 3 &&
             t.shape[1] == 5 && t.shape[2] == 0 && t.device == 2);
    TU_CHECK(strstr(dmoe_version_string(), "0.1.0") == dmoe_version_string());
    /* NULL is a no-op for every destroy; queries on NULL do not crash. */
    dmoe_layer_destroy(NULL);
    dmoe_context_destroy(NULL);
    TU_CHECK(dmoe_context_n_threads(NULL) == 0);
    TU_CHECK(dmoe_context_backend(NULL) == DMOE_BACKEND_COUNT);
    TU_CHECK(dmoe_layer_get_desc(NULL) == NULL);
    dmoe_context_desc_init(NULL);
    dmoe_layer_desc_init(NULL);
}

/* ---- contexts ---- */

static void *fail_alloc(void *user, size_t size, size_t align) {
    (void)size;
    (void)align;
    ++*(int *)user;
    return NULL;
}
static void never_free(void *user, void *ptr) {
    (void)user;
    (void)ptr;
    tu_fail_at(__FILE__, __LINE__, "free called on an allocator that never allocated");
}

typedef struct desc_case {
    const char *what;
    dmoe_status want;
    const char *words;
} desc_case;

static dmoe_allocator half_alloc = {NULL, never_free, NULL};
static int n_fail_calls;
static dmoe_allocator no_free_alloc = {fail_alloc, NULL, &n_fail_calls};
static dmoe_allocator failing_alloc = {fail_alloc, never_free, &n_fail_calls};

/* Case i: mutates a valid context description; 0 when there are no more. */
static int ctx_case_apply(int i, dmoe_context_desc *d, desc_case *c) {
    const dmoe_status INV = DMOE_ERR_INVALID_ARGUMENT, NP = DMOE_ERR_NULL_POINTER;
    switch (i) {
    case 0: d->backend = (dmoe_backend)99; *c = (desc_case){"backend 99", INV, "backend"}; break;
    case 1: d->backend = (dmoe_backend)-1; *c = (desc_case){"backend -1", INV, "backend"}; break;
    case 2: d->backend = DMOE_BACKEND_COUNT; *c = (desc_case){"backend COUNT", INV, "backend"}; break;
    case 3: d->n_threads = -1; *c = (desc_case){"n_threads -1", INV, "n_threads"}; break;
    case 4: d->n_threads = 1025; *c = (desc_case){"n_threads 1025", INV, "n_threads"}; break;
    case 5: d->n_threads = INT32_MIN; *c = (desc_case){"n_threads INT32_MIN", INV, "n_threads"}; break;
    case 6: d->device = -1; *c = (desc_case){"device -1", INV, "device"}; break;
    case 7: d->allocator = &half_alloc; *c = (desc_case){"allocator without alloc", NP, "allocator"}; break;
    case 8: d->allocator = &no_free_alloc; *c = (desc_case){"allocator without free", NP, "allocator"}; break;
    case 9: d->allocator = &failing_alloc;
        *c = (desc_case){"cpu-ref: allocator always fails", DMOE_ERR_OUT_OF_MEMORY, "context"}; break;
    case 10: d->allocator = &failing_alloc; d->backend = DMOE_BACKEND_CPU;
        *c = (desc_case){"cpu: allocator always fails", DMOE_ERR_OUT_OF_MEMORY, "context"}; break;
    case 11:
        if (dmoe_backend_available(DMOE_BACKEND_CUDA)) {
            printf("  cuda is available here: DMOE_ERR_BACKEND_UNAVAILABLE not produced\n");
            return 0;
        }
        d->backend = DMOE_BACKEND_CUDA;
        *c = (desc_case){"cuda without a device or build", DMOE_ERR_BACKEND_UNAVAILABLE, "cuda"}; break;
    default: return 0;
    }
    return 1;
}

static void check_context_errors(void) {
    static char sentinel;
    dmoe_context *const S = (dmoe_context *)(void *)&sentinel;
    dmoe_context_desc d;
    dmoe_context_desc_init(&d);
    dmoe_context *out = S;
    expect("dmoe_context_create(NULL desc)", dmoe_context_create(NULL, &out),
           DMOE_ERR_NULL_POINTER, NULL, "");
    TU_CHECK(out == S);
    expect("dmoe_context_create(NULL out)", dmoe_context_create(&d, NULL), DMOE_ERR_NULL_POINTER,
           NULL, "");
    desc_case c;
    for (int i = 0;; i++) {
        dmoe_context_desc_init(&d);
        d.backend = DMOE_BACKEND_CPU_REF;
        if (!ctx_case_apply(i, &d, &c)) break;
        out = S;
        expect(c.what, dmoe_context_create(&d, &out), c.want, NULL, c.words);
        TU_CHECKF(out == S, "%s: *out was written", c.what);
    }
    TU_CHECKF(n_fail_calls == 2, "the failing allocator was called %d times, expected 2",
              n_fail_calls);
    /* A backend whose context_init fails: its own message reaches the
     * caller (the cpu backend refuses an unknown DMOE_CPU_ISA). */
    {
        const char *saved = getenv("DMOE_CPU_ISA");
        char *saved_copy = saved ? strdup(saved) : NULL;
        setenv("DMOE_CPU_ISA", "no-such-isa", 1);
        dmoe_context_desc_init(&d);
        d.backend = DMOE_BACKEND_CPU;
        out = S;
        expect("cpu context with DMOE_CPU_ISA=no-such-isa", dmoe_context_create(&d, &out),
               DMOE_ERR_INVALID_ARGUMENT, NULL, "DMOE_CPU_ISA");
        TU_CHECK(out == S);
        if (saved_copy) setenv("DMOE_CPU_ISA", saved_copy, 1);
        else unsetenv("DMOE_CPU_ISA");
        free(saved_copy);
    }
    /* A fresh context has no message; valid queries. */
    dmoe_context_desc_init(&d);
    d.backend = DMOE_BACKEND_CPU_REF;
    d.n_threads = 3;
    dmoe_context *ctx = NULL;
    if (TU_CHECK_STATUS(NULL, dmoe_context_create(&d, &ctx), DMOE_OK)) {
        TU_CHECK(strcmp(dmoe_context_last_error(ctx), "") == 0);
        TU_CHECK(dmoe_context_backend(ctx) == DMOE_BACKEND_CPU_REF);
        dmoe_context_destroy(ctx);
    }
}

/* ---- layer descriptions ---- */

static void base_desc(dmoe_layer_desc *d) {
    dmoe_layer_desc_init(d);
    d->hidden = 32;
    d->ffn = 16;
    d->n_experts = 8;
    d->top_k = 2;
    d->max_tokens = 64;
}

/* Case i: mutates a valid description; 0 when there are no more cases. */
static int desc_case_apply(int i, dmoe_layer_desc *d, desc_case *c) {
    const dmoe_status INV = DMOE_ERR_INVALID_ARGUMENT, DT = DMOE_ERR_UNSUPPORTED_DTYPE;
    switch (i) {
    case 0: d->hidden = 0; *c = (desc_case){"hidden = 0", INV, "hidden"}; break;
    case 1: d->hidden = -1; *c = (desc_case){"hidden = -1", INV, "hidden"}; break;
    case 2: d->hidden = DMOE_MAX_DIM + 1; *c = (desc_case){"hidden > DMOE_MAX_DIM", INV, "hidden"}; break;
    case 3: d->hidden = INT64_MAX; *c = (desc_case){"hidden = INT64_MAX", INV, "hidden"}; break;
    case 4: d->hidden = INT64_MIN; *c = (desc_case){"hidden = INT64_MIN", INV, "hidden"}; break;
    case 5: d->ffn = 0; *c = (desc_case){"ffn = 0", INV, "ffn"}; break;
    case 6: d->ffn = -5; *c = (desc_case){"ffn = -5", INV, "ffn"}; break;
    case 7: d->ffn = DMOE_MAX_DIM + 1; *c = (desc_case){"ffn > DMOE_MAX_DIM", INV, "ffn"}; break;
    case 8: d->n_experts = 0; *c = (desc_case){"n_experts = 0", INV, "n_experts"}; break;
    case 9: d->n_experts = -1; *c = (desc_case){"n_experts = -1", INV, "n_experts"}; break;
    case 10: d->n_experts = DMOE_MAX_EXPERTS + 1; *c = (desc_case){"n_experts > DMOE_MAX_EXPERTS", INV, "n_experts"}; break;
    case 11: d->top_k = 0; *c = (desc_case){"top_k = 0", INV, "top_k"}; break;
    case 12: d->top_k = -1; *c = (desc_case){"top_k = -1", INV, "top_k"}; break;
    case 13: d->top_k = 9; *c = (desc_case){"top_k > n_experts", INV, "top_k"}; break;
    case 14: d->n_shared_experts = -1; *c = (desc_case){"n_shared_experts = -1", INV, "n_shared_experts"}; break;
    case 15: d->n_shared_experts = DMOE_MAX_EXPERTS + 1; d->shared_ffn = 8; *c = (desc_case){"n_shared_experts too large", INV, "n_shared_experts"}; break;
    case 16: d->n_shared_experts = 1; d->shared_ffn = 0; *c = (desc_case){"shared experts without shared_ffn", INV, "shared_ffn"}; break;
    case 17: d->n_shared_experts = 1; d->shared_ffn = DMOE_MAX_DIM + 1; *c = (desc_case){"shared_ffn > DMOE_MAX_DIM", INV, "shared_ffn"}; break;
    case 18: d->n_shared_experts = 1; d->shared_ffn = -3; *c = (desc_case){"shared_ffn = -3", INV, "shared_ffn"}; break;
    case 19: d->shared_gate = (dmoe_shared_gate)7; *c = (desc_case){"shared_gate = 7", INV, "shared_gate"}; break;
    case 20: d->shared_gate = DMOE_SHARED_GATE_SIGMOID; *c = (desc_case){"sigmoid shared gate without shared experts", INV, "n_shared_experts"}; break;
    case 21: d->routing.scoring = (dmoe_scoring)2; *c = (desc_case){"scoring = 2", INV, "scoring"}; break;
    case 22: d->routing.scoring = (dmoe_scoring)-1; *c = (desc_case){"scoring = -1", INV, "scoring"}; break;
    case 23: d->routing.renormalize = 2; *c = (desc_case){"renormalize = 2", INV, "renormalize"}; break;
    case 24: d->routing.renormalize = -1; *c = (desc_case){"renormalize = -1", INV, "renormalize"}; break;
    case 25: d->routing.use_correction_bias = 2; *c = (desc_case){"use_correction_bias = 2", INV, "use_correction_bias"}; break;
    case 26: d->routing.routed_scaling_factor = 0.0f; *c = (desc_case){"routed_scaling_factor = 0", INV, "routed_scaling_factor"}; break;
    case 27: d->routing.routed_scaling_factor = -0.0f; *c = (desc_case){"routed_scaling_factor = -0", INV, "routed_scaling_factor"}; break;
    case 28: d->routing.routed_scaling_factor = -1.0f; *c = (desc_case){"routed_scaling_factor = -1", INV, "routed_scaling_factor"}; break;
    case 29: d->routing.routed_scaling_factor = NAN; *c = (desc_case){"routed_scaling_factor = NaN", INV, "routed_scaling_factor"}; break;
    case 30: d->routing.routed_scaling_factor = INFINITY; *c = (desc_case){"routed_scaling_factor = inf", INV, "routed_scaling_factor"}; break;
    case 31: d->routing.routed_scaling_factor = -INFINITY; *c = (desc_case){"routed_scaling_factor = -inf", INV, "routed_scaling_factor"}; break;
    case 32: d->routing.n_group = -1; *c = (desc_case){"n_group = -1", INV, "n_group"}; break;
    case 33: d->routing.n_group = 9; d->routing.topk_group = 1; *c = (desc_case){"n_group > n_experts", INV, "n_group"}; break;
    case 34: d->routing.n_group = 3; d->routing.topk_group = 1; *c = (desc_case){"n_group does not divide n_experts", INV, "n_group"}; break;
    case 35: d->routing.n_group = 4; d->routing.topk_group = 0; *c = (desc_case){"topk_group = 0", INV, "topk_group"}; break;
    case 36: d->routing.n_group = 4; d->routing.topk_group = 5; *c = (desc_case){"topk_group > n_group", INV, "topk_group"}; break;
    case 37: d->routing.n_group = 4; d->routing.topk_group = -1; *c = (desc_case){"topk_group = -1", INV, "topk_group"}; break;
    case 38: d->routing.n_group = 4; d->routing.topk_group = 1; d->top_k = 3; *c = (desc_case){"top_k > experts in the kept groups", INV, "top_k topk_group"}; break;
    case 39: d->act_dtype = DMOE_DTYPE_I32; *c = (desc_case){"act_dtype = i32", DT, "act_dtype"}; break;
    case 40: d->act_dtype = (dmoe_dtype)99; *c = (desc_case){"act_dtype = 99", DT, "act_dtype"}; break;
    case 41: d->act_dtype = (dmoe_dtype)-1; *c = (desc_case){"act_dtype = -1", DT, "act_dtype"}; break;
    case 42: d->weight_dtype = DMOE_DTYPE_I32; *c = (desc_case){"weight_dtype = i32", DT, "weight_dtype"}; break;
    case 43: d->weight_dtype = (dmoe_dtype)4; *c = (desc_case){"weight_dtype = 4", DT, "weight_dtype"}; break;
    case 44: d->max_tokens = 0; *c = (desc_case){"max_tokens = 0", INV, "max_tokens"}; break;
    case 45: d->max_tokens = -1; *c = (desc_case){"max_tokens = -1", INV, "max_tokens"}; break;
    case 46: d->max_tokens = DMOE_MAX_TOKENS + 1; *c = (desc_case){"max_tokens > DMOE_MAX_TOKENS", INV, "max_tokens"}; break;
    case 47: d->max_tokens = INT64_MAX; *c = (desc_case){"max_tokens = INT64_MAX", INV, "max_tokens"}; break;
    case 48: d->n_experts = 128; d->top_k = 128; d->max_tokens = DMOE_MAX_TOKENS; *c = (desc_case){"max_tokens * top_k > 2^30", INV, "max_tokens top_k"}; break;
    default: return 0;
    }
    return 1;
}

/* Valid descriptions at the edges of the limits: each must be accepted. */
static int edge_desc_apply(int i, dmoe_layer_desc *d, const char **what) {
    switch (i) {
    case 0: d->hidden = 1; d->ffn = 1; d->n_experts = 1; d->top_k = 1; *what = "H = F = E = K = 1"; break;
    case 1: d->top_k = d->n_experts; *what = "K = E"; break;
    case 2: d->routing.n_group = 1; d->routing.topk_group = 99; *what = "n_group = 1 ignores topk_group"; break;
    case 3: d->routing.n_group = 8; d->routing.topk_group = 2; *what = "n_group = E"; break;
    case 4: d->routing.n_group = 4; d->routing.topk_group = 1; *what = "top_k = experts of the kept groups"; break;
    case 5: d->routing.routed_scaling_factor = FLT_MAX; *what = "routed_scaling_factor = FLT_MAX"; break;
    case 6: d->routing.routed_scaling_factor = FLT_TRUE_MIN; *what = "routed_scaling_factor = FLT_TRUE_MIN"; break;
    case 7: d->max_tokens = 1; *what = "max_tokens = 1"; break;
    case 8: d->n_shared_experts = 2; d->shared_ffn = 3; d->shared_gate = DMOE_SHARED_GATE_SIGMOID; *what = "gated shared experts"; break;
    case 9: d->act_dtype = DMOE_DTYPE_F32; d->weight_dtype = DMOE_DTYPE_F32; *what = "f32"; break;
    case 10: d->act_dtype = DMOE_DTYPE_F16; d->weight_dtype = DMOE_DTYPE_F16; *what = "f16"; break;
    case 11: d->n_experts = DMOE_MAX_EXPERTS; d->top_k = 8; d->hidden = 8; d->ffn = 8; *what = "E = DMOE_MAX_EXPERTS"; break;
    /* Fields that only matter with shared experts are ignored without them. */
    case 12: d->shared_ffn = -5; *what = "shared_ffn = -5 without shared experts"; break;
    case 13: d->shared_ffn = (int64_t)1 << 40; *what = "shared_ffn = 2^40 without shared experts"; break;
    default: return 0;
    }
    return 1;
}

static void check_desc_errors(dmoe_context *ctx) {
    static char sentinel;
    dmoe_layer *const S = (dmoe_layer *)(void *)&sentinel;
    dmoe_layer_desc d;
    base_desc(&d);
    dmoe_layer *out = S;
    expect("dmoe_layer_create(NULL ctx)", dmoe_layer_create(NULL, &d, &out), DMOE_ERR_NULL_POINTER,
           NULL, "ctx");
    TU_CHECK(out == S);
    expect("dmoe_layer_create(NULL desc)", dmoe_layer_create(ctx, NULL, &out),
           DMOE_ERR_NULL_POINTER, ctx, "");
    TU_CHECK(out == S);
    expect("dmoe_layer_create(NULL out)", dmoe_layer_create(ctx, &d, NULL), DMOE_ERR_NULL_POINTER,
           ctx, "");
    desc_case c;
    int n = 0;
    for (int i = 0;; i++) {
        base_desc(&d);
        if (!desc_case_apply(i, &d, &c)) break;
        out = S;
        expect(c.what, dmoe_layer_create(ctx, &d, &out), c.want, ctx, c.words);
        TU_CHECKF(out == S, "%s: *out was written", c.what);
        n++;
    }
    /* A backend may cap top_k below DMOE_MAX_EXPERTS: that is DMOE_ERR_UNSUPPORTED. */
    const dmoe_backend_iface *be = ctx->backend;
    if (be->max_top_k < DMOE_MAX_EXPERTS) {
        base_desc(&d);
        d.n_experts = be->max_top_k + 1;
        d.top_k = be->max_top_k + 1;
        out = S;
        expect("top_k above the backend's cap", dmoe_layer_create(ctx, &d, &out),
               DMOE_ERR_UNSUPPORTED, ctx, "top_k");
        TU_CHECK(out == S);
    }
    const char *what;
    for (int i = 0;; i++) {
        base_desc(&d);
        if (!edge_desc_apply(i, &d, &what)) break;
        out = NULL;
        dmoe_status st = dmoe_layer_create(ctx, &d, &out);
        TU_CHECKF(st == DMOE_OK && out, "edge case '%s' rejected: %s", what,
                  dmoe_context_last_error(ctx));
        if (st == DMOE_OK) {
            TU_CHECK(memcmp(dmoe_layer_get_desc(out), &d, sizeof d) == 0);
            dmoe_layer_destroy(out);
        }
    }
    printf("  %s: %d bad layer descriptions\n", be->name, n);
}

/* ---- weights ---- */

typedef struct wbufs {
    unsigned char *router, *w13, *w2, *bias, *sw13, *sw2, *sgate;
} wbufs;

static void wbufs_alloc(wbufs *b, const dmoe_layer_desc *d) {
    size_t es = dmoe_dtype_size(d->weight_dtype), H = (size_t)d->hidden, F = (size_t)d->ffn;
    size_t E = (size_t)d->n_experts, S = (size_t)d->n_shared_experts, Fs = (size_t)d->shared_ffn;
    tu_rng rng;
    tu_rng_init(&rng, 7);
    b->router = tu_malloc(E * H * es + 64);
    b->w13 = tu_malloc(E * 2 * F * H * es + 64);
    b->w2 = tu_malloc(E * H * F * es + 64);
    b->bias = tu_malloc(E * 4 + 64);
    b->sw13 = tu_malloc(S * 2 * Fs * H * es + 64);
    b->sw2 = tu_malloc(S * H * Fs * es + 64);
    b->sgate = tu_malloc(H * es + 64);
    tu_fill_uniform(&rng, b->router, d->weight_dtype, (int64_t)(E * H), -0.5, 0.5);
    tu_fill_uniform(&rng, b->w13, d->weight_dtype, (int64_t)(E * 2 * F * H), -0.3, 0.3);
    tu_fill_uniform(&rng, b->w2, d->weight_dtype, (int64_t)(E * H * F), -0.3, 0.3);
    tu_fill_uniform(&rng, b->bias, DMOE_DTYPE_F32, (int64_t)E, -0.1, 0.1);
    tu_fill_uniform(&rng, b->sw13, d->weight_dtype, (int64_t)(S * 2 * Fs * H), -0.3, 0.3);
    tu_fill_uniform(&rng, b->sw2, d->weight_dtype, (int64_t)(S * H * Fs), -0.3, 0.3);
    tu_fill_uniform(&rng, b->sgate, d->weight_dtype, (int64_t)H, -0.3, 0.3);
}

static void wbufs_free(wbufs *b) {
    tu_free(b->router);
    tu_free(b->w13);
    tu_free(b->w2);
    tu_free(b->bias);
    tu_free(b->sw13);
    tu_free(b->sw2);
    tu_free(b->sgate);
}

static dmoe_weights full_weights(const wbufs *b) {
    dmoe_weights w = {b->router, b->w13, b->w2, (const float *)b->bias, b->sw13, b->sw2, b->sgate};
    return w;
}

static int weight_case_apply(int i, dmoe_weights *w, const wbufs *b, desc_case *c) {
    const dmoe_status NP = DMOE_ERR_NULL_POINTER, MA = DMOE_ERR_MISALIGNED;
    switch (i) {
    case 0: w->router = NULL; *c = (desc_case){"router NULL", NP, "router"}; break;
    case 1: w->w13 = NULL; *c = (desc_case){"w13 NULL", NP, "w13"}; break;
    case 2: w->w2 = NULL; *c = (desc_case){"w2 NULL", NP, "w2"}; break;
    case 3: w->correction_bias = NULL; *c = (desc_case){"correction_bias NULL but required", NP, "correction_bias"}; break;
    case 4: w->shared_w13 = NULL; *c = (desc_case){"shared_w13 NULL", NP, "shared_w13"}; break;
    case 5: w->shared_w2 = NULL; *c = (desc_case){"shared_w2 NULL", NP, "shared_w2"}; break;
    case 6: w->shared_gate = NULL; *c = (desc_case){"shared_gate NULL with a sigmoid gate", NP, "shared_gate"}; break;
    case 7: w->router = b->router + 1; *c = (desc_case){"router misaligned", MA, "router aligned"}; break;
    case 8: w->w13 = b->w13 + 1; *c = (desc_case){"w13 misaligned", MA, "w13 aligned"}; break;
    case 9: w->w2 = b->w2 + 1; *c = (desc_case){"w2 misaligned", MA, "w2 aligned"}; break;
    case 10: w->correction_bias = (const float *)(b->bias + 2); *c = (desc_case){"correction_bias misaligned", MA, "correction_bias aligned"}; break;
    case 11: w->shared_w13 = b->sw13 + 1; *c = (desc_case){"shared_w13 misaligned", MA, "shared_w13 aligned"}; break;
    case 12: w->shared_w2 = b->sw2 + 1; *c = (desc_case){"shared_w2 misaligned", MA, "shared_w2 aligned"}; break;
    case 13: w->shared_gate = b->sgate + 1; *c = (desc_case){"shared_gate misaligned", MA, "shared_gate aligned"}; break;
    default: return 0;
    }
    return 1;
}

/* A forward on fixed input, to see whether a layer's weights changed. */
static int probe_forward(dmoe_layer *layer, void *y_out) {
    const dmoe_layer_desc *d = dmoe_layer_get_desc(layer);
    size_t es = dmoe_dtype_size(d->act_dtype);
    void *x = tu_malloc(2 * (size_t)d->hidden * es);
    tu_rng rng;
    tu_rng_init(&rng, 11);
    tu_fill_uniform(&rng, x, d->act_dtype, 2 * d->hidden, -1, 1);
    dmoe_tensor tx = dmoe_tensor_2d(x, d->act_dtype, 2, d->hidden, DMOE_DEVICE_HOST);
    dmoe_tensor ty = dmoe_tensor_2d(y_out, d->act_dtype, 2, d->hidden, DMOE_DEVICE_HOST);
    dmoe_status st = dmoe_forward(layer, &tx, &ty, NULL);
    tu_free(x);
    return st == DMOE_OK;
}

static void check_weight_errors(dmoe_context *ctx, int can_compute) {
    const dmoe_dtype dts[] = {DMOE_DTYPE_BF16, DMOE_DTYPE_F32};
    for (int di = 0; di < 2; di++) {
        dmoe_layer_desc d;
        base_desc(&d);
        d.act_dtype = d.weight_dtype = dts[di];
        d.n_shared_experts = 1;
        d.shared_ffn = 8;
        d.shared_gate = DMOE_SHARED_GATE_SIGMOID;
        d.routing.scoring = DMOE_SCORING_SIGMOID;
        d.routing.use_correction_bias = 1;
        wbufs b;
        wbufs_alloc(&b, &d);
        dmoe_layer *layer = NULL;
        if (!TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK)) {
            wbufs_free(&b);
            continue;
        }
        size_t ybytes = 2 * (size_t)d.hidden * dmoe_dtype_size(d.act_dtype);
        void *y0 = tu_malloc(ybytes), *y1 = tu_malloc(ybytes);
        dmoe_weights w;
        desc_case c;
        expect("dmoe_layer_set_weights(NULL layer)", dmoe_layer_set_weights(NULL, &w),
               DMOE_ERR_NULL_POINTER, NULL, "layer");
        expect("dmoe_layer_set_weights(NULL weights)", dmoe_layer_set_weights(layer, NULL),
               DMOE_ERR_NULL_POINTER, ctx, "");
        /* Failures on a layer without weights leave it without weights... */
        for (int i = 0;; i++) {
            w = full_weights(&b);
            if (!weight_case_apply(i, &w, &b, &c)) break;
            if (dts[di] == DMOE_DTYPE_F32 && i >= 7) { /* f32 needs 4 bytes: +2 is misaligned too */
                if (i == 7) w.router = b.router + 2;
                if (i == 8) w.w13 = b.w13 + 2;
                if (i == 9) w.w2 = b.w2 + 2;
                if (i == 11) w.shared_w13 = b.sw13 + 2;
                if (i == 12) w.shared_w2 = b.sw2 + 2;
                if (i == 13) w.shared_gate = b.sgate + 2;
            }
            char what[128];
            snprintf(what, sizeof what, "%s %s", dmoe_dtype_name(dts[di]), c.what);
            expect(what, dmoe_layer_set_weights(layer, &w), c.want, ctx, c.words);
            dmoe_tensor tx = dmoe_tensor_2d(y1, d.act_dtype, 1, d.hidden, DMOE_DEVICE_HOST);
            dmoe_tensor ty = dmoe_tensor_2d(y0, d.act_dtype, 1, d.hidden, DMOE_DEVICE_HOST);
            expect("forward after a failed first set_weights", dmoe_forward(layer, &tx, &ty, NULL),
                   DMOE_ERR_NO_WEIGHTS, ctx, "");
        }
        /* ...and on a layer with weights keep the old ones. */
        w = full_weights(&b);
        TU_CHECK_STATUS(ctx, dmoe_layer_set_weights(layer, &w), DMOE_OK);
        if (can_compute && probe_forward(layer, y0)) {
            for (int i = 0;; i++) {
                w = full_weights(&b);
                if (!weight_case_apply(i, &w, &b, &c)) break;
                if (i != 0 && i != 7) w.router = b.w2; /* would change y if it were taken */
                dmoe_status st = dmoe_layer_set_weights(layer, &w);
                TU_CHECKF(st == c.want, "%s on a layer with weights: %s", c.what, dmoe_status_name(st));
                memset(y1, 0x5a, ybytes);
                TU_CHECK(probe_forward(layer, y1));
                TU_CHECKF(memcmp(y0, y1, ybytes) == 0, "%s: failed set_weights changed the weights",
                          c.what);
            }
        }
        dmoe_layer_destroy(layer);

        /* Optional weights given where the description has none. */
        base_desc(&d);
        d.act_dtype = d.weight_dtype = dts[di];
        if (TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &layer), DMOE_OK)) {
            w = full_weights(&b);
            w.shared_w13 = w.shared_w2 = w.shared_gate = NULL;
            expect("correction_bias without use_correction_bias", dmoe_layer_set_weights(layer, &w),
                   DMOE_ERR_INVALID_ARGUMENT, ctx, "correction_bias use_correction_bias");
            w = full_weights(&b);
            w.correction_bias = NULL;
            w.shared_w2 = NULL;
            w.shared_gate = NULL;
            expect("shared_w13 without shared experts", dmoe_layer_set_weights(layer, &w),
                   DMOE_ERR_INVALID_ARGUMENT, ctx, "n_shared_experts");
            w.shared_w13 = NULL;
            w.shared_w2 = b.sw2;
            expect("shared_w2 without shared experts", dmoe_layer_set_weights(layer, &w),
                   DMOE_ERR_INVALID_ARGUMENT, ctx, "n_shared_experts");
            w.shared_w2 = NULL;
            w.shared_gate = b.sgate;
            expect("shared_gate without a gate", dmoe_layer_set_weights(layer, &w),
                   DMOE_ERR_INVALID_ARGUMENT, ctx, "shared_gate");
            dmoe_layer_destroy(layer);
        }
        tu_free(y0);
        tu_free(y1);
        wbufs_free(&b);
    }
}

/* ---- forward, route, experts ---- */

enum { IO_T = 4, IO_MAXT = 8, IO_H = 16, IO_F = 8, IO_E = 4, IO_K = 2, SLACK = 64 };

typedef struct io {
    dmoe_layer *layer;
    dmoe_context *ctx;
    dmoe_dtype dt;
    unsigned char *xb, *yb, *idb, *wb;     /* room for IO_MAXT + 1 rows and slack */
    unsigned char *xs, *ys, *ids_s, *ws;   /* snapshots */
    size_t xbytes, ybytes, idbytes, wbytes;
    dmoe_tensor x, y, ids, wts;
} io;

static void io_reset(io *s) {
    s->x = dmoe_tensor_2d(s->xb, s->dt, IO_T, IO_H, DMOE_DEVICE_HOST);
    s->y = dmoe_tensor_2d(s->yb, s->dt, IO_T, IO_H, DMOE_DEVICE_HOST);
    s->ids = dmoe_tensor_2d(s->idb, DMOE_DTYPE_I32, IO_T, IO_K, DMOE_DEVICE_HOST);
    s->wts = dmoe_tensor_2d(s->wb, DMOE_DTYPE_F32, IO_T, IO_K, DMOE_DEVICE_HOST);
    memset(s->yb, 0xa5, s->ybytes);
    memset(s->wb, 0xa5, s->wbytes);
    /* Valid routing in the whole ids buffer, so the range check passes
     * wherever a case points the tensor. */
    for (size_t i = 0; i < s->idbytes / 4; i++) ((int32_t *)s->idb)[i] = (int32_t)(i % IO_E);
    memcpy(s->ys, s->yb, s->ybytes);
    memcpy(s->ws, s->wb, s->wbytes);
    memcpy(s->ids_s, s->idb, s->idbytes);
    memcpy(s->xs, s->xb, s->xbytes);
}

static int io_untouched(const io *s) {
    return memcmp(s->xs, s->xb, s->xbytes) == 0 && memcmp(s->ys, s->yb, s->ybytes) == 0 &&
           memcmp(s->ids_s, s->idb, s->idbytes) == 0 && memcmp(s->ws, s->wb, s->wbytes) == 0;
}

enum { OP_FORWARD, OP_ROUTE, OP_EXPERTS };
static const char *const op_names[] = {"dmoe_forward", "dmoe_route", "dmoe_experts"};

/* Case i of the tensor checks shared by the three entry points (x, layer);
 * then op-specific cases. Returns 0 when there are no more. */
static int io_case_apply(int op, int i, io *s, desc_case *c, int *null_layer) {
    const dmoe_status NP = DMOE_ERR_NULL_POINTER, INV = DMOE_ERR_INVALID_ARGUMENT,
                      SH = DMOE_ERR_BAD_SHAPE, DM = DMOE_ERR_DTYPE_MISMATCH,
                      MA = DMOE_ERR_MISALIGNED, WD = DMOE_ERR_WRONG_DEVICE,
                      TM = DMOE_ERR_TOO_MANY_TOKENS;
    const size_t es = dmoe_dtype_size(s->dt);
    const dmoe_dtype other = s->dt == DMOE_DTYPE_F16 ? DMOE_DTYPE_BF16 : DMOE_DTYPE_F16;
    *null_layer = 0;
    switch (i) {
    case 0: *null_layer = 1; *c = (desc_case){"layer NULL", NP, "layer"}; return 1;
    case 1: s->x.data = NULL; *c = (desc_case){"x->data NULL", NP, "x"}; return 1;
    case 2: s->x.dtype = other; *c = (desc_case){"x dtype differs from act_dtype", DM, "x dtype"}; return 1;
    case 3: s->x.dtype = (dmoe_dtype)99; *c = (desc_case){"x dtype 99", DM, "x dtype"}; return 1;
    case 4: s->x.dtype = DMOE_DTYPE_I32; *c = (desc_case){"x dtype i32", DM, "x dtype"}; return 1;
    case 5: s->x.n_dims = 1; *c = (desc_case){"x 1-D", SH, "x"}; return 1;
    case 6: s->x.n_dims = 3; s->x.shape[2] = 1; *c = (desc_case){"x 3-D", SH, "x"}; return 1;
    case 7: s->x.n_dims = 0; *c = (desc_case){"x 0-D", SH, "x"}; return 1;
    case 8: s->x.shape[1] = IO_H + 1; *c = (desc_case){"x has H+1 columns", SH, "x columns"}; return 1;
    case 9: s->x.shape[1] = IO_H - 1; *c = (desc_case){"x has H-1 columns", SH, "x columns"}; return 1;
    case 10: s->x.shape[0] = 0; s->y.shape[0] = 0; s->ids.shape[0] = 0; s->wts.shape[0] = 0;
        *c = (desc_case){"T = 0", SH, "x rows"}; return 1;
    case 11: s->x.shape[0] = -1; s->y.shape[0] = -1; s->ids.shape[0] = -1; s->wts.shape[0] = -1;
        *c = (desc_case){"T = -1", SH, "x rows"}; return 1;
    case 12: s->x.shape[0] = IO_MAXT + 1; s->y.shape[0] = IO_MAXT + 1; s->ids.shape[0] = IO_MAXT + 1;
        s->wts.shape[0] = IO_MAXT + 1; *c = (desc_case){"T = max_tokens + 1", TM, "x max_tokens"}; return 1;
    case 13: s->x.shape[0] = INT64_MAX; s->y.shape[0] = INT64_MAX; s->ids.shape[0] = INT64_MAX;
        s->wts.shape[0] = INT64_MAX; *c = (desc_case){"T = INT64_MAX", TM, "x max_tokens"}; return 1;
    case 14: s->x.device = 0; *c = (desc_case){"x on device 0", WD, "x device"}; return 1;
    case 15: s->x.device = -2; *c = (desc_case){"x on device -2", WD, "x device"}; return 1;
    case 16: s->x.data = s->xb + 1; *c = (desc_case){"x misaligned by 1 byte", MA, "x aligned"}; return 1;
    case 17: s->x.data = s->xb + es / 2; *c = (desc_case){"x misaligned by half an element", MA, "x aligned"}; return 1;
    default: break;
    }
    i -= 18;
    if (op == OP_FORWARD || op == OP_EXPERTS) {
        switch (i) {
        case 0: s->y.data = NULL; *c = (desc_case){"y->data NULL", NP, "y"}; return 1;
        case 1: s->y.dtype = other; *c = (desc_case){"y dtype differs", DM, "y dtype"}; return 1;
        case 2: s->y.n_dims = 1; *c = (desc_case){"y 1-D", SH, "y"}; return 1;
        case 3: s->y.shape[0] = IO_T - 1; *c = (desc_case){"y has fewer rows than x", SH, "y rows"}; return 1;
        case 4: s->y.shape[0] = IO_T + 1; *c = (desc_case){"y has more rows than x", SH, "y rows"}; return 1;
        case 5: s->y.shape[1] = IO_H * 2; *c = (desc_case){"y has 2H columns", SH, "y columns"}; return 1;
        case 6: s->y.device = 0; *c = (desc_case){"y on device 0", WD, "y device"}; return 1;
        case 7: s->y.data = s->yb + 1; *c = (desc_case){"y misaligned", MA, "y aligned"}; return 1;
        case 8: s->y.data = s->xb; *c = (desc_case){"y is x", INV, "y overlaps x"}; return 1;
        case 9: s->y.data = s->xb + IO_H * es * (IO_T - 1); *c = (desc_case){"y starts in x's last row", INV, "y overlaps x"}; return 1;
        case 10: s->x.data = s->yb + IO_H * es * (IO_T - 1); *c = (desc_case){"x starts in y's last row", INV, "y overlaps x"}; return 1;
        default: break;
        }
        i -= 11;
    }
    if (op == OP_ROUTE || op == OP_EXPERTS) {
        switch (i) {
        case 0: s->ids.data = NULL; *c = (desc_case){"topk_ids->data NULL", NP, "topk_ids"}; return 1;
        case 1: s->wts.data = NULL; *c = (desc_case){"topk_weights->data NULL", NP, "topk_weights"}; return 1;
        case 2: s->ids.dtype = DMOE_DTYPE_F32; *c = (desc_case){"topk_ids f32", DM, "topk_ids dtype"}; return 1;
        case 3: s->wts.dtype = DMOE_DTYPE_I32; *c = (desc_case){"topk_weights i32", DM, "topk_weights dtype"}; return 1;
        case 4: s->wts.dtype = DMOE_DTYPE_BF16; *c = (desc_case){"topk_weights bf16", DM, "topk_weights dtype"}; return 1;
        case 5: s->ids.shape[1] = IO_K + 1; *c = (desc_case){"topk_ids has K+1 columns", SH, "topk_ids columns"}; return 1;
        case 6: s->wts.shape[1] = IO_K - 1; *c = (desc_case){"topk_weights has K-1 columns", SH, "topk_weights columns"}; return 1;
        case 7: s->ids.shape[0] = IO_T - 1; *c = (desc_case){"topk_ids has T-1 rows", SH, "topk_ids rows"}; return 1;
        case 8: s->wts.shape[0] = IO_T + 1; *c = (desc_case){"topk_weights has T+1 rows", SH, "topk_weights rows"}; return 1;
        case 9: s->ids.n_dims = 3; *c = (desc_case){"topk_ids 3-D", SH, "topk_ids"}; return 1;
        case 10: s->ids.device = 0; *c = (desc_case){"topk_ids on device 0", WD, "topk_ids device"}; return 1;
        case 11: s->wts.device = 1; *c = (desc_case){"topk_weights on device 1", WD, "topk_weights device"}; return 1;
        case 12: s->ids.data = s->idb + 2; *c = (desc_case){"topk_ids misaligned", MA, "topk_ids aligned"}; return 1;
        case 13: s->wts.data = s->wb + 1; *c = (desc_case){"topk_weights misaligned", MA, "topk_weights aligned"}; return 1;
        default: break;
        }
        i -= 14;
    }
    if (op == OP_ROUTE) {
        switch (i) {
        case 0: s->ids.data = s->xb; *c = (desc_case){"topk_ids inside x", INV, "topk_ids overlaps x"}; return 1;
        case 1: s->wts.data = s->xb + 8; *c = (desc_case){"topk_weights inside x", INV, "topk_weights overlaps x"}; return 1;
        case 2: s->wts.data = s->idb + 4 * (IO_T * IO_K - 1); *c = (desc_case){"topk_weights overlaps topk_ids", INV, "topk_ids overlaps topk_weights"}; return 1;
        default: return 0;
        }
    }
    if (op == OP_EXPERTS) {
        int32_t *ids = (int32_t *)s->idb;
        switch (i) {
        case 0: ids[0] = -1; *c = (desc_case){"topk_ids[0][0] = -1", INV, "topk_ids"}; return 1;
        case 1: ids[IO_T * IO_K - 1] = IO_E; *c = (desc_case){"last id = E", INV, "topk_ids"}; return 1;
        case 2: ids[3] = INT32_MIN; *c = (desc_case){"an id = INT32_MIN", INV, "topk_ids"}; return 1;
        case 3: ids[5] = INT32_MAX; *c = (desc_case){"an id = INT32_MAX", INV, "topk_ids"}; return 1;
        case 4: s->y.data = s->idb; *c = (desc_case){"y overlaps topk_ids", INV, "y overlaps"}; return 1;
        case 5: s->y.data = s->wb; *c = (desc_case){"y overlaps topk_weights", INV, "y overlaps"}; return 1;
        default: return 0;
        }
    }
    return 0;
}

static dmoe_status io_call(int op, io *s, int null_layer) {
    dmoe_layer *layer = null_layer ? NULL : s->layer;
    switch (op) {
    case OP_FORWARD: return dmoe_forward(layer, &s->x, &s->y, NULL);
    case OP_ROUTE: return dmoe_route(layer, &s->x, &s->ids, &s->wts, NULL);
    default: return dmoe_experts(layer, &s->x, &s->ids, &s->wts, &s->y, NULL);
    }
}

static void check_call_errors(dmoe_context *ctx, dmoe_dtype dt, int can_compute) {
    io s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.dt = dt;
    const size_t es = dmoe_dtype_size(dt);
    s.xbytes = (IO_MAXT + 1) * IO_H * es + SLACK;
    s.ybytes = s.xbytes;
    s.idbytes = (IO_MAXT + 1) * IO_K * 4 + SLACK;
    s.wbytes = s.idbytes;
    s.xb = tu_malloc(s.xbytes);
    s.yb = tu_malloc(s.ybytes);
    s.idb = tu_malloc(s.idbytes);
    s.wb = tu_malloc(s.wbytes);
    s.xs = tu_malloc(s.xbytes);
    s.ys = tu_malloc(s.ybytes);
    s.ids_s = tu_malloc(s.idbytes);
    s.ws = tu_malloc(s.wbytes);
    tu_rng rng;
    tu_rng_init(&rng, 3);
    tu_fill_uniform(&rng, s.xb, dt, (int64_t)(s.xbytes / es), -1, 1);

    dmoe_layer_desc d;
    base_desc(&d);
    d.hidden = IO_H;
    d.ffn = IO_F;
    d.n_experts = IO_E;
    d.top_k = IO_K;
    d.max_tokens = IO_MAXT;
    d.act_dtype = d.weight_dtype = dt;
    wbufs b;
    wbufs_alloc(&b, &d);
    dmoe_weights w = full_weights(&b);
    w.correction_bias = NULL;
    w.shared_w13 = w.shared_w2 = w.shared_gate = NULL;
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_create(ctx, &d, &s.layer), DMOE_OK)) goto done;

    /* Before set_weights, every entry point refuses. */
    for (int op = 0; op < 3; op++) {
        io_reset(&s);
        char what[96];
        snprintf(what, sizeof what, "%s before set_weights", op_names[op]);
        expect(what, io_call(op, &s, 0), DMOE_ERR_NO_WEIGHTS, ctx, "dmoe_layer_set_weights");
        TU_CHECKF(io_untouched(&s), "%s: outputs written", what);
    }
    if (!TU_CHECK_STATUS(ctx, dmoe_layer_set_weights(s.layer, &w), DMOE_OK)) goto done;
    /* Tensor pointers themselves NULL. */
    io_reset(&s);
    expect("dmoe_forward(x NULL)", dmoe_forward(s.layer, NULL, &s.y, NULL), DMOE_ERR_NULL_POINTER, ctx, "x");
    expect("dmoe_forward(y NULL)", dmoe_forward(s.layer, &s.x, NULL, NULL), DMOE_ERR_NULL_POINTER, ctx, "y");
    expect("dmoe_route(topk_ids NULL)", dmoe_route(s.layer, &s.x, NULL, &s.wts, NULL), DMOE_ERR_NULL_POINTER, ctx, "topk_ids");
    expect("dmoe_route(topk_weights NULL)", dmoe_route(s.layer, &s.x, &s.ids, NULL, NULL), DMOE_ERR_NULL_POINTER, ctx, "topk_weights");
    expect("dmoe_experts(x NULL)", dmoe_experts(s.layer, NULL, &s.ids, &s.wts, &s.y, NULL), DMOE_ERR_NULL_POINTER, ctx, "x");
    expect("dmoe_experts(topk_ids NULL)", dmoe_experts(s.layer, &s.x, NULL, &s.wts, &s.y, NULL), DMOE_ERR_NULL_POINTER, ctx, "topk_ids");
    expect("dmoe_experts(topk_weights NULL)", dmoe_experts(s.layer, &s.x, &s.ids, NULL, &s.y, NULL), DMOE_ERR_NULL_POINTER, ctx, "topk_weights");
    expect("dmoe_experts(y NULL)", dmoe_experts(s.layer, &s.x, &s.ids, &s.wts, NULL, NULL), DMOE_ERR_NULL_POINTER, ctx, "y");
    TU_CHECK(io_untouched(&s));

    int n = 0;
    for (int op = 0; op < 3; op++) {
        for (int i = 0;; i++) {
            io_reset(&s);
            desc_case c;
            int null_layer;
            if (!io_case_apply(op, i, &s, &c, &null_layer)) break;
            /* The out-of-range ids were written after the snapshot: retake it. */
            memcpy(s.ids_s, s.idb, s.idbytes);
            char what[160];
            snprintf(what, sizeof what, "%s %s: %s", op_names[op], dmoe_dtype_name(dt), c.what);
            expect(what, io_call(op, &s, null_layer), c.want, null_layer ? NULL : ctx, c.words);
            TU_CHECKF(io_untouched(&s), "%s: an output (or x) was written", what);
            n++;
        }
    }
    /* The valid calls succeed, so the cases above failed for their reason. */
    if (can_compute) {
        for (int op = 0; op < 3; op++) {
            io_reset(&s);
            TU_CHECKF(io_call(op, &s, 0) == DMOE_OK, "valid %s failed: %s", op_names[op],
                      dmoe_context_last_error(ctx));
            /* A failure after a success has its own message again. */
            s.x.device = 3;
            expect("after a success", io_call(op, &s, 0), DMOE_ERR_WRONG_DEVICE, ctx, "device");
        }
        /* T = max_tokens exactly is fine. */
        io_reset(&s);
        s.x.shape[0] = s.y.shape[0] = IO_MAXT;
        TU_CHECK_STATUS(ctx, dmoe_forward(s.layer, &s.x, &s.y, NULL), DMOE_OK);
    }
    printf("  %s %s: %d bad calls\n", ctx->backend->name, dmoe_dtype_name(dt), n);
done:
    dmoe_layer_destroy(s.layer);
    wbufs_free(&b);
    tu_free(s.xb);
    tu_free(s.yb);
    tu_free(s.idb);
    tu_free(s.wb);
    tu_free(s.xs);
    tu_free(s.ys);
    tu_free(s.ids_s);
    tu_free(s.ws);
}

/* ---- messages of several threads on one context ---- */

typedef struct msg_job {
    dmoe_context *ctx;
    int bad_hidden; /* 1: hidden = 0 (message names hidden), 0: ffn = 0 (names ffn) */
    int calls, wrong;
} msg_job;

static void *msg_run(void *p) {
    msg_job *j = (msg_job *)p;
    const char *want = j->bad_hidden ? "hidden" : "ffn", *other = j->bad_hidden ? "ffn" : "hidden";
    for (int i = 0; i < j->calls; i++) {
        dmoe_layer_desc d;
        base_desc(&d);
        if (j->bad_hidden) d.hidden = 0;
        else d.ffn = 0;
        dmoe_layer *layer = NULL;
        const dmoe_status st = dmoe_layer_create(j->ctx, &d, &layer);
        const char *msg = dmoe_context_last_error(j->ctx);
        j->wrong += st != DMOE_ERR_INVALID_ARGUMENT || !has_word(msg, want) || has_word(msg, other);
    }
    return NULL;
}

static void check_thread_messages(void) {
    dmoe_context_desc cd;
    dmoe_context_desc_init(&cd);
    cd.backend = DMOE_BACKEND_CPU_REF;
    dmoe_context *ctx = NULL;
    if (!TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx), DMOE_OK)) return;
    /* this thread fails (hidden), another fails on the same context (ffn): ours is still hidden */
    msg_job mine = {ctx, 1, 1, 0}, theirs = {ctx, 0, 1, 0};
    msg_run(&mine);
    pthread_t th;
    const int started = pthread_create(&th, NULL, msg_run, &theirs) == 0;
    if (started) pthread_join(th, NULL);
    TU_CHECKF(started, "cannot start a thread");
    const char *msg = dmoe_context_last_error(ctx);
    TU_CHECKF(mine.wrong == 0 && theirs.wrong == 0 && has_word(msg, "hidden") && !has_word(msg, "ffn"),
              "a failure on another thread replaced this thread's message: '%s'", msg);
    /* both at once, many times: each thread reads its own message every time */
    msg_job a = {ctx, 1, 20000, 0}, b = {ctx, 0, 20000, 0};
    const int started2 = pthread_create(&th, NULL, msg_run, &b) == 0;
    msg_run(&a);
    if (started2) pthread_join(th, NULL);
    TU_CHECKF(a.wrong == 0 && b.wrong == 0, "concurrent failures on one context: %d and %d of %d messages wrong",
              a.wrong, b.wrong, a.calls);
    dmoe_context_destroy(ctx);
    /* a context made where the failed one was freed (malloc often reuses the address) has no message */
    dmoe_context *ctx2 = NULL;
    if (TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx2), DMOE_OK)) {
        TU_CHECKF(dmoe_context_last_error(ctx2)[0] == '\0', "a new context starts with a message: '%s'",
                  dmoe_context_last_error(ctx2));
        dmoe_context_destroy(ctx2);
    }
}

int main(void) {
    (void)tu_seed(); /* this test is not random; for the common output setup */
    printf("messages of several threads on one context\n");
    check_thread_messages();
    printf("status codes and names\n");
    check_status_list();
    check_names();
    printf("contexts\n");
    check_context_errors();

    dmoe_backend backends[2] = {DMOE_BACKEND_CPU_REF, tu_backend_under_test()};
    int n_backends = backends[1] == DMOE_BACKEND_CPU_REF ? 1 : 2;
    for (int bi = 0; bi < n_backends; bi++) {
        dmoe_context_desc cd;
        dmoe_context_desc_init(&cd);
        cd.backend = backends[bi];
        dmoe_context *ctx = NULL;
        if (!TU_CHECK_STATUS(NULL, dmoe_context_create(&cd, &ctx), DMOE_OK)) continue;
        /* Validation never reaches the backend's compute functions, so it is
         * checked even while a backend has none; successful calls need them. */
        int can_compute = tu_backend_implemented(backends[bi]);
        if (!can_compute)
            printf("  %s has no compute functions yet: only failing calls are made\n",
                   dmoe_backend_name(backends[bi]));
        printf("layer descriptions on %s\n", dmoe_backend_name(backends[bi]));
        check_desc_errors(ctx);
        printf("weights on %s\n", dmoe_backend_name(backends[bi]));
        check_weight_errors(ctx, can_compute);
        printf("forward, route and experts on %s\n", dmoe_backend_name(backends[bi]));
        check_call_errors(ctx, DMOE_DTYPE_BF16, can_compute);
        check_call_errors(ctx, DMOE_DTYPE_F32, can_compute);
        check_call_errors(ctx, DMOE_DTYPE_F16, can_compute);
        dmoe_context_destroy(ctx);
    }
    return tu_finish("test-errors");
}

/*
 * status.c: status strings (from the X-macro list in dmoe.h), error messages
 * (per thread, and per context within a thread), dtype helpers and the version
 * string.
 */
#include <stdatomic.h>

#include "dmoe-impl.h"

const char *dmoe_status_str(dmoe_status status) {
    switch (status) {
#define DMOE_X_STR(name, value, text) \
    case name: return text;
        DMOE_STATUS_LIST(DMOE_X_STR)
#undef DMOE_X_STR
    }
    return "unknown status";
}

const char *dmoe_status_name(dmoe_status status) {
    switch (status) {
#define DMOE_X_NAME(name, value, text) \
    case name: return #name;
        DMOE_STATUS_LIST(DMOE_X_NAME)
#undef DMOE_X_NAME
    }
    return "DMOE_UNKNOWN_STATUS";
}

const char *dmoe_version_string(void) {
#ifdef DMOE_HAVE_CUDA
    return "0.1.0 (cuda: yes)";
#else
    return "0.1.0 (cuda: no)";
#endif
}

size_t dmoe_dtype_size(dmoe_dtype dtype) {
    switch (dtype) {
    case DMOE_DTYPE_F32: return 4;
    case DMOE_DTYPE_BF16: return 2;
    case DMOE_DTYPE_F16: return 2;
    case DMOE_DTYPE_I32: return 4;
    }
    return 0;
}

const char *dmoe_dtype_name(dmoe_dtype dtype) {
    switch (dtype) {
    case DMOE_DTYPE_F32: return "f32";
    case DMOE_DTYPE_BF16: return "bf16";
    case DMOE_DTYPE_F16: return "f16";
    case DMOE_DTYPE_I32: return "i32";
    }
    return "unknown";
}

dmoe_tensor dmoe_tensor_2d(void *data, dmoe_dtype dtype, int64_t rows, int64_t cols,
                           int32_t device) {
    dmoe_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.n_dims = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.device = device;
    return t;
}

/* Messages live with the thread that made the failing call: layers of one context may run in
 * different threads at once, and one thread's message must neither overwrite nor tear another's.
 * A thread keeps the messages of the last ERROR_SLOTS contexts it recorded one for, keyed by the
 * context's serial (a new context at a freed one's address starts with no message); calls without a
 * context (context creation, the store) use their own buffer. */
#define ERROR_SLOTS 4
typedef struct error_slot {
    uint64_t serial; /* 0: free */
    uint64_t used;   /* this thread's clock at the last write: the oldest slot is reused */
    char msg[DMOE_ERROR_LEN];
} error_slot;
static _Thread_local error_slot dmoe__thread_slots[ERROR_SLOTS];
static _Thread_local uint64_t dmoe__thread_clock;
static _Thread_local char dmoe__thread_error[DMOE_ERROR_LEN];

uint64_t dmoe__context_serial(void) {
    static _Atomic uint64_t next = 1;
    return atomic_fetch_add(&next, 1);
}

static error_slot *find_slot(const dmoe_context *ctx) {
    for (int i = 0; i < ERROR_SLOTS; i++)
        if (dmoe__thread_slots[i].serial == ctx->serial) return &dmoe__thread_slots[i];
    return NULL;
}

static char *error_buffer(const dmoe_context *ctx) {
    if (!ctx) return dmoe__thread_error;
    error_slot *s = find_slot(ctx);
    if (!s) {
        s = &dmoe__thread_slots[0];
        for (int i = 1; i < ERROR_SLOTS; i++)
            if (dmoe__thread_slots[i].used < s->used) s = &dmoe__thread_slots[i];
        s->serial = ctx->serial;
    }
    s->used = ++dmoe__thread_clock;
    return s->msg;
}

dmoe_status dmoe__error(dmoe_context *ctx, dmoe_status status, const char *fmt, ...) {
    /* formatted apart first: an argument may be a message this call replaces */
    char tmp[DMOE_ERROR_LEN];
    int n = snprintf(tmp, sizeof tmp, "%s: ", dmoe_status_name(status));
    if (n < 0 || n >= DMOE_ERROR_LEN) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp + n, sizeof tmp - (size_t)n, fmt, ap);
    va_end(ap);
    char *buf = error_buffer(ctx);
    memcpy(buf, tmp, strlen(tmp) + 1);
    if (getenv("DMOE_LOG") && strcmp(getenv("DMOE_LOG"), "debug") == 0)
        fprintf(stderr, "dmoe: %s\n", buf);
    return status;
}

void dmoe__clear_error(dmoe_context *ctx) {
    if (!ctx) {
        dmoe__thread_error[0] = '\0';
        return;
    }
    error_slot *s = find_slot(ctx);
    if (s) s->msg[0] = '\0';
}

const char *dmoe_context_last_error(const dmoe_context *ctx) {
    if (!ctx) return dmoe__thread_error;
    const error_slot *s = find_slot(ctx);
    return s ? s->msg : "";
}

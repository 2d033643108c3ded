/*
 * status.c: status strings (from the X-macro list in dmoe.h), per-context and
 * per-thread error messages, dtype helpers and the version string.
 */
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

/* Messages of calls that have no context (context creation) live per thread. */
static _Thread_local char dmoe__thread_error[DMOE_ERROR_LEN];

dmoe_status dmoe__error(dmoe_context *ctx, dmoe_status status, const char *fmt, ...) {
    char *buf = ctx ? ctx->last_error : dmoe__thread_error;
    int n = snprintf(buf, DMOE_ERROR_LEN, "%s: ", dmoe_status_name(status));
    if (n < 0 || n >= DMOE_ERROR_LEN) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, DMOE_ERROR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
    if (getenv("DMOE_LOG") && strcmp(getenv("DMOE_LOG"), "debug") == 0)
        fprintf(stderr, "dmoe: %s\n", buf);
    return status;
}

void dmoe__clear_error(dmoe_context *ctx) {
    if (ctx) ctx->last_error[0] = '\0';
    else dmoe__thread_error[0] = '\0';
}

const char *dmoe_context_last_error(const dmoe_context *ctx) {
    return ctx ? ctx->last_error : dmoe__thread_error;
}

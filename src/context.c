/*
 * context.c: contexts (backend choice, threads, allocator) and the host
 * allocation helpers every part of dmoe uses, so a caller-supplied allocator
 * sees every byte (the failing-allocator test relies on this).
 */
#include <unistd.h>

#include <time.h>

#include "dmoe-impl.h"

static void *default_alloc(void *user, size_t size, size_t align) {
    (void)user;
    void *p = NULL;
    if (posix_memalign(&p, align, size ? size : align) != 0) return NULL;
    return p;
}

static void default_free(void *user, void *ptr) {
    (void)user;
    free(ptr);
}

static const dmoe_backend_iface *backend_table(dmoe_backend b) {
    switch (b) {
    case DMOE_BACKEND_CPU_REF: return &dmoe__backend_cpu_ref;
    case DMOE_BACKEND_CPU: return &dmoe__backend_cpu;
    case DMOE_BACKEND_CUDA:
#ifdef DMOE_HAVE_CUDA
        return &dmoe__backend_cuda;
#else
        return NULL;
#endif
    default: return NULL;
    }
}

static const char *const backend_names[DMOE_BACKEND_COUNT] = {"cpu-ref", "cpu", "cuda"};

const char *dmoe_backend_name(dmoe_backend backend) {
    if ((int)backend < 0 || backend >= DMOE_BACKEND_COUNT) return "unknown";
    return backend_names[backend];
}

dmoe_status dmoe_backend_from_name(const char *name, dmoe_backend *out) {
    if (!name || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "name and out are required");
    for (int b = 0; b < DMOE_BACKEND_COUNT; b++) {
        if (strcmp(name, backend_names[b]) == 0) {
            *out = (dmoe_backend)b;
            return DMOE_OK;
        }
    }
    return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                       "unknown backend '%s' (expected cpu-ref, cpu or cuda)", name);
}

int dmoe_backend_available(dmoe_backend backend) {
    const dmoe_backend_iface *be = backend_table(backend);
    if (!be) return 0;
    return be->available ? be->available() : 1;
}

void dmoe_context_desc_init(dmoe_context_desc *desc) {
    if (!desc) return;
    memset(desc, 0, sizeof *desc);
    desc->backend = DMOE_BACKEND_CPU;
    desc->n_threads = 0;
    desc->device = 0;
    desc->allocator = NULL;
}

dmoe_status dmoe_context_create(const dmoe_context_desc *desc, dmoe_context **out) {
    dmoe__clear_error(NULL);
    if (!desc || !out) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "desc and out are required");
    if ((int)desc->backend < 0 || desc->backend >= DMOE_BACKEND_COUNT)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "unknown backend %d", (int)desc->backend);
    if (desc->n_threads < 0 || desc->n_threads > 1024)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT,
                           "n_threads must be in [0, 1024] (0 = all cores), got %d",
                           (int)desc->n_threads);
    if (desc->device < 0)
        return dmoe__error(NULL, DMOE_ERR_INVALID_ARGUMENT, "device must be >= 0, got %d",
                           (int)desc->device);
    if (desc->allocator && (!desc->allocator->alloc || !desc->allocator->free))
        return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "allocator needs both alloc and free");
    const dmoe_backend_iface *be = backend_table(desc->backend);
    if (!be || (be->available && !be->available()))
        return dmoe__error(NULL, DMOE_ERR_BACKEND_UNAVAILABLE, "backend '%s' is not available %s",
                           dmoe_backend_name(desc->backend),
                           be ? "on this machine (no device found)" : "in this build");

    dmoe_allocator alloc = {default_alloc, default_free, NULL};
    if (desc->allocator) alloc = *desc->allocator;
    dmoe_context *ctx = (dmoe_context *)alloc.alloc(alloc.user, sizeof *ctx, 64);
    if (!ctx) return dmoe__error(NULL, DMOE_ERR_OUT_OF_MEMORY, "cannot allocate the context");
    memset(ctx, 0, sizeof *ctx);
    ctx->desc = *desc;
    ctx->desc.allocator = NULL; /* the copy below is what we use; the caller's may go away */
    ctx->alloc = alloc;
    ctx->backend = be;
    ctx->serial = dmoe__context_serial();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    ctx->n_threads = desc->n_threads > 0 ? desc->n_threads : (online > 0 ? (int32_t)online : 1);
    if (be->context_init) {
        dmoe_status st = be->context_init(ctx);
        if (st != DMOE_OK) {
            /* carry the backend's message to the per-thread slot, without
             * repeating the "NAME: " prefix dmoe__error gave it */
            const char *msg = dmoe_context_last_error(ctx), *name = dmoe_status_name(st);
            size_t n = strlen(name);
            if (strncmp(msg, name, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') msg += n + 2;
            dmoe__error(NULL, st, "%s", msg);
            alloc.free(alloc.user, ctx);
            return st;
        }
    }
    *out = ctx;
    return DMOE_OK;
}

void dmoe_context_destroy(dmoe_context *ctx) {
    if (!ctx) return;
    if (ctx->backend->context_fini) ctx->backend->context_fini(ctx);
    dmoe_allocator alloc = ctx->alloc;
    alloc.free(alloc.user, ctx);
}

int32_t dmoe_context_n_threads(const dmoe_context *ctx) { return ctx ? ctx->n_threads : 0; }

dmoe_backend dmoe_context_backend(const dmoe_context *ctx) {
    return ctx ? ctx->desc.backend : DMOE_BACKEND_COUNT;
}

void *dmoe__malloc(dmoe_context *ctx, size_t size) {
    return ctx->alloc.alloc(ctx->alloc.user, size ? size : 1, 64);
}

void *dmoe__calloc(dmoe_context *ctx, size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = dmoe__malloc(ctx, count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void dmoe__free(dmoe_context *ctx, void *ptr) {
    if (ptr) ctx->alloc.free(ctx->alloc.user, ptr);
}

dmoe_status dmoe_context_memory_stats(dmoe_context *ctx, dmoe_memory_stats *out) {
    if (!ctx) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "ctx is NULL");
    dmoe__clear_error(ctx);
    if (!out) return dmoe__error(ctx, DMOE_ERR_NULL_POINTER, "out is NULL");
    if (!ctx->backend->memory_stats) {
        memset(out, 0, sizeof *out);
        return DMOE_OK;
    }
    return ctx->backend->memory_stats(ctx, out);
}

dmoe_status dmoe_context_trim_memory(dmoe_context *ctx) {
    if (!ctx) return dmoe__error(NULL, DMOE_ERR_NULL_POINTER, "ctx is NULL");
    dmoe__clear_error(ctx);
    if (ctx->backend->memory_trim) ctx->backend->memory_trim(ctx);
    return DMOE_OK;
}

double dmoe__now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

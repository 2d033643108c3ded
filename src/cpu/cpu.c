/*
 * cpu.c: the fast CPU backend (DMOE_BACKEND_CPU): threads, SIMD, blocking.
 *
 * A forward runs in chunks of at most `chunk` tokens (sized at layer creation
 * so the workspace stays bounded, and large enough that an expert's weights
 * serve many tokens per read). Per chunk, each step one job on the thread
 * pool (cpu-pool.c), with every output element written by exactly one item:
 *   prep     x rows -> xf (chunk, H) f32 copy when act_dtype is not f32, and
 *            xb (chunk, H) bf16 for the bf16 path, with padded row strides;
 *            shared-gate logit per token.
 *   logits   (token block x expert block) items: logits (chunk, E) f32 =
 *            router (E, H) . x, weights widened in registers, fp32 x.
 *   select   dmoe__route_token per token (src/routing.c, so the rules are
 *            cpu-ref's): ids, wts (chunk, n_slots) where n_slots = K + S and
 *            slot K + s is shared expert s (weight 1, or sigmoid(gate . x)).
 *   plan     (calling thread) dmoe__plan_build over E + S "experts": shared
 *            experts are experts every token uses. Then the work items.
 *   gemm1    (expert, block of F rows) items: act (chunk*n_slots, fmax) =
 *            silu(x_e . W1ᵀ) * (x_e . W3ᵀ); x rows gathered by pointer.
 *   gemm2    (expert, block of H rows) items: part (chunk*n_slots, H) f32 =
 *            slot weight * (act_e . W2ᵀ).
 *   combine  (token, H block) items: y[t] = sum over slots k = 0..n_slots-1
 *            of part[slot_of[t, k]], in that order, rounded to act_dtype.
 * Items are claimed dynamically, but no element's arithmetic depends on the
 * thread that runs it or on the blocking, so y is bitwise the same for any
 * thread count.
 *
 * Paths. With bf16 weights on an AVX-512 BF16 machine, gemm1 and gemm2 use
 * vdpbf16ps: x (when not bf16 already) and act are rounded to bf16, products
 * are exact and sums fp32 (relative error ~3e-3 against cpu-ref). Otherwise
 * (f32/f16 weights, or the AVX2 and scalar tables) everything is fp32:
 * weights widened in registers, act kept in f32. The router is always fp32.
 *
 * Threads: ctx->n_threads in all, the calling thread being one of them.
 * Environment (read at context creation):
 *   DMOE_CPU_ISA=avx512bf16|avx2|scalar  force a kernel table (the default is
 *                                        the best this CPU supports); asking
 *                                        for one the CPU lacks is an error.
 *   DMOE_PRINT_CONFIG=1                  print the ISA, threads, and per layer
 *                                        the path, chunk and workspace size.
 */
#include "cpu-kernels.h"
#include "cpu-pool.h"

/* Rows of W1 (and of W3) that gemm1 computes together before its epilogue. */
enum { GEMM1_ROWS = 64 };
/* Tokens per gemm1 epilogue pass (bounds the per-thread gate/up tiles). */
enum { GEMM1_TOKENS = 256 };
/* Work items aimed at per thread and per GEMM: small enough to balance. */
enum { ITEMS_PER_THREAD = 16 };
/* Workspace budget that sets the chunk, and the chunk's upper bound. Most of
 * it is part (chunk * (K + S), H) f32: a layer of qwen3-30b-a3b with
 * max_tokens >= 1024 takes ~80 MiB; lower max_tokens shrinks it. */
static const int64_t CPU_CHUNK_BUDGET = (int64_t)96 << 20;
enum { CPU_MAX_CHUNK = 1024 };
/* Cost of reading a weight row, in tokens' worth of compute on it: item
 * sizes weigh rows by (ROW_COST_TOKENS + tokens of the expert). */
enum { ROW_COST_TOKENS = 16 };

typedef struct cpu_backend_ctx {
    cpu_pool *pool;
    const cpu_kernels *kern;
    int print_config;
} cpu_backend_ctx;

typedef struct cpu_thread_ws {
    const void **xrows; /* (chunk * n_slots) token row pointers of one item */
    float *gate;        /* (GEMM1_TOKENS, GEMM1_ROWS) */
    float *up;          /* (GEMM1_TOKENS, GEMM1_ROWS) */
    double *dlogits;    /* (E) */
    void *route_scratch;
} cpu_thread_ws;

/* Work items of one GEMM: active expert a owns items [start[a], start[a+1]),
 * each covering rows_per_item[a] of its output rows. */
typedef struct cpu_items {
    int64_t *start;         /* (E + S + 1) */
    int64_t *rows_per_item; /* (E + S) */
} cpu_items;

typedef struct cpu_layer {
    const cpu_kernels *kern;
    cpu_pool *pool;
    int n_threads;
    int use_bf16;      /* gemm1/gemm2 through dot_bf16 */
    int64_t chunk;     /* tokens per chunk */
    int32_t n_slots;   /* K + S */
    int32_t n_virtual; /* E + S */
    int64_t fmax;      /* max(F, Fs) */
    int64_t ldx;       /* row stride of xf and xb, elements (padded, see padded_stride) */
    int64_t ld_act;    /* row stride of act, elements (padded) */
    float *xf;         /* (chunk, ldx) x in f32, when act_dtype != f32 */
    uint16_t *xb;      /* (chunk, ldx) x in bf16, when use_bf16 */
    float *logits;     /* (chunk, E) */
    float *gate_logit; /* (chunk) shared gate . x */
    int32_t *ids;      /* (chunk, n_slots) */
    float *wts;        /* (chunk, n_slots) */
    int32_t *counts;   /* (E + S) */
    int64_t *offsets;  /* (E + S + 1) */
    int32_t *pairs;    /* (chunk * n_slots) */
    int32_t *slot_of;  /* (chunk * n_slots) */
    float *slot_scale; /* (chunk * n_slots) weight of each slot, slot order */
    int32_t *active;   /* (E + S) experts with at least one slot */
    int32_t n_active;
    cpu_items items1, items2;
    void *act;         /* (chunk * n_slots, ld_act) bf16 if use_bf16 else f32 */
    float *part;       /* (chunk * n_slots, H) */
    cpu_thread_ws *tws; /* (n_threads) */
    size_t ws_bytes;
    /* The chunk being computed. */
    dmoe_layer *layer;
    const void *x;      /* (n_tok, H) act_dtype, the chunk's first row */
    void *y;            /* (n_tok, H) act_dtype */
    int64_t n_tok;
    int32_t *out_ids;   /* (n_tok, K) route(): the caller's arrays */
    float *out_wts;
} cpu_layer;

/* ---------------------------------------------------------------- context */

static dmoe_status cpu_context_init(dmoe_context *ctx) {
    static const cpu_kernels *const tables[] = {&cpu_kernels_avx512, &cpu_kernels_avx2,
                                                &cpu_kernels_scalar};
    const int n_tables = (int)(sizeof tables / sizeof tables[0]);
    const cpu_kernels *kern = NULL;
    const char *want = getenv("DMOE_CPU_ISA");
    if (want && *want) {
        for (int i = 0; i < n_tables; i++)
            if (strcmp(want, tables[i]->name) == 0) kern = tables[i];
        if (!kern)
            return dmoe__error(ctx, DMOE_ERR_INVALID_ARGUMENT,
                               "cpu: DMOE_CPU_ISA=%s is not one of avx512bf16, avx2, scalar", want);
        if (kern->supported && !kern->supported())
            return dmoe__error(ctx, DMOE_ERR_BACKEND_UNAVAILABLE,
                               "cpu: DMOE_CPU_ISA=%s but this CPU or build does not support it", want);
    } else {
        for (int i = 0; i < n_tables && !kern; i++)
            if (!tables[i]->supported || tables[i]->supported()) kern = tables[i];
    }
    cpu_backend_ctx *bc = (cpu_backend_ctx *)dmoe__calloc(ctx, 1, sizeof *bc);
    if (!bc) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu: context state");
    bc->kern = kern;
    const char *pc = getenv("DMOE_PRINT_CONFIG");
    bc->print_config = pc && *pc && strcmp(pc, "0") != 0;
    dmoe_status st = cpu_pool_create(ctx, ctx->n_threads, &bc->pool);
    if (st != DMOE_OK) {
        dmoe__free(ctx, bc);
        return st;
    }
    ctx->backend_data = bc;
    if (bc->print_config)
        fprintf(stderr, "dmoe cpu: isa %s%s, %d threads\n", kern->name,
                want && *want ? " (DMOE_CPU_ISA)" : "", (int)ctx->n_threads);
    return DMOE_OK;
}

static void cpu_context_fini(dmoe_context *ctx) {
    cpu_backend_ctx *bc = (cpu_backend_ctx *)ctx->backend_data;
    if (!bc) return;
    cpu_pool_destroy(ctx, bc->pool);
    dmoe__free(ctx, bc);
    ctx->backend_data = NULL;
}

/* ------------------------------------------------------------------ layer */

static void cpu_layer_fini(dmoe_layer *layer) {
    cpu_layer *cl = (cpu_layer *)layer->backend_data;
    if (!cl) return;
    dmoe_context *ctx = layer->ctx;
    if (cl->tws) {
        for (int i = 0; i < cl->n_threads; i++) {
            dmoe__free(ctx, cl->tws[i].xrows);
            dmoe__free(ctx, cl->tws[i].gate);
            dmoe__free(ctx, cl->tws[i].up);
            dmoe__free(ctx, cl->tws[i].dlogits);
            dmoe__free(ctx, cl->tws[i].route_scratch);
        }
        dmoe__free(ctx, cl->tws);
    }
    void *bufs[] = {cl->xf, cl->xb, cl->logits, cl->gate_logit, cl->ids, cl->wts, cl->counts,
                    cl->offsets, cl->pairs, cl->slot_of, cl->slot_scale, cl->active,
                    cl->items1.start, cl->items1.rows_per_item, cl->items2.start,
                    cl->items2.rows_per_item, cl->act, cl->part};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) dmoe__free(ctx, bufs[i]);
    dmoe__free(ctx, cl);
    layer->backend_data = NULL;
}

/* A row stride for n elements of elem bytes: whole 64-byte lines plus one
 * more, so rows that the kernels read side by side fall in different L1 sets
 * (a 4 KiB stride, e.g. H = 2048 in bf16, puts them all in one). */
static int64_t padded_stride(int64_t n, size_t elem) {
    const int64_t line = 64, bytes = (n * (int64_t)elem + line - 1) / line * line + line;
    return bytes / (int64_t)elem;
}

/* Allocates count * size bytes (overflow-checked), counting them in ws_bytes. */
static void *ws_alloc(dmoe_context *ctx, cpu_layer *cl, int64_t count, size_t size) {
    if (count < 1) count = 1;
    if ((uint64_t)count > SIZE_MAX / size) return NULL;
    cl->ws_bytes += (size_t)count * size;
    return dmoe__malloc(ctx, (size_t)count * size);
}

static dmoe_status cpu_layer_init(dmoe_layer *layer) {
    dmoe_context *ctx = layer->ctx;
    const dmoe_layer_desc *d = &layer->desc;
    const cpu_backend_ctx *bc = (const cpu_backend_ctx *)ctx->backend_data;
    cpu_layer *cl = (cpu_layer *)dmoe__calloc(ctx, 1, sizeof *cl);
    if (!cl) return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY, "cpu: layer state");
    layer->backend_data = cl;
    cl->layer = layer;
    cl->kern = bc->kern;
    cl->pool = bc->pool;
    cl->n_threads = cpu_pool_n_threads(bc->pool);
    cl->use_bf16 = bc->kern->dot_bf16 != NULL && d->weight_dtype == DMOE_DTYPE_BF16;
    cl->n_slots = d->top_k + d->n_shared_experts;
    cl->n_virtual = d->n_experts + d->n_shared_experts;
    cl->fmax = d->n_shared_experts > 0 && d->shared_ffn > d->ffn ? d->shared_ffn : d->ffn;

    const int64_t H = d->hidden, E = d->n_experts, V = cl->n_virtual, S = cl->n_slots;
    const size_t act_elem = cl->use_bf16 ? sizeof(uint16_t) : sizeof(float);
    cl->ldx = padded_stride(H, cl->use_bf16 ? sizeof(uint16_t) : sizeof(float));
    cl->ld_act = padded_stride(cl->fmax, act_elem);
    const int64_t per_token = S * (H * (int64_t)sizeof(float) + cl->ld_act * (int64_t)act_elem) +
                              cl->ldx * 6 + E * 4 + S * 24;
    int64_t chunk = CPU_CHUNK_BUDGET / per_token;
    if (chunk > CPU_MAX_CHUNK) chunk = CPU_MAX_CHUNK;
    if (chunk < 1) chunk = 1;
    if (chunk > d->max_tokens) chunk = d->max_tokens;
    cl->chunk = chunk;
    const int64_t n_pairs = chunk * S;

    if (d->act_dtype != DMOE_DTYPE_F32)
        cl->xf = (float *)ws_alloc(ctx, cl, chunk * cl->ldx, sizeof(float));
    if (cl->use_bf16) cl->xb = (uint16_t *)ws_alloc(ctx, cl, chunk * cl->ldx, sizeof(uint16_t));
    cl->logits = (float *)ws_alloc(ctx, cl, chunk * E, sizeof(float));
    cl->gate_logit = (float *)ws_alloc(ctx, cl, chunk, sizeof(float));
    cl->ids = (int32_t *)ws_alloc(ctx, cl, n_pairs, sizeof(int32_t));
    cl->wts = (float *)ws_alloc(ctx, cl, n_pairs, sizeof(float));
    cl->counts = (int32_t *)ws_alloc(ctx, cl, V, sizeof(int32_t));
    cl->offsets = (int64_t *)ws_alloc(ctx, cl, V + 1, sizeof(int64_t));
    cl->pairs = (int32_t *)ws_alloc(ctx, cl, n_pairs, sizeof(int32_t));
    cl->slot_of = (int32_t *)ws_alloc(ctx, cl, n_pairs, sizeof(int32_t));
    cl->slot_scale = (float *)ws_alloc(ctx, cl, n_pairs, sizeof(float));
    cl->active = (int32_t *)ws_alloc(ctx, cl, V, sizeof(int32_t));
    cl->items1.start = (int64_t *)ws_alloc(ctx, cl, V + 1, sizeof(int64_t));
    cl->items1.rows_per_item = (int64_t *)ws_alloc(ctx, cl, V, sizeof(int64_t));
    cl->items2.start = (int64_t *)ws_alloc(ctx, cl, V + 1, sizeof(int64_t));
    cl->items2.rows_per_item = (int64_t *)ws_alloc(ctx, cl, V, sizeof(int64_t));
    cl->act = ws_alloc(ctx, cl, n_pairs * cl->ld_act, act_elem);
    cl->part = (float *)ws_alloc(ctx, cl, n_pairs * H, sizeof(float));
    cl->tws = (cpu_thread_ws *)dmoe__calloc(ctx, (size_t)cl->n_threads, sizeof(cpu_thread_ws));
    int ok = cl->logits && cl->gate_logit && cl->ids && cl->wts && cl->counts && cl->offsets &&
             cl->pairs && cl->slot_of && cl->slot_scale && cl->active && cl->items1.start &&
             cl->items1.rows_per_item && cl->items2.start && cl->items2.rows_per_item &&
             cl->act && cl->part && cl->tws && (d->act_dtype == DMOE_DTYPE_F32 || cl->xf) &&
             (!cl->use_bf16 || cl->xb);
    for (int i = 0; ok && i < cl->n_threads; i++) {
        cpu_thread_ws *w = &cl->tws[i];
        w->xrows = (const void **)ws_alloc(ctx, cl, n_pairs, sizeof(void *));
        w->gate = (float *)ws_alloc(ctx, cl, GEMM1_TOKENS * GEMM1_ROWS, sizeof(float));
        w->up = (float *)ws_alloc(ctx, cl, GEMM1_TOKENS * GEMM1_ROWS, sizeof(float));
        w->dlogits = (double *)ws_alloc(ctx, cl, E, sizeof(double));
        w->route_scratch = ws_alloc(ctx, cl, 1, dmoe__route_scratch_bytes(d->n_experts));
        ok = w->xrows && w->gate && w->up && w->dlogits && w->route_scratch;
    }
    if (!ok) {
        size_t bytes = cl->ws_bytes;
        cpu_layer_fini(layer);
        return dmoe__error(ctx, DMOE_ERR_OUT_OF_MEMORY,
                           "cpu: cannot allocate the layer workspace (%zu bytes for %lld tokens per chunk)",
                           bytes, (long long)chunk);
    }
    if (bc->print_config)
        fprintf(stderr,
                "dmoe cpu: layer H=%lld F=%lld E=%d K=%d S=%d: %s path (isa %s), chunk %lld tokens, "
                "workspace %.1f MiB\n",
                (long long)H, (long long)d->ffn, (int)E, (int)d->top_k, (int)d->n_shared_experts,
                cl->use_bf16 ? "bf16 dot (vdpbf16ps)" : "fp32", cl->kern->name, (long long)chunk,
                (double)cl->ws_bytes / (1 << 20));
    return DMOE_OK;
}

/* --------------------------------------------------------- chunk helpers */

/* Row t of x as f32 (the caller's x when it is f32, else the xf copy). */
static const float *x_f32_row(const cpu_layer *cl, int64_t t) {
    return cl->xf ? cl->xf + t * cl->ldx : (const float *)cl->x + t * cl->layer->desc.hidden;
}

/* Row t of x as the dot kernels of gemm1 read it (bf16 or f32). */
static const void *x_gemm_row(const cpu_layer *cl, int64_t t) {
    return cl->use_bf16 ? (const void *)(cl->xb + t * cl->ldx) : (const void *)x_f32_row(cl, t);
}

/* The weights of virtual expert v (routed e < E, then shared) and its F. */
static void expert_weights(const cpu_layer *cl, int32_t v, const void **w13, const void **w2,
                           int64_t *F) {
    const dmoe_layer *layer = cl->layer;
    const dmoe_layer_desc *d = &layer->desc;
    const size_t ws = dmoe_dtype_size(d->weight_dtype);
    const int64_t H = d->hidden;
    int64_t e = v;
    const char *b13 = (const char *)layer->w.w13, *b2 = (const char *)layer->w.w2;
    *F = d->ffn;
    if (v >= d->n_experts) {
        e = v - d->n_experts;
        b13 = (const char *)layer->w.shared_w13;
        b2 = (const char *)layer->w.shared_w2;
        *F = d->shared_ffn;
    }
    *w13 = b13 + (size_t)(e * 2 * *F * H) * ws;
    *w2 = b2 + (size_t)(e * H * *F) * ws;
}

/* ------------------------------------------------------------------- jobs */

enum { PREP_TOKENS = 8, ROUTE_TOKENS = 32, SELECT_TOKENS = 16 };

static void job_prep(void *arg, int64_t item, int tid) {
    (void)tid;
    cpu_layer *cl = (cpu_layer *)arg;
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t H = d->hidden;
    const int64_t t1 = (item + 1) * PREP_TOKENS < cl->n_tok ? (item + 1) * PREP_TOKENS : cl->n_tok;
    for (int64_t t = item * PREP_TOKENS; t < t1; t++) {
        const char *xs = (const char *)cl->x + (size_t)(t * H) * dmoe_dtype_size(d->act_dtype);
        if (cl->xf) cl->kern->to_f32(xs, d->act_dtype, cl->xf + t * cl->ldx, H);
        if (cl->xb && d->act_dtype == DMOE_DTYPE_BF16)
            memcpy(cl->xb + t * cl->ldx, xs, (size_t)H * sizeof(uint16_t));
        else if (cl->xb)
            cl->kern->from_f32(x_f32_row(cl, t), cl->xb + t * cl->ldx, DMOE_DTYPE_BF16, H);
        if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID) {
            const float *xr = x_f32_row(cl, t);
            cl->kern->dot_f32(cl->layer->w.shared_gate, d->weight_dtype, H, 1, &xr, 1, H, NULL,
                              cl->gate_logit + t, 1);
        }
    }
}

/* Items: token blocks of ROUTE_TOKENS x expert blocks (route_eblk of them). */
typedef struct route_job {
    cpu_layer *cl;
    int64_t n_eblk, rows_per_eblk;
} route_job;

static void job_logits(void *arg, int64_t item, int tid) {
    route_job *rj = (route_job *)arg;
    cpu_layer *cl = rj->cl;
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t H = d->hidden, E = d->n_experts;
    const int64_t tb = item / rj->n_eblk, eb = item % rj->n_eblk;
    const int64_t t0 = tb * ROUTE_TOKENS;
    const int64_t nt = cl->n_tok - t0 < ROUTE_TOKENS ? cl->n_tok - t0 : ROUTE_TOKENS;
    const int64_t e0 = eb * rj->rows_per_eblk;
    const int64_t ne = E - e0 < rj->rows_per_eblk ? E - e0 : rj->rows_per_eblk;
    if (ne <= 0) return;
    const float **xr = (const float **)cl->tws[tid].xrows;
    for (int64_t j = 0; j < nt; j++) xr[j] = x_f32_row(cl, t0 + j);
    const char *w = (const char *)cl->layer->w.router + (size_t)(e0 * H) * dmoe_dtype_size(d->weight_dtype);
    cl->kern->dot_f32(w, d->weight_dtype, H, ne, xr, nt, H, NULL, cl->logits + t0 * E + e0, E);
}

/* The shared slots of token t: ids E + s, weight 1 or the sigmoid gate. */
static void fill_shared_slots(cpu_layer *cl, int64_t t) {
    const dmoe_layer_desc *d = &cl->layer->desc;
    float g = 1.0f;
    if (d->shared_gate == DMOE_SHARED_GATE_SIGMOID)
        g = (float)(1.0 / (1.0 + exp(-(double)cl->gate_logit[t])));
    for (int32_t s = 0; s < d->n_shared_experts; s++) {
        cl->ids[t * cl->n_slots + d->top_k + s] = d->n_experts + s;
        cl->wts[t * cl->n_slots + d->top_k + s] = g;
    }
}

static void job_select(void *arg, int64_t item, int tid) {
    cpu_layer *cl = (cpu_layer *)arg;
    const dmoe_layer *layer = cl->layer;
    const dmoe_layer_desc *d = &layer->desc;
    const int64_t E = d->n_experts, K = d->top_k;
    cpu_thread_ws *w = &cl->tws[tid];
    const int64_t t1 = (item + 1) * SELECT_TOKENS < cl->n_tok ? (item + 1) * SELECT_TOKENS : cl->n_tok;
    for (int64_t t = item * SELECT_TOKENS; t < t1; t++) {
        for (int64_t e = 0; e < E; e++) w->dlogits[e] = (double)cl->logits[t * E + e];
        int32_t *ids = cl->ids + t * cl->n_slots;
        float *wts = cl->wts + t * cl->n_slots;
        dmoe__route_token(&d->routing, d->n_experts, d->top_k, w->dlogits,
                          layer->w.correction_bias, w->route_scratch, ids, wts);
        if (cl->out_ids) {
            memcpy(cl->out_ids + t * K, ids, sizeof(int32_t) * (size_t)K);
            memcpy(cl->out_wts + t * K, wts, sizeof(float) * (size_t)K);
        }
        fill_shared_slots(cl, t);
    }
}

static int64_t gemm1_rows(const cpu_layer *cl, int32_t v) {
    const dmoe_layer_desc *d = &cl->layer->desc;
    return v < d->n_experts ? d->ffn : d->shared_ffn;
}
static int64_t gemm2_rows(const cpu_layer *cl, int32_t v) {
    (void)v;
    return cl->layer->desc.hidden;
}

/* The active expert of a GEMM item and the item's rows [*r0, *r1). */
static int32_t item_expert(const cpu_layer *cl, const cpu_items *it, int64_t item,
                           int64_t n_rows_of_v(const cpu_layer *, int32_t), int64_t *r0,
                           int64_t *r1) {
    int32_t lo = 0, hi = cl->n_active - 1; /* last a with start[a] <= item */
    while (lo < hi) {
        int32_t mid = (lo + hi + 1) / 2;
        if (it->start[mid] <= item) lo = mid;
        else hi = mid - 1;
    }
    const int32_t v = cl->active[lo];
    const int64_t rows = n_rows_of_v(cl, v), rpi = it->rows_per_item[lo];
    *r0 = (item - it->start[lo]) * rpi;
    *r1 = *r0 + rpi < rows ? *r0 + rpi : rows;
    return v;
}

/* What a GEMM item works on: its expert's weights, rows [r0, r1) and the
 * expert's n slots starting at off. */
typedef struct gemm_item {
    const void *w13, *w2;
    int64_t F, r0, r1, off, n;
    size_t ws, act_elem; /* bytes per weight and per activation element */
} gemm_item;

static void gemm_item_get(const cpu_layer *cl, const cpu_items *it, int64_t item,
                          int64_t n_rows_of_v(const cpu_layer *, int32_t), gemm_item *g) {
    const int32_t v = item_expert(cl, it, item, n_rows_of_v, &g->r0, &g->r1);
    expert_weights(cl, v, &g->w13, &g->w2, &g->F);
    g->off = cl->offsets[v];
    g->n = cl->counts[v];
    g->ws = dmoe_dtype_size(cl->layer->desc.weight_dtype);
    g->act_elem = cl->use_bf16 ? sizeof(uint16_t) : sizeof(float);
}

static void job_gemm1(void *arg, int64_t item, int tid) {
    cpu_layer *cl = (cpu_layer *)arg;
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t H = d->hidden;
    cpu_thread_ws *w = &cl->tws[tid];
    gemm_item g;
    gemm_item_get(cl, &cl->items1, item, gemm1_rows, &g);
    const int64_t f0 = g.r0, f1 = g.r1, F = g.F, off = g.off, n = g.n;
    const size_t ws = g.ws, act_elem = g.act_elem;
    const void *w13 = g.w13;
    for (int64_t j = 0; j < n; j++) w->xrows[j] = x_gemm_row(cl, cl->pairs[off + j] / cl->n_slots);
    for (int64_t fa = f0; fa < f1; fa += GEMM1_ROWS) {
        const int64_t nr = f1 - fa < GEMM1_ROWS ? f1 - fa : GEMM1_ROWS;
        const char *wg = (const char *)w13 + (size_t)(fa * H) * ws;
        const char *wu = (const char *)w13 + (size_t)((F + fa) * H) * ws;
        for (int64_t ja = 0; ja < n; ja += GEMM1_TOKENS) {
            const int64_t nt = n - ja < GEMM1_TOKENS ? n - ja : GEMM1_TOKENS;
            if (cl->use_bf16) {
                const uint16_t *const *xr = (const uint16_t *const *)(w->xrows + ja);
                cl->kern->dot_bf16((const uint16_t *)wg, H, nr, xr, nt, H, NULL, w->gate, GEMM1_ROWS);
                cl->kern->dot_bf16((const uint16_t *)wu, H, nr, xr, nt, H, NULL, w->up, GEMM1_ROWS);
            } else {
                const float *const *xr = (const float *const *)(w->xrows + ja);
                cl->kern->dot_f32(wg, d->weight_dtype, H, nr, xr, nt, H, NULL, w->gate, GEMM1_ROWS);
                cl->kern->dot_f32(wu, d->weight_dtype, H, nr, xr, nt, H, NULL, w->up, GEMM1_ROWS);
            }
            for (int64_t j = 0; j < nt; j++) {
                char *dst = (char *)cl->act + (size_t)((off + ja + j) * cl->ld_act + fa) * act_elem;
                cl->kern->swiglu(w->gate + j * GEMM1_ROWS, w->up + j * GEMM1_ROWS, nr, dst,
                                 cl->use_bf16 ? DMOE_DTYPE_BF16 : DMOE_DTYPE_F32);
            }
        }
    }
}

static void job_gemm2(void *arg, int64_t item, int tid) {
    cpu_layer *cl = (cpu_layer *)arg;
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t H = d->hidden;
    cpu_thread_ws *w = &cl->tws[tid];
    gemm_item g;
    gemm_item_get(cl, &cl->items2, item, gemm2_rows, &g);
    const int64_t h0 = g.r0, h1 = g.r1, F = g.F, off = g.off, n = g.n;
    const size_t ws = g.ws, act_elem = g.act_elem;
    const void *w2 = g.w2;
    for (int64_t j = 0; j < n; j++)
        w->xrows[j] = (const char *)cl->act + (size_t)((off + j) * cl->ld_act) * act_elem;
    const char *wr = (const char *)w2 + (size_t)(h0 * F) * ws;
    float *out = cl->part + off * H + h0;
    if (cl->use_bf16)
        cl->kern->dot_bf16((const uint16_t *)wr, F, h1 - h0, (const uint16_t *const *)w->xrows, n,
                           F, cl->slot_scale + off, out, H);
    else
        cl->kern->dot_f32(wr, d->weight_dtype, F, h1 - h0, (const float *const *)w->xrows, n, F,
                          cl->slot_scale + off, out, H);
}

/* Items: tokens x n_hblk blocks of hblk columns. */
typedef struct combine_job {
    cpu_layer *cl;
    int64_t n_hblk, hblk;
} combine_job;

enum { COMBINE_SEG = 512 };

static void job_combine(void *arg, int64_t item, int tid) {
    (void)tid;
    combine_job *cj = (combine_job *)arg;
    cpu_layer *cl = cj->cl;
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t H = d->hidden, S = cl->n_slots;
    const int64_t t = item / cj->n_hblk, hb = item % cj->n_hblk;
    const int64_t h_end = (hb + 1) * cj->hblk < H ? (hb + 1) * cj->hblk : H;
    const int32_t *slots = cl->slot_of + t * S;
    float acc[COMBINE_SEG];
    for (int64_t h0 = hb * cj->hblk; h0 < h_end; h0 += COMBINE_SEG) {
        const int64_t n = h_end - h0 < COMBINE_SEG ? h_end - h0 : COMBINE_SEG;
        const float *p0 = cl->part + (int64_t)slots[0] * H + h0;
        for (int64_t i = 0; i < n; i++) acc[i] = p0[i];
        for (int64_t k = 1; k < S; k++) {
            const float *pk = cl->part + (int64_t)slots[k] * H + h0;
            for (int64_t i = 0; i < n; i++) acc[i] += pk[i];
        }
        char *dst = (char *)cl->y + (size_t)(t * H + h0) * dmoe_dtype_size(d->act_dtype);
        cl->kern->from_f32(acc, dst, d->act_dtype, n);
    }
}

/* ------------------------------------------------------------ the steps */


static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static void run_prep(cpu_layer *cl) {
    if (cl->xf || cl->xb || cl->layer->desc.shared_gate == DMOE_SHARED_GATE_SIGMOID)
        cpu_pool_run(cl->pool, job_prep, cl, ceil_div(cl->n_tok, PREP_TOKENS));
}

static void run_route(cpu_layer *cl) {
    const int64_t E = cl->layer->desc.n_experts;
    const int64_t n_tblk = ceil_div(cl->n_tok, ROUTE_TOKENS);
    /* Enough expert blocks that every thread has work even for one token. */
    int64_t n_eblk = ceil_div(4 * cl->n_threads, n_tblk);
    if (n_eblk > ceil_div(E, 16)) n_eblk = ceil_div(E, 16);
    route_job rj = {cl, n_eblk, ceil_div(E, n_eblk)};
    cpu_pool_run(cl->pool, job_logits, &rj, n_tblk * n_eblk);
    cpu_pool_run(cl->pool, job_select, cl, ceil_div(cl->n_tok, SELECT_TOKENS));
}

/* Splits the rows of every active expert into items of similar cost:
 * rows x (ROW_COST_TOKENS + tokens) x n_k, ITEMS_PER_THREAD per thread. */
static void build_items(cpu_layer *cl, cpu_items *it, int64_t n_rows_of_v(const cpu_layer *, int32_t),
                        int gemm2) {
    const dmoe_layer_desc *d = &cl->layer->desc;
    double total = 0.0;
    for (int32_t a = 0; a < cl->n_active; a++) {
        const int32_t v = cl->active[a];
        const int64_t F = v < d->n_experts ? d->ffn : d->shared_ffn;
        const int64_t n_k = gemm2 ? F : d->hidden;
        total += (double)n_rows_of_v(cl, v) * (double)(ROW_COST_TOKENS + cl->counts[v]) * (double)n_k;
    }
    const double target = total / (double)(cl->n_threads * ITEMS_PER_THREAD);
    int64_t n_items = 0;
    for (int32_t a = 0; a < cl->n_active; a++) {
        const int32_t v = cl->active[a];
        const int64_t F = v < d->n_experts ? d->ffn : d->shared_ffn;
        const int64_t n_k = gemm2 ? F : d->hidden, rows = n_rows_of_v(cl, v);
        const double row_cost = (double)(ROW_COST_TOKENS + cl->counts[v]) * (double)n_k;
        int64_t rpi = (int64_t)(target / row_cost) + 1;
        rpi = ceil_div(rpi, GEMM1_ROWS) * GEMM1_ROWS; /* whole 4-row tiles and gemm1 blocks */
        if (rpi > rows) rpi = rows;
        it->start[a] = n_items;
        it->rows_per_item[a] = rpi;
        n_items += ceil_div(rows, rpi);
    }
    it->start[cl->n_active] = n_items;
}

/* ids/wts (n_tok, n_slots) are filled: plan, gemm1, gemm2, combine. */
static void run_experts(cpu_layer *cl) {
    const dmoe_layer_desc *d = &cl->layer->desc;
    const int64_t n_pairs = cl->n_tok * cl->n_slots;
    dmoe__plan_build(cl->ids, cl->n_tok, cl->n_slots, cl->n_virtual, cl->counts, cl->offsets,
                     cl->pairs, cl->slot_of);
    for (int64_t s = 0; s < n_pairs; s++) cl->slot_scale[s] = cl->wts[cl->pairs[s]];
    cl->n_active = 0;
    for (int32_t v = 0; v < cl->n_virtual; v++)
        if (cl->counts[v] > 0) cl->active[cl->n_active++] = v;
    build_items(cl, &cl->items1, gemm1_rows, 0);
    build_items(cl, &cl->items2, gemm2_rows, 1);
    cpu_pool_run(cl->pool, job_gemm1, cl, cl->items1.start[cl->n_active]);
    cpu_pool_run(cl->pool, job_gemm2, cl, cl->items2.start[cl->n_active]);

    const int64_t H = d->hidden;
    int64_t n_hblk = ceil_div(4 * cl->n_threads, cl->n_tok);
    if (n_hblk > ceil_div(H, 256)) n_hblk = ceil_div(H, 256);
    combine_job cj = {cl, n_hblk, ceil_div(H, n_hblk)};
    cpu_pool_run(cl->pool, job_combine, &cj, cl->n_tok * n_hblk);
}

typedef enum cpu_call { CALL_FORWARD, CALL_ROUTE, CALL_EXPERTS } cpu_call;

/* Runs one call chunk by chunk, the tokens split as evenly as possible.
 * route: ids_out/wts_out (n_tokens, K); experts: ids_in/wts_in (n_tokens, K). */
static dmoe_status cpu_run(dmoe_layer *layer, cpu_call call, const void *x, int64_t n_tokens,
                           void *y, const int32_t *ids_in, const float *wts_in, int32_t *ids_out,
                           float *wts_out) {
    cpu_layer *cl = (cpu_layer *)layer->backend_data;
    const dmoe_layer_desc *d = &layer->desc;
    const int64_t H = d->hidden, K = d->top_k;
    const size_t as = dmoe_dtype_size(d->act_dtype);
    const int64_t n_chunks = ceil_div(n_tokens, cl->chunk);
    for (int64_t c = 0; c < n_chunks; c++) {
        const int64_t t0 = n_tokens * c / n_chunks, t1 = n_tokens * (c + 1) / n_chunks;
        cl->x = (const char *)x + (size_t)(t0 * H) * as;
        cl->y = y ? (char *)y + (size_t)(t0 * H) * as : NULL;
        cl->n_tok = t1 - t0;
        cl->out_ids = call == CALL_ROUTE ? ids_out + t0 * K : NULL;
        cl->out_wts = call == CALL_ROUTE ? wts_out + t0 * K : NULL;
        run_prep(cl);
        if (call != CALL_EXPERTS) {
            run_route(cl);
        } else {
            for (int64_t t = 0; t < cl->n_tok; t++) {
                memcpy(cl->ids + t * cl->n_slots, ids_in + (t0 + t) * K, sizeof(int32_t) * (size_t)K);
                memcpy(cl->wts + t * cl->n_slots, wts_in + (t0 + t) * K, sizeof(float) * (size_t)K);
                fill_shared_slots(cl, t);
            }
        }
        if (call != CALL_ROUTE) run_experts(cl);
    }
    return DMOE_OK;
}

static dmoe_status cpu_route(dmoe_layer *layer, const void *x, int64_t n_tokens, int32_t *ids,
                             float *weights, void *stream) {
    (void)stream;
    return cpu_run(layer, CALL_ROUTE, x, n_tokens, NULL, NULL, NULL, ids, weights);
}

static dmoe_status cpu_experts(dmoe_layer *layer, const void *x, int64_t n_tokens,
                               const int32_t *ids, const float *weights, void *y, void *stream) {
    (void)stream;
    return cpu_run(layer, CALL_EXPERTS, x, n_tokens, y, ids, weights, NULL, NULL);
}

static dmoe_status cpu_forward(dmoe_layer *layer, const void *x, int64_t n_tokens, void *y,
                               void *stream) {
    (void)stream;
    return cpu_run(layer, CALL_FORWARD, x, n_tokens, y, NULL, NULL, NULL, NULL);
}

const dmoe_backend_iface dmoe__backend_cpu = {
    /* .name                  = */ "cpu",
    /* .weight_align          = */ 1,
    /* .max_top_k             = */ DMOE_MAX_EXPERTS,
    /* .available             = */ NULL,
    /* .context_init          = */ cpu_context_init,
    /* .context_fini          = */ cpu_context_fini,
    /* .layer_init            = */ cpu_layer_init,
    /* .layer_fini            = */ cpu_layer_fini,
    /* .layer_weights_changed = */ NULL,
    /* .route                 = */ cpu_route,
    /* .experts               = */ cpu_experts,
    /* .forward               = */ cpu_forward,
    /* .query_path            = */ NULL,
    /* .resident              = */ NULL,
    /* .layer_load_arena      = */ NULL,
    /* .weights_offloaded     = */ NULL,
    /* .memory_stats          = */ NULL,
    /* .memory_trim           = */ NULL,
    /* .cache_enable          = */ NULL,
    /* .cache_prefetch        = */ NULL,
    /* .cache_stats           = */ NULL,
    /* .cache_table           = */ NULL,
    /* .cache_slots           = */ NULL,
    /* .miss_policy           = */ NULL,
    /* .miss_info             = */ NULL,
};

/* check.h: the comparisons behind `dmoe check` (check-compare.c). */
#ifndef DMOE_CHECK_H
#define DMOE_CHECK_H

#include "cli.h"

/* Running comparison of a backend's values against the reference's. */
typedef struct cmp_stats {
    double max_abs;    /* over finite pairs */
    double err2, ref2; /* sums of squares: error and reference */
    int64_t n;         /* finite pairs compared */
    int64_t n_bad;     /* finiteness differs (unwritten NaN poison counts here) */
    int64_t first_bad_idx;
    int64_t worst_idx; /* -1 until a pair is compared */
    double worst_ref, worst_got;
} cmp_stats;

void cmp_init(cmp_stats *c);
void cmp_add(cmp_stats *c, double ref, double got, int64_t idx);
/* Compares rows [0, rows) of two (rows, cols) arrays of dtype dt, skipping the
 * rows whose row_mask entry is 0 (row_mask NULL: every row). */
void cmp_rows(cmp_stats *c, const void *ref, const void *got, dmoe_dtype dt, int64_t cols,
              const unsigned char *row_mask, int64_t rows);
double cmp_rel_l2(const cmp_stats *c);
int cmp_ok(const cmp_stats *c, double tol);
/* Prints the first bad value and the worst error, indented under a result line. */
void cmp_print_failure(const char *what, const cmp_stats *c, int64_t cols, double tol);

/* How close one token's routing decision was, recomputed in float64 from its
 * router logits (E) and the correction bias (E, or NULL):
 *   set_margin    min(gap between the K-th and (K+1)-th eligible choice,
 *                     gap between the last kept and first dropped group)
 *   order_margin  the smallest gap between neighbours inside the top K
 * A gap is INFINITY where there is nothing to compare. */
void token_margins(const cli_shape *s, const double *logits, const float *bias, double *set_margin,
                   double *order_margin);

#endif /* DMOE_CHECK_H */

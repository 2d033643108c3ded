/*
 * membw.c: measures the machine's streaming read bandwidth, the denominator
 * of the CPU backend's "floor" (bytes of the experts a forward touches / read
 * bandwidth).
 *
 * Each of n threads sums its own contiguous slice of one buffer (default
 * 1 GiB, far larger than the last-level cache) with AVX2 loads; the sum is
 * printed so the compiler cannot drop the loads. The buffer is touched once
 * before timing (page faults out of the way); every repetition reads it all,
 * and the best and the median repetitions are reported.
 *
 * Build and run (see bench/cpu-notes.md):
 *   gcc -O2 -mavx2 -pthread bench/membw.c -o /tmp/membw && /tmp/membw [threads] [MiB] [reps]
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const float *p; /* (n) this thread's slice */
    size_t n;
    int reps;
    pthread_barrier_t *start;
    double sum;
    double *t0, *t1; /* (reps) start and end of each repetition, seconds */
} slice;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sum_once(const slice *s) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= s->n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(s->p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(s->p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(s->p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(s->p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    double sum = 0;
    for (int j = 0; j < 8; j++) sum += t[j];
    for (; i < s->n; i++) sum += s->p[i];
    return sum;
}

/* Every thread times itself; a repetition lasts from the earliest start to
 * the latest end, so no thread's scheduling delay is hidden. */
static void *sum_slice(void *arg) {
    slice *s = (slice *)arg;
    for (int r = 0; r < s->reps; r++) {
        pthread_barrier_wait(s->start);
        s->t0[r] = now_s();
        s->sum += sum_once(s);
        s->t1[r] = now_s();
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    int reps = argc > 3 ? atoi(argv[3]) : 10;
    if (n_threads < 1 || n_threads > 256 || mib < 1 || reps < 1) {
        fprintf(stderr, "usage: membw [threads=2] [MiB=1024] [reps=10]\n");
        return 2;
    }
    size_t bytes = mib << 20, n = bytes / sizeof(float);
    float *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, bytes) != 0) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023) * 1e-3f;

    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n_threads);
    slice *sl = calloc((size_t)n_threads, sizeof *sl);
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    double *gbs = calloc((size_t)reps, sizeof *gbs);
    if (!sl || !th || !gbs) return 1;
    size_t per = (n / (size_t)n_threads) & ~(size_t)15;
    double *times = calloc((size_t)(2 * n_threads * reps), sizeof *times);
    if (!times) return 1;
    for (int t = 0; t < n_threads; t++) {
        sl[t].p = buf + (size_t)t * per;
        sl[t].n = t == n_threads - 1 ? n - (size_t)t * per : per;
        sl[t].reps = reps;
        sl[t].start = &start;
        sl[t].t0 = times + (size_t)(2 * t) * (size_t)reps;
        sl[t].t1 = sl[t].t0 + reps;
        if (t > 0) pthread_create(&th[t], NULL, sum_slice, &sl[t]);
    }
    sum_slice(&sl[0]); /* the main thread is worker 0 */
    double check = sl[0].sum;
    for (int t = 1; t < n_threads; t++) {
        pthread_join(th[t], NULL);
        check += sl[t].sum;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = sl[0].t0[r], t1 = sl[0].t1[r];
        for (int t = 1; t < n_threads; t++) {
            if (sl[t].t0[r] < t0) t0 = sl[t].t0[r];
            if (sl[t].t1[r] > t1) t1 = sl[t].t1[r];
        }
        gbs[r] = (double)bytes / (t1 - t0) * 1e-9;
    }
    free(times);
    qsort(gbs, (size_t)reps, sizeof *gbs, cmp_double);
    printf("membw: %d threads, %zu MiB, %d reps: best %.1f GB/s, median %.1f GB/s (check %g)\n",
           n_threads, mib, reps, gbs[reps - 1], gbs[reps / 2], check);
    free(gbs);
    free(th);
    free(sl);
    free(buf);
    return 0;
}

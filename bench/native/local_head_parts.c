/* Where one pair's time goes in the local heads' C kernel (the package's
 * hgan/evaluation/native/local_head.c, included whole): bench/local_head_parts.py compiles
 * and runs this.
 *
 *   local_head_parts ITEMS N H R REAL K1 K2 PAIRS KEPT WARM SEED
 *
 * One side of every pair is the same item, turned [H, W] once (KEPT 0: a text of R word
 * slots, REAL of them real, as a text query's candidates; 1: an image of N regions); the
 * other side's rows are streamed from a table of ITEMS items, a random one per pair (WARM
 * 0: from memory) or the same one every time (WARM 1: from cache). Times each part of
 * local_head_rows's loop over PAIRS pairs (γ's product, its transposed copy, the
 * selections, Eq. 8 on the picks) and prints one line: "product T transpose T select T
 * score T" in microseconds a pair, then the product's GFLOP/s.
 */
#include "local_head.c"

#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *table(size_t n, unsigned *seed) {
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; ++i)
        a[i] = rand_r(seed) / (float)RAND_MAX - 0.5f;
    return a;
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: %s ITEMS N H R REAL K1 K2 PAIRS KEPT WARM SEED\n", argv[0]);
        return 2;
    }
    const int items = atoi(argv[1]), N = atoi(argv[2]), H = atoi(argv[3]), R = atoi(argv[4]);
    const int real = atoi(argv[5]);
    int k1 = atoi(argv[6]), k2 = atoi(argv[7]);
    const int pairs = atoi(argv[8]), kept_image = atoi(argv[9]), warm = atoi(argv[10]);
    unsigned seed = (unsigned)atoi(argv[11]);
    /* The kept item's rows and the streamed side's table: φ and W·x rows of each. */
    const int kept_rows = kept_image ? N : R, streamed_rows = kept_image ? R : N;
    float *kept_phi = table((size_t)kept_rows * H, &seed);
    float *kept_lin = table((size_t)kept_rows * H, &seed);
    float *phi = table((size_t)items * streamed_rows * H, &seed);
    float *lin = table((size_t)items * streamed_rows * H, &seed);
    float *mask = malloc((size_t)(kept_image ? items : 1) * R * sizeof(float));
    for (int i = 0; i < (kept_image ? items : 1); ++i)
        for (int r = 0; r < R; ++r)
            mask[(size_t)i * R + r] = r < real;
    float *bias = table(H, &seed), *w_out = table(H, &seed);
    const int W = (kept_rows + LANES - 1) / LANES * LANES;
    float *turned = calloc((size_t)H * W, sizeof(float));
    float *prod = calloc((size_t)streamed_rows * W + LANES, sizeof(float));
    Work w;
    if (cut_k(R, N, &k1, &k2)) {
        fprintf(stderr, "k1 and k2 must be within 1..%d\n", MAX_K);
        return 2;
    }
    if (work_alloc(&w, R, N, k1, k2))
        return 1;
    transpose(kept_phi, kept_rows, H, H, turned, W);
    double t[4] = {0}, sink = 0;
    for (int p = 0; p < pairs; ++p) {
        const int64_t item = warm ? 0 : rand_r(&seed) % items;
        const int64_t base = item * streamed_rows;
        const float *m = kept_image ? mask + item * R : mask;
        double t0 = now();
        product(phi + base * H, streamed_rows, H, turned, W, 0.044f, prod);
        double t1 = now();
        transpose(prod, streamed_rows, kept_rows, W, w.turned, streamed_rows);
        double t2 = now();
        if (kept_image) /* prod = γ [R, W], w.turned = γᵀ [N, R] */
            select_both(prod, W, prod + (size_t)R * W + LANES, w.turned, R,
                        w.turned + (size_t)R * N + LANES, m, R, N, k1, k2, w.w_i2t, w.i_i2t,
                        w.w_t2i, w.i_t2i);
        else /* prod = γᵀ [N, W], w.turned = γ [R, N] */
            select_both(w.turned, N, w.turned + (size_t)R * N + LANES, prod, W,
                        prod + (size_t)N * W + LANES, m, R, N, k1, k2, w.w_i2t, w.i_i2t,
                        w.w_t2i, w.i_t2i);
        double t3 = now();
        sink += kept_image
                    ? score_selected(&w, m, base, 0, lin, kept_lin, bias, w_out, 0.1f, R, N,
                                     H, k1, k2)
                    : score_selected(&w, m, 0, base, kept_lin, lin, bias, w_out, 0.1f, R, N,
                                     H, k1, k2);
        double t4 = now();
        t[0] += t1 - t0, t[1] += t2 - t1, t[2] += t3 - t2, t[3] += t4 - t3;
    }
    printf("product %.3f transpose %.3f select %.3f score %.3f gflops %.1f sink %g\n",
           1e6 * t[0] / pairs, 1e6 * t[1] / pairs, 1e6 * t[2] / pairs, 1e6 * t[3] / pairs,
           2.0 * streamed_rows * W * H * pairs / t[0] / 1e9, sink);
    return 0;
}

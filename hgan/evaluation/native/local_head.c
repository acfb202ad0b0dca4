/* Inference-time HGAN local heads after γ (Eqs. 5-8 of the HGAN paper), for blocks of
 * (text, image) pairs: hgan.evaluation.local_head_kernel compiles this file with the
 * system's C compiler for the CPU it runs on and calls it through ctypes.
 *
 * top_k_softmax_pairs: Eqs. 5 and 7 alone, as hgan.layers.matching._top_k_softmax gives
 * them (ties pick the lower index; padded words score -1e9 and weigh nothing).
 *
 * gamma [pairs, R, N] (R word slots, N regions), mask [pairs, R] (1 for a real word):
 *   text-to-image: for each word r, the k2 regions of largest γ[r, :]
 *     → w_t2i, i_t2i [pairs, R, k2];
 *   image-to-text: for each region n, the k1 words of largest γ[:, n] over real words
 *     → w_i2t, i_i2t [pairs, N, k1].
 *
 * local_head_pairs: the whole head on those selections, what
 * LocalMatching.score_selected computes: each fused vector is a k-term sum of rows of
 * the prepared tables (W·t, W·v), then Eq. 8's σ(w_out·ReLU(own + fused + b) + b_out),
 * averaged over the real words (text-to-image) and over the regions (image-to-text):
 *   S = (s_i2t + s_t2i) / 2 → out [pairs].
 *
 * Pairs [first, last) are computed, so callers can split a block across threads.
 *
 * A selection runs over LANES columns of a [rows, cols] block at once, in vector
 * registers (GCC / Clang vector extensions): for each row in turn, every column inserts
 * the row's value into its sorted k-list, with no branches. The k-lists are ordered by
 * value, then by lower row, so a carried entry moves an equal one of a higher row down,
 * as k rounds of "take the largest, lowest index first" pick them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MASKED (-1e9f)
#define LANES 16
#define MAX_K 8

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vf pick_f(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vi pick_i(vi m, vi a, vi b) { return (a & m) | (b & ~m); }

/* Columns [c0, c0 + LANES) of ``row`` (``cols`` wide); columns past ``cols`` are -inf,
 * never selected before a real one. Memory up to ``limit`` may be read: one vector load
 * when it reaches that far (the next row's values, then replaced), else one value at a
 * time. */
static inline vf load_columns(const float *row, int c0, int cols, const float *limit) {
    vf v;
    if (limit - row >= c0 + LANES) {
        memcpy(&v, row + c0, sizeof v);
        if (c0 + LANES > cols) {
            vi lane;
            for (int l = 0; l < LANES; ++l)
                lane[l] = c0 + l;
            v = pick_f(lane < cols, v, (vf){0} - INFINITY);
        }
    } else {
        float t[LANES];
        for (int l = 0; l < LANES; ++l)
            t[l] = c0 + l < cols ? row[c0 + l] : -INFINITY;
        memcpy(&v, t, sizeof v);
    }
    return v;
}

/* e^x for x ≤ 0, lane by lane (Cephes' expf: x = n·ln 2 + f, |f| ≤ ln 2 / 2, a degree-6
 * polynomial in f, then 2^n by the exponent bits): within 2 ulp of the exact value, as
 * close as the exp of the XLA code it replaces; x below -87 gives 0, and so does NaN (the
 * lanes past a block's columns, -inf - -inf, which are never stored). */
static inline vf exp_nonpositive(vf x) {
    const vf zero = (vf){0};
    const vi tiny = ~(x >= -87.0f);
    x = pick_f(tiny, zero - 87.0f, x);
    /* n = floor(x / ln 2 + 1/2), the integer nearest x / ln 2 */
    const vf t = x * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(t, vi); /* toward zero */
    n = pick_i(__builtin_convertvector(n, vf) > t, n - 1, n);
    const vf nf = __builtin_convertvector(n, vf);
    const vf f = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vf y = zero + 1.9875691500e-4f;
    y = y * f + 1.3981999507e-3f;
    y = y * f + 8.3334519073e-3f;
    y = y * f + 4.1665795894e-2f;
    y = y * f + 1.6666665459e-1f;
    y = y * f + 5.0000001201e-1f;
    y = y * (f * f) + f + 1.0f;
    return pick_f(tiny, zero, y * (vf)((n + 127) << 23));
}

/* The k-lists of LANES columns, then Eq. 7's softmax over each column's real keys (a
 * column without any weighs 0), written to w / idx [cols, k]. */
#define TOP_K_COLUMNS(K)                                                                   \
    static void top_k_columns_##K(const float *a, int rows, int cols, int c0,            \
                                  const float *row_mask, const float *limit, float *w,   \
                                  int32_t *idx) {                                        \
        vf top[K];                                                                       \
        vi at[K];                                                                        \
        for (int j = 0; j < K; ++j) {                                                    \
            top[j] = (vf){0} - INFINITY;                                                 \
            at[j] = (vi){0};                                                             \
        }                                                                                \
        const vf masked = (vf){0} + MASKED;                                              \
        for (int r = 0; r < rows; ++r) {                                                 \
            const int real = row_mask == 0 || row_mask[r] > 0.5f;                        \
            vf x = real ? load_columns(a + (int64_t)r * cols, c0, cols, limit) : masked; \
            vi xi = (vi){0} + r;                                                         \
            for (int j = 0; j < K; ++j) {                                                \
                const vi moves = (x > top[j]) | ((x == top[j]) & (xi < at[j]));          \
                const vf h = top[j];                                                     \
                const vi ha = at[j];                                                     \
                top[j] = pick_f(moves, x, h);                                            \
                at[j] = pick_i(moves, xi, ha);                                           \
                x = pick_f(moves, h, x);                                                 \
                xi = pick_i(moves, ha, xi);                                              \
            }                                                                            \
        }                                                                                \
        vf e[K], sum = (vf){0};                                                          \
        for (int j = 0; j < K; ++j) {                                                    \
            const vi real = top[j] > MASKED / 2;                                         \
            e[j] = pick_f(real, exp_nonpositive(top[j] - top[0]), (vf){0});              \
            sum += e[j];                                                                 \
        }                                                                                \
        const vi some = sum > 0.0f;                                                      \
        const vf divisor = pick_f(some, sum, (vf){0} + 1.0f);                            \
        float v[K][LANES];                                                               \
        int32_t i[K][LANES];                                                             \
        for (int j = 0; j < K; ++j)                                                      \
            e[j] = pick_f(some, e[j] / divisor, (vf){0});                                \
        memcpy(v, e, sizeof v);                                                          \
        memcpy(i, at, sizeof i);                                                         \
        for (int l = 0; l < LANES && c0 + l < cols; ++l)                                 \
            for (int j = 0; j < K; ++j) {                                                \
                w[(int64_t)(c0 + l) * K + j] = v[j][l];                                  \
                idx[(int64_t)(c0 + l) * K + j] = i[j][l];                                \
            }                                                                            \
    }

TOP_K_COLUMNS(1)
TOP_K_COLUMNS(2)
TOP_K_COLUMNS(3)
TOP_K_COLUMNS(4)
TOP_K_COLUMNS(5)
TOP_K_COLUMNS(6)
TOP_K_COLUMNS(7)
TOP_K_COLUMNS(8)

/* Each column's top k over the rows of ``a`` [rows, cols] → w, idx [cols, k]; memory up
 * to ``limit`` may be read. */
static void columns_top_k(const float *a, int rows, int cols, const float *row_mask, int k,
                          const float *limit, float *w, int32_t *idx) {
    for (int c0 = 0; c0 < cols; c0 += LANES) {
        switch (k) {
        case 1: top_k_columns_1(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 2: top_k_columns_2(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 3: top_k_columns_3(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 4: top_k_columns_4(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 5: top_k_columns_5(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 6: top_k_columns_6(a, rows, cols, c0, row_mask, limit, w, idx); break;
        case 7: top_k_columns_7(a, rows, cols, c0, row_mask, limit, w, idx); break;
        default: top_k_columns_8(a, rows, cols, c0, row_mask, limit, w, idx); break;
        }
    }
}

/* One pair's selections: γ g [R, N] with its word mask m [R] → w_i2t, i_i2t [N, k1] and
 * w_t2i, i_t2i [R, k2]. ``turned`` holds R·N + LANES floats (γ turned [N, R], then a
 * vector's room of zeros, read and masked out); memory up to ``end`` may be read after g. */
static void select_pair(const float *g, const float *m, int R, int N, int k1, int k2,
                        const float *end, float *turned, float *w_i2t, int32_t *i_i2t,
                        float *w_t2i, int32_t *i_t2i) {
    /* image-to-text: the columns of [R, N] are the regions, its rows the words. */
    columns_top_k(g, R, N, m, k1, end, w_i2t, i_i2t);
    /* text-to-image: the columns of [N, R] are the words. */
    for (int r = 0; r < R; ++r)
        for (int n = 0; n < N; ++n)
            turned[n * R + r] = g[r * N + n];
    columns_top_k(turned, N, R, 0, k2, turned + (int64_t)R * N + LANES, w_t2i, i_t2i);
}

/* Returns 0; -1 for a k outside 1..MAX_K or above its keys; -2 if memory runs out. */
int top_k_softmax_pairs(const float *gamma, const float *mask, int64_t first, int64_t last,
                        int R, int N, int k1, int k2, float *w_t2i, int32_t *i_t2i,
                        float *w_i2t, int32_t *i_i2t) {
    if (k1 < 1 || k2 < 1 || k1 > MAX_K || k2 > MAX_K || k1 > R || k2 > N)
        return -1;
    /* One pair's γ turned [N, R], with a vector's room after it for the loads. */
    float *turned = malloc(((size_t)R * N + LANES) * sizeof(float));
    if (turned == 0)
        return -2;
    memset(turned + (size_t)R * N, 0, LANES * sizeof(float)); /* read, then masked out */
    const float *end = gamma + last * R * N;
    for (int64_t p = first; p < last; ++p)
        select_pair(gamma + p * R * N, mask + p * R, R, N, k1, k2, end, turned,
                    w_i2t + p * N * k1, i_i2t + p * N * k1, w_t2i + p * R * k2,
                    i_t2i + p * R * k2);
    free(turned);
    return 0;
}

/* Eq. 8 for one row: w_out · ReLU(own + b + Σ_j w_j rows[base + idx_j]) over H values, K
 * terms (K a constant, so the sum over j unrolls inside the vectorised loop over h). */
#define ROW_SCORE(K)                                                                       \
    static float row_score_##K(const float *own, const float *bias, const float *w_out,  \
                               const float *rows, int64_t base, const int32_t *idx,      \
                               const float *w, int H) {                                  \
        const float *r[K];                                                               \
        float c[K];                                                                      \
        for (int j = 0; j < K; ++j) {                                                    \
            r[j] = rows + (base + idx[j]) * H;                                           \
            c[j] = w[j];                                                                 \
        }                                                                                \
        float s = 0.0f;                                                                  \
        _Pragma("omp simd reduction(+:s)")                                               \
        for (int h = 0; h < H; ++h) {                                                    \
            float a = own[h] + bias[h];                                                  \
            for (int j = 0; j < K; ++j)                                                  \
                a += c[j] * r[j][h];                                                     \
            s += (a > 0.0f ? a : 0.0f) * w_out[h];                                       \
        }                                                                                \
        return s;                                                                        \
    }

ROW_SCORE(1)
ROW_SCORE(2)
ROW_SCORE(3)
ROW_SCORE(4)
ROW_SCORE(5)
ROW_SCORE(6)
ROW_SCORE(7)
ROW_SCORE(8)

static float row_score(int k, const float *own, const float *bias, const float *w_out,
                       const float *rows, int64_t base, const int32_t *idx, const float *w,
                       int H) {
    switch (k) {
    case 1: return row_score_1(own, bias, w_out, rows, base, idx, w, H);
    case 2: return row_score_2(own, bias, w_out, rows, base, idx, w, H);
    case 3: return row_score_3(own, bias, w_out, rows, base, idx, w, H);
    case 4: return row_score_4(own, bias, w_out, rows, base, idx, w, H);
    case 5: return row_score_5(own, bias, w_out, rows, base, idx, w, H);
    case 6: return row_score_6(own, bias, w_out, rows, base, idx, w, H);
    case 7: return row_score_7(own, bias, w_out, rows, base, idx, w, H);
    default: return row_score_8(own, bias, w_out, rows, base, idx, w, H);
    }
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* t_rows [-, H] and v_rows [-, H]: the texts' and the images' W·t, W·v rows; pair p's
 * word r is row t_base[p] + r, its region n row v_base[p] + n. bias [H] (Eq. 8's first
 * bias), w_out [H] and b_out its output layer. Returns as top_k_softmax_pairs; k1 and k2
 * above the keys are cut to them, as the reference cuts them. */
int local_head_pairs(const float *gamma, const float *mask, const int64_t *t_base,
                     const int64_t *v_base, const float *t_rows, const float *v_rows,
                     const float *bias, const float *w_out, float b_out, int64_t first,
                     int64_t last, int R, int N, int H, int k1, int k2, float *out) {
    if (k1 > R)
        k1 = R;
    if (k2 > N)
        k2 = N;
    if (k1 < 1 || k2 < 1 || k1 > MAX_K || k2 > MAX_K)
        return -1;
    /* One pair's selections, and its γ turned [N, R] with a vector's room after it. */
    const size_t turned_size = (size_t)R * N + LANES;
    const size_t sizes[3] = {(size_t)R * k2, (size_t)N * k1, turned_size};
    float *buffer = malloc((sizes[0] * 2 + sizes[1] * 2 + sizes[2]) * sizeof(float));
    if (buffer == 0)
        return -2;
    float *w_t2i = buffer, *w_i2t = w_t2i + sizes[0], *turned = w_i2t + sizes[1];
    int32_t *i_t2i = (int32_t *)(turned + sizes[2]), *i_i2t = i_t2i + sizes[0];
    memset(turned + (size_t)R * N, 0, LANES * sizeof(float)); /* read, then masked out */
    const float *end = gamma + last * R * N;
    for (int64_t p = first; p < last; ++p) {
        const float *g = gamma + p * R * N, *m = mask + p * R;
        select_pair(g, m, R, N, k1, k2, end, turned, w_i2t, i_i2t, w_t2i, i_t2i);
        /* Text-to-image: each real word with its k2 fused regions. */
        float words = 0.0f, s_t2i = 0.0f, s_i2t = 0.0f;
        for (int r = 0; r < R; ++r) {
            if (!(m[r] > 0.5f))
                continue;
            s_t2i += sigmoid(row_score(k2, t_rows + (t_base[p] + r) * H, bias, w_out, v_rows,
                                       v_base[p], i_t2i + r * k2, w_t2i + r * k2, H) + b_out);
            words += 1.0f;
        }
        /* Image-to-text: each region with its k1 fused words (none for a text without
         * words: their weights are 0). */
        for (int n = 0; n < N; ++n)
            s_i2t += sigmoid(row_score(k1, v_rows + (v_base[p] + n) * H, bias, w_out, t_rows,
                                       t_base[p], i_i2t + n * k1, w_i2t + n * k1, H) + b_out);
        out[p] = 0.5f * (s_i2t / N + s_t2i / (words > 1.0f ? words : 1.0f));
    }
    free(buffer);
    return 0;
}

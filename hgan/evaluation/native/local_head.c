/* Inference-time HGAN local heads (Eqs. 2 and 5-8 of the HGAN paper) for (text, image)
 * pairs: hgan.evaluation.local_head_kernel compiles this file with the system's C compiler
 * for the CPU it runs on and calls it through ctypes.
 *
 * local_head_rows: the whole head per pair, what LocalMatching.pair_gamma then
 * score_selected compute, straight from the prepared tables (φ_t(T), W·T, φ_v(V), W·V,
 * rows of H values):
 *   γ = φ_t(T)·φ_v(V)ᵀ / √H [R, N] (R word slots, N regions);
 *   text-to-image: for each real word r, the k2 regions of largest γ[r, :], softmax
 *     weights over them (Eqs. 5, 7);
 *   image-to-text: for each region n, the k1 real words of largest γ[:, n], the same;
 *   each fused vector a k-term sum of W·v (W·t) rows, then Eq. 8's
 *     σ(w_out·ReLU(own + fused + b) + b_out), averaged over the real words and over the
 *     regions: S = (s_i2t + s_t2i) / 2.
 *
 * top_k_softmax_pairs: Eqs. 5 and 7 alone on a given γ [pairs, R, N] with its word mask
 * [pairs, R], as hgan.layers.matching._top_k_softmax gives them (ties pick the lower
 * index; padded words score -1e9 and weigh nothing) → w_t2i, i_t2i [pairs, R, k2] and
 * w_i2t, i_i2t [pairs, N, k1].
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
    static void top_k_columns_##K(const float *a, int rows, int cols, int stride, int c0,\
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
            vf x = real ? load_columns(a + (int64_t)r * stride, c0, cols, limit) : masked;\
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

/* Each column's top k over the rows of ``a`` [rows, cols] (rows ``stride`` floats apart)
 * → w, idx [cols, k]; memory up to ``limit`` may be read. */
static void columns_top_k(const float *a, int rows, int cols, int stride,
                          const float *row_mask, int k, const float *limit, float *w,
                          int32_t *idx) {
    for (int c0 = 0; c0 < cols; c0 += LANES) {
        switch (k) {
#define CASE(K)                                                                            \
    case K: top_k_columns_##K(a, rows, cols, stride, c0, row_mask, limit, w, idx); break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7)
#undef CASE
        default: top_k_columns_8(a, rows, cols, stride, c0, row_mask, limit, w, idx); break;
        }
    }
}

/* A pair's selections from its γ in both layouts: g [R, N] and gt = γᵀ [N, R], rows
 * ``g_stride`` and ``gt_stride`` floats apart, memory up to g_end and gt_end readable
 * after them; word mask m [R] → w_i2t, i_i2t [N, k1] and w_t2i, i_t2i [R, k2]. */
static void select_both(const float *g, int g_stride, const float *g_end, const float *gt,
                        int gt_stride, const float *gt_end, const float *m, int R, int N,
                        int k1, int k2, float *w_i2t, int32_t *i_i2t, float *w_t2i,
                        int32_t *i_t2i) {
    /* image-to-text: the columns of [R, N] are the regions, its rows the words. */
    columns_top_k(g, R, N, g_stride, m, k1, g_end, w_i2t, i_i2t);
    /* text-to-image: the columns of [N, R] are the words. */
    columns_top_k(gt, N, R, gt_stride, 0, k2, gt_end, w_t2i, i_t2i);
}

/* a [rows, cols] (rows ``a_stride`` apart) → at [cols, rows] (rows ``at_stride`` apart). */
static void transpose(const float *a, int rows, int cols, int a_stride, float *at,
                      int at_stride) {
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c)
            at[(int64_t)c * at_stride + r] = a[(int64_t)r * a_stride + c];
}

/* One pair's selections from γ g [R, N]: ``turned`` holds R·N + LANES floats (γ turned
 * [N, R], then a vector's room of zeros, read and masked out); memory up to ``end`` may
 * be read after g. */
static void select_pair(const float *g, const float *m, int R, int N, int k1, int k2,
                        const float *end, float *turned, float *w_i2t, int32_t *i_i2t,
                        float *w_t2i, int32_t *i_t2i) {
    transpose(g, R, N, N, turned, R);
    select_both(g, N, end, turned, R, turned + (int64_t)R * N + LANES, m, R, N, k1, k2,
                w_i2t, i_i2t, w_t2i, i_t2i);
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

/* One pair's selections (select_both's outputs), with γ turned [N, R] and a vector's
 * room of zeros after it (read, then masked out). */
typedef struct {
    float *turned, *w_t2i, *w_i2t;
    int32_t *i_t2i, *i_i2t;
} Work;

static int work_alloc(Work *w, int R, int N, int k1, int k2) {
    const size_t turned = (size_t)R * N + LANES;
    w->turned = calloc(turned + (size_t)R * k2 * 2 + (size_t)N * k1 * 2, sizeof(float));
    if (w->turned == 0)
        return -2;
    w->w_t2i = w->turned + turned;
    w->w_i2t = w->w_t2i + (size_t)R * k2;
    w->i_t2i = (int32_t *)(w->w_i2t + (size_t)N * k1);
    w->i_i2t = w->i_t2i + (size_t)R * k2;
    return 0;
}

/* A pair's score from its selections (in ``w``), word mask m [R]: t_rows, v_rows [-, H]
 * the texts' and the images' W·t, W·v rows, its word r row t_base + r, its region n row
 * v_base + n; bias [H] (Eq. 8's first bias), w_out [H] and b_out its output layer. */
static float score_selected(const Work *w, const float *m, int64_t t_base, int64_t v_base,
                            const float *t_rows, const float *v_rows, const float *bias,
                            const float *w_out, float b_out, int R, int N, int H, int k1,
                            int k2) {
    /* Image-to-text first: each region with its k1 fused words (none for a text without
     * words: their weights are 0). It reads the image's W·v rows in order, which the
     * text-to-image picks then find in cache. */
    float words = 0.0f, s_t2i = 0.0f, s_i2t = 0.0f;
    for (int n = 0; n < N; ++n)
        s_i2t += sigmoid(row_score(k1, v_rows + (v_base + n) * H, bias, w_out, t_rows, t_base,
                                   w->i_i2t + n * k1, w->w_i2t + n * k1, H) + b_out);
    /* Text-to-image: each real word with its k2 fused regions. */
    for (int r = 0; r < R; ++r) {
        if (!(m[r] > 0.5f))
            continue;
        s_t2i += sigmoid(row_score(k2, t_rows + (t_base + r) * H, bias, w_out, v_rows, v_base,
                                   w->i_t2i + r * k2, w->w_t2i + r * k2, H) + b_out);
        words += 1.0f;
    }
    return 0.5f * (s_i2t / N + s_t2i / (words > 1.0f ? words : 1.0f));
}

/* k1 and k2 cut to the keys (as the reference cuts them); 0 if then within 1..MAX_K. */
static int cut_k(int R, int N, int *k1, int *k2) {
    if (*k1 > R)
        *k1 = R;
    if (*k2 > N)
        *k2 = N;
    return *k1 < 1 || *k2 < 1 || *k1 > MAX_K || *k2 > MAX_K ? -1 : 0;
}

/* Eq. 2's products as panels: out [MT, WV·LANES] (rows ``stride`` floats apart) =
 * scale · a [MT, H] · bt [H, WV·LANES] (bt's rows ``stride`` apart): for each h, WV
 * vectors of bt's row h, each value a[m, h] broadcast, one fused multiply-add per
 * accumulator (MT × WV of them in registers); no sum across lanes. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast") /* ISO C mode would keep x * y + a unfused */
#endif
#define PANEL(MT, WV)                                                                      \
    static void panel_##MT##_##WV(const float *a, int H, const float *bt, int stride,    \
                                  float scale, float *out) {                             \
        vf acc[MT][WV];                                                                  \
        for (int i = 0; i < MT; ++i)                                                     \
            for (int v = 0; v < WV; ++v)                                                 \
                acc[i][v] = (vf){0};                                                     \
        for (int h = 0; h < H; ++h) {                                                    \
            vf b[WV];                                                                    \
            for (int v = 0; v < WV; ++v)                                                 \
                memcpy(&b[v], bt + (int64_t)h * stride + v * LANES, sizeof(vf));         \
            for (int i = 0; i < MT; ++i) {                                               \
                const vf x = (vf){0} + a[(int64_t)i * H + h];                            \
                for (int v = 0; v < WV; ++v)                                             \
                    acc[i][v] += x * b[v];                                               \
            }                                                                            \
        }                                                                                \
        for (int i = 0; i < MT; ++i)                                                     \
            for (int v = 0; v < WV; ++v) {                                               \
                const vf y = acc[i][v] * scale;                                          \
                memcpy(out + (int64_t)i * stride + v * LANES, &y, sizeof y);             \
            }                                                                            \
    }

PANEL(1, 1) PANEL(2, 1) PANEL(3, 1) PANEL(4, 1) PANEL(5, 1) PANEL(6, 1)
PANEL(7, 1) PANEL(8, 1) PANEL(9, 1) PANEL(10, 1) PANEL(11, 1) PANEL(12, 1)
PANEL(1, 2) PANEL(2, 2) PANEL(3, 2) PANEL(4, 2) PANEL(5, 2) PANEL(6, 2)
PANEL(7, 2) PANEL(8, 2)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

typedef void (*Panel)(const float *, int, const float *, int, float, float *);
static const Panel NARROW[] = {0, panel_1_1, panel_2_1, panel_3_1, panel_4_1, panel_5_1,
                               panel_6_1, panel_7_1, panel_8_1, panel_9_1, panel_10_1,
                               panel_11_1, panel_12_1};
static const Panel WIDE[] = {0, panel_1_2, panel_2_2, panel_3_2, panel_4_2,
                             panel_5_2, panel_6_2, panel_7_2, panel_8_2};

/* out [M, W] = scale · a [M, H] · bt [H, W], W a multiple of LANES (rows W apart), as
 * panels two vectors wide (the last one vector wide if W / LANES is odd) of at most 8
 * (12) rows of ``a``, the rows split evenly across them (15 rows: 8 + 7). */
static void product(const float *a, int M, int H, const float *bt, int W, float scale,
                    float *out) {
    for (int c = 0; c < W; c += 2 * LANES) {
        const int wide = c + 2 * LANES <= W, most = wide ? 8 : 12;
        const int panels = (M + most - 1) / most;
        for (int i = 0, m = 0; i < panels; ++i) {
            const int rows = (M - m) / (panels - i);
            (wide ? WIDE : NARROW)[rows](a + (int64_t)m * H, H, bt + c, W, scale,
                                         out + (int64_t)m * W + c);
            m += rows;
        }
    }
}

/* The whole head, γ included, straight from the tables: pair p's γ [R, N] is
 * scale · t_phi[t_base[p] + r] · v_phi[v_base[p] + n] (t_phi, v_phi laid out as t_rows,
 * v_rows: [-, H]), its word mask t_mask + t_base[p] (one value per text row). Consecutive
 * pairs that share one side's rows (``repeated``: 0 the text, as a text query's
 * candidates or a grid's row; 1 the image, as an image query's) have that side turned
 * [H, W] once (W its rows rounded up to LANES, zeros after them); the other side's rows
 * are read in place, broadcast one value at a time (``product``). No pair's γ or rows
 * are copied out of the tables. Returns as top_k_softmax_pairs. */
int local_head_rows(const float *t_phi, const float *v_phi, const float *t_mask, float scale,
                    const int64_t *t_base, const int64_t *v_base, const float *t_rows,
                    const float *v_rows, const float *bias, const float *w_out, float b_out,
                    int64_t first, int64_t last, int R, int N, int H, int k1, int k2,
                    int repeated, float *out) {
    Work w;
    if (cut_k(R, N, &k1, &k2))
        return -1;
    const int kept = repeated ? N : R, streamed = repeated ? R : N;
    const int W = (kept + LANES - 1) / LANES * LANES;
    /* the repeated side turned; the product [streamed, W] with a vector's room after it */
    float *turned = calloc((size_t)H * W + (size_t)streamed * W + LANES, sizeof(float));
    if (turned == 0 || work_alloc(&w, R, N, k1, k2)) {
        free(turned);
        return -2;
    }
    float *prod = turned + (size_t)H * W, *prod_end = prod + (size_t)streamed * W + LANES;
    float *other = w.turned, *other_end = other + (size_t)R * N + LANES;
    int64_t current = -1;
    for (int64_t p = first; p < last; ++p) {
        const int64_t key = repeated ? v_base[p] : t_base[p];
        if (key != current) {
            transpose((repeated ? v_phi : t_phi) + key * H, kept, H, H, turned, W);
            current = key;
        }
        const float *m = t_mask + t_base[p];
        if (repeated) { /* prod = γ [R, W]; other = γᵀ [N, R] */
            product(t_phi + t_base[p] * H, R, H, turned, W, scale, prod);
            transpose(prod, R, N, W, other, R);
            select_both(prod, W, prod_end, other, R, other_end, m, R, N, k1, k2, w.w_i2t,
                        w.i_i2t, w.w_t2i, w.i_t2i);
        } else { /* prod = γᵀ [N, W]; other = γ [R, N] */
            product(v_phi + v_base[p] * H, N, H, turned, W, scale, prod);
            transpose(prod, N, R, W, other, N);
            select_both(other, N, other_end, prod, W, prod_end, m, R, N, k1, k2, w.w_i2t,
                        w.i_i2t, w.w_t2i, w.i_t2i);
        }
        out[p] = score_selected(&w, m, t_base[p], v_base[p], t_rows, v_rows, bias, w_out,
                                b_out, R, N, H, k1, k2);
    }
    free(turned);
    free(w.turned);
    return 0;
}

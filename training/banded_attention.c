/* Fused causal (optionally windowed) attention for tiny heads on a CPU, forward and backward.
 *
 * Compiled on first use by training/fused_attention.py (gcc -O3 -march=native -fopenmp) and
 * called through ctypes; C99 with GCC/Clang vector extensions, no Python or torch headers.
 * float32 only.
 *
 * Layout (row-major, contiguous), R = batch * heads independent rows of attention:
 *   q, k, v, o        [R, N, D]  queries, keys, values, output (D a multiple of 4)
 *   do, dq, dk, dv    [R, N, D]  their gradients (written, not accumulated)
 *   lse               [R, N]     log-sum-exp of each query's scaled scores (for the backward)
 * Query i attends to keys lo(i)..i, lo(i) = max(0, i - window) (window < 0: lo = 0): a window
 * of M costs O(N * M) and full causal attention skips the upper triangle.
 *
 * Register blocking per instruction set, chosen when compiled (kernel_isa() names it):
 *   AVX-512 (32 zmm): TILE 16 keys a vector, QB 4 queries, DC 4  -> 16 accumulators
 *   AVX2/FMA (16 ymm): TILE 8,  QB 4, DC 2                       ->  8 accumulators
 *   other (SSE, NEON, portable): TILE 4, QB 4, DC 2
 * so the weighted sums' QB * DC accumulators, QB probability vectors and one key vector stay
 * in registers. Each thread transposes its row's keys and values into a small key-major
 * scratch [D, N + TILE] (zero-padded, cache-resident), so the caller passes torch's own
 * [R, N, D] tensors and no padded copies are made per call.
 *
 * Queries are taken QB at a time and keys TILE at a time: every key and value vector loaded
 * serves QB queries, scores live in registers, the softmax uses a polynomial exp on whole
 * vectors, and out-of-band scores are masked to exactly 0. The probability-weighted sums
 * (o = P V, dQ = dS K) take one of two loop orders per query block, whichever needs fewer
 * vector operations (narrow_block): for a wide band, vectors over keys with one horizontal
 * sum per query and head dim at the end; for a narrow one (a short window, or the first
 * queries), one key at a time with vectors over the head dims, where those horizontal sums
 * would cost more than the sums themselves. The backward recomputes the
 * probabilities from lse (as FlashAttention does) and accumulates dK^T, dV^T tile by tile in
 * the scratch; rows are independent, so OpenMP splits them without atomics.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
/* Subnormal products (probabilities near exp(-87) times small values) take microcode
 * assists that cost ~1.5x: each thread flushes them to zero while in the kernel and
 * restores its own mode on the way out (the process's mode is never changed). */
#define FLUSH_DENORMALS unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040);
#define RESTORE_DENORMALS _mm_setcsr(saved_csr);
#else
#define FLUSH_DENORMALS
#define RESTORE_DENORMALS
#endif

#if defined(__AVX512F__)
#define ISA "avx512"
#define TILE 16
#define QB 4
#define DC 4
#elif defined(__AVX2__)
#define ISA "avx2"
#define TILE 8
#define QB 4
#define DC 2
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define ISA "neon"
#define TILE 4
#define QB 4
#define DC 4
#else
#define ISA "portable"
#define TILE 4
#define QB 4
#define DC 2
#endif

typedef float vf __attribute__((vector_size(TILE * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(TILE * sizeof(int32_t))));

const char *kernel_isa(void) { return ISA; }
int kernel_tile(void) { return TILE; }
int kernel_query_block(void) { return QB; }
int kernel_d_chunk(void) { return DC; }

static inline vf loadu(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return (vf){0} + x; }
static inline vf masked(vi mask, vf a) { return (vf)((vi)a & mask); }
static inline float hsum(vf v) {
    float s = 0.0f;
    for (int l = 0; l < TILE; l++) s += v[l];
    return s;
}
static inline float hmax(vf v) {
    float m = v[0];
    for (int l = 1; l < TILE; l++) m = v[l] > m ? v[l] : m;
    return m;
}

/* exp(x) for x <= ~0 (scores minus their max or lse), relative error ~2e-7 (Cephes' expf);
 * inputs below -87 give 0. */
static inline vf vexp(vf x) {
    vi under = x < splat(-87.0f);
    x = (vf)(((vi)x & ~under) | ((vi)splat(-87.0f) & under));
    vi n = __builtin_convertvector(x * 1.44269504088896341f + 128.5f, vi) - 128;
    vf nf = __builtin_convertvector(n, vf);
    vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vf z = r * r;
    vf y = splat(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    vf scale = (vf)((n + 127) << 23);
    return masked(~under, y * scale);
}

static inline int64_t band_start(int64_t i, int64_t window) {
    int64_t lo = window < 0 ? 0 : i - window;
    return lo < 0 ? 0 : lo;
}

/* Which keys jb..jb+TILE-1 query i sees: lo(i) <= j <= i. */
static inline vi in_band(int64_t jb, int64_t i, int64_t window) {
    vi j;
    for (int l = 0; l < TILE; l++) j[l] = (int32_t)(jb + l);
    return (j >= (int32_t)band_start(i, window)) & (j <= (int32_t)i);
}

/* xt[d, j] = x[j, d] for j < N, 0 for N <= j < NP: one row's keys or values, key-major. */
static void transpose_in(const float *x, float *xt, int64_t N, int64_t NP, int64_t D) {
    for (int64_t d = 0; d < D; d++) {
        float *dst = xt + d * NP;
        for (int64_t j = 0; j < N; j++) dst[j] = x[j * D + d];
        memset(dst + N, 0, sizeof(float) * (size_t)(NP - N));
    }
}

/* x[j, d] = xt[d, j] for j < N. */
static void transpose_out(const float *xt, float *x, int64_t N, int64_t NP, int64_t D) {
    for (int64_t j = 0; j < N; j++)
        for (int64_t d = 0; d < D; d++) x[j * D + d] = xt[d * NP + j];
}

/* acc[q] = sum_d a[q, d] * bt[d, jb:jb+TILE] for the block's queries (a pre-scaled). */
static inline void tile_dots(const float *a, const float *bt, int64_t NP, int64_t D, int64_t jb,
                             int nq, vf acc[QB]) {
    for (int q = 0; q < QB; q++) acc[q] = splat(0.0f);
    for (int64_t d = 0; d < D; d++) {
        const vf b = loadu(bt + d * NP + jb);
        for (int q = 0; q < QB; q++)
            if (q < nq) acc[q] += a[q * D + d] * b;
    }
}

/* out[q, d] = factor[q] * sum_j w[q, j] * bt[d, lo + j] over the block's tiles. */
static void weighted_sums(const float *w, int64_t wstride, const float *bt, int64_t NP, int64_t D,
                          int64_t lo, int64_t ntiles, int nq, float *out, float factor[QB]) {
    for (int64_t dc = 0; dc < D; dc += DC) {
        vf acc[QB][DC];
        for (int q = 0; q < QB; q++)
            for (int e = 0; e < DC; e++) acc[q][e] = splat(0.0f);
        for (int64_t t = 0; t < ntiles; t++) {
            vf p[QB];
            for (int q = 0; q < QB; q++) p[q] = loadu(w + q * wstride + t * TILE);
            for (int e = 0; e < DC; e++) {
                const vf b = loadu(bt + (dc + e) * NP + lo + t * TILE);
                for (int q = 0; q < QB; q++) acc[q][e] += p[q] * b;
            }
        }
        for (int q = 0; q < nq; q++)
            for (int e = 0; e < DC; e++) out[q * D + dc + e] = hsum(acc[q][e]) * factor[q];
    }
}

/* out[q, :] = factor[q] * sum_{j = lo..hi} w[q, j - lo] * b[j, :] for the block's queries, b
 * row-major [N, D]: one key at a time, 4 head dims a vector (D is a multiple of 4), the
 * block's QB accumulators in registers. Weights outside the band are exactly 0, so summing
 * them in is exact. */
typedef float v4 __attribute__((vector_size(4 * sizeof(float))));

static void weighted_sums_by_key(const float *w, int64_t wstride, const float *b, int64_t D,
                                 int64_t lo, int64_t hi, int nq, float *out,
                                 const float factor[QB]) {
    for (int64_t dc = 0; dc < D; dc += 4) {
        v4 acc[QB];
        for (int q = 0; q < QB; q++) acc[q] = (v4){0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t j = lo; j <= hi; j++) {
            v4 bj;
            memcpy(&bj, b + j * D + dc, sizeof bj);
            for (int q = 0; q < QB; q++) acc[q] += w[q * wstride + (j - lo)] * bj;
        }
        for (int q = 0; q < nq; q++) {
            v4 r = acc[q] * factor[q];
            memcpy(out + q * D + dc, &r, sizeof r);
        }
    }
}

/* Vector operations per query of the two loop orders of the weighted sums: key by key
 * (keys x D / 4) against tile by tile (ntiles x D, plus a horizontal sum of 2 log2(TILE)
 * operations per head dim). */
static inline int narrow_block(int64_t keys, int64_t ntiles, int64_t D) {
    int log2_tile = 0;
    while ((1 << log2_tile) < TILE) log2_tile++;
    return keys * (D / 4) <= ntiles * D + 2 * log2_tile * D;
}

/* Does any query block of a row of N take the tile-by-tile order (and need the key-major
 * values)? */
static int any_wide_block(int64_t N, int64_t D, int64_t window) {
    for (int64_t i0 = 0; i0 < N; i0 += QB) {
        const int64_t nq = N - i0 < QB ? N - i0 : QB;
        const int64_t lo = band_start(i0, window), hi = i0 + nq - 1;
        if (!narrow_block(hi - lo + 1, (hi - lo + TILE) / TILE, D)) return 1;
    }
    return 0;
}

static inline int64_t padded(int64_t N) { return (N + TILE - 1) / TILE * TILE + TILE; }

void attention_forward(const float *q, const float *k, const float *v, float *o, float *lse,
                       int64_t R, int64_t N, int64_t D, int64_t window, float scale,
                       int threads) {
    const int64_t NP = padded(N);
    const int wide = any_wide_block(N, D, window);
#pragma omp parallel num_threads(threads)
    {
        FLUSH_DENORMALS
        const int64_t stride = NP + TILE;
        float *s = malloc(sizeof(float) * (size_t)(QB * stride));
        float *kt = malloc(sizeof(float) * (size_t)(2 * D * NP)), *vt = kt + D * NP;
        float *qsc = malloc(sizeof(float) * (size_t)(QB * D));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            const float *qr = q + r * N * D;
            float *orow = o + r * N * D, *lr = lse + r * N;
            transpose_in(k + r * N * D, kt, N, NP, D);
            if (wide) transpose_in(v + r * N * D, vt, N, NP, D);
            for (int64_t i0 = 0; i0 < N; i0 += QB) {
                const int nq = N - i0 < QB ? (int)(N - i0) : QB;
                const int64_t lo = band_start(i0, window), hi = i0 + nq - 1;
                const int64_t ntiles = (hi - lo + TILE) / TILE;
                for (int64_t x = 0; x < nq * D; x++) qsc[x] = qr[i0 * D + x] * scale;
                vf vmax[QB];
                for (int qq = 0; qq < QB; qq++) vmax[qq] = splat(-1e30f);
                for (int64_t t = 0; t < ntiles; t++) {
                    const int64_t jb = lo + t * TILE;
                    vf acc[QB];
                    tile_dots(qsc, kt, NP, D, jb, nq, acc);
                    for (int qq = 0; qq < nq; qq++) {
                        vi ok = in_band(jb, i0 + qq, window);
                        vf sc = (vf)(((vi)acc[qq] & ok) | ((vi)splat(-1e30f) & ~ok));
                        vmax[qq] = (vf)(((vi)vmax[qq] & ~(sc > vmax[qq])) |
                                        ((vi)sc & (sc > vmax[qq])));
                        storeu(s + qq * stride + t * TILE, sc);
                    }
                }
                float inv[QB];
                for (int qq = 0; qq < QB; qq++) {
                    if (qq >= nq) {
                        memset(s + qq * stride, 0, sizeof(float) * (size_t)(ntiles * TILE));
                        inv[qq] = 0.0f;
                        continue;
                    }
                    const float m = hmax(vmax[qq]);
                    vf tot = splat(0.0f);
                    for (int64_t t = 0; t < ntiles; t++) {
                        vf p = vexp(loadu(s + qq * stride + t * TILE) - m);
                        tot += p;
                        storeu(s + qq * stride + t * TILE, p);
                    }
                    const float total = hsum(tot);
                    inv[qq] = 1.0f / total;
                    lr[i0 + qq] = m + logf(total);
                }
                if (narrow_block(hi - lo + 1, ntiles, D))
                    weighted_sums_by_key(s, stride, v + r * N * D, D, lo, hi, nq, orow + i0 * D,
                                         inv);
                else
                    weighted_sums(s, stride, vt, NP, D, lo, ntiles, nq, orow + i0 * D, inv);
            }
        }
        free(s);
        free(kt);
        free(qsc);
        RESTORE_DENORMALS
    }
}

void attention_backward(const float *q, const float *k, const float *v, const float *o,
                        const float *lse, const float *dout, float *dq, float *dk, float *dv,
                        int64_t R, int64_t N, int64_t D, int64_t window, float scale,
                        int threads) {
    const int64_t NP = padded(N);
#pragma omp parallel num_threads(threads)
    {
        FLUSH_DENORMALS
        const int64_t stride = NP + TILE;
        float *ds = malloc(sizeof(float) * (size_t)(QB * stride));
        float *kt = malloc(sizeof(float) * (size_t)(4 * D * NP));
        float *vt = kt + D * NP, *dkt = vt + D * NP, *dvt = dkt + D * NP;
        float *qsc = malloc(sizeof(float) * (size_t)(QB * D));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            const float *qr = q + r * N * D;
            const float *orow = o + r * N * D, *lr = lse + r * N, *dor = dout + r * N * D;
            float *dqr = dq + r * N * D;
            transpose_in(k + r * N * D, kt, N, NP, D);
            transpose_in(v + r * N * D, vt, N, NP, D);
            memset(dkt, 0, sizeof(float) * (size_t)(2 * D * NP));
            for (int64_t i0 = 0; i0 < N; i0 += QB) {
                const int nq = N - i0 < QB ? (int)(N - i0) : QB;
                const int64_t lo = band_start(i0, window), hi = i0 + nq - 1;
                const int64_t ntiles = (hi - lo + TILE) / TILE;
                const float *doi = dor + i0 * D;
                float di[QB], li[QB], ones[QB];
                for (int qq = 0; qq < QB; qq++) {
                    di[qq] = li[qq] = 0.0f;
                    ones[qq] = 1.0f;
                }
                for (int qq = 0; qq < nq; qq++) {
                    for (int64_t d = 0; d < D; d++) di[qq] += doi[qq * D + d] * orow[(i0 + qq) * D + d];
                    li[qq] = lr[i0 + qq];
                }
                for (int64_t x = 0; x < nq * D; x++) qsc[x] = qr[i0 * D + x] * scale;
                for (int64_t t = 0; t < ntiles; t++) {
                    const int64_t jb = lo + t * TILE;
                    vf sc[QB], dp[QB], p[QB], g[QB];
                    tile_dots(qsc, kt, NP, D, jb, nq, sc);
                    tile_dots(doi, vt, NP, D, jb, nq, dp);
                    for (int qq = 0; qq < QB; qq++) {
                        if (qq < nq) {
                            vi ok = in_band(jb, i0 + qq, window);
                            p[qq] = masked(ok, vexp(sc[qq] - li[qq]));
                        } else {
                            p[qq] = splat(0.0f);
                        }
                        g[qq] = p[qq] * (dp[qq] - di[qq]) * scale; /* dL/dscore, scaled */
                        storeu(ds + qq * stride + t * TILE, g[qq]);
                    }
                    for (int64_t d = 0; d < D; d++) {
                        float *dkp = dkt + d * NP + jb, *dvp = dvt + d * NP + jb;
                        vf ak = loadu(dkp), av = loadu(dvp);
                        for (int qq = 0; qq < nq; qq++) {
                            ak += g[qq] * qr[(i0 + qq) * D + d];
                            av += p[qq] * doi[qq * D + d];
                        }
                        storeu(dkp, ak);
                        storeu(dvp, av);
                    }
                }
                if (narrow_block(hi - lo + 1, ntiles, D))
                    weighted_sums_by_key(ds, stride, k + r * N * D, D, lo, hi, nq, dqr + i0 * D,
                                         ones);
                else
                    weighted_sums(ds, stride, kt, NP, D, lo, ntiles, nq, dqr + i0 * D, ones);
            }
            transpose_out(dkt, dk + r * N * D, N, NP, D);
            transpose_out(dvt, dv + r * N * D, N, NP, D);
        }
        free(ds);
        free(kt);
        free(qsc);
        RESTORE_DENORMALS
    }
}

/*
 * l1quant.kernels._fastq8 (third source file): IQ4_NL, IQ4_XS, IQ3_XXS and IQ3_S, written to give the same bytes
 * as ggml's quantize_iq4_nl / quantize_iq4_xs / quantize_iq3_xxs / quantize_iq3_s (what ggml_quantize_chunk runs,
 * with or without importance weights). The algorithms are described in kernels/iquants_nl.py and
 * kernels/iquants3.py (the numpy reference paths); this file follows them value by value.
 *
 * Exactness: as _kquants.c (built with -ffp-contract=off, no -ffast-math): every float expression is one IEEE
 * binary32 operation per step in the reference's association, sums are sequential, and rounding to an integer is
 * ggml's 1.5*2**23 bit trick (round_nearest below), so Inf/NaN/out-of-range arguments give the values ggml gets.
 *
 * Tables are data, not code: the 16 IQ4 levels and the IQ3 grid, reverse map and neighbour lists are built once
 * per process in Python (kernels/iq3_grids.py, from gguf-py's grids) and passed in by address.
 *
 * Code paths (L1QUANT_IQUANT_ISA, read at each call: portable, sse2, avx2, avx512; default the fastest this CPU
 * runs): the portable one follows the reference loop by loop; on x86-64 with GCC/Clang the lane paths compute the
 * IQ4 group search's 16 independent trial evaluations as vector lanes and score the IQ3 neighbour candidates as
 * lanes (AVX2 / AVX-512; the sse2 path scores them one at a time from the same per-search terms), each lane doing
 * exactly the scalar operations in the same order; the choices among lanes stay sequential.
 * All give the same bytes (tests/test_iquants34.py runs each against ggml).
 *
 * Non-finite policy (l1quant's): a block (32 values for IQ4_NL, 256 for the others) holding NaN/Inf is written as
 * zero bytes with its f16 d set to 0x7E00. Thread safety: no global state; the GIL is released while working.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_halfconv.h"
#include "_iqrun.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

enum { IT_IQ3_XXS = 18, IT_IQ4_NL = 20, IT_IQ3_S = 21, IT_IQ4_XS = 23 };
enum { IS_F32 = 0, IS_F16 = 1, IS_BF16 = 2 };

static inline int round_nearest(float f) {
    const uint32_t u = f32_to_bits(f + 12582912.0f);
    return (int)(u & 0x007FFFFFu) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline void store_f16(uint8_t *p, float f) {
    const uint16_t h = f32_to_f16_bits(f32_to_bits(f));
    p[0] = (uint8_t)(h & 0xFFu);
    p[1] = (uint8_t)(h >> 8);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* IQ4_NL / IQ4_XS */

/* Index of the level nearest to a (levels ascending); between two levels the lower wins only when strictly nearer;
 * NaN gives 15 (every comparison false), as ggml's bisection does. */
static inline int nearest_level(const float *kv, float a) {
    if (a <= kv[0]) return 0;
    if (a >= kv[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (a < kv[mid]) hi = mid; else lo = mid;
    }
    return a - kv[hi - 1] < kv[hi] - a ? hi - 1 : hi;
}

/* The 16 evaluations of one group's search (lane 0: the first guess 1/d; lanes 1..15: itry = -7..7) are
 * independent of each other; only the choice among them is sequential. So they are computed as 16 lanes, each lane
 * summing over the 32 values in order exactly as the scalar loop does, then chosen in order. */
typedef void (*iq4_sums_fn)(const float *kv, const float *x, const float *w, const float *ids, float *sqx,
                            float *sq2);

static void iq4_sums_portable(const float *kv, const float *x, const float *w, const float *ids, float *sqx,
                              float *sq2) {
    for (int t = 0; t < 16; t++) {
        float sumqx = 0.0f, sumq2 = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float q = kv[nearest_level(kv, ids[t] * x[j])];
            sumqx += w[j] * q * x[j];
            sumq2 += w[j] * q * q;
        }
        sqx[t] = sumqx;
        sq2[t] = sumq2;
    }
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(L1Q_NO_LANES)
#define IQ_HAVE_LANES 1
#include <immintrin.h> /* the IQ3 picks' variable permutes (vpermps), in functions built for AVX2 / AVX-512 */
typedef float iq_v4f __attribute__((vector_size(16)));
typedef int32_t iq_v4i __attribute__((vector_size(16)));
typedef float iq_v8f __attribute__((vector_size(32)));
typedef int32_t iq_v8i __attribute__((vector_size(32)));
typedef float iq_v16f __attribute__((vector_size(64)));
typedef int32_t iq_v16i __attribute__((vector_size(64)));

/* m ? a : b per lane (m all-ones or 0: what the vector comparisons give) */
#define IQ_SEL(VI, m, a, b) ((__typeof__(a))(((m) & (VI)(a)) | (~(m) & (VI)(b))))

/* nearest_level per lane, as selects: lo/hi = the levels around a; ties go up; a <= kv[0] -> kv[0];
 * a >= kv[15] or NaN -> kv[15]. W lanes per vector (the register width of the path), 16/W vectors. */
#define IQ4_SUMS_BODY(VF, VI, W)                                                                                 \
    {                                                                                                            \
        VF lv[16];                                                                                               \
        for (int k = 0; k < 16; k++) lv[k] = (VF){0} + kv[k];                                                    \
        for (int c = 0; c < 16 / (W); c++) {                                                                     \
            VF id, sumqx = {0}, sumq2 = {0};                                                                     \
            memcpy(&id, ids + c * (W), sizeof id);                                                               \
            for (int j = 0; j < 32; j++) {                                                                       \
                const VF a = id * x[j];                                                                          \
                VF lo = lv[0], hi = lv[1];                                                                       \
                for (int k = 1; k < 15; k++) {                                                                   \
                    const VI m = a >= lv[k];                                                                     \
                    lo = IQ_SEL(VI, m, lv[k], lo);                                                               \
                    hi = IQ_SEL(VI, m, lv[k + 1], hi);                                                           \
                }                                                                                                \
                VF q = IQ_SEL(VI, (a - lo) < (hi - a), lo, hi);                                                  \
                q = IQ_SEL(VI, a <= lv[0], lv[0], q);                                                            \
                q = IQ_SEL(VI, (a >= lv[15]) | (a != a), lv[15], q);                                             \
                const VF wq = w[j] * q;                                                                          \
                sumqx += wq * x[j];                                                                              \
                sumq2 += wq * q;                                                                                 \
            }                                                                                                    \
            memcpy(sqx + c * (W), &sumqx, sizeof sumqx);                                                         \
            memcpy(sq2 + c * (W), &sumq2, sizeof sumq2);                                                         \
        }                                                                                                        \
    }

static void iq4_sums_sse2(const float *kv, const float *x, const float *w, const float *ids, float *sqx, float *sq2)
    IQ4_SUMS_BODY(iq_v4f, iq_v4i, 4)
__attribute__((target("avx2"))) static void iq4_sums_avx2(const float *kv, const float *x, const float *w,
                                                          const float *ids, float *sqx, float *sq2)
    IQ4_SUMS_BODY(iq_v8f, iq_v8i, 8)
__attribute__((target("avx512f"))) static void iq4_sums_avx512(const float *kv, const float *x, const float *w,
                                                               const float *ids, float *sqx, float *sq2)
    IQ4_SUMS_BODY(iq_v16f, iq_v16i, 16)
#endif

/* The code path by name (L1QUANT_IQUANT_ISA: portable, sse2, avx2, avx512; default the fastest this CPU runs);
 * NULL when the name is unknown or unavailable here. All give the same bytes (tests run each). */
static iq4_sums_fn iq4_pick(const char *name) {
    int want_default = name == NULL || name[0] == '\0' || strcmp(name, "auto") == 0;
#ifdef IQ_HAVE_LANES
    __builtin_cpu_init();
    if (want_default) {
        if (__builtin_cpu_supports("avx512f")) return iq4_sums_avx512;
        if (__builtin_cpu_supports("avx2")) return iq4_sums_avx2;
        return iq4_sums_sse2;
    }
    if (strcmp(name, "avx512") == 0) return __builtin_cpu_supports("avx512f") ? iq4_sums_avx512 : NULL;
    if (strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2") ? iq4_sums_avx2 : NULL;
    if (strcmp(name, "sse2") == 0) return iq4_sums_sse2;
#endif
    if (want_default || strcmp(name, "portable") == 0) return iq4_sums_portable;
    return NULL;
}

/* weighted fit of one 32-value group: returns its scale (0 for a near-zero group) */
static float iq4_group_scale(iq4_sums_fn sums, const float *kv, const float *x, const float *w) {
    float amax = 0.0f, peak = 0.0f;
    for (int j = 0; j < 32; j++) {
        const float a = fabsf(x[j]);
        if (a > amax) {
            amax = a;
            peak = x[j];
        }
    }
    if (amax < 1e-15f) return 0.0f;
    float ids[16], sqx[16], sq2[16];
    ids[0] = 1.0f / (-peak / kv[0]);
    for (int itry = -7; itry <= 7; itry++) ids[itry + 8] = (float)(itry + (int)kv[0]) / peak;
    sums(kv, x, w, ids, sqx, sq2);
    float d = sq2[0] > 0 ? sqx[0] / sq2[0] : 0.0f;
    float best = d * sqx[0];
    for (int t = 1; t < 16; t++) {
        if (sq2[t] > 0 && sqx[t] * sqx[t] > best * sq2[t]) {
            d = sqx[t] / sq2[t];
            best = d * sqx[t];
        }
    }
    return d;
}

static inline void iq4_pack(const uint8_t *L, uint8_t *q4) {
    for (int j = 0; j < 16; j++) q4[j] = (uint8_t)(L[j] | (L[16 + j] << 4));
}

static void iq4_weights(const float *x, int n, const float *qw, float sigma2, float *w) {
    if (qw) {
        for (int j = 0; j < n; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
    } else {
        for (int j = 0; j < n; j++) w[j] = x[j] * x[j];
    }
}

static void iq4_nl_block(iq4_sums_fn sums, const float *kv, const float *x, const float *qw, uint8_t *y) {
    float sigma2 = 0.0f, w[32];
    uint8_t L[32];
    for (int j = 0; j < 32; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / 32;
    iq4_weights(x, 32, qw, sigma2, w);
    const float d = iq4_group_scale(sums, kv, x, w);
    store_f16(y, d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; j++) L[j] = (uint8_t)nearest_level(kv, id * x[j]);
    iq4_pack(L, y + 2);
}

static void iq4_xs_block(iq4_sums_fn sums, const float *kv, const float *x, const float *qw, uint8_t *y) {
    float sigma2 = 0.0f, w[32], scales[8];
    uint8_t L[32];
    for (int j = 0; j < 256; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / 256;
    float amax_scale = 0.0f, max_scale = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        iq4_weights(x + 32 * ib, 32, qw ? qw + 32 * ib : NULL, sigma2, w);
        scales[ib] = iq4_group_scale(sums, kv, x + 32 * ib, w);
        const float a = fabsf(scales[ib]);
        if (a > amax_scale) {
            amax_scale = a;
            max_scale = scales[ib];
        }
    }
    const float d = -max_scale / 32;
    store_f16(y, d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t sh = 0;
    memset(y + 4, 0, 4);
    for (int ib = 0; ib < 8; ib++) {
        int l = clamp_int(round_nearest(id * scales[ib]), -32, 31);
        const float dl = d * (float)l;
        const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
        for (int j = 0; j < 32; j++) L[j] = (uint8_t)nearest_level(kv, idl * x[32 * ib + j]);
        iq4_pack(L, y + 8 + 16 * ib);
        l += 32;
        y[4 + ib / 2] |= (uint8_t)((l & 15) << (4 * (ib % 2)));
        sh |= (uint16_t)((l >> 4) << (2 * ib));
    }
    y[2] = (uint8_t)(sh & 0xFFu);
    y[3] = (uint8_t)(sh >> 8);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* IQ3_XXS / IQ3_S */

typedef struct iq3_tabs_s iq3_tabs;
/* the reference's pick among an off-grid key's n listed candidates: the list position of the first least distance
 * strictly below FLT_MAX, or -1 */
typedef int (*iq3_pick_fn)(const iq3_tabs *t, int key, int n, const float *xv, const float *wa, float scale);
struct iq3_tabs_s {
    const int8_t *grid;         /* (n, 4): 2l+1 */
    const int32_t *kmap;        /* (4096,) */
    const uint16_t *neighbours; /* flat lists: count, indices */
    const uint16_t *lane_code;  /* (4096, width): each candidate's key (4 levels as 3-bit fields), 0-padded
                                 * (iq3_grids.lane_codes) */
    int width;                  /* a multiple of 16, at most IQ3_MAX_WIDTH */
    iq3_pick_fn pick;           /* NULL: the portable per-candidate loop */
    int env;                    /* the trial searches certified from scale-free sums (iqrun_env_sums), on the lane
                                 * paths: 1 AVX2, 2 AVX-512 with VL (iqrun_env_picks_avx512) */
};
enum { IQ3_MAX_WIDTH = 64 };

/* A candidate's distance sum_i wa_i * (scale*q_i - x_i)^2 as the reference forms it: diff = scale*q - x with
 * q = 2l+1 for its level l (0..7), the term (wa*diff)*diff, the 4 terms summed in order from 0. A coordinate's term
 * depends only on its level, so each search forms the 4 x 8 possible terms once, with the reference's operations
 * on the same operands (the same floats): e[i][l]. A candidate's distance is then the in-order sum of 4 looked-up
 * terms. */
static inline void iq3_terms(const float *xv, const float *wa, float scale, float e[4][8]) {
    for (int i = 0; i < 4; i++) {
        for (int l = 0; l < 8; l++) {
            const float diff = scale * (float)(2 * l + 1) - xv[i];
            e[i][l] = wa[i] * diff * diff;
        }
    }
}

/* the scalar pick from the terms (the sse2 path: 4-lane SSE2 has no variable permute) */
static int iq3_pick_terms(const iq3_tabs *t, int key, int n, const float *xv, const float *wa, float scale) {
    float e[4][8];
    iq3_terms(xv, wa, scale, e);
    const uint16_t *c = t->lane_code + (size_t)key * t->width;
    float best = FLT_MAX;
    int at = -1;
    for (int j = 0; j < n; j++) {
        float d = 0.0f;
        for (int i = 0; i < 4; i++) d += e[i][(c[j] >> 3 * i) & 7];
        const int take = d < best; /* branch-free: the winner is data */
        best = take ? d : best;
        at = take ? j : at;
    }
    return at;
}

#ifdef IQ_HAVE_LANES
/* W candidates' distances at a time (VF/VI/VU: W floats, int32s, uint16s): each lane's level of coordinate i
 * indexes the row of iq3_terms' e[i] (one variable permute PERM: vpermps on AVX2 / AVX-512), the 4 terms added in order;
 * then the reference's scan, first least wins. The rows are formed in registers as iq3_terms forms them, lane l
 * from q = QV[l] = 2(l mod 8) + 1 (a 16-lane row repeats the 8 terms; a level indexes only the first 8). Merging
 * the lanes by shuffles instead of the scan was slower here: its dependent steps sat on the critical path. */
#define IQ3_PICK_BODY(VF, VI, VU, W, QV, PERM)                                                                   \
    {                                                                                                            \
        const VF qv = QV;                                                                                        \
        VF row[4];                                                                                               \
        for (int i = 0; i < 4; i++) {                                                                            \
            const VF diff = scale * qv - xv[i];                                                                  \
            row[i] = wa[i] * diff * diff;                                                                        \
        }                                                                                                        \
        const uint16_t *code = t->lane_code + (size_t)key * t->width;                                            \
        float d2[IQ3_MAX_WIDTH];                                                                                 \
        for (int c = 0; c < n; c += (W)) {                                                                       \
            VU cu;                                                                                               \
            memcpy(&cu, code + c, sizeof cu);                                                                    \
            const VI cv = __builtin_convertvector(cu, VI);                                                       \
            VF d = {0};                                                                                          \
            for (int i = 0; i < 4; i++) d += PERM(row[i], (cv >> 3 * i) & 7);                                    \
            memcpy(d2 + c, &d, sizeof d);                                                                        \
        }                                                                                                        \
        float best = FLT_MAX;                                                                                    \
        int at = -1;                                                                                             \
        for (int j = 0; j < n; j++) { /* the list's order: first least wins (branch-free: the winner is data) */ \
            const int take = d2[j] < best;                                                                       \
            best = take ? d2[j] : best;                                                                          \
            at = take ? j : at;                                                                                  \
        }                                                                                                        \
        return at;                                                                                               \
    }
typedef uint16_t iq_v8u __attribute__((vector_size(16)));
typedef uint16_t iq_v16u __attribute__((vector_size(32)));
#define IQ3_PERM8(row, idx) ((iq_v8f)_mm256_permutevar8x32_ps((__m256)(row), (__m256i)(idx)))
#define IQ3_PERM16(row, idx) ((iq_v16f)_mm512_permutexvar_ps((__m512i)(idx), (__m512)(row)))
#define IQ3_Q8 {1, 3, 5, 7, 9, 11, 13, 15}
#define IQ3_Q16 {1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15}
__attribute__((target("avx2"))) static int iq3_pick_avx2_scan(const iq3_tabs *t, int key, int n, const float *xv,
                                                              const float *wa, float scale)
    IQ3_PICK_BODY(iq_v8f, iq_v8i, iq_v8u, 8, (iq_v8f)IQ3_Q8, IQ3_PERM8)
__attribute__((target("avx512f"))) static int iq3_pick_avx512_scan(const iq3_tabs *t, int key, int n,
                                                                   const float *xv, const float *wa, float scale)
    IQ3_PICK_BODY(iq_v16f, iq_v16i, iq_v16u, 16, (iq_v16f)IQ3_Q16, IQ3_PERM16)

/* The picks for the short lists (IQ3_S: mean 7, 99th percentile 21; IQ3_XXS: 4.9 and 18): the distances of up to
 * 2 vectors of candidates, their least by a min-reduction and its first position by a bit scan of the lanes equal
 * to it, in place of the serial scan (IQ3_S ~1.2x). Terms as iq3_terms forms them (diff = scale*q - x,
 * (wa*diff)*diff), each candidate's 4 summed in order from 0. Longer lists take the scan. */
__attribute__((target("avx2"))) static int iq3_pick_avx2(const iq3_tabs *t, int key, int n, const float *xv,
                                                         const float *wa, float scale) {
    if (n > 16) return iq3_pick_avx2_scan(t, key, n, xv, wa, scale);
    const __m256 qv = _mm256_setr_ps(1, 3, 5, 7, 9, 11, 13, 15), sq = _mm256_mul_ps(_mm256_set1_ps(scale), qv);
    __m256 row[4];
    for (int i = 0; i < 4; i++) {
        const __m256 diff = _mm256_sub_ps(sq, _mm256_set1_ps(xv[i]));
        row[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(wa[i]), diff), diff);
    }
    const uint16_t *code = t->lane_code + (size_t)key * t->width;
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    __m256 d[2];
    for (int h = 0; h < 2; h++) {
        const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(code + 8 * h)));
        __m256 v = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++)
            v = _mm256_add_ps(v, _mm256_permutevar8x32_ps(row[i], _mm256_srli_epi32(c, 3 * i)));
        /* lanes past the list, and distances not below FLT_MAX (never picked), become FLT_MAX */
        const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * h));
        const __m256 keep = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane)),
                                          _mm256_cmp_ps(v, big, _CMP_LT_OQ));
        d[h] = _mm256_blendv_ps(big, v, keep);
    }
    __m256 m = _mm256_min_ps(d[0], d[1]);
    m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 1));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4E));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0xB1));
    const unsigned eq = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(d[0], m, _CMP_EQ_OQ)) |
                        (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(d[1], m, _CMP_EQ_OQ)) << 8;
    if (_mm256_cvtss_f32(m) == FLT_MAX) return -1; /* nothing below FLT_MAX */
    return __builtin_ctz(eq);
}
__attribute__((target("avx512f"))) static int iq3_pick_avx512(const iq3_tabs *t, int key, int n, const float *xv,
                                                              const float *wa, float scale) {
    if (n > 32) return iq3_pick_avx512_scan(t, key, n, xv, wa, scale);
    const __m512 qv = _mm512_setr_ps(1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m512 sq = _mm512_mul_ps(_mm512_set1_ps(scale), qv);
    __m512 row[4];
    for (int i = 0; i < 4; i++) {
        const __m512 diff = _mm512_sub_ps(sq, _mm512_set1_ps(xv[i]));
        row[i] = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(wa[i]), diff), diff);
    }
    const uint16_t *code = t->lane_code + (size_t)key * t->width;
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    const int halves = n > 16 ? 2 : 1; /* rows are 16-code multiples wide: a second vector is inside the row */
    __m512 d[2] = {big, big};
    __mmask16 ok[2] = {0, 0};
    for (int h = 0; h < halves; h++) {
        const __m512i c = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(code + 16 * h)));
        __m512 v = _mm512_setzero_ps();
        for (int i = 0; i < 4; i++) /* vpermps reads the index's low 4 bits: a row repeats its 8 terms */
            v = _mm512_add_ps(v, _mm512_permutexvar_ps(_mm512_srli_epi32(c, 3 * i), row[i]));
        const int left = n - 16 * h;
        const __mmask16 in = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1);
        ok[h] = _mm512_mask_cmp_ps_mask(in, v, big, _CMP_LT_OQ);
        d[h] = v;
    }
    if ((ok[0] | ok[1]) == 0) return -1;
    const float bm = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_mask_blend_ps(ok[0], big, d[0]),
                                                        _mm512_mask_blend_ps(ok[1], big, d[1])));
    const __m512 bv = _mm512_set1_ps(bm);
    const unsigned eq = (unsigned)(ok[0] & _mm512_cmpeq_ps_mask(d[0], bv)) |
                        (unsigned)(ok[1] & _mm512_cmpeq_ps_mask(d[1], bv)) << 16;
    return __builtin_ctz(eq);
}
#endif

/* best listed neighbour of an off-grid key: least sum w*(scale*q - x)^2 (w = sqrt of the value weights), first
 * wins. iq3_neighbour_at returns its list position (-1 when no distance is below FLT_MAX); iq3_neighbour its grid
 * index (ggml aborts in that case: the first is kept) and writes its levels to L unless L is NULL. The portable path
 * is the reference's per-candidate loop. */
static inline int iq3_neighbour_at(const iq3_tabs *t, int key, const float *xv, const float *wa, float scale) {
    const uint16_t *nb = t->neighbours + (-t->kmap[key] - 1);
    const int n = nb[0];
    if (t->pick != NULL) return t->pick(t, key, n, xv, wa, scale);
    float best = FLT_MAX;
    int at = -1;
    for (int j = 0; j < n; j++) {
        const int8_t *pg = t->grid + 4 * nb[j + 1];
        float d2 = 0.0f;
        for (int i = 0; i < 4; i++) {
            const float diff = scale * (float)pg[i] - xv[i];
            d2 += wa[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            at = j;
        }
    }
    return at;
}

static int iq3_neighbour(const iq3_tabs *t, int key, const float *xv, const float *wa, float scale, int *L) {
    const uint16_t *nb = t->neighbours + (-t->kmap[key] - 1);
    const int at = iq3_neighbour_at(t, key, xv, wa, scale);
    const int gi = nb[at >= 0 ? at + 1 : 1];
    if (L != NULL) {
        const int8_t *pg = t->grid + 4 * gi;
        for (int i = 0; i < 4; i++) L[i] = (pg[i] - 1) / 2;
    }
    return gi;
}

/* levels of one 4-tuple at inverse scale id; returns 1 when on the grid, else replaces them by the neighbour */
static inline int iq3_round_quad(const iq3_tabs *t, const float *xv, const float *wa, float id, float scale, int *L) {
    int key = 0;
    for (int i = 0; i < 4; i++) {
        L[i] = clamp_int(round_nearest(0.5f * (id * xv[i] - 1.0f)), 0, 7);
        key |= L[i] << (3 * i);
    }
    if (t->kmap[key] >= 0) return 1;
    iq3_neighbour(t, key, xv, wa, scale, L);
    return 0;
}

static inline void iq3_sums(const float *w, const float *xval, const int *L, float *sumqx, float *sumq2) {
    float a = 0.0f, b = 0.0f;
    for (int i = 0; i < 32; i++) {
        const float q = (float)(2 * L[i] + 1);
        a += w[i] * xval[i] * q;
        b += w[i] * q * q;
    }
    *sumqx = a;
    *sumq2 = b;
}

/* The trial scales of a group as lanes: trial t's levels (0..7) of quad k's 4 values as the key key[k][t] (level
 * i in bits 3i..3i+2); every lane does the reference's scalar steps for its trial. A trial's levels are kept as
 * keys, not as 32 floats: writing every pick's 4 values into a float per value and trial was ~17 % of the IQ3_S
 * kernel. */
enum { IQ3_NT = 32 };
#define IQ3_HOT IQRUN_HOT
IQ3_HOT static void iq3_trial_levels(const float *restrict xval, const float *restrict ids,
                                     int32_t (*restrict key)[IQ3_NT]) {
    for (int k = 0; k < 8; k++) {
        int32_t c[IQ3_NT];
        for (int t = 0; t < IQ3_NT; t++) c[t] = 0;
        for (int i = 4 * k; i < 4 * k + 4; i++) {
            const float xi = xval[i];
            const int sh = 3 * (i - 4 * k);
            for (int t = 0; t < IQ3_NT; t++) {
                const float f = 0.5f * (ids[t] * xi - 1.0f) + 12582912.0f;
                int32_t u;
                memcpy(&u, &f, sizeof u);
                int32_t l = (u & 0x007FFFFF) - 0x00400000;
                l = l < 0 ? 0 : l > 7 ? 7 : l;
                c[t] |= l << sh;
            }
        }
        for (int t = 0; t < IQ3_NT; t++) key[k][t] = c[t];
    }
}

/* sumqx, sumq2 of every trial from its quads' keys (iq3_sums per lane: values i in order, q = 2 * level + 1) */
IQ3_HOT static void iq3_trial_sums(const float *restrict w, const float *restrict xval,
                                   const int32_t (*restrict code)[IQ3_NT], float *restrict sqx,
                                   float *restrict sq2) {
    for (int t = 0; t < IQ3_NT; t++) sqx[t] = sq2[t] = 0;
    for (int k = 0; k < 8; k++) {
        for (int i = 0; i < 4; i++) {
            const float wx = w[4 * k + i] * xval[4 * k + i], wi = w[4 * k + i];
            for (int t = 0; t < IQ3_NT; t++) {
                const float q = (float)(2 * ((code[k][t] >> 3 * i) & 7) + 1);
                sqx[t] += wx * q;
                sq2[t] += wi * q * q;
            }
        }
    }
}

/* the key (levels in 3-bit fields) of grid point gi */
static inline int32_t iq3_point_key(const iq3_tabs *t, int gi) {
    const int8_t *pg = t->grid + 4 * gi;
    int32_t c = 0;
    for (int i = 0; i < 4; i++) c |= ((pg[i] - 1) / 2) << (3 * i);
    return c;
}

/* one 256-value super-block */
static void iq3_block(int xxs, const iq3_tabs *t, const float *x, float sumx2, const float *qw, uint8_t *y) {
    const int ntry = xxs ? 15 : 9;
    const int size = xxs ? 98 : 110;
    float scales[8], w[32], wa[32], xval[32];
    int L[32], on[8];
    uint8_t signs[4];
    uint32_t sas[8];
    memset(y, 0, (size_t)size);
    memset(sas, 0, sizeof sas);
    uint8_t *qs = y + 2, *qh = y + 66, *sg = y + 74;
    const float sigma2 = 2 * sumx2 / 256; /* sumx2: the block's sequential sum of x^2 (iqrun_sum_sq4) */
    float max_scale = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = x + 32 * ib;
        if (qw) {
            for (int i = 0; i < 32; i++) w[i] = qw[32 * ib + i] * sqrtf(sigma2 + xb[i] * xb[i]);
        } else {
            for (int i = 0; i < 32; i++) w[i] = xb[i] * xb[i];
        }
        for (int i = 0; i < 32; i++) wa[i] = sqrtf(w[i]);
        for (int k = 0; k < 4; k++) {
            unsigned s = iqrun_split_signs8(xb + 8 * k, xval + 8 * k);
            if (xxs && iqrun_popcount8(s) % 2) {
                int imin = 0;
                float mn = w[8 * k] * xb[8 * k] * xb[8 * k];
                for (int i = 1; i < 8; i++) {
                    const float a = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                    if (a < mn) {
                        mn = a;
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= 1u << imin;
            }
            signs[k] = (uint8_t)(xxs ? (s & 127u) : s);
        }
        float mx = xval[0];
        for (int i = 1; i < 32; i++) mx = mx > xval[i] ? mx : xval[i];
        memset(L, 0, sizeof L);
        if (xxs ? (mx < 1e-8f) : (mx == 0.0f)) {
            scales[ib] = 0.0f;
            continue; /* IQ3_S: qs and signs do not advance (ggml's layout) */
        }
        float scale = mx / 15;
        for (int k = 0; k < 8; k++) on[k] = xxs;
        {
            const int nt = 2 * ntry + 1;
            float ids[IQ3_NT + 8], sqx[IQ3_NT], sq2[IQ3_NT]; /* ids: iqrun_env_picks reads 8 lanes from any trial */
            int32_t key[8][IQ3_NT], code[8][IQ3_NT]; /* code: each trial's levels after its searches */
            uint32_t offq[8]; /* per quad, the trials (bits) whose key is off the grid */
            /* every lane's division first, then the padding: one loop with the choice in it stayed scalar (19
             * divss a group, ~0.6 % of an IQ2_M convert) */
            for (int tt = 0; tt < IQ3_NT; tt++) ids[tt] = (15 + (float)(tt - ntry) * 0.2f) / mx;
            for (int tt = nt; tt < IQ3_NT + 8; tt++) ids[tt] = ids[0];
            iq3_trial_levels(xval, ids, key);
            memcpy(code, key, sizeof code);
#ifdef IQRUN_HAVE_ENV
            if (t->env) {
                /* per quad, runs of trials with the same off-grid key share their candidates' scale-free sums,
                 * and each trial's pick is certified from them (iqrun_env_picks), the float search only where not
                 * (near-ties); this_scale is the reference's 1 / id */
                float tsc[IQ3_NT + 8];
                for (int tt = 0; tt < IQ3_NT + 8; tt++) tsc[tt] = 1.0f / ids[tt];
                float pc[8][3]; /* iqrun_env_picks' margin constants per quad, all eight at once */
                iqrun_env_consts(xval, wa, 4, 8, 15.0, tsc[0], pc);
                for (int k = 0; k < 8; k++) {
                    const uint32_t ends = iqrun_ends(key[k], nt, IQ3_NT);
                    offq[k] = 0;
                    for (int t1 = 0; t1 < nt;) {
                        const int kk = key[k][t1];
                        const int t2 = iqrun_ctz(ends >> t1) + t1;
                        const int32_t m = t->kmap[kk];
                        if (m < 0) {
                            const int n = t->neighbours[-m - 1];
                            const uint16_t *row = t->lane_code + (size_t)kk * t->width; /* 16-code multiples */
                            /* trials left to the float search: a run of one trial takes it, cheaper than forming
                             * the sums (IQ3_S 2.5 %) */
                            uint32_t miss = 1u << t1;
                            if (t2 > t1) {
                                float av[IQ3_MAX_WIDTH], b2v[IQ3_MAX_WIDTH];
                                static const float q1[8] = {1, 3, 5, 7, 9, 11, 13, 15};
                                iqrun_env_sums(row, n, xval + 4 * k, wa + 4 * k, 4, 3, q1, av, b2v);
                                miss = (t->env == 2 ? iqrun_env_picks_avx512 : iqrun_env_picks_avx2)(
                                    av, b2v, row, n, tsc, ids, pc[k], t1, t2, code[k]);
                            }
                            for (; miss; miss &= miss - 1) {
                                const int tt = iqrun_ctz(miss);
                                const int j = iq3_neighbour_at(t, kk, xval + 4 * k, wa + 4 * k, tsc[tt]);
                                code[k][tt] = row[j >= 0 ? j : 0]; /* none below FLT_MAX: ggml keeps the first */
                            }
                            offq[k] |= (uint32_t)((2ull << t2) - (1ull << t1)); /* trials t1..t2 */
                        }
                        t1 = t2 + 1;
                    }
                }
            } else
#endif
            {
                /* the searches first, keeping only each pick's list position, then the picks' keys: the loads that
                 * follow a pick kept its whole latency on the critical path (IQ3_S ~8 %) */
                int8_t at[IQ3_NT][8];
                for (int k = 0; k < 8; k++) offq[k] = 0;
                for (int tt = 0; tt < nt; tt++) {
                    const float this_scale = 1.0f / ids[tt];
                    for (int k = 0; k < 8; k++) {
                        if (t->kmap[key[k][tt]] >= 0) continue;
                        offq[k] |= 1u << tt;
                        at[tt][k] = (int8_t)iq3_neighbour_at(t, key[k][tt], xval + 4 * k, wa + 4 * k, this_scale);
                    }
                }
                for (int tt = 0; tt < nt; tt++) {
                    for (int k = 0; k < 8; k++) {
                        if (!((offq[k] >> tt) & 1)) continue;
                        /* none below FLT_MAX: ggml keeps the first */
                        const uint16_t *nb = t->neighbours + (-t->kmap[key[k][tt]] - 1);
                        code[k][tt] = iq3_point_key(t, nb[at[tt][k] >= 0 ? at[tt][k] + 1 : 1]);
                    }
                }
            }
            iq3_trial_sums(w, xval, code, sqx, sq2);
            const int tb = iqrun_winner(sqx, sq2, nt, &scale);
            if (tb >= 0) { /* the last trial that improved: its levels and on-grid flags */
                for (int k = 0; k < 8; k++) {
                    const int32_t c = code[k][tb];
                    for (int i = 0; i < 4; i++) L[4 * k + i] = (c >> (3 * i)) & 7;
                }
                for (int k = 0; k < 8; k++) on[k] = !((offq[k] >> tb) & 1);
            }
        }
        int n_off = 0;
        for (int k = 0; k < 8; k++) n_off += !on[k];
        if (n_off > 0 && scale > 0) {
            const float id = 1.0f / scale;
            for (int k = 0; k < 8; k++) {
                if (xxs && on[k]) continue;
                iq3_round_quad(t, xval + 4 * k, wa + 4 * k, id, scale, L + 4 * k);
            }
            float sumqx, sumq2;
            iq3_sums(w, xval, L, &sumqx, &sumq2);
            if (sumq2 > 0) scale = sumqx / sumq2;
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~(unsigned)signs[k] & (xxs ? 127u : 255u));
        }
        for (int k = 0; k < 8; k++) {
            int key = 0;
            for (int i = 0; i < 4; i++) key |= L[4 * k + i] << (3 * i);
            const int gi = t->kmap[key]; /* on the grid by construction */
            if (xxs) {
                qs[8 * ib + k] = (uint8_t)gi;
            } else {
                qs[k] = (uint8_t)(gi & 255);
                qh[ib] |= (uint8_t)((gi >> 8) << k);
            }
        }
        if (xxs) {
            sas[ib] = (uint32_t)signs[0] | ((uint32_t)signs[1] << 7) | ((uint32_t)signs[2] << 14) |
                      ((uint32_t)signs[3] << 21);
        } else {
            memcpy(sg, signs, 4);
            qs += 8;
            sg += 4;
        }
        scales[ib] = scale;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
        if (xxs) memset(y, 0, (size_t)size);
        return; /* IQ3_S keeps its indices and signs, d = 0 */
    }
    const float d = max_scale / 31;
    store_f16(y, d * (xxs ? 1.0125f : 1.033f));
    const float id = 1.0f / d;
    int ls[8];
    for (int ib = 0; ib < 8; ib++) ls[ib] = clamp_int(round_nearest(0.5f * (id * scales[ib] - 1.0f)), 0, 15);
    if (xxs) {
        for (int ib = 0; ib < 8; ib++) {
            const uint32_t v = sas[ib] | ((uint32_t)ls[ib] << 28);
            for (int b = 0; b < 4; b++) y[66 + 4 * ib + b] = (uint8_t)(v >> (8 * b));
        }
    } else {
        for (int ib = 0; ib < 8; ib += 2) y[106 + ib / 2] = (uint8_t)(ls[ib] | (ls[ib + 1] << 4));
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Python entry */

static inline void widen_row(const uint16_t *src, int kind, int64_t n, float *buf) {
    if (kind == IS_BF16) {
        for (int64_t i = 0; i < n; i++) buf[i] = bits_to_f32((uint32_t)src[i] << 16);
    } else {
        for (int64_t i = 0; i < n; i++) buf[i] = bits_to_f32(f16_to_f32_bits(src[i]));
    }
}

/* The IQ3 candidate search by the same name as iq4_pick (the caller checked the name there): the lane picks on
 * AVX2 / AVX-512, the scalar pick from the terms on sse2 (and by default on a build without the x86 lane paths),
 * the reference's per-candidate loop on portable. */
static int iq3_pick(const char *name, iq3_pick_fn *out) {
    int want_default = name == NULL || name[0] == '\0' || strcmp(name, "auto") == 0;
    *out = NULL;
#ifdef IQ_HAVE_LANES
    if (want_default) {
        *out = __builtin_cpu_supports("avx512f") ? iq3_pick_avx512
               : __builtin_cpu_supports("avx2")  ? iq3_pick_avx2
                                                 : iq3_pick_terms;
        return 1;
    }
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f")) *out = iq3_pick_avx512;
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2")) *out = iq3_pick_avx2;
#endif
    if (want_default || (name != NULL && strcmp(name, "sse2") == 0)) *out = iq3_pick_terms;
    if (*out != NULL) return 1;
    return strcmp(name, "portable") == 0;
}

/* iquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix, table_a, table_b, table_c)
 *   -> flat index of the first non-finite value or -1.
 * Addresses as integers; imatrix 0 for none (else ncols finite float32). IQ4_*: table_a = the 16 int8 levels.
 * IQ3_*: table_a = grid int8 (n, 4), table_b = kmap int32 (4096), table_c = neighbour lists uint16; optionally
 * table_d, width = iq3_grids.lane_codes (uint16 (4096, width): each candidate's key) for the faster searches. */
PyObject *l1q_py_iquant(PyObject *self, PyObject *args) {
    int type, kind;
    unsigned long long s, d, q, ta, tb, tc, td = 0;
    long long rows, ncols, stride;
    int width = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiLLKLKKKK|Ki", &type, &s, &kind, &rows, &ncols, &d, &stride, &q, &ta, &tb, &tc,
                          &td, &width))
        return NULL;
    int qk, bytes;
    switch (type) {
    case IT_IQ4_NL: qk = 32; bytes = 18; break;
    case IT_IQ4_XS: qk = 256; bytes = 136; break;
    case IT_IQ3_XXS: qk = 256; bytes = 98; break;
    case IT_IQ3_S: qk = 256; bytes = 110; break;
    default:
        PyErr_Format(PyExc_ValueError, "_fastq8.iquant: unsupported ggml type %d", type);
        return NULL;
    }
    if (kind < IS_F32 || kind > IS_BF16 || rows < 0 || ncols < 0 || ncols % qk != 0 || ta == 0 ||
        ((type == IT_IQ3_XXS || type == IT_IQ3_S) && (tb == 0 || tc == 0))) {
        PyErr_Format(PyExc_ValueError, "_fastq8.iquant: bad kind, shape (ncols must be a multiple of %d) or tables",
                     qk);
        return NULL;
    }
    if (rows > 1 && stride < ncols / qk * bytes) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.iquant: dst_row_stride is smaller than a quantized row");
        return NULL;
    }
    const char *isa = getenv("L1QUANT_IQUANT_ISA");
    const iq4_sums_fn sums = iq4_pick(isa);
    if (sums == NULL) {
        PyErr_Format(PyExc_ValueError, "_fastq8.iquant: code path %s (L1QUANT_IQUANT_ISA) is not available here",
                     isa);
        return NULL;
    }
    if (rows == 0 || ncols == 0) return PyLong_FromLongLong(-1);
    float *buf = (float *)malloc((size_t)ncols * sizeof(float));
    if (buf == NULL) return PyErr_NoMemory();
    const uint8_t *src = (const uint8_t *)(uintptr_t)s;
    uint8_t *dst = (uint8_t *)(uintptr_t)d;
    const float *qw = (const float *)(uintptr_t)q;
    float kv[16];
    iq3_tabs t = {(const int8_t *)(uintptr_t)ta, (const int32_t *)(uintptr_t)tb, (const uint16_t *)(uintptr_t)tc,
                  (const uint16_t *)(uintptr_t)td, width, NULL, 0};
    if (td != 0 && width > 0 && width % 16 == 0 && width <= IQ3_MAX_WIDTH) iq3_pick(isa, &t.pick);
#if defined(IQ_HAVE_LANES) && defined(IQRUN_HAVE_ENV)
    t.env = t.pick == iq3_pick_avx2 ? 1 : t.pick == iq3_pick_avx512 ? 1 + !!__builtin_cpu_supports("avx512vl") : 0;
#endif
    if (type == IT_IQ4_NL || type == IT_IQ4_XS)
        for (int i = 0; i < 16; i++) kv[i] = (float)((const int8_t *)(uintptr_t)ta)[i];
    const size_t src_row = (size_t)ncols * (kind == IS_F32 ? 4u : 2u);
    const int64_t nb = ncols / qk;
    int64_t first = -1;
    float ssq[4] = {0, 0, 0, 0}; /* IQ3: the next four super-blocks' sums of squares */
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++) {
        const void *row = src + (size_t)r * src_row;
        uint8_t *y = dst + r * stride;
        if (kind == IS_F32)
            memcpy(buf, row, (size_t)ncols * sizeof(float));
        else
            widen_row((const uint16_t *)row, kind, ncols, buf);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = buf + b * qk;
            uint8_t *yb = y + b * bytes;
            if ((type == IT_IQ3_XXS || type == IT_IQ3_S) && b % 4 == 0)
                iqrun_sum_sq4(xb, nb - b < 4 ? (int)(nb - b) : 4, ssq);
            const int i = iqrun_first_nonfinite(xb, qk);
            if (i >= 0) {
                if (first < 0) first = r * ncols + b * qk + i;
                memset(yb, 0, (size_t)bytes);
                yb[0] = 0x00;
                yb[1] = 0x7E;
                continue;
            }
            const float *wb = qw ? qw + b * qk : NULL;
            switch (type) {
            case IT_IQ4_NL: iq4_nl_block(sums, kv, xb, wb, yb); break;
            case IT_IQ4_XS: iq4_xs_block(sums, kv, xb, wb, yb); break;
            case IT_IQ3_XXS: iq3_block(1, &t, xb, ssq[b % 4], wb, yb); break;
            default: iq3_block(0, &t, xb, ssq[b % 4], wb, yb); break;
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(buf);
    return PyLong_FromLongLong(first);
}

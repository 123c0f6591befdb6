/*
 * l1quant.kernels._fastq8 (a source file of it): IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M, giving the bytes of
 * ggml's ggml_quantize_chunk for these types (the quantize_row_<type>_impl grid searches of ggml-quants.c), with and
 * without an importance matrix where ggml accepts both (IQ2_S and IQ1_M; the other three require one).
 *
 * Exactness: as _kquants.c, built with -ffp-contract=off and no -ffast-math; every float expression is written with
 * the reference's operands, association and order (a*b*c is (a*b)*c, int operands converted first), sums are
 * sequential, comparisons strict as in the reference.
 *
 * The grid tables (levels of each grid point, the code -> index map, the neighbour lists) are not built here: the
 * caller passes kernels/iq_grids.py's arrays, derived once per process from gguf-py's grids.
 *
 * Ties in the IQ1 searches: ggml sorts a group's (value, index) pairs with qsort comparing the value alone. The
 * glibc this project runs against (2.36) implements qsort as a merge sort for arrays this small (it falls back to
 * quicksort only when a temporary buffer cannot be had, and 16 or 32 eight-byte pairs use a stack buffer), and its
 * merge takes the left element on equality: the sort is stable, so equal values keep increasing index order. The
 * insertion sort below gives that same order. tests/test_iquants12.py pins it against ggml on tied inputs.
 *
 * Non-finite policy (l1quant's): a 256-value super-block holding NaN/Inf is written as zeros with its f16 scale set
 * to 0x7E00 (for IQ1_M the scale's four nibbles in the scales field), and counts as nothing elsewhere: every type
 * here computes its statistics per super-block, so neighbours are unaffected.
 *
 * Thread safety: no global state; the GIL is released while quantizing.
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

enum { GT_IQ2_XXS = 16, GT_IQ2_XS = 17, GT_IQ1_S = 19, GT_IQ2_S = 22, GT_IQ1_M = 29 };
enum { SRC_F32 = 0, SRC_F16 = 1, SRC_BF16 = 2 };
enum { QK = 256 };

#define EPS_GROUP 1e-15f   /* GROUP_MAX_EPS */
#define EPS_IQ2_S 1e-8f    /* GROUP_MAX_EPS_IQ2_S */
#define EPS_IQ1_M 1e-7f    /* GROUP_MAX_EPS_IQ1_M */
#define EPS_IQ1_S 1e-12f   /* GROUP_MAX_EPS_IQ1_S */
#define IQ1_DELTA 0.125f   /* IQ1S_DELTA = IQ1M_DELTA */

typedef struct {
    const uint8_t *lev;     /* (ngrid, 8) levels 0..2 */
    const int32_t *map;     /* code -> index, or -(offset + 1) into nb */
    const uint16_t *nb;     /* at an offset: count, then the list */
    const uint16_t *nc;     /* nb with each listed point's code (its levels as 2-bit fields) in place of its index:
                             * a search reads one run of 2 bytes per candidate */
    int64_t nbsize;
    int ngrid;
    int vec;                /* list_min2's lanes: 2 = 16 (AVX-512), 1 = 8 (needs 32-byte vectors: AVX2, where the
                             * function is cloned per ISA; without them GCC lowers those vectors' compares lane by
                             * lane, slower than the scalar loop: IQ2_S 3.2 against 7.6 M/s), 0 = the scalar loop */
    const int32_t *map3;    /* map by base-3 code sum(level_i * 3**i) (6561 entries, 26 KiB: stays in L1 where the
                             * 2-bit-code map's 171 KiB does not); built per call from map */
    int vl;                 /* vec == 2 and the CPU has AVX-512VL: iqrun_env_picks_avx512 */
} grid_t;

/* Build the search below also for AVX2 and AVX-512 and pick at load time (GCC on x86-64 ELF); each candidate's sum
 * stays sequential over the 8 coordinates, the vectors run across candidates, so every clone gives the same bits. */
#ifdef IQRUN_CLONES
#define IQ_CLONES 1
#endif
#define IQ_HOT IQRUN_HOT

#if defined(__GNUC__) || defined(__clang__)
#define IQ_VEC 1
typedef float iqv_f __attribute__((vector_size(32)));
typedef int32_t iqv_i __attribute__((vector_size(32)));
typedef uint32_t iqv_u __attribute__((vector_size(32)));
typedef uint16_t iqv_u16 __attribute__((vector_size(16)));
#endif

/* A candidate's distance sum_i w_i * (scale*q_i - x_i)^2, as the reference forms it: q_i = a*l_i + b for its level
 * l_i (exact: 2l+1 for IQ2, l - 0.875 or l - 1.125 for IQ1's shifted ones), diff = scale*q - x, the term
 * (w*diff)*diff, and the terms summed in order i = 0..7 from 0. A coordinate's term depends only on its level, so
 * dist_terms forms the 3 x 8 possible terms once per search, each with the reference's operations on the same
 * operands (the same floats), and a candidate's distance is the in-order sum of its levels' terms: 8 selects and
 * 8 adds per candidate instead of 8 x 7 operations. */
static inline void dist_terms(const float *restrict x, const float *restrict w, float scale, float a, float b,
                              float e[3][8]) {
    for (int l = 0; l < 3; l++) {
        const float sq = scale * (a * (float)l + b);
        for (int i = 0; i < 8; i++) {
            const float diff = sq - x[i];
            e[l][i] = w[i] * diff * diff;
        }
    }
}

/* D = the distance of the candidate with code C (levels in 2-bit fields), from dist_terms' E */
#define IQ2_DIST_S(D, C, E)                                                                                        \
    do {                                                                                                           \
        D = 0;                                                                                                     \
        for (int i_ = 0; i_ < 8; i_++) D += (E)[((C) >> 2 * i_) & 3][i_];                                          \
    } while (0)

#ifdef IQ_VEC
#define IQ2_SPLAT(v) ((iqv_f){(v), (v), (v), (v), (v), (v), (v), (v)})
#define IQ_SPLATI(v) ((iqv_i){(v), (v), (v), (v), (v), (v), (v), (v)})
/* the helpers below are always inlined into the ISA clones; GCC's note that a 32-byte vector return has no fixed
 * ABI without AVX does not apply to them */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#if defined(__clang__)
#define IQ_SHUF8(v, a, b, c, d, e, f, g, h) __builtin_shufflevector((v), (v), a, b, c, d, e, f, g, h)
#else
#define IQ_SHUF8(v, a, b, c, d, e, f, g, h) __builtin_shuffle((v), (iqv_i){a, b, c, d, e, f, g, h})
#endif
/* lane-wise minimum as a select (the operands here are never NaN), and the minimum of all 8 lanes in every lane */
static inline __attribute__((always_inline)) iqv_f iq_minf(iqv_f u, iqv_f v) {
    const iqv_i m = u < v;
    return (iqv_f)((m & (iqv_i)u) | (~m & (iqv_i)v));
}
static inline __attribute__((always_inline)) iqv_i iq_mini(iqv_i u, iqv_i v) {
    const iqv_i m = u < v;
    return (m & u) | (~m & v);
}
static inline __attribute__((always_inline)) iqv_f iq_hmin_f(iqv_f v) {
    v = iq_minf(v, IQ_SHUF8(v, 4, 5, 6, 7, 0, 1, 2, 3));
    v = iq_minf(v, IQ_SHUF8(v, 2, 3, 0, 1, 6, 7, 4, 5));
    return iq_minf(v, IQ_SHUF8(v, 1, 0, 3, 2, 5, 4, 7, 6));
}
static inline __attribute__((always_inline)) iqv_i iq_hmin_i(iqv_i v) {
    v = iq_mini(v, IQ_SHUF8(v, 4, 5, 6, 7, 0, 1, 2, 3));
    v = iq_mini(v, IQ_SHUF8(v, 2, 3, 0, 1, 6, 7, 4, 5));
    return iq_mini(v, IQ_SHUF8(v, 1, 0, 3, 2, 5, 4, 7, 6));
}
/* D = the distances of 8 candidates (their codes in the lanes of the iqv_i C): a lane's level-1 bit of coordinate
 * i is bit 2i, its level-2 bit 2i + 1 (levels are 0..2); shifted to the sign bit, each picks its term */
#define IQ2_DIST_V(D, C, E)                                                                                        \
    do {                                                                                                           \
        D = (iqv_f){0};                                                                                            \
        for (int i_ = 0; i_ < 8; i_++) {                                                                           \
            const iqv_i one_ = (iqv_i)((iqv_u)(C) << (31 - 2 * i_)) < 0,                                          \
                        two_ = (iqv_i)((iqv_u)(C) << (30 - 2 * i_)) < 0;                                          \
            const iqv_i t_ = (two_ & (iqv_i)IQ2_SPLAT((E)[2][i_])) |                                               \
                             (~two_ & ((one_ & (iqv_i)IQ2_SPLAT((E)[1][i_])) |                                     \
                                       (~one_ & (iqv_i)IQ2_SPLAT((E)[0][i_]))));                                   \
            D += (iqv_f)t_;                                                                                        \
        }                                                                                                          \
    } while (0)
#endif

#ifdef IQ_VEC
/* the 8 codes at nc + COL widened to int32 lanes, into the iqv_i C (a macro: a function returning a 32-byte vector
 * has no fixed ABI across the ISA clones) */
#define IQ2_CODES8(C, NC, COL)                                                                                     \
    do {                                                                                                           \
        iqv_u16 c16_;                                                                                              \
        memcpy(&c16_, (NC) + (COL), sizeof c16_);                                                                  \
        C = __builtin_convertvector(c16_, iqv_i);                                                                  \
    } while (0)
#endif

#if defined(IQ_CLONES)
#include <immintrin.h>
#define IQ2_HAVE_512 1
/* list_min2 with 16 lanes on AVX-512 for the lists longer than 16 (IQ2_XS: 1.28x over 8 lanes), while 16 codes lie
 * inside the table from pos (nc + pos + 16 <= table end; the caller checks). A coordinate's term is one vpermps:
 * table T_i holds coordinate i's three terms at lanes l, l + 4, l + 8, l + 12 (l = level), so the index is the code
 * shifted by 2i, its low 4 bits being level i plus 4 times level i + 1. Same terms, same sums in the same order as
 * dist_terms and IQ2_DIST_S; each lane keeps its least, its position and its second least, merged at the end.
 * Returns the position in the list reached (a multiple of 16, or n), the pick in *at, its distance in *best, the
 * others' least in *second. */
__attribute__((target("avx512f"))) static int list_min2_512(const uint16_t *restrict nc, int64_t pos, int64_t nbsize,
                                                             int n, const float *restrict x, const float *restrict w,
                                                             float scale, float a, float b, int *at, float *best,
                                                             float *second) {
    static const int32_t pick[8][16] = {
#define IQ2_T(i) {i, 8 + i, 16 + i, i, i, 8 + i, 16 + i, i, i, 8 + i, 16 + i, i, i, 8 + i, 16 + i, i}
        IQ2_T(0), IQ2_T(1), IQ2_T(2), IQ2_T(3), IQ2_T(4), IQ2_T(5), IQ2_T(6), IQ2_T(7)
#undef IQ2_T
    };
    const __m256 xv = _mm256_loadu_ps(x), wv = _mm256_loadu_ps(w);
    __m256 e[3];
    for (int l = 0; l < 3; l++) { /* dist_terms' operations, 8 coordinates at once */
        const __m256 diff = _mm256_sub_ps(_mm256_set1_ps(scale * (a * (float)l + b)), xv);
        e[l] = _mm256_mul_ps(_mm256_mul_ps(wv, diff), diff);
    }
    const __m512 e01 = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(e[0])),
                                                            _mm256_castps_pd(e[1]), 1));
    const __m512 e2 = _mm512_castps256_ps512(e[2]);
    __m512 t[8];
    for (int i = 0; i < 8; i++) t[i] = _mm512_permutex2var_ps(e01, _mm512_loadu_si512(pick[i]), e2);
    __m512 bv = _mm512_set1_ps(FLT_MAX), sv = bv;
    __m512i bi = _mm512_set1_epi32(-1), jv = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i nv = _mm512_set1_epi32(n), sixteen = _mm512_set1_epi32(16);
    int j0 = 0;
#define IQ2_D16(d, c)                                                                                              \
    do {                                                                                                           \
        d = _mm512_permutexvar_ps(c, t[0]);                                                                        \
        for (int i_ = 1; i_ < 8; i_++)                                                                             \
            d = _mm512_add_ps(d, _mm512_permutexvar_ps(_mm512_srli_epi32(c, 2 * i_), t[i_]));                     \
    } while (0)
    for (; j0 < n && pos + j0 + 16 <= nbsize; j0 += 16) {
        const __m512i c = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(nc + pos + j0)));
        __m512 d;
        IQ2_D16(d, c);
        const __mmask16 in = _mm512_cmplt_epi32_mask(jv, nv);
        const __mmask16 lt = _mm512_mask_cmp_ps_mask(in, d, bv, _CMP_LT_OQ);
        const __mmask16 lt2 = _mm512_mask_cmp_ps_mask(in, d, sv, _CMP_LT_OQ);
        sv = _mm512_mask_blend_ps(lt, _mm512_mask_blend_ps(lt2, sv, d), bv);
        bv = _mm512_mask_blend_ps(lt, bv, d);
        bi = _mm512_mask_blend_epi32(lt, bi, jv);
        jv = _mm512_add_epi32(jv, sixteen);
    }
    /* the lanes merged: the least value, the least position holding it, the least of every other value */
    const float bm = _mm512_reduce_min_ps(bv);
    const __mmask16 hit = _mm512_cmpeq_ps_mask(bv, _mm512_set1_ps(bm)) & _mm512_cmpge_epi32_mask(bi, _mm512_setzero_si512());
    const int bw = _mm512_mask_reduce_min_epi32(hit, bi); /* INT32_MAX when no lane holds a candidate */
    const __mmask16 other = _mm512_cmpneq_epi32_mask(bi, _mm512_set1_epi32(bw));
    const float so = _mm512_mask_reduce_min_ps(other, bv), ss = _mm512_reduce_min_ps(sv);
    *best = bm;
    *second = so < ss ? so : ss;
    *at = bw == INT32_MAX ? -1 : bw;
    return j0;
#undef IQ2_D16
}

/* list_min2 for lists of up to 16 on AVX2 (nc + pos + 16 <= table end; the caller checks): two vectors of 8
 * candidates, a coordinate's term one vpermps (table T_i holds coordinate i's three terms at lanes l and l + 4, so
 * the index is the code shifted by 2i, whose low 3 bits are level i plus 4 times level i + 1's low bit), the least
 * by a min-reduction, its first position by a bit scan, the runner-up by a second reduction without it. Terms as
 * dist_terms forms them, each candidate's sum in order from 0. (IQ2_S: mean list 9.9, 94 % of its searches up to 16.) */
__attribute__((target("avx2"))) static int list_min2_256(const uint16_t *restrict nc, int64_t pos, int n,
                                                          const float *restrict x, const float *restrict w,
                                                          float scale, float a, float b, float *best,
                                                          float *second) {
    const __m256 sq = _mm256_setr_ps(scale * (a * 0.0f + b), scale * (a * 1.0f + b), scale * (a * 2.0f + b), 0,
                                     scale * (a * 0.0f + b), scale * (a * 1.0f + b), scale * (a * 2.0f + b), 0);
    __m256 t[8];
    for (int i = 0; i < 8; i++) {
        const __m256 diff = _mm256_sub_ps(sq, _mm256_set1_ps(x[i]));
        t[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(w[i]), diff), diff);
    }
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    __m256 d[2];
    for (int h = 0; h < 2; h++) {
        const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(nc + pos + 8 * h)));
        __m256 v = _mm256_permutevar8x32_ps(t[0], c);
        for (int i = 1; i < 8; i++) v = _mm256_add_ps(v, _mm256_permutevar8x32_ps(t[i], _mm256_srli_epi32(c, 2 * i)));
        /* lanes past the list, and distances not below FLT_MAX (never picked), become FLT_MAX */
        const __m256i lane = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * h));
        const __m256 keep = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane)),
                                          _mm256_cmp_ps(v, big, _CMP_LT_OQ));
        d[h] = _mm256_blendv_ps(big, v, keep);
    }
#define IQ2_HMIN8(m)                                                                                               \
    do {                                                                                                           \
        m = _mm256_min_ps(m, _mm256_permute2f128_ps(m, m, 1));                                                     \
        m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4E));                                                          \
        m = _mm256_min_ps(m, _mm256_permute_ps(m, 0xB1));                                                          \
    } while (0)
    __m256 m = _mm256_min_ps(d[0], d[1]);
    IQ2_HMIN8(m);
    const float bm = _mm256_cvtss_f32(m);
    if (bm == FLT_MAX) {
        *best = *second = FLT_MAX;
        return -1;
    }
    const unsigned eq = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(d[0], m, _CMP_EQ_OQ)) |
                        (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(d[1], m, _CMP_EQ_OQ)) << 8;
    const int j = __builtin_ctz(eq);
    /* the runner-up: the least with lane j out (FLT_MAX there) */
    const __m256i jv = _mm256_set1_epi32(j);
    const __m256 o0 = _mm256_blendv_ps(d[0], big, _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), jv)));
    const __m256 o1 = _mm256_blendv_ps(d[1], big, _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                                                     _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15), jv)));
    __m256 m2 = _mm256_min_ps(o0, o1);
    IQ2_HMIN8(m2);
#undef IQ2_HMIN8
    *best = bm;
    *second = _mm256_cvtss_f32(m2);
    return j;
}

#ifdef IQRUN_HAVE_ENV
#define IQ2_ENV 1 /* runs certified from scale-free sums (iqrun_env_picks) */
#endif
#endif

/* The reference's pick among the n candidates whose codes sit at nc[pos .. pos + n) (the first j, in list order,
 * with the least distance strictly below FLT_MAX; -1 if none), its distance in *best and the least distance of the
 * other candidates in *second (FLT_MAX when none is below it; equal to *best on a tie): what a run search
 * (_iqrun.h) needs. Vector lanes run across candidates, 8 at a time while the 8 codes lie inside the table (lanes
 * past the list's end read the next list's count and points and are masked out), each lane keeping its least, its
 * position and its second least; the lanes are merged without branches (which lane wins is data); the table's last
 * few codes go to the scalar tail. */
IQ_HOT static int list_min2(const grid_t *g, int64_t pos, int n, const float *restrict x, const float *restrict w,
                            float scale, float a, float b, float *best, float *second) {
    const uint16_t *restrict nc = g->nc;
    float e[3][8];
    float bst = FLT_MAX, sec = FLT_MAX;
    int at = -1;
    int j0 = 0, wide = 0;
#ifdef IQ2_HAVE_512
    /* up to 16 candidates: two 8-lane vectors on AVX-512 machines too (measured on Zen 4: IQ2_S ~5 % faster than
     * one 16-lane pass; the 16 lanes pay on the longer lists of IQ2_XS, 1.28x) */
    if (g->vec && n <= 16 && pos + 16 <= g->nbsize)
        return list_min2_256(nc, pos, n, x, w, scale, a, b, best, second);
    if (g->vec == 2 && pos + 16 <= g->nbsize) {
        j0 = list_min2_512(nc, pos, g->nbsize, n, x, w, scale, a, b, &at, &bst, &sec);
        if (j0 >= n) {
            *best = bst;
            *second = sec;
            return at;
        }
        wide = 1; /* the rest (past the table's last 16 codes) goes to the scalar tail */
    }
#endif
    dist_terms(x, w, scale, a, b, e);
#ifdef IQ_VEC
    if (g->vec && !wide && pos + 8 <= g->nbsize) {
        iqv_f bv = IQ2_SPLAT(FLT_MAX), sv = IQ2_SPLAT(FLT_MAX);
        iqv_i bi = {-1, -1, -1, -1, -1, -1, -1, -1};
        iqv_i jv = {0, 1, 2, 3, 4, 5, 6, 7};
        for (; j0 < n && pos + j0 + 8 <= g->nbsize; j0 += 8) {
            iqv_i c;
            IQ2_CODES8(c, nc, pos + j0);
            iqv_f d;
            IQ2_DIST_V(d, c, e);
            const iqv_i in = jv < n;
            const iqv_i lt = (d < bv) & in, lt2 = (d < sv) & in;
            sv = (iqv_f)((lt & (iqv_i)bv) | (~lt & ((lt2 & (iqv_i)d) | (~lt2 & (iqv_i)sv))));
            bv = (iqv_f)((lt & (iqv_i)d) | (~lt & (iqv_i)bv));
            bi = (lt & jv) | (~lt & bi);
            jv += 8;
        }
        /* lanes merged by shuffles (log2 8 = 3 steps each), no lane extracts: the least value, the least position
         * holding it (a lane's position is its first), then the least of every other value */
        const iqv_f bm = iq_hmin_f(bv);
        const iqv_i bw = iq_hmin_i(((bv == bm) & (bi >= 0) & bi) | (~((bv == bm) & (bi >= 0)) & IQ_SPLATI(INT32_MAX)));
        const iqv_i other = bi != bw;
        const iqv_f sm = iq_hmin_f(iq_minf(sv, (iqv_f)((other & (iqv_i)bv) | (~other & (iqv_i)IQ2_SPLAT(FLT_MAX)))));
        bst = bm[0];
        sec = sm[0];
        at = bw[0] == INT32_MAX ? -1 : bw[0];
    }
#endif
    for (int j = j0; j < n; j++) {
        float d;
        IQ2_DIST_S(d, nc[pos + j], e);
        if (d < bst) {
            sec = bst;
            bst = d;
            at = j;
        } else if (d < sec) {
            sec = d;
        }
    }
    *best = bst;
    *second = sec;
    return at;
}

/* The list position (0-based) of the candidate ggml's neighbour search picks: list_min2's pick, its runner-up
 * unused (one search for both: the runner-up costs two lane operations per 8 candidates). */
static inline int list_argmin(const grid_t *g, int64_t pos, int n, const float *x, const float *w, float scale, float a,
                              float b) {
    float best, second;
    return list_min2(g, pos, n, x, w, scale, a, b, &best, &second);
}

/* ggml's nearest_int: adds 1.5 * 2**23 and reads the mantissa; out-of-range arguments give its same garbage. */
static inline int nint(float f) {
    const uint32_t u = f32_to_bits(f + 12582912.0f);
    return (int)(u & 0x007FFFFFu) - 0x00400000;
}
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }
static inline float fmaxr(float a, float b) { return a > b ? a : b; } /* MAX(a, b) as ggml's macro */
static inline uint16_t f16b(float f) { return f32_to_f16_bits(f32_to_bits(f)); }
static inline void put16(uint8_t *p, uint16_t h) { p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

/* ------------------------------------------------------------------------------------------------------------ */
/* The map entry of 8 levels in 0..2 (every search input is: levels are clamped to kMaxQ - 1 = 2, IQ1 has three),
 * through the base-3 map: 26 KiB that stay in L1, where the 2-bit-code map's 171 KiB missed on every lookup. Levels
 * outside 0..2 arise only where ggml aborts (IQ2_XXS when every distance is inf/NaN, or its first fit is NaN and no
 * trial improves on it); they read grid point 0, to stay inside the map. */
static inline int32_t map_of(const grid_t *g, const int8_t *L) {
    int32_t c = 0;
    for (int i = 7; i >= 0; i--) c = 3 * c + L[i];
    return (uint32_t)c < 6561u ? g->map3[c] : 0;
}

/* a point's 8 levels from its code. On little-endian targets the 2-bit fields are spread to bytes in a register
 * and stored at once: the eight byte stores stalled the wider loads that read L next (memcpy, memcmp), ~1 % of an
 * IQ2_M convert. */
static inline void levels_of(uint16_t code, int8_t *L) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v = code;
    v = (v | v << 24) & 0x000000FF000000FFull; /* byte 1 to bits 32..39 */
    v = (v | v << 12) & 0x000F000F000F000Full; /* each byte's high nibble 16 bits up */
    v = (v | v << 6) & 0x0303030303030303ull;  /* each nibble's high field 8 bits up: field i in byte i */
    memcpy(L, &v, 8);
#else
    for (int i = 0; i < 8; i++) L[i] = (int8_t)((code >> 2 * i) & 3);
#endif
}

/* IQ2: the nearest grid point among a code's neighbours by weighted squared distance (iq2_find_best_neighbour); off:
 * the list's offset (-map - 1). Writes the point's levels to L, returns its index (-1 if every distance is NaN or
 * >= FLT_MAX; ggml aborts). */
static int iq2_nearest(const grid_t *g, int64_t off, const float *xval, const float *w, float scale, int8_t *L) {
    const int j = list_argmin(g, off + 1, g->nc[off], xval, w, scale, 2.0f, 1.0f);
    if (j < 0) return -1;
    levels_of(g->nc[off + 1 + j], L);
    return g->nb[off + 1 + j];
}

/* The grid index of 8 levels, searching the neighbours of an off-grid code (levels rewritten to the point's). */
static inline int iq2_snap(const grid_t *g, int8_t *L, const float *xval, const float *w, float scale, int *on) {
    int gi = map_of(g, L);
    *on = gi >= 0;
    if (gi < 0) gi = iq2_nearest(g, -(int64_t)gi - 1, xval, w, scale, L);
    return gi;
}

static inline void iq2_levels(const float *xval, float id, int8_t *L, int n) {
    for (int i = 0; i < n; i++) L[i] = (int8_t)imax(0, imin(2, nint(0.5f * (id * xval[i] - 1))));
}

/* make_qp_quants(n, nmax, x, L, w) with L kept as uint8_t, as the reference does: a negative level wraps. */
static float qp_fit(int n, int nmax, const float *x, uint8_t *L, const float *w) {
    float max = 0;
    for (int i = 0; i < n; i++) max = fmaxr(max, x[i]);
    if (max < EPS_GROUP) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = (float)nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)nint(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * (float)L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * (float)is + (float)nmax) / max;
        const float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            const int l = imin(nmax, nint(iscale_is * x[i]));
            const float diff = x[i] - scale_is * (float)l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = imin(nmax, nint(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float wi = w[i];
            float slx = sumlx - wi * x[i] * (float)L[i];
            float sl2 = suml2 - wi * (float)L[i] * (float)L[i];
            if (slx > 0 && sl2 > 0) {
                const int nl = imin(nmax, nint(x[i] * sl2 / slx));
                if (nl != L[i]) {
                    slx += wi * x[i] * (float)nl;
                    sl2 += wi * (float)nl * (float)nl;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Sign handling of IQ2_XXS / IQ2_XS: magnitudes in xval; an odd number of negatives flips back the one of least
 * weight*x*x (the format stores 7 sign bits, the 8th is the parity). Returns the 7 stored sign bits. */
static inline uint8_t even_signs(const float *xb, const float *w, float *xval) {
    uint8_t s = (uint8_t)iqrun_split_signs8(xb, xval);
    const int nflip = iqrun_popcount8(s);
    if (nflip % 2) {
        int im = 0;
        float mn = w[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; i++) {
            const float ax = w[i] * xb[i] * xb[i];
            if (ax < mn) {
                mn = ax;
                im = i;
            }
        }
        xval[im] = -xval[im];
        s ^= (uint8_t)(1 << im);
    }
    return s & 127;
}

static inline void qx_q2(const float *w, const float *xval, const int8_t *L, int n, float *sqx, float *sq2) {
    float a = 0, b = 0;
    for (int i = 0; i < n; i++) {
        const float q = (float)(2 * L[i] + 1);
        a += w[i] * xval[i] * q;
        b += w[i] * q * q;
    }
    *sqx = a;
    *sq2 = b;
}

/* The trial scales of a group, all at once. Trial t rounds part k (8 values) to levels (iq2_levels with ids[t]);
 * code3[k][t] is their base-3 code (the map3 key), code2[k][t] their 2-bit code (level i in bits 2i, 2i+1). Each
 * trial does exactly what the reference's loop does for it; only the order in which independent trials are worked
 * through changes. A trial's levels are kept as its code, not as 8 floats: writing and reading those floats for
 * every trial and pick was ~20 % of the kernel's instructions. */
enum { NT_MAX = 24 }; /* 19 trials at most (IQ2_XS, IQ2_S), padded to whole 8-lane vectors */
/* lists certified from scale-free sums up to this long (IQ2_S's longest is 70, IQ2_XS's 292); longer ones take
 * _iqrun.h's run searches */
enum { IQ2_ENV_MAX = 64 };
IQ_HOT static void trial_levels(const float *restrict xval, int nparts, const float *restrict ids,
                                int32_t (*restrict code2)[NT_MAX], int32_t (*restrict code3)[NT_MAX]) {
    for (int k = 0; k < nparts; k++) {
        int32_t c3[NT_MAX], c2[NT_MAX];
        for (int t = 0; t < NT_MAX; t++) c3[t] = c2[t] = 0;
        int32_t p3 = 1;
        for (int i = 0; i < 8; i++) {
            const float xi = xval[8 * k + i];
            for (int t = 0; t < NT_MAX; t++) {
                const float f = 0.5f * (ids[t] * xi - 1) + 12582912.0f;
                int32_t u;
                memcpy(&u, &f, sizeof u);
                int32_t l = (u & 0x007FFFFF) - 0x00400000;
                l = l < 0 ? 0 : l > 2 ? 2 : l;
                c3[t] += l * p3;
                c2[t] |= l << 2 * i;
            }
            p3 *= 3;
        }
        for (int t = 0; t < NT_MAX; t++) {
            code3[k][t] = c3[t];
            code2[k][t] = c2[t];
        }
    }
}

/* sumqx, sumq2 of every trial from its parts' 2-bit codes (qx_q2 per lane, i in order, q = 2*level + 1) */
IQ_HOT static void trial_sums(const float *restrict w, const float *restrict xval, int nparts,
                              const int32_t (*restrict code2)[NT_MAX], float *restrict sqx, float *restrict sq2) {
    for (int t = 0; t < NT_MAX; t++) sqx[t] = sq2[t] = 0;
    for (int k = 0; k < nparts; k++) {
        for (int i = 0; i < 8; i++) {
            const float wx = w[8 * k + i] * xval[8 * k + i], wi = w[8 * k + i];
            for (int t = 0; t < NT_MAX; t++) {
                const float q = (float)(2 * ((code2[k][t] >> 2 * i) & 3) + 1);
                sqx[t] += wx * q;
                sq2[t] += wi * q * q;
            }
        }
    }
}

/* IQ2's side of an _iqrun.h run: the part's list and the codes the picks go to */
typedef struct {
    iqrun r;
    const grid_t *g;
    int64_t pos; /* the list's first candidate in nc */
    int n;
    int32_t *code2; /* the part's 2-bit codes, one per trial */
} iq2_run;

static void iq2_run_put(iqrun *r, int j, int t) {
    const iq2_run *p = (const iq2_run *)r;
    p->code2[t] = p->g->nc[p->pos + j];
}

static int iq2_run_search(iqrun *r, int t, float *best, float *second) {
    const iq2_run *p = (const iq2_run *)r;
    const int j = list_min2(p->g, p->pos, p->n, r->x, r->w, r->scales[t], 2.0f, 1.0f, best, second);
    if (j >= 0) iq2_run_put(r, j, t);
    return j;
}

/* The off-grid parts of every trial replaced by their nearest listed neighbour at the trial's scale, as the
 * reference's per-trial search picks it (the rounded levels stay when no distance is below FLT_MAX). A run of
 * trials rounding a part to the same code is certified from its candidates' scale-free sums (iqrun_env_picks, on
 * the AVX2 / AVX-512 paths); runs of one trial and the rest go through iqrun_snap. */
static void trial_snap(const grid_t *g, const float *xval, const float *waux, int nparts, const float *scales,
                       const float *ids, int nt,
                       const int32_t (*code3)[NT_MAX], int32_t (*code2)[NT_MAX]) {
    for (int k = 0; k < nparts; k++) {
        iq2_run p = {{iq2_run_search, iq2_run_put, scales, xval + 8 * k, waux + 8 * k, 8, 5.0, -1, 0, 0},
                     g, 0, 0, code2[k]};
#ifdef IQ2_ENV
        float pc[1][3]; /* iqrun_env_picks' margin constants for the part, formed when first needed */
        int have_pc = 0;
#else
        (void)ids;
#endif
        const uint32_t ends = iqrun_ends(code3[k], nt, NT_MAX);
        for (int t = 0; t < nt;) {
            const int32_t code = code3[k][t];
            const int t2 = iqrun_ctz(ends >> t) + t;
            const int gi = g->map3[code];
            if (gi < 0) {
                p.pos = -(int64_t)gi;  /* the list's count sits at -gi - 1 */
                p.n = g->nc[p.pos - 1];
#ifdef IQ2_ENV
                /* a run of one trial takes its float search, cheaper than forming the sums (IQ2_S 3.5 %) */
                if (t2 > t && g->vec && p.n <= IQ2_ENV_MAX && p.pos + ((p.n + 7) & ~7) <= g->nbsize) {
                    if (!have_pc) {
                        iqrun_env_consts(xval + 8 * k, waux + 8 * k, 8, 1, 5.0, scales[0], pc);
                        have_pc = 1;
                    }
                    float av[IQ2_ENV_MAX], b2v[IQ2_ENV_MAX];
                    static const float q1[8] = {1, 3, 5, 0, 1, 3, 5, 0}; /* a level at lanes l and l + 4 */
                    iqrun_env_sums(g->nc + p.pos, p.n, xval + 8 * k, waux + 8 * k, 8, 2, q1, av, b2v);
                    uint32_t miss = (g->vl ? iqrun_env_picks_avx512 : iqrun_env_picks_avx2)(
                        av, b2v, g->nc + p.pos, p.n, scales, ids, pc[0], t, t2, code2[k]);
                    for (; miss; miss &= miss - 1) {
                        float best, second;
                        iq2_run_search(&p.r, iqrun_ctz(miss), &best, &second);
                    }
                } else
#endif
                    iqrun_snap(&p.r, t, t2);
            }
            t = t2 + 1;
        }
    }
}

/* ggml's scale trials for nparts groups of 8 values: trial t uses the scale (5 + (t - half) / 10) / div, t = 0..2*half,
   snapped to the grid; the first trial with the largest sumqx^2 / sumq2 wins (ggml's strict >, in trial order). Its
   levels go to L, its on-grid flags to on_grid[0..nparts-1] and its least-squares scale sumqx / sumq2 to *scale, and
   the winner is returned; -1 when no trial has sumq2 > 0 (L, on_grid and *scale are then left as they were). */
static int trial_best(const grid_t *g, const float *xval, const float *waux, const float *weight, int nparts,
                      int half, float div, float *scale, int8_t *L, int *on_grid) {
    const int nt = 2 * half + 1;
    float ids[NT_MAX + 8], tsc[NT_MAX + 8], sqx[NT_MAX], sq2[NT_MAX]; /* iqrun_env_picks reads 8 lanes from any trial */
    int32_t code3[4][NT_MAX], code2[4][NT_MAX];
    /* separate loops so that the divisions vectorize (64 scalar divisions were ~6 % of the IQ2_S kernel), over
     * every lane: a trip count of nt left a scalar tail */
    for (int t = 0; t < NT_MAX; t++) ids[t] = (5 + (float)(t - half) * 0.1f) / div;
    for (int t = 0; t < NT_MAX; t++) tsc[t] = 1 / ids[t];
    for (int t = nt; t < NT_MAX + 8; t++) { /* padding lanes repeat trial 0: trial_levels and trial_sums run them */
        ids[t] = ids[0];
        tsc[t] = tsc[0];
    }
    trial_levels(xval, nparts, ids, code2, code3);
    trial_snap(g, xval, waux, nparts, tsc, ids, nt, code3, code2);
    trial_sums(weight, xval, nparts, code2, sqx, sq2);
    const int tb = iqrun_winner(sqx, sq2, nt, scale);
    if (tb >= 0) {
        for (int k = 0; k < nparts; k++) {
            levels_of((uint16_t)code2[k][tb], L + 8 * k);
            on_grid[k] = g->map3[code3[k][tb]] >= 0;
        }
    }
    return tb;
}

/* A super-block's 256 distance weights and their square roots, as the IQ2 quantizers form them per group:
 * w = qw * sqrt(sigma2 + x^2) with importance weights qw, else 0.25 sigma2 + x^2 (IQ2_XS, IQ2_S; IQ2_XXS always has
 * qw); wa = sqrt(w). All 256 at once, vectorized per ISA: a group's 16 at a time were two dependent passes of
 * baseline-SSE2 square roots (IQ2_S +1-4 %; IQ3_S, its groups of 32, measured no gain this way and keeps its own).
 * Element by element the reference's operations, so its values. */
IQ_HOT static void block_weights(const float *restrict x, const float *restrict qw, float sigma2, float *restrict w,
                                 float *restrict wa) {
    if (qw) {
        for (int i = 0; i < QK; i++) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
    } else {
        const float a = 0.25f * sigma2;
        for (int i = 0; i < QK; i++) w[i] = a + x[i] * x[i];
    }
    for (int i = 0; i < QK; i++) wa[i] = sqrtf(w[i]);
}

/* IQ2_XXS: one super-block (quantize_row_iq2_xxs_impl). y: 66 bytes. */
static void iq2_xxs_block(const grid_t *g, const float *xbl, float ssq, const float *qwb, uint8_t *y) {
    float scales[8], wblk[QK], wablk[QK], xval[32];
    int8_t L[32];
    uint8_t signs[4];
    uint32_t q2[16];
    memset(q2, 0, sizeof q2);
    float max_scale = 0;
    const float sigma2 = ssq / QK;
    block_weights(xbl, qwb, sigma2, wblk, wablk); /* qwb: IQ2_XXS always has one */
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = xbl + 32 * ib;
        const float *weight = wblk + 32 * ib, *waux = wablk + 32 * ib;
        for (int k = 0; k < 4; k++) signs[k] = even_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k);
        float max = xval[0];
        for (int i = 1; i < 32; i++) max = fmaxr(max, xval[i]);
        if (max < EPS_GROUP) {
            scales[ib] = 0;
            continue;
        }
        float scale = qp_fit(32, 4, xval, (uint8_t *)L, weight);
        const float eff_max = scale * 3;
        if (eff_max <= 0) {
            scales[ib] = 0;
            continue;
        }
        int on, on4[4];
        const int won = trial_best(g, xval, waux, weight, 4, 6, eff_max, &scale, L, on4) >= 0; /* is = -6..6 */
        if (scale > 0) {
            const float id = 1 / scale;
            int8_t Lw[32]; /* the winner's levels, whose sums gave scale */
            memcpy(Lw, L, sizeof Lw);
            for (int k = 0; k < 4; k++) {
                iq2_levels(xval + 8 * k, id, L + 8 * k, 8);
                const int gi = iq2_snap(g, L + 8 * k, xval + 8 * k, waux + 8 * k, scale, &on);
                if (gi >= 0) /* -1: every distance inf/NaN, where ggml aborts */
                    for (int i = 0; i < 8; i++) L[8 * k + i] = (int8_t)g->lev[8 * (size_t)gi + i];
            }
            /* a trial's levels unchanged give its sums again, in the same order: the same scale */
            if (!won || memcmp(L, Lw, sizeof Lw)) {
                float sumqx, sumq2;
                qx_q2(weight, xval, L, 32, &sumqx, &sumq2);
                if (sumq2 > 0) scale = sumqx / sumq2;
            }
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~signs[k] & 127);
        }
        for (int k = 0; k < 4; k++) {
            const int gi = map_of(g, L + 8 * k);
            q2[2 * ib] |= (uint32_t)gi << 8 * k;
            q2[2 * ib + 1] |= (uint32_t)signs[k] << 7 * k;
        }
        scales[ib] = scale;
        max_scale = fmaxr(max_scale, scale);
    }
    memset(y, 0, 66);
    if (!max_scale) return;
    const float d = max_scale / 31;
    put16(y, f16b(d));
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib++) {
        const int l = imax(0, imin(15, nint(0.5f * (id * scales[ib] - 1))));
        q2[2 * ib + 1] |= (uint32_t)l << 28;
    }
    for (int i = 0; i < 16; i++)
        for (int b = 0; b < 4; b++) y[2 + 4 * i + b] = (uint8_t)(q2[i] >> 8 * b);
}

/* IQ2_XS (quantize_row_iq2_xs_impl) and IQ2_S (quantize_row_iq2_s_impl): 16-value groups, 19 trial scales, only
 * off-grid halves re-searched at the end. They differ in the weights, the signs (IQ2_S stores all 8), the group
 * threshold, the scale's fudge factor and the layout. */
static void iq2_xs_s_block(const grid_t *g, int is_s, const float *xbl, float ssq, const float *qwb,
                           uint8_t *y) {
    float scales[16], wblk[QK], wablk[QK], xval[16];
    int8_t L[16];
    int on_grid[2];
    uint8_t signs[2];
    uint16_t gidx[32];
    uint8_t sgn[32];
    float max_scale = 0;
    const float sigma2 = is_s ? 2 * ssq / QK : ssq / QK;
    memset(gidx, 0, sizeof gidx);
    memset(sgn, 0, sizeof sgn);
    block_weights(xbl, qwb, sigma2, wblk, wablk);
    for (int ib = 0; ib < 16; ib++) {
        const float *xb = xbl + 16 * ib;
        const float *weight = wblk + 16 * ib, *waux = wablk + 16 * ib;
        for (int k = 0; k < 2; k++) {
            if (is_s) {
                signs[k] = (uint8_t)iqrun_split_signs8(xb + 8 * k, xval + 8 * k);
            } else {
                signs[k] = even_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k);
            }
        }
        float max = xval[0];
        for (int i = 1; i < 16; i++) max = fmaxr(max, xval[i]);
        memset(L, 0, 16);
        if (max < (is_s ? EPS_IQ2_S : EPS_GROUP)) {
            scales[ib] = 0;
            continue;
        }
        on_grid[0] = on_grid[1] = 1;
        float scale = max / 5;
        trial_best(g, xval, waux, weight, 2, 9, max, &scale, L, on_grid); /* is = -9..9 */
        if ((!on_grid[0] || !on_grid[1]) && scale > 0) {
            const float id = 1 / scale;
            int on;
            int8_t Lw[16]; /* the winner's levels, whose sums gave scale */
            memcpy(Lw, L, sizeof Lw);
            for (int k = 0; k < 2; k++) {
                if (on_grid[k]) continue;
                iq2_levels(xval + 8 * k, id, L + 8 * k, 8);
                iq2_snap(g, L + 8 * k, xval + 8 * k, waux + 8 * k, scale, &on);
            }
            /* the winner's levels unchanged give its sums again, in the same order: the same scale (on_grid[k] is
             * 0 only where a trial won) */
            if (memcmp(L, Lw, sizeof Lw)) {
                float sumqx, sumq2;
                qx_q2(weight, xval, L, 16, &sumqx, &sumq2);
                if (sumq2 > 0) scale = sumqx / sumq2;
            }
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; k++) signs[k] = is_s ? (uint8_t)~signs[k] : (uint8_t)(~signs[k] & 127);
        }
        for (int k = 0; k < 2; k++) {
            gidx[2 * ib + k] = (uint16_t)map_of(g, L + 8 * k);
            sgn[2 * ib + k] = signs[k];
        }
        scales[ib] = scale;
        max_scale = fmaxr(max_scale, scale);
    }
    const int nbytes = is_s ? 82 : 74;
    memset(y, 0, (size_t)nbytes);
    if (!max_scale) return;
    const float d = max_scale / 31;
    put16(y, f16b(is_s ? d * 0.9875f : d));
    const float id = 1 / d;
    uint8_t *sc = y + (is_s ? 2 + 64 + 8 : 2 + 64);
    for (int ib = 0; ib < 16; ib++) {
        const int l = imax(0, imin(15, nint(0.5f * (id * scales[ib] - 1))));
        if (ib % 2 == 0)
            sc[ib / 2] = (uint8_t)l;
        else
            sc[ib / 2] |= (uint8_t)(l << 4);
    }
    for (int i8 = 0; i8 < 32; i8++) {
        if (is_s) {
            y[2 + i8] = (uint8_t)(gidx[i8] & 255);
            y[2 + 64 + i8 / 4] |= (uint8_t)((gidx[i8] >> 8) << 2 * (i8 % 4));
            y[2 + 32 + i8] = sgn[i8];
        } else {
            put16(y + 2 + 2 * i8, (uint16_t)(gidx[i8] | (sgn[i8] << 9)));
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* IQ1: the nearest grid point among a code's neighbours, the point's levels valued through xg (the three shifted
 * levels) times scale (iq1_find_best_neighbour2). ggml then tries the whole grid when no neighbour's distance is
 * below FLT_MAX, reading the value at the grid index (xval[i], i up to 2047: the input that follows the part,
 * past the row and the tensor's buffer), so its bytes there depend on memory beyond the group. That happens when
 * every distance overflows: finite inputs can do it (|x| of 1e3..1e10 with importance weights near 1e30, found by
 * fuzzing), and there l1quant cannot give ggml's bytes; the whole-grid pass here reads the part's own values. */
static int iq1_nearest(const grid_t *g, int64_t off, const float *xval, const float *w, float scale, const float *xg,
                       int8_t *L) {
    const int j = list_argmin(g, off + 1, g->nc[off], xval, w, scale, 1.0f, xg[0]);
    int gi = j < 0 ? -1 : g->nb[off + 1 + j];
    if (gi < 0) {
        float best = FLT_MAX;
        for (int k = 0; k < g->ngrid; k++) {
            const uint8_t *p = g->lev + 8 * (size_t)k;
            float dd = 0;
            for (int i = 0; i < 8; i++) {
                const float diff = scale * xg[p[i]] - xval[i];
                dd += w[i] * diff * diff;
            }
            if (dd < best) {
                best = dd;
                gi = k;
            }
        }
    }
    if (gi < 0) gi = 0;
    for (int i = 0; i < 8; i++) L[i] = (int8_t)g->lev[8 * (size_t)gi + i];
    return gi;
}

/* The group's indices in ascending value order, equal values in index order (glibc 2.36's stable qsort). */
static inline void sort_idx(const float *x, int n, int *idx) {
    for (int j = 0; j < n; j++) {
        int k = j;
        while (k > 0 && x[idx[k - 1]] > x[j]) {
            idx[k] = idx[k - 1];
            k--;
        }
        idx[k] = j;
    }
}

static const float XP[3] = {-1 + IQ1_DELTA, IQ1_DELTA, 1 + IQ1_DELTA};
static const float XM[3] = {-1 - IQ1_DELTA, -IQ1_DELTA, 1 - IQ1_DELTA};

/* Grid indices of a group's 8-value parts after the 3-level split; returns 1 when all were on the grid. */
static int iq1_snap(const grid_t *g, const int8_t *L0, const float *xb, const float *w, float scale,
                    const float *const *xx, int nparts, uint16_t *index) {
    int all_on = 1;
    int8_t L[8];
    for (int k = 0; k < nparts; k++) {
        memcpy(L, L0 + 8 * k, 8);
        int gi = map_of(g, L);
        if (gi < 0) {
            all_on = 0;
            gi = iq1_nearest(g, -(int64_t)gi - 1, xb + 8 * k, w + 8 * k, scale, xx[k], L);
        }
        index[k] = (uint16_t)gi;
    }
    return all_on;
}

/* The sums of IQ1_S's split (i1, i2) for i2 = i1..32, with the +delta levels (cand[0], cand[1]: sumqx, sumq2) and
 * the -delta ones (cand[2], cand[3]), each formed as the reference forms it. */
IQ_HOT static int split_sums_s(const float *restrict sumx, const float *restrict sumw, int i1, float cand[4][33],
                               float best) {
    const float a = sumx[i1] - sumx[0], wa = sumw[i1] - sumw[0];
    for (int i2 = i1; i2 <= 32; i2++) {
        const float b = sumx[i2] - sumx[i1], c = sumx[32] - sumx[i2];
        const float wb = sumw[i2] - sumw[i1], wc = sumw[32] - sumw[i2];
        cand[0][i2] = a * XP[0] + b * XP[1] + c * XP[2];
        cand[1][i2] = wa * XP[0] * XP[0] + wb * XP[1] * XP[1] + wc * XP[2] * XP[2];
        cand[2][i2] = a * XM[0] + b * XM[1] + c * XM[2];
        cand[3][i2] = wa * XM[0] * XM[0] + wb * XM[1] * XM[1] + wc * XM[2] * XM[2];
    }
    /* whether any split of this row passes the reference's test against the best score so far (lanes: the same
     * comparisons; when none passes, the sequential scan of the row would change nothing) */
    int any = 0;
    for (int i2 = i1; i2 <= 32; i2++) {
        any |= (cand[1][i2] > 0) & (cand[0][i2] * cand[0][i2] > best * cand[1][i2]);
        any |= (cand[3][i2] > 0) & (cand[2][i2] * cand[2][i2] > best * cand[3][i2]);
    }
    return any;
}

/* IQ1_S super-block (quantize_row_iq1_s_impl): 8 groups of 32, one shift sign each. y: 50 bytes. */
static void iq1_s_block(const grid_t *g, const float *xbl, float ssq, const float *qwb, uint8_t *y) {
    float scales[8], weight[32], sumx[33], sumw[33];
    int8_t L[32], shifts[8];
    int idx[32];
    uint16_t index[4];
    memset(y, 0, 50);
    float max_scale = 0;
    const float sigma2 = 2 * ssq / QK;
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = xbl + 32 * ib;
        const float *qw = qwb + 32 * ib;
        for (int i = 0; i < 32; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        float max = fabsf(xb[0]);
        for (int i = 1; i < 32; i++) max = fmaxr(max, fabsf(xb[i]));
        if (max < EPS_IQ1_S) {
            scales[ib] = 0;
            shifts[ib] = 1;
            continue;
        }
        sort_idx(xb, 32, idx);
        sumx[0] = sumw[0] = 0;
        for (int j = 0; j < 32; j++) {
            const int i = idx[j];
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        float best_score = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, bshift = 0;
        for (int i1 = 0; i1 <= 32; i1++) {
            /* every split (i1, i2) for this i1 at once (vectorisable), then the reference's scan in its order */
            float cand[4][33];
            if (!split_sums_s(sumx, sumw, i1, cand, best_score)) continue;
            for (int i2 = i1; i2 <= 32; i2++) {
                for (int t = 0; t < 2; t++) {
                    const float sqx = cand[2 * t][i2], sq2 = cand[2 * t + 1][i2];
                    if (sq2 > 0 && sqx * sqx > best_score * sq2) {
                        scale = sqx / sq2;
                        best_score = scale * sqx;
                        b1 = i1;
                        b2 = i2;
                        bshift = t == 0 ? 1 : -1;
                    }
                }
            }
        }
        if (b1 < 0 || b2 < 0 || bshift == 0) {
            scales[ib] = 0;
            shifts[ib] = 1;
            continue;
        }
        for (int j = 0; j < 32; j++) L[idx[j]] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 32; j++) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            bshift = -bshift;
        }
        const float *xx = bshift == 1 ? XP : XM;
        const float *xxs[4] = {xx, xx, xx, xx};
        if (!iq1_snap(g, L, xb, weight, scale, xxs, 4, index)) {
            float sqx = 0, sq2 = 0;
            for (int k = 0; k < 4; k++) {
                const uint8_t *p = g->lev + 8 * (size_t)index[k];
                for (int j = 0; j < 8; j++) {
                    const float w = weight[8 * k + j];
                    const float q = xx[p[j]];
                    sqx += w * q * xb[8 * k + j];
                    sq2 += w * q * q;
                }
            }
            if (sqx > 0 && sq2 > 0) scale = sqx / sq2;
        }
        uint16_t h = 0;
        for (int k = 0; k < 4; k++) {
            y[2 + 4 * ib + k] = (uint8_t)(index[k] & 255);
            h |= (uint16_t)((index[k] >> 8) << 3 * k);
        }
        put16(y + 34 + 2 * ib, h);
        scales[ib] = scale;
        shifts[ib] = (int8_t)bshift;
        max_scale = fmaxr(max_scale, scale);
    }
    if (!max_scale) return;
    const float d = max_scale / 15;
    put16(y, f16b(d * 1.125f));
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib++) {
        int l = imax(0, imin(7, nint(0.5f * (id * scales[ib] - 1))));
        if (shifts[ib] == -1) l |= 8;
        const uint16_t h = (uint16_t)(y[34 + 2 * ib] | (y[35 + 2 * ib] << 8) | (l << 12));
        put16(y + 34 + 2 * ib, h);
    }
}

/* IQ1_M's sums for every split (i1, i2), i2 = i1..16, of one i1, each formed as the reference forms it: c[k][i2] the
 * sumqx and c[4 + k][i2] the sumq2 of shift choice k (k: first half +/-, second half +/-); returns whether any
 * passes the reference's test against the best score so far (when none does, the row's scan changes nothing). */
IQ_HOT static int split_sums_m(const float (*restrict px)[17], const float (*restrict pw)[17], int i1, float c[8][17],
                               float best) {
    const float p2 = XP[2], m2 = XM[2];
    const float cp1 = XP[0] * XP[0] - XP[1] * XP[1], cp2 = XP[1] * XP[1] - XP[2] * XP[2];
    const float cm1 = XM[0] * XM[0] - XM[1] * XM[1], cm2 = XM[1] * XM[1] - XM[2] * XM[2];
    const float tx0 = px[0][16], tx1 = px[1][16], tw0 = pw[0][16], tw1 = pw[1][16];
    int any = 0;
    for (int i2 = i1; i2 <= 16; i2++) {
        const float sx0 = px[0][i1] + px[0][i2], sx1 = px[1][i1] + px[1][i2];
        const float qxp0 = tx0 * p2 - sx0, qxm0 = tx0 * m2 - sx0;
        const float qxp1 = tx1 * p2 - sx1, qxm1 = tx1 * m2 - sx1;
        const float q2p0 = tw0 * p2 * p2 + pw[0][i1] * cp1 + pw[0][i2] * cp2;
        const float q2m0 = tw0 * m2 * m2 + pw[0][i1] * cm1 + pw[0][i2] * cm2;
        const float q2p1 = tw1 * p2 * p2 + pw[1][i1] * cp1 + pw[1][i2] * cp2;
        const float q2m1 = tw1 * m2 * m2 + pw[1][i1] * cm1 + pw[1][i2] * cm2;
        const float sqx[4] = {qxp0 + qxp1, qxp0 + qxm1, qxm0 + qxp1, qxm0 + qxm1};
        const float sq2[4] = {q2p0 + q2p1, q2p0 + q2m1, q2m0 + q2p1, q2m0 + q2m1};
        for (int k = 0; k < 4; k++) {
            c[k][i2] = sqx[k];
            c[4 + k][i2] = sq2[k];
            any |= (sq2[k] > 0) & (sqx[k] * sqx[k] > best * sq2[k]);
        }
    }
    return any;
}

/* IQ1_M super-block (quantize_row_iq1_m_impl): 16 groups of 16, a shift sign per 8-value half. y: 56 bytes:
 * qs[32], qh[16], scales[8] (4 little-endian uint16 holding the 3-bit group scales and the f16 scale's nibbles). */
static void iq1_m_block(const grid_t *g, const float *xbl, float ssq, const float *qwb, uint8_t *y) {
    static const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    float scales[16], weight[16];
    int8_t L[16], shifts[16];
    int idx[16];
    uint16_t index[2];
    uint8_t *qs = y, *qh = y + 32;
    uint16_t sc[4] = {0, 0, 0, 0};
    memset(y, 0, 56);
    float max_scale = 0;
    const float sigma2 = 2 * ssq / QK;
    for (int ib = 0; ib < 16; ib++) {
        const float *xb = xbl + 16 * ib;
        if (qwb) {
            const float *qw = qwb + 16 * ib;
            for (int i = 0; i < 16; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        } else {
            for (int i = 0; i < 16; i++) weight[i] = xb[i] * xb[i];
        }
        float max = fabsf(xb[0]);
        for (int i = 1; i < 16; i++) max = fmaxr(max, fabsf(xb[i]));
        if (max < EPS_IQ1_M) {
            scales[ib] = 0;
            shifts[ib] = 0;
            continue;
        }
        sort_idx(xb, 16, idx);
        float px[2][17], pw[2][17];
        px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0;
        for (int j = 0; j < 16; j++) {
            const int i = idx[j];
            const int h = i < 8 ? 0 : 1;
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        float best_score = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, bk = -1;
        for (int i1 = 0; i1 <= 16; i1++) {
            float c[8][17];
            if (!split_sums_m((const float (*)[17])px, (const float (*)[17])pw, i1, c, best_score)) continue;
            for (int i2 = i1; i2 <= 16; i2++) {
                for (int k = 0; k < 4; k++) {
                    const float sqx = c[k][i2], sq2 = c[4 + k][i2];
                    if (sq2 > 0 && sqx * sqx > best_score * sq2) {
                        scale = sqx / sq2;
                        best_score = scale * sqx;
                        b1 = i1;
                        b2 = i2;
                        bk = k;
                    }
                }
            }
        }
        if (b1 < 0 || b2 < 0 || bk < 0) {
            scales[ib] = 0;
            shifts[ib] = 0;
            continue;
        }
        for (int j = 0; j < 16; j++) L[idx[j]] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 16; j++) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            bk = 3 - bk;
        }
        const float *xxs[2] = {bk < 2 ? XP : XM, bk % 2 == 0 ? XP : XM};
        if (!iq1_snap(g, L, xb, weight, scale, xxs, 2, index)) {
            float sqx = 0, sq2 = 0;
            for (int k = 0; k < 2; k++) {
                const uint8_t *p = g->lev + 8 * (size_t)index[k];
                for (int j = 0; j < 8; j++) {
                    const float w = weight[8 * k + j];
                    const float q = xxs[k][p[j]];
                    sqx += w * q * xb[8 * k + j];
                    sq2 += w * q * q;
                }
            }
            if (sqx > 0 && sq2 > 0) scale = sqx / sq2;
        }
        qs[2 * ib] = (uint8_t)(index[0] & 255);
        qs[2 * ib + 1] = (uint8_t)(index[1] & 255);
        qh[ib] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
        scales[ib] = scale;
        shifts[ib] = (int8_t)bk;
        max_scale = fmaxr(max_scale, scale);
    }
    if (!max_scale) return;
    float d = max_scale / 15;
    const float id = 1 / d;
    float sqx = 0, sq2 = 0;
    for (int ib = 0; ib < 16; ib++) {
        const int l = imax(0, imin(7, nint(0.5f * (id * scales[ib] - 1))));
        sc[ib / 4] |= (uint16_t)(l << 3 * (ib % 4));
        qh[ib] |= masks[shifts[ib]];
        const float *xb = xbl + 16 * ib;
        if (qwb) {
            const float *qw = qwb + 16 * ib;
            for (int i = 0; i < 16; i++) weight[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
        } else {
            for (int i = 0; i < 16; i++) weight[i] = xb[i] * xb[i];
        }
        for (int k = 0; k < 2; k++) {
            const float *xx = k == 0 ? (shifts[ib] < 2 ? XP : XM) : (shifts[ib] % 2 == 0 ? XP : XM);
            const int gi = qs[2 * ib + k] + ((qh[ib] << (8 - 4 * k)) & 0x700);
            const uint8_t *p = g->lev + 8 * (size_t)gi;
            for (int j = 0; j < 8; j++) {
                const float w = weight[8 * k + j];
                const float q = xx[p[j]] * (float)(2 * l + 1);
                sqx += w * q * xb[8 * k + j];
                sq2 += w * q * q;
            }
        }
    }
    if (sq2 > 0) d = sqx / sq2;
    const uint16_t s = f16b(d * 1.1125f);
    sc[0] |= (uint16_t)((s & 0x000f) << 12);
    sc[1] |= (uint16_t)((s & 0x00f0) << 8);
    sc[2] |= (uint16_t)((s & 0x0f00) << 4);
    sc[3] |= (uint16_t)(s & 0xf000);
    for (int i = 0; i < 4; i++) put16(y + 48 + 2 * i, sc[i]);
}

/* ------------------------------------------------------------------------------------------------------------ */

static int block_bytes(int type) {
    switch (type) {
    case GT_IQ2_XXS: return 66;
    case GT_IQ2_XS: return 74;
    case GT_IQ2_S: return 82;
    case GT_IQ1_S: return 50;
    case GT_IQ1_M: return 56;
    default: return 0;
    }
}

static void poison(int type, uint8_t *y) {
    memset(y, 0, (size_t)block_bytes(type));
    if (type == GT_IQ1_M) {
        const uint16_t s = 0x7E00u; /* the f16 scale's nibbles sit in the top nibble of each scales word */
        for (int i = 0; i < 4; i++) put16(y + 48 + 2 * i, (uint16_t)(((s >> 4 * i) & 0xF) << 12));
    } else {
        put16(y, 0x7E00u);
    }
}

/* one super-block; ssq: sum_sq of its 256 values */
static void quant_block(int type, const grid_t *g, const float *x, float ssq, const float *qw, uint8_t *y) {
    switch (type) {
    case GT_IQ2_XXS: iq2_xxs_block(g, x, ssq, qw, y); break;
    case GT_IQ2_XS: iq2_xs_s_block(g, 0, x, ssq, qw, y); break;
    case GT_IQ2_S: iq2_xs_s_block(g, 1, x, ssq, qw, y); break;
    case GT_IQ1_S: iq1_s_block(g, x, ssq, qw, y); break;
    default: iq1_m_block(g, x, ssq, qw, y); break;
    }
}

/* iquant_grid(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix, levels, kmap, neighbours,
 *        neighbour_codes, neighbours_size, ngrid)
 * -> flat index of the first non-finite value, or -1. imatrix: address of float32 (ncols,) or 0 for none (only
 * IQ2_S and IQ1_M; the caller refuses the others). levels/kmap/neighbours/neighbour_codes: kernels/iq_grids.py's
 * arrays. */
PyObject *l1q_py_iquant_grid(PyObject *self, PyObject *args) {
    int type, kind, ngrid;
    unsigned long long s, d, q, lv, mp, nb, nl;
    long long rows, ncols, stride, nbsize;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiLLKLKKKKKLi", &type, &s, &kind, &rows, &ncols, &d, &stride, &q, &lv, &mp, &nb,
                          &nl, &nbsize, &ngrid))
        return NULL;
    const int bytes = block_bytes(type);
    if (bytes == 0 || kind < SRC_F32 || kind > SRC_BF16 || rows < 0 || ncols < 0 || ncols % QK != 0) {
        PyErr_Format(PyExc_ValueError, "_fastq8.iquant_grid: unsupported type %d, bad kind or ncols not a multiple of 256",
                     type);
        return NULL;
    }
    if (q == 0 && type != GT_IQ2_S && type != GT_IQ1_M) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.iquant_grid: this type needs an importance matrix");
        return NULL;
    }
    /* the search's lanes (L1QUANT_IQUANT_ISA as for the IQ3/IQ4 kernels: portable and sse2 take the scalar loop,
     * avx2 the 8 lanes, avx512 the 16; unset or auto the widest this CPU runs). Every choice gives the same bytes
     * and the tests run each. */
    int vec = 0;
#if defined(IQ_CLONES)
    __builtin_cpu_init();
    const int have512 = __builtin_cpu_supports("avx512f"), have256 = __builtin_cpu_supports("avx2");
    vec = have512 ? 2 : have256;
#elif !(defined(__x86_64__) || defined(__i386__)) || defined(__AVX2__)
    const int have512 = 0, have256 = 1;
    vec = 1; /* built with vectors the 8 lanes run on, or not x86 (see grid_t.vec) */
#else
    const int have512 = 0, have256 = 0; /* x86's baseline without clones: the scalar loop */
#endif
    const char *isa = getenv("L1QUANT_IQUANT_ISA");
    if (isa != NULL && isa[0] != '\0' && strcmp(isa, "auto") != 0) {
        if (strcmp(isa, "portable") == 0 || strcmp(isa, "sse2") == 0) {
            vec = 0;
        } else if (strcmp(isa, "avx2") == 0 && have256) {
            vec = 1;
        } else if (strcmp(isa, "avx512") == 0 && have512) {
            vec = 2;
        } else {
            PyErr_Format(PyExc_ValueError,
                         "L1QUANT_IQUANT_ISA=%s: expected auto, portable, sse2, avx2 or avx512 (one this build and CPU run)",
                         isa);
            return NULL;
        }
    }
    if (rows == 0 || ncols == 0) return PyLong_FromLongLong(-1);
    int32_t *map3 = (int32_t *)malloc(6561 * sizeof(int32_t));
    if (map3 == NULL) return PyErr_NoMemory();
    for (int c = 0, u = 0; c < 6561; c++) {
        u = 0;
        for (int i = 0, r = c; i < 8; i++, r /= 3) u |= (r % 3) << 2 * i;
        map3[c] = ((const int32_t *)(uintptr_t)mp)[u];
    }
    grid_t g = {(const uint8_t *)(uintptr_t)lv, (const int32_t *)(uintptr_t)mp, (const uint16_t *)(uintptr_t)nb,
                (const uint16_t *)(uintptr_t)nl, (int64_t)nbsize, ngrid, vec, map3, 0};
#if defined(IQ_CLONES)
    g.vl = vec == 2 && __builtin_cpu_supports("avx512vl");
#endif
    const uint8_t *src = (const uint8_t *)(uintptr_t)s;
    uint8_t *dst = (uint8_t *)(uintptr_t)d;
    const float *qw = (const float *)(uintptr_t)q;
    const size_t esz = kind == SRC_F32 ? 4u : 2u;
    const int64_t nb_row = ncols / QK;
    int64_t first = -1;
    Py_BEGIN_ALLOW_THREADS
    float buf[4 * QK], ssq[4];
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t b0 = 0; b0 < nb_row; b0 += 4) {
            /* four super-blocks at a time, so that their sums of squares advance together (iqrun_sum_sq4) */
            const int nb = nb_row - b0 < 4 ? (int)(nb_row - b0) : 4;
            const uint8_t *p = src + ((size_t)r * (size_t)ncols + (size_t)b0 * QK) * esz;
            const float *xs;
            if (kind == SRC_F32) {
                xs = (const float *)p;
            } else {
                const uint16_t *h = (const uint16_t *)p;
                if (kind == SRC_BF16) { /* two loops: the bf16 one vectorizes */
                    for (int i = 0; i < nb * QK; i++) buf[i] = bits_to_f32((uint32_t)h[i] << 16);
                } else {
                    for (int i = 0; i < nb * QK; i++) buf[i] = bits_to_f32(f16_to_f32_bits(h[i]));
                }
                xs = buf;
            }
            iqrun_sum_sq4(xs, nb, ssq);
            for (int j = 0; j < nb; j++) {
                const int64_t b = b0 + j;
                const float *xb = xs + j * QK;
                uint8_t *y = dst + r * stride + b * bytes;
                const int bad = iqrun_first_nonfinite(xb, QK);
                if (bad >= 0) {
                    if (first < 0) first = r * ncols + b * QK + bad;
                    poison(type, y);
                    continue;
                }
                quant_block(type, &g, xb, ssq[j], qw ? qw + b * QK : NULL, y);
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(map3);
    return PyLong_FromLongLong(first);
}

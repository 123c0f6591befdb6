/*
 * l1quant.kernels._fastq8 (second source file): Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K, written to
 * give the same bytes as ggml's quantize_row_<type>_ref (the path llama-quantize takes without an importance
 * matrix; kquant()) and, with one, as its quantize_row_<type>_impl searches (kquant_imatrix(), at the end of the
 * file), plus l1quant's non-finite policy.
 *
 * Exactness: the results must match ggml-base built for baseline x86-64 (SSE2, no FMA), where every float
 * expression is evaluated in IEEE binary32, one rounding per operation, in source order. So this file is built with
 * -ffp-contract=off and without -ffast-math, keeps every sum sequential, and spells each expression with the same
 * operands in the same order as the reference computes it (a*b*c is (a*b)*c; an int operand is converted to float
 * first). Where the reference relies on x86 behaviour that C leaves undefined (float -> small int conversion of a
 * NaN/Inf/out-of-range value, int -> int8 narrowing), the helpers below state that behaviour explicitly.
 *
 * Several code paths give the same bytes, all checked against ggml by tests/test_kquants_native.py: portable C that
 * follows the reference value by value (what non-x86 builds run); on x86-64 with GCC/Clang, Q4_0..Q5_1 blocks as
 * SSE2 vectors, and the K-quants' group fits run 4, 8 or 16 groups per vector, one group per lane, written once
 * with vector extensions and compiled for baseline SSE2, AVX2 and AVX-512, picked at run time (see "Lane paths"
 * and "Paths" below, and L1QUANT_KQUANT_ISA in kernels/_native.py).
 *
 * Non-finite policy (l1quant's, not ggml's): a block holding a NaN or Inf is written as zero bytes with every f16
 * scale field (d, and m/dmin where the type has one) set to 0x7E00 (f16 NaN), so it dequantizes to NaN; the caller
 * gets the flat index of the first such value.
 *
 * Thread safety: no global state; each call works on stack buffers and runs with the GIL released.
 */
#ifndef KQ_LANE_BODY /* the file proper; the lane body further down is compiled by including this file into itself */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_halfconv.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Helpers that must be compiled inside each code path's instance (see the lane paths below). */
#if defined(__GNUC__) || defined(__clang__)
#define KQ_INLINE static inline __attribute__((always_inline))
#else
#define KQ_INLINE static inline
#endif

/* GGML type numbers (gguf.GGMLQuantizationType). */
enum {
    GT_Q4_0 = 2,
    GT_Q4_1 = 3,
    GT_Q5_0 = 6,
    GT_Q5_1 = 7,
    GT_Q2_K = 10,
    GT_Q3_K = 11,
    GT_Q4_K = 12,
    GT_Q5_K = 13,
    GT_Q6_K = 14,
};

enum { SRC_F32 = 0, SRC_F16 = 1, SRC_BF16 = 2 };
enum { SUPER = 256 }; /* QK_K: values per K-quant super-block */

/* Threshold below which ggml treats a group's largest magnitude as zero (GROUP_MAX_EPS). */
#define TINY_GROUP 1e-15f

/* ------------------------------------------------------------------------------------------------------------ */
/* Scalar helpers that pin down the reference's arithmetic */

/* Round to nearest, ties to even, by adding 1.5 * 2**23 and reading the low mantissa bits. This is ggml's own
 * trick, reproduced as bit operations (not lrintf) so that out-of-range, Inf and NaN arguments, which finite but
 * extreme inputs can produce, give the same garbage ggml gets. */
static inline int round_magic(float f) {
    const uint32_t u = f32_to_bits(f + 12582912.0f);
    return (int)(u & 0x007FFFFFu) - 0x00400000;
}

/* float -> int32 with x86 cvttss2si semantics: truncation toward zero, and INT32_MIN (the "integer indefinite"
 * value) for NaN and anything outside int32. The reference's (int8_t)/(uint8_t) casts of a float compile to this
 * instruction followed by taking the low byte; the casts are undefined in C for NaN/Inf, which appear when a
 * subnormal block scale makes 1/d overflow. */
static inline int32_t trunc_x86(float f) {
    if (f >= -2147483648.0f && f < 2147483648.0f) return (int32_t)f;
    return INT32_MIN;
}

/* int -> int8_t keeping the low byte as two's complement (what GCC does; C calls it implementation-defined). */
static inline int wrap_i8(int v) { return (int)(((unsigned)v & 0xFFu) ^ 0x80u) - 0x80; }

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline void put_f16(uint8_t *p, uint16_t h) {
    p[0] = (uint8_t)(h & 0xFFu);
    p[1] = (uint8_t)(h >> 8);
}

/* f32 -> f16 bits (RNE, as GGML_FP32_TO_FP16) and the f32 value those bits decode to (GGML_FP16_TO_FP32): the
 * reference rescales its quants with the scale as stored, not as computed. */
static inline uint16_t half_of(float f) { return f32_to_f16_bits(f32_to_bits(f)); }
static inline float half_value(uint16_t h) { return bits_to_f32(f16_to_f32_bits(h)); }

/* ------------------------------------------------------------------------------------------------------------ */
/* SSE2 helpers (baseline x86-64) for the Q4_0..Q5_1 vector path below.
 *
 * SSE2 packed add/sub/mul/div/sqrt round each lane exactly as the scalar instructions do, the comparisons are the
 * same IEEE predicates, and cvttps2dq is the cvttss2si conversion per lane; so a lane can follow the reference's
 * scalar computation bit for bit. Its branches become per-lane selects (computing a value and then discarding it
 * changes nothing: FP exceptions do not trap). */

#if defined(__SSE2__) && !defined(L1Q_NO_LANES)
#include <emmintrin.h>
#define KQ_HAVE_LANES 1

typedef __m128 f4;
typedef __m128i i4;

static inline i4 sel_i4(i4 m, i4 a, i4 b) { return _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b)); }
static inline f4 abs_f4(f4 v) { return _mm_and_ps(v, _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF))); }
#endif /* SSE2 helpers */

/* ------------------------------------------------------------------------------------------------------------ */
/* 32-value formats: Q4_0, Q4_1, Q5_0, Q5_1 (block sizes 18, 20, 22, 24 bytes) */

/* Each block is reduced to 32 one-byte codes (the reference's xi values, as it holds them in a uint8_t) and then
 * packed: the low nibbles of codes j and j+16 share byte j; Q5_0/Q5_1 also keep bit 4 of code j in bit j of a
 * little-endian u32. */

/* Q4_0/Q4_1 pack `xi0 | (xi1 << 4)` without masking xi0, like the reference (the codes are <= 15 anyway). */
static inline void pack_q4_codes(const uint8_t *c, uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(c[j] | (c[j + 16] << 4));
}

static inline void pack_q5_codes(const uint8_t *c, uint8_t *qh, uint8_t *qs) {
    uint32_t high = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((c[j] & 0x0Fu) | ((c[j + 16] & 0x0Fu) << 4));
        high |= (uint32_t)((c[j] >> 4) & 1u) << j;
        high |= (uint32_t)((c[j + 16] >> 4) & 1u) << (j + 16);
    }
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(high >> (8 * k));
}

/* The signed value of largest magnitude (the first one on ties; +0 for an all-zero block). */
static inline float signed_peak32(const float *x) {
    float amax = 0.0f, peak = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            peak = x[j];
        }
    }
    return peak;
}

static inline void lo_hi32(const float *x, float *lo, float *hi) {
    float a = FLT_MAX, b = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < a) a = x[j];
        if (x[j] > b) b = x[j];
    }
    *lo = a;
    *hi = b;
}

/* Symmetric types (Q4_0: nmax 8, Q5_0: nmax 16): d = peak / -nmax, code = MIN(2*nmax - 1, (int8_t)(x/d + nmax + .5)).
 * Affine types (Q4_1: 15 steps, Q5_1: 31): d = (hi - lo) / steps, code = (x - lo)/d + .5 converted to int8_t and
 * capped at 15 (Q4_1) or converted to uint8_t uncapped (Q5_1). "/d" is "* (1/d)", or * 0 when d == 0. */
static inline void codes_symmetric(const float *x, float inv, float bias, int cap, uint8_t *c) {
    for (int j = 0; j < 32; j++) {
        const int v = wrap_i8(trunc_x86(x[j] * inv + bias));
        c[j] = (uint8_t)(v < cap ? v : cap);
    }
}

static inline void codes_affine(const float *x, float lo, float inv, int cap, uint8_t *c) {
    for (int j = 0; j < 32; j++) {
        const int32_t t = trunc_x86((x[j] - lo) * inv + 0.5f);
        if (cap < 0) {
            c[j] = (uint8_t)t; /* (uint8_t) of the float: low byte */
        } else {
            const int v = wrap_i8(t);
            c[j] = (uint8_t)(v < cap ? v : cap);
        }
    }
}

#ifdef KQ_HAVE_LANES
/* The same four steps on SSE2 vectors: v[k] holds x[4k .. 4k+3]. */

static inline f4 hmax_f4(f4 m) {
    m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
}

static inline f4 hmin_f4(f4 m) {
    m = _mm_min_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_min_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
}

/* signed_peak32: the largest magnitude by a max-reduction, then the first element that has it. */
static inline float signed_peak32_v(const float *x, const f4 *v) {
    f4 m = abs_f4(v[0]);
    for (int k = 1; k < 8; k++) m = _mm_max_ps(m, abs_f4(v[k]));
    m = hmax_f4(m);
    if (!(_mm_cvtss_f32(m) > 0.0f)) return 0.0f; /* all zeros: the reference keeps its +0 start */
    unsigned hit = 0;
    for (int k = 0; k < 8; k++) hit |= (unsigned)_mm_movemask_ps(_mm_cmpeq_ps(abs_f4(v[k]), m)) << (4 * k);
    return x[__builtin_ctz(hit)];
}

/* lo_hi32 by reductions. The reference keeps the first element that reaches the extreme; only for a zero extreme
 * does it matter which (+0 or -0), so that case looks the first zero up. */
static inline void lo_hi32_v(const float *x, const f4 *v, float *lo, float *hi) {
    f4 a = v[0], b = v[0];
    for (int k = 1; k < 8; k++) {
        a = _mm_min_ps(a, v[k]);
        b = _mm_max_ps(b, v[k]);
    }
    float l = _mm_cvtss_f32(hmin_f4(a)), h = _mm_cvtss_f32(hmax_f4(b));
    if (l == 0.0f || h == 0.0f) {
        float z = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (x[j] == 0.0f) {
                z = x[j];
                break;
            }
        }
        if (l == 0.0f) l = z;
        if (h == 0.0f) h = z;
    }
    *lo = l;
    *hi = h;
}

/* (int8_t) of the float (cvttps2dq, low byte, sign-extended), MIN(cap, .), as a uint8_t. */
static inline i4 code_capped(f4 v, int cap) {
    i4 t = _mm_cvttps_epi32(v);
    t = _mm_srai_epi32(_mm_slli_epi32(t, 24), 24);
    t = sel_i4(_mm_cmpgt_epi32(t, _mm_set1_epi32(cap)), _mm_set1_epi32(cap), t);
    return _mm_and_si128(t, _mm_set1_epi32(0xFF));
}

/* Sixteen 32-bit lanes holding 0..255 -> 16 bytes. */
static inline i4 to_bytes(const i4 *c) {
    return _mm_packus_epi16(_mm_packs_epi32(c[0], c[1]), _mm_packs_epi32(c[2], c[3]));
}

static inline void pack_q4_codes_v(const i4 *c, uint8_t *qs) {
    const i4 lo = to_bytes(c), hi = to_bytes(c + 4);
    const i4 hi4 = _mm_and_si128(_mm_slli_epi16(hi, 4), _mm_set1_epi8((char)0xF0));
    _mm_storeu_si128((i4 *)qs, _mm_or_si128(lo, hi4));
}

static inline void pack_q5_codes_v(const i4 *c, uint8_t *qh, uint8_t *qs) {
    const i4 lo = to_bytes(c), hi = to_bytes(c + 4);
    const i4 nib = _mm_set1_epi8(0x0F);
    _mm_storeu_si128((i4 *)qs, _mm_or_si128(_mm_and_si128(lo, nib), _mm_slli_epi16(_mm_and_si128(hi, nib), 4)));
    /* bit 4 of every byte moved to bit 7, where movemask picks it up */
    const uint32_t high = (uint32_t)_mm_movemask_epi8(_mm_slli_epi16(lo, 3)) |
                          ((uint32_t)_mm_movemask_epi8(_mm_slli_epi16(hi, 3)) << 16);
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(high >> (8 * k));
}

static inline void load32(const float *x, f4 *v) {
    for (int k = 0; k < 8; k++) v[k] = _mm_loadu_ps(x + 4 * k);
}
#endif /* KQ_HAVE_LANES */

/* Q4_0: matches quantize_row_q4_0_ref. Layout: f16 d | 16 bytes of nibbles (value j low, value j+16 high). */
static void blk_q4_0(const float *x, uint8_t *y, int lanes) {
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[8];
        i4 c[8];
        load32(x, v);
        const float d = signed_peak32_v(x, v) / -8.0f;
        const f4 inv = _mm_set1_ps(d != 0.0f ? 1.0f / d : 0.0f), bias = _mm_set1_ps(8.5f);
        put_f16(y, half_of(d));
        for (int k = 0; k < 8; k++) c[k] = code_capped(_mm_add_ps(_mm_mul_ps(v[k], inv), bias), 15);
        pack_q4_codes_v(c, y + 2);
        return;
    }
#endif
    (void)lanes;
    uint8_t c[32];
    const float d = signed_peak32(x) / -8.0f;
    put_f16(y, half_of(d));
    codes_symmetric(x, d != 0.0f ? 1.0f / d : 0.0f, 8.5f, 15, c);
    pack_q4_codes(c, y + 2);
}

/* Q4_1: matches quantize_row_q4_1_ref. Layout: f16 d | f16 m | 16 bytes of nibbles. */
static void blk_q4_1(const float *x, uint8_t *y, int lanes) {
    float lo, hi;
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[8];
        i4 c[8];
        load32(x, v);
        lo_hi32_v(x, v, &lo, &hi);
        const float d = (hi - lo) / 15.0f;
        const f4 inv = _mm_set1_ps(d != 0.0f ? 1.0f / d : 0.0f), vlo = _mm_set1_ps(lo), half = _mm_set1_ps(0.5f);
        put_f16(y, half_of(d));
        put_f16(y + 2, half_of(lo));
        for (int k = 0; k < 8; k++) c[k] = code_capped(_mm_add_ps(_mm_mul_ps(_mm_sub_ps(v[k], vlo), inv), half), 15);
        pack_q4_codes_v(c, y + 4);
        return;
    }
#endif
    (void)lanes;
    uint8_t c[32];
    lo_hi32(x, &lo, &hi);
    const float d = (hi - lo) / 15.0f;
    put_f16(y, half_of(d));
    put_f16(y + 2, half_of(lo));
    codes_affine(x, lo, d != 0.0f ? 1.0f / d : 0.0f, 15, c);
    pack_q4_codes(c, y + 4);
}

/* Q5_0: matches quantize_row_q5_0_ref. Layout: f16 d | u32 LE fifth bits (bit j: value j) | 16 bytes of nibbles. */
static void blk_q5_0(const float *x, uint8_t *y, int lanes) {
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[8];
        i4 c[8];
        load32(x, v);
        const float d = signed_peak32_v(x, v) / -16.0f;
        const f4 inv = _mm_set1_ps(d != 0.0f ? 1.0f / d : 0.0f), bias = _mm_set1_ps(16.5f);
        put_f16(y, half_of(d));
        for (int k = 0; k < 8; k++) c[k] = code_capped(_mm_add_ps(_mm_mul_ps(v[k], inv), bias), 31);
        pack_q5_codes_v(c, y + 2, y + 6);
        return;
    }
#endif
    (void)lanes;
    uint8_t c[32];
    const float d = signed_peak32(x) / -16.0f;
    put_f16(y, half_of(d));
    codes_symmetric(x, d != 0.0f ? 1.0f / d : 0.0f, 16.5f, 31, c);
    pack_q5_codes(c, y + 2, y + 6);
}

/* Q5_1: matches quantize_row_q5_1_ref. Layout: f16 d | f16 m | u32 LE fifth bits | 16 bytes of nibbles. */
static void blk_q5_1(const float *x, uint8_t *y, int lanes) {
    float lo, hi;
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[8];
        i4 c[8];
        load32(x, v);
        lo_hi32_v(x, v, &lo, &hi);
        const float d = (hi - lo) / 31.0f;
        const f4 inv = _mm_set1_ps(d != 0.0f ? 1.0f / d : 0.0f), vlo = _mm_set1_ps(lo), half = _mm_set1_ps(0.5f);
        put_f16(y, half_of(d));
        put_f16(y + 2, half_of(lo));
        for (int k = 0; k < 8; k++) /* (uint8_t) of the float: the low byte of cvttps2dq */
            c[k] = _mm_and_si128(_mm_cvttps_epi32(_mm_add_ps(_mm_mul_ps(_mm_sub_ps(v[k], vlo), inv), half)),
                                 _mm_set1_epi32(0xFF));
        pack_q5_codes_v(c, y + 4, y + 8);
        return;
    }
#endif
    (void)lanes;
    uint8_t c[32];
    lo_hi32(x, &lo, &hi);
    const float d = (hi - lo) / 31.0f;
    put_f16(y, half_of(d));
    put_f16(y + 2, half_of(lo));
    codes_affine(x, lo, d != 0.0f ? 1.0f / d : 0.0f, -1, c);
    pack_q5_codes(c, y + 4, y + 8);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Group fits used by the K-quants, one group at a time (the portable path) */

enum { MAX_GROUPS = 32 }; /* the most groups one call fits: a lane batch (see "Lane paths") */

/* Affine fits of up to MAX_GROUPS groups (ggml's make_qkx2_quants). Besides scale and offset each keeps the trial
 * its levels came from: level i = clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax), or 0 for a constant group.
 * The encoders keep the fit's levels only for a group whose stored scale is 0 and recompute them from these two
 * numbers (same operations, same values), so the searches never copy levels around. */
typedef struct {
    float scale[MAX_GROUPS], neg_min[MAX_GROUPS]; /* x ~ scale * level - neg_min */
    float iscale[MAX_GROUPS], lo[MAX_GROUPS];      /* the chosen trial */
    int32_t flat[MAX_GROUPS];                      /* nonzero: max == min, levels 0 and scale 0 */
} affine_fits;

/* Symmetric fits of up to MAX_GROUPS 16-value groups to -32..31 (make_qx_quants, Q6_K): level i =
 * clamp(nearest_int(iscale * x[i]), -32, 31) + 32, or 0 (and scale 0) for a (near) all-zero group. */
typedef struct {
    float scale[MAX_GROUPS], iscale[MAX_GROUPS];
    int32_t tiny[MAX_GROUPS];
} qx_fits;

static inline void affine_levels(const affine_fits *f, int g, const float *x, int n, int nmax, uint8_t *L) {
    for (int i = 0; i < n; i++)
        L[i] = f->flat[g] ? 0 : (uint8_t)clampi(round_magic(f->iscale[g] * (x[i] - f->lo[g])), 0, nmax);
}

static inline void qx_levels(const qx_fits *f, int g, const float *x, int8_t *L) {
    for (int i = 0; i < 16; i++)
        L[i] = f->tiny[g] ? 0 : (int8_t)(clampi(round_magic(f->iscale[g] * x[i]), -32, 31) + 32);
}

/* Affine fit of one group of n values to levels 0..nmax with weights w, into fits[g]. Same search as ggml's
 * make_qkx2_quants: a first guess from the group's range, then nstep+1 trial scales (rmin + rdelta*is + nmax) /
 * (max - min) each refined by weighted least squares, keeping the fit of smallest weighted error (absolute if
 * use_abs, else squared). The offset `lo` is updated as better fits are found and later trials use the updated
 * value, as in the reference. Inlined with constant arguments so each caller gets its own specialized loop. */
static inline void fit_affine(int n, int nmax, const float *restrict x, const float *restrict w, float rmin,
                              float rdelta, int nstep, int use_abs, affine_fits *out, int g) {
    uint8_t trial[32];
    float lo = x[0], hi = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    out->flat[g] = hi == lo;
    if (hi == lo) {
        out->scale[g] = 0.0f;
        out->neg_min[g] = -lo;
        out->iscale[g] = out->lo[g] = 0.0f;
        return;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale;
    float best_err = 0, best_iscale = iscale, best_lo = lo;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_magic(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * (float)l + lo - x[i];
        diff = use_abs ? fabsf(diff) : diff * diff;
        best_err += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(round_magic(iscale * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            const float wl = w[i] * (float)l;
            sum_l += wl;
            sum_l2 += wl * (float)l;
            sum_xl += wl * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det > 0) {
            float t_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            float t_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if (t_min > 0) {
                t_min = 0;
                t_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = t_scale * (float)trial[i] + t_min - x[i];
                diff = use_abs ? fabsf(diff) : diff * diff;
                err += w[i] * diff;
            }
            if (err < best_err) {
                best_err = err;
                scale = t_scale;
                best_iscale = iscale;
                best_lo = lo;
                lo = t_min;
            }
        }
    }
    out->scale[g] = scale;
    out->neg_min[g] = -lo;
    out->iscale[g] = best_iscale;
    out->lo[g] = best_lo;
}

/* The signed value of largest magnitude among n (first on ties) and that magnitude. */
static inline float signed_peak(int n, const float *x, float *amax_out) {
    float amax = 0, peak = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            peak = x[i];
        }
    }
    *amax_out = amax;
    return peak;
}

/* Symmetric fit of 16 values to signed levels -4..3 (stored +4 in L), weights x*x, refined by coordinate descent:
 * ggml's make_q3_quants with nmax = 4 and do_rmse. An all-(near)-zero group gets L = 0 and scale 0. */
static float fit_q3_group(const float *restrict x, int8_t *restrict L) {
    float amax;
    const float peak = signed_peak(16, x, &amax);
    if (amax < TINY_GROUP) {
        memset(L, 0, 16);
        return 0.0f;
    }
    const float iscale = -4.0f / peak;
    float w[16], wx[16]; /* x*x and (x*x)*x, as the reference recomputes them each time */
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        const int l = clampi(round_magic(iscale * x[i]), -4, 3);
        L[i] = (int8_t)l;
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
        sumlx += wx[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < 16; i++) {
            float slx = sumlx - wx[i] * (float)L[i];
            if (slx > 0) {
                float sl2 = suml2 - w[i] * (float)L[i] * (float)L[i];
                const int nl = clampi(round_magic(x[i] * sl2 / slx), -4, 3);
                if (nl != L[i]) {
                    slx += wx[i] * (float)nl;
                    sl2 += w[i] * (float)nl * (float)nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        ++changed;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < 16; i++) L[i] = (int8_t)(L[i] + 4);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Symmetric fit of 16 values to signed levels -32..31, weights x*x, by trying 19 scales, into fits[g]: ggml's
 * make_qx_quants with nmax = 32, rmse_type = 1 and no importance weights. */
static void fit_q6_group(const float *restrict x, qx_fits *out, int g) {
    float amax;
    const float peak = signed_peak(16, x, &amax);
    out->tiny[g] = amax < TINY_GROUP;
    if (amax < TINY_GROUP) {
        out->scale[g] = out->iscale[g] = 0.0f;
        return;
    }
    float w[16], wx[16];
    float iscale = -32.0f / peak, best_iscale = iscale;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        const int l = clampi(round_magic(iscale * x[i]), -32, 31);
        w[i] = x[i] * x[i];
        wx[i] = w[i] * x[i];
        sumlx += wx[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(32.0f + 0.1f * (float)is) / peak;
        sumlx = suml2 = 0;
        for (int i = 0; i < 16; i++) {
            const int l = clampi(round_magic(iscale * x[i]), -32, 31);
            sumlx += wx[i] * (float)l;
            suml2 += w[i] * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            scale = sumlx / suml2;
            best = scale * sumlx;
            best_iscale = iscale;
        }
    }
    out->scale[g] = scale;
    out->iscale[g] = best_iscale;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* K-quant super-blocks (256 values): from the group fits to the block's bytes. Shared by both paths and inlined
 * into each, so the lane instances compile (and vectorize) them for their own instruction set. */

/* Pack four 2-bit planes: byte l of each 32-byte run holds values l, l+32, l+64, l+96 of a 128-value half. */
KQ_INLINE void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *s = L + 128 * h;
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(s[l] | (s[l + 32] << 2) | (s[l + 64] << 4) | (s[l + 96] << 6));
    }
}

/* Levels of n values against a stored scale d and offset dm: clamp(nearest_int((x + dm) / d), 0, nmax). */
KQ_INLINE void affine_requant(const float *x, int n, float d, float dm, int nmax, uint8_t *L) {
#pragma GCC unroll 1
    for (int i = 0; i < n; i++) L[i] = (uint8_t)clampi(round_magic((x[i] + dm) / d), 0, nmax);
}

/* Levels of 16 values against a stored scale d: clamp(nearest_int(x / d), lo, hi) - lo. (A loop of its own, as
 * affine_requant, so that the compiler vectorizes it.) */
KQ_INLINE void symmetric_requant(const float *x, float d, int lo, int hi, int8_t *L) {
#pragma GCC unroll 1
    for (int i = 0; i < 16; i++) L[i] = (int8_t)(clampi(round_magic(x[i] / d), lo, hi) - lo);
}

/* Q2_K: matches quantize_row_q2_K_ref.
 * Layout (84 bytes): scales[16] (low nibble scale, high nibble min) | qs[64] | f16 d | f16 dmin. */
KQ_INLINE void q2_k_encode(const float *x, uint8_t *y, const affine_fits *f, int g0) {
    const float *scales = f->scale + g0, *mins = f->neg_min + g0;
    uint8_t L[SUPER];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t *sc = y, *qs = y + 16;
    uint16_t d16 = 0, m16 = 0; /* f16 of 0.f */
    if (max_scale > 0) {
        const float iscale = 15.0f / max_scale;
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)round_magic(iscale * scales[j]);
        d16 = half_of(max_scale / 15.0f);
    } else {
        memset(sc, 0, 16);
    }
    if (max_min > 0) {
        const float iscale = 15.0f / max_min;
        for (int j = 0; j < 16; j++) sc[j] = (uint8_t)(sc[j] | ((unsigned)round_magic(iscale * mins[j]) << 4));
        m16 = half_of(max_min / 15.0f);
    }
    put_f16(y + 80, d16);
    put_f16(y + 82, m16);
    const float dd = half_value(d16), dm_all = half_value(m16);
    float d[16];
    for (int j = 0; j < 16; j++) {
        d[j] = dd * (float)(sc[j] & 0xF);
        affine_requant(x + 16 * j, 16, d[j], dm_all * (float)(sc[j] >> 4), 3, L + 16 * j); /* garbage if d == 0 */
    }
    for (int j = 0; j < 16; j++)
        if (d[j] == 0.0f) affine_levels(f, g0 + j, x + 16 * j, 16, 3, L + 16 * j); /* keep the fit's levels */
    pack_2bit(L, qs);
}

/* Q3_K: matches quantize_row_q3_K_ref.
 * Layout (110 bytes): hmask[32] (bit b of byte m: high bit of value 32*b + m) | qs[64] (low 2 bits, as Q2_K) |
 * scales[12] (16 six-bit signed scales, +32: low nibbles in bytes 0..7, high 2-bit pairs in bytes 8..11) | f16 d.
 * fitL: the fits' levels (0..7), value i of group j at fitL[j * sg + i * si]. */
KQ_INLINE void q3_k_encode(const float *x, uint8_t *y, const float *scales, const int8_t *fitL, int si, int sg) {
    int8_t L[SUPER];
    int lev[16]; /* the 6-bit codes written to the scales field, 0..63 */
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        const float a = fabsf(scales[j]);
        if (a > amax) {
            amax = a;
            max_scale = scales[j];
        }
    }
    uint8_t *hmask = y, *qs = y + 32, *sc = y + 96;
    memset(sc, 0, 12);
    uint16_t d16 = 0;
    if (max_scale != 0.0f) {
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) {
            /* int8_t l = nearest_int(.); clamped to -32..31 and offset by 32 */
            const int l = clampi(wrap_i8(round_magic(iscale * scales[j])), -32, 31) + 32;
            lev[j] = l;
            if (j < 8)
                sc[j] = (uint8_t)(l & 0xF);
            else
                sc[j - 8] = (uint8_t)(sc[j - 8] | ((l & 0xF) << 4));
            sc[8 + j % 4] = (uint8_t)(sc[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
        }
        d16 = half_of(1.0f / iscale);
    } else {
        for (int j = 0; j < 16; j++) lev[j] = 0;
    }
    put_f16(y + 108, d16);
    const float dd = half_value(d16);
    float d[16];
    for (int j = 0; j < 16; j++) {
        d[j] = dd * (float)(lev[j] - 32);
        symmetric_requant(x + 16 * j, d[j], -4, 3, L + 16 * j); /* garbage where d == 0, replaced below */
    }
    for (int j = 0; j < 16; j++)
        if (d[j] == 0.0f)
            for (int i = 0; i < 16; i++) L[16 * j + i] = fitL[j * sg + i * si]; /* keep the fit's levels */
    /* levels 0..7: value j's bit 2 goes to bit j/32 of hmask[j%32] (the reference's `if (L > 3)`, subtracting 4),
     * its low two bits to qs; written without branches so that it vectorizes */
    uint8_t lo2[SUPER];
    memset(hmask, 0, 32);
    for (int b = 0; b < 8; b++)
        for (int m = 0; m < 32; m++) hmask[m] = (uint8_t)(hmask[m] | (((unsigned)L[32 * b + m] >> 2) << b));
    for (int j = 0; j < SUPER; j++) lo2[j] = (uint8_t)(L[j] & 3);
    pack_2bit(lo2, qs);
}

/* Shared by Q4_K and Q5_K: from the eight 32-value affine fits f[g0 .. g0+7] (weights av + |x|, av = RMS of the
 * group), 6-bit codes for scales and mins against two f16 super-scales, then the levels recomputed with the stored
 * scales. Writes d, dmin and the 12 scale bytes at y[0..15]; returns the levels (0..nmax) in L. */
KQ_INLINE void kx_encode(const float *x, uint8_t *y, const affine_fits *f, int g0, int nmax, uint8_t *L) {
    const float *scales = f->scale + g0, *mins = f->neg_min + g0;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8];
    uint8_t *sc = y + 4;
    for (int j = 0; j < 8; j++) {
        /* uint8_t ls = nearest_int(.); then MIN(63, ls) */
        ls[j] = (uint8_t)round_magic(inv_scale * scales[j]);
        lm[j] = (uint8_t)round_magic(inv_min * mins[j]);
        if (ls[j] > 63) ls[j] = 63;
        if (lm[j] > 63) lm[j] = 63;
    }
    /* 12-byte packing: groups 0..3 keep 6 bits in bytes 0..3 (scale) and 4..7 (min); groups 4..7 put their low
     * nibbles in bytes 8..11 and their top 2 bits in bits 6..7 of bytes 0..7. */
    for (int j = 0; j < 4; j++) {
        sc[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        sc[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        sc[j + 8] = (uint8_t)((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
    }
    const uint16_t d16 = half_of(max_scale / 63.0f), m16 = half_of(max_min / 63.0f);
    put_f16(y, d16);
    put_f16(y + 2, m16);
    const float dd = half_value(d16), dm_all = half_value(m16);
    float d[8];
    for (int j = 0; j < 8; j++) {
        d[j] = dd * (float)ls[j];
        affine_requant(x + 32 * j, 32, d[j], dm_all * (float)lm[j], nmax, L + 32 * j); /* garbage if d == 0 */
    }
    for (int j = 0; j < 8; j++)
        if (d[j] == 0.0f) affine_levels(f, g0 + j, x + 32 * j, 32, nmax, L + 32 * j); /* keep the fit's levels */
}

/* Q4_K: matches quantize_row_q4_K_ref.
 * Layout (144 bytes): f16 d | f16 dmin | scales[12] | qs[128] (byte l of run r: value 64r+l low, 64r+32+l high). */
KQ_INLINE void q4_k_encode(const float *x, uint8_t *y, const affine_fits *f, int g0) {
    uint8_t L[SUPER];
    kx_encode(x, y, f, g0, 15, L);
    uint8_t *q = y + 16;
    for (int r = 0; r < 4; r++)
        for (int l = 0; l < 32; l++) q[32 * r + l] = (uint8_t)(L[64 * r + l] | (L[64 * r + 32 + l] << 4));
}

/* Q5_K: matches quantize_row_q5_K_ref.
 * Layout (176 bytes): f16 d | f16 dmin | scales[12] | qh[32] (bits 2r, 2r+1: fifth bit of values 64r+l,
 * 64r+32+l) | qs[128] (low nibbles, as Q4_K). */
KQ_INLINE void q5_k_encode(const float *x, uint8_t *y, const affine_fits *f, int g0) {
    uint8_t L[SUPER];
    kx_encode(x, y, f, g0, 31, L);
    uint8_t *qh = y + 16, *q = y + 48;
    memset(qh, 0, 32);
    for (int r = 0; r < 4; r++) {
        for (int l = 0; l < 32; l++) {
            const unsigned a = L[64 * r + l], b = L[64 * r + 32 + l];
            qh[l] = (uint8_t)(qh[l] | ((a >> 4) << (2 * r)) | ((b >> 4) << (2 * r + 1)));
            q[32 * r + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        }
    }
}

/* Q6_K: matches quantize_row_q6_K_ref.
 * Layout (210 bytes): ql[128] (low nibbles) | qh[64] (top 2 bits) | int8 scales[16] | f16 d. Within each
 * 128-value half, byte l of ql holds values l and l+64 and byte l+32 values l+32 and l+96; qh byte l holds the
 * top bits of values l, l+32, l+64, l+96. */
KQ_INLINE void q6_k_encode(const float *x, uint8_t *y, const qx_fits *f, int g0) {
    const float *scales = f->scale + g0;
    int8_t L[SUPER];
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; j++) {
        const float a = fabsf(scales[j]);
        if (a > max_abs) {
            max_abs = a;
            max_scale = scales[j];
        }
    }
    if (max_abs < TINY_GROUP) { /* the reference clears the whole block; f16 0 is all-zero bits too */
        memset(y, 0, 210);
        return;
    }
    const float iscale = -128.0f / max_scale;
    const uint16_t d16 = half_of(1.0f / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int j = 0; j < 16; j++) {
        const int l = round_magic(iscale * scales[j]);
        sc[j] = (int8_t)wrap_i8(l < 127 ? l : 127);
    }
    put_f16(y + 208, d16);
    const float dd = half_value(d16);
    float d[16];
    for (int j = 0; j < 16; j++) {
        d[j] = dd * (float)sc[j];
        symmetric_requant(x + 16 * j, d[j], -32, 31, L + 16 * j); /* garbage where d == 0, replaced below */
    }
    for (int j = 0; j < 16; j++)
        if (d[j] == 0.0f) qx_levels(f, g0 + j, x + 16 * j, L + 16 * j); /* keep the fit's levels */
    uint8_t *ql = y, *qh = y + 128;
    for (int h = 0; h < 2; h++) {
        const int8_t *s = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            const unsigned a = (uint8_t)s[l], b = (uint8_t)s[l + 32], c = (uint8_t)s[l + 64], e = (uint8_t)s[l + 96];
            ql[64 * h + l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
            ql[64 * h + l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
    }
}

/* Portable path: one super-block, one group at a time. */

/* Q4_K/Q5_K fits: weights av + |x| with av the group's RMS (sum_x2 in order from 0, then sqrtf(sum_x2 / 32)). */
static inline void kx_fit(const float *x, int nmax, float rmin, int nstep, affine_fits *f) {
    for (int j = 0; j < 8; j++) {
        float w[32];
        const float *g = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += g[l] * g[l];
        const float av = sqrtf(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++) w[l] = av + fabsf(g[l]);
        fit_affine(32, nmax, g, w, rmin, 0.1f, nstep, 0, f, j);
    }
}

static void q2_k_portable(const float *x, uint8_t *y) {
    affine_fits f;
    for (int j = 0; j < 16; j++) {
        float w[16];
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        fit_affine(16, 3, x + 16 * j, w, -0.5f, 0.1f, 15, 1, &f, j);
    }
    q2_k_encode(x, y, &f, 0);
}

static void q3_k_portable(const float *x, uint8_t *y) {
    int8_t L[SUPER];
    float scales[16];
    for (int j = 0; j < 16; j++) scales[j] = fit_q3_group(x + 16 * j, L + 16 * j);
    q3_k_encode(x, y, scales, L, 1, 16);
}

static void q4_k_portable(const float *x, uint8_t *y) {
    affine_fits f;
    kx_fit(x, 15, -1.0f, 20, &f);
    q4_k_encode(x, y, &f, 0);
}

static void q5_k_portable(const float *x, uint8_t *y) {
    affine_fits f;
    kx_fit(x, 31, -0.5f, 15, &f);
    q5_k_encode(x, y, &f, 0);
}

static void q6_k_portable(const float *x, uint8_t *y) {
    qx_fits f;
    for (int j = 0; j < 16; j++) fit_q6_group(x + 16 * j, &f, j);
    q6_k_encode(x, y, &f, 0);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Lane paths: the K-quants' group fits, several groups at a time, one group per lane
 *
 * The lane body (further down, between "#ifdef KQ_LANE_BODY" and its #endif) is written once with GCC/Clang vector
 * extensions over vectors of LANES floats plus a small kit of intrinsics (min/max, rounding, masks), and this file
 * includes itself to compile it three times, once per instruction set, each with native-width vectors (wider
 * vector types would have their comparisons split into scalar code) and its own target attribute:
 *   sse2    baseline x86-64, LANES 4        avx2    target("avx2"), LANES 8
 *   avx512  target("avx512f,avx512bw,avx512vl"), LANES 16
 * each with NV = 2 vectors in flight. Each instance defines the entry points q2_k_<isa> .. q6_k_<isa> that the
 * formats table uses; the row driver picks one at run time (path_available: __builtin_cpu_supports), so the
 * module still loads and runs on baseline x86-64. None of the targets enables FMA (and -ffp-contract=off keeps
 * every a*b+c two roundings in any case; tests/test_kquants_native.py checks the binary for FMA instructions). The
 * encoders above are always_inline, so each instance compiles (and auto-vectorizes) them for its target too.
 *
 * One call of an entry point fits BATCH = max(16, NV * LANES) groups: one or two super-blocks of 16 groups (Q2_K,
 * Q3_K, Q6_K) or two or four of 8 groups (Q4_K, Q5_K); the row driver pads a short last batch with zero blocks.
 *
 * Exactness: vector add/sub/mul/div/sqrt are lane by lane the IEEE operations of the scalar code, comparisons are
 * the same predicates (false on NaN), minps/maxps are exactly `a < b ? a : b` / `a > b ? a : b`, conversions of
 * small exact integers are exact. Lane g follows group g's computation in the reference's order (running sums stay
 * sequential within a lane); a branch becomes a select of values both sides computed (FP exceptions do not trap,
 * so computing the discarded side changes nothing). A lane's result never depends on another lane; a test on all
 * lanes ("does any lane take this trial?") only skips work whose result every lane would discard.
 * Shortcuts, all value-preserving: (1) the levels of a search trial are computed in floating point (LV_FAST below)
 * when bounds on the trial's products show that this gives the reference's integers, with only the clamps some
 * lane needs; (2) the searches remember which trial won instead of copying levels, and the encoders recompute
 * levels only where they keep the fit's levels. */

#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__)) && !defined(L1Q_NO_LANES)
#define KQ_LANE_PATHS 1
#include <immintrin.h>

#define FAST_LIMIT 2097152.0f /* 2**21: below it both forms of a level agree */

/* The forms of vlevel, clampi(round_magic(p), lo, hi) per lane as a float (`mode`, a constant after inlining):
 *   LV_EXACT  the reference's bit trick on the float's bits, then the integer clamps: right for any p, including
 *             the garbage that |p| >= 2**22, Inf or NaN give (subnormal scales, huge data).
 *   LV_FAST   round to nearest, ties to even, in floating point (vrint), then MAX(lo, .) if LV_CLAMP_LO and
 *             MIN(hi, .) if LV_CLAMP_HI. For |p| < FAST_LIMIT the bit trick is exactly that rounding, and the
 *             rounded value can only fall outside [lo, hi] if p < lo - 0.5 or p >= hi + 0.5, so a clamp no p needs
 *             can be left out. level_mode() picks the form for a whole pass from bounds on its p.
 * LV_FAST may give -0 where the reference has level 0 (p in [-0.5, -0]: roundps keeps the sign, and MAX(0, .),
 * which would make it +0, may be left out). That changes no result: a level only enters (a) products added to sums
 * that start at +0 (round to nearest never makes such a sum -0, and y + (+-0) == y for any other y), and (b) the
 * error term s*l + m - x, where the zero's sign can only reach a result that is zero, which is then squared or made
 * absolute; an invalid product (Inf * 0) is the same default NaN whatever the zero's sign. The levels written to
 * the blocks never come from here (the encoders recompute them with the integer form). */
enum { LV_EXACT = 0, LV_FAST = 1, LV_CLAMP_LO = 2, LV_CLAMP_HI = 4 };

/* Run `pass` (an always_inline function whose last argument is the level form) with `mode` as a constant. */
#define WITH_LEVEL_MODE(mode, pass, ...)                                                                          \
    do {                                                                                                         \
        switch (mode) {                                                                                          \
        case LV_FAST: pass(__VA_ARGS__, LV_FAST); break;                                                         \
        case LV_FAST | LV_CLAMP_LO: pass(__VA_ARGS__, LV_FAST | LV_CLAMP_LO); break;                             \
        case LV_FAST | LV_CLAMP_HI: pass(__VA_ARGS__, LV_FAST | LV_CLAMP_HI); break;                             \
        case LV_FAST | LV_CLAMP_LO | LV_CLAMP_HI: pass(__VA_ARGS__, LV_FAST | LV_CLAMP_LO | LV_CLAMP_HI); break;   \
        default: pass(__VA_ARGS__, LV_EXACT); break;                                                             \
        }                                                                                                        \
    } while (0)


#define KQ_LANE_BODY 1

#define LANES 4
#define NV 2
#define ISA(name) name##_sse2
#define KQ_TARGET
#include "_kquants.c"

#define LANES 8
#define NV 2
#define ISA(name) name##_avx2
#define KQ_TARGET __attribute__((target("avx2")))
#include "_kquants.c"

#define LANES 16
#define NV 2
#define ISA(name) name##_avx512
#define KQ_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#include "_kquants.c"

#undef KQ_LANE_BODY
#endif /* lane paths */
#endif /* !KQ_LANE_BODY: the file proper continues after the lane body */

#ifdef KQ_LANE_BODY
/* ------------------------------------------------------------------------------------------------------------ */
/* Lane body: one instance of the lane-wise fits and the K-quant entry points (see "Lane paths" above). Set by the
 * includer (and #undef'd at its end): LANES (floats per vector), NV (vectors in flight: independent chains hide
 * the latency of the running sums; arrays hold value i of vector b at [i * NV + b]), ISA(name) (the instance's
 * name suffix) and KQ_TARGET (its target attribute, empty for baseline x86-64). */

typedef float ISA(vf) __attribute__((vector_size(4 * LANES)));
typedef int32_t ISA(vi) __attribute__((vector_size(4 * LANES)));

/* Every function of the body is compiled for the instance's target (KQ_TARGET), the helpers always inlined. */
#define LANE_FN KQ_INLINE KQ_TARGET

/* This instance's names for the body's types and helpers (#undef'd at the end of the body). */
#define vf ISA(vf)
#define vi ISA(vi)
#define vsplat ISA(vsplat)
#define vsel ISA(vsel)
#define vseli ISA(vseli)
#define vabs ISA(vabs)
#define vany ISA(vany)
#define vsqrt ISA(vsqrt)
#define vrint ISA(vrint)
#define vmin ISA(vmin)
#define vmax ISA(vmax)
#define vlevel ISA(vlevel)
#define in_range ISA(in_range)
#define level_mode ISA(level_mode)
#define affine_pass ISA(affine_pass)
#define qx_pass ISA(qx_pass)
#define lanes_load ISA(lanes_load)
#define lanes_error ISA(lanes_error)
#define lanes_trial ISA(lanes_trial)
#define fit_affine_lanes ISA(fit_affine_lanes)
#define lanes_peak ISA(lanes_peak)
#define qx_trial ISA(qx_trial)
#define fit_qx_lanes ISA(fit_qx_lanes)
#define fit_q3_lanes ISA(fit_q3_lanes)
#define kx_fit_lanes ISA(kx_fit_lanes)
#define EACH(b) for (int b = 0; b < NV; b++)
#define BATCH (NV * LANES > 16 ? NV * LANES : 16) /* groups per call: at least one super-block of 16 */

/* The lane kit: the few operations that need more than the vector operators, on this instance's intrinsics
 * (MM(name): _mm_name, _mm256_name or _mm512_name; MF: the matching float vector type). */
#if LANES == 16
#define MM(name) _mm512_##name
#define MF __m512
#elif LANES == 8
#define MM(name) _mm256_##name
#define MF __m256
#else
#define MM(name) _mm_##name
#define MF __m128
#endif

LANE_FN vf vsplat(float a) {
    vf v;
    for (int k = 0; k < LANES; k++) v[k] = a;
    return v;
}

LANE_FN vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); } /* m ? a : b, m all-ones/0 */
LANE_FN vi vseli(vi m, vi a, vi b) { return (m & a) | (~m & b); }
LANE_FN vf vabs(vf v) { return (vf)((vi)v & 0x7FFFFFFF); }

/* Whether any lane of any of the NV masks is set. */
LANE_FN int vany(const vi *m) {
    vi a = m[0];
    for (int b = 1; b < NV; b++) a |= m[b];
#if LANES == 16
    return _mm512_test_epi32_mask((__m512i)a, (__m512i)a) != 0;
#else
    return MM(movemask_ps)((MF)a) != 0;
#endif
}

/* a < b ? a : b and a > b ? a : b per lane: exactly minps / maxps (b when a is NaN or both are zeros). */
LANE_FN vf vmin(vf a, vf b) { return (vf)MM(min_ps)((MF)a, (MF)b); }
LANE_FN vf vmax(vf a, vf b) { return (vf)MM(max_ps)((MF)a, (MF)b); }
LANE_FN vf vsqrt(vf v) { return (vf)MM(sqrt_ps)((MF)v); }

/* Round to nearest integer, ties to even, for |v| < 2**22: roundps where there is one (it keeps the sign of a
 * zero result, -0 for v in [-0.5, -0]; see LV_FAST), else adding and removing 1.5 * 2**23. */
LANE_FN vf vrint(vf v) {
#if LANES == 16
    return (vf)_mm512_roundscale_ps((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif LANES == 8
    return (vf)_mm256_round_ps((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    return (v + 12582912.0f) - 12582912.0f;
#endif
}

LANE_FN vf vlevel(vf p, int lo, int hi, int mode) {
    if (mode & LV_FAST) {
        vf r = vrint(p);
        if (mode & LV_CLAMP_LO) r = vmax(r, vsplat((float)lo)); /* MAX(lo, .) */
        if (mode & LV_CLAMP_HI) r = vmin(r, vsplat((float)hi)); /* MIN(hi, .) */
        return r;
    }
    vi l = ((vi)(p + 12582912.0f) & 0x007FFFFF) - 0x00400000;
    l = vseli(l < lo, (vi){0} + lo, l);
    return __builtin_convertvector(vseli(l > hi, (vi){0} + hi, l), vf);
}

/* Lanes where |p| < FAST_LIMIT (false for NaN). */
LANE_FN vi in_range(vf p) { return vabs(p) < FAST_LIMIT; }

/* The form of vlevel for a pass whose every p lies between pa[b] and pb[b] in its lane (lanes in `skip` do not
 * matter): LV_FAST when all are in range, with the clamps that some p may need (rounding below lo or above hi). */
LANE_FN int level_mode(const vf *pa, const vf *pb, const vi *skip, int lo, int hi) {
    vi out[NV], below[NV], above[NV];
    EACH(b) {
        out[b] = ~((in_range(pa[b]) & in_range(pb[b])) | skip[b]);
        below[b] = ~skip[b] & (vmin(pa[b], pb[b]) < (float)lo - 0.5f);
        above[b] = ~skip[b] & (vmax(pa[b], pb[b]) >= (float)hi + 0.5f);
    }
    if (vany(out)) return LV_EXACT;
    return LV_FAST | (vany(below) ? LV_CLAMP_LO : 0) | (vany(above) ? LV_CLAMP_HI : 0);
}

/* NV * LANES groups of n values, `stride` floats apart, into lanes: v[i * NV + b] lane g = value i of group
 * b * LANES + g. */
LANE_FN void lanes_load(const float *x, int stride, int n, vf *v) {
    float *o = (float *)v;
    EACH(b) {
        for (int g = 0; g < LANES; g++)
            for (int i = 0; i < n; i++) o[(i * NV + b) * LANES + g] = x[(b * LANES + g) * stride + i];
    }
}

/* Weighted error of levels lf against x: sum of w * |s*l + m - x| (use_abs) or w * (s*l + m - x)**2. */
LANE_FN void lanes_error(int n, const vf *s, const vf *m, const vf *lf, const vf *x, const vf *w, int use_abs,
                           vf *err) {
    EACH(b) err[b] = (vf){0};
    for (int i = 0; i < n; i++) {
        EACH(b) {
            const int k = i * NV + b;
            vf diff = s[b] * lf[k] + m[b] - x[k];
            diff = use_abs ? vabs(diff) : diff * diff;
            err[b] += w[k] * diff;
        }
    }
}

/* One trial of the affine search: levels of p = iscale * (x - lo) into lf and, if `sums`, their weighted sums
 * sum w*l, (w*l)*l and (w*l)*x. */
LANE_FN void affine_pass(int n, int nmax, const vf *iscale, const vf *lo, const vf *x, const vf *w, vf *lf,
                           vf *sum_l, vf *sum_l2, vf *sum_xl, int sums, int mode) {
    EACH(b) sum_l[b] = sum_l2[b] = sum_xl[b] = (vf){0};
    for (int i = 0; i < n; i++) {
        EACH(b) {
            const int k = i * NV + b;
            const vf l = vlevel(iscale[b] * (x[k] - lo[b]), 0, nmax, mode);
            lf[k] = l;
            if (!sums) continue;
            const vf wl = w[k] * l;
            sum_l[b] += wl;
            sum_l2[b] += wl * l;
            sum_xl[b] += wl * x[k];
        }
    }
}

/* affine_pass in the form its bounds allow: p is monotone in x, so over a lane it lies between its values at the
 * lane's smallest and largest x; flat lanes do not matter (their results are replaced). */
LANE_FN void lanes_trial(int n, int nmax, const vf *iscale, const vf *lo, const vf *x_lo, const vf *x_hi,
                           const vi *flat, const vf *x, const vf *w, vf *lf, vf *sum_l, vf *sum_l2, vf *sum_xl,
                           int sums) {
    vf pa[NV], pb[NV];
    EACH(b) {
        pa[b] = iscale[b] * (x_lo[b] - lo[b]);
        pb[b] = iscale[b] * (x_hi[b] - lo[b]);
    }
    const int mode = level_mode(pa, pb, flat, 0, nmax);
    if (sums)
        WITH_LEVEL_MODE(mode, affine_pass, n, nmax, iscale, lo, x, w, lf, sum_l, sum_l2, sum_xl, 1);
    else
        WITH_LEVEL_MODE(mode, affine_pass, n, nmax, iscale, lo, x, w, lf, sum_l, sum_l2, sum_xl, 0);
}

/* fit_affine for NV * LANES groups of n values (lanes x, weights w), into out[g0 ..]. */
LANE_FN void fit_affine_lanes(int n, int nmax, const vf *x, const vf *w, float rmin, float rdelta, int nstep,
                                int use_abs, affine_fits *out, int g0) {
    vf lf[32 * NV];
    vf lo[NV], hi[NV], x_lo[NV], lo_flat[NV], sum_w[NV], sum_x[NV], iscale[NV], scale[NV], best[NV];
    vf best_iscale[NV], best_lo[NV], sum_l[NV], sum_l2[NV], sum_xl[NV], det[NV], t_scale[NV], t_min[NV], err[NV];
    vi flat[NV], det_pos[NV], min_pos[NV], take[NV];
    const vf zero = {0};
    EACH(b) {
        lo[b] = hi[b] = x[b];
        sum_w[b] = w[b];
        sum_x[b] = w[b] * x[b];
    }
    for (int i = 1; i < n; i++) {
        EACH(b) {
            const vf xi = x[i * NV + b], wi = w[i * NV + b];
            lo[b] = vmin(xi, lo[b]); /* if (x < min) min = x */
            hi[b] = vmax(xi, hi[b]); /* if (x > max) max = x */
            sum_w[b] += wi;
            sum_x[b] += wi * xi;
        }
    }
    EACH(b) {
        x_lo[b] = lo[b]; /* every x of the lane lies in [x_lo, hi] */
        lo[b] = vsel(lo[b] > 0.0f, zero, lo[b]);
        lo_flat[b] = lo[b];
        flat[b] = hi[b] == lo[b]; /* these lanes return early in the reference; their results are replaced below */
        iscale[b] = (float)nmax / (hi[b] - lo[b]);
        scale[b] = 1.0f / iscale[b];
        best_iscale[b] = iscale[b];
        best_lo[b] = lo[b];
    }
    /* the first guess: its levels' error is the one to beat */
    lanes_trial(n, nmax, iscale, lo, x_lo, hi, flat, x, w, lf, sum_l, sum_l2, sum_xl, 0);
    lanes_error(n, scale, lo, lf, x, w, use_abs, best);
    for (int is = 0; is <= nstep; is++) {
        const float num = rmin + rdelta * (float)is + (float)nmax;
        EACH(b) iscale[b] = num / (hi[b] - lo[b]);
        lanes_trial(n, nmax, iscale, lo, x_lo, hi, flat, x, w, lf, sum_l, sum_l2, sum_xl, 1);
        EACH(b) {
            det[b] = sum_w[b] * sum_l2[b] - sum_l[b] * sum_l[b];
            det_pos[b] = det[b] > 0.0f;
        }
        if (!vany(det_pos)) continue; /* no lane takes the reference's `if (D > 0)` */
        EACH(b) {
            t_scale[b] = (sum_w[b] * sum_xl[b] - sum_x[b] * sum_l[b]) / det[b];
            t_min[b] = (sum_l2[b] * sum_x[b] - sum_l[b] * sum_xl[b]) / det[b];
            min_pos[b] = t_min[b] > 0.0f;
        }
        if (vany(min_pos)) { /* if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; } */
            EACH(b) {
                t_min[b] = vsel(min_pos[b], zero, t_min[b]);
                t_scale[b] = vsel(min_pos[b], sum_xl[b] / sum_l2[b], t_scale[b]);
            }
        }
        lanes_error(n, t_scale, t_min, lf, x, w, use_abs, err);
        EACH(b) take[b] = det_pos[b] & (err[b] < best[b]);
        if (!vany(take)) continue;
        EACH(b) {
            best[b] = vsel(take[b], err[b], best[b]);
            scale[b] = vsel(take[b], t_scale[b], scale[b]);
            best_iscale[b] = vsel(take[b], iscale[b], best_iscale[b]);
            best_lo[b] = vsel(take[b], lo[b], best_lo[b]);
            lo[b] = vsel(take[b], t_min[b], lo[b]);
        }
    }
    EACH(b) {
        const int g = g0 + b * LANES;
        const vf s = vsel(flat[b], zero, scale[b]), m = -vsel(flat[b], lo_flat[b], lo[b]);
        memcpy(out->scale + g, &s, sizeof s);
        memcpy(out->neg_min + g, &m, sizeof m);
        memcpy(out->iscale + g, &best_iscale[b], sizeof s);
        memcpy(out->lo + g, &best_lo[b], sizeof s);
        memcpy(out->flat + g, &flat[b], sizeof s);
    }
}

/* Largest magnitude of 16 values per lane and the signed value that has it (the first one: strict >). */
LANE_FN void lanes_peak(int n, const vf *x, vf *amax, vf *peak) {
    EACH(b) amax[b] = peak[b] = (vf){0};
    for (int i = 0; i < n; i++) {
        EACH(b) {
            const vf ax = vabs(x[i * NV + b]);
            const vi bigger = ax > amax[b];
            amax[b] = vsel(bigger, ax, amax[b]);
            peak[b] = vsel(bigger, x[i * NV + b], peak[b]);
        }
    }
}

/* Sums of one make_qx_quants trial over n values, levels -nmax..nmax-1: sum (w*x)*l and sum (w*l)*l over the levels
 * of iscale * x. */
LANE_FN void qx_pass(int n, int nmax, const vf *iscale, const vf *x, const vf *w, const vf *wx, vf *sumlx,
                     vf *suml2, int mode) {
    EACH(b) sumlx[b] = suml2[b] = (vf){0};
    for (int i = 0; i < n; i++) {
        EACH(b) {
            const int k = i * NV + b;
            const vf l = vlevel(iscale[b] * x[k], -nmax, nmax - 1, mode);
            sumlx[b] += wx[k] * l;
            suml2[b] += w[k] * l * l;
        }
    }
}

/* One trial, iscale = num / peak, in the form its bounds allow (iscale * x is monotone in x; tiny lanes do not
 * matter). */
LANE_FN void qx_trial(int n, int nmax, float num, const vf *peak, const vf *x_lo, const vf *x_hi, const vi *tiny,
                      const vf *x, const vf *w, const vf *wx, vf *iscale, vf *sumlx, vf *suml2) {
    vf pa[NV], pb[NV];
    EACH(b) {
        iscale[b] = num / peak[b];
        pa[b] = iscale[b] * x_lo[b];
        pb[b] = iscale[b] * x_hi[b];
    }
    const int mode = level_mode(pa, pb, tiny, -nmax, nmax - 1);
    WITH_LEVEL_MODE(mode, qx_pass, n, nmax, iscale, x, w, wx, sumlx, suml2);
}

/* make_qx_quants(n, nmax, x, L, rmse_type 1, wq) for NV * LANES groups of n values (lanes x, weights wq; NULL:
 * x * x, as fit_q6_group), into out[g0 ..] (levels: see qx_fits, with -nmax..nmax-1 here). */
LANE_FN void fit_qx_lanes(int n, int nmax, const vf *x, const vf *wq, qx_fits *out, int g0) {
    vf w[32 * NV], wx[32 * NV], amax[NV], peak[NV], x_lo[NV], x_hi[NV], iscale[NV], best_iscale[NV];
    vf sumlx[NV], suml2[NV], scale[NV], best[NV];
    vi tiny[NV], take[NV];
    const vf zero = {0};
    lanes_peak(n, x, amax, peak);
    EACH(b) x_lo[b] = x_hi[b] = x[b];
    for (int k = 0; k < n * NV; k++) {
        w[k] = wq ? wq[k] : x[k] * x[k];
        wx[k] = w[k] * x[k];
        x_lo[k % NV] = vmin(x[k], x_lo[k % NV]);
        x_hi[k % NV] = vmax(x[k], x_hi[k % NV]);
    }
    EACH(b) tiny[b] = amax[b] < TINY_GROUP; /* early return in the reference; replaced below */
    qx_trial(n, nmax, (float)(-nmax), peak, x_lo, x_hi, tiny, x, w, wx, iscale, sumlx, suml2); /* -nmax / max */
    EACH(b) {
        /* suml2 ? sumlx / suml2 : 0 (!= is true for NaN, like C's truth test) */
        scale[b] = vsel(suml2[b] != 0.0f, sumlx[b] / suml2[b], zero);
        best[b] = scale[b] * sumlx[b];
        best_iscale[b] = iscale[b];
    }
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        qx_trial(n, nmax, -((float)nmax + 0.1f * (float)is), peak, x_lo, x_hi, tiny, x, w, wx, iscale, sumlx, suml2);
        EACH(b) take[b] = (suml2[b] > 0.0f) & (sumlx[b] * sumlx[b] > best[b] * suml2[b]);
        if (!vany(take)) continue;
        EACH(b) {
            const vf s = sumlx[b] / suml2[b];
            scale[b] = vsel(take[b], s, scale[b]);
            best[b] = vsel(take[b], s * sumlx[b], best[b]);
            best_iscale[b] = vsel(take[b], iscale[b], best_iscale[b]);
        }
    }
    EACH(b) {
        const int g = g0 + b * LANES;
        const vf s = vsel(tiny[b], zero, scale[b]);
        memcpy(out->scale + g, &s, sizeof s);
        memcpy(out->iscale + g, &best_iscale[b], sizeof s);
        memcpy(out->tiny + g, &tiny[b], sizeof s);
    }
}

/* fit_q3_group for NV * LANES groups of 16 values (lanes x): scales[g0 ..] and levels L[i * BATCH + g]
 * (lane-major, g from g0). A lane whose pass changes nothing would change nothing in the next pass either (same
 * state, same computation), so running all lanes until none changes is the reference's per-group early exit. */
LANE_FN void fit_q3_lanes(const vf *x, float *scales, int8_t *L, int g0) {
    vf w[16 * NV], wx[16 * NV], lv[16 * NV], amax[NV], peak[NV], iscale[NV], sumlx[NV], suml2[NV];
    vi tiny[NV], changed[NV];
    const vf zero = {0};
    lanes_peak(16, x, amax, peak);
    EACH(b) {
        tiny[b] = amax[b] < TINY_GROUP;
        iscale[b] = -4.0f / peak[b];
        sumlx[b] = suml2[b] = zero;
    }
    for (int i = 0; i < 16; i++) {
        EACH(b) {
            const int k = i * NV + b;
            lv[k] = vlevel(iscale[b] * x[k], -4, 3, LV_EXACT);
            w[k] = x[k] * x[k];
            wx[k] = w[k] * x[k];
            sumlx[b] += wx[k] * lv[k];
            suml2[b] += w[k] * lv[k] * lv[k];
        }
    }
    for (int pass = 0; pass < 5; pass++) {
        EACH(b) changed[b] = (vi){0};
        for (int i = 0; i < 16; i++) {
            EACH(b) {
                const int k = i * NV + b;
                vf slx = sumlx[b] - wx[k] * lv[k];
                vf sl2 = suml2[b] - w[k] * lv[k] * lv[k];
                const vf nl = vlevel(x[k] * sl2 / slx, -4, 3, LV_EXACT);
                const vi try_it = (slx > 0.0f) & (nl != lv[k]);
                slx += wx[k] * nl;
                sl2 += w[k] * nl * nl;
                const vi take = try_it & (sl2 > 0.0f) & (slx * slx * suml2[b] > sumlx[b] * sumlx[b] * sl2);
                lv[k] = vsel(take, nl, lv[k]);
                sumlx[b] = vsel(take, slx, sumlx[b]);
                suml2[b] = vsel(take, sl2, suml2[b]);
                changed[b] |= take;
            }
        }
        if (!vany(changed)) break;
    }
    EACH(b) {
        const vf s = vsel(tiny[b], zero, vsel(suml2[b] > 0.0f, sumlx[b] / suml2[b], zero));
        memcpy(scales + g0 + b * LANES, &s, sizeof s);
        for (int i = 0; i < 16; i++) {
            /* levels + 4 (exact small integers), or 0 for a tiny group */
            const vi l = vseli(tiny[b], (vi){0}, __builtin_convertvector(lv[i * NV + b], vi) + 4);
            for (int g = 0; g < LANES; g++) L[i * BATCH + g0 + b * LANES + g] = (int8_t)l[g];
        }
    }
}

/* Q4_K/Q5_K fits of NV * LANES 32-value groups at x, weights av + |x| (av: the group's RMS), into f[g0 ..]. */
LANE_FN void kx_fit_lanes(const float *x, int nmax, float rmin, int nstep, affine_fits *f, int g0) {
    vf v[32 * NV], w[32 * NV], sum_x2[NV];
    lanes_load(x, 32, 32, v);
    EACH(b) sum_x2[b] = (vf){0};
    for (int i = 0; i < 32; i++) EACH(b) sum_x2[b] += v[i * NV + b] * v[i * NV + b];
    EACH(b) {
        const vf av = vsqrt(sum_x2[b] / 32.0f);
        for (int i = 0; i < 32; i++) w[i * NV + b] = av + vabs(v[i * NV + b]);
    }
    fit_affine_lanes(32, nmax, v, w, rmin, 0.1f, nstep, 0, f, g0);
}

/* The entry points: BATCH groups per call, NV * LANES at a time (see "Lane paths"). */

static KQ_TARGET void ISA(q2_k)(const float *x, uint8_t *y) {
    affine_fits f;
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) {
        vf v[16 * NV], w[16 * NV];
        lanes_load(x + 16 * g0, 16, 16, v);
        for (int k = 0; k < 16 * NV; k++) w[k] = vabs(v[k]);
        fit_affine_lanes(16, 3, v, w, -0.5f, 0.1f, 15, 1, &f, g0);
    }
    for (int j = 0; j < BATCH / 16; j++) q2_k_encode(x + SUPER * j, y + 84 * j, &f, 16 * j);
}

static KQ_TARGET void ISA(q3_k)(const float *x, uint8_t *y) {
    int8_t L[16 * BATCH];
    float scales[BATCH];
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) {
        vf v[16 * NV];
        lanes_load(x + 16 * g0, 16, 16, v);
        fit_q3_lanes(v, scales, L, g0);
    }
    for (int j = 0; j < BATCH / 16; j++) q3_k_encode(x + SUPER * j, y + 110 * j, scales + 16 * j, L + 16 * j, BATCH, 1);
}

static KQ_TARGET void ISA(q4_k)(const float *x, uint8_t *y) {
    affine_fits f;
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) kx_fit_lanes(x + 32 * g0, 15, -1.0f, 20, &f, g0);
    for (int j = 0; j < BATCH / 8; j++) q4_k_encode(x + SUPER * j, y + 144 * j, &f, 8 * j);
}

static KQ_TARGET void ISA(q5_k)(const float *x, uint8_t *y) {
    affine_fits f;
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) kx_fit_lanes(x + 32 * g0, 31, -0.5f, 15, &f, g0);
    for (int j = 0; j < BATCH / 8; j++) q5_k_encode(x + SUPER * j, y + 176 * j, &f, 8 * j);
}

static KQ_TARGET void ISA(q6_k)(const float *x, uint8_t *y) {
    qx_fits f;
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) {
        vf v[16 * NV];
        lanes_load(x + 16 * g0, 16, 16, v);
        fit_qx_lanes(16, 32, v, NULL, &f, g0);
    }
    for (int j = 0; j < BATCH / 16; j++) q6_k_encode(x + SUPER * j, y + 210 * j, &f, 16 * j);
}

/* The importance-weighted path's affine fits (ggml's make_qkx3_quants: the search of fit_affine_lanes with rmin
 * -0.9, rdelta 0.05, 37 trials, squared error, given weights): BATCH groups of n (16 or 32) values, group g at
 * x + n * g, weights w in the same layout. */
static KQ_TARGET void ISA(imx_affine)(int n, int nmax, const float *x, const float *w, affine_fits *f) {
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) {
        vf v[32 * NV], wv[32 * NV];
        if (n == 16) {
            lanes_load(x + 16 * g0, 16, 16, v);
            lanes_load(w + 16 * g0, 16, 16, wv);
            fit_affine_lanes(16, 3, v, wv, -0.9f, 0.05f, 36, 0, f, g0); /* only Q2_K fits 16-value groups */
        } else {
            lanes_load(x + 32 * g0, 32, 32, v);
            lanes_load(w + 32 * g0, 32, 32, wv);
            if (nmax == 15)
                fit_affine_lanes(32, 15, v, wv, -0.9f, 0.05f, 36, 0, f, g0);
            else
                fit_affine_lanes(32, 31, v, wv, -0.9f, 0.05f, 36, 0, f, g0);
        }
    }
}

/* The importance-weighted path's symmetric fits (make_qx_quants, rmse_type 1, given weights): BATCH groups of n
 * (16 or 32) values to -nmax..nmax-1, group g at x + n * g, weights w alike. */
static KQ_TARGET void ISA(imx_sym)(int n, int nmax, const float *x, const float *w, qx_fits *f) {
    for (int g0 = 0; g0 < BATCH; g0 += NV * LANES) {
        vf v[32 * NV], wv[32 * NV];
        lanes_load(x + n * g0, n, n, v);
        lanes_load(w + n * g0, n, n, wv);
        switch (nmax) { /* constant arguments: each case compiles its own loops */
        case 4: fit_qx_lanes(16, 4, v, wv, f, g0); break;    /* Q3_K groups */
        case 32: fit_qx_lanes(16, 32, v, wv, f, g0); break;  /* Q6_K groups */
        case 8: fit_qx_lanes(32, 8, v, wv, f, g0); break;    /* Q4_0 blocks */
        default: fit_qx_lanes(32, 16, v, wv, f, g0); break;  /* Q5_0 blocks */
        }
    }
}

/* For the formats table: groups per call of this instance's entry points. */
enum { ISA(batch) = BATCH };

#undef vf
#undef vi
#undef vsplat
#undef vsel
#undef vseli
#undef vabs
#undef vany
#undef vsqrt
#undef vrint
#undef vmin
#undef vmax
#undef vlevel
#undef in_range
#undef level_mode
#undef affine_pass
#undef qx_pass
#undef lanes_load
#undef lanes_error
#undef lanes_trial
#undef BATCH
#undef fit_affine_lanes
#undef lanes_peak
#undef qx_trial
#undef fit_qx_lanes
#undef fit_q3_lanes
#undef kx_fit_lanes
#undef EACH
#undef LANE_FN
#undef LANES
#undef NV
#undef ISA
#undef KQ_TARGET
#undef MM
#undef MF
#endif /* KQ_LANE_BODY */

#ifndef KQ_LANE_BODY /* the file proper, continued */

/* ------------------------------------------------------------------------------------------------------------ */
/* Paths, formats table and the row driver */

/* The code paths, by the names kquant() takes (kernels/_native.py reads L1QUANT_KQUANT_ISA into one):
 *   portable  plain C, one value/group at a time (what non-x86 and non-GNU builds run)
 *   sse2      Q4_0..Q5_1 as SSE2 vectors; the K-quant lane body with 4-lane vectors, for baseline x86-64
 *   avx2      the lane body with 8-lane vectors, target("avx2") (Q4_0..Q5_1: the SSE2 code)
 *   avx512    the lane body with 16-lane vectors, target("avx512f,avx512bw,avx512vl") (Q4_0..Q5_1: SSE2)
 * All give the same bytes. The default is the last one this build and CPU support (__builtin_cpu_supports). */
enum { PATH_PORTABLE, PATH_SSE2, PATH_AVX2, PATH_AVX512, N_PATHS };
static const char *const PATH_NAMES[N_PATHS] = {"portable", "sse2", "avx2", "avx512"};

static int path_available(int p) {
    switch (p) {
    case PATH_PORTABLE:
        return 1;
#if defined(KQ_LANE_PATHS) && defined(KQ_HAVE_LANES)
    case PATH_SSE2:
        return 1;
    case PATH_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    case PATH_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
#endif
    default:
        return 0;
    }
}

typedef void (*block_fn)(const float *x, uint8_t *y);

typedef struct {
    int type;                /* GGML type number */
    int qk;                  /* values per block */
    int bytes;               /* bytes per block */
    int nan_at[2];           /* byte offsets of the f16 scale fields that the non-finite policy sets to NaN; -1: none */
    block_fn portable;       /* one block */
    int groups;              /* lane-fitted groups per block (8 or 16); 0: the lane functions take one block */
    block_fn lanes[N_PATHS]; /* by path (PATH_SSE2 ..); NULL where the build has none */
} kformat;

/* Groups per call of each path's K-quant entry points (the instances' BATCH). */
#if defined(KQ_LANE_PATHS) && defined(KQ_HAVE_LANES)
static const int PATH_BATCH[N_PATHS] = {0, batch_sse2, batch_avx2, batch_avx512};
#else
static const int PATH_BATCH[N_PATHS] = {0};
#endif

#if defined(KQ_LANE_PATHS) && defined(KQ_HAVE_LANES)
static void q4_0_sse2(const float *x, uint8_t *y) { blk_q4_0(x, y, 1); }
static void q4_1_sse2(const float *x, uint8_t *y) { blk_q4_1(x, y, 1); }
static void q5_0_sse2(const float *x, uint8_t *y) { blk_q5_0(x, y, 1); }
static void q5_1_sse2(const float *x, uint8_t *y) { blk_q5_1(x, y, 1); }
#define SSE2_ONLY(name) {NULL, name##_sse2, name##_sse2, name##_sse2}
#define LANE_FNS(name) {NULL, name##_sse2, name##_avx2, name##_avx512}
#else
#define SSE2_ONLY(name) {NULL}
#define LANE_FNS(name) {NULL}
#endif
static void q4_0_portable(const float *x, uint8_t *y) { blk_q4_0(x, y, 0); }
static void q4_1_portable(const float *x, uint8_t *y) { blk_q4_1(x, y, 0); }
static void q5_0_portable(const float *x, uint8_t *y) { blk_q5_0(x, y, 0); }
static void q5_1_portable(const float *x, uint8_t *y) { blk_q5_1(x, y, 0); }

static const kformat FORMATS[] = {
    {GT_Q4_0, 32, 18, {0, -1}, q4_0_portable, 0, SSE2_ONLY(q4_0)},
    {GT_Q4_1, 32, 20, {0, 2}, q4_1_portable, 0, SSE2_ONLY(q4_1)},
    {GT_Q5_0, 32, 22, {0, -1}, q5_0_portable, 0, SSE2_ONLY(q5_0)},
    {GT_Q5_1, 32, 24, {0, 2}, q5_1_portable, 0, SSE2_ONLY(q5_1)},
    {GT_Q2_K, 256, 84, {80, 82}, q2_k_portable, 16, LANE_FNS(q2_k)},
    {GT_Q3_K, 256, 110, {108, -1}, q3_k_portable, 16, LANE_FNS(q3_k)},
    {GT_Q4_K, 256, 144, {0, 2}, q4_k_portable, 8, LANE_FNS(q4_k)},
    {GT_Q5_K, 256, 176, {0, 2}, q5_k_portable, 8, LANE_FNS(q5_k)},
    {GT_Q6_K, 256, 210, {208, -1}, q6_k_portable, 16, LANE_FNS(q6_k)},
};

enum { MAX_BATCH_BLOCKS = MAX_GROUPS / 8 > 1 ? MAX_GROUPS / 8 : 1, MAX_BLOCK_BYTES = 210 };

static const kformat *find_format(int type) {
    for (size_t i = 0; i < sizeof FORMATS / sizeof FORMATS[0]; i++)
        if (FORMATS[i].type == type) return &FORMATS[i];
    return NULL;
}

/* Index of the first NaN/Inf (exponent bits all ones) among n float32 values, or -1. A branch-free OR over the
 * block first (it vectorizes to compare-and-or); the position is looked up only when the block is bad. */
static inline int first_bad_block(const float *x, int n) {
    uint32_t any = 0;
    for (int i = 0; i < n; i++) any |= (uint32_t)((f32_to_bits(x[i]) & 0x7F800000u) == 0x7F800000u);
    if (!any) return -1;
    for (int i = 0; i < n; i++)
        if ((f32_to_bits(x[i]) & 0x7F800000u) == 0x7F800000u) return i;
    return -1; /* unreachable */
}

static void poison_block(const kformat *f, uint8_t *y) {
    memset(y, 0, (size_t)f->bytes);
    for (int k = 0; k < 2; k++)
        if (f->nan_at[k] >= 0) put_f16(y + f->nan_at[k], 0x7E00u);
}

/* Widen n source values (f16 or bf16 bits) into buf; exact. */
static inline void widen(const uint16_t *src, int kind, int n, float *buf) {
    if (kind == SRC_BF16) {
        for (int i = 0; i < n; i++) buf[i] = bits_to_f32((uint32_t)src[i] << 16);
    } else {
        for (int i = 0; i < n; i++) buf[i] = bits_to_f32(f16_to_f32_bits(src[i]));
    }
}

/* One row of ncols values (a multiple of f->qk) of the given source kind -> ncols/qk blocks at y, with the code
 * path `path` (available). Returns the index within the row of the first non-finite value, or -1.
 *
 * A call of the block function covers `per` blocks (a lane path's batch). Half-precision sources, and a last
 * batch that the row cannot fill (its missing blocks are zeros, their bytes discarded), go through a stack buffer,
 * so there is no allocation and nothing shared between threads. Blocks are quantized independently, so a batch
 * holding a non-finite block gives its neighbours their usual bytes; that block is then overwritten by the
 * policy's bytes. */
static int64_t quant_row(const kformat *f, const void *src, int kind, int64_t ncols, uint8_t *y, int path) {
    float buf[MAX_BATCH_BLOCKS * SUPER];
    uint8_t tail[MAX_BATCH_BLOCKS * MAX_BLOCK_BYTES];
    const block_fn fn = path == PATH_PORTABLE ? f->portable : f->lanes[path];
    const int per = path == PATH_PORTABLE || f->groups == 0 ? 1 : PATH_BATCH[path] / f->groups;
    int64_t first = -1;
    const int64_t nb = ncols / f->qk;
    for (int64_t b = 0; b < nb; b += per) {
        const int m = nb - b < per ? (int)(nb - b) : per; /* real blocks in this batch */
        const float *xb;
        if (kind == SRC_F32 && m == per) {
            xb = (const float *)src + b * f->qk;
        } else {
            if (kind == SRC_F32)
                memcpy(buf, (const float *)src + b * f->qk, (size_t)(m * f->qk) * sizeof(float));
            else
                widen((const uint16_t *)src + b * f->qk, kind, m * f->qk, buf);
            memset(buf + m * f->qk, 0, (size_t)((per - m) * f->qk) * sizeof(float));
            xb = buf;
        }
        uint8_t *yb = y + b * f->bytes;
        int bad[MAX_BATCH_BLOCKS], any_bad = 0;
        for (int k = 0; k < m; k++) any_bad |= (bad[k] = first_bad_block(xb + k * f->qk, f->qk)) >= 0;
        if (!(any_bad && per == 1)) { /* a lone bad block needs no quantizing */
            fn(xb, m == per ? yb : tail);
            if (m < per) memcpy(yb, tail, (size_t)(m * f->bytes));
        }
        for (int k = 0; k < m && any_bad; k++) {
            if (bad[k] >= 0) {
                if (first < 0) first = (b + k) * f->qk + bad[k];
                poison_block(f, yb + k * f->bytes);
            }
        }
    }
    return first;
}

/* The code path named by a kquant()/kquant_imatrix() argument: a name from PATH_NAMES (ValueError if unknown or not
 * available here), None / True for the default (the fastest available), False for "portable". -1 with the
 * exception set on error. */
static int parse_path(PyObject *path_obj, const char *fn) {
    int path = N_PATHS - 1;
    while (path > 0 && !path_available(path)) path--;
    if (PyUnicode_Check(path_obj)) {
        const char *name = PyUnicode_AsUTF8(path_obj);
        if (name == NULL) return -1;
        for (path = 0; path < N_PATHS && strcmp(name, PATH_NAMES[path]) != 0; path++) {
        }
        if (path == N_PATHS || !path_available(path)) {
            PyErr_Format(PyExc_ValueError, "_fastq8.%s: code path '%s' is %s", fn, name,
                         path == N_PATHS ? "unknown (portable, sse2, avx2, avx512)"
                                         : "not available on this CPU/build");
            return -1;
        }
    } else if (path_obj != Py_None) {
        const int on = PyObject_IsTrue(path_obj);
        if (on < 0) return -1;
        if (!on) path = PATH_PORTABLE;
    }
    return path;
}

/* kquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride[, path]) -> flat index of the first non-finite
 * value or -1. src: rows x ncols contiguous values of `kind` (0 float32, 1 float16, 2 bf16 bits); dst: row r at
 * dst + r * dst_row_stride, ncols / qk blocks each. Addresses were validated by kernels/_native.py. path: a name
 * from PATH_NAMES (ValueError if unknown or not available here), or None / True for the default, False for
 * "portable". All paths give the same bytes (the tests run each). */
PyObject *l1q_py_kquant(PyObject *self, PyObject *args) {
    int type, kind;
    unsigned long long s, d;
    long long rows, ncols, stride;
    PyObject *path_obj = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiLLKL|O", &type, &s, &kind, &rows, &ncols, &d, &stride, &path_obj)) return NULL;
    int path = parse_path(path_obj, "kquant");
    if (path < 0) return NULL;
    const kformat *f = find_format(type);
    if (f == NULL) {
        PyErr_Format(PyExc_ValueError, "_fastq8.kquant: unsupported ggml type %d", type);
        return NULL;
    }
    if (path != PATH_PORTABLE && f->lanes[path] == NULL) path = PATH_PORTABLE;
    if (kind < SRC_F32 || kind > SRC_BF16 || rows < 0 || ncols < 0 || ncols % f->qk != 0) {
        PyErr_Format(PyExc_ValueError, "_fastq8.kquant: bad kind or shape (ncols must be a multiple of %d)", f->qk);
        return NULL;
    }
    if (rows > 1 && stride < ncols / f->qk * f->bytes) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.kquant: dst_row_stride is smaller than a quantized row");
        return NULL;
    }
    const uint8_t *src = (const uint8_t *)(uintptr_t)s;
    uint8_t *dst = (uint8_t *)(uintptr_t)d;
    const size_t src_row = (size_t)ncols * (kind == SRC_F32 ? 4u : 2u);
    int64_t first = -1;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++) {
        const int64_t fr = quant_row(f, src + (size_t)r * src_row, kind, ncols, dst + r * stride, path);
        if (fr >= 0 && first < 0) first = r * ncols + fr;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(first);
}
#endif /* !KQ_LANE_BODY */

#ifndef KQ_LANE_BODY /* the file proper, continued: the importance-weighted searches */

/* ------------------------------------------------------------------------------------------------------------ */
/* With an importance matrix (per-column weights qw, one float per value of a row), ggml_quantize_chunk runs the
 * quantize_row_<type>_impl functions instead of the _ref ones: different searches, weighted by
 * qw[i] * sqrt(sigma2 + x[i]^2) (sigma2 from the row or the super-block), except Q6_K, which weights by qw alone.
 * These are written value by value, one group at a time, on every path (the searches are sequential; the lane
 * paths above do not cover them). Without an importance matrix ggml runs the _ref path for every type, which is
 * kquant() above.
 *
 * Integers that the reference stores in uint8_t arrays wrap modulo 256 when a search produces a negative level
 * (make_qp_quants on a negative group scale); the code below keeps them as uint8_t where the reference does, so the
 * wrapped values flow through the same sums. */

/* Weighted symmetric fit of n values to -nmax..nmax-1 (make_qx_quants with rmse_type 1 and weights w): returns the
 * scale, levels + nmax in L. */
static float imx_fit_sym(int n, int nmax, const float *x, const float *w, int8_t *L) {
    float amax = 0, peak = 0;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > amax) {
            amax = a;
            peak = x[i];
        }
    }
    if (amax < TINY_GROUP) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)(-nmax) / peak;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_magic(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        sumlx += w[i] * x[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f; /* C's `suml2 ? .. : 0`: NaN counts as true */
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / peak;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(round_magic(iscale * x[i]), -nmax, nmax - 1);
            sumlx += w[i] * x[i] * (float)l;
            suml2 += w[i] * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (int8_t)(clampi(round_magic(iscale * x[i]), -nmax, nmax - 1) + nmax);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Weighted affine fit of n values to 0..nmax (make_qkx3_quants with weights, squared error, rmin -0.9, rdelta
 * 0.05, 37 trials): returns the scale, *neg_min = -offset, levels in L. */
static float imx_fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min) {
    uint8_t trial[32];
    float lo = x[0], hi = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi <= lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_magic(iscale * (x[i] - lo)), 0, nmax);
        L[i] = (uint8_t)l;
        const float diff = scale * (float)l + lo - x[i];
        best += w[i] * (diff * diff);
    }
    for (int is = 0; is <= 36; is++) {
        iscale = (-0.9f + 0.05f * (float)is + (float)nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(round_magic(iscale * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det > 0) {
            float t_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            float t_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if (t_min > 0) {
                t_min = 0;
                t_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                const float diff = t_scale * (float)trial[i] + t_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best) {
                memcpy(L, trial, (size_t)n);
                best = err;
                scale = t_scale;
                lo = t_min;
            }
        }
    }
    *neg_min = -lo;
    return scale;
}

/* Weighted fit of n non-negative values (group scales or mins) to 0..nmax with no offset (make_qp_quants):
 * returns the super-scale, levels in L (uint8_t: a negative level wraps, as in the reference). */
static float imx_fit_pos(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float peak = 0;
    for (int i = 0; i < n; i++) peak = peak > x[i] ? peak : x[i]; /* MAX(peak, x): a NaN replaces the peak */
    if (peak < TINY_GROUP) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)nmax / peak;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)round_magic(iscale * x[i]);
    const float scale0 = 1.0f / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale0 * (float)L[i];
        best += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * (float)is + (float)nmax) / peak;
        const float scale_is = 1.0f / iscale_is;
        float err = 0;
        for (int i = 0; i < n; i++) {
            int l = round_magic(iscale_is * x[i]);
            if (l > nmax) l = nmax;
            const float diff = x[i] - scale_is * (float)l;
            err += w[i] * diff * diff;
        }
        if (err < best) {
            best = err;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = round_magic(iscale * x[i]);
        if (l > nmax) l = nmax;
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * (float)l;
        suml2 += w[i] * (float)l * (float)l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * (float)L[i];
            float sl2 = suml2 - w[i] * (float)L[i] * (float)L[i];
            if (slx > 0 && sl2 > 0) {
                int nl = round_magic(x[i] * sl2 / slx);
                if (nl > nmax) nl = nmax;
                if (nl != (int)L[i]) {
                    slx += w[i] * x[i] * (float)nl;
                    sl2 += w[i] * (float)nl * (float)nl;
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

/* Sequential sum of squares of n values, from 0 (the reference's sigma2 numerators). */
static inline float imx_sum_sq(const float *x, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* weights w[i] = qw[i] * sqrtf(sigma2 + x[i]^2) for n values */
static inline void imx_weights(const float *x, const float *qw, float sigma2, int n, float *w) {
    for (int i = 0; i < n; i++) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
}

static inline float imx_sum(const float *w, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += w[i];
    return s;
}

/* Q2_K (quantize_row_q2_K_impl), one super-block, from its group fits (scales, mins, levels L of 16 groups of 16)
 * and value weights w. */
static void imx_q2_k(const float *x, const float *w, const float *scales, const float *mins, uint8_t *L,
                     uint8_t *y) {
    uint8_t Ls[16], Lm[16];
    float sw[16];
    for (int j = 0; j < 16; j++) sw[j] = imx_sum(w + 16 * j, 16);
    const float dm = imx_fit_pos(16, 15, scales, sw, Ls);
    const float mm = imx_fit_pos(16, 15, mins, sw, Lm);
    const uint16_t d16 = half_of(dm), m16 = half_of(mm);
    uint8_t *sc = y, *qs = y + 16;
    for (int j = 0; j < 16; j++) sc[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    put_f16(y + 80, d16);
    put_f16(y + 82, m16);
    const float dd = half_value(d16), md = half_value(m16);
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)(sc[j] & 0xF);
        if (d == 0.0f) continue; /* keep the search's levels */
        affine_requant(x + 16 * j, 16, d, md * (float)(sc[j] >> 4), 3, L + 16 * j);
    }
    pack_2bit(L, qs);
}

/* Q3_K (quantize_row_q3_K_impl), one super-block, from its group fits (scales, levels L of 16 groups of 16) and
 * value weights w. */
static void imx_q3_k(const float *x, const float *w, const float *scales, int8_t *L, uint8_t *y) {
    int8_t Ls[16];
    float sw[16];
    for (int j = 0; j < 16; j++) sw[j] = imx_sum(w + 16 * j, 16);
    const float d_block = imx_fit_sym(16, 32, scales, sw, Ls);
    uint8_t *hmask = y, *qs = y + 32, *sc = y + 96;
    memset(sc, 0, 12);
    for (int j = 0; j < 16; j++) {
        const int l = Ls[j];
        if (j < 8)
            sc[j] = (uint8_t)(l & 0xF);
        else
            sc[j - 8] = (uint8_t)(sc[j - 8] | ((l & 0xF) << 4));
        sc[8 + j % 4] = (uint8_t)(sc[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
    }
    const uint16_t d16 = half_of(d_block);
    put_f16(y + 108, d16);
    const float dd = half_value(d16);
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)(Ls[j] - 32); /* the 6-bit code read back from the packed bytes */
        if (d == 0.0f) continue;
        symmetric_requant(x + 16 * j, d, -4, 3, L + 16 * j);
    }
    uint8_t lo2[SUPER];
    memset(hmask, 0, 32);
    for (int b = 0; b < 8; b++)
        for (int m = 0; m < 32; m++) hmask[m] = (uint8_t)(hmask[m] | (((unsigned)L[32 * b + m] >> 2) << b));
    for (int j = 0; j < SUPER; j++) lo2[j] = (uint8_t)(L[j] & 3);
    pack_2bit(lo2, qs);
}

/* Q4_K / Q5_K (quantize_row_q4_K_impl / _q5_K_impl) up to the levels: d, dmin and the 12 scale bytes at y[0..15],
 * levels 0..nmax in L (on entry: the group fits' levels; w: the value weights). Q5_K caps the 6-bit codes at 63;
 * Q4_K writes them as they come (a wrapped code spills into the neighbouring bits, as in the reference). */
static void imx_kx(const float *x, const float *w, const float *scales, const float *mins, int nmax, uint8_t *y,
                   uint8_t *L) {
    uint8_t Ls[8], Lm[8];
    float sw[8];
    for (int j = 0; j < 8; j++) sw[j] = imx_sum(w + 32 * j, 32);
    const float d_block = imx_fit_pos(8, 63, scales, sw, Ls);
    const float m_block = imx_fit_pos(8, 63, mins, sw, Lm);
    uint8_t *sc = y + 4;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (nmax == 31) {
            if (ls > 63) ls = 63;
            if (lm > 63) lm = 63;
        }
        if (j < 4) {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            sc[j - 4] = (uint8_t)(sc[j - 4] | ((ls >> 4) << 6));
            sc[j] = (uint8_t)(sc[j] | ((lm >> 4) << 6));
        }
    }
    const uint16_t d16 = half_of(d_block), m16 = half_of(m_block);
    put_f16(y, d16);
    put_f16(y + 2, m16);
    const float dd = half_value(d16), md = half_value(m16);
    for (int j = 0; j < 8; j++) {
        unsigned s, m; /* get_scale_min_k4 */
        if (j < 4) {
            s = sc[j] & 63u;
            m = sc[j + 4] & 63u;
        } else {
            s = (sc[j + 4] & 0xFu) | ((unsigned)(sc[j - 4] >> 6) << 4);
            m = (unsigned)(sc[j + 4] >> 4) | ((unsigned)(sc[j] >> 6) << 4);
        }
        const float d = dd * (float)s;
        if (d == 0.0f) continue;
        affine_requant(x + 32 * j, 32, d, md * (float)m, nmax, L + 32 * j);
    }
}

static void imx_q4_k(const float *x, const float *w, const float *scales, const float *mins, uint8_t *L,
                     uint8_t *y) {
    imx_kx(x, w, scales, mins, 15, y, L);
    uint8_t *q = y + 16;
    for (int r = 0; r < 4; r++)
        for (int l = 0; l < 32; l++) q[32 * r + l] = (uint8_t)(L[64 * r + l] | (L[64 * r + 32 + l] << 4));
}

static void imx_q5_k(const float *x, const float *w, const float *scales, const float *mins, uint8_t *L,
                     uint8_t *y) {
    imx_kx(x, w, scales, mins, 31, y, L);
    uint8_t *qh = y + 16, *q = y + 48;
    memset(qh, 0, 32);
    for (int r = 0; r < 4; r++) {
        for (int l = 0; l < 32; l++) {
            const unsigned a = L[64 * r + l], b = L[64 * r + 32 + l];
            qh[l] = (uint8_t)(qh[l] | ((a >> 4) << (2 * r)) | ((b >> 4) << (2 * r + 1)));
            q[32 * r + l] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        }
    }
}

/* Q6_K (quantize_row_q6_K_impl): from the group fits weighted by qw itself (scales, levels L), the rest as the
 * _ref path. */
static void imx_q6_k(const float *x, const float *scales, int8_t *L, uint8_t *y) {
    float max_scale = 0, max_abs = 0;
    for (int j = 0; j < 16; j++) {
        const float a = fabsf(scales[j]);
        if (a > max_abs) {
            max_abs = a;
            max_scale = scales[j];
        }
    }
    if (max_abs < TINY_GROUP) {
        memset(y, 0, 210);
        return;
    }
    const float iscale = -128.0f / max_scale;
    const uint16_t d16 = half_of(1.0f / iscale);
    int8_t *sc = (int8_t *)(y + 192);
    for (int j = 0; j < 16; j++) {
        const int l = round_magic(iscale * scales[j]);
        sc[j] = (int8_t)wrap_i8(l < 127 ? l : 127);
    }
    put_f16(y + 208, d16);
    const float dd = half_value(d16);
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)sc[j];
        if (d == 0.0f) continue;
        symmetric_requant(x + 16 * j, d, -32, 31, L + 16 * j);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int h = 0; h < 2; h++) {
        const int8_t *s = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            const unsigned a = (uint8_t)s[l], b = (uint8_t)s[l + 32], c = (uint8_t)s[l + 64], e = (uint8_t)s[l + 96];
            ql[64 * h + l] = (uint8_t)((a & 0xF) | ((c & 0xF) << 4));
            ql[64 * h + l + 32] = (uint8_t)((b & 0xF) | ((e & 0xF) << 4));
            qh[32 * h + l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
        }
    }
}

/* Q4_0 / Q5_0 (quantize_row_q4_0_impl / _q5_0_impl): the block's weighted symmetric fit to -8..7 / -16..15 (levels
 * + nmax in L), stored as fitted (no re-quantization against the f16 scale). */
static void imx_q4_0(float d, const int8_t *L, uint8_t *y) {
    put_f16(y, half_of(d));
    for (int j = 0; j < 16; j++) y[2 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

static void imx_q5_0(float d, const int8_t *L, uint8_t *y) {
    put_f16(y, half_of(d));
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const unsigned a = (uint8_t)L[j], b = (uint8_t)L[j + 16];
        y[6 + j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        qh |= ((a >> 4) & 1u) << j;
        qh |= ((b >> 4) & 1u) << (j + 16);
    }
    for (int k = 0; k < 4; k++) y[2 + k] = (uint8_t)(qh >> (8 * k));
}

/* Q4_1 / Q5_1 (quantize_row_q4_1_impl / _q5_1_impl): the block's weighted affine fit to 0..15 / 0..31, stored. */
static void imx_q4_1(float d, float neg_min, const uint8_t *L, uint8_t *y) {
    put_f16(y, half_of(d));
    put_f16(y + 2, half_of(-neg_min));
    for (int j = 0; j < 16; j++) y[4 + j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

static void imx_q5_1(float d, float neg_min, const uint8_t *L, uint8_t *y) {
    put_f16(y, half_of(d));
    put_f16(y + 2, half_of(-neg_min));
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const unsigned a = L[j], b = L[j + 16];
        y[8 + j] = (uint8_t)((a & 0xF) | ((b & 0xF) << 4));
        qh |= ((a >> 4) & 1u) << j;
        qh |= ((b >> 4) & 1u) << (j + 16);
    }
    for (int k = 0; k < 4; k++) y[4 + k] = (uint8_t)(qh >> (8 * k));
}

/* The lane instances of the affine fits, by path (NULL: portable). */
typedef void (*imx_affine_fn)(int n, int nmax, const float *x, const float *w, affine_fits *f);
#if defined(KQ_LANE_PATHS) && defined(KQ_HAVE_LANES)
static const imx_affine_fn IMX_AFFINE[N_PATHS] = {NULL, imx_affine_sse2, imx_affine_avx2, imx_affine_avx512};
#else
static const imx_affine_fn IMX_AFFINE[N_PATHS] = {NULL};
#endif

/* Affine fits of ng groups of n values (group g at x + n * g, weights w alike) to 0..nmax: scale[g], neg_min[g] and
 * the levels at L + n * g. The lane paths fit a batch of groups per call; a short last batch is padded with zero
 * groups whose results are dropped. */
static void imx_fit_affine_all(int n, int nmax, const float *x, const float *w, int64_t ng, float *scale,
                               float *neg_min, uint8_t *L, int path) {
    const imx_affine_fn fn = IMX_AFFINE[path];
    if (fn == NULL) {
        for (int64_t g = 0; g < ng; g++)
            scale[g] = imx_fit_affine(n, nmax, x + n * g, w + n * g, L + n * g, &neg_min[g]);
        return;
    }
    const int per = PATH_BATCH[path];
    float xb[MAX_GROUPS * 32], wb[MAX_GROUPS * 32];
    affine_fits f;
    for (int64_t g0 = 0; g0 < ng; g0 += per) {
        const int m = ng - g0 < per ? (int)(ng - g0) : per;
        const float *xs = x + n * g0, *ws = w + n * g0;
        if (m < per) {
            memset(xb, 0, sizeof xb);
            memset(wb, 0, sizeof wb);
            memcpy(xb, xs, (size_t)(m * n) * sizeof(float));
            memcpy(wb, ws, (size_t)(m * n) * sizeof(float));
            xs = xb;
            ws = wb;
        }
        fn(n, nmax, xs, ws, &f);
        for (int k = 0; k < m; k++) {
            scale[g0 + k] = f.scale[k];
            neg_min[g0 + k] = f.neg_min[k];
            affine_levels(&f, k, xs + n * k, n, nmax, L + n * (g0 + k));
        }
    }
}

typedef void (*imx_sym_fn)(int n, int nmax, const float *x, const float *w, qx_fits *f);
#if defined(KQ_LANE_PATHS) && defined(KQ_HAVE_LANES)
static const imx_sym_fn IMX_SYM[N_PATHS] = {NULL, imx_sym_sse2, imx_sym_avx2, imx_sym_avx512};
#else
static const imx_sym_fn IMX_SYM[N_PATHS] = {NULL};
#endif

/* Symmetric fits of ng groups of n values (group g at x + n * g, weights w alike) to -nmax..nmax-1: scale[g] and the
 * levels + nmax at L + n * g (0 for a near-zero group), as imx_fit_affine_all. */
static void imx_fit_sym_all(int n, int nmax, const float *x, const float *w, int64_t ng, float *scale, int8_t *L,
                            int path) {
    const imx_sym_fn fn = IMX_SYM[path];
    if (fn == NULL) {
        for (int64_t g = 0; g < ng; g++) scale[g] = imx_fit_sym(n, nmax, x + n * g, w + n * g, L + n * g);
        return;
    }
    const int per = PATH_BATCH[path];
    float xb[MAX_GROUPS * 32], wb[MAX_GROUPS * 32];
    qx_fits f;
    for (int64_t g0 = 0; g0 < ng; g0 += per) {
        const int m = ng - g0 < per ? (int)(ng - g0) : per;
        const float *xs = x + n * g0, *ws = w + n * g0;
        if (m < per) {
            memset(xb, 0, sizeof xb);
            memset(wb, 0, sizeof wb);
            memcpy(xb, xs, (size_t)(m * n) * sizeof(float));
            memcpy(wb, ws, (size_t)(m * n) * sizeof(float));
            xs = xb;
            ws = wb;
        }
        fn(n, nmax, xs, ws, &f);
        for (int k = 0; k < m; k++) {
            int8_t *Lg = L + n * (g0 + k);
            scale[g0 + k] = f.scale[k];
            for (int i = 0; i < n; i++)
                Lg[i] = f.tiny[k] ? 0
                                  : (int8_t)(clampi(round_magic(f.iscale[k] * xs[n * k + i]), -nmax, nmax - 1) + nmax);
        }
    }
}

/* Scratch of one row: value weights and levels (ncols each), group scales and mins (ncols / 16 each). */
typedef struct {
    float *w, *scale, *neg_min;
    uint8_t *L;
} imx_scratch;

/* One row (float32, finite blocks; blocks holding NaN/Inf were zeroed by the caller) -> its bytes. */
static void imx_row(const kformat *f, const float *x, int64_t ncols, const float *qw, uint8_t *y, int path,
                    const imx_scratch *t) {
    const int64_t nb = ncols / f->qk;
    switch (f->type) {
    case GT_Q4_0:
    case GT_Q5_0:
    case GT_Q4_1:
    case GT_Q5_1: {
        /* sigma2 over the whole row: sum of squares in order, divided by the row length */
        const float sigma2 = imx_sum_sq(x, ncols) / (float)ncols;
        for (int64_t b = 0; b < nb; b++) imx_weights(x + 32 * b, qw + 32 * b, sigma2, 32, t->w + 32 * b);
        if (f->type == GT_Q4_0 || f->type == GT_Q5_0) {
            int8_t *L = (int8_t *)t->L;
            imx_fit_sym_all(32, f->type == GT_Q4_0 ? 8 : 16, x, t->w, nb, t->scale, L, path);
            for (int64_t b = 0; b < nb; b++)
                (f->type == GT_Q4_0 ? imx_q4_0 : imx_q5_0)(t->scale[b], L + 32 * b, y + b * f->bytes);
            return;
        }
        imx_fit_affine_all(32, f->type == GT_Q4_1 ? 15 : 31, x, t->w, nb, t->scale, t->neg_min, t->L, path);
        for (int64_t b = 0; b < nb; b++)
            (f->type == GT_Q4_1 ? imx_q4_1 : imx_q5_1)(t->scale[b], t->neg_min[b], t->L + 32 * b, y + b * f->bytes);
        return;
    }
    case GT_Q2_K:
    case GT_Q4_K:
    case GT_Q5_K: {
        const int n = f->type == GT_Q2_K ? 16 : 32, per = SUPER / n;
        for (int64_t b = 0; b < nb; b++) {
            const float *xs = x + SUPER * b;
            /* Q2_K: the super-block's mean square; Q4_K/Q5_K: twice it */
            const float sigma2 = f->type == GT_Q2_K ? imx_sum_sq(xs, SUPER) / (float)SUPER
                                                    : 2.0f * imx_sum_sq(xs, SUPER) / (float)SUPER;
            imx_weights(xs, qw + SUPER * b, sigma2, SUPER, t->w + SUPER * b);
        }
        const int nmax = f->type == GT_Q2_K ? 3 : f->type == GT_Q4_K ? 15 : 31;
        imx_fit_affine_all(n, nmax, x, t->w, nb * per, t->scale, t->neg_min, t->L, path);
        for (int64_t b = 0; b < nb; b++) {
            const float *xs = x + SUPER * b, *ws = t->w + SUPER * b;
            const float *sc = t->scale + per * b, *mn = t->neg_min + per * b;
            uint8_t *L = t->L + SUPER * b, *yb = y + b * f->bytes;
            if (f->type == GT_Q2_K)
                imx_q2_k(xs, ws, sc, mn, L, yb);
            else if (f->type == GT_Q4_K)
                imx_q4_k(xs, ws, sc, mn, L, yb);
            else
                imx_q5_k(xs, ws, sc, mn, L, yb);
        }
        return;
    }
    case GT_Q3_K: {
        int8_t *L = (int8_t *)t->L;
        for (int64_t b = 0; b < nb; b++) {
            const float *xs = x + SUPER * b;
            const float sigma2 = 2.0f * imx_sum_sq(xs, SUPER) / (float)SUPER;
            imx_weights(xs, qw + SUPER * b, sigma2, SUPER, t->w + SUPER * b);
        }
        imx_fit_sym_all(16, 4, x, t->w, nb * 16, t->scale, L, path);
        for (int64_t b = 0; b < nb; b++)
            imx_q3_k(x + SUPER * b, t->w + SUPER * b, t->scale + 16 * b, L + SUPER * b, y + b * f->bytes);
        return;
    }
    default: { /* Q6_K: the group fits weighted by qw itself */
        int8_t *L = (int8_t *)t->L;
        imx_fit_sym_all(16, 32, x, qw, nb * 16, t->scale, L, path);
        for (int64_t b = 0; b < nb; b++) imx_q6_k(x + SUPER * b, t->scale + 16 * b, L + SUPER * b, y + b * f->bytes);
        return;
    }
    }
}

/* kquant_imatrix(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix[, path]) -> flat index of the
 * first non-finite value or -1. As kquant(), plus imatrix: the address of ncols float32 column weights (finite;
 * checked by kernels/_native.py). Bytes equal ggml_quantize_chunk(type, ..., imatrix) for finite rows. A block
 * holding NaN/Inf gets the non-finite policy's bytes and counts as zeros in its row's statistics (ggml would
 * spread the NaN over the row). The lane paths run the group searches (make_qkx3_quants, make_qx_quants: the bulk
 * of the work) several groups at a time; the per-super-block steps run one at a time on every path. */
PyObject *l1q_py_kquant_imatrix(PyObject *self, PyObject *args) {
    int type, kind;
    unsigned long long s, d, q;
    long long rows, ncols, stride;
    PyObject *path_obj = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiLLKLK|O", &type, &s, &kind, &rows, &ncols, &d, &stride, &q, &path_obj))
        return NULL;
    const int path = parse_path(path_obj, "kquant_imatrix");
    if (path < 0) return NULL;
    const kformat *f = find_format(type);
    if (f == NULL) {
        PyErr_Format(PyExc_ValueError, "_fastq8.kquant_imatrix: unsupported ggml type %d", type);
        return NULL;
    }
    if (kind < SRC_F32 || kind > SRC_BF16 || rows < 0 || ncols < 0 || ncols % f->qk != 0) {
        PyErr_Format(PyExc_ValueError, "_fastq8.kquant_imatrix: bad kind or shape (ncols must be a multiple of %d)",
                     f->qk);
        return NULL;
    }
    if (rows > 1 && stride < ncols / f->qk * f->bytes) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.kquant_imatrix: dst_row_stride is smaller than a quantized row");
        return NULL;
    }
    if (rows == 0 || ncols == 0) return PyLong_FromLongLong(-1);
    /* one allocation: the row as float32, the value weights, group scales and mins, levels */
    const size_t nc = (size_t)ncols;
    char *mem = (char *)malloc(nc * sizeof(float) * 2 + (nc / 16) * sizeof(float) * 2 + nc);
    if (mem == NULL) return PyErr_NoMemory();
    float *buf = (float *)mem;
    imx_scratch t;
    t.w = buf + nc;
    t.scale = t.w + nc;
    t.neg_min = t.scale + nc / 16;
    t.L = (uint8_t *)(t.neg_min + nc / 16);
    const uint8_t *src = (const uint8_t *)(uintptr_t)s;
    uint8_t *dst = (uint8_t *)(uintptr_t)d;
    const float *qw = (const float *)(uintptr_t)q;
    const size_t src_row = nc * (kind == SRC_F32 ? 4u : 2u);
    const int64_t nb = ncols / f->qk;
    int64_t first = -1;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++) {
        const void *row = src + (size_t)r * src_row;
        uint8_t *y = dst + r * stride;
        if (kind == SRC_F32)
            memcpy(buf, row, nc * sizeof(float));
        else
            widen((const uint16_t *)row, kind, (int)ncols, buf);
        int any_bad = 0;
        for (int64_t b = 0; b < nb; b++) {
            const int i = first_bad_block(buf + b * f->qk, f->qk);
            if (i < 0) continue;
            if (first < 0) first = r * ncols + b * f->qk + i;
            memset(buf + b * f->qk, 0, (size_t)f->qk * sizeof(float));
            any_bad = 1;
        }
        imx_row(f, buf, ncols, qw, y, path, &t);
        if (any_bad) {
            /* the buffer was zeroed there: look at the source again to find the blocks to overwrite */
            for (int64_t b = 0; b < nb; b++) {
                float tmp[SUPER];
                if (kind == SRC_F32)
                    memcpy(tmp, (const float *)row + b * f->qk, (size_t)f->qk * sizeof(float));
                else
                    widen((const uint16_t *)row + b * f->qk, kind, f->qk, tmp);
                if (first_bad_block(tmp, f->qk) >= 0) poison_block(f, y + b * f->bytes);
            }
        }
    }
    Py_END_ALLOW_THREADS
    free(mem);
    return PyLong_FromLongLong(first);
}
#endif /* !KQ_LANE_BODY */

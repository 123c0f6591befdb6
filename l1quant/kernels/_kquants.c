/*
 * l1quant.kernels._fastq8 (second source file): Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K, written to
 * give the same bytes as ggml's quantize_row_<type>_ref (the path llama-quantize takes without an importance
 * matrix), plus l1quant's non-finite policy.
 *
 * Exactness: the results must match ggml-base built for baseline x86-64 (SSE2, no FMA), where every float
 * expression is evaluated in IEEE binary32, one rounding per operation, in source order. So this file is built with
 * -ffp-contract=off and without -ffast-math, keeps every sum sequential, and spells each expression with the same
 * operands in the same order as the reference computes it (a*b*c is (a*b)*c; an int operand is converted to float
 * first). Where the reference relies on x86 behaviour that C leaves undefined (float -> small int conversion of a
 * NaN/Inf/out-of-range value, int -> int8 narrowing), the helpers below state that behaviour explicitly.
 *
 * Two paths give the same bytes: portable C that follows the reference value by value, and on x86-64 an SSE2 path
 * (Q4_0..Q5_1 blocks as vectors; the K-quants' per-group fits run four groups per vector, one group per lane), both
 * checked against ggml by tests/test_kquants_native.py. Q3_K has only the portable path.
 *
 * Non-finite policy (l1quant's, not ggml's): a block holding a NaN or Inf is written as zero bytes with every f16
 * scale field (d, and m/dmin where the type has one) set to 0x7E00 (f16 NaN), so it dequantizes to NaN; the caller
 * gets the flat index of the first such value.
 *
 * Thread safety: no global state; each call works on stack buffers and runs with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_halfconv.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
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
/* SSE2 helpers (baseline x86-64) for the lane-wise paths below.
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

static inline f4 sel_f4(f4 m, f4 a, f4 b) { return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)); }
static inline i4 sel_i4(i4 m, i4 a, i4 b) { return _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b)); }
static inline f4 abs_f4(f4 v) { return _mm_and_ps(v, _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF))); }
static inline f4 neg_f4(f4 v) { return _mm_xor_ps(v, _mm_castsi128_ps(_mm_set1_epi32((int)0x80000000u))); }

/* round_magic per lane. */
static inline i4 round_magic4(f4 f) {
    const i4 u = _mm_castps_si128(_mm_add_ps(f, _mm_set1_ps(12582912.0f)));
    return _mm_sub_epi32(_mm_and_si128(u, _mm_set1_epi32(0x007FFFFF)), _mm_set1_epi32(0x00400000));
}

/* clampi per lane (SSE2 has no 32-bit min/max; compare and select). */
static inline i4 clamp4(i4 v, int lo, int hi) {
    const i4 vlo = _mm_set1_epi32(lo), vhi = _mm_set1_epi32(hi);
    v = sel_i4(_mm_cmpgt_epi32(v, vhi), vhi, v);
    return sel_i4(_mm_cmplt_epi32(v, vlo), vlo, v);
}

/* Groups of n values (n a multiple of 4), `stride` floats apart, 4 * nv of them, into lanes: cols[i * nv + b]
 * holds value i of groups 4b .. 4b+3 (group 4b + g in lane g). */
static inline void load_groups(const float *x, int stride, int n, int nv, f4 *cols) {
    for (int b = 0; b < nv; b++) {
        const float *g = x + 4 * b * stride;
        for (int k = 0; k < n; k += 4) {
            f4 r0 = _mm_loadu_ps(g + k), r1 = _mm_loadu_ps(g + stride + k);
            f4 r2 = _mm_loadu_ps(g + 2 * stride + k), r3 = _mm_loadu_ps(g + 3 * stride + k);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            cols[k * nv + b] = r0;
            cols[(k + 1) * nv + b] = r1;
            cols[(k + 2) * nv + b] = r2;
            cols[(k + 3) * nv + b] = r3;
        }
    }
}

/* Inverse of load_groups for small non-negative levels: L[group * stride + i]. */
static inline void store_levels(const i4 *lv, int n, int nv, int stride, uint8_t *L) {
    int32_t t[4];
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < nv; b++) {
            _mm_storeu_si128((i4 *)t, lv[i * nv + b]);
            for (int g = 0; g < 4; g++) L[(4 * b + g) * stride + i] = (uint8_t)t[g];
        }
    }
}
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
/* Group fitting used by the K-quants */

/* Affine fit of one group of n values to levels 0..nmax with weights w: returns the scale, stores the offset
 * magnitude in *neg_min and the levels in L. Same search as ggml's make_qkx2_quants: a first guess from the
 * group's range, then nstep+1 trial scales (rmin + rdelta*is + nmax)/(hi - lo) each refined by weighted least
 * squares, keeping the fit of smallest weighted error (absolute if use_abs, else squared). The offset `lo` is
 * updated as better fits are found and later trials use the updated value, as in the reference. Inlined with
 * constant arguments so each caller gets its own specialized loop. */
static inline float fit_affine(int n, int nmax, const float *restrict x, const float *restrict w,
                               uint8_t *restrict L, float *neg_min, float rmin, float rdelta, int nstep,
                               int use_abs) {
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
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *neg_min = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo);
    float scale = 1.0f / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(round_magic(iscale * (x[i] - lo)), 0, nmax);
        L[i] = (uint8_t)l;
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
                memcpy(L, trial, (size_t)n);
                best_err = err;
                scale = t_scale;
                lo = t_min;
            }
        }
    }
    *neg_min = -lo;
    return scale;
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

/* Symmetric fit of 16 values to signed levels -32..31 (stored +32 in L), weights x*x, by trying 19 scales:
 * ggml's make_qx_quants with nmax = 32, rmse_type = 1 and no importance weights. */
static float fit_q6_group(const float *restrict x, int8_t *restrict L) {
    float amax;
    const float peak = signed_peak(16, x, &amax);
    if (amax < TINY_GROUP) {
        memset(L, 0, 16);
        return 0.0f;
    }
    float w[16], wx[16];
    float iscale = -32.0f / peak;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        const int l = clampi(round_magic(iscale * x[i]), -32, 31);
        L[i] = (int8_t)(l + 32);
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
            /* recomputing the accepted levels (as the reference does) is cheaper than saving every trial's */
            for (int i = 0; i < 16; i++) L[i] = (int8_t)(clampi(round_magic(iscale * x[i]), -32, 31) + 32);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* The same fits, 4 * nv groups at a time in SSE2 lanes
 *
 * Lane g of vector b follows group 4b + g's computation exactly (see the SSE2 helpers above); the sums stay
 * sequential within a lane, so the order of additions is the reference's. What this buys is throughput: the
 * scalar fits are bound by the latency of their running sums, and 4 * nv independent groups hide it (nv > 1 keeps
 * several vector chains in flight too). Arrays are indexed [i * nv + b]: value i, vector b. nv <= MAX_NV. */

#ifdef KQ_HAVE_LANES
#define MAX_NV 4

static inline int any_lane(const f4 *m, int nv) {
    int bits = 0;
    for (int b = 0; b < nv; b++) bits |= _mm_movemask_ps(m[b]);
    return bits;
}

/* fit_affine for 4 * nv groups of n values. Outputs per group: scale, -min (vectors [b]) and levels. */
static inline void fit_affine_v(int nv, int n, int nmax, const f4 *restrict x, const f4 *restrict w,
                                i4 *restrict L, f4 *scale_out, f4 *neg_min_out, float rmin, float rdelta, int nstep,
                                int use_abs) {
    i4 trial[32 * MAX_NV];
    f4 lo[MAX_NV], hi[MAX_NV], sum_w[MAX_NV], sum_x[MAX_NV], flat[MAX_NV], lo_flat[MAX_NV], iscale[MAX_NV];
    f4 scale[MAX_NV], best[MAX_NV], sum_l[MAX_NV], sum_l2[MAX_NV], sum_xl[MAX_NV], det_pos[MAX_NV];
    f4 t_scale[MAX_NV], t_min[MAX_NV], err[MAX_NV], take[MAX_NV];
    const f4 zero = _mm_setzero_ps();
    for (int b = 0; b < nv; b++) {
        lo[b] = hi[b] = x[b];
        sum_w[b] = w[b];
        sum_x[b] = _mm_mul_ps(sum_w[b], x[b]);
    }
    for (int i = 1; i < n; i++) {
        for (int b = 0; b < nv; b++) {
            const f4 xi = x[i * nv + b], wi = w[i * nv + b];
            lo[b] = _mm_min_ps(xi, lo[b]); /* minps(a, b) is exactly a < b ? a : b, the reference's update */
            hi[b] = _mm_max_ps(xi, hi[b]); /* a > b ? a : b */
            sum_w[b] = _mm_add_ps(sum_w[b], wi);
            sum_x[b] = _mm_add_ps(sum_x[b], _mm_mul_ps(wi, xi));
        }
    }
    for (int b = 0; b < nv; b++) {
        lo[b] = sel_f4(_mm_cmpgt_ps(lo[b], zero), zero, lo[b]); /* not minps: it would turn -0 into +0 */
        flat[b] = _mm_cmpeq_ps(hi[b], lo[b]);                    /* these lanes return early in the reference */
        lo_flat[b] = lo[b];
        iscale[b] = _mm_div_ps(_mm_set1_ps((float)nmax), _mm_sub_ps(hi[b], lo[b]));
        scale[b] = _mm_div_ps(_mm_set1_ps(1.0f), iscale[b]);
        best[b] = zero;
    }
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < nv; b++) {
            const int k = i * nv + b;
            const i4 l = clamp4(round_magic4(_mm_mul_ps(iscale[b], _mm_sub_ps(x[k], lo[b]))), 0, nmax);
            L[k] = l;
            f4 diff = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(scale[b], _mm_cvtepi32_ps(l)), lo[b]), x[k]);
            diff = use_abs ? abs_f4(diff) : _mm_mul_ps(diff, diff);
            best[b] = _mm_add_ps(best[b], _mm_mul_ps(w[k], diff));
        }
    }
    for (int is = 0; is <= nstep; is++) {
        const f4 num = _mm_set1_ps(rmin + rdelta * (float)is + (float)nmax);
        for (int b = 0; b < nv; b++) {
            iscale[b] = _mm_div_ps(num, _mm_sub_ps(hi[b], lo[b]));
            sum_l[b] = sum_l2[b] = sum_xl[b] = zero;
        }
        for (int i = 0; i < n; i++) {
            for (int b = 0; b < nv; b++) {
                const int k = i * nv + b;
                const i4 l = clamp4(round_magic4(_mm_mul_ps(iscale[b], _mm_sub_ps(x[k], lo[b]))), 0, nmax);
                trial[k] = l;
                const f4 lf = _mm_cvtepi32_ps(l);
                const f4 wl = _mm_mul_ps(w[k], lf);
                sum_l[b] = _mm_add_ps(sum_l[b], wl);
                sum_l2[b] = _mm_add_ps(sum_l2[b], _mm_mul_ps(wl, lf));
                sum_xl[b] = _mm_add_ps(sum_xl[b], _mm_mul_ps(wl, x[k]));
            }
        }
        for (int b = 0; b < nv; b++) {
            const f4 det = _mm_sub_ps(_mm_mul_ps(sum_w[b], sum_l2[b]), _mm_mul_ps(sum_l[b], sum_l[b]));
            det_pos[b] = _mm_cmpgt_ps(det, zero);
            t_scale[b] = _mm_div_ps(_mm_sub_ps(_mm_mul_ps(sum_w[b], sum_xl[b]), _mm_mul_ps(sum_x[b], sum_l[b])), det);
            t_min[b] = _mm_div_ps(_mm_sub_ps(_mm_mul_ps(sum_l2[b], sum_x[b]), _mm_mul_ps(sum_l[b], sum_xl[b])), det);
            const f4 min_pos = _mm_cmpgt_ps(t_min[b], zero);
            t_min[b] = sel_f4(min_pos, zero, t_min[b]);
            t_scale[b] = sel_f4(min_pos, _mm_div_ps(sum_xl[b], sum_l2[b]), t_scale[b]);
            err[b] = zero;
        }
        if (!any_lane(det_pos, nv)) continue; /* no lane takes the reference's `if (D > 0)` */
        for (int i = 0; i < n; i++) {
            for (int b = 0; b < nv; b++) {
                const int k = i * nv + b;
                f4 diff = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(t_scale[b], _mm_cvtepi32_ps(trial[k])), t_min[b]), x[k]);
                diff = use_abs ? abs_f4(diff) : _mm_mul_ps(diff, diff);
                err[b] = _mm_add_ps(err[b], _mm_mul_ps(w[k], diff));
            }
        }
        for (int b = 0; b < nv; b++) {
            take[b] = _mm_and_ps(det_pos[b], _mm_cmplt_ps(err[b], best[b]));
            best[b] = sel_f4(take[b], err[b], best[b]);
            scale[b] = sel_f4(take[b], t_scale[b], scale[b]);
            lo[b] = sel_f4(take[b], t_min[b], lo[b]);
        }
        if (!any_lane(take, nv)) continue;
        for (int i = 0; i < n; i++)
            for (int b = 0; b < nv; b++)
                L[i * nv + b] = sel_i4(_mm_castps_si128(take[b]), trial[i * nv + b], L[i * nv + b]);
    }
    for (int i = 0; i < n; i++)
        for (int b = 0; b < nv; b++) L[i * nv + b] = _mm_andnot_si128(_mm_castps_si128(flat[b]), L[i * nv + b]);
    for (int b = 0; b < nv; b++) {
        scale_out[b] = _mm_andnot_ps(flat[b], scale[b]);
        neg_min_out[b] = neg_f4(sel_f4(flat[b], lo_flat[b], lo[b]));
    }
}

/* fit_q6_group for the 4 * nv groups of 16 values at x, x+16, ...: scales[0 .. 4nv-1] and L[0 .. 64nv-1] as that
 * many calls of fit_q6_group would write them. */
static inline void fit_q6_groups_v(int nv, const float *x, int8_t *L, float *scales) {
    f4 v[16 * MAX_NV], w[16 * MAX_NV], wx[16 * MAX_NV];
    i4 lev[16 * MAX_NV], cand[16 * MAX_NV];
    f4 amax[MAX_NV], peak[MAX_NV], tiny[MAX_NV], iscale[MAX_NV], sumlx[MAX_NV], suml2[MAX_NV], scale[MAX_NV];
    f4 best[MAX_NV], take[MAX_NV];
    const f4 zero = _mm_setzero_ps();
    load_groups(x, 16, 16, nv, v);
    for (int b = 0; b < nv; b++) amax[b] = peak[b] = zero;
    for (int i = 0; i < 16; i++) {
        for (int b = 0; b < nv; b++) {
            const f4 ax = abs_f4(v[i * nv + b]);
            const f4 bigger = _mm_cmpgt_ps(ax, amax[b]);
            amax[b] = sel_f4(bigger, ax, amax[b]);
            peak[b] = sel_f4(bigger, v[i * nv + b], peak[b]);
        }
    }
    for (int b = 0; b < nv; b++) {
        tiny[b] = _mm_cmplt_ps(amax[b], _mm_set1_ps(TINY_GROUP)); /* early return in the reference */
        iscale[b] = _mm_div_ps(_mm_set1_ps(-32.0f), peak[b]);
        sumlx[b] = suml2[b] = zero;
    }
    for (int i = 0; i < 16; i++) {
        for (int b = 0; b < nv; b++) {
            const int k = i * nv + b;
            const i4 l = clamp4(round_magic4(_mm_mul_ps(iscale[b], v[k])), -32, 31);
            lev[k] = l;
            w[k] = _mm_mul_ps(v[k], v[k]);
            wx[k] = _mm_mul_ps(w[k], v[k]);
            const f4 lf = _mm_cvtepi32_ps(l);
            sumlx[b] = _mm_add_ps(sumlx[b], _mm_mul_ps(wx[k], lf));
            suml2[b] = _mm_add_ps(suml2[b], _mm_mul_ps(_mm_mul_ps(w[k], lf), lf));
        }
    }
    for (int b = 0; b < nv; b++) {
        /* suml2 ? sumlx/suml2 : 0 -- cmpneq is true for NaN, like C's truth test */
        scale[b] = _mm_and_ps(_mm_cmpneq_ps(suml2[b], zero), _mm_div_ps(sumlx[b], suml2[b]));
        best[b] = _mm_mul_ps(scale[b], sumlx[b]);
    }
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        const f4 num = _mm_set1_ps(-(32.0f + 0.1f * (float)is));
        for (int b = 0; b < nv; b++) {
            iscale[b] = _mm_div_ps(num, peak[b]);
            sumlx[b] = suml2[b] = zero;
        }
        for (int i = 0; i < 16; i++) {
            for (int b = 0; b < nv; b++) {
                const int k = i * nv + b;
                const i4 l = clamp4(round_magic4(_mm_mul_ps(iscale[b], v[k])), -32, 31);
                cand[k] = l;
                const f4 lf = _mm_cvtepi32_ps(l);
                sumlx[b] = _mm_add_ps(sumlx[b], _mm_mul_ps(wx[k], lf));
                suml2[b] = _mm_add_ps(suml2[b], _mm_mul_ps(_mm_mul_ps(w[k], lf), lf));
            }
        }
        for (int b = 0; b < nv; b++) {
            take[b] = _mm_and_ps(_mm_cmpgt_ps(suml2[b], zero),
                                 _mm_cmpgt_ps(_mm_mul_ps(sumlx[b], sumlx[b]), _mm_mul_ps(best[b], suml2[b])));
            const f4 s = _mm_div_ps(sumlx[b], suml2[b]);
            scale[b] = sel_f4(take[b], s, scale[b]);
            best[b] = sel_f4(take[b], _mm_mul_ps(s, sumlx[b]), best[b]);
        }
        if (!any_lane(take, nv)) continue;
        for (int i = 0; i < 16; i++)
            for (int b = 0; b < nv; b++)
                lev[i * nv + b] = sel_i4(_mm_castps_si128(take[b]), cand[i * nv + b], lev[i * nv + b]);
    }
    /* levels are stored +32; tiny lanes get level 0 (not 32) and scale 0, as the reference's early return */
    for (int i = 0; i < 16; i++)
        for (int b = 0; b < nv; b++)
            lev[i * nv + b] = _mm_andnot_si128(_mm_castps_si128(tiny[b]),
                                               _mm_add_epi32(lev[i * nv + b], _mm_set1_epi32(32)));
    store_levels(lev, 16, nv, 16, (uint8_t *)L);
    for (int b = 0; b < nv; b++) _mm_storeu_ps(scales + 4 * b, _mm_andnot_ps(tiny[b], scale[b]));
}
#endif /* KQ_HAVE_LANES */

/* ------------------------------------------------------------------------------------------------------------ */
/* K-quant super-blocks (256 values) */

/* Pack four 2-bit planes: byte l of each 32-byte run holds values l, l+32, l+64, l+96 of a 128-value half. */
static inline void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *s = L + 128 * h;
        for (int l = 0; l < 32; l++)
            qs[32 * h + l] = (uint8_t)(s[l] | (s[l + 32] << 2) | (s[l + 64] << 4) | (s[l + 96] << 6));
    }
}

/* Q2_K: matches quantize_row_q2_K_ref.
 * Layout (84 bytes): scales[16] (low nibble scale, high nibble min) | qs[64] | f16 d | f16 dmin. */
static void blk_q2_k(const float *x, uint8_t *y, int lanes) {
    uint8_t L[SUPER];
    float scales[16], mins[16];
    float max_scale = 0, max_min = 0;
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[16 * 4], w[16 * 4], sc4[4], mn4[4];
        i4 lev[16 * 4];
        load_groups(x, 16, 16, 4, v); /* all 16 groups: 4 vectors of 4 */
        for (int k = 0; k < 16 * 4; k++) w[k] = abs_f4(v[k]);
        fit_affine_v(4, 16, 3, v, w, lev, sc4, mn4, -0.5f, 0.1f, 15, 1);
        for (int b = 0; b < 4; b++) {
            _mm_storeu_ps(scales + 4 * b, sc4[b]);
            _mm_storeu_ps(mins + 4 * b, mn4[b]);
        }
        store_levels(lev, 16, 4, 16, L);
    } else
#endif
    {
        (void)lanes;
        for (int j = 0; j < 16; j++) {
            float w[16];
            for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, 1);
        }
    }
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
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)(sc[j] & 0xF);
        if (d == 0.0f) continue; /* keep the fit's levels */
        const float dm = dm_all * (float)(sc[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = (uint8_t)clampi(round_magic((x[16 * j + i] + dm) / d), 0, 3);
    }
    pack_2bit(L, qs);
}

/* Q3_K: matches quantize_row_q3_K_ref.
 * Layout (110 bytes): hmask[32] (bit b of byte m: high bit of value 32*b + m) | qs[64] (low 2 bits, as Q2_K) |
 * scales[12] (16 six-bit signed scales, +32: low nibbles in bytes 0..7, high 2-bit pairs in bytes 8..11) | f16 d. */
static void blk_q3_k(const float *x, uint8_t *y, int lanes) {
    (void)lanes; /* no lane-wise variant: its coordinate descent branches value by value */
    int8_t L[SUPER];
    float scales[16];
    int lev[16]; /* the 6-bit codes written to the scales field, 0..63 */
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_q3_group(x + 16 * j, L + 16 * j);
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
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)(lev[j] - 32);
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(round_magic(x[16 * j + i] / d), -4, 3) + 4);
    }
    uint8_t lo2[SUPER];
    memset(hmask, 0, 32);
    for (int j = 0; j < SUPER; j++) {
        int l = L[j];
        if (l > 3) {
            hmask[j % 32] = (uint8_t)(hmask[j % 32] | (1u << (j / 32)));
            l -= 4;
        }
        lo2[j] = (uint8_t)l;
    }
    pack_2bit(lo2, qs);
}

/* Shared by Q4_K and Q5_K: per 32-value group an affine fit with weights av + |x| (av = RMS of the group), then
 * 6-bit codes for scales and mins against two f16 super-scales, then the levels recomputed with the stored scales.
 * Writes d, dmin and the 12 scale bytes at y[0..15]; returns the levels (0..nmax) in L. */
static inline void kx_common(const float *x, uint8_t *y, uint8_t *L, int nmax, float rmin, int nstep, int lanes) {
    float scales[8], mins[8];
    float max_scale = 0, max_min = 0;
#ifdef KQ_HAVE_LANES
    if (lanes) {
        f4 v[32 * 2], w[32 * 2], sc4[2], mn4[2];
        i4 lev[32 * 2];
        load_groups(x, 32, 32, 2, v); /* all 8 groups: 2 vectors of 4 */
        for (int b = 0; b < 2; b++) {
            f4 sum_x2 = _mm_setzero_ps();
            for (int i = 0; i < 32; i++) sum_x2 = _mm_add_ps(sum_x2, _mm_mul_ps(v[2 * i + b], v[2 * i + b]));
            const f4 av = _mm_sqrt_ps(_mm_div_ps(sum_x2, _mm_set1_ps(32.0f)));
            for (int i = 0; i < 32; i++) w[2 * i + b] = _mm_add_ps(av, abs_f4(v[2 * i + b]));
        }
        fit_affine_v(2, 32, nmax, v, w, lev, sc4, mn4, rmin, 0.1f, nstep, 0);
        for (int b = 0; b < 2; b++) {
            _mm_storeu_ps(scales + 4 * b, sc4[b]);
            _mm_storeu_ps(mins + 4 * b, mn4[b]);
        }
        store_levels(lev, 32, 2, 32, L);
    } else
#endif
    {
        (void)lanes;
        for (int j = 0; j < 8; j++) {
            float w[32];
            const float *g = x + 32 * j;
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++) sum_x2 += g[l] * g[l];
            const float av = sqrtf(sum_x2 / 32.0f);
            for (int l = 0; l < 32; l++) w[l] = av + fabsf(g[l]);
            scales[j] = fit_affine(32, nmax, g, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        }
    }
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
    for (int j = 0; j < 8; j++) {
        const float d = dd * (float)ls[j];
        if (d == 0.0f) continue;
        const float dm = dm_all * (float)lm[j];
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)clampi(round_magic((x[32 * j + i] + dm) / d), 0, nmax);
    }
}

/* Q4_K: matches quantize_row_q4_K_ref.
 * Layout (144 bytes): f16 d | f16 dmin | scales[12] | qs[128] (byte l of run r: value 64r+l low, 64r+32+l high). */
static void blk_q4_k(const float *x, uint8_t *y, int lanes) {
    uint8_t L[SUPER];
    kx_common(x, y, L, 15, -1.0f, 20, lanes);
    uint8_t *q = y + 16;
    for (int r = 0; r < 4; r++)
        for (int l = 0; l < 32; l++) q[32 * r + l] = (uint8_t)(L[64 * r + l] | (L[64 * r + 32 + l] << 4));
}

/* Q5_K: matches quantize_row_q5_K_ref.
 * Layout (176 bytes): f16 d | f16 dmin | scales[12] | qh[32] (bits 2r, 2r+1: fifth bit of values 64r+l,
 * 64r+32+l) | qs[128] (low nibbles, as Q4_K). */
static void blk_q5_k(const float *x, uint8_t *y, int lanes) {
    uint8_t L[SUPER];
    kx_common(x, y, L, 31, -0.5f, 15, lanes);
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
static void blk_q6_k(const float *x, uint8_t *y, int lanes) {
    int8_t L[SUPER];
    float scales[16];
    float max_scale = 0, max_abs = 0;
#ifdef KQ_HAVE_LANES
    if (lanes) {
        fit_q6_groups_v(4, x, L, scales); /* all 16 groups: 4 vectors of 4 */
    } else
#endif
    {
        (void)lanes;
        for (int j = 0; j < 16; j++) scales[j] = fit_q6_group(x + 16 * j, L + 16 * j);
    }
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
    for (int j = 0; j < 16; j++) {
        const float d = dd * (float)sc[j];
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(clampi(round_magic(x[16 * j + i] / d), -32, 31) + 32);
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

/* ------------------------------------------------------------------------------------------------------------ */
/* Formats table and the row driver */

/* lanes != 0: use the SSE2 code where there is some (same bytes; the tests check both paths). */
typedef void (*block_fn)(const float *x, uint8_t *y, int lanes);

typedef struct {
    int type;       /* GGML type number */
    int qk;         /* values per block */
    int bytes;      /* bytes per block */
    int nan_at[2];  /* byte offsets of the f16 scale fields that the non-finite policy sets to NaN; -1: none */
    block_fn quant; /* one block from float32 */
} kformat;

static const kformat FORMATS[] = {
    {GT_Q4_0, 32, 18, {0, -1}, blk_q4_0},   {GT_Q4_1, 32, 20, {0, 2}, blk_q4_1},
    {GT_Q5_0, 32, 22, {0, -1}, blk_q5_0},   {GT_Q5_1, 32, 24, {0, 2}, blk_q5_1},
    {GT_Q2_K, 256, 84, {80, 82}, blk_q2_k}, {GT_Q3_K, 256, 110, {108, -1}, blk_q3_k},
    {GT_Q4_K, 256, 144, {0, 2}, blk_q4_k},  {GT_Q5_K, 256, 176, {0, 2}, blk_q5_k},
    {GT_Q6_K, 256, 210, {208, -1}, blk_q6_k},
};

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

/* Widen qk source values (f16 or bf16 bits) into buf; exact. */
static inline void widen(const uint16_t *src, int kind, int n, float *buf) {
    if (kind == SRC_BF16) {
        for (int i = 0; i < n; i++) buf[i] = bits_to_f32((uint32_t)src[i] << 16);
    } else {
        for (int i = 0; i < n; i++) buf[i] = bits_to_f32(f16_to_f32_bits(src[i]));
    }
}

/* One row of ncols values (a multiple of f->qk) of the given source kind -> ncols/qk blocks at y. Returns the
 * index within the row of the first non-finite value, or -1. Half-precision sources are widened one block at a
 * time into a stack buffer (1 KiB), so no allocation and nothing shared between threads. */
static int64_t quant_row(const kformat *f, const void *src, int kind, int64_t ncols, uint8_t *y, int lanes) {
    float buf[SUPER];
    int64_t first = -1;
    const int64_t nb = ncols / f->qk;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb;
        if (kind == SRC_F32) {
            xb = (const float *)src + b * f->qk;
        } else {
            widen((const uint16_t *)src + b * f->qk, kind, f->qk, buf);
            xb = buf;
        }
        uint8_t *yb = y + b * f->bytes;
        const int bad = first_bad_block(xb, f->qk);
        if (bad >= 0) {
            if (first < 0) first = b * f->qk + bad;
            poison_block(f, yb);
        } else {
            f->quant(xb, yb, lanes);
        }
    }
    return first;
}

/* kquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride[, lanes=1]) -> flat index of the first non-finite
 * value or -1. src: rows x ncols contiguous values of `kind` (0 float32, 1 float16, 2 bf16 bits); dst: row r at
 * dst + r * dst_row_stride, ncols / qk blocks each. Addresses were validated by kernels/_native.py. lanes=0 forces
 * the portable C path instead of the SSE2 one (for tests: both must give the same bytes). */
PyObject *l1q_py_kquant(PyObject *self, PyObject *args) {
    int type, kind, lanes = 1;
    unsigned long long s, d;
    long long rows, ncols, stride;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiLLKL|p", &type, &s, &kind, &rows, &ncols, &d, &stride, &lanes)) return NULL;
    const kformat *f = find_format(type);
    if (f == NULL) {
        PyErr_Format(PyExc_ValueError, "_fastq8.kquant: unsupported ggml type %d", type);
        return NULL;
    }
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
        const int64_t fr = quant_row(f, src + (size_t)r * src_row, kind, ncols, dst + r * stride, lanes);
        if (fr >= 0 && first < 0) first = r * ncols + fr;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(first);
}

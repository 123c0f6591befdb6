/*
 * l1quant.kernels._fastq8: optional compiled accelerator for the kernels (the numpy code is the reference and the
 * fallback; tests assert both give identical bytes).
 *
 * Every function takes raw addresses that the Python wrapper (kernels/_native.py) has validated, runs with the
 * GIL released, and returns the flat index of the first NaN/Inf in the source, or -1.
 *
 *   q8_0(src, kind, rows, ncols, dst, dst_row_stride)   Q8_0 like ggml's quantize_row_q8_0_ref (+ NaN policy)
 *   f16 (src, kind, rows, ncols, dst, dst_row_stride)   F16: RNE, NaN -> 0x7E00 | sign
 *   bf16(src, kind, rows, ncols, dst, dst_row_stride)   BF16: ggml_compute_fp32_to_bf16 (RNE, NaN quieted)
 *   f32 (src, kind, rows, ncols, dst, dst_row_stride)   F32: exact widening / copy
 *   first_nonfinite(src, kind, n)
 *   kquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride)   Q4_0/Q4_1/Q5_0/Q5_1/Q2_K..Q6_K (_kquants.c)
 *   kquant_imatrix(..., dst_row_stride, imatrix)   the same types with importance weights (_kquants.c)
 *   iquant_grid(..., imatrix, grid tables...)   IQ2_XXS/IQ2_XS/IQ2_S/IQ1_S/IQ1_M (_iquants2.c)
 *   iquant(..., dst_row_stride, imatrix, tables...)   IQ4_NL/IQ4_XS/IQ3_XXS/IQ3_S, imatrix optional (_iquants3.c)
 *
 * kind: 0 = float32, 1 = float16, 2 = bf16 (uint16 bits). Source rows are contiguous (row r at r * ncols).
 *
 * Exactness notes: build without -ffast-math and with -ffp-contract=off: x * id + h must round twice, an FMA would
 * change results. Q8_0 rounding uses (int)(v + copysignf(0.49999997f, v)), equal to roundf(v) for |v| <= 128
 * (see kernels/q8_0.py); the int conversion truncates, as C requires.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "_halfconv.h" /* bits_to_f32, f32_to_bits, f32_to_f16_bits, f16_to_f32_bits */

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Build a generic and an AVX2 clone of the hot loops and pick one at load time (GCC/Clang on x86-64 ELF). */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__) && !defined(L1Q_NO_CLONES)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_BF16 = 2 };
enum { QK = 32, Q8_BYTES = 34 };

static uint32_t f16_to_f32_table[65536];

/* ggml_compute_fp32_to_bf16 */
static inline uint16_t f32_to_bf16_bits(uint32_t u) {
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

static void init_tables(void) {
    for (uint32_t i = 0; i < 65536u; i++) {
        f16_to_f32_table[i] = f16_to_f32_bits((uint16_t)i);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Q8_0 */

static inline float q8_inverse(float d) {
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (isinf(id)) id = 0.0f; /* 1/d overflowed (subnormal-scale block): gguf ends with qs = 0 */
    return id;
}

static inline void q8_store_bad(uint8_t *blk) {
    blk[0] = 0x00;
    blk[1] = 0x7E; /* f16 NaN 0x7E00, little endian */
    memset(blk + 2, 0, QK);
}

static inline void q8_store_d(uint8_t *blk, float d) {
    uint16_t h = f32_to_f16_bits(f32_to_bits(d));
    blk[0] = (uint8_t)(h & 0xFF);
    blk[1] = (uint8_t)(h >> 8);
}

/* One row of bf16 bits; returns the index (within the row) of the first non-finite value or -1. */
HOT static int64_t q8_row_bf16(const uint16_t *restrict x, int64_t ncols, uint8_t *restrict y) {
    int64_t first = -1;
    const int64_t nb = ncols / QK;
    for (int64_t b = 0; b < nb; b++) {
        const uint16_t *restrict xb = x + b * QK;
        uint8_t *restrict yb = y + b * Q8_BYTES;
        /* magnitude bits order like |x| (signed 16-bit max is fine: they are <= 0x7FFF) */
        int16_t mx = 0;
        for (int j = 0; j < QK; j++) {
            int16_t m = (int16_t)(xb[j] & 0x7FFF);
            mx = m > mx ? m : mx;
        }
        if (mx >= 0x7F80) {
            if (first < 0) {
                for (int j = 0; j < QK; j++) {
                    if ((xb[j] & 0x7FFF) >= 0x7F80) {
                        first = b * QK + j;
                        break;
                    }
                }
            }
            q8_store_bad(yb);
            continue;
        }
        const float d = bits_to_f32((uint32_t)(uint16_t)mx << 16) / 127.0f;
        const float id = q8_inverse(d);
        q8_store_d(yb, d);
        int8_t *restrict q = (int8_t *)(yb + 2);
        for (int j = 0; j < QK; j++) {
            const uint32_t bits = (uint32_t)xb[j] << 16;
            const float v = bits_to_f32(bits) * id;
            const float h = bits_to_f32((bits & 0x80000000u) | 0x3EFFFFFFu); /* copysign(0.49999997f, x) */
            q[j] = (int8_t)(int32_t)(v + h);
        }
    }
    return first;
}

HOT static int64_t q8_row_f32(const float *restrict x, int64_t ncols, uint8_t *restrict y) {
    int64_t first = -1;
    const int64_t nb = ncols / QK;
    const uint32_t *restrict xu = (const uint32_t *)x;
    for (int64_t b = 0; b < nb; b++) {
        const uint32_t *restrict xb = xu + b * QK;
        uint8_t *restrict yb = y + b * Q8_BYTES;
        int32_t mx = 0;
        for (int j = 0; j < QK; j++) {
            int32_t m = (int32_t)(xb[j] & 0x7FFFFFFFu);
            mx = m > mx ? m : mx;
        }
        if (mx >= 0x7F800000) {
            if (first < 0) {
                for (int j = 0; j < QK; j++) {
                    if ((xb[j] & 0x7FFFFFFFu) >= 0x7F800000u) {
                        first = b * QK + j;
                        break;
                    }
                }
            }
            q8_store_bad(yb);
            continue;
        }
        const float d = bits_to_f32((uint32_t)mx) / 127.0f;
        const float id = q8_inverse(d);
        q8_store_d(yb, d);
        int8_t *restrict q = (int8_t *)(yb + 2);
        for (int j = 0; j < QK; j++) {
            const float v = bits_to_f32(xb[j]) * id;
            const float h = bits_to_f32((xb[j] & 0x80000000u) | 0x3EFFFFFFu);
            q[j] = (int8_t)(int32_t)(v + h);
        }
    }
    return first;
}

static int64_t q8_row_f16(const uint16_t *restrict x, int64_t ncols, uint8_t *restrict y) {
    float buf[256];
    int64_t first = -1;
    for (int64_t s = 0; s < ncols; s += 256) {
        int64_t n = ncols - s < 256 ? ncols - s : 256;
        for (int64_t j = 0; j < n; j++) buf[j] = bits_to_f32(f16_to_f32_table[x[s + j]]);
        int64_t f = q8_row_f32(buf, n, y + (s / QK) * Q8_BYTES);
        if (f >= 0 && first < 0) first = s + f;
    }
    return first;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Float outputs (one row each) */

/* First index whose magnitude bits reach the 16-bit format's Inf pattern (bf16: 0x7F80, f16: 0x7C00), or -1.
 * A cheap vectorizable max per 1024 values first; the exact position is searched only in a bad stretch. */
HOT static int64_t first_bad_u16(const uint16_t *restrict x, int64_t n, int16_t inf_bits) {
    for (int64_t s = 0; s < n; s += 1024) {
        int64_t e = n - s < 1024 ? n - s : 1024;
        int16_t mx = 0;
        for (int64_t j = 0; j < e; j++) {
            int16_t m = (int16_t)(x[s + j] & 0x7FFF);
            mx = m > mx ? m : mx;
        }
        if (mx >= inf_bits) {
            for (int64_t j = 0; j < e; j++)
                if ((int16_t)(x[s + j] & 0x7FFF) >= inf_bits) return s + j;
        }
    }
    return -1;
}

HOT static int64_t first_bad_f32(const uint32_t *restrict x, int64_t n) {
    for (int64_t s = 0; s < n; s += 1024) {
        int64_t e = n - s < 1024 ? n - s : 1024;
        int32_t mx = 0;
        for (int64_t j = 0; j < e; j++) {
            int32_t m = (int32_t)(x[s + j] & 0x7FFFFFFFu);
            mx = m > mx ? m : mx;
        }
        if (mx >= 0x7F800000) {
            for (int64_t j = 0; j < e; j++)
                if ((x[s + j] & 0x7FFFFFFFu) >= 0x7F800000u) return s + j;
        }
    }
    return -1;
}

static int64_t first_bad(const void *x, int kind, int64_t n) {
    if (kind == KIND_BF16) return first_bad_u16((const uint16_t *)x, n, 0x7F80);
    if (kind == KIND_F16) return first_bad_u16((const uint16_t *)x, n, 0x7C00);
    return first_bad_f32((const uint32_t *)x, n);
}

HOT static void f16_row_from_f32_generic(const uint32_t *restrict x, int64_t n, uint16_t *restrict y) {
    for (int64_t j = 0; j < n; j++) y[j] = f32_to_f16_bits(x[j]);
}

HOT static void f16_row_from_bf16_generic(const uint16_t *restrict x, int64_t n, uint16_t *restrict y) {
    for (int64_t j = 0; j < n; j++) y[j] = f32_to_f16_bits((uint32_t)x[j] << 16);
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(L1Q_NO_CLONES)
/* F16C: vcvtps2ph with an explicit round-to-nearest-even immediate is IEEE conversion, the same bits as
 * f32_to_f16_bits for every non-NaN input (the tests compare all 65536 bf16 patterns and f32 edge values with
 * gguf's numpy). NaN lanes get ggml's 0x7E00 | sign instead of the hardware's payload-keeping quiet NaN.
 * Measured on the project's EPYC: the branch-free auto-vectorized loop converts ~1.4 G values/s per core, a 64k
 * lookup table ~2.0 G/s (gather-bound); this several times that, and the F16 output was the slowest of the three
 * float outputs end to end. */
#include <immintrin.h>
#define L1Q_HAVE_F16C 1

__attribute__((target("avx2,f16c"))) static inline __m128i f16c_fix_nan(__m128i r, __m128i nan16, __m128i sign16) {
    const __m128i qnan = _mm_or_si128(sign16, _mm_set1_epi16(0x7E00));
    return _mm_blendv_epi8(r, qnan, nan16);
}

__attribute__((target("avx2,f16c"))) static void f16_row_from_bf16_f16c(const uint16_t *restrict x, int64_t n,
                                                                          uint16_t *restrict y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(x + j));
        const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        __m128i r = _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x7FFF));
        const __m128i nan = _mm_cmpgt_epi16(mag, _mm_set1_epi16(0x7F80));
        if (!_mm_testz_si128(nan, nan)) r = f16c_fix_nan(r, nan, _mm_andnot_si128(_mm_set1_epi16(0x7FFF), h));
        _mm_storeu_si128((__m128i *)(y + j), r);
    }
    for (; j < n; j++) y[j] = f32_to_f16_bits((uint32_t)x[j] << 16);
}

__attribute__((target("avx2,f16c"))) static void f16_row_from_f32_f16c(const uint32_t *restrict x, int64_t n,
                                                                         uint16_t *restrict y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(x + j));
        __m128i r = _mm256_cvtps_ph(_mm256_castsi256_ps(w), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i mag = _mm256_and_si256(w, _mm256_set1_epi32(0x7FFFFFFF));
        const __m256i nan32 = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7F800000));
        if (!_mm256_testz_si256(nan32, nan32)) {
            /* 32-bit lane masks -> 16-bit lane masks (all-ones/all-zeros survive signed saturation) */
            const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
            const __m128i sign16 = _mm_and_si128(_mm_set1_epi16((short)0x8000), r); /* vcvtps2ph keeps the sign */
            r = f16c_fix_nan(r, nan16, sign16);
        }
        _mm_storeu_si128((__m128i *)(y + j), r);
    }
    for (; j < n; j++) y[j] = f32_to_f16_bits(x[j]);
}
#endif

typedef void (*f16_from_bf16_fn)(const uint16_t *, int64_t, uint16_t *);
typedef void (*f16_from_f32_fn)(const uint32_t *, int64_t, uint16_t *);
static f16_from_bf16_fn f16_row_from_bf16 = f16_row_from_bf16_generic;
static f16_from_f32_fn f16_row_from_f32 = f16_row_from_f32_generic;

/* Called once at import; L1QUANT_NO_F16C=1 keeps the portable loops (for tests and comparisons). */
static void pick_f16_kernels(void) {
#ifdef L1Q_HAVE_F16C
    const char *off = getenv("L1QUANT_NO_F16C");
    __builtin_cpu_init();
    if ((off == NULL || off[0] == '\0' || off[0] == '0') && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("f16c")) {
        f16_row_from_bf16 = f16_row_from_bf16_f16c;
        f16_row_from_f32 = f16_row_from_f32_f16c;
    }
#endif
}

static void f16_row(const void *src, int kind, int64_t n, uint8_t *dst) {
    uint16_t *restrict y = (uint16_t *)dst;
    if (kind == KIND_BF16) {
        f16_row_from_bf16((const uint16_t *)src, n, y);
    } else if (kind == KIND_F16) {
        const uint16_t *restrict x = (const uint16_t *)src;
        for (int64_t j = 0; j < n; j++) {
            uint16_t h = x[j];
            y[j] = (h & 0x7FFFu) > 0x7C00u ? (uint16_t)(0x7E00u | (h & 0x8000u)) : h;
        }
    } else {
        f16_row_from_f32((const uint32_t *)src, n, y);
    }
}

HOT static void bf16_row_from_bf16(const uint16_t *restrict x, int64_t n, uint16_t *restrict y) {
    for (int64_t j = 0; j < n; j++) {
        uint16_t h = x[j];
        y[j] = (h & 0x7FFFu) > 0x7F80u ? (uint16_t)(h | 64u) : h;
    }
}

HOT static void bf16_row_from_f32(const uint32_t *restrict x, int64_t n, uint16_t *restrict y) {
    for (int64_t j = 0; j < n; j++) y[j] = f32_to_bf16_bits(x[j]);
}

static void bf16_row(const void *src, int kind, int64_t n, uint8_t *dst) {
    uint16_t *restrict y = (uint16_t *)dst;
    if (kind == KIND_BF16) {
        bf16_row_from_bf16((const uint16_t *)src, n, y);
    } else if (kind == KIND_F16) {
        const uint16_t *restrict x = (const uint16_t *)src;
        for (int64_t j = 0; j < n; j++) y[j] = f32_to_bf16_bits(f16_to_f32_table[x[j]]);
    } else {
        bf16_row_from_f32((const uint32_t *)src, n, y);
    }
}

HOT static void f32_row_from_bf16(const uint16_t *restrict x, int64_t n, uint32_t *restrict y) {
    for (int64_t j = 0; j < n; j++) y[j] = (uint32_t)x[j] << 16;
}

static void f32_row(const void *src, int kind, int64_t n, uint8_t *dst) {
    uint32_t *restrict y = (uint32_t *)dst;
    if (kind == KIND_BF16) {
        f32_row_from_bf16((const uint16_t *)src, n, y);
    } else if (kind == KIND_F16) {
        const uint16_t *restrict x = (const uint16_t *)src;
        for (int64_t j = 0; j < n; j++) y[j] = f16_to_f32_table[x[j]];
    } else {
        memcpy(dst, src, (size_t)n * 4);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* Python glue */

static size_t kind_size(int kind) { return kind == KIND_F32 ? 4 : 2; }

static int parse_rows(PyObject *args, const void **src, int *kind, int64_t *rows, int64_t *ncols, uint8_t **dst,
                      int64_t *stride) {
    unsigned long long s, d;
    long long r, c, st;
    if (!PyArg_ParseTuple(args, "KiLLKL", &s, kind, &r, &c, &d, &st)) return 0;
    if (*kind < 0 || *kind > 2 || r < 0 || c < 0) {
        PyErr_SetString(PyExc_ValueError, "_fastq8: bad kind or shape");
        return 0;
    }
    *src = (const void *)(uintptr_t)s;
    *dst = (uint8_t *)(uintptr_t)d;
    *rows = r;
    *ncols = c;
    *stride = st;
    return 1;
}

typedef void (*row_fn)(const void *, int, int64_t, uint8_t *);

static PyObject *run_float(PyObject *args, row_fn fn) {
    const void *src;
    int kind;
    int64_t rows, ncols, stride, first = -1;
    uint8_t *dst;
    if (!parse_rows(args, &src, &kind, &rows, &ncols, &dst, &stride)) return NULL;
    const size_t es = kind_size(kind);
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *xr = (const uint8_t *)src + (size_t)r * (size_t)ncols * es;
        if (first < 0) {
            int64_t f = first_bad(xr, kind, ncols);
            if (f >= 0) first = r * ncols + f;
        }
        fn(xr, kind, ncols, dst + r * stride);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(first);
}

static PyObject *py_f16(PyObject *self, PyObject *args) { return run_float(args, f16_row); }
static PyObject *py_bf16(PyObject *self, PyObject *args) { return run_float(args, bf16_row); }
static PyObject *py_f32(PyObject *self, PyObject *args) { return run_float(args, f32_row); }

static PyObject *py_q8_0(PyObject *self, PyObject *args) {
    const void *src;
    int kind;
    int64_t rows, ncols, stride, first = -1;
    uint8_t *dst;
    if (!parse_rows(args, &src, &kind, &rows, &ncols, &dst, &stride)) return NULL;
    if (ncols % QK != 0) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.q8_0: ncols must be a multiple of 32");
        return NULL;
    }
    const size_t es = kind_size(kind);
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++) {
        const void *xr = (const uint8_t *)src + (size_t)r * (size_t)ncols * es;
        uint8_t *yr = dst + r * stride;
        int64_t f;
        if (kind == KIND_BF16)
            f = q8_row_bf16((const uint16_t *)xr, ncols, yr);
        else if (kind == KIND_F16)
            f = q8_row_f16((const uint16_t *)xr, ncols, yr);
        else
            f = q8_row_f32((const float *)xr, ncols, yr);
        if (f >= 0 && first < 0) first = r * ncols + f;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(first);
}

static PyObject *py_first_nonfinite(PyObject *self, PyObject *args) {
    unsigned long long s;
    int kind;
    long long n;
    int64_t first;
    if (!PyArg_ParseTuple(args, "KiL", &s, &kind, &n)) return NULL;
    if (kind < 0 || kind > 2 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "_fastq8.first_nonfinite: bad kind or size");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    first = first_bad((const void *)(uintptr_t)s, kind, n);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(first);
}

/* K-quants and Q4_0/Q4_1/Q5_0/Q5_1 live in _kquants.c (a second source of this extension). */
PyObject *l1q_py_kquant(PyObject *self, PyObject *args);
PyObject *l1q_py_kquant_imatrix(PyObject *self, PyObject *args);
/* IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S live in _iquants3.c; IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M in _iquants2.c. */
PyObject *l1q_py_iquant(PyObject *self, PyObject *args);
PyObject *l1q_py_iquant_grid(PyObject *self, PyObject *args);

static PyMethodDef methods[] = {
    {"q8_0", py_q8_0, METH_VARARGS, "q8_0(src, kind, rows, ncols, dst, dst_row_stride) -> first non-finite or -1"},
    {"f16", py_f16, METH_VARARGS, "f16(src, kind, rows, ncols, dst, dst_row_stride) -> first non-finite or -1"},
    {"bf16", py_bf16, METH_VARARGS, "bf16(src, kind, rows, ncols, dst, dst_row_stride) -> first non-finite or -1"},
    {"f32", py_f32, METH_VARARGS, "f32(src, kind, rows, ncols, dst, dst_row_stride) -> first non-finite or -1"},
    {"kquant", l1q_py_kquant, METH_VARARGS,
     "kquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride) -> first non-finite or -1"},
    {"kquant_imatrix", l1q_py_kquant_imatrix, METH_VARARGS,
     "kquant_imatrix(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix) -> first non-finite or -1"},
    {"iquant", l1q_py_iquant, METH_VARARGS,
     "iquant(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix, table_a, table_b, table_c) -> first "
     "non-finite or -1"},
    {"iquant_grid", l1q_py_iquant_grid, METH_VARARGS,
     "iquant_grid(ggml_type, src, kind, rows, ncols, dst, dst_row_stride, imatrix, levels, kmap, neighbours, "
     "neighbour_codes, neighbours_size, ngrid) -> first non-finite or -1"},
    {"first_nonfinite", py_first_nonfinite, METH_VARARGS, "first_nonfinite(src, kind, n) -> index or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_fastq8", "Optional compiled kernels for l1quant (see kernels/_native.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__fastq8(void) {
    init_tables();
    pick_f16_kernels();
    return PyModule_Create(&moduledef);
}

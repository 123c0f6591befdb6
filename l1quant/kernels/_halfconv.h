/*
 * Bit-exact float32 <-> float16 helpers shared by the compiled kernels (_fastq8.c, _kquants.c).
 *
 * Everything is static inline so each translation unit gets its own copy and no symbol is exported. The rules
 * are IEEE's: f32 -> f16 rounds to nearest even, overflows to Inf, and NaN becomes 0x7E00 | sign (what ggml's
 * GGML_FP32_TO_FP16 writes); f16 -> f32 is exact (every f16 value, subnormals included, is an f32 value).
 */
#ifndef L1QUANT_HALFCONV_H
#define L1QUANT_HALFCONV_H

#include <stdint.h>
#include <string.h>

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* float32 bits -> float16 bits, round to nearest even; NaN -> 0x7E00 | sign (ggml's rule).
 * Branch-free selects so the compiler vectorizes it. Normal range: add the rounding bias to the bits (a carry into
 * the exponent is the right answer, up to Inf). Below 2**-14: adding 0.5f lands in [0.5, 1) whose ulp is 2**-24,
 * the f16 subnormal quantum, so the FPU does the RNE for us and the low bits are the f16 bits. */
static inline uint16_t f32_to_f16_bits(uint32_t x) {
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t a = x & 0x7FFFFFFFu;
    const uint32_t normal = (a + 0xC8000FFFu + ((a >> 13) & 1u)) >> 13; /* 0xC8000000 = (15 - 127) << 23 */
    const uint32_t sub = f32_to_bits(bits_to_f32(a) + 0.5f) - 0x3F000000u;
    const uint32_t big = 0x7C00u | ((uint32_t)(a > 0x7F800000u) << 9); /* Inf, or NaN 0x7E00 */
    const uint32_t m_small = 0u - (uint32_t)(a < 0x38800000u);      /* all-ones masks: no branches */
    const uint32_t m_big = 0u - (uint32_t)(a >= 0x47800000u);
    uint32_t o = (sub & m_small) | (normal & ~m_small);
    o = (big & m_big) | (o & ~m_big);
    return (uint16_t)(sign | o);
}

/* float16 bits -> float32 bits, exact. */
static inline uint32_t f16_to_f32_bits(uint16_t h) {
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t e = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t m = (uint32_t)h & 0x3FFu;
    if (e == 0x1F) return sign | 0x7F800000u | (m << 13);
    if (e != 0) return sign | ((e + 112u) << 23) | (m << 13);
    if (m == 0) return sign;
    {
        float f = (float)m * 5.9604644775390625e-08f; /* m * 2**-24, exact */
        return sign | f32_to_bits(f);
    }
}

#endif /* L1QUANT_HALFCONV_H */

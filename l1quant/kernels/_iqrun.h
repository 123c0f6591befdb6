/*
 * l1quant.kernels._fastq8 (a header of it): what the IQ2 (_iquants2.c) and IQ3 (_iquants3.c) quantizers share: the
 * neighbour searches of a run of trial scales (most of this header), and the steps around them that both take
 * alike (the clone condition IQRUN_HOT, the sign split, the sums of squares, the NaN/Inf check, the run ends, the
 * winner of the trial scan).
 *
 * ggml's IQ2 and IQ3 quantizers try 13 to 31 scales per group. At each trial a part (8 values for IQ2, a 4-value
 * quad for IQ3) is rounded to levels; an off-grid code is replaced by the candidate of its neighbour list with the
 * least d(s) = sum_i w_i * (s*q_i - x_i)^2, computed in float in the reference's order (first strict minimum wins),
 * at the trial's scale s. Neighbouring trials often round a part to the same code (on a normal(0, 0.02) slab with
 * an imatrix, IQ2_S: 10.8 searches per 8-value part over 19 trials, in 1.84 runs of one code; IQ3_S: 13.5 per quad
 * in 2.4 runs), so they search the same list at scales a few percent apart.
 *
 * Two ways to give the reference's picks without its per-trial float search, both proved below:
 *  - iqrun_env_picks (used on the AVX2 / AVX-512 paths for lists up to 64, runs of 2 trials or more): each
 *    candidate's scale-free sums A, B formed once per run, every trial's pick certified from them, the float search
 *    only where a pick is not certified (near-ties);
 *  - iqrun_snap (the other IQ2 runs): float searches at the run's ends, certified in between, else bisection.
 *
 *   In exact arithmetic, d_j(s) - d_k(s) = s * (s*(A_j - A_k) - 2*(B_j - B_k)) with A = sum w q^2, B = sum w q x.
 *   Let E(s) bound |fl(d_j(s)) - d_j(s)| for every candidate (iqrun_err_bound below). Run the float search at the run's
 *   first and last trial scales s_a > s_b (trial scales fall as the trial index rises). If both pick the same j*
 *   and, at both, every other candidate's float distance exceeds j*'s by more than 4 E(s), then the exact gap
 *   g_j(s) = d_j(s) - d_j*(s) exceeds 2 E(s) at both ends. g_j(s)/s is linear in s and E(s)/s convex for s > 0, so
 *   (g_j(s) - 2 E(s))/s is concave and stays positive over [s_b, s_a]: at every trial scale of the run,
 *   fl(d_j) >= d_j - E > d_j* + E >= fl(d_j*), so j* is the unique float minimum there, which is what the
 *   reference's scan returns.
 *
 *   E(s): ggml forms diff = s*q - x and adds w*diff*diff over n <= 8 coordinates, each operation rounded to float
 *   (u = 2^-24). |diff| <= s*q + |x|, the two roundings in diff add at most 2u (s*q + |x|), which the square
 *   doubles, the products and the sequential sum at most (2 + 7)u of each term (with higher-order terms): in all
 *   < 14u * sum w (s*q + |x|)^2 <= 28u * (s^2 qmax^2 W + C), W = sum w, C = sum w x^2. kappa = 2^-18 = 64u leaves
 *   more than 2x spare. Products that fall below float's normal range lose up to 2^-150 each, independently of
 *   their size; the second term covers them (each term's three products, amplified by at most
 *   1 + (2w + 1)(s qmax + |x|), inside its factor 3 * 2^10). Runs where any
 *   distance could approach FLT_MAX are not certified. (x is a magnitude except for one value of an IQ2_XXS,
 *   IQ2_XS or IQ3_XXS part with an odd number of negatives, which the format's sign parity negates: hence |x|.)
 *
 * History: the run searches of iqrun_snap were tried for IQ3 first and were slower (a pick of a short list costs
 * less than their bookkeeping); the scale-free certificate (with the trials kept as keys) made its kernel ~1.5x
 * faster.
 *
 * The double arithmetic that evaluates E is far finer than the float it bounds (its relative error ~1e-16 against
 * kappa's 4e-6).
 */
#ifndef L1Q_IQRUN_H
#define L1Q_IQRUN_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The hot functions are built for AVX-512, AVX2 and the baseline, picked at load time (GCC on x86-64 ELF); each
 * gives the same bits (the operations and their order are written out, the vectors only run them side by side). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && !defined(L1Q_NO_CLONES)
#define IQRUN_CLONES 1
#define IQRUN_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IQRUN_HOT
#endif

/* E(s): a bound on |ggml's float distance - the exact distance| for any candidate of a part at scale s (> 0).
 * n coordinates (<= 8), candidate values 0 < q <= qmax, weights w >= 0 with sum wsum, values x with sum |x| = xsum
 * and sum w x^2 = c. Returns +inf when a distance could reach FLT_MAX (no certificate then). */
static inline double iqrun_err_bound(double s, int n, double qmax, double wsum, double c, double xsum) {
    const double big = s * s * qmax * qmax * wsum + c;
    if (!(big < 1e30)) return HUGE_VAL;
    return 0x1p-18 * big + 0x1p-140 * 3.0 * ((double)n + wsum * (1.0 + s * qmax + xsum) + n * s * qmax + xsum);
}

/* Whether the picks at a run's two end scales certify the same pick for every scale between them (see above):
 * same candidate, and at each end its float lead over every other candidate exceeds 4 E(s). A list of one
 * candidate is certified when its distance is finite at both ends (second = FLT_MAX then). */
static inline int iqrun_certified(int at_a, float best_a, float second_a, double err_a, int at_b, float best_b,
                                  float second_b, double err_b) {
    if (at_a < 0 || at_a != at_b) return 0;
    return (double)second_a - (double)best_a > 4.0 * err_a && (double)second_b - (double)best_b > 4.0 * err_b;
}

/* One part's run of trials that round it to the same off-grid code. The quantizer embeds this as the first member
 * of its own struct and supplies the search and the write. */
typedef struct iqrun_s iqrun;
struct iqrun_s {
    /* the reference's search at trial t: records its pick as trial t's point, returns it (-1: none below FLT_MAX,
     * the rounded levels stay), the least distance in *best and the least of the others in *second */
    int (*search)(iqrun *r, int t, float *best, float *second);
    void (*put)(iqrun *r, int j, int t); /* candidate j as trial t's point */
    const float *scales;                 /* trial scales, falling as t rises */
    const float *x, *w;                  /* the part's values and distance weights */
    int dim;                             /* values per part */
    double qmax;                         /* largest candidate value */
    double wsum, c, xsum;                /* the error bound's sums; wsum < 0 until first needed */
};

/* Trials strictly between ta and tb (both searched: picks ja, jb) take the reference's picks: all ja when the
 * certificate holds, else the trial halfway is searched and each half done the same way. */
static void iqrun_between(iqrun *r, int ta, int ja, float ba, float sa, int tb, int jb, float bb, float sb) {
    if (tb - ta < 2) return;
    if (ja >= 0 && ja == jb) {
        if (r->wsum < 0) {
            r->wsum = 0;
            for (int i = 0; i < r->dim; i++) {
                r->wsum += r->w[i];
                r->c += (double)r->w[i] * r->x[i] * r->x[i];
                r->xsum += fabs((double)r->x[i]);
            }
        }
        const double ea = iqrun_err_bound(r->scales[ta], r->dim, r->qmax, r->wsum, r->c, r->xsum);
        const double eb = iqrun_err_bound(r->scales[tb], r->dim, r->qmax, r->wsum, r->c, r->xsum);
        if (iqrun_certified(ja, ba, sa, ea, jb, bb, sb, eb)) {
            for (int t = ta + 1; t < tb; t++) r->put(r, ja, t);
            return;
        }
    }
    const int tm = ta + (tb - ta) / 2;
    float bm, sm;
    const int jm = r->search(r, tm, &bm, &sm);
    iqrun_between(r, ta, ja, ba, sa, tm, jm, bm, sm);
    iqrun_between(r, tm, jm, bm, sm, tb, jb, bb, sb);
}

/* every trial t..t2 of a run (same off-grid code) snapped as the reference's per-trial search snaps it */
static inline void iqrun_snap(iqrun *r, int t, int t2) {
    float ba, sa, bb = 0, sb = 0;
    const int ja = r->search(r, t, &ba, &sa);
    const int jb = t2 > t ? r->search(r, t2, &bb, &sb) : ja;
    iqrun_between(r, t, ja, ba, sa, t2, jb, bb, sb);
}


/* ---- A run's picks certified without float searches (lists scored from each candidate's scale-free sums) ----
 *
 * In exact arithmetic a candidate's distance at scale s is d_c(s) = s^2 A_c - 2 s B_c + C, with A_c = sum w q^2,
 * B_c = sum w x q, C = sum w x^2 (q the candidate's values), so (d_c - d_j)/s = f_c(s) - f_j(s) for
 * f_c(s) = s A_c - 2 B_c: one multiply and one subtraction per candidate and trial once A and B are formed (once
 * per run; a float search forms the terms and n sums per candidate at every trial). The caller forms A as the
 * in-order sum of fl(w q^2) and B of fl(fl(w x) q) over its n <= 8 coordinates; here f = fl(fl(s A) - 2B). That f
 * is within (n + 3)u (s A_c + 2|B|_c) <= 11u (qmax^2 s W + 2 qmax X1) of the exact one (W = sum w, X1 = sum w |x|,
 * u = 2^-24), and products that underflow add at most ~2^-143 in all. The reference's float distance lies within
 * E(s) of d_c (iqrun_err_bound). So where the least f leads every other by more than
 *     M(s) = 2 E(s) / s + 2^-18 (qmax^2 s W + 2 qmax X1) + 2^-100,
 * the exact gap d_c - d_j exceeds 2 E(s) for every other c, and j is the unique float minimum: the reference's
 * pick. Each trial is certified on its own, so the argument needs no run structure; runs only share A and B. */

/* The constants of M(s) = P1 s + P2 / s + P3 (E(s) written out; all terms positive) for each of np <= 8 parts of
 * n <= 8 values (part k's values x and distance weights w at n * k), each rounded up, into p[k][0..2]; all +inf
 * where iqrun_err_bound is unbounded at the largest trial scale smax (no certificate then). Formed in float:
 * every sum and product here is of nonnegative terms, each within ~12u relative of the exact (u = 2^-24), which
 * the factor 1 + 2^-18 covers, and products that underflow lose at most 2^-149 each, which the floors cover:
 * P2 >= 2^-120 n and P3 >= 2^-100 are normal floats far above those losses (C's, divided by s, stay below P2's
 * floor; X1's below 2^-100), and P1 gets 2^-126 added, so that a tiny W (a subnormal P1 rounds with an absolute
 * error up to 2^-150, which s multiplies) still leaves it an upper bound. E(s)'s underflow terms 3 * 2^-139 (...)
 * are taken as 2^-120 (...), a normal float. */
static inline void iqrun_env_consts(const float *x, const float *w, int n, int np, float qmax, float smax,
                                    float (*p)[3]) {
    /* the parts are the inner loop so that it vectorizes across them (IQ3's eight quads: their scalar chains were
     * ~3 % of an IQ2_M convert); each part's sums in order i = 0..n-1, as for one part */
    float W[8] = {0}, C[8] = {0}, xs[8] = {0}, X1[8] = {0};
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < np; k++) {
            const float ax = fabsf(x[n * k + i]), wi = w[n * k + i];
            W[k] += wi;
            C[k] += wi * ax * ax;
            xs[k] += ax;
            X1[k] += wi * ax;
        }
    }
    const float up = 1 + 0x1p-18f, nf = (float)n;
    for (int k = 0; k < np; k++) {
        const int ok = smax * smax * (qmax * qmax) * W[k] + C[k] < 1e30f;
        p[k][0] = ok ? qmax * qmax * W[k] * (0x1p-17f + 0x1p-18f) * up + 0x1p-126f : INFINITY;
        p[k][1] = ok ? (0x1p-17f * C[k] + 0x1p-120f * (nf + W[k] * (1 + xs[k]) + xs[k])) * up : INFINITY;
        p[k][2] = ok ? (0x1p-18f * 2 * qmax * X1[k] + 0x1p-120f * qmax * (W[k] + nf) + 0x1p-100f) * up : INFINITY;
    }
}

/* The runs of a part's trials 0..nt-1 (nt <= 32) as bits: bit t set where trial t ends a run (its code differs
 * from trial t + 1's, or t = nt - 1), so that a run's end is one bit scan. code: len >= nt entries (SSE2 compares 4
 * neighbours at a time while 5 lie inside). */
static inline uint32_t iqrun_ends(const int32_t *code, int nt, int len) {
    uint32_t ends = 0;
    int t = 0;
#if defined(__SSE2__)
    for (; t + 5 <= len && t + 1 < nt; t += 4) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(code + t));
        const __m128i b = _mm_loadu_si128((const __m128i *)(code + t + 1));
        ends |= (uint32_t)(~_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(a, b))) & 15) << t;
    }
#endif
    for (; t + 1 < nt; t++) ends |= (uint32_t)(code[t] != code[t + 1]) << t;
    return (ends & ((1u << (nt - 1)) - 1)) | 1u << (nt - 1);
}

/* The reference's sign split of 8 values (every IQ2/IQ3 quantizer's first step): xval = x where x >= 0, else -x
 * (so -0 stays -0), and the bits of the values that are not >= 0 returned. Branch-free: the signs are data, and
 * their branches were ~5 % of the IQ2_S kernel. */
static inline unsigned iqrun_split_signs8(const float *x, float *xval) {
#if defined(__SSE2__)
    const __m128 zero = _mm_setzero_ps(), sbit = _mm_set1_ps(-0.0f);
    unsigned s = 0;
    for (int h = 0; h < 2; h++) {
        const __m128 v = _mm_loadu_ps(x + 4 * h), neg = _mm_cmpnge_ps(v, zero);
        _mm_storeu_ps(xval + 4 * h, _mm_xor_ps(v, _mm_and_ps(neg, sbit)));
        s |= (unsigned)_mm_movemask_ps(neg) << 4 * h;
    }
    return s;
#else
    unsigned s = 0;
    for (int i = 0; i < 8; i++) {
        const int neg = !(x[i] >= 0);
        xval[i] = neg ? -x[i] : x[i];
        s |= (unsigned)neg << i;
    }
    return s;
#endif
}

/* The sequential sums of squares sum_i x[i]*x[i] (i = 0..255 in order, from 0) of nb <= 4 consecutive 256-value
 * blocks into out[0..nb-1], as every IQ2/IQ3/IQ1 super-block forms its sigma2: one block's is a chain of 256
 * dependent additions, so four advance together (IQ2_S +1.7 %). */
static inline void iqrun_sum_sq4(const float *x, int nb, float *out) {
    float s[4] = {0, 0, 0, 0};
    if (nb == 4) {
        for (int i = 0; i < 256; i++)
            for (int b = 0; b < 4; b++) s[b] += x[256 * b + i] * x[256 * b + i];
    } else {
        for (int b = 0; b < nb; b++)
            for (int i = 0; i < 256; i++) s[b] += x[256 * b + i] * x[256 * b + i];
    }
    for (int b = 0; b < nb; b++) out[b] = s[b];
}

/* The index of x[0..n)'s first NaN or infinity (exponent bits all set), or -1. The whole block is OR-reduced
 * first, which vectorizes (a scan that stops at the first hit does not, and as that it was ~1 % of an IQ2_M convert's
 * CPU); the scan runs only where there is one. */
static inline int iqrun_first_nonfinite(const float *x, int n) {
    uint32_t any = 0;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        any |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
    }
    if (!any) return -1;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        if ((u & 0x7F800000u) == 0x7F800000u) return i;
    }
    return -1;
}

/* the number of set bits of an 8-bit mask */
static inline int iqrun_popcount8(unsigned v) {
    v = (v & 0x55u) + ((v >> 1) & 0x55u);
    v = (v & 0x33u) + ((v >> 2) & 0x33u);
    return (int)((v & 0x0Fu) + (v >> 4));
}

/* the index of v's lowest set bit (v != 0) */
static inline int iqrun_ctz(uint32_t v) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(v);
#else
    int n = 0;
    for (; !(v & 1u); v >>= 1) n++;
    return n;
#endif
}

/* The winner of ggml's serial scan over a group's trials t = 0..nt-1 (nt <= 32): best = 0; trial t improves when
 * sq2 > 0 and sqx^2 > best * sq2, and then scale = fl(sqx / sq2), best = tbest = fl(scale * sqx). Returns the last
 * trial that improved, its scale in *scale (untouched when none did: -1). sqx, sq2: readable up to nt rounded up to
 * 4 (lanes past nt are ignored).
 *
 * The quotients of every trial are formed up front (vector divisions: a divss per improving trial sat on the
 * scan's critical path), and where it is certain the scan runs only over the trials near the top: its chain of
 * dependent, mispredicted compares was ~5 % of an IQ2_M convert. The scan's compare is the float form of
 * R_t > R_best with R = sqx^2 / sq2; tbest is R within 3u (u = 2^-24) where no value leaves float's normal range.
 * With M the largest tbest, the near trials are those with tbest >= M (1 - 2^-16); if every other trial with
 * sq2 > 0 lies below M (1 - 2^-15), then whatever the scan holds when it reaches the first near trial (0, or a far
 * trial's tbest) is below it by ~2^-16 M, far more than the compare's few u, so that trial improves; from there on
 * the far trials never do (their R is as far below), and the near ones meet the same compares, with the same best,
 * as in the whole scan. Near-ties among them (trials whose levels come out equal have equal sums) are so decided
 * exactly as the reference decides them. Guards keep every product and quotient normal: sq2 in [2^-50, 2^50] and
 * |sqx| <= 2^50 for every trial with sq2 > 0, and M in [2^-50, 2^50]. A product that underflows there (sqx^2 of
 * a tiny trial) errs by 2^-150 against a compare operand of at least 2^-100. Elsewhere (and without SSE2) the
 * whole scan runs. */
static inline int iqrun_winner(const float *sqx, const float *sq2, int nt, float *scale) {
    float tsc[32], tbest[32];
    uint32_t near = 0;
#if defined(__SSE2__)
    const __m128 zero = _mm_setzero_ps(), lo = _mm_set1_ps(0x1p-50f), hi = _mm_set1_ps(0x1p50f);
    const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
    const __m128i lane = _mm_setr_epi32(0, 1, 2, 3), ntv = _mm_set1_epi32(nt);
    __m128 valid[8];
    __m128 mx = zero, bad = zero;
    for (int t = 0; t < nt; t += 4) {
        const __m128 in = _mm_castsi128_ps(_mm_cmplt_epi32(_mm_add_epi32(_mm_set1_epi32(t), lane), ntv));
        const __m128 q2 = _mm_loadu_ps(sq2 + t), qx = _mm_loadu_ps(sqx + t);
        const __m128 ts = _mm_div_ps(qx, q2), b = _mm_mul_ps(ts, qx); /* inf/NaN where sq2 is 0: never read */
        _mm_storeu_ps(tsc + t, ts);
        _mm_storeu_ps(tbest + t, b);
        const __m128 v = valid[t / 4] = _mm_and_ps(in, _mm_cmpgt_ps(q2, zero));
        const __m128 good = _mm_and_ps(_mm_and_ps(_mm_cmpge_ps(q2, lo), _mm_cmple_ps(q2, hi)),
                                       _mm_cmple_ps(_mm_and_ps(qx, absmask), hi));
        bad = _mm_or_ps(bad, _mm_andnot_ps(good, v));
        mx = _mm_max_ps(mx, _mm_and_ps(v, b)); /* valid lanes' tbest are finite here unless bad */
    }
    mx = _mm_max_ps(mx, _mm_shuffle_ps(mx, mx, _MM_SHUFFLE(1, 0, 3, 2)));
    mx = _mm_max_ps(mx, _mm_shuffle_ps(mx, mx, _MM_SHUFFLE(2, 3, 0, 1)));
    const float m = _mm_cvtss_f32(mx);
    if (!_mm_movemask_ps(bad) && m >= 0x1p-50f && m <= 0x1p50f) {
        const __m128 near_at = _mm_set1_ps(m * (1 - 0x1p-16f)), band_at = _mm_set1_ps(m * (1 - 0x1p-15f));
        uint32_t band = 0;
        for (int t = 0; t < nt; t += 4) {
            const __m128 b = _mm_loadu_ps(tbest + t);
            near |= (uint32_t)_mm_movemask_ps(_mm_and_ps(valid[t / 4], _mm_cmpge_ps(b, near_at))) << t;
            band |= (uint32_t)_mm_movemask_ps(_mm_and_ps(valid[t / 4], _mm_cmpge_ps(b, band_at))) << t;
        }
        if (band != near) near = 0;
    }
#else
    for (int t = 0; t < nt; t++) {
        tsc[t] = sqx[t] / sq2[t];
        tbest[t] = tsc[t] * sqx[t];
    }
#endif
    if (near == 0) near = nt == 32 ? ~0u : (1u << nt) - 1; /* not certain: the whole scan */
    float best = 0;
    int tb = -1;
    for (; near; near &= near - 1) {
        const int t = iqrun_ctz(near);
        if (sq2[t] > 0 && sqx[t] * sqx[t] > best * sq2[t]) {
            best = tbest[t];
            tb = t;
        }
    }
    if (tb >= 0) *scale = tsc[tb];
    return tb;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(L1Q_NO_LANES)
#include <immintrin.h>
#define IQRUN_HAVE_ENV 1
/* The picks of a run's trials t..t2 from the n candidates' av = A and b2v = 2B (AVX2): the trials are the lanes, 8
 * at a time, the candidates a loop keeping each lane's least f, its position and its second least (no lane
 * reduction on the path). Where fl(second - least) > M'(s), the pick is certified and its code (codes[j], the
 * candidates' codes in list order) goes to out[tt]; the other trials' bits are returned (bit tt), for the caller
 * to run the reference's float search there (near-ties, distances near FLT_MAX, unusable scales). M'(s) =
 * fl(P1 s + P2 id + P3) (1 + 2^-16) with p = iqrun_env_consts and id = ids[tt] (the reference's 1/s before its
 * fl(1/id)): the roundings of M' (a few 2^-24 relative each, a subnormal s's reciprocal included) and of the
 * comparison's subtraction are far inside that factor; M' counts as +inf unless s and id are positive and
 * finite. scales and ids hold whole 8-lane vectors from t on, codes whole vectors of 8 past n. t2 < 32. Two builds
 * below, by how the codes are stored. */
#define IQRUN_ENV_PICKS_BODY(STORE)                                                                              \
    {                                                                                                              \
        const __m256 p1 = _mm256_set1_ps(p[0]), p2 = _mm256_set1_ps(p[1]), p3 = _mm256_set1_ps(p[2]);              \
        const __m256 zero = _mm256_setzero_ps(), big = _mm256_set1_ps(FLT_MAX);                                    \
        const __m256 slack = _mm256_set1_ps(1.0f + 0x1p-16f);                                                      \
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                                           \
        uint32_t miss = 0;                                                                                         \
        for (int t0 = t; t0 <= t2; t0 += 8) {                                                                      \
            const __m256 sv = _mm256_loadu_ps(scales + t0), iv = _mm256_loadu_ps(ids + t0);                        \
            __m256 m1 = _mm256_set1_ps(INFINITY), m2 = m1;                                                         \
            __m256i at = _mm256_setzero_si256();                                                                   \
            for (int c = 0; c < n; c++) {                                                                          \
                const __m256 f =                                                                                   \
                    _mm256_sub_ps(_mm256_mul_ps(sv, _mm256_broadcast_ss(av + c)), _mm256_broadcast_ss(b2v + c));   \
                m2 = _mm256_min_ps(m2, _mm256_max_ps(m1, f));                                                      \
                at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at),                                 \
                                                          _mm256_castsi256_ps(_mm256_set1_epi32(c)),               \
                                                          _mm256_cmp_ps(f, m1, _CMP_LT_OQ)));                      \
                m1 = _mm256_min_ps(m1, f);                                                                         \
            }                                                                                                      \
            const __m256 mg = _mm256_mul_ps(                                                                       \
                _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p1, sv), _mm256_mul_ps(p2, iv)), p3), slack);            \
            const __m256 usable =                                                                                  \
                _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(sv, zero, _CMP_GT_OQ), _mm256_cmp_ps(sv, big, _CMP_LT_OQ)), \
                              _mm256_and_ps(_mm256_cmp_ps(iv, zero, _CMP_GT_OQ), _mm256_cmp_ps(iv, big, _CMP_LT_OQ))); \
            /* certified: within the run, usable, and fl(m2 - m1) > M' (false for NaN and an infinite M') */      \
            const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(t2 - t0 + 1), lanes);                          \
            const __m256i ok = _mm256_and_si256(                                                                   \
                in, _mm256_castps_si256(_mm256_and_ps(usable, _mm256_cmp_ps(_mm256_sub_ps(m2, m1), mg, _CMP_GT_OQ)))); \
            /* each lane's code: codes[at], 8 codes at a time by vpermd on the position's low 3 bits */            \
            __m256i code = _mm256_setzero_si256();                                                                 \
            for (int c0 = 0; c0 < n; c0 += 8) {                                                                    \
                const __m256i c8 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(codes + c0)));          \
                const __m256i here = _mm256_cmpeq_epi32(_mm256_srli_epi32(at, 3), _mm256_set1_epi32(c0 >> 3));     \
                code = _mm256_blendv_epi8(code, _mm256_permutevar8x32_epi32(c8, at), here);                        \
            }                                                                                                      \
            const uint32_t okb = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(ok)),                            \
                           inb = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(in));                            \
            STORE;                                                                                                 \
            miss |= (inb & ~okb) << t0;                                                                            \
        }                                                                                                          \
        return miss;                                                                                               \
    }
/* The scale-free sums of n candidates (their codes at codes[0 .. n), levels in bits-wide fields, dim <= 8
 * coordinates) for iqrun_env_picks: av[c] = A_c = sum_i fl(w_i q_i^2) and b2v[c] = 2 B_c = 2 sum_i fl(fl(w_i x_i) q_i),
 * each in order i = 0..dim-1, q = q1[level] (q1: 8 lanes, a vpermps index's low 3 bits; IQ2 holds its three values
 * at lanes l and l + 4, IQ3 its eight). A coordinate's two terms come from one vpermps each. Reads whole vectors
 * of 8 codes past n (the caller checks they lie inside its table). */
__attribute__((target("avx2"), unused)) static void iqrun_env_sums(const uint16_t *restrict codes, int n,
                                                                   const float *restrict x, const float *restrict w,
                                                                   int dim, int bits, const float *restrict q1,
                                                                   float *restrict av, float *restrict b2v) {
    const __m256 qv = _mm256_loadu_ps(q1), q2 = _mm256_mul_ps(qv, qv);
    __m256 ta[8], tb[8];
    for (int i = 0; i < dim; i++) {
        ta[i] = _mm256_mul_ps(_mm256_set1_ps(w[i]), q2);
        tb[i] = _mm256_mul_ps(_mm256_set1_ps(w[i] * x[i]), qv);
    }
    for (int c0 = 0; c0 < n; c0 += 8) {
        const __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(codes + c0)));
        __m256 a = _mm256_permutevar8x32_ps(ta[0], c), b = _mm256_permutevar8x32_ps(tb[0], c);
        for (int i = 1; i < dim; i++) {
            const __m256i ci = _mm256_srli_epi32(c, bits * i);
            a = _mm256_add_ps(a, _mm256_permutevar8x32_ps(ta[i], ci));
            b = _mm256_add_ps(b, _mm256_permutevar8x32_ps(tb[i], ci));
        }
        _mm256_storeu_ps(av + c0, a);
        _mm256_storeu_ps(b2v + c0, _mm256_add_ps(b, b));
    }
}

/* the certified lanes' codes stored under a mask: vpmaskmovd (AVX2), or AVX-512VL's masked store, one micro-op on
 * AMD where vpmaskmovd's store is slow (IQ2_S 8 % faster with it on Zen 4) */
#define IQRUN_ENV_PICKS_ARGS                                                                                       \
    (const float *restrict av, const float *restrict b2v, const uint16_t *restrict codes, int n,                   \
     const float *restrict scales, const float *restrict ids, const float *p, int t, int t2, int32_t *restrict out)
__attribute__((target("avx2"), unused)) static uint32_t iqrun_env_picks_avx2 IQRUN_ENV_PICKS_ARGS
    IQRUN_ENV_PICKS_BODY(_mm256_maskstore_epi32(out + t0, ok, code))
__attribute__((target("avx2,avx512f,avx512vl"), unused)) static uint32_t iqrun_env_picks_avx512 IQRUN_ENV_PICKS_ARGS
    IQRUN_ENV_PICKS_BODY(_mm256_mask_storeu_epi32(out + t0, (__mmask8)okb, code))
#endif

#endif

/*
 * l1quant.kernels._fastq8 (a header of it): one neighbour search for a run of trial scales.
 *
 * ggml's IQ2 quantizers try 13 or 19 scales per group. At each trial an 8-value part is rounded to levels; an
 * off-grid code is replaced by the candidate of its neighbour list with the least
 * d(s) = sum_i w_i * (s*q_i - x_i)^2, computed in float in the reference's order (first strict minimum wins), at
 * the trial's scale s. Neighbouring trials often round a part to the same code (on a normal(0, 0.02) slab with an
 * imatrix, IQ2_S: 10.8 searches per 8-value part over 19 trials, in 1.84 runs of one code), so they search the same
 * list at scales a few percent apart, and almost always pick the same candidate.
 *
 * This header proves that, and leaves every other case to the per-trial search:
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
 *   (u = 2^-24). |diff| <= s*q + |x|, the two roundings in diff add at most 2u (s*q + |x|), the products and the
 *   sequential sum at most (2 + 7)u of each term (with higher-order terms): in all < 14u * sum w (s*q + |x|)^2
 *   <= 28u * (s^2 qmax^2 W + C), W = sum w, C = sum w x^2. kappa = 2^-18 = 64u leaves more than 2x spare.
 *   Products that fall below float's normal range lose up to 2^-150 each, independently of their size; the second
 *   term covers them (each term's three products, amplified by at most 1 + (w + 1)(s qmax + |x|)). Runs where any
 *   distance could approach FLT_MAX are not certified. (x is a magnitude except for one value of an IQ2_XXS or
 *   IQ2_XS part with an odd number of negatives, which the format's sign parity negates: hence |x| throughout.)
 *
 * IQ3's trial searches were tried this way too: half the searches (IQ3_S: 13.5 -> ~7 per 4-value quad), but slower,
 * ~7% when its candidate table was 1 KiB of floats per key and 22% with its 2-byte keys and reduction picks (a
 * pick of a short list costs less than this bookkeeping), so _iquants3.c keeps its per-trial loop.
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

#endif

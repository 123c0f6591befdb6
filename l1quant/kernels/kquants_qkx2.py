"""Q2_K, Q4_K, Q5_K in numpy: super-blocks of 256 float32 -> ggml block bytes, byte-identical to ggml's
``quantize_row_q2_K_ref`` / ``quantize_row_q4_K_ref`` / ``quantize_row_q5_K_ref`` (ggml-quants.c, no imatrix).

The three types share one algorithm, ggml's ``make_qkx2_quants``: each group of a super-block (16 groups of 16
for Q2_K, 8 of 32 for Q4_K/Q5_K) gets an affine fit ``x ~ scale * L + min`` (L in 0..nmax) chosen by a small search
over candidate inverse scales. ``qkx2_search`` implements that search once, parameterized by ``Qkx2Params``:

=====  ======  ====  =====  ======  =====  =======  ======================================
type   groups  n     nmax   rmin    step   nstep    weights, error
=====  ======  ====  =====  ======  =====  =======  ======================================
Q2_K   16      16    3      -0.5    0.1    15       ``|x|``, absolute error
Q4_K   8       32    15     -1.0    0.1    20       ``sqrt(sum x^2 / 32) + |x|``, squared
Q5_K   8       32    31     -0.5    0.1    15       ``sqrt(sum x^2 / 32) + |x|``, squared
=====  ======  ====  =====  ======  =====  =======  ======================================

Then the group scales and mins are themselves quantized (4 bits against a super-block f16 ``d``/``dmin`` for
Q2_K, 6 bits for Q4_K/Q5_K) and every value is re-quantized against the stored (rounded) scales:
``L = clamp(nearest_int((x + dm) / d), 0, nmax)`` for each group whose ``d`` is non-zero (others keep the L of
the search).

Bit-exactness. ggml runs this in float32 with sums accumulated strictly left to right (``s += w*x``, i = 0..n-1).
numpy's ``sum``/``dot`` use other association orders, so this module never reduces along a group. Instead each
group is a *lane*: arrays are laid out (n, lanes), element-wise products are computed over whole arrays (the same
float32 products as C), and sums are accumulated row by row (``seq_sum_rows``), one accumulator per lane. The
candidate steps of the search run one after the other, because in ggml a winning candidate also replaces ``min``,
which all later candidates are computed from; a candidate wins only with a strictly smaller error, so ties keep
the earlier one. ``nearest_int`` is ``rint`` wherever that is provably the same, and ggml's float trick reproduced
bit for bit elsewhere (a subnormal-range group makes the inverse scale overflow, and ggml then gets its codes from
Inf/NaN bit patterns).

Speed (one core, AMD EPYC, 1024 x 4096 float32 normal data): Q2_K ~19, Q4_K ~15.5, Q5_K ~18 M values/s. The cost
is ~12 whole-array float32 operations plus 2n row additions per candidate step (21 steps for Q4_K).

Layouts (little-endian, ggml-common.h):

* Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64], f16 d, f16 dmin.
  ``qs[32*h + l]`` = L[128h + l] | L[128h + l + 32] << 2 | L[128h + l + 64] << 4 | L[128h + l + 96] << 6.
* Q4_K (144 bytes): f16 d, f16 dmin, scales[12] (``pack_scale_min_k4``), qs[128];
  ``qs[32*k + l]`` = L[64k + l] | L[64k + 32 + l] << 4.
* Q5_K (176 bytes): f16 d, f16 dmin, scales[12], qh[32], qs[128]: qs as Q4_K on the low 4 bits; bit 2k of
  ``qh[l]`` is bit 4 of L[64k + l], bit 2k + 1 is bit 4 of L[64k + 32 + l].

Non-finite policy: a super-block holding any NaN/Inf is written as zeros except its f16 ``d`` and ``dmin`` =
0x7E00.

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(256, dtype=np.float32)).reshape(1, 256)
    >>> [quantize_q2_k(x).shape, quantize_q4_k(x).shape, quantize_q5_k(x).shape]
    [(1, 84), (1, 144), (1, 176)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._common import scratch
from ._kcommon import (
    F32,
    apply_nonfinite_policy,
    check_blocks,
    chunks,
    f16_bits,
    nearest_int,
    nearest_int_clamped,
    pack_scale_min_k4,
    seq_sum_rows,
    split_nonfinite,
)

QK_K = 256
# nearest_int equals rint for |f| <= 4194303 (2**22 - 1); beyond, the bit trick wraps.
LIMIT = F32(4194303)
Q2_K_BYTES, Q4_K_BYTES, Q5_K_BYTES = 84, 144, 176
# Super-blocks per sub-chunk (256K values). The search works on ~8 float32 (n, lanes) arrays, kept per thread in
# ``_common.scratch`` (~9 MB); numpy's per-call cost (~2n + 40 calls per candidate step) wants many lanes, the
# cache fewer. Measured on 1024 x 4096, M values/s for Q2_K / Q4_K / Q5_K: 256 super-blocks 14.9 / 10.9 / 13.1,
# 512: 18.2 / 13.2 / 15.6, 1024: 18.4 / 15.5 / 18.0, 2048: 16.1 / 13.4 / 15.1.
SUPERBLOCKS_PER_CHUNK = 1024

__all__ = [
    "Q2_K_PARAMS",
    "Q4_K_PARAMS",
    "Q5_K_PARAMS",
    "Qkx2Params",
    "qkx2_search",
    "quantize_q2_k",
    "quantize_q4_k",
    "quantize_q5_k",
]


@dataclass(frozen=True)
class Qkx2Params:
    """Arguments of ggml's ``make_qkx2_quants`` for one type (besides the data and weights).

    ``n``: group length; ``nmax``: largest code; candidate inverse scales are ``(rmin + rdelta*is + nmax) /
    (max - min)`` for is = 0..nstep; ``use_mad``: absolute instead of squared error.

    Example:
        >>> Q4_K_PARAMS.steps
        21
    """

    n: int
    nmax: int
    rmin: float
    rdelta: float
    nstep: int
    use_mad: bool

    @property
    def steps(self) -> int:
        """Number of candidate scales tried after the initial one (nstep + 1)."""
        return self.nstep + 1

    def numerators(self) -> np.ndarray:
        """float32 (steps,): ``rmin + rdelta*is + nmax`` evaluated as C does, in float32, left to right.

        Example:
            >>> Q2_K_PARAMS.numerators()[:3].tolist()
            [2.5, 2.5999999046325684, 2.700000047683716]
        """
        vals = [F32(self.rmin) + F32(self.rdelta) * F32(s) + F32(self.nmax) for s in range(self.steps)]
        return np.array(vals, dtype=np.float32)


Q2_K_PARAMS = Qkx2Params(n=16, nmax=3, rmin=-0.5, rdelta=0.1, nstep=15, use_mad=True)
Q4_K_PARAMS = Qkx2Params(n=32, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20, use_mad=False)
Q5_K_PARAMS = Qkx2Params(n=32, nmax=31, rmin=-0.5, rdelta=0.1, nstep=15, use_mad=False)


def _codes(prod: np.ndarray, nmax: int, exact_lanes: np.ndarray | None) -> np.ndarray:
    """float32 codes ``MAX(0, MIN(nmax, nearest_int(prod)))`` for prod (n, lanes), computed in place of prod.

    Where a lane's products are finite and within +-4194303, nearest_int is ``rint``; ``exact_lanes`` marks the
    other lanes (Inf/NaN or huge values inside), which are redone with the bit-exact trick. A code may come out as
    -0.0; every later use multiplies it into a sum that starts at +0.0 or squares it, so its sign never shows (as
    with C's integer 0).
    """
    exact = None
    if exact_lanes is not None:
        exact = nearest_int_clamped(prod[:, exact_lanes], nmax)
    lf: np.ndarray = np.rint(prod, out=prod)
    np.clip(lf, F32(0), F32(nmax), out=lf)
    if exact is not None:
        lf[:, exact_lanes] = exact
    return lf


def _work(name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A per-thread reusable work array (contents undefined). Sub-chunks reuse the same memory: allocating ~10 MB
    of temporaries per sub-chunk made glibc grow and trim its heap each time (Q2_K: ~13x the page faults, ~20 %
    slower)."""
    return scratch.get("kqx2_" + name, dtype, math.prod(shape)).reshape(shape)


class _Lanes:
    """Preallocated per-lane (G,) work arrays for one ``qkx2_search`` call.

    The step loop runs ~40 lane-sized operations per candidate; giving each a fixed output buffer keeps malloc out
    of the loop.
    """

    def __init__(self, G: int) -> None:
        f = _work("lanes", np.float32, (18, G))
        (self.mn, self.scale, self.best, self.code_mn, self.code_iscale, self.rng, self.iscale, self.lo, self.hi,
         self.D, self.t1, self.t2, self.this_scale, self.this_min, self.cur) = f[:15]
        self.sums = f[15:18]
        self.ok, self.take, self.b2 = _work("flags", np.bool_, (3, G))


def _candidate_codes(x: np.ndarray, mn: np.ndarray, iscale: np.ndarray, xlo: np.ndarray, mx: np.ndarray,
                     nmax: int, buf: np.ndarray, ln: _Lanes) -> np.ndarray:
    """Codes ``MAX(0, MIN(nmax, nearest_int(iscale * (x - min))))`` per lane, float32 (n, G), written into ``buf``.

    ``mn``, ``iscale``: each lane's current min and inverse scale (G,); ``xlo``, ``mx``: each lane's smallest and
    largest x (G,). ``iscale * (x - min)`` is monotonic in x, so its extremes over a lane are ``iscale*(xlo - min)``
    and ``iscale*(mx - min)``: when both are within +-4194303 (False for NaN/Inf) every product of the lane is, and
    rint is exact there; other lanes take the bit-exact path.
    """
    xm = np.subtract(x, mn, out=buf)
    prod = np.multiply(xm, iscale, out=xm)
    np.subtract(xlo, mn, out=ln.lo)
    np.multiply(ln.lo, iscale, out=ln.lo)
    np.abs(ln.lo, out=ln.lo)
    np.subtract(mx, mn, out=ln.hi)
    np.multiply(ln.hi, iscale, out=ln.hi)
    np.abs(ln.hi, out=ln.hi)
    np.maximum(ln.lo, ln.hi, out=ln.lo)  # NaN propagates, and fails the test below
    ok = np.less_equal(ln.lo, LIMIT, out=ln.ok)
    return _codes(prod, nmax, None if ok.all() else ~ok)


def _error_sum(scale: np.ndarray, mn: np.ndarray, lf: np.ndarray, x: np.ndarray, w: np.ndarray,
               use_mad: bool, buf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """In-order ``sum_i w[i] * err(scale*L[i] + min - x[i])`` per lane (err = |.| or square), float32 (G,).

    ``scale``, ``mn``: (G,); ``lf``, ``x``, ``w``: (n, G); ``buf``: (n, G) float32 scratch; result in ``out``.
    """
    e = np.multiply(lf, scale, out=buf)  # C: scale * L[i] (same product)
    np.add(e, mn, out=e)
    np.subtract(e, x, out=e)
    if use_mad:
        np.abs(e, out=e)
    else:
        np.multiply(e, e, out=e)
    np.multiply(e, w, out=e)  # C: w * diff
    return seq_sum_rows(e, out=out)


def qkx2_search(x: np.ndarray, w: np.ndarray, p: Qkx2Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx2_quants`` on many groups at once: one group per lane (column).

    ``x``, ``w``: float32 (n, G), C-contiguous, finite, n == p.n (values, weights; group g is column g).
    Returns (L uint8 (n, G), scale float32 (G,), the_min float32 (G,)), i.e. the C function's ``L``, return
    value and ``*the_min`` for every group.

    The candidate steps run one after the other (vectorized across lanes only): in ggml a winning candidate also
    replaces ``min``, which every later candidate's inverse scale and codes are computed from.

    Example:
        >>> xs = np.linspace(-1, 2, 16, dtype=np.float32)[:, None]
        >>> L, scale, the_min = qkx2_search(xs, np.abs(xs), Q2_K_PARAMS)
        >>> L[:, 0].tolist(), round(float(scale[0]), 4), round(float(the_min[0]), 4)
        ([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3], 0.86, 0.7157)
    """
    n, G = x.shape
    if n != p.n or w.shape != x.shape:
        raise ValueError(f"qkx2_search: x {x.shape} and w {w.shape} must both be ({p.n}, groups)")
    ln = _Lanes(G)
    mn, scale, best = ln.mn, ln.scale, ln.best
    with np.errstate(all="ignore"):  # Inf/NaN appear exactly where they appear in C (huge or subnormal groups)
        xlo = x.min(axis=0)  # value-wise equal to the C scan; the sign of a zero min never reaches the bytes
        mx = x.max(axis=0)
        np.copyto(mn, xlo)
        mn[mn > 0] = 0  # C: if (min > 0) min = 0;
        flat = mx == mn
        buf = _work("buf", np.float32, (n, G))  # x - min, then the products, then the current candidate's codes
        ebuf = _work("ebuf", np.float32, (n, G))  # w*x, then the error terms
        terms = _work("terms", np.float32, (n, 3, G))  # w*l, w*l*l, w*l*x side by side: one add per row
        np.multiply(w, x, out=ebuf)
        sum_w = seq_sum_rows(w[1:], start=w[0])  # C starts from element 0, not from 0.0
        sum_x = seq_sum_rows(ebuf[1:], start=ebuf[0])

        # initial fit: iscale = nmax / (max - min), scale = 1 / iscale
        np.subtract(mx, mn, out=ln.rng)
        iscale = np.divide(F32(p.nmax), ln.rng, out=ln.code_iscale)
        np.divide(F32(1), iscale, out=scale)
        lf = _candidate_codes(x, mn, iscale, xlo, mx, p.nmax, buf, ln)
        _error_sum(scale, mn, lf, x, w, p.use_mad, ebuf, best)
        # The winner's codes are not kept: they are recomputed at the end from the (min, iscale) they came from,
        # which gives the same values and saves a masked (n, G) copy per accepted step.
        np.copyto(ln.code_mn, mn)

        sum_l, sum_l2, sum_xl = ln.sums
        D, t1, t2, this_scale, this_min = ln.D, ln.t1, ln.t2, ln.this_scale, ln.this_min
        for num in p.numerators() if p.nstep >= 1 else ():  # C returns before the loop when nstep < 1
            np.subtract(mx, mn, out=ln.rng)
            iscale = np.divide(num, ln.rng, out=ln.iscale)
            lf = _candidate_codes(x, mn, iscale, xlo, mx, p.nmax, buf, ln)
            wl, wll, wlx = terms[:, 0], terms[:, 1], terms[:, 2]
            np.multiply(lf, w, out=wl)  # C: w*l, (w*l)*l, (w*l)*x[i]
            np.multiply(wl, lf, out=wll)
            np.multiply(wl, x, out=wlx)
            seq_sum_rows(terms, out=ln.sums)
            # D = sum_w*sum_l2 - sum_l*sum_l
            np.multiply(sum_w, sum_l2, out=t1)
            np.multiply(sum_l, sum_l, out=t2)
            np.subtract(t1, t2, out=D)
            # this_scale = (sum_w*sum_xl - sum_x*sum_l) / D
            np.multiply(sum_w, sum_xl, out=t1)
            np.multiply(sum_x, sum_l, out=t2)
            np.subtract(t1, t2, out=t1)
            np.divide(t1, D, out=this_scale)
            # this_min = (sum_l2*sum_x - sum_l*sum_xl) / D
            np.multiply(sum_l2, sum_x, out=t1)
            np.multiply(sum_l, sum_xl, out=t2)
            np.subtract(t1, t2, out=t1)
            np.divide(t1, D, out=this_min)
            clip = np.greater(this_min, 0, out=ln.b2)
            if clip.any():  # C: this_min = 0; this_scale = sum_xl / sum_l2;
                this_min[clip] = 0
                this_scale[clip] = sum_xl[clip] / sum_l2[clip]
            cur = _error_sum(this_scale, this_min, lf, x, w, p.use_mad, ebuf, ln.cur)
            take = np.greater(D, 0, out=ln.take)
            np.logical_and(take, np.less(cur, best, out=ln.b2), out=take)  # strict '<': ties keep the earlier fit
            if take.any():
                np.copyto(ln.code_mn, mn, where=take)  # the min and iscale these codes were made with
                np.copyto(ln.code_iscale, iscale, where=take)
                np.copyto(best, cur, where=take)
                np.copyto(scale, this_scale, where=take)
                np.copyto(mn, this_min, where=take)  # C: min = this_min, used by every later candidate
        L = _candidate_codes(x, ln.code_mn, ln.code_iscale, xlo, mx, p.nmax, buf, ln)
    # a flat group (max == min) returns early in C: L = 0, scale 0, *the_min = -min
    if flat.any():
        scale[flat] = 0
        L[:, flat] = 0
    return L.astype(np.uint8), scale.copy(), np.negative(mn)


def _requantize(x: np.ndarray, d: np.ndarray, dm: np.ndarray, L: np.ndarray, nmax: int) -> None:
    """In place: L[g] = clamp(nearest_int((x[g] + dm[g]) / d[g]), 0, nmax) for groups with d != 0 (C: ``if (!d)
    continue;`` -- a NaN d is "true" there, so only exact zeros are skipped). x (G, n) float32, L (G, n) uint8."""
    redo = d != 0
    if not redo.any():
        return
    v = _work("requant", np.float32, x.shape)
    with np.errstate(all="ignore"):  # skipped groups divide by 0 here; their results are not used
        np.add(x, dm[:, None], out=v)
        np.divide(v, d[:, None], out=v)
    q = nearest_int(v, out=v)
    np.clip(q, 0, nmax, out=q)
    if redo.all():
        np.copyto(L, q, casting="unsafe")
    else:
        L[redo] = q[redo]


def _groups(blocks: np.ndarray, n: int) -> np.ndarray:
    """(nb, 256) -> (n, G) C-contiguous lanes, G = nb * 256 / n (group g = row g of blocks.reshape(-1, n))."""
    src = blocks.reshape(-1, n).T
    xt = _work("xt", np.float32, src.shape)
    np.copyto(xt, src)
    return xt


def _rms_weights(xt: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K weights per lane: ``sqrtf(sum_x2 / 32) + fabsf(x)`` with sum_x2 summed in order from 0."""
    w = _work("w", np.float32, xt.shape)
    with np.errstate(over="ignore"):
        sum_x2 = seq_sum_rows(np.multiply(xt, xt, out=w))
    av_x = np.sqrt(sum_x2 / F32(32))
    np.abs(xt, out=w)
    np.add(w, av_x, out=w)  # C: av_x + fabsf(x) (same sum)
    return w


def _q2_k_chunk(x: np.ndarray, o: np.ndarray) -> None:
    """Finite super-blocks x (nb, 256) -> o (nb, 84): the body of ``quantize_row_q2_K_ref`` for every block."""
    nb = x.shape[0]
    xt = _groups(x, 16)
    Lt, scales, mins = qkx2_search(xt, np.abs(xt, out=_work("w", np.float32, xt.shape)), Q2_K_PARAMS)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    L = np.ascontiguousarray(Lt.T).reshape(nb, 16, 16)
    q4 = F32(15)
    # C keeps the largest value that is strictly greater than a running 0
    max_scale = np.where(scales > 0, scales, F32(0)).max(axis=1)
    max_min = np.where(mins > 0, mins, F32(0)).max(axis=1)
    with np.errstate(all="ignore"):
        has_s, has_m = max_scale > 0, max_min > 0
        inv_s = np.where(has_s, q4 / max_scale, F32(0))
        inv_m = np.where(has_m, q4 / max_min, F32(0))
        # scales[j] = l (stored as uint8), then |= l_min << 4 (again truncated to 8 bits)
        ls = np.where(has_s[:, None], nearest_int(inv_s[:, None] * scales), 0) & 0xFF
        lm = np.where(has_m[:, None], nearest_int(inv_m[:, None] * mins), 0)
        sc = (ls | (lm << 4)) & 0xFF
        dbits = f16_bits(np.where(has_s, max_scale / q4, F32(0)))
        mbits = f16_bits(np.where(has_m, max_min / q4, F32(0)))
        d = dbits.view(np.float16).astype(np.float32)[:, None] * (sc & 0x0F).astype(np.float32)
        dm = mbits.view(np.float16).astype(np.float32)[:, None] * (sc >> 4).astype(np.float32)
    _requantize(x.reshape(-1, 16), d.reshape(-1), dm.reshape(-1), L.reshape(-1, 16), 3)
    Lq = L.reshape(nb, 2, 4, 32)
    o[:, 0:16] = sc
    o[:, 16:80] = (Lq[:, :, 0] | (Lq[:, :, 1] << 2) | (Lq[:, :, 2] << 4) | (Lq[:, :, 3] << 6)).reshape(nb, 64)
    o[:, 80:82] = dbits.view(np.uint8).reshape(nb, 2)
    o[:, 82:84] = mbits.view(np.uint8).reshape(nb, 2)


def _k8_common(x: np.ndarray, p: Qkx2Params) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K/Q5_K shared part: (L uint8 (nb, 256) final codes, d bits, dmin bits (nb,) uint16, scales (nb, 12))."""
    nb = x.shape[0]
    xt = _groups(x, 32)
    Lt, scales, mins = qkx2_search(xt, _rms_weights(xt), p)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    L = np.ascontiguousarray(Lt.T).reshape(nb, 8, 32)
    q6 = F32(63)
    max_scale = np.where(scales > 0, scales, F32(0)).max(axis=1)
    max_min = np.where(mins > 0, mins, F32(0)).max(axis=1)
    with np.errstate(all="ignore"):
        inv_s = np.where(max_scale > 0, q6 / max_scale, F32(0))
        inv_m = np.where(max_min > 0, q6 / max_min, F32(0))
        # uint8_t ls = nearest_int(...): truncate to 8 bits, then MIN(63, .)
        ls = np.minimum(nearest_int(inv_s[:, None] * scales) & 0xFF, 63)
        lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63)
        dbits = f16_bits(max_scale / q6)
        mbits = f16_bits(max_min / q6)
        # get_scale_min_k4 gives back ls, lm exactly (both <= 63), so they are used directly
        d = dbits.view(np.float16).astype(np.float32)[:, None] * ls.astype(np.float32)
        dm = mbits.view(np.float16).astype(np.float32)[:, None] * lm.astype(np.float32)
    _requantize(x.reshape(-1, 32), d.reshape(-1), dm.reshape(-1), L.reshape(-1, 32), p.nmax)
    return L.reshape(nb, QK_K), dbits, mbits, pack_scale_min_k4(ls, lm)


def _q4_k_chunk(x: np.ndarray, o: np.ndarray) -> None:
    """Finite super-blocks x (nb, 256) -> o (nb, 144): ``quantize_row_q4_K_ref``."""
    nb = x.shape[0]
    L, dbits, mbits, sc = _k8_common(x, Q4_K_PARAMS)
    Lq = L.reshape(nb, 4, 2, 32)
    o[:, 0:2] = dbits.view(np.uint8).reshape(nb, 2)
    o[:, 2:4] = mbits.view(np.uint8).reshape(nb, 2)
    o[:, 4:16] = sc
    o[:, 16:144] = (Lq[:, :, 0] | (Lq[:, :, 1] << 4)).reshape(nb, 128)


def _q5_k_chunk(x: np.ndarray, o: np.ndarray) -> None:
    """Finite super-blocks x (nb, 256) -> o (nb, 176): ``quantize_row_q5_K_ref``."""
    nb = x.shape[0]
    L, dbits, mbits, sc = _k8_common(x, Q5_K_PARAMS)
    Lq = L.reshape(nb, 4, 2, 32)
    o[:, 0:2] = dbits.view(np.uint8).reshape(nb, 2)
    o[:, 2:4] = mbits.view(np.uint8).reshape(nb, 2)
    o[:, 4:16] = sc
    # qh[l] bit (2k + h) = bit 4 of L[64k + 32h + l]: order the bits (nb, l, k, h) and pack 8 per byte
    hb = ((Lq >> 4) & 1).transpose(0, 3, 1, 2).reshape(nb, 32, 8)
    o[:, 16:48] = np.packbits(hb, axis=2, bitorder="little").reshape(nb, 32)
    o[:, 48:176] = ((Lq[:, :, 0] & 0x0F) | ((Lq[:, :, 1] & 0x0F) << 4)).reshape(nb, 128)


def _run(blocks: np.ndarray, nbytes: int, what: str, fill: Callable[[np.ndarray, np.ndarray], None],
         f16_offsets: list[int]) -> np.ndarray:
    """Validate, quantize sub-chunk by sub-chunk (NaN/Inf blocks zeroed first), apply the non-finite policy."""
    check_blocks(blocks, QK_K, what)
    out = np.empty((blocks.shape[0], nbytes), dtype=np.uint8)
    for sl in chunks(blocks.shape[0], SUPERBLOCKS_PER_CHUNK):
        safe, bad = split_nonfinite(blocks[sl])
        fill(safe, out[sl])
        apply_nonfinite_policy(out[sl], bad, f16_offsets)
    return out


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """Q2_K of float32 ``blocks`` (n_blocks, 256), C-contiguous -> uint8 (n_blocks, 84); ggml
    ``quantize_row_q2_K_ref``.

    Example:
        >>> q = quantize_q2_k(np.zeros((2, 256), np.float32))
        >>> q.shape, int(q.sum())
        ((2, 84), 0)
    """
    return _run(blocks, Q2_K_BYTES, "Q2_K", _q2_k_chunk, [80, 82])


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K of float32 ``blocks`` (n_blocks, 256), C-contiguous -> uint8 (n_blocks, 144); ggml
    ``quantize_row_q4_K_ref``.

    Example:
        >>> q = quantize_q4_k(np.ones((1, 256), np.float32))
        >>> q[0, :4].view(np.float16).tolist()   # every group: min 0 (clamped), scale 1/15 -> d = (1/15)/63
        [0.0010585784912109375, 0.0]
    """
    return _run(blocks, Q4_K_BYTES, "Q4_K", _q4_k_chunk, [0, 2])


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K of float32 ``blocks`` (n_blocks, 256), C-contiguous -> uint8 (n_blocks, 176); ggml
    ``quantize_row_q5_K_ref``.

    Example:
        >>> q = quantize_q5_k(np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256))
        >>> q.shape
        (1, 176)
    """
    return _run(blocks, Q5_K_BYTES, "Q5_K", _q5_k_chunk, [0, 2])

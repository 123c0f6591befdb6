"""Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K with an importance matrix, in numpy: byte-identical to
ggml's ``ggml_quantize_chunk(type, ..., imatrix)``, which runs the ``quantize_row_<type>_impl`` functions of
``ggml/src/ggml-quants.c`` instead of the ``_ref`` ones.

An importance matrix gives one non-negative weight per column of the tensor (``qw``, float32 ``(ncols,)``: the mean
of x² of that input column over a calibration text). The searches then minimize the weighted error with weights

=====================  ==========================================  ==============================================
type                   per-value weight                            search (ggml name)
=====================  ==========================================  ==============================================
Q4_0 / Q5_0            ``qw * sqrt(s2_row + x^2)``                 weighted symmetric fit, 32 values, to -8..7 /
                                                                   -16..15 (``make_qx_quants``), stored as fitted
Q4_1 / Q5_1            ``qw * sqrt(s2_row + x^2)``                 weighted affine fit to 0..15 / 0..31
                                                                   (``make_qkx3_quants``), stored as fitted
Q2_K                   ``qw * sqrt(s2_sb + x^2)``                  affine fits of 16 (``make_qkx3_quants``); scales
                                                                   and mins by ``make_qp_quants`` (4 bits)
Q3_K                   ``qw * sqrt(2 s2_sb + x^2)``                symmetric fits of 16; scales by a weighted
                                                                   ``make_qx_quants`` (6 bits)
Q4_K / Q5_K            ``qw * sqrt(2 s2_sb + x^2)``                affine fits of 32; scales and mins by
                                                                   ``make_qp_quants`` (6 bits)
Q6_K                   ``qw``                                      symmetric fits of 16 as the ``_ref`` path
=====================  ==========================================  ==============================================

``s2_row`` is the mean of x² over the whole row (a sequential float32 sum over every column), ``s2_sb`` over the
256-value super-block. The group searches' levels are then re-quantized against the stored f16 scales (K types),
and the group scales' weights are the sums of the group's value weights. Without an importance matrix ggml runs
the ``_ref`` path for every one of these types (the kernels of q4_q5.py, kquants_qkx2.py, kquants_qx.py); Q8_0 has
no weighted search.

Bit-exactness follows the rules of the other numpy quantizers (see kquants_qkx2.py): every group is a lane of an
``(n, groups)`` array, every product is formed in ggml's association, every sum is accumulated row by row in
order, the searches' candidates run one after another with strict comparisons, and ``nearest_int`` is ggml's bit
trick everywhere (the weighted searches can divide by tiny or zero sums). Levels that ggml keeps in ``uint8_t``
wrap modulo 256 here too (``make_qp_quants`` on a negative scale).

Non-finite policy (l1quant's): a block holding NaN/Inf is written as zeros except its f16 scale fields (0x7E00), and
counts as zeros in its row's (or super-block's) sigma²; ggml would spread the NaN over the row.

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(512, dtype=np.float32)).reshape(2, 256)
    >>> qw = np.linspace(0.5, 2.0, 256, dtype=np.float32)
    >>> quantize_imatrix("Q4_K", x, qw).shape, quantize_imatrix("Q4_0", x, qw).shape
    ((2, 144), (2, 144))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ._common import KernelArgumentError, scratch
from ._kcommon import (
    apply_nonfinite_policy,
    f16_bits,
    nearest_int,
    seq_sum_rows,
    split_nonfinite,
    unpack_scale_min_k4,
)
from .blockwise import quantize_row_chunks

__all__ = ["IMATRIX_TYPES", "check_imatrix", "imatrix_kernel", "quantize_imatrix"]

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
_TINY = F32(1e-15)  # ggml's GROUP_MAX_EPS
_TENTH = F32(0.1)
QK_K = 256
# Values per internal chunk: the searches make ~40 passes of (n, lanes) arrays; numpy's fixed cost per call wants
# many lanes, the cache wants few (measured, M values/s for Q4_K / Q6_K / Q4_0: 2**16 -> 3.9 / 16 / 11,
# 2**17 -> 4.2 / 19 / 14, 2**18 -> 4.7 / 14 / 15).
_CHUNK_VALUES = 1 << 18


def _buf(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A reused per-thread float32 scratch array (contents undefined)."""
    n = 1
    for k in shape:
        n *= k
    return scratch.get("kqi_" + name, np.float32, n).reshape(shape)


def _f16_value(h: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 of f16 bits (exact)."""
    return h.view(np.float16).astype(np.float32)


def _ni(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int of a float32 array of any values, as float32 (exact: |result| <= 2**22)."""
    return nearest_int(np.ascontiguousarray(v, dtype=np.float32)).astype(np.float32)


def _lanes(x: np.ndarray, n: int) -> np.ndarray:
    """(m, k*n) rows -> (n, m*k) lanes: group g = (row, k) is column g, its values down the rows."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _unlanes(L: np.ndarray, m: int) -> np.ndarray:
    """Inverse of ``_lanes`` for the levels: (n, m*k) -> (m, k*n)."""
    return np.ascontiguousarray(L.T).reshape(m, -1)


# ---------------------------------------------------------------------------------------------------------------
# The three weighted searches, one group per lane.


def fit_symmetric(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w)`` per lane of ``x``, ``w`` (n, G) float32.

    Returns (scale (G,), levels (n, G) float32 = nmax + clamp(l, -nmax, nmax-1), 0 for a (near) all-zero group).
    The first guess scales by -nmax/max (max: the signed value of largest magnitude); 18 alternatives
    -(nmax + 0.1*is)/max replace it when sumlx² > best*suml2 (strict, in order).
    """
    n = x.shape[0]
    amax = np.zeros(x.shape[1], F32)
    peak = np.zeros(x.shape[1], F32)
    for i in range(n):
        a = np.abs(x[i])
        take = a > amax
        np.copyto(amax, a, where=take)
        np.copyto(peak, x[i], where=take)
    zero = amax < _TINY
    peak = np.where(zero, _ONE, peak)
    wx = w * x
    lo, hi = F32(-nmax), F32(nmax - 1)

    def levels(iscale: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.clip(_ni(iscale * x), lo, hi)
        return result

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv = levels(iscale)
        return seq_sum_rows(wx * lv), seq_sum_rows((w * lv) * lv)

    best_iscale = F32(-nmax) / peak
    sumlx, suml2 = sums(best_iscale)
    scale = np.where(suml2 != _ZERO, sumlx / suml2, _ZERO)  # C's `suml2 ? .. : 0`: NaN counts as true
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + _TENTH * F32(step)) / peak
        sumlx, suml2 = sums(iscale)
        better = (suml2 > _ZERO) & (sumlx * sumlx > best * suml2)
        if better.any():
            np.copyto(best_iscale, iscale, where=better)
            np.copyto(scale, sumlx / suml2, where=better)
            np.copyto(best, scale * sumlx, where=better)
    L = levels(best_iscale) + F32(nmax)
    scale[zero] = _ZERO
    L[:, zero] = _ZERO
    return scale, L


def fit_affine(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx3_quants(n, nmax, x, w, L, &the_min, Laux, -0.9, 0.05, 36, use_mad=false)`` per lane.

    Returns (scale (G,), the_min (G,) = -offset, levels (n, G) float32 in 0..nmax). A first guess from the range
    [min(min x, 0), max x], then 37 trial inverse scales (nmax - 0.9 + 0.05*is) / (max - min), each refined by
    weighted least squares; a trial with strictly smaller weighted squared error replaces the fit *and* the
    offset that later trials start from.
    """
    n = x.shape[0]
    lo = x[0].copy()
    hi = x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        np.copyto(lo, x[i], where=x[i] < lo)
        np.copyto(hi, x[i], where=x[i] > hi)
        sum_w += w[i]
        sum_x += w[i] * x[i]
    lo[lo > _ZERO] = _ZERO
    flat = hi <= lo
    lo_flat = lo.copy()
    rng = np.where(flat, _ONE, hi - lo)
    iscale = F32(nmax) / rng
    scale = _ONE / iscale
    L = np.clip(_ni(iscale * (x - lo)), _ZERO, F32(nmax))
    diff = (scale * L + lo) - x
    best = seq_sum_rows(w * (diff * diff))
    # The 37 trials reuse per-thread buffers (fresh 1 MiB temporaries cost page faults) and keep x - lo, which only
    # changes when a trial wins.
    shape = x.shape
    xm = np.subtract(x, lo, out=_buf("xm", shape))
    work = _buf("work", shape)
    trial = _buf("trial", shape)
    wl = _buf("wl", shape)
    tmp = _buf("tmp", shape)
    for step in range(37):
        num = (F32(-0.9) + F32(0.05) * F32(step)) + F32(nmax)
        iscale = num / (hi - lo)
        levels = nearest_int(np.multiply(xm, iscale, out=work), out=work)  # int32 view of work
        np.clip(levels, 0, nmax, out=levels)
        np.copyto(trial, levels, casting="unsafe")
        np.multiply(w, trial, out=wl)
        sum_l = seq_sum_rows(wl)
        sum_l2 = seq_sum_rows(np.multiply(wl, trial, out=tmp))
        sum_xl = seq_sum_rows(np.multiply(wl, x, out=tmp))
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = (det > _ZERO) & ~flat
        if not ok.any():
            continue
        t_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        t_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = t_min > _ZERO
        if pos.any():
            t_min = np.where(pos, _ZERO, t_min)
            t_scale = np.where(pos, sum_xl / sum_l2, t_scale)
        np.multiply(trial, t_scale, out=tmp)  # (this_scale * l + this_min) - x, squared, times w
        tmp += t_min
        tmp -= x
        np.multiply(tmp, tmp, out=tmp)
        err = seq_sum_rows(np.multiply(w, tmp, out=tmp))
        better = ok & (err < best)
        if better.any():
            np.copyto(L, trial, where=better)
            np.copyto(best, err, where=better)
            np.copyto(scale, t_scale, where=better)
            np.copyto(lo, t_min, where=better)
            np.subtract(x, lo, out=xm)
    scale[flat] = _ZERO
    L[:, flat] = _ZERO
    lo = np.where(flat, lo_flat, lo)
    return scale, -lo, L


def fit_positive(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qp_quants(n, nmax, x, L, w)`` per lane: fit of group scales (or mins) to 0..nmax, no offset.

    Returns (scale (G,), levels (n, G) int32 holding ggml's ``uint8_t`` values: a negative level wraps mod 256).
    First guess nmax/max, 8 alternatives (0.1*is + nmax)/max kept on strictly smaller weighted squared error, then
    up to 5 passes moving single levels while sumlx²/suml2 strictly improves.
    """
    n = x.shape[0]
    peak = np.zeros(x.shape[1], F32)
    for i in range(n):
        peak = np.where(peak > x[i], peak, x[i])  # MAX(peak, x): a NaN replaces the peak, as in C
    zero = peak < _TINY
    peak = np.where(zero, _ONE, peak)
    iscale = F32(nmax) / peak
    wrapped = (nearest_int(iscale * x) & 0xFF).astype(F32)
    scale0 = _ONE / iscale
    diff = x - scale0 * wrapped
    best = seq_sum_rows((w * diff) * diff)
    cap = F32(nmax)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_TENTH * F32(step) + F32(nmax)) / peak
        scale_is = _ONE / iscale_is
        lv = np.minimum(_ni(iscale_is * x), cap)
        diff = x - scale_is * lv
        err = seq_sum_rows((w * diff) * diff)
        better = err < best
        np.copyto(best, err, where=better)
        np.copyto(iscale, iscale_is, where=better)
    lv = np.minimum(_ni(iscale * x), cap)
    wx = w * x
    sumlx = seq_sum_rows(wx * lv)
    suml2 = seq_sum_rows((w * lv) * lv)
    L = (lv.astype(np.int32) & 0xFF).astype(F32)  # uint8_t L[i] = l
    for _ in range(5):
        moved = False
        for i in range(n):
            li = L[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - (w[i] * li) * li
            nl = np.minimum(_ni((x[i] * sl2) / slx), cap)
            nslx = slx + wx[i] * nl
            nsl2 = sl2 + (w[i] * nl) * nl
            keep = (slx > _ZERO) & (sl2 > _ZERO) & (nl != li) & ((nslx * nslx) * suml2 > (sumlx * sumlx) * nsl2)
            keep &= ~zero
            if keep.any():
                np.copyto(li, (nl.astype(np.int32) & 0xFF).astype(F32), where=keep)
                np.copyto(sumlx, nslx, where=keep)
                np.copyto(suml2, nsl2, where=keep)
                moved = True
        if not moved:  # a lane whose pass moved nothing would move nothing in the next pass either
            break
    scale = np.where(suml2 > _ZERO, sumlx / suml2, _ZERO)
    scale[zero] = _ZERO
    Li = L.astype(np.int32)
    Li[:, zero] = 0
    return scale, Li


# ---------------------------------------------------------------------------------------------------------------
# Per-type assembly. Each fill function takes finite float32 rows x (m, ncols) and the weights qw (ncols,) and
# returns the bytes (m, row bytes).


def _sigma2_rows(x: np.ndarray) -> np.ndarray:
    """Sum of x² over each row (a tensor row, or a 256-value super-block), in column order from 0, one lane per
    row: float32 (m,). ggml's sigma2 numerators."""
    xt = np.ascontiguousarray(x.T)
    return seq_sum_rows(xt * xt)


def _row_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """qw * sqrt(sigma2[row] + x²): float32 (m, n); qw is (n,) or (m, n)."""
    result: np.ndarray = qw * np.sqrt(sigma2[:, None] + x * x)
    return result


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """levels (nb, 32) -> qs (nb, 16): byte j = L[j] | L[j+16] << 4 (low nibbles)."""
    Lu = L.astype(np.uint8)
    result: np.ndarray = (Lu[:, :16] & np.uint8(15)) | ((Lu[:, 16:] & np.uint8(15)) << np.uint8(4))
    return result


def _pack_qh(L: np.ndarray) -> np.ndarray:
    """levels (nb, 32) -> qh (nb, 4) bytes of the uint32 whose bit j is bit 4 of L[j]."""
    bits = (L.astype(np.uint32) >> np.uint32(4)) & np.uint32(1)
    qh = np.zeros(L.shape[0], np.uint32)
    for j in range(32):
        qh |= bits[:, j] << np.uint32(j)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return f16_bits(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def _fill_small(x: np.ndarray, qw: np.ndarray, kind: str) -> np.ndarray:
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 (quantize_row_<type>_impl)."""
    m, ncols = x.shape
    sigma2 = _sigma2_rows(x) / F32(ncols)
    w = _row_weights(x, qw, sigma2)
    xl, wl = _lanes(x, 32), _lanes(w, 32)
    parts: list[np.ndarray]
    if kind in ("Q4_0", "Q5_0"):
        scale, L = fit_symmetric(xl, wl, 8 if kind == "Q4_0" else 16)
        L = L.T
        parts = [_f16_bytes(scale)]
    else:
        scale, the_min, L = fit_affine(xl, wl, 15 if kind == "Q4_1" else 31)
        L = L.T
        parts = [_f16_bytes(scale), _f16_bytes(-the_min)]
    if kind.startswith("Q5"):
        parts.append(_pack_qh(L))
    parts.append(_pack_nibbles(L))
    return np.concatenate(parts, axis=1).reshape(m, -1)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """levels (nb, 256) 0..3 -> (nb, 64): byte 32h + l = L[128h+l] | L[128h+l+32] << 2 | .. << 4 | .. << 6."""
    v = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    packed = v[:, :, 0] | (v[:, :, 1] << np.uint8(2)) | (v[:, :, 2] << np.uint8(4)) | (v[:, :, 3] << np.uint8(6))
    result: np.ndarray = packed.reshape(-1, 64)
    return result


def _requant(xg: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int, L: np.ndarray) -> None:
    """In place on L (nb, groups, n): where d != 0, clamp(nearest_int((x + dm) / d), lo, hi) - lo (no dm: x / d)."""
    with np.errstate(all="ignore"):
        num = xg if dm is None else xg + dm[:, :, None]
        q = np.clip(_ni(num / d[:, :, None]), F32(lo), F32(hi)) - F32(lo)
    np.copyto(L, q, where=(d != _ZERO)[:, :, None])


def _fill_q2_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sigma2 = _sigma2_rows(x) / F32(QK_K)
    w = _row_weights(x, qw, sigma2)
    wl = _lanes(w, 16)
    scales, mins, L = fit_affine(_lanes(x, 16), wl, 3)
    sw = seq_sum_rows(wl)
    dm, Ls = fit_positive(_lanes(scales, 16), _lanes(sw, 16), 15)
    mm, Lm = fit_positive(_lanes(mins, 16), _lanes(sw, 16), 15)
    sc = ((Ls.T | (Lm.T << 4)) & 0xFF).astype(np.uint8)  # (nb, 16): uint8_t Ls | Lm << 4
    d16, m16 = f16_bits(dm), f16_bits(mm)
    d = _f16_value(d16)[:, None] * (sc & np.uint8(15)).astype(F32)
    mn = _f16_value(m16)[:, None] * (sc >> np.uint8(4)).astype(F32)
    Lg = _unlanes(L, nb).reshape(nb, 16, 16)
    _requant(x.reshape(nb, 16, 16), d, mn, 0, 3, Lg)
    out = np.empty((nb, 84), np.uint8)
    out[:, 0:16] = sc
    out[:, 16:80] = _pack_2bit(Lg.reshape(nb, QK_K))
    out[:, 80:82] = _f16_bytes(dm)
    out[:, 82:84] = _f16_bytes(mm)
    return out


def _fill_q3_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sigma2 = (F32(2.0) * _sigma2_rows(x)) / F32(QK_K)
    w = _row_weights(x, qw, sigma2)
    wl = _lanes(w, 16)
    scales, L = fit_symmetric(_lanes(x, 16), wl, 4)
    sw = seq_sum_rows(wl)
    d_block, Ls = fit_symmetric(_lanes(scales, 16), _lanes(sw, 16), 32)
    l6 = Ls.T.astype(np.int32)  # (nb, 16), 0..63
    d16 = f16_bits(d_block)
    d = _f16_value(d16)[:, None] * (l6 - 32).astype(F32)
    Lg = _unlanes(L, nb).reshape(nb, 16, 16)
    _requant(x.reshape(nb, 16, 16), d, None, -4, 3, Lg)
    Lf = Lg.reshape(nb, QK_K).astype(np.uint8)
    out = np.zeros((nb, 110), np.uint8)
    high = (Lf >> np.uint8(2)).reshape(nb, 8, 32)
    for k in range(8):
        out[:, 0:32] |= high[:, k, :] << np.uint8(k)
    out[:, 32:96] = _pack_2bit(Lf & np.uint8(3))
    u = l6.astype(np.uint8)
    nib = u & np.uint8(15)
    out[:, 96:104] = nib[:, 0:8] | (nib[:, 8:16] << np.uint8(4))
    top = (u >> np.uint8(4)).reshape(nb, 4, 4)  # [j // 4, j % 4]
    for q in range(4):
        out[:, 104:108] |= top[:, q, :] << np.uint8(2 * q)
    out[:, 108:110] = _f16_bytes(d_block)
    return out


def _kx_common(x: np.ndarray, qw: np.ndarray, nmax: int, out: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K up to the levels: writes d, dmin, scales[12] into out[:, 0:16]; returns levels (nb, 256)."""
    nb = x.shape[0]
    sigma2 = (F32(2.0) * _sigma2_rows(x)) / F32(QK_K)
    w = _row_weights(x, qw, sigma2)
    wl = _lanes(w, 32)
    scales, mins, L = fit_affine(_lanes(x, 32), wl, nmax)
    sw = _lanes(seq_sum_rows(wl), 8)
    d_block, Ls = fit_positive(_lanes(scales, 8), sw, 63)
    m_block, Lm = fit_positive(_lanes(mins, 8), sw, 63)
    ls, lm = Ls.T.astype(np.uint8), Lm.T.astype(np.uint8)  # (nb, 8) uint8_t
    if nmax == 31:  # Q5_K caps the codes at 63; Q4_K stores them as they are
        ls, lm = np.minimum(ls, np.uint8(63)), np.minimum(lm, np.uint8(63))
    sc = np.zeros((nb, 12), np.uint8)
    sc[:, 0:4] = ls[:, 0:4]
    sc[:, 4:8] = lm[:, 0:4]
    sc[:, 8:12] = (ls[:, 4:8] & np.uint8(15)) | ((lm[:, 4:8] & np.uint8(15)) << np.uint8(4))
    sc[:, 0:4] |= (ls[:, 4:8] >> np.uint8(4)) << np.uint8(6)
    sc[:, 4:8] |= (lm[:, 4:8] >> np.uint8(4)) << np.uint8(6)
    out[:, 0:2] = _f16_bytes(d_block)
    out[:, 2:4] = _f16_bytes(m_block)
    out[:, 4:16] = sc
    s6, m6 = unpack_scale_min_k4(sc)  # what get_scale_min_k4 reads back
    d = _f16_value(f16_bits(d_block))[:, None] * s6.astype(F32)
    dm = _f16_value(f16_bits(m_block))[:, None] * m6.astype(F32)
    Lg = _unlanes(L, nb).reshape(nb, 8, 32)
    _requant(x.reshape(nb, 8, 32), d, dm, 0, nmax, Lg)
    return Lg.reshape(nb, QK_K).astype(np.uint8)


def _fill_q4_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    out = np.empty((x.shape[0], 144), np.uint8)
    L = _kx_common(x, qw, 15, out).reshape(-1, 4, 2, 32)
    out[:, 16:144] = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(-1, 128)
    return out


def _fill_q5_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    out = np.empty((nb, 176), np.uint8)
    L = _kx_common(x, qw, 31, out).reshape(nb, 4, 2, 32)
    lo = L & np.uint8(15)
    hi = L >> np.uint8(4)
    qh = np.zeros((nb, 32), np.uint8)
    for r in range(4):
        qh |= (hi[:, r, 0] << np.uint8(2 * r)) | (hi[:, r, 1] << np.uint8(2 * r + 1))
    out[:, 16:48] = qh
    out[:, 48:176] = (lo[:, :, 0] | (lo[:, :, 1] << np.uint8(4))).reshape(nb, 128)
    return out


def _fill_q6_k(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    scales, L = fit_symmetric(_lanes(x, 16), _lanes(qw, 16), 32)
    s = scales.reshape(nb, 16)
    max_abs = np.zeros(nb, F32)
    max_scale = np.zeros(nb, F32)
    for j in range(16):
        a = np.abs(s[:, j])
        take = a > max_abs
        np.copyto(max_abs, a, where=take)
        np.copyto(max_scale, s[:, j], where=take)
    dead = max_abs < _TINY  # ggml clears the whole block
    max_scale = np.where(dead, _ONE, max_scale)
    iscale = F32(-128.0) / max_scale
    d_val = _ONE / iscale
    sc = np.minimum(nearest_int(iscale[:, None] * s), 127).astype(np.int8)  # int -> int8_t wraps, as in C
    d = _f16_value(f16_bits(d_val))[:, None] * sc.astype(F32)
    Lg = _unlanes(L, nb).reshape(nb, 16, 16)
    _requant(x.reshape(nb, 16, 16), d, None, -32, 31, Lg)
    Lq = Lg.reshape(nb, 2, 4, 32).astype(np.uint8)
    lo = Lq & np.uint8(15)
    hi = Lq >> np.uint8(4)
    out = np.empty((nb, 210), np.uint8)
    ql = out[:, 0:128].reshape(nb, 2, 2, 32)
    ql[:, :, 0, :] = lo[:, :, 0] | (lo[:, :, 2] << np.uint8(4))
    ql[:, :, 1, :] = lo[:, :, 1] | (lo[:, :, 3] << np.uint8(4))
    out[:, 128:192] = (hi[:, :, 0] | (hi[:, :, 1] << np.uint8(2)) | (hi[:, :, 2] << np.uint8(4))
                       | (hi[:, :, 3] << np.uint8(6))).reshape(nb, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = _f16_bytes(d_val)
    out[dead] = 0
    return out


_K_FILL: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Q2_K": _fill_q2_k,
    "Q3_K": _fill_q3_k,
    "Q4_K": _fill_q4_k,
    "Q5_K": _fill_q5_k,
    "Q6_K": _fill_q6_k,
}
#: byte offsets of the f16 scale fields the non-finite policy sets to NaN
_NAN_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,),
               "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}

#: The types with an importance-weighted search (ggml's ``quantize_row_<type>_impl``), by GGML name.
IMATRIX_TYPES: tuple[str, ...] = tuple(_NAN_FIELDS)


def check_imatrix(imatrix: np.ndarray, ncols: int, what: str) -> np.ndarray:
    """Validate importance weights for a row of ``ncols`` values: float32-convertible 1-D (ncols,), all finite.

    Returns a C-contiguous float32 copy or view. Raises KernelArgumentError naming ``what`` otherwise.

    Example:
        >>> check_imatrix(np.ones(4), 4, "Q4_0").dtype
        dtype('float32')
    """
    qw = np.asarray(imatrix)
    if qw.ndim != 1 or qw.shape[0] != ncols:
        raise KernelArgumentError(f"{what}: importance weights must have shape ({ncols},), found {qw.shape}")
    if qw.dtype.kind not in "fiu":
        raise KernelArgumentError(f"{what}: importance weights must be float32, found {qw.dtype}")
    qw = np.ascontiguousarray(qw, dtype=np.float32)
    if not np.isfinite(qw).all():
        i = int(np.argmin(np.isfinite(qw)))
        raise KernelArgumentError(f"{what}: importance weight {i} is not finite ({qw[i]})")
    return qw


def _quantize_rows(type_name: str, x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """Finite or not, float32 rows (m, ncols) -> bytes (m, row bytes), non-finite policy applied."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    m, ncols = x.shape
    blocks = x.reshape(-1, block)
    safe, bad = split_nonfinite(blocks)
    xs = safe.reshape(m, ncols)
    with np.errstate(all="ignore"):  # extreme finite input overflows to Inf/NaN inside the searches, as in ggml
        if block == 32:
            out = _fill_small(xs, qw, type_name).reshape(-1, size)
        else:
            qwb = np.ascontiguousarray(np.broadcast_to(qw.reshape(1, -1, QK_K), (m, ncols // QK_K, QK_K)))
            out = _K_FILL[type_name](safe.reshape(-1, QK_K), qwb.reshape(-1, QK_K))
    out = np.ascontiguousarray(out)
    apply_nonfinite_policy(out, bad, _NAN_FIELDS[type_name])
    return out.reshape(m, -1)


def quantize_imatrix(type_name: str, x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Quantize float32 rows ``x`` (m, ncols) with importance weights ``imatrix`` (ncols,) -> uint8 (m, row bytes).

    ``type_name``: one of :data:`IMATRIX_TYPES` ("Q4_0" ... "Q6_K"). Byte-identical to ggml's
    ``ggml_quantize_chunk(type, x, ..., imatrix)`` for finite rows. Raises KernelArgumentError on a bad type,
    shape or weight vector.

    Example:
        >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
        >>> q = quantize_imatrix("Q4_0", x, np.ones(32, np.float32))
        >>> q.shape, float(q[0, :2].view(np.float16)[0])
        ((2, 18), 0.12164306640625)
    """
    if type_name not in _NAN_FIELDS:
        raise KernelArgumentError(f"no importance-weighted search for {type_name!r}: expected one of {IMATRIX_TYPES}")
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2:
        raise KernelArgumentError(f"{type_name}: expected float32 (rows, ncols), found {x.dtype} {x.shape}")
    block = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]
    if x.shape[1] % block:
        raise KernelArgumentError(f"{type_name}: row length {x.shape[1]} is not a multiple of {block}")
    qw = check_imatrix(imatrix, x.shape[1], type_name)
    out = np.empty((x.shape[0], x.shape[1] // block * GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]), np.uint8)
    imatrix_kernel(type_name)(np.ascontiguousarray(x), out, qw)
    return out


ImatrixKernel = Callable[[np.ndarray, np.ndarray, np.ndarray], int]


def imatrix_kernel(type_name: str) -> ImatrixKernel:
    """The numpy imatrix kernel of a type: ``kernel(x, out, imatrix) -> first non-finite flat index or -1``.

    ``x``: (rows, ncols) float32 / float16 / uint16 (bf16 bits), C-contiguous; ``out``: uint8 (rows, row bytes)
    with contiguous rows; ``imatrix``: float32 (ncols,), validated by the caller (``check_imatrix``).

    Example:
        >>> k = imatrix_kernel("Q5_1")
        >>> k(np.ones((1, 32), np.float16), np.empty((1, 24), np.uint8), np.ones(32, np.float32))
        -1
    """
    if type_name not in _NAN_FIELDS:
        raise KernelArgumentError(f"no importance-weighted search for {type_name!r}: expected one of {IMATRIX_TYPES}")

    def kernel(x: np.ndarray, out: np.ndarray, imatrix: np.ndarray) -> int:
        return quantize_row_chunks(x, out, _CHUNK_VALUES, lambda xs: _quantize_rows(type_name, xs, imatrix))

    return kernel

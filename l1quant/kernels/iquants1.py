"""IQ1_S and IQ1_M in numpy: byte-identical to ggml's ``ggml_quantize_chunk`` for these types (the
``quantize_row_iq1_s_impl`` / ``_iq1_m_impl`` searches of ggml-quants.c).

Both split a group's values into three levels (-1, 0, 1, shifted by +-1/8) exactly: the values are sorted, prefix
sums of ``w*x`` and ``w`` taken in sorted order, and every pair of split points (i1 <= i2) tried in order, keeping
the best weighted fit (strict comparison, so the first best split wins). The 8-value parts are then snapped to the
2048-point grid, an off-grid part taking its neighbour (kernels/iq_grids.py) nearest by ``sum w*(scale*q - x)^2``.

=======  ======  ====================================  ==========================================================
type     group   value weight                          shift
=======  ======  ====================================  ==========================================================
IQ1_S    32      ``qw * sqrt(2 s2 + x^2)`` (needed)    one sign per group (+1/8 or -1/8), stored with the scale
IQ1_M    16      ``qw * sqrt(2 s2 + x^2)``, or ``x^2``  one per 8-value half (4 combinations tried per split);
                 without weights                       the super-block scale is refitted over all 256 values
=======  ======  ====================================  ==========================================================

``s2`` is the mean of x² over the 256-value super-block.

Ties: ggml sorts with glibc's ``qsort`` comparing the value alone. glibc 2.36 (this platform's) sorts arrays this
small with a merge sort that keeps equal elements in their original order, so equal values come in increasing
index order: ``np.argsort(kind="stable")`` gives that order. tests/test_iquants12.py pins it against ggml.

Bit-exactness and the non-finite policy as kernels/iquants2.py (IQ1_M has no separate f16 field: its f16 scale's
four nibbles, 0x7E00 for a poisoned super-block, sit in the top nibble of each 16-bit word of ``scales``).

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(256, dtype=np.float32)).reshape(1, 256)
    >>> quantize_iq1("IQ1_M", x, None).shape
    (1, 56)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import KernelArgumentError
from ._kcommon import f16_bits
from .floats import first_nonfinite_flat, to_f32
from .iquants2 import codes_of, nearest_neighbour, nint, q_table, sequential_sum
from .iq_grids import iq_grid

__all__ = ["IQ1_TYPES", "quantize_iq1"]

F32 = np.float32
QK = 256
IQ1_TYPES = ("IQ1_S", "IQ1_M")
_DELTA = F32(0.125)
XP = np.array([F32(-1) + _DELTA, _DELTA, F32(1) + _DELTA], F32)
XM = np.array([F32(-1) - _DELTA, -_DELTA, F32(1) - _DELTA], F32)
_FLT_MAX = F32(np.finfo(np.float32).max)
_BLOCKS_PER_CHUNK = 1024


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        result: np.ndarray = (a / b).astype(F32)
        return result


def _levels_from_split(order: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Levels (n, lanes) int8: 0 for the b1 smallest values, 1 up to b2, 2 above (positions in sorted order)."""
    n, lanes = order.shape
    pos = np.empty_like(order)
    pos[order, np.arange(lanes)[None, :]] = np.arange(n)[:, None]
    return np.where(pos < b1, 0, np.where(pos < b2, 1, 2)).astype(np.int8)


def _snap(L: np.ndarray, X: np.ndarray, W: np.ndarray, scale: np.ndarray, xx: list[np.ndarray]) -> tuple[
        np.ndarray, np.ndarray]:
    """Grid index of every 8-value part (parts, lanes) and whether all parts of a lane were on the grid. ``xx[k]``:
    (3, lanes) level values of part k, each lane's column XP or XM."""
    tables = [q_table("IQ1_S", tuple(float(v) for v in XP)), q_table("IQ1_S", tuple(float(v) for v in XM))]
    g = iq_grid("IQ1_S")
    parts = L.shape[0] // 8
    index = np.zeros((parts, L.shape[1]), np.int32)
    all_on = np.ones(L.shape[1], bool)
    for k in range(parts):
        sl = slice(8 * k, 8 * k + 8)
        u = codes_of(L[sl])
        gi = g.kmap[u].copy()
        off = gi < 0
        all_on &= ~off
        if off.any():
            j = np.flatnonzero(off)
            sel = (xx[k][0, j] != XP[0]).astype(np.int32)  # 0: XP, 1: XM
            gi[j] = nearest_neighbour("IQ1_S", u[j], X[sl][:, j], W[sl][:, j], scale[j], tables, sel)
        index[k] = gi
    return index, all_on


def _refit(index: np.ndarray, X: np.ndarray, W: np.ndarray, xx: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g = iq_grid("IQ1_S")
    sqx = np.zeros(X.shape[1], F32)
    sq2 = np.zeros(X.shape[1], F32)
    lanes = np.arange(X.shape[1])
    for k in range(index.shape[0]):
        lev = g.levels[index[k]]  # (lanes, 8)
        for j in range(8):
            q = xx[k][lev[:, j], lanes]
            w = W[8 * k + j]
            sqx += w * q * X[8 * k + j]
            sq2 += w * q * q
    return sqx, sq2


def _sort_order(X: np.ndarray, stable: bool) -> np.ndarray:
    if stable:
        return np.argsort(X, axis=0, kind="stable")
    # equal values in decreasing index order: sort the reversed groups stably, then map the positions back
    n = X.shape[0]
    result: np.ndarray = (n - 1) - np.argsort(X[::-1], axis=0, kind="stable")
    return result


def _iq1_s(xbl: np.ndarray, qw: np.ndarray, stable: bool = True) -> np.ndarray:
    B = xbl.shape[0]
    G = B * 8
    sumx2 = sequential_sum(np.ascontiguousarray((xbl * xbl).T))
    sigma2 = (F32(2) * sumx2 / F32(QK)).astype(F32)
    wt = qw * np.sqrt(np.repeat(sigma2, QK).reshape(B, QK) + xbl * xbl)
    X = np.ascontiguousarray(xbl.reshape(G, 32).T)
    W = np.ascontiguousarray(wt.reshape(G, 32).T).astype(F32)
    ax = np.abs(X)
    mx = ax[0].copy()
    for i in range(1, 32):
        mx = np.where(mx > ax[i], mx, ax[i])
    live = ~(mx < F32(1e-12))
    order = _sort_order(X, stable)
    lanes = np.arange(G)
    sumx = np.zeros((33, G), F32)
    sumw = np.zeros((33, G), F32)
    for j in range(32):
        i = order[j]
        sumx[j + 1] = sumx[j] + W[i, lanes] * X[i, lanes]
        sumw[j + 1] = sumw[j] + W[i, lanes]
    best = np.full(G, -_FLT_MAX, F32)
    scale = mx.copy()
    b1 = np.full(G, -1, np.int32)
    b2 = np.full(G, -1, np.int32)
    shift = np.zeros(G, np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i1 in range(33):
            a = sumx[i1] - sumx[0]
            wa = sumw[i1] - sumw[0]
            for i2 in range(i1, 33):
                b = sumx[i2] - sumx[i1]
                c = sumx[32] - sumx[i2]
                wb = sumw[i2] - sumw[i1]
                wc = sumw[32] - sumw[i2]
                for xs, sh in ((XP, 1), (XM, -1)):
                    sqx = a * xs[0] + b * xs[1] + c * xs[2]
                    sq2 = wa * xs[0] * xs[0] + wb * xs[1] * xs[1] + wc * xs[2] * xs[2]
                    take = (sq2 > 0) & (sqx * sqx > best * sq2)
                    if take.any():
                        scale = np.where(take, _div(sqx, sq2), scale)
                        best = np.where(take, scale * sqx, best)
                        b1 = np.where(take, i1, b1)
                        b2 = np.where(take, i2, b2)
                        shift = np.where(take, sh, shift)
    live &= (b1 >= 0) & (b2 >= 0) & (shift != 0)
    L = _levels_from_split(order, b1, b2)
    neg = scale < 0
    L = np.where(neg, 2 - L, L).astype(np.int8)
    scale = np.where(neg, -scale, scale).astype(F32)
    shift = np.where(neg, -shift, shift)
    xx = np.where(shift == 1, XP[:, None], XM[:, None]).astype(F32)  # (3, G)
    idx = np.flatnonzero(live)
    index = np.zeros((4, G), np.int32)
    if idx.size:
        xxl = [xx[:, idx]] * 4
        ind, all_on = _snap(L[:, idx], X[:, idx], W[:, idx], scale[idx], xxl)
        sqx, sq2 = _refit(ind, X[:, idx], W[:, idx], xxl)
        upd = ~all_on & (sqx > 0) & (sq2 > 0)
        scale[idx] = np.where(upd, _div(sqx, sq2), scale[idx])
        index[:, idx] = ind
    scale = np.where(live, scale, F32(0))
    shift = np.where(live, shift, 1)
    S = scale.reshape(B, 8)
    max_scale = np.zeros(B, F32)
    for ib in range(8):
        max_scale = np.where(max_scale > S[:, ib], max_scale, S[:, ib])
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d = (max_scale / F32(15)).astype(F32)
        idd = (F32(1) / d).astype(F32)
        ls = np.clip(nint(F32(0.5) * (idd[:, None] * S - F32(1))), 0, 7).astype(np.uint32)
    ls = np.where(shift.reshape(B, 8) == -1, ls | 8, ls)
    has = max_scale != 0
    out = np.zeros((B, 50), np.uint8)
    dbits = np.where(has, f16_bits((d * F32(1.125)).astype(F32)), 0).astype("<u2")
    out[:, 0:2] = dbits.reshape(B, 1).view(np.uint8).reshape(B, 2)
    ind = index.T.reshape(B, 8, 4).astype(np.uint32)
    out[:, 2:34] = (ind & 255).reshape(B, 32).astype(np.uint8)
    h = ((ind >> 8) << (3 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    h = np.where(has[:, None], h | (ls << 12), h).astype("<u2")
    out[:, 34:50] = h.view(np.uint8).reshape(B, 16)
    return out


def _iq1_m(xbl: np.ndarray, qw: np.ndarray | None, stable: bool = True) -> np.ndarray:
    B = xbl.shape[0]
    G = B * 16
    sumx2 = sequential_sum(np.ascontiguousarray((xbl * xbl).T))
    sigma2 = (F32(2) * sumx2 / F32(QK)).astype(F32)
    if qw is not None:
        wt = qw * np.sqrt(np.repeat(sigma2, QK).reshape(B, QK) + xbl * xbl)
    else:
        wt = xbl * xbl
    X = np.ascontiguousarray(xbl.reshape(G, 16).T)
    W = np.ascontiguousarray(wt.reshape(G, 16).T).astype(F32)
    ax = np.abs(X)
    mx = ax[0].copy()
    for i in range(1, 16):
        mx = np.where(mx > ax[i], mx, ax[i])
    live = ~(mx < F32(1e-7))
    order = _sort_order(X, stable)
    lanes = np.arange(G)
    px = np.zeros((2, 17, G), F32)
    pw = np.zeros((2, 17, G), F32)
    for j in range(16):
        i = order[j]
        h1 = i >= 8
        tx = px[:, j] .copy()
        tw = pw[:, j].copy()
        addx = W[i, lanes] * X[i, lanes]
        addw = W[i, lanes]
        px[0, j + 1] = np.where(h1, tx[0], tx[0] + addx)
        px[1, j + 1] = np.where(h1, tx[1] + addx, tx[1])
        pw[0, j + 1] = np.where(h1, tw[0], tw[0] + addw)
        pw[1, j + 1] = np.where(h1, tw[1] + addw, tw[1])
    txs, tws = px[:, 16], pw[:, 16]
    p2, m2 = XP[2], XM[2]
    cp1 = XP[0] * XP[0] - XP[1] * XP[1]
    cp2 = XP[1] * XP[1] - XP[2] * XP[2]
    cm1 = XM[0] * XM[0] - XM[1] * XM[1]
    cm2 = XM[1] * XM[1] - XM[2] * XM[2]
    tp = [txs[h] * p2 for h in range(2)]
    tm = [txs[h] * m2 for h in range(2)]
    wp = [tws[h] * p2 * p2 for h in range(2)]
    wm = [tws[h] * m2 * m2 for h in range(2)]
    best = np.full(G, -_FLT_MAX, F32)
    scale = mx.copy()
    b1 = np.full(G, -1, np.int32)
    b2 = np.full(G, -1, np.int32)
    bk = np.full(G, -1, np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        for i1 in range(17):
            for i2 in range(i1, 17):
                qxp, qxm, q2p, q2m = [], [], [], []
                for h in range(2):
                    sx = px[h, i1] + px[h, i2]
                    qxp.append(tp[h] - sx)
                    qxm.append(tm[h] - sx)
                    q2p.append(wp[h] + pw[h, i1] * cp1 + pw[h, i2] * cp2)
                    q2m.append(wm[h] + pw[h, i1] * cm1 + pw[h, i2] * cm2)
                cands = ((qxp[0] + qxp[1], q2p[0] + q2p[1]), (qxp[0] + qxm[1], q2p[0] + q2m[1]),
                         (qxm[0] + qxp[1], q2m[0] + q2p[1]), (qxm[0] + qxm[1], q2m[0] + q2m[1]))
                for k, (sqx, sq2) in enumerate(cands):
                    take = (sq2 > 0) & (sqx * sqx > best * sq2)
                    if take.any():
                        scale = np.where(take, _div(sqx, sq2), scale)
                        best = np.where(take, scale * sqx, best)
                        b1 = np.where(take, i1, b1)
                        b2 = np.where(take, i2, b2)
                        bk = np.where(take, k, bk)
    live &= (b1 >= 0) & (b2 >= 0) & (bk >= 0)
    L = _levels_from_split(order, b1, b2)
    neg = scale < 0
    L = np.where(neg, 2 - L, L).astype(np.int8)
    scale = np.where(neg, -scale, scale).astype(F32)
    bk = np.where(neg, 3 - bk, bk)
    xx0 = np.where(bk < 2, XP[:, None], XM[:, None]).astype(F32)
    xx1 = np.where(bk % 2 == 0, XP[:, None], XM[:, None]).astype(F32)
    idx = np.flatnonzero(live)
    index = np.zeros((2, G), np.int32)
    if idx.size:
        xxl = [xx0[:, idx], xx1[:, idx]]
        ind, all_on = _snap(L[:, idx], X[:, idx], W[:, idx], scale[idx], xxl)
        sqx, sq2 = _refit(ind, X[:, idx], W[:, idx], xxl)
        upd = ~all_on & (sqx > 0) & (sq2 > 0)
        scale[idx] = np.where(upd, _div(sqx, sq2), scale[idx])
        index[:, idx] = ind
    scale = np.where(live, scale, F32(0))
    shifts = np.where(live, bk, 0)
    S = scale.reshape(B, 16)
    max_scale = np.zeros(B, F32)
    for ib in range(16):
        max_scale = np.where(max_scale > S[:, ib], max_scale, S[:, ib])
    has = max_scale != 0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d = (max_scale / F32(15)).astype(F32)
        idd = (F32(1) / d).astype(F32)
        ls = np.clip(nint(F32(0.5) * (idd[:, None] * S - F32(1))), 0, 7)  # (B, 16)
        # the refit over the super-block: sequential over groups, halves, values (= value order)
        g = iq_grid("IQ1_S")
        sh = shifts.reshape(B, 16)
        mult = (2 * ls + 1).astype(F32)
        sqx = np.zeros(B, F32)
        sq2 = np.zeros(B, F32)
        ind = index.T.reshape(B, 16, 2)
        Wb = W.T.reshape(B, 16, 16)
        Xb = X.T.reshape(B, 16, 16)
        rows = np.arange(B)
        for ib in range(16):
            for k in range(2):
                xsel = (sh[:, ib] < 2) if k == 0 else (sh[:, ib] % 2 == 0)
                lev = g.levels[ind[:, ib, k]]  # (B, 8)
                for j in range(8):
                    base = np.where(xsel, XP[lev[:, j]], XM[lev[:, j]]).astype(F32)
                    q = base * mult[rows, ib]
                    w = Wb[:, ib, 8 * k + j]
                    sqx += w * q * Xb[:, ib, 8 * k + j]
                    sq2 += w * q * q
        d = np.where(sq2 > 0, _div(sqx, sq2), d)
        s = f16_bits((d * F32(1.1125)).astype(F32)).astype(np.uint32)
    masks = np.array([0x00, 0x80, 0x08, 0x88], np.uint32)
    out = np.zeros((B, 56), np.uint8)
    out[:, 0:32] = (ind.reshape(B, 32) & 255).astype(np.uint8)
    qh = ((ind[:, :, 0] >> 8) | ((ind[:, :, 1] >> 8) << 4)).astype(np.uint32)
    qh = np.where(has[:, None], qh | masks[sh], qh)
    out[:, 32:48] = qh.astype(np.uint8)
    sc = (ls.astype(np.uint32).reshape(B, 4, 4) << (3 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    nib = np.stack([(s & 0x000F) << 12, (s & 0x00F0) << 8, (s & 0x0F00) << 4, s & 0xF000], axis=1)
    sc = np.where(has[:, None], sc | nib, 0).astype("<u2")
    out[:, 48:56] = sc.view(np.uint8).reshape(B, 8)
    return out


def quantize_iq1(type_name: str, x: np.ndarray, imatrix: np.ndarray | None, *, stable_ties: bool = True) -> np.ndarray:
    """(rows, ncols) float32 / float16 / uint16 (bf16 bits) -> uint8 (rows, ncols / 256 * bytes) of IQ1_S or IQ1_M.

    ``imatrix``: float32 (ncols,) importance weights, or None (IQ1_M only; KernelArgumentError for IQ1_S, as ggml
    asserts). Rule: ggml-quants.c ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl``.
    ``stable_ties=False`` orders equal values by decreasing index instead (not ggml's order on glibc 2.36: only for
    showing that the tie order changes the bytes).
    """
    if type_name == "IQ1_S" and imatrix is None:
        raise KernelArgumentError("IQ1_S needs an importance matrix (ggml refuses to quantize it without one)")
    x = to_f32(x) if x.dtype != np.float32 else x
    rows, ncols = x.shape
    if ncols % QK:
        raise KernelArgumentError(f"{type_name}: row length {ncols} is not a multiple of 256")
    nb = ncols // QK
    nbytes = 50 if type_name == "IQ1_S" else 56
    blocks = x.reshape(rows * nb, QK)
    out = np.zeros((rows * nb, nbytes), np.uint8)
    qwb = None if imatrix is None else np.ascontiguousarray(imatrix, F32).reshape(nb, QK)
    for s in range(0, rows * nb, _BLOCKS_PER_CHUNK):
        e = min(rows * nb, s + _BLOCKS_PER_CHUNK)
        xb = blocks[s:e]
        bad = ~np.isfinite(xb).all(axis=1)
        safe = np.where(bad[:, None], F32(0), xb).astype(F32)
        w = None if qwb is None else qwb[np.arange(s, e) % nb]
        with np.errstate(over="ignore", invalid="ignore"):
            o = _iq1_s(safe, w, stable_ties) if type_name == "IQ1_S" else _iq1_m(safe, w, stable_ties)  # type: ignore[arg-type]
        o[bad] = 0
        if type_name == "IQ1_S":
            o[bad, 0:2] = (0x00, 0x7E)
        else:  # 0x7E00's nibbles 0, 0, 0xE, 0x7 in the top nibble of the four scales words
            o[bad, 48:56] = (0, 0, 0, 0, 0, 0xE0, 0, 0x70)
        out[s:e] = o
    return out.reshape(rows, nb * nbytes)


def numpy_kernel(type_name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], int]:
    """(x, out, imatrix or None) -> first non-finite flat index or -1: the numpy kernel of one type."""

    def kernel(x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None) -> int:
        out[...] = quantize_iq1(type_name, x, imatrix)
        return first_nonfinite_flat(x.reshape(-1))

    return kernel

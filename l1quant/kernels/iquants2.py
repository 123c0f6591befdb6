"""IQ2_XXS, IQ2_XS and IQ2_S in numpy: byte-identical to ggml's ``ggml_quantize_chunk`` for these types (the
``quantize_row_iq2_xxs_impl`` / ``_iq2_xs_impl`` / ``_iq2_s_impl`` grid searches of ggml-quants.c).

=========  ===========  ==============================  ====================================================
type       group        value weight                    search
=========  ===========  ==============================  ====================================================
IQ2_XXS    32 (4 x 8)   ``qw * sqrt(s2 + x^2)``         signs with even parity; a weighted 4-level fit
                                                        (``make_qp_quants``) sets the range, then 13 trial
                                                        scales, every 8-value part snapped to the 256-point
                                                        grid; the best one is refitted and snapped again
IQ2_XS     16 (2 x 8)   ``qw * sqrt(s2 + x^2)``         signs with even parity; 19 trial scales from the group
                                                        maximum, 512-point grid; off-grid parts re-snapped
IQ2_S      16 (2 x 8)   ``qw * sqrt(2 s2 + x^2)``, or   all 8 signs stored; as IQ2_XS on the 1024-point grid
                        ``s2/2 + x^2`` without weights
=========  ===========  ==============================  ====================================================

``s2`` is the mean of x² over the 256-value super-block. A part whose levels are not a grid point takes the
neighbour (kernels/iq_grids.py) nearest by ``sum sqrt(w) * (scale*q - x)^2``, the first of equals. IQ2_XXS and
IQ2_XS need importance weights (ggml asserts them); IQ2_S runs without.

Bit-exactness: each group is a lane (the values of all groups form an ``(n, groups)`` array), products are formed
in ggml's association, sums run value by value in order, the trial scales one after another with strict
comparisons, and ``nearest_int`` is ggml's bit trick.

Non-finite policy (l1quant's): a super-block holding NaN/Inf is written as zeros with its f16 scale 0x7E00.

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(512, dtype=np.float32)).reshape(1, 512)
    >>> quantize_iq2("IQ2_S", x, None).shape
    (1, 164)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._common import KernelArgumentError
from ._kcommon import f16_bits, nearest_int
from .floats import first_nonfinite_flat, to_f32
from .iq_grids import KMAP_SIZE, iq_grid

__all__ = ["IQ2_TYPES", "quantize_iq2", "sequential_sum"]

F32 = np.float32
QK = 256
IQ2_TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S")
#: type -> (group size, super-block bytes, group threshold, needs weights)
_SPEC = {"IQ2_XXS": (32, 66, F32(1e-15), True), "IQ2_XS": (16, 74, F32(1e-15), True),
         "IQ2_S": (16, 82, F32(1e-8), False)}
_BLOCKS_PER_CHUNK = 512
_SEARCH_CHUNK = 4096


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """Sum (n, lanes) float32 over axis 0 in order from +0.0 (``float s = 0; for (...) s += t;``)."""
    acc = np.zeros(terms.shape[1:], F32)
    for i in range(terms.shape[0]):
        acc += terms[i]
    return acc


def nint(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int of float32 values, as int32."""
    result: np.ndarray = nearest_int(np.ascontiguousarray(v, dtype=F32)).copy()
    return result


@functools.lru_cache(maxsize=None)
def padded_neighbours(type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(row of each code (KMAP_SIZE,) int32, -1 on the grid; neighbour lists (rows, longest) int32 padded with -1)."""
    g = iq_grid(type_name)
    u = np.arange(KMAP_SIZE)
    reachable = np.all(((u[:, None] >> (2 * np.arange(8))) & 3) <= 2, axis=1)
    off = np.flatnonzero((g.kmap < 0) & reachable)
    starts = -g.kmap[off] - 1
    lens = g.neighbours[starts].astype(np.int64)
    width = int(lens.max())
    table = np.full((off.size, width), -1, np.int32)
    for r in range(off.size):  # a few thousand rows, once per process
        table[r, : lens[r]] = g.neighbours[starts[r] + 1: starts[r] + 1 + lens[r]]
    rows = np.full(KMAP_SIZE, -1, np.int32)
    rows[off] = np.arange(off.size, dtype=np.int32)
    return rows, table


def codes_of(L: np.ndarray) -> np.ndarray:
    """(8, lanes) levels -> (lanes,) int32 grid codes."""
    u = np.zeros(L.shape[1], np.int32)
    for i in range(8):
        u |= L[i].astype(np.int32) << (2 * i)
    return u


def nearest_neighbour(type_name: str, codes: np.ndarray, xval: np.ndarray, w: np.ndarray, scale: np.ndarray,
                      tables: list[np.ndarray], select: np.ndarray | None = None) -> np.ndarray:
    """For off-grid ``codes`` (m,), the grid index among the code's neighbours minimizing
    ``sum_i w_i * (scale*q_i - x_i)^2`` (8 terms in order), the first of equals (iq2_find_best_neighbour,
    iq1_find_best_neighbour2). ``xval``, ``w``: (8, m) float32; ``scale``: (m,); ``tables``: the value q of every
    grid point's coordinates, float32 (8, n_grid) each; ``select`` (m,) picks each lane's table (default the first)."""
    rows, table = padded_neighbours(type_name)
    out = np.empty(codes.size, np.int32)
    for s in range(0, codes.size, _SEARCH_CHUNK):
        e = min(codes.size, s + _SEARCH_CHUNK)
        cand = table[rows[codes[s:e]]]  # (m, width)
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        if select is None or len(tables) == 1:
            Q = tables[0][:, safe]  # (8, m, width)
        else:
            pick = select[s:e]
            Q = np.where(pick[None, :, None] == 0, tables[0][:, safe], tables[1][:, safe])
        d2 = np.zeros(cand.shape, F32)
        sc = scale[s:e, None]
        for i in range(8):
            diff = sc * Q[i] - xval[i, s:e, None]
            d2 += (w[i, s:e, None] * diff) * diff
        d2[~valid | np.isnan(d2)] = np.inf
        out[s:e] = cand[np.arange(e - s), np.argmin(d2, axis=1)]
    return out


@functools.lru_cache(maxsize=None)
def q_table(type_name: str, values: tuple[float, float, float]) -> np.ndarray:
    """(8, n_grid) float32: the value of each level of every grid point, ``values[level]``."""
    lev = iq_grid(type_name).levels
    return np.ascontiguousarray(np.asarray(values, F32)[lev].T)


def _levels(xval: np.ndarray, iscale: np.ndarray) -> np.ndarray:
    """MAX(0, MIN(2, nearest_int(0.5f*(id*x - 1)))) per value: (n, lanes) int8."""
    result: np.ndarray = np.clip(nint(F32(0.5) * (iscale * xval - F32(1))), 0, 2).astype(np.int8)
    return result


def _snap(type_name: str, L: np.ndarray, xval: np.ndarray, waux: np.ndarray, scale: np.ndarray,
          todo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Snap every 8-value part of (n, lanes) levels L to the grid in place (iq2_find_best_neighbour for off-grid
    ones; ``todo`` (lanes,) restricts it). Returns (grid index (parts, lanes), on-grid (parts, lanes))."""
    g = iq_grid(type_name)
    parts = L.shape[0] // 8
    lanes = L.shape[1]
    index = np.zeros((parts, lanes), np.int32)
    on = np.ones((parts, lanes), bool)
    tables = [q_table(type_name, (1.0, 3.0, 5.0))]
    for k in range(parts):
        sl = slice(8 * k, 8 * k + 8)
        u = codes_of(L[sl])
        gi = g.kmap[u]
        off = gi < 0
        if todo is not None:
            off &= todo
        on[k] = gi >= 0
        if off.any():
            j = np.flatnonzero(off)
            found = nearest_neighbour(type_name, u[j], xval[sl][:, j], waux[sl][:, j], scale[j], tables)
            gi = gi.copy()
            gi[j] = found
            L[sl, j] = g.levels[found].T.astype(np.int8)
        index[k] = gi
    return index, on


def _sums(w: np.ndarray, xval: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sqx = np.zeros(L.shape[1], F32)
    sq2 = np.zeros(L.shape[1], F32)
    for i in range(L.shape[0]):
        q = (2 * L[i].astype(np.int32) + 1).astype(F32)
        sqx += w[i] * xval[i] * q
        sq2 += w[i] * q * q
    return sqx, sq2


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        result: np.ndarray = (a / b).astype(F32)
        return result


def qp_fit(x: np.ndarray, w: np.ndarray, nmax: int) -> np.ndarray:
    """ggml's ``make_qp_quants(n, nmax, x, L, w)`` per lane of (n, lanes) x, w: the scale (lanes,) (levels kept in
    uint8 as ggml keeps them, so a negative level wraps)."""
    n, lanes = x.shape
    mx = np.zeros(lanes, F32)
    for i in range(n):
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < F32(1e-15)
    mx = np.where(zero, F32(1), mx)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        iscale = (F32(nmax) / mx).astype(F32)
        L = nint(iscale * x).astype(np.uint8)
        scale = (F32(1) / iscale).astype(F32)
        best = sequential_sum(w * (x - scale * L.astype(F32)) * (x - scale * L.astype(F32)))
        for is_ in range(-4, 5):
            if is_ == 0:
                continue
            isc = ((F32(0.1) * F32(is_) + F32(nmax)) / mx).astype(F32)
            sc = (F32(1) / isc).astype(F32)
            lv = np.minimum(nmax, nint(isc * x)).astype(F32)
            diff = x - sc * lv
            mse = sequential_sum(w * diff * diff)
            take = mse < best
            best = np.where(take, mse, best)
            iscale = np.where(take, isc, iscale)
        lv = np.minimum(nmax, nint(iscale * x))
        L = lv.astype(np.uint8)
        lf = lv.astype(F32)
        sumlx = sequential_sum(w * x * lf)
        suml2 = sequential_sum(w * lf * lf)
        active = np.ones(lanes, bool)
        for _ in range(5):
            changed = np.zeros(lanes, bool)
            for i in range(n):
                wi, xi = w[i], x[i]
                Li = L[i].astype(F32)
                slx = sumlx - wi * xi * Li
                sl2 = suml2 - wi * Li * Li
                ok = active & (slx > 0) & (sl2 > 0)
                nl = np.minimum(nmax, nint(xi * sl2 / np.where(ok, slx, F32(1))))
                ok &= nl != L[i].astype(np.int32)
                nlf = nl.astype(F32)
                slx2 = slx + wi * xi * nlf
                sl22 = sl2 + wi * nlf * nlf
                ok &= slx2 * slx2 * suml2 > sumlx * sumlx * sl22
                L[i] = np.where(ok, nl.astype(np.uint8), L[i])
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
                changed |= ok
            active &= changed
            if not active.any():
                break
    scale = np.where(suml2 > F32(0), _div(sumlx, np.where(suml2 > 0, suml2, F32(1))), F32(0))
    return np.where(zero, F32(0), scale).astype(F32)


def _even_signs(xb: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(8, lanes) values -> (magnitudes with the least-weighted one negated when the negatives are odd, 7 sign bits)."""
    neg = xb < 0
    xval = np.where(neg, -xb, xb)
    bits = (neg.astype(np.int32) << np.arange(8, dtype=np.int32)[:, None]).sum(axis=0)
    odd = neg.sum(axis=0) % 2 == 1
    ax = w * xb * xb
    im = np.argmin(ax, axis=0)  # first of equal minima, as the strict comparison
    lanes = np.arange(xb.shape[1])
    xval[im[odd], lanes[odd]] = -xval[im[odd], lanes[odd]]
    bits = np.where(odd, bits ^ (1 << im), bits)
    return xval, (bits & 127).astype(np.int32)


def _quantize_blocks(type_name: str, xbl: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(B, 256) finite float32 super-blocks (qw: (B, 256) weights or None) -> (B, bytes) uint8."""
    gs, nbytes, eps, _ = _SPEC[type_name]
    B = xbl.shape[0]
    ng = QK // gs
    parts = gs // 8
    G = B * ng
    sumx2 = sequential_sum(np.ascontiguousarray((xbl * xbl).T))
    sigma2 = (sumx2 / F32(QK)) if type_name != "IQ2_S" else (F32(2) * sumx2 / F32(QK))
    sig = np.repeat(sigma2.astype(F32), QK).reshape(B, QK)
    if qw is not None:
        wt = qw * np.sqrt(sig + xbl * xbl)
    else:
        wt = F32(0.25) * sig + xbl * xbl
    # lanes: (gs, G), group g = block*ng + ib
    X = np.ascontiguousarray(xbl.reshape(G, gs).T)
    W = np.ascontiguousarray(wt.reshape(G, gs).T).astype(F32)
    Waux = np.sqrt(W)
    xval = np.empty_like(X)
    signs = np.empty((parts, G), np.int32)
    for k in range(parts):
        sl = slice(8 * k, 8 * k + 8)
        if type_name == "IQ2_S":
            neg = X[sl] < 0
            xval[sl] = np.where(neg, -X[sl], X[sl])
            signs[k] = (neg.astype(np.int32) << np.arange(8, dtype=np.int32)[:, None]).sum(axis=0)
        else:
            xval[sl], signs[k] = _even_signs(X[sl], W[sl])
    mx = xval[0].copy()
    for i in range(1, gs):
        mx = np.where(mx > xval[i], mx, xval[i])
    live = ~(mx < eps)
    scale = np.zeros(G, F32)
    L = np.zeros((gs, G), np.int8)
    on_grid = np.ones((parts, G), bool)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if type_name == "IQ2_XXS":
            qsc = qp_fit(xval, W, 4)
            scale = np.where(live, qsc, F32(0))
            eff = (scale * F32(3)).astype(F32)
            live &= eff > 0
            steps = range(-6, 7)
            base = np.where(live, eff, F32(1))
        else:
            scale = (mx / F32(5)).astype(F32)
            steps = range(-9, 10)
            base = np.where(live, mx, F32(1))
        best = np.zeros(G, F32)
        idx = np.flatnonzero(live)
        xv, Wl, Wa = xval[:, idx], W[:, idx], Waux[:, idx]
        sc_l, best_l, L_l, on_l = scale[idx], best[idx], L[:, idx], on_grid[:, idx]
        for is_ in steps:
            iscale = ((F32(5) + F32(is_) * F32(0.1)) / base[idx]).astype(F32)
            this_scale = (F32(1) / iscale).astype(F32)
            La = _levels(xv, iscale)
            _, on = _snap(type_name, La, xv, Wa, this_scale)
            sqx, sq2 = _sums(Wl, xv, La)
            take = (sq2 > 0) & (sqx * sqx > best_l * sq2)
            sc_l = np.where(take, _div(sqx, sq2), sc_l)
            best_l = np.where(take, sc_l * sqx, best_l)
            L_l = np.where(take, La, L_l)
            on_l = np.where(take, on, on_l)
        if type_name == "IQ2_XXS":
            redo = sc_l > 0
            idn = (F32(1) / np.where(redo, sc_l, F32(1))).astype(F32)
            Ln = _levels(xv, idn)
            _snap(type_name, Ln, xv, Wa, sc_l)
            L_l = np.where(redo, Ln, L_l)
        else:
            redo = (~on_l).any(axis=0) & (sc_l > 0)
            idn = (F32(1) / np.where(redo, sc_l, F32(1))).astype(F32)
            Ln = _levels(xv, idn)
            for k in range(parts):
                sl = slice(8 * k, 8 * k + 8)
                keep = ~redo | on_l[k]
                Ln[sl] = np.where(keep, L_l[sl], Ln[sl])
            _snap(type_name, Ln, xv, Wa, sc_l, todo=redo)
            L_l = Ln
        sqx, sq2 = _sums(Wl, xv, L_l)
        sc_l = np.where(redo & (sq2 > 0), _div(sqx, sq2), sc_l)
        scale[idx] = sc_l
        L[:, idx] = L_l
    g = iq_grid(type_name)
    neg_scale = scale < 0
    scale = np.where(neg_scale, -scale, scale).astype(F32)
    signs = np.where(neg_scale, ~signs & (255 if type_name == "IQ2_S" else 127), signs)
    gidx = np.stack([g.kmap[codes_of(L[8 * k: 8 * k + 8])] for k in range(parts)])  # (parts, G)
    live_all = live.copy()
    scale = np.where(live_all, scale, F32(0))
    gidx = np.where(live_all, gidx, 0)
    signs = np.where(live_all, signs, 0)
    S = scale.reshape(B, ng)
    max_scale = np.zeros(B, F32)
    for ib in range(ng):
        max_scale = np.where(max_scale > S[:, ib], max_scale, S[:, ib])
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        d = (max_scale / F32(31)).astype(F32)
        idd = (F32(1) / d).astype(F32)
        ls = np.clip(nint(F32(0.5) * (idd[:, None] * S - F32(1))), 0, 15).astype(np.uint32)
        dstore = (d * F32(0.9875)).astype(F32) if type_name == "IQ2_S" else d
    out = np.zeros((B, nbytes), np.uint8)
    zero_blk = max_scale == 0
    out[:, 0:2] = f16_bits(dstore).reshape(B, 1).view(np.uint8).reshape(B, 2)
    gi = gidx.T.reshape(B, ng, parts).astype(np.uint32)
    sg = signs.T.reshape(B, ng, parts).astype(np.uint32)
    if type_name == "IQ2_XXS":
        w0 = gi[:, :, 0] | (gi[:, :, 1] << 8) | (gi[:, :, 2] << 16) | (gi[:, :, 3] << 24)
        w1 = sg[:, :, 0] | (sg[:, :, 1] << 7) | (sg[:, :, 2] << 14) | (sg[:, :, 3] << 21) | (ls << 28)
        q2 = np.stack([w0, w1], axis=2).reshape(B, 16).astype("<u4")
        out[:, 2:66] = q2.view(np.uint8).reshape(B, 64)
    elif type_name == "IQ2_XS":
        q2 = (gi | (sg << 9)).reshape(B, 32).astype("<u2")
        out[:, 2:66] = q2.view(np.uint8).reshape(B, 64)
        out[:, 66:74] = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    else:
        flat = gi.reshape(B, 32)
        out[:, 2:34] = (flat & 255).astype(np.uint8)
        out[:, 34:66] = (sg.reshape(B, 32) & 255).astype(np.uint8)
        hi = (flat >> 8).reshape(B, 8, 4) << (2 * np.arange(4, dtype=np.uint32))
        out[:, 66:74] = hi.sum(axis=2).astype(np.uint8)
        out[:, 74:82] = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    if type_name == "IQ2_S":  # ggml leaves the groups' codes in place, with a zero scale
        out[zero_blk, 0:2] = 0
        out[zero_blk, 74:82] = 0
    else:
        out[zero_blk] = 0
    return out


def quantize_iq2(type_name: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """(rows, ncols) float32 / float16 / uint16 (bf16 bits) -> uint8 (rows, ncols / 256 * bytes) of ``type_name``.

    ``imatrix``: float32 (ncols,) importance weights, or None (IQ2_S only; KernelArgumentError for the others, as
    ggml asserts). Rule: ggml-quants.c ``quantize_row_<type>_impl``; the non-finite policy of the module docstring.
    """
    gs, nbytes, _, needs = _SPEC[type_name]
    if needs and imatrix is None:
        raise KernelArgumentError(f"{type_name} needs an importance matrix (ggml refuses to quantize it without one)")
    x = to_f32(x) if x.dtype != np.float32 else x
    rows, ncols = x.shape
    if ncols % QK:
        raise KernelArgumentError(f"{type_name}: row length {ncols} is not a multiple of 256")
    nb = ncols // QK
    blocks = x.reshape(rows * nb, QK)
    out = np.zeros((rows * nb, nbytes), np.uint8)
    qwb = None if imatrix is None else np.ascontiguousarray(imatrix, F32).reshape(nb, QK)
    for s in range(0, rows * nb, _BLOCKS_PER_CHUNK):
        e = min(rows * nb, s + _BLOCKS_PER_CHUNK)
        xb = blocks[s:e]
        bad = ~np.isfinite(xb).all(axis=1)
        safe = np.where(bad[:, None], F32(0), xb)
        w = None if qwb is None else qwb[np.arange(s, e) % nb]
        with np.errstate(over="ignore", invalid="ignore"):
            o = _quantize_blocks(type_name, safe, w)
        o[bad] = 0
        o[bad, 0:2] = (0x00, 0x7E)
        out[s:e] = o
    return out.reshape(rows, nb * nbytes)


def numpy_kernel(type_name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], int]:
    """(x, out, imatrix or None) -> first non-finite flat index or -1: the numpy kernel of one type."""

    def kernel(x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None) -> int:
        out[...] = quantize_iq2(type_name, x, imatrix)
        return first_nonfinite_flat(x.reshape(-1))

    return kernel

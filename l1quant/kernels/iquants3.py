"""IQ3_XXS and IQ3_S in numpy: byte-identical to ggml's ``quantize_iq3_xxs`` / ``quantize_iq3_s`` (what
``ggml_quantize_chunk`` runs, with or without importance weights).

Per 256-value super-block: sigma2 = 2 * sum(x^2) / 256; per 32-value group: weights ``qw * sqrt(sigma2 + x^2)``
(importance matrix) or ``x^2``; the magnitudes are quantized, the signs stored apart (8 bits per 8 values; IQ3_XXS
keeps 7 and makes the count of negatives even by flipping the value of least ``w*x*x``, first wins). The search
(``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``) tries inverse scales ``(15 + 0.2*is)/max`` for
is = -15..15 (IQ3_XXS) or -9..9 (IQ3_S): each 4 magnitudes round to levels 0..7 of ``2l+1``; a 4-tuple that is
not a grid point is replaced by its best listed neighbour (least ``sum sqrt(w)*(scale*q - x)^2``, first wins;
see iq3_grids.py); the weighted least-squares scale of the trial replaces the best one when sumqx^2 > best*sumq2.
When the winner had off-grid tuples, they (IQ3_XXS) or all tuples (IQ3_S) are re-rounded with the winning scale
and the scale refitted. Group scales become 4-bit ``nearest_int((scale/d - 1)/2)`` with d = max_scale/31 stored as
f16 of ``d * 1.0125`` (IQ3_XXS) or ``d * 1.033`` (IQ3_S).

Two ggml quirks are reproduced: a group with max < 1e-8 (IQ3_XXS) or max == 0 (IQ3_S) is skipped, and in IQ3_S a
skipped group does not advance the grid-index and sign pointers, so later groups of the super-block are written
one slot earlier (their high index bits still go to their own ``qh`` byte); an IQ3_S super-block whose scales are
all 0 keeps the grid indices and signs it wrote, with d = 0.

Bit-exactness follows kquants_imatrix.py's rules (float32 ops in ggml's association, sequential sums, ggml's
``nearest_int`` bit trick). Non-finite policy: a super-block holding NaN/Inf becomes zeros with d = 0x7E00.

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(512, dtype=np.float32)).reshape(2, 256)
    >>> quantize_iq3("IQ3_XXS", x).shape, quantize_iq3("IQ3_S", x, np.ones(256, np.float32)).shape
    ((2, 98), (2, 110))
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._kcommon import apply_nonfinite_policy, f16_bits, nearest_int, split_nonfinite
from .blockwise import quantize_row_chunks
from .iq3_grids import IQ3Tables, iq3_tables

__all__ = ["IQ3_TYPES", "iq3_kernel", "quantize_iq3"]

F32 = np.float32
IQ3_TYPES = ("IQ3_XXS", "IQ3_S")
_FLT_MAX = F32(np.finfo(np.float32).max)
_SHIFTS = np.array([0, 3, 6, 9], np.int32)
_CHUNK_GROUPS = 1 << 12  # 32-value groups per internal pass (128k values)
#: per type: grid size, trial range, group-skip rule, f16 fudge factor, type size
_SPEC = {
    "IQ3_XXS": (256, 15, F32(1e-8), F32(1.0125), 98),
    "IQ3_S": (512, 9, None, F32(1.033), 110),
}


def _seq_sum(t: np.ndarray) -> np.ndarray:
    """Sum (G, n) over axis 1 strictly in order from +0.0, float32 (C's ``float s = 0; s += t[i]``)."""
    acc = np.zeros(t.shape[0], F32)
    for i in range(t.shape[1]):
        acc += t[:, i]
    return acc


@functools.lru_cache(maxsize=None)
def _grid_f32(size: int) -> np.ndarray:
    """(4, size) float32: component i of every grid point's 2l+1 values (the search's q)."""
    return np.ascontiguousarray(iq3_tables(size).grid.astype(F32).T)


@functools.lru_cache(maxsize=None)
def _lists(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 (4096,) where each off-grid key's candidates start in the flat lists, their count; 0 for grid keys)."""
    t = iq3_tables(size)
    off = t.kmap < 0
    head = np.where(off, -t.kmap - 1, 0).astype(np.int64)
    count = np.where(off, t.neighbours[head], 0).astype(np.int64)
    return head + 1, count


def _to_grid(T: IQ3Tables, xval: np.ndarray, waux: np.ndarray, iscale: np.ndarray, scale: np.ndarray,
             quads: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Round each 4-tuple of ``xval`` (G, 32) with ``iscale`` (G,) to levels, replacing off-grid tuples by their
    best neighbour at ``scale`` (G,) (``iq3_find_best_neighbour``). Only the tuples flagged in ``quads`` (G, 8)
    when given. Returns (levels int (G, 8, 4), on-grid bool (G, 8)); unflagged tuples get levels -1."""
    G = xval.shape[0]
    lv = nearest_int(np.ascontiguousarray(F32(0.5) * (iscale[:, None] * xval - F32(1.0))))
    lv = np.clip(lv, 0, 7).reshape(G, 8, 4)
    key = (lv << _SHIFTS).sum(axis=2)
    gi = T.kmap[key]
    off = gi < 0
    if quads is not None:
        off &= quads
    if off.any():
        g, k = np.nonzero(off)
        start, count = _lists(T.size)
        first_at, cnt = start[key[g, k]], count[key[g, k]]
        # one entry per (tuple, candidate), the candidates of a tuple consecutive in list order
        seg = np.cumsum(cnt) - cnt
        owner = np.repeat(np.arange(len(g)), cnt)
        rank = np.arange(int(cnt.sum())) - seg[owner]
        cand = T.neighbours[first_at[owner] + rank].astype(np.int64)
        gridf = _grid_f32(T.size)
        xv = xval.reshape(G, 8, 4)[g, k][owner]  # (E, 4)
        wa = waux.reshape(G, 8, 4)[g, k][owner]
        sc = scale[g][owner]
        d2 = np.zeros(len(cand), F32)
        for i in range(4):
            diff = sc * gridf[i][cand]
            diff -= xv[:, i]
            d2 += (wa[:, i] * diff) * diff
        # a candidate counts when d2 < FLT_MAX (ggml's starting best); NaN never does; first least wins;
        # ggml aborts when no candidate counts (overflowing weights): then the first is kept
        d2[~(d2 < _FLT_MAX)] = np.inf
        least = np.minimum.reduceat(d2, seg)
        pick = np.minimum.reduceat(np.where(d2 == least[owner], rank, np.iinfo(np.int64).max), seg)
        gi[g, k] = T.neighbours[first_at + pick]
    levels = T.levels[np.maximum(gi, 0)].astype(np.int32)
    if quads is not None:
        levels[~quads] = -1
    return levels, ~off if quads is None else ~(T.kmap[key] < 0)


def _quantize_finite(type_name: str, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Finite float32 (m, ncols) -> bytes (m * ncols / 256, type_size)."""
    size, ntry, eps, fudge, tsize = _SPEC[type_name]
    T = iq3_tables(size)
    m, ncols = x.shape
    xg = x.reshape(-1, 32)
    G = xg.shape[0]
    nb = G // 8
    sumx2 = _seq_sum(x.reshape(nb, 256) * x.reshape(nb, 256))
    sigma2 = np.repeat((F32(2) * sumx2) / F32(256), 8)
    sq = xg * xg
    if qw is None:
        w = sq
    else:
        w = np.tile(qw.reshape(-1, 32), (m, 1)) * np.sqrt(sigma2[:, None] + sq)
    waux = np.sqrt(w)
    pos = xg >= 0
    xval = np.where(pos, xg, -xg)
    bits = (~pos).reshape(G, 4, 8).astype(np.int32) << np.arange(8, dtype=np.int32)
    signs = bits.sum(axis=2)  # (G, 4)
    if type_name == "IQ3_XXS":
        odd = (np.count_nonzero(~pos.reshape(G, 4, 8), axis=2) % 2) == 1
        imin = np.argmin(((w * xg) * xg).reshape(G, 4, 8), axis=2)  # first least
        g, k = np.nonzero(odd)
        flat = g * 32 + k * 8 + imin[g, k]
        xval.reshape(-1)[flat] = -xval.reshape(-1)[flat]
        signs[g, k] ^= 1 << imin[g, k]
        signs &= 127
    vmax = xval.max(axis=1)
    skip = (vmax < eps) if eps is not None else (vmax == 0)
    vmax = np.where(skip, F32(1.0), vmax)
    scale = vmax / F32(15)
    best = np.zeros(G, F32)
    L = np.zeros((G, 8, 4), np.int32)
    on = np.full((G, 8), type_name == "IQ3_XXS")
    wx = w * xval
    for step in range(-ntry, ntry + 1):
        iscale = (F32(15) + F32(step) * F32(0.2)) / vmax
        La, ona = _to_grid(T, xval, waux, iscale, F32(1.0) / iscale)
        q = (2 * La + 1).reshape(G, 32).astype(F32)
        sumqx = _seq_sum(wx * q)
        sumq2 = _seq_sum((w * q) * q)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2) & ~skip
        if better.any():
            np.copyto(scale, sumqx / np.where(better, sumq2, F32(1.0)), where=better)
            np.copyto(best, scale * sumqx, where=better)
            L[better] = La[better]
            on[better] = ona[better]
    redo = (~on).any(axis=1) & (scale > 0) & ~skip
    if redo.any():
        quads = (~on if type_name == "IQ3_XXS" else np.ones_like(on)) & redo[:, None]
        safe_scale = np.where(redo, scale, F32(1.0))
        Ln, _ = _to_grid(T, xval, waux, F32(1.0) / safe_scale, safe_scale, quads)
        L[quads] = Ln[quads]
        q = (2 * L + 1).reshape(G, 32).astype(F32)
        sumqx = _seq_sum(wx * q)
        sumq2 = _seq_sum((w * q) * q)
        refit = redo & (sumq2 > 0)
        np.copyto(scale, sumqx / np.where(refit, sumq2, F32(1.0)), where=refit)
    neg = scale < 0
    scale = np.where(neg, -scale, scale)
    signs[neg] = ~signs[neg] & (127 if type_name == "IQ3_XXS" else 255)
    gidx = T.kmap[(L << _SHIFTS).sum(axis=2)]  # (G, 8), on the grid by construction
    assert (gidx[~skip] >= 0).all()
    scale[skip] = F32(0.0)
    gidx[skip] = 0
    signs[skip] = 0

    sb = scale.reshape(nb, 8)
    max_scale = sb.max(axis=1)
    live = max_scale > 0
    d = max_scale / F32(31)
    with np.errstate(all="ignore"):
        iscale = F32(1.0) / np.where(live, d, F32(1.0))
    ls = np.clip(nearest_int(np.ascontiguousarray(F32(0.5) * (iscale[:, None] * sb - F32(1.0)))), 0, 15)
    out = np.zeros((nb, tsize), np.uint8)
    dbits = f16_bits(np.where(live, d * fudge, F32(0.0)))
    out[:, 0:2] = dbits.view(np.uint8).reshape(nb, 2)
    gb = gidx.reshape(nb, 8, 8)
    sg = signs.reshape(nb, 8, 4)
    if type_name == "IQ3_XXS":
        out[:, 2:66] = gb.reshape(nb, 64).astype(np.uint8)
        words = (sg[:, :, 0] | (sg[:, :, 1] << 7) | (sg[:, :, 2] << 14) | (sg[:, :, 3] << 21)).astype(np.uint32)
        words |= ls.astype(np.uint32) << 28
        out[:, 66:98] = words.astype("<u4").view(np.uint8).reshape(nb, 32)
        out[~live] = 0
        return out
    # IQ3_S: qs (64) | qh (8) | signs (32) | scales (4); skipped groups do not advance the qs/sign slots
    live_g = ~skip.reshape(nb, 8)
    slot = np.cumsum(live_g, axis=1) - 1
    b, ib = np.nonzero(live_g)
    s = slot[b, ib]
    qs = out[:, 2:66].reshape(nb, 8, 8)
    qs[b, s] = (gb[b, ib] & 255).astype(np.uint8)
    sgn = out[:, 74:106].reshape(nb, 8, 4)
    sgn[b, s] = sg[b, ib].astype(np.uint8)
    out[:, 66:74] = ((gb >> 8) << np.arange(8)).sum(axis=2).astype(np.uint8)
    out[:, 66:74][~live_g] = 0
    packed = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    out[:, 106:110] = np.where(live[:, None], packed, 0)
    out[:, 2:66].reshape(nb, 8, 8)[...] = qs
    out[:, 74:106].reshape(nb, 8, 4)[...] = sgn
    return out


def quantize_iq3(type_name: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """float32 (m, ncols), ncols % 256 == 0 -> uint8 (m, ncols / 256 * type_size) of IQ3_XXS (98) or IQ3_S (110).

    ``qw``: importance weights float32 (ncols,) or None. NaN/Inf super-blocks follow the non-finite policy.

    Example:
        >>> quantize_iq3("IQ3_S", np.zeros((1, 256), np.float32)).any()
        np.False_
    """
    tsize = _SPEC[type_name][4]
    m, ncols = x.shape
    safe, bad = split_nonfinite(np.ascontiguousarray(x, dtype=F32).reshape(-1, 256))
    with np.errstate(all="ignore"):
        out = _quantize_finite(type_name, safe.reshape(m, ncols), qw)
    apply_nonfinite_policy(out, bad, [0])
    return out.reshape(m, ncols // 256 * tsize)


def iq3_kernel(type_name: str, weighted: bool) -> Callable[..., int]:
    """The numpy kernel ``kernel(x, out[, imatrix]) -> first non-finite flat index or -1`` of IQ3_XXS / IQ3_S.

    Example:
        >>> k = iq3_kernel("IQ3_XXS", True)
        >>> k(np.ones((1, 256), np.float32), np.empty((1, 98), np.uint8), np.ones(256, np.float32))
        -1
    """
    if type_name not in IQ3_TYPES:
        raise ValueError(f"not an IQ3 type: {type_name!r}")

    def run(x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None) -> int:
        return quantize_row_chunks(x, out, _CHUNK_GROUPS * 32, lambda xs: quantize_iq3(type_name, xs, imatrix))

    if weighted:
        return run
    return lambda x, out: run(x, out, None)

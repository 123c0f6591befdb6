"""IQ4_NL and IQ4_XS in numpy: byte-identical to ggml's ``quantize_iq4_nl`` / ``quantize_iq4_xs`` (what
``ggml_quantize_chunk`` runs, with or without importance weights; both run ``quantize_row_iq4_nl_impl``).

Both map each value to one of 16 fixed non-linear levels (``kvalues_iq4nl`` = gguf's ``IQ4_NL.kvalues``,
-127..113) times a scale per 32 values:

* per 32-value group: weights ``qw * sqrt(sigma2 + x^2)`` with an importance matrix (sigma2 = 2/N * sum x^2 over
  the block: 32 values for IQ4_NL, the 256-value super-block for IQ4_XS), else ``x^2``; a first scale ``max/127``
  (max: the signed value of largest magnitude), each value to its nearest level (``best_index_int8``: the
  lower level wins only when strictly nearer), a weighted least-squares scale, then 15 trial inverse scales
  ``(itry - 127)/max``, itry = -7..7, each replacing the scale when sumqx^2 > best*sumq2 (strict, in order);
  a group with max |x| < 1e-15 gets scale 0.
* IQ4_NL stores the scale as f16 and re-picks the levels with the float (not the f16) inverse scale.
* IQ4_XS stores d = -max_scale/32 as f16 (max_scale: the group scale of largest magnitude, first wins), each group
  scale as a 6-bit ``nearest_int(scale/d)`` clamped to -32..31 (stored +32: low nibbles in ``scales_l``, high 2
  bits in ``scales_h``), and re-picks the levels with 1/(d*l).

Every group is a lane of an (32, groups) array, every sum runs row by row in order in float32 (see
kquants_imatrix.py for the rules). Non-finite policy: a block holding NaN/Inf becomes zeros with d = 0x7E00.

Example:
    >>> import numpy as np
    >>> x = np.sin(np.arange(512, dtype=np.float32)).reshape(2, 256)
    >>> quantize_iq4("IQ4_XS", x).shape, quantize_iq4("IQ4_NL", x, np.ones(256, np.float32)).shape
    ((2, 136), (2, 144))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import quants as gguf_quants

from ._kcommon import apply_nonfinite_policy, f16_bits, nearest_int, seq_sum_rows, split_nonfinite
from .blockwise import quantize_row_chunks

__all__ = ["IQ4_TYPES", "KVALUES", "best_index", "iq4_kernel", "quantize_iq4"]

F32 = np.float32
IQ4_TYPES = ("IQ4_NL", "IQ4_XS")
#: the 16 levels (ggml's kvalues_iq4nl), from gguf-py
KVALUES = np.asarray(gguf_quants.IQ4_NL.kvalues, dtype=np.int8)
_KV = KVALUES.astype(np.float32)
_NTRY = 7  # ggml_quantize_chunk passes ntry = 7 with and without weights
_TINY = F32(1e-15)  # GROUP_MAX_EPS
_CHUNK_GROUPS = 1 << 13  # 32-value groups per internal pass (256k values)


def best_index(al: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, al)`` on a float32 array: int64 level indices 0..15.

    The bisection ends with v[mu-1] <= al < v[mu]; the lower one wins when strictly nearer (a tie goes up).
    NaN gives 15, as the C comparisons do.

    Example:
        >>> best_index(np.array([-200, -115.5, 0.0, 7.0, 1e9, np.nan], np.float32)).tolist()
        [0, 1, 8, 9, 15, 15]
    """
    mu = np.clip(np.searchsorted(_KV, al, side="right"), 1, 15)
    lo = _KV[mu - 1]
    hi = _KV[mu]
    with np.errstate(invalid="ignore"):
        idx = np.where(al - lo < hi - al, mu - 1, mu)
        idx[al <= _KV[0]] = 0
        idx[al >= _KV[15]] = 15
    return idx


def _sums(x: np.ndarray, w: np.ndarray, iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum (w*q)*x and sum (w*q)*q over the 32 rows of lanes, q = kvalues[best_index(iscale * x)]."""
    q = _KV[best_index(iscale * x)]
    wq = w * q
    return seq_sum_rows(wq * x), seq_sum_rows(wq * q)


def _group_scales(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The fitted scale of every lane of ``x``, ``w`` (32, G) float32 (0 for a near-zero group)."""
    amax = np.zeros(x.shape[1], F32)
    peak = np.zeros(x.shape[1], F32)
    for i in range(x.shape[0]):
        a = np.abs(x[i])
        take = a > amax
        np.copyto(amax, a, where=take)
        np.copyto(peak, x[i], where=take)
    zero = amax < _TINY
    peak[zero] = F32(1.0)
    d = (-peak) / _KV[0]
    sumqx, sumq2 = _sums(x, w, F32(1.0) / d)
    d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, F32(1.0)), F32(0.0)).astype(F32)
    best = d * sumqx
    for itry in range(-_NTRY, _NTRY + 1):
        iscale = F32(itry + int(KVALUES[0])) / peak
        sumqx, suml2 = _sums(x, w, iscale)
        better = (suml2 > 0) & (sumqx * sumqx > best * suml2)
        if better.any():
            np.copyto(d, sumqx / np.where(better, suml2, F32(1.0)), where=better)
            np.copyto(best, d * sumqx, where=better)
    d[zero] = F32(0.0)
    return d


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """levels (G, 32) -> (G, 16) bytes: value j in the low nibble, value j+16 in the high one."""
    result: np.ndarray = (L[:, :16] | (L[:, 16:] << 4)).astype(np.uint8)
    return result


def _inv(v: np.ndarray) -> np.ndarray:
    """``v ? 1/v : 0`` in float32."""
    nz = v != 0
    result: np.ndarray = np.where(nz, F32(1.0) / np.where(nz, v, F32(1.0)), F32(0.0)).astype(F32)
    return result


def _quantize_finite(type_name: str, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Finite float32 (m, ncols) -> bytes (m * ncols / block, type_size)."""
    m, ncols = x.shape
    groups = x.reshape(-1, 32)
    G = groups.shape[0]
    lanes = np.ascontiguousarray(groups.T)  # (32, G)
    sq = lanes * lanes
    if type_name == "IQ4_NL":
        sigma2 = seq_sum_rows(sq) * F32(2.0 / 32)
    else:  # over the 256-value super-block: 8 consecutive groups, in order
        blocks = np.ascontiguousarray(x.reshape(-1, 256).T)
        sigma2 = np.repeat(seq_sum_rows(blocks * blocks) * F32(2.0 / 256), 8)
    if qw is None:
        w = sq
    else:
        cw = np.ascontiguousarray(np.tile(qw.reshape(-1, 32), (m, 1)).T)  # the weight of each value's column
        w = cw * np.sqrt(sigma2 + sq)
    scales = _group_scales(lanes, w)
    if type_name == "IQ4_NL":
        L = best_index(_inv(scales) * lanes).T
        out = np.empty((G, 18), np.uint8)
        out[:, 0:2] = f16_bits(scales).view(np.uint8).reshape(G, 2)
        out[:, 2:] = _pack_nibbles(L)
        return out
    nb = G // 8
    sc = scales.reshape(nb, 8)
    asc = np.abs(sc)
    amax = np.zeros(nb, F32)
    max_scale = np.zeros(nb, F32)
    for ib in range(8):
        take = asc[:, ib] > amax
        np.copyto(amax, asc[:, ib], where=take)
        np.copyto(max_scale, sc[:, ib], where=take)
    d = -max_scale / F32(32)
    iscale = _inv(d)
    lv = np.clip(nearest_int(np.ascontiguousarray(iscale[:, None] * sc)), -32, 31)
    dl = d[:, None] * lv.astype(F32)
    idl = _inv(dl).reshape(-1)  # one per group
    L = best_index(idl * lanes).T  # (G, 32)
    u = (lv + 32).astype(np.uint8)
    out = np.empty((nb, 136), np.uint8)
    out[:, 0:2] = f16_bits(d).view(np.uint8).reshape(nb, 2)
    hbits = ((u >> 4).astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1).astype(np.uint16)
    out[:, 2:4] = hbits.astype("<u2").view(np.uint8).reshape(nb, 2)
    out[:, 4:8] = (u[:, 0::2] & 15) | ((u[:, 1::2] & 15) << 4)
    out[:, 8:] = _pack_nibbles(L).reshape(nb, 128)
    return out


def quantize_iq4(type_name: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """float32 (m, ncols) -> uint8 (m, row bytes) of IQ4_NL (ncols % 32 == 0) or IQ4_XS (ncols % 256 == 0).

    ``qw``: importance weights float32 (ncols,) or None. NaN/Inf blocks follow the non-finite policy.

    Example:
        >>> quantize_iq4("IQ4_NL", np.zeros((1, 32), np.float32)).tolist()[0][:4]
        [0, 0, 136, 136]
    """
    block = 32 if type_name == "IQ4_NL" else 256
    size = 18 if type_name == "IQ4_NL" else 136
    m, ncols = x.shape
    safe, bad = split_nonfinite(np.ascontiguousarray(x, dtype=F32).reshape(-1, block))
    with np.errstate(all="ignore"):
        out = _quantize_finite(type_name, safe.reshape(m, ncols), qw)
    apply_nonfinite_policy(out, bad, [0])
    return out.reshape(m, ncols // block * size)


def iq4_kernel(type_name: str, weighted: bool) -> Callable[..., int]:
    """The numpy kernel ``kernel(x, out[, imatrix]) -> first non-finite flat index or -1`` of IQ4_NL / IQ4_XS.

    ``weighted``: the kernel takes the importance weights as a third argument (float32 (ncols,), validated).

    Example:
        >>> k = iq4_kernel("IQ4_NL", False)
        >>> k(np.ones((1, 32), np.float16), np.empty((1, 18), np.uint8))
        -1
    """
    if type_name not in IQ4_TYPES:
        raise ValueError(f"not an IQ4 type: {type_name!r}")

    def run(x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None) -> int:
        return quantize_row_chunks(x, out, _CHUNK_GROUPS * 32, lambda xs: quantize_iq4(type_name, xs, imatrix))

    if weighted:
        return run
    return lambda x, out: run(x, out, None)

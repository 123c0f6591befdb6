"""Q3_K and Q6_K in pure numpy, byte-identical to ggml's ``quantize_row_q3_K_ref`` / ``quantize_row_q6_K_ref``.

Both types cut a 256-value super-block into 16 groups of 16 values, fit one scale per group by a small search,
quantize the 16 group scales against one f16 super-scale ``d``, then re-quantize every value with its group's
*stored* (rounded) scale. Block layouts (little-endian, as in ggml-common.h):

* Q3_K, 110 bytes: ``hmask[32]`` (bit 2 of each 3-bit quant), ``qs[64]`` (bits 0-1), ``scales[12]`` (16 six-bit
  scales, biased by 32), ``d`` (f16). Group scales come from ggml's ``make_q3_quants(16, 4, ..., do_rmse=true)``.
* Q6_K, 210 bytes: ``ql[128]`` (bits 0-3), ``qh[64]`` (bits 4-5), ``scales[16]`` (int8), ``d`` (f16). Group
  scales come from ggml's ``make_qx_quants(16, 32, ..., rmse_type=1, weights=NULL)``.

How bit-exactness is kept (ggml-base is built for baseline x86-64: plain IEEE float32, no FMA, no reassociation):

* Every intermediate is float32 and every constant an ``np.float32``, so no value ever passes through float64.
* ggml accumulates ``s += t_i`` for i = 0..15 in order. Groups are laid out *transposed*, shape (16, n_groups),
  so each element index is one contiguous row; a Python loop over the 16 rows adds lane-wise into one
  accumulator per group. Nothing uses ``sum``/``dot``/``@``, whose association differs.
* Products are formed with ggml's left-to-right association, e.g. ``(w * x) * l`` and ``(w * l) * l``.
* ggml's ``nearest_int`` (add 1.5 * 2**23, read the low mantissa bits) is reproduced bit for bit where its
  argument is unbounded (it can be huge, Inf or NaN there); where the argument is provably within +-33 the
  cheaper ``np.rint`` gives the same integer (round half to even).
* Max searches use a strict ``>`` scanned in index order, so the first of equal candidates wins, as in ggml.
* Sequential per-group refinements (Q3_K) run lane-wise too, each pass only over the groups that ggml would
  still be refining (those whose previous pass changed something), so every group gets exactly ggml's passes.

Non-finite policy (the project's, not ggml's): a super-block holding any NaN or Inf is written as all-zero bytes
except ``d = 0x7E00`` (f16 NaN), so it dequantizes to NaN and never passes for finite data.

Example:
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    >>> quantize_q3_k(x).shape, quantize_q6_k(x).shape
    ((2, 110), (2, 210))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import F16_NAN, F32_INF, F32_MAG, scratch
from ._kcommon import check_blocks

__all__ = ["Q3_K_BYTES", "Q6_K_BYTES", "QK_K", "quantize_q3_k", "quantize_q6_k"]

QK_K = 256  # values per super-block
GROUP = 16  # values per group (sub-block); 16 groups per super-block
N_GROUPS = QK_K // GROUP
Q3_K_BYTES = 110
Q6_K_BYTES = 210

_F32 = np.float32
_ZERO = _F32(0.0)
_ONE = _F32(1.0)
# ggml's "this group/block is all zero" threshold, 1e-15f (float32(1e-15) is the correctly rounded literal).
_GROUP_MAX_EPS = _F32(1e-15)
# 1.5 * 2**23: adding it to |v| < 2**22 leaves round-half-even(v) in the low mantissa bits.
_MAGIC = _F32(12582912.0)
_MANT_MASK = 0x007FFFFF
_MAGIC_OFFSET = 0x00400000
# Q6_K's scale search tries nmax + 0.1*is for is = -9..9 (is = 0 is the initial guess); the numerators
# -(nmax + 0.1f*is) are float32 constants, formed in ggml's order: 0.1f*is, then nmax + that, then negate.
_TENTH = _F32(0.1)

# Super-blocks per internal chunk: 1024 blocks = 16384 groups, so each (16, 16384) float32 temporary is 1 MiB. The
# group loops issue hundreds of numpy calls per chunk, so their fixed cost needs big chunks; beyond ~1024 blocks
# the temporaries fall out of cache (measured: 256 -> 18, 1024 -> 23-28, 4096 -> 15-25 M values/s).
_CHUNK_BLOCKS = 1024


def _buf(name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A reused per-thread scratch array (contents undefined). The big per-chunk temporaries live here: fresh
    1 MiB arrays would each be a new mmap (glibc's default threshold is 128 KiB) and the page faults cost up to
    a third of the run time."""
    n = 1
    for k in shape:
        n *= k
    return scratch.get("kqx_" + name, dtype, n).reshape(shape)


def _nearest_int_bits(v: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """ggml's ``nearest_int`` bit trick on float32 ``v`` of any value (huge, Inf, NaN included) -> int32.

    For |v| <= 4194303 this is round-half-to-even; beyond it (ggml's assert is compiled out) it is whatever the
    mantissa bits say, and a quiet NaN with an empty payload (every NaN these kernels can make) gives 0.
    With ``inplace`` the result overwrites ``v``'s memory (returned as an int32 view of it).
    """
    t = np.add(v, _MAGIC, out=v) if inplace else v + _MAGIC
    bits: np.ndarray = t.view(np.int32)
    bits &= _MANT_MASK
    bits -= _MAGIC_OFFSET
    return bits


def _f16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> f16 bits (uint16) as ggml converts: round to nearest even, overflow to Inf, NaN -> 0x7E00|sign."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16).view(np.uint16)
    nan = np.isnan(v)
    if nan.any():
        sign = (v.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(F16_NAN), h).astype(np.uint16)
    return h


def _f16_to_f32(h: np.ndarray) -> np.ndarray:
    """f16 bits (uint16) -> float32, exact (what ggml's ``GGML_FP16_TO_FP32`` returns)."""
    return h.view(np.float16).astype(np.float32)


def _nonfinite_blocks(blocks: np.ndarray) -> np.ndarray:
    """bool (n_blocks,): True where a super-block holds a NaN or Inf (exponent bits all ones)."""
    mag = blocks.view(np.uint32) & np.uint32(F32_MAG)
    result: np.ndarray = (mag >= np.uint32(F32_INF)).any(axis=1)
    return result


def _to_lanes(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (16, nb*16) (scratch): row i holds element i of every group, group g = 16*block + j."""
    lanes = _buf("lanes", np.float32, (GROUP, blocks.shape[0] * N_GROUPS))
    np.copyto(lanes, blocks.reshape(-1, GROUP).T)
    return lanes


def _quants_from_lanes(lanes: np.ndarray, nb: int) -> np.ndarray:
    """Search quants (16, nb*16) float32 holding small integers -> uint8 (nb, 16, 16) (scratch), block order."""
    q = _buf("L8", np.uint8, (nb * N_GROUPS, GROUP))
    np.copyto(q, lanes.T, casting="unsafe")
    return q.reshape(nb, N_GROUPS, GROUP)


def _requant(xb: np.ndarray, d: np.ndarray, lo: int, hi: int, L: np.ndarray) -> None:
    """ggml's final pass: where the stored group scale ``d`` (nb, 16) is nonzero, L = clamp(nearest_int(x/d)) - lo.

    ``L`` (nb, 16, 16) uint8 is updated in place; groups whose d is 0 keep the quants of the search, as in ggml
    (a NaN d counts as nonzero there, as in C's ``if (!d)``).
    """
    nb = xb.shape[0]
    v = _buf("rq", np.float32, (nb, N_GROUPS, GROUP))
    np.divide(xb.reshape(nb, N_GROUPS, GROUP), d[:, :, None], out=v)  # a division, as in ggml (not x * (1/d))
    q = _nearest_int_bits(v, inplace=True)  # x/d is unbounded when d is tiny or NaN: exact bit trick
    np.clip(q, lo, hi, out=q)
    q -= lo
    np.copyto(L, q, casting="unsafe", where=(d != _ZERO)[:, :, None])


def _signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (lanes (16, G)): (largest |x|, the signed x that has it), first index winning ties (strict >)."""
    amax = np.zeros(x.shape[1], dtype=np.float32)
    vmax = np.zeros(x.shape[1], dtype=np.float32)
    for i in range(x.shape[0]):
        ax = np.abs(x[i])
        take = ax > amax
        np.copyto(amax, ax, where=take)
        np.copyto(vmax, x[i], where=take)
    return amax, vmax


def _lane_sum(terms: np.ndarray) -> np.ndarray:
    """Sequential sum over the 16 rows of ``terms`` (16, G): ((((0 + t0) + t1) + ...) + t15), one lane per group."""
    acc = np.zeros(terms.shape[1], dtype=np.float32)
    for i in range(terms.shape[0]):
        np.add(acc, terms[i], out=acc)
    return acc


def _round_clamped(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """round-half-even then clamp, in float32; only for |v| well below 2**22, where it equals ``nearest_int``."""
    r = np.rint(v, out=v)
    result: np.ndarray = np.clip(r, _F32(lo), _F32(hi), out=r)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Group scale searches.


def _qx_group_scales(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(16, nmax, x, L, rmse_type=1, qw=NULL)`` for every group of lanes ``x`` (16, G).

    Returns (scale float32 (G,), L float32 (16, G) holding the integers nmax + clamp(l, -nmax, nmax-1), or 0 for
    an all-zero group; L is a scratch buffer, valid until the next call). Weights are w = x*x. The initial guess
    uses iscale = -nmax/max; then 18 alternatives -(nmax + 0.1*is)/max replace it when sumlx**2 > best*suml2
    (strict, so the earliest best candidate stays).
    """
    amax, vmax = _signed_absmax(x)
    zero = amax < _GROUP_MAX_EPS
    # a stand-in max for all-zero groups keeps them finite; their result is overwritten below
    vmax = np.where(zero, _ONE, vmax)
    w = np.multiply(x, x, out=_buf("w", np.float32, x.shape))
    # ggml computes w*x[i] then multiplies by l: the same float32 value every time, so compute it once
    wx = np.multiply(w, x, out=_buf("wx", np.float32, x.shape))
    lo, hi = _F32(-nmax), _F32(nmax - 1)
    bias = _F32(nmax)
    lf = _buf("lf", np.float32, x.shape)
    t = _buf("t", np.float32, x.shape)

    def quants(iscale: np.ndarray) -> np.ndarray:
        # |iscale * x| <= nmax + 0.9 because |x| <= |max|, so rint is exactly ggml's nearest_int here
        np.multiply(x, iscale, out=lf)
        np.rint(lf, out=lf)
        return np.clip(lf, lo, hi, out=lf)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = quants(iscale)
        sumlx = _lane_sum(np.multiply(wx, q, out=t))
        np.multiply(w, q, out=t)
        return sumlx, _lane_sum(np.multiply(t, q, out=t))

    first = _F32(-nmax)
    sumlx, suml2 = sums(first / vmax)
    scale = np.where(suml2 != _ZERO, sumlx / suml2, _ZERO)  # C's "suml2 ? ... : 0": NaN counts as true
    best = scale * sumlx
    # Remember the winning numerator per group instead of copying L at every improvement: L is recomputed from it
    # at the end with the very same float32 operations, so it is the L ggml kept.
    best_num = np.full(x.shape[1], first, dtype=np.float32)
    for step in range(-9, 10):
        if step == 0:
            continue
        neg_num = -(bias + _TENTH * _F32(step))
        sumlx, suml2 = sums(neg_num / vmax)
        better = (suml2 > _ZERO) & (sumlx * sumlx > best * suml2)
        if better.any():
            np.copyto(best_num, neg_num, where=better)
            np.copyto(scale, sumlx / suml2, where=better)
            np.copyto(best, scale * sumlx, where=better)  # uses the new scale, as ggml does
    L = np.add(quants(best_num / vmax), bias, out=lf)
    scale[zero] = _ZERO
    L[:, zero] = _ZERO
    return scale, L


def _q3_group_scales(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_q3_quants(16, 4, x, L, do_rmse=true)`` for every group of lanes ``x`` (16, G).

    Returns (scale float32 (G,), L float32 (16, G) holding 4 + clamp(l, -4, 3), or 0 for an all-zero group; L is
    a scratch buffer, valid until the next call).
    Start from l = nearest_int(-4/max * x), w = x*x, then up to 5 passes over the elements in order: move element
    i to nearest_int(x_i * sl2 / slx) computed without it, keeping the move when it raises sumlx**2/suml2; a
    group stops after a pass that moved nothing.
    """
    nmax = 4
    amax, vmax = _signed_absmax(x)
    zero = amax < _GROUP_MAX_EPS
    vmax = np.where(zero, _ONE, vmax)
    w = np.multiply(x, x, out=_buf("w", np.float32, x.shape))
    wx = np.multiply(w, x, out=_buf("wx", np.float32, x.shape))
    iscale = _F32(-nmax) / vmax
    L = np.multiply(x, iscale, out=_buf("lf", np.float32, x.shape))
    _round_clamped(L, -nmax, nmax - 1)  # |iscale * x| <= 4: rint is exactly nearest_int
    L += _ZERO  # rint can leave -0.0; ggml's l is the integer 0 (harmless in the sums, but keep L canonical)
    t = np.multiply(wx, L, out=_buf("t", np.float32, x.shape))
    sumlx = _lane_sum(t)
    np.multiply(w, L, out=t)
    suml2 = _lane_sum(np.multiply(t, L, out=t))
    # ggml stops a group after the first pass that changed none of its quants; a group still moving gets up to 5
    # passes. Each pass runs only over the groups still moving, gathered into compact arrays (after pass 1
    # typically ~20% of groups, then ~5%), and writes their state back.
    active: np.ndarray | None = None  # indices of the moving groups; None = all groups, worked on in place
    xs, ws, wxs, Ls, sx, s2 = x, w, wx, L, sumlx, suml2
    for _ in range(5):
        moved = np.zeros(xs.shape[1], dtype=bool)
        for i in range(GROUP):
            li = Ls[i]
            slx = sx - wxs[i] * li
            sl2 = s2 - (ws[i] * li) * li
            # x*sl2/slx is unbounded (slx may be tiny, sl2 Inf or NaN for huge x): use the exact bit trick
            nl = np.clip(_nearest_int_bits((xs[i] * sl2) / slx), -nmax, nmax - 1).astype(np.float32)
            nslx = slx + wxs[i] * nl
            nsl2 = sl2 + (ws[i] * nl) * nl
            keep = (slx > _ZERO) & (nl != li) & (nsl2 > _ZERO) & ((nslx * nslx) * s2 > (sx * sx) * nsl2)
            if keep.any():
                np.copyto(li, nl, where=keep)
                np.copyto(sx, nslx, where=keep)
                np.copyto(s2, nsl2, where=keep)
                moved |= keep
        if active is not None:
            L[:, active] = Ls
            sumlx[active] = sx
            suml2[active] = s2
        if not moved.any():
            break
        active = np.flatnonzero(moved) if active is None else active[moved]
        xs, ws, wxs, Ls, sx, s2 = xs[:, moved], ws[:, moved], wxs[:, moved], Ls[:, moved], sx[moved], s2[moved]
    scale = np.where(suml2 > _ZERO, sumlx / suml2, _ZERO)
    L += _F32(nmax)
    scale[zero] = _ZERO
    L[:, zero] = _ZERO
    return scale, L


# ---------------------------------------------------------------------------------------------------------------
# Super-block assembly.


def _max_by_abs(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per super-block of group scales ``s`` (nb, 16): (max |s|, signed s having it), strict > in index order."""
    best_abs = np.zeros(s.shape[0], dtype=np.float32)
    best = np.zeros(s.shape[0], dtype=np.float32)
    for j in range(s.shape[1]):
        a = np.abs(s[:, j])
        take = a > best_abs  # NaN never wins
        np.copyto(best_abs, a, where=take)
        np.copyto(best, s[:, j], where=take)
    return best_abs, best


def _pack_2bit(v: np.ndarray) -> np.ndarray:
    """uint8 (..., 4, n) of 2-bit values -> uint8 (..., n): entry k of axis -2 goes to bits 2k, 2k+1."""
    two, four, six = np.uint8(2), np.uint8(4), np.uint8(6)
    result: np.ndarray = v[..., 0, :] | (v[..., 1, :] << two) | (v[..., 2, :] << four) | (v[..., 3, :] << six)
    return result


def _f16_bytes(h: np.ndarray) -> np.ndarray:
    """f16 bits (nb,) -> (nb, 2) uint8, little-endian as in the GGUF file."""
    return h.astype("<u2").reshape(-1, 1).view(np.uint8)


def _q6_chunk(xb: np.ndarray, out: np.ndarray) -> None:
    """Q6_K of finite super-blocks ``xb`` (nb, 256) float32 into ``out`` (nb, 210) uint8."""
    nb = xb.shape[0]
    scales_g, L_lanes = _qx_group_scales(_to_lanes(xb), 32)
    s = scales_g.reshape(nb, N_GROUPS)
    max_abs, max_scale = _max_by_abs(s)
    dead = max_abs < _GROUP_MAX_EPS  # ggml writes such a block as all zero bytes (d = +0 too)
    max_scale = np.where(dead, _ONE, max_scale)
    iscale = _F32(-128.0) / max_scale
    d16 = _f16_bits(_ONE / iscale)
    sc = np.minimum(_nearest_int_bits(iscale[:, None] * s), 127).astype(np.int8)  # int -> int8_t wraps, as in C
    d = _f16_to_f32(d16)[:, None] * sc.astype(np.float32)  # (nb, 16) effective group scales
    L = _quants_from_lanes(L_lanes, nb)
    _requant(xb, d, -32, 31, L)
    L = L.reshape(nb, 2, 4, 32)  # [half, quarter, lane]
    # value 128*h + 32*k + l: low nibble into ql[64h + l] (k = 0, 2) / ql[64h + 32 + l] (k = 1, 3), bits 4-5
    # into qh[32h + l] at bit 2k
    lo = L & np.uint8(0x0F)
    hi = L >> np.uint8(4)
    ql = out[:, 0:128].reshape(nb, 2, 2, 32)
    ql[:, :, 0, :] = lo[:, :, 0, :] | (lo[:, :, 2, :] << np.uint8(4))
    ql[:, :, 1, :] = lo[:, :, 1, :] | (lo[:, :, 3, :] << np.uint8(4))
    out[:, 128:192].reshape(nb, 2, 32)[...] = _pack_2bit(hi)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = _f16_bytes(d16)
    out[dead] = 0


def _q3_chunk(xb: np.ndarray, out: np.ndarray) -> None:
    """Q3_K of finite super-blocks ``xb`` (nb, 256) float32 into ``out`` (nb, 110) uint8."""
    nb = xb.shape[0]
    scales_g, L_lanes = _q3_group_scales(_to_lanes(xb))
    s = scales_g.reshape(nb, N_GROUPS)
    _, max_scale = _max_by_abs(s)
    has = max_scale != _ZERO  # else ggml leaves the scale bytes 0 and d = +0
    iscale = _F32(-32.0) / np.where(has, max_scale, _ONE)
    l6 = _nearest_int_bits(iscale[:, None] * s).astype(np.int8).astype(np.int32)  # int8_t l = nearest_int(...)
    l6 = np.clip(l6, -32, 31) + 32
    l6[~has] = 0
    d16 = np.where(has, _f16_bits(_ONE / iscale), np.uint16(0)).astype(np.uint16)
    # ggml re-reads the 6-bit scale from the packed bytes: that gives back l6 exactly, minus the bias 32
    d = _f16_to_f32(d16)[:, None] * (l6 - 32).astype(np.float32)
    L = _quants_from_lanes(L_lanes, nb)
    _requant(xb, d, -4, 3, L)  # when max_scale == 0 every d is 0: all groups keep the search's quants
    L = L.reshape(nb, QK_K)
    # hmask[m] bit k = bit 2 of value 32k + m
    high = (L >> np.uint8(2)).reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for k in range(8):
        hmask |= high[:, k, :] << np.uint8(k)
    out[:, 0:32] = hmask
    # qs[32h + l] holds bits 0-1 of values 128h + 32k + l at bit 2k
    low = (L & np.uint8(3)).reshape(nb, 2, 4, 32)
    out[:, 32:96].reshape(nb, 2, 32)[...] = _pack_2bit(low)
    # scales: low nibbles of groups 0-7 / 8-15 in bytes 0-7 (low / high half); bits 4-5 of group 4q + k in
    # byte 8 + k at bit 2q
    l6u = l6.astype(np.uint8)
    nib = l6u & np.uint8(0x0F)
    out[:, 96:104] = nib[:, 0:8] | (nib[:, 8:16] << np.uint8(4))
    out[:, 104:108] = _pack_2bit((l6u >> np.uint8(4)).reshape(nb, 4, 4))  # [q, k]
    out[:, 108:110] = _f16_bytes(d16)


def _quantize(
    blocks: np.ndarray, type_size: int, chunk_fn: Callable[[np.ndarray, np.ndarray], None], what: str
) -> np.ndarray:
    """Shared driver: validate, apply the non-finite policy, run ``chunk_fn`` over cache-sized chunks."""
    blocks = check_blocks(blocks, QK_K, what)
    nb = blocks.shape[0]
    out = np.empty((nb, type_size), dtype=np.uint8)
    nan_d = np.array([F16_NAN], dtype="<u2").view(np.uint8)
    with np.errstate(all="ignore"):  # huge finite input legitimately overflows to Inf/NaN, as it does in ggml
        for s in range(0, nb, _CHUNK_BLOCKS):
            xb = blocks[s : s + _CHUNK_BLOCKS]
            ob = out[s : s + xb.shape[0]]
            bad = _nonfinite_blocks(xb)  # per chunk, so no whole-tensor temporary
            if bad.any():
                xb = np.where(bad[:, None], _ZERO, xb)  # keep NaN/Inf out of the arithmetic (and the input intact)
                chunk_fn(xb, ob)
                ob[bad] = 0
                ob[bad, type_size - 2 :] = nan_d
            else:
                chunk_fn(xb, ob)
    return out


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K bytes of ``blocks``: float32 (n_blocks, 256), C-contiguous -> uint8 (n_blocks, 210).

    Byte-identical to ggml's ``quantize_row_q6_K_ref`` (what ``ggml_quantize_chunk`` runs without an importance
    matrix) for finite input; a super-block holding NaN/Inf becomes zeros with ``d = 0x7E00`` (f16 NaN).

    Example:
        >>> import numpy as np
        >>> from gguf import GGMLQuantizationType
        >>> from gguf.quants import dequantize
        >>> x = np.tile(np.arange(-4, 4, dtype=np.float32), 32).reshape(1, 256)  # small integers: exact
        >>> q = quantize_q6_k(x)
        >>> q.shape, q.dtype, float(q[0, 208:210].view(np.float16)[0])  # d = -max/(32*128) = 2**-10
        ((1, 210), dtype('uint8'), -0.0009765625)
        >>> bool((dequantize(q, GGMLQuantizationType.Q6_K) == x).all())
        True
        >>> quantize_q6_k(np.full((1, 256), np.nan, np.float32))[0, 208:].tolist()
        [0, 126]
    """
    return _quantize(blocks, Q6_K_BYTES, _q6_chunk, "Q6_K")


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """Q3_K bytes of ``blocks``: float32 (n_blocks, 256), C-contiguous -> uint8 (n_blocks, 110).

    Byte-identical to ggml's ``quantize_row_q3_K_ref`` (what ``ggml_quantize_chunk`` runs without an importance
    matrix) for finite input; a super-block holding NaN/Inf becomes zeros with ``d = 0x7E00`` (f16 NaN).

    Example:
        >>> import numpy as np
        >>> from gguf import GGMLQuantizationType
        >>> from gguf.quants import dequantize
        >>> x = np.tile(np.arange(-4, 4, dtype=np.float32), 32).reshape(1, 256)  # 3-bit integers: exact
        >>> q = quantize_q3_k(x)
        >>> q.shape, float(q[0, 108:110].view(np.float16)[0])  # d = -max/(4*32) = 2**-5
        ((1, 110), -0.03125)
        >>> bool((dequantize(q, GGMLQuantizationType.Q3_K) == x).all())
        True
        >>> int(quantize_q3_k(np.zeros((2, 256), np.float32)).sum())
        0
        >>> quantize_q3_k(np.full((1, 256), np.inf, np.float32))[0, 108:].tolist()
        [0, 126]
    """
    return _quantize(blocks, Q3_K_BYTES, _q3_chunk, "Q3_K")

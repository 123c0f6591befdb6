"""Q8_0: blocks of 32 values -> {f16 d; int8 qs[32]} (34 bytes), bit-exact with ggml's ``quantize_row_q8_0_ref``.

Per block: ``amax = max|x|``, ``d = amax / 127`` (float32), ``id = 1/d`` (0 when d == 0),
``qs = roundf(x * id)`` (round half AWAY from zero, not numpy's half-to-even), d stored as f16 (RNE).

Edge rules, all matching ``gguf.quants`` (which the reference converter uses) for finite input:

* a block whose ``1/d`` overflows float32 (amax below ~127 * 2**-128, i.e. subnormal-scale data) has ``qs = 0``
  (gguf casts the resulting NaNs to int8, which gives 0 on every platform we target), and its d rounds to f16 0;
* non-finite policy (ours; gguf's result there is platform-dependent): a block holding any NaN or Inf gets
  ``d = 0x7E00`` (f16 NaN) and ``qs = 0``, so it dequantizes to NaN and never looks finite.

Rounding: for float32 ``v`` with ``|v| <= 128``, ``trunc(v + copysign(0.49999997f, v))`` computed in float32 equals
``roundf(v)``: below a tie the sum stays under the next integer (the gap is >= one ulp of v minus 2**-25), at or
above a tie it reaches it, and ``0.49999997 + 0.49999997`` rounds to ``0.99999994``, not 1. ``tests`` check this
against an exact float64 rounding on every float32 in several binades.

Example:
    >>> import numpy as np
    >>> q = q8_0_ref(np.arange(32, dtype=np.float32).reshape(1, 32))
    >>> q.shape, q[0, 2:6].view(np.int8).tolist()
    ((1, 34), [0, 4, 8, 12])
"""

from __future__ import annotations

import numpy as np

from ._common import BF16_MAG, F16_NAN, F32_INF, F32_MAG, SUBCHUNK, scratch, segments
from .floats import to_f32

QK = 32
BLOCK_BYTES = 34

# nextafter(0.5, 0) in float32 = 0.49999997f, and its bits; OR-ed with a sign bit it gives copysign(h, x).
HALF_BELOW = np.float32(np.nextafter(np.float32(0.5), np.float32(0)))
HALF_BELOW_BITS = int(HALF_BELOW.view(np.uint32))
SIGN32 = 0x80000000
# Values per sub-chunk: the fixed cost of ~25 numpy calls per sub-chunk dominates below ~64K values; 128K values
# (~1.3 MB of temporaries) measured fastest on a 512 KiB-L2 / 32 MiB-L3 EPYC.
Q8_SUBCHUNK = 4 * SUBCHUNK


def roundf_exact(v: np.ndarray) -> np.ndarray:
    """C ``roundf`` (half away from zero) of float32 values, computed exactly in float64.

    Example:
        >>> roundf_exact(np.array([0.5, -2.5, 0.49999997, 63.5], dtype=np.float32)).tolist()
        [1.0, -3.0, 0.0, 64.0]
    """
    v64 = np.asarray(v, dtype=np.float64)  # exact: float64 holds every float32, and |v| + 0.5 exactly too
    return np.copysign(np.floor(np.abs(v64) + 0.5), v64)


def roundf_trick(v: np.ndarray) -> np.ndarray:
    """The float32-only rounding used by the fast paths: trunc(v + copysign(0.49999997f, v)), valid for |v| <= 128.

    Example:
        >>> roundf_trick(np.array([0.5, -2.5, 0.49999997, 63.5], dtype=np.float32)).tolist()
        [1.0, -3.0, 0.0, 64.0]
    """
    v = np.asarray(v, dtype=np.float32)
    result: np.ndarray = np.trunc(v + np.copysign(HALF_BELOW, v))
    return result


def q8_0_ref(x: np.ndarray) -> np.ndarray:
    """Reference Q8_0 of ``x`` (rows, ncols), ncols % 32 == 0 -> uint8 (rows, ncols // 32 * 34). Plain numpy.

    Example:
        >>> q8_0_ref(np.zeros((2, 64), dtype=np.float32)).shape
        (2, 68)
    """
    rows, ncols = x.shape
    blocks = np.ascontiguousarray(to_f32(x)).reshape(-1, QK)
    finite = np.isfinite(blocks).all(axis=1)
    safe = np.where(finite[:, None], blocks, np.float32(0))
    amax = np.abs(safe).max(axis=1, initial=np.float32(0))
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    inv[~np.isfinite(inv)] = 0  # 1/d overflowed: gguf ends with qs = 0 for such blocks
    v = (safe * inv[:, None]).astype(np.float32)
    qs = roundf_exact(v).astype(np.int8)
    with np.errstate(over="ignore"):  # d >= 65520 becomes f16 Inf, as in ggml
        dbits = d.astype(np.float16).view(np.uint16).copy()
    dbits[~finite] = F16_NAN
    res = np.empty((blocks.shape[0], BLOCK_BYTES), dtype=np.uint8)
    res[:, :2] = dbits.view(np.uint8).reshape(-1, 2)
    res[:, 2:] = qs.view(np.uint8)
    return res.reshape(rows, (ncols // QK) * BLOCK_BYTES)


def _min_scale_bits() -> int:
    """Smallest float32 amax (as bits) whose ``1 / (amax / 127)`` is finite; below it a block's quants are all 0."""
    lo, hi = 0, F32_INF  # invariant: 1/d overflows at lo, is finite at hi
    with np.errstate(divide="ignore", over="ignore"):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            d = np.uint32(mid).view(np.float32) / np.float32(127)
            if np.isfinite(np.float32(1) / d):
                hi = mid
            else:
                lo = mid
    return hi


# Blocks with amax below this behave like all-zero blocks: d rounds to f16 0 and (as in gguf) every q is 0.
MIN_SCALE_BITS = _min_scale_bits()
# Blocks with amax at or above this get d >= 65520, which the f16 cast turns into Inf (numpy warns; ggml agrees).
F16_OVERFLOW_BITS = int(np.float32(65520.0 * 127).view(np.uint32))


def _finish_scales(bm: np.ndarray, top: int, dst_d: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-block amax float32 bits ``bm`` (max ``top``) -> f16 d written to dst_d (nb, 1); returns (id, bad mask).

    Few, whole-array numpy calls: this runs once per sub-chunk, so its fixed cost matters.
    """
    nb = bm.size
    d = np.divide(bm.view(np.float32), np.float32(127), out=scratch.get("q_d", np.float32, nb))
    ok = np.greater_equal(bm, MIN_SCALE_BITS, out=scratch.get("q_ok", np.bool_, nb))
    bad = None
    if top >= F32_INF:
        bad = bm >= F32_INF
        np.logical_and(ok, ~bad, out=ok)
    inv = scratch.get("q_id", np.float32, nb)
    inv.fill(0)
    np.divide(np.float32(1), d, out=inv, where=ok)
    direct = dst_d.flags.aligned  # write the f16 scales straight into the strided output when we can
    dh = dst_d.reshape(nb).view(np.float16) if direct else scratch.get("q_dh", np.float16, nb)
    if top >= F16_OVERFLOW_BITS:
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(dh, d, casting="same_kind")
    else:
        np.copyto(dh, d, casting="same_kind")
    if bad is not None:
        dh.view(np.uint16)[bad] = F16_NAN
    if not direct:
        np.copyto(dst_d, dh.view(np.uint16)[:, None])
    return inv, bad


def _q8_chunk(xs: np.ndarray, ob: np.ndarray) -> int:
    """One sub-chunk: xs 1-D source (n values, n % 32 == 0), ob (n // 32, 34) uint8 destination. Returns first bad."""
    n = xs.size
    nb = n // QK
    if xs.dtype == np.float16:
        f = scratch.get("q_f16src", np.float32, n)
        np.copyto(f, xs)
        xs = f
    if xs.dtype == np.uint16:
        # bf16: block amax on the 15 magnitude bits (they order like |x|; >= 0x7F80 is Inf/NaN), then widen.
        mag = np.bitwise_and(xs, BF16_MAG, out=scratch.get("q_m16", np.uint16, n))
        bm16 = np.max(mag.reshape(nb, QK), axis=1, out=scratch.get("q_bm16", np.uint16, nb))
        top = int(bm16.max()) << 16
        bm = scratch.get("q_bm", np.uint32, nb)
        np.left_shift(bm16, 16, out=bm, dtype=np.uint32)
        bits = scratch.get("q_x", np.uint32, n)
        np.copyto(bits, xs)
        np.left_shift(bits, 16, out=bits)
        v = bits.view(np.float32)
        src = v
    else:
        bits = xs.view(np.uint32)
        mag32 = np.bitwise_and(bits, F32_MAG, out=scratch.get("q_m32", np.uint32, n))
        bm = np.max(mag32.reshape(nb, QK), axis=1, out=scratch.get("q_bm", np.uint32, nb))
        top = int(bm.max())
        v = scratch.get("q_v", np.float32, n)
        src = xs
    dst_d = ob[:, :2].view(np.uint16)
    inv, bad = _finish_scales(bm, top, dst_d)
    first = -1
    if bad is not None:  # rare: locate the first NaN/Inf before v (which may alias the source) is overwritten
        b0 = int(np.flatnonzero(bad)[0])
        first = b0 * QK + int(np.argmin(np.isfinite(src.reshape(nb, QK)[b0])))
    # signed 0.49999997 from the sign bit of x (id >= 0, so x * id has the sign of x)
    sh = scratch.get("q_sh", np.uint32, n)
    np.bitwise_and(bits, SIGN32, out=sh)
    np.bitwise_or(sh, HALF_BELOW_BITS, out=sh)
    dst_q = ob[:, 2:].view(np.int8)
    if bad is None:
        np.multiply(src.reshape(nb, QK), inv[:, None], out=v.reshape(nb, QK))
        np.add(v, sh.view(np.float32), out=v)
        np.copyto(dst_q, v.reshape(nb, QK), casting="unsafe")  # float -> int8 truncates toward zero
    else:
        with np.errstate(invalid="ignore"):  # Inf * 0 in the bad blocks, which are zeroed below
            np.multiply(src.reshape(nb, QK), inv[:, None], out=v.reshape(nb, QK))
            np.add(v, sh.view(np.float32), out=v)
            np.copyto(dst_q, v.reshape(nb, QK), casting="unsafe")
        dst_q[bad] = 0
    return first


def q8_0_numpy(x: np.ndarray, out: np.ndarray) -> int:
    """Fast numpy Q8_0 kernel: fills ``out`` (rows, ncols // 32 * 34), returns first non-finite flat index or -1."""
    first = -1
    for base, xs, os in segments(x, out):
        ob_all = os.reshape(-1, BLOCK_BYTES)
        for s in range(0, xs.size, Q8_SUBCHUNK):
            part = xs[s : s + Q8_SUBCHUNK]
            i = _q8_chunk(part, ob_all[s // QK : (s + part.size) // QK])
            if i >= 0 and first < 0:
                first = base + s + i
    return first


def dequantize_q8_0(data: np.ndarray, nvalues: int) -> np.ndarray:
    """Q8_0 bytes -> float32 values (flat, nvalues long): d * qs per block."""
    blocks = np.ascontiguousarray(data).reshape(-1).view(np.uint8).reshape(-1, BLOCK_BYTES)
    if blocks.shape[0] * QK != nvalues:
        raise ValueError(f"Q8_0: {blocks.shape[0]} blocks hold {blocks.shape[0] * QK} values, expected {nvalues}")
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    with np.errstate(invalid="ignore"):
        result: np.ndarray = (q * d).reshape(-1)
        return result

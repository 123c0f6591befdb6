"""Helpers shared by the numpy block quantizers of q4_q5.py and kquants_qkx2.py (no importance matrix).

Everything here reproduces, bit for bit, a small piece of ``ggml/src/ggml-quants.c`` / ``ggml-impl.h`` as built for
baseline x86-64 (SSE2, no FMA): every float operation is one IEEE float32 operation, rounded to nearest even.

* ``nearest_int``: ggml's ``nearest_int`` (add 1.5 * 2**23, read the low mantissa bits), emulated through the same
  float32 add and bit mask, so it also agrees where the trick stops being rounding (NaN, +-Inf, |f| > 2**22).
* ``f16_bits``: ``GGML_FP32_TO_FP16`` (round to nearest even, overflow to Inf).
* ``pack_scale_min_k4``: the 12-byte 6-bit scale/min layout that ``get_scale_min_k4`` reads (Q4_K, Q5_K).
* ``seq_sum_rows``: a float32 sum that adds rows strictly in order, one accumulator per lane (numpy's own ``sum``
  is pairwise along a contiguous axis, which rounds differently from the C loop ``s += v[i]``).
* ``split_nonfinite`` / ``apply_nonfinite_policy``: the project's non-finite policy (a block holding NaN/Inf is
  written as zeros except its f16 scale fields, which become 0x7E00).

Example:
    >>> import numpy as np
    >>> nearest_int(np.array([0.5, 1.5, -2.5, 2.4999998], dtype=np.float32)).tolist()
    [0, 2, -2, 2]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ._common import F16_NAN, KernelArgumentError

F32 = np.float32
# 1.5 * 2**23: adding it to |f| <= 2**22 leaves round-half-even(f) in the low 23 mantissa bits, offset by 2**22.
ROUND_MAGIC = F32(12582912.0)
MANT_MASK = np.int32(0x007FFFFF)
MANT_OFFSET = np.int32(0x00400000)


def nearest_int(f: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ggml's ``nearest_int`` on a float32 array, exactly: int32 array of the same shape.

    For |f| <= 4194303 this is round-half-to-even; +-Inf gives -4194304 and a quiet NaN without payload gives 0
    (their mantissa bits minus the offset), as the C code does with its assert compiled out. Do not use ``np.rint``
    where such values can occur (the K-quant searches meet them in subnormal-range groups). ``out``: an optional
    float32 buffer of f's shape (may be f itself) whose memory holds the int32 result.

    Example:
        >>> nearest_int(np.array([np.inf, np.nan, -0.0, 3.5], dtype=np.float32)).tolist()
        [-4194304, 0, 0, 4]
    """
    f = np.asarray(f)
    if f.dtype != np.float32:
        raise KernelArgumentError(f"nearest_int: expected float32, found {f.dtype}")
    s = np.add(f, ROUND_MAGIC, out=out)
    bits: np.ndarray = s.view(np.int32)
    np.bitwise_and(bits, MANT_MASK, out=bits)
    np.subtract(bits, MANT_OFFSET, out=bits)
    return bits


def nearest_int_clamped(f: np.ndarray, hi: int) -> np.ndarray:
    """``MAX(0, MIN(hi, nearest_int(f)))`` as float32 (the form the K-quant searches multiply with).

    Example:
        >>> nearest_int_clamped(np.array([-1.0, 2.5, 99.0, np.nan], dtype=np.float32), 15).tolist()
        [0.0, 2.0, 15.0, 0.0]
    """
    q = nearest_int(f)
    np.clip(q, 0, hi, out=q)
    return q.astype(np.float32)


def f16_bits(v: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16`` of a float32 array: uint16 bits (RNE; >= 65520 becomes Inf, like ggml).

    numpy's float32 -> float16 cast rounds to nearest even from the float32 value directly (no double rounding),
    which is what ggml's bit trick computes: the two were compared on every finite float32 (no difference), and the
    tests re-check a stride of patterns, every f16 rounding boundary and +-Inf. (For NaN input
    numpy keeps payload bits where ggml writes 0x7E00 | sign; the quantizers never convert a NaN.)

    Example:
        >>> f16_bits(np.array([1.0, -0.0, 65520.0, 1e-8], dtype=np.float32)).tolist()
        [15360, 32768, 31744, 0]
    """
    v = np.asarray(v, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return v.astype(np.float16).view(np.uint16)


def seq_sum_rows(terms: np.ndarray, start: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Sum ``terms`` (n, *lanes) over axis 0 strictly in order i = 0..n-1, in float32, one accumulator per lane.

    ``start`` is the accumulator's initial value (default +0.0, as ``float s = 0;`` in C: that also turns an
    all-(-0.0) sum into +0.0, as C does). Matches ``for (i = 0; i < n; ++i) s += terms[i];``. ``out``
    (float32, shape lanes) receives the result when given, so hot loops need not allocate.

    Example:
        >>> t = np.array([[1e8], [1.0], [-1e8], [1.0]], dtype=np.float32)
        >>> seq_sum_rows(t).tolist()   # (((0 + 1e8) + 1) - 1e8) + 1: the first 1 is absorbed
        [1.0]
    """
    acc = np.empty(terms.shape[1:], dtype=np.float32) if out is None else out
    if start is None:
        acc.fill(0)
    else:
        np.copyto(acc, start)
    for i in range(terms.shape[0]):
        np.add(acc, terms[i], out=acc)
    return acc


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins per block into ggml's 12-byte Q4_K/Q5_K ``scales`` field.

    ``ls``, ``lm``: integer arrays (n_blocks, 8) with values 0..63. Returns uint8 (n_blocks, 12): bytes 0-3 hold
    scales 0-3 plus the top 2 bits of scales 4-7 (bits 6-7), bytes 4-7 the same for mins, bytes 8-11 the low
    nibbles of scale 4+k (bits 0-3) and min 4+k (bits 4-7). ``get_scale_min_k4`` inverts this.

    Example:
        >>> pack_scale_min_k4(np.arange(8).reshape(1, 8), np.full((1, 8), 63)).tolist()
        [[0, 1, 2, 3, 255, 255, 255, 255, 244, 245, 246, 247]]
    """
    ls = np.asarray(ls).astype(np.uint8)
    lm = np.asarray(lm).astype(np.uint8)
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    return out


def unpack_scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack_scale_min_k4`` (what ggml's ``get_scale_min_k4`` reads): two uint8 (n_blocks, 8) arrays.

    Example:
        >>> s, m = unpack_scale_min_k4(pack_scale_min_k4(np.arange(56, 64)[None], np.arange(8)[None]))
        >>> s.tolist(), m.tolist()
        ([[56, 57, 58, 59, 60, 61, 62, 63]], [[0, 1, 2, 3, 4, 5, 6, 7]])
    """
    q = np.asarray(packed, dtype=np.uint8)
    sc = np.empty((q.shape[0], 8), dtype=np.uint8)
    mn = np.empty((q.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = q[:, 0:4] & 63
    mn[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0x0F) | ((q[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, mn


def check_blocks(blocks: np.ndarray, qk: int, what: str) -> np.ndarray:
    """Validate a quantizer input: float32, C-contiguous, shape (n_blocks, qk). Returns it unchanged.

    Example:
        >>> check_blocks(np.zeros((2, 32), np.float32), 32, "Q4_0").shape
        (2, 32)
    """
    if not isinstance(blocks, np.ndarray):
        raise KernelArgumentError(f"{what}: expected a numpy array, found {type(blocks).__name__}")
    if blocks.dtype != np.float32:
        raise KernelArgumentError(f"{what}: expected float32 blocks, found {blocks.dtype}")
    if blocks.ndim != 2 or blocks.shape[1] != qk:
        raise KernelArgumentError(f"{what}: expected shape (n_blocks, {qk}), found {blocks.shape}")
    if not blocks.flags.c_contiguous:
        raise KernelArgumentError(f"{what}: blocks must be C-contiguous (got strides {blocks.strides})")
    return blocks


def split_nonfinite(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(blocks safe to quantize, bool mask of blocks holding NaN/Inf or None when there are none).

    Bad blocks are replaced by zeros in a copy, so the quantizer never sees NaN/Inf (its bytes for them are
    overwritten by ``apply_nonfinite_policy`` anyway); the caller's array is not modified.

    Example:
        >>> safe, bad = split_nonfinite(np.array([[1.0, np.nan], [2.0, 3.0]], dtype=np.float32))
        >>> safe.tolist(), bad.tolist()
        ([[0.0, 0.0], [2.0, 3.0]], [True, False])
    """
    # Inf - Inf and NaN - anything are NaN, finite - finite is finite (x - x == 0): one pass finds both.
    with np.errstate(invalid="ignore"):
        bad = np.isnan(np.sum(blocks - blocks, axis=1))
    if not bad.any():
        return blocks, None
    safe = blocks.copy()
    safe[bad] = 0
    return safe, bad


def apply_nonfinite_policy(out: np.ndarray, bad: np.ndarray | None, scale_offsets: Sequence[int]) -> None:
    """In place: rows of ``out`` (n_blocks, type_size) uint8 flagged in ``bad`` become zeros except the f16
    fields at byte offsets ``scale_offsets``, which become 0x7E00 (f16 NaN, little-endian).

    Example:
        >>> o = np.full((2, 6), 9, np.uint8)
        >>> apply_nonfinite_policy(o, np.array([False, True]), [0, 2])
        >>> o.tolist()
        [[9, 9, 9, 9, 9, 9], [0, 126, 0, 126, 0, 0]]
    """
    if bad is None or not bad.any():
        return
    rows = np.flatnonzero(bad)
    out[rows] = 0
    lo, hi = F16_NAN & 0xFF, F16_NAN >> 8
    for off in scale_offsets:
        out[rows, off] = lo
        out[rows, off + 1] = hi


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering range(n) in pieces of at most ``size`` (bounds the temporaries of one pass).

    Example:
        >>> [(s.start, s.stop) for s in chunks(5, 2)]
        [(0, 2), (2, 4), (4, 5)]
    """
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))

"""F32 / F16 / BF16 output kernels with ggml's rounding and NaN rules.

Two implementations of each conversion:

* ``*_ref(x)``: the obviously-correct path (decode to float32, convert, patch NaN); used by tests as the oracle.
* ``*_numpy(x, out)``: the fast numpy path, byte-identical to the reference; works on sub-chunks, writes into
  ``out`` and returns the flat index of the first NaN/Inf in ``x`` (or -1).

Rules (ggml): F16 is round-to-nearest-even (numpy's ``astype(float16)``) but a NaN becomes ``0x7E00 | sign``;
BF16 is ``ggml_compute_fp32_to_bf16`` (RNE, NaN quieted by setting bit 6); F32 passes everything through.

Example:
    >>> import numpy as np
    >>> f16_ref(np.array([[1.0, np.nan]], dtype=np.float32)).view(np.uint16)
    array([[15360, 32256]], dtype=uint16)
"""

from __future__ import annotations

import numpy as np

from ._common import (
    BF16_INF,
    BF16_MAG,
    F16_INF,
    F16_NAN,
    F32_INF,
    F32_MAG,
    SUBCHUNK,
    decode_bf16,
    scratch,
    segments,
)


def to_f32(x: np.ndarray) -> np.ndarray:
    """Exact float32 view/copy of a kernel input (float32, float16 or uint16 bf16 bits).

    Example:
        >>> to_f32(np.array([[0x3F80]], dtype=np.uint16))
        array([[1.]], dtype=float32)
    """
    if x.dtype == np.uint16:
        return decode_bf16(x)
    return x.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Reference paths: plain, whole-array, easy to read.


def f32_ref(x: np.ndarray) -> np.ndarray:
    """F32 bytes of ``x`` (rows, ncols) -> uint8 (rows, 4*ncols). Non-finite values pass through."""
    x32 = np.ascontiguousarray(to_f32(x))
    result: np.ndarray = x32.view(np.uint8).reshape(x.shape[0], -1).copy()
    return result


def f16_ref(x: np.ndarray) -> np.ndarray:
    """F16 bytes like ggml: RNE, overflow to Inf, NaN -> 0x7E00 | sign."""
    x32 = np.ascontiguousarray(to_f32(x))
    with np.errstate(over="ignore", invalid="ignore"):
        h = x32.astype(np.float16).view(np.uint16)
    nan = np.isnan(x32)
    sign = ((x32.view(np.uint32) >> 16) & 0x8000).astype(np.uint16)
    h = np.where(nan, np.uint16(F16_NAN) | sign, h).astype(np.uint16)
    return h.view(np.uint8).reshape(x.shape[0], -1)


def bf16_ref(x: np.ndarray) -> np.ndarray:
    """BF16 bytes like ggml_compute_fp32_to_bf16: RNE on the float32 bits, NaN quieted (bit 6 set)."""
    n = np.ascontiguousarray(to_f32(x)).view(np.uint32).astype(np.uint64)
    is_nan = (n & F32_MAG) > F32_INF
    rounded = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    quieted = (n >> 16) | 64
    b = np.where(is_nan, quieted, rounded).astype(np.uint16)
    return b.view(np.uint8).reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------------------------------------------
# Non-finite detection (cheap; the converter calls it on every chunk).


def first_nonfinite_flat(x: np.ndarray) -> int:
    """Flat index of the first NaN/Inf in a 1-D float32/float16/uint16(bf16) array, or -1."""
    for start in range(0, x.size, SUBCHUNK * 8):
        part = x[start : start + SUBCHUNK * 8]
        if part.dtype == np.uint16:
            # bf16: the magnitude bits order like the magnitudes, and >= 0x7F80 means Inf or NaN.
            mag = np.bitwise_and(part, BF16_MAG, out=scratch.get("nf_m16", np.uint16, part.size))
            if mag.max() >= BF16_INF:
                return start + int(np.argmax(mag >= BF16_INF))
        else:
            ok = np.isfinite(part, out=scratch.get("nf_ok", np.bool_, part.size))
            if not ok.all():
                return start + int(np.argmin(ok))
    return -1


# ---------------------------------------------------------------------------------------------------------------
# Fast numpy paths: kernel(x, out) -> first non-finite flat index or -1.

_BF16_TO_F16: np.ndarray | None = None


def _bf16_to_f16_table() -> np.ndarray:
    """All 65536 bf16 bit patterns -> ggml F16 bits (computed once with the reference rule)."""
    global _BF16_TO_F16
    if _BF16_TO_F16 is None:
        table = f16_ref(np.arange(1 << 16, dtype=np.uint16).reshape(1, -1)).view(np.uint16).reshape(-1)
        _BF16_TO_F16 = np.ascontiguousarray(table)
    return _BF16_TO_F16


def f32_numpy(x: np.ndarray, out: np.ndarray) -> int:
    """F32 output: a copy (bf16 bits are widened exactly)."""
    first = -1
    for base, xs, os in segments(x, out):
        o32 = os.view(np.float32)
        if xs.dtype == np.uint16:
            o_u = os.view(np.uint32)
            np.copyto(o_u, xs)
            np.left_shift(o_u, 16, out=o_u)
        else:
            np.copyto(o32, xs)
        if first < 0:
            i = first_nonfinite_flat(xs)
            if i >= 0:
                first = base + i
    return first


def _f16_from_f32(xs: np.ndarray, o16: np.ndarray) -> int:
    """float32 -> F16 bits with integer/float array ops (numpy's own cast is scalar, ~4 ns/value).

    Normal range: add the RNE bias to the bits and shift (a carry into the exponent is correct, up to Inf).
    Below 2**-14: ``|x| + 0.5f`` lands in [0.5, 1), whose ulp is the f16 subnormal quantum, so the FPU rounds.
    """
    first = -1
    for s in range(0, xs.size, SUBCHUNK):
        part = xs[s : s + SUBCHUNK]
        n = part.size
        bits = part.view(np.uint32)
        a = np.bitwise_and(bits, F32_MAG, out=scratch.get("h_a", np.uint32, n))
        t = scratch.get("h_t", np.uint32, n)
        np.right_shift(a, 13, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(t, a, out=t)
        np.add(t, 0xC8000FFF, out=t)  # (15 - 127) << 23, wrapping, plus the 0xFFF rounding bias
        np.right_shift(t, 13, out=t)
        small = np.less(a, 0x38800000, out=scratch.get("h_small", np.bool_, n))
        sub = scratch.get("h_sub", np.float32, n)
        np.add(a.view(np.float32), np.float32(0.5), out=sub, where=small)
        np.subtract(sub.view(np.uint32), 0x3F000000, out=t, where=small)
        top = int(a.max())
        if top >= 0x47800000:  # rare: |x| >= 65536 is Inf, NaN becomes 0x7E00
            t[a >= 0x47800000] = F16_INF
            t[a > F32_INF] = F16_NAN
            if top >= F32_INF and first < 0:
                first = s + int(np.argmax(a >= F32_INF))
        np.right_shift(bits, 16, out=a)
        np.bitwise_and(a, 0x8000, out=a)
        np.bitwise_or(t, a, out=t)
        np.copyto(o16[s : s + n], t, casting="unsafe")
    return first


def f16_numpy(x: np.ndarray, out: np.ndarray) -> int:
    """F16 output. bf16 input goes through a 64K-entry table (numpy's float32->float16 cast has no SIMD path)."""
    first = -1
    table = _bf16_to_f16_table() if x.dtype == np.uint16 else None
    for base, xs, os in segments(x, out):
        o16 = os.view(np.uint16)
        if table is not None:
            np.take(table, xs, out=o16)
            i = first_nonfinite_flat(xs)
        elif xs.dtype == np.float16:
            np.copyto(o16, xs.view(np.uint16))
            i = first_nonfinite_flat(xs)
            if i >= 0:
                mag = xs.view(np.uint16) & 0x7FFF
                nan = mag > F16_INF
                o16[nan] = np.uint16(F16_NAN) | (xs.view(np.uint16)[nan] & 0x8000)
        else:
            i = _f16_from_f32(xs, o16)
        if first < 0 and i >= 0:
            first = base + i
    return first


def bf16_numpy(x: np.ndarray, out: np.ndarray) -> int:
    """BF16 output. From bf16 it is a copy plus NaN quieting; from float32/float16 the ggml RNE rule."""
    first = -1
    for base, xs, os in segments(x, out):
        o16 = os.view(np.uint16)
        if xs.dtype == np.uint16:
            np.copyto(o16, xs)
            i = first_nonfinite_flat(xs)
            if i >= 0:
                nan = np.bitwise_and(xs, BF16_MAG) > BF16_INF
                np.bitwise_or(o16, np.uint16(0x40), out=o16, where=nan)
        else:
            i = -1
            for s in range(0, xs.size, SUBCHUNK):
                part = xs[s : s + SUBCHUNK]
                n = part.size
                if part.dtype == np.float16:
                    f = scratch.get("bf_f32", np.float32, n)
                    np.copyto(f, part)
                    bits = f.view(np.uint32)
                else:
                    bits = part.view(np.uint32)
                t = scratch.get("bf_t", np.uint32, n)
                # rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16; cannot overflow u32 for non-NaN bits.
                np.right_shift(bits, 16, out=t)
                np.bitwise_and(t, 1, out=t)
                np.add(t, bits, out=t)
                np.add(t, 0x7FFF, out=t)
                np.right_shift(t, 16, out=t)
                np.copyto(o16[s : s + n], t, casting="unsafe")
                j = first_nonfinite_flat(part)
                if j >= 0:
                    nan = (bits & F32_MAG) > F32_INF
                    o16[s : s + n][nan] = ((bits[nan] >> 16) | 64).astype(np.uint16)
                    if i < 0:
                        i = s + j
        if first < 0 and i >= 0:
            first = base + i
    return first

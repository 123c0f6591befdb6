"""Q4_0, Q4_1, Q5_0, Q5_1 in numpy: blocks of 32 float32 -> ggml block bytes, byte-identical to ggml's
``quantize_row_q4_0_ref`` / ``_q4_1_ref`` / ``_q5_0_ref`` / ``_q5_1_ref`` (ggml-quants.c, no importance matrix).

Block layouts (little-endian, ggml-common.h):

======  =====  ==========================================================
type    bytes  fields
======  =====  ==========================================================
Q4_0    18     f16 d, qs[16]
Q4_1    20     f16 d, f16 m, qs[16]
Q5_0    22     f16 d, qh[4] (uint32 of 5th bits), qs[16]
Q5_1    24     f16 d, f16 m, qh[4], qs[16]
======  =====  ==========================================================

``qs[j]`` holds element j in its low nibble and element j + 16 in its high nibble; bit j of the qh uint32 is bit 4
of element j (j = 0..31).

What ggml computes per block (all float32):

* Q4_0 / Q5_0 ("absmax"): ``max`` = the first element of largest |x| (+0.0 if all are zero), ``d = max / -8``
  (``-16``), ``id = d ? 1/d : 0``, code = ``MIN(15, (int8_t)(x*id + 8.5f))`` (``31``, ``16.5f``).
* Q4_1 / Q5_1 ("min-max"): ``min``/``max`` = the first smallest/largest element, ``d = (max - min) / 15``
  (``31``), ``id = d ? 1/d : 0``, code = ``MIN(15, (int8_t)((x - min)*id + 0.5f))`` (Q5_1: ``(uint8_t)(...)``, no
  MIN), ``m = min``.

None of these needs an in-order sum: every step is element-wise, so whole (n_blocks, 32) arrays are processed at
once, in sub-chunks that keep the temporaries in cache. Two C details need care:

* the sign of zero: ggml's scans keep the first of equal values, so ``argmax``/``argmin`` (first occurrence, with
  -0.0 == +0.0) pick the same element; it shows in ``d``/``m`` of all-zero blocks (e.g. Q4_0's d is -0.0 there);
* a block whose ``1/d`` overflows (scale in the float32 subnormal range) or whose ``max - min`` overflows gets
  +-Inf/NaN before the float -> int8 cast; x86 turns those into the "integer indefinite" 0x80000000, whose low byte
  is 0, so every code of such a block is 0. We write 0 directly (checked against ggml in the tests).

Why not ``gguf.quants.quantize`` (gguf-py implements these four types too): it is NOT byte-identical to ggml. It
takes ``max``/``min`` without the C scans' first-of-equal-values rule, so blocks of signed zeros get the wrong sign
in ``d``/``m`` (e.g. Q4_0 of an all-zero block whose first value is -0.0: gguf writes d = +0.0, ggml -0.0; the tests'
"signed_zeros" and "sparse" cases catch it). It is also slower: on 1024 x 4096 float32, one core (AMD EPYC),
M values/s ours vs gguf: Q4_0 247 / 202, Q4_1 160 / 137, Q5_0 220 / 170, Q5_1 156 / 124.

Non-finite policy: a block holding any NaN/Inf is written as zeros except its f16 ``d`` (and ``m``) = 0x7E00.

Example:
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    >>> q = quantize_q4_0(x)
    >>> q.shape, q[0, :2].view(np.float16).tolist(), q[0, 2:6].tolist()
    ((1, 18), [0.125], [128, 145, 145, 162])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._kcommon import F32, apply_nonfinite_policy, check_blocks, chunks, f16_bits

QK = 32
Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q5_1_BYTES = 18, 20, 22, 24
# Blocks per sub-chunk (128K values): the handful of full-size temporaries stay in L2/L3. Measured on 1024 x 4096
# (Q4_0 M values/s): 1024 blocks 207, 4096 247, 16384 126, 65536 154.
BLOCKS_PER_CHUNK = 4096

__all__ = ["quantize_q4_0", "quantize_q4_1", "quantize_q5_0", "quantize_q5_1"]


def _absmax_codes(x: np.ndarray, divisor: float, offset: float, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 core: (d float32 (nb,), codes uint8 (nb, 32), non-finite block mask (nb,)) for blocks x (nb, 32).

    Rows flagged in the mask hold garbage (the caller overwrites them with the non-finite policy).
    """
    ax = np.abs(x)
    idx = np.argmax(ax, axis=1)  # first index of the largest |x|: the C scan only moves on a strictly larger |x|
    mx = np.take_along_axis(x, idx[:, None], axis=1)[:, 0]
    # argmax stops at the first NaN, and an Inf is the largest |x|: so the block is non-finite iff mx is.
    bad = ~np.isfinite(mx)
    # All-zero block: the C scan never leaves its start value +0.0, while x[idx] may be -0.0. Adding +0.0 turns
    # -0.0 into +0.0 and leaves every other value unchanged.
    mx = mx + F32(0)
    d = mx / F32(-divisor)
    return d, _codes(x, d, offset, cap, None), bad


def _minmax_codes(x: np.ndarray, steps: int, cap: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 core: (d, min float32 (nb,), codes uint8 (nb, 32), non-finite block mask) for blocks x (nb, 32)."""
    # first smallest / largest element, so a zero min or max keeps the sign of the first zero, as in the C scan
    mn = np.take_along_axis(x, np.argmin(x, axis=1)[:, None], axis=1)[:, 0]
    mx = np.take_along_axis(x, np.argmax(x, axis=1)[:, None], axis=1)[:, 0]
    # a NaN is picked by both arg-searches, -Inf by argmin, +Inf by argmax
    bad = ~(np.isfinite(mn) & np.isfinite(mx))
    d = (mx - mn) / F32(steps)  # max - min beyond float32 is +Inf in C too
    return d, mn, _codes(x, d, 0.5, cap, mn), bad


def _codes(x: np.ndarray, d: np.ndarray, offset: float, cap: int | None, mn: np.ndarray | None) -> np.ndarray:
    """trunc((x [- mn]) * id + offset) as the C float -> int cast does it, then MIN(cap, .) when cap is given."""
    inv = np.zeros_like(d)
    np.divide(F32(1), d, out=inv, where=d != 0)
    # Rows where x*id or (x-min)*id meets Inf/NaN: id overflowed (d subnormal) or d itself is Inf (max - min
    # overflowed, id = 0 but x - min may be Inf). The C cast of Inf/NaN yields 0x80000000 -> low byte 0.
    wild = ~(np.isfinite(inv) & np.isfinite(d))
    any_wild = bool(wild.any())
    if any_wild:
        inv[wild] = 0
    if mn is None:
        v = x * inv[:, None]
    else:
        v = x - mn[:, None]
        np.multiply(v, inv[:, None], out=v)
    np.add(v, F32(offset), out=v)
    # v >= 0.49 here (|x*id| <= 8(1 + 2**-22) for absmax, (x-min)*id >= 0 for min-max): the uint8 cast truncates
    # exactly like C's (int8_t)/(uint8_t) of a float in range
    q: np.ndarray = v.astype(np.uint8)
    if cap is not None:
        np.minimum(q, np.uint8(cap), out=q)
    if any_wild:
        q[wild] = 0
    return q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """qs[j] = low nibble of element j | low nibble of element j + 16 << 4: (nb, 32) codes -> (nb, 16) bytes."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """The qh uint32 (bit j = bit 4 of element j) as its 4 little-endian bytes: (nb, 32) codes -> (nb, 4)."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _f16_field(v: np.ndarray) -> np.ndarray:
    """float32 (nb,) -> (nb, 2) uint8, the little-endian bytes of GGML_FP32_TO_FP16(v)."""
    return f16_bits(v).view(np.uint8).reshape(-1, 2)


def _run(blocks: np.ndarray, nbytes: int, what: str, fill: Callable[[np.ndarray, np.ndarray], np.ndarray],
         f16_offsets: list[int]) -> np.ndarray:
    """Validate, fill the output chunk by chunk, apply the non-finite policy to the blocks ``fill`` flags."""
    check_blocks(blocks, QK, what)
    out = np.empty((blocks.shape[0], nbytes), dtype=np.uint8)
    # NaN/Inf blocks produce garbage (and numpy warnings) on their way through; their bytes are replaced below.
    with np.errstate(all="ignore"):
        for sl in chunks(blocks.shape[0], BLOCKS_PER_CHUNK):
            bad = fill(blocks[sl], out[sl])
            apply_nonfinite_policy(out[sl], bad, f16_offsets)
    return out


def _fill_q4_0(x: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Blocks x (nb, 32) -> o (nb, 18) as ``d | qs[16]``; returns the non-finite block mask."""
    d, q, bad = _absmax_codes(x, 8, 8.5, 15)
    o[:, 0:2] = _f16_field(d)
    o[:, 2:18] = _nibbles(q)
    return bad


def _fill_q5_0(x: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Blocks x (nb, 32) -> o (nb, 22) as ``d | qh[4] | qs[16]``; returns the non-finite block mask."""
    d, q, bad = _absmax_codes(x, 16, 16.5, 31)
    o[:, 0:2] = _f16_field(d)
    o[:, 2:6] = _high_bits(q)
    o[:, 6:22] = _nibbles(q)
    return bad


def _fill_q4_1(x: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Blocks x (nb, 32) -> o (nb, 20) as ``d | m | qs[16]``; returns the non-finite block mask."""
    d, mn, q, bad = _minmax_codes(x, 15, 15)
    o[:, 0:2] = _f16_field(d)
    o[:, 2:4] = _f16_field(mn)
    o[:, 4:20] = _nibbles(q)
    return bad


def _fill_q5_1(x: np.ndarray, o: np.ndarray) -> np.ndarray:
    """Blocks x (nb, 32) -> o (nb, 24) as ``d | m | qh[4] | qs[16]``; returns the non-finite block mask."""
    d, mn, q, bad = _minmax_codes(x, 31, None)  # (uint8_t) cast and no MIN in ggml: codes stay <= 31 anyway
    o[:, 0:2] = _f16_field(d)
    o[:, 2:4] = _f16_field(mn)
    o[:, 4:8] = _high_bits(q)
    o[:, 8:24] = _nibbles(q)
    return bad


def quantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 of float32 ``blocks`` (n_blocks, 32), C-contiguous -> uint8 (n_blocks, 18); ggml ``quantize_row_q4_0_ref``.

    Example:
        >>> quantize_q4_0(np.full((1, 32), 2.0, np.float32))[0, :4].tolist()   # d = -0.25 (0xB400), codes 0
        [0, 180, 0, 0]
    """
    return _run(blocks, Q4_0_BYTES, "Q4_0", _fill_q4_0, [0])


def quantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1 of float32 ``blocks`` (n_blocks, 32), C-contiguous -> uint8 (n_blocks, 20); ggml ``quantize_row_q4_1_ref``.

    Example:
        >>> q = quantize_q4_1(np.arange(32, dtype=np.float32).reshape(1, 32))
        >>> q[0, :4].view(np.float16).tolist(), q[0, 4:7].tolist()
        ([2.06640625, 0.0], [128, 128, 145])
    """
    return _run(blocks, Q4_1_BYTES, "Q4_1", _fill_q4_1, [0, 2])


def quantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0 of float32 ``blocks`` (n_blocks, 32), C-contiguous -> uint8 (n_blocks, 22); ggml ``quantize_row_q5_0_ref``.

    Example:
        >>> q = quantize_q5_0(np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32))
        >>> q[0, :2].view(np.float16).tolist(), q[0, 2:6].tolist()
        ([0.0625], [0, 0, 255, 255])
    """
    return _run(blocks, Q5_0_BYTES, "Q5_0", _fill_q5_0, [0])


def quantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    """Q5_1 of float32 ``blocks`` (n_blocks, 32), C-contiguous -> uint8 (n_blocks, 24); ggml ``quantize_row_q5_1_ref``.

    Example:
        >>> q = quantize_q5_1(np.arange(32, dtype=np.float32).reshape(1, 32))
        >>> q[0, :4].view(np.float16).tolist(), q[0, 4:8].tolist()
        ([1.0, 0.0], [0, 0, 255, 255])
    """
    return _run(blocks, Q5_1_BYTES, "Q5_1", _fill_q5_1, [0, 2])

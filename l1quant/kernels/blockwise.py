"""Adapters from block quantizers to the kernel contract, and the dequantizers of the 4/5-bit and K types.

A block quantizer maps float32 blocks ``(n_blocks, block_size)`` to their ggml bytes ``(n_blocks, type_size)``
(``q4_q5.py``, ``kquants_qkx2.py``, ``kquants_qx.py``). The converter's kernel contract is wider: a 2-D source of
float32, float16 or raw bf16 bits, an output whose rows may be views into a larger buffer, and the flat index of
the first NaN/Inf as the result. :func:`numpy_block_kernel` bridges the two, decoding the source a few rows at a
time so the float32 copy stays small whatever the chunk size.

Dequantization uses gguf-py's ``gguf.quants.dequantize`` (the same arithmetic as ggml's ``dequantize_row_*``):
a well-kept library, and only verify and the logit checks need it.

Example:
    >>> import numpy as np
    >>> from l1quant.kernels.q4_q5 import quantize_q4_0
    >>> k = numpy_block_kernel(quantize_q4_0, 32)
    >>> out = np.empty((2, 36), np.uint8)
    >>> k(np.ones((2, 64), np.float16), out)
    -1
    >>> dequantize_gguf(out, "Q4_0", (2, 64))[0, :3].tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

from l1quant.kernels._common import SUBCHUNK, Kernel
from l1quant.kernels.floats import first_nonfinite_flat, to_f32

BlockQuantizer = Callable[[np.ndarray], np.ndarray]

#: Source values decoded to float32 per call of the block quantizer: the K-type searches make ~20 passes over
#: their lanes, so the working set should stay in L2.
VALUES_PER_CALL = 2 * SUBCHUNK


def numpy_block_kernel(quantize_blocks: BlockQuantizer, block_size: int) -> Kernel:
    """Wrap ``quantize_blocks`` (float32 (n, block_size) -> uint8 (n, type_size)) as a converter kernel.

    The kernel takes ``x`` (rows, ncols) float32 / float16 / uint16 (bf16 bits) with ``ncols % block_size == 0``
    and ``out`` uint8 (rows, ncols // block_size * type_size), and returns the flat index of the first NaN/Inf
    in ``x`` or -1. Whole rows are processed per call, so a block never straddles two calls.

    Example:
        >>> from l1quant.kernels.q4_q5 import quantize_q5_0
        >>> k = numpy_block_kernel(quantize_q5_0, 32)
        >>> k(np.array([[np.nan] + [0.0] * 31], np.float32), np.empty((1, 22), np.uint8))
        0
    """

    def kernel(x: np.ndarray, out: np.ndarray) -> int:
        return quantize_row_chunks(x, out, VALUES_PER_CALL,
                                   lambda xs: quantize_blocks(xs.reshape(-1, block_size)).reshape(len(xs), -1))

    return kernel


def quantize_row_chunks(x: np.ndarray, out: np.ndarray, values_per_call: int,
                        quantize_rows: Callable[[np.ndarray], np.ndarray]) -> int:
    """The numpy kernels' shared loop: ``x`` (rows, ncols) float32 / float16 / uint16 (bf16 bits) in chunks of whole
    rows (about ``values_per_call`` values each), each widened to float32 and passed to ``quantize_rows`` (float32
    (r, ncols) -> uint8 (r, row bytes)) into ``out``; returns the flat index of the first NaN/Inf in ``x`` or -1.

    Example:
        >>> quantize_row_chunks(np.array([[1.0, np.inf]], np.float32), np.empty((1, 2), np.uint8), 64,
        ...                     lambda xs: np.zeros((len(xs), 2), np.uint8))
        1
    """
    rows, ncols = x.shape
    if rows == 0 or ncols == 0:
        return -1
    step = max(1, values_per_call // ncols)
    first = -1
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        xs = np.ascontiguousarray(to_f32(x[r0:r1]))
        if first < 0:
            i = first_nonfinite_flat(xs.reshape(-1))
            if i >= 0:
                first = r0 * ncols + i
        out[r0:r1] = quantize_rows(xs)
    return first


def dequantize_gguf(data: np.ndarray, type_name: str, shape: Sequence[int]) -> np.ndarray:
    """ggml bytes of ``type_name`` -> float32 array of ``shape`` (numpy order), through gguf-py's dequantizer.

    Example:
        >>> dequantize_gguf(np.zeros(18, np.uint8), "Q4_0", (32,)).shape
        (32,)
    """
    qtype = GGMLQuantizationType[type_name]
    n = math.prod(shape)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN-scale blocks (non-finite policy) decode to NaN
        vals = _gguf_dequantize(np.ascontiguousarray(data).reshape(-1).view(np.uint8), qtype)
    return np.asarray(vals, dtype=np.float32).reshape(-1)[:n].reshape(tuple(shape))

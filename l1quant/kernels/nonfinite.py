"""Where each output type keeps values that can become non-finite, and the scan that finds them.

A finite input can still produce a non-finite *output*: a bf16 weight of 1e5 is beyond F16's range (65504) and
becomes ±inf in F16; a block whose absmax is beyond it gets an infinite f16 scale in Q8_0 (the whole block then
decodes to NaN), and likewise the f16 ``d``/``dmin`` super-block scales of the K-quants. The converter refuses
these exactly as it refuses NaN in the input (same message, same ``--allow-nonfinite`` escape), so it checks the
output bytes of every job whose output type can overflow its input (:func:`can_overflow`) with
:func:`first_nonfinite_output`.

Where to look is each type's record (:attr:`l1quant.kernels.QuantType.float_fields`, ggml's ``ggml-common.h``
layouts): the byte offsets of a block's f16 scales; F32/F16/BF16 are checked value by value.

Example:
    >>> import numpy as np
    >>> out = np.zeros((1, 34), np.uint8); out[0, :2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    >>> first_nonfinite_output("Q8_0", out)
    0
"""

from __future__ import annotations

import numpy as np

from l1quant.kernels import QuantType, describe

#: per float format: the unsigned view and the exponent bits that, all set, mean ±inf or NaN
_EXPONENT = {"f16": (np.uint16, 0x7C00), "bf16": (np.uint16, 0x7F80), "f32": (np.uint32, 0x7F800000)}


def _record(qtype: QuantType | str) -> QuantType | None:
    return qtype if isinstance(qtype, QuantType) else describe(qtype)


def can_overflow(qtype: QuantType | str, source_dtype: str) -> bool:
    """Whether finite ``source_dtype`` values (safetensors names: F32/F16/BF16) can become non-finite in
    ``qtype`` (a record or its name): not when its range holds the source's (``QuantType.never_overflows_from``:
    F32 from anything, F16 from F16, BF16 from BF16/F16); the scan is ~60% of a chunk's kernel time for those.
    Block types always can (their f16 scales).

    Example:
        >>> can_overflow("F16", "BF16"), can_overflow("F32", "BF16"), can_overflow("Q8_0", "F16")
        (True, False, True)
    """
    qt = _record(qtype)
    return qt is None or source_dtype not in qt.never_overflows_from


def first_nonfinite_output(qtype: QuantType | str, out: np.ndarray) -> int | None:
    """Flat index (in values, over the rows of ``out``) of the first value whose output is non-finite -- for a
    block type the first value of the first block with a non-finite scale -- or None when all are finite.

    ``qtype`` is the output's type (a record or its name; its ``float_fields`` say where to look: nothing for a
    type l1quant does not know); ``out`` is the kernel's output: (rows, row_nbytes) uint8, C-contiguous.
    """
    qt = _record(qtype)
    if qt is None or not qt.float_fields:
        return None  # a type without float fields cannot overflow here
    flat = np.ascontiguousarray(out).reshape(-1)
    blocks = flat.reshape(-1, qt.type_size)
    bad: np.ndarray | None = None
    for f in qt.float_fields:
        view, exp = _EXPONENT[f.format]
        width = np.dtype(view).itemsize
        h = np.ascontiguousarray(blocks[:, f.offset:f.offset + width]).view(view).reshape(-1)
        hit = (h & exp) == exp
        bad = hit if bad is None else (bad | hit)
    assert bad is not None
    return int(np.argmax(bad)) * qt.block_size if bad.any() else None

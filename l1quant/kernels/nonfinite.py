"""Where each output type keeps values that can become non-finite, and the scan that finds them.

A finite input can still produce a non-finite *output*: a bf16 weight of 1e5 is beyond F16's range (65504) and
becomes ±inf in F16; a block whose absmax is beyond it gets an infinite f16 scale in Q8_0 (the whole block then
decodes to NaN), and likewise the f16 ``d``/``dmin`` super-block scales of the K-quants. The converter refuses
these exactly as it refuses NaN in the input (same message, same ``--allow-nonfinite`` escape), so it checks the
output bytes of every job whose output type can overflow its input (:func:`can_overflow`) with
:func:`first_nonfinite_output`.

Layouts are ggml's (``ggml-common.h``): for every block type, the byte offsets of its f16 scale fields within one
block. F32/F16/BF16 are checked value by value.

Example:
    >>> import numpy as np
    >>> out = np.zeros((1, 34), np.uint8); out[0, :2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    >>> first_nonfinite_output("Q8_0", out)
    0
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

#: type name -> byte offsets of the block's f16 fields (block sizes come from the type registry, gguf's table)
F16_FIELDS: dict[str, tuple[int, ...]] = {
    "Q8_0": (0,),        # d, qs[32]
    "Q4_0": (0,),        # d, qs[16]
    "Q4_1": (0, 2),      # d, m, qs[16]
    "Q5_0": (0,),        # d, qh[4], qs[16]
    "Q5_1": (0, 2),      # d, m, qh[4], qs[16]
    "Q2_K": (80, 82),    # scales[16], qs[64], d, dmin
    "Q3_K": (108,),      # hmask[32], qs[64], scales[12], d
    "Q4_K": (0, 2),      # d, dmin, scales[12], qs[128]
    "Q5_K": (0, 2),      # d, dmin, scales[12], qh[32], qs[128]
    "Q6_K": (208,),      # ql[128], qh[64], scales[16], d
}

#: (output type, source dtype) pairs where a finite input always gives a finite output: the output's range holds
#: the input's, so the converter skips the output scan for them (it is ~60% of a chunk's kernel time for F32/F16).
NEVER_OVERFLOWS = frozenset({("F32", "F32"), ("F32", "F16"), ("F32", "BF16"), ("F16", "F16"),
                             ("BF16", "BF16"), ("BF16", "F16")})


def can_overflow(type_name: str, source_dtype: str) -> bool:
    """Whether finite ``source_dtype`` values (safetensors names: F32/F16/BF16) can become non-finite in
    ``type_name``. Block types always can (their f16 scales); F16 from BF16/F32 and BF16 from F32 can.

    Example:
        >>> can_overflow("F16", "BF16"), can_overflow("F32", "BF16"), can_overflow("Q8_0", "F16")
        (True, False, True)
    """
    return (type_name, source_dtype) not in NEVER_OVERFLOWS


_F16_EXP = 0x7C00  # all exponent bits set: ±inf or NaN
_BF16_EXP = 0x7F80


def first_nonfinite_output(type_name: str, out: np.ndarray) -> int | None:
    """Flat index (in values, over the rows of ``out``) of the first value whose output is non-finite -- for a
    block type the first value of the first block with a non-finite scale -- or None when all are finite.

    ``out`` is the kernel's output: (rows, row_nbytes) uint8, C-contiguous.
    """
    flat = np.ascontiguousarray(out).reshape(-1)
    if type_name == "F32":
        ok = np.isfinite(flat.view(np.float32))
        return None if ok.all() else int(np.argmin(ok))
    if type_name in ("F16", "BF16"):
        exp = _F16_EXP if type_name == "F16" else _BF16_EXP
        bad = (flat.view(np.uint16) & exp) == exp
        return int(np.argmax(bad)) if bad.any() else None
    offsets = F16_FIELDS.get(type_name)
    if offsets is None:
        return None  # a type without f16 fields cannot overflow here
    per_block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    blocks = flat.reshape(-1, nbytes)
    bad = np.zeros(len(blocks), dtype=bool)
    for off in offsets:
        h = np.ascontiguousarray(blocks[:, off:off + 2]).view(np.uint16).reshape(-1)
        bad |= (h & _F16_EXP) == _F16_EXP
    return int(np.argmax(bad)) * per_block if bad.any() else None

"""Quant-type registry and block math (installs as ``l1quant.kernels``): numpy in, GGUF tensor bytes out.

No files, no model knowledge. Each ``QuantType`` turns a 2-D C-contiguous ``(rows, ncols)`` array of float32,
float16 or uint16 (= raw bf16 bits; numpy has no bf16) into the ggml bytes of that type, bit-exact with
``gguf.quants.quantize(x.astype(float32), type)`` for every finite input (see floats.py and q8_0.py for the
rules and the non-finite policy).

Two implementations sit behind every type: the numpy path (reference and fallback) and, when it was built, the
optional compiled accelerator ``_fastq8`` (kernels/_fastq8.c, several times faster). Tests assert they give
identical bytes. ``impl="ref"`` selects the plain, whole-array reference code.

Example:
    >>> import numpy as np
    >>> from l1quant.kernels import get_quant_type
    >>> qt = get_quant_type("q8_0")
    >>> qt.name, qt.block_size, qt.type_size, qt.row_nbytes(64)
    ('Q8_0', 32, 34, 68)
    >>> data = qt.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64))
    >>> data.shape
    (1, 68)
    >>> bool(np.abs(qt.dequantize(data, (1, 64)) - np.linspace(-1, 1, 64)).max() < 0.005)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from . import _native, floats, q8_0
from ._common import (
    Kernel,
    KernelArgumentError,
    check_out,
    check_source,
    decode_bf16,
)

__all__ = [
    "QUANT_TYPES",
    "KernelArgumentError",
    "QuantType",
    "UnknownQuantTypeError",
    "decode_bf16",
    "first_nonfinite",
    "get_quant_type",
    "native_available",
]

IMPLS = ("auto", "native", "numpy", "ref")


class UnknownQuantTypeError(KernelArgumentError):
    """A quant type name that is not one of f32, f16, bf16, q8_0."""


def native_available() -> bool:
    """True when the compiled accelerator loaded (and L1QUANT_NO_NATIVE is not set).

    Example:
        >>> isinstance(native_available(), bool)
        True
    """
    return _native.AVAILABLE


@dataclass(frozen=True)
class QuantType:
    """One GGUF tensor type: identity, block geometry and its kernels (looked up by name).

    Example:
        >>> get_quant_type("bf16").nbytes((3, 64))
        384
    """

    name: str
    ggml_type: GGMLQuantizationType
    block_size: int
    type_size: int
    file_type: int

    def row_nbytes(self, ncols: int) -> int:
        """Bytes of one row of ``ncols`` values (``ncols`` must be a multiple of ``block_size``).

        Example:
            >>> get_quant_type("q8_0").row_nbytes(1536)
            1632
        """
        if ncols < 0 or ncols % self.block_size != 0:
            raise KernelArgumentError(
                f"{self.name}: row length {ncols} is not a multiple of the block size {self.block_size}"
            )
        return ncols // self.block_size * self.type_size

    def nbytes(self, shape: Sequence[int]) -> int:
        """Bytes of a tensor of numpy ``shape`` (rows..., ncols); the last axis is the one split into blocks.

        Example:
            >>> get_quant_type("f16").nbytes((2, 3, 4))
            48
        """
        if len(shape) == 0:
            return self.row_nbytes(1)
        return math.prod(shape[:-1]) * self.row_nbytes(shape[-1])

    def _kernel(self, impl: str) -> Kernel:
        if impl not in IMPLS:
            raise KernelArgumentError(f"{self.name}: impl must be one of {', '.join(IMPLS)}, found {impl!r}")
        if impl == "ref":
            return _REF_KERNELS[self.name]
        if impl == "native" or (impl == "auto" and _native.AVAILABLE):
            if not _native.AVAILABLE:
                raise KernelArgumentError(f"{self.name}: the compiled accelerator l1quant.kernels._fastq8 is not built")
            return _NATIVE_KERNELS[self.name]
        return _NUMPY_KERNELS[self.name]

    def quantize_checked(
        self, x: np.ndarray, out: np.ndarray | None = None, *, impl: str = "auto"
    ) -> tuple[np.ndarray, int | None]:
        """Convert ``x`` and report where the first NaN/Inf was: ``(out, flat index or None)``.

        This is the converter's entry point: the non-finite scan is folded into the conversion pass, so it
        costs nothing extra. ``x`` is (rows, ncols) float32 / float16 / uint16 (bf16 bits), C-contiguous;
        ``out``, when given, is a uint8 (rows, row_nbytes(ncols)) array with contiguous rows (it may be a view
        into a larger buffer). ``impl``: "auto" (compiled if built, else numpy), "native", "numpy" or "ref".

        Example:
            >>> qt = get_quant_type("f16")
            >>> out, bad = qt.quantize_checked(np.array([[1.0, np.inf]], dtype=np.float32))
            >>> out.view(np.uint16).tolist(), bad
            ([[15360, 31744]], 1)
        """
        x = check_source(x, self.name)
        rows, ncols = x.shape
        out = check_out(out, rows, self.row_nbytes(ncols), self.name)
        first = self._kernel(impl)(x, out)
        return out, (None if first < 0 else first)

    def quantize(self, x: np.ndarray, out: np.ndarray | None = None, *, impl: str = "auto") -> np.ndarray:
        """Convert ``x`` (rows, ncols) to this type's bytes: uint8 (rows, row_nbytes(ncols)), into ``out`` if given.

        Example:
            >>> get_quant_type("bf16").quantize(np.array([[1.0, -2.0]], dtype=np.float32)).view(np.uint16)
            array([[16256, 49152]], dtype=uint16)
        """
        return self.quantize_checked(x, out, impl=impl)[0]

    def dequantize(self, data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Bytes of this type -> float32 array of numpy ``shape`` (what ggml would compute).

        Example:
            >>> qt = get_quant_type("bf16")
            >>> qt.dequantize(qt.quantize(np.array([[0.5, 3.0]], dtype=np.float32)), (1, 2))
            array([[0.5, 3. ]], dtype=float32)
        """
        shape = tuple(int(s) for s in shape)
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if raw.size != self.nbytes(shape):
            raise KernelArgumentError(
                f"{self.name}: {raw.size} bytes do not hold shape {shape} (expected {self.nbytes(shape)} bytes)"
            )
        n = math.prod(shape)
        if self.name == "F32":
            vals = raw.view(np.float32).copy()
        elif self.name == "F16":
            vals = raw.view(np.float16).astype(np.float32)
        elif self.name == "BF16":
            vals = decode_bf16(raw.view(np.uint16))
        else:
            vals = q8_0.dequantize_q8_0(raw, n)
        return vals.reshape(shape)


def _make(ggml_type: GGMLQuantizationType, file_type: LlamaFileType) -> QuantType:
    # Block geometry comes from gguf's table: defined once, upstream.
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    return QuantType(ggml_type.name, ggml_type, block_size, type_size, int(file_type))


QUANT_TYPES: dict[str, QuantType] = {
    qt.name: qt
    for qt in (
        _make(GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
        _make(GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
        _make(GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
        _make(GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    )
}


def _ref_kernel(fn: object) -> Kernel:
    def kernel(x: np.ndarray, out: np.ndarray) -> int:
        out[...] = fn(x)  # type: ignore[operator]
        return floats.first_nonfinite_flat(x.reshape(-1))

    return kernel


_REF_KERNELS: dict[str, Kernel] = {
    "F32": _ref_kernel(floats.f32_ref),
    "F16": _ref_kernel(floats.f16_ref),
    "BF16": _ref_kernel(floats.bf16_ref),
    "Q8_0": _ref_kernel(q8_0.q8_0_ref),
}
_NUMPY_KERNELS: dict[str, Kernel] = {
    "F32": floats.f32_numpy,
    "F16": floats.f16_numpy,
    "BF16": floats.bf16_numpy,
    "Q8_0": q8_0.q8_0_numpy,
}
_NATIVE_KERNELS: dict[str, Kernel] = {
    "F32": _native.f32,
    "F16": _native.f16,
    "BF16": _native.bf16,
    "Q8_0": _native.q8_0,
}


def get_quant_type(name: str) -> QuantType:
    """Look up a quant type by name, case-insensitively: "f32", "f16", "bf16", "q8_0".

    Example:
        >>> get_quant_type("Q8_0").file_type
        7
    """
    qt = QUANT_TYPES.get(str(name).upper())
    if qt is None:
        valid = ", ".join(n.lower() for n in QUANT_TYPES)
        raise UnknownQuantTypeError(f"unknown quant type {name!r}: expected one of {valid}")
    return qt


def first_nonfinite(x: np.ndarray) -> int | None:
    """Flat index of the first NaN/Inf in ``x`` (float32, float16 or uint16 bf16 bits), or None when all finite.

    Cheap (one pass, compiled when available); ``QuantType.quantize_checked`` gives the same answer for free.

    Example:
        >>> first_nonfinite(np.array([0x3F80, 0x7FC0], dtype=np.uint16))
        1
        >>> first_nonfinite(np.zeros(4, np.float32)) is None
        True
    """
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float16, np.uint16):
        raise KernelArgumentError(f"first_nonfinite: expected float32, float16 or uint16 (bf16), found {arr.dtype}")
    flat = np.ascontiguousarray(arr).reshape(-1)
    i = _native.first_nonfinite(flat) if _native.AVAILABLE else floats.first_nonfinite_flat(flat)
    return None if i < 0 else i

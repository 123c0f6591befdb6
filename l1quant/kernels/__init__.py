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

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from . import _native, blockwise, floats, iquants1, iquants2, kquants_imatrix, kquants_qkx2, kquants_qx, q4_q5, q8_0
from .iq_grids import iq_grid
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

#: bytes of a tensor (flat uint8) and its numpy shape -> float32 values, as ggml computes them.
Dequantizer = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]

#: (x, out, imatrix float32 (ncols,)) -> first non-finite flat index or -1: a kernel with importance weights.
ImatrixKernel = Callable[[np.ndarray, np.ndarray, np.ndarray], int]


class UnknownQuantTypeError(KernelArgumentError):
    """A quant type name that is not in :data:`QUANT_TYPES`."""


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
    #: ``general.file_type`` of a file whose matrices are all this type (None for the K types: the mix decides).
    file_type: int | None
    numpy_kernel: Kernel = field(repr=False, compare=False)
    ref_kernel: Kernel = field(repr=False, compare=False)
    native_kernel: Kernel | None = field(repr=False, compare=False)
    dequantizer: Dequantizer = field(repr=False, compare=False)
    #: ggml's importance-weighted search (``quantize_row_<type>_impl``), numpy and compiled; None for the types
    #: whose quantization ignores an importance matrix (F32, F16, BF16, Q8_0).
    numpy_imatrix_kernel: ImatrixKernel | None = field(default=None, repr=False, compare=False)
    native_imatrix_kernel: ImatrixKernel | None = field(default=None, repr=False, compare=False)

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
            return self.ref_kernel
        if impl == "native" or (impl == "auto" and self.native_kernel is not None):
            if self.native_kernel is None:
                raise KernelArgumentError(f"{self.name}: the compiled accelerator l1quant.kernels._fastq8 is not built")
            return self.native_kernel
        if impl == "auto" and self.native_kernel is None:
            _native.note_numpy_fallback()  # a missing build, not a choice: say so once
        return self.numpy_kernel

    def _imatrix_kernel(self, impl: str) -> ImatrixKernel:
        if impl not in IMPLS:
            raise KernelArgumentError(f"{self.name}: impl must be one of {', '.join(IMPLS)}, found {impl!r}")
        assert self.numpy_imatrix_kernel is not None
        if impl == "native" or (impl == "auto" and self.native_imatrix_kernel is not None):
            if self.native_imatrix_kernel is None:
                raise KernelArgumentError(f"{self.name}: the compiled accelerator l1quant.kernels._fastq8 is not built")
            return self.native_imatrix_kernel
        return self.numpy_imatrix_kernel  # also impl="ref": there is no plainer weighted search

    def quantize_checked(
        self, x: np.ndarray, out: np.ndarray | None = None, *, impl: str = "auto", imatrix: np.ndarray | None = None
    ) -> tuple[np.ndarray, int | None]:
        """Convert ``x`` and report where the first NaN/Inf was: ``(out, flat index or None)``.

        This is the converter's entry point: the non-finite scan is folded into the conversion pass, so it
        costs nothing extra. ``x`` is (rows, ncols) float32 / float16 / uint16 (bf16 bits), C-contiguous;
        ``out``, when given, is a uint8 (rows, row_nbytes(ncols)) array with contiguous rows (it may be a view
        into a larger buffer). ``impl``: "auto" (compiled if built, else numpy), "native", "numpy" or "ref".
        ``imatrix``: importance weights, float32 (ncols,), finite (as llama-quantize passes an imatrix entry's
        per-column means to ``ggml_quantize_chunk``): Q4_0..Q5_1 and Q2_K..Q6_K then run ggml's weighted searches
        (kernels/kquants_imatrix.py); the other types ignore it, as ggml does. None: the unweighted path.

        Example:
            >>> qt = get_quant_type("f16")
            >>> out, bad = qt.quantize_checked(np.array([[1.0, np.inf]], dtype=np.float32))
            >>> out.view(np.uint16).tolist(), bad
            ([[15360, 31744]], 1)
        """
        x = check_source(x, self.name)
        rows, ncols = x.shape
        out = check_out(out, rows, self.row_nbytes(ncols), self.name)
        if imatrix is not None:
            qw = kquants_imatrix.check_imatrix(imatrix, ncols, self.name)
            if self.numpy_imatrix_kernel is not None:
                first = self._imatrix_kernel(impl)(x, out, qw)
                return out, (None if first < 0 else first)
        first = self._kernel(impl)(x, out)
        return out, (None if first < 0 else first)

    def quantize(
        self, x: np.ndarray, out: np.ndarray | None = None, *, impl: str = "auto", imatrix: np.ndarray | None = None
    ) -> np.ndarray:
        """Convert ``x`` (rows, ncols) to this type's bytes: uint8 (rows, row_nbytes(ncols)), into ``out`` if given.

        Example:
            >>> get_quant_type("bf16").quantize(np.array([[1.0, -2.0]], dtype=np.float32)).view(np.uint16)
            array([[16256, 49152]], dtype=uint16)
        """
        return self.quantize_checked(x, out, impl=impl, imatrix=imatrix)[0]

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
        return self.dequantizer(raw, shape)


def _dequantize_q8_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return q8_0.dequantize_q8_0(raw, math.prod(shape)).reshape(shape)


def _dequantize_f32(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return raw.view(np.float32).copy().reshape(shape)


def _dequantize_f16(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return raw.view(np.float16).astype(np.float32).reshape(shape)


def _dequantize_bf16(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return decode_bf16(raw.view(np.uint16)).reshape(shape)


def _ref_kernel(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    def kernel(x: np.ndarray, out: np.ndarray) -> int:
        out[...] = fn(x)
        return floats.first_nonfinite_flat(x.reshape(-1))

    return kernel


def _native_block_kernel(ggml_type: GGMLQuantizationType) -> Kernel | None:
    # present once the compiled module carries the block kernels (kernels/_kquants.c)
    kquant = getattr(_native, "kquant", None)
    if not _native.AVAILABLE or kquant is None or not hasattr(_native._mod, "kquant"):
        return None
    return functools.partial(kquant, int(ggml_type))


def _native_imatrix_kernel(ggml_type: GGMLQuantizationType) -> ImatrixKernel | None:
    if not _native.AVAILABLE or not hasattr(_native._mod, "kquant_imatrix"):
        return None
    return functools.partial(_native.kquant_imatrix, int(ggml_type))


def _make(ggml_type: GGMLQuantizationType, file_type: LlamaFileType | None, *, numpy: Kernel, ref: Kernel,
          native: Kernel | None, dequantize: Dequantizer) -> QuantType:
    # Block geometry comes from gguf's table: defined once, upstream.
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    weighted = ggml_type.name in kquants_imatrix.IMATRIX_TYPES
    return QuantType(ggml_type.name, ggml_type, block_size, type_size, None if file_type is None else int(file_type),
                     numpy, ref, native, dequantize,
                     kquants_imatrix.imatrix_kernel(ggml_type.name) if weighted else None,
                     _native_imatrix_kernel(ggml_type) if weighted else None)


def _block(ggml_type: GGMLQuantizationType, quantize_blocks: Callable[[np.ndarray], np.ndarray],
           file_type: LlamaFileType | None = None) -> QuantType:
    """A 4/5-bit or K type: the lane-wise numpy block quantizer is also the reference (there is no plainer one)."""
    kernel = blockwise.numpy_block_kernel(quantize_blocks, GGML_QUANT_SIZES[ggml_type][0])
    name = ggml_type.name
    return _make(ggml_type, file_type, numpy=kernel, ref=kernel, native=_native_block_kernel(ggml_type),
                 dequantize=lambda raw, shape: blockwise.dequantize_gguf(raw, name, shape))


def _iq(ggml_type: GGMLQuantizationType) -> QuantType:
    """A grid type (kernels/iquants2.py, iquants1.py; compiled: _iquants2.c). Without an importance matrix the
    kernels of IQ2_XXS, IQ2_XS and IQ1_S raise KernelArgumentError (ggml asserts one); the grid tables are built on
    first use, not at import."""
    name = ggml_type.name
    weighted = (iquants1 if name in iquants1.IQ1_TYPES else iquants2).numpy_kernel(name)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]

    def plain(x: np.ndarray, out: np.ndarray) -> int:
        return weighted(x, out, None)

    native_plain = native_weighted = None
    if _native.AVAILABLE and hasattr(_native._mod, "iquant"):
        def native_weighted(x: np.ndarray, out: np.ndarray, qw: np.ndarray | None) -> int:
            if qw is None and name in ("IQ2_XXS", "IQ2_XS", "IQ1_S"):
                raise KernelArgumentError(f"{name} needs an importance matrix (ggml refuses to quantize it without one)")
            g = iq_grid(name)
            return _native.iquant(int(ggml_type), x, out, qw, g.levels, g.kmap, g.neighbours, g.neighbour_levels)

        def native_plain(x: np.ndarray, out: np.ndarray) -> int:
            return native_weighted(x, out, None)

    return QuantType(name, ggml_type, block_size, type_size, None, plain, plain, native_plain,
                     lambda raw, shape: blockwise.dequantize_gguf(raw, name, shape), weighted, native_weighted)


_T = GGMLQuantizationType
_F = LlamaFileType
QUANT_TYPES: dict[str, QuantType] = {
    qt.name: qt
    for qt in (
        _make(_T.F32, _F.ALL_F32, numpy=floats.f32_numpy, ref=_ref_kernel(floats.f32_ref),
              native=_native.f32 if _native.AVAILABLE else None, dequantize=_dequantize_f32),
        _make(_T.F16, _F.MOSTLY_F16, numpy=floats.f16_numpy, ref=_ref_kernel(floats.f16_ref),
              native=_native.f16 if _native.AVAILABLE else None, dequantize=_dequantize_f16),
        _make(_T.BF16, _F.MOSTLY_BF16, numpy=floats.bf16_numpy, ref=_ref_kernel(floats.bf16_ref),
              native=_native.bf16 if _native.AVAILABLE else None, dequantize=_dequantize_bf16),
        _make(_T.Q8_0, _F.MOSTLY_Q8_0, numpy=q8_0.q8_0_numpy, ref=_ref_kernel(q8_0.q8_0_ref),
              native=_native.q8_0 if _native.AVAILABLE else None, dequantize=_dequantize_q8_0),
        # The file type of a K type depends on the mix (Q4_K_S vs Q4_K_M ...): the mix table owns it.
        _block(_T.Q4_0, q4_q5.quantize_q4_0, _F.MOSTLY_Q4_0),
        _block(_T.Q4_1, q4_q5.quantize_q4_1, _F.MOSTLY_Q4_1),
        _block(_T.Q5_0, q4_q5.quantize_q5_0, _F.MOSTLY_Q5_0),
        _block(_T.Q5_1, q4_q5.quantize_q5_1, _F.MOSTLY_Q5_1),
        _block(_T.Q2_K, kquants_qkx2.quantize_q2_k),
        _block(_T.Q3_K, kquants_qx.quantize_q3_k),
        _block(_T.Q4_K, kquants_qkx2.quantize_q4_k),
        _block(_T.Q5_K, kquants_qkx2.quantize_q5_k),
        _block(_T.Q6_K, kquants_qx.quantize_q6_k, _F.MOSTLY_Q6_K),
        # The grid types: the mix decides the file type (IQ2_M's tensors are IQ2_S and others ...).
        _iq(_T.IQ2_XXS),
        _iq(_T.IQ2_XS),
        _iq(_T.IQ2_S),
        _iq(_T.IQ1_S),
        _iq(_T.IQ1_M),
    )
}


def get_quant_type(name: str) -> QuantType:
    """Look up a GGML tensor type by name, case-insensitively ("f16", "q8_0", "q4_k", ...; see QUANT_TYPES).

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

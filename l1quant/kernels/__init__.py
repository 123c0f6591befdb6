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

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from . import (
    _native,
    blockwise,
    floats,
    iquants1,
    iquants2,
    iquants3,
    iquants_nl,
    kquants_imatrix,
    kquants_qkx2,
    kquants_qx,
    q4_q5,
    q8_0,
)
from .iq_grids import iq_grid
from .iq3_grids import iq3_tables, lane_codes
from ._common import (
    Kernel,
    KernelArgumentError,
    check_out,
    check_source,
    decode_bf16,
)

__all__ = [
    "KNOWN_TYPES",
    "QUANT_TYPES",
    "FloatField",
    "KernelArgumentError",
    "NoiseModel",
    "QuantType",
    "UnknownQuantTypeError",
    "decode_bf16",
    "describe",
    "first_nonfinite",
    "get_quant_type",
    "native_available",
    "register",
    "registered",
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
class FloatField:
    """A float inside one block (``ggml-common.h``): its byte offset and format (``f16``, ``bf16`` or ``f32``).

    The non-finite scan (:mod:`l1quant.kernels.nonfinite`) reads exactly these: a block type's f16 scales
    (Q8_0's ``d``, Q4_K's ``d`` and ``dmin``...) or a float type's one value.
    """

    offset: int
    format: str = "f16"


@dataclass(frozen=True)
class NoiseModel:
    """Rounding noise of a block type, for verify's per-tensor net (``check/fidelity.py``): ``group`` values share
    a scale; a group's step is its range (``2*amax`` when ``symmetric``, ``max-min`` otherwise) over
    ``2**bits - 1`` levels."""

    group: int
    bits: int
    symmetric: bool


@dataclass(frozen=True)
class QuantType:
    """One GGML tensor type, every fact l1quant knows about it in one record (looked up by name).

    * identity and block layout: ``name`` (gguf's ``GGMLQuantizationType`` name), ``ggml_type``, ``block_size``
      and ``type_size`` (gguf's ``GGML_QUANT_SIZES``);
    * ``file_type``: the ``general.file_type`` of a file whose matrices are all this type (None where only a mix
      names the file: Q2_K..Q5_K); ``outtype``: the converter writes it directly (``convert_hf_to_gguf.py
      --outtype``: f32, f16, bf16, q8_0), with the converter's rule, instead of as a llama-quantize mix;
    * kernels: ``numpy_kernel``, ``ref_kernel`` (the plain reference), ``native_kernel`` (compiled, when built)
      and the ``dequantizer``; all None for a type l1quant describes but does not serve (the i-quants,
      the ternary types: llama-quantize's rules still name them);
    * ``float_fields``: where the block keeps floats that a finite input can overflow (the non-finite scan);
      ``never_overflows_from``: source dtypes (safetensors names) whose finite values always stay finite here;
    * ``fallback``: llama-quantize's shape fallback (``tensor_type_fallback``) when a row does not fill whole
      blocks (None: F16 if even a 32-block does not fit);
    * ``noise``: the rounding-noise model verify checks a tensor against (None: no model; Q8_0 has an exact
      bound of its own);
    * ``takes_imatrix``: llama.cpp's quantizer uses an importance matrix when given one; ``needs_imatrix``:
      llama-quantize refuses the type without one (``tensor_requires_imatrix``).

    Adding a type is adding one record (:func:`register`, or the tables below).

    Example:
        >>> get_quant_type("bf16").nbytes((3, 64))
        384
        >>> q = get_quant_type("q4_k"); q.fallback.name, q.noise, q.takes_imatrix, q.needs_imatrix
        ('Q5_0', NoiseModel(group=32, bits=4, symmetric=False), True, False)
    """

    name: str
    ggml_type: GGMLQuantizationType
    block_size: int
    type_size: int
    file_type: int | None
    numpy_kernel: Kernel | None = field(repr=False, compare=False)
    ref_kernel: Kernel | None = field(repr=False, compare=False)
    native_kernel: Kernel | None = field(repr=False, compare=False)
    dequantizer: Dequantizer | None = field(repr=False, compare=False)
    #: ggml's importance-weighted search (``quantize_row_<type>_impl``), numpy and compiled; None for the types
    #: whose quantization ignores an importance matrix (F32, F16, BF16, Q8_0) or that l1quant does not serve.
    numpy_imatrix_kernel: ImatrixKernel | None = field(default=None, repr=False, compare=False)
    native_imatrix_kernel: ImatrixKernel | None = field(default=None, repr=False, compare=False)
    outtype: bool = False
    float_fields: tuple[FloatField, ...] = ()
    never_overflows_from: frozenset[str] = frozenset()
    fallback: GGMLQuantizationType | None = None
    noise: NoiseModel | None = None
    takes_imatrix: bool = False
    needs_imatrix: bool = False

    @property
    def served(self) -> bool:
        """True when l1quant has kernels for the type (it can write and read it)."""
        return self.numpy_kernel is not None and self.dequantizer is not None

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
        if self.numpy_kernel is None or self.ref_kernel is None:
            raise UnknownQuantTypeError(f"{self.name}: l1quant has no kernel for this type")
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
        (kernels/kquants_imatrix.py), as do the i-quants (kernels/iquants_nl.py, iquants3.py, iquants2.py,
        iquants1.py); the other types ignore it, as ggml does. None: the unweighted path (IQ2_XXS, IQ2_XS and
        IQ1_S refuse it, as ggml's quantizers do).

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
        if self.dequantizer is None:
            raise UnknownQuantTypeError(f"{self.name}: l1quant has no dequantizer for this type")
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if raw.size != self.nbytes(shape):
            raise KernelArgumentError(
                f"{self.name}: {raw.size} bytes do not hold shape {shape} (expected {self.nbytes(shape)} bytes)"
            )
        return self.dequantizer(raw, shape)


def _dequantize_q8_0(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return q8_0.dequantize_q8_0(raw, math.prod(shape)).reshape(shape)


def _dequantize_f32(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    result: np.ndarray = raw.view(np.float32).copy().reshape(shape)
    return result


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
    if not _native.AVAILABLE or kquant is None or not _native.has("kquant"):
        return None
    return functools.partial(kquant, int(ggml_type))


def _native_imatrix_kernel(ggml_type: GGMLQuantizationType) -> ImatrixKernel | None:
    if not _native.AVAILABLE or not _native.has("kquant_imatrix"):
        return None
    return functools.partial(_native.kquant_imatrix, int(ggml_type))


def _make(ggml_type: GGMLQuantizationType, file_type: LlamaFileType | None, *, numpy: Kernel | None = None,
          ref: Kernel | None = None, native: Kernel | None = None, dequantize: Dequantizer | None = None,
          **facts: object) -> QuantType:
    # Block geometry comes from gguf's table: defined once, upstream.
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    weighted = ggml_type.name in kquants_imatrix.IMATRIX_TYPES
    return QuantType(ggml_type.name, ggml_type, block_size, type_size, None if file_type is None else int(file_type),
                     numpy, ref, native, dequantize,
                     kquants_imatrix.imatrix_kernel(ggml_type.name) if weighted else None,
                     _native_imatrix_kernel(ggml_type) if weighted else None,
                     **facts)  # type: ignore[arg-type]


def _block(ggml_type: GGMLQuantizationType, quantize_blocks: Callable[[np.ndarray], np.ndarray],
           file_type: LlamaFileType | None = None, **facts: object) -> QuantType:
    """A 4/5-bit or K type: the lane-wise numpy block quantizer is also the reference (there is no plainer one)."""
    kernel = blockwise.numpy_block_kernel(quantize_blocks, GGML_QUANT_SIZES[ggml_type][0])
    name = ggml_type.name
    return _make(ggml_type, file_type, numpy=kernel, ref=kernel, native=_native_block_kernel(ggml_type),
                 dequantize=lambda raw, shape: blockwise.dequantize_gguf(raw, name, shape), **facts)


def _f16(*offsets: int) -> tuple[FloatField, ...]:
    return tuple(FloatField(o, "f16") for o in offsets)


@functools.lru_cache(maxsize=None)
def _iq_tables(ggml_type: GGMLQuantizationType) -> tuple[np.ndarray, ...]:
    # The compiled kernels read the tables built once per process in Python (one home: iq3_grids.py, from gguf-py),
    # on first use: deriving the IQ3 neighbour lists takes a moment that a process not using IQ3 should not pay.
    if ggml_type.name in iquants_nl.IQ4_TYPES:
        return (iquants_nl.KVALUES,)
    size = 256 if ggml_type == GGMLQuantizationType.IQ3_XXS else 512
    t = iq3_tables(size)
    return (t.grid, t.kmap, t.neighbours, lane_codes(size))


def _iq(ggml_type: GGMLQuantizationType, **facts: object) -> QuantType:
    """A served i-quant (IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S): ggml runs the same search with and without importance
    weights (``quantize_<type>`` with quant_weights NULL or not), numpy and compiled; ``facts``: the record's
    other fields."""
    name = ggml_type.name
    make = iquants_nl.iq4_kernel if name in iquants_nl.IQ4_TYPES else iquants3.iq3_kernel
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    native: Kernel | None = None
    native_imatrix: ImatrixKernel | None = None
    if _native.AVAILABLE and _native.has("iquant"):

        def compiled(x: np.ndarray, out: np.ndarray) -> int:
            return _native.iquant(int(ggml_type), x, out, None, _iq_tables(ggml_type))

        def compiled_imatrix(x: np.ndarray, out: np.ndarray, qw: np.ndarray) -> int:
            return _native.iquant(int(ggml_type), x, out, qw, _iq_tables(ggml_type))

        native, native_imatrix = compiled, compiled_imatrix

    numpy_kernel = make(name, False)
    return QuantType(name, ggml_type, block_size, type_size, None, numpy_kernel, numpy_kernel, native,
                     lambda raw, shape: blockwise.dequantize_gguf(raw, name, shape),
                     make(name, True), native_imatrix, **facts)  # type: ignore[arg-type]


_T = GGMLQuantizationType
_F = LlamaFileType


def _iq_grid(ggml_type: GGMLQuantizationType, **facts: object) -> QuantType:
    """A served grid i-quant of 2 bits and below (IQ2_XXS, IQ2_XS, IQ2_S: kernels/iquants2.py; IQ1_S, IQ1_M:
    iquants1.py; compiled: _iquants2.c). ggml's kernels for IQ2_XXS, IQ2_XS and IQ1_S assert an importance
    matrix: without one these kernels raise KernelArgumentError; IQ2_S and IQ1_M run without (their own weights).
    The grid tables (iq_grids.py) are built on first use, not at import. ``facts``: the record's other fields."""
    name = ggml_type.name
    weighted: Callable[[np.ndarray, np.ndarray, np.ndarray | None], int] = (
        iquants1 if name in iquants1.IQ1_TYPES else iquants2).numpy_kernel(name)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]

    def plain(x: np.ndarray, out: np.ndarray) -> int:
        return weighted(x, out, None)

    native: Kernel | None = None
    native_imatrix: ImatrixKernel | None = None
    if _native.AVAILABLE and _native.has("iquant_grid"):

        def compiled_imatrix(x: np.ndarray, out: np.ndarray, qw: np.ndarray | None) -> int:
            if qw is None and name in ("IQ2_XXS", "IQ2_XS", "IQ1_S"):
                raise KernelArgumentError(f"{name} needs an importance matrix (ggml refuses to quantize it without one)")
            g = iq_grid(name)
            return _native.iquant_grid(int(ggml_type), x, out, qw, g.levels, g.kmap, g.neighbours, g.neighbour_codes)

        def compiled(x: np.ndarray, out: np.ndarray) -> int:
            return compiled_imatrix(x, out, None)

        native, native_imatrix = compiled, compiled_imatrix
    return QuantType(name, ggml_type, block_size, type_size, None, plain, plain, native,
                     lambda raw, shape: blockwise.dequantize_gguf(raw, name, shape), weighted, native_imatrix,
                     **facts)  # type: ignore[arg-type]


def _iquant(ggml_type: GGMLQuantizationType, *, needs_imatrix: bool = False) -> QuantType:
    """An i-quant l1quant describes (the rules name it) but does not serve: IQ4_NL is its shape fallback."""
    return _make(ggml_type, None, fallback=GGMLQuantizationType.IQ4_NL, takes_imatrix=True,
                 needs_imatrix=needs_imatrix)


#: Every type l1quant knows, served or only described, by name. Float fields: ggml-common.h's block structs.
KNOWN_TYPES: dict[str, QuantType] = {
    qt.name: qt
    for qt in (
        _make(_T.F32, _F.ALL_F32, numpy=floats.f32_numpy, ref=_ref_kernel(floats.f32_ref),
              native=_native.f32 if _native.AVAILABLE else None, dequantize=_dequantize_f32, outtype=True,
              float_fields=(FloatField(0, "f32"),), never_overflows_from=frozenset({"F32", "F16", "BF16"})),
        _make(_T.F16, _F.MOSTLY_F16, numpy=floats.f16_numpy, ref=_ref_kernel(floats.f16_ref),
              native=_native.f16 if _native.AVAILABLE else None, dequantize=_dequantize_f16, outtype=True,
              float_fields=_f16(0), never_overflows_from=frozenset({"F16"})),
        _make(_T.BF16, _F.MOSTLY_BF16, numpy=floats.bf16_numpy, ref=_ref_kernel(floats.bf16_ref),
              native=_native.bf16 if _native.AVAILABLE else None, dequantize=_dequantize_bf16, outtype=True,
              float_fields=(FloatField(0, "bf16"),), never_overflows_from=frozenset({"BF16", "F16"})),
        _make(_T.Q8_0, _F.MOSTLY_Q8_0, numpy=q8_0.q8_0_numpy, ref=_ref_kernel(q8_0.q8_0_ref),
              native=_native.q8_0 if _native.AVAILABLE else None, dequantize=_dequantize_q8_0, outtype=True,
              float_fields=_f16(0)),                                      # d, qs[32]
        # The file type of a K type depends on the mix (Q4_K_S vs Q4_K_M ...): the mix table owns it.
        _block(_T.Q4_0, q4_q5.quantize_q4_0, _F.MOSTLY_Q4_0, float_fields=_f16(0),         # d, qs[16]
               noise=NoiseModel(32, 4, True), takes_imatrix=True),
        _block(_T.Q4_1, q4_q5.quantize_q4_1, _F.MOSTLY_Q4_1, float_fields=_f16(0, 2),      # d, m, qs[16]
               noise=NoiseModel(32, 4, False), takes_imatrix=True),
        _block(_T.Q5_0, q4_q5.quantize_q5_0, _F.MOSTLY_Q5_0, float_fields=_f16(0),         # d, qh[4], qs[16]
               noise=NoiseModel(32, 5, True), takes_imatrix=True),
        _block(_T.Q5_1, q4_q5.quantize_q5_1, _F.MOSTLY_Q5_1, float_fields=_f16(0, 2),      # d, m, qh[4], qs[16]
               noise=NoiseModel(32, 5, False), takes_imatrix=True),
        _block(_T.Q2_K, kquants_qkx2.quantize_q2_k, float_fields=_f16(80, 82),   # scales[16], qs[64], d, dmin
               fallback=_T.Q4_0, noise=NoiseModel(16, 2, False), takes_imatrix=True),
        _block(_T.Q3_K, kquants_qx.quantize_q3_k, float_fields=_f16(108),        # hmask[32], qs[64], scales[12], d
               fallback=_T.Q4_0, noise=NoiseModel(16, 3, True), takes_imatrix=True),
        _block(_T.Q4_K, kquants_qkx2.quantize_q4_k, float_fields=_f16(0, 2),     # d, dmin, scales[12], qs[128]
               fallback=_T.Q5_0, noise=NoiseModel(32, 4, False), takes_imatrix=True),
        _block(_T.Q5_K, kquants_qkx2.quantize_q5_k, float_fields=_f16(0, 2),     # d, dmin, scales[12], qh, qs
               fallback=_T.Q5_1, noise=NoiseModel(32, 5, False), takes_imatrix=True),
        _block(_T.Q6_K, kquants_qx.quantize_q6_k, _F.MOSTLY_Q6_K, float_fields=_f16(208),  # ql, qh, scales, d
               fallback=_T.Q8_0, noise=NoiseModel(16, 6, True), takes_imatrix=True),
        # Described, not served: llama-quantize's rules name them (shape fallback, importance matrix).
        _make(_T.TQ1_0, None, fallback=_T.Q4_0),
        _make(_T.TQ2_0, None, fallback=_T.Q4_0),
        # Served grid i-quants of 2 bits and below (needs_imatrix: llama-quantize's rule; ggml's kernels for IQ2_S
        # and IQ1_M also run without). IQ1_M keeps its f16 scale split into nibbles: no plain float field.
        # Noise models (a 2-bit symmetric uniform quantizer over the type's scale group: 16 values for IQ2_XS/IQ2_S,
        # whose 4-bit scales cover 16, else 32), measured as the IQ3/IQ4 ones below, with random importance weights:
        # rel RMSE / model on 256x1024 random-normal (Student-t4) weights is IQ2_S 0.63 (0.62), IQ2_XS 0.76 (0.69),
        # IQ2_XXS 0.77 (0.67), IQ1_M 1.26 (0.95), IQ1_S 1.10 (0.94): inside NOISE_SLACK.
        _iq_grid(_T.IQ1_S, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,     # d, qs[32], qh[8]
                 needs_imatrix=True, noise=NoiseModel(32, 2, True)),
        _iq_grid(_T.IQ1_M, fallback=_T.IQ4_NL, takes_imatrix=True, needs_imatrix=True,       # qs, qh, scales
                 noise=NoiseModel(32, 2, True)),
        _iq_grid(_T.IQ2_XXS, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,   # d, qs[32]
                 needs_imatrix=True, noise=NoiseModel(32, 2, True)),
        _iq_grid(_T.IQ2_XS, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,    # d, qs[32], scales
                 needs_imatrix=True, noise=NoiseModel(16, 2, True)),
        _iq_grid(_T.IQ2_S, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,     # d, qs, qh, scales
                 needs_imatrix=True, noise=NoiseModel(16, 2, True)),
        # Served i-quants; their file types depend on the mix as for the K types (IQ3_M vs IQ3_S ...).
        # Noise models (one scale per 32 values; the grids' values as a symmetric uniform quantizer of that many
        # bits), measured as the K types' were: rel RMSE / model on 256x1024 random-normal (and Student-t4) weights
        # is IQ4_NL 0.83 (0.74), IQ4_XS 0.83 (0.75), IQ3_S 0.84 (0.73), IQ3_XXS 1.08 (0.94), inside NOISE_SLACK.
        _iq(_T.IQ3_XXS, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,   # d, qs[96]
            needs_imatrix=True, noise=NoiseModel(32, 3, True)),
        _iq(_T.IQ3_S, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,     # d, qs, qh, signs, scales
            noise=NoiseModel(32, 3, True)),
        _iq(_T.IQ4_XS, float_fields=_f16(0), fallback=_T.IQ4_NL, takes_imatrix=True,    # d, scales_h/_l, qs[128]
            noise=NoiseModel(32, 4, True)),
        _iq(_T.IQ4_NL, float_fields=_f16(0), takes_imatrix=True, noise=NoiseModel(32, 4, True)),  # d, qs[16]
    )
}

#: The types l1quant writes and reads (kernels and a dequantizer), by name: the served part of :data:`KNOWN_TYPES`
#: (:func:`register` keeps both).
QUANT_TYPES: dict[str, QuantType] = {n: qt for n, qt in KNOWN_TYPES.items() if qt.served}


def get_quant_type(name: str | GGMLQuantizationType) -> QuantType:
    """Look up a GGML tensor type by name, case-insensitively ("f16", "q8_0", "q4_k", ...; see QUANT_TYPES), or by
    its ``GGMLQuantizationType``.

    Raises :class:`UnknownQuantTypeError` for a type l1quant has no kernels for.

    Example:
        >>> get_quant_type("Q8_0").file_type
        7
    """
    qt = QUANT_TYPES.get(name.name if isinstance(name, GGMLQuantizationType) else str(name).upper())
    if qt is None:
        valid = ", ".join(n.lower() for n in QUANT_TYPES)
        raise UnknownQuantTypeError(f"unknown quant type {name!r}: expected one of {valid}")
    return qt


def describe(t: GGMLQuantizationType | str) -> QuantType | None:
    """The record of ``t`` (a GGML type or its name, any case), served or only described; None when l1quant
    knows nothing about it beyond gguf's block table.

    Example:
        >>> describe("iq2_xxs").needs_imatrix, describe("tq1_0").served, describe("I8") is None
        (True, False, True)
    """
    return KNOWN_TYPES.get(t.name if isinstance(t, GGMLQuantizationType) else str(t).upper())


def register(qt: QuantType) -> None:
    """Add a type: after this every module serves it (convert with ``--type`` when ``qt.outtype``, verify,
    dequantize, the non-finite scan, the fidelity noise net). ``qt`` needs its kernels and dequantizer; its
    ``ggml_type`` is one of gguf's (the file format names types by number) with gguf's block layout and name, not
    one already served (a described type, such as an i-quant, is replaced); its ``file_type`` number, if any, is
    not taken. Raises :class:`KernelArgumentError` otherwise.

    Example:
        >>> register(get_quant_type("q8_0"))
        Traceback (most recent call last):
        ...
        l1quant.kernels._common.KernelArgumentError: quant type Q8_0 is already registered
    """
    if qt.name in QUANT_TYPES:
        raise KernelArgumentError(f"quant type {qt.name} is already registered")
    if qt.name != qt.ggml_type.name or GGML_QUANT_SIZES.get(qt.ggml_type) != (qt.block_size, qt.type_size):
        raise KernelArgumentError(f"quant type {qt.name}: name and block layout must be gguf's for {qt.ggml_type!r}")
    if not qt.served:
        raise KernelArgumentError(f"quant type {qt.name}: a kernel and a dequantizer are required")
    taken = {k.file_type for k in KNOWN_TYPES.values()} | {int(f) for f in LlamaFileType}
    if qt.file_type is not None and qt.file_type in taken:
        raise KernelArgumentError(f"quant type {qt.name}: general.file_type {qt.file_type} is taken")
    KNOWN_TYPES[qt.name] = qt
    QUANT_TYPES[qt.name] = qt


@contextlib.contextmanager
def registered(qt: QuantType) -> Iterator[QuantType]:
    """:func:`register` ``qt`` for the ``with`` block only (tests, experiments); on exit the registry is as before.

    Example:
        >>> import dataclasses
        >>> tq2 = dataclasses.replace(get_quant_type("q4_k"), name="TQ2_0", ggml_type=GGMLQuantizationType.TQ2_0,
        ...                           type_size=66, file_type=None)  # a stand-in: Q4_K's kernels, never called here
        >>> with registered(tq2):
        ...     get_quant_type("tq2_0").served
        True
        >>> describe("tq2_0").served, "TQ2_0" in QUANT_TYPES
        (False, False)
    """
    before = KNOWN_TYPES.get(qt.name)
    register(qt)
    try:
        yield qt
    finally:
        QUANT_TYPES.pop(qt.name, None)
        if before is None:
            KNOWN_TYPES.pop(qt.name, None)
        else:
            KNOWN_TYPES[qt.name] = before


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

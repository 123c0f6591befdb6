"""Wrapper around the optional compiled accelerator ``l1quant.kernels._fastq8`` (see kernels/_fastq8.c).

``AVAILABLE`` says whether it loaded; ``L1QUANT_NO_NATIVE=1`` in the environment turns it off, and
``L1QUANT_NO_F16C=1`` keeps its portable f16 loops instead of the F16C ones it picks at import on x86-64. Each
wrapper has the kernel signature ``(x, out) -> first non-finite flat index or -1``; inputs were validated by the
caller (2-D, C-contiguous source; uint8 output with contiguous rows), so passing raw addresses to C is safe. The C
code releases the GIL, so two converter threads quantize in parallel.

The block kernels (``kquant``: Q4_0..Q5_1, Q2_K..Q6_K) have several code paths that write the same bytes:
``portable`` (plain C), ``sse2`` (baseline x86-64 vectors), ``avx2`` and ``avx512`` (the K-quant group fits 8 or
16 groups per instruction; Q4_0..Q5_1 keep their SSE2 code). ``KQUANT_PATHS`` lists those this build and CPU
support, fastest last; ``KQUANT_PATH`` is the one ``kquant`` uses: the fastest, or the one named by
``L1QUANT_KQUANT_ISA`` (``portable``, ``sse2``, ``avx2``, ``avx512``; ``auto`` or empty: the fastest). A name this
machine cannot run makes each ``kquant`` call raise SettingError (a ValueError: a one-line refusal in the CLI)
rather than quietly run another path; ``L1QUANT_IQUANT_ISA`` likewise for the IQ kernels.

Example:
    >>> import numpy as np
    >>> from l1quant.kernels import _native
    >>> if _native.AVAILABLE:
    ...     out = np.empty((1, 34), np.uint8)
    ...     _native.q8_0(np.ones((1, 32), np.float32), out)
    ... else:
    ...     -1
    -1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import ModuleType

import numpy as np

from l1quant.errors import SettingError

_mod: ModuleType | None
DISABLED: bool = os.environ.get("L1QUANT_NO_NATIVE", "") not in ("", "0")
try:
    if DISABLED:
        raise ImportError("disabled by L1QUANT_NO_NATIVE")
    from . import _fastq8 as _mod  # type: ignore[attr-defined,no-redef]
except ImportError:
    _mod = None

AVAILABLE: bool = _mod is not None


def has(fn_name: str) -> bool:
    """Whether the compiled module is loaded and carries ``fn_name`` (an older build may lack newer kernels)."""
    return _mod is not None and hasattr(_mod, fn_name)

_told_fallback = False


def note_numpy_fallback() -> None:
    """Say once per process, on stderr (the ``l1quant`` logger's warning), that the compiled kernels are missing
    and numpy quantizes instead: same bytes, several times slower (Q4_K_M of L1-1.5B: 11.9 s against 2.8 s). A
    checkout used without building them (a non-editable install elsewhere, or a fresh clone on PYTHONPATH) is the
    usual cause. Silent when ``L1QUANT_NO_NATIVE`` turned them off on purpose."""
    global _told_fallback
    if AVAILABLE or DISABLED or _told_fallback:
        return
    _told_fallback = True
    import logging

    logging.getLogger("l1quant").warning(
        "the compiled kernels (l1quant.kernels._fastq8) are not built: quantizing with numpy, same bytes but "
        "several times slower (pip install . builds them; in a checkout: python setup.py build_ext --inplace)")

_KIND = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint16): 2}


def _call(fn_name: str, x: np.ndarray, out: np.ndarray) -> int:
    assert _mod is not None
    rows, ncols = x.shape
    if rows == 0 or ncols == 0:
        return -1
    fn = getattr(_mod, fn_name)
    return int(fn(x.ctypes.data, _KIND[x.dtype], rows, ncols, out.ctypes.data, out.strides[0]))


def q8_0(x: np.ndarray, out: np.ndarray) -> int:
    """Q8_0 kernel (compiled)."""
    return _call("q8_0", x, out)


def f16(x: np.ndarray, out: np.ndarray) -> int:
    """F16 kernel (compiled)."""
    return _call("f16", x, out)


def bf16(x: np.ndarray, out: np.ndarray) -> int:
    """BF16 kernel (compiled)."""
    return _call("bf16", x, out)


def f32(x: np.ndarray, out: np.ndarray) -> int:
    """F32 kernel (compiled)."""
    return _call("f32", x, out)


#: Every code path of the block kernels, slowest to fastest (kernels/_kquants.c, "Paths").
KQUANT_PATH_NAMES: tuple[str, ...] = ("portable", "sse2", "avx2", "avx512")


def _kquant_paths() -> tuple[str, ...]:
    # The C side refuses (ValueError) a path this build or CPU lacks; a call with no rows touches no memory.
    if _mod is None or not hasattr(_mod, "kquant"):
        return ()
    found = []
    for name in KQUANT_PATH_NAMES:
        try:
            _mod.kquant(12, 0, 0, 0, 0, 0, 0, name)
        except ValueError:
            continue
        found.append(name)
    return tuple(found)


#: The block-kernel paths this build and CPU support, fastest last (empty without the compiled module).
KQUANT_PATHS: tuple[str, ...] = _kquant_paths()


def default_kquant_path(environ: Mapping[str, str]) -> str:
    """The path ``kquant`` uses given an environment: ``L1QUANT_KQUANT_ISA`` if set (not checked here: a name this
    machine cannot run fails at the call), else the fastest available one ("portable" without the module)."""
    forced = environ.get("L1QUANT_KQUANT_ISA", "").strip().lower()
    if forced not in ("", "auto"):
        return forced
    return KQUANT_PATHS[-1] if KQUANT_PATHS else "portable"


#: The path ``kquant`` uses unless told otherwise (see the module docstring).
KQUANT_PATH: str = default_kquant_path(os.environ)


def _kquant_path(kernel: str, isa: str | None, default: str) -> str:
    """The code path a block kernel runs: ``isa``, else ``default``; one this build and CPU lack is refused before
    the call (SettingError when it came from L1QUANT_KQUANT_ISA: the user's setting; ValueError for an argument)."""
    path = isa if isa is not None else default
    if path not in KQUANT_PATHS:
        choices = ", ".join(KQUANT_PATHS) or "none: the compiled kernels are not loaded"
        if isa is None:
            raise SettingError(f"L1QUANT_KQUANT_ISA={path!r}: expected auto or a code path this build and CPU run "
                               f"({choices})")
        raise ValueError(f"{kernel}: code path {path!r} is not available here (available: {choices})")
    return path


def iquant_isa(environ: Mapping[str, str]) -> str:
    """``L1QUANT_IQUANT_ISA`` as the compiled IQ kernels read it (at each call, as written): "" when unset.

    Raises SettingError (a ValueError) for a name that is none of "auto", ``KQUANT_PATH_NAMES``. Whether this build
    and CPU run the named path is each kernel's to say (``_iq_call`` turns its refusal into a SettingError too):
    the IQ2/IQ1 searches need GCC's per-ISA clones for theirs, the IQ3/IQ4 ones only x86-64.

    Example:
        >>> iquant_isa({}), iquant_isa({"L1QUANT_IQUANT_ISA": "auto"})
        ('', 'auto')
        >>> iquant_isa({"L1QUANT_IQUANT_ISA": "mmx"})
        Traceback (most recent call last):
        ...
        l1quant.errors.SettingError: L1QUANT_IQUANT_ISA='mmx': expected auto, portable, sse2, avx2 or avx512
    """
    value = environ.get("L1QUANT_IQUANT_ISA", "")
    if value not in ("", "auto", *KQUANT_PATH_NAMES):
        raise SettingError(f"L1QUANT_IQUANT_ISA={value!r}: expected auto, {', '.join(KQUANT_PATH_NAMES[:-1])} or "
                           f"{KQUANT_PATH_NAMES[-1]}")
    return value


def _iq_call(fn: Callable[..., int], *args: int) -> int:
    """Run a compiled IQ kernel; its refusal of the L1QUANT_IQUANT_ISA path (a ValueError naming the variable) as a
    SettingError: the user's setting, which the CLI reports in one line."""
    value = iquant_isa(os.environ)
    try:
        return int(fn(*args))
    except ValueError as e:
        if "L1QUANT_IQUANT_ISA" not in str(e):
            raise
        raise SettingError(f"L1QUANT_IQUANT_ISA={value!r}: this build and CPU do not run that code path for these "
                           f"kernels ({e})") from None


def kquant(ggml_type: int, x: np.ndarray, out: np.ndarray, *, lanes: bool = True, isa: str | None = None) -> int:
    """Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K kernel (compiled, kernels/_kquants.c).

    ``ggml_type`` is the GGML type number (``gguf.GGMLQuantizationType``); ``x`` is (rows, ncols) float32, float16
    or uint16 (bf16 bits), C-contiguous, ncols a multiple of the type's block (32, or 256 for the K types); ``out``
    is uint8 (rows, >= ncols / block * block_bytes) with contiguous rows. Bytes equal ggml's
    ``quantize_row_<type>_ref``; a block holding NaN/Inf is written as zeros with its f16 scale fields set to NaN.
    Returns the flat index of the first non-finite value, or -1. ``isa`` picks a code path by name (one of
    ``KQUANT_PATHS``; default ``KQUANT_PATH``), ``lanes=False`` the portable one; all give the same bytes (the tests
    run each). An unknown or unavailable path raises ValueError.
    """
    assert _mod is not None
    rows, ncols = x.shape
    path = _kquant_path("kquant", isa, KQUANT_PATH if lanes else "portable")
    if rows == 0 or ncols == 0:
        return -1
    return int(_mod.kquant(int(ggml_type), x.ctypes.data, _KIND[x.dtype], rows, ncols, out.ctypes.data,
                           out.strides[0], path))


def kquant_imatrix(
    ggml_type: int, x: np.ndarray, out: np.ndarray, imatrix: np.ndarray, *, isa: str | None = None
) -> int:
    """The same types as ``kquant`` with importance weights (compiled, kernels/_kquants.c, "importance-weighted").

    ``imatrix``: float32 (ncols,), C-contiguous, finite (validated by the caller). Bytes equal ggml's
    ``ggml_quantize_chunk(type, ..., imatrix)`` (the ``quantize_row_<type>_impl`` searches) for finite rows; the
    non-finite policy as ``kquant``, a bad block counting as zeros in its row's statistics. ``isa`` picks the code
    path as for ``kquant`` (default ``KQUANT_PATH``): the lane paths run the affine fits (Q4_1, Q5_1, Q2_K, Q4_K,
    Q5_K) several groups at a time, the other searches one group at a time on every path; all give the same bytes.
    """
    assert _mod is not None
    rows, ncols = x.shape
    path = _kquant_path("kquant_imatrix", isa, KQUANT_PATH)
    if rows == 0 or ncols == 0:
        return -1
    if imatrix.dtype != np.float32 or imatrix.shape != (ncols,) or not imatrix.flags.c_contiguous:
        raise ValueError(f"kquant_imatrix: imatrix must be C-contiguous float32 ({ncols},), found "
                         f"{imatrix.dtype} {imatrix.shape}")
    return int(_mod.kquant_imatrix(int(ggml_type), x.ctypes.data, _KIND[x.dtype], rows, ncols, out.ctypes.data,
                                   out.strides[0], imatrix.ctypes.data, path))


def first_nonfinite(x: np.ndarray) -> int:
    """Flat index of the first NaN/Inf of a C-contiguous float32/float16/uint16(bf16) array, or -1 (compiled)."""
    assert _mod is not None
    if x.size == 0:
        return -1
    return int(_mod.first_nonfinite(x.ctypes.data, _KIND[x.dtype], x.size))


def iquant_grid(ggml_type: int, x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None, levels: np.ndarray,
                kmap: np.ndarray, neighbours: np.ndarray, neighbour_codes: np.ndarray) -> int:
    """IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S or IQ1_M kernel (compiled, kernels/_iquants2.c).

    ``x``: (rows, ncols) float32 / float16 / uint16 (bf16 bits), C-contiguous, ncols a multiple of 256; ``out``:
    uint8 rows, contiguous; ``imatrix``: float32 (ncols,) or None (IQ2_S and IQ1_M only); ``levels`` (uint8
    (n, 8)), ``kmap`` (int32), ``neighbours`` and ``neighbour_codes`` (uint16, the same size): the type's tables from
    kernels/iq_grids.py, C-contiguous.
    Bytes equal ggml's ``ggml_quantize_chunk``; a super-block holding NaN/Inf is written as zeros with a NaN f16
    scale. Returns the flat index of the first non-finite value, or -1. The neighbour searches run 16 candidates as
    vector lanes on x86 with AVX-512, 8 with AVX2 (and on other targets through the compiler's generic vectors),
    else one at a time. ``L1QUANT_IQUANT_ISA`` (read at each call) picks one: ``avx512``, ``avx2``, ``portable`` or
    ``sse2`` (the scalar search), ``auto``; every path gives the same bytes (tests/test_iquants12.py). Raises
    SettingError (a ValueError) for a name it does not know or a path this CPU lacks.
    """
    assert _mod is not None
    rows, ncols = x.shape
    if rows == 0 or ncols == 0:
        return -1
    if neighbour_codes.shape != neighbours.shape:
        raise ValueError("iquant_grid: neighbour_codes must have the shape of neighbours")
    for a, dt in ((levels, np.uint8), (kmap, np.int32), (neighbours, np.uint16), (neighbour_codes, np.uint16)):
        if a.dtype != dt or not a.flags.c_contiguous:
            raise ValueError(f"iquant_grid: grid table must be C-contiguous {np.dtype(dt)}, found {a.dtype}")
    q = 0
    if imatrix is not None:
        if imatrix.dtype != np.float32 or imatrix.shape != (ncols,) or not imatrix.flags.c_contiguous:
            raise ValueError(f"iquant: imatrix must be C-contiguous float32 ({ncols},), found "
                             f"{imatrix.dtype} {imatrix.shape}")
        q = imatrix.ctypes.data
    return _iq_call(_mod.iquant_grid, int(ggml_type), x.ctypes.data, _KIND[x.dtype], rows, ncols, out.ctypes.data,
                    out.strides[0], q, levels.ctypes.data, kmap.ctypes.data, neighbours.ctypes.data,
                    neighbour_codes.ctypes.data, neighbours.size, levels.shape[0])


def iquant(ggml_type: int, x: np.ndarray, out: np.ndarray, imatrix: np.ndarray | None,
           tables: tuple[np.ndarray, ...]) -> int:
    """IQ4_NL, IQ4_XS, IQ3_XXS or IQ3_S kernel (compiled, kernels/_iquants3.c), with or without importance weights.

    ``x``: (rows, ncols) float32 / float16 / uint16 (bf16 bits), C-contiguous, ncols a multiple of the block (32 for
    IQ4_NL, else 256); ``out``: uint8 (rows, row bytes) with contiguous rows; ``imatrix``: float32 (ncols,),
    C-contiguous, finite, or None. ``tables``: (the 16 int8 IQ4 levels,) or (IQ3 grid int8 (n, 4), kmap int32
    (4096,), neighbour lists uint16, and ``iq3_grids.lane_codes``' uint16 (4096, W)) from kernels/iq3_grids.py,
    C-contiguous (the caller keeps them alive). Bytes
    equal ``ggml_quantize_chunk`` for finite blocks; a block holding NaN/Inf becomes zeros with d = 0x7E00.
    Returns the flat index of the first non-finite value, or -1. The IQ4 searches run on the code path named by
    ``L1QUANT_IQUANT_ISA`` (portable, sse2, avx2, avx512; default: the fastest this CPU runs; read at each call);
    an unknown or unavailable name raises SettingError (a ValueError). All paths give the same bytes
    (tests/test_iquants34.py).
    """
    assert _mod is not None
    rows, ncols = x.shape
    if imatrix is not None and (imatrix.dtype != np.float32 or imatrix.shape != (ncols,)
                                or not imatrix.flags.c_contiguous):
        raise ValueError(f"iquant: imatrix must be C-contiguous float32 ({ncols},), found {imatrix.dtype} "
                         f"{imatrix.shape}")
    for t in tables:
        if not t.flags.c_contiguous:
            raise ValueError("iquant: tables must be C-contiguous")
    addr = [t.ctypes.data for t in tables] + [0] * (4 - len(tables))
    width = tables[3].shape[1] if len(tables) == 4 else 0
    return _iq_call(_mod.iquant, int(ggml_type), x.ctypes.data, _KIND[x.dtype], rows, ncols, out.ctypes.data,
                    out.strides[0], 0 if imatrix is None else imatrix.ctypes.data, *addr, width)

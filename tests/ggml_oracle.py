"""ggml itself as the oracle for kernel tests: ``ggml_quantize_chunk`` from the ``libggml-base`` that
llama-cpp-python installs, called through ctypes.

Without an importance matrix, ``ggml_quantize_chunk`` runs the ``quantize_row_*_ref`` path of
``ggml/src/ggml-quants.c`` (what llama-quantize runs), so its bytes are the bytes l1quant's kernels must write.
With one (``imatrix=``, float32 per column), it runs the ``quantize_row_*_impl`` searches instead.
Missing llama-cpp-python skips the calling test locally and fails it under CI (see ``reference.require_module``).

Example (in a test):
    >>> q = ggml_quantize("Q4_K", np.zeros((1, 256), np.float32))   # doctest: +SKIP
    >>> q.shape                                                     # doctest: +SKIP
    (1, 144)
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from reference import require_module, unavailable


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    llama_cpp = require_module("llama_cpp")
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    cands = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    if not cands:
        unavailable(f"no libggml-base shared library in {lib_dir}")
    lib = ctypes.CDLL(str(cands[0]))
    f = lib.ggml_quantize_chunk
    # size_t ggml_quantize_chunk(enum ggml_type, const float *src, void *dst, int64_t start, int64_t nrows,
    #                            int64_t n_per_row, const float *imatrix)
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                  ctypes.c_void_p]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_library() -> ctypes.CDLL:
    """llama-cpp-python's libggml-base (skips, or fails under CI, when missing): for tests calling other ggml
    functions (its gguf writer, ...); ``ggml_quantize_chunk`` and ``ggml_quantize_init`` have their prototypes set."""
    return _lib()


def ggml_quantize(type_name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 ``x`` of shape (rows, n_per_row) with ggml: uint8 (rows, row bytes).

    ``type_name`` is a GGML type name ("Q4_K", "Q8_0", ...). ``imatrix``: importance weights, float32
    (n_per_row,), passed as ggml_quantize_chunk's last argument; None: a NULL pointer (the ``_ref`` path).
    """
    lib = _lib()
    qtype = GGMLQuantizationType[type_name.upper()]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    rows, n = x.shape
    block, size = GGML_QUANT_SIZES[qtype]
    assert n % block == 0, (n, block)
    out = np.zeros((rows, n // block * size), dtype=np.uint8)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert qw.shape == (n,), (qw.shape, n)
    lib.ggml_quantize_init(int(qtype))
    written = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n,
                                      None if qw is None else qw.ctypes.data)
    assert written == out.nbytes, (written, out.nbytes)
    return out

"""What a planned tensor reads from: a checkpoint tensor, or one of three stand-ins with the same interface.

Every planned tensor's ``source`` answers ``read_rows(start, stop, out=None, *, fd=None)`` (rows of the 2-D
view, in the source dtype: raw bf16 bits as uint16, float16 or float32) plus ``name``, ``dtype``, ``np_dtype``,
``itemsize``, ``shape``, ``n_rows``, ``n_cols``, ``nbytes`` and ``path`` (the file to open a descriptor on, or
None). :class:`~l1quant.source.safetensors.SafeTensor` is the plain case; here are the others:

* :class:`PermutedRows` -- the rows of a checkpoint tensor in another order (llama's Q/K). Streams: a chunk of
  output rows reads the span of source rows it needs (one head's worth beyond the chunk at most) and gathers.
  The dtype is the source's, so bf16 stays exact bits.
* :class:`WholeTransformed` -- any other transform: the whole tensor is read, decoded to float32, transformed
  once and kept (memory: one tensor) while the plan lives. The planner says so in its warnings.
* :class:`Generated` -- a float32 array computed from the config (llama-3's ``rope_freqs``).

The pipeline, the fidelity check and the logit check all read through ``read_rows``, so a transform happens
before every kernel and every comparison: the file holds what llama.cpp expects, and verify compares like with like.

Example:
    >>> import numpy as np
    >>> g = Generated("rope_freqs.weight", np.arange(4, dtype=np.float32))
    >>> g.read_rows(0, 1).tolist(), g.dtype, g.n_rows
    ([[0.0, 1.0, 2.0, 3.0]], 'F32', 1)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from l1quant.kernels import decode_bf16
from l1quant.source.safetensors import SafeTensor, View2D


class TensorSource(Protocol):
    """The interface every planned tensor reads through (see the module docstring)."""

    # read-only: SafeTensor is frozen, so settable protocol members would reject it
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def itemsize(self) -> int: ...
    @property
    def np_dtype(self) -> np.dtype[Any]: ...
    @property
    def n_rows(self) -> int: ...
    @property
    def n_cols(self) -> int: ...
    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *,
                  fd: int | None = None) -> np.ndarray: ...


def _check_range(name: str, start: int, stop: int, n_rows: int) -> None:
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(f"{name}: rows [{start}, {stop}) outside [0, {n_rows})")


def _deliver(x: np.ndarray, out: np.ndarray | None, name: str) -> np.ndarray:
    if out is None:
        return x
    if out.size != x.size or out.dtype != x.dtype:
        raise ValueError(f"{name}: output buffer does not fit")
    out.reshape(x.shape)[...] = x
    return out


class PermutedRows(View2D):
    """Rows of ``base`` in the order ``order`` (output row i is source row ``order[i]``), read chunk by chunk.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> f = Path(tempfile.mkdtemp()) / "t.bin"
        >>> _ = f.write_bytes(np.arange(6, dtype=np.float32).tobytes())
        >>> t = SafeTensor("w", "F32", (3, 2), f, 0, 24)
        >>> PermutedRows(t, np.array([2, 0, 1])).read_rows(0, 2).tolist()
        [[4.0, 5.0], [0.0, 1.0]]
    """

    def __init__(self, base: SafeTensor, order: np.ndarray) -> None:
        if len(base.shape) != 2 or order.shape != (base.shape[0],):
            raise ValueError(f"{base.name}: a row order of {order.shape} does not fit shape {base.shape}")
        self.base = base
        self.order = np.asarray(order, dtype=np.int64)
        self.name, self.dtype, self.shape, self.nbytes = base.name, base.dtype, tuple(base.shape), base.nbytes

    @property
    def path(self) -> Path:
        return self.base.path

    @property
    def itemsize(self) -> int:
        return self.base.itemsize

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return self.base.np_dtype

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *, fd: int | None = None) -> np.ndarray:
        _check_range(self.name, start, stop, self.n_rows)
        want = self.order[start:stop]
        if want.size == 0:
            return _deliver(np.empty((0, self.n_cols), self.np_dtype), out, self.name)
        lo, hi = int(want.min()), int(want.max()) + 1  # the contiguous span of source rows this chunk needs
        span = self.base.read_rows(lo, hi, fd=fd)
        return _deliver(span[want - lo], out, self.name)


class _InMemoryF32(View2D):
    """A float32 source whose rows come from memory (the planned tensors l1quant computes)."""

    dtype = "F32"
    itemsize = 4
    np_dtype = np.dtype(np.float32)


class WholeTransformed(_InMemoryF32):
    """``fn`` applied once to the whole of ``base`` (decoded to float32); rows are served from the result.

    The result is computed on first use under a lock and kept: a transform that is not a row reordering needs the
    whole tensor, and computing it per chunk would repeat the work for every chunk.
    """

    def __init__(self, base: SafeTensor, fn: Callable[[np.ndarray], np.ndarray], why: str) -> None:
        self.base, self.fn, self.why = base, fn, why
        self.name, self.shape = base.name, tuple(base.shape)
        self.nbytes = math.prod(self.shape) * 4
        self._data: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.base.path

    def _whole(self, fd: int | None) -> np.ndarray:
        with self._lock:
            if self._data is None:
                raw = self.base.read_rows(0, self.base.n_rows, fd=fd)
                x = decode_bf16(raw) if raw.dtype == np.uint16 else raw.astype(np.float32)
                y = np.ascontiguousarray(self.fn(x.reshape(self.shape)), dtype=np.float32)
                if y.shape != self.shape:
                    raise ValueError(f"{self.name}: the transform gave shape {y.shape}, expected {self.shape}")
                self._data = y.reshape(self.n_rows, self.n_cols)
            return self._data

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *, fd: int | None = None) -> np.ndarray:
        _check_range(self.name, start, stop, self.n_rows)
        return _deliver(self._whole(fd)[start:stop], out, self.name)


class Generated(_InMemoryF32):
    """A float32 tensor computed from the config, not read from any file (``path`` is None)."""

    path: Path | None = None

    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name = name
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.shape = tuple(self.data.shape)
        self.nbytes = self.data.nbytes

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *, fd: int | None = None) -> np.ndarray:
        _check_range(self.name, start, stop, self.n_rows)
        return _deliver(self.data.reshape(self.n_rows, self.n_cols)[start:stop], out, self.name)

    def read(self) -> np.ndarray:
        result: np.ndarray = self.data.copy()
        return result

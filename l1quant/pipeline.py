"""The streaming executor: (tensor, row-chunk) jobs -> read -> check -> quantize -> pwrite at the planned offset.

Each worker thread owns one input and one output buffer of at most ``chunk_bytes`` and reuses them for every job,
so memory is flat: it does not grow with the model. Reads (``preadv``), the numpy kernels and writes (``pwrite``)
all release the GIL, so threads overlap I/O and compute. Every chunk's destination is fixed by the plan, so the
output bytes cannot depend on the thread count, the chunk size or the scheduling.

Example:
    >>> stream_tensors(plan, fd, data_offset, threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import TensorError
from .kernels import first_nonfinite
from .plan import ConversionPlan, PlannedTensor
from .writer import pwrite_all

#: Default bytes of source data per job: large enough to amortise per-call overhead, small enough to stay
#: cache- and memory-friendly with one buffer pair per thread.
DEFAULT_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class Job:
    tensor: PlannedTensor
    row_start: int
    row_stop: int


def iter_jobs(plan: ConversionPlan, chunk_bytes: int) -> Iterator[Job]:
    """Split every planned tensor into row ranges of about ``chunk_bytes`` source bytes (at least one row)."""
    for t in plan.tensors:
        row_bytes = t.n_cols * t.source.itemsize
        step = max(1, chunk_bytes // max(1, row_bytes))
        for r in range(0, t.n_rows, step):
            yield Job(t, r, min(t.n_rows, r + step))


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def stream_tensors(
    plan: ConversionPlan,
    fd: int,
    data_offset: int,
    *,
    threads: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    allow_nonfinite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Fill the data section of ``fd`` for every tensor of ``plan``.

    Raises :class:`TensorError` naming the tensor and the first flat index of a NaN/Inf value unless
    ``allow_nonfinite``. The first error in any worker stops all workers and is re-raised here.

    Example:
        >>> stream_tensors(plan, out.fd, data_offset, threads=1, chunk_bytes=1 << 16)  # doctest: +SKIP
    """
    n_threads = max(1, threads or default_threads())
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    jobs = iter_jobs(plan, chunk_bytes)
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def next_job() -> Job | None:
        with lock:
            if stop.is_set():
                return None
            return next(jobs, None)

    def work() -> None:
        bufs: dict[str, np.ndarray] = {}

        def buf(kind: str, dtype: np.dtype, n: int) -> np.ndarray:
            # one growing buffer per (kind, dtype) per thread: bounded by the largest chunk, reused for every job
            key = kind + dtype.str
            b = bufs.get(key)
            if b is None or b.size < n:
                b = np.empty(n, dtype=dtype)
                bufs[key] = b
            return b[:n]

        try:
            while (job := next_job()) is not None:
                t, r0, r1 = job.tensor, job.row_start, job.row_stop
                rows = r1 - r0
                src = t.source
                x = buf("in", src.np_dtype, rows * t.n_cols).reshape(rows, t.n_cols)
                src.read_rows(r0, r1, out=x)
                if not allow_nonfinite:
                    bad = first_nonfinite(x)
                    if bad is not None:
                        idx = np.unravel_index(r0 * t.n_cols + bad, t.shape)
                        raise TensorError(
                            f"{src.path.name}: tensor {src.name!r} ({t.name}) holds a non-finite value "
                            f"(NaN/Inf) at index {list(map(int, idx))}; pass --allow-nonfinite to convert anyway")
                out = buf("out", np.dtype(np.uint8), rows * t.row_nbytes).reshape(rows, t.row_nbytes)
                t.qtype.quantize(x, out=out)
                pwrite_all(fd, out, data_offset + t.offset + r0 * t.row_nbytes)
                if on_progress is not None:
                    on_progress(rows * t.n_cols * src.itemsize)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            with lock:
                errors.append(e)
            stop.set()

    if n_threads == 1:
        work()
    else:
        workers = [threading.Thread(target=work, name=f"l1quant-{i}", daemon=True) for i in range(n_threads)]
        for w in workers:
            w.start()
        try:
            for w in workers:
                # join with a timeout so the main thread stays responsive to SIGINT/SIGTERM handlers
                while w.is_alive():
                    w.join(0.1)
        except BaseException:
            stop.set()
            for w in workers:
                w.join()
            raise
    if errors:
        raise errors[0]


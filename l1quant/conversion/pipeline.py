"""The streaming executor: (tensor, row-chunk) jobs -> read -> quantize (+ NaN/Inf scan) -> pwrite at the planned offset.

Each worker thread owns one input and one output buffer of at most ``chunk_bytes`` (plus the output size of that
many source bytes) and reuses them for every job, so memory is flat: it does not grow with the model. Reads
(``preadv`` on descriptors opened once per conversion), the kernels and writes (``pwrite``) all release the GIL, so
with N threads one thread's I/O overlaps another's compute. Every chunk's destination is fixed by the plan, so the
output bytes cannot depend on the thread count, the chunk size or the scheduling.

Page cache: input files get ``POSIX_FADV_SEQUENTIAL`` (larger readahead); they are not dropped from the cache, so
converting the same checkpoint to a second type reads RAM, not disk. Output pages are handed to the kernel for
writeback as soon as they are written (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, asynchronous): writeback
then overlaps the conversion instead of piling up gigabytes of dirty pages for the final ``fsync``.

Example:
    >>> stream_tensors(plan, fd, data_offset, threads=2)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l1quant.conversion.plan import ConversionPlan, PlannedTensor
from l1quant.errors import TensorError
from l1quant.output import pwrite_all
from l1quant.kernels.nonfinite import can_overflow, first_nonfinite_output
from l1quant.source.safetensors import open_weights

#: Default bytes of source data per job. Measured on the L1 shape (2-core EPYC, 1 MiB L2 per core): 1-8 MiB are
#: within noise of each other; much smaller chunks pay per-job Python overhead (~20 us), much larger ones fall out
#: of the L3 cache between read, quantize and write. 4 MiB of bf16 is ~2 M values, ~1400 rows of 1536.
DEFAULT_CHUNK_BYTES = 4 << 20

#: Output bytes between two starts of asynchronous writeback: often enough that dirty pages never pile up, rarely
#: enough (~60 calls for a 1.9 GB file) that the syscall costs nothing and the block layer gets large runs.
WRITEBACK_BYTES = 32 << 20

#: Most worker threads a conversion starts, whatever --threads says (see stream_tensors).
MAX_THREADS = 64

#: How long Ctrl-C/SIGTERM waits for each worker to finish its current job (one chunk: milliseconds) before the
#: cleanup goes ahead without it.
JOIN_ON_INTERRUPT_SECONDS = 2.0


@dataclass(frozen=True)
class Job:
    """Rows ``[row_start, row_stop)`` of one planned tensor."""

    tensor: PlannedTensor
    row_start: int
    row_stop: int


def rows_per_job(t: PlannedTensor, chunk_bytes: int) -> int:
    """Rows of ``t`` per job: about ``chunk_bytes`` of source data, at least one row.

    Example:
        >>> rows_per_job(t, 4 << 20)  # bf16 rows of 1536 values: 3072 bytes each  # doctest: +SKIP
        1365
    """
    row_bytes = t.n_cols * t.source.itemsize
    return max(1, chunk_bytes // max(1, row_bytes))


def iter_jobs(plan: ConversionPlan, chunk_bytes: int) -> Iterator[Job]:
    """Split every planned tensor into row ranges of about ``chunk_bytes`` source bytes (at least one row).

    Example:
        >>> sum(j.row_stop - j.row_start for j in iter_jobs(plan, 1)) == sum(t.n_rows for t in plan.tensors)  # doctest: +SKIP
        True
    """
    for t in plan.tensors:
        step = rows_per_job(t, chunk_bytes)
        for r in range(0, t.n_rows, step):
            yield Job(t, r, min(t.n_rows, r + step))


def default_threads() -> int:
    """All cores this process may use.

    Example:
        >>> default_threads() >= 1
        True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """``start_writeback(fd, offset, nbytes)`` via Linux's sync_file_range, or None where it is unavailable.

    Looked up on first use through the symbols already loaded into the process (no ``find_library``, which can
    spawn ``ldconfig``).
    """
    if os.uname().sysname != "Linux":  # pragma: no cover - other systems
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write_flag = 2  # SYNC_FILE_RANGE_WRITE: start writeback of dirty pages in the range, do not wait for it

    def start(fd: int, offset: int, nbytes: int) -> None:
        # Advisory: a failure (e.g. a filesystem without support) only means the final fsync does the work.
        fn(fd, offset, nbytes, write_flag)

    return start


class _Sources:
    """One read-only descriptor per source file, opened on first use and shared by all threads (pread is stateless)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = open_weights(path)  # a regular file, never a FIFO swapped in since its header was read
                if hasattr(os, "posix_fadvise"):
                    # whole file, sequential: the kernel doubles its readahead window
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self._fds[path] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def stream_tensors(
    plan: ConversionPlan,
    fd: int,
    data_offset: int,
    *,
    threads: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    allow_nonfinite: bool = False,
    on_progress: Callable[[int], None] | None = None,
    writeback: bool = True,
    targets: Sequence[Mapping[str, tuple[PlannedTensor, int, int]]] | None = None,
) -> None:
    """Fill the data section of ``fd`` for every tensor of ``plan``.

    ``threads`` defaults to every core; ``chunk_bytes`` is the source bytes per job (at least one row); neither
    changes the output bytes. Raises :class:`TensorError` naming the tensor and the index of its first NaN/Inf
    value unless ``allow_nonfinite``. The first error in any worker stops all workers and is re-raised here.
    ``on_progress`` receives the output bytes of each finished job (their sum is the data section, padding aside).
    ``writeback`` starts asynchronous writeback of output pages as they are written (Linux; a no-op elsewhere).
    ``targets`` replaces ``fd``/``data_offset``: one mapping per output, GGUF name -> (its planned tensor, the
    descriptor, the data-section start that tensor's offset is relative to) -- several files of the same source
    (``convert --type q8_0,q4_k_m``: each chunk is read once and converted into every output, so the checkpoint
    is read once whatever the number of types), and the parts of a split file (each tensor in its part). Each
    mapping must hold exactly ``plan``'s tensor names (``ValueError`` otherwise).

    Example:
        >>> stream_tensors(plan, out.fd, data_offset, threads=1, chunk_bytes=1 << 16)  # doctest: +SKIP
    """
    # more workers than MAX_THREADS (or than cores x 4) cannot be faster for this CPU/IO-bound work, and each costs a
    # stack; asking for 1000 under a memory limit made CPython's Thread.start() hang on a thread that failed to boot
    n_threads = max(1, min(threads or default_threads(), MAX_THREADS, 4 * default_threads()))
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    if targets is None:
        targets = [{t.name: (t, fd, data_offset) for t in plan.tensors}]
    names = {t.name for t in plan.tensors}
    if any(m.keys() != names for m in targets):
        raise ValueError("stream_tensors: every output of one read must hold the plan's tensors")
    out_fds = sorted({t_fd for m in targets for _, t_fd, _ in m.values()})
    jobs = iter_jobs(plan, chunk_bytes)
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    sources = _Sources()
    start_writeback = _sync_file_range() if writeback else None
    unflushed = [0]  # output bytes written since writeback was last started (all threads; under ``lock``)

    def next_job(written: int) -> tuple[Job | None, bool]:
        """The next job, and whether this thread should start writeback now (``written``: its last job's bytes)."""
        with lock:
            unflushed[0] += written
            flush = unflushed[0] >= WRITEBACK_BYTES
            if flush:
                unflushed[0] = 0
            if stop.is_set():
                return None, False
            return next(jobs, None), flush

    def convert_rows(t: PlannedTensor, x: np.ndarray, r0: int, out_flat: np.ndarray, t_fd: int, t_off: int) -> int:
        """Convert the source rows ``x`` (from row ``r0``) to ``t``'s type and write them; return the bytes."""
        rows = x.shape[0]
        src = t.source
        out = out_flat.reshape(rows, t.row_nbytes)
        # the NaN/Inf scan is folded into the conversion pass: no second read of the chunk
        _, bad = t.qtype.quantize_checked(x, out)
        in_output = ""
        if bad is None and not allow_nonfinite and can_overflow(t.qtype, src.dtype):
            # finite input that overflows the output type
            bad = first_nonfinite_output(t.qtype, out)
            in_output = f" in its {t.qtype.name} output (a finite value beyond the type's range)"
        if bad is not None and not allow_nonfinite:
            idx = np.unravel_index(r0 * t.n_cols + bad, t.shape)
            where = "generated" if src.path is None else src.path.name
            raise TensorError(
                f"{where}: tensor {src.name!r} ({t.name}) holds a non-finite value "
                f"(NaN/Inf){in_output} at index {list(map(int, idx))}; pass --allow-nonfinite to convert "
                f"anyway")
        pwrite_all(t_fd, out, t_off + t.offset + r0 * t.row_nbytes)
        return out.nbytes

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

        written = 0
        try:
            while True:
                job, flush = next_job(written)
                if flush and start_writeback is not None:
                    # whole file: the kernel only visits dirty pages; pages another thread is filling right now
                    # are simply written again later (correctness never depends on this call)
                    for t_fd in out_fds:
                        start_writeback(t_fd, 0, 0)
                if job is None:
                    break
                t, r0, r1 = job.tensor, job.row_start, job.row_stop
                rows = r1 - r0
                src = t.source
                x = buf("in", src.np_dtype, rows * t.n_cols).reshape(rows, t.n_cols)
                src.read_rows(r0, r1, out=x, fd=None if src.path is None else sources.fd(src.path))
                written = 0
                for k, target in enumerate(targets):
                    t_out, t_fd, t_off = target[t.name]
                    written += convert_rows(t_out, x, r0, buf("out" + str(k), np.dtype(np.uint8),
                                                              rows * t_out.row_nbytes), t_fd, t_off)
                if on_progress is not None:
                    on_progress(written)  # output bytes: what the user waits for and sees on disk
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            with lock:
                errors.append(e)
            stop.set()

    try:
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
                    # bounded: a worker stuck in a read (a hung device) must not make Ctrl-C wait forever; the
                    # workers are daemon threads, and the output's descriptor is closed by AtomicOutput's cleanup
                    w.join(JOIN_ON_INTERRUPT_SECONDS)
                raise
    finally:
        sources.close()
    if errors:
        raise errors[0]

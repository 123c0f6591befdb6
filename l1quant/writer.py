"""GGUF output: header via gguf's writer, data section filled at planned offsets, atomic publication.

The header (magic, version, KV pairs, tensor infos) is serialized by :class:`gguf.GGUFWriter`, so every value
type is exactly what llama.cpp's converter writes. The data section is ours: the file is pre-allocated (a full
disk fails here, before any work), tensors are written with ``pwrite`` at their planned offsets by the pipeline,
then the file is fsynced and renamed over the target. Until that rename the output exists only as a hidden
temporary file beside the target, which is removed on any error, Ctrl-C or SIGTERM.

Example:
    >>> with AtomicOutput(Path("out.gguf")) as out:     # doctest: +SKIP
    ...     data_offset = write_header(gw, out.path)
    ...     fill(out.fd, data_offset)
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import gguf
import numpy as np

from .errors import OutputError
from .plan import ConversionPlan, pad


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives, so cleanup runs exactly as for Ctrl-C."""


def new_header(plan: ConversionPlan) -> gguf.GGUFWriter:
    """A GGUFWriter holding the plan's tensor infos (in order); metadata is added by the caller.

    Example:
        >>> gw = new_header(plan)  # doctest: +SKIP
        >>> gw.get_total_parameter_count()[0]  # doctest: +SKIP
        1777088000
    """
    gw = gguf.GGUFWriter(path=None, arch=plan.arch.name)
    for t in plan.tensors:
        # GGUFWriter takes the numpy-order shape and reverses it when writing tensor infos. With raw_dtype set it
        # reinterprets the shape only for uint8 (byte-shaped) arrays; we pass element shapes, so say float32.
        gw.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype.ggml_type)
    return gw


def write_header(gw: gguf.GGUFWriter, path: Path) -> int:
    """Write header, KV data and tensor infos to ``path``; return the (aligned) data section offset."""
    gw.write_header_to_file(path=path)
    gw.write_kv_data_to_file()
    gw.write_ti_data_to_file()
    assert gw.fout is not None
    end = gw.fout[0].tell()
    gw.close()
    return pad(end, gw.data_alignment)


class AtomicOutput:
    """A hidden temporary file beside ``target`` that becomes ``target`` only on success.

    On exception (including KeyboardInterrupt and SIGTERM, which is turned into :class:`Terminated` while the
    context is active in the main thread) the temporary file is removed and an existing ``target`` is untouched.
    """

    def __init__(self, target: Path, size: int) -> None:
        self.target = target
        self.size = size
        self.path = target
        self.fd = -1
        self._old_term: Any = None

    def __enter__(self) -> AtomicOutput:
        parent = self.target.parent
        if self.target.is_dir():
            raise OutputError(f"{self.target}: is a directory")
        if not parent.is_dir():
            raise OutputError(f"{self.target}: folder {parent} does not exist")
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".part", dir=parent)
        except OSError as e:
            self._restore()
            raise OutputError(f"{self.target}: cannot create a file in {parent}: {e.strerror}") from e
        self.fd, self.path = fd, Path(name)
        try:
            os.fchmod(fd, 0o644 & ~_umask())
            self.reserve(self.size)
        except BaseException:
            self._cleanup()
            raise
        return self

    def reserve(self, size: int) -> None:
        """Pre-allocate ``size`` bytes so a full disk fails now, before any work is done."""
        self.size = size
        try:
            os.ftruncate(self.fd, size)
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self.fd, 0, size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
        except OSError as e:
            raise _os_error(self.target, e) from e

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    def _restore(self) -> None:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None

    def _cleanup(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self._restore()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is not None:
            self._cleanup()
            if isinstance(ev, OSError) and not isinstance(ev, OutputError):
                raise _os_error(self.target, ev) from ev
            return
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.path, self.target)
        except OSError as e:
            self._cleanup()
            raise _os_error(self.target, e) from e
        self._restore()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _os_error(target: Path, e: OSError) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"{target}: no space left on device")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{target}: not writable ({e.strerror})")
    return OutputError(f"{target}: write failed: {e.strerror or e}")


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """``os.pwrite`` until every byte of ``data`` (a buffer) is written."""
    mv = memoryview(data).cast("B")
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], offset + done)

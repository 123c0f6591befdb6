"""Atomic output: a file appears complete under its name or not at all, whatever ends the process.

Not GGUF-specific: the GGUF writer, the model card and the caches all publish through :class:`AtomicOutput`.
Until it is published the output exists only as an unnamed (``O_TMPFILE``) or hidden temporary file beside the
target, removed on any error, Ctrl-C, SIGTERM, SIGHUP or SIGQUIT (:data:`TERMINATING_SIGNALS` become
:class:`~l1quant.errors.Terminated` while an output is open). Atomicity needs no fsync; durability across a power
loss does, and costs the time the disk needs to write the whole output, so it is opt-in (``durable``, the CLI's
``--fsync``), as in llama.cpp (which never fsyncs).

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with AtomicOutput(d / "out.bin", 4) as out:
    ...     pwrite_all(out.fd, b"GGUF", 0)
    >>> (d / "out.bin").read_bytes()
    b'GGUF'
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from l1quant.errors import OutputError, Terminated, clip, file_kind

__all__ = [
    "PUBLISHED",
    "STALE_SECONDS",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "TERMINATING_SIGNALS",
    "AtomicOutput",
    "Terminated",
    "check_target",
    "inside_folder",
    "pwrite_all",
    "reclaim_stale_temporaries",
]


#: Signals that end the process "politely": each is turned into :class:`Terminated` while an output is open, so
#: the temporary file is removed exactly as for Ctrl-C. SIGHUP is a dropped ssh session, SIGQUIT is Ctrl-\.
#: (SIGKILL cannot be caught: that case is covered by the unnamed temporary file, see AtomicOutput.)
TERMINATING_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n))

#: Prefix of the *named* temporary files of the fallback path (filesystems without O_TMPFILE). Short and
#: independent of the target's name, so a legal 255-byte target name still leaves room for it.
TEMP_PREFIX = ".l1q-"
TEMP_SUFFIX = ".part"
#: A named temporary file whose writer no longer holds its lock and that has not been modified for this long is
#: an orphan of a killed run (SIGKILL, power loss) and is reclaimed by the next run writing to the same folder.
#: The age guards the few microseconds between a live writer's mkstemp and its flock.
STALE_SECONDS = 10.0

#: Every output this process has published (renamed/linked into place), in order: the CLI reads it to report what
#: really happened when a signal arrives after the output was already complete.
PUBLISHED: list[Path] = []

_LINK_MODE: str | None = None  # "empty_path" | "proc" | "none": how an unnamed file can be linked (probed once)


def _linkat_empty_path(fd: int, dst: Path) -> None:
    """linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH): needs CAP_DAC_READ_SEARCH on most kernels."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_empty_path = -100, 0x1000
    if libc.linkat(fd, b"", at_fdcwd, os.fsencode(dst), at_empty_path) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def _link_fd(fd: int, dst: Path) -> None:
    """Give the unnamed file open as ``fd`` the name ``dst`` (fails with EEXIST if ``dst`` exists)."""
    if _LINK_MODE == "empty_path":
        _linkat_empty_path(fd, dst)
    else:
        os.link(f"/proc/self/fd/{fd}", dst, follow_symlinks=True)


def _probe_link_mode(folder: Path) -> str:
    """Which way of naming an unnamed (O_TMPFILE) file works here: probed once on an empty file."""
    global _LINK_MODE
    if _LINK_MODE is not None:
        return _LINK_MODE
    mode = "none"
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (OSError, AttributeError):
        return "none"  # this filesystem has no O_TMPFILE; another folder may: do not cache
    try:
        for m in ("empty_path", "proc"):
            name = folder / f"{TEMP_PREFIX}probe-{os.getpid()}-{m}{TEMP_SUFFIX}"
            try:
                _LINK_MODE = m
                _link_fd(fd, name)
            except OSError:
                continue
            os.unlink(name)
            mode = m
            break
    finally:
        os.close(fd)
    _LINK_MODE = mode
    return mode


def reclaim_stale_temporaries(folder: Path) -> list[Path]:
    """Remove named temporary files (``.l1q-*.part``) in ``folder`` left by runs that were killed (SIGKILL, power
    loss): only those whose writer's lock is gone and that are older than STALE_SECONDS. Returns what was removed.

    A live writer holds an exclusive ``flock`` on its temporary file for as long as it runs; the kernel drops the
    lock when the process dies, however it dies, so a lock we can take means nobody is writing.
    """
    import fcntl
    import time

    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX)]
    except OSError:
        return removed
    for n in names[:1000]:  # bounded: a folder of a million junk names must not stall the run
        path = folder / n
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < STALE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            try:
                cur = os.lstat(path)
                if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                pass
        finally:
            os.close(fd)
    return removed


def check_target(target: Path) -> None:
    """Refuse a target that is neither a new name nor a regular file (``/dev/null``, a FIFO, a socket, a
    folder): the output is published by renaming over the target, which would *replace* such a file."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise OutputError(f"{clip(str(target), 120)}: path too long ({e.strerror})") from None
        if e.errno == errno.ENOTDIR:
            raise OutputError(f"{target}: a part of the path is not a folder") from None
        return  # e.g. ELOOP / EACCES: the open of the parent below reports it
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{target}: is a directory (expected a file path)")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{target}: is {file_kind(st.st_mode)}, not a regular file; only a regular file or a new "
                          f"name can be an output (it would be replaced)")


def inside_folder(path: Path, folder: Path) -> bool:
    """True when ``path`` would land in ``folder`` or anywhere below it, compared by (device, inode) for every
    existing ancestor of ``path``, both as written and with symlinks resolved: ``MODEL/sub/x.gguf``, ``MODEL/.``,
    a symlink or a bind mount of ``MODEL`` all count."""
    try:
        f = os.stat(folder)
    except OSError:
        return False
    key = (f.st_dev, f.st_ino)
    seen: set[str] = set()
    for start in (Path(os.path.abspath(path)), Path(path).resolve()):
        for anc in start.parents:
            s = str(anc)
            if s in seen:
                continue
            seen.add(s)
            try:
                st = os.stat(anc)
            except OSError:
                continue  # not created yet: cannot be the folder
            if (st.st_dev, st.st_ino) == key:
                return True
    return False


class AtomicOutput:
    """A temporary file beside ``target`` that becomes ``target`` only on success, and is never orphaned.

    Where the filesystem has ``O_TMPFILE`` (Linux: ext4, xfs, btrfs, tmpfs) the temporary file has **no name**
    until it is complete: it is linked in at the end (``linkat``), so whatever ends the process -- SIGKILL, the
    OOM killer, a power loss -- leaves nothing behind. Elsewhere it is a named ``.l1q-XXXXXXXX.part`` file held
    under ``flock``; a later run reclaims such files once their writer is gone (:func:`reclaim_stale_temporaries`).

    On exception (including KeyboardInterrupt, and SIGTERM/SIGHUP/SIGQUIT, which are turned into
    :class:`Terminated` while the context is active in the main thread) the temporary file is removed and an
    existing ``target`` is untouched. OS errors (disk full, file too large, permission denied) become one-line
    :class:`OutputError` messages. Only a new name or a regular file can be a target (:func:`check_target`).

    Example:
        >>> with AtomicOutput(Path("out.gguf"), 1 << 20) as out:   # doctest: +SKIP
        ...     os.pwrite(out.fd, b"GGUF", 0)
    """

    def __init__(self, target: Path, size: int, *, durable: bool = False) -> None:
        self.target = Path(target)
        self.size = size
        self.durable = durable
        self.path = self.target  # a path that opens the temporary file once __enter__ has created it
        self.fd = -1
        self.unnamed = False  # True: an O_TMPFILE file (no name until published)
        self._tmp: Path | None = None  # only this path is ever unlinked: never the target
        self._old: dict[int, Any] = {}

    def __enter__(self) -> AtomicOutput:
        parent = self.target.parent
        check_target(self.target)
        if not parent.is_dir():
            what = "is not a folder" if parent.exists() else "does not exist"
            raise OutputError(f"{self.target}: output folder {parent} {what}")
        if threading.current_thread() is threading.main_thread():
            for sig in TERMINATING_SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_term)
        try:
            self._create(parent)
        except OSError as e:
            self._restore()
            raise _os_error(self.target, e, f"cannot create a file in {parent}") from e
        except BaseException:
            self._cleanup()
            raise
        try:
            os.fchmod(self.fd, 0o644 & ~_umask())
            self.reserve(self.size)
        except BaseException:
            self._cleanup()
            raise
        return self

    def _create(self, parent: Path) -> None:
        if hasattr(os, "O_TMPFILE") and _probe_link_mode(parent) != "none":
            try:
                fd = os.open(parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
            else:
                self.fd, self.unnamed = fd, True
                self.path = Path(f"/proc/self/fd/{fd}")  # reopens the same unnamed inode (gguf's writer opens paths)
                if not os.path.exists(self.path):  # no /proc: fall back to a named file
                    os.close(fd)
                    self.fd, self.unnamed, self.path = -1, False, self.target
                else:
                    return
        import fcntl

        reclaim_stale_temporaries(parent)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=parent)
        self.fd, self.path, self._tmp = fd, Path(name), Path(name)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: tells a later run this file is alive

    def reserve(self, size: int) -> None:
        """Pre-allocate ``size`` bytes so a full disk (or a file-size limit) fails now, before any work is done."""
        self.size = size
        try:
            os.ftruncate(self.fd, size)
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(self.fd, 0, size)
                except OSError as e:
                    # filesystems without fallocate: writes will still report ENOSPC, just later
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
        except OSError as e:
            raise _os_error(self.target, e, f"cannot reserve {size} bytes") from e

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    def _restore(self) -> None:
        for sig, old in self._old.items():
            # None means the previous handler was not set from Python: put back the default action
            signal.signal(sig, signal.SIG_DFL if old is None else old)
        self._old = {}

    def _cleanup(self) -> None:
        # A second Ctrl-C/SIGTERM must not interrupt the removal of the temporary file.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *TERMINATING_SIGNALS})
        try:
            if self.fd >= 0:
                try:
                    os.close(self.fd)  # an unnamed file vanishes with its last descriptor
                except OSError:
                    pass
                self.fd = -1
            if self._tmp is not None:
                try:
                    os.unlink(self._tmp)
                except OSError:
                    pass
                self._tmp = None
            self._restore()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _publish(self) -> None:
        """Give the complete file the target's name, atomically: a reader sees the old file or the new one."""
        if not self.unnamed:
            os.replace(self.path, self.target)
            self._tmp = None
            return
        try:
            _link_fd(self.fd, self.target)  # a new name: linked in one step, never visible incomplete
            return
        except FileExistsError:
            pass
        # Replacing an existing file: name the complete file, then rename it over the target (rename is atomic).
        for _ in range(100):
            tmp = self.target.parent / f"{TEMP_PREFIX}{os.urandom(6).hex()}{TEMP_SUFFIX}"
            try:
                _link_fd(self.fd, tmp)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise OSError(errno.EEXIST, "no free temporary name")
        self._tmp = tmp
        os.replace(tmp, self.target)
        self._tmp = None

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is not None:
            self._cleanup()
            if isinstance(ev, OSError):
                raise _os_error(self.target, ev) from ev
            return
        try:
            if self.durable:
                os.fsync(self.fd)
            # Signals wait while the file is published, so "published" and "interrupted" never both half-happen.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *TERMINATING_SIGNALS})
            try:
                self._publish()
                PUBLISHED.append(self.target)
                os.close(self.fd)
                self.fd = -1
                self._restore()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        except OSError as e:
            self._cleanup()
            raise _os_error(self.target, e) from e
        except BaseException:  # Ctrl-C/SIGTERM during fsync: still leave nothing behind
            self._cleanup()
            raise
        if self.durable:
            _fsync_dir(self.target.parent)


def _fsync_dir(d: Path) -> None:
    """Make the rename durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _os_error(target: Path, e: OSError, doing: str = "write failed") -> OutputError:
    """One line for an OS error on the output side, naming the target."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"{target}: {doing}: no space left on device (or quota exceeded)")
    if e.errno == errno.EFBIG:
        return OutputError(f"{target}: {doing}: file too large for this filesystem or the process's file-size "
                           f"limit (ulimit -f)")
    if e.errno == errno.ENAMETOOLONG:
        return OutputError(f"{clip(str(target), 120)}: {doing}: path or name too long ({e.strerror})")
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return OutputError(f"{target}: {doing}: out of file descriptors ({e.strerror}; the inputs hold one per "
                           f"shard: raise ulimit -n)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{target}: {doing}: not writable ({e.strerror})")
    return OutputError(f"{target}: {doing}: {e.strerror or e}")


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """``os.pwrite`` until every byte of ``data`` (a buffer) is written."""
    mv = memoryview(data).cast("B")
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], offset + done)

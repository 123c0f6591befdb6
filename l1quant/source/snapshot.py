"""Inputs that must not change while they are read: a stat snapshot taken before, compared before publishing.

``convert`` and ``quantize`` read their input files chunk by chunk for minutes. A file rewritten in place (or
replaced) meanwhile would give an output that is part old model, part new, and nothing would say so. The
identity and state of each input -- device, inode, size, modification and change times (``st_mtime_ns``,
``st_ctime_ns``: any write updates them) -- are recorded before the first tensor is read and compared after the
last: any difference refuses the output before it is published.

Example:
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"old")
    >>> snap = InputSnapshot.of([p])
    >>> snap.check()
    >>> _ = p.write_bytes(b"new!")
    >>> snap.check()
    Traceback (most recent call last):
    ...
    l1quant.errors.InputError: ...w.bin: changed while it was being read (size 3 -> 4 bytes); nothing was written...
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from l1quant.errors import InputError

__all__ = ["InputSnapshot"]


def _state(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class InputSnapshot:
    """The (device, inode, size, mtime, ctime) of each input file, as :meth:`of` found it."""

    states: dict[Path, tuple[int, int, int, int, int] | None]

    @classmethod
    def of(cls, paths: Iterable[Path | None]) -> InputSnapshot:
        """Record the state of each distinct path (None entries, e.g. generated tensors, are skipped)."""
        return cls({p: _state(p) for p in dict.fromkeys(p for p in paths if p is not None)})

    def check(self) -> None:
        """Raise :class:`~l1quant.errors.InputError` (one line naming the first changed file and what changed)
        if any input is no longer what :meth:`of` recorded."""
        for p, before in self.states.items():
            now = _state(p)
            if now == before:
                continue
            if now is None or before is None:
                what = "removed" if now is None else "appeared"
            elif now[:2] != before[:2]:
                what = "replaced by another file"
            elif now[2] != before[2]:
                what = f"size {before[2]} -> {now[2]} bytes"
            else:
                what = "rewritten in place: modification time changed"
            raise InputError(f"{p}: changed while it was being read ({what}); nothing was written: rerun once the "
                             "file is stable")

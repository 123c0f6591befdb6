"""One line instead of a silent exit 139 when llama.cpp dies of a fatal signal.

While a llama.cpp call runs (:func:`guard`), SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT go to a handler that
writes one pre-formatted line to stderr (``l1quant: error: MODEL: llama.cpp crashed with SIGSEGV ...``) and
``_exit``\\ s with ``128 + signal`` (the shell's code for death by that signal). Outside llama.cpp calls the
previous handlers (Python's faulthandler under pytest, or the default action) are back in place.

Why in-process and not a child process: ``compare`` reads ~78 MB of logits per chunk from llama.cpp and the
L1 runner samples token by token; a child would copy every one of those through a pipe. The handler does as
little as a handler can: the line is formatted before the call (only the signal name is chosen in the handler,
from lines formatted in advance), written with one ``write`` and followed by ``_exit``, no allocation of note and
no lock taken. It is a ctypes callback, so it runs once the interpreter lock is free: llama.cpp runs with the
lock released (ctypes releases it for every foreign call), so a crash in llama.cpp or in one of ggml's worker
threads reaches it. A second fault inside the handler kills the process with the default action (the signal is
blocked while the handler runs and then reset), never a loop.

The known crash on AMX machines is avoided before it happens (:mod:`l1quant.runtime.probe`); this catches the
rest.

Example:
    >>> with guard("m.gguf", "decode"):
    ...     pass
    >>> installed()
    False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["FATAL_SIGNALS", "disable", "guard", "installed", "line"]

#: The signals a crash inside llama.cpp / ggml raises (SIGABRT: ``GGML_ABORT``).
FATAL_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                                             signal.SIGABRT)

_HANDLER_T = ctypes.CFUNCTYPE(None, ctypes.c_int)
_SA_RESETHAND = 0x80000000  # Linux: the handler runs once, a second fault takes the default action


class _SigAction(ctypes.Structure):
    # glibc/musl ``struct sigaction`` on Linux: handler, 1024-bit mask, flags, restorer.
    _fields_ = [("sa_handler", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(
        ctypes.c_ulong)))), ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]


_lock = threading.Lock()
_depth = 0
_saved: dict[int, _SigAction] = {}
_lines: dict[int, bytes] = {}
_libc: ctypes.CDLL | None = None
_fn: Any = None
_OURS = _SigAction()  # what guard() installs: the handler, an empty mask, reset after one delivery
_OLD = {int(s): _SigAction() for s in FATAL_SIGNALS}  # what it replaced, put back by the outermost guard
_enabled = True


def disable() -> None:
    """Leave fatal signals to their previous handlers from now on in this process (the probe's child, whose
    parent must see the signal itself)."""
    global _enabled
    _enabled = False


def line(model: str, what: str, sig: int) -> str:
    """The one line a crash of llama.cpp prints.

    Example:
        >>> line("m.gguf", "decode", 11)
        'l1quant: error: m.gguf: llama.cpp crashed with SIGSEGV (decode); exit 139'
    """
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return f"l1quant: error: {model}: llama.cpp crashed with {name} ({what}); exit {128 + sig}"


def _on_fatal(sig: int) -> None:
    text = _lines.get(sig) or b"l1quant: error: llama.cpp crashed\n"
    try:
        os.write(2, text)
    finally:
        os._exit(128 + sig)


_HANDLER = _HANDLER_T(_on_fatal)  # one object for the life of the process: the C pointer must stay valid
_OURS.sa_handler = ctypes.cast(_HANDLER, ctypes.c_void_p).value
_OURS.sa_flags = _SA_RESETHAND


def _sigaction() -> Any:
    """libc's ``sigaction`` with its argument types set (once), or None off Linux."""
    global _libc, _fn
    if not sys.platform.startswith("linux"):
        return None  # the struct layout above is Linux's; elsewhere the default action stays
    if _fn is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.sigaction
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_SigAction), ctypes.POINTER(_SigAction)]
        fn.restype = ctypes.c_int
        _fn = fn
    return _fn


@functools.lru_cache(maxsize=64)
def _encoded(model: str, what: str) -> dict[int, bytes]:
    return {int(s): (line(model, what, int(s)) + "\n").encode("utf-8", "replace") for s in FATAL_SIGNALS}


def installed() -> bool:
    """Whether the crash handler is in place now (inside a :func:`guard`)."""
    return _depth > 0


@contextmanager
def guard(model: str, what: str) -> Iterator[None]:
    """Run the body with the one-line crash report for ``model`` (``what``: the call, e.g. ``decode``).

    Re-entrant and thread-safe: the handler is installed by the outermost guard and removed by it; the innermost
    guard's line is the one printed. The lines are formatted here, before llama.cpp runs.
    """
    global _depth
    lines = _encoded(model, what)
    with _lock:
        before = dict(_lines)
        _lines.update(lines)
        if _depth == 0 and _enabled:
            fn = _sigaction()
            if fn is not None:
                for s in FATAL_SIGNALS:
                    if fn(int(s), ctypes.byref(_OURS), ctypes.byref(_OLD[int(s)])) == 0:
                        _saved[int(s)] = _OLD[int(s)]
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            _lines.clear()
            _lines.update(before)
            if _depth == 0 and _saved:
                fn = _sigaction()
                for sig, old in list(_saved.items()):
                    fn(sig, ctypes.byref(old), None)
                _saved.clear()

"""Ctrl-C during the command line's start-up (≈0.3 s of imports: numpy, gguf, tokenizers, click) ends quietly.

Python's default SIGINT handler raises KeyboardInterrupt wherever the import happens to be, and the interpreter
prints a 20-50 line traceback through importlib. Nothing has been opened or written yet at that point, so the
right answer is one line and exit 130. :func:`begin_quiet_start` runs first thing in ``l1quant/__init__.py`` when
the process is the ``l1quant`` command (not when a program imports the library); :func:`end_quiet_start` puts
Python's handler back once ``l1quant.cli`` is imported, after which the commands handle KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

_installed = False


def _quiet_exit(signum: int, frame: Any) -> None:
    os.write(2, b"l1quant: interrupted (SIGINT)\n")
    os._exit(130)


def _is_cli() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    # console script ``l1quant``, or ``python -m l1quant`` (argv[0] is "-m" while the package is being located)
    return os.path.basename(argv0) == "l1quant" or argv0 == "-m" or argv0.endswith(os.path.join("l1quant", "__main__.py"))


_old_hook: Any = None


def _start_up_hook(et: type[BaseException], ev: BaseException, tb: Any) -> None:
    """An exception escaping the imports themselves (the commands' own errors are handled by the CLI)."""
    if issubclass(et, MemoryError):
        os.write(2, b"l1quant: error: out of memory while starting (the machine or a memory limit such as "
                    b"ulimit -v / a cgroup)\n")
        os._exit(1)
    if issubclass(et, KeyboardInterrupt):
        os.write(2, b"l1quant: interrupted (SIGINT)\n")
        os._exit(130)
    (_old_hook or sys.__excepthook__)(et, ev, tb)


def begin_quiet_start() -> None:
    """Install the quiet SIGINT handler (only over Python's own default) and a start-up excepthook (out of memory
    while importing is one line too), only for the command line."""
    global _installed, _old_hook
    if not _is_cli() or threading.current_thread() is not threading.main_thread():
        return
    _old_hook, sys.excepthook = sys.excepthook, _start_up_hook
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quiet_exit)
    _installed = True


def end_quiet_start() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt), if :func:`begin_quiet_start` took it."""
    global _installed
    if _installed and signal.getsignal(signal.SIGINT) is _quiet_exit:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _installed and sys.excepthook is _start_up_hook:
        sys.excepthook = _old_hook
    _installed = False

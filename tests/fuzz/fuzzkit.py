"""What the fuzzers (hypothesis tests and atheris harnesses, GGUF and safetensors) share: the budgets from the
environment, the one-line-message property, and the crash corpus.

A corpus folder holds libFuzzer-style ``crash-<sha1>`` files (and hand-made hostile inputs); both fuzzers write
there and the hypothesis modules replay every file on each run. Only the shortest failing input per failure kind
is saved, at module teardown, so hypothesis' shrinking does not flood the folder with intermediate examples.

Example:
    >>> crashes = CrashCorpus(Path("tests/fuzz/corpus_gguf"))
    >>> assert_one_line("model.safetensors: tensor 'x' is truncated")
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

#: hypothesis examples per fuzz test (CI keeps the default; see README.md in this folder)
EXAMPLES = int(os.environ.get("L1QUANT_FUZZ_EXAMPLES", "300"))
#: the longest one parse may take, in seconds: a hostile length must never make the reader loop or allocate
MAX_PARSE_S = float(os.environ.get("L1QUANT_FUZZ_MAX_PARSE_S", "1.0"))


#: the most memory one parse may allocate (traced Python and numpy allocations, in MiB): a count taken from the
#: input must never turn a few bytes into gigabytes of objects
MAX_PARSE_MIB = float(os.environ.get("L1QUANT_FUZZ_MAX_PARSE_MIB", "64"))


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary folder for a fuzz module's inputs, deleted when the process exits (a hypothesis run
    writes thousands of files there; left behind, every run added ~50 MB to a shared disk).

    Example:
        >>> scratch_dir("l1quant-doc-").is_dir()
        True
    """
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, True)
    return d


class Budget:
    """Time and memory of one parse, held to MAX_PARSE_S and MAX_PARSE_MIB (``with Budget(): parse(...)``).

    Memory is tracemalloc's peak (every Python object and numpy buffer allocated during the parse), which is
    per-input and deterministic, unlike the process's RSS. Tracing slows parsing ~2x; the time limit allows it.

    Example:
        >>> with Budget():
        ...     _ = bytes(1 << 20)
    """

    def __init__(self, seconds: float | None = None, mib: float | None = None) -> None:
        self.seconds = MAX_PARSE_S * 2 if seconds is None else seconds  # x2: tracemalloc's own overhead
        self.mib = MAX_PARSE_MIB if mib is None else mib

    def __enter__(self) -> Budget:
        import time
        import tracemalloc

        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time
        import tracemalloc

        elapsed = time.perf_counter() - self._t0
        peak = (tracemalloc.get_traced_memory()[1] - self._base) / 2**20
        if not self._was_tracing:
            tracemalloc.stop()
        if exc[0] is None or isinstance(exc[1], Exception):
            assert elapsed < self.seconds, f"parse took {elapsed:.3f}s (budget {self.seconds}s)"
            assert peak < self.mib, f"parse allocated {peak:.1f} MiB (budget {self.mib} MiB)"


def assert_one_line(msg: str) -> None:
    """An error message is exactly one line: no ``\\n``, ``\\r`` or any other character ``str.splitlines`` splits on."""
    if len(msg.splitlines()) > 1 or msg.endswith(("\n", "\r")):
        raise AssertionError(f"multi-line message: {msg[:300]!r}")


class CrashCorpus:
    """The saved failing inputs of one fuzz target."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._shortest: dict[str, bytes] = {}

    def files(self) -> list[Path]:
        """Every saved input (hidden files and the folder's notes excluded), in a stable order."""
        return sorted(p for p in self.folder.glob("[!.]*") if p.is_file() and p.suffix != ".md")

    def remember(self, e: BaseException, data: bytes) -> None:
        """Keep ``data`` if it is the shortest input so far failing this way (the exception type and message
        tail, digits dropped, so one bug with varying numbers stays one entry)."""
        kind = type(e).__name__ + ":" + "".join(c for c in str(e).split(":")[-1][:60] if not c.isdigit())
        if kind not in self._shortest or len(data) < len(self._shortest[kind]):
            self._shortest[kind] = data

    def save(self) -> None:
        """Write the remembered inputs as ``crash-<sha1>`` (libFuzzer's naming, so atheris finds them too)."""
        for data in self._shortest.values():
            self.folder.mkdir(exist_ok=True)
            p = self.folder / f"crash-{hashlib.sha1(data).hexdigest()}"
            if not p.exists():
                p.write_bytes(data)

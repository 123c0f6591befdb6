"""Whether llama.cpp's extra buffer types (weight repacking) work on this machine, learnt once in a child process.

On some virtual machines the CPU reports AMX but its tile state is unusable: llama.cpp, built natively as
llama-cpp-python builds it, repacks Q4_0/Q8_0/K-quant weights into its AMX (or other CPU-specific) buffer types
and dies with SIGSEGV or SIGILL on the first decode; F16 works, and llama.cpp's ``-nr/--no-repack``
(``use_extra_bufts = false``) avoids it. So before the first model is run, a child process
(:mod:`l1quant.runtime.probe_child`) builds a tiny model
(:mod:`l1quant.testing` + :func:`l1quant.convert`, Q8_0 and Q4_0: the types the AMX and repack buffers take),
loads it with the extra buffer types on and decodes a few tokens. The answer is cached per machine (CPU model
and flags) and llama.cpp build (``build``: :func:`l1quant.runtime.llama.build_id`) under the user cache folder
(``$L1QUANT_CACHE`` or ``$XDG_CACHE_HOME/l1quant`` or ``~/.cache/l1quant``, in ``runtime/``). Where the child
died by a signal, models run without extra buffer types and one line says so.

``L1QUANT_PROBE_CRASH=SIGSEGV`` (any signal name) makes the child kill itself with that signal after loading,
as an AMX machine would: the tests use it to take the fallback path on any machine.

Example:
    >>> isinstance(machine_id(), str)
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from l1quant.cache import user_cache_dir

__all__ = ["CRASH_ENV", "ProbeResult", "cache_path", "extra_bufts_work", "machine_id", "probe"]

#: Environment variable naming a signal the probe child dies of (tests of the fallback path).
CRASH_ENV = "L1QUANT_PROBE_CRASH"
#: Seconds the child may take (it takes about 2 s: import, build two tiny GGUFs, decode).
TIMEOUT_S = 120

_memo: dict[str, bool] = {}


@dataclass(frozen=True)
class ProbeResult:
    """What the probe found: ``extra_bufts`` usable; ``signal`` the child died of (None when it did not);
    ``cached`` whether the answer came from the cache file."""

    extra_bufts: bool
    signal: str | None
    cached: bool
    path: Path


def machine_id() -> str:
    """The CPU as llama.cpp's choice of kernels sees it: architecture, model name and feature flags."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for ln in f:
                if not ln.strip():
                    break  # the first processor's block is enough
                k, _, v = ln.partition(":")
                if k.strip() in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                    fields[k.strip()] = " ".join(v.split())
    except OSError:
        pass
    return ";".join([platform.machine(), *(f"{k}={v}" for k, v in sorted(fields.items()))])


def cache_path(build: str) -> Path:
    """The cache file for this machine and llama.cpp ``build``.

    Example:
        >>> cache_path("llama-cpp-python 0.3.36").name.startswith("extra-bufts-")
        True
    """
    key = hashlib.sha256(f"{machine_id()}\0{build}".encode()).hexdigest()[:16]
    return user_cache_dir("runtime") / f"extra-bufts-{key}.json"


def _say(text: str) -> None:
    print(f"l1quant: {text}", file=sys.stderr, flush=True)


def probe(build: str, *, use_cache: bool = True) -> ProbeResult:
    """Run (or read from the cache) the extra-buffer-type probe; see the module docstring.

    A child that dies by a signal means the extra buffer types crash here; one that exits 0 means they work.
    Anything else (the child could not build its model, it timed out) proves nothing: the answer is "they work"
    (llama.cpp's default) and nothing is cached.
    """
    path = cache_path(build)
    if use_cache and path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return ProbeResult(bool(d["extra_bufts"]), d.get("signal"), True, path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is probed again and rewritten
    # the child imports this very l1quant, wherever it was imported from
    root = str(Path(__file__).resolve().parent.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run([sys.executable, "-m", "l1quant.runtime.probe_child"], env=env,
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ProbeResult(True, None, False, path)
    rc = proc.returncode
    sig: int | None = -rc if rc < 0 else None
    if sig is None and rc != 0:
        return ProbeResult(True, None, False, path)
    name = signal.Signals(sig).name if sig is not None else None
    res = ProbeResult(sig is None, name, False, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"extra_bufts": res.extra_bufts, "signal": name, "machine": machine_id()}) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)  # concurrent probes write the same answer: last one wins, never a torn file
    return res


def extra_bufts_work(build: str) -> bool:
    """Whether models should load with llama.cpp's extra buffer types on this machine (probed once per machine
    and build, then read from the cache). Says once per process, in one line, when they are turned off."""
    key = build
    if key not in _memo:
        res = probe(build)
        _memo[key] = res.extra_bufts
        if not res.extra_bufts:
            _say(f"llama.cpp's extra buffer types (weight repacking) crashed a probe on this CPU ({res.signal}); "
                 f"running without them, as --no-repack (cached in {res.path})")
    return _memo[key]

"""Locate and run llama.cpp's reference converter (``convert_hf_to_gguf.py`` from the llama-cpp-python 0.3.36 sdist).

Where the reference is looked for, first hit wins:

1. ``$L1QUANT_REFERENCE``: path to ``convert_hf_to_gguf.py`` (``.ci/run`` sets it);
2. ``<repo>/../l1quant-ref/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py`` (where ``.ci/run``
   unpacks the sdist);
3. ``/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py`` (the development machine).

It runs under ``$L1QUANT_REFERENCE_PYTHON`` (default: this interpreter), which must import torch and transformers.

Outside CI a missing reference or runtime makes the tests that need it skip with the reason. Under ``CI=true`` it
makes them FAIL: CI provides everything, so a skip there would mean parity silently went untested.

Example (in a test):
    >>> ref = require_reference()                                      # doctest: +SKIP
    >>> run_reference(ref, model_dir, "q8_0", tmp_path / "ref.gguf")   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE_ENV = "L1QUANT_REFERENCE"
PYTHON_ENV = "L1QUANT_REFERENCE_PYTHON"
SDIST = "llama_cpp_python-0.3.36"
_REL = Path(SDIST) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
#: Well-known unpack locations, tried in order after $L1QUANT_REFERENCE.
CANDIDATES: tuple[Path, ...] = (
    REPO.parent / "l1quant-ref" / _REL,
    Path("/work/ref") / _REL,
)
#: One reference run on a tiny checkpoint takes ~10 s (imports + the 151k-token vocab); this is a hang guard.
RUN_TIMEOUT_S = 600


def in_ci() -> bool:
    """True when running under CI (``CI`` set to true/1/yes), where missing prerequisites fail instead of skip.

    Example:
        >>> isinstance(in_ci(), bool)
        True
    """
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the current test with ``reason``, or fail it under CI (where everything must be provided).

    Example:
        >>> unavailable("llama_cpp is not importable")  # doctest: +SKIP
    """
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Reference:
    """A usable reference converter: the script and the interpreter that runs it."""

    script: Path
    python: str

    def command(self, model_dir: Path, outtype: str, outfile: Path) -> list[str]:
        """The reference's command line for one conversion."""
        return [self.python, str(self.script), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]


def find_script() -> tuple[Path | None, str]:
    """Return (path to convert_hf_to_gguf.py, "") or (None, reason it was not found).

    Example:
        >>> path, why = find_script()
        >>> (path is None) == bool(why)
        True
    """
    env = os.environ.get(REFERENCE_ENV)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p.resolve(), ""
        return None, f"${REFERENCE_ENV}={env} is not a file (expected .../vendor/llama.cpp/convert_hf_to_gguf.py)"
    for p in CANDIDATES:
        if p.is_file():
            return p.resolve(), ""
    tried = ", ".join(str(p) for p in CANDIDATES)
    return None, (f"reference converter not found: set ${REFERENCE_ENV} to llama.cpp's convert_hf_to_gguf.py "
                  f"from the llama-cpp-python==0.3.36 sdist (tried {tried})")


@functools.lru_cache(maxsize=None)
def _python_reason(python: str) -> str:
    """"" when ``python`` imports torch and transformers, else why not (checked once per session: ~3 s)."""
    try:
        r = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"reference interpreter {python} cannot run: {e}"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return (f"reference interpreter {python} cannot import torch and transformers "
                f"(pip install -e '.[reference]'): {last}")
    return ""


@functools.lru_cache(maxsize=None)
def find_reference() -> tuple[Reference | None, str]:
    """Return (Reference, "") when the script is found and its interpreter has torch + transformers, else (None, why).

    Example:
        >>> ref, why = find_reference()  # doctest: +SKIP
    """
    script, why = find_script()
    if script is None:
        return None, why
    python = os.environ.get(PYTHON_ENV) or sys.executable
    why = _python_reason(python)
    if why:
        return None, why
    return Reference(script, python), ""


def require_reference() -> Reference:
    """The reference converter, or skip the test (fail under CI) with the reason it is unusable.

    Example:
        >>> ref = require_reference()  # doctest: +SKIP
    """
    ref, why = find_reference()
    if ref is None:
        unavailable(why)
    return ref


def require_module(name: str) -> ModuleType:
    """Import ``name``, or skip the test (fail under CI) naming the missing module.

    Example:
        >>> require_module("json").__name__
        'json'
    """
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        unavailable(f"{name} is not importable ({e})")
    if name == "llama_cpp":
        _extra_bufts_as_probed(mod)
    return mod


def _extra_bufts_as_probed(llama_cpp: ModuleType) -> None:
    """Tests that load models with llama-cpp-python's ``Llama`` directly get llama.cpp's extra buffer types exactly
    where l1quant's runtime uses them: off where its probe found that they crash this CPU (some AMX machines), so
    the suite runs there as anywhere else. ``Llama`` reads ``llama_model_default_params()`` at each load."""
    from l1quant.runtime.llama import build_id
    from l1quant.runtime.probe import extra_bufts_work

    lc = llama_cpp.llama_cpp
    default = lc.llama_model_default_params
    if getattr(default, "l1quant_no_repack", False) or extra_bufts_work(build_id()):
        return

    def without_extra_bufts() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    without_extra_bufts.l1quant_no_repack = True  # type: ignore[attr-defined]
    lc.llama_model_default_params = without_extra_bufts
    llama_cpp.llama_model_default_params = without_extra_bufts


class ReferenceFailed(RuntimeError):
    """The reference converter exited with an error (message: its command and the tail of its log)."""


def run_reference(ref: Reference, model_dir: Path, outtype: str, outfile: Path) -> Path:
    """Run the reference converter once; return ``outfile`` or raise ReferenceFailed with its log tail.

    The child gets ``NO_LOCAL_GGUF`` removed so it uses its own vendored gguf-py, as a user running the script
    from the sdist would, and one torch thread because tests run several conversions side by side.

    Example:
        >>> run_reference(require_reference(), Path("tiny"), "q8_0", Path("ref.gguf"))  # doctest: +SKIP
        PosixPath('ref.gguf')
    """
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = ref.command(model_dir, outtype, outfile)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ReferenceFailed(f"reference timed out after {RUN_TIMEOUT_S} s: {' '.join(cmd)}") from None
    if r.returncode != 0 or not outfile.is_file():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
        raise ReferenceFailed(f"reference failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")
    return outfile

"""Helpers for tests that run the real ``l1quant`` CLI in a subprocess (imported by test_errors and test_signals)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

TARGET = "model.gguf"
PRECIOUS = b"an existing GGUF the user cares about\n" * 10


def cli() -> list[str]:
    """The installed ``l1quant`` entry point next to this interpreter, else the same ``main`` via ``-c``."""
    exe = Path(sys.executable).parent / "l1quant"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from l1quant.cli import main; sys.exit(main(prog_name='l1quant'))"]


def clean_env() -> dict[str, str]:
    """The environment without L1QUANT_DEBUG, and without bytecode writes (the input-folder check hashes files)."""
    env = {k: v for k, v in os.environ.items() if k != "L1QUANT_DEBUG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def tree_hash(d: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``d`` (folders as ``<dir>``): "the input folder is unchanged"."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(d.rglob("*"))}

#!/usr/bin/env python
"""Coverage-guided fuzzing of the safetensors reader with atheris (libFuzzer). Not collected by pytest.

The property is test_fuzz_safetensors.py's: ``open_checkpoint`` on a folder holding the input as
``model.safetensors`` returns tensors that lie inside the file and can be read, or raises an ``L1QuantError``
with a one-line message; never another exception, never slower than 1 s. Crashes land in
tests/fuzz/corpus_safetensors/ as ``crash-<sha1>`` (replayed by pytest).

Usage (from the repository root; ``pip install atheris``):
    python tests/fuzz/atheris_safetensors.py -max_total_time=300 -print_final_stats=1   # 5 minutes
    python tests/fuzz/atheris_safetensors.py -runs=100000 my_corpus_dir/                # flags and dirs pass through
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports(include=["l1quant"]):
    from l1quant.errors import L1QuantError
    from l1quant.source.safetensors import open_checkpoint

from fuzzkit import MAX_PARSE_S, CrashCorpus, assert_one_line
from test_fuzz_safetensors import seeds  # noqa: E402 - after the instrumented imports on purpose

_SCRATCH = Path(tempfile.mkdtemp(prefix="l1quant-atheris-st-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_DIR = _SCRATCH / "model"
_DIR.mkdir()
_CASE = _DIR / "model.safetensors"


def test_one_input(data: bytes) -> None:
    _CASE.write_bytes(data)
    t0 = time.perf_counter()
    try:
        ck = open_checkpoint(_DIR)
    except L1QuantError as e:
        assert_one_line(str(e))
        ck = None
    if ck is not None:
        size = len(data)
        for t in ck.tensors.values():
            if t.nbytes != math.prod(t.shape) * t.itemsize or not 0 <= t.offset <= t.offset + t.nbytes <= size:
                raise AssertionError(f"tensor {t.name!r} outside the file or inconsistent")
            if t.read().shape != t.shape:
                raise AssertionError(f"tensor {t.name!r}: read shape mismatch")
    elapsed = time.perf_counter() - t0
    if elapsed > MAX_PARSE_S:
        raise AssertionError(f"parse took {elapsed:.2f}s")


def main() -> None:
    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:  # a fresh working corpus: the valid seeds plus every saved crasher and hostile file
        work = _SCRATCH / "corpus"
        work.mkdir()
        for i, s in enumerate(seeds()):
            (work / f"seed-{i}").write_bytes(s)
        for p in CrashCorpus(HERE / "corpus_safetensors").files():
            shutil.copy(p, work / p.name)
        argv.append(str(work))
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        argv.insert(1, f"-artifact_prefix={HERE / 'corpus_safetensors'}/")
    if not any(a.startswith("-dict=") for a in argv) and (HERE / "safetensors.dict").is_file():
        argv.insert(1, f"-dict={HERE / 'safetensors.dict'}")
    if not any(a.startswith("-max_len=") for a in argv):
        argv.insert(1, "-max_len=4096")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

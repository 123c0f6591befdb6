#!/usr/bin/env python
"""Coverage-guided fuzzing of ``l1quant.gguf.reader.read_gguf`` with atheris (libFuzzer). Not collected by pytest.

The property is the same as test_fuzz_gguf.py: a GGUFFile or a GGUFFormatError, never another exception, and
no parse slower than 1 s. Crashes land in tests/fuzz/corpus_gguf/ as ``crash-<sha1>`` (replayed by pytest).

Usage (from the repository root; ``pip install atheris``):
    python tests/fuzz/atheris_gguf.py -max_total_time=300            # 5 minutes, fresh temp working corpus
    python tests/fuzz/atheris_gguf.py -runs=100000 my_corpus_dir/    # libFuzzer flags and dirs pass through
"""

from __future__ import annotations

import json
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
    from l1quant.errors import GGUFFormatError
    from l1quant.gguf.reader import describe, read_gguf

from fuzzkit import MAX_PARSE_S, CrashCorpus, assert_one_line
from gguf_builders import all_types_file, valid_file

_SCRATCH = Path(tempfile.mkdtemp(prefix="l1quant-atheris-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_CASE = _SCRATCH / "case.gguf"


def test_one_input(data: bytes) -> None:
    _CASE.write_bytes(data)
    t0 = time.perf_counter()
    try:
        gf = read_gguf(_CASE)
    except GGUFFormatError as e:
        assert_one_line(str(e))
        gf = None
    elapsed = time.perf_counter() - t0
    if elapsed > MAX_PARSE_S:
        raise AssertionError(f"parse took {elapsed:.2f}s")
    if gf is not None:
        for t in gf.tensors:
            if len(gf.read_tensor_bytes(t)) != t.nbytes:
                raise AssertionError(f"tensor {t.name}: short read")
        json.dumps(describe(gf, tokens=3))


def main() -> None:
    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:  # a fresh working corpus seeded with valid files and every saved crasher/seed
        work = _SCRATCH / "corpus"
        work.mkdir()
        (work / "seed-builder.gguf").write_bytes(valid_file())
        all_types_file(str(work / "seed-writer.gguf"))
        for p in CrashCorpus(HERE / "corpus_gguf").files():
            shutil.copy(p, work / p.name)
        argv.append(str(work))
    if not any(a.startswith("-artifact_prefix=") for a in argv):
        argv.append(f"-artifact_prefix={HERE / 'corpus_gguf'}/")
    if not any(a.startswith("-dict=") for a in argv):
        argv.append(f"-dict={HERE / 'gguf.dict'}")
    for flag, default in (("-max_len=", "16384"), ("-timeout=", "10"), ("-rss_limit_mb=", "2048")):
        if not any(a.startswith(flag) for a in argv):
            argv.append(flag + default)
    atheris.Setup(argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Output bytes do not depend on scheduling: thread count, chunk size, kernel implementation, writeback.

Every chunk's destination is fixed by the plan, so any difference here is a pipeline bug (a chunk written at the
wrong offset, a buffer reused too early, a race between threads) or a kernel path that disagrees with the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

import l1quant
from l1quant.conversion.prepare import prepare
from l1quant.conversion.pipeline import iter_jobs, stream_tensors
from l1quant.conversion.plan import ConversionPlan
from l1quant.errors import TensorError
from l1quant.gguf.header import infer_type
from l1quant.gguf.writer import pack_value, write_header
from l1quant.output import AtomicOutput
from l1quant.kernels import native_available
from l1quant.source.safetensors import read_header

# 1 byte -> one row per job (the most jobs, the most interleaving); 4097 -> odd row counts per job, and a last job
# shorter than the others in most tensors; 1 MiB -> whole small tensors per job.
CHUNKS = (1, 4097, 1 << 20)
THREADS = (1, 2, 4)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def odd_model(tiny_factory: Callable[..., Path]) -> Path:
    # rows of 96 values (3 Q8_0 blocks), 3 layers, a vocab that is not a power of two: uneven chunk boundaries
    return tiny_factory("r1", hidden=96, layers=3, heads=4, kv_heads=2, ff=160, vocab=151680)


def restream(reference: Path, plan: ConversionPlan, off: int, target: Path, threads: int, chunk: int) -> str:
    """Copy ``reference``, zero the data of every tensor in ``plan``, refill it with the pipeline; return the sha256.

    A byte the pipeline fails to write (or writes elsewhere) shows up as a zero or a clobbered neighbour.
    """
    data = bytearray(reference.read_bytes())
    for t in plan.tensors:
        start = off + t.offset
        data[start:start + t.nbytes] = bytes(t.nbytes)
    target.write_bytes(data)
    fd = os.open(target, os.O_RDWR)
    try:
        stream_tensors(plan, fd, off, threads=threads, chunk_bytes=chunk)
    finally:
        os.close(fd)
    return sha(target)


@pytest.mark.parametrize("qtype", ["q8_0", "f16", pytest.param("bf16", marks=pytest.mark.slow),
                                   pytest.param("f32", marks=pytest.mark.slow)])
def test_bytes_identical_across_threads_and_chunks(odd_model: Path, tmp_path: Path, qtype: str) -> None:
    reference = l1quant.convert(odd_model, qtype, tmp_path / "ref.gguf", threads=1)
    want = sha(reference)
    plan = prepare(odd_model, qtype, tmp_path / "unused.gguf").plan
    off = reference.stat().st_size - plan.data_nbytes  # the data section ends the file (gguf's reader: ~20 s here)
    assert off > 0 and off % 32 == 0
    assert restream(reference, plan, off, tmp_path / "x.gguf", 1, 1 << 20) == want  # the harness itself
    # every tensor but the two vocab-sized ones (151680 rows: one job per row would take minutes)
    small = dataclasses.replace(plan, tensors=[t for t in plan.tensors if t.n_rows < 10_000])
    assert len(small.tensors) == len(plan.tensors) - 2
    for threads in THREADS:
        for chunk in CHUNKS:
            p = small if chunk < 1024 else plan
            assert restream(reference, p, off, tmp_path / "x.gguf", threads, chunk) == want, (threads, chunk)


@pytest.mark.parametrize("threads, chunk", [(2, 4097), (4, 1 << 20), (3, 8 << 20)])
def test_convert_api_is_invariant(odd_model: Path, tmp_path: Path, threads: int, chunk: int) -> None:
    # the same through the public entry point (threads/chunk_bytes plumbing, header, atomic output)
    base = l1quant.convert(odd_model, "q8_0", tmp_path / "base.gguf", threads=1)
    other = l1quant.convert(odd_model, "q8_0", tmp_path / "other.gguf", threads=threads, chunk_bytes=chunk)
    assert sha(base) == sha(other)


def test_one_byte_chunks_really_split_rows(odd_model: Path) -> None:
    # guards the tests above: with chunk_bytes=1 every job is one row, so the threads really interleave
    plan = prepare(odd_model, "q8_0", Path("unused.gguf")).plan
    jobs = list(iter_jobs(plan, 1))
    assert all(j.row_stop - j.row_start == 1 for j in jobs)
    assert len(jobs) == sum(t.n_rows for t in plan.tensors)
    assert len({j.row_stop - j.row_start for j in iter_jobs(plan, 4097)}) > 1  # uneven last jobs exist


def test_writeback_does_not_change_bytes(odd_model: Path, tmp_path: Path) -> None:
    p = prepare(odd_model, "q8_0", tmp_path / "x.gguf")
    digests = []
    for wb in (True, False):
        target = tmp_path / f"wb-{wb}.gguf"
        with AtomicOutput(target, 0) as out:
            off = write_header(p.header, out.fd)
            out.reserve(off + p.plan.data_nbytes)
            stream_tensors(p.plan, out.fd, off, threads=2, chunk_bytes=4097, writeback=wb)
        digests.append(sha(target))
        # prepare() builds the header once; a second write_header needs a fresh writer
        p = prepare(odd_model, "q8_0", tmp_path / "x.gguf")
    assert digests[0] == digests[1]


@pytest.mark.skipif(not native_available(), reason="compiled kernels not built: only the numpy path exists")
@pytest.mark.parametrize("qtype", ["q8_0", pytest.param("f16", marks=pytest.mark.slow)])
def test_numpy_and_native_kernels_write_the_same_file(odd_model: Path, tmp_path: Path, qtype: str) -> None:
    native = l1quant.convert(odd_model, qtype, tmp_path / "native.gguf", threads=2, chunk_bytes=4097)
    env = {**os.environ, "L1QUANT_NO_NATIVE": "1"}
    code = ("import sys, l1quant; from l1quant.kernels import native_available; assert not native_available(); "
            "l1quant.convert(sys.argv[1], sys.argv[2], sys.argv[3], threads=3, chunk_bytes=1 << 20)")
    subprocess.run([sys.executable, "-c", code, str(odd_model), qtype, str(tmp_path / "numpy.gguf")], env=env,
                   check=True, capture_output=True)
    assert sha(native) == sha(tmp_path / "numpy.gguf")


def test_nonfinite_is_found_whatever_the_chunking(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    # A NaN planted in the middle of a tensor is reported with the same index for every threads/chunk setting.
    src = tiny_factory("r1", hidden=96, layers=1, heads=4, kv_heads=2, ff=160, vocab=151680)
    bad_dir = tmp_path / "bad"
    shutil.copytree(src, bad_dir)
    tensors, _ = read_header(bad_dir / "model.safetensors")
    t = tensors["model.layers.0.mlp.up_proj.weight"]
    row, col = 97, 41
    with open(bad_dir / "model.safetensors", "r+b") as f:
        f.seek(t.offset + (row * t.n_cols + col) * 2)
        f.write(np.array([0x7FC0], "<u2").tobytes())  # bf16 NaN
    for threads, chunk in [(1, 1 << 20), (4, 777)]:
        with pytest.raises(TensorError, match=rf"up_proj.*\[{row}, {col}\]"):
            l1quant.convert(bad_dir, "q8_0", tmp_path / "out.gguf", threads=threads, chunk_bytes=chunk)
        assert not (tmp_path / "out.gguf").exists()
    out = l1quant.convert(bad_dir, "q8_0", tmp_path / "out.gguf", threads=2, allow_nonfinite=True)
    assert out.is_file()


def test_bulk_kv_packing_matches_gguf(odd_model: Path) -> None:
    # The header's long arrays are packed in bulk by the writer: every KV must be byte-identical to gguf's own.
    header = prepare(odd_model, "q8_0", Path("unused.gguf")).header
    gw = gguf.GGUFWriter(path=None, arch="qwen2")
    n_bulk = 0
    for key, v in header.kv.items():
        sub = v.type[1] if isinstance(v.type, tuple) else None
        mine = pack_value(v.value, v.type)
        theirs = gguf.GGUFWriter._pack_val(gw, v.value, v.root_type, False, sub_type=sub)
        assert mine == theirs, key
        n_bulk += isinstance(v.value, list) and len(v.value) >= 256
    assert n_bulk >= 3  # tokens, token types, merges really took the bulk path


@pytest.mark.parametrize("val, sub", [
    (["a", "ü", "", "\u2581x", "日本"] * 100, None),
    ([1, -2, 2**31 - 1, -(2**31)] * 100, None),
    ([i % 256 for i in range(300)], gguf.GGUFValueType.UINT8),
    ([2**64 - 1] * 300, gguf.GGUFValueType.UINT64),
    ([-1] * 300, gguf.GGUFValueType.INT64),
    ([1.5] * 300, None),
    ([True, False] * 200, None),
])
def test_bulk_kv_packing_edge_cases(val: list[object], sub: gguf.GGUFValueType | None) -> None:
    gw = gguf.GGUFWriter(path=None, arch="qwen2")
    vtype = infer_type(val) if sub is None else (gguf.GGUFValueType.ARRAY, sub)
    assert pack_value(val, vtype) == gguf.GGUFWriter._pack_val(gw, val, gguf.GGUFValueType.ARRAY, False, sub_type=sub)


@pytest.mark.parametrize("val, sub", [
    ([2**31] * 300, None),                        # does not fit INT32
    ([-1] * 300, gguf.GGUFValueType.UINT32),      # negative into unsigned
    (list(range(300)), gguf.GGUFValueType.UINT8),  # 256.. do not fit a byte
    (["a"] * 150 + [1] * 150, None),              # mixed types
])
def test_bulk_kv_packing_errors_like_gguf(val: list[object], sub: gguf.GGUFValueType | None) -> None:
    gw = gguf.GGUFWriter(path=None, arch="qwen2")
    with pytest.raises(Exception) as theirs:
        gguf.GGUFWriter._pack_val(gw, val, gguf.GGUFValueType.ARRAY, True, sub_type=sub)
    with pytest.raises(type(theirs.value)):
        pack_value(val, infer_type(val) if sub is None else (gguf.GGUFValueType.ARRAY, sub))

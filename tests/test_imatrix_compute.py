"""``l1quant imatrix``: importance matrices computed as llama-imatrix computes them.

The slow layer runs llama.cpp's own ``llama-imatrix`` (built from the pinned sdist by ``.ci/run``;
``$L1QUANT_LLAMA_IMATRIX`` or ``../l1quant-ref/llama-perplexity-build/bin/llama-imatrix``) and ``l1quant imatrix``
on the same tiny GGUF, text, ``-c``, ``-b``, ``--chunks`` and threads, and requires the two files to be the same
bytes: same keys, same entries, counts exact and ``in_sum2`` bit-equal (tolerance zero: both read ggml's own
activations through the evaluation callback and add the squares in float32 in the same order), in both formats.
The per-chunk PPL agrees to the printed precision (the log-sum-exp's summation order differs, so only ~1e-9).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reference import REPO, require_module, unavailable

import l1quant
import l1quant.imatrix_compute
from l1quant.cli import main
from l1quant.errors import InputError
from l1quant.imatrix_compute import lossless_type, seq_square_sum
from l1quant.imatrix_file import read_imatrix

IMATRIX_ENV = "L1QUANT_LLAMA_IMATRIX"
IMATRIX_CANDIDATES = (
    REPO.parent / "l1quant-ref" / "llama-perplexity-build" / "bin" / "llama-imatrix",
    Path("/work/l1quant-ref/llama-perplexity-build/bin/llama-imatrix"),
)
THREADS = 2


# ------------------------------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("rows,cols", [(1, 7), (16, 256), (512, 320), (2048, 64)])
def test_seq_square_sum_is_the_row_by_row_float32_sum(rows: int, cols: int) -> None:
    # llama-imatrix adds x*x onto the running float sum one row after another; a pairwise or float64 sum would
    # round differently somewhere in these
    rng = np.random.default_rng(rows * 1000 + cols)
    acc = (rng.random(cols) * 1e3).astype(np.float32)
    x = (rng.standard_normal((rows, cols)) * rng.random(cols) * 30).astype(np.float32)
    want = acc.copy()
    for r in x:
        want += r * r
    got = seq_square_sum(acc, x)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    if rows >= 512:
        wide = (acc.astype(np.float64) + (x.astype(np.float64) ** 2).sum(0)).astype(np.float32)
        assert not np.array_equal(wide, want), "the test data must tell the float32 order apart"


def test_threaded_square_sum_equals_the_sequential_one() -> None:
    from l1quant.imatrix_compute import Collector

    rng = np.random.default_rng(7)
    acc = (rng.random(8960) * 50).astype(np.float32)
    x = (rng.standard_normal((512, 8960)) * 4).astype(np.float32)
    c = Collector(chunk_size=512, threads=4)
    try:
        got = c.square_sum(acc, x)
        strided = c.square_sum(acc[:1000], x[:, :1000])  # a column slice of a wider array, as ggml's rows can be
    finally:
        c.close()
    assert np.array_equal(got.view(np.uint32), seq_square_sum(acc, x).view(np.uint32))
    assert np.array_equal(strided.view(np.uint32), seq_square_sum(acc[:1000], np.ascontiguousarray(x[:, :1000]))
                          .view(np.uint32))


def test_lossless_type_follows_the_source_dtype(tiny_factory: Callable[..., Path]) -> None:
    assert lossless_type(tiny_factory(dtype="bf16")) == "bf16"
    assert lossless_type(tiny_factory(dtype="f16")) == "f16"
    assert lossless_type(tiny_factory(dtype="f32")) == "f32"


# ------------------------------------------------------------------------------------------------ llama-imatrix


def find_llama_imatrix() -> Path:
    """The llama-imatrix binary built from the pinned sdist, or skip (fail under CI)."""
    env = os.environ.get(IMATRIX_ENV)
    cands = [Path(env)] if env else list(IMATRIX_CANDIDATES)
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    unavailable(f"llama-imatrix not built (set ${IMATRIX_ENV}; .ci/run builds it; tried "
                f"{', '.join(map(str, cands))})")


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from l1quant.evaluate import default_compare_text

    p = tmp_path_factory.mktemp("text") / "calib.txt"
    p.write_text(default_compare_text() + "\n", encoding="utf-8")
    return p


def _llama_imatrix(gguf: Path, text: Path, out: Path, args: list[str]) -> str:
    exe = find_llama_imatrix()
    r = subprocess.run([str(exe), "-m", str(gguf), "-f", str(text), "-o", str(out), "-t", str(THREADS), *args],
                       capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout


def _chunk_ppl(printed: str) -> list[float]:
    return [float(v) for v in re.findall(r"\[\d+\]([\d.]+),", printed)]


def _same_file(ours: Path, ref: Path) -> None:
    a, b = read_imatrix(ours), read_imatrix(ref)
    assert sorted(a.entries) == sorted(b.entries) and a.chunk_count == b.chunk_count
    assert ours.read_bytes() == ref.read_bytes(), f"{ours.name} differs from llama-imatrix's {ref.name}"


CASES = {
    # hidden a multiple of 256, F16, several chunks in one decode (n_seq = 2048 // 128 = 16)
    "f16-256": ({"hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 512, "dtype": "f16"}, "f16",
                ["-c", "128", "--chunks", "4"]),
    # hidden not a multiple of 256 (head_dim 80), BF16, a chunk over two decodes (-b < -c), output.weight too
    "bf16-320": ({"hidden": 320, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 864, "dtype": "bf16"}, "bf16",
                 ["-c", "64", "-b", "32", "--chunks", "3", "--process-output"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_imatrix_equals_llama_imatrix(case: str, tiny_factory: Callable[..., Path], calib_text: Path,
                                      tmp_path: Path) -> None:
    require_module("llama_cpp")
    find_llama_imatrix()
    kw, typ, args = CASES[case]
    gguf = l1quant.convert(tiny_factory(**kw), type=typ, output=tmp_path / f"m-{typ.upper()}.gguf", threads=THREADS)
    for fmt in ("gguf", "dat"):
        ref = tmp_path / f"ref.{fmt}"
        printed = _llama_imatrix(gguf, calib_text, ref, [*args, "--output-format", fmt])
        ours = tmp_path / f"ours.{fmt}"
        r = CliRunner().invoke(main, ["imatrix", str(gguf), "-f", str(calib_text), "-o", str(ours), "-t",
                                      str(THREADS), "-q", *args, "--output-format", fmt])
        assert r.exit_code == 0, r.output
        # the files name the dataset by the -f string as given: the same path here
        _same_file(ours, ref)
        want, got = _chunk_ppl(printed), _chunk_ppl(r.stdout)
        assert len(got) == len(want) > 0
        assert np.allclose(got, want, rtol=1e-7, atol=1e-4), (got, want)
        assert "Final estimate: PPL = " in r.stdout
    im = read_imatrix(tmp_path / "ours.gguf")
    assert ("output.weight" in im.entries) == ("--process-output" in args)
    assert not any(n.startswith("token_embd") for n in im.entries)


@pytest.mark.slow
def test_imatrix_from_a_checkpoint_folder_equals_its_lossless_gguf(tiny_factory: Callable[..., Path],
                                                                   calib_text: Path, tmp_path: Path) -> None:
    require_module("llama_cpp")
    find_llama_imatrix()
    src = tiny_factory(hidden=256, layers=2, heads=4, kv_heads=2, ff=512, dtype="f16")
    gguf = l1quant.convert(src, type="f16", output=tmp_path / "m-F16.gguf", threads=THREADS)
    ref = tmp_path / "ref.gguf"
    _llama_imatrix(gguf, calib_text, ref, ["-c", "128", "--chunks", "2", "--no-ppl"])
    before = {p.name for p in tmp_path.iterdir()}
    rep = l1quant.imatrix(src, calib_text, tmp_path / "ours.gguf", ctx_size=128, chunks=2, threads=THREADS,
                          no_ppl=True)
    assert rep.ppl is None and rep.chunk_count == 2 and rep.entries == 14
    _same_file(tmp_path / "ours.gguf", ref)
    assert {p.name for p in tmp_path.iterdir()} == before | {"ours.gguf"}  # the temporary GGUF is gone


# ------------------------------------------------------------------------------------------------ refusals


def _one_line_error(args: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "l1quant", *args], capture_output=True, text=True, timeout=300,
                       check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_refuses_a_text_shorter_than_two_chunks(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    require_module("llama_cpp")
    gguf = l1quant.convert(tiny_factory(), type="f16", output=tmp_path / "m.gguf", threads=THREADS)
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    out = tmp_path / "out.gguf"
    _one_line_error(["imatrix", str(gguf), "-f", str(short), "-o", str(out), "-c", "64"],
                    "short.txt: 7 tokens; a context of 64 needs at least 128 (two chunks)")
    assert not out.exists()


def test_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    text = tmp_path / "t.txt"
    text.write_text("x" * 100)
    _one_line_error(["imatrix", str(tmp_path / "notes"), "-f", str(text), "-o", str(tmp_path / "o.gguf")],
                    "config.json")
    assert not (tmp_path / "o.gguf").exists()


def test_refuses_an_unknown_output_format(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("x" * 100)
    _one_line_error(["imatrix", "m.gguf", "-f", str(text), "--output-format", "npz"], "npz")
    with pytest.raises(InputError, match="--output-format must be one of gguf, dat, found 'npz'"):
        l1quant.imatrix("m.gguf", text, tmp_path / "o", output_format="npz")


# ------------------------------------------------------------------------------------ convert --calibration


def _takes_imatrix() -> bool:
    import dataclasses

    from l1quant.conversion.mixes import QuantOptions

    return "imatrix" in {f.name for f in dataclasses.fields(QuantOptions)}


def test_calibration_refuses_a_type_without_importance_weights(tiny_factory: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    _one_line_error(["convert", str(tiny_factory()), "--type", "f16", "--calibration", "-o", str(tmp_path / "o.gguf")],
                    "--calibration: type F16 does not use an importance matrix")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.xfail(not _takes_imatrix(), raises=InputError, strict=True,
                   reason="convert/quantize --imatrix come from the imatrixapply branch")
def test_convert_and_quantize_calibration_are_imatrix_then_imatrix_quant(tiny_factory: Callable[..., Path],
                                                                        tmp_path: Path) -> None:
    require_module("llama_cpp")
    src = tiny_factory(hidden=256, layers=2, heads=4, kv_heads=2, ff=512, dtype="bf16")
    text = tmp_path / "short.txt"
    text.write_text(l1quant.imatrix_compute.default_calibration_text()[:9000], encoding="utf-8")  # 2 chunks of 512
    out = l1quant.convert(src, "q4_k_m", tmp_path / "cal" / "m-Q4_K_M.gguf", threads=THREADS, calibration=text)
    kept = tmp_path / "cal" / "m-Q4_K_M.imatrix.gguf"
    # the kept matrix is l1quant imatrix's over the lossless conversion, and the quant is convert --imatrix with it
    alone = tmp_path / "alone.imatrix.gguf"
    l1quant.imatrix(src, text, alone, threads=THREADS, no_ppl=True)
    assert kept.read_bytes() == alone.read_bytes()
    again = l1quant.convert(src, "q4_k_m", tmp_path / "again.gguf", threads=THREADS, imatrix=str(kept))
    assert out.read_bytes() == again.read_bytes()
    # quantize --calibration from the lossless GGUF: the same matrix (same activations), the same quant bytes
    bf16 = l1quant.convert(src, "bf16", tmp_path / "m-BF16.gguf", threads=THREADS)
    q = l1quant.quantize(bf16, tmp_path / "q" / "m-Q4_K_M.gguf", "q4_k_m", threads=THREADS, calibration=text)
    kept_q = tmp_path / "q" / "m-Q4_K_M.imatrix.gguf"
    assert kept_q.read_bytes() == kept.read_bytes()
    # (the quant names its imatrix file by path in quantize.imatrix.file: compare with the one it kept)
    assert q.read_bytes() == l1quant.quantize(bf16, tmp_path / "q2.gguf", "q4_k_m", threads=THREADS,
                                              imatrix=str(kept_q)).read_bytes()


@pytest.mark.slow
def test_calibration_makes_the_types_that_need_an_imatrix(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """``--calibration`` on the types llama-quantize refuses without an imatrix (Q2_K_S and the low i-quants): the
    plan before the matrix exists must not refuse them (it did: the first planning step had no imatrix yet). One
    convert run makes several (one matrix serves all), quantize another; each equals --imatrix with the kept one."""
    require_module("llama_cpp")
    src = tiny_factory(hidden=256, layers=2, heads=4, kv_heads=2, ff=512, dtype="bf16")
    text = tmp_path / "short.txt"
    text.write_text(l1quant.imatrix_compute.default_calibration_text()[:9000], encoding="utf-8")  # 2 chunks of 512
    out = tmp_path / "cal"
    r = subprocess.run([sys.executable, "-m", "l1quant", "convert", str(src), "--type", "q2_k_s,iq2_m,iq3_xxs",
                        "--calibration", str(text), "-o", f"{out}/", "-t", str(THREADS), "-q"],
                       capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    made = sorted(out.glob("*.gguf"))
    kept = [p for p in made if p.name.endswith(".imatrix.gguf")]
    assert len(kept) == 1 and kept[0].name.endswith("-Q2_K_S.imatrix.gguf"), made
    for t in ("Q2_K_S", "IQ2_M", "IQ3_XXS"):
        f = next(p for p in made if p.name.endswith(f"-{t}.gguf"))
        assert f.read_bytes() == l1quant.convert(src, t, tmp_path / f"again-{t}.gguf", threads=THREADS,
                                                 imatrix=str(kept[0])).read_bytes(), t
    bf16 = l1quant.convert(src, "bf16", tmp_path / "m-BF16.gguf", threads=THREADS)
    q = l1quant.quantize(bf16, tmp_path / "q" / "m-IQ1_S.gguf", "iq1_s", threads=THREADS, calibration=text)
    kept_q = tmp_path / "q" / "m-IQ1_S.imatrix.gguf"
    assert q.read_bytes() == l1quant.quantize(bf16, tmp_path / "q2.gguf", "iq1_s", threads=THREADS,
                                              imatrix=str(kept_q)).read_bytes()
    # without either, the refusal names the type and both ways to get a matrix
    _one_line_error(["convert", str(src), "--type", "iq2_xs", "-o", str(tmp_path / "x.gguf")],
                    "quant type IQ2_XS needs an importance matrix")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_sigterm_writes_nothing_and_leaves_no_temporary(tiny_factory: Callable[..., Path], calib_text: Path,
                                                       tmp_path: Path) -> None:
    import signal
    import time

    require_module("llama_cpp")
    src = tiny_factory(hidden=256, layers=2, heads=4, kv_heads=2, ff=512, dtype="f16")
    out = tmp_path / "o.gguf"
    p = subprocess.Popen([sys.executable, "-m", "l1quant", "imatrix", str(src), "-f", str(calib_text), "-o",
                          str(out), "-c", "128", "-t", "1", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(12)  # converting, then decoding (the whole text takes minutes)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())  # no output, no temporary GGUF


def test_written_file_has_the_ordinary_mode(tmp_path: Path) -> None:
    from l1quant.imatrix_file import write_imatrix

    out = tmp_path / "m.imatrix.gguf"
    write_imatrix(out, {"blk.0.ffn_up.weight": (np.ones(4, np.float32), np.array([16]))}, datasets=["t.txt"],
                  chunk_count=1, chunk_size=16)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask

"""Parity of ``--imatrix`` with llama-quantize's: every type, every tensor byte, every key.

One importance matrix per checkpoint, computed by the real ``llama-imatrix`` (built from the pinned sdist; env
``L1QUANT_LLAMA_IMATRIX``) on the reference converter's BF16 output over a small text this test writes, saved in
both formats (GGUF and legacy ``.dat``). With it, the real ``llama-quantize --imatrix`` binary (env
``L1QUANT_LLAMA_QUANTIZE``: the tool, not llama-cpp-python's ``llama_model_quantize``, because the four
``quantize.imatrix.*`` keys are written by the tool's ``main``) must equal:

* **one pass** -- ``l1quant.convert(checkpoint, mix, imatrix=...)``, against llama-quantize on the reference BF16;
* **quantize** -- ``l1quant.quantize(reference.gguf, mix, imatrix=...)``, from the reference's BF16 and F16.

Groups keep the runtime down: every type from the GGUF imatrix on the hidden-256 checkpoint (rows fit the K
blocks); a subset from the ``.dat`` file, and from the hidden-96/ff-200 checkpoint (shape fallbacks, tied
embeddings). Without the binaries the tests skip, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cliutil import clean_env, cli
from reference import require_reference, run_reference, unavailable

import l1quant
from l1quant.errors import ConfigError
from l1quant.gguf.reader import read_gguf
from l1quant.imatrix_file import ImatrixFileError, read_imatrix

pytestmark = pytest.mark.slow

MIXES = ["q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
         "q5_k_s", "q5_k_m", "q6_k"]
#: Enough to exercise each family (32-blocks with the ffn_down guard, Q2_K_S, the K mixes) with the other file
#: format and the other checkpoint.
SUBSET = ["q4_0", "q5_1", "q2_k_s", "q3_k_m", "q4_k_m", "q6_k"]
CHECKPOINTS = {
    "h256-untied": dict(tok="r1", hidden=256, layers=9, heads=4, kv_heads=2, ff=512),
    "h96-tied": dict(tok="qwen2.5", hidden=96, layers=3, heads=4, kv_heads=2, ff=200, tied=True),
}
_BIN = Path("/work/l1quant-ref/llama-perplexity-build/bin")
IMATRIX_ENV, QUANTIZE_ENV = "L1QUANT_LLAMA_IMATRIX", "L1QUANT_LLAMA_QUANTIZE"


def _tool(env: str, name: str) -> Path:
    """The llama.cpp binary ``env`` names (else the usual build folder), or skip (fail under CI)."""
    p = Path(os.environ.get(env) or _BIN / name)
    if not (p.is_file() and os.access(p, os.X_OK)):
        unavailable(f"{name} not found (set {env} to the binary built from the pinned llama.cpp)")
    return p


def _text() -> str:
    """A calibration text of ~1500 tokens: prose, code and worked arithmetic, deterministic."""
    lines = []
    for i in range(60):
        lines.append(f"Problem {i}: a train travels {3 * i + 7} km in {i % 5 + 2} hours; its speed is "
                     f"{(3 * i + 7) / (i % 5 + 2):.2f} km/h. def f{i}(x): return x * {i} + {i * i}")
    return "\n".join(lines) + "\n"


def _run(cmd: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GGML_NO_BACKTRACE": "1"})


def _imatrix(tool: Path, model: Path, text: Path, out: Path, fmt: str) -> Path:
    r = _run([tool, "-m", model, "-f", text, "-o", out, "--output-format", fmt, "-c", "128", "--chunks", "4",
              "-t", "2", "--no-ppl"])
    assert r.returncode == 0 and out.is_file(), (r.stdout + r.stderr)[-3000:]
    return out


Env = dict[str, dict[str, Path]]


@pytest.fixture(scope="module")
def env(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Env:
    """checkpoint id -> model folder, reference BF16 and F16 GGUFs, the GGUF and .dat imatrices, the tools."""
    imatrix_tool = _tool(IMATRIX_ENV, "llama-imatrix")
    quantize_tool = _tool(QUANTIZE_ENV, "llama-quantize")
    ref = require_reference()
    out: Env = {}
    for cid, kw in CHECKPOINTS.items():
        d = tmp_path_factory.mktemp(cid)
        model = tiny_factory(**kw)
        bf16 = run_reference(ref, model, "bf16", d / "ref-BF16.gguf")
        text = d / "calib.txt"
        text.write_text(_text())
        out[cid] = dict(model=model, bf16=bf16, dir=d, quantize=quantize_tool,
                        gguf=_imatrix(imatrix_tool, bf16, text, d / "imatrix.gguf", "gguf"),
                        dat=_imatrix(imatrix_tool, bf16, text, d / "imatrix.dat", "dat"))
    return out


def _f16(e: dict[str, Path]) -> Path:
    p = e["dir"] / "ref-F16.gguf"
    if not p.exists():
        run_reference(require_reference(), e["model"], "f16", p)
    return p


def _llama_quantize(e: dict[str, Path], src: Path, dst: Path, mix: str, imatrix: Path | None,
                    *flags: str) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = [e["quantize"], *flags]
    if imatrix is not None:
        args += ["--imatrix", imatrix]
    return _run([*args, src, dst, mix.upper(), "2"])


def _same_file(ours: Path, theirs: Path) -> None:
    a, b = read_gguf(ours), read_gguf(theirs)
    assert list(a.kv) == list(b.kv), "metadata keys or their order differ"
    for k in a.kv:
        assert (a.kv_types[k], a.kv[k]) == (b.kv_types[k], b.kv[k]), k
    assert [(t.name, t.ggml_type, t.shape, t.offset) for t in a.tensors] == \
        [(t.name, t.ggml_type, t.shape, t.offset) for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert a.read_tensor_bytes(ta) == b.read_tensor_bytes(tb), ta.name
    assert ours.read_bytes() == theirs.read_bytes()


def _check(e: dict[str, Path], tmp_path: Path, mix: str, imatrix: Path, *, convert: bool = True,
           f16: bool = False, **flags: list[str]) -> Path:
    """llama-quantize --imatrix on the reference BF16 (or F16) against l1quant's convert and quantize."""
    src = _f16(e) if f16 else e["bf16"]
    cli_flags = [x for k, names in flags.items() for n in names for x in (f"--{k.replace('_', '-')}", n)]
    want = _llama_quantize(e, src, tmp_path / "llama-quantize.gguf", mix, imatrix, *cli_flags)
    assert want.returncode == 0, (want.stdout + want.stderr)[-3000:]
    theirs = tmp_path / "llama-quantize.gguf"
    if convert:
        _same_file(l1quant.convert(e["model"], mix, tmp_path / "convert.gguf", threads=2, imatrix=str(imatrix),
                                   **flags), theirs)  # type: ignore[arg-type]
    _same_file(l1quant.quantize(src, tmp_path / "quantize.gguf", mix, threads=2, imatrix=str(imatrix), **flags),
               theirs)  # type: ignore[arg-type]
    return theirs


@pytest.mark.parametrize("mix", MIXES)
def test_every_type_from_a_gguf_imatrix(env: Env, tmp_path: Path, mix: str) -> None:
    theirs = _check(env["h256-untied"], tmp_path, mix, env["h256-untied"]["gguf"])
    kv = read_gguf(theirs).kv
    assert list(kv)[-4:] == ["quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                             "quantize.imatrix.chunks_count"]


@pytest.mark.parametrize("mix", SUBSET)
def test_from_a_dat_imatrix(env: Env, tmp_path: Path, mix: str) -> None:
    _check(env["h256-untied"], tmp_path, mix, env["h256-untied"]["dat"])


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
@pytest.mark.parametrize("mix", SUBSET)
def test_rows_that_do_not_fit_and_tied_embeddings(env: Env, tmp_path: Path, mix: str, fmt: str) -> None:
    _check(env["h96-tied"], tmp_path, mix, env["h96-tied"][fmt])


@pytest.mark.parametrize("mix", ["q4_k_m", "q2_k_s", "q5_0"])
def test_quantize_from_the_reference_f16(env: Env, tmp_path: Path, mix: str) -> None:
    _check(env["h256-untied"], tmp_path, mix, env["h256-untied"]["gguf"], convert=False, f16=True)


@pytest.mark.parametrize("flags", [{"exclude_weights": ["ffn_down", "attn_v"]}, {"include_weights": ["attn"]},
                                   {"include_weights": ["no-such-tensor"]}], ids=["exclude", "include", "none-left"])
def test_include_and_exclude_weights(env: Env, tmp_path: Path, flags: dict[str, list[str]]) -> None:
    theirs = _check(env["h256-untied"], tmp_path, "q4_0", env["h256-untied"]["gguf"], **flags)
    if "no-such-tensor" in flags.get("include_weights", []):  # nothing left: no imatrix, no keys
        assert not any(k.startswith("quantize.") for k in read_gguf(theirs).kv)


def test_q2_k_s_needs_an_imatrix(env: Env, tmp_path: Path) -> None:
    e = env["h256-untied"]
    r = _llama_quantize(e, e["bf16"], tmp_path / "lq.gguf", "q2_k_s", None)
    assert r.returncode != 0
    with pytest.raises(ConfigError, match=r"Q2_K_S needs an importance matrix .*--imatrix"):
        l1quant.quantize(e["bf16"], tmp_path / "q.gguf", "q2_k_s")
    assert not (tmp_path / "q.gguf").exists()


def test_requantizing_an_imatrix_quant_replaces_its_keys(env: Env, tmp_path: Path) -> None:
    """The keys of an input quantized with an imatrix are erased and set again (llama-quantize's kv overrides)."""
    e = env["h256-untied"]
    first = tmp_path / "first.gguf"
    assert _llama_quantize(e, e["bf16"], first, "q8_0", e["gguf"]).returncode == 0
    want = _llama_quantize(e, first, tmp_path / "lq.gguf", "q4_k_m", e["dat"], "--allow-requantize")
    assert want.returncode == 0, want.stderr[-2000:]
    _same_file(l1quant.quantize(first, tmp_path / "q.gguf", "q4_k_m", imatrix=str(e["dat"]), allow_requantize=True),
               tmp_path / "lq.gguf")


# ----------------------------------------------------------------------------------------------------------------
# Bad input, through the CLI: one line, non-zero exit, nothing written
# ----------------------------------------------------------------------------------------------------------------


def _dat(path: Path, entries: dict[str, np.ndarray], ncall: int = 1) -> Path:
    b = struct.pack("<i", len(entries))
    for name, v in entries.items():
        b += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, v.size)
        b += v.astype("<f4").tobytes()
    path.write_bytes(b + struct.pack("<i", 1))
    return path


def _cli_fails(tmp_path: Path, *args: str | Path) -> str:
    out = tmp_path / "out.gguf"
    r = subprocess.run([*cli(), *map(str, args)], capture_output=True, text=True, timeout=300, env=clean_env())
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    return lines[0]


def test_bad_imatrix_files_through_the_cli(env: Env, tmp_path: Path) -> None:
    e, other = env["h256-untied"], env["h96-tied"]
    out = tmp_path / "out.gguf"
    # an imatrix of another model: the first tensor (in llama-quantize's order) whose size does not match
    line = _cli_fails(tmp_path, "quantize", "--imatrix", other["gguf"], e["bf16"], out, "q4_k_m")
    assert "blk.0.attn_k.weight" in line and "another model" in line
    line = _cli_fails(tmp_path, "convert", e["model"], "--type", "q4_k_m", "-o", out, "--imatrix", other["dat"])
    assert "blk.0.attn_k.weight" in line
    # non-finite values
    bad = _dat(tmp_path / "nan.dat", {"blk.0.attn_q.weight": np.full(256, np.nan, np.float32)})
    line = _cli_fails(tmp_path, "quantize", "--imatrix", bad, e["bf16"], out, "q4_k_m")
    assert "nan.dat" in line and "blk.0.attn_q.weight" in line
    # truncated GGUF and .dat, a foreign file, a missing file
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(e["gguf"].read_bytes()[:1000])
    assert "trunc.gguf" in _cli_fails(tmp_path, "quantize", "--imatrix", trunc, e["bf16"], out, "q4_k_m")
    trunc_dat = tmp_path / "trunc.dat"
    trunc_dat.write_bytes(e["dat"].read_bytes()[:1000])
    assert "trunc.dat" in _cli_fails(tmp_path, "quantize", "--imatrix", trunc_dat, e["bf16"], out, "q4_k_m")
    foreign = tmp_path / "foreign.dat"
    shutil.copy(e["model"] / "config.json", foreign)
    assert "foreign.dat" in _cli_fails(tmp_path, "quantize", "--imatrix", foreign, e["bf16"], out, "q4_k_m")
    assert "missing.gguf" in _cli_fails(tmp_path, "quantize", "--imatrix", tmp_path / "missing.gguf", e["bf16"], out,
                                        "q4_k_m")
    # a model's GGUF is not an imatrix
    assert "ref-BF16.gguf" in _cli_fails(tmp_path, "quantize", "--imatrix", e["bf16"], e["bf16"], out, "q4_k_m")
    # q2_k_s without an imatrix names the type and the way out
    line = _cli_fails(tmp_path, "quantize", e["bf16"], out, "q2_k_s")
    assert "Q2_K_S" in line and "--imatrix" in line
    line = _cli_fails(tmp_path, "quantize", "--imatrix", e["gguf"], "--include-weights", "attn",
                      "--exclude-weights", "ffn", e["bf16"], out, "q4_k_m")
    assert "--include-weights" in line


def test_the_cli_writes_what_the_library_writes(env: Env, tmp_path: Path) -> None:
    e = env["h256-untied"]
    out = tmp_path / "cli.gguf"
    r = subprocess.run([*cli(), "quantize", "-q", "--imatrix", str(e["gguf"]), "--exclude-weights", "ffn_up",
                        str(e["bf16"]), str(out), "q3_k_m"], capture_output=True, text=True, timeout=300,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    lib = l1quant.quantize(e["bf16"], tmp_path / "lib.gguf", "q3_k_m", imatrix=str(e["gguf"]),
                           exclude_weights=["ffn_up"])
    assert out.read_bytes() == lib.read_bytes()
    want = _llama_quantize(e, e["bf16"], tmp_path / "lq.gguf", "q3_k_m", e["gguf"], "--exclude-weights", "ffn_up")
    assert want.returncode == 0 and (tmp_path / "lq.gguf").read_bytes() == out.read_bytes()


def test_q2_k_s_tensor_without_an_entry_is_refused_like_llama_quantize(env: Env, tmp_path: Path) -> None:
    """With ffn_up excluded, Q2_K_S's Q2_K ffn_up tensors have no weights: both tools refuse, naming one."""
    e = env["h256-untied"]
    r = _llama_quantize(e, e["bf16"], tmp_path / "lq.gguf", "q2_k_s", e["gguf"], "--exclude-weights", "ffn_up")
    assert r.returncode != 0
    line = _cli_fails(tmp_path, "quantize", "--imatrix", e["gguf"], "--exclude-weights", "ffn_up", e["bf16"],
                      tmp_path / "out.gguf", "q2_k_s")
    assert "ffn_up.weight" in line and "no entry" in line


@pytest.mark.parametrize("mix", ["q4_0", "q2_k_s", "q4_k_m"])
def test_verify_an_imatrix_quant(env: Env, tmp_path: Path, mix: str) -> None:
    """With --imatrix: byte identity (the imatrix path may be spelled differently); without: the noise bound,
    saying why."""
    e = env["h256-untied"]
    theirs = tmp_path / "lq.gguf"
    assert _llama_quantize(e, e["bf16"], theirs, mix, e["gguf"]).returncode == 0
    alias = tmp_path / "same-imatrix.gguf"
    alias.symlink_to(e["gguf"])
    rep = l1quant.verify(theirs, source=e["model"], imatrix=alias, threads=2)
    assert rep.passed, [c for c in rep.checks if c.failed]
    assert all(r.bytes_identical for r in rep.tensors)
    rep = l1quant.verify(theirs, source=e["model"], threads=2)
    assert rep.passed, [c for c in rep.checks if c.failed]
    fid = next(c for c in rep.checks if c.name == "source.tensors")
    assert "cannot check byte identity of an imatrix quant" in fid.message
    assert not all(r.bytes_identical for r in rep.tensors)


def test_verify_cli_with_and_without_the_imatrix(env: Env, tmp_path: Path) -> None:
    e = env["h256-untied"]
    theirs = tmp_path / "lq.gguf"
    assert _llama_quantize(e, e["bf16"], theirs, "q4_k_m", e["gguf"]).returncode == 0
    base = [*cli(), "verify", str(theirs), "--source", str(e["model"]), "-t", "2"]
    r = subprocess.run([*base, "--imatrix", str(e["gguf"])], capture_output=True, text=True, timeout=600,
                       env=clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(base, capture_output=True, text=True, timeout=600, env=clean_env())
    assert r.returncode == 0 and "cannot check byte identity of an imatrix quant" in r.stdout, r.stdout
    # verified against a different imatrix (the other checkpoint's is refused for its sizes: a FAIL, exit 1)
    ours_plain = l1quant.quantize(e["bf16"], tmp_path / "plain.gguf", "q4_k_m")
    r = subprocess.run([*cli(), "verify", str(ours_plain), "--source", str(e["model"]), "-t", "2", "--imatrix",
                        str(e["gguf"])], capture_output=True, text=True, timeout=600, env=clean_env())
    assert r.returncode == 1 and "bytes differ" in r.stdout


def test_inspect_an_imatrix_and_an_imatrix_quant(env: Env, tmp_path: Path) -> None:
    e = env["h256-untied"]
    im = read_imatrix(e["gguf"])
    for f, fmt in ((e["gguf"], "GGUF"), (e["dat"], "legacy .dat")):
        r = subprocess.run([*cli(), "inspect", str(f)], capture_output=True, text=True, timeout=120,
                           env=clean_env())
        assert r.returncode == 0, r.stderr
        assert f"importance matrix ({fmt})" in r.stdout
        assert f"entries:         {len(im.entries)}" in r.stdout
        assert f"chunks:          {im.chunk_count}" in r.stdout and "calib.txt" in r.stdout
        assert "never activated:" in r.stdout
    r = subprocess.run([*cli(), "inspect", "--json", str(e["dat"])], capture_output=True, text=True, timeout=120,
                       env=clean_env())
    assert '"n_entries": %d' % len(im.entries) in r.stdout
    q = l1quant.quantize(e["bf16"], tmp_path / "q.gguf", "q4_k_m", imatrix=str(e["gguf"]))
    r = subprocess.run([*cli(), "inspect", str(q)], capture_output=True, text=True, timeout=120, env=clean_env())
    assert r.returncode == 0
    for k in ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
              "quantize.imatrix.chunks_count"):
        assert k in r.stdout


def test_imatrix_read_back(env: Env) -> None:
    """The two files llama-imatrix wrote hold the same means (the .dat keeps mean x ncall)."""
    a, b = read_imatrix(env["h256-untied"]["gguf"]), read_imatrix(env["h256-untied"]["dat"])
    assert a.names == b.names and a.chunk_count == b.chunk_count
    for n in a.names:
        np.testing.assert_allclose(a.entries[n], b.entries[n], rtol=1e-6)
    with pytest.raises(ImatrixFileError):
        read_imatrix(env["h256-untied"]["bf16"])

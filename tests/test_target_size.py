"""Type ``auto`` with ``--target-size`` / ``--target-bpw``: the file fits, llama-quantize rebuilds it byte for byte
from the exported tensor-type file and the same imatrix, llama.cpp loads and runs it, and the refusals are one line.

One tiny checkpoint (hidden 256: every K/IQ type fits its rows; untied embeddings), its reference BF16 GGUF and an
importance matrix from the real llama-imatrix over a small text. Without the binaries the tests skip (fail under
``CI=true``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cliutil import clean_env, cli
from reference import require_reference, run_reference, unavailable

import l1quant
from l1quant.conversion.target import KEY_TARGET, KEY_TARGET_KLD, tensor_types_path
from l1quant.errors import ConfigError
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

_BIN = Path("/work/l1quant-ref/llama-perplexity-build/bin")


def _tool(env: str, name: str) -> Path:
    p = Path(os.environ.get(env) or _BIN / name)
    if not (p.is_file() and os.access(p, os.X_OK)):
        unavailable(f"{name} not found (set {env} to the binary built from the pinned llama.cpp)")
    return p


def _run(cmd: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GGML_NO_BACKTRACE": "1"})


@pytest.fixture(scope="module")
def env(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference BF16 GGUF of a tiny checkpoint, its imatrix (llama-imatrix), llama-quantize."""
    imatrix_tool = _tool("L1QUANT_LLAMA_IMATRIX", "llama-imatrix")
    quantize_tool = _tool("L1QUANT_LLAMA_QUANTIZE", "llama-quantize")
    d = tmp_path_factory.mktemp("target")
    model = tiny_factory("r1", hidden=256, layers=4, heads=4, kv_heads=2, ff=512)
    bf16 = run_reference(require_reference(), model, "bf16", d / "ref-BF16.gguf")
    text = d / "calib.txt"
    text.write_text("".join(f"Problem {i}: a train travels {3 * i + 7} km in {i % 5 + 2} hours. "
                            f"def f{i}(x): return x * {i}\n" for i in range(60)))
    im = d / "imatrix.gguf"
    r = _run([imatrix_tool, "-m", bf16, "-f", text, "-o", im, "-c", "128", "--chunks", "3", "-t", "2", "--no-ppl"])
    assert r.returncode == 0 and im.is_file(), (r.stdout + r.stderr)[-3000:]
    return {"model": model, "bf16": bf16, "imatrix": im, "quantize": quantize_tool, "dir": d}


class _Result:
    def __init__(self, r: subprocess.CompletedProcess[str]) -> None:
        self.exit_code, self.output = r.returncode, r.stdout + r.stderr


def _cli(*args: str | Path) -> _Result:
    return _Result(subprocess.run([*cli(), *map(str, args)], check=False, capture_output=True, text=True, timeout=600,
                                  env=clean_env()))


def _reachable(env: dict[str, Path]) -> tuple[int, int]:
    with pytest.raises(ConfigError) as e:
        l1quant.quantize(env["bf16"], env["dir"] / "never.gguf", "auto", imatrix=str(env["imatrix"]),
                         target_size=1)
    m = re.search(r"from (\d+) bytes .* to (\d+) bytes", str(e.value))
    assert m, str(e.value)
    low, high = int(m.group(1)), int(m.group(2))
    assert not (env["dir"] / "never.gguf").exists()
    return low, high


def test_llama_quantize_rebuilds_the_same_bytes(env: dict[str, Path], tmp_path: Path) -> None:
    low, high = _reachable(env)
    target = (low + high) // 3
    ours = l1quant.quantize(env["bf16"], tmp_path / "auto.gguf", "auto", imatrix=str(env["imatrix"]),
                            target_size=target)
    size = ours.stat().st_size
    assert low <= size <= target
    assert size > target - (high - low) // 10  # the budget is used, not left on the table
    gf = read_gguf(ours)
    assert gf.kv[KEY_TARGET] == f"size={target}" and gf.kv[KEY_TARGET_KLD] > 0
    types = {t.ggml_type.name for t in gf.tensors}
    assert len(types - {"F32"}) >= 2  # a real mix, not one type
    ttf = tensor_types_path(ours)
    theirs = tmp_path / "llama-quantize.gguf"
    r = _run([env["quantize"], "--imatrix", env["imatrix"], "--tensor-type-file", ttf,
              "--override-kv", f"{KEY_TARGET}=str:size={target}",
              "--override-kv", f"{KEY_TARGET_KLD}=float:{_kld_text(gf.kv[KEY_TARGET_KLD])}",
              env["bf16"], theirs, gf_mix(gf), "2"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert ours.read_bytes() == theirs.read_bytes()
    # the --tensor-type-file input option: l1quant reads the same table back
    again = l1quant.quantize(env["bf16"], tmp_path / "again.gguf", gf_mix(gf), imatrix=str(env["imatrix"]),
                             tensor_type_file=ttf)
    a, b = read_gguf(again), read_gguf(ours)
    assert [(t.name, t.ggml_type) for t in a.tensors] == [(t.name, t.ggml_type) for t in b.tensors]


def _kld_text(v: float) -> str:
    from l1quant.conversion.target import kld_text

    return kld_text(v)


def gf_mix(gf: object) -> str:
    import gguf

    return gguf.LlamaFileType(int(gf.kv["general.file_type"])).name.partition("_")[2]  # type: ignore[attr-defined]


def test_llama_cpp_loads_and_generates(env: dict[str, Path], tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    out = l1quant.quantize(env["bf16"], tmp_path / "auto.gguf", "auto", imatrix=str(env["imatrix"]),
                           target_bpw=5.0)
    n_params = sum(t.n_elements for t in read_gguf(out).tensors)
    assert out.stat().st_size <= int(5.0 * n_params / 8)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)
    text = llm("The quick brown fox", max_tokens=4, temperature=0)["choices"][0]["text"]
    assert isinstance(text, str)


def test_dry_run_and_refusals(env: dict[str, Path], tmp_path: Path) -> None:
    low, high = _reachable(env)
    out = tmp_path / "dry.gguf"
    r = _cli("quantize", env["bf16"], out, "auto", "--imatrix", env["imatrix"], "--target-size", str(high - 1),
            "--dry-run")
    assert r.exit_code == 0, r.output
    assert "predicted mean KLD" in r.output and "blk.0.ffn_down.weight" in r.output
    assert not out.exists() and not tensor_types_path(out).exists()
    for args, words in (
        (["--target-size", str(low - 1)], "out of reach"),
        (["--target-size", str(high + 1)], "out of reach"),
        (["--target-size", "12 parsecs"], "--target-size"),
    ):
        r = _cli("quantize", env["bf16"], out, "auto", "--imatrix", env["imatrix"], *args)
        assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    r = _cli("quantize", env["bf16"], out, "auto", "--target-size", str(high - 1))
    assert r.exit_code != 0 and "importance matrix" in r.output and len(r.output.strip().splitlines()) == 1
    r = _cli("quantize", env["bf16"], out, "q4_k_m", "--imatrix", env["imatrix"], "--target-size", str(high - 1))
    assert r.exit_code != 0 and "type auto" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_convert_writes_what_quantize_writes(env: dict[str, Path], tmp_path: Path) -> None:
    """One pass from the checkpoint = quantize of the reference BF16 (= llama-quantize, above), same table."""
    a = l1quant.quantize(env["bf16"], tmp_path / "q.gguf", "auto", imatrix=str(env["imatrix"]), target_bpw=5.5)
    b = l1quant.convert(env["model"], "auto", tmp_path / "c.gguf", imatrix=str(env["imatrix"]), target_bpw=5.5)
    assert a.read_bytes() == b.read_bytes()
    assert tensor_types_path(a).read_text() == tensor_types_path(b).read_text()


def test_verify_rebuilds_each_chosen_type(env: dict[str, Path], tmp_path: Path) -> None:
    """verify --source rebuilds every tensor with the type the search gave it (not the base mix's): byte-identical
    with the imatrix, within the noise bounds without it; the quantize.target* keys are recorded, not refused."""
    out = l1quant.convert(env["model"], "auto", tmp_path / "a.gguf", imatrix=str(env["imatrix"]), target_bpw=4.5,
                          threads=2)
    # the table really departs from the base mix, so the source check cannot pass by planning the base mix
    rep = l1quant.verify(out)
    mix = next(c for c in rep.checks if c.name == "tensors.mix")
    assert mix.status == "pass" and "typed by the target-size search" in mix.message, mix
    with_im = l1quant.verify(out, source=env["model"], imatrix=env["imatrix"], threads=2)
    assert with_im.passed, [c for c in with_im.checks if c.status == "fail"]
    tensors = next(c for c in with_im.checks if c.name == "source.tensors")
    assert "byte-identical" in tensors.message and "cannot check" not in tensors.message, tensors
    without = l1quant.verify(out, source=env["model"], threads=2)
    assert without.passed, [c for c in without.checks if c.status == "fail"]
    # the command line says the same (exit 0)
    r = _cli("verify", out, "--source", env["model"], "--imatrix", env["imatrix"])
    assert r.exit_code == 0, r.output

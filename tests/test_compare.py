"""``l1quant compare``: llama-perplexity's statistics, reproduced through llama-cpp-python.

The fast layer checks the math (compression bound, accumulators, the base file's format). The slow layer runs
llama.cpp's own ``llama-perplexity`` (built from the pinned sdist by ``.ci/run``; ``$L1QUANT_LLAMA_PERPLEXITY``
or ``../l1quant-ref/llama-perplexity-build/bin/llama-perplexity``) on a tiny model and checks that ``compare``
gives the same PPL and mean KLD to 4 significant digits and the same same-top-p to 0.01 percentage points, for
Q8_0 and Q4_K_M.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from l1quant import evaluate as cmp
from l1quant.errors import InputError
from reference import REPO, require_module, unavailable

PERPLEXITY_ENV = "L1QUANT_LLAMA_PERPLEXITY"
PERPLEXITY_CANDIDATES = (
    REPO.parent / "l1quant-ref" / "llama-perplexity-build" / "bin" / "llama-perplexity",
    Path("/work/l1quant-ref/llama-perplexity-build/bin/llama-perplexity"),
)
CTX = 128
CHUNKS = 4
THREADS = 2


# ---------------------------------------------------------------------------------------------------- math


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def test_pack_base_rows_within_stated_bound() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 1001)) * 4).astype(np.float32)
    packed, nll = cmp.pack_base_rows(logits, np.arange(5))
    assert packed.shape == (5, cmp.row_width(1001)) and packed.dtype == np.uint16
    head = np.ascontiguousarray(packed[:, :4]).view(np.float32)
    lp = head[:, :1] * packed[:, 4:4 + 1001].astype(np.float32) + head[:, 1:2]
    exact = _log_softmax(logits)
    kept = exact > exact.max(axis=1, keepdims=True) - 16 + 1e-3
    assert np.abs(lp - exact)[kept].max() <= cmp.COMPRESSION_BOUND_NATS * 1.01 + 1e-5
    np.testing.assert_allclose(nll, -exact[np.arange(5), np.arange(5)], rtol=1e-5)


def test_accumulator_identical_and_shifted() -> None:
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((40, 300)) * 3).astype(np.float32)
    tg = rng.integers(0, 300, 40)
    packed, _ = cmp.pack_base_rows(base, tg)
    same = cmp.KldAccumulator()
    same.add(base, packed, tg, 300)
    s = same.summary()
    assert s["kld"]["mean"] < 1e-5 and s["same_top"]["value"] == 1.0 and s["tokens"] == 40
    noisy = cmp.KldAccumulator()
    q = base + (rng.standard_normal(base.shape) * 0.3).astype(np.float32)
    noisy.add(q, packed, tg, 300)
    n = noisy.summary()
    exact = _log_softmax(base)
    kl = (np.exp(exact) * (exact - _log_softmax(q))).sum(axis=1)
    assert n["kld"]["mean"] == pytest.approx(kl.mean(), rel=2e-3)
    assert n["kld"]["max"] == pytest.approx(kl.max(), rel=2e-3)
    assert 0 < n["kld"]["unc"] < n["kld"]["mean"]


def test_percentile_and_median_follow_llama_perplexity() -> None:
    v = np.array([1, 2, 3, 4], dtype=np.float32)
    assert cmp.median(v) == 2.5 and cmp.percentile(v, 0.99) == pytest.approx(3.97)
    assert cmp.median(np.array([1, 5, 9], np.float32)) == 5.0


def test_base_file_roundtrip_and_truncation(tmp_path: Path) -> None:
    class Fake:
        n_vocab = 50

        def chunk_logits(self, toks: Any, first: int) -> np.ndarray:
            rng = np.random.default_rng(int(toks[1]))
            return rng.standard_normal((len(toks) - first, 50)).astype(np.float32)

    toks = list(range(1, 33))
    out = tmp_path / "b.kld"
    ppl, unc = cmp.write_base(Fake(), toks, 16, 2, out)
    bf = cmp.BaseFile.open(out)
    assert (bf.n_ctx, bf.n_vocab, bf.n_chunk, bf.rows_per_chunk) == (16, 50, 2, 7)
    assert list(bf.tokens) == toks and ppl > 1 and unc >= 0
    st = cmp.score_against_base(Fake(), bf)
    assert st["kld"]["mean"] < 1e-6 and st["same_top"]["value"] == 1.0
    assert st["ppl"]["value"] == pytest.approx(ppl, rel=1e-3)
    out.write_bytes(out.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        cmp.BaseFile.open(out)
    (tmp_path / "x").write_bytes(b"nope" * 10)
    with pytest.raises(InputError, match="_logits_"):
        cmp.BaseFile.open(tmp_path / "x")


# ---------------------------------------------------------------------------------------------- llama-perplexity


def find_llama_perplexity() -> Path:
    """The llama-perplexity binary built from the pinned sdist, or skip (fail under CI)."""
    env = os.environ.get(PERPLEXITY_ENV)
    cands = [Path(env)] if env else list(PERPLEXITY_CANDIDATES)
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    unavailable(f"llama-perplexity not built (set ${PERPLEXITY_ENV}; .ci/run builds it; tried "
                f"{', '.join(map(str, cands))})")


def _run_perplexity(exe: Path, args: list[str]) -> str:
    r = subprocess.run([str(exe), *args, "-c", str(CTX), "-b", str(CTX), "--chunks", str(CHUNKS), "-t", str(THREADS)],
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in llama-perplexity output:\n{text[-3000:]}"
    return float(m.group(1))


def _sig4(a: float, b: float, printed_decimals: int) -> bool:
    """Equal to 4 significant digits, or within the rounding of llama-perplexity's printed value."""
    return abs(a - b) <= max(5e-4 * abs(b), 0.5 * 10 ** -printed_decimals)


@pytest.fixture(scope="module")
def peaky_tiny(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny qwen2 checkpoint whose final norm is scaled x40: peaked next-token distributions, so the KLD of
    Q8_0 is ~1e-3 and llama-perplexity's 6 printed decimals hold 4 significant digits."""
    st = require_module("safetensors.numpy")
    src = tiny_factory("r1", hidden=256, layers=2, heads=4, kv_heads=2, ff=512, dtype="f16")
    d = tmp_path_factory.mktemp("peaky") / "Tiny-Peaky"
    d.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    tensors = st.load_file(str(src / "model.safetensors"))
    tensors["model.norm.weight"] = (tensors["model.norm.weight"].astype(np.float32) * 40).astype(np.float16)
    st.save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text(cmp.default_compare_text(), encoding="utf-8")
    return p


@pytest.mark.slow
def test_compare_reproduces_llama_perplexity(peaky_tiny: Path, eval_text: Path, tmp_path: Path) -> None:
    require_module("llama_cpp")
    exe = find_llama_perplexity()
    import l1quant

    files = {t: l1quant.convert(peaky_tiny, type=t, output=tmp_path / f"m-{t.upper()}.gguf", threads=THREADS)
             for t in ("f16", "q8_0", "q4_k_m")}
    ref_base = tmp_path / "ref-base.kld"
    base_out = _run_perplexity(exe, ["-m", str(files["f16"]), "-f", str(eval_text),
                                     "--kl-divergence-base", str(ref_base)])
    ref: dict[str, dict[str, float]] = {"F16": {"ppl": _num(r"Final estimate: PPL = ([\d.]+)", base_out)}}
    for t in ("q8_0", "q4_k_m"):
        out = _run_perplexity(exe, ["-m", str(files[t]), "-f", str(eval_text), "--kl-divergence-base", str(ref_base),
                                    "--kl-divergence"])
        ref[t.upper()] = {"ppl": _num(r"Mean PPL\(Q\)\s*: ([\d.]+)", out),
                          "kld": _num(r"Mean\s+KLD:\s*([\d.]+)", out),
                          "same_top": _num(r"Same top p:\s*([\d.]+)", out),
                          "p99": _num(r"99\.0%\s+KLD:\s*([\d.]+)", out),
                          "median": _num(r"Median\s+KLD:\s*([\d.]+)", out),
                          "max": _num(r"Maximum KLD:\s*([\d.]+)", out),
                          "ppl_base": _num(r"Mean PPL\(base\)\s*: ([\d.]+)", out)}

    ours_base = tmp_path / "ours-base.kld"
    rep = cmp.compare([files["q8_0"], files["q4_k_m"]], base=files["f16"], text=eval_text, ctx=CTX, chunks=CHUNKS,
                      base_logits=ours_base, threads=THREADS, runtime="llama.cpp")
    got = {r.name: r for r in rep.rows}
    assert list(got) == ["F16", "Q8_0", "Q4_K_M"] and not rep.weight_only
    assert _sig4(got["F16"].ppl, ref["F16"]["ppl"], 4), (got["F16"].ppl, ref["F16"])
    for t in ("Q8_0", "Q4_K_M"):
        s, r = got[t].stats, ref[t]
        assert s is not None
        assert _sig4(s["ppl"]["value"], r["ppl"], 6), (t, s["ppl"], r)
        assert _sig4(s["kld"]["mean"], r["kld"], 6), (t, s["kld"], r)
        assert abs(100 * s["same_top"]["value"] - r["same_top"]) <= 0.01, (t, s["same_top"], r)
        for k in ("p99", "median", "max"):
            assert _sig4(s["kld"][k], r[k], 6), (t, k, s["kld"], r)
        assert _sig4(s["ppl_base_stored"]["value"], r["ppl_base"], 6), (t, s["ppl_base_stored"], r)
    assert ref["Q8_0"]["kld"] >= 1e-4, "the test model must give KLDs with 4 printed significant digits"

    # The two base files hold the same tokens and (up to a code step from a rounding tie) the same codes.
    a, b = cmp.BaseFile.open(ref_base), cmp.BaseFile.open(ours_base)
    assert (a.n_ctx, a.n_vocab, a.n_chunk) == (b.n_ctx, b.n_vocab, b.n_chunk)
    assert np.array_equal(a.tokens, b.tokens)
    with open(ref_base, "rb") as fa, open(ours_base, "rb") as fb:
        ra, rb = a.chunk_rows(fa, 0).astype(np.int32), b.chunk_rows(fb, 0).astype(np.int32)
    assert np.abs(ra[:, 4:] - rb[:, 4:]).max() <= 1

    # llama-perplexity's own base file as compare's base gives the same table (interchangeable formats)
    rep2 = cmp.compare([files["q8_0"]], base=files["f16"], text=eval_text, ctx=CTX, chunks=CHUNKS,
                       base_logits=ref_base, threads=THREADS, runtime="llama.cpp")
    assert rep2.rows[1].stats["kld"]["mean"] == pytest.approx(got["Q8_0"].stats["kld"]["mean"], rel=1e-3)

    d = json.loads(rep.to_json())
    assert d["schema"] == cmp.SCHEMA and d["types"][1]["vs_base"]["kld"]["mean"] > 0
    assert "Q4_K_M" in rep.table()


@pytest.mark.slow
def test_cli_table_json_plot_budgets(peaky_tiny: Path, eval_text: Path, tmp_path: Path) -> None:
    require_module("llama_cpp")
    from click.testing import CliRunner

    import l1quant.cli.compare  # noqa: F401 - registers the command whether or not the group lists it
    from l1quant.cli import main

    args = ["compare", str(peaky_tiny), "--types", "f16,q8_0", "--keep", str(tmp_path / "keep"), "--ctx", "64",
            "--chunks", "2", "--text", str(eval_text), "-t", str(THREADS), "--base-logits", str(tmp_path / "b.kld"),
            "-q"]
    r = CliRunner().invoke(main, [*args, "--json", "--plot", str(tmp_path / "p.png"), "--budgets", "8",
                                  "--problems", str(REPO / "examples" / "problems.jsonl"), "--limit", "1"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["schema"] == "l1quant.compare/1" and [t["name"] for t in d["types"]] == ["F16", "Q8_0"]
    assert d["protocol"]["tokens_scored_per_type"] == 2 * 31 and d["kld_kind"].startswith("llama-perplexity")
    assert d["types"][0]["vs_base"] is None and d["types"][1]["vs_base"]["kld"]["mean"] > 0
    assert d["types"][1]["budget"][0]["budget"] == 8 and d["types"][1]["budget"][0]["runs"] == 1
    assert (tmp_path / "p.png").stat().st_size > 1000
    # second run: the base comes from the cache file, the table is the same
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0, r2.output
    assert "Q8_0" in r2.output and f"{d['types'][1]['vs_base']['kld']['mean']:.6f}" in r2.output


def test_compare_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs --base"):
        cmp.compare([tmp_path / "a.gguf", tmp_path / "b.gguf"], ctx=64)
    # one GGUF without --base is quantized to each type: it must exist
    with pytest.raises(InputError, match="a.gguf: neither a checkpoint folder nor a GGUF file"):
        cmp.compare([tmp_path / "a.gguf"], ctx=64)
    with pytest.raises(InputError, match="even number"):
        cmp.compare([tmp_path / "a.gguf"], base=tmp_path / "b.gguf", ctx=63)


def test_numpy_fallback_scores_weights_only(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """Without the llama.cpp runtime: the numpy forward pass, the checkpoint's tokenizer.json, the same statistics,
    and every output labelled weights-only. Q8_0 moves the distribution a little; the base against itself not at
    all."""
    import l1quant

    model = tiny_factory(hidden=32, layers=1, heads=4, kv_heads=2, ff=64)
    out = tmp_path  # the fallback finds tokenizer.json beside the GGUF (or one folder up)
    (out / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes())
    f16, q8 = out / "m-F16.gguf", out / "m-Q8_0.gguf"
    l1quant.convert(model, type="f16", output=f16)
    l1quant.convert(model, type="q8_0", output=q8)
    rep = cmp.compare([q8, f16], base=f16, ctx=16, chunks=2, runtime="numpy", threads=1, progress=False,
                      base_logits=out / "base.kld")
    assert rep.weight_only and rep.runtime == "numpy" and rep.tokens_scored == 2 * 7
    q8_row, self_row = rep.rows[1].stats, rep.rows[2].stats
    assert 0 < q8_row["kld"]["mean"] < 0.05, q8_row["kld"]
    assert self_row["kld"]["mean"] < 1e-6 and self_row["same_top"]["value"] == 1.0
    assert "weights only" in rep.table() and rep.to_dict()["kld_kind"].startswith("weights-only")

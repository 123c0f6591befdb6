"""Parity of the i-quant mixes with llama.cpp, byte for byte: all twelve, with an importance matrix, and the four
llama-quantize makes without one (IQ4_NL, IQ4_XS, IQ3_S, IQ3_M) also without.

As ``tests/test_parity_quant.py``: ``l1quant.convert(checkpoint, mix)`` in one pass, and ``l1quant.quantize`` of the
reference converter's BF16 (and F16) output, must both equal llama-quantize run on that reference output
(llama-cpp-python's ``llama_model_quantize`` without an imatrix; with one the real ``llama-quantize --imatrix``
binary, whose ``main`` writes the ``quantize.imatrix.*`` keys). Checkpoints: hidden 256 untied (every row fits
256-value blocks), hidden 96 tied with ff 200 (the IQ4_NL / Q4_0 / Q5_0 / Q8_0 / F16 shape fallbacks), and a qwen3
(hidden 256, tied) and a llama one (hidden 96), both GQA 4 (the IQ4 mixes move attn_v to Q5_K, IQ3_S and the
IQ1/IQ2 mixes to Q4_K).

The importance matrices come from the real ``llama-imatrix`` (``L1QUANT_LLAMA_IMATRIX``) on each reference BF16,
once per checkpoint and module; every mix runs on the hidden-256 checkpoint, the other checkpoints run the mixes
whose rules differ there (:data:`IMATRIX_CASES`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from llama_quantize import llama_quantize
from reference import require_reference, run_reference
from test_parity_imatrix import IMATRIX_ENV, QUANTIZE_ENV, _imatrix, _run, _text, _tool

import l1quant
from l1quant.errors import ConfigError
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

MIXES = ["iq4_nl", "iq4_xs", "iq3_s", "iq3_m"]
CHECKPOINTS = {
    "h256-untied": dict(tok="r1", hidden=256, layers=9, heads=4, kv_heads=2, ff=512),
    "h96-tied": dict(tok="qwen2.5", hidden=96, layers=3, heads=4, kv_heads=2, ff=200, tied=True),
    "qwen3-h256-gqa4": dict(tok="qwen3", hidden=256, layers=3, heads=8, kv_heads=2, ff=512, tied=True),
    "llama-h96-gqa4": dict(tok="r1-llama", hidden=96, layers=3, heads=8, kv_heads=2, ff=200),
}


def _same_file(ours: Path, theirs: Path) -> None:
    a, b = read_gguf(ours), read_gguf(theirs)
    assert [(k, a.kv_types[k], a.kv[k]) for k in a.kv] == [(k, b.kv_types[k], b.kv[k]) for k in b.kv]
    assert [(t.name, t.ggml_type, t.shape, t.offset) for t in a.tensors] == \
        [(t.name, t.ggml_type, t.shape, t.offset) for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):  # the first tensor that differs, by name
        assert a.read_tensor_bytes(ta) == b.read_tensor_bytes(tb), ta.name
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.fixture(scope="module")
def env(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """checkpoint id -> (checkpoint folder, the reference's BF16 GGUF)."""
    ref = require_reference()
    out: dict[str, tuple[Path, Path]] = {}
    for cid, kw in CHECKPOINTS.items():
        model = tiny_factory(**kw)
        out[cid] = (model, run_reference(ref, model, "bf16", tmp_path_factory.mktemp(cid) / "ref-BF16.gguf"))
    return out


@pytest.mark.parametrize("cid", list(CHECKPOINTS))
@pytest.mark.parametrize("mix", MIXES)
def test_one_pass_convert_and_quantize_equal_llama_quantize(env: dict[str, tuple[Path, Path]], llama_cpp: ModuleType,
                                                             tmp_path: Path, cid: str, mix: str) -> None:
    model, ref_bf16 = env[cid]
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", mix.upper())
    assert want.rc == 0, want.log[-2000:]
    _same_file(l1quant.convert(model, mix, tmp_path / "convert.gguf", threads=2), want.path)
    _same_file(l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", mix, threads=2), want.path)


@pytest.mark.parametrize("mix", ["iq4_xs", "iq3_m"])
def test_quantize_from_the_reference_f16(tiny_factory: Callable[..., Path], llama_cpp: ModuleType,
                                         tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, mix: str) -> None:
    model = tiny_factory(**CHECKPOINTS["h96-tied"])
    ref_f16 = tmp_path_factory.getbasetemp() / "ref-h96-F16.gguf"
    if not ref_f16.exists():
        run_reference(require_reference(), model, "f16", ref_f16)
    want = llama_quantize(llama_cpp, ref_f16, tmp_path / "llama-quantize.gguf", mix.upper())
    assert want.rc == 0
    _same_file(l1quant.quantize(ref_f16, tmp_path / "ours.gguf", mix), want.path)



# ----------------------------------------------------------------------------------------------------------------
# With an importance matrix (llama-imatrix's, on the reference BF16): every mix, against llama-quantize --imatrix
# ----------------------------------------------------------------------------------------------------------------

ALL_MIXES = ["iq4_nl", "iq4_xs", "iq3_s", "iq3_m", "iq3_xs", "iq3_xxs", "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs",
             "iq1_m", "iq1_s"]
#: Every mix runs on this one: hidden and ff 256, untied, 8 layers (the fewest the first-eighth and middle-layer
#: rules need; 3.1 M values per file, as the grid searches, llama-quantize's most of all, are slow): every grid
#: kernel with importance weights, the IQ1/IQ2 branch's Q2_K/IQ3_S token_embd and Q5_K output, the has_imatrix rows
#: of IQ3_XXS/IQ4. Its 352-token vocabulary (the toy tokenizer) keeps the embeddings small: with a real 151k one
#: they are 90% of the values, and llama-quantize's IQ3_S on them takes most of a minute per mix. The reference
#: converter does not know the toy tokenizer's pre-tokenizer, so llama-quantize's input here is l1quant's BF16/F16
#: (byte-identical to the reference's: tests/test_parity.py); the reference's own go through :data:`IMATRIX_CASES`.
TOY = dict(tok="toy", vocab=352, hidden=256, layers=8, heads=4, kv_heads=2, ff=256,
           extra_config={"bos_token_id": 0, "eos_token_id": 2})
#: the mixes also quantized from the F16 (the same kernels see other input values; one per family of base types)
F16_MIXES = ("iq4_xs", "iq3_xxs", "iq2_s", "iq1_m")
#: checkpoint -> the mixes run on the reference's BF16 with an imatrix, where the rules differ from the toy model's
#: (each costs tens of seconds: the 151k-token embeddings). Hidden 96 tied: the fallbacks (IQ4_NL for the grid types,
#: Q8_0 for a tied output, F16 for ff 200). qwen3 tied at GQA 4, rows of 256: attn_v Q4_K in the IQ1/IQ2 and IQ3
#: branches, a tied token_embd in Q5_K/Q6_K. llama: its Q/K permutation, an untied token_embd off the 256 blocks.
IMATRIX_CASES: dict[str, list[str]] = {
    "h96-tied": ["iq3_xxs", "iq1_m"],
    "qwen3-h256-gqa4": ["iq3_xs", "iq1_s"],
    "llama-h96-gqa4": ["iq2_s"],
}


def _llama_quantize_imatrix(src: Path, dst: Path, mix: str, imatrix: Path) -> Path:
    r = _run([_tool(QUANTIZE_ENV, "llama-quantize"), "--imatrix", imatrix, src, dst, mix.upper(), "2"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return dst


def _imatrix_of(gguf: Path, d: Path) -> Path:
    (d / "calib.txt").write_text(_text())
    return _imatrix(_tool(IMATRIX_ENV, "llama-imatrix"), gguf, d / "calib.txt", d / "imatrix.gguf", "gguf")


@pytest.fixture(scope="module")
def toy(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The toy-vocabulary checkpoint, l1quant's BF16 and F16 of it, and llama-imatrix's matrix of the BF16."""
    d = tmp_path_factory.mktemp("toy-imatrix")
    model = tiny_factory(**TOY)
    bf16 = l1quant.convert(model, "bf16", d / "m-BF16.gguf", pre="qwen2", threads=2)
    f16 = l1quant.convert(model, "f16", d / "m-F16.gguf", pre="qwen2", threads=2)
    return dict(model=model, bf16=bf16, f16=f16, imatrix=_imatrix_of(bf16, d))


@pytest.fixture(scope="module")
def imatrices(env: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """checkpoint id -> llama-imatrix's GGUF importance matrix of its reference BF16 (computed once here)."""
    return {cid: _imatrix_of(env[cid][1], tmp_path_factory.mktemp(f"{cid}-imatrix")) for cid in IMATRIX_CASES}


@pytest.mark.parametrize("mix", ALL_MIXES)
def test_every_mix_with_an_imatrix(toy: dict[str, Path], tmp_path: Path, mix: str) -> None:
    """convert --imatrix (one pass) and quantize --imatrix from the BF16 (and for :data:`F16_MIXES` the F16) equal
    llama-quantize --imatrix."""
    im = str(toy["imatrix"])
    want = _llama_quantize_imatrix(toy["bf16"], tmp_path / "lq-bf16.gguf", mix, toy["imatrix"])
    _same_file(l1quant.convert(toy["model"], mix, tmp_path / "convert.gguf", pre="qwen2", threads=2, imatrix=im),
               want)
    _same_file(l1quant.quantize(toy["bf16"], tmp_path / "quantize.gguf", mix, threads=2, imatrix=im), want)
    if mix not in F16_MIXES:
        return
    want = _llama_quantize_imatrix(toy["f16"], tmp_path / "lq-f16.gguf", mix, toy["imatrix"])
    _same_file(l1quant.quantize(toy["f16"], tmp_path / "quantize-f16.gguf", mix, threads=2, imatrix=im), want)


@pytest.mark.parametrize(("cid", "mix"), [(c, m) for c, ms in IMATRIX_CASES.items() for m in ms])
def test_with_an_imatrix_from_the_reference_bf16(env: dict[str, tuple[Path, Path]], imatrices: dict[str, Path],
                                                 tmp_path: Path, cid: str, mix: str) -> None:
    model, ref_bf16 = env[cid]
    im = imatrices[cid]
    want = _llama_quantize_imatrix(ref_bf16, tmp_path / "llama-quantize.gguf", mix, im)
    _same_file(l1quant.convert(model, mix, tmp_path / "convert.gguf", threads=2, imatrix=str(im)), want)
    _same_file(l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", mix, threads=2, imatrix=str(im)), want)


def test_with_an_imatrix_from_the_reference_f16(env: dict[str, tuple[Path, Path]], imatrices: dict[str, Path],
                                                tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    model, _ = env["h96-tied"]
    ref_f16 = tmp_path_factory.getbasetemp() / "ref-h96-F16.gguf"  # shared with the test above without an imatrix
    if not ref_f16.exists():
        run_reference(require_reference(), model, "f16", ref_f16)
    want = _llama_quantize_imatrix(ref_f16, tmp_path / "llama-quantize.gguf", "iq2_m", imatrices["h96-tied"])
    _same_file(l1quant.quantize(ref_f16, tmp_path / "ours.gguf", "iq2_m", threads=2,
                                imatrix=str(imatrices["h96-tied"])), want)


@pytest.mark.parametrize(("cid", "mix"), [("h256-untied", "iq2_xxs"), ("h256-untied", "iq3_xs"),
                                          ("qwen3-h256-gqa4", "iq1_m"), ("h96-tied", "iq2_xxs")])
def test_without_an_imatrix_refused_where_llama_quantize_refuses(env: dict[str, tuple[Path, Path]],
                                                                 llama_cpp: ModuleType, tmp_path: Path, cid: str,
                                                                 mix: str) -> None:
    """llama-quantize refuses a tensor whose type needs an imatrix (after the shape fallback): on hidden 96 every
    such tensor falls back to IQ4_NL/Q4_0/Q8_0/F16, so both make the file without one."""
    model, ref_bf16 = env[cid]
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", mix.upper())
    if cid == "h96-tied":
        assert want.rc == 0, want.log[-2000:]
        _same_file(l1quant.convert(model, mix, tmp_path / "convert.gguf", threads=2), want.path)
        return
    assert want.rc != 0 and "requires an imatrix" in want.log, want.log[-2000:]
    for run in (lambda: l1quant.convert(model, mix, tmp_path / "convert.gguf"),
                lambda: l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", mix)):
        with pytest.raises(ConfigError, match=rf"^quant type {mix.upper()} needs an importance matrix .*--imatrix "
                                              r"FILE \(or --calibration"):
            run()
    assert not (tmp_path / "convert.gguf").exists() and not (tmp_path / "quantize.gguf").exists()

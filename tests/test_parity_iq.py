"""Parity of the i-quant mixes with llama.cpp, byte for byte: IQ4_NL, IQ4_XS, IQ3_S and IQ3_M (the ones llama-quantize
makes without an importance matrix).

As ``tests/test_parity_quant.py``: ``l1quant.convert(checkpoint, mix)`` in one pass, and ``l1quant.quantize`` of the
reference converter's BF16 (and F16) output, must both equal llama-quantize (llama-cpp-python's
``llama_model_quantize``) run on that reference output. Checkpoints: hidden 256 untied (every row fits 256-value
blocks), hidden 96 tied with ff 200 (the IQ4_NL / Q5_0 / Q8_0 / F16 shape fallbacks), and a qwen3 and a llama one
(GQA 4, so the IQ4 mixes move attn_v to Q5_K and IQ3_S moves it to Q4_K).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from llama_quantize import llama_quantize
from reference import require_reference, run_reference

import l1quant
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

MIXES = ["iq4_nl", "iq4_xs", "iq3_s", "iq3_m"]
CHECKPOINTS = {
    "h256-untied": dict(tok="r1", hidden=256, layers=9, heads=4, kv_heads=2, ff=512),
    "h96-tied": dict(tok="qwen2.5", hidden=96, layers=3, heads=4, kv_heads=2, ff=200, tied=True),
    "qwen3-h256-gqa4": dict(tok="qwen3", hidden=256, layers=3, heads=8, kv_heads=2, ff=512),
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


"""Parity of the 4/5/6-bit types with llama.cpp: every mix, byte for byte.

For each llama-quantize type, two ways to the same file:

* **one pass** -- ``l1quant.convert(checkpoint, mix)`` must equal the reference converter's ``--outtype bf16``
  output (the lossless one for a bf16 checkpoint) followed by llama-quantize (llama-cpp-python's
  ``llama_model_quantize``, the whole tool in-process);
* **quantize** -- ``l1quant.quantize(reference.gguf, mix)`` must equal llama-quantize on the same file, for the
  reference's BF16 and F16 outputs.

Two checkpoints: hidden 256 (every row fits the 256-value K blocks; 9 layers, so ``use_more_bits`` picks some
layers and not others; untied, R1 tokenizer) and hidden 96 with ff 200 (rows that do not fit, so the shape
fallbacks Q4_K->Q5_0, ... ->F16 run; tied embeddings, Qwen2.5 tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from llama_quantize import llama_quantize
from reference import require_reference, run_reference

import l1quant
from l1quant.conversion.mixes import QuantOptions
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

MIXES = ["q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
         "q5_k_m", "q6_k"]
CHECKPOINTS = {
    "h256-untied": dict(tok="r1", hidden=256, layers=9, heads=4, kv_heads=2, ff=512),
    "h96-tied": dict(tok="qwen2.5", hidden=96, layers=3, heads=4, kv_heads=2, ff=200, tied=True),
}


@pytest.fixture(scope="module")
def env(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """checkpoint id -> (checkpoint folder, the reference's BF16 GGUF)."""
    ref = require_reference()
    out: dict[str, tuple[Path, Path]] = {}
    for cid, kw in CHECKPOINTS.items():
        model = tiny_factory(**kw)
        out[cid] = (model, run_reference(ref, model, "bf16", tmp_path_factory.mktemp(cid) / "ref-BF16.gguf"))
    return out


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


@pytest.mark.parametrize("cid", list(CHECKPOINTS))
@pytest.mark.parametrize("mix", MIXES)
def test_one_pass_convert_and_quantize_equal_llama_quantize(env: dict[str, tuple[Path, Path]], llama_cpp: ModuleType,
                                                             tmp_path: Path, cid: str, mix: str) -> None:
    model, ref_bf16 = env[cid]
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", mix.upper())
    assert want.rc == 0, want.log[-2000:]
    _same_file(l1quant.convert(model, mix, tmp_path / "convert.gguf", threads=2), want.path)
    _same_file(l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", mix, threads=2), want.path)


@pytest.mark.parametrize("mix", ["q4_k_m", "q5_0", "q6_k", "q3_k_m"])
def test_quantize_from_the_reference_f16(tiny_factory: Callable[..., Path], llama_cpp: ModuleType,
                                         tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, mix: str) -> None:
    model = tiny_factory(**CHECKPOINTS["h256-untied"])
    ref_f16 = tmp_path_factory.getbasetemp() / "ref-h256-F16.gguf"
    if not ref_f16.exists():
        run_reference(require_reference(), model, "f16", ref_f16)
    want = llama_quantize(llama_cpp, ref_f16, tmp_path / "llama-quantize.gguf", mix.upper())
    assert want.rc == 0
    _same_file(l1quant.quantize(ref_f16, tmp_path / "ours.gguf", mix), want.path)


def test_aliases_write_the_m_mixes(env: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    model, _ = env["h96-tied"]
    for alias, full in (("q4_k", "q4_k_m"), ("q3_k", "q3_k_m"), ("q5_k", "q5_k_m")):
        a = l1quant.convert(model, alias, tmp_path / f"{alias}.gguf")
        b = l1quant.convert(model, full, tmp_path / f"{full}.gguf")
        assert a.read_bytes() == b.read_bytes()


OPTION_CASES = {
    "pure": QuantOptions(pure=True),
    "output-q8_0-embd-q4_0": QuantOptions(output_tensor_type="q8_0", token_embedding_type="q4_0"),
    "tensor-types": QuantOptions(tensor_types=[("attn_v", "q8_0"), ("ffn_down", "q4_k")]),
    "leave-output": QuantOptions(leave_output_tensor=True),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_per_tensor_options_equal_llama_quantize(env: dict[str, tuple[Path, Path]], llama_cpp: ModuleType,
                                                 tmp_path: Path, case: str) -> None:
    model, ref_bf16 = env["h256-untied"]
    o = OPTION_CASES[case]
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", "Q4_K_M", o)
    assert want.rc == 0
    kw = dict(pure=o.pure, output_tensor_type=o.output_tensor_type, token_embedding_type=o.token_embedding_type,
              tensor_types=list(o.tensor_types), leave_output_tensor=o.leave_output_tensor)
    _same_file(l1quant.convert(model, "q4_k_m", tmp_path / "convert.gguf", **kw), want.path)  # type: ignore[arg-type]
    _same_file(l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", "q4_k_m", **kw), want.path)  # type: ignore[arg-type]


def test_converter_type_with_an_option_is_a_mix(env: dict[str, tuple[Path, Path]], llama_cpp: ModuleType,
                                                tmp_path: Path) -> None:
    """``--type q8_0`` alone is the converter's Q8_0; with a per-tensor flag it is llama-quantize's Q8_0."""
    model, ref_bf16 = env["h256-untied"]
    o = QuantOptions(output_tensor_type="q6_k")
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", "Q8_0", o)
    _same_file(l1quant.convert(model, "q8_0", tmp_path / "c.gguf", output_tensor_type="q6_k"), want.path)


def test_bytes_do_not_depend_on_threads_or_chunks(env: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    model, ref_bf16 = env["h256-untied"]
    a = l1quant.convert(model, "q4_k_m", tmp_path / "a.gguf", threads=1)
    b = l1quant.convert(model, "q4_k_m", tmp_path / "b.gguf", threads=3, chunk_bytes=4097)
    c = l1quant.quantize(ref_bf16, tmp_path / "c.gguf", "q4_k_m", threads=3, chunk_bytes=1)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()

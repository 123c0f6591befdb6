"""The 4/5/6-bit files end to end without the reference: quantize's refusals, verify and inspect on every mix.

(Byte parity with llama.cpp is tests/test_parity_quant.py; this layer checks what a user sees.)
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from llama_quantize import llama_quantize

import l1quant
from l1quant.check.structure import file_mix
from l1quant.cli import main
from l1quant.conversion.mixes import NEEDS_IMATRIX, get_mix
from l1quant.errors import ConfigError, InputError, OutputError
from l1quant.gguf.reader import describe, read_gguf
from l1quant.imatrix_compute import default_calibration_text

#: hidden 256 and ff 512: every matrix row fills 256-value K blocks; 9 layers so use_more_bits picks some
SHAPE = dict(hidden=256, layers=9, heads=4, kv_heads=2, ff=512)


@pytest.fixture(scope="module")
def model(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1", **SHAPE)


@pytest.fixture(scope="module")
def bf16(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return l1quant.convert(model, "bf16", tmp_path_factory.mktemp("bf16") / "m-BF16.gguf")


@pytest.mark.parametrize("mix", ["q4_k_m", "q3_k_m", "q2_k", "q6_k", "q5_1", "iq4_xs", "iq4_nl", "iq3_s", "iq3_m"])
def test_verify_passes_every_check_on_a_mix(model: Path, tmp_path: Path, mix: str) -> None:
    out = l1quant.convert(model, mix, tmp_path / "m.gguf")
    rep = l1quant.verify(out, source=model)
    assert rep.passed, [c for c in rep.checks if c.status != "pass"]
    assert {c.name: c.status for c in rep.checks}["tensors.mix"] == "pass"
    assert rep.file_type == get_mix(mix).name
    assert all(r.bytes_identical and r.passed for r in rep.tensors)


def test_iq_noise_models_fit(model: Path, tmp_path: Path) -> None:
    """Each IQ type's noise model (its record's) is near the error it really makes: the tensors' rel RMSE is 0.5-1.5x
    the model on random weights (measured 0.7-1.1x), so verify's 3x net has room and still catches garbage."""
    for mix in ("iq4_xs", "iq3_s"):
        rep = l1quant.verify(l1quant.convert(model, mix, tmp_path / f"{mix}.gguf"), source=model)
        iq = [r for r in rep.tensors if r.type.startswith("IQ")]
        assert iq and all(r.expected_rel_rmse is not None for r in iq)
        assert all(0.5 < r.rel_rmse / r.expected_rel_rmse < 1.5 for r in iq), [(r.name, r.rel_rmse) for r in iq]


@pytest.mark.slow
def test_imatrix_mixes_verify_and_inspect(bf16: Path, model: Path, tmp_path: Path) -> None:
    """The mixes that need an importance matrix (here a synthetic one, random positive column weights for every
    blk.* matrix, in llama-imatrix's legacy .dat form): verify with it proves every byte; without it every tensor is
    inside its type's noise model (0.5-1.5x of it, so the 3x net has room); inspect gives their bits per weight."""
    from test_parity_imatrix import _dat

    rng = np.random.default_rng(7)
    gf = read_gguf(bf16)
    im = _dat(tmp_path / "m.imatrix.dat", {t.name: rng.uniform(0.05, 2.0, t.shape[0]).astype(np.float32)
                                           for t in gf.tensors if t.name.startswith("blk.") and len(t.shape) == 2})
    for mix in ("iq2_m", "iq1_s"):  # IQ2_S/IQ3_S; IQ1_S/IQ2_XXS (no unweighted quantizer: bytes unchecked)
        out = l1quant.convert(model, mix, tmp_path / f"{mix}.gguf", imatrix=str(im), threads=2)
        rep = l1quant.verify(out, source=model, imatrix=im, threads=2)
        assert rep.passed and rep.file_type == get_mix(mix).name, [c for c in rep.checks if c.status != "pass"]
        assert all(r.bytes_identical for r in rep.tensors)
        rep = l1quant.verify(out, source=model, threads=2)
        assert rep.passed, [c for c in rep.checks if c.status == "fail"]
        iq = [r for r in rep.tensors if r.type.startswith("IQ")]
        assert iq and all(0.5 < r.rel_rmse / r.expected_rel_rmse < 1.5 for r in iq), \
            [(r.name, r.rel_rmse / r.expected_rel_rmse) for r in iq]
    by = describe(read_gguf(tmp_path / "iq1_s.gguf"))["totals"]["by_type"]
    assert (by["IQ1_S"]["bpw"], by["IQ2_XXS"]["bpw"]) == (1.5625, 2.0625)


def test_verify_says_per_tensor_options_but_passes(model: Path, tmp_path: Path) -> None:
    out = l1quant.convert(model, "q4_k_m", tmp_path / "m.gguf", tensor_types=["attn_v=q8_0"])
    rep = l1quant.verify(out, source=model)
    mixc = next(c for c in rep.checks if c.name == "tensors.mix")
    assert rep.passed and mixc.status == "skip" and "blk.0.attn_v.weight" in mixc.message
    # each tensor still equals re-quantizing the source with the type the file has
    assert all(r.bytes_identical for r in rep.tensors)


def test_verify_fails_a_flipped_k_block(model: Path, tmp_path: Path) -> None:
    out = l1quant.convert(model, "q4_k_m", tmp_path / "m.gguf")
    gf = read_gguf(out)
    t = next(t for t in gf.tensors if t.ggml_type.name == "Q4_K")
    with open(out, "r+b") as f:  # a quant byte in the middle of the tensor
        f.seek(t.abs_offset + t.nbytes // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    rep = l1quant.verify(out, source=model)
    assert not rep.passed
    bad = [r for r in rep.tensors if not r.passed]
    assert [r.name for r in bad] == [t.name] and not bad[0].bytes_identical


def test_llama_quantize_layout_q8_0_verifies_as_a_mix(model: Path, bf16: Path, tmp_path: Path) -> None:
    """llama-quantize's Q8_0 (file_type last, its tensor order) is not the converter's Q8_0, and verify knows it."""
    out = l1quant.quantize(bf16, tmp_path / "m-Q8_0.gguf", "q8_0")
    assert file_mix(read_gguf(out)) is not None
    assert file_mix(read_gguf(l1quant.convert(model, "q8_0", tmp_path / "conv.gguf"))) is None
    rep = l1quant.verify(out, source=model)
    assert rep.passed, [c for c in rep.checks if c.status != "pass"]


def test_inspect_reports_bits_per_weight(model: Path, tmp_path: Path) -> None:
    d = describe(read_gguf(l1quant.convert(model, "q4_k_m", tmp_path / "m.gguf")))
    by = d["totals"]["by_type"]
    assert by["Q4_K"]["bpw"] == 4.5 and by["Q6_K"]["bpw"] == 6.5625 and by["F32"]["bpw"] == 32
    assert 4.5 < d["totals"]["bpw"] < 6.5625
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.gguf")])
    assert r.exit_code == 0 and "bits per weight" in r.output and "4.5000 bpw" in r.output
    by = describe(read_gguf(l1quant.convert(model, "iq3_m", tmp_path / "i.gguf")))["totals"]["by_type"]
    assert by["IQ3_S"]["bpw"] == 3.4375 and by["Q4_K"]["bpw"] == 4.5
    by = describe(read_gguf(l1quant.convert(model, "iq4_xs", tmp_path / "x.gguf")))["totals"]["by_type"]
    assert by["IQ4_XS"]["bpw"] == 4.25


# ------------------------------------------------------------------------------------------------ quantize


def test_quantize_default_name_and_folder(bf16: Path, tmp_path: Path) -> None:
    src = tmp_path / "L1-Test-BF16.gguf"
    shutil.copy(bf16, src)
    assert l1quant.quantize(src, None, "q6_k") == tmp_path / "L1-Test-Q6_K.gguf"
    out = l1quant.quantize(src, str(tmp_path / "new") + "/", "q4_k")
    assert out == tmp_path / "new" / "L1-Test-Q4_K_M.gguf" and out.is_file()


def test_quantize_cli(bf16: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(bf16), str(out), "Q4_K_M", "--tensor-type", "ffn_down=q8_0",
                                  "--output-tensor-type", "q8_0"])
    assert r.exit_code == 0, r.output
    types = {t.name: t.ggml_type.name for t in read_gguf(out).tensors}
    assert types["output.weight"] == "Q8_0" and types["blk.3.ffn_down.weight"] == "Q8_0"
    assert types["blk.3.ffn_up.weight"] == "Q4_K"
    r = CliRunner().invoke(main, ["quantize", str(bf16), "q9_z"])
    assert r.exit_code == 2 and "q9_z" in r.output


def test_quantize_refuses_a_quantized_input_unless_asked(bf16: Path, tmp_path: Path,
                                                         llama_cpp: object) -> None:
    q8 = l1quant.quantize(bf16, tmp_path / "q8.gguf", "q8_0")
    with pytest.raises(InputError, match=r"already quantized \(Q8_0\).*--allow-requantize"):
        l1quant.quantize(q8, tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()
    ours = l1quant.quantize(q8, tmp_path / "re.gguf", "q4_k_m", allow_requantize=True)
    # llama-quantize with allow_requantize: dequantize Q8_0 to f32, then quantize: the same bytes
    import ctypes

    lc = llama_cpp
    params = lc.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q4_K_M  # type: ignore[attr-defined]
    params.allow_requantize = True
    rc = lc.llama_model_quantize(str(q8).encode(), str(tmp_path / "ref.gguf").encode(),  # type: ignore[attr-defined]
                                 ctypes.byref(params))
    assert rc == 0
    assert ours.read_bytes() == (tmp_path / "ref.gguf").read_bytes()


def test_quantize_refusals(bf16: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IQ2_XXS.*importance matrix"):
        l1quant.quantize(bf16, tmp_path / "x.gguf", "iq2_xxs")
    with pytest.raises(ConfigError, match="unknown"):
        l1quant.quantize(bf16, tmp_path / "x.gguf", "q4_k_m", output_tensor_type="q9_9")
    with pytest.raises(ConfigError, match="REGEX=TYPE"):
        l1quant.quantize(bf16, tmp_path / "x.gguf", "q4_k_m", tensor_types=["attn_v"])
    with pytest.raises(OutputError, match="is the input"):
        l1quant.quantize(bf16, bf16, "q4_k_m")
    with pytest.raises(InputError):
        l1quant.quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


def test_quantize_equals_llama_quantize_on_l1quants_own_bf16(bf16: Path, tmp_path: Path,
                                                             llama_cpp: object) -> None:
    want = llama_quantize(llama_cpp, bf16, tmp_path / "ref.gguf", "Q5_K_M")  # type: ignore[arg-type]
    assert want.rc == 0
    assert l1quant.quantize(bf16, tmp_path / "ours.gguf", "q5_k_m").read_bytes() == want.path.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["q4_k_m", "q3_k_m", "iq4_xs", "iq3_m", "iq2_m"])
def test_llama_cpp_loads_generates_and_agrees_with_the_reference_forward(model: Path, tmp_path: Path, mix: str,
                                                                          llama_cpp: object) -> None:
    imatrix = None
    if get_mix(mix).name in NEEDS_IMATRIX:  # IQ2_M: an importance matrix of the model (l1quant's, as llama-imatrix)
        text = tmp_path / "calib.txt"
        text.write_text(default_calibration_text()[:6000], encoding="utf-8")
        imatrix = tmp_path / "m.imatrix.gguf"
        l1quant.imatrix(model, text, imatrix, ctx_size=128, chunks=4, threads=2, no_ppl=True)
    out = l1quant.convert(model, mix, tmp_path / "m.gguf", imatrix=None if imatrix is None else str(imatrix))
    rep = l1quant.verify(out, source=model, logits=True, runtime="llama.cpp", tokens=128, imatrix=imatrix)
    status = {c.name: c for c in rep.checks}
    assert status["logits"].status == "pass" and status["runtime"].status == "pass", status
    # llama.cpp on the file and the numpy forward on the file's dequantized weights see the same model: their
    # KL divergences from the source agree closely (different arithmetic, same weights)
    ours, theirs = rep.logits["mean_kld"], rep.runtime_logits["mean_kld"]  # type: ignore[index]
    assert ours > 0 and abs(theirs - ours) <= 0.1 * ours, (ours, theirs)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)  # type: ignore[attr-defined]
    gen = llm("What is 2+2?", max_tokens=8, temperature=0.0)
    assert gen["usage"]["completion_tokens"] >= 1

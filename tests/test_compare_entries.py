"""``compare --types`` entries beyond a type name (issues 18 and 20): hand mixes made with llama-quantize's
per-tensor flags (``q4_k_m+token_embd=q4_0+output=q5_0``), target-size files (``auto@4.0bpw``, ``auto@400M``,
``auto@q3_k_m``), ``--imatrix``/``--calibration``, and one F32/F16/BF16 GGUF as the model. Each made file is
checked against the file ``convert``/``quantize`` makes with the flags the entry stands for (byte for byte); the
scoring uses the numpy runtime (weights only) to stay fast, except where an importance matrix is computed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from reference import require_module

import l1quant
import l1quant.cli.compare
from l1quant import evaluate as cmp
from l1quant.cli import main
from l1quant.errors import ConfigError, InputError
from l1quant.evaluate.entries import parse_entries, parse_entry, split_entries
from l1quant.gguf.reader import read_gguf
from l1quant.units import parse_size

THREADS = 2
FAST = {"ctx": 16, "chunks": 2, "runtime": "numpy", "threads": 1}


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.ggml_type.name for t in read_gguf(path).tensors}


# --------------------------------------------------------------------------------------------------- parsing


def test_entries_parse_names_kinds_and_flags() -> None:
    es = parse_entries("bf16, Q4_K_M, q4_k_m+token_embd=q4_0+output=q5_0, q3_k_m+pure+attn_v=q8_0, "
                       r"q4_k_m+blk\.[0-9]{1,2}\.ffn_down=q6_k+blk\.\d+\.attn_k=q5_k, auto@4.0bpw, auto@400M, "
                       "auto@1.5GiB, auto@q3_k_m, auto@q4_k_m+output=q5_0")
    assert [e.kind for e in es] == ["named", "named", "hand", "hand", "hand", "auto", "auto", "auto", "auto", "auto"]
    assert [e.name for e in es] == [
        "BF16", "Q4_K_M", "Q4_K_M+token_embd=Q4_0+output=Q5_0", "Q3_K_M+pure+attn_v=Q8_0",
        r"Q4_K_M+blk\.[0-9]{1,2}\.ffn_down=Q6_K+blk\.\d+\.attn_k=Q5_K", "auto@4.0bpw", "auto@400M", "auto@1.5GiB",
        "auto@Q3_K_M", "auto@Q4_K_M+output=Q5_0"]
    hand = es[2]
    assert (hand.type, hand.token_embedding_type, hand.output_tensor_type, hand.tensor_types) == \
        ("q4_k_m", "Q4_0", "Q5_0", ())
    assert es[3].pure and es[3].tensor_types == (("attn_v", "Q8_0"),)
    # a regex keeps its '+' and its comma; the patterns stay in the order written (the first match wins)
    assert es[4].tensor_types == ((r"blk\.[0-9]{1,2}\.ffn_down", "Q6_K"), (r"blk\.\d+\.attn_k", "Q5_K"))
    assert (es[5].target_bpw, es[5].target_size) == (4.0, None)
    assert es[6].target_size == 400_000_000 and es[7].target_size == 1_610_612_736
    assert es[8].target_ref is not None and es[8].target_ref.name == "Q3_K_M" and es[8].target_size is None
    assert es[9].target_ref is not None and es[9].target_ref.output_tensor_type == "Q5_0"
    opts = hand.options("m.imatrix.gguf")
    assert opts.token_embedding_type.name == "Q4_0" and opts.imatrix == "m.imatrix.gguf"
    assert es[0].options("m.imatrix.gguf") is None  # an imatrix does not change BF16: none is passed
    assert split_entries("a,b{1,2},c") == ["a", "b{1,2}", "c"]


@pytest.mark.parametrize("text, needle", [
    ("q9_k", "not one of"),
    ("q4_k_m+token_embd", "expected +NAME=TYPE"),
    ("q4_k_m+output=q9", "not a GGML type"),
    ("q4_k_m+attn_(v=q8_0", "bad regular expression"),
    ("auto", "auto needs a target"),
    ("auto@", "auto@ needs a target"),
    ("auto@4x", "expected bytes"),
    ("auto@0bpw", "above 0"),
    ("auto@auto@4bpw", "another auto entry"),
])
def test_entries_refuse_in_one_line(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        parse_entry(text)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_entries_refuse_a_repeat_and_sizes_parse() -> None:
    with pytest.raises(ConfigError, match="same entry"):
        parse_entries("q4_k_m,Q4_K_M")
    assert parse_size("123") == 123 and parse_size("2K") == 2000 and parse_size("2KiB") == 2048
    with pytest.raises(ConfigError, match="at least one byte"):
        parse_size("0M")


def test_entries_that_need_an_imatrix_are_refused_without_one(tmp_path: Path) -> None:
    for types in ("f16,q2_k_s", "f16,q4_k_m+output=iq3_xxs", "f16,auto@4bpw"):
        with pytest.raises(InputError, match="needs an importance matrix: pass --imatrix FILE or --calibration"):
            cmp.compare(tmp_path, types, **FAST)
    r = CliRunner().invoke(main, ["compare", str(tmp_path), "--types", "f16,q2_k_s", "-q"])
    assert r.exit_code != 0 and "Q2_K_S needs an importance matrix" in r.output
    with pytest.raises(InputError, match="give one of --imatrix"):
        cmp.compare(tmp_path, "f16,q4_0", imatrix=tmp_path / "x", calibration=True, **FAST)


# ------------------------------------------------------------------------------------------------ making files


@pytest.fixture(scope="module")
def model(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory(hidden=32, layers=1, heads=4, kv_heads=2, ff=64)


def test_hand_mix_is_the_file_llama_quantize_flags_make(model: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    rep = cmp.compare(model, "f16,q4_k_m,q4_k_m+token_embd=q4_0+output=q5_0+attn_v=q8_0", keep=keep,
                      base_logits=tmp_path / "b.kld", **FAST)
    assert [r.kind for r in rep.rows] == ["named", "named", "hand"]
    hand = Path(rep.rows[2].path)
    ref = l1quant.convert(model, type="q4_k_m", output=tmp_path / "ref.gguf", threads=THREADS,
                          token_embedding_type="q4_0", output_tensor_type="q5_0", tensor_types=[("attn_v", "q8_0")])
    assert hand.read_bytes() == ref.read_bytes()
    t = _types(hand)
    assert (t["token_embd.weight"], t["output.weight"], t["blk.0.attn_v.weight"]) == ("Q4_0", "Q5_0", "Q8_0")
    d = rep.to_dict()
    assert [x["kind"] for x in d["types"]] == ["named", "named", "hand"] and d["types"][2]["target"] is None
    assert rep.rows[2].name in rep.table() and rep.rows[2].stats["kld"]["mean"] > 0


def test_one_float_gguf_is_quantized_per_type(model: Path, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    bf16 = l1quant.convert(model, type="bf16", output=tmp_path / "src" / "m-BF16.gguf", threads=THREADS)
    (bf16.parent / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes())  # the numpy runtime's
    rep = cmp.compare([bf16], ["bf16", "q8_0", "q4_k_m+output=q8_0"], keep=tmp_path / "k",
                      base_logits=tmp_path / "b.kld", **FAST)
    assert [r.name for r in rep.rows] == ["BF16", "Q8_0", "Q4_K_M+output=Q8_0"]
    assert Path(rep.rows[0].path) == bf16  # already that type: the GGUF itself is the base
    ref = l1quant.quantize(bf16, tmp_path / "ref.gguf", "q4_k_m", threads=THREADS, output_tensor_type="q8_0")
    assert Path(rep.rows[2].path).read_bytes() == ref.read_bytes()
    # the first type not a float type: the GGUF itself is the base, every type is scored against it
    rep2 = cmp.compare([bf16], ["q8_0"], keep=tmp_path / "k", base_logits=tmp_path / "b2.kld", **FAST)
    assert [(r.name, r.kind) for r in rep2.rows] == [("BF16", "file"), ("Q8_0", "named")]
    # a quantized GGUF is not a source to quantize from
    with pytest.raises(InputError, match="a Q8_0 file; compare quantizes --types from an F32, F16 or BF16 GGUF"):
        cmp.compare([rep.rows[1].path], ["q4_0"], **FAST)


def test_plot_marks_named_hand_and_auto_rows(tmp_path: Path) -> None:
    require_module("matplotlib")
    stats: Any = {"kld": {"mean": 0.01, "unc": 0.001}}
    rows = [cmp.TypeRow("F16", "a", 4_000_000, 16.0, 10.0, 0.1, kind="named"),
            cmp.TypeRow("Q4_K_M", "b", 1_200_000, 4.8, 10.2, 0.1, stats, kind="named"),
            cmp.TypeRow("Q4_K_M+output=Q5_0", "c", 1_100_000, 4.5, 10.2, 0.1, stats, kind="hand"),
            cmp.TypeRow("auto@Q4_K_M", "d", 1_200_000, 4.8, 10.1, 0.1, {"kld": {"mean": 0.005, "unc": 0.001}},
                        kind="auto", target={"size_bytes": 1_200_000, "size_of": "Q4_K_M"})]
    rep = cmp.CompareReport("F16", 16, 2, 14, "t", "numpy", True, "b.kld", 1, rows)
    out = rep.plot(tmp_path / "p.png")
    assert out.stat().st_size > 1000


# ------------------------------------------------------------------------------------------ importance matrix


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    # two chunks of 512 with L1's tokenizer (llama-imatrix's default context)
    p.write_text(l1quant.imatrix_compute.default_calibration_text()[:9000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def calibrated(model: Path, calib_text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """compare with --calibration: the report and the keep folder (which holds the importance matrix)."""
    require_module("llama_cpp")
    keep = tmp_path_factory.mktemp("calibrated")
    rep = cmp.compare(model, "f16,q4_k_m,q2_k_s", calibration=calib_text, keep=keep, base_logits=keep / "b.kld",
                      **FAST)
    return rep, keep


@pytest.mark.slow
def test_calibration_and_imatrix_quantize_the_types(model: Path, calibrated: tuple[Any, Path],
                                                    tmp_path: Path) -> None:
    rep, keep = calibrated
    kept = sorted(keep.glob("*.imatrix.gguf"))
    assert len(kept) == 1 and [r.name for r in rep.rows] == ["F16", "Q4_K_M", "Q2_K_S"]
    ref = l1quant.convert(model, type="q4_k_m", output=tmp_path / "ref.gguf", threads=THREADS, imatrix=str(kept[0]))
    got = Path(rep.rows[1].path)
    assert got.read_bytes() == ref.read_bytes() and "imatrix" in got.name
    assert "quantize.imatrix.file" in read_gguf(got).kv and "quantize.imatrix.file" not in read_gguf(rep.rows[0].path).kv
    # --imatrix FILE: the same matrix gives the same files (reused from the folder: same names)
    r = CliRunner().invoke(main, ["compare", str(model), "--types", "f16,q4_k_m", "--imatrix", str(kept[0]),
                                  "--keep", str(keep), "--ctx", "16", "--chunks", "2", "--runtime", "numpy", "-t", "1",
                                  "--base-logits", str(keep / "b.kld"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["types"][1]["path"] == str(got)


@pytest.mark.slow
def test_auto_entries_beside_named_mixes(model: Path, calibrated: tuple[Any, Path], tmp_path: Path) -> None:
    im = min(calibrated[1].glob("*.imatrix.gguf"))
    q4 = calibrated[0].rows[1].size_bytes  # Q4_K_M's size in bytes: a bare number is bytes
    rep = cmp.compare(model, f"f16,q4_k_m,q3_k_m,auto@q3_k_m,auto@14bpw,auto@{q4}", imatrix=im, keep=tmp_path / "k",
                      base_logits=tmp_path / "b.kld", **FAST)
    rows = {r.name: r for r in rep.rows}
    assert [r.kind for r in rep.rows] == ["named", "named", "named", "auto", "auto", "auto"]
    q3 = rows["Q3_K_M"].size_bytes
    assert rows["auto@Q3_K_M"].target == {"size_bytes": q3, "size_of": "Q3_K_M"}
    assert rows["auto@Q3_K_M"].size_bytes <= q3
    assert rows[f"auto@{q4}"].size_bytes <= q4 and rows[f"auto@{q4}"].target == {"size_bytes": q4}
    assert rows["auto@14bpw"].target == {"bpw": 14.0} and rows["auto@14bpw"].bpw <= 14 + 1e-9
    assert json.loads(rep.to_json())["types"][3]["target"]["size_of"] == "Q3_K_M"
    assert all(r.stats is not None and r.stats["kld"]["mean"] > 0 for r in rep.rows[3:])


def test_a_file_row_is_labelled_by_its_type_only_when_named_for_it(tiny_factory: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    """A hand mix or a target-size file holds its base mix's general.file_type: labelled by that, a table of
    Q4_K_M and Q4_K_M+token_embd=q4_0 would show two rows called Q4_K_M. m-Q8_0.gguf still reads Q8_0."""
    import shutil

    from l1quant.evaluate.driver import _file_label

    model = tiny_factory("toy", vocab=352, extra_config={"bos_token_id": 0, "eos_token_id": 2})
    named = l1quant.convert(model, "q8_0", tmp_path / "m-Q8_0.gguf", pre="qwen2")
    hand = tmp_path / "Q4_K_M+e4_0.gguf"
    shutil.copyfile(named, hand)
    assert _file_label(named) == "Q8_0"
    assert _file_label(hand) == "Q4_K_M+e4_0"

"""l1quant verify: clean conversions pass for every type; planted faults are caught, named, and never a traceback.

Every fault is planted in a copy of a real conversion of the tiny checkpoint (conftest ``tiny_r1``), either by
patching bytes at offsets found with the reader or by rewriting the file with ``gguf.GGUFWriter``. The CLI runs
through click's CliRunner (``--json`` output parsed) and once as a real subprocess.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from reference import require_module

from l1quant.arch.from_gguf import config_from_gguf
from l1quant.check import LOGIT_KLD_LIMITS, format_report, verify
from l1quant.check.report import Check, TensorFidelity, VerifyReport
from l1quant.cli import main
from l1quant.conversion.convert import convert
from l1quant.errors import ConfigError, GGUFFormatError, InputError, RuntimeMissingError
from l1quant.gguf.reader import read_gguf
from l1quant.kernels import decode_bf16, get_quant_type
from l1quant.l1.runner import RUN_INSTALL_HINT

N_TOK = 32  # logit checks: enough tokens for stable numbers on the tiny model, cheap to compare


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def converted(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Convert the tiny checkpoint once per type (lazily)."""
    out_dir = tmp_path_factory.mktemp("verify-conv")
    cache: dict[str, Path] = {}

    def get(type_: str) -> Path:
        if type_ not in cache:
            cache[type_] = convert(tiny_r1, type_, out_dir / f"tiny-{type_}.gguf", threads=2)
        return cache[type_]

    return get


@pytest.fixture(scope="module")
def q8(converted: Callable[[str], Path]) -> Path:
    return converted("q8_0")


@pytest.fixture(scope="module")
def clean_doc(converted: Callable[[str], Path], tiny_r1: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """``l1quant verify FILE --source DIR --json`` of each clean conversion, once per type. Q8_0 and F32 also run
    the logit check (F32 on a --text file), so one run serves both the clean and the logit tests."""
    text = tmp_path_factory.mktemp("verify-text") / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8, encoding="utf-8")
    extra = {"q8_0": ["--logits", "--tokens", str(N_TOK)],
             "f32": ["--logits", "--tokens", "24", "--text", str(text)]}
    cache: dict[str, dict[str, Any]] = {}

    def get(type_: str) -> dict[str, Any]:
        if type_ not in cache:
            code, doc, out = _cli(str(converted(type_)), "--source", str(tiny_r1), "--threads", "2",
                                  *extra.get(type_, []))
            assert doc is not None, out
            doc["exit_code"] = code
            cache[type_] = doc
        return cache[type_]

    return get


def _copy(src: Path, tmp_path: Path, name: str = "bad.gguf") -> Path:
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _value_offset(path: Path, key: str) -> tuple[int, int]:
    """(offset of the value, GGUF value type) of ``key``, found by its length-prefixed name in the header."""
    head = path.read_bytes()[: 64 << 20]
    needle = struct.pack("<Q", len(key.encode())) + key.encode()
    pos = head.index(needle) + len(needle)
    (vtype,) = struct.unpack_from("<I", head, pos)
    return pos + 4, vtype


def _tensor_info_offset_field(path: Path, name: str) -> int:
    """Offset of the u64 data-offset field of tensor ``name``'s info record."""
    head = path.read_bytes()[: 64 << 20]
    needle = struct.pack("<Q", len(name.encode())) + name.encode()
    pos = head.index(needle) + len(needle)
    (n_dims,) = struct.unpack_from("<I", head, pos)
    return pos + 4 + 8 * n_dims + 4


def _rewrite(src: Path, dst: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """Rewrite ``src`` through gguf.GGUFWriter with the KVs in ``drop`` left out (tensors copied verbatim)."""
    gf = read_gguf(src)
    w = gguf.GGUFWriter(dst, gf.kv["general.architecture"])
    for key, value in gf.kv.items():
        if key in drop or key == "general.architecture":
            continue
        vt = gf.kv_types[key]
        if isinstance(vt, tuple):
            w.add_key_value(key, value, vt[0], sub_type=vt[1])
        else:
            w.add_key_value(key, value, vt)
    for t in gf.tensors:
        raw = np.frombuffer(gf.read_tensor_bytes(t), dtype=np.uint8)
        w.add_tensor(t.name, raw.reshape(*t.np_shape[:-1], t.row_nbytes), raw_dtype=t.ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _cli(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    """Run ``l1quant verify ARGS --json`` in-process; return (exit code, parsed JSON or None, all output)."""
    res = CliRunner().invoke(main, ["verify", *args, "--json"])
    out = res.output
    assert "Traceback" not in out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        doc = None
    return res.exit_code, doc, out


def _checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


def _failed(doc: dict[str, Any]) -> list[str]:
    return [c["name"] for c in doc["checks"] if c["status"] == "fail"]


# --------------------------------------------------------------------------------------------------- clean files


@pytest.mark.parametrize("type_", ["q8_0", "f16", "bf16", "f32"])
def test_clean_conversion_passes_every_check(clean_doc: Callable[[str], dict[str, Any]], type_: str) -> None:
    doc = clean_doc(type_)
    assert doc["exit_code"] == 0, _failed(doc)
    assert doc["passed"] is True and doc["verdict"].startswith("PASS")
    names = set(_checks(doc))
    assert {"header", "keys", "hparams", "tokenizer", "tensors.present", "tensors.shapes", "tensors.types",
            "source.hparams", "source.tokenizer", "source.tensors"} <= names
    assert all(c["status"] == "pass" for c in doc["checks"])
    rows = doc["tensors"]
    assert len(rows) == doc["n_tensors"] == 27
    assert all(r["bytes_identical"] and r["passed"] for r in rows)
    worst = rows[0]
    if type_ == "q8_0":
        # 8-bit absmax on Gaussian weights: ~0.5% relative RMSE, under the guaranteed bound, near the noise model.
        assert 0.003 < worst["rel_rmse"] < worst["threshold"] < 0.02
        assert abs(worst["rel_rmse"] / worst["expected_rel_rmse"] - 1) < 0.2
        assert worst["cosine"] > 0.9999 and 40 < worst["snr_db"] < 50
    elif type_ in ("f32", "bf16"):
        assert all(r["rel_rmse"] == 0 and r["snr_db"] == "inf" for r in rows)  # bf16 source: exact
    else:
        assert worst["rel_rmse"] < 1e-6  # bf16 -> f16 only loses f16-subnormal bits


def test_structure_only_passes_and_table_output(q8: Path) -> None:
    rep = verify(q8, threads=2)
    assert rep.passed, rep.verdict
    assert "tensors.finite" in [c.name for c in rep.checks] and rep.tensors == []
    text = format_report(rep)
    assert text.splitlines()[-1] == rep.verdict and rep.verdict.startswith("PASS")
    res = CliRunner().invoke(main, ["verify", str(q8)])
    assert res.exit_code == 0 and "PASS  tensors.types" in res.output


def test_gguf_kept_inside_its_source_folder(tiny_r1: Path, tmp_path: Path) -> None:
    # convert refuses to write into its input folder, but a GGUF moved there later is a normal layout to verify
    src = tmp_path / "src"
    shutil.copytree(tiny_r1, src)
    out = convert(src, "q8_0", tmp_path / "x.gguf", threads=2)
    inside = out.rename(src / "x.gguf")
    rep = verify(inside, source=src, threads=2)
    assert rep.passed, rep.verdict


def test_config_from_gguf_matches_source(q8: Path, tiny_r1: Path) -> None:
    from l1quant.arch import get_arch
    from l1quant.source.config import ModelConfig

    cfg = config_from_gguf(read_gguf(q8), get_arch("qwen2"))
    src = ModelConfig.load(tiny_r1)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(cfg, k) == getattr(src, k), k


# --------------------------------------------------------------------------------------------------- tensor faults


def test_one_block_scale_changed(q8: Path, tiny_r1: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    info = read_gguf(bad).tensor("blk.0.ffn_up.weight")
    assert info.shape[0] == 64  # two Q8_0 blocks per row
    off = info.abs_offset + 2 * info.row_nbytes + 1 * 34  # row 2, block 1: its f16 scale
    d = np.frombuffer(bad.read_bytes()[off:off + 2], dtype=np.float16)[0]
    _patch(bad, off, np.float16(d * 1.5).tobytes())
    code, doc, _ = _cli(str(bad), "--source", str(tiny_r1))
    assert code == 1 and doc is not None
    assert _failed(doc) == ["source.tensors"]
    msg = _checks(doc)["source.tensors"]["message"]
    assert "blk.0.ffn_up.weight" in msg and "row 2, block 1 (scale)" in msg and "outside the Q8_0 error bound" in msg
    row = doc["tensors"][0]  # failures sort first
    assert row["name"] == "blk.0.ffn_up.weight" and not row["passed"] and not row["bytes_identical"]
    assert sum(not r["passed"] for r in doc["tensors"]) == 1


def test_tensor_bytes_swapped_same_shape(q8: Path, tiny_r1: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    gf = read_gguf(bad)
    a, b = gf.tensor("blk.1.attn_q.weight"), gf.tensor("blk.1.attn_output.weight")
    assert a.shape == b.shape and a.nbytes == b.nbytes
    ra, rb = gf.read_tensor_bytes(a), gf.read_tensor_bytes(b)
    _patch(bad, a.abs_offset, rb)
    _patch(bad, b.abs_offset, ra)
    assert verify(bad, threads=2).passed  # structurally nothing is wrong: only the source can tell
    code, doc, _ = _cli(str(bad), "--source", str(tiny_r1))
    assert code == 1 and doc is not None and _failed(doc) == ["source.tensors"]
    bad_rows = {r["name"] for r in doc["tensors"] if not r["passed"]}
    assert bad_rows == {"blk.1.attn_q.weight", "blk.1.attn_output.weight"}
    for r in doc["tensors"][:2]:
        assert r["rel_rmse"] > 1.0  # two unrelated random matrices: error larger than the signal
        assert abs(r["cosine"]) < 0.2


def test_nan_in_tensor_caught_without_source(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    info = read_gguf(bad).tensor("blk.1.ffn_norm.weight")
    _patch(bad, info.abs_offset + 4 * 7, np.float32(np.nan).tobytes())
    code, doc, _ = _cli(str(bad))
    assert code == 1 and doc is not None and _failed(doc) == ["tensors.finite"]
    assert "blk.1.ffn_norm.weight" in _checks(doc)["tensors.finite"]["message"]
    assert "column 7" in _checks(doc)["tensors.finite"]["message"]


# --------------------------------------------------------------------------------------------------- metadata faults


@pytest.mark.parametrize(("key", "fmt", "value", "expect", "also"), [
    ("qwen2.rope.freq_base", "<f", 1_000_000.0, "qwen2.rope.freq_base: expected 10000.0, found 1e+06 (x100)",
     []),
    # 8 heads of 8 give k/v projections of 2 x 8 rows, not 32: the tensor shapes contradict it as well
    ("qwen2.attention.head_count", "<I", 8, "qwen2.attention.head_count: expected 4, found 8 (off by +4)",
     ["tensors.shapes"]),
    ("qwen2.attention.layer_norm_rms_epsilon", "<f", 1e-5,
     "qwen2.attention.layer_norm_rms_epsilon: expected 1e-06, found 1e-05 (x10)", []),
], ids=["rope_base", "head_count", "eps"])
def test_kv_value_changed(q8: Path, tiny_r1: Path, tmp_path: Path, key: str, fmt: str, value: float,
                          expect: str, also: list[str]) -> None:
    bad = _copy(q8, tmp_path)
    off, _ = _value_offset(bad, key)
    _patch(bad, off, struct.pack(fmt, value))
    code, doc, _ = _cli(str(bad), "--source", str(tiny_r1))
    assert code == 1 and doc is not None
    assert sorted(_failed(doc)) == sorted(["source.hparams", *also])
    assert expect in _checks(doc)["source.hparams"]["message"]
    if also:
        assert "tensor 'blk.0.attn_k.weight' has shape [64, 32], the hparams imply [64, 16] (ggml order)" in \
            _checks(doc)["tensors.shapes"]["details"]


def test_head_count_not_dividing_embedding_fails_structurally(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    off, _ = _value_offset(bad, "qwen2.attention.head_count")
    _patch(bad, off, struct.pack("<I", 3))
    code, doc, _ = _cli(str(bad))
    assert code == 1 and doc is not None
    assert "hparams" in _failed(doc)
    assert "head_count=3 does not divide qwen2.embedding_length=64" in _checks(doc)["hparams"]["message"]


def test_token_string_changed(q8: Path, tiny_r1: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    gf = read_gguf(bad)
    tokens = gf.kv["tokenizer.ggml.tokens"]
    idx = next(i for i in range(1000, 2000) if len(tokens[i].encode()) >= 6)
    old = tokens[idx].encode()
    new = (b"~Qz" * 10)[: len(old)]
    assert new.decode() not in tokens
    off, _ = _value_offset(bad, "tokenizer.ggml.tokens")
    data = bad.read_bytes()
    pos = off + 4 + 8  # element type, count
    for _ in range(idx):
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
    assert data[pos + 8: pos + 8 + len(old)] == old
    _patch(bad, pos + 8, new)
    code, doc, _ = _cli(str(bad), "--source", str(tiny_r1))
    assert code == 1 and doc is not None
    assert _failed(doc) == ["source.tokenizer"]
    msg = _checks(doc)["source.tokenizer"]["message"]
    assert f"tokenizer.ggml.tokens[{idx}]: expected {old.decode()!r}, found {new.decode()!r}" in msg
    assert "(1 of 151936 items differ)" in msg


def test_chat_template_dropped(q8: Path, tmp_path: Path) -> None:
    bad = _rewrite(q8, tmp_path / "no-template.gguf", drop=("tokenizer.chat_template",))
    assert "tokenizer.chat_template" not in read_gguf(bad).kv
    code, doc, _ = _cli(str(bad))
    assert code == 1 and doc is not None
    assert _failed(doc) == ["keys"]
    assert "missing required key 'tokenizer.chat_template'" in _checks(doc)["keys"]["message"]


# --------------------------------------------------------------------------------------------------- unreadable files


def test_truncated_file(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size * 2 // 3)
    code, doc, _ = _cli(str(bad))
    assert code == 2 and doc is not None and doc["passed"] is False
    assert "truncated" in doc["error"]
    res = CliRunner().invoke(main, ["verify", str(bad)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "l1quant: error:" in res.output


def test_tensor_offset_past_end(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    gf = read_gguf(bad)
    last = gf.tensors[-1]
    past = -(-(gf.file_size * 2) // 32) * 32
    _patch(bad, _tensor_info_offset_field(bad, last.name), struct.pack("<Q", past))
    code, doc, _ = _cli(str(bad))
    assert code == 2 and doc is not None
    assert last.name in doc["error"] and "past the end" in doc["error"]


def test_string_length_2_pow_60(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    off, vtype = _value_offset(bad, "tokenizer.chat_template")
    assert vtype == gguf.GGUFValueType.STRING
    _patch(bad, off, struct.pack("<Q", 1 << 60))
    with pytest.raises(GGUFFormatError, match="tokenizer.chat_template"):
        verify(bad)
    # a real process: one clean line on stderr, exit 2, no traceback
    proc = subprocess.run([sys.executable, "-c", "from l1quant.cli import main; main()", "verify", str(bad)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and str(1 << 60) in proc.stderr


def test_bad_arguments_are_clean_errors(q8: Path) -> None:
    with pytest.raises(ConfigError, match="needs --source"):
        verify(q8, logits=True)
    res = CliRunner().invoke(main, ["verify", str(q8), "--logits"])
    assert res.exit_code == 2 and "need --source" in res.output and "Traceback" not in res.output


def test_missing_source_folder_is_a_usage_error(q8: Path, tmp_path: Path) -> None:
    # The user's argument is wrong, not the file: exit 2 before any check, never "FAIL: source ..." about FILE.
    for missing in (tmp_path / "nowhere", "L1-Qwen-1.5B-Max"):
        res = CliRunner().invoke(main, ["verify", str(q8), "--source", str(missing)])
        assert res.exit_code == 2, res.output
        assert "Invalid value for '--source'" in res.output and "no such model folder" in res.output
        assert "FAIL" not in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["verify", str(q8), "--source", str(q8)])  # a file, not a folder
    assert res.exit_code == 2 and "'--source'" in res.output
    with pytest.raises(InputError, match="no such model folder"):
        verify(q8, source=tmp_path / "nowhere")


def test_runtime_without_llama_cpp_fails(q8: Path, tiny_r1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A check the user asked for that cannot run is a failure (exit 1, the same install hint as `run`), not a skip.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(RuntimeMissingError, match=r"needs llama-cpp-python: pip install 'llama-cpp-python=="):
        verify(q8, source=tiny_r1, runtime="llama.cpp")
    for extra in ([], ["--json"]):
        res = CliRunner().invoke(main, ["verify", str(q8), "--source", str(tiny_r1), "--runtime", "llama.cpp", *extra])
        assert res.exit_code == 1, res.output
        assert res.output == f"l1quant: error: --runtime llama.cpp needs llama-cpp-python: {RUN_INSTALL_HINT}\n"


def test_help_states_exit_codes() -> None:
    text = CliRunner().invoke(main, ["verify", "--help"]).output
    assert "Exit status:" in text
    for line in ("0  every check passed", "1  a check failed", "2  FILE cannot be read as GGUF, or a usage error"):
        assert line in text


def test_tensor_table_columns_are_padded() -> None:
    # F16/BF16 rows have no error bound ("-") and exact rows an infinite SNR: both padded like the numbers.
    rows = [TensorFidelity("blk.0.attn_q.weight", "F16", (8, 32), 0.0, 0.0, 1.0, math.inf, True, None, None, None,
                           True, ""),
            TensorFidelity("token_embd.weight", "Q8_0", (64, 32), 5.3e-3, 2.4e-4, 0.99998, 45.4, True, 9.9e-3, 3e-4,
                           5e-3, True, ""),
            TensorFidelity("output_norm.weight", "F32", (32,), math.nan, 0.0, math.nan, math.nan, True, None, None,
                           None, True, "")]
    rep = VerifyReport("x.gguf", "src", [Check("header", "pass", "ok")], rows, None, None, 0.1)
    lines = format_report(rep).splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("  tensor "))):][:4]
    assert len({len(x) for x in table}) == 1, table
    header = table[0]
    for row in table[1:]:
        for col in ("bound", "snr_db"):  # right-aligned: each cell ends where its header ends
            end = header.index(col) + len(col)
            assert row[end - 1] != " " and row[end] == " ", (col, row)


# --------------------------------------------------------------------------------------------------- logits


def test_logits_q8_0_small_positive_kld(clean_doc: Callable[[str], dict[str, Any]]) -> None:
    doc = clean_doc("q8_0")
    assert _checks(doc)["logits"]["status"] == "pass"
    lg = doc["logits"]
    assert lg is not None and lg["n_tokens"] == N_TOK
    assert 0 < lg["mean_kld"] < 1e-4 and lg["mean_kld"] <= lg["p99_kld"] <= lg["max_kld"]
    assert lg["top1_agreement"] >= 0.8 and lg["limit"] == LOGIT_KLD_LIMITS["Q8_0"]
    assert math.isclose(lg["ppl_ref"], lg["ppl_test"], rel_tol=1e-3)


def test_logits_f32_exact(clean_doc: Callable[[str], dict[str, Any]]) -> None:
    doc = clean_doc("f32")
    assert _checks(doc)["logits"]["status"] == "pass"
    assert doc["logits"]["n_tokens"] == 24  # --tokens 24 of the --text file
    assert doc["logits"]["mean_kld"] < 1e-6 and doc["logits"]["top1_agreement"] == 1.0


def test_logits_corrupted_layer_orders_of_magnitude_worse(q8: Path, tiny_r1: Path, tmp_path: Path,
                                                          clean_doc: Callable[[str], dict[str, Any]]) -> None:
    bad = _copy(q8, tmp_path)
    info = read_gguf(bad).tensor("blk.0.ffn_down.weight")
    blocks = np.frombuffer(bytearray(read_gguf(bad).read_tensor_bytes(info)), dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16)
    blocks[:, :2] = (d.astype(np.float32) * 64).astype(np.float16).view(np.uint8).reshape(-1, 2)
    _patch(bad, info.abs_offset, blocks.tobytes())
    rep = verify(bad, source=tiny_r1, logits=True, tokens=N_TOK, threads=2)
    clean = clean_doc("q8_0")["logits"]
    assert rep.logits is not None
    assert rep.logits["mean_kld"] > 1000 * clean["mean_kld"]
    checks = {c.name: c for c in rep.checks}
    assert checks["logits"].failed and "mean KLD" in checks["logits"].message
    assert checks["source.tensors"].failed and "blk.0.ffn_down.weight" in checks["source.tensors"].message


@pytest.mark.slow
def test_runtime_llama_cpp(q8: Path, tiny_r1: Path) -> None:
    require_module("llama_cpp")
    rep = verify(q8, source=tiny_r1, runtime="llama.cpp", tokens=N_TOK, threads=2)
    checks = {c.name: c for c in rep.checks}
    assert checks["runtime.tokenize"].status == "pass"
    assert checks["runtime"].status == "pass", checks["runtime"].message
    assert rep.runtime_logits is not None and rep.runtime_logits["mean_kld"] < 1e-3


# --------------------------------------------------------------------------------------------------- helpers


def test_block_amax_of_bf16_bits() -> None:
    import importlib

    v = importlib.import_module("l1quant.check.fidelity")
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    amax = v._block_amax(bits, v.to_f32(bits).reshape(-1), 8)
    assert np.array_equal(amax, np.abs(decode_bf16(bits)).reshape(8, 32).max(axis=1))


def test_cosine_stays_accurate_near_one() -> None:
    """Cosine comes from |a-b|^2 and the norms, so quantization-sized differences keep their digits."""
    import importlib

    v = importlib.import_module("l1quant.check.fidelity")
    rng = np.random.default_rng(1)
    a = rng.standard_normal(100_000)
    for b in (a + 0.005 * rng.standard_normal(a.size), rng.standard_normal(a.size), -a):
        acc = v._Acc(sse=float(np.sum((b - a) ** 2)), ssr=float(a @ a), sst=float(b @ b))
        row = v._row("x", get_quant_type("f32"), (a.size,), acc)
        exact = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(row.cosine - exact) < 1e-12
        assert math.isclose(row.rel_rmse, float(np.linalg.norm(b - a) / np.linalg.norm(a)), rel_tol=1e-12)


def test_naming_metadata_difference_is_reported_not_failed(q8: Path, tiny_r1: Path, tmp_path: Path) -> None:
    """general.name depends on --name/--metadata, not on the weights: noted, but the file still passes."""
    bad = _copy(q8, tmp_path)
    name = read_gguf(bad).kv["general.name"]
    off, vtype = _value_offset(bad, "general.name")
    assert vtype == gguf.GGUFValueType.STRING
    _patch(bad, off + 8, b"X" * len(name.encode()))
    code, doc, _ = _cli(str(bad), "--source", str(tiny_r1))
    assert code == 0 and doc is not None
    general = _checks(doc)["source.general"]
    assert general["status"] == "pass" and "naming metadata differs" in general["message"]
    assert f"general.name: expected {name!r}, found {'X' * len(name)!r}" in general["details"]


def test_trailing_bytes_after_last_tensor(q8: Path, tmp_path: Path) -> None:
    bad = _copy(q8, tmp_path)
    with open(bad, "ab") as f:
        f.write(b"\0" * 64)
    code, doc, _ = _cli(str(bad))
    assert code == 1 and doc is not None and _failed(doc) == ["header"]
    assert "64 unexpected bytes after the last tensor" in _checks(doc)["header"]["message"]


def test_missing_file_exits_2(tmp_path: Path) -> None:
    code, doc, _ = _cli(str(tmp_path / "nope.gguf"))
    assert code == 2 and doc is not None and "nope.gguf" in doc["error"]

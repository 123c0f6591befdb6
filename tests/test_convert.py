"""End-to-end conversion of tiny checkpoints built by the tests.

Files with the real 151k-token tokenizers are read back with l1quant's read_gguf (gguf.GGUFReader needs ~40 s per
such header); the writer round-trip through gguf's own GGUFReader uses a toy tokenizer, so it stays fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import l1quant
from l1quant.cli import main
from l1quant.conversion.prepare import prepare
from l1quant.gguf.reader import read_gguf
from l1quant.kernels import decode_bf16
from l1quant.source.safetensors import open_checkpoint

TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}


def fields(r: gguf.GGUFReader) -> dict[str, Any]:
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def kv(path: Path) -> dict[str, Any]:
    return read_gguf(path).kv


def source_f32(model_dir: Path) -> dict[str, np.ndarray]:
    ck = open_checkpoint(model_dir)
    out = {}
    for name, t in ck.tensors.items():
        a = t.read()
        out[name] = decode_bf16(a) if t.dtype == "BF16" else a.astype(np.float32)
    return out


HF_OF = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
         "output_norm.weight": "model.norm.weight", "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
         "blk.1.attn_k.bias": "model.layers.1.self_attn.k_proj.bias",
         "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
         "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight"}


@pytest.mark.parametrize("qtype", list(TYPES))
def test_every_type_round_trips_through_gguf_reader(tiny_factory: Callable[..., Path], tmp_path: Path,
                                                    qtype: str) -> None:
    d = tiny_factory("toy", vocab=352, extra_config={"bos_token_id": 0, "eos_token_id": 2})
    out = l1quant.convert(d, qtype, tmp_path / "out.gguf", pre="qwen2")
    r = gguf.GGUFReader(out)
    kv = fields(r)
    assert kv["general.architecture"] == "qwen2"
    assert kv["general.file_type"] == FILE_TYPES[qtype]
    assert kv["general.quantization_version"] == 2
    assert kv["qwen2.block_count"] == 2 and kv["qwen2.embedding_length"] == 64
    assert kv["qwen2.attention.head_count"] == 4 and kv["qwen2.attention.head_count_kv"] == 2
    assert kv["qwen2.rope.freq_base"] == 10000.0
    assert kv["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert kv["tokenizer.ggml.pre"] == "qwen2"
    assert len(kv["tokenizer.ggml.tokens"]) == 352 == len(kv["tokenizer.ggml.token_type"])
    assert kv["tokenizer.ggml.tokens"][351] == "[PAD351]" and kv["tokenizer.ggml.token_type"][351] == 5
    assert kv["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the special added tokens are CONTROL
    assert kv["tokenizer.ggml.eos_token_id"] == 2 and kv["tokenizer.ggml.padding_token_id"] == 0
    assert kv["tokenizer.ggml.add_bos_token"] is False  # ByteLevel post-processor
    assert kv["general.sampling.temp"] == pytest.approx(0.6) and kv["general.sampling.top_p"] == pytest.approx(0.95)
    assert "<|im_start|>" in kv["tokenizer.chat_template"]
    # the same keys, in the same order, as l1quant's own reader sees
    assert list(kv) == list(read_gguf(out).kv)

    names = [t.name for t in r.tensors]
    assert names[:4] == ["output.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.weight"]
    assert names[-1] == "output_norm.weight" and len(names) == 27
    src = source_f32(d)
    by_name = {t.name: t for t in r.tensors}
    for gname, hf in HF_OF.items():
        t = by_name[gname]
        want_type = TYPES[qtype] if gname.endswith(".weight") and src[hf].ndim == 2 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == want_type, gname
        assert [int(x) for x in t.shape] == list(reversed(src[hf].shape)), gname
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src[hf].shape)
        err = np.abs(deq - src[hf]).max() / np.abs(src[hf]).max()
        bound = {"f32": 0, "bf16": 0, "f16": 1e-3, "q8_0": 1e-2}[qtype] if want_type != gguf.GGMLQuantizationType.F32 else 0
        assert err <= bound, (gname, err)


def test_r1_metadata(tiny_r1: Path, tmp_path: Path) -> None:
    k = kv(l1quant.convert(tiny_r1, "q8_0", tmp_path / "r1.gguf"))
    assert k["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert k["tokenizer.ggml.bos_token_id"] == 151646  # the tokenizer's bos, not config.json's 151643
    assert k["tokenizer.ggml.eos_token_id"] == 151643
    assert k["tokenizer.ggml.add_bos_token"] is True
    assert len(k["tokenizer.ggml.tokens"]) == 151936 == len(k["tokenizer.ggml.token_type"])
    assert "<｜Assistant｜><think>" in k["tokenizer.chat_template"]


def test_token_types_and_special_ids(tiny_r1: Path, tiny_qwen: Path, tmp_path: Path) -> None:
    r1 = kv(l1quant.convert(tiny_r1, "q8_0", tmp_path / "r1.gguf"))
    qw = kv(l1quant.convert(tiny_qwen, "q8_0", tmp_path / "qw.gguf"))
    assert qw["tokenizer.ggml.pre"] == "qwen2"
    assert qw["tokenizer.ggml.bos_token_id"] == 151643 and qw["tokenizer.ggml.eos_token_id"] == 151645
    toks, types = r1["tokenizer.ggml.tokens"], r1["tokenizer.ggml.token_type"]
    assert toks[151646] == "<｜begin▁of▁sentence｜>" and types[151646] == 3  # CONTROL
    assert toks[151648] == "<think>"
    assert types[151648] in (3, 4)  # CONTROL when flagged special, else USER_DEFINED
    assert types[0] == 1 and types[-1] in (1, 5)
    assert all(isinstance(m, str) and m.count(" ") >= 1 for m in r1["tokenizer.ggml.merges"][:100])


def test_tied_embeddings_write_no_output(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    d = tiny_factory("qwen2.5", tied=True)
    names = [t.name for t in read_gguf(l1quant.convert(d, "f16", tmp_path / "t.gguf")).tensors]
    assert "output.weight" not in names and "token_embd.weight" in names


def test_durable_output_is_the_same_file(tiny_r1: Path, tmp_path: Path) -> None:
    a = l1quant.convert(tiny_r1, "q8_0", tmp_path / "a.gguf")
    b = l1quant.convert(tiny_r1, "q8_0", tmp_path / "b.gguf", durable=True)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]  # no temporary file left


def test_sharded_equals_single(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    a = l1quant.convert(tiny_factory("r1"), "q8_0", tmp_path / "a.gguf")
    b = l1quant.convert(tiny_factory("r1", shards=3), "q8_0", tmp_path / "b.gguf")
    ra, rb = read_gguf(a), read_gguf(b)
    assert ra.kv == rb.kv
    # tensor order follows the shards (sorted within each), as in llama.cpp, so compare by name
    assert [t.name for t in ra.tensors] != [t.name for t in rb.tensors]
    da = {t.name: ra.read_tensor_bytes(t) for t in ra.tensors}
    assert da == {t.name: rb.read_tensor_bytes(t) for t in rb.tensors}


def test_transformers5_config_equals_transformers4(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    a = l1quant.convert(tiny_factory("r1"), "bf16", tmp_path / "a.gguf")
    b = l1quant.convert(tiny_factory("r1", style="t5"), "bf16", tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("scaling,keys", [
    ({"type": "linear", "factor": 4.0}, {"qwen2.rope.scaling.type": "linear", "qwen2.rope.scaling.factor": 4.0}),
    ({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 32.0},
     {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
      "qwen2.rope.scaling.original_context_length": 32768, "qwen2.rope.scaling.yarn_beta_fast": 32.0}),
])
def test_rope_scaling_keys(tiny_factory: Callable[..., Path], tmp_path: Path, scaling: dict[str, Any],
                           keys: dict[str, Any]) -> None:
    for style in ("t4", "t5"):
        got = kv(l1quant.convert(tiny_factory("r1", rope_scaling=scaling, style=style), "f16",
                                 tmp_path / f"{style}.gguf"))
        for k, v in keys.items():
            assert got[k] == v, (style, k)
        order = list(got)
        assert order.index("qwen2.rope.scaling.type") < order.index("qwen2.rope.freq_base")


def test_odd_rows_fall_back_to_f16(tiny_factory: Callable[..., Path], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    d = tiny_factory("r1", ff=80)
    types = {t.name: t.ggml_type for t in read_gguf(l1quant.convert(d, "q8_0", tmp_path / "o.gguf")).tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16  # rows of 80 values
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0  # rows of 64 values
    assert any("falling back to F16" in m for m in caplog.messages)


def test_auto_type_follows_source_dtype(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    assert kv(l1quant.convert(tiny_factory("r1"), "auto", tmp_path / "a.gguf"))["general.file_type"] == 32
    assert kv(l1quant.convert(tiny_factory("r1", dtype="f16"), "auto", tmp_path / "b.gguf"))["general.file_type"] == 1
    # llama.cpp's default when nothing is 16-bit
    assert kv(l1quant.convert(tiny_factory("r1", dtype="f32"), "auto", tmp_path / "c.gguf"))["general.file_type"] == 1


def test_default_output_name_and_templates(tiny_r1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = l1quant.convert(tiny_r1, "q8_0")
    assert out.parent == tmp_path and out.name.endswith("-Q8_0.gguf") and out.is_file()
    (tmp_path / "folder").mkdir()
    out2 = l1quant.convert(tiny_r1, "f16", tmp_path / "folder")
    assert out2.parent == tmp_path / "folder" and out2.name.endswith("-F16.gguf")
    out3 = l1quant.convert(tiny_r1, "auto", tmp_path / "m-{ftype}.gguf")
    assert out3.name == "m-bf16.gguf"  # gguf's template rule: {ftype} lower case, {FTYPE} upper case


def test_name_and_metadata_overrides(tiny_r1: Path, tmp_path: Path) -> None:
    assert kv(l1quant.convert(tiny_r1, "q8_0", tmp_path / "n.gguf", name="My L1"))["general.name"] == "My L1"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"general.author": "l1quant tests", "general.description": "tiny"}))
    got = kv(l1quant.convert(tiny_r1, "q8_0", tmp_path / "m.gguf", metadata=meta))
    assert got["general.author"] == "l1quant tests" and got["general.description"] == "tiny"


def test_prepare_writes_nothing(tiny_r1: Path, tmp_path: Path) -> None:
    p = prepare(tiny_r1, "q8_0", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and list(tmp_path.iterdir()) == []
    assert p.plan.n_params == sum(int(np.prod(t.shape)) for t in open_checkpoint(tiny_r1).tensors.values())


def test_cli_convert(tiny_r1: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["convert", str(tiny_r1), "--type", "q8_0", "-o", str(tmp_path / "c.gguf"), "-q"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("c.gguf")
    assert kv(tmp_path / "c.gguf")["general.file_type"] == 7


def test_cli_help_explains_every_option() -> None:
    res = subprocess.run([sys.executable, "-m", "l1quant.cli", "convert", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for opt in ("--type", "--output", "--name", "--metadata", "--pre", "--threads", "--chunk-mb",
                "--allow-nonfinite", "--fsync", "--card", "--quiet"):
        assert opt in res.stdout, opt

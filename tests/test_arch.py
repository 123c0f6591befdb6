"""Architecture descriptions (l1quant.arch): one table both ways, the name map, transforms, refusals, and a fourth
architecture added by writing only its description.

* Every built-in description (qwen2, qwen3, llama) reads back what it writes: config -> GGUF keys -> config -> the
  same keys, for each rope scaling type, explicit and default head dims, and the causal flag.
* gguf's tensor-name map (which conversion uses) sends every checkpoint tensor to the GGUF name in the table.
* llama's Q/K row permutation is the reference's (its reshape/swap written out independently here), and the
  llama-3 ``rope_freqs`` divisors are torch's, bit for bit (slow: imports torch).
* The refusals the issue names are clean one-line errors: a qwen3 checkpoint without ``q_norm``, one whose
  ``head_dim`` disagrees with its tensors, biases where the architecture has none, a rope scaling type the
  architecture does not support; and verify fails a qwen3 file whose ``key_length`` was changed.
* ``TOY`` is a fourth architecture defined here and only here -- q/k norms, qkv biases, llama's adjacent-pair rope
  (so biases and norms need whole-tensor transforms) and a generated ``rope_freqs`` of 2s. It is converted,
  verified (structure, ``--source``, ``--logits``), and its file run by the numpy forward equals the checkpoint
  run in Hugging Face's layout with linear rope scaling 2: every transform and the generated tensor are right.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from reference import require_module

import l1quant
from l1quant.arch import Arch, HParam, RopeRowPermutation, TensorSpec, WholeTensor, all_arches, get_arch, registered
from l1quant.arch.decoder import HPARAMS, decoder_tensors, head_dim_rows
from l1quant.arch.from_gguf import config_from_gguf
from l1quant.arch.llama import llama3_rope_factors
from l1quant.check.fidelity import to_f32
from l1quant.errors import ConfigError, TensorError
from l1quant.evaluate.forward import Hparams, decoder_logits
from l1quant.gguf.reader import read_gguf
from l1quant.source.config import ModelConfig
from l1quant.source.safetensors import open_checkpoint
from l1quant.testing import hf_name

BASE: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "linear": {"rope_scaling": {"type": "linear", "factor": 2.0}},
    "yarn": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                                 "beta_fast": 32.0, "attention_factor": 0.8, "rope_theta": 1e6}},
    "llama3": {"rope_scaling": LLAMA3, "rope_theta": 500000.0},
    "head_dim": {"head_dim": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096},
    "noncausal-tied": {"is_causal": False, "tie_word_embeddings": True},
}


def _cfg(arch: Arch, **extra: Any) -> ModelConfig:
    return ModelConfig.from_dict({"architectures": [arch.hf_architectures[0]], **BASE, **extra})


def _all_rows(arch: Arch, cfg: ModelConfig) -> list[tuple[str, Any, Any]]:
    return arch.kv_rows(cfg) + arch.kv_rows(cfg, after_file_type=True)


# ---------------------------------------------------------------------------------------------- the tables


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["qwen2", "qwen3", "llama"])
def test_one_table_reads_back_what_it_writes(name: str, variant: str) -> None:
    """config -> keys (what convert writes) -> config (what verify and the forward pass read) -> the same keys."""
    arch = get_arch(name)
    extra = VARIANTS[variant]
    if variant == "llama3" and "llama3" not in arch.rope_types:
        with pytest.raises(ConfigError, match=f"rope scaling 'llama3' is not supported for {name}"):
            arch.validate(_cfg(arch, **extra))
        return
    cfg = _cfg(arch, **extra)
    rows = _all_rows(arch, cfg)
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys)) and all(k.startswith(f"{name}.") for k in keys)
    kv = {k: v for k, v, _ in rows}
    d = arch.config_from_kv(kv, "m.gguf")
    back = ModelConfig.from_dict({"architectures": [arch.hf_architectures[0]], "vocab_size": cfg.vocab_size,
                                  "tie_word_embeddings": cfg.tie_word_embeddings, **d}, arch_defaults=False)
    assert _all_rows(arch, back) == rows
    assert arch.derived_mismatches(kv, back) == []
    for f in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(back, f) == getattr(cfg, f), f
    assert arch.expected_tensors(back, generated=False) == arch.expected_tensors(cfg, generated=False)


def test_config_defaults_are_the_architectures() -> None:
    """A key config.json omits takes transformers' default for that architecture (as the reference sees it)."""
    q2, q3, ll = (_cfg(get_arch(n)) for n in ("qwen2", "qwen3", "llama"))
    assert (q2.head_dim, q3.head_dim, ll.head_dim) == (16, 128, 16)  # Qwen3Config.head_dim = 128
    assert (q2.max_position_embeddings, q3.max_position_embeddings, ll.max_position_embeddings) == (32768, 32768, 2048)
    # qwen2 writes key_length only when config.json has head_dim; qwen3 and llama always
    keys = {n: [k for k, *_ in get_arch(n).kv_rows(c)] for n, c in (("qwen2", q2), ("qwen3", q3), ("llama", ll))}
    assert "qwen2.attention.key_length" not in keys["qwen2"]
    assert "qwen3.attention.key_length" in keys["qwen3"] and "llama.attention.key_length" in keys["llama"]
    assert get_arch("qwen3").expected_tensors(q3)["blk.0.attn_q.weight"] == (4 * 128, 64)


@pytest.mark.parametrize("arch", all_arches(), ids=lambda a: a.name)
def test_gguf_name_map_sends_each_checkpoint_tensor_to_the_table(arch: Arch) -> None:
    cfg = _cfg(arch, rope_scaling=LLAMA3) if "llama3" in arch.rope_types else _cfg(arch)
    name_map = arch.tensor_name_map(cfg.num_hidden_layers)
    for gname in arch.expected_tensors(cfg, generated=False):
        assert name_map.get_name(hf_name(gname), try_suffixes=(".weight", ".bias")) == gname
    assert [n for n, _ in arch.generated_tensors(cfg)] == (["rope_freqs.weight"] if arch.name == "llama" else [])


def test_features_follow_the_tables() -> None:
    f = {a.name: a.features for a in all_arches()}
    assert (f["qwen2"].qkv_bias, f["qwen2"].qk_norm, f["qwen2"].rope_style) == (True, False, "neox")
    assert (f["qwen3"].qkv_bias, f["qwen3"].qk_norm, f["qwen3"].rope_style) == (False, True, "neox")
    assert (f["llama"].qkv_bias, f["llama"].qk_norm, f["llama"].rope_style) == (False, False, "norm")


def test_rope_row_permutation_is_the_references() -> None:
    """llama.cpp's converter: w.reshape(n, 2, rows // n // 2, cols).swapaxes(1, 2).reshape(w.shape), with the kv
    head count for K. Here as an explicit index formula, checked against the description's row order."""
    cfg = _cfg(get_arch("llama"), num_attention_heads=4, num_key_value_heads=2)
    for which, n, rows in (("heads", 4, 64), ("kv_heads", 2, 32)):
        order = RopeRowPermutation(which).row_order(cfg, (rows, 64))
        half = rows // n // 2
        want = [h * 2 * half + s * half + j for h in range(n) for j in range(half) for s in range(2)]
        assert order.tolist() == want
        assert sorted(order.tolist()) == list(range(rows))  # a permutation


@pytest.mark.slow  # imports torch (~3 s)
def test_llama3_rope_factors_are_torchs_bit_for_bit() -> None:
    """The reference computes rope_freqs with torch in float32; so does llama3_rope_factors, step for step. Head
    sizes up to 62 (torch's scalar pow path: every tiny test model) and R1-Distill-Llama-8B's exact config."""
    torch = require_module("torch")
    import math

    def reference(base: float, dim: int, factor: float, low: float, high: float, old: int) -> np.ndarray:
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        out = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old / high:
                out.append(1)
            elif wavelen > old / low:
                out.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return torch.tensor(out, dtype=torch.float32).numpy()

    cases = [(b, d, f, lo, hi, old) for b in (10000.0, 500000.0, 1e6, 12345.6, 50000.0) for d in (8, 16, 24, 48, 62)
             for f, lo, hi, old in ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (4.0, 2.0, 8.0, 4096),
                                    (16.0, 1.0, 4.0, 128), (8.0, 1.0, 4.0, 64))]
    cases.append((500000.0, 128, 8.0, 1.0, 4.0, 8192))  # DeepSeek-R1-Distill-Llama-8B
    for base, dim, factor, lo, hi, old in cases:
        cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], **BASE, "hidden_size": dim * 4,
                                     "rope_theta": base, "rope_scaling": {
                                         "rope_type": "llama3", "factor": factor, "low_freq_factor": lo,
                                         "high_freq_factor": hi, "original_max_position_embeddings": old}})
        ours, want = llama3_rope_factors(cfg), reference(base, dim, factor, lo, hi, old)
        assert ours.view(np.uint32).tolist() == want.view(np.uint32).tolist(), (base, dim, factor, lo, hi, old)


# ---------------------------------------------------------------------------------------------- refusals


def _broken_copy(src: Path, tmp_path: Path, *, config: Callable[[dict[str, Any]], None] | None = None,
                 drop: str | None = None, reshape: tuple[str, list[int]] | None = None) -> Path:
    """A copy of a checkpoint folder with config.json edited, one tensor dropped, or one tensor's declared shape
    changed (same byte count), in its single safetensors file."""
    d = tmp_path / src.name
    shutil.copytree(src, d)
    if config is not None:
        c = json.loads((d / "config.json").read_text())
        config(c)
        (d / "config.json").write_text(json.dumps(c))
    if drop is not None or reshape is not None:
        f = d / "model.safetensors"
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        if drop is not None:
            del header[drop]
        if reshape is not None:
            header[reshape[0]]["shape"] = reshape[1]
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        f.write_bytes(len(hb).to_bytes(8, "little") + hb + raw[8 + n:])
    return d


@pytest.fixture(scope="module")
def qwen3_ckpt(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("qwen3", head_dim=32)


@pytest.fixture(scope="module")
def llama_ckpt(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1-llama", rope_scaling=LLAMA3, rope_theta=500000.0)


def test_qwen3_without_q_norm_is_refused(qwen3_ckpt: Path, tmp_path: Path) -> None:
    d = _broken_copy(qwen3_ckpt, tmp_path, drop="model.layers.1.self_attn.q_norm.weight")
    with pytest.raises(TensorError, match=r"tensor blk\.1\.attn_q_norm\.weight is missing from the checkpoint"):
        l1quant.convert(d, "q8_0", tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_qwen3_head_dim_disagreeing_with_its_tensors_is_refused(qwen3_ckpt: Path, tmp_path: Path) -> None:
    """config.json says head_dim 16; the tensors were made for 32 (the first one checked, by name: k_norm)."""
    d = _broken_copy(qwen3_ckpt, tmp_path, config=lambda c: c.update(head_dim=16))
    with pytest.raises(TensorError, match=r"\(blk\.0\.attn_k_norm\.weight\) has shape \[32\], config implies \[16\]"):
        l1quant.convert(d, "q8_0", tmp_path / "out.gguf")
    # and a q_norm of the wrong length, with a consistent config, is named as such
    d2 = _broken_copy(qwen3_ckpt, tmp_path / "2", reshape=("model.layers.0.self_attn.k_norm.weight", [16, 2]))
    with pytest.raises(TensorError, match=r"attn_k_norm\.weight\) has shape \[16, 2\], config implies \[32\]"):
        l1quant.convert(d2, "q8_0", tmp_path / "out.gguf")


@pytest.mark.parametrize(("arch_tok", "edit", "message"), [
    ("qwen3", {"attention_bias": True}, "attention_bias=true is not supported for qwen3"),
    ("r1-llama", {"attention_bias": True}, "attention_bias=true is not supported for llama"),
    ("r1-llama", {"mlp_bias": True}, "mlp_bias=true is not supported for llama"),
    ("r1", {"rope_scaling": LLAMA3}, "rope scaling 'llama3' is not supported for qwen2 \\(supported: linear, yarn\\)"),
    ("qwen3", {"rope_scaling": LLAMA3}, "rope scaling 'llama3' is not supported for qwen3"),
    ("r1-llama", {"rope_scaling": {**LLAMA3, "high_freq_factor": 1.0}},
     "llama3 rope scaling needs high_freq_factor > low_freq_factor"),
    ("r1-llama", {"rope_scaling": {**LLAMA3, "factor": "8"}}, "llama3 rope scaling factor must be a positive number"),
    ("r1-llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "unsupported rope scaling type 'dynamic'"),
], ids=["qwen3-bias", "llama-attn-bias", "llama-mlp-bias", "qwen2-llama3", "qwen3-llama3", "llama3-bands",
        "llama3-factor", "dynamic"])
def test_config_the_architecture_cannot_convert_is_refused(arch_tok: str, edit: dict[str, Any], message: str,
                                                           tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    d = _broken_copy(tiny_factory(arch_tok), tmp_path, config=lambda c: c.update(edit))
    with pytest.raises(ConfigError, match=message) as e:
        l1quant.convert(d, "q8_0", tmp_path / "out.gguf")
    assert "\n" not in str(e.value) and str(d / "config.json") in str(e.value)


def _patch_u32(path: Path, key: str, value: int) -> None:
    raw = bytearray(path.read_bytes())
    needle = struct.pack("<Q", len(key)) + key.encode()
    pos = raw.index(needle) + len(needle)
    assert struct.unpack_from("<I", raw, pos)[0] == gguf.GGUFValueType.UINT32
    struct.pack_into("<I", raw, pos + 4, value)
    path.write_bytes(bytes(raw))


def test_verify_fails_a_qwen3_file_whose_head_dim_was_changed(qwen3_ckpt: Path, tmp_path: Path) -> None:
    out = l1quant.convert(qwen3_ckpt, "q8_0", tmp_path / "q3.gguf", threads=2)
    assert l1quant.verify(out, threads=2).passed
    _patch_u32(out, "qwen3.attention.key_length", 16)
    rep = l1quant.verify(out, threads=2)
    failed = {c.name: c.message for c in rep.checks if c.failed}
    assert "qwen3.attention.value_length is 32, the hparams imply 16" in failed["hparams"]
    assert "tensors.shapes" in failed


def test_llama_file_structure_and_rope_freqs(llama_ckpt: Path, tmp_path: Path) -> None:
    """verify accepts llama's rope_freqs although no key announces it (llama-3 scaling writes none), checks its
    shape, and checks llama.rope.dimension_count (derived) against the head size."""
    out = l1quant.convert(llama_ckpt, "q8_0", tmp_path / "ll.gguf", threads=2)
    gf = read_gguf(out)
    assert gf.tensors[0].name == "rope_freqs.weight" and gf.tensors[0].shape == (8,)
    assert l1quant.verify(out, threads=2).passed
    _patch_u32(out, "llama.rope.dimension_count", 8)
    rep = l1quant.verify(out, threads=2)
    assert [c.name for c in rep.checks if c.failed] == ["hparams"]
    assert "llama.rope.dimension_count is 8, the hparams imply 16" in rep.checks[[c.name for c in rep.checks].index(
        "hparams")].message


# ---------------------------------------------------------------------------------------------- a fourth arch


def _pairs(x: np.ndarray, n_heads: int) -> np.ndarray:
    """The first axis split into ``n_heads`` heads, each head's halves interleaved (llama.cpp's rope layout)."""
    return x.reshape(n_heads, 2, -1, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


_ONE_ROW = "a 1-D tensor is one row: reordering it reorders columns"
_WHOLE = {
    "blk.{bid}.attn_q.bias": WholeTensor(lambda c, x: _pairs(x, c.num_attention_heads), _ONE_ROW),
    "blk.{bid}.attn_k.bias": WholeTensor(lambda c, x: _pairs(x, c.num_key_value_heads), _ONE_ROW),
    "blk.{bid}.attn_q_norm.weight": WholeTensor(lambda c, x: _pairs(x, 1), _ONE_ROW),
    "blk.{bid}.attn_k_norm.weight": WholeTensor(lambda c, x: _pairs(x, 1), _ONE_ROW),
}

#: The whole of the toy architecture: its description. Q/K (and so their biases and norms) in adjacent-pair rope
#: layout, q/k norms, qkv biases, and a generated rope_freqs of 2s (which is linear rope scaling by 2).
TOY = Arch(
    name="toy",
    model_arch=gguf.MODEL_ARCH.QWEN3,  # gguf's name map: q/k norms and biases are in it
    hf_architectures=("ToyForCausalLM",),
    hparams=HPARAMS + head_dim_rows(lambda c: c.head_dim),
    hparams_after_file_type=(HParam("{arch}.vocab_size", gguf.GGUFValueType.UINT32, "vocab_size"),),
    tensors=(
        TensorSpec("rope_freqs.weight", ("rot",), generate=lambda c: np.full(c.head_dim // 2, 2.0, np.float32)),
        *(dataclasses.replace(s, transform=_WHOLE[s.name]) if s.name in _WHOLE else s for s in decoder_tensors(
            qkv_bias=True, qk_norm=True, q_transform=RopeRowPermutation("heads"),
            k_transform=RopeRowPermutation("kv_heads"))),
    ),
    rope_style="norm",
    hf_model_type="toy",
)


@pytest.fixture(scope="module")
def toy(tiny_factory: Callable[..., Path]) -> Path:
    """A toy checkpoint (built while TOY is registered; each test registers it again for as long as it runs)."""
    with registered(TOY):
        return tiny_factory("toy", arch="toy", vocab=352, head_dim=32, generation_config=None,
                            extra_config={"bos_token_id": 0, "eos_token_id": 2})


@pytest.fixture
def toy_arch() -> Iterator[Arch]:
    with registered(TOY) as arch:
        yield arch


@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_toy_architecture_converts_and_verifies(toy: Path, toy_arch: Arch, tmp_path: Path, qtype: str) -> None:
    out = l1quant.convert(toy, qtype, tmp_path / "toy.gguf", pre="qwen2", threads=2)
    gf = read_gguf(out)
    assert gf.kv["general.architecture"] == "toy" and gf.kv["toy.vocab_size"] == 352
    assert gf.kv["toy.attention.key_length"] == 32
    keys = list(gf.kv)
    assert keys.index("general.file_type") < keys.index("toy.vocab_size") < keys.index("tokenizer.ggml.model")
    assert [t.name for t in gf.tensors][0] == "rope_freqs.weight"
    rep = l1quant.verify(out, source=toy, logits=True, tokens=48, threads=2)
    assert rep.passed, rep.verdict
    names = {c.name for c in rep.checks}
    assert {"keys", "hparams", "tensors.present", "tensors.shapes", "source.hparams", "source.tensors",
            "logits"} <= names

    # The file, run as the file says (pairs, biases/norms permuted, rope_freqs 2s), equals the checkpoint run in
    # Hugging Face's layout (halves) with linear rope scaling 2: the transforms and the generated tensor are right.
    file_hp = Hparams.from_config(config_from_gguf(gf, TOY), TOY)
    assert (file_hp.rope_style, file_hp.qk_norm, file_hp.qkv_bias) == ("norm", True, True)
    tokens = list(range(3, 51))
    ours = decoder_logits(lambda n: gf.read_tensor_f32(gf.tensor(n)), file_hp, tokens)
    ckpt = open_checkpoint(toy)
    name_map = TOY.tensor_name_map(2)
    hf = {name_map.get_name(n, try_suffixes=(".weight", ".bias")): to_f32(t.read_rows(0, t.n_rows)).reshape(t.shape)
          for n, t in ckpt.tensors.items()}
    hf_hp = dataclasses.replace(file_hp, rope_style="neox", rope_scaling_type="linear", rope_scaling_factor=2.0)
    want = decoder_logits(hf.__getitem__, hf_hp, tokens)
    tol = 1e-4 if qtype == "f32" else 0.05 * float(want.std())
    assert np.abs(ours - want).max() < tol


def test_toy_plan_says_which_tensors_are_read_whole(toy: Path, toy_arch: Arch) -> None:
    p = l1quant.prepare(toy, "f16", pre="qwen2")
    whole = sorted(w for w in p.warnings if "read whole" in w)
    assert len(whole) == 8 and all(_ONE_ROW in w for w in whole)  # 2 layers x (2 biases + 2 norms)
    kinds = {pt.name: type(pt.source).__name__ for pt in p.plan.tensors}
    assert kinds["rope_freqs.weight"] == "Generated" and kinds["blk.0.attn_q.weight"] == "PermutedRows"
    assert kinds["blk.0.attn_q.bias"] == "WholeTransformed" and kinds["blk.0.attn_v.bias"] == "SafeTensor"


def test_unregistered_toy_is_not_supported(toy: Path, tmp_path: Path) -> None:
    """Outside ``registered(TOY)`` nothing knows the toy: the description is the only place that does."""
    with pytest.raises(ConfigError, match="architecture 'ToyForCausalLM' is not supported"):
        l1quant.convert(toy, "f16", tmp_path / "toy.gguf", pre="qwen2")

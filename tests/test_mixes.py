"""The proof of l1quant.conversion.mixes: llama-quantize itself (llama-cpp-python's ``llama_model_quantize``) is run
on tiny GGUFs written by l1quant, and :func:`assign_types` must predict the type of every tensor it writes, the
order it writes them in, and which of them fell back for their shape (read from llama.cpp's own log).

Models (toy 333-token tokenizer, so conversion and quantization take milliseconds; one model with the real
151k-token R1 tokenizer checks that the vocabulary changes nothing):

* rows a multiple of 256 (hidden 256) and not (hidden 96 / 64, ffn 200 / 96: Q5_0, Q8_0 and F16 fallbacks);
* tied and untied embeddings; GQA 1, 2 and 4 (Q2_K's attn_v rule); 8, 9 and 17 layers (use_more_bits and the
  first-eighth / first-sixteenth rules pick some layers and not others);
* 80 layers as qwen2, llama (GQA and MHA) and qwen3, for the "70B" attn_v bump (the GGUF's architecture is
  re-labelled in place: llama-quantize reads hyper-parameters, never the tensors' meaning);
* every per-tensor option: pure, output/token-embedding type, --tensor-type regexes, leave-output-tensor.

``test_output_layout`` checks the written account of the output file in mixes.py's module docstring.
"""

from __future__ import annotations

import doctest
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gguf.constants import GGMLQuantizationType, GGUFValueType

import l1quant
from l1quant.conversion import mixes
from l1quant.conversion.mixes import (
    ALIASES,
    MIXES,
    NEEDS_IMATRIX,
    NOT_SERVED,
    QuantOptions,
    assign_types,
    get_mix,
    quantize_order,
)
from l1quant.errors import ConfigError
from l1quant.gguf.reader import GGUFFile, read_gguf

T = GGMLQuantizationType
ALIGN = 32
#: the toy tokenizer's special tokens (its vocabulary has 333 entries; the model's is padded to 352)
TOY_CONFIG = {"bos_token_id": 0, "eos_token_id": 2}


from llama_quantize import llama_quantize, llama_quantize_isolated

# ---------------------------------------------------------------------------------------------------------------
# Input models
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """A tiny checkpoint, the type l1quant converts it to, and optionally a re-labelled architecture."""

    hidden: int
    ff: int
    heads: int
    kv_heads: int
    layers: int
    tied: bool
    convert_to: str = "bf16"
    arch: str = "qwen2"
    patch_kv_heads: int | None = None  # head_count_kv written into the GGUF instead of the real one
    tok: str = "toy"
    vocab: int = 352


MODELS: dict[str, Model] = {
    "h256-untied-gqa2-9L": Model(256, 512, 4, 2, 9, tied=False, convert_to="bf16"),
    "h256-tied-gqa4-8L": Model(256, 768, 8, 2, 8, tied=True, convert_to="f32"),
    "h96-untied-ff200-9L": Model(96, 200, 4, 2, 9, tied=False, convert_to="bf16"),
    "h64-tied-mha-17L": Model(64, 96, 4, 4, 17, tied=True, convert_to="f32"),
}
#: 80 layers: the size llama.cpp calls "70B" for qwen2 (always) and llama (with GQA), never for qwen3.
BIG: dict[str, Model] = {
    "qwen2-80L": Model(256, 256, 2, 1, 80, tied=False),
    "llama-80L": Model(256, 256, 2, 1, 80, tied=False, arch="llama"),
    "llama-80L-mha": Model(256, 256, 2, 1, 80, tied=False, arch="llama", patch_kv_heads=2),
    "qwen3-80L": Model(256, 256, 2, 1, 80, tied=False, arch="qwen3"),
}
#: The real R1-Distill tokenizer and its full vocabulary, untied like L1.
REAL_VOCAB = Model(256, 512, 4, 2, 3, tied=False, tok="r1", vocab=151936)


def relabel(src: Path, dst: Path, arch: str, kv_heads: int | None) -> None:
    """Copy a qwen2 GGUF as ``arch`` by rewriting its header bytes in place (every changed string keeps its length:
    "qwen2", "qwen3" and "llama" are all 5 bytes), optionally with another head_count_kv."""
    gf = read_gguf(src)
    data = bytearray(src.read_bytes())
    head = data[:gf.data_offset]
    if kv_heads is not None:
        key = b"qwen2.attention.head_count_kv"
        i = head.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
        assert struct.unpack_from("<I", head, i)[0] == GGUFValueType.UINT32
        struct.pack_into("<I", head, i + 4, kv_heads)
    arch_kv = b"general.architecture" + struct.pack("<IQ", GGUFValueType.STRING, 5)
    assert head.count(arch_kv + b"qwen2") == 1
    head = head.replace(arch_kv + b"qwen2", arch_kv + arch.encode())
    n_keys = sum(k.startswith("qwen2.") for k in gf.kv)
    assert head.count(b"qwen2.") == n_keys  # only the keys: no token or template contains "qwen2."
    head = head.replace(b"qwen2.", arch.encode() + b".")
    data[:gf.data_offset] = head
    dst.write_bytes(bytes(data))
    out = read_gguf(dst)
    assert out.kv["general.architecture"] == arch and f"{arch}.block_count" in out.kv


@pytest.fixture(scope="module")
def gguf_of(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[Model], Path]:
    """The l1quant-converted GGUF of a model, built once per module."""
    cache: dict[Model, Path] = {}
    d = tmp_path_factory.mktemp("mixes-src")

    def build(m: Model) -> Path:
        if m not in cache:
            base = replace(m, arch="qwen2", patch_kv_heads=None)
            if base != m:  # re-labelled variant of the qwen2 file
                cache[m] = d / f"{len(cache)}-{m.arch}.gguf"
                relabel(build(base), cache[m], m.arch, m.patch_kv_heads)
            else:
                kw: dict[str, Any] = {"extra_config": TOY_CONFIG} if m.tok == "toy" else {}
                ck = tiny_factory(m.tok, hidden=m.hidden, ff=m.ff, heads=m.heads, kv_heads=m.kv_heads,
                                  layers=m.layers, tied=m.tied, vocab=m.vocab, **kw)
                cache[m] = l1quant.convert(ck, m.convert_to, d / f"{len(cache)}-src.gguf",
                                           pre="qwen2" if m.tok == "toy" else None, threads=2)
        return cache[m]

    return build


# ---------------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------------


def predict(src: GGUFFile, mix: str, options: QuantOptions | None = None,
            has_imatrix: bool = False) -> mixes.TypeAssignment:
    arch = src.kv["general.architecture"]
    # the tensors in the input file's order: assign_types must apply llama-quantize's order itself
    return assign_types([(t.name, t.shape) for t in src.tensors], mix, n_layer=src.kv[f"{arch}.block_count"],
                        n_head=src.kv[f"{arch}.attention.head_count"],
                        n_head_kv=src.kv[f"{arch}.attention.head_count_kv"], arch=arch, options=options,
                        has_imatrix=has_imatrix)


def uniform_imatrix(src: GGUFFile) -> dict[str, list[float]]:
    """Weights 1 for every layer matrix (what llama-imatrix collects: blk.* 2-D weights): enough for the rule,
    which only asks whether there is an imatrix, and for Q2_K_S, which needs weights for its Q2_K tensors."""
    return {t.name: [1.0] * t.shape[0] for t in src.tensors if t.name.startswith("blk.") and len(t.shape) == 2}


def check_types(lc: ModuleType, src_path: Path, out: Path, mix: str, options: QuantOptions | None = None,
                has_imatrix: bool = False) -> tuple[mixes.TypeAssignment, GGUFFile]:
    """Quantize ``src_path`` with llama-quantize (with uniform importance weights if ``has_imatrix``; the mixes of
    NEEDS_IMATRIX always get them) and assert assign_types predicted every tensor's type."""
    src = read_gguf(src_path)
    has_imatrix = has_imatrix or mix.upper() in NEEDS_IMATRIX
    q = llama_quantize(lc, src_path, out, mix, options, uniform_imatrix(src) if has_imatrix else None)
    assert q.rc == 0, q.log[-2000:]
    got = read_gguf(out)
    a = predict(src, mix, options, has_imatrix)
    expected = {t.name: a.output_type(t.name, t.ggml_type) for t in src.tensors}
    actual = {t.name: t.ggml_type for t in got.tensors}
    wrong = {n: (expected[n].name, actual[n].name) for n in expected if expected[n] != actual.get(n)}
    assert not wrong, f"{mix}: (predicted, llama-quantize) differ for {len(wrong)} tensors: {wrong}"
    assert list(actual) == list(a.order)
    assert set(a.fallbacks) == q.fell_back
    assert got.kv["general.file_type"] == get_mix(mix).file_type
    return a, got


ALL_MIXES = list(MIXES)


@pytest.mark.parametrize("mix", ALL_MIXES)
@pytest.mark.parametrize("model", list(MODELS))
def test_mix_predicts_every_tensor(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path,
                                   model: str, mix: str) -> None:
    check_types(llama_cpp, gguf_of(MODELS[model]), tmp_path / "q.gguf", mix)


def test_rules_are_exercised(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path) -> None:
    """Guard against a vacuous proof: the models above really make the conditional rules go both ways."""
    src = gguf_of(MODELS["h256-untied-gqa2-9L"])
    a, _ = check_types(llama_cpp, src, tmp_path / "q.gguf", "Q4_K_M")
    down = [a.types[f"blk.{i}.ffn_down.weight"] for i in range(9)]
    assert down == [T.Q6_K, T.Q4_K, T.Q4_K, T.Q6_K, T.Q4_K, T.Q4_K, T.Q6_K, T.Q6_K, T.Q6_K]
    assert a.types["output.weight"] == T.Q6_K and a.types["token_embd.weight"] == T.Q4_K
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h64-tied-mha-17L"]), tmp_path / "q2.gguf", "Q3_K_M")
    assert a.types["blk.0.ffn_down.weight"] == T.Q5_1 and a.types["blk.1.ffn_down.weight"] == T.Q5_0
    assert a.fallbacks["blk.0.ffn_down.weight"] == (T.Q5_K, T.Q5_1)
    assert a.fallbacks["blk.1.ffn_down.weight"] == (T.Q4_K, T.Q5_0)
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h96-untied-ff200-9L"]), tmp_path / "q3.gguf", "Q6_K")
    assert a.types["blk.0.ffn_down.weight"] == T.F16 and a.types["blk.0.ffn_up.weight"] == T.Q8_0


@pytest.mark.parametrize("mix", ["Q4_0", "Q5_0", "Q4_1", "Q2_K", "Q4_K_M"])
@pytest.mark.parametrize("model", list(MODELS))
def test_mix_with_an_imatrix_predicts_every_tensor(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path],
                                                   tmp_path: Path, model: str, mix: str) -> None:
    """``has_imatrix`` changes Q4_0/Q5_0's first ffn_down layers (to Q4_1/Q5_1) and nothing for the others."""
    a, _ = check_types(llama_cpp, gguf_of(MODELS[model]), tmp_path / "q.gguf", mix, has_imatrix=True)
    plain = predict(read_gguf(gguf_of(MODELS[model])), mix)
    changed = {n for n in a.types if a.types[n] != plain.types[n]}
    m = MODELS[model]
    if mix in ("Q4_0", "Q5_0") and m.ff % 32 == 0:  # ff 200 falls back to F16 either way
        assert changed == {f"blk.{i}.ffn_down.weight" for i in range(m.layers // 8)}
    else:
        assert not changed


def test_q2_k_s_needs_an_imatrix_where_llama_quantize_does(llama_cpp: ModuleType,
                                                           gguf_of: Callable[[Model], Path], tmp_path: Path) -> None:
    src = read_gguf(gguf_of(MODELS["h256-untied-gqa2-9L"]))
    assert llama_quantize(llama_cpp, src.path, tmp_path / "q.gguf", "Q2_K_S").rc != 0
    with pytest.raises(ConfigError, match=r"Q2_K_S needs an importance matrix \(blk\.0\.attn_k\.weight gets Q2_K\)"):
        predict(src, "Q2_K_S")
    # rows of 64 values: every Q2_K falls back to Q4_0 or F16, so nothing needs an imatrix, for either tool
    small = read_gguf(gguf_of(MODELS["h64-tied-mha-17L"]))
    assert llama_quantize(llama_cpp, small.path, tmp_path / "s.gguf", "Q2_K_S").rc == 0
    assert not predict(small, "Q2_K_S").needs_imatrix


@pytest.mark.parametrize("mix", ["Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"])
@pytest.mark.parametrize("model", list(BIG))
def test_80_layer_models(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path, model: str,
                         mix: str) -> None:
    a, _ = check_types(llama_cpp, gguf_of(BIG[model]), tmp_path / "q.gguf", mix)
    bumped = model in ("qwen2-80L", "llama-80L")
    if mix == "Q3_K_S":  # base Q3_K: every attn_v moves to Q5_K on a "70B"
        assert {a.types[f"blk.{i}.attn_v.weight"] for i in range(80)} == {T.Q5_K if bumped else T.Q3_K}


IQ_MIXES = [m for m in MIXES if m.startswith("IQ")]


def test_iq_mixes_served() -> None:
    # llama-quantize's twelve i-quant mixes, their llama_ftype numbers and base types (llama_ftype_get_default_type)
    assert IQ_MIXES == ["IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_M", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS",
                        "IQ2_XXS", "IQ1_M", "IQ1_S"]
    assert [MIXES[m].base for m in IQ_MIXES] == [T.IQ4_NL, T.IQ4_XS, T.IQ3_S, T.IQ3_S, T.IQ3_S, T.IQ3_XXS, T.IQ2_S,
                                                 T.IQ2_XS, T.IQ2_XS, T.IQ2_XXS, T.IQ1_M, T.IQ1_S]
    assert [MIXES[m].file_type for m in IQ_MIXES] == [25, 30, 26, 27, 22, 23, 29, 28, 20, 19, 31, 24]
    # the ones llama-quantize makes only with an importance matrix
    assert set(NEEDS_IMATRIX) == {"Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M",
                                  "IQ1_S"} and set(NEEDS_IMATRIX) <= set(MIXES)


def test_iq_rules_are_exercised(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path) -> None:
    """The i-quant rows of the table go both ways on the test models, as llama-quantize decides them."""
    src = gguf_of(MODELS["h256-untied-gqa2-9L"])  # 9 layers: the first eighth is layer 0
    for mix in ("IQ4_NL", "IQ4_XS"):
        a, _ = check_types(llama_cpp, src, tmp_path / f"{mix}.gguf", mix)
        base = MIXES[mix].base
        assert [a.types[f"blk.{i}.ffn_down.weight"] for i in range(3)] == [T.Q5_K, base, base]
        assert a.types["blk.0.attn_v.weight"] == base  # GQA 2: no Q5_K
        assert a.types["output.weight"] == T.Q6_K and a.types["token_embd.weight"] == base
    a, _ = check_types(llama_cpp, src, tmp_path / "m.gguf", "IQ3_M")
    assert [a.types[f"blk.{i}.ffn_down.weight"] for i in range(2)] == [T.Q4_K, T.IQ3_S]
    assert a.types["blk.3.attn_v.weight"] == a.types["blk.3.attn_output.weight"] == T.Q4_K
    assert a.types["blk.3.attn_q.weight"] == T.IQ3_S
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h256-tied-gqa4-8L"]), tmp_path / "s.gguf", "IQ3_S")
    assert a.types["blk.0.attn_v.weight"] == T.Q4_K and a.types["token_embd.weight"] == T.Q6_K  # GQA 4, tied
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h256-tied-gqa4-8L"]), tmp_path / "x.gguf", "IQ4_XS")
    assert a.types["blk.0.attn_v.weight"] == T.Q5_K
    # rows of 96: IQ types fall back to IQ4_NL (a 32-block type), Q5_K to Q5_1, Q4_K to Q5_0; ffn 200 -> F16
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h96-untied-ff200-9L"]), tmp_path / "f.gguf", "IQ3_M")
    assert a.fallbacks["blk.1.attn_q.weight"] == (T.IQ3_S, T.IQ4_NL)
    assert a.fallbacks["blk.0.ffn_down.weight"] == (T.Q4_K, T.F16)
    assert a.types["blk.1.attn_v.weight"] == T.Q5_0 and a.types["output.weight"] == T.Q8_0
    a, _ = check_types(llama_cpp, gguf_of(MODELS["h96-untied-ff200-9L"]), tmp_path / "n.gguf", "IQ4_NL")
    assert a.types["blk.1.attn_q.weight"] == T.IQ4_NL and "blk.1.attn_q.weight" not in a.fallbacks
    assert a.types["blk.1.ffn_up.weight"] == T.IQ4_NL and a.types["blk.0.ffn_down.weight"] == T.F16


@pytest.mark.parametrize("mix", ["IQ3_S", "IQ3_M", "IQ4_XS"])
@pytest.mark.parametrize("model", ["qwen2-80L", "llama-80L-mha"])
def test_iq_80_layer_models(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path, model: str,
                            mix: str) -> None:
    a, _ = check_types(llama_cpp, gguf_of(BIG[model]), tmp_path / "q.gguf", mix)
    if mix == "IQ3_M":  # attn_v Q4_K, bumped to Q5_K on a "70B"
        assert {a.types[f"blk.{i}.attn_v.weight"] for i in range(80)} == {T.Q5_K if model == "qwen2-80L" else T.Q4_K}


def test_iq_rules_with_imatrix_and_without() -> None:
    """The rows that depend on ``has_imatrix`` and the IQ1/IQ2 branch, read off llama_tensor_get_type_impl (checked
    against llama-quantize with an importance matrix once l1quant applies one)."""
    where = mixes.Where(0, 16, 2, 256, T.IQ3_XXS)
    v = [r for r in mixes.MIX_RULES if "IQ3_XXS" in r.mixes and r.role is mixes.Role.ATTN_V and r.when(where)]
    assert v[0].type == T.IQ3_S  # no imatrix, GQA 2
    assert not [r for r in v if r.when(replace(where, has_imatrix=True))]  # with one: the base type, IQ3_XXS
    down = [r for r in mixes.MIX_RULES if r.role is mixes.Role.FFN_DOWN and "IQ4_XS" in r.mixes]
    assert down[0].when(where) and not down[0].when(replace(where, has_imatrix=True))
    gate = [r for r in mixes.MIX_RULES if r.role is mixes.Role.FFN_GATE and "IQ3_XS" in r.mixes][0]
    assert [i for i in range(16) if gate.when(replace(where, index=i))] == list(range(2, 14))
    # IQ1/IQ2 mixes keep attn_v out of the 70B bump; IQ3_M's Q4_K is bumped
    assert mixes.SIZE_BUMPS[0].except_mixes >= {"IQ2_M", "IQ1_S"} and "IQ3_M" not in mixes.SIZE_BUMPS[0].except_mixes


def test_real_vocabulary(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path) -> None:
    for mix in ("Q4_K_M", "Q8_0"):
        check_types(llama_cpp, gguf_of(REAL_VOCAB), tmp_path / f"{mix}.gguf", mix)


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------

OPTION_CASES: dict[str, tuple[str, str, QuantOptions]] = {
    "pure-untied": ("h256-untied-gqa2-9L", "Q4_K_M", QuantOptions(pure=True)),
    "pure-tied-fallback": ("h96-untied-ff200-9L", "Q3_K_M", QuantOptions(pure=True)),
    "pure-tied-output-type": ("h256-tied-gqa4-8L", "Q5_K_M", QuantOptions(pure=True, output_tensor_type="q8_0")),
    "output-type-untied": ("h256-untied-gqa2-9L", "Q4_K_M", QuantOptions(output_tensor_type="q8_0")),
    "output-type-tied": ("h256-tied-gqa4-8L", "Q4_K_S", QuantOptions(output_tensor_type="q5_k")),
    "output-type-tied-fallback": ("h64-tied-mha-17L", "Q4_K_M", QuantOptions(output_tensor_type="q4_k")),
    "output-type-f16-mix": ("h256-tied-gqa4-8L", "F16", QuantOptions(output_tensor_type="q8_0")),
    "token-embd-type-untied": ("h256-untied-gqa2-9L", "Q3_K_L", QuantOptions(token_embedding_type="q8_0")),
    "token-embd-type-tied": ("h256-tied-gqa4-8L", "Q2_K", QuantOptions(token_embedding_type="q4_k")),
    "token-embd-beats-output-type": ("h256-tied-gqa4-8L", "Q4_K_M",
                                     QuantOptions(token_embedding_type="q4_0", output_tensor_type="q8_0")),
    "token-embd-type-bf16-mix": ("h256-untied-gqa2-9L", "BF16", QuantOptions(token_embedding_type="q6_k")),
    "leave-output": ("h256-untied-gqa2-9L", "Q4_K_M", QuantOptions(leave_output_tensor=True)),
    "leave-output-beats-output-type": ("h256-untied-gqa2-9L", "Q5_K_S",
                                       QuantOptions(leave_output_tensor=True, output_tensor_type="q8_0")),
    "leave-output-f16-mix": ("h256-untied-gqa2-9L", "F16", QuantOptions(leave_output_tensor=True)),
    # an override stops the attn_v counter: Q3_K_M's "first two" become layers 1 and 2
    "override-stops-counter": ("h256-untied-gqa2-9L", "Q3_K_M",
                               QuantOptions(tensor_types=[(r"blk\.0\.attn_v", "q8_0")])),
    "override-first-match-wins": ("h256-untied-gqa2-9L", "Q4_K_M",
                                  QuantOptions(tensor_types=[("attn_v", "q8_0"), (r"blk\.1\.attn_v", "q4_0")])),
    # "output" is found in attn_output and output_norm too (the norm stays unquantized); upper case is lowered
    "override-search-not-match": ("h256-untied-gqa2-9L", "Q4_0", QuantOptions(tensor_types=[("OUTPUT", "q5_1")])),
    "override-then-fallback": ("h96-untied-ff200-9L", "Q4_K_M",
                               QuantOptions(tensor_types=[("ffn_(up|gate)", "q6_k")])),
    "override-to-float": ("h256-tied-gqa4-8L", "Q4_K_M",
                          QuantOptions(tensor_types=[("token_embd", "f16"), ("ffn_down", "bf16")])),
    "override-beats-pure": ("h256-untied-gqa2-9L", "Q5_K_M",
                            QuantOptions(pure=True, tensor_types=[("attn_q", "q8_0")])),
    "override-loses-to-output-type": ("h256-untied-gqa2-9L", "Q4_K_M",
                                      QuantOptions(output_tensor_type="q4_0", tensor_types=[("output", "q8_0")])),
    "override-ignored-f16-mix": ("h256-untied-gqa2-9L", "F16", QuantOptions(tensor_types=[("attn", "q8_0")])),
    "everything": ("h64-tied-mha-17L", "Q2_K", QuantOptions(pure=False, output_tensor_type="q8_0",
                                                            tensor_types=[(r"blk\.1[0-9]\.", "q4_1")])),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_options(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path, case: str) -> None:
    model, mix, options = OPTION_CASES[case]
    a, _ = check_types(llama_cpp, gguf_of(MODELS[model]), tmp_path / "q.gguf", mix, options)
    if case == "override-stops-counter":
        assert [a.types[f"blk.{i}.attn_v.weight"] for i in range(4)] == [T.Q8_0, T.Q5_K, T.Q5_K, T.Q4_K]
    if case == "token-embd-beats-output-type":
        assert a.types["token_embd.weight"] == T.Q4_0


@pytest.mark.parametrize("mix", ["Q4_K_M", "F16"])
@pytest.mark.parametrize("flag", ["output_tensor_type", "token_embedding_type"])
def test_explicit_type_that_does_not_fit_fails_in_both(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path],
                                                       tmp_path: Path, flag: str, mix: str) -> None:
    """An explicit output / token-embedding type skips the shape fallback: llama-quantize fails, so do we."""
    src = gguf_of(MODELS["h96-untied-ff200-9L"])
    options = QuantOptions(**{flag: "q4_k"})
    status, log = llama_quantize_isolated(src, tmp_path / "q.gguf", mix, options)
    assert status != 0, log[-2000:]
    with pytest.raises(ConfigError, match="needs rows of a multiple of 256"):
        predict(read_gguf(src), mix, options)


def test_type_needing_imatrix_fails_in_both(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path],
                                            tmp_path: Path) -> None:
    src = gguf_of(MODELS["h256-untied-gqa2-9L"])
    options = QuantOptions(tensor_types=[("ffn_up", "iq2_xxs")])
    status, log = llama_quantize_isolated(src, tmp_path / "q.gguf", "Q4_K_M", options)
    assert status != 0 and "requires an imatrix" in log, log[-2000:]
    # llama-quantize's check exempts token_embd/output, but its IQ2_XXS quantizer then aborts: refused here too
    for o in (options, QuantOptions(tensor_types=[("token_embd", "iq2_xxs")]),
              QuantOptions(output_tensor_type="iq1_s")):
        with pytest.raises(ConfigError, match="importance matrix"):
            predict(read_gguf(src), "Q4_K_M", o)


# ---------------------------------------------------------------------------------------------------------------
# The output file's layout (the account in mixes.py's docstring)
# ---------------------------------------------------------------------------------------------------------------

MOVED = ("general.quantization_version", "general.file_type")


def pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@pytest.mark.parametrize(("model", "mix"), [("h256-untied-gqa2-9L", "Q4_K_M"), ("h96-untied-ff200-9L", "Q3_K_L"),
                                            ("h64-tied-mha-17L", "Q8_0"), ("h256-tied-gqa4-8L", "F32"),
                                            ("h256-untied-gqa2-9L", "BF16"), ("real", "Q5_K_M")])
def test_output_layout(llama_cpp: ModuleType, gguf_of: Callable[[Model], Path], tmp_path: Path, model: str,
                       mix: str) -> None:
    src_path = gguf_of(REAL_VOCAB if model == "real" else MODELS[model])
    out = tmp_path / "q.gguf"
    _, got = check_types(llama_cpp, src_path, out, mix)
    src = read_gguf(src_path)

    # version and alignment
    assert got.version == 3 and got.alignment == ALIGN and "general.alignment" not in got.kv
    # keys: input order, values and types kept; quantization_version then file_type moved to the end
    assert all(k in src.kv for k in MOVED)
    assert list(got.kv) == [k for k in src.kv if k not in MOVED] + list(MOVED)
    for k in src.kv:
        if k not in MOVED:
            assert got.kv_types[k] == src.kv_types[k] and got.kv[k] == src.kv[k], k
    assert got.kv["general.quantization_version"] == 2 and got.kv["general.file_type"] == MIXES[mix].file_type
    assert got.kv_types["general.quantization_version"] == got.kv_types["general.file_type"] == GGUFValueType.UINT32
    # tensors: llama-quantize's order (not the input's), same shapes
    assert [t.name for t in got.tensors] == quantize_order(t.name for t in src.tensors)
    assert [t.name for t in got.tensors] != [t.name for t in src.tensors]
    assert all(t.shape == src.tensor(t.name).shape for t in got.tensors)

    raw = out.read_bytes()
    # header: zero padding after the last tensor info up to the 32-aligned data section
    last = got.tensors[-1]
    info_end = raw.rindex(struct.pack("<Q", len(last.name)) + last.name.encode(), 0, got.data_offset)
    info_end += 8 + len(last.name) + 4 + 8 * len(last.shape) + 4 + 8
    assert got.data_offset == pad(info_end) and raw[info_end:got.data_offset] == bytes(got.data_offset - info_end)
    # data: every tensor (the last one too) followed by zeros up to a multiple of 32, offsets packed in order
    offset = 0
    for t in got.tensors:
        assert t.offset == offset
        end = got.data_offset + t.offset + t.nbytes
        assert raw[end:got.data_offset + pad(t.offset + t.nbytes)] == bytes(pad(t.nbytes) - t.nbytes), t.name
        offset += pad(t.nbytes)
        if t.ggml_type == src.tensor(t.name).ggml_type:  # not converted: copied byte for byte
            assert got.read_tensor_bytes(t) == src.read_tensor_bytes(src.tensor(t.name)), t.name
    assert got.file_size == got.data_offset + offset == len(raw)


# ---------------------------------------------------------------------------------------------------------------
# Lookup and refusals (no llama.cpp needed)
# ---------------------------------------------------------------------------------------------------------------


def test_get_mix() -> None:
    for alias, target in ALIASES.items():
        assert get_mix(alias) is MIXES[target] and get_mix(alias.lower()) is MIXES[target]
    for name, m in MIXES.items():
        assert get_mix(name.lower()) is m and get_mix(m.file_type) is m
    assert get_mix("q4_k_m").base == T.Q4_K and get_mix("F32").file_type == 0 and get_mix("bf16").file_type == 32
    for name in NOT_SERVED:
        with pytest.raises(ConfigError, match="not supported"):
            get_mix(name)
    for bad in ("q4_k_x", "", 999, None):
        with pytest.raises(ConfigError):
            get_mix(bad)  # type: ignore[arg-type]


def test_imatrix_mixes_refused_without_one() -> None:
    """Every mix llama-quantize makes only with an importance matrix is refused without one, naming the type, the
    first tensor in llama-quantize's order that needs it (never token_embd/output: tensor_requires_imatrix exempts
    them) and both ways to get one; with one, token_embd/output still need none."""
    layers = 8
    tensors = [("token_embd.weight", (256, 1000)), ("output.weight", (256, 1000))] + [
        (f"blk.{i}.{r}.weight", (256, 256)) for i in range(layers)
        for r in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")]
    kw: dict[str, Any] = dict(n_layer=layers, n_head=4, n_head_kv=2, arch="qwen2")
    for name in NEEDS_IMATRIX:
        want = (rf"^quant type {name} needs an importance matrix \(blk\.0\.\w+\.weight gets \w+\): "
                r"pass --imatrix FILE \(or --calibration")
        with pytest.raises(ConfigError, match=want):
            assign_types(tensors, name.lower(), **kw)
        a = assign_types(tensors, name, has_imatrix=True, **kw)
        assert a.needs_imatrix and not a.needs_imatrix & {"token_embd.weight", "output.weight"}, name
    # IQ1_M's token_embd is Q2_K and its output Q5_K: neither needs an imatrix, in IQ1_M or elsewhere
    a = assign_types(tensors, "IQ1_M", has_imatrix=True, **kw)
    assert (a.types["token_embd.weight"], a.types["output.weight"]) == (T.Q2_K, T.Q5_K)
    for name in set(MIXES) - set(NEEDS_IMATRIX):  # the others are made without one
        assert not assign_types(tensors, name, **kw).needs_imatrix, name


def test_llama_cpp_agrees_on_ftype_numbers(llama_cpp: ModuleType) -> None:
    for name, m in MIXES.items():
        const = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
        assert m.file_type == getattr(llama_cpp, const)


def test_option_and_argument_refusals() -> None:
    with pytest.raises(ConfigError, match="unknown tensor type"):
        QuantOptions(output_tensor_type="q4_z")
    with pytest.raises(ConfigError, match="bad regular expression"):
        QuantOptions(tensor_types=[("attn_(", "q8_0")])
    with pytest.raises(ConfigError, match="regex, type"):
        QuantOptions(tensor_types=["attn_v=q8_0"])  # type: ignore[list-item]
    tensors = [("blk.0.attn_v.weight", (256, 128))]
    with pytest.raises(ConfigError, match="architecture"):
        assign_types(tensors, "Q4_K_M", n_layer=1, n_head=4, n_head_kv=2, arch="falcon")
    with pytest.raises(ConfigError, match="n_head_kv"):
        assign_types(tensors, "Q4_K_M", n_layer=1, n_head=4, n_head_kv=0, arch="qwen2")


def test_order_of_input_does_not_matter() -> None:
    names = [f"blk.{i}.{r}.weight" for i in (10, 2, 0) for r in ("ffn_down", "attn_v")] + ["output.weight"]
    tensors = [(n, (256, 256)) for n in names]
    kw: dict[str, Any] = dict(n_layer=11, n_head=4, n_head_kv=2, arch="qwen2")
    a, b = assign_types(tensors, "Q3_K_M", **kw), assign_types(tensors[::-1], "Q3_K_M", **kw)
    assert a == b and a.order[:3] == ("output.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight")
    assert [a.types[f"blk.{i}.attn_v.weight"] for i in (0, 2, 10)] == [T.Q5_K, T.Q5_K, T.Q4_K]


def test_doctests() -> None:
    res = doctest.testmod(mixes, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0

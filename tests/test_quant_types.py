"""Quant types are records and file types one module (l1quant.kernels, l1quant.filetypes): the tables the rest of
the package reads are derived from the records, and a block type defined only here is converted, verified and
dequantized.

* The derived tables are the ones llama.cpp states (written out here as the old literal tables were): the shape
  fallbacks (``tensor_type_fallback``), the types that need an importance matrix (``tensor_requires_imatrix``),
  where the f16 scales sit (``ggml-common.h``), the noise models, the ``--type`` values and their order.
* What a user types resolves once to a record, and a file is recognised once: mixes, converter types, aliases,
  llama-quantize's ftype numbers, a file without ``general.file_type``.
* ``TOY_MXFP4`` is a block type written only in this file, one record: ggml's MXFP4 layout (``block_mxfp4``: an
  e8m0 scale byte and 32 4-bit e2m1 codes, 17 bytes) with a plain quantizer (the smallest power-of-two scale that
  needs no clipping, nearest code) and its own dequantizer. Why MXFP4: the file format names types by ggml's
  numbers, so a toy must reuse one; MXFP4 is a real 32-value block type on which gguf's block table, its reader,
  writer and decoder, and ggml-common.h all agree (the pinned gguf's Q8_1 size, 40, is not ggml's 36), l1quant does
  not serve it, and no dense-model llama-quantize mix uses it (only MXFP4_MOE), so it will not collide with a type
  l1quant comes to serve (the i-quants would). gguf's MXFP4 decoder gives an independent check of the file's
  bytes. While registered it is a converter type: ``convert --type mxfp4`` writes it, verify rebuilds and
  byte-compares it, applies its noise model and runs the logit check, and ``read_tensor_f32`` dequantizes it
  through the record. Outside ``registered`` nothing knows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

import l1quant
from l1quant.conversion import mixes
from l1quant.errors import ConfigError
from l1quant.filetypes import MIXES, FileType, convert_types, file_type_of, out_types, resolve_type
from l1quant.gguf.reader import read_gguf
from l1quant.kernels import (
    KNOWN_TYPES,
    QUANT_TYPES,
    FloatField,
    KernelArgumentError,
    NoiseModel,
    QuantType,
    describe,
    get_quant_type,
    decode_bf16,
    register,
    registered,
)
from l1quant.kernels.blockwise import numpy_block_kernel
from l1quant.kernels.nonfinite import can_overflow

T = GGMLQuantizationType


# ------------------------------------------------------------------------------------------ derived tables


def test_derived_tables_are_llama_cpps() -> None:
    # tensor_type_fallback (llama-quant.cpp), as the literal table before the records
    assert mixes.FALLBACK == {
        T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
        T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
        T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
        T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL}
    assert mixes.IMATRIX_TYPES == {T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S}
    # ggml-common.h: byte offsets of the f16 fields of one block
    f16 = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82),
           "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "F16": (0,),
           "IQ4_NL": (0,), "IQ4_XS": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,)}
    for name, qt in QUANT_TYPES.items():
        assert (qt.block_size, qt.type_size) == GGML_QUANT_SIZES[qt.ggml_type]
        if name in f16:
            assert qt.float_fields == tuple(FloatField(o, "f16") for o in f16[name]), name
    assert get_quant_type("f32").float_fields == (FloatField(0, "f32"),)
    assert get_quant_type("bf16").float_fields == (FloatField(0, "bf16"),)
    noise = {"Q4_0": (32, 4, True), "Q4_1": (32, 4, False), "Q5_0": (32, 5, True), "Q5_1": (32, 5, False),
             "Q2_K": (16, 2, False), "Q3_K": (16, 3, True), "Q4_K": (32, 4, False), "Q5_K": (32, 5, False),
             "Q6_K": (16, 6, True), "IQ4_NL": (32, 4, True), "IQ4_XS": (32, 4, True), "IQ3_S": (32, 3, True),
             "IQ3_XXS": (32, 3, True), "IQ2_S": (16, 2, True), "IQ2_XS": (16, 2, True), "IQ2_XXS": (32, 2, True),
             "IQ1_M": (32, 2, True), "IQ1_S": (32, 2, True)}
    assert {n: (q.noise.group, q.noise.bits, q.noise.symmetric) for n, q in QUANT_TYPES.items() if q.noise} == noise
    # which source dtypes can never overflow which output (the scan is skipped for these pairs)
    pairs = {(n, d) for n in QUANT_TYPES for d in ("F32", "F16", "BF16") if not can_overflow(n, d)}
    assert pairs == {("F32", "F32"), ("F32", "F16"), ("F32", "BF16"), ("F16", "F16"), ("BF16", "BF16"),
                     ("BF16", "F16")}
    # quantize_* in ggml-quants.c: every 4/5-bit and K quantizer uses quant_weights; Q8_0 and the floats do not
    assert {n for n, q in QUANT_TYPES.items() if q.takes_imatrix} == set(QUANT_TYPES) - {"F32", "F16", "BF16", "Q8_0"}
    # of the served types, llama-quantize refuses IQ3_XXS and the 1-2 bit grid types without one
    # (tensor_requires_imatrix)
    assert {n for n, q in QUANT_TYPES.items() if q.needs_imatrix} <= {"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                                                                       "IQ1_S", "IQ1_M"}
    assert get_quant_type("iq3_xxs").needs_imatrix and not get_quant_type("iq3_s").needs_imatrix
    # and l1quant has the weighted search for exactly those (kernels/kquants_imatrix.py)
    assert {n for n, q in QUANT_TYPES.items() if q.numpy_imatrix_kernel is not None} == \
        {n for n, q in QUANT_TYPES.items() if q.takes_imatrix}
    assert describe("iq2_xxs").served and describe(T.IQ2_XXS).needs_imatrix and describe("I8") is None
    assert not describe("tq1_0").served
    # a mix named after one type writes that type's file type number (llama_ftype), and its base is that type
    for m in MIXES.values():
        qt = QUANT_TYPES.get(m.name)
        if qt is not None and qt.file_type is not None:
            assert (m.file_type, m.base, m.quant_type) == (qt.file_type, qt.ggml_type, qt), m.name


def test_out_types_and_resolution() -> None:
    assert convert_types() == ("auto", "f32", "f16", "bf16", "q8_0")
    assert out_types() == convert_types() + (
        "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l", "q3_k", "q4_k_s", "q4_k_m",
        "q4_k", "q5_k_s", "q5_k_m", "q5_k", "q6_k", "iq4_nl", "iq4_xs", "iq3_s", "iq3_m", "iq3_xs", "iq3_xxs",
        "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
    assert resolve_type("auto") is None
    assert resolve_type("Q8_0") is get_quant_type("q8_0")
    assert resolve_type("q8_0", as_mix=True) is MIXES["Q8_0"] is resolve_type("q8_0", per_tensor=True)
    assert resolve_type("q5_k") is MIXES["Q5_K_M"] and resolve_type(MIXES["Q2_K"]) is MIXES["Q2_K"]
    assert resolve_type(get_quant_type("bf16"), per_tensor=True) is MIXES["BF16"]
    assert resolve_type("IQ3_M") is MIXES["IQ3_M"] and MIXES["IQ3_M"].base == T.IQ3_S
    assert resolve_type("iq2_m") is MIXES["IQ2_M"] and MIXES["IQ2_M"].base == T.IQ2_S
    with pytest.raises(ConfigError, match="is not one of"):
        resolve_type("mxfp4")
    with pytest.raises(ConfigError, match="auto cannot be combined"):
        resolve_type("auto", per_tensor=True)


def _file(kv: dict[str, object], embd: GGMLQuantizationType | None = None) -> SimpleNamespace:
    tensors = [] if embd is None else [SimpleNamespace(name="token_embd.weight", ggml_type=embd)]
    return SimpleNamespace(kv=kv, tensors=tensors)


def test_file_type_of() -> None:
    tail = {"general.file_type": 15}
    ft = file_type_of(_file({"a": 1, **tail}))
    assert (ft.mix, ft.converter, ft.name, ft.request, ft.logit_kld_limit) == (MIXES["Q4_K_M"], None, "Q4_K_M",
                                                                               MIXES["Q4_K_M"], 1e-2)
    # the converter writes general.file_type before the tokenizer keys: a converter type, never a mix
    ft = file_type_of(_file({**{"general.file_type": 7}, "tokenizer.ggml.model": "gpt2"}))
    assert ft.mix is None and ft.converter is get_quant_type("q8_0") and ft.request is ft.converter
    # 15 is not a converter type: named nothing, and the label falls back to token_embd's type
    ft = file_type_of(_file({"general.file_type": 15, "tokenizer.ggml.model": "gpt2"}, T.Q6_K))
    assert (ft.name, ft.label, ft.request, ft.logit_kld_limit) == (None, "Q6_K", "q6_k", MIXES["Q6_K"].logit_kld_limit)
    ft = file_type_of(_file({}))
    assert (ft.name, ft.label, ft.request, ft.logit_kld_limit) == (None, None, "auto", MIXES["F32"].logit_kld_limit)
    assert isinstance(ft, FileType)


def test_register_refuses_what_would_break_the_registry() -> None:
    q8 = get_quant_type("q8_0")
    with pytest.raises(KernelArgumentError, match="already registered"):
        register(q8)
    with pytest.raises(KernelArgumentError, match="block layout"):
        register(QuantType("MXFP4", T.MXFP4, 32, 34, None, q8.numpy_kernel, q8.ref_kernel, None, q8.dequantizer))
    with pytest.raises(KernelArgumentError, match="kernel and a dequantizer"):
        register(QuantType("MXFP4", T.MXFP4, 32, 17, None, None, None, None, None))
    with pytest.raises(KernelArgumentError, match="general.file_type 7 is taken"):
        register(QuantType("MXFP4", T.MXFP4, 32, 17, 7, q8.numpy_kernel, q8.ref_kernel, None, q8.dequantizer))
    assert "MXFP4" not in KNOWN_TYPES


# ------------------------------------------------------------------------------------------ the toy block type

QK = 32
BLOCK = 1 + QK // 2  # e8m0 scale, 16 bytes of 4-bit e2m1 codes (low nibbles: values 0..15, high: 16..31)
#: e2m1 values, doubled (the scale is half the e8m0 power of two)
E2M1 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
#: general.file_type of an all-MXFP4 file written by the converter: no llama.cpp ftype is that, so a number none uses
TOY_FILE_TYPE = 900


def _half_scale(e: np.ndarray) -> np.ndarray:
    return np.ldexp(np.float32(1), e.astype(np.int32) - 128).astype(np.float32)  # 2**(e-127) / 2


def quantize_mxfp4_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (n, 32) -> MXFP4 blocks (n, 17): the smallest power-of-two scale with amax <= 12 * scale (no
    clipping), then the nearest e2m1 code per value."""
    with np.errstate(divide="ignore", invalid="ignore"):
        amax = np.abs(x).max(axis=1)
        e = np.where(amax > 0, np.clip(np.ceil(np.log2(amax / 12)) + 128, 0, 254), 0).astype(np.uint8)
        codes = np.abs(_half_scale(e)[:, None, None] * E2M1 - x[:, :, None]).argmin(axis=-1).astype(np.uint8)
    out = np.empty((x.shape[0], BLOCK), np.uint8)
    out[:, 0] = e
    out[:, 1:] = codes[:, :QK // 2] | (codes[:, QK // 2:] << 4)
    return out


def dequantize_mxfp4(raw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = raw.reshape(-1, BLOCK)
    codes = np.concatenate([blocks[:, 1:] & 0x0F, blocks[:, 1:] >> 4], axis=1)
    return (_half_scale(blocks[:, 0])[:, None] * E2M1[codes]).reshape(shape)


_KERNEL = numpy_block_kernel(quantize_mxfp4_blocks, QK)
#: The whole toy type: one record. A real ggml type (gguf's block table, reader and writer know it; ggml-common.h
#: agrees on its 17 bytes) that l1quant does not serve and no dense-model mix uses.
TOY_MXFP4 = QuantType("MXFP4", T.MXFP4, QK, BLOCK, TOY_FILE_TYPE, _KERNEL, _KERNEL, None, dequantize_mxfp4,
                      outtype=True, noise=NoiseModel(QK, 4, True))


@pytest.fixture
def toy_type() -> Iterator[QuantType]:
    with registered(TOY_MXFP4) as qt:
        yield qt


@pytest.fixture(scope="module")
def ckpt(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1")


def test_toy_block_type_converts_verifies_and_dequantizes(ckpt: Path, toy_type: QuantType, tmp_path: Path) -> None:
    assert "mxfp4" in convert_types() and resolve_type("MXFP4") is toy_type
    out = l1quant.convert(ckpt, "mxfp4", tmp_path / "toy.gguf", threads=2)
    gf = read_gguf(out)
    assert gf.kv["general.file_type"] == TOY_FILE_TYPE
    types = {t.name: t.ggml_type for t in gf.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == T.MXFP4
    assert types["blk.0.attn_norm.weight"] == T.F32  # the converter's rule, not the type's
    assert file_type_of(gf).converter is toy_type

    rep = l1quant.verify(out, source=ckpt, logits=True, tokens=32, threads=2)
    assert rep.passed, rep.verdict
    assert rep.file_type == "MXFP4"
    toy_rows = [r for r in rep.tensors if r.type == "MXFP4"]
    assert toy_rows and all(r.bytes_identical and r.expected_rel_rmse is not None and r.threshold is not None
                            for r in toy_rows)  # the record's noise model gave the threshold

    # dequantized through the registry (the reader asks the record): gguf's own MXFP4 decoder agrees, and the
    # values are close to the source
    t = gf.tensor("blk.0.ffn_down.weight")
    got = gf.read_tensor_f32(t)
    raw = np.frombuffer(gf.read_tensor_bytes(t), np.uint8)
    np.testing.assert_array_equal(got, gguf_dequantize(raw.reshape(t.n_rows, -1), T.MXFP4).reshape(t.np_shape))
    pt = next(pt for pt in l1quant.prepare(ckpt, "mxfp4").plan.tensors if pt.name == t.name)
    assert pt.qtype is toy_type
    x = decode_bf16(pt.source.read_rows(0, pt.source.n_rows)).reshape(pt.shape)
    assert np.sqrt(np.mean((got - x) ** 2) / np.mean(x ** 2)) < 0.2


def test_unregistered_toy_type_is_unknown(ckpt: Path, tmp_path: Path) -> None:
    """Outside ``registered`` nothing knows MXFP4: the record is the only place that does."""
    with pytest.raises(ConfigError, match="'mxfp4' is not one of"):
        l1quant.convert(ckpt, "mxfp4", tmp_path / "toy.gguf")
    with registered(TOY_MXFP4):
        path = l1quant.convert(ckpt, "mxfp4", tmp_path / "toy.gguf", threads=2)
    rep = l1quant.verify(path, threads=2)
    types = next(c for c in rep.checks if c.name == "tensors.types")
    assert types.failed and "MXFP4, which l1quant does not write" in types.message
    assert "MXFP4" not in QUANT_TYPES and describe("mxfp4") is None
    assert math.isclose(file_type_of(read_gguf(path)).logit_kld_limit, MIXES["Q8_0"].logit_kld_limit)

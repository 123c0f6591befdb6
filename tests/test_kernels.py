"""Tests for l1quant.kernels: bytes vs gguf.quants, hand-worked edge cases, non-finite policy, error bounds,
argument validation, and fast paths (numpy, compiled) == reference path."""

from __future__ import annotations

import threading

import gguf
import numpy as np
import pytest
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from l1quant.errors import L1QuantError
from l1quant.kernels import (
    QUANT_TYPES,
    KernelArgumentError,
    decode_bf16,
    first_nonfinite,
    get_quant_type,
    native_available,
)
from l1quant.kernels._common import SUBCHUNK
from l1quant.kernels.q8_0 import MIN_SCALE_BITS, roundf_exact, roundf_trick

T = gguf.GGMLQuantizationType
TYPES = ["f32", "f16", "bf16", "q8_0"]
FAST_IMPLS = ["numpy", "native"] if native_available() else ["numpy"]
ALL_IMPLS = ["ref", *FAST_IMPLS]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Truncate float32 to bf16 bits (the test data only needs to be bf16-representable, not rounded)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def as_f32(x: np.ndarray) -> np.ndarray:
    return decode_bf16(x) if x.dtype == np.uint16 else x.astype(np.float32)


def gguf_bytes(x: np.ndarray, name: str) -> np.ndarray:
    qt = get_quant_type(name)
    with np.errstate(all="ignore"):  # gguf warns on subnormal-scale blocks and f16 overflow; bytes are what count
        return gguf_quantize(as_f32(x), qt.ggml_type).view(np.uint8).reshape(x.shape[0], -1)


def q8_block(values: list[float], dtype: type = np.float32) -> np.ndarray:
    """One Q8_0 block (1, 32) padded with zeros."""
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, : len(values)] = values
    return x.astype(dtype)


def q8_fields(data: np.ndarray) -> tuple[int, list[int]]:
    """(f16 bits of d, qs) of the first block."""
    blk = np.ascontiguousarray(data).reshape(-1)[:34]
    return int(blk[:2].view(np.uint16)[0]), blk[2:].view(np.int8).tolist()


# --------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_geometry_and_file_types() -> None:
    expected = {
        "F32": (T.F32, 1, 4, 0),
        "F16": (T.F16, 1, 2, 1),
        "BF16": (T.BF16, 1, 2, 32),
        "Q8_0": (T.Q8_0, 32, 34, 7),
        "Q4_0": (T.Q4_0, 32, 18, 2),
        "Q4_1": (T.Q4_1, 32, 20, 3),
        "Q5_0": (T.Q5_0, 32, 22, 8),
        "Q5_1": (T.Q5_1, 32, 24, 9),
        # the K types' file type depends on the mix (Q4_K_S or Q4_K_M...), except Q6_K which has one mix
        "Q2_K": (T.Q2_K, 256, 84, None),
        "Q3_K": (T.Q3_K, 256, 110, None),
        "Q4_K": (T.Q4_K, 256, 144, None),
        "Q5_K": (T.Q5_K, 256, 176, None),
        "Q6_K": (T.Q6_K, 256, 210, 18),
        # the grid types: the mix decides the file type (IQ2_M is mostly IQ2_S, ...)
        "IQ2_XXS": (T.IQ2_XXS, 256, 66, None),
        "IQ2_XS": (T.IQ2_XS, 256, 74, None),
        "IQ2_S": (T.IQ2_S, 256, 82, None),
        "IQ1_S": (T.IQ1_S, 256, 50, None),
        "IQ1_M": (T.IQ1_M, 256, 56, None),
        # as the K types: the IQ mixes decide the file type
        "IQ4_NL": (T.IQ4_NL, 32, 18, None),
        "IQ4_XS": (T.IQ4_XS, 256, 136, None),
        "IQ3_XXS": (T.IQ3_XXS, 256, 98, None),
        "IQ3_S": (T.IQ3_S, 256, 110, None),
    }
    assert set(QUANT_TYPES) == set(expected)
    for name, (gt, bs, ts, ft) in expected.items():
        qt = QUANT_TYPES[name]
        assert (qt.name, qt.ggml_type, qt.block_size, qt.type_size, qt.file_type) == (name, gt, bs, ts, ft)
        if ft is not None:
            assert qt.file_type == int(getattr(gguf.LlamaFileType, {"F32": "ALL_F32"}.get(name, "MOSTLY_" + name)))


@pytest.mark.parametrize("name", ["q8_0", "Q8_0", "Q8_0".lower().upper(), "BF16", "bf16", "F32", "f16"])
def test_get_quant_type_case_insensitive(name: str) -> None:
    assert get_quant_type(name).name == name.upper()


def test_get_quant_type_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"tq1_0.*f32, f16, bf16, q8_0, q4_0, .*q6_k") as ei:
        get_quant_type("tq1_0")
    assert isinstance(ei.value, L1QuantError)


def test_row_nbytes_and_nbytes() -> None:
    q8 = get_quant_type("q8_0")
    assert q8.row_nbytes(1536) == 1536 // 32 * 34
    assert q8.nbytes((8960, 1536)) == 8960 * 1632
    assert get_quant_type("f32").nbytes((5,)) == 20
    assert get_quant_type("bf16").nbytes((2, 3, 4)) == 48
    with pytest.raises(KernelArgumentError, match="multiple of the block size 32"):
        q8.row_nbytes(48)


# --------------------------------------------------------------------------------------------------------------
# Differential tests against gguf.quants (bit-identical to ggml's C reference for finite input)


def _sources() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    out: dict[str, np.ndarray] = {}
    for scale in (1e-3, 0.02, 1.0, 300.0):
        out[f"f32x{scale}"] = (rng.standard_normal((6, 256)) * scale).astype(np.float32)
        out[f"bf16x{scale}"] = to_bf16_bits(rng.standard_normal((6, 256)) * scale)
    out["f16"] = (rng.standard_normal((6, 256)) * 0.5).astype(np.float16)
    # heavy tails and exact zeros mixed in, like real weights with outliers
    x = (rng.standard_t(2, (6, 256)) * 0.01).astype(np.float32)
    x[:, ::7] = 0
    out["f32-tails"] = x
    out["bf16-tails"] = to_bf16_bits(x)
    return out


SOURCES = _sources()


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("src", sorted(SOURCES))
def test_matches_gguf(src: str, name: str, impl: str) -> None:
    x = SOURCES[src]
    got, bad = get_quant_type(name).quantize_checked(x, impl=impl)
    np.testing.assert_array_equal(got, gguf_bytes(x, name))
    assert bad is None


def test_q8_0_bf16_changes_where_half_even_would_differ() -> None:
    """bf16 weights hit exact .5 ties often enough that numpy's np.round would be visibly wrong."""
    rng = np.random.default_rng(7)
    u = to_bf16_bits(rng.standard_normal((64, 1024)) * 0.02)
    x = decode_bf16(u).reshape(-1, 32)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    v = x * np.where(d == 0, 0, 1 / d).astype(np.float32)
    assert np.count_nonzero(np.round(v) != roundf_exact(v)) > 0  # the data exercises ties
    np.testing.assert_array_equal(get_quant_type("q8_0").quantize(u), gguf_bytes(u, "q8_0"))


# --------------------------------------------------------------------------------------------------------------
# Hand-worked Q8_0 edge cases (amax = 127 makes d = 1 and id = 1, so qs = roundf(x) exactly)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_q8_0_ties_round_away_from_zero(impl: str, dtype: type) -> None:
    vals = [127.0, 63.5, -63.5, 0.5, -0.5, 1.5, 2.5, -2.5, 126.5, 0.49999997, -0.49999997, -0.0]
    x = q8_block(vals)
    if dtype is np.uint16:
        x = to_bf16_bits(x)
        vals = as_f32(x)[0, : len(vals)].tolist()  # 0.49999997 is not bf16; use what bf16 holds
    d, qs = q8_fields(get_quant_type("q8_0").quantize(x, impl=impl))
    assert d == 0x3C00  # f16 1.0
    assert qs[: len(vals)] == [int(roundf_exact(np.float32(v))) for v in vals]
    if dtype is np.float32:
        assert qs[: len(vals)] == [127, 64, -64, 1, -1, 2, 3, -3, 127, 0, 0, 0]


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_q8_0_special_blocks(impl: str) -> None:
    q8 = get_quant_type("q8_0")
    # zero and negative-zero blocks: d = 0, qs = 0
    for blk in (q8_block([]), q8_block([-0.0] * 32)):
        assert q8.quantize(blk, impl=impl).tolist() == [[0] * 34]
    # all-equal block: every q is +-127, d = f16(v / 127)
    d, qs = q8_fields(q8.quantize(np.full((1, 32), -0.3, np.float32), impl=impl))
    assert qs == [-127] * 32
    assert d == int(np.float16(np.float32(0.3) / np.float32(127)).view(np.uint16))
    # d at the top of f16: finite 65504 (0x7BFF) vs overflow to Inf (0x7C00), as gguf does
    assert q8_fields(q8.quantize(q8_block([65504.0 * 127]), impl=impl))[0] == 0x7BFF
    assert q8_fields(q8.quantize(q8_block([65520.0 * 127, 1.0]), impl=impl))[0] == 0x7C00
    # subnormal-scale blocks: 1/d overflows float32, gguf leaves qs = 0 and d rounds to f16 zero
    for blk in (
        q8_block([1e-40, -3e-41, 1e-45]),
        q8_block([2.0**-126, -(2.0**-127)]),
        np.array([[0x0001, 0x8003, 0x0080, 0x007F] + [0] * 28], dtype=np.uint16),  # bf16 subnormals
    ):
        assert q8.quantize(blk, impl=impl).tolist() == [[0] * 34]
        np.testing.assert_array_equal(q8.quantize(blk, impl=impl), gguf_bytes(blk, "q8_0"))
    # smallest normal-scale block whose 1/d is still finite keeps its quants
    blk = q8_block([np.float32(2.0**-100), np.float32(2.0**-101)])
    assert q8_fields(q8.quantize(blk, impl=impl))[1][:2] == [127, 64]


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_q8_0_scale_underflow_threshold(impl: str) -> None:
    """Around the smallest amax whose 1/d is finite, every implementation agrees with gguf (qs = 0 below it)."""
    blocks = []
    for amax_bits in range(MIN_SCALE_BITS - 3, MIN_SCALE_BITS + 4):
        amax = np.uint32(amax_bits).view(np.float32)
        blocks.append(q8_block([amax, -amax / 2, amax / 3]))
    x = np.concatenate(blocks, axis=1)
    got = get_quant_type("q8_0").quantize(x, impl=impl)
    np.testing.assert_array_equal(got, gguf_bytes(x, "q8_0"))
    qs = got.reshape(-1, 34)[:, 2:].view(np.int8)
    assert not qs[:3].any() and qs[3:, 0].tolist() == [127] * 4


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_float_edge_values(impl: str) -> None:
    vals = np.array(
        [[0.0, -0.0, 1e-45, -1e-40, 6e-8, 2.0**-25, 65504.0, 65519.0, 65520.0, -1e38, 3.0e-39, 1.0]], dtype=np.float32
    )
    for name in ("f32", "f16", "bf16"):
        np.testing.assert_array_equal(get_quant_type(name).quantize(vals, impl=impl), gguf_bytes(vals, name))
    f16 = get_quant_type("f16").quantize(vals, impl=impl).view(np.uint16)[0].tolist()
    assert f16[:2] == [0x0000, 0x8000] and f16[6:9] == [0x7BFF, 0x7BFF, 0x7C00] and f16[9] == 0xFC00
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = bits[(bits & 0x7FFF) <= 0x7F80].reshape(1, -1)  # every bf16 pattern that is not NaN
    for name in ("f16", "bf16", "f32"):
        np.testing.assert_array_equal(get_quant_type(name).quantize(finite, impl=impl), gguf_bytes(finite, name))


# --------------------------------------------------------------------------------------------------------------
# Rounding: the float32 trick equals C roundf, checked on every float32 of several binades


def _binade(lo_bits: int, hi_bits: int) -> np.ndarray:
    return np.arange(lo_bits, hi_bits, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize(
    "lo,hi",
    [
        (0x00000000, 0x00100000),  # zero and subnormals
        (0x3EF00000, 0x3F100000),  # [0.46875, 0.5625): the 0.49999997 trap and the first tie
        (0x3FC00000, 0x40000000),  # [1.5, 2)
        (0x42800000, 0x43000000),  # [64, 128): the largest quants
        (0x43000000, 0x43000001),  # 128
    ],
)
def test_roundf_trick_exhaustive_binades(lo: int, hi: int) -> None:
    v = _binade(lo, hi)
    for s in (v, -v):
        np.testing.assert_array_equal(roundf_trick(s), roundf_exact(s))


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_q8_0_rounding_exhaustive_with_unit_scale(impl: str) -> None:
    """Blocks led by 127 have d = id = 1, so the fast paths must give roundf(x) for every x; feed whole binades."""
    vals = np.concatenate([_binade(0x3EF00000, 0x3F100000), _binade(0x42F00000, 0x42FE0000)])  # ~[.47,.56), [120,127)
    vals = np.concatenate([vals, -vals])
    vals = vals[: vals.size // (31 * 64) * (31 * 64)].reshape(-1, 31)
    x = np.empty((vals.shape[0], 32), np.float32)
    x[:, 0] = 127.0
    x[:, 1:] = vals
    x = x.reshape(-1, 32 * 64)  # rows of 64 blocks
    out = get_quant_type("q8_0").quantize(x, impl=impl).reshape(-1, 34)
    assert np.all(out[:, :2].view(np.uint16) == 0x3C00)
    qs = out[:, 3:].view(np.int8)
    np.testing.assert_array_equal(qs, roundf_exact(x.reshape(-1, 32)[:, 1:]).astype(np.int8))


# --------------------------------------------------------------------------------------------------------------
# Non-finite policy


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_nonfinite_policy(impl: str) -> None:
    nan_payload = np.uint32(0x7F800001).view(np.float32)
    neg_nan = np.uint32(0xFFC12345).view(np.float32)
    x = np.array([[1.0, nan_payload, np.inf, -np.inf, neg_nan, -2.0]], dtype=np.float32)
    f32 = get_quant_type("f32").quantize(x, impl=impl)
    assert f32.tobytes() == x.tobytes()  # passes through, payloads included
    f16, bad = get_quant_type("f16").quantize_checked(x, impl=impl)
    assert f16.view(np.uint16).tolist() == [[0x3C00, 0x7E00, 0x7C00, 0xFC00, 0xFE00, 0xC000]]
    assert bad == 1
    bf16 = get_quant_type("bf16").quantize(x, impl=impl)
    assert bf16.view(np.uint16).tolist() == [[0x3F80, 0x7FC0, 0x7F80, 0xFF80, 0xFFC1, 0xC000]]
    # bf16 input: a signalling NaN is quieted, everything else copied
    u = np.array([[0x7F81, 0xFF80, 0x7F80, 0x3F80, 0xFFFF]], dtype=np.uint16)
    assert get_quant_type("bf16").quantize(u, impl=impl).view(np.uint16).tolist() == [
        [0x7FC1, 0xFF80, 0x7F80, 0x3F80, 0xFFFF]
    ]
    # f16 input NaN -> 0x7E00 | sign
    h = np.array([[0x7C01, 0xFE55, 0x7C00, 0x3C00]], dtype=np.uint16).view(np.float16)
    assert get_quant_type("f16").quantize(h, impl=impl).view(np.uint16).tolist() == [[0x7E00, 0xFE00, 0x7C00, 0x3C00]]


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
def test_q8_0_nonfinite_block_is_nan(impl: str, bad_value: float, dtype: type) -> None:
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((2, 96)).astype(np.float32)
    x32[1, 40] = bad_value  # row 1, block 1
    x32[1, 45] = np.nan
    x = to_bf16_bits(x32) if dtype is np.uint16 else x32.astype(dtype)
    q8 = get_quant_type("q8_0")
    out, bad = q8.quantize_checked(x, impl=impl)
    assert bad == 96 + 40
    blocks = out.reshape(-1, 34)
    assert blocks[4, :2].view(np.uint16)[0] == 0x7E00 and not blocks[4, 2:].any()
    good = np.ones(6, bool)
    good[4] = False
    clean = as_f32(x).reshape(-1, 32)[good].reshape(5, 32)
    np.testing.assert_array_equal(blocks[good], gguf_bytes(clean, "q8_0").reshape(-1, 34))
    deq = q8.dequantize(out, x.shape).reshape(-1, 32)
    assert np.isnan(deq[4]).all() and np.isfinite(deq[good]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
def test_first_nonfinite(dtype: type) -> None:
    x: np.ndarray = np.zeros(5000, dtype=dtype)
    assert first_nonfinite(x) is None
    for pos, bits in ((4321, 0x7F80), (17, 0xFFC0), (4999, 0x7F81)):
        y = x.copy()
        if dtype is np.uint16:
            y[pos] = bits
        else:
            y[pos] = np.inf if bits == 0x7F80 else np.nan
        y[pos + 1 :] = y[pos]
        assert first_nonfinite(y) == pos
    # large finite bf16 values (0x7F7F = 3.39e38) are not flagged
    assert first_nonfinite(np.full(10, 0x7F7F, np.uint16)) is None
    assert first_nonfinite(np.full((3, 4), 65504, np.float16)) is None


def test_first_nonfinite_rejects_other_dtypes() -> None:
    with pytest.raises(KernelArgumentError, match="float64"):
        first_nonfinite(np.zeros(3))


# --------------------------------------------------------------------------------------------------------------
# Round trip error bounds


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_dequantize_error_bounds(impl: str) -> None:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    q8 = get_quant_type("q8_0")
    data = q8.quantize(x, impl=impl)
    err = np.abs(q8.dequantize(data, x.shape) - x).reshape(-1, 32)
    d = np.abs(x).reshape(-1, 32).max(axis=1) / np.float32(127)
    d16 = data.reshape(-1, 34)[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    bound = 0.5 * d16 * (1 + 1e-6) + 127 * np.abs(d - d16) + 1e-12
    assert np.all(err.max(axis=1) <= bound)
    for name, rel in (("f16", 2.0**-11), ("bf16", 2.0**-8)):
        qt = get_quant_type(name)
        back = qt.dequantize(qt.quantize(x, impl=impl), x.shape)
        big = np.abs(x) > 1e-4  # away from the f16 subnormal range
        assert np.all(np.abs(back - x)[big] <= rel * np.abs(x)[big])
    f32 = get_quant_type("f32")
    np.testing.assert_array_equal(f32.dequantize(f32.quantize(x), x.shape), x)


def test_dequantize_validates_size() -> None:
    with pytest.raises(KernelArgumentError, match=r"68 bytes do not hold shape \(1, 32\)"):
        get_quant_type("q8_0").dequantize(np.zeros(68, np.uint8), (1, 32))


# --------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, out= handling


@pytest.mark.parametrize(
    "x,msg",
    [
        (np.zeros(64, np.float32), "2-D"),
        (np.zeros((2, 64), np.float64), "float64"),
        (np.zeros((2, 64), np.int16), "int16"),
        (np.zeros((64, 2), np.float32).T, "C-contiguous"),
        (np.zeros((2, 48), np.float32), "multiple of the block size"),
        ([[0.0] * 32], "numpy array"),
    ],
)
def test_quantize_rejects_bad_input(x: np.ndarray, msg: str) -> None:
    with pytest.raises(KernelArgumentError, match=msg):
        get_quant_type("q8_0").quantize(x)  # type: ignore[arg-type]


def test_quantize_rejects_bad_out() -> None:
    q8 = get_quant_type("q8_0")
    x = np.zeros((2, 64), np.float32)
    for out, msg in (
        (np.zeros((2, 67), np.uint8), r"shape \(2, 68\)"),
        (np.zeros((2, 68), np.int8), "uint8"),
        (np.zeros((2, 136), np.uint8)[:, ::2], "contiguous"),
    ):
        with pytest.raises(KernelArgumentError, match=msg):
            q8.quantize(x, out)
    ro = np.zeros((2, 68), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(KernelArgumentError, match="read-only"):
        q8.quantize(x, ro)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("name", TYPES)
def test_out_view_into_bigger_buffer(name: str, impl: str) -> None:
    """out may be a strided window of a larger buffer (rows padded); bytes around it stay untouched."""
    rng = np.random.default_rng(5)
    x = to_bf16_bits(rng.standard_normal((5, 96)))
    qt = get_quant_type(name)
    rb = qt.row_nbytes(96)
    buf = np.full((7, rb + 13), 0xAB, np.uint8)
    ret = qt.quantize(x, buf[1:6, 5 : 5 + rb], impl=impl)
    assert ret.base is buf or ret.base is buf.base or np.shares_memory(ret, buf)
    np.testing.assert_array_equal(buf[1:6, 5 : 5 + rb], gguf_bytes(x, name))
    mask = np.ones(buf.shape, bool)
    mask[1:6, 5 : 5 + rb] = False
    assert np.all(buf[mask] == 0xAB)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_empty_and_long_rows(impl: str) -> None:
    q8 = get_quant_type("q8_0")
    assert q8.quantize(np.zeros((0, 64), np.uint16), impl=impl).shape == (0, 68)
    # a row longer than the numpy sub-chunk, and rows spanning sub-chunk boundaries
    rng = np.random.default_rng(9)
    for shape in ((2, SUBCHUNK + 32 * 33), (SUBCHUNK // 96 + 3, 96)):
        u = to_bf16_bits(rng.standard_normal(shape) * 0.1)
        for name in TYPES:
            np.testing.assert_array_equal(get_quant_type(name).quantize(u, impl=impl), gguf_bytes(u, name))


def test_auto_uses_native_when_built() -> None:
    x = to_bf16_bits(np.random.default_rng(2).standard_normal((3, 64)))
    q8 = get_quant_type("q8_0")
    np.testing.assert_array_equal(q8.quantize(x), q8.quantize(x, impl="numpy"))
    if not native_available():
        with pytest.raises(KernelArgumentError, match="not built"):
            q8.quantize(x, impl="native")
    with pytest.raises(KernelArgumentError, match="impl must be one of"):
        q8.quantize(x, impl="fast")


@pytest.mark.skipif(not native_available(), reason="compiled accelerator not built")
def test_native_threads_give_same_bytes() -> None:
    rng = np.random.default_rng(4)
    xs = [to_bf16_bits(rng.standard_normal((256, 1024)) * 0.02) for _ in range(4)]
    q8 = get_quant_type("q8_0")
    expected = [q8.quantize(x, impl="numpy") for x in xs]
    results: list[np.ndarray | None] = [None] * 4

    def work(i: int) -> None:
        for _ in range(3):
            results[i] = q8.quantize(xs[i], impl="native")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, exp in zip(results, expected):
        np.testing.assert_array_equal(got, exp)


_F16_PATHS_SCRIPT = """
import numpy as np
from l1quant.kernels import get_quant_type
q = get_quant_type("f16")
bits = np.arange(1 << 16, dtype=np.uint16).reshape(8, -1)  # every bf16 pattern, NaN payloads included
assert np.array_equal(q.quantize(bits, impl="native"), q.quantize(bits, impl="ref"))
rng = np.random.default_rng(5)
u = rng.integers(0, 1 << 32, size=(4, 1 << 16), dtype=np.uint64).astype(np.uint32)
u[:, ::7] |= np.uint32(0x7F800000)  # many Inf/NaN lanes, with and without the sign bit, any payload
for n in (1, 7, 8, 9, 4096):  # vector body and scalar tail
    x = np.ascontiguousarray(u[:, :n]).view(np.float32)
    assert np.array_equal(q.quantize(x, impl="native"), q.quantize(x, impl="ref")), n
    b = np.ascontiguousarray(bits[:, :n])
    assert np.array_equal(q.quantize(b, impl="native"), q.quantize(b, impl="ref")), n
print("ok")
"""


@pytest.mark.skipif(not native_available(), reason="compiled accelerator not built")
@pytest.mark.parametrize("no_f16c", ["0", "1"])
def test_native_f16_paths_equal_reference_on_all_patterns(no_f16c: str) -> None:
    """The F16C and the portable f16 loops (chosen once at import) both give the reference bytes, NaN included."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "L1QUANT_NO_F16C": no_f16c}
    r = subprocess.run([sys.executable, "-c", _F16_PATHS_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------------
# Property: every implementation gives the reference bytes and first-non-finite index, on arbitrary bit patterns


@settings(max_examples=60, deadline=None)
@given(
    bits=hnp.arrays(np.uint16, st.tuples(st.integers(1, 3), st.sampled_from([32, 64, 96]))),
    dtype=st.sampled_from(["bf16", "f16", "f32"]),
    scale_bits=st.integers(0, 0xFFFF),
)
def test_property_fast_equals_reference(bits: np.ndarray, dtype: str, scale_bits: int) -> None:
    if dtype == "bf16":
        x: np.ndarray = bits
    elif dtype == "f16":
        x = bits.view(np.float16)
    else:  # widen to f32 with varied low bits so rounding paths (f16, bf16) are exercised
        x = ((bits.astype(np.uint32) << 16) | np.uint32(scale_bits)).view(np.float32)
    for name in TYPES:
        qt = get_quant_type(name)
        ref, ref_bad = qt.quantize_checked(x, impl="ref")
        for impl in FAST_IMPLS:
            got, bad = qt.quantize_checked(x, impl=impl)
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} {impl} {dtype}")
            assert bad == ref_bad
        if ref_bad is None:
            np.testing.assert_array_equal(ref, gguf_bytes(x, name))

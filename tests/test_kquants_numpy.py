"""numpy Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q2_K / Q4_K / Q5_K kernels vs ggml itself (``tests/ggml_oracle.py``).

Every finite input must give ggml's bytes exactly: random data at several scales, zero / signed-zero / constant
blocks, outliers, values around GROUP_MAX_EPS and in the subnormal range, exact rounding ties, huge finite values
(+-65504, 1e30, near FLT_MAX so that max - min overflows), and values that came from f16 and bf16. Each type sees
more than 10**6 values. Blocks holding NaN/Inf follow the project's policy (zeros, f16 scale fields = 0x7E00)
while their finite neighbours still match ggml.

Needs llama-cpp-python (its libggml-base): skipped locally without it, failed under CI=true.

Run: ``.venv/bin/python -m pytest tests/test_kquants_numpy.py -q``
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from l1quant.kernels import KernelArgumentError, kquants_qkx2, q4_q5
from l1quant.kernels._kcommon import (
    f16_bits,
    nearest_int,
    pack_scale_min_k4,
    seq_sum_rows,
    unpack_scale_min_k4,
)

F32 = np.float32


@dataclass(frozen=True)
class Kind:
    """One quant type under test: its numpy quantizer, block length, block bytes, f16 scale-field offsets."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    qk: int
    nbytes: int
    f16_offsets: tuple[int, ...]


KINDS = {
    k.name: k
    for k in (
        Kind("Q4_0", q4_q5.quantize_q4_0, 32, 18, (0,)),
        Kind("Q4_1", q4_q5.quantize_q4_1, 32, 20, (0, 2)),
        Kind("Q5_0", q4_q5.quantize_q5_0, 32, 22, (0,)),
        Kind("Q5_1", q4_q5.quantize_q5_1, 32, 24, (0, 2)),
        Kind("Q2_K", kquants_qkx2.quantize_q2_k, 256, 84, (80, 82)),
        Kind("Q4_K", kquants_qkx2.quantize_q4_k, 256, 144, (0, 2)),
        Kind("Q5_K", kquants_qkx2.quantize_q5_k, 256, 176, (0, 2)),
    )
}
TYPES = list(KINDS)


# ---------------------------------------------------------------------------------------------------------------
# Test data: named cases of float32 blocks (n_blocks, qk), all finite.


def _blocks(values: np.ndarray, qk: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1, qk))


def _finite_f16(bits: np.ndarray) -> np.ndarray:
    """Random f16 bit patterns made finite (exponent 31 -> 30), decoded exactly to float32."""
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & ~np.uint16(0x0400), bits).astype(np.uint16)
    return bits.view(np.float16).astype(np.float32)


def _finite_bf16(bits: np.ndarray) -> np.ndarray:
    """Random bf16 bit patterns made finite (exponent 255 -> 254), decoded exactly to float32."""
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & ~np.uint16(0x0080), bits).astype(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _subnormals(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random float32 subnormals (and zeros) of both signs."""
    mant = rng.integers(0, 1 << 23, size=shape, dtype=np.uint32)
    sign = rng.integers(0, 2, size=shape, dtype=np.uint32) << np.uint32(31)
    return (mant | sign).view(np.float32)


@functools.lru_cache(maxsize=None)
def dataset(qk: int) -> dict[str, np.ndarray]:
    """The named finite test cases for block length ``qk`` (32 or 256): about 2.9 million values in total."""
    rng = np.random.default_rng(20240917 + qk)
    big = 1 << 19  # values in each main random case
    med = 1 << 16
    c: dict[str, np.ndarray] = {}
    for scale in (1e-3, 1.0, 100.0, 1e4):
        c[f"normal_{scale:g}"] = _blocks(rng.standard_normal(big) * scale, qk)
    c["uniform"] = _blocks(rng.uniform(-1, 1, med), qk)
    c["uniform_pos"] = _blocks(rng.uniform(0, 1, med), qk)  # min > 0: K-quants clamp min to 0
    c["uniform_neg"] = _blocks(rng.uniform(-3, -1, med), qk)
    c["heavy_tail"] = _blocks(rng.standard_t(2, med) * 0.05, qk)
    # every block, and every 16-value group, at its own scale: groups whose quantized scale rounds to 0 keep the
    # codes of the search, f16 scales go subnormal or overflow, sums overflow
    c["block_scales"] = _blocks(rng.standard_normal((med // qk, qk)) * 10.0 ** rng.uniform(-40, 37, (med // qk, 1)),
                                qk)
    c["group_scales"] = _blocks(rng.standard_normal((med // 16, 16)) * 10.0 ** rng.uniform(-6, 2, (med // 16, 1)),
                                qk)
    # one large outlier per block among small values (position varies)
    o = rng.standard_normal((med // qk, qk)) * 0.01
    o[np.arange(o.shape[0]), rng.integers(0, qk, o.shape[0])] = rng.choice([-50.0, 50.0], o.shape[0])
    c["outlier"] = _blocks(o, qk)
    # zero blocks, signed zeros: the sign of ggml's scale fields depends on which zero its scans keep
    c["zeros"] = np.zeros((8, qk), np.float32)
    nz = np.zeros((64, qk), np.float32)
    nz[rng.random(nz.shape) < 0.5] = -0.0
    nz[0] = -0.0
    c["signed_zeros"] = nz
    sparse = rng.standard_normal((128, qk)) * (rng.random((128, qk)) < 0.05)
    sparse[::2] *= -1
    c["sparse"] = _blocks(sparse, qk)
    # constant blocks and (for K types) constant groups of different values inside one super-block
    c["constant"] = _blocks(np.repeat(rng.standard_normal(256) * 3, qk), qk)
    c["constant_groups"] = _blocks(np.repeat(rng.standard_normal(256 * qk // 16), 16), qk)
    c["constant_pos_neg"] = _blocks(np.repeat(np.array([1.0, -1.0, 0.5, -0.25, 65504.0, -65504.0]), qk), qk)
    # exact ties: small integers and half-integers make x*id + offset and iscale*(x - min) land on .5 exactly
    c["ints"] = _blocks(rng.integers(-8, 8, med // 2), qk)
    c["ints_pos"] = _blocks(rng.integers(0, 31, med // 2), qk)
    c["half_ints"] = _blocks(rng.integers(-16, 16, med // 2) * 0.5, qk)
    c["two_levels"] = _blocks(rng.choice([0.0, 1.0], med // 4), qk)
    c["three_levels"] = _blocks(rng.choice([-1.0, 0.0, 2.0], med // 4), qk)
    tie = rng.standard_normal((256, qk)) * 0.1  # +a and -a both present: the first one must win the absmax scan
    for i in range(tie.shape[0]):
        p, q = rng.choice(qk, 2, replace=False)
        tie[i, p], tie[i, q] = 1.5, -1.5
    c["absmax_tie"] = _blocks(tie, qk)
    # tiny values: around GROUP_MAX_EPS (1e-15), then towards the float32 subnormal range
    for scale in (1e-15, 1e-20, 1e-30, 1e-37, 1e-38):
        c[f"tiny_{scale:g}"] = _blocks(rng.standard_normal(8 * qk) * scale, qk)
    c["subnormal"] = _blocks(_subnormals(rng, (16 * qk,)), qk)
    mix = _subnormals(rng, (16, qk))
    mix[:, 0] = rng.standard_normal(16) * 1e-36
    c["subnormal_mixed"] = _blocks(mix, qk)
    # huge finite values: f16 overflow of the scales, Inf intermediates (x*x, max - min) inside ggml
    c["f16_max"] = _blocks(rng.choice(np.array([65504.0, -65504.0, 0.0, 1.0, -3.0]), 16 * qk), qk)
    c["f16_max_only"] = _blocks(np.tile([65504.0, -65504.0], 8 * qk), qk)
    c["huge_1e30"] = _blocks(rng.standard_normal(16 * qk) * 1e30, qk)
    c["near_flt_max"] = _blocks(rng.uniform(-3.4e38, 3.4e38, 16 * qk), qk)
    wide = rng.standard_normal((16, qk)) * 1e-3
    wide[:, 1] = 3.0e38
    wide[:, 5] = -3.0e38
    c["range_overflow"] = _blocks(wide, qk)
    # values that came from f16 / bf16 checkpoints (decode exactly): random bit patterns and realistic weights
    c["f16_bits"] = _blocks(_finite_f16(rng.integers(0, 1 << 16, med // 2, dtype=np.uint16)), qk)
    c["bf16_bits"] = _blocks(_finite_bf16(rng.integers(0, 1 << 16, med // 2, dtype=np.uint16)), qk)
    c["f16_weights"] = _blocks((rng.standard_normal(med) * 0.02).astype(np.float16), qk)
    w = (rng.standard_normal(med) * 0.02).astype(np.float32).view(np.uint32) >> 16
    c["bf16_weights"] = _blocks(_finite_bf16(w.astype(np.uint16)), qk)
    for name, arr in c.items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), name
    return c


CASES = list(dataset(32))
assert CASES == list(dataset(256))


# ---------------------------------------------------------------------------------------------------------------
# Byte comparison with ggml.


def assert_same_bytes(got: np.ndarray, ref: np.ndarray, x: np.ndarray, what: str) -> None:
    """Fail naming the first differing block, its bytes and its values."""
    assert got.dtype == np.uint8 and got.shape == ref.shape, (what, got.dtype, got.shape, ref.shape)
    diff = np.flatnonzero((got != ref).any(axis=1))
    if diff.size:
        b = int(diff[0])
        pytest.fail(
            f"{what}: {diff.size} of {got.shape[0]} blocks differ from ggml; first is block {b}\n"
            f"  ggml:  {ref[b].tolist()}\n  numpy: {got[b].tolist()}\n  input: {x[b][:16].tolist()} ..."
        )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_bytes_match_ggml(type_name: str, case: str) -> None:
    kind = KINDS[type_name]
    x = dataset(kind.qk)[case]
    ref = ggml_quantize(type_name, x)
    x_before = x.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Inf intermediates (huge inputs) are expected, numpy warnings are not
        got = kind.fn(x)
    assert_same_bytes(got, ref, x, f"{type_name} / {case}")
    assert np.array_equal(x.view(np.uint32), x_before.view(np.uint32)), "the quantizer modified its input"


def test_dataset_size() -> None:
    """The brief asks for at least 10**6 values per type."""
    for qk in (32, 256):
        assert sum(a.size for a in dataset(qk).values()) >= 1_000_000


@pytest.mark.parametrize("type_name", TYPES)
def test_chunk_boundaries(type_name: str) -> None:
    """Inputs longer than one internal sub-chunk, with a ragged last chunk, and a single block."""
    kind = KINDS[type_name]
    per_chunk = q4_q5.BLOCKS_PER_CHUNK if kind.qk == 32 else kquants_qkx2.SUPERBLOCKS_PER_CHUNK
    rng = np.random.default_rng(7)
    for nb in (1, per_chunk + 3):
        x = _blocks(rng.standard_normal(nb * kind.qk), kind.qk)
        assert_same_bytes(kind.fn(x), ggml_quantize(type_name, x), x, f"{type_name} / {nb} blocks")


# ---------------------------------------------------------------------------------------------------------------
# Non-finite policy.


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_policy(type_name: str) -> None:
    kind = KINDS[type_name]
    rng = np.random.default_rng(11)
    nb = 64
    x = _blocks(rng.standard_normal(nb * kind.qk), kind.qk)
    specials = [np.nan, np.inf, -np.inf, np.float32(np.nan) * -1]
    bad = np.zeros(nb, dtype=bool)
    for b in range(0, nb, 3):
        for _ in range(1 + b % 3):
            x[b, rng.integers(0, kind.qk)] = specials[int(rng.integers(0, len(specials)))]
        bad[b] = True
    x[5, :] = np.nan  # an all-NaN block
    x[7, :] = np.inf
    x[7, 1] = -np.inf
    bad[[5, 7]] = True
    x[nb - 1, kind.qk - 1] = np.inf  # last value of the last block
    bad[nb - 1] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy RuntimeWarnings leak out of the kernel
        got = kind.fn(x)
    ref = ggml_quantize(type_name, x)  # only its finite blocks are meaningful (blocks are independent in ggml)
    assert_same_bytes(got[~bad], ref[~bad], x[~bad], f"{type_name} finite neighbours")
    expect = np.zeros(kind.nbytes, dtype=np.uint8)
    for off in kind.f16_offsets:
        expect[off : off + 2] = np.array([0x7E00], dtype="<u2").view(np.uint8)
    assert (got[bad] == expect).all(), f"{type_name}: non-finite blocks are not zeros + f16 NaN scales"
    d = dequantize(got[bad], GGMLQuantizationType[type_name])
    assert np.isnan(d).all()


# ---------------------------------------------------------------------------------------------------------------
# Sanity: gguf's dequantizer reads our bytes back close to the input.

MAX_REL_RMS = {"Q4_0": 0.16, "Q4_1": 0.13, "Q5_0": 0.08, "Q5_1": 0.065, "Q2_K": 0.45, "Q4_K": 0.12,
               "Q5_K": 0.06}


@pytest.mark.parametrize("type_name", TYPES)
def test_roundtrip_with_gguf_dequantize(type_name: str) -> None:
    kind = KINDS[type_name]
    x = dataset(kind.qk)["normal_1"]
    y = dequantize(kind.fn(x), GGMLQuantizationType[type_name]).reshape(x.shape)
    rel = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel < MAX_REL_RMS[type_name], rel
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    assert (block, size) == (kind.qk, kind.nbytes)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks.


@pytest.mark.parametrize("type_name", TYPES)
def test_bad_arguments(type_name: str) -> None:
    kind = KINDS[type_name]
    good = np.zeros((2, kind.qk), np.float32)
    assert kind.fn(good).shape == (2, kind.nbytes)
    assert kind.fn(np.zeros((0, kind.qk), np.float32)).shape == (0, kind.nbytes)
    for bad in (good.astype(np.float64), good.astype(np.float16), good.reshape(-1), np.zeros((2, kind.qk + 1),
                np.float32), np.zeros((kind.qk, 4), np.float32).T, good.tolist()):
        with pytest.raises(KernelArgumentError):
            kind.fn(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# Helpers against an independent statement of the C semantics (no oracle needed).


def _ggml_fp32_to_fp16(f: np.ndarray) -> np.ndarray:
    """ggml-impl.h's ``ggml_compute_fp32_to_fp16`` bit trick, restated in numpy uint32/float32 arithmetic."""
    f = np.asarray(f, dtype=np.float32)
    with np.errstate(all="ignore"):
        base = (np.abs(f) * F32(2.0**112)) * F32(2.0**-110)
    w = f.view(np.uint32)
    shl1 = w + w
    sign = w & np.uint32(0x80000000)
    bias = np.maximum(shl1 & np.uint32(0xFF000000), np.uint32(0x71000000))
    with np.errstate(all="ignore"):
        base = ((bias >> np.uint32(1)) + np.uint32(0x07800000)).view(np.float32) + base
    bits = base.view(np.uint32)
    nonsign = ((bits >> np.uint32(13)) & np.uint32(0x7C00)) + (bits & np.uint32(0x0FFF))
    res = (sign >> np.uint32(16)) | np.where(shl1 > np.uint32(0xFF000000), np.uint32(0x7E00), nonsign)
    return res.astype(np.uint16)


def test_f16_bits_matches_ggml_conversion() -> None:
    """numpy's float32 -> float16 cast == ggml's conversion (compared on every finite float32 once during
    development; here on a stride through all bit patterns, every f16 rounding boundary, overflow and +-Inf)."""
    stride = np.arange(0, 1 << 32, 997, dtype=np.uint64).astype(np.uint32)
    h = np.arange(0, 0x7C00, dtype=np.uint32)  # every finite positive f16 (and the halfway points between them)
    f = h.astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    around = (f[:, None] + np.arange(-2, 3, dtype=np.int64)[None, :].astype(np.uint32)).reshape(-1)
    halfway = (f[:-1].view(np.float32).astype(np.float64) + f[1:].view(np.float32).astype(np.float64)) / 2
    half_bits = halfway.astype(np.float32).view(np.uint32)
    half_nb = (half_bits[:, None] + np.arange(-1, 2, dtype=np.int64)[None, :].astype(np.uint32)).reshape(-1)
    bits = np.concatenate([stride, around, half_nb, np.array([0x477FF000, 0x477FEFFF, 0x47800000], np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    vals = bits.view(np.float32)
    vals = np.concatenate([vals[np.isfinite(vals)], np.array([np.inf, -np.inf], np.float32)])
    assert np.array_equal(f16_bits(vals), _ggml_fp32_to_fp16(vals))


def test_nearest_int_matches_rint_in_range() -> None:
    rng = np.random.default_rng(3)
    halves = (np.arange(-4000, 4000) + 0.5).astype(np.float32)
    vals = np.concatenate([halves, rng.uniform(-4194303, 4194303, 100000).astype(np.float32),
                           np.nextafter(halves, np.float32(0)), np.array([4194303, -4194303, -0.0], np.float32)])
    assert np.array_equal(nearest_int(vals), np.rint(vals).astype(np.int32))
    # outside the range the trick's bits show, as in C
    assert nearest_int(np.array([np.inf, -np.inf], np.float32)).tolist() == [-4194304, -4194304]
    assert nearest_int(np.array([np.float32(2.0**24)], np.float32)).tolist() == [1 << 21]  # not 2**24: the trick wraps


def test_seq_sum_rows_is_in_order() -> None:
    rng = np.random.default_rng(5)
    t = (rng.standard_normal((32, 1000)) * 10.0 ** rng.integers(-6, 7, (32, 1000))).astype(np.float32)
    got = seq_sum_rows(t)
    for lane in range(0, 1000, 37):
        acc = F32(0)
        for v in t[:, lane]:
            acc = F32(acc + v)
        assert got[lane].view(np.uint32) == acc.view(np.uint32)


def test_scale_min_k4_roundtrip() -> None:
    rng = np.random.default_rng(9)
    ls = rng.integers(0, 64, (500, 8))
    lm = rng.integers(0, 64, (500, 8))
    s, m = unpack_scale_min_k4(pack_scale_min_k4(ls, lm))
    assert np.array_equal(s, ls) and np.array_equal(m, lm)

"""Q3_K / Q6_K numpy kernels (l1quant.kernels.kquants_qx) against ggml itself.

Every finite case is byte-compared with ``ggml_quantize_chunk`` (tests/ggml_oracle.py, the ``quantize_row_*_ref``
path): random data at several scales, and the edge cases where float32 order of operations, ties, the
``nearest_int`` trick, f16 rounding and the all-zero thresholds decide bytes. More than 10**6 values per type.
Non-finite blocks follow the project's policy (zeros, d = f16 NaN) and leave their neighbours untouched.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from l1quant.kernels import KernelArgumentError, decode_bf16, kquants_qx
from l1quant.kernels.kquants_qx import QK_K, quantize_q3_k, quantize_q6_k

KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
    "Q3_K": (quantize_q3_k, 110),
    "Q6_K": (quantize_q6_k, 210),
}
TYPES = list(KERNELS)
F16_NAN = 0x7E00
EPS = np.float32(1e-15)  # ggml's GROUP_MAX_EPS


def blocks_of(values: np.ndarray) -> np.ndarray:
    """Flat values (length a multiple of 256) -> float32 C-contiguous (n_blocks, 256)."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1, QK_K))


def finite_cases() -> dict[str, np.ndarray]:
    """Named float32 (n_blocks, 256) inputs; together well over 10**6 values (checked below)."""
    rng = np.random.default_rng(20240613)
    c: dict[str, np.ndarray] = {}
    for scale in (1e-3, 1.0, 100.0, 1e4):
        c[f"normal*{scale:g}"] = blocks_of(rng.standard_normal(400 * QK_K) * scale)
    for scale in (1e-6, 1e6, 3e8, 1e9):  # f16 d near underflow / overflow (65504)
        c[f"normal*{scale:g}"] = blocks_of(rng.standard_normal(50 * QK_K) * scale)
    c["uniform[-1,1)"] = blocks_of(rng.uniform(-1, 1, 300 * QK_K))
    c["uniform[0,5)"] = blocks_of(rng.uniform(0, 5, 100 * QK_K))  # one-signed: max is the positive extreme
    c["zero"] = np.zeros((4, QK_K), np.float32)
    c["negative zero"] = np.full((2, QK_K), -0.0, np.float32)
    consts = [1.0, -1.0, 0.5, -3.7, 1e-3, 7.0, 1e-14, -1e-15, 1e-16, 65504.0, -65504.0, 1e20, -1e30, 3e38, 1e-40]
    c["constant"] = np.repeat(np.array(consts, np.float32)[:, None], QK_K, axis=1)
    # constant per group of 16, different between groups: exercises the scale search per group and the 6-bit
    # super-scale on the same block
    c["constant groups"] = blocks_of(np.repeat(rng.standard_normal(64 * 16) * 3, 16))
    base = rng.standard_normal((200, QK_K)).astype(np.float32)
    pos = rng.integers(0, QK_K, 200)
    base[np.arange(200), pos] *= np.float32(1000)
    c["one outlier"] = base
    big = rng.standard_normal((100, QK_K)).astype(np.float32) * np.float32(1e-3)
    big[np.arange(100), rng.integers(0, QK_K, 100)] = np.float32(65504) * rng.choice([-1, 1], 100)
    c["outlier 65504"] = big
    # tiny values: below, at and just above the all-zero threshold, whole blocks and mixed per group
    c["tiny<eps"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e-16)
    c["tiny~eps"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e-15)
    c["tiny 1e-13"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e-13)
    at_eps = np.zeros((6, QK_K), np.float32)
    for k, v in enumerate([EPS, np.nextafter(EPS, np.float32(0)), np.nextafter(EPS, np.float32(1)),
                           -EPS, np.float32(2e-15), np.float32(5e-16)]):
        at_eps[k, ::7] = v
    c["at eps"] = at_eps
    mixed = rng.standard_normal((100, 16, 16)).astype(np.float32)
    mixed[:, ::2] *= np.float32(1e-17)  # every other group below eps
    mixed[:, 1::4] *= np.float32(1e-12)
    c["mixed tiny groups"] = mixed.reshape(-1, QK_K)
    # exact ties: small integers and halves make x * iscale land on .5 and |max| repeat with both signs
    c["ties ints"] = blocks_of(rng.integers(-8, 9, 300 * QK_K).astype(np.float32))
    c["ties halves"] = blocks_of(rng.integers(-16, 17, 200 * QK_K).astype(np.float32) / np.float32(2))
    c["ties quarters small"] = blocks_of(rng.integers(-4, 5, 100 * QK_K).astype(np.float32) / np.float32(4))
    sym = rng.standard_normal((50, 16, 16)).astype(np.float32)
    sym[:, :, 3] = np.abs(sym).max(axis=2) * np.float32(1.5)
    sym[:, :, 9] = -sym[:, :, 3]  # +max and -max in one group: the first one must win
    c["ties +-max"] = sym.reshape(-1, QK_K)
    mirror = np.repeat(rng.standard_normal((40, 1, 16)).astype(np.float32), 16, axis=1)
    mirror[:, 1::2] *= np.float32(-1)  # group scales of equal size and opposite sign: the first must win
    c["mirrored groups"] = mirror.reshape(-1, QK_K)
    c["arange"] = blocks_of(np.tile(np.arange(-128, 128, dtype=np.float32), 20))
    # subnormals, alone and mixed with normal values
    c["subnormal"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e-40)
    sub = rng.standard_normal((50, QK_K)).astype(np.float32)
    sub[:, ::3] = (rng.standard_normal((50, 86)) * 1e-42).astype(np.float32)
    c["subnormal mixed"] = sub
    # huge finite magnitudes: x*x overflows to Inf inside the search, as it does in ggml
    c["+-65504"] = blocks_of(rng.choice(np.array([-65504, 65504, 0, 1], np.float32), 50 * QK_K))
    c["normal*1e19"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e19)
    c["normal*1e30"] = blocks_of(rng.standard_normal(50 * QK_K) * 1e30)
    c["mixed 1e30"] = blocks_of(rng.standard_normal(50 * QK_K) * np.where(rng.random(50 * QK_K) < 0.1, 1e30, 1.0))
    c["near max float"] = blocks_of(rng.uniform(-3.4e38, 3.4e38, 20 * QK_K))
    # every magnitude at once: per-value exponents over the whole float32 range, per-group ones, rare huge values,
    # and integers times powers of ten (ties at every scale)
    with np.errstate(over="ignore"):
        wide = (rng.standard_normal(800 * QK_K) * 10.0 ** rng.uniform(-45, 38, 800 * QK_K)).astype(np.float32)
        c["wide exponents"] = blocks_of(wide[np.isfinite(wide)][: 400 * QK_K])
        grp = np.repeat(rng.standard_normal(200 * 16) * 10.0 ** rng.uniform(-40, 38, 200 * 16), 16).astype(np.float32)
        grp[rng.random(grp.size) < 0.3] = 0
        c["wide groups"] = blocks_of(grp)
        rare = rng.standard_normal(200 * QK_K).astype(np.float32)
        hit = rng.random(rare.size) < 0.02
        rare[hit] = (rare[hit] * 10.0 ** rng.uniform(2, 38, int(hit.sum()))).astype(np.float32)
        c["rare huge"] = blocks_of(rare)
    ints = rng.integers(-20, 21, (120, QK_K)).astype(np.float32)
    c["ints*10^k"] = (ints * (10.0 ** np.arange(-44, 28, 0.6)[:120, None])).astype(np.float32)
    # sparse groups: mostly zeros
    sparse = rng.standard_normal(200 * QK_K).astype(np.float32)
    sparse[rng.random(sparse.size) < 0.9] = 0
    c["sparse"] = blocks_of(sparse)
    # values that came from f16 / bf16 checkpoints, decoded exactly (random finite bit patterns: every exponent)
    h = rng.integers(0, 1 << 16, 600 * QK_K, dtype=np.uint32).astype(np.uint16)
    hf = h.view(np.float16)
    hf = hf[np.isfinite(hf)][: 500 * QK_K]
    c["f16 bits"] = blocks_of(hf.astype(np.float32))
    c["f16 normal"] = blocks_of((rng.standard_normal(300 * QK_K) * 0.02).astype(np.float16).astype(np.float32))
    b = rng.integers(0, 1 << 16, 600 * QK_K, dtype=np.uint32).astype(np.uint16)
    bf = decode_bf16(b)
    c["bf16 bits"] = blocks_of(bf[np.isfinite(bf)][: 500 * QK_K])
    bn = (rng.standard_normal(300 * QK_K).astype(np.float32) * np.float32(0.05)).view(np.uint32) >> 16
    c["bf16 normal"] = blocks_of(decode_bf16(bn.astype(np.uint16)))
    return c


CASES = finite_cases()


def first_mismatch(got: np.ndarray, want: np.ndarray) -> int | None:
    rows = np.flatnonzero((got != want).any(axis=1))
    return None if rows.size == 0 else int(rows[0])


def test_cases_cover_a_million_values() -> None:
    n = sum(a.size for a in CASES.values())
    assert n >= 1_000_000, n
    for name, a in CASES.items():
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.shape[1] == QK_K, name
        assert np.isfinite(a).all(), name


@pytest.mark.parametrize("type_name", TYPES)
def test_bytes_match_ggml(type_name: str) -> None:
    """All finite cases, one kernel call over everything (so chunking is crossed), then each case against ggml."""
    fn, size = KERNELS[type_name]
    names = list(CASES)
    allx = np.concatenate([CASES[k] for k in names])
    got = fn(allx)
    assert got.shape == (allx.shape[0], size) and got.dtype == np.uint8
    want = ggml_quantize(type_name, allx)
    start = 0
    bad: list[str] = []
    for k in names:
        n = CASES[k].shape[0]
        i = first_mismatch(got[start : start + n], want[start : start + n])
        if i is not None:
            diff = np.flatnonzero(got[start + i] != want[start + i])
            bad.append(f"{k}: block {i} differs at bytes {diff[:12].tolist()} "
                       f"(got {got[start + i, diff[:6]].tolist()}, ggml {want[start + i, diff[:6]].tolist()})")
        start += n
    assert not bad, f"{type_name} differs from ggml:\n" + "\n".join(bad)


def random_mixture(seed: int, nb: int) -> np.ndarray:
    """``nb`` finite blocks, each from a randomly chosen family: raw f32 / bf16 bit patterns, per-value or
    per-group exponents, integers times a power of ten, rare huge values, or a few special values."""
    rng = np.random.default_rng(seed)
    out = np.empty((nb, QK_K), np.float32)
    specials = np.array([0, 1, -1, 2, -3, 4, 0.5, 65504, -65504, 1e-15, 1e-16, 1e-40, 3e38], np.float32)
    with np.errstate(over="ignore"):
        for b in range(nb):
            kind = int(rng.integers(0, 7))
            if kind == 0:
                v = rng.integers(0, 1 << 32, QK_K, dtype=np.uint64).astype(np.uint32).view(np.float32)
            elif kind == 1:
                v = decode_bf16(rng.integers(0, 1 << 16, QK_K, dtype=np.uint32).astype(np.uint16))
            elif kind == 2:
                v = (rng.standard_normal(QK_K) * 10.0 ** rng.uniform(-45, 38, QK_K)).astype(np.float32)
            elif kind == 3:
                v = np.repeat(rng.standard_normal(16) * 10.0 ** rng.uniform(-40, 38, 16), 16).astype(np.float32)
            elif kind == 4:
                v = (rng.integers(-20, 21, QK_K) * 10.0 ** rng.integers(-44, 30)).astype(np.float32)
            elif kind == 5:
                v = rng.standard_normal(QK_K).astype(np.float32)
                hit = rng.random(QK_K) < 0.02
                v[hit] = (v[hit] * 10.0 ** rng.uniform(2, 38, int(hit.sum()))).astype(np.float32)
            else:
                v = rng.choice(specials, QK_K)
            out[b] = np.where(np.isfinite(v), v, np.float32(0))
    return out


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_mixtures_match_ggml(type_name: str, seed: int) -> None:
    fn, _ = KERNELS[type_name]
    x = random_mixture(seed, 1000)
    got, want = fn(x), ggml_quantize(type_name, x)
    i = first_mismatch(got, want)
    assert i is None, f"{type_name} seed {seed}: block {i} differs from ggml: {x[i].tolist()}"


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("nb", [0, 1, 3, 257])
def test_block_counts(type_name: str, nb: int) -> None:
    """Any number of blocks, including none and counts that straddle the internal chunk size."""
    fn, size = KERNELS[type_name]
    x = blocks_of(np.random.default_rng(nb).standard_normal(nb * QK_K))
    got = fn(x)
    assert got.shape == (nb, size)
    if nb:
        np.testing.assert_array_equal(got, ggml_quantize(type_name, x))


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_policy(type_name: str) -> None:
    """A block with any NaN/Inf -> zeros except d = 0x7E00; finite blocks around it are exactly ggml's."""
    fn, size = KERNELS[type_name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, QK_K)).astype(np.float32)
    bad = np.zeros(40, bool)
    for blk, val, pos in [(0, np.nan, 0), (3, np.inf, 255), (4, -np.inf, 17), (10, np.nan, 128), (39, np.inf, 1)]:
        x[blk, pos] = val
        bad[blk] = True
    x[20] = np.nan  # a whole block
    bad[20] = True
    x[21, :] = 65504.0  # finite extremes next door stay ggml's
    x[21, 5] = np.inf
    bad[21] = True
    got = fn(x)
    expect_bad = np.zeros(size, np.uint8)
    expect_bad[size - 2 : size] = np.array([F16_NAN], "<u2").view(np.uint8)
    for i in np.flatnonzero(bad):
        np.testing.assert_array_equal(got[i], expect_bad, err_msg=f"block {i}")
    good = np.ascontiguousarray(x[~bad])
    np.testing.assert_array_equal(got[~bad], ggml_quantize(type_name, good))
    # the policy block dequantizes to NaN, never to finite numbers
    deq = gguf_dequantize(got[bad], GGMLQuantizationType[type_name])
    assert np.isnan(deq).all()


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_input_is_not_modified(type_name: str) -> None:
    fn, _ = KERNELS[type_name]
    x = np.ones((2, QK_K), np.float32)
    x[1, 3] = np.nan
    before = x.copy()
    fn(x)
    np.testing.assert_array_equal(x.view(np.uint32), before.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_roundtrip_error(type_name: str) -> None:
    """Sanity through gguf-py's dequantizer: relative RMS error of Gaussian data is what the bit width allows."""
    fn, _ = KERNELS[type_name]
    x = blocks_of(np.random.default_rng(3).standard_normal(256 * QK_K))
    deq = gguf_dequantize(fn(x), GGMLQuantizationType[type_name]).reshape(x.shape)
    rel = float(np.sqrt(np.mean((deq - x) ** 2) / np.mean(x**2)))
    assert rel < {"Q3_K": 0.2, "Q6_K": 0.02}[type_name], rel
    assert np.array_equal(gguf_dequantize(fn(np.zeros((1, QK_K), np.float32)), GGMLQuantizationType[type_name]),
                          np.zeros((1, QK_K), np.float32))


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, QK_K), np.float64),
        np.zeros((2, QK_K), np.float16),
        np.zeros((2, 128), np.float32),
        np.zeros(QK_K, np.float32),
        np.zeros((QK_K, 4), np.float32).T,
        [[0.0] * QK_K],
    ],
    ids=["float64", "float16", "short rows", "1-D", "not contiguous", "list"],
)
def test_rejects_bad_arguments(type_name: str, bad: object) -> None:
    fn, _ = KERNELS[type_name]
    with pytest.raises(KernelArgumentError):
        fn(bad)  # type: ignore[arg-type]


def test_doctests() -> None:
    res = doctest.testmod(kquants_qx, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0

"""Compiled Q4_0/Q4_1/Q5_0/Q5_1 and Q2_K..Q6_K kernels (l1quant/kernels/_kquants.c, ``_native.kquant``) against
ggml itself.

Every finite case is byte-compared with ``ggml_quantize_chunk`` (tests/ggml_oracle.py: the ``quantize_row_*_ref``
path, no importance matrix), for float32, float16 and bf16 sources (half sources are decoded exactly to float32
for the oracle). The cases aim at what decides bytes: float32 operation order, ``nearest_int`` ties, f16 rounding
of the scales, the 1e-15 all-zero threshold, subnormal scales whose inverse overflows, overflow inside the
searches (x*x = Inf for |x| > 1.8e19), constant and all-zero blocks. Over 10**6 values per type (checked), plus
a random fuzz corpus of 10**6 values per type at many scales.

Every code path the machine supports runs every check (``PATHS``: portable C, the SSE2 code, and the K-quant group
fits compiled for AVX2 and AVX-512, picked at run time; see kernels/_native.py); rows whose block count is not a
multiple of a path's batch (the lane paths fit 16 or 32 groups per call and pad a short last batch) are checked
too, and the dispatch is checked against the CPU's flags and the binary against fused multiply-adds.
Non-finite blocks follow l1quant's policy: zero bytes, every f16 scale field = 0x7E00, index of the first bad value.

The compiled module is optional: missing, these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from reference import unavailable

from l1quant.kernels import _native

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# every code path this build and CPU support (all give the same bytes); "portable" alone when the module is missing,
# so that the tests still run and skip (or fail under CI) through kernel()
PATHS = list(_native.KQUANT_PATHS) or ["portable"]
# byte offsets of the f16 scale fields (d, and m/dmin) inside one block: the ones the NaN policy sets to 0x7E00
SCALE_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
NCOLS = 1024  # a multiple of every block size; each row spans several blocks of every type
EPS = np.float32(1e-15)  # ggml's GROUP_MAX_EPS


def geometry(type_name: str) -> tuple[int, int, int]:
    """(ggml type number, values per block, bytes per block)."""
    qt = GGMLQuantizationType[type_name]
    block, size = GGML_QUANT_SIZES[qt]
    return int(qt), block, size


def kernel() -> Any:
    """The compiled module's wrapper, or skip (fail under CI) when it is not built."""
    if not _native.AVAILABLE:
        unavailable("l1quant.kernels._fastq8 is not available (build it: python setup.py build_ext --inplace; "
                    "or L1QUANT_NO_NATIVE is set)")
    if not hasattr(_native._mod, "kquant"):
        unavailable("l1quant.kernels._fastq8 predates kquant: rebuild it (python setup.py build_ext --inplace)")
    return _native


def run(type_name: str, x: np.ndarray, *, path: str | None = None, pad: int = 0) -> tuple[np.ndarray, int]:
    """Quantize (rows, ncols) ``x`` with the compiled kernel on code path ``path`` (default: the module's):
    (uint8 (rows, row bytes), first non-finite index).

    ``pad`` > 0 writes into a wider buffer (row stride = row bytes + pad) and checks the padding is untouched."""
    t, block, size = geometry(type_name)
    rows, n = x.shape
    row_bytes = n // block * size
    buf = np.full((rows, row_bytes + pad), 0xA5, np.uint8)
    out = buf[:, :row_bytes]
    first = kernel().kquant(t, np.ascontiguousarray(x), out, isa=path)
    assert (buf[:, row_bytes:] == 0xA5).all(), "kernel wrote past the row"
    return np.ascontiguousarray(out), first


def rows_of(values: np.ndarray) -> np.ndarray:
    """Flat values (length a multiple of NCOLS) -> float32 C-contiguous (rows, NCOLS)."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(-1, NCOLS))


def decode_f16(h: np.ndarray) -> np.ndarray:
    return h.view(np.float16).astype(np.float32)


def decode_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def finite_f32_cases() -> dict[str, np.ndarray]:
    """Named float32 (rows, NCOLS) inputs, all finite."""
    rng = np.random.default_rng(0x51CE)
    c: dict[str, np.ndarray] = {}
    for scale in (1e-3, 1.0, 100.0, 1e4):
        c[f"normal*{scale:g}"] = rows_of(rng.standard_normal(100 * NCOLS) * scale)
    c["uniform[-1,1)"] = rows_of(rng.uniform(-1, 1, 60 * NCOLS))
    c["uniform[0,5)"] = rows_of(rng.uniform(0, 5, 20 * NCOLS))  # one-signed: the min/offset paths
    c["uniform(-5,0]"] = rows_of(-rng.uniform(0, 5, 20 * NCOLS))
    c["zero"] = np.zeros((2, NCOLS), np.float32)
    c["negative zero"] = np.full((1, NCOLS), -0.0, np.float32)
    consts = np.array([1.0, -1.0, 0.5, -3.7, 1e-3, 7.0, 8.0, -16.0, 1e-14, -1e-15, 1e-16, 65504.0, -65504.0,
                       1e20, -1e30, 3e38, -3e38, 1e-40, -1e-45, 6e-8], np.float32)
    c["constant blocks"] = np.repeat(consts, 256).reshape(-1, NCOLS)  # every 256-block constant
    c["constant groups"] = rows_of(np.repeat(rng.standard_normal(60 * NCOLS // 16) * 3, 16))
    c["constant 32s"] = rows_of(np.repeat(rng.standard_normal(20 * NCOLS // 32), 32))
    one = rng.standard_normal((40, NCOLS)).astype(np.float32).reshape(-1, 32)
    one[np.arange(one.shape[0]), rng.integers(0, 32, one.shape[0])] *= np.float32(1000)
    c["one outlier per 32"] = rows_of(one)
    one = rng.standard_normal((40, NCOLS)).astype(np.float32).reshape(-1, 256)
    one[np.arange(one.shape[0]), rng.integers(0, 256, one.shape[0])] *= np.float32(-300)
    c["one outlier per 256"] = rows_of(one)
    big = (rng.standard_normal((20, NCOLS)) * 1e-3).astype(np.float32).reshape(-1, 256)
    big[np.arange(big.shape[0]), rng.integers(0, 256, big.shape[0])] = rng.choice([-65504, 65504], big.shape[0])
    c["outlier 65504"] = rows_of(big)
    # the all-zero threshold: whole blocks and single groups below, at and just above 1e-15
    c["tiny 1e-16"] = rows_of(rng.standard_normal(20 * NCOLS) * 1e-16)
    c["tiny 1e-15"] = rows_of(rng.standard_normal(20 * NCOLS) * 1e-15)
    c["tiny 1e-13"] = rows_of(rng.standard_normal(20 * NCOLS) * 1e-13)
    at = np.zeros((8, NCOLS), np.float32)
    for k, v in enumerate([EPS, np.nextafter(EPS, np.float32(0)), np.nextafter(EPS, np.float32(1)), -EPS,
                           np.float32(2e-15), np.float32(5e-16), np.float32(1e-15 / 15), np.float32(1e-15 * 63)]):
        at[k, (k % 5)::5] = v
    c["at eps"] = at
    mixed = rng.standard_normal((30, NCOLS // 16, 16)).astype(np.float32)
    mixed[:, ::2] *= np.float32(1e-17)
    mixed[:, 1::4] *= np.float32(1e-12)
    c["mixed tiny groups"] = rows_of(mixed)
    # exact ties: grids of halves/quarters/integers times powers of two land x*iscale and (x+m)/d on .5
    for e in (-20, 0, 7):
        s = np.float32(2.0**e)
        c[f"ties halves*2^{e}"] = rows_of(rng.integers(-16, 17, 40 * NCOLS).astype(np.float32) / 2 * s)
    c["ties ints"] = rows_of(rng.integers(-8, 9, 60 * NCOLS).astype(np.float32))
    c["ties 0..15"] = rows_of(rng.integers(0, 16, 40 * NCOLS).astype(np.float32))
    c["ties 0..31 halves"] = rows_of(rng.integers(0, 63, 40 * NCOLS).astype(np.float32) / 2)
    c["ties quarters"] = rows_of(rng.integers(-4, 5, 40 * NCOLS).astype(np.float32) / 4)
    sym = rng.standard_normal((20, NCOLS // 16, 16)).astype(np.float32)
    sym[:, :, 3] = np.abs(sym).max(axis=2) * np.float32(1.5)
    sym[:, :, 9] = -sym[:, :, 3]  # +max and -max in one group: the first one wins
    c["+-max"] = rows_of(sym)
    c["arange"] = rows_of(np.tile(np.arange(-512, 512, dtype=np.float32) / 8, 10))
    # subnormals: whole blocks (the scale is subnormal or 0 and 1/d overflows) and mixed with normals
    c["subnormal"] = rows_of(rng.standard_normal(20 * NCOLS) * 1e-40)
    c["subnormal 1e-44"] = rows_of(rng.standard_normal(10 * NCOLS) * 1e-44)
    c["near min normal"] = rows_of(rng.standard_normal(10 * NCOLS) * 1e-37)
    sub = rng.standard_normal((20, NCOLS)).astype(np.float32)
    sub[:, ::3] = (rng.standard_normal((20, (NCOLS + 2) // 3)) * 1e-42).astype(np.float32)
    c["subnormal mixed"] = sub
    # huge finite magnitudes: f16 scales overflow to Inf, x*x overflows inside the searches
    c["+-65504"] = rows_of(rng.choice(np.array([-65504, 65504, 0, 1, -1], np.float32), 20 * NCOLS))
    c["normal*65504"] = rows_of(np.clip(rng.standard_normal(10 * NCOLS) * 65504, -65504, 65504))
    c["normal*1e19"] = rows_of(rng.standard_normal(10 * NCOLS) * 1e19)
    c["normal*1e30"] = rows_of(rng.standard_normal(10 * NCOLS) * 1e30)
    c["mixed 1e30"] = rows_of(rng.standard_normal(10 * NCOLS) * np.where(rng.random(10 * NCOLS) < 0.1, 1e30, 1.0))
    c["near max float"] = rows_of(rng.uniform(-3.4e38, 3.4e38, 10 * NCOLS))
    # +0 and -0 mixed where zero is the block's min or max (or both): which zero the reference keeps decides the
    # sign bit of Q4_1/Q5_1's m and d
    z = rng.choice(np.array([0.0, -0.0], np.float32), (40, NCOLS))
    zb = z.reshape(-1, 32)
    kind = rng.integers(0, 4, zb.shape[0])
    for k, sign in ((1, 1), (2, -1)):  # non-negative blocks (min is a zero), non-positive blocks (max is a zero)
        keep = rng.random((int((kind == k).sum()), 32)) < 0.5
        zb[kind == k] = np.where(keep, zb[kind == k], sign * rng.uniform(0.1, 3, keep.shape))
    zb[kind == 3, rng.integers(0, 32)] = np.float32(1e-3)
    c["signed zeros"] = rows_of(zb)
    sparse = rng.standard_normal(40 * NCOLS).astype(np.float32)
    sparse[rng.random(sparse.size) < 0.9] = 0
    c["sparse"] = rows_of(sparse)
    # every block (then every 16-value group) at its own magnitude, 2**-152 .. 2**127, some one-signed, some with
    # zeroed stretches, some with an outlier
    for width, nrows in ((32, 300), (16, 100)):
        wide = rng.standard_normal((nrows * NCOLS // width, width))
        wide *= 2.0 ** rng.uniform(-152, 127, wide.shape[0])[:, None]
        pick = rng.integers(0, 5, wide.shape[0])
        wide[pick == 1] = np.abs(wide[pick == 1])
        wide[pick == 2, : width // 4] = 0
        wide[pick == 3, width // 2] *= 1e4
        c[f"wide exponents per {width}"] = rows_of(np.clip(wide, -3.4e38, 3.4e38))
    return c


def finite_half_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (source, its exact float32 decoding): float16 and bf16 (uint16 bits) sources, all finite."""
    rng = np.random.default_rng(0xF16)
    c: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    h = h[np.isfinite(h.view(np.float16))]  # every finite f16 pattern, subnormals and +-65504 included
    h = rng.permutation(np.concatenate([h, rng.choice(h, (-h.size) % NCOLS)])).reshape(-1, NCOLS)
    c["f16 all patterns"] = (h.view(np.float16), decode_f16(h))
    hn = (rng.standard_normal((60, NCOLS)) * 0.02).astype(np.float16)
    c["f16 normal"] = (hn, hn.astype(np.float32))
    b = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    b = b[np.isfinite(decode_bf16(b))]  # every finite bf16 pattern
    b = rng.permutation(np.concatenate([b, rng.choice(b, (-b.size) % NCOLS)])).reshape(-1, NCOLS)
    c["bf16 all patterns"] = (b, decode_bf16(b))
    bn = ((rng.standard_normal((60, NCOLS)).astype(np.float32) * np.float32(0.05)).view(np.uint32) >> 16)
    bn = bn.astype(np.uint16)
    c["bf16 normal"] = (bn, decode_bf16(bn))
    return c


F32_CASES = finite_f32_cases()
HALF_CASES = finite_half_cases()


@functools.lru_cache(maxsize=None)
def ggml_f32_corpus(type_name: str) -> np.ndarray:
    """ggml's bytes for the whole float32 corpus (every path is compared with the same)."""
    return ggml_quantize(type_name, np.concatenate(list(F32_CASES.values())))


def compare_cases(type_name: str, cases: dict[str, np.ndarray], srcs: dict[str, np.ndarray] | None = None,
                  *, path: str | None = None) -> list[str]:
    """Concatenate the cases, quantize once with ggml (float32) and once with the kernel (from ``srcs`` if given,
    else the float32 arrays), and name the cases whose bytes differ."""
    names = list(cases)
    if cases is F32_CASES:
        want = ggml_f32_corpus(type_name)
    else:
        want = ggml_quantize(type_name, np.concatenate([cases[k] for k in names]))
    src = np.concatenate([(srcs or cases)[k] for k in names])
    got, first = run(type_name, src, path=path)
    assert first == -1
    bad, start = [], 0
    for k in names:
        n = cases[k].shape[0]
        diff = np.flatnonzero((got[start : start + n] != want[start : start + n]).any(axis=1))
        if diff.size:
            bad.append(f"{k} (row {int(diff[0])}, {diff.size} rows differ)")
        start += n
    return bad


def test_cases_cover_a_million_values_per_type() -> None:
    n = sum(a.size for a in F32_CASES.values()) + sum(s.size for s, _ in HALF_CASES.values())
    assert n >= 1_000_000, n
    for name, a in F32_CASES.items():
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.shape[1] == NCOLS, name
        assert np.isfinite(a).all(), name
    for name, (s, f) in HALF_CASES.items():
        assert s.shape == f.shape and np.isfinite(f).all(), name


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_f32_bytes_match_ggml(type_name: str, path: str) -> None:
    kernel()
    assert compare_cases(type_name, F32_CASES, path=path) == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_half_sources_match_ggml_on_decoded_values(type_name: str, path: str) -> None:
    kernel()
    f32 = {k: f for k, (_, f) in HALF_CASES.items()}
    for k, (s, _) in HALF_CASES.items():  # one call per source kind: they cannot be concatenated together
        assert compare_cases(type_name, {k: f32[k]}, {k: s}, path=path) == [], k


def fuzz_corpus() -> np.ndarray:
    """10**6 random float32 values (rows of 4096) at many scales: per row a scale 2**U(-40, 40) (one row in 8 at
    2**U(-140, 120)), a shape (normal, uniform, one-signed, heavy-tailed, rounded to a grid so ties happen, sparse
    with exact zeros and -0), and a few outliers."""
    rng = np.random.default_rng(0xF022)
    rows, n = 245, 4096
    x = np.empty((rows, n), np.float64)
    for r in range(rows):
        kind = r % 6
        if kind == 0:
            v = rng.standard_normal(n)
        elif kind == 1:
            v = rng.uniform(-1, 1, n)
        elif kind == 2:
            v = np.abs(rng.standard_normal(n)) * rng.choice([-1, 1])
        elif kind == 3:
            v = rng.standard_t(2, n)
        elif kind == 4:
            v = np.round(rng.standard_normal(n) * 8) / 8
        else:
            v = rng.standard_normal(n) * (rng.random(n) < 0.3) * rng.choice([-1.0, 1.0], n)
        v[rng.integers(0, n, 3)] *= rng.choice([30.0, -1000.0])
        e = rng.uniform(-140, 120) if r % 8 == 7 else rng.uniform(-40, 40)
        x[r] = v * 2.0**e
    return np.clip(x, -3.4e38, 3.4e38).astype(np.float32)


FUZZ = fuzz_corpus()


@functools.lru_cache(maxsize=None)
def ggml_fuzz(type_name: str) -> np.ndarray:
    return ggml_quantize(type_name, FUZZ)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_fuzz_matches_ggml(type_name: str, path: str) -> None:
    """A million random values per type and path at scales from subnormal to 2**120."""
    kernel()
    assert FUZZ.size >= 1_000_000 and np.isfinite(FUZZ).all()
    got, first = run(type_name, FUZZ, path=path)
    assert first == -1
    bad = np.flatnonzero((got != ggml_fuzz(type_name)).any(axis=1))
    assert bad.size == 0, f"{bad.size} rows differ, first {int(bad[0])}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_row_lengths_off_the_batch_size(type_name: str, path: str) -> None:
    """Rows of 1..9 blocks, so the lane paths' batches (1, 2 or 4 super-blocks) end short: the padded tail must not
    leak into the bytes, with non-finite blocks at the start, middle and end of batches, from float32 and float16
    (the widening buffer) sources."""
    kernel()
    _, block, _ = geometry(type_name)
    rng = np.random.default_rng(block)
    for nblocks in range(1, 10):
        x = (rng.standard_normal((5, nblocks * block)) * rng.choice([1e-3, 1.0, 300.0], (5, 1))).astype(np.float32)
        x[1, -1] = np.nan  # last block of a row
        x[2, 0] = np.inf  # first block
        x[3, (nblocks // 2) * block + 3] = -np.inf
        want = expected_with_policy(type_name, x)
        got, first = run(type_name, x, path=path, pad=7)
        assert first == 2 * x.shape[1] - 1, nblocks  # row 1, last value
        np.testing.assert_array_equal(got, want, err_msg=f"{nblocks} blocks")
        h = x.astype(np.float16)
        got, first = run(type_name, h, path=path)
        np.testing.assert_array_equal(got, expected_with_policy(type_name, h.astype(np.float32)),
                                      err_msg=f"{nblocks} blocks, f16")


@pytest.mark.parametrize("type_name", TYPES)
def test_wide_row_stride_gives_same_bytes(type_name: str) -> None:
    x = F32_CASES["normal*1"][:16]
    for path in PATHS:
        plain, _ = run(type_name, x, path=path)
        for pad in (1, 37, 4096):
            padded, _ = run(type_name, x, path=path, pad=pad)
            np.testing.assert_array_equal(padded, plain)
        np.testing.assert_array_equal(plain, ggml_quantize(type_name, x))


def expected_with_policy(type_name: str, x: np.ndarray) -> np.ndarray:
    """ggml's bytes for the finite blocks; for a block with NaN/Inf: zeros and each f16 scale field = 0x7E00.
    (Blocks are quantized independently, so ggml runs on a copy where the bad blocks are zeroed.)"""
    _, block, size = geometry(type_name)
    rows, n = x.shape
    blocks = x.reshape(rows, n // block, block)
    bad = ~np.isfinite(blocks).all(axis=2)
    clean = np.where(bad[:, :, None], np.float32(0), blocks).reshape(rows, n)
    want = ggml_quantize(type_name, clean).reshape(rows, n // block, size)
    poisoned = np.zeros(size, np.uint8)
    for off in SCALE_FIELDS[type_name]:
        poisoned[off : off + 2] = (0x00, 0x7E)
    want[bad] = poisoned
    return want.reshape(rows, -1)


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_blocks_follow_policy(type_name: str) -> None:
    kernel()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, NCOLS)).astype(np.float32)
    x[0, 5] = np.nan
    x[0, 7] = np.inf  # same block, later: the index stays at the NaN
    x[1, NCOLS - 1] = -np.inf  # last value of a row
    x[3, 300] = np.inf
    x[3, 301:340] = np.nan  # spans a 32-block boundary
    x[5, 0] = -np.nan  # sign bit set
    want = expected_with_policy(type_name, x)
    for path in PATHS:
        got, first = run(type_name, x, path=path, pad=3)
        assert first == 5, path
        np.testing.assert_array_equal(got, want, err_msg=path)
    # only the later rows bad: the flat index counts whole rows
    got, first = run(type_name, x[1:])
    assert first == NCOLS - 1
    np.testing.assert_array_equal(got, want[1:])
    y = x[2:3].copy()
    y[0, -1] = np.inf  # the very last value
    got, first = run(type_name, y)
    assert first == NCOLS - 1
    np.testing.assert_array_equal(got, expected_with_policy(type_name, y))


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_half_sources(type_name: str) -> None:
    kernel()
    rng = np.random.default_rng(8)
    h = (rng.standard_normal((3, NCOLS)) * 0.1).astype(np.float16)
    hb = h.view(np.uint16).copy()
    hb[1, 40] = 0x7C00  # +Inf
    hb[1, 700] = 0xFE01  # a NaN with payload
    hb[2, 255] = 0xFC00  # -Inf
    f = decode_f16(hb)
    b = (rng.standard_normal((3, NCOLS)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    b[0, 511] = 0x7F80  # +Inf
    b[2, 3] = 0xFFC1  # NaN
    for path in PATHS:
        got, first = run(type_name, hb.view(np.float16), path=path)
        assert first == NCOLS + 40
        np.testing.assert_array_equal(got, expected_with_policy(type_name, f), err_msg=path)
        got, first = run(type_name, b, path=path)
        assert first == 511
        np.testing.assert_array_equal(got, expected_with_policy(type_name, decode_bf16(b)), err_msg=path)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_K", "Q6_K"])
def test_threads_give_same_bytes(type_name: str) -> None:
    """The kernel releases the GIL and keeps no shared state: concurrent calls give the single-call bytes."""
    kernel()
    xs = [F32_CASES["normal*1"][16 * i : 16 * i + 16] for i in range(4)]
    want = [ggml_quantize(type_name, x) for x in xs]
    got: list[np.ndarray | None] = [None] * 4

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = run(type_name, xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_bad_arguments_raise() -> None:
    k = kernel()
    x = np.zeros((2, 256), np.float32)
    out = np.zeros((2, 144), np.uint8)
    with pytest.raises(ValueError, match="unsupported ggml type"):
        k.kquant(int(GGMLQuantizationType.IQ4_NL), x, out)
    with pytest.raises(ValueError, match="multiple of 256"):
        k.kquant(int(GGMLQuantizationType.Q4_K), np.zeros((1, 96), np.float32), out)
    with pytest.raises(ValueError, match="multiple of 32"):
        k.kquant(int(GGMLQuantizationType.Q4_0), np.zeros((1, 48), np.float32), out)
    with pytest.raises(ValueError, match="smaller than a quantized row"):
        k.kquant(int(GGMLQuantizationType.Q4_K), x, np.zeros((2, 100), np.uint8)[:, :72])
    assert k.kquant(int(GGMLQuantizationType.Q4_K), np.zeros((0, 256), np.float32), out[:0]) == -1
    for bogus in ("avx1024", "SSE2"):
        with pytest.raises(ValueError, match="code path"):
            k.kquant(int(GGMLQuantizationType.Q4_K), x, out, isa=bogus)
        with pytest.raises(ValueError, match="code path"):
            k.kquant(int(GGMLQuantizationType.Q4_K), x[:0], out[:0], isa=bogus)


def test_default_path_and_environment_switch() -> None:
    """L1QUANT_KQUANT_ISA names the path (case and blanks ignored); unset, empty or "auto": the fastest one."""
    k = kernel()
    assert k.KQUANT_PATHS[0] == "portable" and set(k.KQUANT_PATHS) <= set(k.KQUANT_PATH_NAMES)
    assert list(k.KQUANT_PATHS) == [p for p in k.KQUANT_PATH_NAMES if p in k.KQUANT_PATHS]  # fastest last
    best = k.KQUANT_PATHS[-1]
    for env in ({}, {"L1QUANT_KQUANT_ISA": ""}, {"L1QUANT_KQUANT_ISA": "auto"}):
        assert k.default_kquant_path(env) == best
    for path in k.KQUANT_PATH_NAMES:
        assert k.default_kquant_path({"L1QUANT_KQUANT_ISA": f" {path.upper()} "}) == path
    # what this process runs by default, and that lanes=False still means the portable code
    want = k.default_kquant_path(__import__("os").environ)
    assert k.KQUANT_PATH == want
    x = F32_CASES["normal*1"][:4]
    t, block, size = geometry("Q4_K")
    a, b = np.empty((4, NCOLS // block * size), np.uint8), np.empty((4, NCOLS // block * size), np.uint8)
    k.kquant(t, x, a, lanes=False)
    k.kquant(t, x, b, isa="portable")
    np.testing.assert_array_equal(a, b)


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_paths_follow_the_cpu() -> None:
    """On x86-64 (GCC/Clang build) the dispatch offers sse2, plus avx2 / avx512 exactly when the CPU has them: a
    path silently missing would leave its code untested and unused."""
    k = kernel()
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    want = ["portable", "sse2"]
    if "avx2" in flags:
        want.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        want.append("avx512")
    assert list(k.KQUANT_PATHS) == want


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_binary_has_no_fused_multiply_add_and_baseline_code_stays_baseline() -> None:
    """ggml's reference rounds every product and sum separately: no FMA instruction anywhere in the module. The
    portable and sse2 entry points (and the row driver) must run on any x86-64: no VEX/EVEX (AVX) instructions;
    the avx2 ones must not touch 512-bit registers."""
    kernel()
    objdump = shutil.which("objdump")
    so = getattr(_native._mod, "__file__", None)
    if objdump is None or so is None:
        pytest.skip("objdump or the module's file is not available")
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", so], capture_output=True, text=True,
                          check=True).stdout
    funcs: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
        elif line.startswith(" ") and "\t" in line:
            cur.append(line.split("\t", 1)[1])
    fma = [f for f, ins in funcs.items() if any(re.match(r"v?f(n)?m(add|sub)", i) for i in ins)]
    assert fma == []
    for ty in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"):
        for name in (f"{ty}_portable", f"{ty}_sse2", f"{ty}_avx2", f"{ty}_avx512"):
            assert name in funcs, f"{name} missing (inlined away or renamed?)"
        for name in (f"{ty}_portable", f"{ty}_sse2"):
            avx = [i for i in funcs[name] if re.match(r"v[a-z]", i) or "%ymm" in i or "%zmm" in i]
            assert avx == [], (name, avx[:3])
        assert not any("%zmm" in i for i in funcs[f"{ty}_avx2"])
        assert any("%zmm" in i for i in funcs[f"{ty}_avx512"])

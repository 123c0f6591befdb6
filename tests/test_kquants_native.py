"""Compiled Q4_0/Q4_1/Q5_0/Q5_1 and Q2_K..Q6_K kernels (l1quant/kernels/_kquants.c, ``_native.kquant``) against
ggml itself.

Every finite case is byte-compared with ``ggml_quantize_chunk`` (tests/ggml_oracle.py: the ``quantize_row_*_ref``
path, no importance matrix), for float32, float16 and bf16 sources (half sources are decoded exactly to float32
for the oracle). The cases aim at what decides bytes: float32 operation order, ``nearest_int`` ties, f16 rounding
of the scales, the 1e-15 all-zero threshold, subnormal scales whose inverse overflows, overflow inside the
searches (x*x = Inf for |x| > 1.8e19), constant and all-zero blocks. Over 10**6 values per type (checked).
All types but Q3_K have an SSE2 path (vector Q4_0..Q5_1 blocks, four-groups-at-once K fits) next to the portable
C one that non-x86 builds run; both are checked against ggml.
Non-finite blocks follow l1quant's policy: zero bytes, every f16 scale field = 0x7E00, index of the first bad value.

The compiled module is optional: missing, these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from ggml_oracle import ggml_quantize
from reference import unavailable

from l1quant.kernels import _native

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LANE_TYPES = [t for t in TYPES if t != "Q3_K"]  # the types with an SSE2 path (lanes=False: the portable C)
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


def run(type_name: str, x: np.ndarray, *, lanes: bool = True, pad: int = 0) -> tuple[np.ndarray, int]:
    """Quantize (rows, ncols) ``x`` with the compiled kernel: (uint8 (rows, row bytes), first non-finite index).

    ``pad`` > 0 writes into a wider buffer (row stride = row bytes + pad) and checks the padding is untouched."""
    t, block, size = geometry(type_name)
    rows, n = x.shape
    row_bytes = n // block * size
    buf = np.full((rows, row_bytes + pad), 0xA5, np.uint8)
    out = buf[:, :row_bytes]
    first = kernel().kquant(t, np.ascontiguousarray(x), out, lanes=lanes)
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


def compare_cases(type_name: str, cases: dict[str, np.ndarray], srcs: dict[str, np.ndarray] | None = None,
                  *, lanes: bool = True) -> list[str]:
    """Concatenate the cases, quantize once with ggml (float32) and once with the kernel (from ``srcs`` if given,
    else the float32 arrays), and name the cases whose bytes differ."""
    names = list(cases)
    want = ggml_quantize(type_name, np.concatenate([cases[k] for k in names]))
    src = np.concatenate([(srcs or cases)[k] for k in names])
    got, first = run(type_name, src, lanes=lanes)
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


@pytest.mark.parametrize("type_name", TYPES)
def test_f32_bytes_match_ggml(type_name: str) -> None:
    kernel()
    assert compare_cases(type_name, F32_CASES) == []


@pytest.mark.parametrize("type_name", LANE_TYPES)
def test_portable_path_matches_ggml(type_name: str) -> None:
    """The portable C path (lanes=False: what non-x86 builds run) gives ggml's bytes too."""
    kernel()
    assert compare_cases(type_name, F32_CASES, lanes=False) == []


@pytest.mark.parametrize("type_name", TYPES)
def test_half_sources_match_ggml_on_decoded_values(type_name: str) -> None:
    kernel()
    f32 = {k: f for k, (_, f) in HALF_CASES.items()}
    for k, (s, _) in HALF_CASES.items():  # one call per source kind: they cannot be concatenated together
        assert compare_cases(type_name, {k: f32[k]}, {k: s}) == [], k
    if type_name in LANE_TYPES:
        k = "bf16 all patterns"
        assert compare_cases(type_name, {k: f32[k]}, {k: HALF_CASES[k][0]}, lanes=False) == []


@pytest.mark.parametrize("type_name", TYPES)
def test_wide_row_stride_gives_same_bytes(type_name: str) -> None:
    x = F32_CASES["normal*1"][:16]
    plain, _ = run(type_name, x)
    for pad in (1, 37, 4096):
        padded, _ = run(type_name, x, pad=pad)
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
    for lanes in (True, False):
        got, first = run(type_name, x, lanes=lanes, pad=3)
        assert first == 5
        np.testing.assert_array_equal(got, want)
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
    got, first = run(type_name, hb.view(np.float16))
    assert first == NCOLS + 40
    np.testing.assert_array_equal(got, expected_with_policy(type_name, f))
    b = (rng.standard_normal((3, NCOLS)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    b[0, 511] = 0x7F80  # +Inf
    b[2, 3] = 0xFFC1  # NaN
    got, first = run(type_name, b)
    assert first == 511
    np.testing.assert_array_equal(got, expected_with_policy(type_name, decode_bf16(b)))


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

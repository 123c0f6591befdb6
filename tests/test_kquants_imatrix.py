"""Quantization with importance weights (kernels/kquants_imatrix.py, numpy; ``_native.kquant_imatrix``, compiled)
against ggml itself: ``ggml_quantize_chunk(type, ..., imatrix)`` through tests/ggml_oracle.py, which runs ggml's
``quantize_row_<type>_impl`` searches.

Every type with a weighted search (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) is byte-compared on a
corpus crossing data kinds (normal at scales 1e-8..1e4, near-subnormal, +-65504 and other huge values, ties,
all-zero and constant blocks, outliers, one-signed rows, bf16-rounded) with weight kinds (uniform, random at
scales 1e-20..1e20, some zeros, all zeros, one huge column, subnormal, all ones, log-normal): over 10**6 values
per type, on the numpy path and on every compiled code path the machine runs (portable, SSE2, AVX2, AVX-512:
the lane paths run the affine fits several groups at a time). Row lengths that leave a lane batch short, float16
and bf16 sources, the non-finite policy, the NULL-imatrix rule (ggml runs ``_ref`` for every type then) and bad
weight vectors are covered too.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from reference import unavailable

from l1quant.kernels import KernelArgumentError, _native, get_quant_type
from l1quant.kernels.kquants_imatrix import IMATRIX_TYPES, quantize_imatrix

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
PATHS = list(_native.KQUANT_PATHS) or ["portable"]
SCALE_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,),
                "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
NCOLS = 1024
ROWS_PER_KIND = 16
DATA_KINDS = ["normal", "tiny", "huge", "pm65504", "ties", "zero_blocks", "constant_blocks", "outliers", "positive",
              "negative", "bf16_rounded"]
WEIGHT_KINDS = ["uniform", "scaled", "some_zero", "all_zero", "huge_column", "subnormal", "ones", "lognormal"]


def make_data(kind: str, rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """float32 (rows, n) of one data kind; every row a different draw (scales vary by row for "normal")."""
    shape = (rows, n)
    if kind == "normal":
        scale = (10.0 ** rng.integers(-8, 5, size=(rows, 1))).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32) * scale
    if kind == "tiny":  # down to the subnormal range: inverse scales overflow inside the searches
        return (rng.standard_normal(shape) * 1e-38).astype(np.float32)
    if kind == "huge":
        return np.clip(rng.standard_normal(shape) * 3e4, -65504, 65504).astype(np.float32)
    if kind == "pm65504":
        return rng.choice(np.array([-65504.0, 65504.0, 0.0, 1.0], np.float32), shape)
    if kind == "ties":  # many equal values and exact halves: nearest_int ties, strict comparisons
        return rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5)
    if kind == "zero_blocks":
        x = rng.standard_normal(shape).astype(np.float32)
        x.reshape(-1, 32)[rng.random(rows * n // 32) < 0.5] = 0
        return x
    if kind == "constant_blocks":
        return np.repeat(rng.standard_normal(rows * n // 32).astype(np.float32), 32).reshape(shape)
    if kind == "outliers":
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[rng.integers(0, rows * n, 2 * rows)] *= 1000
        return x
    if kind == "positive":
        return (np.abs(rng.standard_normal(shape)) + 1).astype(np.float32)
    if kind == "negative":
        return (-np.abs(rng.standard_normal(shape)) - 1).astype(np.float32)
    if kind == "bf16_rounded":
        bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return bits.view(np.float32)
    raise AssertionError(kind)


def make_weights(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 (n,) importance weights of one kind."""
    if kind == "uniform":
        return rng.random(n).astype(np.float32)
    if kind == "scaled":
        return (rng.random(n) * 10.0 ** rng.integers(-20, 21)).astype(np.float32)
    if kind == "some_zero":
        w = rng.random(n).astype(np.float32)
        w[rng.random(n) < 0.5] = 0
        return w
    if kind == "all_zero":
        return np.zeros(n, np.float32)
    if kind == "huge_column":
        w = rng.random(n).astype(np.float32)
        w[rng.integers(n, size=3)] = np.float32(1e30), np.float32(1e12), np.float32(1e6)
        return w
    if kind == "subnormal":
        return (rng.random(n) * 1e-40).astype(np.float32)
    if kind == "ones":
        return np.ones(n, np.float32)
    if kind == "lognormal":
        return np.exp(rng.standard_normal(n) * 3).astype(np.float32)
    raise AssertionError(kind)


@functools.lru_cache(maxsize=None)
def corpus(weight_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (len(DATA_KINDS) * ROWS_PER_KIND, NCOLS), weights (NCOLS,)): every data kind under one weight
    vector (the weights are per column, so one vector per call)."""
    rng = np.random.default_rng(WEIGHT_KINDS.index(weight_kind) + 1000)
    x = np.concatenate([make_data(k, rng, ROWS_PER_KIND, NCOLS) for k in DATA_KINDS])
    return x, make_weights(weight_kind, rng, NCOLS)


@functools.lru_cache(maxsize=None)
def expected(type_name: str, weight_kind: str) -> np.ndarray:
    x, qw = corpus(weight_kind)
    return ggml_quantize(type_name, x, qw)


def native(type_name: str, x: np.ndarray, qw: np.ndarray, path: str | None = None) -> tuple[np.ndarray, int]:
    if not _native.AVAILABLE or not hasattr(_native._mod, "kquant_imatrix"):
        unavailable("l1quant.kernels._fastq8 with kquant_imatrix is not built (python setup.py build_ext --inplace)")
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    out = np.full((x.shape[0], x.shape[1] // block * size), 0xA5, np.uint8)
    first = _native.kquant_imatrix(int(GGMLQuantizationType[type_name]), np.ascontiguousarray(x), out, qw, isa=path)
    return out, first


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        rows = np.flatnonzero((got != want).any(axis=1))
        raise AssertionError(f"{what}: {len(rows)} rows differ from ggml (first row {rows[0]}, "
                             f"{int((got != want).sum())} bytes)")


def test_types_listed() -> None:
    assert list(IMATRIX_TYPES) == TYPES
    assert get_quant_type("q8_0").numpy_imatrix_kernel is None
    assert all(get_quant_type(t).numpy_imatrix_kernel is not None for t in TYPES)


@pytest.mark.parametrize("type_name", TYPES)
def test_numpy_matches_ggml(type_name: str) -> None:
    """The numpy path on the whole corpus (>= 10**6 values) equals ggml_quantize_chunk with the imatrix."""
    qt = get_quant_type(type_name)
    n_values = 0
    for wk in WEIGHT_KINDS:
        x, qw = corpus(wk)
        got, first = qt.quantize_checked(x, impl="numpy", imatrix=qw)
        assert first is None
        assert_same(got, expected(type_name, wk), f"{type_name} numpy, weights {wk}")
        n_values += x.size
    assert n_values >= 10**6


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_native_matches_ggml(type_name: str, path: str) -> None:
    """Every compiled code path on the whole corpus (>= 10**6 values) equals ggml_quantize_chunk with the imatrix;
    the output buffer is written exactly where it should be (no stray bytes)."""
    n_values = 0
    for wk in WEIGHT_KINDS:
        x, qw = corpus(wk)
        got, first = native(type_name, x, qw, path)
        assert first == -1
        assert_same(got, expected(type_name, wk), f"{type_name} {path}, weights {wk}")
        n_values += x.size
    assert n_values >= 10**6


@pytest.mark.parametrize("type_name", TYPES)
def test_row_lengths(type_name: str) -> None:
    """Row lengths of one block, of a few blocks (a lane batch left short: the lane paths pad it) and long rows:
    the 32-value types take sigma2 over the whole row, the K types over each super-block."""
    block = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]
    rng = np.random.default_rng(7)
    for nblocks in (1, 3, 17, 45):
        n = nblocks * block
        x = rng.standard_normal((6, n)).astype(np.float32) * np.float32(0.02)
        qw = rng.random(n).astype(np.float32)
        want = ggml_quantize(type_name, x, qw)
        assert_same(quantize_imatrix(type_name, x, qw), want, f"{type_name} numpy, {n} columns")
        for path in PATHS:
            assert_same(native(type_name, x, qw, path)[0], want, f"{type_name} {path}, {n} columns")


@pytest.mark.parametrize("type_name", TYPES)
def test_half_sources(type_name: str) -> None:
    """float16 and bf16 (uint16 bits) sources: the same bytes as ggml on their exact float32 values."""
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((8, 512)).astype(np.float32)
    qw = make_weights("lognormal", rng, 512)
    f16 = x32.astype(np.float16)
    bf16 = (x32.view(np.uint32) >> 16).astype(np.uint16)
    for src, exact in ((f16, f16.astype(np.float32)), (bf16, (bf16.astype(np.uint32) << 16).view(np.float32))):
        want = ggml_quantize(type_name, exact, qw)
        assert_same(qt.quantize(src, impl="numpy", imatrix=qw), want, f"{type_name} numpy {src.dtype}")
        if qt.native_imatrix_kernel is not None:
            assert_same(qt.quantize(src, impl="native", imatrix=qw), want, f"{type_name} native {src.dtype}")


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_blocks(type_name: str) -> None:
    """A block holding NaN/Inf: zero bytes with NaN f16 scale fields, the first bad index reported; the row's other
    blocks are what ggml writes for the row with that block zeroed (it counts as zeros in sigma2)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(11)
    n = 4 * max(block, 64)
    x = rng.standard_normal((3, n)).astype(np.float32)
    qw = rng.random(n).astype(np.float32)
    bad_block = 1
    x[1, bad_block * block + 5] = np.nan
    x[1, bad_block * block + 7] = np.inf
    x[2, n - 1] = -np.inf
    zeroed = x.copy()
    zeroed[1, bad_block * block : (bad_block + 1) * block] = 0
    zeroed[2, n - block :] = 0
    want = ggml_quantize(type_name, zeroed, qw)
    poison = np.zeros(size, np.uint8)
    for off in SCALE_FIELDS[type_name]:
        poison[off : off + 2] = (0x00, 0x7E)
    want[1, bad_block * size : (bad_block + 1) * size] = poison
    want[2, -size:] = poison
    impls = ["numpy"] + (["native"] if qt.native_imatrix_kernel is not None else [])
    for impl in impls:
        got, first = qt.quantize_checked(x, impl=impl, imatrix=qw)
        assert first == n + bad_block * block + 5, impl
        assert_same(got, want, f"{type_name} {impl} non-finite")


@pytest.mark.parametrize("type_name", [*TYPES, "Q8_0"])
def test_without_imatrix_is_the_ref_path(type_name: str) -> None:
    """ggml_quantize_chunk with a NULL imatrix runs quantize_row_<type>_ref for every type (no weighted search with
    made-up weights): imatrix=None gives those bytes, and a real imatrix changes them (except Q8_0, which has no
    weighted search and ignores it)."""
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    qw = make_weights("lognormal", rng, 512)
    plain = ggml_quantize(type_name, x)
    assert_same(qt.quantize(x), plain, f"{type_name} no imatrix")
    weighted = ggml_quantize(type_name, x, qw)
    assert_same(qt.quantize(x, imatrix=qw), weighted, f"{type_name} imatrix")
    assert np.array_equal(plain, weighted) == (type_name == "Q8_0")


def test_bad_weights_are_refused() -> None:
    qt = get_quant_type("q4_k")
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(KernelArgumentError, match=r"shape \(256,\)"):
        qt.quantize(x, imatrix=np.ones(255, np.float32))
    with pytest.raises(KernelArgumentError, match="weight 3 is not finite"):
        w = np.ones(256, np.float32)
        w[3] = np.nan
        qt.quantize(x, imatrix=w)
    with pytest.raises(KernelArgumentError, match="no importance-weighted search"):
        quantize_imatrix("Q8_0", x, np.ones(256, np.float32))


def test_environment_picks_the_path() -> None:
    """L1QUANT_KQUANT_ISA forces the imatrix kernels' code path as it does kquant's: in a child process with each
    path forced, QuantType.quantize(imatrix=) runs that path and still equals ggml."""
    if not _native.AVAILABLE or not hasattr(_native._mod, "kquant_imatrix"):
        unavailable("l1quant.kernels._fastq8 with kquant_imatrix is not built")
    x, qw = corpus("uniform")
    want = {t: expected(t, "uniform")[:16] for t in ("Q4_K", "Q5_1")}
    code = (
        "import sys, numpy as np\n"
        "from l1quant.kernels import get_quant_type, _native\n"
        "x = np.load(sys.argv[1]); qw = np.load(sys.argv[2])\n"
        "print(_native.KQUANT_PATH)\n"
        "for t in ('Q4_K', 'Q5_1'):\n"
        "    np.save(sys.argv[3] + t + '.npy', get_quant_type(t).quantize(x, imatrix=qw))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "x.npy"), x[:16])
        np.save(os.path.join(tmp, "w.npy"), qw)
        for path in PATHS:
            env = dict(os.environ, L1QUANT_KQUANT_ISA=path)
            res = subprocess.run([sys.executable, "-c", code, os.path.join(tmp, "x.npy"), os.path.join(tmp, "w.npy"),
                                  os.path.join(tmp, path)], env=env, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            assert res.stdout.strip() == path
            for t, w in want.items():
                assert_same(np.load(os.path.join(tmp, path + t + ".npy")), w, f"{t} with L1QUANT_KQUANT_ISA={path}")

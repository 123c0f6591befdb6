"""IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M (kernels/iquants2.py, kernels/iquants1.py: numpy; kernels/_iquants2.c:
compiled) against ggml itself: ``ggml_quantize_chunk`` through tests/ggml_oracle.py, with importance weights for all
five and without them for IQ2_S and IQ1_M (ggml asserts that IQ2_XXS, IQ2_XS and IQ1_S get an imatrix).

The corpus crosses data kinds (normal at scales 1e-8..1e4, near-subnormal, +-65504 and other huge values, ties,
zero and constant blocks, outliers, one-signed rows, bf16-rounded, values drawn from a handful of levels) with
weight kinds (uniform, random at scales 1e-20..1e12, some zeros, all zeros, one large column, subnormal, ones,
log-normal). Weights above ~1e20 are left out on purpose: with them ggml's neighbour searches can see only infinite
distances and abort the process (GGML_ASSERT), which would take the test run with it.

Ties: the IQ1 searches sort each group's values with glibc's qsort (stable merge sort in glibc 2.36 for these
sizes: equal values stay in index order). The "levels" and "ties" data kinds and the bf16-rounded kind make equal
values common in every group; test_tie_order_matters shows that the tie order changes ggml's bytes on that data,
so byte identity there pins the order.

The derived grid tables (kernels/iq_grids.py) are proven two ways: structurally (every grid point maps to itself,
every reachable off-grid code has a non-empty list of exactly the points at the nwant smallest distances, in
(distance, index) order, recomputed here by brute force in plain Python), and behaviourally (the corpora send
hundreds of thousands of groups through the neighbour searches, and test_every_code_searched drives every one of
the 3**8 codes through the search of each type and compares with ggml).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from reference import unavailable

from l1quant.kernels import KernelArgumentError, _native, get_quant_type
from l1quant.kernels.iq_grids import KMAP_SIZE, iq_grid
from l1quant.kernels.iquants1 import quantize_iq1

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
OPTIONAL_IMATRIX = {"IQ2_S", "IQ1_M"}
NCOLS = 1024
ROWS_PER_KIND = 10
DATA_KINDS = ["normal", "tiny", "huge", "pm65504", "ties", "levels", "near_ties", "zero_blocks", "constant_blocks",
              "outliers", "positive", "negative", "bf16_rounded", "subnormal"]
WEIGHT_KINDS = ["uniform", "scaled", "some_zero", "all_zero", "large_column", "subnormal", "ones", "lognormal"]


def make_data(kind: str, rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """float32 (rows, n) of one data kind."""
    shape = (rows, n)
    if kind == "normal":
        scale = (10.0 ** rng.integers(-8, 5, size=(rows, 1))).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32) * scale
    if kind == "tiny":
        return (rng.standard_normal(shape) * 1e-6 * 10.0 ** rng.integers(-32, 0, size=(rows, 1))).astype(np.float32)
    if kind == "subnormal":
        return (rng.standard_normal(shape) * 1e-41).astype(np.float32)
    if kind == "huge":
        return np.clip(rng.standard_normal(shape) * 3e4, -65504, 65504).astype(np.float32)
    if kind == "pm65504":
        return rng.choice(np.array([-65504.0, 65504.0, 0.0, 1.0], np.float32), shape)
    if kind == "ties":
        return rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5)
    if kind == "levels":  # few distinct values per group, both signs: long runs of equal values in the sort
        return rng.choice(np.array([-1.0, -0.25, 0.0, 0.25, 1.0, 2.0], np.float32), shape)
    if kind == "near_ties":  # "levels" moved by a few ulps: candidates whose float distances differ by an ulp or
        # two, where one search's pick can stand for a run of trial scales only with the margin _iqrun.h proves
        x = rng.choice(np.array([-1.0, -0.5, -0.25, 0.25, 0.5, 1.0], np.float32), shape)
        return (x * (1 + rng.integers(-3, 4, shape) * np.float32(2**-23))).astype(np.float32)
    if kind == "zero_blocks":
        x = rng.standard_normal(shape).astype(np.float32)
        x.reshape(-1, 16)[rng.random(rows * n // 16) < 0.4] = 0
        return x
    if kind == "constant_blocks":
        return np.repeat(rng.standard_normal(rows * n // 16).astype(np.float32), 16).reshape(shape)
    if kind == "outliers":
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[rng.integers(0, rows * n, 4 * rows)] *= 1000
        return x
    if kind == "positive":
        return (np.abs(rng.standard_normal(shape)) + 1).astype(np.float32)
    if kind == "negative":
        return (-np.abs(rng.standard_normal(shape)) - 1).astype(np.float32)
    if kind == "bf16_rounded":
        bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return (bits.view(np.float32) * np.float32(0.03)).astype(np.float32)
    raise AssertionError(kind)


def make_weights(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 (n,) importance weights of one kind."""
    if kind == "uniform":
        return rng.random(n).astype(np.float32)
    if kind == "scaled":
        return (rng.random(n) * 10.0 ** rng.integers(-20, 13)).astype(np.float32)
    if kind == "some_zero":
        w = rng.random(n).astype(np.float32)
        w[rng.random(n) < 0.5] = 0
        return w
    if kind == "all_zero":
        return np.zeros(n, np.float32)
    if kind == "large_column":
        w = rng.random(n).astype(np.float32)
        w[rng.integers(n, size=3)] = np.float32(1e12), np.float32(1e9), np.float32(1e6)
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
    rng = np.random.default_rng(WEIGHT_KINDS.index(weight_kind) + 2000)
    x = np.concatenate([make_data(k, rng, ROWS_PER_KIND, NCOLS) for k in DATA_KINDS])
    return x, make_weights(weight_kind, rng, NCOLS)


@functools.lru_cache(maxsize=None)
def expected(type_name: str, weight_kind: str | None) -> np.ndarray:
    if weight_kind is None:
        return ggml_quantize(type_name, corpus("uniform")[0])
    x, qw = corpus(weight_kind)
    return ggml_quantize(type_name, x, qw)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        rows = np.flatnonzero((got != want).any(axis=1))
        raise AssertionError(f"{what}: {len(rows)} rows differ from ggml (first row {rows[0]}, "
                             f"{int((got != want).sum())} bytes)")


def require_native() -> None:
    if not _native.AVAILABLE or not hasattr(_native._mod, "iquant"):
        unavailable("l1quant.kernels._fastq8 with iquant is not built (python setup.py build_ext --inplace)")


def run(type_name: str, x: np.ndarray, qw: np.ndarray | None, impl: str) -> tuple[np.ndarray, int | None]:
    qt = get_quant_type(type_name)
    out = np.full((x.shape[0], qt.row_nbytes(x.shape[1])), 0xA5, np.uint8)
    return qt.quantize_checked(x, out, impl=impl, imatrix=qw)


def weight_cases(type_name: str) -> list[str | None]:
    return [*WEIGHT_KINDS, None] if type_name in OPTIONAL_IMATRIX else list(WEIGHT_KINDS)


@pytest.mark.parametrize("isa", ["default", "avx512", "avx2", "portable"])
@pytest.mark.parametrize("type_name", TYPES)
def test_native_matches_ggml(type_name: str, isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled path on the whole corpus (>= 10**6 values) equals ggml_quantize_chunk, with each way of running
    its neighbour searches (L1QUANT_IQUANT_ISA): 16 vector lanes (AVX-512), 8 (AVX2), one candidate at a time
    (portable), and the default (the widest this CPU runs). A path this CPU lacks is skipped, as in
    test_iquants34.py."""
    require_native()
    if isa != "default":
        monkeypatch.setenv("L1QUANT_IQUANT_ISA", isa)
    n_values = 0
    for wk in weight_cases(type_name):
        x, qw = corpus(wk or "uniform")
        try:
            got, first = run(type_name, x, None if wk is None else qw, "native")
        except ValueError as e:
            if isa == "default" or "L1QUANT_IQUANT_ISA" not in str(e):
                raise
            pytest.skip(f"{isa} not available here: {e}")
        assert first is None
        assert_same(got, expected(type_name, wk), f"{type_name} native ({isa}), weights {wk}")
        n_values += x.size
    assert n_values >= 10**6


def test_unknown_code_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An L1QUANT_IQUANT_ISA these kernels do not know is refused by name (not silently run as the default)."""
    require_native()
    monkeypatch.setenv("L1QUANT_IQUANT_ISA", "mmx")
    with pytest.raises(ValueError, match="L1QUANT_IQUANT_ISA='mmx'"):
        run("IQ2_S", np.zeros((1, 256), np.float32), None, "native")


@pytest.mark.parametrize("type_name", TYPES)
def test_numpy_matches_ggml(type_name: str) -> None:
    """The numpy path on the same corpus (>= 10**6 values) equals ggml_quantize_chunk."""
    n_values = 0
    for wk in weight_cases(type_name):
        x, qw = corpus(wk or "uniform")
        got, first = run(type_name, x, None if wk is None else qw, "numpy")
        assert first is None
        assert_same(got, expected(type_name, wk), f"{type_name} numpy, weights {wk}")
        n_values += x.size
    assert n_values >= 10**6


def tied_data(rng: np.random.Generator, rows: int) -> np.ndarray:
    """bf16-like data with many equal values in every group (few distinct magnitudes, both signs)."""
    levels = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], np.float32)
    x = rng.choice(levels, (rows, 512))
    x[rows // 2:] *= np.float32(0.0078125)
    return x


@pytest.mark.parametrize("type_name", ["IQ1_S", "IQ1_M"])
def test_ties_follow_glibc_stable_qsort(type_name: str) -> None:
    """On data where most values tie, ggml's bytes are those of equal values taken in increasing index order (glibc
    2.36's qsort is a stable merge sort for these sizes). For IQ1_M the reverse tie order gives different bytes on
    the same data, so the comparison pins the order. IQ1_S's bytes hardly depend on it: its split score, as a
    function of how much weight of a run of equal values moves to the next level, is (a + b*W)^2 / (c + d*W), convex,
    so the best split falls on a run boundary, where the order inside the run does not matter (IQ1_M's two halves
    with their own shifts break that: the path through both halves' weights depends on the order)."""
    rng = np.random.default_rng(23)
    x = tied_data(rng, 32)
    cases = [make_weights("uniform", rng, 512), np.ones(512, np.float32)] + ([None] if type_name == "IQ1_M" else [])
    differs = False
    for qw in cases:
        want = ggml_quantize(type_name, x, qw)
        assert_same(quantize_iq1(type_name, x, qw), want, f"{type_name} numpy ties")
        if _native.AVAILABLE and hasattr(_native._mod, "iquant"):
            assert_same(run(type_name, x, qw, "native")[0], want, f"{type_name} native ties")
        differs |= not np.array_equal(quantize_iq1(type_name, x, qw, stable_ties=False), want)
    assert differs or type_name == "IQ1_S"


def test_grid_tables() -> None:
    """The derived tables against a brute-force recomputation in plain Python (ggml's iq2xs_init_impl rules):
    grid points decode to gguf-py's values, each maps to its own index, the map holds nothing else, and for a
    sample of off-grid codes (every one for the 256-point grid) the list is exactly the points at the nwant smallest
    distances, in (distance, index) order."""
    from gguf import quants as gq

    for name, cls, nwant, step in (("IQ2_XXS", "IQ2_XXS", 2, 1), ("IQ2_XS", "IQ2_XS", 2, 7),
                                   ("IQ2_S", "IQ2_S", 1, 7), ("IQ1_S", "IQ1_S", 3, 29)):
        g = iq_grid(name)
        c = getattr(gq, cls)
        c.init_grid()
        values = np.asarray(c.grid, np.float32).reshape(-1, 8)
        assert np.array_equal(np.asarray(c.grid_map, np.float32)[g.levels], values)
        pts = [tuple(int(v) for v in row) for row in g.levels]
        code = {sum(v << 2 * i for i, v in enumerate(p)): j for j, p in enumerate(pts)}
        assert len(code) == len(pts)
        assert all(int(g.kmap[u]) == j for u, j in code.items())
        assert int((g.kmap >= 0).sum()) == len(pts) and g.kmap.size == KMAP_SIZE
        reachable = [u for u in range(KMAP_SIZE) if all((u >> 2 * i) & 3 <= 2 for i in range(8))]
        assert len(reachable) == 3**8
        assert all(int(g.kmap[u]) < 0 for u in reachable if u not in code)
        for u in [u for u in reachable if u not in code][::step]:
            pos = [2 * ((u >> 2 * i) & 3) + 1 for i in range(8)]
            d = sorted((sum((2 * p[i] + 1 - pos[i]) ** 2 for i in range(8)), j) for j, p in enumerate(pts))
            cut = sorted({dd for dd, _ in d})[nwant - 1]
            assert g.neighbours_of(u).tolist() == [j for dd, j in d if dd <= cut], (name, u)
    assert iq_grid("IQ1_M") is iq_grid("IQ1_S")


def code_driven_data(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """One group per 3**8 code, whose first 8-value part quantizes to that code's levels in the first trial (IQ2:
    values (2l+1)*c with a full-scale companion part; IQ1: values (l-1)*c with a little jitter), at a few scales:
    every off-grid code's neighbour list is searched at least once."""
    digits = np.array(list(itertools.product(range(3), repeat=8)), np.float32)[:, ::-1]  # (6561, 8)
    gs = 32 if type_name in ("IQ2_XXS", "IQ1_S") else 16
    if type_name.startswith("IQ2"):
        part = 2 * digits + 1
        rest = np.full((digits.shape[0], gs - 8), 5.0, np.float32)
    else:
        part = digits - 1
        rest = rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), (digits.shape[0], gs - 8))
    groups = np.concatenate([part, rest], axis=1)
    groups += rng.standard_normal(groups.shape).astype(np.float32) * np.float32(0.02)
    sign = rng.choice(np.array([-1.0, 1.0], np.float32), groups.shape) if type_name.startswith("IQ2") else 1
    x = (groups * sign).reshape(-1)
    pad = (-x.size) % 256
    x = np.concatenate([x, np.zeros(pad, np.float32)]).reshape(-1, 256)
    return (x * np.float32(0.01)).astype(np.float32)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_code_searched(type_name: str) -> None:
    """Groups built to start from each of the 3**8 level codes (so every neighbour list is walked), both paths."""
    rng = np.random.default_rng(31)
    x = code_driven_data(type_name, rng)
    qw = make_weights("lognormal", rng, 256)
    want = ggml_quantize(type_name, x, qw)
    assert_same(run(type_name, x, qw, "numpy")[0], want, f"{type_name} numpy codes")
    if _native.AVAILABLE and hasattr(_native._mod, "iquant"):
        assert_same(run(type_name, x, qw, "native")[0], want, f"{type_name} native codes")
    if type_name in OPTIONAL_IMATRIX:
        want = ggml_quantize(type_name, x)
        assert_same(run(type_name, x, None, "numpy")[0], want, f"{type_name} numpy codes, no imatrix")
        if _native.AVAILABLE and hasattr(_native._mod, "iquant"):
            assert_same(run(type_name, x, None, "native")[0], want, f"{type_name} native codes, no imatrix")


@pytest.mark.parametrize("type_name", TYPES)
def test_half_sources_and_row_lengths(type_name: str) -> None:
    """float16 and bf16 sources give ggml's bytes for their exact float32 values; rows of 1, 3 and 5 super-blocks
    (the imatrix is per column: each super-block takes its own slice)."""
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(3)
    for nb in (1, 3, 5):
        x32 = rng.standard_normal((4, 256 * nb)).astype(np.float32)
        qw = make_weights("lognormal", rng, 256 * nb)
        f16 = x32.astype(np.float16)
        bf16 = (x32.view(np.uint32) >> 16).astype(np.uint16)
        for src, exact in ((f16, f16.astype(np.float32)), (bf16, (bf16.astype(np.uint32) << 16).view(np.float32))):
            want = ggml_quantize(type_name, exact, qw)
            assert_same(qt.quantize(src, impl="numpy", imatrix=qw), want, f"{type_name} numpy {src.dtype}")
            if qt.native_imatrix_kernel is not None:
                assert_same(qt.quantize(src, impl="native", imatrix=qw), want, f"{type_name} native {src.dtype}")


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_superblocks(type_name: str) -> None:
    """A super-block holding NaN/Inf: zero bytes with a NaN f16 scale, the first bad index reported; the other
    super-blocks are ggml's bytes (statistics are per super-block)."""
    qt = get_quant_type(type_name)
    size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 768)).astype(np.float32)
    qw = rng.random(768).astype(np.float32)
    x[1, 256 + 5] = np.nan
    x[1, 256 + 9] = -np.inf
    zeroed = x.copy()
    zeroed[1, 256:512] = 0
    want = ggml_quantize(type_name, zeroed, qw)
    poison = np.zeros(size, np.uint8)
    if type_name == "IQ1_M":
        poison[48:56] = (0, 0, 0, 0, 0, 0xE0, 0, 0x70)
    else:
        poison[0:2] = (0x00, 0x7E)
    want[1, size: 2 * size] = poison
    impls = ["numpy"] + (["native"] if qt.native_imatrix_kernel is not None else [])
    for impl in impls:
        got, first = qt.quantize_checked(x, impl=impl, imatrix=qw)
        assert first == 768 + 256 + 5, impl
        assert_same(got, want, f"{type_name} {impl} non-finite")
        assert np.isnan(qt.dequantize(got, x.shape)[1, 256:512]).all()


@pytest.mark.parametrize("type_name", TYPES)
def test_imatrix_rule(type_name: str) -> None:
    """IQ2_XXS, IQ2_XS and IQ1_S refuse to quantize without an importance matrix (ggml_quantize_chunk asserts one);
    IQ2_S and IQ1_M run without one (their own weights), and a real imatrix changes the bytes."""
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    qw = make_weights("lognormal", rng, 512)
    impls = ["numpy"] + (["native"] if qt.native_kernel is not None else [])
    for impl in impls:
        if type_name in OPTIONAL_IMATRIX:
            plain = qt.quantize(x, impl=impl)
            assert_same(plain, ggml_quantize(type_name, x), f"{type_name} {impl} no imatrix")
            assert not np.array_equal(plain, qt.quantize(x, impl=impl, imatrix=qw))
        else:
            with pytest.raises(KernelArgumentError, match=f"{type_name} needs an importance matrix"):
                qt.quantize(x, impl=impl)


def test_dequantize_round_trip() -> None:
    """The registry's dequantizer (gguf-py's) reads the kernels' bytes back close to the input."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    qw = np.ones(512, np.float32)
    for type_name, tol in (("IQ2_XXS", 0.6), ("IQ2_XS", 0.55), ("IQ2_S", 0.5), ("IQ1_S", 0.8), ("IQ1_M", 0.8)):
        qt = get_quant_type(type_name)
        y = qt.dequantize(qt.quantize(x, imatrix=qw), x.shape)
        rel = float(np.sqrt(((y - x) ** 2).mean() / (x**2).mean()))
        assert rel < tol, (type_name, rel)

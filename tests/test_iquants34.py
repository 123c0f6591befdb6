"""IQ4_NL, IQ4_XS, IQ3_XXS, IQ3_S (kernels/iquants_nl.py, kernels/iquants3.py, kernels/_iquants3.c) against ggml.

Each type, numpy and compiled, with and without importance weights, is byte-identical to ``ggml_quantize_chunk``
on more than 10^6 values per path (random at several scales, zero and constant blocks, outliers, ties,
subnormals, +-65504, bf16-rounded values; random and edge-case weights). The IQ3 tables derived in
kernels/iq3_grids.py are shown equal to ggml's in three ways: the grid through ggml's own dequantizer; the
neighbour lists by a second, independent derivation (a per-key sort of (distance, index) tuples); and the whole
search by byte identity on inputs built from every one of the 4096 level keys, which round onto off-grid keys
and so go through the neighbour lists.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest
from ggml_oracle import ggml_library, ggml_quantize
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from reference import unavailable

from l1quant.kernels import _native, get_quant_type
from l1quant.kernels.iq3_grids import KMAP_SIZE, grid_levels, iq3_tables

TYPES = ["IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S"]
PATHS = ["numpy", "native"]
NCOLS = 1024
DATA_KINDS = ["normal", "tiny", "huge", "pm65504", "ties", "zero_blocks", "constant_blocks", "outliers",
              "positive", "negative", "bf16_rounded", "sparse"]
# Weights that keep ggml's IQ3 sums finite: with a weight near 1e30 on a value near 65504, ggml's IQ3 refit
# divides Inf by Inf and aborts (GGML_ASSERT(scale >= 0)), which would kill the test process.
EDGE_WEIGHTS = ["all_zero", "some_zero", "subnormal", "huge_column", "lognormal", "ones"]


def make_data(kind: str, rng: np.random.Generator, rows: int) -> np.ndarray:
    shape = (rows, NCOLS)
    if kind == "normal":
        scale = (10.0 ** rng.integers(-8, 5, size=(rows, 1))).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32) * scale
    if kind == "tiny":  # subnormal: inverse scales overflow inside the searches
        return (rng.standard_normal(shape) * 1e-38).astype(np.float32)
    if kind == "huge":
        return np.clip(rng.standard_normal(shape) * 3e4, -65504, 65504).astype(np.float32)
    if kind == "pm65504":
        return rng.choice(np.array([-65504.0, 65504.0, 0.0, 1.0], np.float32), shape)
    if kind == "ties":  # equal values and exact halves: rounding ties, strict comparisons, first-wins searches
        return rng.integers(-3, 4, shape).astype(np.float32) * np.float32(0.5)
    if kind == "zero_blocks":
        x = rng.standard_normal(shape).astype(np.float32)
        x.reshape(-1, 32)[rng.random(rows * NCOLS // 32) < 0.5] = 0
        return x
    if kind == "constant_blocks":
        return np.repeat(rng.standard_normal(rows * NCOLS // 32).astype(np.float32), 32).reshape(shape)
    if kind == "outliers":
        x = rng.standard_normal(shape).astype(np.float32)
        x.flat[rng.integers(0, rows * NCOLS, 4 * rows)] *= 1000
        return x
    if kind == "positive":
        return (np.abs(rng.standard_normal(shape)) + 1).astype(np.float32)
    if kind == "negative":
        return (-np.abs(rng.standard_normal(shape)) - 1).astype(np.float32)
    if kind == "bf16_rounded":
        bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return bits.view(np.float32)
    if kind == "sparse":  # mostly zero groups with a few values: the IQ3 skip rules and IQ3_S's slot shift
        x = np.zeros(shape, np.float32)
        x.flat[rng.integers(0, rows * NCOLS, rows * 8)] = rng.standard_normal(rows * 8).astype(np.float32)
        return x
    raise AssertionError(kind)


def make_weights(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = NCOLS
    if kind == "uniform":
        return rng.random(n).astype(np.float32)
    if kind == "some_zero":
        w = rng.random(n).astype(np.float32)
        w[rng.random(n) < 0.5] = 0
        return w
    if kind == "all_zero":
        return np.zeros(n, np.float32)
    if kind == "huge_column":
        w = rng.random(n).astype(np.float32)
        w[rng.integers(n, size=3)] = np.float32(1e12), np.float32(1e6), np.float32(1e-30)
        return w
    if kind == "subnormal":
        return (rng.random(n) * 1e-40).astype(np.float32)
    if kind == "ones":
        return np.ones(n, np.float32)
    if kind == "lognormal":
        return np.exp(rng.standard_normal(n) * 3).astype(np.float32)
    raise AssertionError(kind)


@functools.lru_cache(maxsize=None)
def corpus(rows_per_kind: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([make_data(k, rng, rows_per_kind) for k in DATA_KINDS])


def cases() -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(label, x, weights): 2 * 12 * 32 + 6 * 12 * 8 rows of 1024 = 1.38 M values."""
    big = corpus(32, 1)
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = [
        ("unweighted", big, None),
        ("uniform", corpus(32, 2), make_weights("uniform", np.random.default_rng(3))),
    ]
    for i, kind in enumerate(EDGE_WEIGHTS):
        out.append((kind, corpus(8, 10 + i), make_weights(kind, np.random.default_rng(20 + i))))
    return out


@functools.lru_cache(maxsize=None)
def expected(type_name: str, label: str) -> np.ndarray:
    x, qw = next((x, w) for lab, x, w in cases() if lab == label)
    return ggml_quantize(type_name, x, qw)


def need_native() -> None:
    if not _native.AVAILABLE or not hasattr(_native._mod, "iquant"):
        unavailable("l1quant.kernels._fastq8 with iquant is not built (python setup.py build_ext --inplace)")


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        rows = np.flatnonzero((got != want).any(axis=1))
        raise AssertionError(f"{what}: {len(rows)} rows differ from ggml (first row {rows[0]}, "
                             f"{int((got != want).sum())} bytes)")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_ggml(type_name: str, path: str) -> None:
    if path == "native":
        need_native()
    qt = get_quant_type(type_name)
    total = 0
    for label, x, qw in cases():
        got, first = qt.quantize_checked(x, impl=path, imatrix=qw)
        assert first is None
        assert_same(got, expected(type_name, label), f"{type_name} {path} {label}")
        total += x.size
    assert total >= 10**6


@pytest.mark.parametrize("isa", ["portable", "sse2", "avx2", "avx512"])
@pytest.mark.parametrize("type_name", TYPES)
def test_code_paths(type_name: str, isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every compiled code path (L1QUANT_IQUANT_ISA: IQ4's 16 trial evaluations of a group as lanes, IQ3's
    neighbour candidates scored as lanes, or the portable loops) gives ggml's bytes on the whole corpus."""
    need_native()
    monkeypatch.setenv("L1QUANT_IQUANT_ISA", isa)
    qt = get_quant_type(type_name)
    for label, x, qw in cases():
        try:
            got = qt.quantize(x, impl="native", imatrix=qw)
        except ValueError as e:
            pytest.skip(f"{isa} not available here: {e}")
        assert_same(got, expected(type_name, label), f"{type_name} {isa} {label}")


def test_unknown_code_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    need_native()
    monkeypatch.setenv("L1QUANT_IQUANT_ISA", "mmx")
    with pytest.raises(ValueError, match="mmx"):
        get_quant_type("IQ4_XS").quantize(np.zeros((1, 256), np.float32), impl="native")


@pytest.mark.parametrize("type_name", TYPES)
def test_half_sources_and_row_shapes(type_name: str) -> None:
    """float16 and bf16 sources give the bytes of their float32 values; rows are independent."""
    qt = get_quant_type(type_name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    qw = rng.random(512).astype(np.float32)
    h = x.astype(np.float16)
    b = (x.view(np.uint32) >> 16).astype(np.uint16)
    bx = (b.astype(np.uint32) << 16).view(np.float32)
    impls = ["numpy"] + (["native"] if _native.AVAILABLE and hasattr(_native._mod, "iquant") else [])
    for impl in impls:
        for w in (None, qw):
            assert_same(qt.quantize(h, impl=impl, imatrix=w), ggml_quantize(type_name, h.astype(np.float32), w),
                        f"{impl} f16")
            assert_same(qt.quantize(b, impl=impl, imatrix=w), ggml_quantize(type_name, bx, w), f"{impl} bf16")
            one = np.concatenate([qt.quantize(x[i : i + 1], impl=impl, imatrix=w) for i in range(6)])
            assert_same(qt.quantize(x, impl=impl, imatrix=w), one, f"{impl} rows")


@pytest.mark.parametrize("type_name", TYPES)
def test_nonfinite_blocks(type_name: str) -> None:
    """A block holding NaN/Inf becomes zeros with d = f16 NaN; the other blocks are ggml's (their statistics are
    per block); the first bad flat index is reported, the same by both paths."""
    qt = get_quant_type(type_name)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[1, 300] = np.inf
    x[2, 7] = np.nan
    clean = x.copy()
    clean[1, 300 // block * block : 300 // block * block + block] = 0
    clean[2, :block] = 0
    want = ggml_quantize(type_name, clean)
    for bad_row, bad_block in ((1, 300 // block), (2, 0)):
        blk = np.zeros(size, np.uint8)
        blk[1] = 0x7E
        want[bad_row, bad_block * size : (bad_block + 1) * size] = blk
    impls = ["numpy"] + (["native"] if _native.AVAILABLE and hasattr(_native._mod, "iquant") else [])
    for impl in impls:
        got, first = qt.quantize_checked(x, impl=impl)
        assert first == 512 + 300
        assert_same(got, want, impl)


@pytest.mark.parametrize("size", [256, 512])
def test_grid_equals_ggml_dequantizer(size: int) -> None:
    """gguf-py's grid (the source of iq3_grids) is ggml's: ggml's dequantize_row_iq3_* and gguf-py's agree on
    blocks that use every grid index; and the derived levels reproduce gguf's grid values."""
    type_name = "IQ3_XXS" if size == 256 else "IQ3_S"
    qtype = GGMLQuantizationType[type_name]
    _, tsize = GGML_QUANT_SIZES[qtype]
    lib = ggml_library()
    fn = getattr(lib, f"dequantize_row_{type_name.lower()}")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    rng = np.random.default_rng(7)
    nb = 64
    raw = rng.integers(0, 256, (nb, tsize), dtype=np.uint8)
    raw[:, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if size == 256:
        raw[:, 2:66] = (np.arange(nb * 64) % 256).reshape(nb, 64)
    else:
        idx = (np.arange(nb * 64) % 512).reshape(nb, 64)
        raw[:, 2:66] = idx & 255
        raw[:, 66:74] = ((idx.reshape(nb, 8, 8) >> 8) << np.arange(8)).sum(axis=2)
    out = np.empty(nb * 256, np.float32)
    fn(raw.ctypes.data, out.ctypes.data, nb * 256)
    np.testing.assert_array_equal(gguf_dequantize(raw.reshape(-1), qtype), out)
    t = iq3_tables(size)
    from gguf import quants as gq

    cls = gq.IQ3_XXS if size == 256 else gq.IQ3_S
    cls.init_grid()
    np.testing.assert_array_equal(np.asarray(cls.grid_map, np.float32)[t.levels],
                                  np.asarray(cls.grid, np.float32).reshape(size, 4))
    np.testing.assert_array_equal(t.grid, 2 * grid_levels(size).astype(np.int8) + 1)


@pytest.mark.parametrize("size", [256, 512])
def test_neighbour_lists_rederived(size: int) -> None:
    """A second derivation of ggml's neighbour lists, one key at a time: sort (distance, index) tuples, keep the
    entries of the first nwant distinct distances; same counts, same order, same flat layout."""
    t = iq3_tables(size)
    nwant = 2 if size == 256 else 3
    pts = [tuple(int(v) for v in row) for row in t.grid]
    on_grid = {sum(((p[i] - 1) // 2) << (3 * i) for i in range(4)): j for j, p in enumerate(pts)}
    flat: list[int] = []
    for key in range(KMAP_SIZE):
        if key in on_grid:
            assert t.kmap[key] == on_grid[key]
            continue
        pos = [2 * ((key >> (3 * i)) & 7) + 1 for i in range(4)]
        pairs = sorted((sum((p[i] - pos[i]) ** 2 for i in range(4)), j) for j, p in enumerate(pts))
        keep: list[int] = []
        seen: list[int] = []
        for d2, j in pairs:
            if d2 not in seen:
                if len(seen) == nwant:
                    break
                seen.append(d2)
            keep.append(j)
        assert t.kmap[key] == -(len(flat) + 1)
        flat += [len(keep)] + keep
    np.testing.assert_array_equal(t.neighbours, np.asarray(flat, np.uint16))


@pytest.mark.parametrize("type_name", ["IQ3_XXS", "IQ3_S"])
def test_every_key_through_the_search(type_name: str) -> None:
    """Groups built from all 4096 level keys (values (2l+1)*s with a little noise, random signs and weights) round
    onto every off-grid key, so the searches consult every neighbour list: byte-identical to ggml."""
    rng = np.random.default_rng(8)
    keys = np.arange(KMAP_SIZE)
    lv = np.stack([(keys >> (3 * i)) & 7 for i in range(4)], axis=1).astype(np.float32)
    rows = []
    for rep in range(3):
        perm = rng.permutation(KMAP_SIZE)
        v = (2 * lv[perm] + 1) * np.float32(0.01) * np.float32(1 + 0.02 * rep)
        v += rng.normal(0, 0.002 * rep, v.shape).astype(np.float32)
        v *= rng.choice(np.array([-1, 1], np.float32), v.shape)
        rows.append(v.reshape(-1, NCOLS))
    x = np.concatenate(rows).astype(np.float32)
    qt = get_quant_type(type_name)
    impls = ["numpy"] + (["native"] if _native.AVAILABLE and hasattr(_native._mod, "iquant") else [])
    for qw in (None, np.random.default_rng(9).random(NCOLS).astype(np.float32)):
        want = ggml_quantize(type_name, x, qw)
        for impl in impls:
            assert_same(qt.quantize(x, impl=impl, imatrix=qw), want, f"{type_name} {impl}")


def test_registry_records() -> None:
    for name in TYPES:
        qt = get_quant_type(name)
        assert qt.numpy_imatrix_kernel is not None
        x = np.random.default_rng(10).standard_normal((2, 256)).astype(np.float32)
        back = qt.dequantize(qt.quantize(x), x.shape)
        assert back.shape == x.shape and float(np.abs(back - x).max()) < 1.5

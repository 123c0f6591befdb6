"""The registry's 4/5-bit and K types through the converter's kernel contract, against ggml itself.

The block quantizers have their own differential tests (test_kquants_*.py); this layer checks what the converter
actually calls: ``QuantType.quantize_checked`` on float32 / float16 / bf16-bits sources, for the numpy and the
compiled paths, with outputs that are views into a wider buffer, and the first-NaN index it reports.
"""

from __future__ import annotations

import numpy as np
import pytest
from ggml_oracle import ggml_quantize
from reference import in_ci

from l1quant.kernels import QUANT_TYPES, decode_bf16, get_quant_type, native_available

BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _impls() -> list[str]:
    if native_available() and all(QUANT_TYPES[t].native_kernel is not None for t in BLOCK_TYPES):
        return ["numpy", "native"]
    if in_ci():
        pytest.fail("the compiled block kernels (l1quant/kernels/_kquants.c) are not built")
    return ["numpy"]


def _sources(rng: np.random.Generator, rows: int, cols: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """dtype name -> (kernel input, the exact float32 values ggml is given)."""
    x = (rng.standard_normal((rows, cols)) * rng.choice([1e-3, 1.0, 30.0], size=(rows, 1))).astype(np.float32)
    f16 = x.astype(np.float16)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    return {"f32": (x, x), "f16": (f16, f16.astype(np.float32)), "bf16": (bf16, decode_bf16(bf16))}


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_every_source_dtype_and_path_equals_ggml(name: str) -> None:
    rng = np.random.default_rng(sum(map(ord, name)))
    qt = get_quant_type(name)
    for dtype, (src, exact) in _sources(rng, 37, 512).items():
        want = ggml_quantize(name, exact)
        for impl in _impls():
            wide = np.full((src.shape[0], qt.row_nbytes(512) + 5), 0xAB, np.uint8)
            out = wide[:, 3 : 3 + qt.row_nbytes(512)]  # rows contiguous, row stride wider than the row
            _, bad = qt.quantize_checked(src, out, impl=impl)
            assert bad is None
            assert np.array_equal(out, want), (name, dtype, impl)
            assert (wide[:, :3] == 0xAB).all() and (wide[:, -2:] == 0xAB).all()


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_first_nonfinite_index_and_nan_blocks(name: str) -> None:
    qt = get_quant_type(name)
    x = np.random.default_rng(5).standard_normal((4, 512)).astype(np.float32)
    x[2, 300] = np.inf
    x[3, 7] = np.nan
    ok = x.copy()
    ok[2:] = 0
    for impl in _impls():
        out, bad = qt.quantize_checked(x, impl=impl)
        assert bad == 2 * 512 + 300, impl
        deq = qt.dequantize(out, x.shape)
        # the blocks holding the bad values decode to NaN; the rows before them are ggml's bytes
        assert np.isnan(deq[2, 300]) and np.isnan(deq[3, 7])
        assert np.array_equal(out[:2], ggml_quantize(name, x[:2]))

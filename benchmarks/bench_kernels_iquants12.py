"""IQ2_XXS / IQ2_XS / IQ2_S / IQ1_S / IQ1_M kernel throughput: M values/s on one core, l1quant compiled and numpy
vs ggml (not a test).

Run:  python benchmarks/bench_kernels_iquants12.py [--rows 128] [--cols 4096]

With log-normal column weights on a float32 slab of bf16-rounded normal(0, 0.02) values, times
``QuantType.quantize(x, imatrix=qw)`` (compiled, then numpy) against ``ggml_quantize_chunk`` from llama-cpp-python's
libggml-base (tests/ggml_oracle.py), best of three calls by this process's CPU clock (robust when other jobs share
the cores). Each type's bytes are checked identical to ggml's first.

Example:
    $ python benchmarks/bench_kernels_iquants12.py --rows 32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from ggml_oracle import ggml_quantize  # noqa: E402

from l1quant.kernels import get_quant_type  # noqa: E402

TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")


def cpu_best(f: Callable[[], object], n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=4096)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    qw = np.exp(rng.standard_normal(a.cols)).astype(np.float32)
    m = x.size / 1e6
    for name in TYPES:
        qt = get_quant_type(name)
        want = ggml_quantize(name, x, qw)
        assert np.array_equal(qt.quantize(x, impl="native", imatrix=qw), want), name
        tg = cpu_best(lambda: ggml_quantize(name, x, qw))
        tn = cpu_best(lambda: qt.quantize(x, impl="native", imatrix=qw))
        tp = cpu_best(lambda: qt.quantize(x, impl="numpy", imatrix=qw), 1)
        print(f"{name:8s} ggml {m / tg:6.2f}  compiled {m / tn:6.2f} ({tg / tn:.1f}x)  numpy {m / tp:6.2f} "
              f"({tg / tp:.2f}x)  M values/s")


if __name__ == "__main__":
    main()

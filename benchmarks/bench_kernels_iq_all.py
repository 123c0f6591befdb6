"""All nine IQ kernels, one table: M values/s on one core, l1quant compiled (the default code path) vs ggml (not a
test).

Run:  python benchmarks/bench_kernels_iq_all.py [--rows 32] [--cols 4096] [--repeat 3]

With log-normal column weights (an importance matrix's shape) on a float32 slab of bf16-rounded normal(0, 0.02)
values, times ``QuantType.quantize(x, imatrix=qw)`` with the compiled kernel against ``ggml_quantize_chunk`` from
llama-cpp-python's libggml-base (tests/ggml_oracle.py), best of ``--repeat`` calls by this process's CPU clock
(robust when other jobs share the cores). Each type's bytes are checked identical to ggml's first. For every code
path and the numpy kernels, see bench_kernels_iquants12.py and bench_kernels_iquants34.py.

Example:
    $ python benchmarks/bench_kernels_iq_all.py --rows 8 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from ggml_oracle import ggml_quantize  # noqa: E402

from l1quant.kernels import get_quant_type  # noqa: E402
from bench_kernels_iquants12 import cpu_best  # noqa: E402  (the script's folder is on sys.path)

TYPES = ("IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    qw = np.exp(rng.standard_normal(a.cols)).astype(np.float32)
    m = x.size / 1e6
    print(f"{'type':8s} {'ggml':>7s} {'compiled':>9s} {'compiled/ggml':>14s}   (M values/s, one core, CPU clock)")
    for name in a.types.split(","):
        qt = get_quant_type(name)
        want = ggml_quantize(name, x, qw)
        assert np.array_equal(qt.quantize(x, impl="native", imatrix=qw), want), name
        tg = cpu_best(lambda: ggml_quantize(name, x, qw), a.repeat)
        tn = cpu_best(lambda: qt.quantize(x, impl="native", imatrix=qw), a.repeat)
        print(f"{name:8s} {m / tg:7.2f} {m / tn:9.2f} {tg / tn:13.1f}x", flush=True)


if __name__ == "__main__":
    main()

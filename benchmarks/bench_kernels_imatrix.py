"""Importance-weighted kernel throughput: M values/s on one core, l1quant compiled / numpy vs ggml (not a test).

Run:  python benchmarks/bench_kernels_imatrix.py [--rows 256] [--cols 4096] [--seconds 1.0]

For each type with a weighted search (ggml's ``quantize_row_<type>_impl``: Q4_0..Q5_1, Q2_K..Q6_K), times
``QuantType.quantize(x, imatrix=qw)`` with the compiled kernel (the default code path, ``L1QUANT_KQUANT_ISA``
picks another) and the numpy one, against ``ggml_quantize_chunk(type, x, ..., qw)`` from llama-cpp-python's
libggml-base (tests/ggml_oracle.py), on a float32 (rows, cols) slab of normal(0, 0.02) values with log-normal
column weights (the shape of real per-column mean squares). Best call of ``--seconds``, this thread's CPU clock
(robust when other jobs share the cores). Each type's bytes are checked identical first.

Example:
    $ python benchmarks/bench_kernels_imatrix.py --seconds 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_kernels import _rate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from ggml_oracle import ggml_quantize

    from l1quant.kernels import _native, get_quant_type, native_available

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    qw = np.exp(rng.standard_normal(args.cols)).astype(np.float32)
    small = x[: max(1, args.rows // 4)]  # numpy is slower: a smaller slab (rates are per value)
    path = _native.KQUANT_PATH if native_available() else "-"
    print(f"slab {x.shape} float32, log-normal column weights; best call of {args.seconds}s (CPU clock); "
          f"compiled path: {path}")
    header = f"{'type':<6}{'compiled':>10}{'numpy':>9}{'ggml':>8}{'compiled/ggml':>15}{'numpy/ggml':>12}"
    print(header)
    print("-" * len(header))
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        qt = get_quant_type(name)
        out = np.empty((x.shape[0], qt.row_nbytes(x.shape[1])), np.uint8)
        want = ggml_quantize(name, x, qw)
        impls = ["native", "numpy"] if native_available() else ["numpy"]
        for impl in impls:
            if not np.array_equal(qt.quantize(x, impl=impl, imatrix=qw), want):
                raise SystemExit(f"{name} {impl}: bytes differ from ggml")
        native = (_rate(lambda: qt.quantize(x, out, impl="native", imatrix=qw), x.size, args.seconds,
                        time.thread_time) if native_available() else float("nan"))
        numpy = _rate(lambda: qt.quantize(small, impl="numpy", imatrix=qw), small.size, args.seconds, time.thread_time)
        ggml = _rate(lambda: ggml_quantize(name, x, qw), x.size, args.seconds, time.thread_time)
        print(f"{name:<6}{native:>10.1f}{numpy:>9.1f}{ggml:>8.1f}{native / ggml:>14.1f}x{numpy / ggml:>11.1f}x")
    print("(M values/s, one thread; higher is better)")


if __name__ == "__main__":
    main()

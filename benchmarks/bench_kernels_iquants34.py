"""IQ4_NL / IQ4_XS / IQ3_XXS / IQ3_S kernel throughput: M values/s on one core, l1quant compiled (every IQ4 code
path) and numpy vs ggml (not a test).

Run:  python benchmarks/bench_kernels_iquants34.py [--rows 64] [--cols 4096] [--seconds 1.0]

For each type, with log-normal column weights (the shape of real per-column mean squares) and without, times
``QuantType.quantize(x[, imatrix=qw])`` with the compiled kernel (each ``L1QUANT_IQUANT_ISA`` path this CPU runs)
and the numpy one, against ``ggml_quantize_chunk`` from
llama-cpp-python's libggml-base (tests/ggml_oracle.py; its IQ searches are scalar C), on a float32 (rows, cols)
slab of normal(0, 0.02) values. Best call of ``--seconds``, this thread's CPU clock (robust when other jobs share
the cores). Each type's bytes are checked identical to ggml's first.

Example:
    $ python benchmarks/bench_kernels_iquants34.py --seconds 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_kernels import _rate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from ggml_oracle import ggml_quantize

    from l1quant.kernels import get_quant_type, native_available

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    qw_all = np.exp(rng.standard_normal(args.cols)).astype(np.float32)
    small = x[: max(1, args.rows // 8)]  # numpy is slower: a smaller slab (rates are per value)
    print(f"slab {x.shape} float32; best call of {args.seconds}s (CPU clock); M values/s, one thread")
    paths = ["portable", "sse2", "avx2", "avx512"] if native_available() else []
    header = f"{'type':<8}{'imatrix':<8}{'path':<10}{'compiled':>9}{'numpy':>8}{'ggml':>7}{'compiled/ggml':>15}"
    print(header)
    print("-" * len(header))
    for name in ("IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S"):
        qt = get_quant_type(name)
        out = np.empty((x.shape[0], qt.row_nbytes(x.shape[1])), np.uint8)
        for qw in (qw_all, None):
            want = ggml_quantize(name, x, qw)
            if not np.array_equal(qt.quantize(x, impl="numpy", imatrix=qw), want):
                raise SystemExit(f"{name} numpy: bytes differ from ggml")
            ggml = _rate(lambda: ggml_quantize(name, x, qw), x.size, args.seconds, time.thread_time)
            numpy = _rate(lambda: qt.quantize(small, impl="numpy", imatrix=qw), small.size, args.seconds,
                          time.thread_time)
            for path in paths:
                os.environ["L1QUANT_IQUANT_ISA"] = path
                try:
                    got = qt.quantize(x, impl="native", imatrix=qw)
                except ValueError:
                    continue  # this CPU lacks the path
                if not np.array_equal(got, want):
                    raise SystemExit(f"{name} {path}: bytes differ from ggml")
                native = _rate(lambda: qt.quantize(x, out, impl="native", imatrix=qw), x.size, args.seconds,
                               time.thread_time)
                print(f"{name:<8}{'yes' if qw is not None else 'no':<8}{path:<10}{native:>9.2f}{numpy:>8.2f}"
                      f"{ggml:>7.2f}{native / ggml:>14.1f}x")
            os.environ.pop("L1QUANT_IQUANT_ISA", None)
    print("(M values/s, one thread; higher is better)")


if __name__ == "__main__":
    main()

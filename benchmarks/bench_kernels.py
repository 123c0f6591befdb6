"""Kernel throughput: M params/s per conversion and implementation, against gguf.quants (not a test).

Run:  python benchmarks/bench_kernels.py [--rows 512] [--cols 4096] [--seconds 1.0] [--threads 2] [--clock cpu]

Each call converts one (rows, cols) chunk, about the size the converter hands to a kernel. "gguf" is what the
reference converter does: decode to float32 (for bf16 sources) and call ``gguf.quants.quantize``. The threaded
column runs the default implementation on ``--threads`` threads at once, each on its own chunk, to show the GIL is
released (aggregate M params/s, wall clock). On a busy machine use ``--clock cpu`` for the single-thread columns.

Example:
    $ python benchmarks/bench_kernels.py --seconds 0.5
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections.abc import Callable

import numpy as np
from gguf.quants import quantize as gguf_quantize

from l1quant.kernels import QuantType, decode_bf16, get_quant_type, native_available


def _rate(fn: Callable[[], object], nparams: int, seconds: float, clock: Callable[[], float]) -> float:
    """Best-of-calls M params/s for fn (one warm-up call first), timed with `clock`."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
        if time.perf_counter() > deadline:
            break
    return nparams / max(best, 1e-9) / 1e6


def _threaded_rate(make_fn: Callable[[], Callable[[], object]], nparams: int, threads: int, seconds: float) -> float:
    """Aggregate M params/s with `threads` threads each looping on its own chunk for `seconds`."""
    fns = [make_fn() for _ in range(threads)]
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = time.perf_counter() + seconds + 0.05

    def worker(i: int) -> None:
        fns[i]()
        start.wait()
        while time.perf_counter() < stop:
            fns[i]()
            counts[i] += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return sum(counts) * nparams / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="single-thread columns: wall time, or this thread's CPU time (robust when other jobs share the cores)",
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time

    rng = np.random.default_rng(0)
    shape = (args.rows, args.cols)
    n = args.rows * args.cols
    x32 = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    bf16 = (x32.view(np.uint32) >> 16).astype(np.uint16)
    sources: dict[str, np.ndarray] = {"bf16": bf16, "f32": x32, "f16": x32.astype(np.float16)}
    cases = [("bf16", "q8_0"), ("bf16", "f16"), ("bf16", "bf16"), ("f32", "q8_0"), ("f16", "q8_0"), ("f32", "f16")]

    impls = ["native", "numpy"] if native_available() else ["numpy"]
    print(
        f"chunk {shape} = {n / 1e6:.2f} M params; best call of {args.seconds}s ({args.clock} clock); "
        f"native built: {native_available()}"
    )
    header = f"{'conversion':<14}" + "".join(f"{i:>10}" for i in [*impls, "gguf"])
    header += "".join(f"{i + '/gguf':>14}" for i in impls) + f"{'x' + str(args.threads) + ' thr':>11}"
    print(header)
    print("-" * len(header))
    for src_name, type_name in cases:
        x = sources[src_name]
        qt = get_quant_type(type_name)
        out = np.empty((args.rows, qt.row_nbytes(args.cols)), dtype=np.uint8)
        rates: dict[str, float] = {}
        for impl in impls:
            call = functools.partial(qt.quantize, x, out, impl=impl)
            rates[impl] = _rate(call, n, args.seconds, clock)

        def reference(qt: QuantType = qt, x: np.ndarray = x) -> object:
            f = decode_bf16(x) if x.dtype == np.uint16 else x.astype(np.float32, copy=False)
            return gguf_quantize(f, qt.ggml_type)

        with np.errstate(all="ignore"):
            rates["gguf"] = _rate(reference, n, args.seconds, clock)

        def make_fn(qt: QuantType = qt, x: np.ndarray = x) -> Callable[[], object]:
            o = np.empty((args.rows, qt.row_nbytes(args.cols)), dtype=np.uint8)
            return lambda: qt.quantize(x, o)

        thr = _threaded_rate(make_fn, n, args.threads, args.seconds)
        row = f"{src_name + '->' + type_name:<14}" + "".join(f"{rates[i]:>10.0f}" for i in [*impls, "gguf"])
        row += "".join(f"{rates[i] / rates['gguf']:>13.1f}x" for i in impls) + f"{thr:>11.0f}"
        print(row)
    print("(M params/s; higher is better)")


if __name__ == "__main__":
    main()

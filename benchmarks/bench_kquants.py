"""K-quant benchmark: l1quant's one-pass convert against llama-quantize (and the reference two-step), plus kernels.

Not a test: a script that prints tables. On the L1-shaped synthetic checkpoint (L1-Qwen-1.5B's shapes, 1.78 B
params, bf16; built once under ``--cache`` by bench_convert's builder), for each ``--types`` entry it alternates,
``--repeat`` times, every tool in its own subprocess (wall time, CPU time and the child's peak RSS via
``os.wait4``):

* ``l1quant convert MODEL --type T`` -- the one pass from safetensors;
* ``l1quant quantize BF16.gguf T`` -- l1quant's llama-quantize equivalent;
* llama-quantize from the BF16 GGUF (``llama_model_quantize`` from llama-cpp-python 0.3.36: the function the
  ``llama-quantize`` tool wraps), with the same thread count -- what a user runs after converting;
* with ``--reference``: llama.cpp's converter to BF16, so "reference two-step" = converter + llama-quantize.

It checks once per type that l1quant's convert output and llama-quantize's are byte-identical (sha256). Then the
kernel table: M values/s on one core, float32 input (ggml's quantizer takes float32), l1quant's compiled and
numpy kernels vs ``ggml_quantize_chunk`` from libggml-base, on a 1024 x 4096 slab of normal(0, 0.02) values.

Example:
    $ python benchmarks/bench_kquants.py --repeat 3 --types q4_k_m,q6_k --reference
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from bench_convert import REFERENCE_CANDIDATES, Series, build, compile_l1quant, fmt_table, ref_cmd, sha256, timed
from bench_kernels import _rate

REPO = Path(__file__).resolve().parents[1]

QUANTIZE_SNIPPET = """
import sys, llama_cpp as L
p = L.llama_model_quantize_default_params()
p.nthread = int(sys.argv[3]); p.ftype = getattr(L, "LLAMA_FTYPE_MOSTLY_" + sys.argv[4])
quiet = L.llama_log_callback(lambda *a: None)  # kept referenced: C calls it later
L.llama_log_set(quiet, None)
sys.exit(1 if L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p) else 0)
"""


def l1quant_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "l1quant", *args, "-q"]


def kernel_table(seconds: float) -> list[list[str]]:
    """M values/s, one thread (CPU clock), float32 slab -> each type: l1quant native / numpy vs ggml."""
    sys.path.insert(0, str(REPO / "tests"))
    from ggml_oracle import ggml_quantize

    from l1quant.kernels import get_quant_type, native_available

    x = (np.random.default_rng(0).standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    rows = [["type", "l1quant compiled", "l1quant numpy", "ggml _ref", "compiled / ggml"]]
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"):
        qt = get_quant_type(name)
        out = np.empty((x.shape[0], qt.row_nbytes(x.shape[1])), np.uint8)
        native = _rate(lambda: qt.quantize(x, out, impl="native"), x.size, seconds, time.thread_time) \
            if native_available() else float("nan")
        small = x[:64]  # the numpy K searches are slow: time a smaller slab (rates are per value)
        numpy = _rate(lambda: qt.quantize(small, impl="numpy"), small.size, seconds, time.thread_time)
        ggml = _rate(lambda: ggml_quantize(name, x), x.size, seconds, time.thread_time)
        rows.append([name, f"{native:.0f}", f"{numpy:.1f}", f"{ggml:.0f}", f"{native / ggml:.1f}x"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache", help="checkpoint cache folder")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per tool and type")
    ap.add_argument("--types", default="q4_k_m,q6_k", help="comma-separated llama-quantize types")
    ap.add_argument("--threads", type=int, default=None, help="threads for every tool (default: all cores)")
    ap.add_argument("--reference", action="store_true", help="also time llama.cpp's converter to BF16")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel table")
    ap.add_argument("--kernel-seconds", type=float, default=1.0, help="timing budget per kernel")
    args = ap.parse_args()

    from l1quant.conversion.pipeline import default_threads
    from l1quant.testing import L1_SHAPE

    compile_l1quant()
    threads = args.threads or default_threads()
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    out = args.cache / "out"
    out.mkdir(exist_ok=True)
    model = build(args.cache, "L1-shaped", dict(L1_SHAPE))
    bf16 = out / "input-BF16.gguf"
    timed(l1quant_cmd("convert", str(model), "--type", "bf16", "-o", str(bf16)))  # = the reference's BF16 bytes
    reference = next((p for p in REFERENCE_CANDIDATES if p.is_file()), None)
    if os.environ.get("L1QUANT_REFERENCE"):
        reference = Path(os.environ["L1QUANT_REFERENCE"])
    if args.reference and reference is None:
        raise SystemExit("reference converter not found (set L1QUANT_REFERENCE)")

    print(f"machine: {os.cpu_count()} CPUs, threads {threads}, repeat {args.repeat}, "
          f"load avg at start {os.getloadavg()[0]:.1f}", flush=True)
    rows = [["type", "tool", "wall s (med)", "min", "cpu s", "peak RSS MiB", "llama-quantize / tool"]]
    ref_convert = Series("llama.cpp convert -> BF16")
    for typ in types:
        conv, quant, lq = Series("l1quant convert (one pass)"), Series("l1quant quantize"), Series("llama-quantize")
        identical = None
        for i in range(args.repeat):
            o_conv, o_quant, o_lq = out / f"conv-{typ}.gguf", out / f"quant-{typ}.gguf", out / f"lq-{typ}.gguf"
            conv.runs.append(timed(l1quant_cmd("convert", str(model), "--type", typ, "-o", str(o_conv),
                                               "--threads", str(threads)), inputs=[model]))
            lq.runs.append(timed([sys.executable, "-c", QUANTIZE_SNIPPET, str(bf16), str(o_lq), str(threads),
                                  typ.upper()], inputs=[bf16]))
            quant.runs.append(timed(l1quant_cmd("quantize", str(bf16), str(o_quant), typ, "--threads",
                                                str(threads)), inputs=[bf16]))
            if args.reference and typ == types[0]:
                r = out / "ref-BF16.gguf"
                ref_convert.runs.append(timed(ref_cmd(reference, model, "bf16", r)))  # type: ignore[arg-type]
                r.unlink()
            if identical is None:
                identical = sha256(o_conv) == sha256(o_lq) == sha256(o_quant)
            print(f"  {typ} run {i + 1}: convert {conv.runs[-1].wall:6.2f} s, quantize {quant.runs[-1].wall:6.2f} s, "
                  f"llama-quantize {lq.runs[-1].wall:6.2f} s", flush=True)
            for p in (o_conv, o_quant, o_lq):
                p.unlink()
        base = lq.med("wall")
        for s in (conv, quant, lq):
            rows.append([typ, s.tool, f"{s.med('wall'):.2f}", f"{min(r.wall for r in s.runs):.2f}",
                         f"{s.med('cpu'):.2f}", f"{s.med('rss') / 2**20:.0f}", f"{base / s.med('wall'):.1f}x"])
        if ref_convert.runs:
            two = ref_convert.med("wall") + base
            rows.append([typ, "reference two-step (convert + llama-quantize)", f"{two:.2f}", "", "",
                         f"{max(ref_convert.med('rss'), lq.med('rss')) / 2**20:.0f}",
                         f"one pass {two / conv.med('wall'):.1f}x faster"])
        rows.append([typ, "bytes identical (convert, quantize, llama-quantize)", "yes" if identical else "NO",
                     "", "", "", ""])
    bf16.unlink()
    print()
    print(fmt_table(rows))
    if not args.no_kernels:
        print()
        print(fmt_table(kernel_table(args.kernel_seconds)))
        print("(M values/s, one thread, CPU clock, float32 1024 x 4096 slab; numpy on a 64-row slab)")
    print(f"load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

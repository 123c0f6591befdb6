"""End-to-end conversion benchmark: l1quant vs llama.cpp's converter (and llama-quantize), wall time and peak RSS.

Not a test: a script that prints a table. It builds the L1-shaped synthetic checkpoint (L1-Qwen-1.5B's exact shapes,
1.78 B params, deterministic random bf16, 3.55 GB) once under ``--cache`` (default ``.bench-cache/`` in the repo,
git-ignored), then for every ``--types`` entry runs ``l1quant convert`` and the reference converter alternately
``--repeat`` times (ours, reference, ours, reference, ...: the machine is shared and noisy, alternation spreads the
noise over both) and prints medians and ratios. Every run is a fresh subprocess measured with ``os.wait4``: wall
time, user+sys CPU, and that child's own peak RSS (``ru_maxrss``, file-backed pages included).

Also measured:
  * ``--small``: the Qwen2.5-0.5B-shaped checkpoint (l1quant only unless ``--small-reference``), to show the peak
    RSS does not grow with the model;
  * llama-quantize (llama.cpp's C quantizer, here through llama-cpp-python's ``llama_model_quantize``, the function
    the ``llama-quantize`` tool wraps) from an F16 GGUF to Q8_0 with ``--threads`` threads, unless ``--no-quantize``;
  * kernel throughput (M params/s, one thread) of l1quant.kernels vs ``gguf.quants`` for bf16 -> each type on a
    fixed slab.

The reference is ``$L1QUANT_REFERENCE`` (a convert_hf_to_gguf.py path) or the llama-cpp-python 0.3.36 sdist
under /work/ref. ``--no-reference`` skips it. Outputs are deleted after each run (disk), after checking once per
type that ours and the reference's are byte-identical.

Example:
    $ python benchmarks/bench_convert.py --repeat 3 --types q8_0 --small
    $ python benchmarks/bench_convert.py --no-reference --types q8_0,f16,bf16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_kernels import _rate  # this folder: the script's own directory is on sys.path

REPO = Path(__file__).resolve().parents[1]
_REF_REL = Path("llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py")
#: Where the reference is looked for when L1QUANT_REFERENCE is unset: beside the clone (where .ci/run unpacks the
#: sdist) first, then the development machine's copy.
REFERENCE_CANDIDATES = (REPO.parent / "l1quant-ref" / _REF_REL, Path("/work/ref") / _REF_REL)
TOKENIZER = REPO / "tests" / "data" / "r1-distill-tokenizer"

#: Qwen2.5-0.5B's shapes (tied embeddings, as the real model) for the memory-flatness check.
SMALL_SHAPE: dict[str, object] = {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "ff": 4864,
                                  "vocab": 151936, "tied": True, "max_pos": 32768}


@dataclass
class Run:
    """One subprocess: wall seconds, CPU seconds (user+sys), peak RSS in bytes."""

    wall: float
    cpu: float
    rss: int


@dataclass
class Series:
    tool: str
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def warm(paths: Sequence[Path]) -> None:
    """Read every file of ``paths`` (a folder: its files) once, so that a timed run finds them in the page cache.

    Why: this VM runs DAMON reclaim (``/sys/kernel/mm/damon``: page out what nobody touched for 60 s), so the input
    of the tool that runs second is partly paged out while the first tool's run lasts minutes. Measured 2026-12-07
    (IQ2_M bench inputs): after one llama-quantize run, 1.7 of the checkpoint's 3.3 GB were still cached; the
    l1quant run that followed took 30.4 s (3.8 s sys) against 28.7 s (1.0 s sys) 20 s later. Every tool's inputs
    are read before its timer starts, so each run starts from the same warm cache.
    """
    buf = bytearray(16 << 20)
    for p in paths:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.is_file():
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass


def compile_l1quant() -> None:
    """Byte-compile the l1quant package, as ``pip install`` does when it installs it.

    Why: with ``PYTHONDONTWRITEBYTECODE`` set (this VM sets it) a checkout's modules are compiled from source at
    every run: measured 2026-12-08, 0.16 s of each l1quant run's single-threaded start (97 modules), a cost no
    installed copy pays. ``compileall`` writes the ``__pycache__`` files (git ignores them) whatever the variable
    says; the runs then only read them.
    """
    import compileall

    import l1quant

    compileall.compile_dir(Path(l1quant.__file__).parent, quiet=1)


def timed(cmd: list[str], env: dict[str, str] | None = None, inputs: Sequence[Path] = ()) -> Run:
    """Run ``cmd`` to completion; fail loudly (with its stderr tail) if it fails. ``inputs``: files or folders
    the command reads, read once before the timer starts (:func:`warm`)."""
    warm(inputs)
    os.sync()  # start every run from a clean dirty-page state: the previous run's writeback is not billed to it
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert p.stderr is not None
    err = p.stderr.read()  # drain (progress bars, logs) so the child never blocks on a full pipe
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{tail}")
    return Run(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
    return h.hexdigest()


def build(cache: Path, name: str, shape: dict[str, object]) -> Path:
    """The cached synthetic checkpoint ``cache/name`` (built once; a marker file says it is complete)."""
    from l1quant.testing import make_checkpoint

    d = cache / name
    marker = d / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == {k: v for k, v in shape.items()}:
        return d
    if d.exists():
        shutil.rmtree(d)
    print(f"building {d} ...", flush=True)
    t0 = time.perf_counter()
    make_checkpoint(d, tokenizer_dir=TOKENIZER, seed=0, **shape)  # type: ignore[arg-type]
    marker.write_text(json.dumps(shape))
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return d


def ours_cmd(model: Path, typ: str, out: Path, threads: int | None, chunk_mb: float | None,
             durable: bool = False) -> list[str]:
    """The l1quant CLI; ``durable`` adds ``--fsync`` (file and folder flushed to disk before publishing)."""
    cmd = [sys.executable, "-m", "l1quant", "convert", str(model), "--type", typ, "-o", str(out)]
    if durable:
        cmd.append("--fsync")
    if threads:
        cmd += ["--threads", str(threads)]
    if chunk_mb:
        cmd += ["--chunk-mb", str(chunk_mb)]
    return cmd


def ref_cmd(reference: Path, model: Path, typ: str, out: Path) -> list[str]:
    return [sys.executable, str(reference), str(model), "--outtype", typ, "--outfile", str(out)]


QUANTIZE_SNIPPET = """
import sys, llama_cpp as L
p = L.llama_model_quantize_default_params()
p.nthread = int(sys.argv[3]); p.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
quiet = L.llama_log_callback(lambda *a: None)  # kept referenced: C calls it later
L.llama_log_set(quiet, None)
rc = L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p)
sys.exit(1 if rc else 0)
"""


def quantize_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def kernel_throughput(seconds: float = 0.5) -> list[list[str]]:
    """M params/s, one thread, bf16 slab (1024 x 1536) -> each type: l1quant (native, numpy) vs gguf.quants."""
    from gguf.quants import quantize as gguf_quantize

    from l1quant.kernels import decode_bf16, get_quant_type, native_available

    rng = np.random.default_rng(0)
    x32 = (rng.standard_normal((1024, 1536)) * 0.02).astype(np.float32)
    x = (x32.view(np.uint32) >> 16).astype(np.uint16)
    n = x.size

    def rate(fn: Callable[[], object]) -> float:
        return _rate(fn, n, seconds, time.thread_time)  # CPU clock: steadier when other jobs share the cores

    impls = (["native"] if native_available() else []) + ["numpy"]
    rows = [["bf16 -> type", *[f"l1quant {i}" for i in impls], "gguf.quants", "speedup"]]
    for typ in ("q8_0", "f16", "bf16"):
        qt = get_quant_type(typ)
        out = np.empty((x.shape[0], qt.row_nbytes(x.shape[1])), np.uint8)
        ours = [rate(lambda qt=qt, i=i, out=out: qt.quantize(x, out, impl=i)) for i in impls]
        with np.errstate(all="ignore"):
            ref = rate(lambda qt=qt: gguf_quantize(decode_bf16(x), qt.ggml_type))
        rows.append([typ, *[f"{r:.0f}" for r in ours], f"{ref:.0f}", f"{ours[0] / ref:.1f}x"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache", help="checkpoint cache folder")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per tool and type")
    ap.add_argument("--types", default="q8_0", help="comma-separated: q8_0,f16,bf16")
    ap.add_argument("--threads", type=int, default=None, help="l1quant --threads (default: all cores)")
    ap.add_argument("--chunk-mb", type=float, default=None, help="l1quant --chunk-mb (default: its default)")
    ap.add_argument("--no-reference", action="store_true", help="skip llama.cpp's converter")
    ap.add_argument("--no-quantize", action="store_true", help="skip llama-quantize (F16 GGUF -> Q8_0)")
    ap.add_argument("--small", action="store_true", help="also the Qwen2.5-0.5B shape (RSS flatness), l1quant only")
    ap.add_argument("--small-reference", action="store_true", help="also run the reference on the 0.5B shape")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel throughput table")
    ap.add_argument("--fsync-variant", action="store_true",
                    help="also time `l1quant convert --fsync` (what durability across a power loss costs)")
    args = ap.parse_args()

    from l1quant.conversion.pipeline import default_threads
    from l1quant.testing import L1_SHAPE

    compile_l1quant()
    env_ref = os.environ.get("L1QUANT_REFERENCE")
    reference = Path(env_ref) if env_ref else next((p for p in REFERENCE_CANDIDATES if p.is_file()),
                                                   REFERENCE_CANDIDATES[0])
    use_ref = not args.no_reference
    if use_ref and not reference.is_file():
        raise SystemExit(f"{reference}: reference converter not found (set L1QUANT_REFERENCE or --no-reference)")
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    threads = args.threads or default_threads()
    args.cache.mkdir(parents=True, exist_ok=True)
    out_dir = args.cache / "out"
    out_dir.mkdir(exist_ok=True)
    shapes = [("L1-1.5B", build(args.cache, "L1-shaped", dict(L1_SHAPE)))]
    if args.small:
        shapes.append(("Qwen2.5-0.5B", build(args.cache, "Qwen2.5-0.5B-shaped", dict(SMALL_SHAPE))))

    print(f"machine: {os.cpu_count()} CPUs, l1quant threads {threads}, repeat {args.repeat}, "
          f"load avg at start {os.getloadavg()[0]:.1f}", flush=True)
    results: list[tuple[str, str, Series, Series | None, bool | None]] = []
    for label, model in shapes:
        for typ in types:
            ours, ref, durable = Series("l1quant"), Series("llama.cpp"), Series("l1quant --fsync")
            run_ref = use_ref and (label == "L1-1.5B" or args.small_reference)
            identical: bool | None = None
            for i in range(args.repeat):
                o = out_dir / f"ours-{typ}.gguf"
                ours.runs.append(timed(ours_cmd(model, typ, o, args.threads, args.chunk_mb), inputs=[model]))
                print(f"  {label} {typ} l1quant   run {i + 1}: {ours.runs[-1].wall:6.2f} s "
                      f"{ours.runs[-1].rss / 2**20:7.0f} MiB", flush=True)
                if args.fsync_variant:
                    o.unlink()
                    durable.runs.append(timed(ours_cmd(model, typ, o, args.threads, args.chunk_mb, durable=True),
                                               inputs=[model]))
                    print(f"  {label} {typ} l1quant --fsync run {i + 1}: {durable.runs[-1].wall:6.2f} s",
                          flush=True)
                if run_ref:
                    r = out_dir / f"ref-{typ}.gguf"
                    ref.runs.append(timed(ref_cmd(reference, model, typ, r), inputs=[model]))
                    print(f"  {label} {typ} llama.cpp run {i + 1}: {ref.runs[-1].wall:6.2f} s "
                          f"{ref.runs[-1].rss / 2**20:7.0f} MiB", flush=True)
                    if identical is None:
                        identical = sha256(o) == sha256(r)
                    r.unlink()
                if (not args.no_quantize and typ == "q8_0" and label == "L1-1.5B" and i == 0
                        and quantize_available()):
                    # F16 GGUF for llama-quantize: ours is byte-identical to the reference's, and faster to make
                    f16 = out_dir / "input-f16.gguf"
                    timed(ours_cmd(model, "f16", f16, args.threads, args.chunk_mb))
                    q = Series("llama-quantize")
                    for j in range(args.repeat):
                        qo = out_dir / "quantize-q8_0.gguf"
                        q.runs.append(timed([sys.executable, "-c", QUANTIZE_SNIPPET, str(f16), str(qo), str(threads)]))
                        print(f"  {label} q8_0 llama-quantize (from F16) run {j + 1}: {q.runs[-1].wall:6.2f} s "
                              f"{q.runs[-1].rss / 2**20:7.0f} MiB", flush=True)
                        qo.unlink()
                    f16.unlink()
                    results.append((label, "q8_0*", q, None, None))
                o.unlink()
            results.append((label, typ, ours, ref if ref.runs else None, identical))
            if durable.runs:
                results.append((label, typ, durable, ref if ref.runs else None, None))

    rows = [["shape", "type", "tool", "wall s (med)", "min", "cpu s", "peak RSS MiB", "ref/ours wall",
             "ours/ref RSS", "bytes equal"]]
    by_key = {(lbl, t): s for lbl, t, s, _r, _i in results if s.tool == "l1quant"}
    for label, typ, s, ref_s, identical in results:
        # the reference row is printed once, after the plain l1quant row it was alternated with
        for series in [s] + ([ref_s] if ref_s is not None and s.tool == "l1quant" else []):
            is_ours = series.tool.startswith("l1quant")
            ratio_w = ratio_r = ""
            if is_ours and ref_s is not None:
                ratio_w = f"{ref_s.med('wall') / series.med('wall'):.1f}x"
                ratio_r = f"{series.med('rss') / ref_s.med('rss'):.2f}"
            if series.tool == "llama-quantize":
                ours_q8 = by_key.get((label, "q8_0"))
                if ours_q8 is not None:
                    ratio_w = f"{series.med('wall') / ours_q8.med('wall'):.1f}x"
                    ratio_r = f"{ours_q8.med('rss') / series.med('rss'):.2f}"
            rows.append([label, typ, series.tool, f"{series.med('wall'):.2f}",
                         f"{min(r.wall for r in series.runs):.2f}", f"{series.med('cpu'):.2f}",
                         f"{series.med('rss') / 2**20:.0f}", ratio_w, ratio_r,
                         "" if not is_ours or identical is None else ("yes" if identical else "NO")])
    print()
    print(fmt_table(rows))
    print("(q8_0* = llama-quantize from an F16 GGUF; its ratio columns compare it with l1quant q8_0 from bf16.)")
    small = [s for lbl, t, s, _r, _i in results if lbl == "Qwen2.5-0.5B"]
    big = [s for lbl, t, s, _r, _i in results if lbl == "L1-1.5B" and s.tool.startswith("l1quant")]
    if small and big:
        print(f"l1quant peak RSS, 0.5B vs 1.5B shape: {max(s.med('rss') for s in small) / 2**20:.0f} MiB vs "
              f"{max(s.med('rss') for s in big) / 2**20:.0f} MiB (max over types)")
    if not args.no_kernels:
        print()
        print(fmt_table(kernel_throughput()))
        print("(M params/s, one thread, CPU clock, bf16 slab 1024 x 1536; gguf.quants = the reference converter's "
              "numpy path)")
    print(f"load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

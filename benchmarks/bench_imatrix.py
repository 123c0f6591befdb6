"""``l1quant imatrix`` against ``llama-imatrix`` on the same GGUF: wall time, peak RSS, and the bytes.

On a synthetic checkpoint with L1-Qwen-1.5B's shapes (built once under ``--cache``) converted losslessly to BF16
(``--small``: Qwen2.5-0.5B's shapes; ``--tiny``: a 2-layer toy, seconds), both tools compute the importance matrix
over the same text with the same ``-c``, ``--chunks``, ``-b`` and ``-t``; runs alternate (reference first, then
ours first, ...) so a slow spell on a shared machine favours neither, and the medians are reported. Every run's
file must be byte-identical to llama-imatrix's (the benchmark stops otherwise). Peak RSS is the child's
``ru_maxrss``.

    python benchmarks/bench_imatrix.py --chunks 20 --threads 8 --repeat 3          # L1 shapes: the record
    python benchmarks/bench_imatrix.py --tiny --ctx 128 --chunks 4 --repeat 2      # a quick check that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests" / "data" / "r1-distill-tokenizer"
CLI = "import sys; from l1quant.cli import main; sys.exit(main(prog_name='l1quant'))"


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB of the child, output tail)."""
    t = time.perf_counter()
    log_path = f"/tmp/bench_imatrix.{os.getpid()}.log"
    pid = os.fork()
    if pid == 0:  # child: exec with stdout/stderr to a log; never return into the benchmark
        try:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execvpe(cmd[0], cmd, {**os.environ, "PYTHONPATH": str(REPO)})
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    text = Path(log_path).read_text(errors="replace")
    os.unlink(log_path)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{text[-2000:]}")
    return wall, ru.ru_maxrss / 1024, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache")
    ap.add_argument("--model", type=Path, default=None, help="a GGUF to use instead of the synthetic checkpoint")
    ap.add_argument("--text", type=Path, default=REPO / "l1quant" / "data" / "calibration.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternated; medians are reported")
    ap.add_argument("--small", action="store_true", help="Qwen2.5-0.5B shapes instead of L1-1.5B")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy (hidden 256): checks the script runs")
    ap.add_argument("--no-repack", action="store_true", help="both tools without extra buffer types (-nr)")
    default_exe = REPO.parent / "l1quant-ref" / "llama-perplexity-build" / "bin" / "llama-imatrix"
    ap.add_argument("--llama-imatrix", type=Path, default=Path(os.environ.get("L1QUANT_LLAMA_IMATRIX", default_exe)))
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    import l1quant
    from l1quant.testing import L1_SHAPE, make_checkpoint

    out = args.cache / "imatrix"
    out.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        gguf, name = args.model, args.model.stem
    else:
        shape = dict(L1_SHAPE)
        name = "L1-shaped"
        if args.small:
            shape.update(hidden=896, layers=24, heads=14, kv_heads=2, ff=4864)
            name = "Qwen2.5-0.5B-shaped"
        if args.tiny:
            shape.update(hidden=256, layers=2, heads=4, kv_heads=2, ff=512)
            name = "tiny"
        ck = args.cache / name
        if not (ck / ".complete").exists():
            make_checkpoint(ck, tokenizer_dir=TOKENIZER, seed=0, **shape)
            (ck / ".complete").write_text("")
        gguf = out / f"{name}-BF16.gguf"
        if not gguf.exists():
            l1quant.convert(ck, type="bf16", output=gguf, threads=args.threads)
    common = ["-f", str(args.text), "-c", str(args.ctx), "--chunks", str(args.chunks), "-b", str(args.batch),
              "-t", str(args.threads), *(["-nr"] if args.no_repack else [])]
    ref, ours = out / "ref.imatrix.gguf", out / "ours.imatrix.gguf"

    def run_ref() -> tuple[float, float, str]:
        return _timed([str(args.llama_imatrix), "-m", str(gguf), "-o", str(ref), *common])

    def run_ours() -> tuple[float, float, str]:
        return _timed([sys.executable, "-c", CLI, "imatrix", str(gguf), "-o", str(ours), "-q", *common])

    refs: list[tuple[float, float, str]] = []
    mine: list[tuple[float, float, str]] = []
    for i in range(args.repeat):
        for side in ((run_ours, run_ref) if i % 2 else (run_ref, run_ours)):
            (mine if side is run_ours else refs).append(side())
        if ours.read_bytes() != ref.read_bytes():
            sys.exit(f"run {i + 1}: {ours} differs from llama-imatrix's {ref}")
        print(f"run {i + 1}: llama-imatrix {refs[-1][0]:.1f} s, l1quant imatrix {mine[-1][0]:.1f} s "
              f"(files identical)", flush=True)
    med = statistics.median
    wr, wm = med(r[0] for r in refs), med(m[0] for m in mine)
    rr, rm = max(r[1] for r in refs), max(m[1] for m in mine)
    print(f"{name} BF16, {args.chunks} chunks x {args.ctx} tokens, -b {args.batch}, {args.threads} threads, "
          f"medians of {args.repeat} alternated runs")
    print(f"llama-imatrix     {wr:8.1f} s  peak RSS {rr:7.0f} MiB")
    print(f"l1quant imatrix   {wm:8.1f} s  peak RSS {rm:7.0f} MiB  (llama-imatrix / l1quant = {wr / wm:.3f})")


if __name__ == "__main__":
    main()

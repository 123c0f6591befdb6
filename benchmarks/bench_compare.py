"""``l1quant compare`` against the two ``llama-perplexity`` runs it replaces: wall time and peak RSS.

On a synthetic checkpoint with L1-Qwen-1.5B's shapes (built once under ``--cache``), converted to F16 (the base)
and one other type: ``llama-perplexity --kl-divergence-base`` on the base plus ``--kl-divergence`` on the other file,
versus one ``compare`` (base pass + one type) with a fresh base cache, same text, context, chunks and thread count.
Peak RSS is the child's ``ru_maxrss``: compare streams the base log-probs from disk (one chunk in memory), so its
peak does not grow with ``--chunks``.

    python benchmarks/bench_compare.py --chunks 20 --type q4_k_m --threads 2 --repeat 3
    python benchmarks/bench_compare.py --small --chunks 4 --repeat 1    # Qwen2.5-0.5B shapes, quicker
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
# ``l1quant compare`` whether or not the command is registered yet: importing the module adds it to the group.
CLI = "import sys, l1quant.cli.compare; from l1quant.cli import main; sys.exit(main())"


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB of the child, output tail)."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec with stdout/stderr to a temp log; never return into the benchmark
        try:
            log = os.open(f"/tmp/bench_compare.{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execvpe(cmd[0], cmd, env or os.environ.copy())
        finally:
            os._exit(127)  # exec failed (e.g. no llama-perplexity): the parent reports the exit code
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    text = Path(f"/tmp/bench_compare.{pid}.log").read_text(errors="replace")
    os.unlink(f"/tmp/bench_compare.{pid}.log")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{text[-2000:]}")
    return wall, ru.ru_maxrss / 1024, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="Qwen2.5-0.5B shapes instead of L1-1.5B")
    ap.add_argument("--compare-first", action="store_true",
                    help="start with compare instead of llama-perplexity (later runs alternate)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternated; medians are reported")
    ap.add_argument("--ref-batch", type=int, default=0,
                    help="llama-perplexity -b (default: its own, 2048; pass the --ctx value for one chunk at a time)")
    default_exe = REPO.parent / "l1quant-ref" / "llama-perplexity-build" / "bin" / "llama-perplexity"
    ap.add_argument("--llama-perplexity", type=Path,
                    default=Path(os.environ.get("L1QUANT_LLAMA_PERPLEXITY", default_exe)))
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    import l1quant
    from l1quant.testing import L1_SHAPE, make_checkpoint

    shape = dict(L1_SHAPE)
    name = "L1-shaped"
    if args.small:
        shape.update(hidden=896, layers=24, heads=14, kv_heads=2, ff=4864)
        name = "Qwen2.5-0.5B-shaped"
    ck = args.cache / name
    if not (ck / ".complete").exists():
        make_checkpoint(ck, tokenizer_dir=TOKENIZER, seed=0, **shape)
        (ck / ".complete").write_text("")
    out = args.cache / "compare"
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for t in ("f16", args.type):
        files[t] = out / f"{name}-{t.upper()}.gguf"
        if not files[t].exists():
            l1quant.convert(ck, type=t, output=files[t], threads=args.threads)
    text = REPO / "l1quant" / "data" / "compare_text.txt"
    common = ["-c", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads)]
    # llama-perplexity's logical batch: its default (2048) runs 2048/ctx chunks side by side in one context;
    # ``--ref-batch CTX`` runs one chunk at a time, as compare does.
    ref_batch = ["-b", str(args.ref_batch)] if args.ref_batch else []
    base = out / "ref-base.kld"
    ours = out / "ours-base.kld"

    def run_ref() -> tuple[float, float, float, float]:
        w1, r1, _ = _timed([str(args.llama_perplexity), "-m", str(files["f16"]), "-f", str(text),
                            "--kl-divergence-base", str(base), *common, *ref_batch])
        w2, r2, _ = _timed([str(args.llama_perplexity), "-m", str(files[args.type]), "-f", str(text),
                            "--kl-divergence-base", str(base), "--kl-divergence", *common, *ref_batch])
        return w1, r1, w2, r2

    def run_ours() -> tuple[float, float, str]:
        for p in (ours, ours.with_name(ours.name + ".json")):
            if p.exists():
                p.unlink()
        return _timed([sys.executable, "-c", CLI, "compare", str(files[args.type]), "--base",
                       str(files["f16"]), "--text", str(text), "--ctx", str(args.ctx), "--chunks",
                       str(args.chunks), "-t", str(args.threads), "--base-logits", str(ours), "-q"])

    # Alternate the order (ref first, then ours first, ...) so a slow spell on a shared machine, or the page cache
    # warming up, does not favour one side; report medians and their ratio.
    refs: list[tuple[float, float, float, float]] = []
    mine: list[tuple[float, float, str]] = []
    for i in range(args.repeat):
        ours_first = (i % 2 == 1) != args.compare_first
        if ours_first:
            mine.append(run_ours())
            refs.append(run_ref())
        else:
            refs.append(run_ref())
            mine.append(run_ours())
        r, m = refs[-1], mine[-1]
        print(f"run {i + 1}: llama-perplexity {r[0]:.1f} + {r[2]:.1f} = {r[0] + r[2]:.1f} s, "
              f"compare {m[0]:.1f} s", flush=True)
    med = statistics.median
    w1, w2 = med(r[0] for r in refs), med(r[2] for r in refs)
    wt = med(r[0] + r[2] for r in refs)
    w3 = med(m[0] for m in mine)
    r_ref = max(max(r[1], r[3]) for r in refs)
    r3 = max(m[1] for m in mine)
    table = mine[-1][2]
    batch = f"-b {args.ref_batch}" if args.ref_batch else "default -b (2048)"
    print(f"{name}, {args.chunks} chunks x {args.ctx} tokens, {args.threads} threads, base F16 vs "
          f"{args.type.upper()}, medians of {args.repeat} alternated runs; llama-perplexity with {batch}")
    print(f"llama-perplexity base run      {w1:8.1f} s")
    print(f"llama-perplexity KLD run       {w2:8.1f} s")
    print(f"llama-perplexity total         {wt:8.1f} s  peak RSS {r_ref:7.0f} MiB")
    print(f"l1quant compare (base + type)  {w3:8.1f} s  peak RSS {r3:7.0f} MiB  (llama-perplexity / compare "
          f"= {wt / w3:.3f})")
    print(f"base log-prob file {ours.stat().st_size / 2**20:.0f} MiB on disk (llama-perplexity's "
          f"{base.stat().st_size / 2**20:.0f} MiB)")
    print(table.strip().splitlines()[-1] if table.strip() else "")
    print("\n".join(table.strip().splitlines()[:4]))


if __name__ == "__main__":
    main()

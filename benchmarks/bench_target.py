"""Issue 20, Done-when 3: the cost of the ``auto --target-size`` search against one llama-quantize Q4_K_M run.

Not a test: a script that prints a table. On an existing BF16 GGUF and its imatrix (default: the L1-shaped
checkpoint, L1-Qwen-1.5B's exact shapes with random weights, and its llama-imatrix file), it first runs
llama-quantize Q4_K_M once to learn the target (that file's size in bytes), then alternates ``--repeat`` rounds of

  (a) ``l1quant quantize BF16 OUT auto --target-size Q4_K_M_BYTES --imatrix F -t T --dry-run``
  (b) the same without ``--dry-run`` (the search time is the log line ``search: N s`` the run prints)
  (c) ``llama-quantize --imatrix F BF16 OUT q4_k_m T`` (``$L1QUANT_LLAMA_QUANTIZE``)

(alternation spreads a shared machine's noise over all three) and prints medians of wall time, CPU time and peak
RSS (``os.wait4`` of each child), the search's share, and the ratios the issue asks for: search / (c) < 1 and
dry-run / (c) < 0.2. Outputs are deleted after each run.

Example:
    $ python benchmarks/bench_target.py --repeat 3 -t 2
    $ python benchmarks/bench_target.py --repeat 2 --skip-full   # (a) and (c) only
    $ python benchmarks/bench_target.py --before /tmp/old   # also (a) with the l1quant package in /tmp/old
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_convert import Run, Series, fmt_table  # this folder: the script's own directory is on sys.path

BENCH = Path("/work/bench/imatrix-bench")
SEARCH_LINE = re.compile(r"search: ([0-9.]+) s")


def timed_log(cmd: list[str], env: dict[str, str] | None = None) -> tuple[Run, str]:
    """Like bench_convert.timed, but also return the child's stderr (the log holds the ``search:`` line)."""
    os.sync()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert p.stderr is not None
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}\n{err[-2000:]}")
    return Run(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024), err


def search_seconds(log: str) -> float:
    m = SEARCH_LINE.findall(log)
    if not m:
        raise SystemExit("no 'search: N s' line in the l1quant log")
    return float(m[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=BENCH / "L1-shaped-BF16.gguf")
    ap.add_argument("--imatrix", type=Path, default=BENCH / "ref.imatrix.gguf")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="skip (b), the full auto run")
    ap.add_argument("--before", type=Path, default=None,
                    help="a folder holding an older l1quant package: its --dry-run is alternated too (before/after)")
    ap.add_argument("--size", type=int, default=None,
                    help="the target in bytes (Q4_K_M's size, known from an earlier run): skips the first probe run")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the outputs (default: a temp dir)")
    a = ap.parse_args()
    lq = os.environ.get("L1QUANT_LLAMA_QUANTIZE")
    if not lq:
        raise SystemExit("set L1QUANT_LLAMA_QUANTIZE (source env.sh)")
    tmp = Path(tempfile.mkdtemp(dir=a.tmp, prefix="bench-target-"))
    out = tmp / "out.gguf"
    t = str(a.threads)
    ref_cmd = [lq, "--imatrix", str(a.imatrix), str(a.model), str(out), "q4_k_m", t]

    def ours(dry: bool, size: int) -> list[str]:
        return [sys.executable, "-m", "l1quant", "quantize", str(a.model), str(out), "auto", "--target-size",
                str(size), "--imatrix", str(a.imatrix), "-t", t, *(["--dry-run"] if dry else [])]

    ref, dry, full = Series("llama-quantize Q4_K_M"), Series("auto --dry-run"), Series("auto (full)")
    old = Series(f"auto --dry-run, {a.before}")
    old_env = None if a.before is None else {**os.environ, "PYTHONPATH": str(a.before)}
    old_search: list[float] = []
    dry_search: list[float] = []
    full_search: list[float] = []
    if a.size is None:
        r, _ = timed_log(ref_cmd)
        size = out.stat().st_size
        out.unlink()
        ref.runs.append(r)
        print(f"target = llama-quantize Q4_K_M's size: {size} bytes; ref run 1: {r.wall:.1f} s", flush=True)
    else:
        size = a.size
    for i in range(a.repeat):
        r, log = timed_log(ours(True, size))
        dry.runs.append(r)
        dry_search.append(search_seconds(log))
        print(f"round {i + 1}: dry-run {r.wall:.1f} s (search {dry_search[-1]:.1f} s)", flush=True)
        if old_env is not None:
            r, log = timed_log(ours(True, size), old_env)
            old.runs.append(r)
            old_search.append(search_seconds(log))
            print(f"round {i + 1}: dry-run (before) {r.wall:.1f} s (search {old_search[-1]:.1f} s)", flush=True)
        if not a.skip_full:
            r, log = timed_log(ours(False, size))
            full.runs.append(r)
            full_search.append(search_seconds(log))
            got = out.stat().st_size
            out.unlink(missing_ok=True)
            for p in tmp.glob("*.tensor-types.txt"):
                p.unlink()
            print(f"round {i + 1}: full {r.wall:.1f} s (search {full_search[-1]:.1f} s), {got} bytes", flush=True)
        if i + 1 < a.repeat or len(ref.runs) < a.repeat:
            r, _ = timed_log(ref_cmd)
            out.unlink(missing_ok=True)
            ref.runs.append(r)
            print(f"round {i + 1}: llama-quantize {r.wall:.1f} s", flush=True)

    rows = [["run", "n", "wall s (median)", "CPU s", "peak RSS MiB"]]
    for s in (ref, dry, old, full):
        if s.runs:
            rows.append([s.tool, str(len(s.runs)), f"{s.med('wall'):.1f}", f"{s.med('cpu'):.1f}",
                         f"{s.med('rss') / 2**20:.0f}"])
    print(fmt_table(rows))
    q = ref.med("wall")
    print(f"dry-run / llama-quantize Q4_K_M (wall medians): {dry.med('wall') / q:.2f}  (bar: < 0.20)")
    print(f"search inside the dry-run (median): {statistics.median(dry_search):.1f} s")
    if old_search:
        print(f"search inside the dry-run, before (median): {statistics.median(old_search):.1f} s")
    if full_search:
        print(f"search inside the full run (median): {statistics.median(full_search):.1f} s; "
              f"search / llama-quantize Q4_K_M: {statistics.median(full_search) / q:.2f}  (bar: < 1)")
    tmp.rmdir() if not any(tmp.iterdir()) else None


if __name__ == "__main__":
    main()

"""IQ benchmark: ``l1quant convert --imatrix F --type T`` (one pass from safetensors) against ``llama-quantize
--imatrix F BF16.gguf out T THREADS`` (the pinned sdist's tool, from the BF16 GGUF), same thread count.

Not a test: a script that prints a table. On the L1-shaped synthetic checkpoint (L1-Qwen-1.5B's shapes, 1.78 B
params, bf16; built once under ``--cache`` by bench_convert's builder):

1. the BF16 GGUF (``l1quant convert --type bf16``, byte-identical to llama.cpp's converter) and an importance
   matrix from ``llama-imatrix`` on it (``--chunks`` chunks of ``--ctx`` tokens of l1quant's calibration text),
   both cached under ``--cache/iq``;
2. for each ``--types`` entry, ``--repeat`` alternated runs (llama-quantize first, then l1quant), each tool a fresh
   subprocess: wall time, CPU time and the child's peak RSS (``os.wait4``); medians;
3. byte identity (sha256) of the two outputs, on the first run.

l1quant serves every IQ mix by name (``--type iq4_xs``, ``--type iq2_m``, ...). For a type name it does not serve, the
script reads the tensor types of llama-quantize's output and passes them as ``--tensor-type`` patterns (plus
``--token-embedding-type`` / ``--output-tensor-type``) over a served base mix (``--base``, default iq4_xs): the same
tensors in the same types, the file differing only in ``general.file_type``; the identity column then says whether
every other byte is equal.

Results and how to read them: benchmarks/README.md, "bench_iquants.py".

Example:
    $ python benchmarks/bench_iquants.py --repeat 3 --types iq4_xs,iq2_m --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench_convert import Series, build, compile_l1quant, fmt_table, sha256, timed

REPO = Path(__file__).resolve().parents[1]


def l1quant_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "l1quant", *args, "-q"]


def tensor_type_flags(gguf_path: Path) -> list[str]:
    """l1quant per-tensor options that reproduce the tensor types of a llama-quantize output."""
    from gguf import GGUFReader

    per: dict[tuple[str, str], list[str]] = defaultdict(list)
    flags: list[str] = []
    for t in GGUFReader(str(gguf_path)).tensors:
        name, typ = t.name, t.tensor_type.name.lower()
        if len(t.shape) < 2:
            continue
        if name == "token_embd.weight":
            flags += ["--token-embedding-type", typ]
        elif name == "output.weight":
            flags += ["--output-tensor-type", typ]
        elif m := re.fullmatch(r"blk\.(\d+)\.(.+)", name):
            per[(m.group(2), typ)].append(m.group(1))
    for (suffix, typ), layers in sorted(per.items()):
        flags += ["--tensor-type", rf"^blk\.({'|'.join(layers)})\.{re.escape(suffix)}$={typ}"]
    return flags


def differing_bytes(a: Path, b: Path) -> int:
    """How many bytes differ (cmp -l), or -1 when the sizes differ."""
    if a.stat().st_size != b.stat().st_size:
        return -1
    out = subprocess.run(["cmp", "-l", str(a), str(b)], capture_output=True, text=True).stdout
    return len(out.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache", help="checkpoint cache folder")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per tool and type")
    ap.add_argument("--types", default="iq4_xs,iq2_m", help="comma-separated llama-quantize types")
    ap.add_argument("--threads", type=int, default=None, help="threads for both tools (default: all cores)")
    ap.add_argument("--ctx", type=int, default=128, help="llama-imatrix context")
    ap.add_argument("--chunks", type=int, default=4, help="llama-imatrix chunks")
    ap.add_argument("--base", default="iq4_xs", help="served mix under the per-tensor options (unserved types)")
    ap.add_argument("--llama-quantize", default=os.environ.get("L1QUANT_LLAMA_QUANTIZE", "llama-quantize"))
    ap.add_argument("--llama-imatrix", default=os.environ.get("L1QUANT_LLAMA_IMATRIX", "llama-imatrix"))
    args = ap.parse_args()

    from l1quant.conversion.pipeline import default_threads
    from l1quant.errors import ConfigError
    from l1quant.filetypes import resolve_type
    from l1quant.testing import L1_SHAPE

    compile_l1quant()
    threads = args.threads or default_threads()
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    model = build(args.cache, "L1-shaped", dict(L1_SHAPE))
    work = args.cache / "iq"
    work.mkdir(parents=True, exist_ok=True)
    bf16 = work / "L1-shaped-BF16.gguf"
    if not bf16.is_file():
        timed(l1quant_cmd("convert", str(model), "--type", "bf16", "-o", str(bf16)))
    imatrix = work / f"imatrix-c{args.ctx}-n{args.chunks}.gguf"
    if not imatrix.is_file():
        text = REPO / "l1quant" / "data" / "calibration.txt"
        timed([args.llama_imatrix, "-m", str(bf16), "-f", str(text), "-c", str(args.ctx), "--chunks",
               str(args.chunks), "-t", str(threads), "-o", str(imatrix)])

    print(f"machine: {os.cpu_count()} CPUs, threads {threads}, repeat {args.repeat}, "
          f"load avg at start {os.getloadavg()[0]:.1f}", flush=True)
    rows = [["type", "tool", "wall s (med)", "min", "cpu s", "peak RSS MiB", "llama-quantize / tool"]]
    for typ in types:
        ours, lq = Series("l1quant convert (one pass)"), Series("llama-quantize")
        o_ours, o_lq = work / f"ours-{typ}.gguf", work / f"lq-{typ}.gguf"
        try:
            resolve_type(typ)
            extra: list[str] = ["--type", typ]
        except ConfigError:
            extra = []  # filled from llama-quantize's first output
        identical = ""
        for i in range(args.repeat):
            lq.runs.append(timed([args.llama_quantize, "--imatrix", str(imatrix), str(bf16), str(o_lq),
                                  typ.upper(), str(threads)], inputs=[bf16, imatrix]))
            if not extra:
                extra = ["--type", args.base, *tensor_type_flags(o_lq)]
            ours.runs.append(timed(l1quant_cmd("convert", str(model), "--imatrix", str(imatrix), *extra,
                                               "-o", str(o_ours), "--threads", str(threads)),
                                   inputs=[model, imatrix]))
            if i == 0:
                if sha256(o_ours) == sha256(o_lq):
                    identical = "yes (sha256)"
                else:
                    n = differing_bytes(o_ours, o_lq)
                    identical = f"NO ({n} bytes differ)" if extra[1] == typ else \
                        f"{n} byte(s) differ (general.file_type: per-tensor options over {args.base})"
            print(f"  {typ} run {i + 1}: llama-quantize {lq.runs[-1].wall:7.2f} s, l1quant {ours.runs[-1].wall:7.2f} s",
                  flush=True)
            for p in (o_ours, o_lq):
                p.unlink()
        base = lq.med("wall")
        for s in (ours, lq):
            rows.append([typ, s.tool, f"{s.med('wall'):.2f}", f"{min(r.wall for r in s.runs):.2f}",
                         f"{s.med('cpu'):.2f}", f"{s.med('rss') / 2**20:.0f}", f"{base / s.med('wall'):.1f}x"])
        rows.append([typ, "bytes identical", identical, "", "", "", ""])
        if extra[1] != typ:
            rows.append([typ, "l1quant options", " ".join(extra[:2]) + " + per-tensor types", "", "", "", ""])
    print()
    print(fmt_table(rows))
    print(f"load avg at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

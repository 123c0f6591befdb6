"""Importance-matrix benchmark (issue 18): l1quant against llama.cpp's three tools, wall time, peak RSS, bytes.

Not a test: a script that prints a table. On a synthetic checkpoint with L1-Qwen-1.5B's shapes (built once under
``--cache`` by bench_convert's builder; ``--small``: Qwen2.5-0.5B's shapes; ``--tiny``: a 2-layer toy, seconds) and
its BF16 GGUF (made once by l1quant, byte-identical to llama.cpp's converter's), three comparisons, each tool in its
own subprocess (``os.wait4``: wall time, user+sys CPU, the child's own peak RSS; ``os.sync()`` before each run):

a. ``imatrix``: ``l1quant imatrix BF16.gguf`` against ``llama-imatrix -m BF16.gguf`` (same text, ``-c``,
   ``--chunks``, ``-b``, ``-t``); every pair of files must be byte-identical (the benchmark stops otherwise).
b. ``quantize``: ``l1quant convert DIR --imatrix F --type T`` (the one pass from safetensors) against
   ``llama-quantize --imatrix F BF16.gguf OUT T THREADS`` from the BF16 GGUF; F is llama-imatrix's file from (a)
   (or made once); sha256 of the two outputs compared.
c. ``calibration``: the one command ``l1quant convert DIR --type T --calibration TEXT`` against the three reference
   steps (``convert_hf_to_gguf.py --outtype bf16``, ``llama-imatrix``, ``llama-quantize --imatrix``); the reference
   row's wall time is the sum of the steps, its RSS the largest. Both imatrix files and both outputs compared.

The text is a prefix of the bundled calibration text cut so that it gives exactly ``--chunks`` chunks of ``--ctx``
tokens: ``--calibration`` has no ``--chunks`` (it uses the whole text, as llama-imatrix does without it), so this is
how (c) runs the same chunks on both sides. The runs alternate (reference first, then ours first, ...) so that a slow
spell on a shared machine favours neither; the table gives medians and ratios (``ref / ours`` > 1: l1quant faster).

    python benchmarks/bench_imatrix.py --cache .bench-cache --chunks 4 --repeat 3 --parts a,b
    python benchmarks/bench_imatrix.py --cache .bench-cache --chunks 4 --repeat 2 --parts c
    python benchmarks/bench_imatrix.py --tiny --ctx 128 --chunks 4 --repeat 1      # a quick check that it runs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench_convert import (REFERENCE_CANDIDATES, SMALL_SHAPE, Run, Series, build, compile_l1quant, fmt_table,
                           sha256, timed)

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TEXT = REPO / "l1quant" / "data" / "calibration.txt"
TINY_SHAPE: dict[str, object] = {"hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 512, "vocab": 151936,
                                 "tied": False, "max_pos": 32768}


def l1quant_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "l1quant", *args, "-q"]


def calibration_text(ckpt: Path, chunks: int, ctx: int, out: Path) -> Path:
    """A prefix of the bundled text that gives exactly ``chunks`` chunks of ``ctx`` tokens (llama-imatrix's count:
    tokens with BOS // ctx), cut at a line end near the middle of the last chunk."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    text = BUNDLED_TEXT.read_text(encoding="utf-8")
    target = chunks * ctx + ctx // 2
    lines = text.splitlines(keepends=True)
    lo, hi = 1, len(lines)  # the fewest lines whose tokens reach the target
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tok.encode("".join(lines[:mid]), add_special_tokens=False).ids) + 1 >= target:
            hi = mid
        else:
            lo = mid + 1
    cut = "".join(lines[:lo])
    n = len(tok.encode(cut, add_special_tokens=False).ids) + 1
    if n // ctx != chunks:
        sys.exit(f"could not cut the text to {chunks} chunks of {ctx} (a cut gives {n} tokens)")
    out.write_text(cut, encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache", help="checkpoint cache folder")
    ap.add_argument("--parts", default="a,b,c", help="comma-separated: a (imatrix), b (quantize), c (calibration)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternated; medians are reported")
    ap.add_argument("--repeat-c", type=int, default=None, help="runs of (c) (default: --repeat)")
    ap.add_argument("--small", action="store_true", help="Qwen2.5-0.5B shapes instead of L1-1.5B")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy (hidden 256): checks the script runs")
    env = os.environ.get
    bindir = REPO.parent / "l1quant-ref" / "llama-perplexity-build" / "bin"
    ap.add_argument("--llama-imatrix", type=Path, default=Path(env("L1QUANT_LLAMA_IMATRIX", bindir / "llama-imatrix")))
    ap.add_argument("--llama-quantize", type=Path,
                    default=Path(env("L1QUANT_LLAMA_QUANTIZE", bindir / "llama-quantize")))
    ap.add_argument("--reference", type=Path,
                    default=Path(env("L1QUANT_REFERENCE", "")) if env("L1QUANT_REFERENCE")
                    else next((p for p in REFERENCE_CANDIDATES if p.is_file()), REFERENCE_CANDIDATES[0]))
    ap.add_argument("--reference-python", default=env("L1QUANT_REFERENCE_PYTHON", sys.executable))
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if "c" in parts and args.ctx != 512:
        sys.exit("part c needs --ctx 512: --calibration computes the matrix with llama-imatrix's defaults")

    sys.path.insert(0, str(REPO))
    from l1quant.testing import L1_SHAPE

    compile_l1quant()

    shape, name = dict(L1_SHAPE), "L1-shaped"
    if args.small:
        shape, name = dict(SMALL_SHAPE), "Qwen2.5-0.5B-shaped"
    if args.tiny:
        shape, name = dict(TINY_SHAPE), "tiny"
    ckpt = build(args.cache, name, shape)
    work = args.cache / "imatrix-bench"
    work.mkdir(parents=True, exist_ok=True)
    bf16 = work / f"{name}-BF16.gguf"
    if not bf16.exists():
        tmp = work / "tmp-BF16.gguf"
        timed(l1quant_cmd("convert", str(ckpt), "--type", "bf16", "-o", str(tmp), "-t", str(args.threads)))
        tmp.rename(bf16)
    text = calibration_text(ckpt, args.chunks, args.ctx, work / f"calibration-{args.chunks}x{args.ctx}.txt")
    t = str(args.threads)
    common = ["-f", str(text), "-c", str(args.ctx), "--chunks", str(args.chunks), "-b", str(args.batch), "-t", t]
    rows = [["part", "tool", "wall s (med)", "min", "max", "cpu s", "peak RSS MiB", "ref / ours wall", "bytes equal"]]

    def add(part: str, s: Series, ref: Series | None, equal: str = "") -> None:
        ratio = f"{ref.med('wall') / s.med('wall'):.2f}x" if ref is not None else ""
        rows.append([part, s.tool, f"{s.med('wall'):.1f}", f"{min(r.wall for r in s.runs):.1f}",
                     f"{max(r.wall for r in s.runs):.1f}", f"{s.med('cpu'):.1f}",
                     f"{max(r.rss for r in s.runs) / 2**20:.0f}", ratio, equal])

    def alternate(n: int, ref_run, our_run, label: str) -> None:  # type: ignore[no-untyped-def]
        for i in range(n):
            for side in ((ref_run, our_run) if i % 2 == 0 else (our_run, ref_run)):
                side()
            print(f"  {label} run {i + 1} done", flush=True)

    imatrix_ref = work / "ref.imatrix.gguf"
    if "a" in parts:
        ref_s, our_s = Series("llama-imatrix"), Series("l1quant imatrix")
        ours_f = work / "ours.imatrix.gguf"
        equal = []

        def ref_a() -> None:
            ref_s.runs.append(timed([str(args.llama_imatrix), "-m", str(bf16), "-o", str(imatrix_ref), *common]))
            print(f"  llama-imatrix   {ref_s.runs[-1].wall:7.1f} s", flush=True)

        def our_a() -> None:
            our_s.runs.append(timed(l1quant_cmd("imatrix", str(bf16), "-o", str(ours_f), *common)))
            print(f"  l1quant imatrix {our_s.runs[-1].wall:7.1f} s", flush=True)
            if imatrix_ref.exists():
                equal.append(ours_f.read_bytes() == imatrix_ref.read_bytes())
                if not equal[-1]:
                    sys.exit(f"{ours_f} differs from llama-imatrix's {imatrix_ref}")

        alternate(args.repeat, ref_a, our_a, "a")
        add("a imatrix", ref_s, None)
        add("a imatrix", our_s, ref_s, "yes" if all(equal) else "NO")

    if parts & {"b"}:
        if not imatrix_ref.exists():
            timed([str(args.llama_imatrix), "-m", str(bf16), "-o", str(imatrix_ref), *common])
        ref_s = Series(f"llama-quantize --imatrix (BF16 GGUF -> {args.type.upper()})")
        our_s = Series(f"l1quant convert --imatrix --type {args.type} (one pass)")
        ref_out, our_out = work / "ref-b.gguf", work / "ours-b.gguf"
        shas: dict[str, str] = {}

        def ref_b() -> None:
            ref_s.runs.append(timed([str(args.llama_quantize), "--imatrix", str(imatrix_ref), str(bf16), str(ref_out),
                                     args.type, t]))
            print(f"  llama-quantize  {ref_s.runs[-1].wall:7.1f} s", flush=True)
            shas.setdefault("ref", sha256(ref_out))
            ref_out.unlink()

        def our_b() -> None:
            our_s.runs.append(timed(l1quant_cmd("convert", str(ckpt), "--imatrix", str(imatrix_ref), "--type",
                                                args.type, "-o", str(our_out), "-t", t)))
            print(f"  l1quant convert {our_s.runs[-1].wall:7.1f} s", flush=True)
            shas.setdefault("ours", sha256(our_out))
            our_out.unlink()

        alternate(args.repeat, ref_b, our_b, "b")
        add("b quantize", ref_s, None)
        add("b quantize", our_s, ref_s, "yes" if shas["ref"] == shas["ours"] else "NO")

    if "c" in parts:
        # Both sides write the same paths (one after the other), so the recorded quantize.imatrix.file is the same
        # string and the outputs can be compared byte for byte.
        out_c, im_c, bf16_c = work / f"c-{args.type.upper()}.gguf", work / f"c-{args.type.upper()}.imatrix.gguf", \
            work / "c-BF16.gguf"
        ref_s = Series("reference: convert_hf_to_gguf + llama-imatrix + llama-quantize")
        steps = [Series("  1 convert_hf_to_gguf.py --outtype bf16"), Series("  2 llama-imatrix"),
                 Series("  3 llama-quantize --imatrix")]
        our_s = Series(f"l1quant convert --type {args.type} --calibration (one command)")
        shas_c: dict[str, tuple[str, str]] = {}

        def ref_c() -> None:
            runs = [timed([args.reference_python, str(args.reference), str(ckpt), "--outtype", "bf16", "--outfile",
                           str(bf16_c)]),
                    timed([str(args.llama_imatrix), "-m", str(bf16_c), "-f", str(text), "-c", str(args.ctx), "-b",
                           str(args.batch), "-t", t, "-o", str(im_c)]),
                    timed([str(args.llama_quantize), "--imatrix", str(im_c), str(bf16_c), str(out_c), args.type, t])]
            for s, r in zip(steps, runs):
                s.runs.append(r)
            ref_s.runs.append(Run(sum(r.wall for r in runs), sum(r.cpu for r in runs), max(r.rss for r in runs)))
            print(f"  reference 3 steps {ref_s.runs[-1].wall:7.1f} s ({', '.join(f'{r.wall:.1f}' for r in runs)}), "
                  f"peak RSS {ref_s.runs[-1].rss / 2**20:.0f} MiB", flush=True)
            shas_c.setdefault("ref", (sha256(im_c), sha256(out_c)))
            for p in (out_c, im_c, bf16_c):
                p.unlink()

        def our_c() -> None:
            our_s.runs.append(timed(l1quant_cmd("convert", str(ckpt), "--type", args.type, "--calibration", str(text),
                                                "-o", str(out_c), "-t", t)))
            print(f"  l1quant one command {our_s.runs[-1].wall:7.1f} s, peak RSS {our_s.runs[-1].rss / 2**20:.0f} MiB",
                  flush=True)
            shas_c.setdefault("ours", (sha256(im_c), sha256(out_c)))
            for p in (out_c, im_c):
                p.unlink()

        alternate(args.repeat_c or args.repeat, ref_c, our_c, "c")
        add("c calibration", ref_s, None)
        for s in steps:
            add("c calibration", s, None)
        same = shas_c["ref"] == shas_c["ours"]
        add("c calibration", our_s, ref_s, "yes (imatrix + output)" if same else
            f"NO (imatrix {'equal' if shas_c['ref'][0] == shas_c['ours'][0] else 'differs'})")

    print(f"\n{name}, text {text.name} ({args.chunks} chunks x {args.ctx} tokens), -b {args.batch}, "
          f"{args.threads} threads, type {args.type}; medians of alternated runs")
    print(fmt_table(rows))
    print("(ref / ours wall > 1: l1quant is faster; part c's reference wall = the sum of its three steps, "
          "its RSS the largest step's)")


if __name__ == "__main__":
    main()

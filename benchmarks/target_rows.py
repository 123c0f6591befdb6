"""Issue 20: what a smaller row sample costs the ``auto`` search (``l1quant.conversion.target.SAMPLE_ROWS``).

Not a test: a script that prints, for each sample size, the dry-run's time, its own predicted KLD, and the
prediction of the table it chose when scored with the errors of the first (largest) sample -- the quantity the
search minimises, measured as well as this script can -- and how many tensors changed type.

Example (Qwen2.5-Coder-1.5B from docs/real-models.md, at Q3_K_M's size):
    $ python benchmarks/target_rows.py qwen15-bf16.gguf q15.imatrix.gguf 924456224 --rows 128,64,32
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import l1quant.conversion.target as target
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.quantize import plan_quantize
from l1quant.conversion.sources import TensorSource


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an F32/F16/BF16 GGUF")
    ap.add_argument("imatrix")
    ap.add_argument("size", help="target size (as --target-size)")
    ap.add_argument("--rows", default="128,64,32", help="sample sizes, the reference first")
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows_list = [int(r) for r in args.rows.split(",")]

    # each measurement recorded per (tensor, sample size): the tables are scored with the first size's errors
    errors: dict[tuple[str, int], dict[str, float]] = {}
    measure = target.measure_errors

    def recording(source: TensorSource, weights: np.ndarray | None, cands: Any) -> list[float]:
        out = measure(source, weights, cands)
        errors[(source.name, target.SAMPLE_ROWS)] = {c.name: r for c, r in zip(cands, out) if c is not None}
        return out

    target.measure_errors = recording  # type: ignore[assignment]
    choices = {}
    for rows in rows_list:
        target.SAMPLE_ROWS = rows
        target.sample_runs.__defaults__ = (rows, target.SAMPLE_RUNS)  # the default was bound at import
        t0 = time.perf_counter()
        job = plan_quantize(args.model, None, "auto", options=QuantOptions(imatrix=args.imatrix),
                            target_size=args.size, threads=args.threads)
        choice = job.plan.target
        assert choice is not None
        choices[rows] = (choice, time.perf_counter() - t0)
    ref_rows = rows_list[0]
    ref_types = {t.name: t.type.name for t in choices[ref_rows][0].tensors}
    print(f"{'rows':>5} {'dry-run s':>10} {'own prediction':>15} {'scored with ' + str(ref_rows):>16} {'changed':>8}")
    for rows, (choice, dt) in choices.items():
        scored = 0.0
        for t in choice.tensors:
            own = errors[(t.name, rows)].get(t.type.name, 0.0)
            ref = errors.get((t.name, ref_rows), {}).get(t.type.name)
            # kld = sensitivity * relative error: rescale this sample's share by the reference sample's error
            if own > 0 and ref is not None:
                scored += t.kld[t.chosen] * ref / own
        changed = sum(ref_types[t.name] != t.type.name for t in choice.tensors)
        print(f"{rows:>5} {dt:>10.1f} {choice.predicted_kld:>15.6g} {scored:>16.6g} {changed:>8}")


if __name__ == "__main__":
    main()

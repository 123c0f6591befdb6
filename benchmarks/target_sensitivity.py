"""Measure the per-role sensitivities of l1quant.conversion.target (KLD per unit of relative output error).

For each role, a file where only that role's tensors are Q4_0 (every other tensor Q8_0, same imatrix); KLD against
the BF16 base through ``l1quant compare`` (llama-perplexity's protocol); the role's sensitivity is
(KLD(role at Q4_0) - KLD(all Q8_0)) / sum over its tensors of their measured relative error at Q4_0 minus at Q8_0.

    python benchmarks/target_sensitivity.py BASE-BF16.gguf IMATRIX OUTDIR [--chunks 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import l1quant
from l1quant.conversion.mixes import tensor_role
from l1quant.conversion.quantize import GGUFSource  # noqa: F401  (import check)
from l1quant.conversion.target import measure_errors
from l1quant.gguf.reader import read_gguf
from l1quant.imatrix_file import read_imatrix
from l1quant.kernels import get_quant_type
from l1quant.source.safetensors import SafeTensor

ROLES = {"token_embd": "^token_embd\\.weight$", "output": "^output\\.weight$", "attn_q": "attn_q\\.weight",
         "attn_k": "attn_k\\.weight", "attn_v": "attn_v\\.weight", "attn_output": "attn_output\\.weight",
         "ffn_up": "ffn_up", "ffn_gate": "ffn_gate", "ffn_down": "ffn_down"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("imatrix")
    ap.add_argument("out")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--probe", default="q4_0")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gf = read_gguf(a.base)
    im = read_imatrix(a.imatrix)
    names = [t.name for t in gf.tensors]
    roles = {r: p for r, p in ROLES.items() if any(__import__("re").search(p, n) for n in names)}
    files = {"q8_0": out / "all-q8_0.gguf"}
    if not files["q8_0"].exists():
        l1quant.quantize(a.base, files["q8_0"], "q8_0", imatrix=a.imatrix)
    for r, p in roles.items():
        f = out / f"{r}-{a.probe}.gguf"
        if not f.exists():
            l1quant.quantize(a.base, f, "q8_0", imatrix=a.imatrix, tensor_types=[f"{p}={a.probe}"])
        files[r] = f
    rep = subprocess.run([sys.executable, "-m", "l1quant", "compare", *map(str, files.values()), "--base", a.base,
                          "--chunks", str(a.chunks), "--json", "-q"], check=False, capture_output=True, text=True)
    if rep.returncode:
        sys.exit(rep.stderr[-3000:])
    data = json.loads(rep.stdout)
    kld = {Path(row["path"]).name: (row["vs_base"] or {}).get("kld", {}).get("mean") for row in data["types"]}
    probe, q8 = get_quant_type(a.probe), get_quant_type("q8_0")
    err: dict[str, float] = {}
    for t in gf.tensors:
        role = tensor_role(t.name).value
        if role not in roles or len(t.np_shape) < 2:
            continue
        st = SafeTensor(t.name, "BF16", t.np_shape, Path(a.base), t.abs_offset, t.nbytes)
        w = im.weights_for(t.name, t.np_shape[-1])
        e = measure_errors(st, w, [probe, q8])
        err[role] = err.get(role, 0.0) + e[0] - e[1]
    base = kld[files["q8_0"].name]
    print(f"all Q8_0: KLD {base:.6f}")
    for r in roles:
        k = kld[files[r].name]
        print(f"{r:<12} KLD {k:.6f}  sum rel err {err[r]:.5f}  sensitivity {(k - base) / err[r]:.4f}")

if __name__ == "__main__":
    main()

"""``compare``'s result: one row per type, its JSON form and its text table.

Example:
    >>> r = CompareReport("F16", 128, 2, 126, "text.txt", "llama.cpp", False, "b.kld", 2,
    ...                   [TypeRow("F16", "m-F16.gguf", 2_000_000, 16.0, 12.5, 0.5)])
    >>> r.to_dict()["types"][0]["vs_base"] is None, r.table().splitlines()[2].split()[:2]
    (True, ['F16', '2.0'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l1quant.evaluate.metrics import COMPRESSION_BOUND_NATS

__all__ = ["SCHEMA", "CompareReport", "TypeRow"]

#: JSON schema of :meth:`CompareReport.to_dict`.
SCHEMA = "l1quant.compare/1"


@dataclass
class TypeRow:
    """One line of the table: a GGUF file and its statistics against the base (``stats`` None for the base).

    ``kind``: ``"named"`` (a type or mix by name), ``"hand"`` (with per-tensor overrides), ``"auto"`` (the
    target-size search) or ``"file"`` (a GGUF given as it is); ``target``: an auto entry's target (``{"bpw": x}``
    or ``{"size_bytes": n}``, plus ``"size_of": NAME`` when it is another entry's size)."""

    name: str
    path: str
    size_bytes: int
    bpw: float
    ppl: float
    ppl_unc: float
    stats: dict[str, Any] | None = None
    budget: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "file"
    target: dict[str, Any] | None = None


@dataclass
class CompareReport:
    """Result of :func:`compare`: one :class:`TypeRow` per type, the base first."""

    base: str
    ctx: int
    chunks: int
    tokens_scored: int
    text: str
    runtime: str
    weight_only: bool
    base_logits: str
    threads: int
    rows: list[TypeRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, schema ``l1quant.compare/1``: PPL and KLD in nats, probabilities as fractions."""
        return {
            "schema": SCHEMA,
            "protocol": {"ctx": self.ctx, "chunks": self.chunks, "tokens_scored_per_type": self.tokens_scored,
                         "scored": "second half of each chunk, BOS per chunk (llama-perplexity)",
                         "text": self.text},
            "runtime": self.runtime,
            "kld_kind": "weights-only (numpy forward)" if self.weight_only else "llama-perplexity (llama.cpp runtime)",
            "base": self.base,
            "base_logits": {"path": self.base_logits, "format": "llama-perplexity --kl-divergence-base (uint16)",
                            "bound_nats": COMPRESSION_BOUND_NATS},
            "threads": self.threads,
            "seconds": self.seconds,
            "types": [{"name": r.name, "path": r.path, "size_bytes": r.size_bytes, "bpw": r.bpw,
                       "ppl": {"value": r.ppl, "unc": r.ppl_unc}, "vs_base": r.stats, "budget": r.budget,
                       "kind": r.kind, "target": r.target}
                      for r in self.rows],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """The comparison as an aligned text table (KLD in nats; same-top and Δp RMS in percent)."""
        hdr = ["type", "size", "bpw", "PPL", "±", "mean KLD", "±", "median KLD", "p99 KLD", "max KLD",
               "same top %", "±", "Δp RMS %", "±"]
        lines = []
        big = max((r.size_bytes for r in self.rows), default=0) >= 1e9  # one unit for the whole column
        for r in self.rows:
            size = f"{r.size_bytes / 1e9:.2f} GB" if big else f"{r.size_bytes / 1e6:.1f} MB"
            cells = [r.name, size, f"{r.bpw:.2f}", _fmt_ppl(r.ppl), _fmt_ppl(r.ppl_unc)]
            s = r.stats
            if s is None:
                cells += ["(base)", "", "", "", "", "", "", "", ""]
            else:
                k = s["kld"]
                cells += [f"{k['mean']:.6f}", f"{k['unc']:.6f}", f"{k['median']:.6f}", f"{k['p99']:.6f}",
                          f"{k['max']:.6f}", f"{100 * s['same_top']['value']:.3f}",
                          f"{100 * s['same_top']['unc']:.3f}", f"{100 * s['p_diff_rms']['value']:.3f}",
                          f"{100 * s['p_diff_rms']['unc']:.3f}"]
            lines.append(cells)
        w = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(hdr)]
        fmt: Callable[[list[str]], str] = lambda cs: "  ".join(  # noqa: E731
            c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cs))
        out = [fmt(hdr), fmt(["-" * x for x in w])] + [fmt(c) for c in lines]
        kind = ("weights only (numpy forward; lower than llama-perplexity's)" if self.weight_only
                else "llama-perplexity's protocol through llama.cpp")
        out.append(f"{self.chunks} chunks x {self.ctx} tokens, {self.tokens_scored} tokens scored per type; "
                   f"KLD vs {self.base}: {kind}")
        if any(r.budget for r in self.rows):
            out.append("")
            out.append("type      budget  runs  mean n  within N  |n-N|/N  accuracy")
            for r in self.rows:
                for b in r.budget:
                    out.append(f"{r.name:8s}  {b['budget']:6d}  {b['runs']:4d}  {b['mean_tokens']:6.1f}  "
                               f"{100 * b['share_within_budget']:7.0f}%  {b['mean_rel_deviation']:7.3f}  "
                               f"{100 * b['accuracy']:7.0f}%")
        return "\n".join(out)

    def plot(self, path: str | Path) -> Path:
        """Size (GB) vs mean KLD, one labelled point per type (log KLD axis): :func:`l1quant.evaluate.plot.
        plot_compare`; needs matplotlib."""
        from l1quant.evaluate.plot import plot_compare

        return plot_compare(self, path)


def _fmt_ppl(x: float) -> str:
    # 4 decimals as llama-perplexity prints; a random-weight model's astronomic PPL in scientific notation
    return f"{x:.4f}" if abs(x) < 1e6 else f"{x:.4e}"

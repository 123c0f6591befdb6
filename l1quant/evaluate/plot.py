"""``compare``'s chart: file size against mean KLD per type.

Example:
    >>> plot_compare(report, "size-vs-kld.png")   # doctest: +SKIP
    PosixPath('size-vs-kld.png')
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from l1quant.errors import InputError

if TYPE_CHECKING:
    from l1quant.evaluate.report import CompareReport

__all__ = ["MARKERS", "plot_compare"]

#: Marker and legend label per row kind (:attr:`~l1quant.evaluate.report.TypeRow.kind`): named mixes, hand mixes
#: and target-size files side by side.
MARKERS: dict[str, tuple[str, str]] = {"named": ("o", "named type or mix"), "hand": ("s", "hand mix (per-tensor flags)"),
                                       "auto": ("^", "target size (auto@)"), "file": ("o", "file")}


def plot_compare(report: CompareReport, path: str | Path) -> Path:
    """Write ``report``'s size (GB) vs mean KLD chart to ``path`` (format by suffix), one labelled point per type
    with its ± (one standard error of the mean KLD) as an error bar, log KLD axis; the marker and colour tell
    named mixes, hand mixes and auto entries apart (:data:`MARKERS`, with a legend when there is more than one
    kind). Raises :class:`~l1quant.errors.InputError` without matplotlib (the plot extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install '.[plot]')") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in report.rows if r.stats is not None]
    kinds = list(dict.fromkeys(r.kind for r in rows))
    colours = {k: f"C{i}" for i, k in enumerate(kinds)}
    for kind in kinds:
        mine = [r for r in rows if r.kind == kind]
        marker, label = MARKERS.get(kind, ("o", kind))
        xs = [r.size_bytes / 1e9 for r in mine]
        ys = [max(r.stats["kld"]["mean"], 1e-9) for r in mine if r.stats is not None]
        unc = [r.stats["kld"]["unc"] for r in mine if r.stats is not None]
        # the lower bar stops short of 0 on the log axis
        ax.errorbar(xs, ys, yerr=[[min(u, y * 0.999) for u, y in zip(unc, ys)], unc], fmt=marker, capsize=3,
                    color=colours[kind], label=label, linestyle="none")
        for r, x, y in zip(mine, xs, ys):
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if len(kinds) > 1:
        ax.legend(fontsize=8)
    ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set_xlabel("file size (GB)")
    ax.set_ylabel(f"mean KLD vs {report.base} (nats)")
    ax.set_yscale("log")
    ax.set_title(f"{report.chunks}x{report.ctx} tokens" + (" (weights only)" if report.weight_only else ""))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

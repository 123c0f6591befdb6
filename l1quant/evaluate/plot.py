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

__all__ = ["plot_compare"]


def plot_compare(report: CompareReport, path: str | Path) -> Path:
    """Write ``report``'s size (GB) vs mean KLD chart to ``path`` (format by suffix), one labelled point per type,
    log KLD axis. Raises :class:`~l1quant.errors.InputError` without matplotlib (the plot extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install '.[plot]')") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in report.rows:
        if r.stats is None:
            continue
        x, y = r.size_bytes / 1e9, max(r.stats["kld"]["mean"], 1e-9)
        ax.errorbar([x], [y], yerr=[[min(r.stats["kld"]["unc"], y * 0.999)], [r.stats["kld"]["unc"]]], fmt="o")
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("file size (GB)")
    ax.set_ylabel(f"mean KLD vs {report.base} (nats)")
    ax.set_yscale("log")
    ax.set_title(f"{report.chunks}x{report.ctx} tokens" + (" (weights only)" if report.weight_only else ""))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

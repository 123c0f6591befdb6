"""Verification results: named checks, per-tensor fidelity rows, the report and its text form."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PASS, FAIL, SKIP = "pass", "fail", "skip"
#: A finding that does not fail the file: it loads and runs in llama.cpp, but some runtime will misbehave
#: (the compatibility group, :mod:`l1quant.check.compat`).
WARN = "warn"


_MAX_LISTED = 3  # problems named in a check's one-line message; all of them are in ``details``


# --------------------------------------------------------------------------------------------------- report types


@dataclass
class Check:
    """One named check: ``status`` is ``pass``, ``warn``, ``fail`` or ``skip``; ``message`` is one line.

    ``details`` holds every problem found (the message names the first few).

    Example:
        >>> Check("tokenizer", "fail", "token 5: type 9, expected 1..6").failed
        True
    """

    name: str
    status: str
    message: str
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class TensorFidelity:
    """One tensor of the file against its source tensor.

    ``shape`` is the source (HF, row-major) shape. ``rel_rmse`` = ||deq - src|| / ||src||; ``snr_db`` =
    10 log10(||src||^2 / ||deq - src||^2) (inf when exact); ``bytes_identical``: the file's bytes equal
    re-quantizing the source with the same kernels. ``threshold`` is the rel-RMSE bound implied by the
    per-element bound (Q8_0; None for the float types, whose criterion is identical bytes), ``err_bound`` the
    largest per-element bound, ``expected_rel_rmse`` the uniform-noise estimate (Q8_0).

    Example:
        >>> TensorFidelity("w", "F32", (2, 32), 0.0, 0.0, 1.0, math.inf, True, None, None, None, True, "").passed
        True
    """

    name: str
    type: str
    shape: tuple[int, ...]
    rel_rmse: float
    max_abs_err: float
    cosine: float
    snr_db: float
    bytes_identical: bool
    threshold: float | None
    err_bound: float | None
    expected_rel_rmse: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class VerifyReport:
    """Everything :func:`verify` found. ``passed`` is True when no check failed.

    ``tensors`` is sorted worst first (failed, then by relative RMSE); ``logits`` / ``runtime_logits`` are
    :meth:`l1quant.evaluate.metrics.LogitReport.to_dict` plus ``limit`` and ``passed`` (None when not run).

    Example:
        >>> rep = VerifyReport("x.gguf", None, [Check("header", "pass", "ok")], [], None, None, 0.1)
        >>> rep.passed, rep.verdict
        (True, 'PASS: 1 check passed')
    """

    path: str
    source: str | None
    checks: list[Check]
    tensors: list[TensorFidelity]
    logits: dict[str, Any] | None
    runtime_logits: dict[str, Any] | None
    elapsed_s: float
    file_type: str | None = None
    n_tensors: int = 0
    file_size: int = 0

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def verdict(self) -> str:
        """One line: PASS/FAIL and why."""
        n = len(self.checks)
        bad = self.failed_checks
        skipped = sum(c.status == SKIP for c in self.checks)
        warned = sum(c.status == WARN for c in self.checks)
        if bad:
            first = bad[0]
            return (f"FAIL: {len(bad)} of {n} checks failed ({', '.join(c.name for c in bad)}); "
                    f"first: {first.name}: {first.message}")
        ok = n - skipped - warned
        s = f"PASS: {ok} check{'s' if ok != 1 else ''} passed"
        if warned:
            s += f", {warned} warning{'s' if warned != 1 else ''}"
        if skipped:
            s += f", {skipped} skipped"
        if self.tensors:
            s += f"; {len(self.tensors)} tensors byte-identical to re-quantizing the source"
        return s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become the strings "inf", "-inf", "nan")."""
        d = {
            "file": self.path,
            "source": self.source,
            "file_type": self.file_type,
            "file_size": self.file_size,
            "n_tensors": self.n_tensors,
            "passed": self.passed,
            "verdict": self.verdict,
            "elapsed_s": self.elapsed_s,
            "checks": [asdict(c) for c in self.checks],
            "tensors": [t.to_dict() for t in self.tensors],
            "logits": self.logits,
            "runtime_logits": self.runtime_logits,
        }
        safe: dict[str, Any] = _json_safe(d)
        return safe

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (no NaN/Infinity literals)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return _json_safe(v.item())
    return v


def problems_check(name: str, problems: list[str], ok_message: str) -> Check:
    """One check from its list of problems: PASS with ``ok_message`` when empty, else FAIL listing the first few.

    Example:
        >>> problems_check("keys", [], "all keys present").status
        'pass'
    """
    if not problems:
        return Check(name, PASS, ok_message)
    more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    return Check(name, FAIL, "; ".join(problems[:_MAX_LISTED]) + more, list(problems))


# --------------------------------------------------------------------------------------------------- text output


def _fmt(v: float | None, spec: str) -> str:
    """``v`` formatted with ``spec``; None ("-"), NaN and Inf padded to the same width so columns stay aligned.

    Example:
        >>> [_fmt(v, "9.3e") for v in (0.5, None, math.inf)]
        ['5.000e-01', '        -', '      inf']
    """
    width = int(m.group(1)) if (m := re.match(r"(\d+)", spec)) else 0
    if v is None:
        text = "-"
    elif isinstance(v, float) and math.isnan(v):
        text = "nan"
    elif isinstance(v, float) and math.isinf(v):
        text = "inf" if v > 0 else "-inf"
    else:
        return format(v, spec)
    return text.rjust(width)


def format_report(rep: VerifyReport, *, max_tensors: int = 12) -> str:
    """Readable text: the checks, the worst tensors first (all failed ones plus up to ``max_tensors``), the
    logit results and a one-line verdict at the end.

    Example:
        >>> print(format_report(VerifyReport("x.gguf", None, [Check("header", "pass", "ok")], [], None, None, 0.1)))
        l1quant verify x.gguf
        <BLANKLINE>
          PASS  header  ok
        <BLANKLINE>
        PASS: 1 check passed
    """
    lines = [f"l1quant verify {rep.path}" + (f" --source {rep.source}" if rep.source else "")]
    if rep.n_tensors:
        lines[0] += f"  ({rep.file_type or '?'}, {rep.n_tensors} tensors, {rep.file_size / 1e9:.2f} GB, " \
                    f"{rep.elapsed_s:.1f} s)"
    lines.append("")
    w = max((len(c.name) for c in rep.checks), default=4)
    for c in rep.checks:
        lines.append(f"  {c.status.upper():<4}  {c.name:<{w}}  {c.message}")
    if rep.tensors:
        shown = [t for t in rep.tensors if not t.passed]
        shown += [t for t in rep.tensors if t.passed][: max(0, max_tensors - len(shown))]
        nw = max(6, *(len(t.name) for t in shown))
        tw = max(5, *(len(t.type) for t in shown))  # the type names of every registered type fit their column
        lines += ["", f"tensors, worst first ({len(shown)} of {len(rep.tensors)}; --json for all):",
                  (f"  {'tensor':<{nw}}  {'type':<{tw}} {'rel_rmse':>9} {'bound':>9} {'max_abs':>9} {'cosine':>10} "
                   f"{'snr_db':>7}  bytes  ok")]
        for t in shown:
            lines.append(
                f"  {t.name:<{nw}}  {t.type:<{tw}} {_fmt(t.rel_rmse, '9.3e')} {_fmt(t.threshold, '9.3e')} "
                f"{_fmt(t.max_abs_err, '9.3e')} {_fmt(t.cosine, '10.7f')} {_fmt(t.snr_db, '7.2f')}  "
                f"{'same ' if t.bytes_identical else 'DIFF '}  {'ok' if t.passed else 'FAIL'}")
    lines += ["", rep.verdict]
    return "\n".join(lines)


def iter_failed(rep: VerifyReport) -> Iterator[str]:
    """Every problem of every failed check, one line each (for logs).

    Example:
        >>> list(iter_failed(VerifyReport("x", None, [Check("a", "fail", "m", ["m"])], [], None, None, 0)))
        ['a: m']
    """
    for c in rep.checks:
        if c.failed:
            for d in c.details or [c.message]:
                yield f"{c.name}: {d}"

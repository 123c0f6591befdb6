"""Budget check: many models x budgets x problems, and the report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from l1quant.errors import InputError, OutputError, RuntimeMissingError
from l1quant.l1.answers import default_max_tokens
from l1quant.l1.chat import _gguf_chat_info, _gguf_kv, render_chat
from l1quant.l1.prompt import EXACT_TOLERANCE, REPORT_SCHEMA, l1_prompt
from l1quant.l1.runner import RunResult, _auto_ctx, _import_llama, _resolve_sampling, _Runner

# --------------------------------------------------------------------------------------------------------------
# Budget check: many models x budgets x problems


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: an id, a question and its known integer answer."""

    id: str
    question: str
    answer: int


def load_problems(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Read a problems JSONL file: one ``{"id": str, "question": str, "answer": int}`` per line.

    Blank lines are skipped; ids must be unique. ``limit`` keeps the first K problems.

    Example:
        >>> load_problems("examples/problems.jsonl", limit=2)[0].answer  # doctest: +SKIP
        42
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read problems file: {e}") from None
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{lineno}: expected a JSON object, found {type(obj).__name__}")
        pid, question, answer = obj.get("id"), obj.get("question"), obj.get("answer")
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
            raise InputError(f"{p}:{lineno}: expected a string \"id\", found {pid!r}")
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{p}:{lineno}: expected a non-empty string \"question\", found {question!r}")
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise InputError(f"{p}:{lineno}: expected an integer \"answer\", found {answer!r}")
        if str(pid) in seen:
            raise InputError(f"{p}:{lineno}: duplicate id {str(pid)!r}")
        seen.add(str(pid))
        problems.append(Problem(str(pid), question, answer))
    if not problems:
        raise InputError(f"{p}: no problems in file")
    if limit is not None:
        if limit <= 0:
            raise InputError(f"limit: expected a positive number of problems, found {limit}")
        problems = problems[:limit]
    return problems


@dataclass
class BudgetRow:
    """Aggregate for one (model, budget): see :meth:`BudgetReport.to_json` for the meaning of each field."""

    model: str
    budget: int
    runs: int
    mean_reasoning_tokens: float
    mean_total_tokens: float
    mean_rel_deviation: float
    share_within_budget: float
    share_kept: float
    share_think_closed: float
    accuracy: float


@dataclass
class BudgetReport:
    """Results of :func:`budget_check`: one :class:`BudgetRow` per (model, budget) and every run."""

    mode: str
    tolerance: float | None
    budgets: list[int]
    models: list[str]
    problems_path: str
    problem_ids: list[str]
    seed: int
    sampling_overrides: dict[str, Any]
    rows: list[BudgetRow] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; the schema is documented in :meth:`to_json`."""
        return {
            "schema": REPORT_SCHEMA,
            "mode": self.mode,
            "tolerance": self.tolerance,
            "budgets": list(self.budgets),
            "models": list(self.models),
            "problems": {"path": self.problems_path, "count": len(self.problem_ids), "ids": list(self.problem_ids)},
            "seed": self.seed,
            "sampling_overrides": dict(self.sampling_overrides),
            "results": [asdict(r) for r in self.rows],
            "runs": [dict(r) for r in self.runs],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of the report. Schema ``l1quant.budget-check/1`` (fields are only ever added):

        * ``schema`` (str), ``mode`` (``"exact"`` | ``"max"``), ``tolerance`` (float, Exact; null in Max mode),
          ``budgets`` (list[int]), ``models`` (list[str], paths as given), ``seed`` (int: run for problem i uses
          ``seed + i``), ``sampling_overrides`` (dict: the temperature/top_p/top_k given, null = GGUF default),
          ``problems``: ``{"path", "count", "ids"}``.
        * ``results``: one object per (model, budget), models in order, budgets ascending: ``model``, ``budget``,
          ``runs``, ``mean_reasoning_tokens``, ``mean_total_tokens``, ``mean_rel_deviation`` (mean ``|n-N|/N``),
          ``share_within_budget`` (share with ``n <= N``), ``share_kept`` (share keeping the mode's rule),
          ``share_think_closed`` (share that emitted ``</think>``), ``accuracy`` (share whose boxed answer equals
          the known integer). Shares are in [0, 1].
        * ``runs``: one object per run: ``model``, ``budget``, ``problem_id``, ``reasoning_tokens``,
          ``total_tokens``, ``think_closed``, ``stop_reason``, ``budget_kept``, ``rel_deviation``, ``boxed``,
          ``answer`` (int or null), ``expected``, ``correct``, ``seed``, ``elapsed_s``.

        Example:
            >>> json.loads(report.to_json())["results"][0]["mean_reasoning_tokens"]  # doctest: +SKIP
            497.3
        """
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def table(self) -> str:
        """Plain-text table, one line per (model, budget)."""
        dev_head = "mean |n-N|/N" if self.mode == "exact" else "within budget"
        header = f"{'model':<40} {'budget':>7} {'runs':>5} {'mean n':>9} {dev_head:>14} {'kept':>6} {'accuracy':>9}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            name = Path(r.model).name
            name = name if len(name) <= 40 else "…" + name[-39:]
            dev = f"{r.mean_rel_deviation:.3f}" if self.mode == "exact" else f"{100 * r.share_within_budget:.0f}%"
            lines.append(f"{name:<40} {r.budget:>7} {r.runs:>5} {r.mean_reasoning_tokens:>9.1f} {dev:>14} "
                         f"{100 * r.share_kept:>5.0f}% {100 * r.accuracy:>8.0f}%")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG (or any matplotlib format, by suffix) of mean reasoning tokens vs budget, one line per model.

        The dashed diagonal is n = N (the Exact target; the Max ceiling). Needs matplotlib (``l1quant[plot]``).

        Example:
            >>> report.plot("budget.png")  # doctest: +SKIP
            PosixPath('budget.png')
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise RuntimeMissingError("plotting needs matplotlib: pip install 'l1quant[plot]'") from None
        out = Path(path).expanduser()
        # Figure + Agg canvas directly: no pyplot, so no global backend switch in the caller's process.
        fig = Figure(figsize=(6.4, 4.8))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        budgets = sorted(self.budgets)
        ax.plot(budgets, budgets, "--", color="grey", label="n = N")
        for model in self.models:
            rows = sorted((r for r in self.rows if r.model == model), key=lambda r: r.budget)
            ax.plot([r.budget for r in rows], [r.mean_reasoning_tokens for r in rows], "o-", label=Path(model).name)
        ax.set_xlabel("budget N (tokens)")
        ax.set_ylabel("mean reasoning tokens n")
        ax.set_title(f"L1 length control ({self.mode})")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        try:
            fig.savefig(out)
        except (OSError, ValueError) as e:
            raise OutputError(f"{out}: cannot write plot: {e}") from None
        return out


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def budget_check(models: Sequence[str | Path], budgets: Sequence[int], problems_path: str | Path, *,
                 max_mode: bool = False, seed: int = 0, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, max_tokens: int | None = None,
                 limit: int | None = None, tolerance: float = EXACT_TOLERANCE,
                 progress: Callable[[RunResult], None] | None = None) -> BudgetReport:
    """Run every model on every problem at every budget and aggregate length control and accuracy.

    Run ``i`` (problem index) uses seed ``seed + i`` for every model and budget, so models are compared on the
    same random stream. ``max_tokens`` defaults to :func:`default_max_tokens` of each budget. ``progress`` is
    called after each run.

    Example:
        >>> rep = budget_check(["L1-Q8_0.gguf", "L1-BF16.gguf"], [256, 512], "examples/problems.jsonl")  # doctest: +SKIP
        >>> print(rep.table())  # doctest: +SKIP
    """
    if not models:
        raise InputError("models: expected at least one GGUF file")
    budgets = sorted(set(budgets))
    if not budgets:
        raise InputError("budgets: expected at least one budget")
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise InputError(f"budgets: expected positive integers, found {b!r}")
    if max_tokens is not None and max_tokens <= 0:
        raise InputError(f"max_tokens: expected a positive number, found {max_tokens}")
    problems = load_problems(problems_path, limit=limit)
    paths = [Path(m).expanduser() for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such GGUF file")
    _import_llama()
    overrides = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    report = BudgetReport(mode="max" if max_mode else "exact", tolerance=None if max_mode else tolerance,
                          budgets=list(budgets), models=[str(m) for m in models], problems_path=str(problems_path),
                          problem_ids=[q.id for q in problems], seed=seed, sampling_overrides=overrides)
    for model, path in zip(report.models, paths):
        kv = _gguf_kv(path)
        template, bos, eos = _gguf_chat_info(path, kv)
        # One context for the whole model: the longest prompt plus the largest generation cap.
        longest = max(len(render_chat(l1_prompt(q.question, max(budgets), max_mode=max_mode), template,
                                      bos_token=bos, eos_token=eos).encode("utf-8")) for q in problems)
        cap = max(max_tokens if max_tokens is not None else default_max_tokens(b) for b in budgets)
        runner = _Runner(path, n_ctx=_auto_ctx(longest, cap), kv=kv)
        try:
            sampling = _resolve_sampling(runner.sampling, temperature, top_p, top_k)
            for budget in budgets:
                results: list[tuple[Problem, RunResult]] = []
                for i, q in enumerate(problems):
                    r = runner.generate(q.question, budget, max_mode=max_mode, sampling=sampling, seed=seed + i,
                                        max_tokens=max_tokens if max_tokens is not None else default_max_tokens(budget),
                                        tolerance=tolerance, stream_to=None)
                    r.model = model
                    results.append((q, r))
                    report.runs.append({
                        "model": model, "budget": budget, "problem_id": q.id,
                        "reasoning_tokens": r.reasoning_tokens, "total_tokens": r.total_tokens,
                        "think_closed": r.think_closed, "stop_reason": r.stop_reason, "budget_kept": r.budget_kept,
                        "rel_deviation": r.rel_deviation, "boxed": r.boxed, "answer": r.answer,
                        "expected": q.answer, "correct": r.answer == q.answer, "seed": seed + i,
                        "elapsed_s": r.elapsed_s,
                    })
                    if progress is not None:
                        progress(r)
                rs = [r for _, r in results]
                report.rows.append(BudgetRow(
                    model=model, budget=budget, runs=len(rs),
                    mean_reasoning_tokens=_mean(r.reasoning_tokens for r in rs),
                    mean_total_tokens=_mean(r.total_tokens for r in rs),
                    mean_rel_deviation=_mean(r.rel_deviation for r in rs),
                    share_within_budget=_mean(float(r.reasoning_tokens <= budget) for r in rs),
                    share_kept=_mean(float(r.budget_kept) for r in rs),
                    share_think_closed=_mean(float(r.think_closed) for r in rs),
                    accuracy=_mean(float(r.answer == q.answer) for q, r in results),
                ))
        finally:
            runner.close()
    return report

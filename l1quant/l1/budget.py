"""Budget check: many models x budgets x problems, and the report."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from l1quant.errors import InputError, OutputError, RuntimeMissingError, read_text
from l1quant.l1.answers import default_max_tokens
from l1quant.l1.chat import gguf_chat_info, gguf_kv, render_chat
from l1quant.l1.prompt import BUDGET_COUNT_RULE, EXACT_TOLERANCE, REPORT_SCHEMA, l1_prompt, mode_is_max
from l1quant.l1.runner import (
    Runner,
    RunResult,
    auto_ctx,
    check_resources,
    resolve_sampling,
)
from l1quant.runtime import require

# --------------------------------------------------------------------------------------------------------------
# Budget check: many models x budgets x problems

#: The first character that makes a line of a JSON Lines file non-blank (a single-character pattern: re scans
#: for it in C, ~0.1 s over 127 MiB of blank lines).
_NONBLANK = re.compile(r"\S")


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
    text = read_text(p, InputError)  # a regular file of bounded size: never a FIFO or /dev/zero
    problems: list[Problem] = []
    seen: set[str] = set()
    # JSON Lines ends a line at "\n" only (str.splitlines would also split at U+2028, U+0085..., which JSON
    # strings may hold raw). The non-blank lines are found by one regex scan, never a list of every line: 127 MiB
    # of blank lines cost 1.2 GB as one.
    lineno, prev, pos = 1, 0, 0
    while (m := _NONBLANK.search(text, pos)) is not None:
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.start())
        end = len(text) if end < 0 else end
        lineno += text.count("\n", prev, start)
        prev, pos = start, end
        line = text[start:end]
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{lineno}: not valid JSON: {e.msg}") from None
        except RecursionError:
            raise InputError(f"{p}:{lineno}: JSON nested too deeply") from None
        except ValueError as e:  # Python's int-digit limit (a 5000-digit number) is not a JSONDecodeError
            raise InputError(f"{p}:{lineno}: not valid JSON: {str(e)[:120]}") from None
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
    """Aggregate for one (model, budget) over every problem and sample: see :meth:`BudgetReport.to_json`."""

    model: str
    budget: int
    runs: int
    mean_tokens: float
    median_tokens: float
    mean_reasoning_tokens: float
    mean_answer_tokens: float
    mean_rel_deviation: float
    share_within_budget: float
    share_kept: float
    share_think_closed: float
    cap_hits: int
    forced: int
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
    samples: int = 1
    max_tokens: int | None = None
    hard_limit: bool = False
    rows: list[BudgetRow] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; the schema is documented in :meth:`to_json`."""
        return {
            "schema": REPORT_SCHEMA,
            "counted": BUDGET_COUNT_RULE,
            "mode": self.mode,
            "tolerance": self.tolerance,
            "budgets": list(self.budgets),
            "models": list(self.models),
            "problems": {"path": self.problems_path, "count": len(self.problem_ids), "ids": list(self.problem_ids)},
            "samples": self.samples,
            "max_tokens": self.max_tokens,
            "hard_limit": self.hard_limit,
            "seed": self.seed,
            "sampling_overrides": dict(self.sampling_overrides),
            "results": [asdict(r) for r in self.rows],
            "runs": [dict(r) for r in self.runs],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of the report. Schema ``l1quant.budget-check/2``.

        Every length is n, LCPO's count: all generated tokens of a response, reasoning and answer together (the
        end-of-generation token excluded), because that is what L1's reward compares with N. Schema 1 counted the
        reasoning up to ``</think>`` instead; 2 renamed ``mean_total_tokens`` to ``mean_tokens`` and computes
        deviation, within-budget and kept on n.

        * ``schema`` (str), ``counted`` (str: the counting rule in words), ``mode`` (``"exact"`` | ``"max"``),
          ``tolerance`` (float, Exact; null in Max mode), ``budgets`` (list[int], ascending), ``models``
          (list[str], paths as given), ``problems``: ``{"path", "count", "ids"}``, ``samples`` (int: K runs per
          problem), ``max_tokens`` (int, or null: 2 x N per budget), ``hard_limit`` (bool), ``seed`` (int: sample
          s of problem i uses ``(seed + i * samples + s) mod 2**32``, the same for every model and budget),
          ``sampling_overrides`` (dict: the temperature/top_p/top_k given, null = the GGUF's own).
        * ``results``: one object per (model, budget), models in order, budgets ascending, over ``count x
          samples`` runs: ``model``, ``budget``, ``runs``, ``mean_tokens`` and ``median_tokens`` (n),
          ``mean_reasoning_tokens`` (through ``</think>``; all of n when it never closed), ``mean_answer_tokens``,
          ``mean_rel_deviation`` (mean ``|n-N|/N``), ``share_within_budget`` (share with ``n <= N``),
          ``share_kept`` (share keeping the mode's rule: Max ``n <= N``, Exact ``|n-N|/N <= tolerance``),
          ``share_think_closed`` (share that emitted ``</think>``), ``cap_hits`` (int: runs cut at max_tokens),
          ``forced`` (int: runs whose thinking ``hard_limit`` ended), ``accuracy`` (share of runs whose boxed
          answer equals the known integer: the mean over problems of the mean over samples). Shares in [0, 1].
        * ``runs``: one object per run: ``model``, ``budget``, ``problem_id``, ``sample``, ``seed``, ``tokens`` (n),
          ``reasoning_tokens``, ``answer_tokens``, ``think_closed``, ``stop_reason`` (``"eos"`` | ``"length"``),
          ``hit_cap``, ``forced``, ``budget_kept``, ``rel_deviation``, ``boxed``, ``answer`` (int or null),
          ``expected``, ``correct``, ``elapsed_s``.

        Example:
            >>> json.loads(report.to_json())["results"][0]["mean_tokens"]  # doctest: +SKIP
            497.3
        """
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def table(self) -> str:
        """Plain-text table, one line per (model, budget); columns padded to their widest cell.

        ``n`` is every response token (LCPO's count); ``think`` / ``answer`` split its mean at ``</think>``.
        Max mode's ``within N`` is the share with ``n <= N``; Exact's ``within ±tol`` the share with
        ``|n-N|/N <= tolerance``. ``capped`` counts runs cut at the generation cap.

        Example:
            >>> rep = BudgetReport("max", None, [512], ["m.gguf"], "p.jsonl", ["a"], 0, {})
            >>> rep.rows.append(BudgetRow("m.gguf", 512, 2, 480.0, 480.0, 400.0, 80.0, 0.0625, 1.0, 1.0, 1.0,
            ...                           0, 0, 0.5))
            >>> print(rep.table())
            model   budget  runs  mean n  median n  think  answer  |n-N|/N  within N  capped  accuracy
            ------  ------  ----  ------  --------  -----  ------  -------  --------  ------  --------
            m.gguf     512     2   480.0     480.0  400.0    80.0    0.062      100%       0       50%
        """
        within = "within N" if self.mode == "max" else f"within ±{100 * (self.tolerance or 0):g}%"
        head = ["model", "budget", "runs", "mean n", "median n", "think", "answer", "|n-N|/N", within, "capped",
                "accuracy"]
        if self.hard_limit:
            head.insert(-1, "forced")
        body: list[list[str]] = []
        for r in self.rows:
            cells = [Path(r.model).name, str(r.budget), str(r.runs), f"{r.mean_tokens:.1f}", f"{r.median_tokens:.1f}",
                     f"{r.mean_reasoning_tokens:.1f}", f"{r.mean_answer_tokens:.1f}", f"{r.mean_rel_deviation:.3f}",
                     f"{100 * r.share_kept:.0f}%", str(r.cap_hits), f"{100 * r.accuracy:.0f}%"]
            if self.hard_limit:
                cells.insert(-1, str(r.forced))
            body.append(cells)
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

        def line(cells: list[str]) -> str:
            # The model name reads left-aligned; every number right-aligned under its header.
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        return "\n".join([line(head), line(["-" * w for w in widths]), *(line(c) for c in body)])

    def plot(self, path: str | Path) -> Path:
        """Write a PNG (or any matplotlib format, by suffix) of mean response tokens n vs budget, one line per model.

        The dashed diagonal is n = N (the Exact target; the Max ceiling). Needs matplotlib (the ``plot`` extra).

        Example:
            >>> report.plot("budget.png")  # doctest: +SKIP
            PosixPath('budget.png')
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise RuntimeMissingError("plotting needs matplotlib: pip install matplotlib (l1quant's plot "
                                      "extra)") from None
        out = Path(path).expanduser()
        # Figure + Agg canvas directly: no pyplot, so no global backend switch in the caller's process.
        fig = Figure(figsize=(6.4, 4.8))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        budgets = sorted(self.budgets)
        ax.plot(budgets, budgets, "--", color="grey", label="n = N")
        for model in self.models:
            rows = sorted((r for r in self.rows if r.model == model), key=lambda r: r.budget)
            ax.plot([r.budget for r in rows], [r.mean_tokens for r in rows], "o-", label=Path(model).name)
        ax.set_xlabel("budget N (tokens)")
        ax.set_ylabel("mean response tokens n (reasoning + answer)")
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


def _row(model: str, budget: int, results: Sequence[tuple[Problem, RunResult]]) -> BudgetRow:
    """Aggregate one (model, budget) cell; every length is n, all response tokens (LCPO's count)."""
    rs = [r for _, r in results]
    return BudgetRow(
        model=model, budget=budget, runs=len(rs),
        mean_tokens=_mean(r.total_tokens for r in rs),
        median_tokens=float(statistics.median(r.total_tokens for r in rs)) if rs else float("nan"),
        mean_reasoning_tokens=_mean(r.reasoning_tokens for r in rs),
        mean_answer_tokens=_mean(r.answer_tokens for r in rs),
        mean_rel_deviation=_mean(r.rel_deviation for r in rs),
        share_within_budget=_mean(float(r.total_tokens <= budget) for r in rs),
        share_kept=_mean(float(r.budget_kept) for r in rs),
        share_think_closed=_mean(float(r.think_closed) for r in rs),
        cap_hits=sum(r.hit_cap for r in rs),
        forced=sum(r.forced_think_end for r in rs),
        accuracy=_mean(float(r.answer == q.answer) for q, r in results),
    )


def _run_record(model: str, budget: int, q: Problem, sample: int, seed: int, r: RunResult) -> dict[str, Any]:
    return {
        "model": model, "budget": budget, "problem_id": q.id, "sample": sample, "seed": seed,
        "tokens": r.total_tokens, "reasoning_tokens": r.reasoning_tokens, "answer_tokens": r.answer_tokens,
        "think_closed": r.think_closed, "stop_reason": r.stop_reason, "hit_cap": r.hit_cap,
        "forced": r.forced_think_end, "budget_kept": r.budget_kept, "rel_deviation": r.rel_deviation,
        "boxed": r.boxed, "answer": r.answer, "expected": q.answer, "correct": r.answer == q.answer,
        "elapsed_s": r.elapsed_s,
    }


def budget_check(models: Sequence[str | Path], budgets: Sequence[int], problems: str | Path, *,
                 mode: str = "exact", seed: int = 0, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, max_tokens: int | None = None,
                 limit: int | None = None, tolerance: float = EXACT_TOLERANCE, samples: int = 1,
                 hard_limit: bool = False, threads: int | None = None, n_gpu_layers: int | None = None,
                 progress: Callable[[RunResult], None] | None = None, no_repack: bool = False) -> BudgetReport:
    """Run every model on every problem, ``samples`` times, at every budget; aggregate length control and accuracy.

    The L1 authors' protocol is the default: lengths count every response token (reasoning and answer, as LCPO's
    reward does), at most 2 x N tokens per generation (``max_tokens`` overrides it for every budget), sampling
    from the GGUF (R1/L1: temperature 0.6, top-p 0.95). The paper evaluates at budgets
    :data:`~l1quant.l1.prompt.PAPER_BUDGETS` with several samples per problem; accuracy is the mean over samples.

    Sample ``s`` of problem ``i`` uses seed ``(seed + i * samples + s) mod 2**32`` for every model and budget, so
    models are compared on the same random streams. ``problems`` is the JSONL file of problems (``--problems``);
    ``mode``, ``hard_limit``, ``threads``, ``n_gpu_layers`` and ``no_repack`` are as in :func:`~l1quant.l1.runner.run`
    (the parameters are named as ``l1quant budget-check``'s flags). ``progress`` is called after each run.

    Raises :class:`~l1quant.errors.InputError` for bad arguments, an unreadable problems file or a missing model;
    :class:`~l1quant.errors.RuntimeMissingError` without llama-cpp-python.

    Example:
        >>> rep = budget_check(["L1-Q8_0.gguf", "L1-F16.gguf"], [512, 1024], "examples/problems.jsonl",
        ...                    mode="max", samples=4)  # doctest: +SKIP
        >>> print(rep.table())  # doctest: +SKIP
    """
    max_mode = mode_is_max(mode)
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
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples: expected a positive number of samples per problem, found {samples!r}")
    check_resources(threads, n_gpu_layers)
    problems_path = problems
    items = load_problems(problems_path, limit=limit)
    paths = [Path(m).expanduser() for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such GGUF file")
    require("running a GGUF")  # fail on a missing extra before reading any model
    overrides = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    report = BudgetReport(mode="max" if max_mode else "exact", tolerance=None if max_mode else tolerance,
                          budgets=list(budgets), models=[str(m) for m in models], problems_path=str(problems_path),
                          problem_ids=[q.id for q in items], seed=seed, sampling_overrides=overrides,
                          samples=samples, max_tokens=max_tokens, hard_limit=hard_limit)
    for model, path in zip(report.models, paths):
        kv = gguf_kv(path)
        template, bos, eos = gguf_chat_info(path, kv)
        # One context for the whole model: the longest prompt plus the largest generation cap.
        longest = max(len(render_chat(l1_prompt(q.question, max(budgets), max_mode=max_mode), template,
                                      bos_token=bos, eos_token=eos).encode("utf-8")) for q in items)
        cap = max(max_tokens if max_tokens is not None else default_max_tokens(b) for b in budgets)
        runner = Runner(path, n_ctx=auto_ctx(longest, cap), kv=kv, n_threads=threads, n_gpu_layers=n_gpu_layers,
                         no_repack=no_repack)
        try:
            sampling = resolve_sampling(runner.sampling, temperature, top_p, top_k)
            for budget in budgets:
                results: list[tuple[Problem, RunResult]] = []
                for i, q in enumerate(items):
                    for s in range(samples):
                        run_seed = (seed + i * samples + s) % 2**32
                        r = runner.generate(q.question, budget, max_mode=max_mode, sampling=sampling, seed=run_seed,
                                            max_tokens=max_tokens if max_tokens is not None
                                            else default_max_tokens(budget),
                                            tolerance=tolerance, stream_to=None, hard_limit=hard_limit)
                        r.model = model
                        results.append((q, r))
                        report.runs.append(_run_record(model, budget, q, s, run_seed, r))
                        if progress is not None:
                            progress(r)
                report.rows.append(_row(model, budget, results))
        finally:
            runner.close()
    return report

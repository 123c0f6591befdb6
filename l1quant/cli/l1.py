"""``l1quant prompt``, ``l1quant run`` and ``l1quant budget-check``: L1 length control from the command line.

Each command parses its options and calls one function of :mod:`l1quant.l1`.

Example:
    $ l1quant prompt "What is 17*3?" --budget 512 --max
    What is 17*3? Let's think step by step and output the final answer within \\boxed{}. Think for maximum 512 tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from l1quant import l1
from l1quant.cli import main
from l1quant.errors import RuntimeMissingError


def _budgets(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers like 256,512,1024, found {value!r}")
    if not out or any(b <= 0 for b in out):
        raise click.BadParameter(f"expected comma-separated positive integers like 256,512,1024, found {value!r}")
    return out


_budget_opt = click.option("--budget", "-b", type=click.IntRange(min=1), required=True,
                           help="Thinking budget N in tokens, written into the prompt.")
_max_opt = click.option("--max", "max_mode", is_flag=True,
                        help="Max mode ('Think for maximum N tokens.', for L1-Max models); default is Exact "
                             "('Think for N tokens.').")


def _sampling_opts(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("--temp", "temperature", type=click.FloatRange(min=0), default=None,
                     help="Sampling temperature (default: the GGUF's general.sampling.temp, else 0.6; 0 = greedy)."),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
                     help="Top-p (default: the GGUF's general.sampling.top_p, else 0.95)."),
        click.option("--top-k", type=click.IntRange(min=0), default=None,
                     help="Top-k (default: the GGUF's general.sampling.top_k, else 0 = off)."),
        click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                     help="Generation cap in tokens (default: 2 x budget + 512)."),
        click.option("--tolerance", type=click.FloatRange(min=0), default=l1.EXACT_TOLERANCE, show_default=True,
                     help="Exact mode: the budget is kept when |n-N|/N is at most this."),
    ]):
        f = opt(f)
    return f


@main.command("prompt")
@click.argument("question")
@_budget_opt
@_max_opt
@click.option("--chat", "chat_model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Render through this model's chat template (a GGUF file or a model folder), generation "
                   "prompt included, exactly as the model will see it.")
def prompt_cmd(question: str, budget: int, max_mode: bool, chat_model: Path | None) -> None:
    """Print the L1 prompt for QUESTION with a thinking budget.

    \b
    Exact: QUESTION Let's think step by step and output the final answer within \\boxed{}. Think for N tokens.
    Max:   ... Think for maximum N tokens.
    """
    text = l1.l1_prompt(question, budget, max_mode=max_mode)
    if chat_model is None:
        click.echo(text)
        return
    template, bos, eos = l1.chat_template_from(chat_model)
    # The rendered prompt ends where generation starts (often with a newline): print it byte for byte.
    click.echo(l1.render_chat(text, template, bos_token=bos, eos_token=eos), nl=False)


@main.command("run")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("question")
@_budget_opt
@_max_opt
@_sampling_opts
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None, help="Sampling seed (default: random).")
@click.option("--n-ctx", type=click.IntRange(min=64), default=None,
              help="Context size (default: what the prompt and --max-tokens need).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the text and every count) instead "
                                                        "of streaming.")
def run_cmd(model: Path, question: str, budget: int, max_mode: bool, temperature: float | None,
            top_p: float | None, top_k: int | None, max_tokens: int | None, tolerance: float, seed: int | None,
            n_ctx: int | None, as_json: bool) -> None:
    """Answer QUESTION with MODEL (a GGUF) under a thinking budget; needs l1quant[run].

    Streams the reasoning and answer to stdout, then reports on stderr: reasoning tokens (up to and including
    </think>), total tokens, whether the budget was kept, and the \\boxed{} answer.
    """
    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = l1.run(model, question, budget, max_mode=max_mode, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, max_tokens=max_tokens, n_ctx=n_ctx, tolerance=tolerance,
                    stream_to=None if as_json else stream)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo("")
        click.echo(result.summary(), err=True)


@main.command("budget-check")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--budgets", required=True, callback=_budgets, help="Comma-separated budgets, e.g. 256,512,1024.")
@click.option("--problems", "problems_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL file, one {\"id\", \"question\", \"answer\": int} per line (see examples/problems.jsonl).")
@_max_opt
@_sampling_opts
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Base seed; problem i uses seed + i for every model and budget.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first K problems.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema l1quant.budget-check/1).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a plot of mean reasoning tokens vs budget (needs l1quant[plot]).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def budget_check_cmd(models: tuple[Path, ...], budgets: list[int], problems_path: Path, max_mode: bool,
                     temperature: float | None, top_p: float | None, top_k: int | None, max_tokens: int | None,
                     tolerance: float, seed: int, limit: int | None, as_json: bool, plot_path: Path | None,
                     quiet: bool) -> None:
    """Check length control: run each MODEL (GGUF) on each problem at each budget; needs l1quant[run].

    Prints per model and budget: mean reasoning tokens, mean |n-N|/N (Exact) or share within budget (Max),
    share that kept the budget, and answer accuracy.
    """
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401  (fail before hours of generation, not after)
        except ImportError:
            raise RuntimeMissingError("--plot needs matplotlib: pip install 'l1quant[plot]'") from None
    from tqdm import tqdm

    n_problems = len(l1.load_problems(problems_path, limit=limit))
    with tqdm(total=len(models) * len(set(budgets)) * n_problems, unit="run", disable=quiet, file=sys.stderr,
              leave=False) as bar:
        report = l1.budget_check(list(models), budgets, problems_path, max_mode=max_mode, seed=seed,
                                 temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                 limit=limit, tolerance=tolerance, progress=lambda r: bar.update(1))
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.table())
    if plot_path is not None:
        report.plot(plot_path)
        click.echo(f"plot written to {plot_path}", err=True)

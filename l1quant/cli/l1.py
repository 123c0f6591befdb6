"""``l1quant prompt``, ``l1quant run`` and ``l1quant budget-check``: L1 length control from the command line.

Each command parses its options and calls one function of :mod:`l1quant.l1`. Options are spelt as llama.cpp
spells them where llama.cpp has them (``-n``, ``-c/--ctx-size``, ``-t/--threads``, ``-ngl/--n-gpu-layers``).

Example:
    $ l1quant prompt "What is 17*3?" --budget 512 --mode max
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
from l1quant.l1.runner import RunResult


def parse_budgets(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """``--budgets 512,1024``: the click callback run, budget-check and compare share (positive integers)."""
    try:
        out = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers like 512,1024,2048, found {value!r}")
    if not out or any(b <= 0 for b in out):
        raise click.BadParameter(f"expected comma-separated positive integers like 512,1024,2048, found {value!r}")
    return out


def _mode(mode: str | None, max_flag: bool) -> str:
    """``--mode`` and the older ``--max`` flag as one mode ("exact" or "max"); contradicting each other is a usage
    error (exit 2)."""
    if max_flag and mode == "exact":
        raise click.UsageError("--max contradicts --mode exact (--max is the old spelling of --mode max)")
    return "max" if max_flag or mode == "max" else "exact"


_budget_opt = click.option("--budget", "-b", type=click.IntRange(min=1), required=True,
                           help="Thinking budget N in tokens, written into the prompt.")


def _mode_opts(f: click.decorators.FC) -> click.decorators.FC:
    # --max sat beside --max-tokens and was easily taken for a cap: --mode names what it is. --max still works
    # (hidden from --help) so existing scripts keep running.
    f = click.option("--max", "max_flag", is_flag=True, hidden=True, help="Same as --mode max.")(f)
    return click.option("--mode", type=click.Choice(["exact", "max"]), default=None,
                        help="Prompt wording: exact ('Think for N tokens.', L1-Exact) or max ('Think for maximum N "
                             "tokens.', L1-Max). Default: exact.")(f)


def _sampling_opts(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("--temp", "temperature", type=click.FloatRange(min=0), default=None,
                     help="Sampling temperature (default: the GGUF's general.sampling.temp, else 0.6; 0 = greedy)."),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
                     help="Top-p (default: the GGUF's general.sampling.top_p, else 0.95)."),
        click.option("--top-k", type=click.IntRange(min=0), default=None,
                     help="Top-k (default: the GGUF's general.sampling.top_k, else 0 = off)."),
        click.option("--max-tokens", "-n", "--n-predict", "max_tokens", type=click.IntRange(min=1), default=None,
                     help="Generation cap in tokens, reasoning and answer together (default: 2 x budget, the L1 "
                          "authors' protocol)."),
        click.option("--tolerance", type=click.FloatRange(min=0), default=l1.EXACT_TOLERANCE, show_default=True,
                     help="Exact mode: the budget is kept when |n-N|/N is at most this."),
        click.option("--hard-limit", is_flag=True,
                     help="Budget forcing: when the response reaches N tokens with no </think>, insert </think> and "
                          "an answer cue, then let the model answer. Reported as forced."),
    ]):
        f = opt(f)
    return f


#: llama.cpp's ``-nr/--no-repack``, on every command that runs llama.cpp (run, budget-check, compare, verify).
NO_REPACK_OPTION = click.option(
    "-nr", "--no-repack", "no_repack", is_flag=True,
    help="Run llama.cpp without its extra buffer types (weight repacking), as llama.cpp's -nr. Default: off only "
         "where a one-time probe found that they crash this CPU (some AMX machines).")


def _runtime_opts(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("-t", "--threads", "threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for llama.cpp (default: llama.cpp's choice)."),
        click.option("-ngl", "--n-gpu-layers", "--gpu-layers", "n_gpu_layers", type=click.IntRange(min=-1),
                     default=None, help="Layers to offload to the GPU, passed to llama.cpp (-1 = all; default 0)."),
        NO_REPACK_OPTION,
    ]):
        f = opt(f)
    return f


@main.command("prompt")
@click.argument("question")
@_budget_opt
@_mode_opts
@click.option("--chat", "chat_model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Render through this model's chat template (a GGUF file or a model folder), generation "
                   "prompt included, exactly as the model will see it.")
def prompt_cmd(question: str, budget: int, mode: str | None, max_flag: bool, chat_model: Path | None) -> None:
    """Print the L1 prompt for QUESTION with a thinking budget.

    \b
    Exact: QUESTION Let's think step by step and output the final answer within \\boxed{}. Think for N tokens.
    Max:   ... Think for maximum N tokens.
    """
    text = l1.l1_prompt(question, budget, max_mode=_mode(mode, max_flag) == "max")
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
@_mode_opts
@_sampling_opts
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None, help="Sampling seed (default: random).")
@click.option("-c", "--ctx-size", "--n-ctx", "n_ctx", type=click.IntRange(min=64), default=None,
              help="Context size in tokens (default: what the prompt and --max-tokens need).")
@_runtime_opts
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the text and every count) instead "
                                                        "of streaming.")
def run_cmd(model: Path, question: str, budget: int, mode: str | None, max_flag: bool, temperature: float | None,
            top_p: float | None, top_k: int | None, max_tokens: int | None, tolerance: float, hard_limit: bool,
            seed: int | None, n_ctx: int | None, threads: int | None, n_gpu_layers: int | None,
            no_repack: bool, as_json: bool) -> None:
    """Answer QUESTION with MODEL (a GGUF) under a thinking budget; needs llama-cpp-python (`pip install '.[run]'` in a checkout).

    Streams the reasoning and answer to stdout, then reports on stderr the response tokens n (reasoning through
    </think>, plus answer), whether the budget was kept, where generation stopped, and the \\boxed{} answer.

    The verdict counts n = every generated token, reasoning and answer together (the end-of-generation token
    excluded): LCPO's reward compares the budget with the whole response, so that is the length L1 was trained
    to control. Max keeps the budget when n <= N, Exact when |n-N|/N <= --tolerance.
    """
    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = l1.run(model, question, budget, mode=_mode(mode, max_flag), temperature=temperature, top_p=top_p,
                    top_k=top_k,
                    seed=seed, max_tokens=max_tokens, n_ctx=n_ctx, tolerance=tolerance,
                    stream_to=None if as_json else stream, hard_limit=hard_limit, threads=threads,
                    n_gpu_layers=n_gpu_layers, no_repack=no_repack)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo("")
        click.echo(result.summary(), err=True)


@main.command("budget-check")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--budgets", default=",".join(map(str, l1.PAPER_BUDGETS)), show_default=True, callback=parse_budgets,
              help="Comma-separated budgets (default: the L1 paper's).")
@click.option("--problems", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL file, one {\"id\", \"question\", \"answer\": int} per line (see examples/problems.jsonl).")
@_mode_opts
@_sampling_opts
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Generations per problem and budget; accuracy is the mean over them (the paper uses several).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Base seed; sample s of problem i uses seed + i x samples + s, for every model and budget.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first K problems.")
@_runtime_opts
@click.option("--json", "as_json", is_flag=True,
              help=f"Print the report as JSON (schema {l1.REPORT_SCHEMA}).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a plot of mean response tokens vs budget (needs matplotlib: `pip install '.[plot]'`).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def budget_check_cmd(models: tuple[Path, ...], budgets: list[int], problems: Path, mode: str | None,
                     max_flag: bool, temperature: float | None, top_p: float | None, top_k: int | None,
                     max_tokens: int | None, tolerance: float, hard_limit: bool, samples: int, seed: int,
                     limit: int | None, threads: int | None, n_gpu_layers: int | None, no_repack: bool,
                     as_json: bool, plot_path: Path | None, quiet: bool) -> None:
    """Check length control: run each MODEL (GGUF) on each problem at each budget; needs llama-cpp-python (`pip install '.[run]'` in a checkout).

    Defaults follow the L1 authors' evaluation: budgets 512,1024,2048,3600, at most 2 x N tokens per generation,
    sampling from the GGUF (L1: temperature 0.6, top-p 0.95). Prints per model and budget: mean and median n,
    mean reasoning and answer tokens, mean |n-N|/N, the share within budget (Max: n <= N; Exact: within
    --tolerance), how many generations hit the cap, and accuracy (mean over samples).

    n counts every generated token, reasoning and answer together (the end-of-generation token excluded): LCPO's
    reward compares the budget with the whole response, so that is the length L1 was trained to control.
    """
    mode = _mode(mode, max_flag)
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401  (fail before hours of generation, not after)
        except ImportError:
            raise RuntimeMissingError("--plot needs matplotlib: pip install matplotlib (l1quant's plot "
                                      "extra)") from None
    from tqdm import tqdm

    n_problems = len(l1.load_problems(problems, limit=limit))
    n_budgets = len(set(budgets))
    what = f"{n_problems} problems x {samples} samples x {n_budgets} budgets"
    if len(models) > 1:
        what += f" x {len(models)} models"
    # tqdm's own counter and ETA ("[elapsed<remaining]"); the postfix names the cell the last run belonged to.
    with tqdm(total=len(models) * n_budgets * n_problems * samples, desc=what, unit="gen", disable=quiet,
              file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(r: RunResult) -> None:
            bar.set_postfix_str(f"{Path(r.model).name} N={r.budget}", refresh=False)
            bar.update(1)

        report = l1.budget_check(list(models), budgets, problems, mode=mode, seed=seed,
                                 temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
                                 limit=limit, tolerance=tolerance, samples=samples, hard_limit=hard_limit,
                                 threads=threads, n_gpu_layers=n_gpu_layers, progress=progress,
                                 no_repack=no_repack)
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.table())
    if plot_path is not None:
        report.plot(plot_path)
        click.echo(f"plot written to {plot_path}", err=True)

"""``l1quant compare``: size, bits per weight, PPL and KLD per type, in llama-perplexity's protocol.

Parses options and calls :func:`l1quant.evaluate.compare` with the same parameters.

Example:
    $ l1quant compare L1-Qwen-1.5B-Max --types f16,q8_0,q4_k_m --chunks 20
    $ l1quant compare m-Q8_0.gguf m-Q4_K_M.gguf --base m-F16.gguf --json > table.json
    $ l1quant compare m-BF16.gguf --types bf16,q4_k_m,q4_k_m+output=q5_0,auto@q4_k_m --calibration --plot p.png
"""

from __future__ import annotations

from pathlib import Path

import click

from l1quant.cli import main
from l1quant.cli.l1 import NO_REPACK_OPTION, parse_budgets
from l1quant.cli.options import setup_logging


def _entries(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    """``--types``: the entries, cut at commas outside brackets (a regex's ``{1,2}`` stays whole)."""
    from l1quant.evaluate.entries import split_entries

    return split_entries(value or "")


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int]:
    """Optional ``--budgets``: empty when not given, else budget-check's own parsing."""
    return parse_budgets(ctx, param, value) if value else []


def _clear_cache(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """``--clear-cache``: empty compare's cache folder and exit (no MODEL needed)."""
    if not value or ctx.resilient_parsing:
        return
    from l1quant.evaluate import clear_cache

    root, freed = clear_cache()
    click.echo(f"removed {root} ({freed / 1e9:.2f} GB)")
    ctx.exit(0)


@main.command("compare")
@click.argument("model", nargs=-1, required=True)
@click.option("--no-cache", is_flag=True,
              help="Keep nothing in the cache folder: converted files and base log-probs go to a temporary folder "
                   "removed at the end (by default they are kept for the next run; the folder is printed).")
@click.option("--clear-cache", is_flag=True, is_eager=True, expose_value=False, callback=_clear_cache,
              help="Delete the cache folder (converted files, base log-probs) and exit.")
@click.option("--types", default="f16,q8_0,q6_k,q5_k_m,q4_k_m", show_default=True, callback=_entries,
              help="With a checkpoint folder or one F32/F16/BF16 GGUF: the entries to make and compare; the first "
                   "is the base. A type or mix (q4_k_m); a hand mix with llama-quantize's per-tensor flags "
                   "(q4_k_m+token_embd=q4_0+output=q5_0, +REGEX=TYPE for --tensor-type, +pure); or a target-size "
                   "file: auto@4.0bpw, auto@400M, auto@q3_k_m (that entry's size). See docs/compare.md.")
@click.option("--imatrix", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              metavar="FILE", help="Quantize the --types with this importance matrix (llama-imatrix's GGUF or .dat), "
                                   "as convert --imatrix.")
@click.option("--calibration", is_flag=False, flag_value="", default=None, metavar="[TEXT]",
              help="Compute an importance matrix from the lossless conversion over TEXT first (without TEXT the "
                   "bundled calibration text), as convert --calibration, and quantize the --types with it; kept "
                   "in the cache (or --keep) folder and reused. Needs llama-cpp-python.")
@click.option("--base", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              metavar="BASE.gguf", help="With GGUF files: the base every file is compared with.")
@click.option("--text", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, metavar="FILE",
              help="UTF-8 text to evaluate (default: the bundled text).")
@click.option("-c", "--ctx", type=click.IntRange(min=8), default=512, show_default=True,
              help="Tokens per chunk (llama-perplexity -c).")
@click.option("--chunks", type=click.IntRange(min=1), default=None,
              help="At most this many chunks (llama-perplexity --chunks; default all the text gives).")
@click.option("--keep", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="Write the converted GGUFs here (default: a cache folder).")
@click.option("--base-logits", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
              help="The base's log-prob file (llama-perplexity --kl-divergence-base format): reused when it "
                   "exists, written when not (default: a cache file).")
@click.option("--runtime", type=click.Choice(["auto", "llama.cpp", "numpy"]), default="auto", show_default=True,
              help="llama.cpp (llama-cpp-python) computes what llama-perplexity computes; numpy is weight-only.")
@click.option("-t", "--threads", type=click.IntRange(min=1), default=None, help="Threads (default: all cores).")
@NO_REPACK_OPTION
@click.option("--budgets", default=None, callback=_ints, help="Also run budget-check at these budgets.")
@click.option("--problems", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Problems for --budgets (JSONL, as budget-check).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first K problems.")
@click.option("--mode", type=click.Choice(["exact", "max"]), default="exact", show_default=True,
              help="L1 prompt wording for --budgets.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema l1quant.compare/1).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a size-vs-KLD chart (PNG) here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def compare_cmd(model: tuple[str, ...], types: list[str], base: Path | None, text: Path | None, ctx: int,
                chunks: int | None, keep: Path | None, base_logits: Path | None, runtime: str,
                threads: int | None, no_repack: bool, budgets: list[int], problems: Path | None,
                limit: int | None, mode: str, as_json: bool, plot_path: Path | None, quiet: bool,
                no_cache: bool, imatrix: Path | None, calibration: str | None) -> None:
    """Table file size, bits per weight, PPL and KLD for each type, as llama-perplexity computes them.

    MODEL is a checkpoint folder (each --types entry is converted; the first is the base), one F32/F16/BF16
    GGUF (each entry is quantized from it), or GGUF files with --base. Each chunk of --ctx tokens starts with BOS and only its second half is scored; the base's log-probs
    are computed once and cached on disk. KLD, same-top and Δp RMS are llama-perplexity --kl-divergence's.
    """
    from l1quant.evaluate import cache_size, compare, compare_cache_dir

    setup_logging(quiet)  # a rebuilt cache entry is one warning line
    if len(model) == 1 and not model[0].endswith(".gguf"):
        target: str | list[str] = model[0]
    else:
        target = list(model)
    rep = compare(target, types, base=base, text=text, ctx=ctx, chunks=chunks, keep=keep, base_logits=base_logits,
                  threads=threads, runtime=runtime, budgets=budgets, problems=problems, limit=limit,
                  mode=mode, progress=not quiet, no_repack=no_repack, no_cache=no_cache, imatrix=imatrix,
                  calibration=calibration)
    click.echo(rep.to_json() if as_json else rep.table())
    converted = len(model) == 1 and (not model[0].endswith(".gguf") or base is None)
    if not no_cache and ((converted and keep is None) or base_logits is None):
        # converted files and base log-probs of a 1.5B model take ~13 GB: say where, and how to get it back
        click.echo(f"l1quant: cache: {compare_cache_dir()} holds {cache_size() / 1e9:.2f} GB (reused by the next "
                   "run; `l1quant compare --clear-cache` deletes it, --no-cache keeps nothing)", err=True)
    if plot_path is not None:
        rep.plot(plot_path)

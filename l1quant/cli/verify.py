"""``l1quant verify FILE.gguf``: parses options, calls :func:`l1quant.check.verifier.verify`, prints the report.

Exit status: 0 when every check passes, 1 when a check fails (or one that was asked for cannot run, such as
``--runtime llama.cpp`` without llama-cpp-python), 2 when the file cannot be read as GGUF at all or the arguments
are unusable (a usage error: ``--source`` names no folder, ``--logits`` without ``--source``).

Example:
    $ l1quant verify L1-Qwen-1.5B-Max-Q8_0.gguf --source L1-Qwen-1.5B-Max
    $ l1quant verify out.gguf --source model --logits --tokens 128 --json | jq .logits.mean_kld
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from l1quant.check import format_report, verify
from l1quant.cli import main
from l1quant.cli.l1 import NO_REPACK_OPTION
from l1quant.cli.options import THREADS
from l1quant.errors import GGUFFormatError, InputError
from l1quant.source.hub import resolve_model


@main.command("verify")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--source", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="MODEL_DIR",
              help="The checkpoint folder FILE was converted from (or its Hugging Face repo id): compares metadata "
                   "and every tensor (bytes must equal re-quantizing the source; Q8_0 errors within the 8-bit "
                   "bound).")
@click.option("--logits", is_flag=True,
              help="Also run a reference forward pass on the source and on FILE and compare the logits "
                   "(KL divergence, top-1 agreement, perplexity). Needs --source.")
@click.option("--text", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              metavar="FILE", help="UTF-8 text for the logit check (default: the bundled evaluation text).")
@click.option("--tokens", type=click.IntRange(min=2), default=256, show_default=True,
              help="How many tokens of the text the logit check uses.")
@click.option("--runtime", type=click.Choice(["llama.cpp"]), default=None,
              help="Also run FILE through llama.cpp (llama-cpp-python) and compare its logits with the source's; "
                   "implies --logits.")
@NO_REPACK_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Worker threads (default: all cores).")
def verify_cmd(file: Path, source: Path | None, logits: bool, text: Path | None, tokens: int,
               runtime: str | None, no_repack: bool, as_json: bool, threads: int | None) -> None:
    """Check that FILE is a sound GGUF, faithful to its source checkpoint, down to the logits.

    Always: header, key types, hparams, tokenizer arrays, tensor names/shapes/types, no NaN/Inf, and how the file
    will behave in the runtimes users run (compat.*: end of generation, BOS, pre-tokenizer release, chat
    template, head sizes, requantization; a WARN keeps exit status 0). With --source: metadata and every tensor
    against the checkpoint, and the source's eos ids for compat. With --logits/--runtime: logit agreement.

    \b
    Exit status:
      0  every check passed
      1  a check failed, or a check asked for cannot run
         (--runtime llama.cpp without llama-cpp-python)
      2  FILE cannot be read as GGUF, or a usage error
         (a bad option, --source naming no model folder)
    """
    if (logits or runtime) and source is None:
        raise click.UsageError("--logits and --runtime need --source MODEL_DIR")
    if source is not None:
        # A missing source folder is the user's argument, not the file, failing: a usage error (exit 2), before
        # any work, rather than a FAIL line in a report about FILE.
        try:
            resolve_model(str(source))
        except InputError as e:
            raise click.BadParameter(str(e), param_hint="'--source'") from None
    try:
        rep = verify(file, source=source, logits=logits, text=text, tokens=tokens, runtime=runtime,
                     threads=threads, no_repack=no_repack)
    except GGUFFormatError as e:
        if not as_json:
            raise  # the command group prints one line and exits 2
        click.echo(json.dumps({"file": str(file), "passed": False, "verdict": f"UNREADABLE: {e}",
                               "error": str(e)}, indent=2, ensure_ascii=False))
        click.get_current_context().exit(e.exit_code)
    click.echo(rep.to_json() if as_json else format_report(rep))
    if not rep.passed:
        click.get_current_context().exit(1)

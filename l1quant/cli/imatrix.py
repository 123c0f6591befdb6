"""``l1quant imatrix``: an importance matrix as ``llama-imatrix`` computes it, with its flag names and defaults.

Parses options and calls :func:`l1quant.imatrix` with the same parameters.

Example:
    $ l1quant imatrix L1-Qwen-1.5B-Max -f calibration.txt -o L1.imatrix.gguf --chunks 100
    $ l1quant imatrix m-BF16.gguf -f calibration.txt -o imatrix.dat --output-format dat -t 8
"""

from __future__ import annotations

from pathlib import Path

import click

from l1quant.cli import main
from l1quant.cli.l1 import NO_REPACK_OPTION
from l1quant.cli.options import THREADS, setup_logging


@main.command("imatrix")
@click.argument("model")
@click.option("-f", "--file", "text", default=None, metavar="FNAME",
              help="The calibration text (UTF-8; its path as given is the file's dataset name). Default: the "
                   "bundled text (math word problems with worked solutions, prose, code; ~67 k tokens).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=Path("imatrix.gguf"),
              show_default=True, metavar="FNAME", help="The imatrix file to write.")
@click.option("-c", "--ctx-size", "ctx_size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens per chunk.")
@click.option("--chunks", type=int, default=None, help="At most this many chunks (default: all the text gives).")
@click.option("-b", "--batch-size", "batch_size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Logical batch: batch-size / ctx-size chunks are evaluated per decode.")
@click.option("-t", "--threads", type=THREADS, default=None, help="Threads (default: all cores).")
@click.option("--output-format", type=click.Choice(["gguf", "dat"]), default="gguf", show_default=True,
              help="gguf (raw sums and counts) or dat (llama.cpp's legacy format).")
@click.option("--process-output", is_flag=True, help="Also collect output.weight.")
@click.option("--no-ppl", is_flag=True, help="Do not compute the perplexity of each chunk.")
@NO_REPACK_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def imatrix_cmd(model: str, text: str | None, output: Path, ctx_size: int, chunks: int | None, batch_size: int,
                threads: int | None, output_format: str, process_output: bool, no_ppl: bool, no_repack: bool,
                quiet: bool) -> None:
    """Compute an importance matrix over a calibration text, as llama-imatrix does (same tensors, sums, counts
    and file), for llama-quantize --imatrix or l1quant convert/quantize --imatrix.

    MODEL is a GGUF or a checkpoint folder (converted losslessly to a temporary GGUF first). The activations are
    ggml's own, through the llama.cpp runtime (llama-cpp-python). Per-chunk PPL is printed as llama-imatrix
    prints it.
    """
    from l1quant.imatrix_compute import imatrix

    setup_logging(quiet)
    rep = imatrix(model, text, output, ctx_size=ctx_size, chunks=chunks, batch_size=batch_size, threads=threads,
                  output_format=output_format, process_output=process_output, no_ppl=no_ppl, no_repack=no_repack,
                  progress=not quiet, echo=lambda s: click.echo(s, nl=False))
    click.echo(f"l1quant: wrote {rep.path} ({rep.entries} entries, {rep.chunk_count} chunks of {rep.chunk_size} "
               f"tokens, {rep.seconds:.1f} s)", err=True)

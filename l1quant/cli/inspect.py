"""``l1quant inspect FILE``: print a GGUF file's header, metadata and tensor table (or JSON); an importance
matrix (llama-imatrix's GGUF or legacy .dat) gets its own summary: entries, chunks, datasets, columns never
activated.

Example:
    $ l1quant inspect model.Q8_0.gguf --tokens 20
    $ l1quant inspect model.Q8_0.gguf --json | jq .totals
    $ l1quant inspect L1.imatrix.gguf
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from l1quant.cli import main
from l1quant.gguf.reader import describe, format_description
from l1quant.gguf.split import merged_view, read_parts
from l1quant.imatrix_file import describe_imatrix, format_imatrix, is_imatrix_file


@main.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--tokens", type=click.IntRange(min=0), default=8, show_default=True,
              help="How many items of each array (e.g. the vocabulary) to show.")
def inspect_cmd(file: Path, as_json: bool, tokens: int) -> None:
    """Show FILE's GGUF header, every key/value (long arrays abbreviated) and its tensors; for an importance
    matrix (GGUF or legacy .dat), its entries, chunks, datasets and columns never activated."""
    if is_imatrix_file(file):
        im = describe_imatrix(file)
        click.echo(json.dumps(im, indent=2, ensure_ascii=False) if as_json else format_imatrix(im, limit=tokens))
        return
    # a split's first part: the whole model (every part's tensors, the keys without split.*), as llama.cpp loads it
    d = describe(merged_view(read_parts(file)), tokens=tokens)
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        click.echo(format_description(d))

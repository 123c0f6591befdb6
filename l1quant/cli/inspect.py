"""``l1quant inspect FILE.gguf``: print a GGUF file's header, metadata and tensor table (or JSON).

Example:
    $ l1quant inspect model.Q8_0.gguf --tokens 20
    $ l1quant inspect model.Q8_0.gguf --json | jq .totals
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from l1quant.cli import main
from l1quant.gguf.reader import describe, format_description
from l1quant.gguf.split import merged_view, read_parts


@main.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--tokens", type=click.IntRange(min=0), default=8, show_default=True,
              help="How many items of each array (e.g. the vocabulary) to show.")
def inspect_cmd(file: Path, as_json: bool, tokens: int) -> None:
    """Show FILE's GGUF header, every key/value (long arrays abbreviated) and its tensors."""
    # a split's first part: the whole model (every part's tensors, the keys without split.*), as llama.cpp loads it
    d = describe(merged_view(read_parts(file)), tokens=tokens)
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        click.echo(format_description(d))

"""The ``l1quant`` command line: a thin layer over the library.

Each command lives in its own module under ``l1quant.cli`` and only parses options and calls one library
function with the same parameters. Errors derived from :class:`l1quant.errors.L1QuantError` are printed as one
line on stderr with a non-zero exit; ``--debug`` (or ``L1QUANT_DEBUG=1``) shows the traceback instead.

Example:
    $ l1quant convert path/to/L1-Qwen-1.5B-Max --type q8_0
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..errors import L1QuantError


class _Group(click.Group):
    """Turns library errors into one clean line and an exit code, for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except L1QuantError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"l1quant: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("l1quant: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, default=lambda: os.environ.get("L1QUANT_DEBUG") == "1",
              help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="l1quant")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Convert L1 (qwen2) checkpoints to GGUF, verify them, and run them with a thinking budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each command module adds itself to ``main``; a module that is not written yet is simply absent.
    import importlib

    for mod in ("convert", "inspect", "verify", "l1"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Options shared by ``convert`` and ``quantize``: llama-quantize's per-tensor flags, spelled as llama-quantize
spells them, and the output/performance options both commands take.

Example:
    >>> import click
    >>> @click.command()
    ... @per_tensor_options
    ... def cmd(**kw: object) -> None:
    ...     pass
    >>> sorted(p.name for p in cmd.params)[:2]
    ['leave_output_tensor', 'output_tensor_type']
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def per_tensor_options(f: F) -> F:
    """Add ``--pure``, ``--output-tensor-type``, ``--token-embedding-type``, ``--tensor-type`` and
    ``--leave-output-tensor`` (the parameters of the same names of ``convert``/``quantize``)."""
    for opt in reversed((
        click.option("--pure", is_flag=True,
                     help="Every quantizable tensor gets the type's base type (no per-tensor mix), as "
                          "llama-quantize --pure."),
        click.option("--output-tensor-type", metavar="TYPE", default=None,
                     help="Type of output.weight (and of a tied token_embd.weight), e.g. q8_0."),
        click.option("--token-embedding-type", metavar="TYPE", default=None,
                     help="Type of token_embd.weight, e.g. q8_0."),
        click.option("--tensor-type", "tensor_types", metavar="REGEX=TYPE", multiple=True,
                     help="Type of the tensors whose name matches REGEX (searched anywhere in the name; the "
                          "first matching option wins). Repeatable, e.g. --tensor-type attn_v=q8_0."),
        click.option("--leave-output-tensor", is_flag=True,
                     help="Copy output.weight unquantized (as the input has it)."),
    )):
        f = opt(f)
    return f


#: ``--calibration [TEXT]`` of ``convert`` and ``quantize`` (the parameter ``calibration``; "" = the bundled text).
CALIBRATION_OPTION = click.option(
    "--calibration", is_flag=False, flag_value="", default=None, metavar="[TEXT]",
    help="Compute an importance matrix over TEXT first (as llama-imatrix, from the lossless model; without TEXT "
         "the bundled calibration text: math with worked solutions, prose, code) and quantize with it; the matrix "
         "is kept beside the output as NAME.imatrix.gguf. Needs llama-cpp-python.")


class _Prefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        return f"l1quant: {kind}{record.getMessage()}"


def setup_logging(quiet: bool) -> None:
    """Warnings (and, unless ``quiet``, the one-line summary) of the library on stderr, ``l1quant:``-prefixed.

    The level is set on the command's own handler, not on the logger: a ``-q`` command in a long-lived process
    (a test runner, a notebook) must not silence the library's warnings for everything that runs after it.

    Example:
        >>> setup_logging(True)
        >>> [h.level for h in logging.getLogger("l1quant").handlers if getattr(h, "_l1quant", False)] == [40]
        True
    """
    logger = logging.getLogger("l1quant")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)  # let the summary line through to our handler
    # one handler, bound to the stderr of this call (a caller such as click's test runner may have swapped it)
    for old in [h for h in logger.handlers if getattr(h, "_l1quant", False)]:
        logger.removeHandler(old)
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.ERROR if quiet else logging.INFO)
    h.setFormatter(_Prefix())
    h._l1quant = True  # type: ignore[attr-defined]
    logger.addHandler(h)


class _Threads(click.types.IntRange):
    """A thread count (``-t``/``--threads`` in every command, as in llama.cpp's tools). A value that is not a
    number gets a hint: ``-t`` meant ``--type`` in ``convert`` before, and llama.cpp users type it for threads.

    Example:
        >>> THREADS.convert("4", None, None)
        4
    """

    name = "threads"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            self.fail(f"{value!r} is not a thread count: -t means --threads in every l1quant command (as in "
                      "llama.cpp); the output type is --type", param, ctx)
        return super().convert(value, param, ctx)


#: The type of every ``-t``/``--threads`` option: a positive int, with a hint for ``-t q4_k_m``.
THREADS = _Threads(min=1)

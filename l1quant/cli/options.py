"""Options shared by ``convert`` and ``quantize``: llama-quantize's per-tensor flags, spelled as llama-quantize
spells them, and the output/performance options both commands take.

Example:
    >>> import click
    >>> @click.command()
    ... @per_tensor_options
    ... def cmd(**kw: object) -> None:
    ...     pass
    >>> sorted(p.name for p in cmd.params)[:3]
    ['exclude_weights', 'imatrix', 'include_weights']
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def per_tensor_options(f: F) -> F:
    """Add ``--pure``, ``--output-tensor-type``, ``--token-embedding-type``, ``--tensor-type``,
    ``--leave-output-tensor``, ``--imatrix``, ``--include-weights`` and ``--exclude-weights`` (the parameters of
    the same names of ``convert``/``quantize``)."""
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
        click.option("--tensor-type-file", "tensor_type_file", metavar="FILE", default=None,
                     help="REGEX=TYPE items from FILE (whitespace-separated, as llama-quantize --tensor-type-file), "
                          "after the --tensor-type ones."),
        click.option("--leave-output-tensor", is_flag=True,
                     help="Copy output.weight unquantized (as the input has it)."),
        click.option("--imatrix", metavar="FILE", default=None,
                     help="Quantize with this importance matrix (llama-imatrix's GGUF or legacy .dat), as "
                          "llama-quantize --imatrix; needed by q2_k_s, iq3_xs, iq3_xxs and the iq2/iq1 mixes."),
        click.option("--include-weights", "include_weights", metavar="NAME", multiple=True,
                     help="Use the imatrix only for tensors whose name contains NAME (repeatable)."),
        click.option("--exclude-weights", "exclude_weights", metavar="NAME", multiple=True,
                     help="Do not use the imatrix for tensors whose name contains NAME (repeatable; not with "
                          "--include-weights)."),
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


def run_report_options(f: F) -> F:
    """Add ``--dry-run`` and ``--json`` (the output record of ``convert``/``quantize``)."""
    for opt in reversed((
        click.option("--dry-run", is_flag=True,
                     help="Show each tensor's type and size and the file's exact size, without reading tensor "
                          "data or writing anything."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON object per run: outputs with path, size, sha256, tensor types and their "
                          "counts, seconds (a --dry-run prints the same, without sha256 and seconds)."),
    )):
        f = opt(f)
    return f


def format_tensor_table(report: dict[str, Any]) -> str:
    """The ``--dry-run`` text for one output record (:func:`l1quant.conversion.write.output_report`).

    Example:
        >>> print(format_tensor_table({"path": "m.gguf", "type": "Q8_0", "size": 4224, "tensor_types": {"Q8_0": 1},
        ...                            "tensors": [{"name": "w", "type": "Q8_0", "shape": [64, 64], "nbytes": 4352}]}))
        m.gguf (Q8_0): 1 tensors, 4224 bytes (0.00 GB)
          w                                        Q8_0    [64, 64]                 4352
          tensor types: 1 Q8_0
    """
    lines = [f"{report['path']} ({report['type']}): {len(report['tensors'])} tensors, {report['size']} bytes "
             f"({report['size'] / 1e9:.2f} GB)"]
    for t in report["tensors"]:
        lines.append(f"  {t['name']:<40} {t['type']:<7} {str(t['shape']):<16} {t['nbytes']:>12}")
    lines.append("  tensor types: " + ", ".join(f"{n} {k}" for k, n in report["tensor_types"].items()))
    return "\n".join(lines)


def split_options(f: F) -> F:
    """Add ``--split-max-size`` and ``--split-max-tensors`` (llama.cpp gguf-split's flags; WriteOptions' fields)."""
    for opt in reversed((
        click.option("--split-max-size", default=None, metavar="N(M|G)",
                     help="Write the output as parts of at most this much tensor data each (e.g. 2G, 500M: "
                          "10^9/10^6 bytes), named NAME-00001-of-0000N.gguf, as llama.cpp's gguf-split does."),
        click.option("--split-max-tensors", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Write the output as parts of at most N tensors each, as gguf-split does."),
    )):
        f = opt(f)
    return f


class SplitFields(TypedDict):
    """The split fields of :class:`~l1quant.conversion.write.WriteOptions`, as :func:`split_write_fields` gives them."""

    split_max_size: int | None
    split_max_tensors: int | None


def split_write_fields(split_max_size: str | None, split_max_tensors: int | None) -> SplitFields:
    """The WriteOptions fields of the split flags (``--split-max-size 2G`` in bytes).

    Example:
        >>> split_write_fields("2G", None)
        {'split_max_size': 2000000000, 'split_max_tensors': None}
    """
    from l1quant.gguf.split import parse_split_size

    return {"split_max_size": None if split_max_size is None else parse_split_size(split_max_size),
            "split_max_tensors": split_max_tensors}


def target_options(f: F) -> F:
    """Add ``--target-size`` and ``--target-bpw`` (type ``auto``: the parameters ``target_size``/``target_bpw`` of
    ``convert``/``quantize``)."""
    for opt in reversed((
        click.option("--target-size", "target_size", metavar="SIZE", default=None,
                     help="With type auto: choose each tensor's type by measurement so the whole file fits SIZE "
                          "(bytes, or 432M, 4.5G, 800MiB...). Needs --imatrix (or --calibration)."),
        click.option("--target-bpw", "target_bpw", metavar="BPW", type=float, default=None,
                     help="With type auto: as --target-size, for a size of BPW bits per parameter."),
    )):
        f = opt(f)
    return f

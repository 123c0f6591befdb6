"""What ``convert`` and ``quantize`` share once their header and plan are decided: the write options, the
output-path rule, and the atomic write itself.

Example:
    >>> w = WriteOptions(threads=2, chunk_mb=0.5)
    >>> w.chunk_bytes
    524288
    >>> output_path("/nonexistent/new/", Path("m-Q8_0.gguf"), "Q8_0")
    (PosixPath('/nonexistent/new/m-Q8_0.gguf'), True)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gguf

from l1quant.conversion.mixes import QuantOptions, quant_options
from l1quant.conversion.pipeline import DEFAULT_CHUNK_BYTES, stream_tensors
from l1quant.conversion.plan import ConversionPlan
from l1quant.errors import ConfigError, OutputError
from l1quant.gguf.header import Header
from l1quant.gguf.writer import write_header
from l1quant.output import AtomicOutput
from l1quant.source.snapshot import InputSnapshot

__all__ = ["DEFAULT_CHUNK_MB", "MAX_CHUNK_MB", "MIN_CHUNK_MB", "WriteOptions", "output_path", "split_flat_options", "summary_line", "write_gguf"]

log = logging.getLogger("l1quant")

#: ``--chunk-mb``'s default: source MiB per work item
DEFAULT_CHUNK_MB = DEFAULT_CHUNK_BYTES / 2**20
#: --chunk-mb bounds: one job reads this many source MiB. Below 1 KiB the per-job overhead dominates; above 4 GiB
#: the ~3 x threads x chunk buffers exceed any machine this runs on.
MIN_CHUNK_MB = 0.001
MAX_CHUNK_MB = 4096.0


@dataclass(frozen=True)
class WriteOptions:
    """How ``convert`` and ``quantize`` write their output; each field is the CLI flag of the same name.

    * ``threads`` (``--threads``): worker threads, default every core (at most 64 and 4 x cores);
    * ``chunk_mb`` (``--chunk-mb``): source MiB per work item, bounds memory (about 3 x threads x chunk);
    * ``allow_nonfinite`` (``--allow-nonfinite``): write even if a tensor holds or becomes NaN/Inf;
    * ``fsync`` (``--fsync``): flush the file and its folder before publishing it, so it survives a power loss
      (the output is atomic without it);
    * ``progress``: True for a progress bar on stderr (the CLI's default on a terminal, off with ``-q``), or a
      callback receiving the output bytes written.

    The output bytes do not depend on ``threads`` or ``chunk_mb``. Raises ``ConfigError`` for ``threads < 1`` or a
    ``chunk_mb`` outside (0, 4096] (the CLI also refuses less than 0.001, :data:`MIN_CHUNK_MB`).

    Example:
        >>> WriteOptions(threads=0)
        Traceback (most recent call last):
        ...
        l1quant.errors.ConfigError: threads must be >= 1, found 0
    """

    threads: int | None = None
    chunk_mb: float = DEFAULT_CHUNK_MB
    allow_nonfinite: bool = False
    fsync: bool = False
    progress: bool | Callable[[int], None] = False

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, found {self.threads}")
        if not 0 < self.chunk_mb <= MAX_CHUNK_MB:  # also NaN (every comparison with NaN is false)
            raise ConfigError(f"chunk_mb must be a number of MiB in (0, {MAX_CHUNK_MB}], found {self.chunk_mb}")

    @property
    def chunk_bytes(self) -> int:
        """``chunk_mb`` in bytes (at least 1)."""
        return max(1, int(self.chunk_mb * 2**20))


#: The flat keyword names ``convert``/``quantize`` took before the options were grouped, still accepted:
#: old name -> (group, field). ``durable`` and ``chunk_bytes`` are the old spellings of ``fsync`` and ``chunk_mb``.
_FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f.name: ("write", f.name) for f in fields(WriteOptions)},
    "durable": ("write", "fsync"),
    "chunk_bytes": ("write", "chunk_bytes"),
    **{n: ("quant", n) for n in ("pure", "output_tensor_type", "token_embedding_type", "tensor_types",
                                 "leave_output_tensor")},
}


def split_flat_options(func: str, flat: Mapping[str, Any], options: QuantOptions | None,
                       write: WriteOptions | None) -> tuple[QuantOptions | None, WriteOptions]:
    """Fold flat keyword arguments (``threads=2``, ``pure=True``...: the flags' names) into the two option
    objects. Raises ``TypeError`` for an unknown name, as a call with a wrong keyword does, and ``ConfigError``
    when a flat name repeats a group that was also given whole.

    Example:
        >>> q, w = split_flat_options("convert", {"threads": 2, "pure": True}, None, None)
        >>> q.pure, w.threads
        (True, 2)
    """
    quant_kw: dict[str, Any] = {}
    write_kw: dict[str, Any] = {}
    for name, value in flat.items():
        where = _FLAT_NAMES.get(name)
        if where is None:
            raise TypeError(f"{func}() got an unexpected keyword argument {name!r}")
        group, field = where
        if field == "chunk_bytes":
            field, value = "chunk_mb", value / 2**20
        (quant_kw if group == "quant" else write_kw)[field] = value
    if quant_kw:
        if options is not None:
            raise ConfigError(f"{func}(): pass the per-tensor flags either in options= or by name, not both")
        options = quant_options(**quant_kw)
    if write_kw:
        if write is not None:
            raise ConfigError(f"{func}(): pass the write options either in write= or by name, not both")
        write = WriteOptions(**write_kw)
    return options, write or WriteOptions()


def output_path(output: str | os.PathLike[str] | None, default: Path, type_name: str) -> tuple[Path, bool]:
    """The output file for ``output`` (the ``-o``/OUTPUT argument), and whether its folder must be created.

    None: ``default``. A folder, or any path ending in a separator (``new/``: a folder, existing or not, never a
    file called ``new``): ``default``'s name in it. Anything else is a file path, with gguf's templates in its name
    (``{ftype}``, ``{FTYPE}``, ``{outtype}``) filled with ``type_name``, as llama.cpp's converter does.

    Example:
        >>> output_path(None, Path("m-Q8_0.gguf"), "Q8_0")
        (PosixPath('m-Q8_0.gguf'), False)
        >>> output_path("x-{ftype}.gguf", Path("m-Q8_0.gguf"), "Q8_0")
        (PosixPath('x-q8_0.gguf'), False)
    """
    if output is None:
        return default, False
    out = Path(output)
    names_folder = str(output).endswith(("/", os.sep))
    if out.is_dir() or names_folder:
        return out / default.name, names_folder and not out.exists()
    return out.parent / gguf.fill_templated_filename(out.name, type_name), False


def write_gguf(plan: ConversionPlan, header: Header, output: Path, write: WriteOptions | None = None, *,
               create_folder: bool = False) -> None:
    """Write ``header`` and stream every tensor of ``plan`` into ``output``, atomically; log one summary line.

    The shared last step of ``convert`` and ``quantize``. ``create_folder`` creates the output's folder first
    (``-o new/``). Raises ``OutputError`` when the output cannot be written; nothing is left behind on failure.

    Example:
        >>> write_gguf(plan, header, Path("out.gguf"), WriteOptions(threads=2))  # doctest: +SKIP
    """
    w = write or WriteOptions()
    if create_folder:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{output.parent}: cannot create the output folder: {e.strerror or e}") from e
    started = time.monotonic()
    bar: Any = None
    cb: Callable[[int], None] | None
    if w.progress is True:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.nbytes for t in plan.tensors), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=output.name, leave=True)
        cb = bar.update
    else:
        cb = w.progress or None
    inputs = InputSnapshot.of(t.source.path for t in plan.tensors)  # an input rewritten meanwhile: refused
    try:
        with AtomicOutput(output, 0, durable=w.fsync) as out:
            data_offset = write_header(header, out.fd)
            out.reserve(data_offset + header.data_nbytes)
            # early writeback only pays off when a final fsync will wait for the disk anyway
            stream_tensors(plan, out.fd, data_offset, threads=w.threads, chunk_bytes=w.chunk_bytes,
                           allow_nonfinite=w.allow_nonfinite, on_progress=cb, writeback=w.fsync)
            inputs.check()
    finally:
        if bar is not None:
            bar.close()
    log.info(summary_line(output, plan, time.monotonic() - started))


def summary_line(path: Path, plan: ConversionPlan, seconds: float) -> str:
    """One line saying what was written: path, size, file type, the tensor types and their counts, time.

    Example:
        >>> from l1quant.conversion.plan import layout
        >>> summary_line(Path("m-Q4_K_M.gguf"), layout("qwen2", "Q4_K_M", 15, [], []), 7.25)
        'wrote m-Q4_K_M.gguf (0.00 GB, Q4_K_M: no tensors) in 7.2 s'
    """
    counts: dict[str, int] = {}
    for t in plan.tensors:
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    mix = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no tensors"
    try:
        size = path.stat().st_size
    except OSError:
        size = plan.data_nbytes
    return f"wrote {path} ({size / 1e9:.2f} GB, {plan.type_name}: {mix}) in {seconds:.1f} s"

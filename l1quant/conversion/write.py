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

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import gguf

from l1quant.conversion.mixes import QuantOptions, quant_options
from l1quant.conversion.pipeline import DEFAULT_CHUNK_BYTES, stream_tensors
from l1quant.conversion.plan import ConversionPlan, PlannedTensor
from l1quant.errors import ConfigError, OutputError
from l1quant.gguf.header import Header
from l1quant.gguf.reader import read_gguf
from l1quant.gguf.split import split_header, split_path
from l1quant.gguf.writer import data_offset, write_header
from l1quant.output import AtomicOutput
from l1quant.source.snapshot import InputSnapshot

__all__ = ["DEFAULT_CHUNK_MB", "MAX_CHUNK_MB", "MIN_CHUNK_MB", "OutputFile", "WriteOptions", "file_nbytes",
           "file_sha256", "output_parts", "output_path", "output_report", "split_flat_options", "summary_line",
           "write_gguf", "write_gguf_many",
           "written_report"]

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
      callback receiving the output bytes written;
    * ``split_max_size`` (``--split-max-size``, bytes; the CLI takes ``2G``/``500M``) or ``split_max_tensors``
      (``--split-max-tensors``): write the file as the parts llama.cpp's ``gguf-split`` would cut it into,
      ``NAME-00001-of-0000N.gguf``... (:mod:`l1quant.gguf.split`), instead of one file.

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
    split_max_size: int | None = None
    split_max_tensors: int | None = None

    def __post_init__(self) -> None:
        if self.split_max_size is not None and self.split_max_tensors is not None:
            raise ConfigError("give one of split_max_size and split_max_tensors, not both")
        for name in ("split_max_size", "split_max_tensors"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, found {v!r}")
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
                                 "leave_output_tensor", "imatrix", "include_weights", "exclude_weights",
                                 "tensor_type_file")},
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
    write_gguf_many([OutputFile(plan, header, output, create_folder)], write)


@dataclass(frozen=True)
class OutputFile:
    """One file to write: its plan, its header, its path, and whether its folder must be created first."""

    plan: ConversionPlan
    header: Header
    output: Path
    create_folder: bool = False


def output_parts(output: Path, header: Header, write: WriteOptions | None = None) -> list[tuple[Path, Header]]:
    """The files one output is written as: ``[(output, header)]``, or with a split option each part's path and
    header (:func:`l1quant.gguf.split.split_header`, named by :func:`l1quant.gguf.split.split_path`).

    Example:
        >>> output_parts(Path("m.gguf"), Header())[0][0]
        PosixPath('m.gguf')
    """
    w = write or WriteOptions()
    if w.split_max_size is None and w.split_max_tensors is None:
        return [(output, header)]
    parts = split_header(header, max_size=w.split_max_size, max_tensors=w.split_max_tensors)
    return [(split_path(output, i, len(parts)), h) for i, h in enumerate(parts)]


def write_gguf_many(files: Sequence[OutputFile], write: WriteOptions | None = None) -> None:
    """Write several files of the same source (``convert --type q8_0,q4_k_m``) reading the source once.

    Each chunk of the source is read once and converted into every file (:func:`stream_tensors`'s ``also``);
    the files' plans must hold the same tensor names. Each file is atomic on its own; they are published
    together at the end, so an error before that leaves none of them (one that fails while publishing -- a
    full disk at the rename -- may leave the ones published before it). One summary line per file.

    Example:
        >>> write_gguf_many([OutputFile(p1, h1, Path("a.gguf")), OutputFile(p2, h2, Path("b.gguf"))])  # doctest: +SKIP
    """
    if not files:
        return
    w = write or WriteOptions()
    for f in files:
        if f.create_folder:
            try:
                f.output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{f.output.parent}: cannot create the output folder: {e.strerror or e}") from e
    started = time.monotonic()
    bar: Any = None
    cb: Callable[[int], None] | None
    if w.progress is True:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.nbytes for f in files for t in f.plan.tensors), unit="B", unit_scale=True,
                   unit_divisor=1024, desc=files[0].output.name if len(files) == 1 else f"{len(files)} files",
                   leave=True)
        cb = bar.update
    else:
        cb = w.progress or None
    first = files[0].plan
    inputs = InputSnapshot.of(t.source.path for t in first.tensors)  # an input rewritten meanwhile: refused
    try:
        with ExitStack() as stack:
            targets = []
            for f in files:
                by_name = {t.name: t for t in f.plan.tensors}
                target: dict[str, tuple[PlannedTensor, int, int]] = {}
                for path, h in output_parts(f.output, f.header, w):
                    out = stack.enter_context(AtomicOutput(path, 0, durable=w.fsync))
                    offset = write_header(h, out.fd)
                    out.reserve(offset + h.data_nbytes)
                    for entry in h.tensors:  # a split part: the tensor at its place in its part
                        target[entry.name] = (replace(by_name[entry.name], offset=entry.offset), out.fd, offset)
                targets.append(target)
            # early writeback only pays off when a final fsync will wait for the disk anyway
            stream_tensors(first, -1, 0, threads=w.threads, chunk_bytes=w.chunk_bytes,
                           allow_nonfinite=w.allow_nonfinite, on_progress=cb, writeback=w.fsync, targets=targets)
            inputs.check()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.monotonic() - started
    for f in files:
        parts = output_parts(f.output, f.header, w)
        log.info(summary_line(parts[0][0], f.plan, seconds)
                 + (f" as {len(parts)} parts" if len(parts) > 1 or parts[0][0] != f.output else ""))


def file_nbytes(header: Header) -> int:
    """The exact size of the file ``header`` describes: the header padded to the alignment, then every tensor
    padded to it (what :func:`write_gguf` writes, known before any tensor data is read: ``--dry-run``).

    Example:
        >>> h = Header()
        >>> h.add("general.architecture", "qwen2", gguf.GGUFValueType.STRING)
        >>> _ = h.add_tensor("w", (32,), gguf.GGMLQuantizationType.F32, 128)
        >>> file_nbytes(h)
        256
    """
    return data_offset(header) + header.data_nbytes


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, hex (read in 16 MiB blocks: bounded memory).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     file_sha256(Path(f.name))[:12]
        'e3b0c44298fc'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def output_report(header: Header, path: Path, *, seconds: float | None = None,
                  sha256: str | None = None) -> dict[str, Any]:
    """The ``--json`` (and ``--dry-run``) record of one output file of ``convert``/``quantize``.

    Keys: ``path``, ``type`` (``general.file_type``'s name: ``Q4_K_M``, ``BF16``, ``F32``...; None without it),
    ``size`` (bytes, exact: :func:`file_nbytes`), ``tensor_types``
    (type name -> tensor count), ``tensors`` (each tensor's ``name``, ``type``, ``shape`` -- ggml order, ne0
    first -- and ``nbytes``), then ``sha256`` and ``seconds`` when given (a real run; a dry run has neither).

    Example:
        >>> h = Header()
        >>> _ = h.add_tensor("w", (32,), gguf.GGMLQuantizationType.F32, 128)
        >>> r = output_report(h, Path("m.gguf"))
        >>> r["size"], r["tensor_types"], r["tensors"][0]["nbytes"]
        (192, {'F32': 1}, 128)
    """
    counts: dict[str, int] = {}
    for t in header.tensors:
        counts[t.ggml_type.name] = counts.get(t.ggml_type.name, 0) + 1
    ft = header.get(gguf.Keys.General.FILE_TYPE)
    try:
        type_name = None if ft is None else gguf.LlamaFileType(int(ft)).name.partition("_")[2]
    except ValueError:
        type_name = str(ft)
    rep: dict[str, Any] = {
        "path": str(path), "type": type_name, "size": file_nbytes(header),
        "tensor_types": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "tensors": [{"name": t.name, "type": t.ggml_type.name, "shape": list(t.dims), "nbytes": t.nbytes}
                    for t in header.tensors],
    }
    if sha256 is not None:
        rep["sha256"] = sha256
    if seconds is not None:
        rep["seconds"] = round(seconds, 3)
    return rep


def written_report(path: Path, seconds: float | None = None) -> dict[str, Any]:
    """:func:`output_report` of a written file, read back from its header, with its sha256 (``--json``).

    Example:
        >>> written_report(Path("m-Q8_0.gguf"), 1.5)["sha256"][:8]  # doctest: +SKIP
        '3f2a9c1e'
    """
    return output_report(Header.from_file(read_gguf(path)), path, seconds=seconds, sha256=file_sha256(path))


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

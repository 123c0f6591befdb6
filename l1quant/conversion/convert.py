"""``l1quant.convert``: a Hugging Face checkpoint folder (or hub id) to a GGUF file.

Pipeline: read config, tokenizer and safetensors headers -> find the architecture's description
(:mod:`l1quant.arch`) -> validate and plan -> build the header (metadata in llama.cpp's key order, the hparam keys
from the description's table) -> stream every tensor through the kernels to its planned offset -> atomic rename.

Example:
    >>> import l1quant
    >>> l1quant.convert("L1-Qwen-1.5B-Max", type="q8_0")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q8_0.gguf')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l1quant.conversion.card import write_verified_cards
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.prepare import Prepared, prepare
from l1quant.conversion.write import OutputFile, WriteOptions, output_parts, split_flat_options, write_gguf_many
from l1quant.errors import ConfigError, L1QuantError, OutputError, VerifyError
from l1quant.filetypes import out_types
from l1quant.output import inside_folder

__all__ = ["CardStepError", "WriteOptions", "convert", "convert_many", "parse_types", "prepare_many"]

log = logging.getLogger("l1quant")

def convert(
    model: str | os.PathLike[str],
    type: str = "auto",
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    card: bool = False,
    options: QuantOptions | None = None,
    write: WriteOptions | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    no_repack: bool = False,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    **flags: Any,
) -> Path:
    """Convert a checkpoint (folder or Hugging Face repo id) to GGUF in one pass; return the output path.

    ``type`` is a converter type -- ``auto`` (bf16/f16 from the source dtype), ``f32``, ``f16``, ``bf16``,
    ``q8_0``: the bytes ``convert_hf_to_gguf.py --outtype`` writes -- or a llama-quantize mix (``q4_0``, ``q4_1``,
    ``q5_0``, ``q5_1``, ``q2_k``, ``q3_k_s/m/l``, ``q4_k_s/m``, ``q5_k_s/m``, ``q6_k``; ``q3_k``, ``q4_k``, ``q5_k``
    are aliases of the ``_m`` ones): the bytes of the converter's lossless output (BF16 for a bf16 checkpoint)
    followed by ``llama-quantize`` with that type.
    ``output`` is a file path (``{ftype}`` in it is replaced by the type), a folder (a path ending in ``/`` is
    one, created if missing), or None for a name like ``L1-Qwen-1.5B-Max-Q8_0.gguf`` in the current folder
    (:func:`l1quant.conversion.write.output_path`, the rule ``quantize`` follows too). ``name`` and ``metadata``
    (a JSON file of ``general.*`` keys) override the naming metadata; ``pre`` overrides the pre-tokenizer name.
    ``card`` also verifies the result against the source and writes a model card beside it
    (:func:`l1quant.conversion.card.write_verified_card`; a failed verify raises
    :class:`~l1quant.errors.VerifyError` after the card is written).

    The flags of ``l1quant convert`` are grouped: ``options`` holds llama-quantize's per-tensor flags
    (:class:`~l1quant.conversion.mixes.QuantOptions`: ``pure``, ``output_tensor_type``, ``token_embedding_type``,
    ``tensor_types``, ``leave_output_tensor``; with any of them a converter type is applied as a mix too), and
    ``write`` how the file is written (:class:`~l1quant.conversion.write.WriteOptions`: ``threads``,
    ``chunk_mb``, ``allow_nonfinite``, ``fsync``, ``progress``, and ``split_max_size``/``split_max_tensors`` for
    the parts llama.cpp's gguf-split writes, the first of which is returned). Each can also be passed by its flag's name
    (``threads=2``, ``pure=True``, ``tensor_types=["attn_v=q8_0"]``; ``durable`` and ``chunk_bytes`` are the
    older spellings of ``fsync`` and ``chunk_mb``).

    ``calibration`` (``--calibration [TEXT]``; True or "" for the bundled text) first computes an importance matrix
    from the lossless conversion as llama-imatrix does (:func:`l1quant.imatrix_compute.calibration_imatrix`, kept
    as ``NAME.imatrix.gguf`` beside the output) and then quantizes with it; ``no_repack`` is llama.cpp's ``-nr``
    for that step.

    ``target_size`` (bytes, or ``"432M"``, ``"1.5GiB"``) or ``target_bpw`` (bits per parameter) with ``type``
    ``"auto"`` and an importance matrix (``imatrix=`` or ``calibration``): each tensor's type is chosen by
    measurement so the whole file fits (:mod:`l1quant.conversion.target`); the table is also written beside the
    output as ``NAME.tensor-types.txt`` for llama-quantize ``--tensor-type-file``, applied to the converter's
    lossless (BF16) output.

    Nothing is written until everything has been validated; the output appears atomically, and on any error
    no partial file is left and an existing file at ``output`` is untouched.

    Example:
        >>> convert("L1-Qwen-1.5B-Max", "q8_0", "out.gguf", write=WriteOptions(threads=2))  # doctest: +SKIP
        PosixPath('out.gguf')
        >>> convert("L1-Qwen-1.5B-Max", "q4_k_m", threads=2, pure=True)                     # doctest: +SKIP
        PosixPath('L1-Qwen-1.5B-Max-Q4_K_M.gguf')
    """
    return convert_many(model, [type], output, name=name, metadata=metadata, pre=pre, card=card, options=options,
                        write=write, calibration=calibration, no_repack=no_repack, target_size=target_size,
                        target_bpw=target_bpw, **flags)[0]


def parse_types(type: str | Sequence[str]) -> list[str]:
    """The types of ``--type q8_0,q4_k_m`` (or a list): each one of :func:`l1quant.filetypes.out_types`, lower-cased,
    repeats refused. Raises ``ConfigError`` naming the type that is not one.

    Example:
        >>> parse_types("Q8_0, q4_k_m")
        ['q8_0', 'q4_k_m']
        >>> parse_types("q8_0,q9")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        l1quant.errors.ConfigError: --type 'q9' is not one of 'auto', 'f32', 'f16', 'bf16', 'q8_0', ..., 'iq1_s'
    """
    items = type.split(",") if isinstance(type, str) else list(type)
    out: list[str] = []
    for item in items:
        t = str(item).strip().lower()
        if t not in out_types():
            # each choice quoted, as click's Choice lists them (the usage-error line reads the same either way)
            raise ConfigError(f"--type {str(item).strip()!r} is not one of {', '.join(map(repr, out_types()))}")
        if t in out:
            raise ConfigError(f"--type {t} is given twice")
        out.append(t)
    if not out:
        raise ConfigError("--type names no type")
    return out


def prepare_many(
    model: str | os.PathLike[str],
    types: str | Sequence[str],
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    options: QuantOptions | None = None,
    assume_imatrix: bool = False,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    threads: int | None = None,
) -> list[Prepared]:
    """:func:`prepare` for each of ``types`` (``"q8_0,q4_k_m"`` or a list); reads no tensor data, writes nothing
    (``threads``: the ``auto`` search's, as :func:`prepare`'s).
    ``assume_imatrix``: plan the types as with an importance matrix not computed yet (``--calibration``'s checks
    before it computes one: the mixes that need one are not refused).

    With several types ``output`` must name a folder (or hold ``{ftype}``, filled per type): each file gets the
    name a single run would give it there. Raises ``ConfigError`` for a plain file name with several types, or
    two types that name the same file (``q4_k`` and ``q4_k_m``).

    Example:
        >>> [p.output.name for p in prepare_many("tiny-qwen3", "q8_0,q4_k_m", "out/")]  # doctest: +SKIP
        ['Tiny-Qwen3-Q8_0.gguf', 'Tiny-Qwen3-Q4_K_M.gguf']
    """
    wanted = parse_types(types)
    if len(wanted) > 1 and output is not None:
        o = str(output)
        if not (Path(o).is_dir() or o.endswith(("/", os.sep)) or any(
                t in Path(o).name for t in ("{ftype}", "{FTYPE}", "{outtype}"))):
            raise ConfigError(f"{o}: with several types (--type {','.join(wanted)}) the output must be a folder "
                              "(end it with /) or a file name holding {ftype}")
    prepared = [prepare(model, t, output, name=name, metadata=metadata, pre=pre, options=options,
                        assume_imatrix=assume_imatrix, target_size=target_size, target_bpw=target_bpw,
                        threads=threads)
                for t in wanted]
    seen: dict[Path, str] = {}
    for t, p in zip(wanted, prepared):
        if p.output in seen:
            raise ConfigError(f"{p.output}: --type {seen[p.output]} and {t} would both write this file")
        seen[p.output] = t
    return prepared


def convert_many(
    model: str | os.PathLike[str],
    types: str | Sequence[str],
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    card: bool = False,
    options: QuantOptions | None = None,
    write: WriteOptions | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    no_repack: bool = False,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    **flags: Any,
) -> list[Path]:
    """Convert a checkpoint to several types in one run, reading its tensors once; return the output paths.

    ``types`` is ``"q8_0,q4_k_m,q3_k_m"`` or a list; every other parameter is :func:`convert`'s. Each file is
    byte for byte the file :func:`convert` writes for its type (named as a single run names it, in the folder
    ``output`` names: :func:`prepare_many`). Every chunk of the checkpoint is read once and converted into every
    file (:func:`l1quant.conversion.write.write_gguf_many`). ``calibration``/``no_repack`` as in
    :func:`convert`: one importance matrix, kept beside the first output, serves every type. ``card`` verifies each file and writes one card per
    file and writes one card beside the first, listing them all.

    Example:
        >>> convert_many("L1-Qwen-1.5B-Max", "q8_0,q4_k_m", "out/", threads=2)  # doctest: +SKIP
        [PosixPath('out/L1-Qwen-1.5B-Max-Q8_0.gguf'), PosixPath('out/L1-Qwen-1.5B-Max-Q4_K_M.gguf')]
    """
    options, w = split_flat_options("convert", flags, options, write)
    if calibration is not None and calibration is not False:
        from l1quant.imatrix_compute import calibration_imatrix, calibration_options  # runs llama.cpp: lazily

        wanted = parse_types(types)
        if target_size is not None or target_bpw is not None:  # auto with a target is searched: it uses the matrix
            wanted = ["q4_k_m" if t == "auto" else t for t in wanted]
        for t in wanted:  # each type must be one an importance matrix changes
            calibration_options(options, None, t)
        # refusals before the long step; the matrix does not exist yet, so the types are planned as with one (the
        # mixes that need one, q2_k_s and the low i-quants, would be refused otherwise)
        first = prepare_many(model, types, output, name=name, metadata=metadata, pre=pre, options=options,
                             assume_imatrix=True)
        for p in first:
            if inside_folder(p.output, p.model_dir):
                raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; "
                                  "pass -o elsewhere")
        # one matrix serves every type of the run: kept beside the first output
        options = calibration_options(options, first[0].output, wanted[0])
        calibration_imatrix(first[0].model_dir, calibration, first[0].output, threads=w.threads,
                            no_repack=no_repack, progress=bool(w.progress))
    prepared = prepare_many(model, types, output, name=name, metadata=metadata, pre=pre, options=options,
                            target_size=target_size, target_bpw=target_bpw, threads=w.threads)
    for p in prepared:
        # The input folder is only ever read: no output (let alone one named like an input file) goes into it.
        # Checked here, not in prepare(), which writes nothing and also serves verify for a GGUF kept beside its
        # source.
        if inside_folder(p.output, p.model_dir):  # any depth, symlinks and bind mounts: compared by device and inode
            raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; pass -o elsewhere")
    for p in prepared:
        for warning in p.warnings:
            log.warning(warning)
    write_gguf_many([OutputFile(p.plan, p.header, p.output, p.create_folder) for p in prepared], w)
    # a split output is named by its first part (what llama.cpp loads, and what quantize/verify/inspect take)
    outs = [output_parts(p.output, p.header, w)[0][0] for p in prepared]
    for p in prepared:
        if p.plan.target is not None:
            from l1quant.conversion.target import export_target

            export_target(p.plan.target, "LOSSLESS.gguf", p.output, options)  # the converter's lossless file
    if card:
        _card_step(outs, model, w.threads)
    return outs


def _card_step(outs: list[Path], model: str | os.PathLike[str], threads: int | None) -> None:
    """Verify every output and write one card listing them (beside the first); a failed verify raises."""
    try:
        where, reports = write_verified_cards(outs, model, threads=threads)
    except (L1QuantError, OSError) as e:
        # the GGUF is complete and valid: the message must not read as the conversion failing
        code = e.exit_code if isinstance(e, L1QuantError) else 1
        detail = str(e) if isinstance(e, L1QuantError) else f"{e.strerror or e}: {e.filename or ''}"
        written = outs[0] if len(outs) == 1 else ", ".join(map(str, outs))
        raise CardStepError(f"{written} was written completely; the --card step failed: {detail}", code) from e
    for output, report in zip(outs, reports):
        if not report.passed:
            raise VerifyError(f"{output}: verify: {report.verdict} (the card {where} says so)")


class CardStepError(L1QuantError):
    """The GGUF was written and published; only the ``--card`` step after it failed (its own exit code kept)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

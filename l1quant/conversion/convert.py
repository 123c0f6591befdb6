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
from pathlib import Path
from typing import Any

from l1quant.conversion.card import write_verified_card
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.prepare import prepare
from l1quant.conversion.write import WriteOptions, split_flat_options, write_gguf
from l1quant.errors import L1QuantError, OutputError, VerifyError
from l1quant.output import inside_folder

__all__ = ["CardStepError", "WriteOptions", "convert"]

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
    ``chunk_mb``, ``allow_nonfinite``, ``fsync``, ``progress``). Each can also be passed by its flag's name
    (``threads=2``, ``pure=True``, ``tensor_types=["attn_v=q8_0"]``; ``durable`` and ``chunk_bytes`` are the
    older spellings of ``fsync`` and ``chunk_mb``).

    Nothing is written until everything has been validated; the output appears atomically, and on any error
    no partial file is left and an existing file at ``output`` is untouched.

    Example:
        >>> convert("L1-Qwen-1.5B-Max", "q8_0", "out.gguf", write=WriteOptions(threads=2))  # doctest: +SKIP
        PosixPath('out.gguf')
        >>> convert("L1-Qwen-1.5B-Max", "q4_k_m", threads=2, pure=True)                     # doctest: +SKIP
        PosixPath('L1-Qwen-1.5B-Max-Q4_K_M.gguf')
    """
    options, w = split_flat_options("convert", flags, options, write)
    p = prepare(model, type, output, name=name, metadata=metadata, pre=pre, options=options)
    # The input folder is only ever read: no output (let alone one named like an input file) goes into it. Checked
    # here, not in prepare(), which writes nothing and also serves verify for a GGUF kept beside its source.
    if inside_folder(p.output, p.model_dir):  # any depth, symlinks and bind mounts: compared by device and inode
        raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; pass -o elsewhere")
    for warning in p.warnings:
        log.warning(warning)
    write_gguf(p.plan, p.header, p.output, w, create_folder=p.create_folder)
    if card:
        try:
            where, report = write_verified_card(p.output, model, threads=w.threads)
        except (L1QuantError, OSError) as e:
            # the GGUF is complete and valid: the message must not read as the conversion failing
            code = e.exit_code if isinstance(e, L1QuantError) else 1
            detail = str(e) if isinstance(e, L1QuantError) else f"{e.strerror or e}: {e.filename or ''}"
            raise CardStepError(f"{p.output} was written completely; the --card step failed: {detail}", code) from e
        if not report.passed:
            raise VerifyError(f"{p.output}: verify: {report.verdict} (the card {where} says so)")
    return p.output


class CardStepError(L1QuantError):
    """The GGUF was written and published; only the ``--card`` step after it failed (its own exit code kept)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

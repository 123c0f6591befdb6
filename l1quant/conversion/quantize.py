"""``l1quant.quantize``: an existing GGUF to another type, as llama-quantize does it (same file, byte for byte).

The input's tensors become (file, offset, dtype, shape) sources like a checkpoint's, each tensor's type comes
from the mix table (:func:`l1quant.conversion.mixes.assign_types`), and the same streaming pipeline and atomic
output as ``convert`` write the result. The metadata is the input's, key by key in its order and with its value
types, except what llama-quantize changes: ``general.quantization_version`` and ``general.file_type`` are removed
and appended as the last two keys, and the ``split.*`` keys are dropped (``llama_model_quantize_impl``).

Inputs: F32, F16 and BF16 tensors. A quantized input is refused unless ``allow_requantize``, as llama-quantize
does (its values are dequantized first, so the result is worse than quantizing the original weights). A split input is
read whole from its first part (every part, as llama-quantize reads it); another part is refused in one line.

Example:
    >>> import l1quant
    >>> l1quant.quantize("L1-Qwen-1.5B-Max-BF16.gguf", "L1-Qwen-1.5B-Max-Q4_K_M.gguf", "q4_k_m")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q4_K_M.gguf')
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType

from l1quant.arch.from_gguf import check_complete_model
from l1quant.conversion.mixes import ARCHS, QuantOptions
from l1quant.conversion.pipeline import default_threads
from l1quant.conversion.plan import ConversionPlan, apply_mix
from l1quant.conversion.sources import TensorSource
from l1quant.conversion.write import OutputFile, WriteOptions, output_parts, output_path, split_flat_options, write_gguf
from l1quant.errors import ConfigError, InputError, OutputError, clip
from l1quant.filetypes import Mix, get_mix
from l1quant.gguf.header import Header
from l1quant.gguf.reader import GGUFFile, TensorInfo
from l1quant.gguf.split import merged_view, read_parts
from l1quant.kernels import QUANT_TYPES, QuantType, get_quant_type
from l1quant.source.safetensors import SafeTensor

log = logging.getLogger("l1quant")

__all__ = ["GGUFSource", "default_output", "plan_quantize", "quantize", "quantized_header"]

_T = GGMLQuantizationType
#: Input tensor types read as they are (the kernels take float32, float16 and bf16 bits).
_FLOAT_DTYPES = {_T.F32: "F32", _T.F16: "F16", _T.BF16: "BF16"}
#: Keys llama-quantize drops from its output (it writes one file, not a split).
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
_KEY_FILE_TYPE = gguf.Keys.General.FILE_TYPE
_KEY_QNT_VERSION = gguf.Keys.General.QUANTIZATION_VERSION


@dataclass(frozen=True)
class GGUFSource(SafeTensor):
    """A quantized GGUF tensor as a float32 source: rows are read raw and dequantized (``--allow-requantize``).

    ``dtype`` is "F32" (what the kernels receive); ``src_type`` the tensor's type in the file; ``offset`` and
    ``nbytes`` are its absolute byte range.

    Example:
        >>> GGUFSource("w", "F32", (2, 32), Path("m.gguf"), 0, 68, _T.Q8_0).read_rows(0, 1)  # doctest: +SKIP
    """

    src_type: GGMLQuantizationType = _T.F32

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *, fd: int | None = None) -> np.ndarray:
        qt = get_quant_type(self.src_type.name)
        row_bytes = qt.row_nbytes(self.n_cols)
        raw = SafeTensor(self.name, "U8", (self.n_rows, row_bytes), self.path, self.offset, self.nbytes)
        vals = qt.dequantize(raw.read_rows(start, stop, fd=fd), (stop - start, self.n_cols))
        if out is None:
            return vals
        out[...] = vals
        return out


def _source(gf: GGUFFile, t: TensorInfo, allow_requantize: bool) -> tuple[SafeTensor, GGMLQuantizationType]:
    """The pipeline's source for ``t`` and the type it has in the input."""
    shape = t.np_shape
    dtype = _FLOAT_DTYPES.get(t.ggml_type)
    if dtype is not None:
        return SafeTensor(t.name, dtype, shape, gf.path, t.abs_offset, t.nbytes), t.ggml_type
    if t.ggml_type.name not in QUANT_TYPES:
        raise InputError(f"{gf.path}: tensor {clip(t.name)} has type {t.ggml_type.name}, which l1quant cannot read")
    if not allow_requantize:
        raise InputError(f"{gf.path}: tensor {clip(t.name)} is already quantized ({t.ggml_type.name}); "
                         "quantize an F32/F16/BF16 file, or pass --allow-requantize (quality suffers)")
    return GGUFSource(t.name, "F32", shape, gf.path, t.abs_offset, t.nbytes, t.ggml_type), t.ggml_type


def _int_kv(gf: GGUFFile, key: str) -> int:
    v = gf.kv.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{gf.path}: key {key} must be a positive integer, found {clip(v)}")
    return v


def quantized_header(gf: GGUFFile, plan: ConversionPlan) -> Header:
    """The header llama-quantize writes for ``gf`` quantized as ``plan``: the input's keys in its order with their
    value types, the ``split.*`` keys dropped, ``general.quantization_version`` then ``general.file_type`` (u32)
    moved last (``gguf_set_val_u32`` erases and appends), then the plan's ``quantize.imatrix.*`` keys (likewise),
    GGUF version 3, 32-byte alignment, and the plan's tensor infos (see :mod:`l1quant.conversion.mixes`, "the
    output file").

    Raises :class:`~l1quant.errors.InputError` for an array-of-arrays key (llama.cpp cannot load it).

    Example:
        >>> list(quantized_header(read_gguf("m-BF16.gguf"), plan).kv)[-2:]  # doctest: +SKIP
        ['general.quantization_version', 'general.file_type']
    """
    h = Header.from_file(gf)
    h.version, h.alignment, h.tensors = gguf.GGUF_VERSION, gguf.GGUF_DEFAULT_ALIGNMENT, []
    for key, kv in h.kv.items():
        if isinstance(kv.type, tuple) and len(kv.type) != 2:
            raise InputError(f"{gf.path}: key {clip(key)} is an array of arrays, which llama.cpp cannot load")
    for key in (*_SPLIT_KEYS, _KEY_FILE_TYPE, _KEY_QNT_VERSION):
        h.remove(key)
    h.add(_KEY_QNT_VERSION, gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32)
    h.add(_KEY_FILE_TYPE, plan.file_type, gguf.GGUFValueType.UINT32)
    for key, vtype, value in plan.imatrix_keys:  # kv overrides: each erased where it was and appended
        h.remove(key)
        h.add(key, value, vtype)
    for t in plan.tensors:
        h.add_tensor(t.name, t.gguf_dims, t.qtype.ggml_type, t.nbytes)
    return h


def _unsplit_name(src: Path) -> Path:
    """``m-BF16-00001-of-00003.gguf`` -> ``m-BF16.gguf``: a split input's outputs are named after the whole file."""
    return src.with_name(re.sub(r"-\d{5}-of-\d{5}\.gguf$", ".gguf", src.name))


def default_output(src: Path, type_name: str) -> Path:
    """``{stem}-{TYPE}.gguf`` beside the input, with a trailing type in the stem replaced (``-BF16`` -> ``-Q4_K_M``).

    Example:
        >>> default_output(Path("m/L1-Qwen-1.5B-Max-BF16.gguf"), "Q4_K_M")
        PosixPath('m/L1-Qwen-1.5B-Max-Q4_K_M.gguf')
    """
    stem = re.sub(r"-(F32|F16|BF16|Q8_0)$", "", src.stem, flags=re.IGNORECASE)
    return src.with_name(f"{stem}-{type_name}.gguf")


def quantize(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    type: str,
    *,
    allow_requantize: bool = False,
    options: QuantOptions | None = None,
    write: WriteOptions | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    no_repack: bool = False,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    **flags: Any,
) -> Path:
    """Quantize the GGUF ``input`` to ``type``, as ``llama-quantize input output type`` does; return the output.

    ``type`` is a llama-quantize type (``q4_0`` ... ``q6_k``, ``q8_0``, ``f16``, ``bf16``, ``f32``; ``q4_k`` =
    ``q4_k_m`` ...). ``output`` None writes ``{stem}-{TYPE}.gguf`` beside the input; a folder (or a path ending
    in ``/``) gets that name in it; a file path may hold ``{ftype}`` (:func:`l1quant.conversion.write.output_path`,
    as ``convert``). Any architecture the mix table knows (qwen2, qwen3, llama) is accepted. ``options``
    (llama-quantize's per-tensor flags) and ``write`` (threads, chunk size, fsync...) are as in
    :func:`l1quant.convert`, and can be passed by the flags' names too (``threads=2``, ``pure=True``); the bytes do
    not depend on ``threads`` or the chunk size. ``calibration`` (True or "" for the bundled text) first computes
    an importance matrix of ``input`` as llama-imatrix does, kept as ``NAME.imatrix.gguf`` beside the output, and
    quantizes with it (as :func:`l1quant.convert`'s; ``no_repack`` is llama.cpp's ``-nr`` for that step).

    Raises :class:`~l1quant.errors.InputError` for an unreadable or unsupported input (quantized tensors without
    ``allow_requantize``, an architecture llama-quantize's rule is not written for here), ``ConfigError`` for an
    unknown type, and ``OutputError`` if the output cannot be written; nothing is left behind on failure.

    Example:
        >>> quantize("m-BF16.gguf", None, "q6_k", threads=2)  # doctest: +SKIP
        PosixPath('m-Q6_K.gguf')
    """
    options, w = split_flat_options("quantize", flags, options, write)
    if calibration is not None and calibration is not False:
        from l1quant.imatrix_compute import calibration_imatrix, calibration_options  # runs llama.cpp: lazily

        src = Path(input)
        mix = _mix_or_auto(type, target_size, target_bpw)
        name = "auto" if mix is None else mix.name
        merged_view(read_parts(src))  # a file that is not a (whole) GGUF is refused before the runtime loads it
        out0, _ = output_path(output, default_output(_unsplit_name(src), name), name)
        options = calibration_options(options, out0, type if mix is not None else "q4_k_m")  # auto: any imatrix type
        calibration_imatrix(src, calibration, out0, threads=w.threads, no_repack=no_repack,
                            progress=bool(w.progress))
    job = plan_quantize(input, output, type, allow_requantize=allow_requantize, options=options,
                        target_size=target_size, target_bpw=target_bpw, threads=w.threads)
    for warning in job.plan.warnings:
        log.warning(warning)
    write_gguf(job.plan, job.header, job.output, w, create_folder=job.create_folder)
    if job.plan.target is not None:
        from l1quant.conversion.target import export_target

        export_target(job.plan.target, input, job.output, options)
    return output_parts(job.output, job.header, w)[0][0]


def _mix_or_auto(type: str, target_size: str | int | None, target_bpw: float | str | None) -> Mix | None:
    """The mix ``type`` names, or None for ``auto`` with a target; refuses a target with a named type, and
    ``auto`` without one, in one line each."""
    has_target = target_size is not None or target_bpw is not None
    if str(type).lower() == "auto":
        if not has_target:
            raise ConfigError("type auto needs --target-size SIZE or --target-bpw BPW (the file's size to fit)")
        return None
    if has_target:
        raise ConfigError(f"--target-size/--target-bpw choose the types themselves: use type auto, not {clip(type)}")
    return get_mix(type)


def plan_quantize(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    type: str,
    *,
    allow_requantize: bool = False,
    options: QuantOptions | None = None,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    threads: int | None = None,
) -> OutputFile:
    """Everything :func:`quantize` decides before writing -- the plan, the header, the output path -- reading the
    input's header only (``quantize --dry-run``); raises what :func:`quantize` raises for a bad input.

    Example:
        >>> job = plan_quantize("m-BF16.gguf", None, "q4_k_m")  # doctest: +SKIP
        >>> job.output.name, job.header.data_nbytes             # doctest: +SKIP
        ('m-Q4_K_M.gguf', 1117320736)
    """
    src = Path(input)
    mix = _mix_or_auto(type, target_size, target_bpw)
    # a split input is read whole from its first part, as llama-quantize does; any other part is refused
    parts = read_parts(src)
    gf = merged_view(parts)
    arch_name = gf.kv.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch_name, str) or arch_name not in ARCHS:
        raise InputError(f"{src}: general.architecture is {clip(arch_name)}; l1quant quantizes "
                         f"{', '.join(ARCHS)}")
    if gf.alignment != gguf.GGUF_DEFAULT_ALIGNMENT:
        raise InputError(f"{src}: general.alignment {gf.alignment} is not supported (llama-quantize writes "
                         f"{gguf.GGUF_DEFAULT_ALIGNMENT}-byte alignment)")
    check_complete_model(gf)  # a missing/extra/misshapen tensor: refused, as convert refuses them
    n_layer = _int_kv(gf, f"{arch_name}.block_count")
    n_head = _int_kv(gf, f"{arch_name}.attention.head_count")
    n_head_kv = _int_kv(gf, f"{arch_name}.attention.head_count_kv") \
        if f"{arch_name}.attention.head_count_kv" in gf.kv else n_head
    planned: list[tuple[str, TensorSource, QuantType]] = []
    for part in parts:
        for t in part.tensors:
            st, t_type = _source(part, t, allow_requantize)
            planned.append((t.name, st, get_quant_type(t_type.name)))
    if mix is None:
        from l1quant.conversion.target import apply_target  # the search: only for type auto

        plan = apply_target(arch_name, planned, options, [], n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                            target_size=target_size, target_bpw=target_bpw,
                            header_for=lambda p: quantized_header(gf, p),
                            threads=threads or default_threads())
        type_name = "auto"
    else:
        plan = apply_mix(arch_name, planned, mix, options, [], n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv)
        type_name = mix.name
    out, create = output_path(output, default_output(_unsplit_name(src), type_name), type_name)
    if any(out.exists() and out.resolve() == part.path.resolve() for part in parts):
        raise OutputError(f"{out}: is the input file; write the output elsewhere")
    return OutputFile(plan, quantized_header(gf, plan), out, create)


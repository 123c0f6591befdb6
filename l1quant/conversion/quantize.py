"""``l1quant.quantize``: an existing GGUF to another type, as llama-quantize does it (same file, byte for byte).

The input's tensors become (file, offset, dtype, shape) sources like a checkpoint's, each tensor's type comes
from the mix table (:func:`l1quant.conversion.mixes.assign_types`), and the same streaming pipeline and atomic
output as ``convert`` write the result. The metadata is the input's, key by key in its order and with its value
types, except what llama-quantize changes: ``general.quantization_version`` and ``general.file_type`` are removed
and appended as the last two keys, and the ``split.*`` keys are dropped (``llama_model_quantize_impl``).

Inputs: F32, F16 and BF16 tensors. A quantized input is refused unless ``allow_requantize``, as llama-quantize
does (its values are dequantized first, so the result is worse than quantizing the original weights).

Example:
    >>> import l1quant
    >>> l1quant.quantize("L1-Qwen-1.5B-Max-BF16.gguf", "L1-Qwen-1.5B-Max-Q4_K_M.gguf", "q4_k_m")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q4_K_M.gguf')
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType

from l1quant.conversion.convert import write_gguf
from l1quant.conversion.mixes import ARCHS, quant_options
from l1quant.conversion.pipeline import DEFAULT_CHUNK_BYTES
from l1quant.conversion.plan import ConversionPlan, apply_mix
from l1quant.errors import ConfigError, InputError, OutputError, clip
from l1quant.gguf.reader import GGUFFile, TensorInfo, read_gguf
from l1quant.gguf.writer import BulkKVWriter
from l1quant.filetypes import get_mix
from l1quant.kernels import QUANT_TYPES, get_quant_type
from l1quant.source.safetensors import SafeTensor

log = logging.getLogger("l1quant")

__all__ = ["GGUFSource", "quantize"]

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


def _header(gf: GGUFFile, plan: ConversionPlan, arch_name: str) -> gguf.GGUFWriter:
    """The input's metadata in llama-quantize's output order, and the plan's tensor infos."""
    gw = BulkKVWriter(path=None, arch=arch_name)
    gw.kv_data[0].clear()  # GGUFWriter adds general.architecture itself; copy the input's keys in their order
    for key, value in gf.kv.items():
        if key in _SPLIT_KEYS or key in (_KEY_FILE_TYPE, _KEY_QNT_VERSION):
            continue
        vtype = gf.kv_types[key]
        if isinstance(vtype, tuple):
            if len(vtype) != 2:
                raise InputError(f"{gf.path}: key {clip(key)} is an array of arrays, which llama.cpp cannot load")
            gw.add_key_value(key, value, vtype[0], sub_type=vtype[1])
        else:
            gw.add_key_value(key, value, vtype)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    gw.add_file_type(plan.file_type)
    for t in plan.tensors:
        gw.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype.ggml_type)
    return gw


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
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Sequence[tuple[str, str]] | Sequence[str] = (),
    leave_output_tensor: bool = False,
    allow_requantize: bool = False,
    threads: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    allow_nonfinite: bool = False,
    durable: bool = False,
    progress: bool | Callable[[int], None] = False,
) -> Path:
    """Quantize the GGUF ``input`` to ``type``, as ``llama-quantize input output type`` does; return the output.

    ``type`` is a llama-quantize type (``q4_0`` ... ``q6_k``, ``q8_0``, ``f16``, ``bf16``, ``f32``; ``q4_k`` =
    ``q4_k_m`` ...). The per-tensor flags are llama-quantize's (see :func:`l1quant.convert`). ``output`` None
    writes ``{stem}-{TYPE}.gguf`` beside the input. Any architecture the mix table knows (qwen2, qwen3, llama) is
    accepted. ``threads``, ``chunk_bytes``, ``allow_nonfinite``, ``durable`` and ``progress`` are as in
    ``convert``; the bytes do not depend on ``threads`` or ``chunk_bytes``.

    Raises :class:`~l1quant.errors.InputError` for an unreadable or unsupported input (quantized tensors without
    ``allow_requantize``, an architecture llama-quantize's rule is not written for here), ``ConfigError`` for an
    unknown type, and ``OutputError`` if the output cannot be written; nothing is left behind on failure.

    Example:
        >>> quantize("m-BF16.gguf", None, "q6_k", threads=2)  # doctest: +SKIP
        PosixPath('m-Q6_K.gguf')
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, found {threads}")
    src = Path(input)
    mix = get_mix(type)
    options = quant_options(pure=pure, output_tensor_type=output_tensor_type,
                            token_embedding_type=token_embedding_type, tensor_types=tensor_types,
                            leave_output_tensor=leave_output_tensor)
    gf = read_gguf(src)
    arch_name = gf.kv.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch_name, str) or arch_name not in ARCHS:
        raise InputError(f"{src}: general.architecture is {clip(arch_name)}; l1quant quantizes "
                         f"{', '.join(ARCHS)}")
    if gf.alignment != gguf.GGUF_DEFAULT_ALIGNMENT:
        raise InputError(f"{src}: general.alignment {gf.alignment} is not supported (llama-quantize writes "
                         f"{gguf.GGUF_DEFAULT_ALIGNMENT}-byte alignment)")
    n_layer = _int_kv(gf, f"{arch_name}.block_count")
    n_head = _int_kv(gf, f"{arch_name}.attention.head_count")
    n_head_kv = _int_kv(gf, f"{arch_name}.attention.head_count_kv") \
        if f"{arch_name}.attention.head_count_kv" in gf.kv else n_head
    planned = []
    for t in gf.tensors:
        st, t_type = _source(gf, t, allow_requantize)
        planned.append((t.name, st, get_quant_type(t_type.name)))
    plan = apply_mix(arch_name, planned, mix, options, [], n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv)
    out = Path(output) if output is not None else default_output(src, mix.name)
    # "new/" (a trailing separator) names a folder, existing or not: never a file called "new"
    if out.is_dir() or str(output).endswith(("/", os.sep)):
        out = out / default_output(src, mix.name).name
    if out.exists() and out.resolve() == src.resolve():
        raise OutputError(f"{out}: is the input file; write the output elsewhere")
    for w in plan.warnings:
        log.warning(w)
    gw = _header(gf, plan, arch_name)
    if not out.parent.exists() and str(output).endswith(("/", os.sep)):
        try:
            out.parent.mkdir(parents=True)
        except OSError as e:
            raise OutputError(f"{out.parent}: cannot create the output folder: {e.strerror or e}") from e
    write_gguf(plan, gw, out, threads=threads, chunk_bytes=chunk_bytes, allow_nonfinite=allow_nonfinite,
               durable=durable, progress=progress)
    return out

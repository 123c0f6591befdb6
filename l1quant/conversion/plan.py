"""The conversion plan: every output tensor, its source, its type, its size and its place in the file.

Planning validates the whole checkpoint against the architecture table before a byte is written, and fixes every
tensor's offset, so the data section can then be filled in any order by any number of threads.

Two kinds of ``--type``, two rules, each llama.cpp's own:

* **Converter types** (``auto``, ``f32``, ``f16``, ``bf16``, ``q8_0``): what ``convert_hf_to_gguf.py`` writes. 1-D
  tensors, names ending in ``_norm.weight`` and every non-``.weight`` tensor (the biases) are F32; everything else
  takes the requested type; a row length that is not a multiple of the type's block size falls back to F16 with a
  warning. Tensors keep the checkpoint's order.
* **llama-quantize mixes** (``q4_k_m``, ``q6_k``, ... :data:`l1quant.filetypes.MIXES`), and any type when
  per-tensor options are given: what the converter would write losslessly (BF16 for a bf16 checkpoint, F16 for
  f16, F32 otherwise) followed by llama-quantize with that mix, in one pass. Each tensor's type comes from
  :func:`l1quant.conversion.mixes.assign_types`, and tensors are laid out in llama-quantize's order.

Example:
    >>> plan = make_plan(open_checkpoint(d), ModelConfig.load(d), get_arch("qwen2"), "q8_0")  # doctest: +SKIP
    >>> plan.tensors[0].name, plan.tensors[0].qtype.name                                     # doctest: +SKIP
    ('output.weight', 'Q8_0')
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from l1quant.arch import Arch
from l1quant.conversion.mixes import QuantOptions, assign_types
from l1quant.conversion.sources import Generated, PermutedRows, TensorSource, WholeTransformed
from l1quant.errors import ConfigError, TensorError, clip
from l1quant.filetypes import Mix, convert_types, resolve_type
from l1quant.imatrix_file import Imatrix, ImatrixFileError, quantize_keys, read_imatrix
from l1quant.gguf.header import pad
from l1quant.kernels import QuantType, get_quant_type
from l1quant.source.config import ModelConfig
from l1quant.source.safetensors import Checkpoint, SafeTensor, require_float

ALIGNMENT = gguf.GGUF_DEFAULT_ALIGNMENT


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: GGUF name, source tensor, output type and byte placement (relative to the data section).

    ``shape`` is the source (row-major, HF) shape; GGUF stores it reversed (``gguf_dims``). ``source`` is a
    checkpoint tensor or a stand-in with its interface (:mod:`l1quant.conversion.sources`: a transformed or a
    generated tensor). ``imatrix``: the importance weights llama-quantize passes for it, float32 (n_mat, n_cols)
    (row j for the rows of matrix/expert j; :meth:`l1quant.imatrix_file.Imatrix.weights_for`), or None.
    """

    name: str
    source: TensorSource
    qtype: QuantType
    shape: tuple[int, ...]
    offset: int
    imatrix: np.ndarray | None = field(default=None, compare=False, repr=False)

    def imatrix_for_rows(self, start: int, stop: int) -> list[tuple[int, int, np.ndarray | None]]:
        """Rows ``[start, stop)`` split where the importance weights change (at matrix/expert boundaries), each
        (start, stop, weights float32 (n_cols,) or None), as llama-quantize hands a chunk's rows to
        ``ggml_quantize_chunk`` (``imatrix + (row / nrows_per_expert) * n_per_row``).

        Example:
            >>> t = PlannedTensor("w", None, None, (2, 3, 4), 0, np.arange(8, dtype=np.float32).reshape(2, 4))
            >>> [(a, b, w.tolist()) for a, b, w in t.imatrix_for_rows(1, 5)]
            [(1, 3, [0.0, 1.0, 2.0, 3.0]), (3, 5, [4.0, 5.0, 6.0, 7.0])]
        """
        if self.imatrix is None:
            return [(start, stop, None)]
        per_mat = self.n_rows // self.imatrix.shape[0]
        parts = []
        r = start
        while r < stop:
            j = r // per_mat
            end = min(stop, (j + 1) * per_mat)
            parts.append((r, end, self.imatrix[j]))
            r = end
        return parts

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def n_cols(self) -> int:
        return self.shape[-1]

    @property
    def row_nbytes(self) -> int:
        return self.qtype.row_nbytes(self.n_cols)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_nbytes

    @property
    def gguf_dims(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))


@dataclass
class ConversionPlan:
    """An ordered, validated list of output tensors with their offsets, plus the file type.

    ``type_name`` names the file's type as llama.cpp spells it (``Q8_0``, ``Q4_K_M``: the output file name uses
    it), ``file_type`` is its ``general.file_type``. ``quantized_layout`` says the file is laid out as
    llama-quantize writes it (``general.quantization_version`` and ``general.file_type`` as the last keys).
    """

    arch_name: str
    type_name: str
    file_type: int
    tensors: list[PlannedTensor]
    warnings: list[str] = field(default_factory=list)
    quantized_layout: bool = False
    #: The ``quantize.imatrix.*`` (key, value type, value) llama-quantize appends after ``general.file_type``
    #: (:func:`l1quant.imatrix_file.quantize_keys`); empty without an importance matrix.
    imatrix_keys: list[tuple[str, gguf.GGUFValueType, str | bytes | int | float]] = field(default_factory=list)
    #: For type ``auto``: the target-size search's answer (:class:`l1quant.conversion.target.TargetChoice`: the
    #: table, the predicted KLD, the tensor-type file); None otherwise. Its ``quantize.target*`` keys come first in
    #: ``imatrix_keys`` (llama-quantize appends ``--override-kv`` entries before the imatrix ones).
    target: Any = None

    @property
    def data_nbytes(self) -> int:
        """Size of the data section, trailing padding included."""
        return sum(pad(t.nbytes) for t in self.tensors)

    @property
    def source_nbytes(self) -> int:
        return sum(t.source.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)


def resolve_out_type(requested: str | QuantType, ckpt: Checkpoint, skip_suffixes: tuple[str, ...] = ()) -> QuantType:
    """Map ``auto`` to bf16/f16 from the first 2-D bf16/f16 source tensor, as llama.cpp does; else the converter
    type's record (:func:`l1quant.filetypes.resolve_type`).

    Example:
        >>> resolve_out_type("q8_0", ckpt).name  # doctest: +SKIP
        'Q8_0'
    """
    if isinstance(requested, QuantType):
        return requested
    if str(requested).lower() not in convert_types():
        raise ConfigError(f"--type {requested!r} is not one of {', '.join(convert_types())}")
    qt = resolve_type(requested)
    if isinstance(qt, QuantType):
        return qt
    for t in ckpt.tensors.values():
        if len(t.shape) < 2 or t.name.endswith(skip_suffixes):
            continue
        if t.dtype == "BF16":
            return get_quant_type("bf16")
        if t.dtype == "F16":
            return get_quant_type("f16")
        # an F32 tensor says nothing: keep looking, and default to F16 like the reference
    return get_quant_type("f16")


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_layer_count(ckpt: Checkpoint, cfg: ModelConfig) -> None:
    """Refuse a config whose ``num_hidden_layers`` disagrees with the layers the checkpoint holds.

    Checked first because every per-layer table (name map, expected tensors) is sized by the config: a corrupt
    ``num_hidden_layers: 1000000000`` must fail in microseconds, not build a billion-entry map. Naming the key
    is also clearer than a list of "missing" tensors.

    Example:
        >>> check_layer_count(ckpt, cfg)  # doctest: +SKIP
    """
    top, where = -1, ""
    for name in ckpt.tensors:
        m = _LAYER.search(name)
        if m and int(m.group(1)) > top:
            top, where = int(m.group(1)), name
    n = cfg.num_hidden_layers
    if top + 1 < n:
        held = f"layers 0..{top} only" if top >= 0 else "no per-layer tensors"
        raise ConfigError(f"{cfg.source}: num_hidden_layers={n} but the checkpoint in {ckpt.model_dir} has {held}")
    if top + 1 > n:
        raise TensorError(f"{ckpt.tensors[where].path.name}: tensor {clip(where)} is in layer {top}, but "
                          f"{cfg.source} says num_hidden_layers={n}")


def stays_f32(name: str, ndim: int, arch: Arch) -> bool:
    """1-D tensors, norms and every non-``.weight`` tensor (biases) are written F32 whatever the output type.

    Example:
        >>> stays_f32("blk.0.attn_q.bias", 1, arch), stays_f32("blk.0.attn_q.weight", 2, arch)  # doctest: +SKIP
        (True, False)
    """
    return ndim <= 1 or name.endswith(arch.f32_suffixes) or not name.endswith(".weight")


def tensor_qtype(name: str, row_len: int, ndim: int, arch: Arch, qt: QuantType) -> QuantType:
    """The type a tensor gets when the matrices become ``qt`` (the converter's rule, also what verify checks):
    1-D tensors, norms and every non-``.weight`` tensor (biases) stay F32; a row that does not fill whole
    ``qt`` blocks falls back to F16.

    Example:
        >>> tensor_qtype("blk.0.attn_norm.weight", 1536, 1, arch, get_quant_type("q8_0")).name  # doctest: +SKIP
        'F32'
    """
    if stays_f32(name, ndim, arch):
        return get_quant_type("f32")
    return qt if row_len % qt.block_size == 0 else get_quant_type("f16")


def lossless_type(ckpt: Checkpoint, skip_suffixes: tuple[str, ...] = ()) -> QuantType:
    """The converter type that holds every matrix of ``ckpt`` exactly: BF16 for an all-bf16 checkpoint (L1), F16
    for all-f16, F32 otherwise. A mix is applied to this, as llama-quantize would be to that file.

    Example:
        >>> lossless_type(ckpt).name  # doctest: +SKIP
        'BF16'
    """
    dtypes = {t.dtype for t in ckpt.tensors.values() if len(t.shape) >= 2 and not t.name.endswith(skip_suffixes)}
    if dtypes == {"BF16"}:
        return get_quant_type("bf16")
    if dtypes == {"F16"}:
        return get_quant_type("f16")
    return get_quant_type("f32")


def resolve_mix(out_type: str | Mix | QuantType, options: QuantOptions | None) -> Mix | None:
    """The llama-quantize mix ``out_type`` names, or None for a converter type without per-tensor options.

    Example:
        >>> resolve_mix("q8_0", None) is None, resolve_mix("q4_k", None).name
        (True, 'Q4_K_M')
    """
    want = resolve_type(out_type, per_tensor=options is not None and options != QuantOptions())
    return want if isinstance(want, Mix) else None


def source_for(arch: Arch, cfg: ModelConfig, name: str, st: SafeTensor, warnings: list[str]) -> TensorSource:
    """What GGUF tensor ``name`` reads: ``st`` itself, or ``st`` through the architecture's transform for it.

    A row reordering (llama's Q/K) streams chunk by chunk; any other transform is read whole, and a warning
    says why.

    Example:
        >>> source_for(get_arch("llama"), cfg, "blk.0.attn_q.weight", st, []).__class__.__name__  # doctest: +SKIP
        'PermutedRows'
    """
    tf = arch.transform_for(name)
    if tf is None:
        return st
    order = tf.row_order(cfg, tuple(st.shape))
    if order is not None:
        return PermutedRows(st, order)
    warnings.append(f"{name}: read whole ({tf.why_whole})")
    return WholeTransformed(st, lambda x: tf.apply(cfg, x), tf.why_whole or "")


def make_plan(ckpt: Checkpoint, cfg: ModelConfig, arch: Arch, out_type: str | Mix | QuantType,
              options: QuantOptions | None = None, *, as_mix: bool = False,
              assume_imatrix: bool = False, target: Any = None) -> ConversionPlan:
    """Validate ``ckpt`` against ``arch``/``cfg`` and lay out every output tensor.

    ``out_type`` is a converter type or a llama-quantize mix (see the module docstring), as typed or resolved
    (:func:`l1quant.filetypes.resolve_type`); ``options`` are llama-quantize's per-tensor flags; ``as_mix``
    applies a converter type as llama-quantize's mix of that name; ``assume_imatrix`` chooses types as with an
    importance matrix whose weights are unknown (verify); ``target`` (type ``auto`` with a target size): called
    as ``target(arch_name, planned, options, warnings, n_layer=, n_head=, n_head_kv=)`` on the lossless file's
    tensors, it returns the plan (:func:`l1quant.conversion.target.apply_target`). Refuses (``TensorError``): a tensor name the
    architecture cannot map, a non-float weight, a tensor with the wrong shape, a tensor missing, or two source
    tensors mapping to one GGUF
    name; (``ConfigError``) an unknown type or a per-tensor type l1quant has no kernel for, or a config the
    architecture cannot convert (:meth:`~l1quant.arch.Arch.validate`). Tensors the architecture generates from
    the config (llama-3's ``rope_freqs``) come first, as the reference writes them; checkpoint tensors go through
    their transform (:func:`source_for`).

    Example:
        >>> [t.name for t in make_plan(ckpt, cfg, arch, "f16").tensors][:3]  # doctest: +SKIP
        ['output.weight', 'token_embd.weight', 'blk.0.attn_k.bias']
    """
    arch.validate(cfg)
    check_layer_count(ckpt, cfg)
    requested = None if target is not None else resolve_type(
        out_type, per_tensor=options is not None and options != QuantOptions(), as_mix=as_mix)
    mix: Mix | None = None
    if target is not None:  # type auto with a target size: the lossless file, then the searched overrides
        qt = lossless_type(ckpt, arch.skip_suffixes)
    elif isinstance(requested, Mix):
        mix, qt = requested, lossless_type(ckpt, arch.skip_suffixes)
    else:
        qt = resolve_out_type(requested or "auto", ckpt, arch.skip_suffixes)
    f32 = get_quant_type("f32")
    name_map = arch.tensor_name_map(cfg.num_hidden_layers)
    expected = arch.expected_tensors(cfg, generated=False)
    planned: list[tuple[str, TensorSource, QuantType]] = []
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for gen_name, data in arch.generated_tensors(cfg):
        planned.append((gen_name, Generated(f"{gen_name} (generated from config.json)", data),
                        tensor_qtype(gen_name, data.shape[-1], data.ndim, arch, qt)))
    for src_name, st in ckpt.tensors.items():
        if src_name.endswith(arch.skip_suffixes):
            continue
        name = name_map.get_name(src_name, try_suffixes=(".weight", ".bias"))
        where = f"{st.path.name}: tensor {clip(src_name)}"
        if name is None:
            raise TensorError(f"{where} is not part of a {arch.name} model with "
                              f"{cfg.num_hidden_layers} layers (cannot map it to a GGUF name)")
        if name in seen:
            raise TensorError(f"{where} maps to {name} like {clip(seen[name])}")
        seen[name] = src_name
        require_float(st)
        want = expected.get(name)
        if want is None:
            if name == "output.weight" and cfg.tie_word_embeddings:
                # config says tied but lm_head is present: llama.cpp keeps it, and so do we.
                want = (cfg.vocab_size, cfg.hidden_size)
                warnings.append(f"{where}: present although tie_word_embeddings is true; written as output.weight")
            else:
                raise TensorError(f"{where} ({name}) is not expected by a {arch.name} model with this config")
        if tuple(st.shape) != want:
            raise TensorError(f"{where} ({name}) has shape {list(st.shape)}, config implies {list(want)}")
        row_len = st.shape[-1] if st.shape else 1
        t_qt = tensor_qtype(name, row_len, len(st.shape), arch, qt)
        if t_qt is not qt and t_qt is not f32:  # the F16 fallback
            warnings.append(f"{name}: row length {row_len} is not a multiple of {qt.block_size} "
                            f"({qt.name}); falling back to F16")
        planned.append((name, source_for(arch, cfg, name, st, warnings), t_qt))
    missing = [n for n in expected if n not in seen]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TensorError(f"{ckpt.model_dir}: tensor {missing[0]} is missing from the checkpoint{more}")
    if target is not None:
        chosen: ConversionPlan = target(arch.name, planned, options, warnings, n_layer=cfg.num_hidden_layers,
                                        n_head=cfg.num_attention_heads, n_head_kv=cfg.num_key_value_heads)
        return chosen
    if mix is None:
        return layout(arch.name, qt.name, qt.file_type or 0, planned, warnings)
    return apply_mix(arch.name, planned, mix, options, warnings, n_layer=cfg.num_hidden_layers,
                     n_head=cfg.num_attention_heads, n_head_kv=cfg.num_key_value_heads,
                     assume_imatrix=assume_imatrix)


def apply_mix(arch_name: str, planned: list[tuple[str, TensorSource, QuantType]], mix: Mix,
              options: QuantOptions | None, warnings: list[str], *, n_layer: int, n_head: int,
              n_head_kv: int, assume_imatrix: bool = False) -> ConversionPlan:
    """Give each (GGUF name, source, input type) the type llama-quantize would, in its order, and lay them out.

    ``planned`` holds every tensor of the (virtual or real) input file with its type there; the result is
    llama-quantize's file for ``mix``. ``n_layer``, ``n_head``, ``n_head_kv`` are the model's block count and
    head counts (the mix rule reads them). With ``options.imatrix``, the file is read and narrowed by
    ``include_weights``/``exclude_weights`` (llama-quantize's ``prepare_imatrix``); if entries remain, the rule
    knows it, each quantized tensor carries its weights and the plan its ``quantize.imatrix.*`` keys.
    ``assume_imatrix`` without one: the types an imatrix quant has, no weights, no keys (verify). Raises
    ``ConfigError`` for a type l1quant has no kernel for, or a tensor that needs importance weights and has none;
    :class:`~l1quant.imatrix_file.ImatrixFileError` for an unusable imatrix file or one made for another model.

    Example:
        >>> apply_mix("qwen2", planned, get_mix("q4_k_m"), None, [], n_layer=28, n_head=12,
        ...           n_head_kv=2).type_name  # doctest: +SKIP
        'Q4_K_M'
    """
    by_name = {name: (st, t) for name, st, t in planned}
    im = load_imatrix(options)
    a = assign_types([(name, tuple(reversed(st.shape)) or (1,)) for name, st, _ in planned], mix,
                     n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, arch=arch_name, options=options,
                     has_imatrix=im is not None or assume_imatrix)
    out: list[tuple[str, TensorSource, QuantType]] = []
    weights: dict[str, np.ndarray] = {}
    for name in a.order:
        st, t_in = by_name[name]
        chosen = a.types[name]
        qt = t_in if chosen is None else get_quant_type(chosen)
        out.append((name, st, qt))
        if im is None or qt is t_in:  # copied as it is: llama-quantize looks nothing up
            continue
        shape = tuple(st.shape)
        try:
            w = im.weights_for(name, shape[-1], shape[-3] if len(shape) >= 3 else 1)
        except ImatrixFileError as e:  # the first tensor (in llama-quantize's order) whose size does not match
            # im is not None only when options.imatrix is set (load_imatrix)
            raise ImatrixFileError(f"{os.fspath(options.imatrix)}: {e}") from None  # type: ignore[union-attr, arg-type]
        if w is not None:
            weights[name] = w
        elif name in a.needs_imatrix:
            raise ConfigError(f"{name}: the importance matrix has no entry for it, and its type {qt.name} in a "
                              f"{mix.name} file needs one (llama-quantize: missing importance matrix for tensor)")
    plan = layout(arch_name, mix.name, mix.file_type, out, warnings + list(a.warnings), quantized_layout=True,
                  imatrix=weights)
    if im is not None:
        assert options is not None and options.imatrix is not None
        plan.imatrix_keys = list(quantize_keys(im, os.fspath(options.imatrix)))
    return plan


def load_imatrix(options: QuantOptions | None) -> Imatrix | None:
    """The importance matrix ``options`` asks for, narrowed by ``include_weights``/``exclude_weights``; None
    without one, or when no entry is left (llama-quantize then quantizes as without, writing none of its keys).

    Example:
        >>> load_imatrix(None) is None
        True
    """
    if options is None or options.imatrix is None:
        return None
    im = read_imatrix(options.imatrix).select(options.include_weights, options.exclude_weights)
    return im if im.entries else None


def layout(arch_name: str, type_name: str, file_type: int,
           tensors: list[tuple[str, TensorSource, QuantType]], warnings: list[str], *,
           quantized_layout: bool = False, imatrix: dict[str, np.ndarray] | None = None) -> ConversionPlan:
    """Place ``tensors`` (in the given order) at 32-byte aligned offsets of the data section; ``imatrix`` gives
    some of them their importance weights (:attr:`PlannedTensor.imatrix`).

    Example:
        >>> layout("qwen2", "F16", 1, [], []).data_nbytes
        0
    """
    plan = ConversionPlan(arch_name, type_name, file_type, [], warnings, quantized_layout)
    offset = 0
    for name, st, t in tensors:
        pt = PlannedTensor(name, st, t, tuple(st.shape), offset, (imatrix or {}).get(name))
        offset += pad(pt.nbytes)
        plan.tensors.append(pt)
    return plan

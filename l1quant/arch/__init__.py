"""Architecture descriptions: the only place in l1quant that knows an architecture.

An :class:`Arch` is data, plus a few small hooks where data cannot say it:

* **names** -- the Hugging Face ``architectures`` it covers, the GGUF architecture name, and the gguf enum whose
  tensor-name map renames HF tensors (gguf's table, used rather than copied);
* **hparams** -- the hparam <-> GGUF key table (:class:`HParam` rows, in the reference converter's key order). It
  is used in both directions: ``convert`` writes ``row.value(cfg)``; ``verify`` and the forward pass read a file's
  keys back into a config through the same rows (``row.field``) -- there is no second, inverse table;
* **tensors** -- every tensor of a complete checkpoint (:class:`TensorSpec`: GGUF name, shape in dim symbols,
  an optional presence condition), with its per-tensor :class:`Transform` (llama's Q/K row permutation) and the
  tensors the converter *generates* from the config (llama-3's ``rope_freqs``);
* **config** -- the defaults transformers' config class gives keys that config.json omits (the reference reads
  config.json through ``AutoConfig``, so these decide what it writes), the rope scaling types the architecture
  supports, and an optional extra check;
* **tokenizer** -- ``tokenizer.ggml.model`` and whether tokenizer_config's ``add_prefix_space`` is written;
* **forward pass** -- the rope layout of the GGUF weights (``neox``: rotate halves; ``norm``: adjacent pairs); qkv
  biases, q/k norms and rope frequency factors follow from the tensor table (:attr:`Arch.features`).

Adding an architecture is one module with one ``ARCH = Arch(...)`` listed in ``_TABLES`` (or, for a test or a
plug-in, :func:`register`). ``l1quant/arch/decoder.py`` holds the parts the dense decoders share.

Example:
    >>> arch = get_arch("Qwen3ForCausalLM")
    >>> arch.name, arch.features.qk_norm, arch.features.qkv_bias
    ('qwen3', True, False)
    >>> get_arch("llama").transform_for("blk.3.attn_k.weight").__class__.__name__
    'RopeRowPermutation'
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np

from l1quant.errors import ConfigError

if TYPE_CHECKING:  # a description is data about a config; parsing a config reads the descriptions
    from l1quant.source.config import ModelConfig

__all__ = ["Arch", "Features", "HParam", "RopeRowPermutation", "TensorSpec", "Transform", "WholeTensor",
           "all_arches", "dims", "get_arch", "register", "registered"]


# --------------------------------------------------------------------------------------------------- dimensions


def dims(cfg: ModelConfig) -> dict[str, int]:
    """The dim symbols tensor shapes are written in: ``e`` hidden size, ``v`` vocabulary, ``ff`` feed-forward,
    ``hd`` head dimension, ``q`` = heads x hd, ``kv`` = kv heads x hd, ``rot`` = hd / 2 (rope frequencies).

    Example:
        >>> from l1quant.source.config import ModelConfig
        >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        ...     "num_key_value_heads": 2, "vocab_size": 1000})
        >>> dims(cfg)
        {'e': 64, 'v': 1000, 'ff': 128, 'hd': 16, 'q': 64, 'kv': 32, 'rot': 8}
    """
    hd = cfg.head_dim
    return {"e": cfg.hidden_size, "v": cfg.vocab_size, "ff": cfg.intermediate_size, "hd": hd,
            "q": cfg.num_attention_heads * hd, "kv": cfg.num_key_value_heads * hd, "rot": hd // 2}


# --------------------------------------------------------------------------------------------------- transforms


class Transform:
    """How a checkpoint tensor becomes its GGUF tensor, when it is not a plain copy.

    A transform that only reorders rows gives :meth:`row_order`; the converter then streams the tensor row chunk
    by row chunk (each chunk reads the source rows it needs). Anything else sets ``why_whole`` (said in the plan's
    warnings) and implements :meth:`apply` on the whole tensor, which is then read and transformed at once.
    """

    why_whole: str | None = None

    def row_order(self, cfg: ModelConfig, shape: tuple[int, ...]) -> np.ndarray | None:
        """For each output row, the source row it is (int64, length ``shape[0]``); None if not a row reordering."""
        return None

    def apply(self, cfg: ModelConfig, x: np.ndarray) -> np.ndarray:
        """The whole transformed tensor from the whole source tensor (float32, source shape)."""
        raise NotImplementedError(type(self).__name__)


@dataclass(frozen=True)
class RopeRowPermutation(Transform):
    """llama's Q/K rows for llama.cpp's rope layout (``LlamaModel.permute`` in the reference converter).

    Hugging Face's llama rotates the two halves of each head (``rotate_half``); llama.cpp's llama graph rotates
    adjacent pairs. Within each head of ``hd`` rows, output row ``2j + s`` is source row ``s * hd/2 + j``.
    ``heads`` says which head count splits the rows: ``"heads"`` for Q, ``"kv_heads"`` for K.

    Example:
        >>> from l1quant.source.config import ModelConfig
        >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
        ...     "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        ...     "num_key_value_heads": 1, "vocab_size": 10})
        >>> RopeRowPermutation("heads").row_order(cfg, (8, 8)).tolist()
        [0, 2, 1, 3, 4, 6, 5, 7]
    """

    heads: str = "heads"

    def row_order(self, cfg: ModelConfig, shape: tuple[int, ...]) -> np.ndarray:
        n = cfg.num_attention_heads if self.heads == "heads" else cfg.num_key_value_heads
        rows = shape[0]
        if rows % (2 * n):
            raise ConfigError(f"{cfg.source}: {rows} rows cannot be split into {n} heads of rotary pairs")
        order: np.ndarray = np.arange(rows, dtype=np.int64).reshape(n, 2, rows // n // 2).transpose(0, 2, 1)
        return order.reshape(-1)


@dataclass(frozen=True)
class WholeTensor(Transform):
    """Any other transform: ``fn(cfg, x)`` on the whole tensor as float32 (``why_whole`` says why it cannot
    stream). The result must keep the source shape."""

    fn: Callable[[ModelConfig, np.ndarray], np.ndarray] = dataclasses.field(repr=False, default=lambda cfg, x: x)
    why_whole: str | None = "the transform needs the whole tensor"

    def apply(self, cfg: ModelConfig, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(cfg, x), dtype=np.float32)


# --------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the architecture.

    ``name`` is the GGUF name (``blk.{bid}.`` marks a per-layer tensor); ``shape`` the source (HF, row-major)
    shape in :func:`dims` symbols; ``when(cfg)`` False means the tensor is absent for that config (an untied
    ``output.weight``); ``transform`` turns the checkpoint tensor into the GGUF one; ``generate(cfg)`` marks a
    tensor the converter computes (float32) instead of reading it from the checkpoint. ``file_optional`` says a
    GGUF's keys cannot tell whether the tensor belongs (llama-3 scaling writes no key, only ``rope_freqs``): a file
    may then have it or not.
    """

    name: str
    shape: tuple[str, ...]
    when: Callable[[ModelConfig], bool] | None = dataclasses.field(default=None, repr=False)
    transform: Transform | None = None
    generate: Callable[[ModelConfig], np.ndarray] | None = dataclasses.field(default=None, repr=False)
    file_optional: bool = False

    @property
    def per_layer(self) -> bool:
        return "{bid}" in self.name

    def present(self, cfg: ModelConfig) -> bool:
        return self.when is None or bool(self.when(cfg))


@dataclass(frozen=True)
class HParam:
    """One row of the hparam <-> GGUF key table.

    ``key`` has ``{arch}`` for the architecture name. ``field`` is the config.json field the key carries
    (``rope_scaling.factor`` for a rope parameter; ``a|b`` lists alternative spellings, the first is canonical);
    reading a file back puts the key's value there. ``value(cfg)`` is what convert writes (default: the field's
    value; None omits the key). A row without ``field`` is derived: verify checks it equals ``value`` of the
    config read back. ``required`` keys must be in a file; ``default(d)`` is llama.cpp's loader default for an
    absent key, given the fields read so far.
    """

    key: str
    vtype: gguf.GGUFValueType
    field: str | None = None
    value: Callable[[ModelConfig], Any] | None = dataclasses.field(default=None, repr=False)
    required: bool = False
    default: Callable[[dict[str, Any]], Any] | None = dataclasses.field(default=None, repr=False)

    def write_value(self, cfg: ModelConfig) -> Any:
        if self.value is not None:
            return self.value(cfg)
        return cfg.param(self.field) if self.field else None


@dataclass(frozen=True)
class Features:
    """What the reference forward pass needs to know (see :mod:`l1quant.evaluate.forward`)."""

    qkv_bias: bool
    qk_norm: bool
    rope_style: str  # "neox": rotate halves of each head; "norm": rotate adjacent pairs (llama.cpp's names)


_INT_TYPES = (gguf.GGUFValueType.UINT8, gguf.GGUFValueType.INT8, gguf.GGUFValueType.UINT16,
              gguf.GGUFValueType.INT16, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32,
              gguf.GGUFValueType.UINT64, gguf.GGUFValueType.INT64)
_BLK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Arch:
    """One architecture's description (see the module docstring for what each part is for)."""

    name: str
    model_arch: gguf.MODEL_ARCH
    hf_architectures: tuple[str, ...]
    hparams: tuple[HParam, ...]
    tensors: tuple[TensorSpec, ...]
    #: keys written after ``general.file_type`` (the reference's model class adds them after its base class)
    hparams_after_file_type: tuple[HParam, ...] = ()
    config_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    rope_types: tuple[str, ...] = ("linear", "yarn")
    check_config: Callable[[ModelConfig], None] | None = dataclasses.field(default=None, repr=False)
    #: refuse a model folder input the reference's class for this architecture reads and l1quant does not
    #: reproduce (``check_folder(model_dir, cfg)``, one-line error); the inputs every class reads are checked by
    #: :func:`l1quant.source.inputs.check_reference_inputs`
    check_folder: Callable[[Path, ModelConfig], None] | None = dataclasses.field(default=None, repr=False)
    #: the reference's class reads sentence-transformers' ``modules.json`` (a Pooling module: refused)
    sentence_transformers_pooling: bool = False
    tokenizer_model: str = "gpt2"
    #: write tokenizer_config's ``add_prefix_space`` as ``tokenizer.ggml.add_space_prefix`` (llama's converter does)
    add_space_prefix: bool = False
    rope_style: str = "neox"
    #: llama.cpp's hparams loader's "70B" size class (``LLM_TYPE_70B``) from (n_layer, n_head, n_head_kv):
    #: llama-quantize gives such models' attn_v more bits. None: llama-quantize's rule is not stated for this
    #: architecture, so the llama-quantize mixes refuse it (:mod:`l1quant.conversion.mixes`).
    llama_quantize_70b: Callable[[int, int, int], bool] | None = dataclasses.field(default=None, repr=False)
    #: HF ``model_type`` (config.json), for checkpoints built by :mod:`l1quant.testing`
    hf_model_type: str = ""
    skip_suffixes: tuple[str, ...] = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
    f32_suffixes: tuple[str, ...] = ("_norm.weight",)

    # ----------------------------------------------------------------------------------------------- tensors

    def tensor_name_map(self, n_blocks: int) -> gguf.TensorNameMap:
        """gguf's HF -> GGUF tensor-name map for this architecture (we use it rather than copy its tables)."""
        return gguf.get_tensor_name_map(self.model_arch, n_blocks)

    def _specs(self, cfg: ModelConfig) -> Iterator[tuple[str, TensorSpec]]:
        """(GGUF name, spec) of every tensor ``cfg`` implies: global ones first, then layer by layer."""
        present = [s for s in self.tensors if s.present(cfg)]
        for s in present:
            if not s.per_layer:
                yield s.name, s
        for i in range(cfg.num_hidden_layers):
            for s in present:
                if s.per_layer:
                    yield s.name.format(bid=i), s

    def expected_tensors(self, cfg: ModelConfig, *, generated: bool = True) -> dict[str, tuple[int, ...]]:
        """GGUF name -> source (HF row-major) shape of every tensor a conversion of ``cfg`` writes; with
        ``generated=False`` only those read from the checkpoint.

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 1000})
            >>> e = get_arch("qwen2").expected_tensors(cfg)
            >>> len(e), e["blk.1.attn_k.weight"], e["output.weight"]
            (27, (32, 64), (1000, 64))
        """
        d = dims(cfg)
        return {name: tuple(d[x] for x in s.shape) for name, s in self._specs(cfg)
                if generated or s.generate is None}

    def file_tensors(self, cfg: ModelConfig, present: set[str] | frozenset[str]) -> dict[str, tuple[int, ...]]:
        """The tensors a GGUF whose keys read back as ``cfg`` must have, plus each ``file_optional`` one it has
        (``present``: the file's tensor names). verify checks presence and shapes against this.

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 10})
            >>> get_arch("llama").file_tensors(cfg, {"rope_freqs.weight"})["rope_freqs.weight"]
            (8,)
        """
        out = self.expected_tensors(cfg)
        d = dims(cfg)
        for s in self.tensors:
            if s.file_optional and not s.per_layer and s.name in present and s.name not in out:
                out[s.name] = tuple(d[x] for x in s.shape)
        return out

    def generated_tensors(self, cfg: ModelConfig) -> list[tuple[str, np.ndarray]]:
        """(GGUF name, float32 data in source shape) of every tensor computed from ``cfg``, in writing order.

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 1000, "rope_scaling": {"rope_type": "llama3",
            ...     "factor": 8.0, "original_max_position_embeddings": 64}})
            >>> [(n, a.shape) for n, a in get_arch("llama").generated_tensors(cfg)]
            [('rope_freqs.weight', (8,))]
        """
        out = []
        shapes = self.expected_tensors(cfg)
        for name, s in self._specs(cfg):
            if s.generate is not None:
                a = np.ascontiguousarray(s.generate(cfg), dtype=np.float32)
                if a.shape != shapes[name]:
                    raise ConfigError(f"{cfg.source}: generated {name} has shape {list(a.shape)}, "
                                      f"expected {list(shapes[name])}")
                out.append((name, a))
        return out

    def spec_for(self, gguf_name: str) -> TensorSpec | None:
        """The spec a GGUF tensor name belongs to (``blk.7.attn_q.weight`` -> ``blk.{bid}.attn_q.weight``)."""
        generic = _BLK.sub("blk.{bid}.", gguf_name)
        return next((s for s in self.tensors if s.name == generic), None)

    def transform_for(self, gguf_name: str) -> Transform | None:
        """The transform applied to the checkpoint tensor that becomes ``gguf_name`` (None: copied as is)."""
        s = self.spec_for(gguf_name)
        return None if s is None else s.transform

    @property
    def features(self) -> Features:
        """Forward-pass features; biases and q/k norms are read off the tensor table."""
        names = {s.name for s in self.tensors}
        return Features(qkv_bias="blk.{bid}.attn_q.bias" in names, qk_norm="blk.{bid}.attn_q_norm.weight" in names,
                        rope_style=self.rope_style)

    # ----------------------------------------------------------------------------------------------- hparams

    def validate(self, cfg: ModelConfig) -> None:
        """Refuse a config this architecture cannot convert (an unsupported rope scaling type, the extra check).

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 10, "rope_scaling": {"rope_type": "llama3",
            ...     "factor": 8.0}})
            >>> get_arch("qwen2").validate(cfg)
            Traceback (most recent call last):
            ...
            l1quant.errors.ConfigError: config.json: rope scaling 'llama3' is not supported for qwen2 (supported: linear, yarn)
        """
        rtype = cfg.rope_type
        if rtype is not None and rtype not in self.rope_types:
            raise ConfigError(f"{cfg.source}: rope scaling {rtype!r} is not supported for {self.name} "
                              f"(supported: {', '.join(self.rope_types)})")
        if self.check_config is not None:
            self.check_config(cfg)

    def kv_rows(self, cfg: ModelConfig, *, after_file_type: bool = False) -> list[tuple[str, Any, gguf.GGUFValueType]]:
        """The (key, value, type) rows convert writes for ``cfg``, in order, omitted keys dropped: those before
        ``general.file_type``, or with ``after_file_type`` those after it.

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 1000})
            >>> [k for k, _, _ in get_arch("qwen2").kv_rows(cfg)][:2]
            ['qwen2.block_count', 'qwen2.context_length']
        """
        out = []
        for row in self.hparams_after_file_type if after_file_type else self.hparams:
            v = row.write_value(cfg)
            if v is not None:
                out.append((row.key.format(arch=self.name), v, row.vtype))
        return out

    @property
    def all_hparams(self) -> tuple[HParam, ...]:
        return self.hparams + self.hparams_after_file_type

    def config_from_kv(self, kv: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Read a GGUF's hparam keys back into config.json fields through the same table convert writes with.

        Returns a config.json-like dict (rope parameters under ``rope_scaling``); derived rows are not read.
        Raises ConfigError naming ``where`` and the key when a required key is missing or a value has the
        wrong kind.

        Example:
            >>> d = get_arch("qwen2").config_from_kv({"qwen2.block_count": 2, "qwen2.context_length": 128,
            ...     "qwen2.embedding_length": 64, "qwen2.feed_forward_length": 128,
            ...     "qwen2.attention.head_count": 4, "qwen2.attention.layer_norm_rms_epsilon": 1e-6}, "m.gguf")
            >>> d["num_key_value_heads"], d["rope_theta"]
            (4, 10000.0)
        """
        d: dict[str, Any] = {}
        for row in self.all_hparams:
            if row.field is None:
                continue
            key = row.key.format(arch=self.name)
            v = kv.get(key)
            if v is None:
                if row.default is not None:
                    v = row.default(d)
                elif row.required:
                    raise ConfigError(f"{where}: missing required key '{key}'")
                if v is None:
                    continue
            if row.vtype in _INT_TYPES and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"{where}: key '{key}' is {v!r}, expected a number")
            if row.vtype in (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64) and (
                    not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise ConfigError(f"{where}: key '{key}' is {v!r}, expected a number")
            name = row.field.split("|")[0]
            if name.startswith("rope_scaling."):
                d.setdefault("rope_scaling", {})[name.removeprefix("rope_scaling.")] = v
            else:
                d[name] = v
        return d

    def derived_mismatches(self, kv: Mapping[str, Any], cfg: ModelConfig) -> list[str]:
        """Derived keys (rows without a field) whose value in ``kv`` is not what ``cfg`` implies.

        Example:
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 10})
            >>> get_arch("llama").derived_mismatches({"llama.rope.dimension_count": 8}, cfg)
            ['llama.rope.dimension_count is 8, the hparams imply 16']
        """
        out = []
        for row in self.all_hparams:
            if row.field is not None:
                continue
            key = row.key.format(arch=self.name)
            if key in kv:
                want = row.write_value(cfg)
                if want is not None and kv[key] != want:
                    out.append(f"{key} is {kv[key]!r}, the hparams imply {want!r}")
        return out


# --------------------------------------------------------------------------------------------------- registry

_TABLES = ("qwen2", "qwen3", "llama")
_extra: dict[str, Arch] = {}


def all_arches() -> list[Arch]:
    """Every registered architecture description (the built-in tables, then any :func:`register`-ed one)."""
    return [importlib.import_module(f"{__name__}.{m}").ARCH for m in _TABLES] + list(_extra.values())


def register(arch: Arch) -> Arch:
    """Add an architecture described outside this package (a test, a plug-in); returns it.

    Example:
        >>> register(get_arch("qwen2"))
        Traceback (most recent call last):
        ...
        l1quant.errors.ConfigError: architecture 'qwen2' is already registered
    """
    for a in all_arches():
        if a.name == arch.name or set(a.hf_architectures) & set(arch.hf_architectures):
            raise ConfigError(f"architecture {arch.name!r} is already registered")
    _extra[arch.name] = arch
    return arch


@contextmanager
def registered(arch: Arch) -> Iterator[Arch]:
    """:func:`register` for the duration of a ``with`` block (tests).

    Example:
        >>> import dataclasses
        >>> toy = dataclasses.replace(get_arch("qwen2"), name="toy", hf_architectures=("ToyForCausalLM",))
        >>> with registered(toy):
        ...     get_arch("ToyForCausalLM").name
        'toy'
    """
    register(arch)
    try:
        yield arch
    finally:
        _extra.pop(arch.name, None)


def get_arch(name: str) -> Arch:
    """Find the description for an HF architecture (``Qwen2ForCausalLM``) or a GGUF arch name (``qwen2``).

    Example:
        >>> get_arch("qwen2").hf_architectures
        ('Qwen2ForCausalLM',)
    """
    for a in all_arches():
        if name == a.name or name in a.hf_architectures:
            return a
    known = ", ".join(h for a in all_arches() for h in a.hf_architectures)
    raise ConfigError(f"config.json: architecture {name!r} is not supported (supported: {known})")

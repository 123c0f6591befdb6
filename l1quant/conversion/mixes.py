"""llama-quantize's per-tensor type rule for its quant mixes (Q4_K_M & co.), written as data.

Everything here restates llama.cpp's ``src/llama-quant.cpp`` (llama-cpp-python 0.3.36) and
``tools/quantize/quantize.cpp`` for dense qwen2 / qwen3 / llama models; each table names the function it comes
from. ``tests/test_mixes.py`` runs llama-quantize (through llama-cpp-python) on tiny models and checks that
:func:`assign_types` predicts the type of every tensor it writes.

How a tensor's type is decided (``llama_tensor_get_type``), first step that applies wins:

1. not quantizable (:func:`is_quantizable`: 1-D, not ``*weight``, a norm, a few named exceptions, or
   ``output.weight`` under ``leave_output_tensor``) -> kept exactly as it is in the input (``None`` here);
2. ``token_embedding_type`` given and this is ``token_embd.weight`` -> that type (no shape fallback);
3. ``output_tensor_type`` given and this is ``output.weight`` -> that type (no shape fallback);
4. the mix is not a quantized one (F32, F16, BF16) -> the mix's type (overrides and ``pure`` are ignored);
5. the first ``tensor_types`` regex found in the name -> its type; else ``pure`` -> the mix's base type;
   else the mix table (:data:`MIX_RULES`, then :data:`SIZE_BUMPS`) -> a type;
6. the shape fallback (:data:`FALLBACK`): a row length that is not a multiple of the type's block size moves to
   a 32-block type, or to F16 when even that does not fit.

What llama-quantize's output file looks like next to its input (read from ``llama_model_quantize_impl`` and
``gguf.cpp``, and checked on the test files by ``tests/test_mixes.py::test_output_layout``):

* **GGUF version 3**, **alignment 32** (``GGUF_DEFAULT_ALIGNMENT``), whatever the input had. A
  ``general.alignment`` key would be copied verbatim but not honoured (data is aligned to 32 regardless).
* **Metadata keys**: every input key, in input order, with the same value and value type, except that
  ``general.quantization_version`` (u32 = 2) and then ``general.file_type`` (u32 = the mix's
  :attr:`Mix.file_type`, e.g. 15 for Q4_K_M) are removed from wherever they were and appended as the last two
  keys, in that order (``gguf_set_val_u32`` erases an existing key and appends it). The ``split.no``,
  ``split.count`` and ``split.tensors.count`` keys are removed. Nothing else is added (no imatrix keys without an
  imatrix, none of the ``quantize.*`` keys). The key count is therefore the input's (when both keys were there).
* **Tensor order**: NOT the input order. Tensors are written in the loader's ``weights_map`` order
  (:func:`quantize_order`): first every name that does not start with ``blk.<n>.``, sorted by bytes
  (``output.weight``, ``output_norm.weight``, ``token_embd.weight``), then ``blk.0.*`` sorted by name bytes
  (``attn_k.bias``, ``attn_k.weight``, ``attn_norm.weight``, ``attn_output.weight``, ``attn_q.bias``, ...),
  then ``blk.1.*``, ... with layers compared as integers (``blk.2`` before ``blk.10``).
* **Tensor infos**: name, n_dims and dims as in the input (n_dims is ggml's: trailing 1s dropped), type as
  assigned, offset = previous offset + previous size rounded up to 32.
* **Header padding**: zero bytes after the tensor infos up to a multiple of 32; the data section starts there.
* **Data**: each tensor's bytes followed by zero padding to a multiple of 32, *including the last tensor*, so the
  file size is ``data_offset + sum(pad32(nbytes))``. A tensor whose assigned type equals its input type (1-D F32
  tensors, or every tensor of an F32 mix on an F32 input) is copied byte for byte.

The mixes here are the ones l1quant serves (those of :data:`NEEDS_IMATRIX` only with an importance matrix, as
llama-quantize); MoE/other-architecture branches are left out on purpose (see :data:`NOT_SERVED`).

Example:
    >>> a = assign_types([("token_embd.weight", (256, 1000)), ("blk.0.attn_v.weight", (256, 64)),
    ...                   ("blk.0.attn_norm.weight", (256,))], "q4_k_m",
    ...                  n_layer=1, n_head=4, n_head_kv=2, arch="qwen2")
    >>> {name: t.name if t else None for name, t in a.types.items()}
    {'token_embd.weight': 'Q6_K', 'blk.0.attn_norm.weight': None, 'blk.0.attn_v.weight': 'Q6_K'}
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from l1quant.arch import all_arches, get_arch
from l1quant.errors import ConfigError, clip
from l1quant.filetypes import ALIASES, MIXES, NEEDS_IMATRIX, NOT_SERVED, Mix, get_mix  # re-exported: the mixes' home
from l1quant.kernels import KNOWN_TYPES, describe

__all__ = [
    "ALIASES",
    "FALLBACK",
    "IMATRIX_EXEMPT",
    "MIXES",
    "MIX_RULES",
    "NEEDS_IMATRIX",
    "NOT_SERVED",
    "SIZE_BUMPS",
    "Mix",
    "QuantOptions",
    "Role",
    "Rule",
    "TypeAssignment",
    "assign_types",
    "get_mix",
    "is_quantizable",
    "parse_ggml_type",
    "quantize_order",
    "requires_imatrix",
    "tensor_role",
    "use_more_bits",
]

T = GGMLQuantizationType

#: Architectures whose rule this module states: those whose description gives llama.cpp's "70B" size test
#: (:attr:`l1quant.arch.Arch.llama_quantize_70b`). The rule has Falcon- and MoE-only branches that would need more
#: data; for qwen2, qwen3 and llama every ``arch != LLM_ARCH_FALCON`` test is true and ``n_expert`` is 0.
ARCHS = tuple(a.name for a in all_arches() if a.llama_quantize_70b is not None)


def block_size(t: GGMLQuantizationType) -> int:
    """Values per block of ``t`` (1 for the float types): a row length must be a multiple of it (the type's
    record, :mod:`l1quant.kernels`; gguf's table for a type l1quant knows nothing else about).

    Example:
        >>> block_size(T.Q4_K), block_size(T.Q8_0), block_size(T.F16)
        (256, 32, 1)
    """
    qt = describe(t)
    return qt.block_size if qt is not None else GGML_QUANT_SIZES[t][0]


# ----------------------------------------------------------------------------------------------------------------
# Options (llama-quantize's flags)
# ----------------------------------------------------------------------------------------------------------------


def parse_ggml_type(value: GGMLQuantizationType | str) -> GGMLQuantizationType:
    """A GGML tensor type from its name, any case (``q8_0``, ``Q6_K``, ``bf16``), as ``--output-tensor-type``,
    ``--token-embedding-type`` and ``--tensor-type`` take it (quantize.cpp ``parse_ggml_type``).

    Example:
        >>> parse_ggml_type("q6_k").name
        'Q6_K'
    """
    if isinstance(value, GGMLQuantizationType):
        return value
    if isinstance(value, str):
        try:
            return GGMLQuantizationType[value.upper()]
        except KeyError:
            pass
    raise ConfigError(f"unknown tensor type {clip(value)}: expected a GGML type name such as q8_0, q6_k, f16")


@dataclass(frozen=True)
class QuantOptions:
    """llama-quantize's per-tensor flags.

    * ``pure`` (``--pure``): every quantizable tensor gets the mix's base type; overrides, ``output_tensor_type``,
      ``token_embedding_type`` and the shape fallback still apply, the mix table does not.
    * ``output_tensor_type`` (``--output-tensor-type``): type of ``output.weight``, and of ``token_embd.weight``
      when the embeddings are tied (no ``output.weight``) unless ``token_embedding_type`` is also given.
    * ``token_embedding_type`` (``--token-embedding-type``): type of ``token_embd.weight``.
    * ``tensor_types`` (``--tensor-type REGEX=TYPE``, in command-line order): the first pattern *found anywhere* in
      the tensor name (``std::regex_search``, ECMAScript; Python ``re.search`` here, the same for ordinary
      patterns) sets the type, before the mix table and ``pure``; the shape fallback still applies. The pattern is
      lower-cased first, as quantize.cpp does. Overrides are ignored for F32/F16/BF16 mixes, and lose to
      ``output_tensor_type``/``token_embedding_type``.
    * ``leave_output_tensor`` (``--leave-output-tensor``): ``output.weight`` is copied as it is (even if
      ``output_tensor_type`` is given).
    * ``imatrix`` (``--imatrix FILE``): an importance-matrix file (GGUF or legacy .dat,
      :func:`l1quant.imatrix_file.read_imatrix`); the kernels take each tensor's column weights, the rule knows
      (``has_imatrix``), and the four ``quantize.imatrix.*`` keys record it (the path as given here).
    * ``include_weights`` / ``exclude_weights`` (``--include-weights`` / ``--exclude-weights NAME``, repeatable,
      not both): use only the entries whose name contains one of these strings / drop those
      (:meth:`l1quant.imatrix_file.Imatrix.select`). Without ``imatrix`` they change nothing, as in llama-quantize.

    Type values are GGML types or their names. ``output_tensor_type`` and ``token_embedding_type`` are used as
    given, without the shape fallback: if the row length does not fit, llama-quantize aborts, and
    :func:`assign_types` refuses.

    Example:
        >>> o = QuantOptions(tensor_types=[("ATTN_V", "q8_0")], output_tensor_type="q8_0")
        >>> o.tensor_types, o.output_tensor_type.name
        ((('attn_v', <GGMLQuantizationType.Q8_0: 8>),), 'Q8_0')
        >>> QuantOptions(imatrix="m.imatrix.gguf", exclude_weights=["ffn_down"]).exclude_weights
        ('ffn_down',)
    """

    pure: bool = False
    output_tensor_type: GGMLQuantizationType | str | None = None
    token_embedding_type: GGMLQuantizationType | str | None = None
    tensor_types: Sequence[tuple[str, GGMLQuantizationType | str]] = ()
    leave_output_tensor: bool = False
    imatrix: str | os.PathLike[str] | None = None
    include_weights: Sequence[str] = ()
    exclude_weights: Sequence[str] = ()
    _compiled: tuple[tuple[re.Pattern[str], GGMLQuantizationType], ...] = field(
        default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # normalized once, so assign_types only ever sees GGML types and compiled patterns
        for attr in ("output_tensor_type", "token_embedding_type"):
            v = getattr(self, attr)
            if v is not None:
                object.__setattr__(self, attr, parse_ggml_type(v))
        pairs: list[tuple[str, GGMLQuantizationType]] = []
        compiled: list[tuple[re.Pattern[str], GGMLQuantizationType]] = []
        for item in self.tensor_types:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and item[0]):
                raise ConfigError(f"tensor type override must be (regex, type), found {clip(item)}")
            pattern, typ = item[0].lower(), parse_ggml_type(item[1])
            try:
                compiled.append((re.compile(pattern), typ))
            except re.error as e:
                raise ConfigError(f"tensor type override {clip(item[0])}: bad regular expression: {e}") from None
            pairs.append((pattern, typ))
        object.__setattr__(self, "tensor_types", tuple(pairs))
        object.__setattr__(self, "_compiled", tuple(compiled))
        for attr in ("include_weights", "exclude_weights"):
            v = getattr(self, attr)
            if isinstance(v, str) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{attr} must be a list of name parts, found {clip(v)}")
            object.__setattr__(self, attr, tuple(v))
        if self.include_weights and self.exclude_weights:
            # llama-quantize prints its usage for this combination
            raise ConfigError("--include-weights and --exclude-weights cannot be used together")
        if self.imatrix is not None and not isinstance(self.imatrix, (str, os.PathLike)):
            raise ConfigError(f"imatrix must be a file path, found {clip(self.imatrix)}")

    def override_for(self, name: str) -> GGMLQuantizationType | None:
        """The type of the first ``tensor_types`` pattern found in ``name``, or None.

        Example:
            >>> QuantOptions(tensor_types=[("attn_.*", "q8_0"), ("attn_v", "q4_0")]).override_for("blk.3.attn_v.weight")
            <GGMLQuantizationType.Q8_0: 8>
        """
        for pattern, typ in self._compiled:
            if pattern.search(name):
                return typ
        return None


# ----------------------------------------------------------------------------------------------------------------
# Tensor roles (tensor_get_category) and which tensors are quantized at all (tensor_allows_quantization)
# ----------------------------------------------------------------------------------------------------------------


class Role(enum.Enum):
    """A tensor's role for the rule (llama.cpp's ``tensor_category``)."""

    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    ATTN_V = "attn_v"  # also the fused attn_qkv and MLA attn_kv_b: llama.cpp treats them alike
    ATTN_K = "attn_k"
    ATTN_Q = "attn_q"
    ATTN_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OTHER = "other"


#: Whole names with a role (tested first).
ROLE_BY_NAME: dict[str, Role] = {"output.weight": Role.OUTPUT, "token_embd.weight": Role.TOKEN_EMBD}
#: Then the first of these substrings found in the name (order matters: ``attn_kv_b.weight`` before
#: ``attn_k.weight`` is harmless, ``ffn_up`` also catches ``ffn_up_exps``).
ROLE_BY_SUBSTRING: tuple[tuple[str, Role], ...] = (
    ("attn_qkv.weight", Role.ATTN_V),
    ("attn_kv_b.weight", Role.ATTN_V),
    ("attn_v.weight", Role.ATTN_V),
    ("attn_k.weight", Role.ATTN_K),
    ("attn_q.weight", Role.ATTN_Q),
    ("attn_output.weight", Role.ATTN_OUTPUT),
    ("ffn_up", Role.FFN_UP),
    ("ffn_gate", Role.FFN_GATE),
    ("ffn_down", Role.FFN_DOWN),
)


def tensor_role(name: str) -> Role:
    """The role of the GGUF tensor ``name`` (``tensor_get_category``).

    Example:
        >>> tensor_role("blk.4.attn_v.weight"), tensor_role("blk.4.ffn_down.weight"), tensor_role("output_norm.weight")
        (<Role.ATTN_V: 'attn_v'>, <Role.FFN_DOWN: 'ffn_down'>, <Role.OTHER: 'other'>)
    """
    if name in ROLE_BY_NAME:
        return ROLE_BY_NAME[name]
    for sub, role in ROLE_BY_SUBSTRING:
        if sub in name:
            return role
    return Role.OTHER


#: Names containing one of these are never quantized (``tensor_allows_quantization``): MoE routers, tiny or
#: special tensors of other architectures. None occurs in qwen2/qwen3/llama files; listed so the rule is whole.
NEVER_QUANTIZED_SUBSTRINGS: tuple[str, ...] = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight",
    "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
#: Whole names never quantized: positional and token-type embeddings (same names for every architecture).
NEVER_QUANTIZED_NAMES = frozenset({"position_embd.weight", "token_types.weight"})


def ggml_n_dims(shape: Sequence[int]) -> int:
    """ggml's dimension count: trailing dims of size 1 do not count (a (256, 1) tensor is 1-D).

    Example:
        >>> ggml_n_dims((256, 1)), ggml_n_dims((256, 128)), ggml_n_dims((7,))
        (1, 2, 1)
    """
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def is_quantizable(name: str, shape: Sequence[int], options: QuantOptions | None = None) -> bool:
    """Whether llama-quantize may change this tensor's type at all (``tensor_allows_quantization``): at least 2-D
    (ggml-wise), name ending in ``weight``, not a norm nor one of the named exceptions, and not ``output.weight``
    under ``leave_output_tensor``. Other tensors are copied byte for byte.

    Example:
        >>> is_quantizable("blk.0.attn_q.weight", (256, 256)), is_quantizable("blk.0.attn_q.bias", (256,))
        (True, False)
        >>> is_quantizable("blk.0.ffn_norm.weight", (256, 2)), is_quantizable("output.weight", (256, 9),
        ...                                                                      QuantOptions(leave_output_tensor=True))
        (False, False)
    """
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if options is not None and options.leave_output_tensor and name == "output.weight":
        return False
    if name in NEVER_QUANTIZED_NAMES:
        return False
    return not any(s in name for s in NEVER_QUANTIZED_SUBSTRINGS)


_BLOCK_PREFIX = re.compile(r"blk\.\s*([+-]?\d+)")


def _layer_of(name: str) -> int:
    # the loader reads the layer with sscanf("blk.%d."): a number after "blk." (sign and spaces allowed), else -1
    m = _BLOCK_PREFIX.match(name)
    return int(m.group(1)) if m else -1


def quantize_order(names: Iterable[str]) -> list[str]:
    """``names`` in the order llama-quantize processes them, which is also the order of its output file.

    The model loader keeps tensors in a map sorted by (layer number, name): names not starting with ``blk.<n>.``
    count as layer -1 and come first; names compare bytewise. The counters of the mix rule (``i_attention_wv``,
    ``i_ffn_down``) advance in this order.

    Example:
        >>> quantize_order(["blk.10.attn_q.weight", "token_embd.weight", "blk.2.ffn_up.weight", "output_norm.weight",
        ...                 "blk.2.attn_q.weight", "output.weight"])   # doctest: +NORMALIZE_WHITESPACE
        ['output.weight', 'output_norm.weight', 'token_embd.weight', 'blk.2.attn_q.weight', 'blk.2.ffn_up.weight',
         'blk.10.attn_q.weight']
    """
    return sorted(names, key=lambda n: (_layer_of(n), n.encode("utf-8")))


# ----------------------------------------------------------------------------------------------------------------
# The mix table (llama_tensor_get_type_impl)
# ----------------------------------------------------------------------------------------------------------------


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third layer between.

    Example:
        >>> [i for i in range(9) if use_more_bits(i, 9)]
        [0, 3, 6, 7, 8]
    """
    eighth = n_layers // 8
    # the last test only runs for i_layer >= eighth (the first one is true otherwise), so % sees no negatives
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


@dataclass(frozen=True)
class Where:
    """What a rule's condition may look at.

    ``index`` and ``count`` are the role's running counter: for attn_v the number of attn_v-like tensors already
    decided by the mix table and the number of such tensors in the model (``i_attention_wv``,
    ``n_attention_wv``); for ffn_down the same counter against the number of layers (``i_ffn_down``, ``n_layer``).
    For dense models in :func:`quantize_order` both amount to the layer number; ffn_gate and ffn_up count the same
    way (``i_ffn_gate``, ``i_ffn_up``). ``has_imatrix``: the file is quantized with an importance matrix
    (llama.cpp's ``qs.has_imatrix``: one with at least one entry left after --include-weights/--exclude-weights)."""

    index: int
    count: int
    n_gqa: int
    row_length: int
    base: GGMLQuantizationType
    has_imatrix: bool = False


# Conditions: small named predicates so the table below reads like llama.cpp's rule.
def always(w: Where) -> bool:
    """Unconditionally."""
    return True


def more_bits(w: Where) -> bool:
    """:func:`use_more_bits` for this tensor's counter."""
    return use_more_bits(w.index, w.count)


def first_eighth(w: Where) -> bool:
    """Counter in the first eighth (``i < n/8``)."""
    return w.index < w.count // 8


def first_sixteenth(w: Where) -> bool:
    """Counter in the first sixteenth (``i < n/16``)."""
    return w.index < w.count // 16


def first_two(w: Where) -> bool:
    """One of the first two."""
    return w.index < 2


def first_four(w: Where) -> bool:
    """One of the first four."""
    return w.index < 4


def first_eighth_with_imatrix(w: Where) -> bool:
    """Counter in the first eighth, and an importance matrix is given (llama.cpp guards Q4_0/Q5_0's early ffn_down
    only then, so a file made without one stays what it was before imatrices existed)."""
    return w.has_imatrix and first_eighth(w)


def middle_layers(w: Where) -> bool:
    """Counter outside the first and last eighth (``i >= n/8 && i < 7*n/8``)."""
    return w.count // 8 <= w.index < 7 * w.count // 8


def without_imatrix(w: Where) -> bool:
    """No importance matrix (llama.cpp spends more bits where it cannot weight the error)."""
    return not w.has_imatrix


def first_eighth_without_imatrix(w: Where) -> bool:
    """Counter in the first eighth, and no importance matrix."""
    return not w.has_imatrix and first_eighth(w)


def gqa_at_least_4(w: Where) -> bool:
    """At least 4 query heads per KV head (``n_gqa() >= 4``, layer 0's heads)."""
    return w.n_gqa >= 4


def rows_off_base_block(w: Where) -> bool:
    """The row length is not a multiple of the mix's base block size."""
    return w.row_length % block_size(w.base) != 0


@dataclass(frozen=True)
class Rule:
    """For these mixes and this role, when the condition holds, use this type."""

    role: Role
    mixes: frozenset[str]
    when: Callable[[Where], bool]
    type: GGMLQuantizationType

    def __repr__(self) -> str:
        return f"Rule({self.role.value}, {'/'.join(sorted(self.mixes))}, {self.when.__name__}, {self.type.name})"


def _mixes(*names: str) -> frozenset[str]:
    return frozenset(names)


_QUANTIZED = frozenset(n for n, m in MIXES.items() if m.quantized)
_K_Q2, _K_Q3M, _K_Q3L, _K_Q4S = _mixes("Q2_K"), _mixes("Q3_K_M"), _mixes("Q3_K_L"), _mixes("Q4_K_S")
_K_Q2S = _mixes("Q2_K_S")
#: The i-quant mixes by family, llama-quantize's names.
_IQ_12 = _mixes("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")  # llama.cpp's branch of its own
_IQ_2SM = _mixes("IQ2_S", "IQ2_M")
_IQ_LOW_OUTPUT = _IQ_12 | _mixes("IQ3_XXS")  # output.weight in Q5_K
_IQ4 = _mixes("IQ4_NL", "IQ4_XS")
_IQ_ALL = _IQ_12 | _IQ4 | _mixes("IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M")

#: ``llama_tensor_get_type_impl`` for the served mixes and dense qwen2/qwen3/llama. For a (mix, role) the first
#: rule whose condition holds gives the type; no rule -> the mix's base type. The output rules also serve
#: ``token_embd.weight`` when the embeddings are tied. Roles without rules here keep the base type (llama.cpp's
#: other branches concern 8-expert models and Falcon). The IQ1/IQ2 mixes (``_IQ_12``) have a branch of their own in
#: llama.cpp, ahead of the general attn_v one: the 70B attn_v bump does not reach them (:data:`SIZE_BUMPS`). llama.cpp's separate attn_qkv branch is unreachable (attn_qkv takes the attn_v branch).
MIX_RULES: tuple[Rule, ...] = (
    # output.weight (and a tied token_embd.weight): Q6_K, or Q8_0 when the base type's block does not fit
    Rule(Role.OUTPUT, _QUANTIZED | _IQ_ALL, rows_off_base_block, T.Q8_0),
    Rule(Role.OUTPUT, _IQ_LOW_OUTPUT, always, T.Q5_K),
    Rule(Role.OUTPUT, (_QUANTIZED | _IQ_ALL) - {"Q8_0"}, always, T.Q6_K),
    # token_embd.weight when untied (no --token-embedding-type)
    Rule(Role.TOKEN_EMBD, _IQ_12 - _IQ_2SM, always, T.Q2_K),
    Rule(Role.TOKEN_EMBD, _IQ_2SM | {"IQ3_XXS"}, always, T.IQ3_S),
    # attn_v: the tensor most sensitive to quantization
    Rule(Role.ATTN_V, _IQ_12, gqa_at_least_4, T.Q4_K),
    Rule(Role.ATTN_V, _IQ_2SM, always, T.IQ3_S),
    Rule(Role.ATTN_V, _IQ_12, always, T.Q2_K),
    Rule(Role.ATTN_V, _mixes("IQ3_XXS"), gqa_at_least_4, T.Q4_K),
    Rule(Role.ATTN_V, _mixes("IQ3_XXS"), without_imatrix, T.IQ3_S),
    Rule(Role.ATTN_V, _mixes("IQ3_XS", "IQ3_S"), gqa_at_least_4, T.Q4_K),
    Rule(Role.ATTN_V, _mixes("IQ3_M"), always, T.Q4_K),
    Rule(Role.ATTN_V, _IQ4, gqa_at_least_4, T.Q5_K),
    Rule(Role.ATTN_V, _K_Q2, gqa_at_least_4, T.Q4_K),
    Rule(Role.ATTN_V, _K_Q2, always, T.Q3_K),
    Rule(Role.ATTN_V, _K_Q2S, gqa_at_least_4, T.Q4_K),
    Rule(Role.ATTN_V, _K_Q3M, first_two, T.Q5_K),
    Rule(Role.ATTN_V, _K_Q3M, always, T.Q4_K),
    Rule(Role.ATTN_V, _K_Q3L, always, T.Q5_K),
    Rule(Role.ATTN_V, _mixes("Q4_K_M", "Q5_K_M"), more_bits, T.Q6_K),
    Rule(Role.ATTN_V, _K_Q4S, first_four, T.Q5_K),
    # ffn_down
    Rule(Role.FFN_DOWN, _IQ_2SM, first_eighth, T.IQ3_S),
    Rule(Role.FFN_DOWN, _IQ_12 - _IQ_2SM, first_eighth, T.Q2_K),
    Rule(Role.FFN_DOWN, _mixes("IQ3_XXS"), first_eighth_without_imatrix, T.Q4_K),
    Rule(Role.FFN_DOWN, _mixes("IQ3_XXS"), without_imatrix, T.Q3_K),
    Rule(Role.FFN_DOWN, _mixes("IQ3_M"), first_eighth, T.Q4_K),
    Rule(Role.FFN_DOWN, _IQ4, first_eighth_without_imatrix, T.Q5_K),
    Rule(Role.FFN_DOWN, _K_Q2, always, T.Q3_K),
    Rule(Role.FFN_DOWN, _K_Q2S, first_eighth, T.Q4_K),
    Rule(Role.FFN_DOWN, _K_Q3M, first_sixteenth, T.Q5_K),
    Rule(Role.FFN_DOWN, _K_Q3M, always, T.Q4_K),  # Falcon keeps Q3_K outside use_more_bits layers
    Rule(Role.FFN_DOWN, _K_Q3L, always, T.Q5_K),  # Falcon: Q4_K
    Rule(Role.FFN_DOWN, _mixes("Q4_K_M", "Q5_K_M"), more_bits, T.Q6_K),
    Rule(Role.FFN_DOWN, _K_Q4S, first_eighth, T.Q5_K),  # not for Falcon
    Rule(Role.FFN_DOWN, _mixes("Q4_0"), first_eighth_with_imatrix, T.Q4_1),
    Rule(Role.FFN_DOWN, _mixes("Q5_0"), first_eighth_with_imatrix, T.Q5_1),
    # attn_output (non-Falcon, not 8 experts)
    Rule(Role.ATTN_OUTPUT, _K_Q2, always, T.Q3_K),
    Rule(Role.ATTN_OUTPUT, _K_Q3M, always, T.Q4_K),
    Rule(Role.ATTN_OUTPUT, _K_Q3L, always, T.Q5_K),
    Rule(Role.ATTN_OUTPUT, _mixes("IQ1_S", "IQ1_M"), always, T.IQ2_XXS),
    Rule(Role.ATTN_OUTPUT, _IQ_2SM | {"IQ3_XXS"}, always, T.IQ3_S),
    Rule(Role.ATTN_OUTPUT, _mixes("IQ3_M"), always, T.Q4_K),
    # attn_q / attn_k: only the 3-bit i-quant mixes move them
    Rule(Role.ATTN_Q, _mixes("IQ3_XS"), always, T.IQ3_XXS),
    Rule(Role.ATTN_Q, _mixes("IQ3_XXS"), always, T.IQ2_S),
    Rule(Role.ATTN_K, _mixes("IQ3_XS"), always, T.IQ3_XXS),
    Rule(Role.ATTN_K, _mixes("IQ3_XXS"), always, T.IQ2_S),
    # ffn_gate / ffn_up: IQ3_XS's middle layers
    Rule(Role.FFN_GATE, _mixes("IQ3_XS"), middle_layers, T.IQ3_XXS),
    Rule(Role.FFN_UP, _mixes("IQ3_XS"), middle_layers, T.IQ3_XXS),
)


def is_70b(arch: str, n_layer: int, n_head: int, n_head_kv: int) -> bool:
    """Whether llama.cpp's hparams loader sizes the model as "70B" (``LLM_TYPE_70B``): qwen2 with 80 layers,
    llama with 80 layers and grouped-query attention; never qwen3.

    Example:
        >>> is_70b("qwen2", 80, 64, 8), is_70b("llama", 80, 64, 64), is_70b("qwen3", 80, 64, 8)
        (True, False, False)
    """
    test = get_arch(arch).llama_quantize_70b  # the architecture's description knows its size classes
    return test is not None and test(n_layer, n_head, n_head_kv)


@dataclass(frozen=True)
class Bump:
    """After the mix table: for models of this size, a role's type in ``from_types`` becomes ``to``."""

    role: Role
    applies: Callable[[str, int, int, int], bool]  # (arch, n_layer, n_head, n_head_kv)
    from_types: frozenset[GGMLQuantizationType]
    to: GGMLQuantizationType
    except_mixes: frozenset[str] = frozenset()


#: 70B models share each attn_v among 8 heads, so attn_v is small and llama.cpp gives it more bits.
#: (The IQ1/IQ2 mixes decide attn_v in their own branch, which returns before the bump.)
SIZE_BUMPS: tuple[Bump, ...] = (Bump(Role.ATTN_V, is_70b, frozenset({T.Q3_K, T.Q4_K}), T.Q5_K, _IQ_12),)

#: Roles whose running counter feeds the conditions, and what it counts against (see :class:`Where`).
COUNTED_ROLES: frozenset[Role] = frozenset({Role.ATTN_V, Role.FFN_DOWN, Role.FFN_GATE, Role.FFN_UP})

#: ``tensor_type_fallback``: a type whose block does not divide the row length moves to a 32-block type (each
#: record's ``fallback``). Any type with a block of 32 or less that does not fit (and the fallback when it does not
#: fit either) -> F16.
FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    qt.ggml_type: qt.fallback for qt in KNOWN_TYPES.values() if qt.fallback is not None}

#: Types llama-quantize will not produce without an importance matrix (the records' ``needs_imatrix``):
#: ``tensor_requires_imatrix`` refuses them for every tensor but token_embd.weight and output.weight, and for those
#: two the IQ2_XXS, IQ2_XS and IQ1_S quantizers abort on the missing weights instead. l1quant refuses them for
#: every tensor.
IMATRIX_TYPES = frozenset(qt.ggml_type for qt in KNOWN_TYPES.values() if qt.needs_imatrix)

#: Tensors ``tensor_requires_imatrix`` never asks an importance matrix for (llama-imatrix collects none for them).
IMATRIX_EXEMPT = frozenset({"token_embd.weight", "per_layer_token_embd.weight", "output.weight"})


def requires_imatrix(name: str, t: GGMLQuantizationType, mix: Mix) -> bool:
    """Whether llama-quantize needs importance weights to quantize tensor ``name`` to ``t`` in a ``mix`` file
    (``tensor_requires_imatrix``): the i-quant types of :data:`IMATRIX_TYPES`, and Q2_K inside a Q2_K_S file;
    never the token embeddings or ``output.weight``.

    Example:
        >>> requires_imatrix("blk.0.ffn_up.weight", T.Q2_K, get_mix("Q2_K_S"))
        True
        >>> requires_imatrix("blk.0.ffn_up.weight", T.Q2_K, get_mix("Q2_K")), requires_imatrix("output.weight",
        ...     T.Q2_K, get_mix("Q2_K_S"))
        (False, False)
    """
    if name in IMATRIX_EXEMPT:
        return False
    return t in IMATRIX_TYPES or (t is T.Q2_K and mix.name == "Q2_K_S")


def fallback_type(wanted: GGMLQuantizationType, row_length: int) -> GGMLQuantizationType:
    """The type llama-quantize really uses for ``wanted`` on rows of ``row_length`` values.

    Example:
        >>> fallback_type(T.Q4_K, 96).name, fallback_type(T.Q6_K, 200).name, fallback_type(T.Q4_K, 512).name
        ('Q5_0', 'F16', 'Q4_K')
    """
    if row_length % block_size(wanted) == 0:
        return wanted
    record = describe(wanted)
    if record is not None and record.fallback is not None:
        used = record.fallback
    elif block_size(wanted) <= 32:
        used = wanted  # already a 32-block type: nothing smaller to move to, so F16 below
    else:
        raise ConfigError(f"{wanted.name} needs rows of a multiple of {block_size(wanted)} values and llama-quantize "
                          "defines no fallback for it")
    return used if row_length % block_size(used) == 0 else T.F16


# ----------------------------------------------------------------------------------------------------------------
# Assignment
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeAssignment:
    """What llama-quantize does with each tensor.

    ``types[name]`` is the output type, or None when llama-quantize leaves the tensor alone (it is written with
    its input type and bytes; see :func:`is_quantizable`). ``order`` is llama-quantize's processing order, which is
    the tensor order of its output file. ``fallbacks`` maps each tensor whose row length did not fit the chosen
    type to (chosen, used); ``warnings`` says the same in one line per tensor, for the log.

    Example:
        >>> a = assign_types([("blk.0.ffn_down.weight", (96, 64))], "Q4_K_M", n_layer=1, n_head=2, n_head_kv=1,
        ...                  arch="qwen2")
        >>> a.output_type("blk.0.ffn_down.weight", T.BF16).name, a.fallbacks["blk.0.ffn_down.weight"][0].name
        ('Q8_0', 'Q6_K')
        >>> a.warnings[0]
        'blk.0.ffn_down.weight: row length 96 is not a multiple of 256 (Q6_K): falling back to Q8_0'
    """

    types: dict[str, GGMLQuantizationType | None]
    order: tuple[str, ...]
    fallbacks: dict[str, tuple[GGMLQuantizationType, GGMLQuantizationType]]
    warnings: tuple[str, ...]
    needs_imatrix: frozenset[str] = frozenset()

    def output_type(self, name: str, input_type: GGMLQuantizationType) -> GGMLQuantizationType:
        """The type ``name`` has in llama-quantize's output, given its type in the input."""
        t = self.types[name]
        return input_type if t is None else t


def _check_fits(name: str, row_length: int, t: GGMLQuantizationType, flag: str) -> GGMLQuantizationType:
    # explicit per-tensor types skip the fallback; llama-quantize then fails validating the row it wrote
    if row_length % block_size(t) != 0:
        raise ConfigError(f"{name}: {flag} {t.name} needs rows of a multiple of {block_size(t)} values, "
                          f"the tensor's rows have {row_length} (llama-quantize fails on it)")
    return t


def assign_types(
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    mix: str | int | Mix,
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    arch: str,
    options: QuantOptions | None = None,
    has_imatrix: bool = False,
) -> TypeAssignment:
    """Each tensor's type in llama-quantize's output for ``mix`` (``llama_tensor_get_type``).

    ``tensors`` are (GGUF name, ggml-order shape: ne0 = row length first) of *every* tensor in the input file, in
    any order: they are visited in llama-quantize's order (:func:`quantize_order`: non-``blk.`` names sorted, then
    layer by layer, names sorted), which matters because the attn_v/ffn_down rules count tensors. ``n_layer``,
    ``n_head`` and ``n_head_kv`` are the GGUF's ``{arch}.block_count``, ``attention.head_count`` and
    ``attention.head_count_kv``. The embeddings count as tied when there is no ``output.weight``. ``has_imatrix``:
    the file is quantized with an importance matrix of at least one entry (changes Q4_0/Q5_0's first ffn_down
    layers, and lets Q2_K_S through).

    Returns a :class:`TypeAssignment` (None for the tensors kept as they are). Raises :class:`ConfigError` where
    llama-quantize would fail: an unknown or unsupported mix or architecture, an explicit output/token-embedding
    type whose block does not divide the rows, or, without ``has_imatrix``, a tensor whose type needs an
    importance matrix (:func:`requires_imatrix`: Q2_K in Q2_K_S, :data:`IMATRIX_TYPES`).

    Example:
        >>> shapes = [("token_embd.weight", (256, 1000))] + [(f"blk.{i}.ffn_down.weight", (512, 256)) for i in range(8)]
        >>> a = assign_types(shapes, "Q4_K_M", n_layer=8, n_head=4, n_head_kv=2, arch="qwen2")
        >>> [a.types[f"blk.{i}.ffn_down.weight"].name for i in range(8)]
        ['Q6_K', 'Q4_K', 'Q4_K', 'Q6_K', 'Q4_K', 'Q4_K', 'Q6_K', 'Q6_K']
        >>> a.types["token_embd.weight"].name     # tied: treated like output.weight
        'Q6_K'
    """
    m = get_mix(mix)
    opts = options or QuantOptions()
    if arch not in ARCHS:
        raise ConfigError(f"architecture {clip(arch)} is not one of {', '.join(ARCHS)}")
    for what, v in (("n_layer", n_layer), ("n_head", n_head), ("n_head_kv", n_head_kv)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{what} must be a positive integer, found {clip(v)}")
    shapes = dict(tensors)
    if len(shapes) != len(tensors):
        raise ConfigError("tensor names must be unique")
    order = tuple(quantize_order(shapes))
    roles = {name: tensor_role(name) for name in order}
    tied = "output.weight" not in shapes
    n_gqa = n_head // n_head_kv
    bumps = [b for b in SIZE_BUMPS if b.applies(arch, n_layer, n_head, n_head_kv) and m.name not in b.except_mixes]
    # llama.cpp counts attn_v-like tensors by name over the whole file, and uses the layer count for ffn_down
    # (ffn_gate and ffn_up likewise: n_ffn_gate = n_ffn_up = n_layer)
    count = {Role.ATTN_V: sum(r is Role.ATTN_V for r in roles.values()), Role.FFN_DOWN: n_layer,
             Role.FFN_GATE: n_layer, Role.FFN_UP: n_layer}
    index = dict.fromkeys(COUNTED_ROLES, 0)

    types: dict[str, GGMLQuantizationType | None] = {}
    fallbacks: dict[str, tuple[GGMLQuantizationType, GGMLQuantizationType]] = {}
    warnings: list[str] = []
    needs: set[str] = set()
    output_type, embedding_type = _as_type(opts.output_tensor_type), _as_type(opts.token_embedding_type)
    for name in order:
        shape, role = shapes[name], roles[name]
        if not is_quantizable(name, shape, opts):
            types[name] = None
            continue
        row = shape[0]
        if embedding_type is not None and role is Role.TOKEN_EMBD:
            used = _check_fits(name, row, embedding_type, "token_embedding_type")
        elif output_type is not None and role is Role.OUTPUT:
            used = _check_fits(name, row, output_type, "output_tensor_type")
        elif not m.quantized:
            used = m.base
        else:
            wanted = opts.override_for(name)
            if wanted is None and opts.pure:
                wanted = m.base
            if wanted is None:
                where = Where(index.get(role, 0), count.get(role, 0), n_gqa, row, m.base, has_imatrix)
                wanted = _from_table(m, role, tied, output_type, where)
                wanted = next((b.to for b in bumps if b.role is role and wanted in b.from_types), wanted)
                if role in COUNTED_ROLES:
                    index[role] += 1  # only tensors decided by the table advance the counters
            used = fallback_type(wanted, row)
            if used is not wanted:
                fallbacks[name] = (wanted, used)
                warnings.append(f"{name}: row length {row} is not a multiple of {block_size(wanted)} "
                                f"({wanted.name}): falling back to {used.name}")
        if requires_imatrix(name, used, m):
            if not has_imatrix:
                # llama-quantize's "this quantization requires an imatrix!", naming the first such tensor
                raise ConfigError(f"quant type {m.name} needs an importance matrix ({name} gets {used.name}): "
                                  "pass --imatrix FILE (or --calibration TEXT to compute one)")
            needs.add(name)
        elif used in IMATRIX_TYPES and not has_imatrix:
            # llama-quantize exempts token_embd/output from its check, but their i-quant quantizers then abort
            raise ConfigError(f"{name}: type {used.name} needs an importance matrix: pass --imatrix FILE "
                              "(or --calibration TEXT to compute one)")
        types[name] = used
    return TypeAssignment(types=types, order=order, fallbacks=fallbacks, warnings=tuple(warnings),
                          needs_imatrix=frozenset(needs))


def _as_type(v: GGMLQuantizationType | str | None) -> GGMLQuantizationType | None:
    return None if v is None else parse_ggml_type(v)


def _from_table(m: Mix, role: Role, tied: bool, output_type: GGMLQuantizationType | None,
                where: Where) -> GGMLQuantizationType:
    # a tied token_embd.weight is also the output matrix, so it follows the output rules (and output_tensor_type)
    if role is Role.TOKEN_EMBD and tied:
        role = Role.OUTPUT
        if output_type is not None:
            return output_type
    for rule in MIX_RULES:
        if rule.role is role and m.name in rule.mixes and rule.when(where):
            return rule.type
    return m.base


def quant_options(
    *,
    pure: bool = False,
    output_tensor_type: GGMLQuantizationType | str | None = None,
    token_embedding_type: GGMLQuantizationType | str | None = None,
    tensor_types: Sequence[tuple[str, GGMLQuantizationType | str]] | Sequence[str] = (),
    leave_output_tensor: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    include_weights: Sequence[str] = (),
    exclude_weights: Sequence[str] = (),
    tensor_type_file: str | os.PathLike[str] | None = None,
) -> QuantOptions | None:
    """:class:`QuantOptions` from llama-quantize's flags as the library and CLI take them, or None when none is set.

    ``tensor_types`` items are ``"REGEX=TYPE"`` strings (as ``--tensor-type`` spells them; the last ``=`` splits)
    or (regex, type) pairs. ``tensor_type_file`` (``--tensor-type-file``): a file of such items separated by
    whitespace (llama-quantize's ``parse_tensor_type_file``), appended after ``tensor_types`` (as llama-quantize
    with the file option given after the ``--tensor-type`` ones). Raises :class:`ConfigError` on an item without
    ``=``, an unknown type name or an unreadable file.

    Example:
        >>> quant_options() is None
        True
        >>> quant_options(tensor_types=["attn_v=q8_0"]).tensor_types[0][1].name
        'Q8_0'
    """
    pairs: list[tuple[str, GGMLQuantizationType | str]] = []
    if tensor_type_file is not None:
        tensor_types = [*tensor_types, *_read_tensor_type_file(tensor_type_file)]
    for item in tensor_types:
        if isinstance(item, str):
            pattern, sep, type_name = item.rpartition("=")
            if not sep or not pattern or not type_name:
                raise ConfigError(f"--tensor-type {clip(item)}: expected REGEX=TYPE, e.g. attn_v=q8_0")
            pairs.append((pattern, type_name))
        else:
            pairs.append((item[0], item[1]))
    opts = QuantOptions(pure=pure, output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type,
                        tensor_types=pairs, leave_output_tensor=leave_output_tensor, imatrix=imatrix,
                        include_weights=include_weights, exclude_weights=exclude_weights)
    return None if opts == QuantOptions() else opts


def _read_tensor_type_file(path: str | os.PathLike[str]) -> list[str]:
    # whitespace-separated items, as quantize.cpp reads them with ``file >> arg``
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--tensor-type-file {clip(os.fspath(path))}: cannot read it "
                          f"({getattr(e, 'strerror', None) or e.__class__.__name__})") from None

"""What a user's ``--type`` asks for, and what a GGUF file is: the file types, in one place.

A *quant type* is one record in :mod:`l1quant.kernels` (block layout, kernels, fallback, noise model, importance
matrix...). A *file type* is what ``general.file_type`` names, llama.cpp's ``llama_ftype``:

* the converter's types (``convert_hf_to_gguf.py --outtype``: the records with ``outtype``, f32/f16/bf16/q8_0):
  every matrix gets the type, by the converter's rule;
* llama-quantize's mixes (:data:`MIXES`, :class:`Mix`: Q4_K_M & co., and its F32/F16/BF16/Q8_0), each tensor's
  type by the mix rule (:mod:`l1quant.conversion.mixes` holds the per-tensor rule, as data), and its aliases
  (:data:`ALIASES`).

:func:`resolve_type` turns what a user typed into a record (a converter :class:`~l1quant.kernels.QuantType`, a
:class:`Mix`, or None for ``auto``), once per command; :func:`file_type_of` recognises what a file is (a
:class:`FileType`), once per ``verify``. Everything else receives these objects. This module imports neither
``conversion`` nor ``check``: both import it.

Example:
    >>> resolve_type("q4_k").name, resolve_type("q8_0").name, resolve_type("q8_0", as_mix=True).file_type
    ('Q4_K_M', 'Q8_0', 7)
    >>> resolve_type("auto") is None
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import gguf
from gguf.constants import GGMLQuantizationType, LlamaFileType

from l1quant.errors import ConfigError, clip
from l1quant.kernels import QUANT_TYPES, QuantType, describe, get_quant_type

__all__ = [
    "ALIASES",
    "MIXES",
    "NEEDS_IMATRIX",
    "NOT_SERVED",
    "FileType",
    "Mix",
    "convert_types",
    "file_type_of",
    "get_mix",
    "out_types",
    "resolve_type",
]

T = GGMLQuantizationType
_FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})

#: The namespace of the keys llama-quantize appends after ``general.file_type`` in what l1quant writes (its
#: ``--override-kv``: ``quantize.imatrix.*`` with an importance matrix, ``quantize.target*`` for type auto).
QUANTIZE_KEY_PREFIX = "quantize."


@dataclass(frozen=True)
class Mix:
    """One llama-quantize type argument: its name, the ``general.file_type`` it writes (the llama ftype number), its
    base GGML type (``llama_ftype_get_default_type``: what a tensor gets when no rule says otherwise), and the mean
    KL divergence limit (nats/token) of verify's logit check for a file of this type (:data:`MIXES` says how
    they were measured).

    Example:
        >>> m = get_mix("Q4_K_M")
        >>> m.name, m.file_type, m.base.name, m.quantized, m.quant_type.block_size
        ('Q4_K_M', 15, 'Q4_K', True, 256)
    """

    name: str
    file_type: int
    base: GGMLQuantizationType
    logit_kld_limit: float = 1e-2

    @property
    def quantized(self) -> bool:
        """False for F32/F16/BF16: llama-quantize then skips every rule, override and fallback (step 4)."""
        return self.base not in _FLOAT_TYPES

    @property
    def quant_type(self) -> QuantType:
        """The base type's record."""
        return get_quant_type(self.base.name)


def _mix(name: str, base: GGMLQuantizationType, logit_kld_limit: float) -> Mix:
    ftype = LlamaFileType.ALL_F32 if name == "F32" else LlamaFileType[f"MOSTLY_{name}"]
    return Mix(name, int(ftype), base, logit_kld_limit)


#: The mixes l1quant serves, by llama-quantize's name (``QUANT_OPTIONS`` in tools/quantize/quantize.cpp), with
#: verify's logit KLD limit. Measured on random-weight models (real weights were not available): Q8_0 costs ~1e-6 on
#: the tiny test model and 7e-4 on the L1-shaped one (128 tokens); F32 and BF16 from a bf16 source are exact (0),
#: F16 nearly so. One layer's ffn_down scaled x64 gives 1.8e-2 on the tiny model (>1000x its Q8_0 value). The
#: limits sit ~10x above each type's expected cost; the per-tensor checks are the precise ones, this is the
#: end-to-end net. The quantized mixes, measured the same way (tiny hidden-256 model, 256 tokens; llama.cpp's own
#: logits agree within 2%): Q6_K 1.0e-4, Q5_K_M 2.9e-4, Q5_0 4.7e-4, Q4_K_M 1.1e-3, Q4_1 1.3e-3, Q4_0 1.7e-3,
#: Q3_K_M 2.0e-3, Q3_K_S 4.4e-3, Q2_K 7.1e-3. The limits sit 10-25x above; for the 2/3-bit mixes they exceed a
#: broken layer's 1.8e-2, so there the per-tensor byte and noise checks are the net. The converter's types share
#: the limit of the mix of the same name.
MIXES: dict[str, Mix] = {m.name: m for m in (
    _mix("Q4_0", T.Q4_0, 2e-2), _mix("Q4_1", T.Q4_1, 2e-2), _mix("Q5_0", T.Q5_0, 5e-3), _mix("Q5_1", T.Q5_1, 5e-3),
    _mix("Q2_K", T.Q2_K, 1e-1), _mix("Q2_K_S", T.Q2_K, 1e-1),
    _mix("Q3_K_S", T.Q3_K, 5e-2), _mix("Q3_K_M", T.Q3_K, 5e-2), _mix("Q3_K_L", T.Q3_K, 5e-2),
    _mix("Q4_K_S", T.Q4_K, 1e-2), _mix("Q4_K_M", T.Q4_K, 1e-2),
    _mix("Q5_K_S", T.Q5_K, 5e-3), _mix("Q5_K_M", T.Q5_K, 5e-3),
    _mix("Q6_K", T.Q6_K, 2e-3), _mix("Q8_0", T.Q8_0, 1e-2),
    _mix("F16", T.F16, 1e-3), _mix("BF16", T.BF16, 1e-3), _mix("F32", T.F32, 1e-4),
    # the i-quant mixes llama-quantize makes without an importance matrix (base types: llama_ftype_get_default_type;
    # IQ3_M shares IQ3_S's base, its rule gives attn_v/attn_output/early ffn_down Q4_K). Limits: those of the K mix
    # of the same bits. Measured as above (verify --logits, random hidden-256 9-layer model, r1 tokenizer, 256
    # tokens; Q4_K_M 1.5e-3 and Q3_K_M 3.1e-3 on it): IQ4_NL 1.8e-3, IQ4_XS 1.7e-3, IQ3_M 2.9e-3, IQ3_S 7.8e-3
    # (its attn_v stays IQ3_S at GQA 2), so 6-17x under the limits.
    _mix("IQ4_NL", T.IQ4_NL, 1e-2), _mix("IQ4_XS", T.IQ4_XS, 1e-2),
    _mix("IQ3_S", T.IQ3_S, 5e-2), _mix("IQ3_M", T.IQ3_S, 5e-2),
    # the mixes llama-quantize makes only with an importance matrix (NEEDS_IMATRIX; IQ2_S's base is IQ2_XS,
    # IQ2_M's IQ2_S, IQ3_XS's IQ3_S). Measured the same way, quantized with an importance matrix of that model
    # (l1quant's, over the bundled calibration text): IQ3_XS 5.4e-3, IQ3_XXS 6.4e-3, IQ2_S 6.1e-3, IQ2_M 7.3e-3,
    # IQ2_XS 1.9e-2, IQ2_XXS 2.2e-2, IQ1_M 2.2e-2, IQ1_S 2.7e-2 (random weights: only the order of the families
    # means anything). The limits sit 8-16x above.
    _mix("IQ3_XS", T.IQ3_S, 5e-2), _mix("IQ3_XXS", T.IQ3_XXS, 5e-2),
    _mix("IQ2_M", T.IQ2_S, 1e-1), _mix("IQ2_S", T.IQ2_XS, 1e-1),
    _mix("IQ2_XS", T.IQ2_XS, 2e-1), _mix("IQ2_XXS", T.IQ2_XXS, 2e-1),
    _mix("IQ1_M", T.IQ1_M, 2e-1), _mix("IQ1_S", T.IQ1_S, 3e-1),
)}

#: llama-quantize's own aliases (entries "alias for ..." in ``QUANT_OPTIONS``): same ftype, same file.
ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

#: The served mixes llama-quantize refuses without an importance matrix ("this quantization requires an
#: imatrix!", from ``tensor_requires_imatrix``), and why: some tensor other than token_embd/output gets a type
#: that needs one (:attr:`~l1quant.kernels.QuantType.needs_imatrix`: IQ1_S/IQ1_M/IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS), or
#: Q2_K inside a Q2_K_S file. :func:`l1quant.conversion.mixes.assign_types` refuses them without an imatrix, naming
#: the first such tensor, --imatrix and --calibration.
NEEDS_IMATRIX: dict[str, str] = {
    **{mix: f"its base type {MIXES[mix].base.name} needs an importance matrix"
       for mix in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS")
       if (d := describe(MIXES[mix].base)) is not None and d.needs_imatrix},
    "IQ3_XS": "it puts attn_q/attn_k (and middle ffn_gate/ffn_up) in IQ3_XXS, which needs an importance matrix",
    "Q2_K_S": "llama-quantize requires one for its Q2_K tensors",
}

#: Other names llama-quantize accepts that l1quant does not serve (no kernels, or not a mix: COPY).
NOT_SERVED = ("Q1_0", "Q2_0", "MXFP4_MOE", "TQ1_0", "TQ2_0", "COPY")


def get_mix(name: str | int | Mix) -> Mix:
    """The mix called ``name`` (any case; ``Q4_K`` and the other aliases; or llama-quantize's ftype number).

    Raises :class:`ConfigError` (one line) for unknown names and for the ones l1quant does not serve
    (:data:`NOT_SERVED`). The mixes of :data:`NEEDS_IMATRIX` are returned: the plan refuses them without an
    importance matrix.

    Example:
        >>> get_mix("q4_k").name, get_mix(15).name
        ('Q4_K_M', 'Q4_K_M')
        >>> get_mix("IQ2_M").file_type, get_mix("IQ2_M").base.name
        (29, 'IQ2_S')
    """
    if isinstance(name, Mix):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        # like llama-quantize, which also takes the ftype number
        for m in MIXES.values():
            if m.file_type == name:
                return m
        raise ConfigError(f"quant type {name} is not a known llama ftype number; expected one of "
                          f"{', '.join(f'{m.file_type} ({m.name})' for m in MIXES.values())}")
    if not isinstance(name, str):
        raise ConfigError(f"quant type must be a name like 'Q4_K_M', found {clip(name)}")
    key = ALIASES.get(name.upper(), name.upper())
    if key in MIXES:
        return MIXES[key]
    if key in NOT_SERVED:
        raise ConfigError(f"quant type {clip(name)} is not supported by l1quant; "
                          f"expected one of {', '.join([*MIXES, *ALIASES])}")
    raise ConfigError(f"unknown quant type {clip(name)}: expected one of {', '.join([*MIXES, *ALIASES])}")


# ----------------------------------------------------------------------------------------------------------------
# What a user types
# ----------------------------------------------------------------------------------------------------------------


def convert_types() -> tuple[str, ...]:
    """The converter's own ``--type`` values, lower case: ``auto`` and every record with ``outtype``.

    Example:
        >>> convert_types()
        ('auto', 'f32', 'f16', 'bf16', 'q8_0')
    """
    return ("auto", *(qt.name.lower() for qt in QUANT_TYPES.values() if qt.outtype))


def out_types() -> tuple[str, ...]:
    """Every ``--type`` value, lower case as typed: the converter's types, then llama-quantize's mixes (each alias
    after the mixes it stands among).

    Example:
        >>> out_types()[5:12]
        ('q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q2_k_s', 'q3_k_s')
    """
    conv = convert_types()
    names: list[str] = []
    mixes = list(MIXES)
    for i, m in enumerate(mixes):
        if m.lower() not in conv:
            names.append(m.lower())
        # an alias goes after the last mix of its family (q3_k after q3_k_l)
        names += [a.lower() for a in ALIASES if m.startswith(a + "_")
                  and not any(n.startswith(a + "_") for n in mixes[i + 1:])]
    return conv + tuple(names)


def resolve_type(requested: str | Mix | QuantType, *, per_tensor: bool = False,
                 as_mix: bool = False) -> Mix | QuantType | None:
    """What ``--type requested`` asks for: a converter type's record (the converter's rule), a :class:`Mix`
    (llama-quantize's rule), or None for ``auto`` (bf16/f16 from the checkpoint, decided by the plan).

    ``per_tensor`` (llama-quantize's per-tensor flags were given) and ``as_mix`` (the layout of a
    llama-quantize file) apply a converter type as the mix of that name. Records and mixes pass through.
    Raises :class:`ConfigError` (one line) for a name that is not a ``--type`` value, for ``auto`` with
    per-tensor flags, and for names :func:`get_mix` refuses.

    Example:
        >>> resolve_type("Q6_K").file_type, resolve_type("f16", per_tensor=True).name
        (18, 'F16')
        >>> resolve_type("iq4_xs").file_type
        30
        >>> resolve_type("iq2_m").name
        'IQ2_M'
    """
    if isinstance(requested, Mix):
        return requested
    if isinstance(requested, QuantType):
        return get_mix(requested.name) if per_tensor or as_mix else requested
    req = str(requested).lower()
    if req not in out_types():
        raise ConfigError(f"--type {clip(requested)} is not one of {', '.join(out_types())}")
    if req == "auto":
        if per_tensor:
            raise ConfigError("--type auto cannot be combined with per-tensor type options; name the type")
        return None
    if req in convert_types() and not (per_tensor or as_mix):
        return get_quant_type(req)
    return get_mix(req)


# ----------------------------------------------------------------------------------------------------------------
# What a file is
# ----------------------------------------------------------------------------------------------------------------


class _TensorLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def ggml_type(self) -> GGMLQuantizationType: ...


class _FileLike(Protocol):
    @property
    def kv(self) -> Mapping[str, object]: ...

    @property
    def tensors(self) -> Iterable[_TensorLike]: ...


@dataclass(frozen=True)
class FileType:
    """What a GGUF file is, from ``general.file_type``, its key position and its tensor types.

    ``mix``: the file is laid out as llama-quantize writes it (``general.file_type`` is the last key) and names a
    served mix. ``converter``: otherwise, ``general.file_type`` names a converter type (the record). ``value`` is
    the raw ``general.file_type`` (None when absent); ``tensor_type`` the type name of ``token_embd.weight`` (what a
    file says about itself when ``general.file_type`` names nothing l1quant knows).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> ft = file_type_of(NS(kv={"general.file_type": 15}, tensors=[]))
        >>> ft.mix.name, ft.name, ft.logit_kld_limit
        ('Q4_K_M', 'Q4_K_M', 0.01)
    """

    mix: Mix | None
    converter: QuantType | None
    value: object
    tensor_type: str | None

    @property
    def name(self) -> str | None:
        """The file's type as llama.cpp names it (``Q4_K_M``, ``Q8_0``...), or None when it names none."""
        if self.mix is not None:
            return self.mix.name
        return None if self.converter is None else self.converter.name

    @property
    def label(self) -> str | None:
        """:attr:`name`, else the type of ``token_embd.weight`` (a report's best guess)."""
        return self.name or self.tensor_type

    @property
    def request(self) -> Mix | QuantType | str:
        """What ``--type`` rebuilds the file from its source (:func:`resolve_type` takes it)."""
        return self.mix or self.converter or (self.tensor_type or "auto").lower()

    @property
    def logit_kld_limit(self) -> float:
        """Verify's mean KLD limit: the mix's of this name (F32's when the file names no type; Q8_0's for a type
        that has none of its own)."""
        m = MIXES.get(self.label or "F32")
        return (m or MIXES["Q8_0"]).logit_kld_limit


def file_type_of(gf: _FileLike) -> FileType:
    """Recognise ``gf`` (anything with the reader's ``kv`` mapping, in file order, and ``tensors``).

    A llama-quantize file ends with ``general.file_type`` (it appends it, then only its ``--override-kv`` keys:
    ``quantize.imatrix.*`` with an importance matrix, ``quantize.target*`` for a target-size file; the converter
    writes it before the tokenizer keys): then the number is looked up among the mixes. Otherwise among the
    converter types.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> ft = file_type_of(NS(kv={"general.file_type": 7, "tokenizer.ggml.model": "gpt2"}, tensors=[]))
        >>> ft.mix, ft.converter.name
        (None, 'Q8_0')
    """
    key = gguf.Keys.General.FILE_TYPE
    keys = [k for k in gf.kv if not k.startswith(QUANTIZE_KEY_PREFIX)]
    value = gf.kv.get(key)
    mix = None
    if keys and keys[-1] == key and isinstance(value, int) and not isinstance(value, bool):
        try:
            mix = get_mix(value)
        except ConfigError:
            mix = None
    converter = None
    if mix is None:
        converter = next((qt for qt in QUANT_TYPES.values() if qt.outtype and qt.file_type == value), None)
    tensor_type = next((t.ggml_type.name for t in gf.tensors if t.name == "token_embd.weight"), None)
    return FileType(mix, converter, value, tensor_type)

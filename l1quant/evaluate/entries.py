"""``compare --types``: what each entry asks for. An entry is a named type or mix (``q4_k_m``), a hand mix made
with llama-quantize's per-tensor flags (``q4_k_m+token_embd=q4_0+output=q5_0``), or a target-size file
(``auto@4.0bpw``, ``auto@400M``, ``auto@q3_k_m``).

The grammar (case-insensitive type names; entries separated by commas outside brackets, so a pattern such as
``blk\\.[0-9]{1,2}\\.attn_v`` keeps its comma)::

    ENTRY    := TYPE ("+" OVERRIDE)*  |  "auto@" TARGET
    OVERRIDE := "token_embd=" TYPE     -> llama-quantize --token-embedding-type TYPE
              | "output=" TYPE         -> --output-tensor-type TYPE
              | "pure"                 -> --pure
              | REGEX "=" TYPE         -> --tensor-type REGEX=TYPE (in the order written; first match wins)
    TARGET   := N "bpw"                -> target_bpw = N
              | SIZE                   -> target_size (bytes; K/M/G or KiB/MiB/GiB: l1quant.units.parse_size)
              | ENTRY                  -> target_size = the byte size of that entry's file, made in the same run

An override ends at ``=TYPE`` followed by ``+`` or the end, so a REGEX may hold ``+`` (``blk\\.\\d+\\.ffn_down``)
but not ``=``. ``auto@`` takes no overrides of its own: everything after ``@`` is the target (``auto@q4_k_m+output=
q5_0`` is the size of that hand mix). Table names are canonical: type names upper-cased (``Q4_K_M+token_embd=Q4_0``),
the target as written (``auto@4.0bpw``, ``auto@Q3_K_M``).

Example:
    >>> [e.name for e in parse_entries("bf16,q4_k_m+token_embd=q4_0+output=q5_0,auto@4.0bpw,auto@q3_k_m")]
    ['BF16', 'Q4_K_M+token_embd=Q4_0+output=Q5_0', 'auto@4.0bpw', 'auto@Q3_K_M']
    >>> parse_entries("auto@400M")[0].target_size, parse_entries("auto@1GiB")[0].target_size
    (400000000, 1073741824)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from l1quant.errors import ConfigError
from l1quant.units import parse_bpw, parse_size

__all__ = ["NO_IMATRIX_TYPES", "CompareEntry", "parse_entries", "parse_entry", "split_entries"]

#: Types an importance matrix does not change (llama-quantize ignores it for them): compare passes none to them.
NO_IMATRIX_TYPES = frozenset({"f32", "f16", "bf16", "q8_0"})

_TYPE_RE = re.compile(r"[A-Za-z0-9_]+")
_PURE_RE = re.compile(r"\+pure(?=\+|$)", re.IGNORECASE)
_OVERRIDE_RE = re.compile(r"\+([^=]+)=([A-Za-z0-9_]+)(?=\+|$)")


@dataclass(frozen=True)
class CompareEntry:
    """One ``--types`` entry.

    ``kind``: ``"named"`` (a type or mix as llama-quantize names it), ``"hand"`` (with per-tensor overrides) or
    ``"auto"`` (the target-size search). ``type``: the ``--type`` value to make it with (lower case; ``auto``).
    ``token_embedding_type`` / ``output_tensor_type`` / ``tensor_types`` / ``pure``: llama-quantize's flags of the
    same names (:class:`~l1quant.conversion.mixes.QuantOptions`). For ``auto``: ``target_bpw`` (bits per weight),
    ``target_size`` (bytes) or ``target_ref`` (the canonical name of the entry whose file size is the target).
    """

    text: str
    name: str
    kind: str
    type: str
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()
    pure: bool = False
    target_size: int | None = None
    target_bpw: float | None = None
    target_ref: CompareEntry | None = field(default=None, compare=False)

    @property
    def per_tensor(self) -> bool:
        """Whether any of llama-quantize's per-tensor flags is set."""
        return bool(self.token_embedding_type or self.output_tensor_type or self.tensor_types or self.pure)

    @property
    def uses_imatrix(self) -> bool:
        """Whether an importance matrix changes this file (not for F32/F16/BF16/Q8_0 without overrides)."""
        return self.kind == "auto" or self.per_tensor or self.type not in NO_IMATRIX_TYPES

    def needs_imatrix(self) -> bool:
        """Whether llama-quantize refuses this entry without an importance matrix: a mix whose ordinary tensors
        need one (Q2_K_S; :func:`l1quant.conversion.mixes.requires_imatrix`), an override to a type that needs one
        (the i-quants of :data:`~l1quant.conversion.mixes.IMATRIX_TYPES`), or ``auto`` (the target-size search
        measures with it, issue 20)."""
        if self.kind == "auto":
            return True
        from l1quant.conversion.mixes import IMATRIX_TYPES, get_mix, parse_ggml_type, requires_imatrix

        mix = get_mix(self.type)
        if mix.base in IMATRIX_TYPES or requires_imatrix("blk.0.ffn_down.weight", mix.base, mix):
            return True
        over = [self.token_embedding_type, self.output_tensor_type, *(t for _, t in self.tensor_types)]
        return any(parse_ggml_type(t) in IMATRIX_TYPES for t in over if t is not None)

    def options(self, imatrix: str | None) -> Any:
        """The :class:`~l1quant.conversion.mixes.QuantOptions` to make this entry with (None when there is
        nothing to set); ``imatrix`` is passed only where it changes the file (:attr:`uses_imatrix`)."""
        from l1quant.conversion.mixes import QuantOptions

        im = imatrix if self.uses_imatrix else None
        if not self.per_tensor and im is None:
            return None
        return QuantOptions(pure=self.pure, output_tensor_type=self.output_tensor_type,
                            token_embedding_type=self.token_embedding_type, tensor_types=self.tensor_types,
                            imatrix=im)

    def target(self) -> dict[str, Any] | None:
        """The target of an ``auto`` entry as the report stores it (``{"bpw": 4.0}``, ``{"size_bytes": N}``, or
        ``{"size_of": "Q3_K_M"}`` before the size is known); None for the others."""
        if self.kind != "auto":
            return None
        if self.target_bpw is not None:
            return {"bpw": self.target_bpw}
        if self.target_size is not None:
            return {"size_bytes": self.target_size}
        assert self.target_ref is not None
        return {"size_of": self.target_ref.name}


def split_entries(text: str) -> list[str]:
    """``--types``' text cut at the commas outside ``()``, ``[]`` and ``{}`` (a regex's ``{1,2}`` stays whole),
    each entry stripped, empty ones dropped.

    Example:
        >>> split_entries(r"q4_k_m, q4_k_m+blk\\.[0-9]{1,2}\\.attn_v=q8_0")
        ['q4_k_m', 'q4_k_m+blk\\\\.[0-9]{1,2}\\\\.attn_v=q8_0']
    """
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [e.strip() for e in out if e.strip()]


def _type_name(t: str, entry: str) -> str:
    from l1quant.conversion.mixes import parse_ggml_type

    try:
        return parse_ggml_type(t).name
    except Exception:  # noqa: BLE001 - re-raised as one line naming the entry
        raise ConfigError(f"--types entry {entry!r}: {t!r} is not a GGML type (e.g. q8_0, q4_k, q5_0)") from None


def parse_entry(text: str) -> CompareEntry:
    """One ``--types`` entry (see the module docstring for the grammar).

    Raises :class:`~l1quant.errors.ConfigError` (one line naming the entry) for an unknown type, a malformed
    override, a bad regular expression, a bad target, or a type l1quant does not make.

    Example:
        >>> e = parse_entry("Q4_K_M+token_embd=q4_0+output=q5_0+attn_v=q8_0")
        >>> e.kind, e.type, e.token_embedding_type, e.output_tensor_type, e.tensor_types
        ('hand', 'q4_k_m', 'Q4_0', 'Q5_0', (('attn_v', 'Q8_0'),))
        >>> parse_entry("auto@4bpw").target_bpw, parse_entry("auto@q4_k_m+output=q8_0").target_ref.name
        (4.0, 'Q4_K_M+output=Q8_0')
    """
    from l1quant.filetypes import resolve_type

    raw = str(text).strip()
    if raw.lower().startswith("auto@"):
        spec = raw[5:].strip()
        if not spec:
            raise ConfigError(f"--types entry {raw!r}: auto@ needs a target: N bpw, a size (400M, 1.5GiB) or a "
                              "type in the same run (auto@q4_k_m)")
        if spec.lower().startswith("auto"):
            raise ConfigError(f"--types entry {raw!r}: the size of another auto entry is not a target")
        if spec.lower().endswith("bpw"):
            bpw = parse_bpw(spec, f"--types entry {raw!r}:")
            return CompareEntry(raw, f"auto@{spec}", "auto", "auto", target_bpw=bpw)
        if spec[:1].isdigit() or spec[:1] == ".":
            size = parse_size(spec, f"--types entry {raw!r}: size")
            return CompareEntry(raw, f"auto@{spec}", "auto", "auto", target_size=size)
        ref = parse_entry(spec)
        return CompareEntry(raw, f"auto@{ref.name}", "auto", "auto", target_ref=ref)
    m = _TYPE_RE.match(raw)
    if m is None:
        raise ConfigError(f"--types entry {raw!r}: expected a type name (q4_k_m), TYPE+NAME=TYPE overrides, or "
                          "auto@SIZE")
    base = m.group(0).lower()
    if base == "auto":
        raise ConfigError(f"--types entry {raw!r}: auto needs a target: auto@4.0bpw, auto@400M or auto@q4_k_m")
    try:
        resolve_type(base, as_mix=True)  # unknown, refused and unserved types: the library's one line
    except ConfigError as e:
        raise ConfigError(f"--types entry {raw!r}: {e}") from None
    rest, pos = raw[m.end():], 0
    emb = out = None
    pure = False
    pats: list[tuple[str, str]] = []
    parts = [base.upper()]
    while pos < len(rest):
        if (p := _PURE_RE.match(rest, pos)) is not None:
            pure, pos = True, p.end()
            parts.append("pure")
            continue
        o = _OVERRIDE_RE.match(rest, pos)
        if o is None:
            raise ConfigError(f"--types entry {raw!r}: expected +NAME=TYPE (token_embd=, output=, or a tensor-name "
                              f"regex) or +pure after {raw[:m.end() + pos]!r}, found {rest[pos:]!r}")
        key, t = o.group(1).strip(), _type_name(o.group(2), raw)
        if key.lower() == "token_embd":
            emb = t
        elif key.lower() == "output":
            out = t
        else:
            try:
                re.compile(key.lower())
            except re.error as err:
                raise ConfigError(f"--types entry {raw!r}: bad regular expression {key!r}: {err}") from None
            pats.append((key, t))
        parts.append(f"{key}={t}")
        pos = o.end()
    entry = CompareEntry(raw, "+".join(parts), "hand" if len(parts) > 1 else "named", base,
                         token_embedding_type=emb, output_tensor_type=out, tensor_types=tuple(pats), pure=pure)
    entry.options(None)  # bad combinations fail now (QuantOptions checks its fields)
    return entry


def parse_entries(types: str | Sequence[str]) -> list[CompareEntry]:
    """Every entry of ``--types`` (a comma-separated text, :func:`split_entries`, or a list of entries), in order.
    Raises :class:`~l1quant.errors.ConfigError` for an empty list, a bad entry (:func:`parse_entry`) or an entry
    given twice (by canonical name: ``q4_k`` and ``Q4_K`` are the same).

    Example:
        >>> [e.kind for e in parse_entries(["f16", "q4_k_m+output=q8_0", "auto@3.5bpw"])]
        ['named', 'hand', 'auto']
    """
    items = split_entries(types) if isinstance(types, str) else [str(t).strip() for t in types if str(t).strip()]
    if not items:
        raise ConfigError("--types names no type")
    entries: list[CompareEntry] = []
    seen: dict[str, str] = {}
    for item in items:
        e = parse_entry(item)
        if e.name in seen:
            raise ConfigError(f"--types: {item!r} is the same entry as {seen[e.name]!r} ({e.name})")
        seen[e.name] = item
        entries.append(e)
    return entries

"""The GGUF header as data: key/values in order with their value types, tensor infos, alignment, data offset.

One :class:`Header` is built once per command and is what gets written and what gets checked:

* ``convert`` builds it from the plan, the config, the vocabulary and the naming metadata
  (:func:`l1quant.conversion.prepare.prepare`; gguf-py's ``add_*`` helpers write into it through
  :meth:`Header.gguf_writer`);
* ``quantize`` builds it from the input file's header (:meth:`Header.from_file`), then moves and drops keys as
  llama-quantize does;
* the writer (:mod:`l1quant.gguf.writer`) serialises it;
* ``verify`` compares the header the converter would write with the file's (:meth:`Header.from_file`):
  keys, their order, their value types, tensor infos.

A value type is written as the reader reports it (:data:`l1quant.gguf.reader.KVType`): a scalar
``GGUFValueType``, or ``(ARRAY, element type[, inner element type...])`` for an array.

Example:
    >>> h = Header()
    >>> h.add("general.architecture", "qwen2", GGUFValueType.STRING)
    >>> h.add("general.file_type", 7, GGUFValueType.UINT32)
    >>> h.add("tokenizer.ggml.tokens", ["a", "b"], GGUFValueType.ARRAY)
    >>> h.kv["tokenizer.ggml.tokens"].type
    (<GGUFValueType.ARRAY: 9>, <GGUFValueType.STRING: 8>)
    >>> h.move_to_end("general.file_type")
    >>> list(h.kv)
    ['general.architecture', 'tokenizer.ggml.tokens', 'general.file_type']
    >>> t = h.add_tensor("output_norm.weight", (1536,), GGMLQuantizationType.F32, 6144)
    >>> h.add_tensor("token_embd.weight", (1536, 10), GGMLQuantizationType.F16, 30720).offset
    6144
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_VERSION, GGMLQuantizationType, GGUFValueType

from l1quant.errors import quote
from l1quant.gguf.reader import KVType

if TYPE_CHECKING:
    import gguf

    from l1quant.gguf.reader import GGUFFile

__all__ = ["Header", "KeyValue", "TensorEntry", "pad"]

ARRAY = GGUFValueType.ARRAY


def pad(n: int, align: int = GGUF_DEFAULT_ALIGNMENT) -> int:
    """Round ``n`` up to a multiple of ``align`` (GGUF's ``GGML_PAD``: tensor data and the data section start).

    Example:
        >>> pad(33), pad(64)
        (64, 64)
    """
    return -(-n // align) * align


def infer_type(value: Any) -> KVType:
    """The value type gguf-py's writer gives ``value`` when none is named (``GGUFValueType.get_type``: str ->
    STRING, bool -> BOOL, int -> INT32, float -> FLOAT32), for arrays the element type, recursively.

    Raises ``ValueError`` as gguf-py does for an array whose items have different types, or an empty one.

    Example:
        >>> infer_type([[1, 2], [3]])
        (<GGUFValueType.ARRAY: 9>, <GGUFValueType.ARRAY: 9>, <GGUFValueType.INT32: 5>)
    """
    if not isinstance(value, list):
        return GGUFValueType.get_type(value)
    if not value:
        raise ValueError("Invalid GGUF metadata array. Empty array")
    return (ARRAY, *_element_type(value))


def _element_type(items: Sequence[Any]) -> tuple[GGUFValueType, ...]:
    """The element type of a non-empty list: every item's type must map to the same GGUF type (gguf-py's rule)."""
    # one representative per Python type: a C-level pass, not a get_type call per token of a 150k vocabulary
    reps = dict(zip(map(type, items), items))
    kinds = {GGUFValueType.get_type(v) for v in reps.values()}
    if len(kinds) != 1:
        raise ValueError("All items in a GGUF array should be of the same type")
    kind = kinds.pop()
    if kind == ARRAY:
        first = items[0]
        return (ARRAY, *(_element_type(first) if first else (GGUFValueType.STRING,)))
    return (kind,)


@dataclass(frozen=True)
class KeyValue:
    """One metadata key: its value and its value type (a scalar type, or ``(ARRAY, element type, ...)``).

    Example:
        >>> KeyValue("general.alignment", 32, GGUFValueType.UINT32).root_type.name
        'UINT32'
    """

    key: str
    value: Any
    type: KVType

    @property
    def root_type(self) -> GGUFValueType:
        """The type written before the value: the scalar type, or ARRAY."""
        return self.type[0] if isinstance(self.type, tuple) else self.type


@dataclass(frozen=True)
class TensorEntry:
    """One tensor info: GGUF name, ggml dims (ne0 -- the row length -- first), type, offset (from the start of the
    data section) and size in bytes.

    Example:
        >>> TensorEntry("w", (64, 2), GGMLQuantizationType.Q8_0, 0, 136).np_shape
        (2, 64)
    """

    name: str
    dims: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int
    nbytes: int

    @property
    def np_shape(self) -> tuple[int, ...]:
        """The numpy (row-major) shape: the ggml dims reversed."""
        return tuple(reversed(self.dims))


@dataclass
class Header:
    """A GGUF header: version, key/values in file order, tensor infos in file order, and the data alignment.

    ``kv`` maps each key to its :class:`KeyValue`, in the order they are written. Adding a key that exists
    replaces its value and type and keeps its place (gguf-py's ``add_key_value``); :meth:`move_to_end` is
    llama.cpp's ``gguf_set_val_*`` on an existing key (erase, append). Tensor offsets are assigned by
    :meth:`add_tensor`, each tensor at the previous one's end padded to ``alignment``.
    """

    alignment: int = GGUF_DEFAULT_ALIGNMENT
    version: int = GGUF_VERSION
    kv: dict[str, KeyValue] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)

    # -- key/values ---------------------------------------------------------------------------------------------

    def add(self, key: str, value: Any, vtype: KVType, sub_type: GGUFValueType | None = None) -> None:
        """Set ``key`` (new keys go last). ``vtype`` ARRAY with no ``sub_type`` infers the element type from the
        items as gguf-py's writer does (:func:`infer_type`).

        Raises ``ValueError`` for an array gguf-py could not write (empty with no element type, mixed items).
        """
        if isinstance(vtype, tuple):
            t: KVType = vtype
        elif vtype == ARRAY:
            if sub_type is None:
                t = infer_type(list(value) if not isinstance(value, list) else value)
            elif sub_type == ARRAY:
                t = (ARRAY, *(_element_type(value) if len(value) else (ARRAY,)))
            else:
                t = (ARRAY, sub_type)
        else:
            t = GGUFValueType(vtype)
        self.kv[key] = KeyValue(key, value, t)

    def remove(self, key: str) -> None:
        """Drop ``key`` if present."""
        self.kv.pop(key, None)

    def move_to_end(self, key: str) -> None:
        """Move ``key`` (which must exist) after every other key, as llama.cpp re-setting a key does."""
        self.kv[key] = self.kv.pop(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def gguf_writer(self, arch: str) -> gguf.GGUFWriter:
        """A ``gguf.GGUFWriter`` whose ``add_*`` helpers (naming metadata, tokenizer, chat template...) set keys of
        this header, so what they add is exactly what gguf-py's writer would write. It writes no file.

        Example:
            >>> h = Header()
            >>> h.gguf_writer("qwen2").add_context_length(4096)
            >>> h.kv["qwen2.context_length"].type.name
            'UINT32'
        """
        return _recorder(self, arch)

    # -- tensor infos --------------------------------------------------------------------------------------------

    def add_tensor(self, name: str, dims: Sequence[int], ggml_type: GGMLQuantizationType,
                   nbytes: int) -> TensorEntry:
        """Append a tensor info (``dims`` in ggml order), placed at the previous tensor's padded end."""
        offset = 0 if not self.tensors else self.tensors[-1].offset + pad(self.tensors[-1].nbytes, self.alignment)
        entry = TensorEntry(name, tuple(int(d) for d in dims), GGMLQuantizationType(ggml_type), offset, nbytes)
        self.tensors.append(entry)
        return entry

    @property
    def data_nbytes(self) -> int:
        """Size of the data section: every tensor padded to the alignment, the last one included (llama.cpp)."""
        return sum(pad(t.nbytes, self.alignment) for t in self.tensors)

    def parameter_count(self) -> tuple[int, int, int, int]:
        """(total, shared, expert, expert count) parameters, as gguf-py's ``get_total_parameter_count`` (the
        ``general.size_label`` is derived from it).

        Example:
            >>> h = Header()
            >>> _ = h.add_tensor("w", (4, 3), GGMLQuantizationType.F32, 48)
            >>> h.parameter_count()
            (12, 12, 0, 0)
        """
        total = shared = expert = expert_sum = n_expert_tensors = 0
        for t in self.tensors:
            shape = t.np_shape
            size = math.prod(shape)
            if "_exps." in t.name and len(shape) >= 3:
                n = shape[-2 if ".bias" in t.name else -3]
                expert += size // n
                expert_sum += n
                n_expert_tensors += 1
            else:
                shared += size
            total += size
        return total, shared, expert, expert_sum // n_expert_tensors if n_expert_tensors else 0

    # -- files ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, gf: GGUFFile) -> Header:
        """The header of a parsed file: its keys in order with their value types, its tensor infos, alignment and
        version.

        Example:
            >>> h = Header.from_file(read_gguf("m.gguf"))   # doctest: +SKIP
            >>> list(h.kv)[:2]                              # doctest: +SKIP
            ['general.architecture', 'general.type']
        """
        h = cls(alignment=gf.alignment, version=gf.version)
        for key, value in gf.kv.items():
            h.kv[key] = KeyValue(key, value, gf.kv_types[key])
        for t in gf.tensors:
            h.tensors.append(TensorEntry(t.name, t.shape, t.ggml_type, t.offset, t.nbytes))
        return h

    def order_difference(self, found: Header) -> tuple[str, str] | None:
        """The first pair of keys both headers hold that ``found`` has in the other order, as (the key ``found``
        has too early, the key it should follow), or None.

        Keys only one of them holds are not order differences (they are missing or extra keys).

        Example:
            >>> a, b = Header(), Header()
            >>> for k in ("x", "y", "z"): a.add(k, 1, GGUFValueType.UINT32)
            >>> for k in ("x", "z", "y"): b.add(k, 1, GGUFValueType.UINT32)
            >>> a.order_difference(b)
            ('z', 'y')
        """
        common = [k for k in self.kv if k in found.kv]
        rank = {k: i for i, k in enumerate(k for k in found.kv if k in self.kv)}
        for prev, key in zip(common, common[1:]):
            if rank[key] < rank[prev]:
                return key, prev
        return None

    def tensor_order_difference(self, found: Header) -> tuple[int, str, str] | None:
        """The first place where ``found`` lists the tensors both headers hold in another order, as (position
        among those tensors, the name ``found`` has there, the name expected there), or None.

        Example:
            >>> a, b = Header(), Header()
            >>> for n in ("x", "y"): _ = a.add_tensor(n, (32,), GGMLQuantizationType.F32, 128)
            >>> for n in ("y", "x"): _ = b.add_tensor(n, (32,), GGMLQuantizationType.F32, 128)
            >>> a.tensor_order_difference(b)
            (0, 'y', 'x')
        """
        have = {t.name for t in found.tensors}
        want = {t.name for t in self.tensors}
        for i, (w, f) in enumerate(zip([t.name for t in self.tensors if t.name in have],
                                       [t.name for t in found.tensors if t.name in want])):
            if w != f:
                return i, f, w
        return None

    def tensor_differences(self, found: Header) -> list[str]:
        """One line per tensor info of ``found`` that differs from this header's: missing, extra, out of order,
        other dims, type or offset.

        Example:
            >>> a, b = Header(), Header()
            >>> _ = a.add_tensor("w", (32, 2), GGMLQuantizationType.Q8_0, 68)
            >>> _ = b.add_tensor("w", (32, 2), GGMLQuantizationType.F16, 128)
            >>> a.tensor_differences(b)
            ["tensor 'w': type F16, expected Q8_0"]
        """
        out: list[str] = []
        have = {t.name: t for t in found.tensors}
        want = {t.name: t for t in self.tensors}
        out += [f"tensor {quote(n)} is missing" for n in want if n not in have]
        out += [f"tensor {quote(n)} is not expected" for n in have if n not in want]
        order = self.tensor_order_difference(found)
        if order:
            out.append(f"tensor #{order[0]} is {quote(order[1])}, expected {quote(order[2])} (tensor order differs)")
        for name, w in want.items():
            f = have.get(name)
            if f is None:
                continue
            if f.dims != w.dims:
                out.append(f"tensor {quote(name)}: dims {list(f.dims)}, expected {list(w.dims)}")
            elif f.ggml_type != w.ggml_type:
                out.append(f"tensor {quote(name)}: type {f.ggml_type.name}, expected {w.ggml_type.name}")
            elif f.offset != w.offset and not out:
                out.append(f"tensor {quote(name)}: offset {f.offset}, expected {w.offset}")
        return out


def _recorder(header: Header, arch: str) -> gguf.GGUFWriter:
    import gguf

    class HeaderRecorder(gguf.GGUFWriter):
        """gguf-py's writer as a front end: its ``add_*`` helpers land in ``header``; it never opens a file."""

        def __init__(self) -> None:
            self._recording = False
            super().__init__(path=None, arch=arch)  # its add_architecture() is not recorded: the header decides
            self._recording = True

        def add_key_value(self, key: str, val: Any, vtype: GGUFValueType,
                          sub_type: GGUFValueType | None = None) -> None:
            if self._recording:
                header.add(key, val, vtype, sub_type)

        def remove_key(self, key: str) -> None:
            header.remove(key)

    return HeaderRecorder()

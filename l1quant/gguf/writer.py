"""GGUF output: a :class:`~l1quant.gguf.header.Header` serialised, byte for byte as gguf-py's ``GGUFWriter`` writes it.

Layout (GGUF v3, little-endian): magic ``GGUF``, version (u32), tensor count (u64), key count (u64); each key as
a string (u64 length, UTF-8 bytes), its value type (u32) and value; each tensor info as its name, n_dims (u32),
the ggml dims (u64 each), the ggml type (u32) and the offset in the data section (u64); zero padding up to the
alignment. Values are packed as gguf-py packs them (``GGUFWriter._pack_val``: scalars with ``struct``, strings
UTF-8 with a u64 length, arrays as element type, u64 count and items); long str/int arrays (the tokenizer's) are
packed in bulk with numpy, same bytes, ~50x faster. The data section is filled by the caller at the tensors'
offsets (:mod:`l1quant.conversion.pipeline`) inside an :class:`l1quant.output.AtomicOutput`.

Example:
    >>> from l1quant.gguf.header import Header
    >>> h = Header()
    >>> h.add("general.architecture", "qwen2", gguf.GGUFValueType.STRING)
    >>> data = encode_header(h)
    >>> data[:4], len(data), data_offset(h)
    (b'GGUF', 69, 96)
"""

from __future__ import annotations

import struct
from typing import Any

import gguf
import numpy as np

from l1quant.gguf.header import Header, infer_type, pad
from l1quant.gguf.reader import SCALAR_FORMATS, KVType
from l1quant.output import pwrite_all

__all__ = ["data_offset", "encode_header", "pack_value", "write_header"]

_VT = gguf.GGUFValueType
#: struct format per scalar type, as gguf-py packs them (bool as "?", unprefixed: one byte either way)
_SCALAR_PACK: dict[gguf.GGUFValueType, str] = {t: fmt for t, (fmt, _, _) in SCALAR_FORMATS.items()}
_SCALAR_PACK[_VT.BOOL] = "?"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _string(s: str | bytes) -> bytes:
    if isinstance(s, str):
        b = s.encode("utf-8")
    elif isinstance(s, (bytes, bytearray)):
        b = bytes(s)
    else:
        raise ValueError(f"{type(s).__name__} {s!r} is not a GGUF STRING")
    return _U64.pack(len(b)) + b


#: numpy dtype per integer value type (bool is stored as a byte but is not an int array here)
_INT_ARRAY_DTYPES: dict[gguf.GGUFValueType, str] = {
    t: dt for t, (_, _, dt) in SCALAR_FORMATS.items() if dt[1] in "iu" and t != gguf.GGUFValueType.BOOL}


def _pack_array_bulk(val: Any, sub_type: gguf.GGUFValueType | None) -> bytes | None:
    """The GGUF bytes of a long list of str or int (item type, count, items), or None to let gguf pack it.

    Only lists whose items are all exactly ``str`` (-> STRING) or all exactly ``int`` (-> INT32, gguf's
    inference, or the given integer ``sub_type``) take this path; anything else, including out-of-range ints
    (gguf raises for those), goes back to gguf's item-by-item packer, so the bytes and errors stay gguf's.
    """
    if isinstance(val, np.ndarray) and val.ndim == 1 and sub_type in SCALAR_FORMATS:
        # a long numeric array the reader left in the file (a memory map: gguf's packer takes only sequences)
        head = np.array([int(sub_type)], "<u4").tobytes() + np.array([len(val)], "<u8").tobytes()
        return head + np.ascontiguousarray(val).astype(SCALAR_FORMATS[sub_type][2]).tobytes()
    if not isinstance(val, list) or len(val) < 256:
        return None
    kind = type(val[0])
    if kind not in (str, int):
        return None
    ltype = sub_type if sub_type is not None else (gguf.GGUFValueType.STRING if kind is str
                                                   else gguf.GGUFValueType.INT32)
    head = np.array([int(ltype)], "<u4").tobytes() + np.array([len(val)], "<u8").tobytes()
    if kind is str and ltype == gguf.GGUFValueType.STRING:
        try:
            # map(str.encode) loops in C; any non-str item (bytes, int, ...) makes a mixed list: gguf decides
            enc = list(map(str.encode, val))
        except TypeError:
            return None
        return head + _interleave_lengths(enc)
    dt = _INT_ARRAY_DTYPES.get(ltype)
    if kind is int and dt is not None and set(map(type, val)) == {int}:  # no bool/float sneaking in
        try:
            a = np.array(val, dtype=np.int64 if dt != "<u8" else np.uint64)
        except OverflowError:
            return None
        info = np.iinfo(np.dtype(dt))
        if int(a.min()) < info.min or int(a.max()) > info.max:
            return None
        return head + a.astype(dt).tobytes()
    return None


def _interleave_lengths(items: list[bytes]) -> bytes:
    """``len(item)`` as little-endian u64 before each item, concatenated (GGUF strings), without a per-item loop.

    Example:
        >>> _interleave_lengths([b"ab", b""])
        b'\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00ab\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
    """
    n = len(items)
    lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
    blob = np.frombuffer(b"".join(items), dtype=np.uint8)
    out = np.empty(8 * n + blob.size, dtype=np.uint8)
    # item i's length field starts after i length fields and the bytes of items 0..i-1
    starts = 8 * np.arange(n, dtype=np.int64)
    starts[1:] += np.cumsum(lens[:-1])
    is_len = np.zeros(out.size, dtype=bool)
    len_pos = (starts[:, None] + np.arange(8)).reshape(-1)
    is_len[len_pos] = True
    out[len_pos] = lens.astype("<u8").view(np.uint8)
    out[~is_len] = blob
    return out.tobytes()


def pack_value(value: Any, vtype: KVType) -> bytes:
    """The bytes of ``value`` as a GGUF value of type ``vtype`` (no leading type field), as gguf-py packs it.

    ``vtype`` is a scalar type or ``(ARRAY, element type, ...)``; inner arrays infer their element type from
    their items, as gguf-py does. A numpy array (the reader's long numeric arrays) is written from its buffer.
    Raises what gguf-py raises for a value the type cannot hold (``struct.error`` out of range, ``ValueError``).

    Example:
        >>> pack_value(["ab"], (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)).hex()
        '08000000010000000000000002000000000000006162'
    """
    if not isinstance(vtype, tuple):
        fmt = _SCALAR_PACK.get(vtype)
        if fmt is not None:
            return struct.pack(fmt, value)  # struct.error for a value out of range, as gguf-py
        if vtype == _VT.STRING:
            return _string(value)
        raise ValueError(f"invalid GGUF metadata value type {vtype!r}")
    etype = vtype[1] if len(vtype) > 1 else _VT.ARRAY
    if isinstance(value, np.ndarray) and etype in SCALAR_FORMATS:
        dt = SCALAR_FORMATS[etype][2]
        return _U32.pack(int(etype)) + _U64.pack(value.size) + np.ascontiguousarray(value, dtype=dt).tobytes()
    if not isinstance(value, (list, tuple)):
        raise ValueError("Invalid GGUF metadata array, expecting sequence")
    body = _pack_array_bulk(list(value), etype)
    if body is not None:
        return body
    out = [_U32.pack(int(etype)), _U64.pack(len(value))]
    if etype == _VT.ARRAY:
        # gguf-py packs each inner array with the element type its own items imply
        out += [pack_value(item, infer_type(item)) for item in value]
    else:
        out += [pack_value(item, etype) for item in value]
    return b"".join(out)


def encode_header(header: Header) -> bytes:
    """Magic, version, counts, every key/value and every tensor info of ``header``, unpadded.

    Raises ``ValueError`` naming the key whose value cannot be written with its type.
    """
    parts = [b"GGUF", _U32.pack(header.version), _U64.pack(len(header.tensors)), _U64.pack(len(header.kv))]
    for kv in header.kv.values():
        try:
            value = pack_value(kv.value, kv.type)
        except (ValueError, TypeError, struct.error) as e:
            raise ValueError(f"key {kv.key}: cannot be written as {kv.type}: {e}") from None
        parts += [_string(kv.key), _U32.pack(int(kv.root_type)), value]
    for t in header.tensors:
        parts += [_string(t.name), _U32.pack(len(t.dims)), struct.pack(f"<{len(t.dims)}Q", *t.dims),
                  _U32.pack(int(t.ggml_type)), _U64.pack(t.offset)]
    return b"".join(parts)


def data_offset(header: Header) -> int:
    """Where the data section starts: the encoded header's size padded to the alignment."""
    return pad(len(encode_header(header)), header.alignment)


def write_header(header: Header, fd: int) -> int:
    """Write ``header`` and its zero padding at the start of the file open as ``fd``; return the data offset."""
    data = encode_header(header)
    offset = pad(len(data), header.alignment)
    pwrite_all(fd, data + bytes(offset - len(data)), 0)
    return offset

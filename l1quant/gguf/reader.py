"""Hardened GGUF v2/v3 reader: header, key/values and tensor infos, with every length checked before use.

Why not ``gguf.GGUFReader``: it memory-maps the whole file and trusts the lengths, counts and offsets it finds.
Measured with gguf 0.19 on an 800-byte file: a uint8 array whose count is overwritten with 2**40 makes it loop
without advancing (out-of-range slices of the memmap are silently empty), still parsing after 15 s with 1.1 GB
resident and growing; a string length of 2**60, a tensor count of 2**60 or a kv count of 2**60 end in a bare
``IndexError`` (after the string silently swallowed the rest of the file); a tensor offset past the end gives
``ValueError: cannot reshape array of size 0``; and a misaligned (+4) or overlapping (offset 0 for the second
tensor) offset is accepted without complaint. It is also slow on real headers: a file holding the Qwen2.5
vocabulary (151,936 tokens + 151,387 merges) takes 35-43 s to open with it, 0.6 s with :func:`read_gguf`.

This reader instead:

* reads the header with bounded buffered reads (never maps the file, never touches the data section);
* checks every length and count against the bytes left (and a header-size budget) *before* allocating;
* enforces what llama.cpp's ``gguf_init_from_file`` enforces (magic, version 2..3, unique non-empty keys,
  ``general.alignment`` a u32 power of two, tensor names unique and shorter than ``GGML_MAX_NAME`` = 64 bytes,
  at most ``GGML_MAX_DIMS`` = 4 dims, element count and byte size representable in int64, known ggml type,
  row length a multiple of the block size, tensors packed in file order at aligned offsets) and a bit more
  (n_dims >= 1, every dim >= 1, booleans 0/1, UTF-8 strings, nested arrays at most ``MAX_ARRAY_DEPTH`` deep,
  every tensor's bytes inside the file);
* raises :class:`l1quant.errors.GGUFFormatError` with one line naming the file and the field at fault.

llama.cpp refuses nested arrays in KVs; gguf-py writes and reads them, so this reader accepts them (bounded depth).
Big-endian GGUF files are refused with a clear message.

Example:
    >>> gf = read_gguf("model.Q8_0.gguf")                     # doctest: +SKIP
    >>> gf.kv["general.architecture"], len(gf.tensors)        # doctest: +SKIP
    ('qwen2', 339)
    >>> info = gf.tensor("token_embd.weight")                 # doctest: +SKIP
    >>> for row0, rows in gf.tensor_rows(info, 1024): ...     # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from l1quant.errors import GGUFFormatError, InputError, L1QuantError, open_regular, quote

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "GGML_MAX_DIMS",
    "GGML_MAX_NAME",
    "MAX_ARRAY_DEPTH",
    "MAX_KV_COUNT",
    "MAX_TENSOR_COUNT",
    "GGUFFile",
    "TensorInfo",
    "describe",
    "format_description",
    "read_gguf",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # includes the C string's NUL: names must be at most 63 bytes (llama.cpp: len >= 64 is refused)
GGUF_MAX_KEY_BYTES = 65535  # the GGUF spec limits keys to 2**16 - 1 bytes
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30  # llama.cpp's GGUF_MAX_ARRAY_ELEMENTS
MAX_ARRAY_DEPTH = 8
# Everything before the data section is parsed into Python objects (≈10-50x the bytes for arrays), so cap it.
# A 256k-token vocabulary with merges is ~20 MB; 256 MiB leaves a wide margin.
DEFAULT_MAX_HEADER_BYTES = 256 << 20
INT64_MAX = (1 << 63) - 1
#: Python objects the KV section may become (list elements, strings, nested lists), summed over the header. A
#: real header has ~0.5-1.1 M (a 262k vocabulary: tokens + scores + token types + merges); 4 M keeps any real one
#: and bounds a hostile one to ~2 s and ~300 MB, where 10 M empty nested arrays took 25 s.
MAX_KV_OBJECTS = 4_000_000
#: Nested (array-of-array) elements in the whole header: llama.cpp writes none for any model key; each costs
#: ~2.5 us and ~100 bytes as Python lists.
MAX_NESTED_ARRAYS = 100_000
#: A numeric array longer than this stays in the file, as a read-only numpy memory map (costing no memory until
#: read), instead of becoming a Python list (~9 bytes of RSS per u8 element: a 200 MiB u8 array cost 1.8 GB).
#: Real per-token arrays (scores, token types) have at most ~262 k elements.
MAX_LIST_ELEMENTS = 1 << 21
#: Keys in one header: a real model has 20-60 (a few hundred at most, with every authorship key); each costs a
#: dict entry and two Python objects, so 10 M one-byte keys took ~60 s and 2.9 GB before this bound.
MAX_KV_COUNT = 65_536
#: Tensor infos in one header: the largest real models (MoE with per-expert tensors) have ~10-60 k; the
#: safetensors reader's bound (``MAX_TENSORS``) is the same. 5 M one-element infos took ~80 s and 2.9 GB.
MAX_TENSOR_COUNT = 100_000
_READ_AHEAD = 1 << 20  # header bytes read per system call
_U64 = struct.Struct("<Q")

# Minimal encoded sizes, used to refuse a count before looping over it.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset

#: (struct format, size, numpy dtype) per scalar GGUF value type, all little-endian (the writer's bulk packer
#: uses it too).
SCALAR_FORMATS: dict[GGUFValueType, tuple[str, int, str]] = {
    GGUFValueType.UINT8: ("<B", 1, "<u1"),
    GGUFValueType.INT8: ("<b", 1, "<i1"),
    GGUFValueType.UINT16: ("<H", 2, "<u2"),
    GGUFValueType.INT16: ("<h", 2, "<i2"),
    GGUFValueType.UINT32: ("<I", 4, "<u4"),
    GGUFValueType.INT32: ("<i", 4, "<i4"),
    GGUFValueType.FLOAT32: ("<f", 4, "<f4"),
    GGUFValueType.BOOL: ("<B", 1, "<u1"),
    GGUFValueType.UINT64: ("<Q", 8, "<u8"),
    GGUFValueType.INT64: ("<q", 8, "<i8"),
    GGUFValueType.FLOAT64: ("<d", 8, "<f8"),
}
_MIN_ELEM_BYTES: dict[GGUFValueType, int] = {t: s for t, (_, s, _) in SCALAR_FORMATS.items()}
_MIN_ELEM_BYTES[GGUFValueType.STRING] = 8
_MIN_ELEM_BYTES[GGUFValueType.ARRAY] = 4 + 8

KVType = GGUFValueType | tuple[GGUFValueType, ...]
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-info record. ``shape`` is in GGUF/ggml order (ne0, the contiguous row length, first).

    Example:
        >>> t = TensorInfo("w", (64, 2), GGMLQuantizationType.Q8_0, 0, 136, 4096)
        >>> t.np_shape, t.n_rows, t.row_nbytes
        ((2, 64), 2, 68)
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    offset: int  # relative to the data section
    nbytes: int
    abs_offset: int  # from the start of the file

    @property
    def np_shape(self) -> tuple[int, ...]:
        """The numpy (row-major) shape: GGUF dims reversed."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_rows(self) -> int:
        """Number of rows of ``shape[0]`` values (all dims but the first, multiplied)."""
        return math.prod(self.shape[1:])

    @property
    def row_nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return self.shape[0] // block * size


@dataclass
class GGUFFile:
    """A parsed GGUF header. No tensor data is loaded; read it with the ``read_tensor_*`` methods (pread).

    Example:
        >>> gf = read_gguf("tiny.gguf")                               # doctest: +SKIP
        >>> gf.read_tensor_bytes(gf.tensors[0], 0, 34)                # doctest: +SKIP
    """

    path: Path
    version: int
    alignment: int
    kv: dict[str, Any]
    kv_types: dict[str, KVType]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)
    #: the file each tensor's data is in when it is not ``path`` (the parts of a split: l1quant.gguf.split)
    tensor_files: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)

    def file_of(self, info: TensorInfo) -> Path:
        """The file holding ``info``'s data (``abs_offset`` is in that file): ``path`` unless the file is split."""
        return self.tensor_files.get(info.name, self.path)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called ``name`` (KeyError if absent)."""
        return self._by_name[name]

    def read_tensor_bytes(self, info: TensorInfo, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start+length)`` of ``info``'s data (all of it by default), read with one pread.

        Example:
            >>> raw = gf.read_tensor_bytes(gf.tensor("output_norm.weight"))   # doctest: +SKIP
        """
        if length is None:
            length = info.nbytes - start
        if start < 0 or length < 0 or start + length > info.nbytes:
            raise ValueError(f"{info.name}: byte range [{start}, {start + length}) outside [0, {info.nbytes})")
        with self._open(info) as f:
            return self._pread(f, info, info.abs_offset + start, length)

    def tensor_rows(self, info: TensorInfo, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``info`` as ``(row_start, uint8 array of shape (rows, row_nbytes))`` chunks.

        A row is ``shape[0]`` values (``row_nbytes`` bytes); chunks hold ``rows_per_chunk`` rows, the last fewer.

        Example:
            >>> for row0, chunk in gf.tensor_rows(info, 256):   # doctest: +SKIP
            ...     check(chunk)
        """
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
        row_nbytes, n_rows = info.row_nbytes, info.n_rows
        with self._open(info) as f:
            for row0 in range(0, n_rows, rows_per_chunk):
                rows = min(rows_per_chunk, n_rows - row0)
                out = np.empty((rows, row_nbytes), dtype=np.uint8)
                f.seek(info.abs_offset + row0 * row_nbytes)
                got = f.readinto(memoryview(out.reshape(-1)))  # type: ignore[arg-type]
                if got != out.nbytes:
                    raise GGUFFormatError(
                        f"{self.path}: tensor {quote(info.name)}: file ends inside rows {row0}..{row0 + rows} "
                        f"(expected {out.nbytes} bytes, got {got}); was it truncated after opening?")
                yield row0, out

    def read_tensor_f32(self, info: TensorInfo) -> np.ndarray:
        """Dequantize ``info`` to float32 in numpy shape (``info.np_shape``).

        Uses ``l1quant.kernels`` for the types it registers (F32, F16, BF16, Q8_0) and ``gguf.quants`` for the rest.

        Example:
            >>> w = gf.read_tensor_f32(gf.tensor("blk.0.attn_q.weight"))   # doctest: +SKIP
        """
        data = np.frombuffer(self.read_tensor_bytes(info), dtype=np.uint8)
        qt = None
        try:
            import importlib

            qt = importlib.import_module("l1quant.kernels").get_quant_type(info.ggml_type.name)
        except (ImportError, AttributeError, LookupError, ValueError, L1QuantError):
            qt = None  # not a type the kernels implement: gguf.quants below
        if qt is not None:
            out = qt.dequantize(data.reshape(info.n_rows, info.row_nbytes), info.np_shape)
        else:
            from gguf.quants import dequantize

            out = dequantize(data.reshape(info.n_rows, info.row_nbytes), info.ggml_type)
        return np.asarray(out, dtype=np.float32).reshape(info.np_shape)

    # -- internals -------------------------------------------------------------------------------------------

    def _open(self, info: TensorInfo | None = None) -> io.FileIO:
        # open_regular: O_NONBLOCK and the type checked on the descriptor, so a FIFO swapped in cannot hang us
        path = self.path if info is None else self.file_of(info)
        return open(open_regular(path, InputError), "rb", buffering=0)

    def _pread(self, f: io.FileIO, info: TensorInfo, pos: int, n: int) -> bytes:
        f.seek(pos)
        buf = bytearray(n)
        got = f.readinto(buf) or 0
        if got != n:
            raise GGUFFormatError(
                f"{self.path}: tensor {quote(info.name)}: expected {n} bytes at offset {pos}, got {got}; "
                "was it truncated after opening?")
        return bytes(buf)


class _Cursor:
    """Bounded sequential reads: every request is checked against the bytes left before it allocates."""

    def __init__(self, f: BinaryIO, path: Path, file_size: int, max_header_bytes: int) -> None:
        self.f = f
        self.path = path
        self.pos = 0  # logical position in the file
        self.file_size = file_size
        self.end = min(file_size, max_header_bytes)
        self.limited = max_header_bytes < file_size
        # Our own read-ahead window: it never extends past ``end``, so bytes in it need no further length check.
        self.buf = b""
        self.bpos = 0
        self.objects = 0  # Python objects made from KV values so far (bounded by MAX_KV_OBJECTS)
        self.nested = 0  # inner arrays so far (bounded by MAX_NESTED_ARRAYS)

    def count(self, n: int, what: str) -> None:
        """Account for ``n`` more Python objects, refusing the header once MAX_KV_OBJECTS is passed."""
        self.objects += n
        if self.objects > MAX_KV_OBJECTS:
            raise self.fail(f"{what}: the header's values exceed {MAX_KV_OBJECTS} items (hostile or corrupt file)")

    def skip(self, n: int, what: str) -> int:
        """Move past ``n`` bytes without reading them (after the same bounds check as :meth:`read`); returns the
        file offset where they start."""
        self.need(n, what)
        start = self.pos
        if self.bpos + n <= len(self.buf):
            self.bpos += n
        else:
            self.f.seek(start + n)
            self.buf, self.bpos = b"", 0
        self.pos += n
        return start

    def fail(self, msg: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {msg}")

    def left(self) -> int:
        return self.end - self.pos

    def where(self) -> str:
        if self.limited:
            return f"{self.left()} bytes left before the {self.end}-byte header limit"
        return f"{self.left()} bytes left in the file (size {self.file_size})"

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.fail(f"{what}: needs {n} bytes at offset {self.pos}, only {self.where()}")

    def read(self, n: int, what: str) -> bytes:
        """``n`` bytes, after checking that the file (and header budget) still holds them."""
        self.need(n, what)
        buf, bp = self.buf, self.bpos
        if bp + n <= len(buf):
            self.bpos = bp + n
            self.pos += n
            return buf[bp:bp + n]
        have = buf[bp:]
        want = n - len(have)
        # Read what is missing plus up to _READ_AHEAD more, never past ``end`` (n <= left() was checked above).
        chunks = []
        todo = min(max(want, _READ_AHEAD), self.end - self.pos - len(have))
        got = 0
        while got < todo:
            c = self.f.read(todo - got)
            if not c:
                break
            chunks.append(c)
            got += len(c)
        if got < want:  # the file shrank under us
            raise self.fail(f"{what}: expected {n} bytes at offset {self.pos}, got {len(have) + got} "
                            "(file truncated while reading?)")
        self.buf = have + b"".join(chunks)
        self.bpos = n
        self.pos += n
        return self.buf[:n]

    def strings(self, n: int, what: str) -> list[str]:
        """``n`` length-prefixed UTF-8 strings (the vocabulary): a fast path inside the window, checked reads
        at its edges. The caller has already checked that ``n * 8`` bytes are left."""
        out: list[str] = []
        append, unpack = out.append, _U64.unpack_from
        buf, bp = self.buf, self.bpos  # kept in locals: this loop runs ~300k times for a real vocabulary
        blen = len(buf)
        for i in range(n):
            if bp + 8 <= blen:
                e = bp + 8 + unpack(buf, bp)[0]
                if e <= blen:
                    try:
                        append(buf[bp + 8:e].decode("utf-8"))
                    except UnicodeDecodeError as err:
                        raise self.fail(f"{what}[{i}]: invalid UTF-8 at byte {err.start} of {e - bp - 8}") from None
                    bp = e
                    continue
            self.pos += bp - self.bpos  # sync, then a fully checked read across the window's edge
            self.bpos = bp
            append(self.string(f"{what}[{i}]"))
            buf, bp = self.buf, self.bpos
            blen = len(buf)
        self.pos += bp - self.bpos
        self.bpos = bp
        return out

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.read(8, what))[0])

    def string(self, what: str, max_len: int | None = None) -> str:
        n = self.u64(f"{what} length")
        if max_len is not None and n > max_len:
            raise self.fail(f"{what}: length {n} exceeds the maximum of {max_len} bytes")
        raw = self.read(n, f"{what} (string of {n} bytes)")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what}: invalid UTF-8 at byte {e.start} of {n}") from None


def _value_type(cur: _Cursor, raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.fail(f"{what}: unknown GGUF value type {raw} (expected 0..{max(GGUFValueType)})") from None


def _read_scalar(cur: _Cursor, vtype: GGUFValueType, what: str) -> Any:
    fmt, size, _ = SCALAR_FORMATS[vtype]
    v = struct.unpack(fmt, cur.read(size, what))[0]
    if vtype == GGUFValueType.BOOL:
        if v > 1:
            raise cur.fail(f"{what}: bool byte is {v}, expected 0 or 1")
        return bool(v)
    return v


def _read_array(cur: _Cursor, what: str, depth: int) -> tuple[list[Any] | np.ndarray, tuple[GGUFValueType, ...]]:
    if depth > MAX_ARRAY_DEPTH:
        raise cur.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
    etype = _value_type(cur, cur.u32(f"{what} element type"), f"{what} element type")
    n = cur.u64(f"{what} element count")
    if n > GGUF_MAX_ARRAY_ELEMENTS:
        raise cur.fail(f"{what}: array of {n} elements exceeds the maximum of {GGUF_MAX_ARRAY_ELEMENTS}")
    min_bytes = n * _MIN_ELEM_BYTES[etype]
    if min_bytes > cur.left():
        raise cur.fail(f"{what}: array of {n} {etype.name} elements needs at least {min_bytes} bytes, "
                       f"only {cur.where()}")
    if etype in SCALAR_FORMATS and n > MAX_LIST_ELEMENTS:
        return _mapped_array(cur, etype, n, what), (GGUFValueType.ARRAY, etype)
    cur.count(n, what)
    if etype in SCALAR_FORMATS:
        _, size, dtype = SCALAR_FORMATS[etype]
        arr = np.frombuffer(cur.read(n * size, f"{what} data"), dtype=dtype)
        if etype == GGUFValueType.BOOL:
            if n and int(arr.max()) > 1:
                bad = int(np.argmax(arr > 1))
                raise cur.fail(f"{what}[{bad}]: bool byte is {int(arr[bad])}, expected 0 or 1")
            return arr.astype(bool).tolist(), (GGUFValueType.ARRAY, etype)
        return arr.tolist(), (GGUFValueType.ARRAY, etype)
    if etype == GGUFValueType.STRING:
        return cur.strings(n, what), (GGUFValueType.ARRAY, etype)
    # Nested arrays: each inner array carries its own element type; report the first one's (as gguf-py does).
    items: list[Any] = []
    inner: tuple[GGUFValueType, ...] = (GGUFValueType.ARRAY,)
    cur.nested += n
    if cur.nested > MAX_NESTED_ARRAYS:
        raise cur.fail(f"{what}: more than {MAX_NESTED_ARRAYS} nested arrays in the header (hostile or corrupt file)")
    for i in range(n):
        val, t = _read_array(cur, f"{what}[{i}]", depth + 1)
        if i == 0:
            inner = t
        items.append(val)
    return items, (GGUFValueType.ARRAY, *inner)


def _mapped_array(cur: _Cursor, etype: GGUFValueType, n: int, what: str) -> np.ndarray:
    """A long numeric array as a read-only memory map of the file: no RSS until its elements are read. Booleans
    are still checked (0/1), in 1 MiB pieces read with ``pread``."""
    _, size, dtype = SCALAR_FORMATS[etype]
    start = cur.skip(n * size, f"{what} data")
    if etype == GGUFValueType.BOOL:
        fd = cur.f.fileno()
        for off in range(0, n, 1 << 20):
            piece = np.frombuffer(os.pread(fd, min(1 << 20, n - off), start + off), dtype=np.uint8)
            if piece.size and int(piece.max()) > 1:
                bad = int(np.argmax(piece > 1))
                raise cur.fail(f"{what}[{off + bad}]: bool byte is {int(piece[bad])}, expected 0 or 1")
    # np.memmap seeks the file object it is given (to its end, to size it): put the position back, or the next
    # read of the header (refilling the read-ahead window) starts at the wrong place (a valid file refused).
    here = cur.f.tell()
    arr = np.memmap(cur.f, dtype=np.dtype(dtype), mode="r", offset=start, shape=(n,))
    cur.f.seek(here)
    return arr.view(bool) if etype == GGUFValueType.BOOL else arr


def _read_kvs(cur: _Cursor, n_kv: int) -> tuple[dict[str, Any], dict[str, KVType]]:
    kv: dict[str, Any] = {}
    kv_types: dict[str, KVType] = {}
    for i in range(n_kv):
        key = cur.string(f"KV #{i} key", max_len=GGUF_MAX_KEY_BYTES)
        if not key:
            raise cur.fail(f"KV #{i}: key is empty")
        if key in kv:
            raise cur.fail(f"KV #{i}: duplicate key {quote(key)}")
        what = f"key {quote(key)}"
        vtype = _value_type(cur, cur.u32(f"{what} type"), f"{what} type")
        value: Any
        if vtype == GGUFValueType.STRING:
            value = cur.string(f"{what} value")
            cur.count(1, what)
            kv_types[key] = vtype
        elif vtype == GGUFValueType.ARRAY:
            value, kv_types[key] = _read_array(cur, what, 1)
        else:
            value = _read_scalar(cur, vtype, f"{what} value")
            kv_types[key] = vtype
        kv[key] = value
    return kv, kv_types


def _read_tensor_infos(cur: _Cursor, n_tensors: int) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType,
                                                                     int, int]]:
    seen: set[str] = set()
    out = []
    for i in range(n_tensors):
        name = cur.string(f"tensor #{i} name", max_len=GGML_MAX_NAME - 1)
        if not name:
            raise cur.fail(f"tensor #{i}: name is empty")
        if len(name.encode("utf-8")) >= GGML_MAX_NAME:  # pragma: no cover - max_len above already enforces it
            raise cur.fail(f"tensor #{i}: name longer than {GGML_MAX_NAME - 1} bytes")
        if name in seen:
            raise cur.fail(f"tensor #{i}: duplicate tensor name {quote(name)}")
        seen.add(name)
        what = f"tensor {quote(name)}"
        n_dims = cur.u32(f"{what} n_dims")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise cur.fail(f"{what}: n_dims is {n_dims}, expected 1..{GGML_MAX_DIMS}")
        dims = struct.unpack(f"<{n_dims}Q", cur.read(8 * n_dims, f"{what} dims"))
        n_el = 1
        for j, d in enumerate(dims):
            if d == 0 or d > INT64_MAX:
                raise cur.fail(f"{what}: dim {j} is {d}, expected 1..{INT64_MAX}")
            n_el *= d
            if n_el > INT64_MAX:
                raise cur.fail(f"{what}: shape {list(dims)} has more than {INT64_MAX} elements (int64 overflow)")
        raw_type = cur.u32(f"{what} type")
        try:
            gtype = GGMLQuantizationType(raw_type)
            block, tsize = GGML_QUANT_SIZES[gtype]
        except (ValueError, KeyError):
            raise cur.fail(f"{what}: unknown ggml type {raw_type}") from None
        if dims[0] % block:
            raise cur.fail(f"{what}: row length {dims[0]} is not a multiple of {gtype.name}'s block size {block}")
        nbytes = n_el // block * tsize
        if nbytes > INT64_MAX:
            raise cur.fail(f"{what}: {nbytes} bytes does not fit int64")
        offset = cur.u64(f"{what} offset")
        out.append((name, tuple(int(d) for d in dims), gtype, int(offset), int(nbytes)))
    return out


def read_gguf(path: PathLike, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> GGUFFile:
    """Parse a GGUF file's header, key/values and tensor infos (no tensor data), refusing anything malformed.

    Raises :class:`GGUFFormatError` (one line: file, field, expected vs found) on any format violation and
    :class:`InputError` if the file cannot be opened.

    Example:
        >>> gf = read_gguf("model.gguf")                          # doctest: +SKIP
        >>> gf.version, gf.alignment, gf.kv["general.architecture"]   # doctest: +SKIP
        (3, 32, 'qwen2')
    """
    p = Path(path)
    raw = open(open_regular(p, InputError), "rb", buffering=0)  # noqa: SIM115 - a FIFO/device is refused, unopened
    with raw:
        try:
            st = os.fstat(raw.fileno())
        except OSError as e:  # pragma: no cover
            raise InputError(f"{p}: cannot stat: {e.strerror or e}") from None
        if not _is_regular(st.st_mode):
            raise InputError(f"{p}: not a regular file")
        file_size = st.st_size
        # Plain reads of at most 1 MiB beyond what is asked (see _Cursor.read); nothing is mapped.
        try:
            return _parse(raw, p, file_size, max_header_bytes)
        except OSError as e:
            raise InputError(f"{p}: read error: {e.strerror or e}") from None


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _parse(f: BinaryIO, p: Path, file_size: int, max_header_bytes: int) -> GGUFFile:
    cur = _Cursor(f, p, file_size, max_header_bytes)
    if file_size < 4:
        raise cur.fail(f"not a GGUF file: {file_size} bytes, expected at least the 4-byte magic b'GGUF'")
    magic = cur.read(4, "magic")
    if magic != GGUF_MAGIC:
        raise cur.fail(f"bad magic {magic!r}, expected b'GGUF'")
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        raise cur.fail(f"version field is {version:#010x}: a big-endian GGUF file, which is not supported")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version}, expected one of {list(SUPPORTED_VERSIONS)}")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("kv count")
    # refused before any is parsed: the per-object budget (MAX_KV_OBJECTS) counts values, not keys or infos
    if n_kv > MAX_KV_COUNT:
        raise cur.fail(f"kv count {n_kv} exceeds the maximum of {MAX_KV_COUNT} keys (hostile or corrupt file)")
    if n_tensors > MAX_TENSOR_COUNT:
        raise cur.fail(f"tensor count {n_tensors} exceeds the maximum of {MAX_TENSOR_COUNT} tensors "
                       "(hostile or corrupt file)")
    if n_kv * _MIN_KV_BYTES > cur.left():
        raise cur.fail(f"kv count {n_kv} needs at least {n_kv * _MIN_KV_BYTES} bytes, only {cur.where()}")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left():
        raise cur.fail(f"tensor count {n_tensors} (with {n_kv} KVs) needs at least "
                       f"{n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES} bytes, only {cur.where()}")
    kv, kv_types = _read_kvs(cur, n_kv)

    alignment = GGUF_DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        if kv_types["general.alignment"] != GGUFValueType.UINT32:
            raise cur.fail(f"key 'general.alignment' has type {type_name(kv_types['general.alignment'])}, "
                           "expected UINT32")
        alignment = int(kv["general.alignment"])
        if alignment == 0 or alignment & (alignment - 1):
            raise cur.fail(f"key 'general.alignment' is {alignment}, expected a non-zero power of two")

    infos = _read_tensor_infos(cur, n_tensors)
    data_offset = -(-cur.pos // alignment) * alignment
    if infos and data_offset > file_size:
        raise cur.fail(f"data section would start at offset {data_offset}, past the end of the file "
                       f"(size {file_size}): file truncated")

    tensors: list[TensorInfo] = []
    expected = 0  # llama.cpp requires each tensor at the previous one's end, padded to the alignment
    prev: TensorInfo | None = None
    for name, shape, gtype, offset, nbytes in infos:
        what = f"tensor {quote(name)}"
        if offset % alignment:
            raise cur.fail(f"{what}: offset {offset} is not a multiple of the alignment {alignment}")
        abs_off = data_offset + offset
        if abs_off + nbytes > file_size:
            raise cur.fail(f"{what}: data [{abs_off}, {abs_off + nbytes}) extends past the end of the file "
                           f"(size {file_size}): file truncated or offset corrupt")
        if prev is not None and offset < prev.offset + prev.nbytes:
            raise cur.fail(f"{what}: data at offset {offset} overlaps tensor {quote(prev.name)} "
                           f"[{prev.offset}, {prev.offset + prev.nbytes})")
        if offset != expected:
            raise cur.fail(f"{what}: offset {offset}, expected {expected} "
                           "(tensors must be packed in file order, each padded to the alignment)")
        info = TensorInfo(name, shape, gtype, offset, nbytes, abs_off)
        tensors.append(info)
        prev = info
        expected = offset + -(-nbytes // alignment) * alignment

    return GGUFFile(path=p, version=version, alignment=alignment, kv=kv, kv_types=kv_types, tensors=tensors,
                    data_offset=data_offset, file_size=file_size)


def type_name(t: KVType) -> str:
    """A GGUF value type as messages name it: ``UINT32``, ``[STRING]`` for an array of strings."""
    if isinstance(t, tuple):
        return "[" * (len(t) - 1) + t[-1].name + "]" * (len(t) - 1)
    return t.name


# -- describe (used by ``l1quant inspect``) -------------------------------------------------------------------


def _abbrev(value: Any, n: int) -> Any:
    if isinstance(value, list):
        return [_abbrev(v, n) for v in value[:n]]
    return value


def describe(gf: GGUFFile, tokens: int = 8) -> dict[str, Any]:
    """A JSON-ready summary of ``gf``: header, every KV (arrays cut to their first ``tokens`` items, with their
    full length), the tensor table and totals.

    Example:
        >>> d = describe(read_gguf("model.gguf"), tokens=4)      # doctest: +SKIP
        >>> d["totals"]["n_tensors"], d["kv"][0]["key"]          # doctest: +SKIP
        (339, 'general.architecture')
    """
    kvs = []
    for key, value in gf.kv.items():
        item: dict[str, Any] = {"key": key, "type": type_name(gf.kv_types[key])}
        if isinstance(value, np.ndarray):  # a long numeric array left in the file (MAX_LIST_ELEMENTS)
            item["length"] = len(value)
            item["value"] = value[:max(tokens, 0)].tolist()
            item["truncated"] = len(value) > tokens
        elif isinstance(value, list):
            item["length"] = len(value)
            item["value"] = _abbrev(value, max(tokens, 0))
            item["truncated"] = len(value) > tokens
        else:
            item["value"] = value
        kvs.append(item)
    by_type: dict[str, dict[str, Any]] = {}
    for t in gf.tensors:
        e = by_type.setdefault(t.ggml_type.name, {"count": 0, "nbytes": 0, "n_elements": 0})
        e["count"] += 1
        e["nbytes"] += t.nbytes
        e["n_elements"] += t.n_elements
    for e in by_type.values():  # bits per weight, llama.cpp's "BPW": stored bits over values, scales included
        e["bpw"] = round(8 * e["nbytes"] / e["n_elements"], 4) if e["n_elements"] else 0.0
    n_elem = sum(t.n_elements for t in gf.tensors)
    data_bytes = sum(t.nbytes for t in gf.tensors)
    return {
        "file": str(gf.path),
        "file_size": gf.file_size,
        "version": gf.version,
        "alignment": gf.alignment,
        "data_offset": gf.data_offset,
        "kv": kvs,
        "tensors": [{"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "nbytes": t.nbytes,
                     "offset": t.offset} for t in gf.tensors],
        "totals": {
            "n_kv": len(gf.kv),
            "n_tensors": len(gf.tensors),
            "n_elements": n_elem,
            "data_bytes": data_bytes,
            "bpw": round(8 * data_bytes / n_elem, 4) if n_elem else 0.0,
            "by_type": by_type,
        },
    }


def _fmt_value(v: Any, max_chars: int = 160, f32: bool = False) -> str:
    # float32 values print as their shortest float32 repr (0.95, not 0.949999988079071)
    s = str(np.float32(v)) if f32 and isinstance(v, float) else repr(v)
    return s if len(s) <= max_chars else f"{s[:max_chars]}… ({len(s)} chars)"


def format_description(d: dict[str, Any]) -> str:
    """Human-readable text for a :func:`describe` dict.

    Example:
        >>> print(format_description(describe(read_gguf("model.gguf"))))   # doctest: +SKIP
    """
    lines = [
        f"file:        {d['file']}",
        f"size:        {d['file_size']} bytes",
        f"version:     {d['version']}",
        f"alignment:   {d['alignment']}",
        f"data offset: {d['data_offset']}",
        f"kv pairs:    {d['totals']['n_kv']}",
        f"tensors:     {d['totals']['n_tensors']}",
        "",
        "metadata:",
    ]
    kw = max((len(k["key"]) for k in d["kv"]), default=0)
    for k in d["kv"]:
        if "length" in k:
            items = ", ".join(_fmt_value(v, 60, "FLOAT32" in k["type"]) for v in k["value"])
            more = f", … {k['length'] - len(k['value'])} more" if k["truncated"] else ""
            val = f"[{items}{more}] (length {k['length']})"
        else:
            val = _fmt_value(k["value"], f32=k["type"] == "FLOAT32")
        lines.append(f"  {k['key']:<{kw}}  {k['type']:<10} {val}")
    lines += ["", "tensors:"]
    if d["tensors"]:
        nw = max(4, *(len(t["name"]) for t in d["tensors"]))
        lines.append(f"  {'name':<{nw}}  {'type':<7} {'shape':<22} {'bytes':>14} {'offset':>14}")
        for t in d["tensors"]:
            shape = "[" + ", ".join(str(x) for x in t["shape"]) + "]"
            lines.append(f"  {t['name']:<{nw}}  {t['type']:<7} {shape:<22} {t['nbytes']:>14} {t['offset']:>14}")
    tot = d["totals"]
    lines += ["", f"totals: {tot['n_tensors']} tensors, {tot['n_elements']} elements, {tot['data_bytes']} bytes, "
                  f"{tot['bpw']:.2f} bits per weight"]
    for name, e in sorted(tot["by_type"].items(), key=lambda kv: -kv[1]["nbytes"]):
        lines.append(f"  {name:<7} {e['count']:>5} tensors {e['n_elements']:>14} elements {e['nbytes']:>14} bytes "
                     f"{e['bpw']:>7.4f} bpw")
    return "\n".join(lines)

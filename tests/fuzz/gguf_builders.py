"""Raw GGUF byte builders for the reader tests and fuzzers (test tooling only, not part of l1quant).

``build`` serializes exactly what it is given, so tests can produce files that no honest writer would:
lying lengths, bad dims, overlapping offsets. ``valid_spec``/``valid_file`` give a small well-formed baseline
that ``gguf.GGUFReader`` and ``l1quant.gguf.reader.read_gguf`` both accept.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType as Q
from gguf.constants import GGUFValueType as V


def s(text: str | bytes) -> bytes:
    b = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, V.STRING, s(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, V.UINT32, struct.pack("<I", value))


def arr(elem_type: int, count: int, items: bytes) -> bytes:
    return struct.pack("<IQ", elem_type, count) + items


@dataclass
class T:
    name: str | bytes
    dims: list[int]
    ggml_type: int
    offset: int
    data: bytes = b""

    def info(self) -> bytes:
        return (s(self.name) + struct.pack("<I", len(self.dims)) + b"".join(struct.pack("<Q", d) for d in self.dims)
                + struct.pack("<IQ", self.ggml_type, self.offset))


@dataclass
class Spec:
    kvs: list[bytes] = field(default_factory=list)
    tensors: list[T] = field(default_factory=list)
    version: int = 3
    magic: bytes = b"GGUF"
    n_tensors: int | None = None
    n_kv: int | None = None
    alignment: int = 32
    pad_end: bool = False


def build(spec: Spec) -> bytes:
    """Serialize ``spec``: header, KVs, tensor infos, zero padding to the alignment, then each tensor's data at
    ``data_offset + offset`` (zero-filled gaps). The file ends right after the last tensor unless ``pad_end``."""
    n_t = len(spec.tensors) if spec.n_tensors is None else spec.n_tensors
    n_kv = len(spec.kvs) if spec.n_kv is None else spec.n_kv
    head = spec.magic + struct.pack("<IQQ", spec.version, n_t, n_kv) + b"".join(spec.kvs)
    head += b"".join(t.info() for t in spec.tensors)
    data_offset = -(-len(head) // spec.alignment) * spec.alignment
    out = bytearray(head + b"\0" * (data_offset - len(head)))
    for t in spec.tensors:
        if not t.data:
            continue
        start = data_offset + t.offset
        if len(out) < start + len(t.data):
            out += b"\0" * (start + len(t.data) - len(out))
        out[start:start + len(t.data)] = t.data
    if spec.pad_end:
        out += b"\0" * (-len(out) % spec.alignment)
    return bytes(out)


def tensor_payloads() -> dict[str, tuple[list[int], int, bytes]]:
    """Name -> (GGUF dims, ggml type, bytes) for one tensor of each type we write."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 64)).astype(np.float32)
    return {
        "blk.0.attn_q.weight": ([64, 3], Q.Q8_0, quants.quantize(w, Q.Q8_0).tobytes()),
        "blk.0.attn_norm.weight": ([64], Q.F32, w[0].tobytes()),
        "blk.0.ffn_up.weight": ([64, 2], Q.F16, w[:2].astype(np.float16).tobytes()),
        "output.weight": ([64, 3], Q.BF16, quants.quantize(w, Q.BF16).tobytes()),
    }


def valid_spec() -> Spec:
    kvs = [
        kv_str("general.architecture", "qwen2"),
        kv_str("general.name", "tiny"),
        kv_u32("qwen2.block_count", 1),
        kv("tokenizer.ggml.tokens", V.ARRAY, arr(V.STRING, 3, s("a") + s("bb") + s("ccc"))),
        kv("tokenizer.ggml.token_type", V.ARRAY, arr(V.INT32, 3, struct.pack("<3i", 1, 1, 3))),
        kv("x.flag", V.BOOL, b"\x01"),
    ]
    tensors = []
    off = 0
    for name, (dims, gt, data) in tensor_payloads().items():
        tensors.append(T(name, dims, gt, off, data))
        off += -(-len(data) // 32) * 32
    return Spec(kvs=kvs, tensors=tensors)


def valid_file() -> bytes:
    return build(valid_spec())


def field_offsets(path: str) -> tuple[list[int], list[int]]:
    """Offsets of every u64 (lengths, counts, dims, tensor offsets) and u32 (types, n_dims) field of a *valid*
    GGUF file, found by walking ``gguf.GGUFReader``'s parts (contiguous per field). Fuzzers aim overwrites here."""
    import gguf

    r = gguf.GGUFReader(path)
    u64: list[int] = []
    u32: list[int] = []
    fields = [f for f in r.fields.values()] + [t.field for t in r.tensors]
    for f in fields:
        off = f.offset
        for part in f.parts:
            if part.dtype == np.uint64:
                u64 += range(off, off + part.nbytes, 8)
            elif part.dtype == np.uint32:
                u32 += range(off, off + part.nbytes, 4)
            off += part.nbytes
    return sorted(set(u64)), sorted(set(u32))


def gguf_writer_file(path: str, add_kvs: Callable[[Any], None]) -> bytes:
    """The bytes of a file written by ``gguf.GGUFWriter`` at ``path``: ``add_kvs(writer)`` adds the metadata, then
    the :func:`tensor_payloads` tensors are added and everything is written."""
    import gguf

    w = gguf.GGUFWriter(path, "qwen2")
    add_kvs(w)
    for name, (dims, gt, data) in tensor_payloads().items():
        raw = np.frombuffer(data, dtype=np.uint8)
        w.add_tensor(name, raw.reshape(*dims[:0:-1], -1), raw_dtype=gt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


def all_types_file(path: str) -> bytes:
    """A GGUFWriter-made file with every value type, arrays, a nested array and Q8_0/F32/F16/BF16 tensors."""

    def add_kvs(w: Any) -> None:
        w.add_uint8("t.u8", 7)
        w.add_int16("t.i16", -3)
        w.add_uint32("t.u32", 5)
        w.add_float32("t.f32", 0.5)
        w.add_uint64("t.u64", 2**40)
        w.add_float64("t.f64", 1.25)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo")
        w.add_array("a.str", ["a", "bb", "Ġx"])
        w.add_array("a.i32", [1, 2, 3])
        w.add_key_value("a.bool", [True, False], V.ARRAY, sub_type=V.BOOL)
        w.add_array("a.nested", [[1, 2], [3]])

    return gguf_writer_file(path, add_kvs)

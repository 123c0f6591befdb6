"""l1quant.gguf.reader: agrees with gguf.GGUFReader on valid files, refuses hostile ones with one clean line."""

from __future__ import annotations

import json
import struct
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import quants
from gguf.constants import GGMLQuantizationType as Q
from gguf.constants import GGUFValueType as V

from l1quant.cli import main as cli_main
from l1quant.errors import GGUFFormatError, InputError
from l1quant.gguf.reader import GGUFFile, describe, format_description, read_gguf

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from gguf_builders import (
    T,
    arr,
    build,
    gguf_writer_file,
    kv,
    kv_str,
    kv_u32,
    s,
    tensor_payloads,
    valid_file,
    valid_spec,
)

# ---------------------------------------------------------------------------------------------------------------
# valid files written by gguf.GGUFWriter


SCALARS: list[tuple[str, Any, V]] = [
    ("t.u8", 200, V.UINT8), ("t.i8", -100, V.INT8), ("t.u16", 60000, V.UINT16), ("t.i16", -30000, V.INT16),
    ("t.u32", 4_000_000_000, V.UINT32), ("t.i32", -2_000_000_000, V.INT32), ("t.f32", 0.1, V.FLOAT32),
    ("t.u64", 2**64 - 1, V.UINT64), ("t.i64", -(2**62), V.INT64), ("t.f64", 1e-300, V.FLOAT64),
    ("t.bool", True, V.BOOL), ("t.str", "héllo ☃ 𝄞", V.STRING),
]
ARRAYS: list[tuple[str, list[Any], V]] = [
    ("a.u8", [0, 255, 7], V.UINT8), ("a.i8", [-128, 127], V.INT8), ("a.u16", [1, 65535], V.UINT16),
    ("a.i16", [-1, 2], V.INT16), ("a.u32", [1, 2, 3], V.UINT32), ("a.i32", [-5, 5], V.INT32),
    ("a.f32", [0.5, -1.25, 3.0e38], V.FLOAT32), ("a.u64", [2**63], V.UINT64), ("a.i64", [-1, 1], V.INT64),
    ("a.f64", [1.5, -2.5], V.FLOAT64), ("a.bool", [True, False, True], V.BOOL),
    ("a.str", ["a", "", "ĠHello", "<|im_end|>"], V.STRING),
]
NESTED = [[1, 2], [3, 4, 5]]


def _write_with_gguf(path: Path) -> dict[str, bytes]:
    w = gguf.GGUFWriter(str(path), "qwen2")
    for key, val, vt in SCALARS:
        w.add_key_value(key, val, vt)
    for key, val, vt in ARRAYS:
        w.add_key_value(key, val, V.ARRAY, sub_type=vt)
    w.add_array("a.nested", NESTED)
    written: dict[str, bytes] = {}
    for name, (dims, gt, data) in tensor_payloads().items():
        raw = np.frombuffer(data, dtype=np.uint8)
        if gt == Q.F32:
            w.add_tensor(name, raw.view(np.float32).reshape(dims[::-1]))
        elif gt == Q.F16:
            w.add_tensor(name, raw.view(np.float16).reshape(dims[::-1]))
        else:
            w.add_tensor(name, raw.reshape(*dims[:0:-1], -1), raw_dtype=gt)
        written[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    p = tmp_path_factory.mktemp("gguf") / "all.gguf"
    return p, _write_with_gguf(p)


def test_matches_gguf_reader(written: tuple[Path, dict[str, bytes]]) -> None:
    path, data = written
    gf = read_gguf(path)
    ref = gguf.GGUFReader(path)
    ref_fields = [f for f in ref.fields.values() if not f.name.startswith("GGUF.")]
    assert list(gf.kv) == [f.name for f in ref_fields]
    for f in ref_fields:
        types = tuple(f.types)
        assert (gf.kv_types[f.name] if isinstance(gf.kv_types[f.name], tuple) else (gf.kv_types[f.name],)) == types
        if f.name != "a.nested":  # gguf-py flattens nested arrays; compared against the written value below
            assert gf.kv[f.name] == f.contents(), f.name
    assert gf.version == 3 and gf.alignment == 32
    assert gf.data_offset == ref.data_offset
    assert gf.file_size == path.stat().st_size
    assert [t.name for t in gf.tensors] == [t.name for t in ref.tensors] == list(data)
    for t, r in zip(gf.tensors, ref.tensors):
        assert t.shape == tuple(int(x) for x in r.shape)
        assert t.ggml_type == r.tensor_type
        assert t.abs_offset == r.data_offset and t.nbytes == r.n_bytes
        assert gf.read_tensor_bytes(t) == data[t.name] == r.data.tobytes()


def test_values_and_types(written: tuple[Path, dict[str, bytes]]) -> None:
    gf = read_gguf(written[0])
    for key, val, vt in SCALARS:
        assert gf.kv_types[key] == vt
        if vt == V.FLOAT32:
            assert gf.kv[key] == float(np.float32(val))
        else:
            assert gf.kv[key] == val and type(gf.kv[key]) is type(val)
    for key, val, vt in ARRAYS:
        assert gf.kv_types[key] == (V.ARRAY, vt)
        assert gf.kv[key] == ([float(np.float32(v)) for v in val] if vt == V.FLOAT32 else val)
    assert gf.kv["a.nested"] == NESTED
    assert gf.kv_types["a.nested"] == (V.ARRAY, V.ARRAY, V.INT32)


def test_tensor_reads(written: tuple[Path, dict[str, bytes]]) -> None:
    gf = read_gguf(written[0])
    for t in gf.tensors:
        raw = written[1][t.name]
        assert gf.read_tensor_bytes(t, 3, 10) == raw[3:13]
        assert gf.read_tensor_bytes(t, t.nbytes, 0) == b""
        for chunk in (1, 2, 5):
            got = list(gf.tensor_rows(t, chunk))
            assert [r0 for r0, _ in got] == list(range(0, t.n_rows, chunk))
            assert all(a.dtype == np.uint8 and a.shape[1] == t.row_nbytes for _, a in got)
            assert b"".join(a.tobytes() for _, a in got) == raw
        f32 = gf.read_tensor_f32(t)
        assert f32.dtype == np.float32 and f32.shape == t.np_shape
        ref = quants.dequantize(np.frombuffer(raw, np.uint8).reshape(t.n_rows, -1), t.ggml_type)
        np.testing.assert_array_equal(f32, np.asarray(ref, np.float32).reshape(t.np_shape))
    t = gf.tensors[0]
    with pytest.raises(ValueError):
        gf.read_tensor_bytes(t, 1, t.nbytes)
    with pytest.raises(ValueError):
        next(gf.tensor_rows(t, 0))


def test_read_tensor_f32_paths(tmp_path: Path) -> None:
    # Q8_0 goes through l1quant.kernels; Q4_0 (not a kernels type) falls back to gguf.quants.
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    spec = valid_spec().__class__(kvs=[kv_str("general.architecture", "qwen2")])
    q8, q4 = quants.quantize(x, Q.Q8_0).tobytes(), quants.quantize(x, Q.Q4_0).tobytes()
    spec.tensors = [T("q8", [64, 2], Q.Q8_0, 0, q8), T("q4", [64, 2], Q.Q4_0, 160, q4)]
    p = tmp_path / "q.gguf"
    p.write_bytes(build(spec))
    gf = read_gguf(p)
    got8 = gf.read_tensor_f32(gf.tensor("q8"))
    # against gguf's own dequantizer: read_tensor_f32 itself goes through l1quant.kernels
    np.testing.assert_array_equal(got8, quants.dequantize(np.frombuffer(q8, np.uint8).reshape(2, -1), Q.Q8_0))
    np.testing.assert_allclose(got8, x, atol=0.05)
    got4 = gf.read_tensor_f32(gf.tensor("q4"))
    np.testing.assert_array_equal(got4, quants.dequantize(np.frombuffer(q4, np.uint8).reshape(2, -1), Q.Q4_0))
    assert got4.shape == (2, 64) and got4.dtype == np.float32


def test_builder_matches_gguf_writer(tmp_path: Path) -> None:
    # The raw builder used for hostile files writes the same bytes as gguf.GGUFWriter for a valid spec.
    def add_kvs(w: gguf.GGUFWriter) -> None:
        w.add_string("general.name", "tiny")
        w.add_uint32("qwen2.block_count", 1)
        w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
        w.add_array("tokenizer.ggml.token_type", [1, 1, 3])
        w.add_bool("x.flag", True)

    theirs = gguf_writer_file(str(tmp_path / "w.gguf"), add_kvs)
    mine = build(valid_spec())
    assert theirs[:len(mine)] == mine and set(theirs[len(mine):]) <= {0}


def test_alignment_and_v2(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.alignment = 64
    spec.kvs.append(kv_u32("general.alignment", 64))
    off = 0
    for t in spec.tensors:
        t.offset = off
        off += -(-len(t.data) // 64) * 64
    spec.version = 2
    p = tmp_path / "a.gguf"
    p.write_bytes(build(spec))
    gf = read_gguf(p)
    assert gf.version == 2 and gf.alignment == 64 and gf.data_offset % 64 == 0
    assert [t.offset for t in gf.tensors] == [t.offset for t in spec.tensors]


def test_no_tensors_and_empty_array(tmp_path: Path) -> None:
    p = tmp_path / "e.gguf"
    p.write_bytes(build(valid_spec().__class__(kvs=[kv("x.empty", V.ARRAY, arr(V.STRING, 0, b""))])))
    gf = read_gguf(p)
    assert gf.kv == {"x.empty": []} and gf.kv_types["x.empty"] == (V.ARRAY, V.STRING) and gf.tensors == []


def test_describe(written: tuple[Path, dict[str, bytes]]) -> None:
    gf = read_gguf(written[0])
    d = describe(gf, tokens=2)
    json.dumps(d)
    by_key = {k["key"]: k for k in d["kv"]}
    assert by_key["a.str"] == {"key": "a.str", "type": "[STRING]", "length": 4, "value": ["a", ""],
                               "truncated": True}
    assert by_key["a.nested"]["type"] == "[[INT32]]"
    assert d["totals"]["n_tensors"] == 4 and d["totals"]["data_bytes"] == sum(len(b) for b in written[1].values())
    text = format_description(d)
    assert "blk.0.attn_q.weight" in text and "Q8_0" in text and "… 2 more" in text
    assert "t.f32                 FLOAT32    0.1\n" in text and "[0.5, -1.25, … 1 more] (length 3)" in text


# ---------------------------------------------------------------------------------------------------------------
# hostile files


def _reject(tmp_path: Path, data: bytes, *fragments: str, name: str = "bad.gguf") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    tracemalloc.start()
    t0 = time.process_time()  # this process's CPU: a shared machine's load does not stretch it
    try:
        with pytest.raises(GGUFFormatError) as ei:
            read_gguf(p)
    finally:
        elapsed = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    msg = str(ei.value)
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert peak < 8 << 20, f"peak allocation {peak} bytes"
    assert "\n" not in msg and msg.startswith(str(p)), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def _spec_with(**kw: Any):  # type: ignore[no-untyped-def]
    spec = valid_spec()
    for k, v in kw.items():
        setattr(spec, k, v)
    return spec


def _tweak_tensor(i: int, **kw: Any) -> bytes:
    spec = valid_spec()
    for k, v in kw.items():
        setattr(spec.tensors[i], k, v)
    return build(spec)


def test_valid_baseline_accepted(tmp_path: Path) -> None:
    p = tmp_path / "ok.gguf"
    p.write_bytes(valid_file())
    gf = read_gguf(p)
    assert isinstance(gf, GGUFFile) and len(gf.tensors) == 4
    assert len(gguf.GGUFReader(p).tensors) == 4


def test_bad_magic(tmp_path: Path) -> None:
    _reject(tmp_path, b"GGML" + valid_file()[4:], "bad magic", "b'GGML'")
    _reject(tmp_path, b"GG", "at least the 4-byte magic")
    _reject(tmp_path, b"", "0 bytes")


@pytest.mark.parametrize("version,frag", [(0, "unsupported GGUF version 0"), (1, "version 1"), (4, "version 4"),
                                          (0x03000000, "big-endian"), (2**32 - 1, "version 4294967295")])
def test_bad_version(tmp_path: Path, version: int, frag: str) -> None:
    _reject(tmp_path, build(_spec_with(version=version)), frag)


_VALID = valid_file()
_HEADER_END = len(build(_spec_with(tensors=[], n_tensors=len(valid_spec().tensors))))  # rough end of the header


@pytest.mark.parametrize("cut", sorted(set(range(0, _HEADER_END + 40, 7)) | {len(_VALID) - 1, len(_VALID) - 34,
                                                                              len(_VALID) // 2 + 3}))
def test_truncated(tmp_path: Path, cut: int) -> None:
    _reject(tmp_path, _VALID[:cut])


def test_string_length_2_60(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs[1] = kv("general.name", V.STRING, struct.pack("<Q", 2**60) + b"tiny")
    _reject(tmp_path, build(spec), "key 'general.name' value", str(2**60))


def test_key_length_2_60(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs[1] = struct.pack("<Q", 2**60) + spec.kvs[1][8:]
    _reject(tmp_path, build(spec), "KV #1 key", "exceeds the maximum")


@pytest.mark.parametrize("etype", [V.STRING, V.UINT8, V.INT32, V.ARRAY])
def test_array_count_2_62(tmp_path: Path, etype: V) -> None:
    spec = valid_spec()
    spec.kvs[3] = kv("tokenizer.ggml.tokens", V.ARRAY, arr(etype, 2**62, b"\0" * 16))
    _reject(tmp_path, build(spec), "key 'tokenizer.ggml.tokens'", str(2**62))


def test_array_count_beyond_file(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs[3] = kv("tokenizer.ggml.tokens", V.ARRAY, arr(V.STRING, 100_000, s("a")))
    _reject(tmp_path, build(spec), "array of 100000 STRING elements needs at least 800000 bytes")


def test_tensor_count_2_60(tmp_path: Path) -> None:
    _reject(tmp_path, build(_spec_with(n_tensors=2**60)), f"tensor count {2**60}")


@pytest.mark.parametrize("n_kv", [2**63, 2**64 - 1, 1000])
def test_kv_count_huge(tmp_path: Path, n_kv: int) -> None:
    _reject(tmp_path, build(_spec_with(n_kv=n_kv)), f"kv count {n_kv}")


def test_kv_count_too_small_misparses_cleanly(tmp_path: Path) -> None:
    # One KV fewer: the last KV is read as tensor info. Must still be a clean refusal.
    _reject(tmp_path, build(_spec_with(n_kv=5)))


@pytest.mark.parametrize("dims,frag", [([], "n_dims is 0"), ([64, 1, 1, 1, 1], "n_dims is 5"),
                                       ([64, 0], "dim 1 is 0"), ([64, 2**63], "dim 1 is 9223372036854775808"),
                                       ([2**32, 2**32], "int64 overflow"),
                                       ([64, 2**31, 2**31, 2], "int64 overflow")])
def test_bad_dims(tmp_path: Path, dims: list[int], frag: str) -> None:
    _reject(tmp_path, _tweak_tensor(1, dims=dims), "tensor 'blk.0.attn_norm.weight'", frag)


def test_nbytes_overflow(tmp_path: Path) -> None:
    # Element count fits int64 but F32 bytes (x4) do not.
    _reject(tmp_path, _tweak_tensor(1, dims=[2**62]), "does not fit int64")


@pytest.mark.parametrize("gt", [4, 5, 31, 36, 999, 2**32 - 1])
def test_unknown_ggml_type(tmp_path: Path, gt: int) -> None:
    _reject(tmp_path, _tweak_tensor(0, ggml_type=gt), f"unknown ggml type {gt}")


def test_row_not_multiple_of_block(tmp_path: Path) -> None:
    _reject(tmp_path, _tweak_tensor(0, dims=[48, 3]), "not a multiple of Q8_0's block size 32")


@pytest.mark.parametrize("vt", [13, 255, 2**31])
def test_unknown_value_type(tmp_path: Path, vt: int) -> None:
    spec = valid_spec()
    spec.kvs[2] = kv("qwen2.block_count", vt, struct.pack("<I", 1))
    _reject(tmp_path, build(spec), "key 'qwen2.block_count' type", f"unknown GGUF value type {vt}")
    spec.kvs[2] = kv("x.arr", V.ARRAY, arr(vt, 1, b"\0" * 8))
    _reject(tmp_path, build(spec), "key 'x.arr' element type", f"unknown GGUF value type {vt}")


def test_tensor_offset_past_end(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.tensors[-1].offset = 2**40
    spec.tensors[-1].data = b""
    _reject(tmp_path, build(spec), "tensor 'output.weight'", "past the end of the file")
    _reject(tmp_path, _tweak_tensor(-1, offset=2**64 - 32, data=b""), "past the end")


def test_misaligned_offset(tmp_path: Path) -> None:
    _reject(tmp_path, _tweak_tensor(1, offset=128 + 4), "offset 132 is not a multiple of the alignment 32")


def test_overlapping_tensors(tmp_path: Path) -> None:
    _reject(tmp_path, _tweak_tensor(1, offset=0), "tensor 'blk.0.attn_norm.weight'", "overlaps tensor "
            "'blk.0.attn_q.weight'")


def test_gap_between_tensors(tmp_path: Path) -> None:
    spec = valid_spec()
    for t in spec.tensors[1:]:
        t.offset += 32
    _reject(tmp_path, build(spec), "offset 256, expected 224")


def test_duplicate_key(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs.append(kv_str("general.name", "again"))
    _reject(tmp_path, build(spec), "duplicate key 'general.name'")


def test_empty_key(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs.append(kv_str("", "x"))
    _reject(tmp_path, build(spec), "key is empty")


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    _reject(tmp_path, _tweak_tensor(1, name="blk.0.attn_q.weight"), "duplicate tensor name 'blk.0.attn_q.weight'")


def test_tensor_name_limits(tmp_path: Path) -> None:
    # llama.cpp refuses names of GGML_MAX_NAME (64) bytes or more; 63 is the longest it takes.
    _reject(tmp_path, _tweak_tensor(1, name="n" * 64), "tensor #1 name", "maximum of 63")
    p = tmp_path / "ok63.gguf"
    p.write_bytes(_tweak_tensor(1, name="n" * 63))
    assert read_gguf(p).tensors[1].name == "n" * 63
    _reject(tmp_path, _tweak_tensor(1, name=""), "name is empty")
    _reject(tmp_path, _tweak_tensor(1, name=b"\xc3("), "tensor #1 name", "invalid UTF-8")


def test_invalid_utf8(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs.append(kv_str(b"bad.\xff\xfekey", "x"))  # type: ignore[arg-type]
    _reject(tmp_path, build(spec), "KV #6 key", "invalid UTF-8")
    spec = valid_spec()
    spec.kvs[1] = kv_str("general.name", b"\xed\xa0\x80")  # a UTF-16 surrogate: not valid UTF-8
    _reject(tmp_path, build(spec), "key 'general.name' value", "invalid UTF-8")
    spec = valid_spec()
    spec.kvs[3] = kv("tokenizer.ggml.tokens", V.ARRAY, arr(V.STRING, 2, s("ok") + s(b"\x80")))
    _reject(tmp_path, build(spec), "key 'tokenizer.ggml.tokens'[1]", "invalid UTF-8")


def test_bad_bool(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs[5] = kv("x.flag", V.BOOL, b"\x02")
    _reject(tmp_path, build(spec), "key 'x.flag' value", "bool byte is 2")
    spec.kvs[5] = kv("x.flag", V.ARRAY, arr(V.BOOL, 3, b"\x00\x01\x07"))
    _reject(tmp_path, build(spec), "key 'x.flag'[2]", "bool byte is 7")


def test_nesting_depth(tmp_path: Path) -> None:
    payload = arr(V.UINT8, 0, b"")
    for _ in range(40):
        payload = arr(V.ARRAY, 1, payload)
    spec = valid_spec()
    spec.kvs.append(kv("x.deep", V.ARRAY, payload))
    _reject(tmp_path, build(spec), "nested deeper than 8")


@pytest.mark.parametrize("payload,frag", [(kv_u32("general.alignment", 0), "non-zero power of two"),
                                          (kv_u32("general.alignment", 48), "is 48"),
                                          (kv_str("general.alignment", "32"), "type STRING, expected UINT32"),
                                          (kv("general.alignment", V.UINT64, struct.pack("<Q", 32)), "UINT64")])
def test_bad_alignment(tmp_path: Path, payload: bytes, frag: str) -> None:
    spec = valid_spec()
    spec.kvs.append(payload)
    _reject(tmp_path, build(spec), "general.alignment", frag)


def test_header_limit(tmp_path: Path) -> None:
    spec = valid_spec()
    spec.kvs.append(kv_str("x.big", "x" * 5000))
    p = tmp_path / "big.gguf"
    p.write_bytes(build(spec))
    with pytest.raises(GGUFFormatError, match="header limit"):
        read_gguf(p, max_header_bytes=1024)
    assert read_gguf(p).kv["x.big"] == "x" * 5000


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot (open|read)"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(InputError):
        read_gguf(tmp_path)


def test_file_shrinks_after_parse(tmp_path: Path) -> None:
    p = tmp_path / "shrink.gguf"
    p.write_bytes(_VALID)
    gf = read_gguf(p)
    p.write_bytes(_VALID[: gf.tensors[-1].abs_offset + 5])
    with pytest.raises(GGUFFormatError, match="truncated after opening"):
        gf.read_tensor_bytes(gf.tensors[-1])
    with pytest.raises(GGUFFormatError, match="truncated after opening"):
        list(gf.tensor_rows(gf.tensors[-1], 1))


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_inspect_valid(written: tuple[Path, dict[str, bytes]]) -> None:
    r = CliRunner().invoke(cli_main, ["inspect", str(written[0]), "--tokens", "1"])
    assert r.exit_code == 0, r.output
    assert "blk.0.attn_q.weight" in r.output and "Q8_0" in r.output and "[64, 3]" in r.output
    assert "['a', … 3 more] (length 4)" in r.output
    r = CliRunner().invoke(cli_main, ["inspect", str(written[0]), "--json", "--tokens", "100"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)
    assert d["totals"]["n_tensors"] == 4
    assert {k["key"]: k for k in d["kv"]}["a.str"]["value"] == ["a", "", "ĠHello", "<|im_end|>"]


@pytest.mark.parametrize("mutation", ["strlen", "magic", "truncated"])
def test_cli_inspect_hostile(tmp_path: Path, mutation: str) -> None:
    spec = valid_spec()
    if mutation == "strlen":
        spec.kvs[1] = kv("general.name", V.STRING, struct.pack("<Q", 2**60))
        data = build(spec)
    elif mutation == "magic":
        data = b"XXXX" + _VALID[4:]
    else:
        data = _VALID[:100]
    p = tmp_path / "hostile.gguf"
    p.write_bytes(data)
    r = CliRunner().invoke(cli_main, ["inspect", str(p)])
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l1quant: error: ") and str(p) in lines[0]
    assert "Traceback" not in r.output


def test_control_characters_escaped_in_messages(tmp_path: Path) -> None:
    # Found by atheris: a key holding a newline made a two-line error. Names are quoted with escapes now.
    spec = valid_spec()
    spec.kvs.append(kv("evil\nkey\x1b[2J", 99, b""))
    msg = _reject(tmp_path, build(spec), "key 'evil\\nkey\\x1b[2J' type", "unknown GGUF value type 99")
    assert "\x1b" not in msg


@pytest.mark.parametrize("read_ahead", [1, 7, 64])
def test_small_read_ahead_window(written: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch,
                                 read_ahead: int) -> None:
    # Every value straddles the read-ahead window's edge somewhere: the fast and checked paths must agree.
    import l1quant.gguf.reader as gr

    expected = read_gguf(written[0])
    monkeypatch.setattr(gr, "_READ_AHEAD", read_ahead)
    got = read_gguf(written[0])
    assert got.kv == expected.kv and got.kv_types == expected.kv_types and got.tensors == expected.tensors
    spec = valid_spec()
    spec.kvs[3] = kv("tokenizer.ggml.tokens", V.ARRAY, arr(V.STRING, 3, s("a") + s("bb") + s(b"c\xffc")))
    msg = _reject(written[0].parent, build(spec), "key 'tokenizer.ggml.tokens'[2]", "invalid UTF-8 at byte 1 of 3",
                  name=f"ra{read_ahead}.gguf")
    assert msg


def test_real_vocabulary_size(tmp_path: Path) -> None:
    # The Qwen2.5 vocabulary (151,665 tokens, 151,387 merges) parses identically to gguf.GGUFReader's view.
    tok = json.loads((Path(__file__).parent / "data" / "qwen2.5-tokenizer" / "tokenizer.json").read_text())
    vocab = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    p = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(p), "qwen2")
    w.add_token_list(vocab)
    w.add_token_merges(merges)
    w.add_tensor("t", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t0 = time.process_time()
    gf = read_gguf(p)
    elapsed = time.process_time() - t0
    assert gf.kv["tokenizer.ggml.tokens"] == vocab and gf.kv["tokenizer.ggml.merges"] == merges
    assert gf.kv_types["tokenizer.ggml.merges"] == (V.ARRAY, V.STRING)
    assert elapsed < 5.0, f"{elapsed:.2f}s"

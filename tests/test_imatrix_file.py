"""Importance-matrix files (l1quant/imatrix_file.py), both formats built byte by byte here, read into the per-column
means llama-quantize computes (tools/quantize/quantize.cpp ``load_imatrix`` over common/imatrix-loader.cpp)."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from l1quant.imatrix_file import ImatrixFileError, read_imatrix, write_legacy_imatrix


def legacy_bytes(entries: list[tuple[bytes, int, np.ndarray]], trailer: bytes = b"") -> bytes:
    """The .dat layout written by hand: int32 count; per entry int32 len, name, int32 ncall, int32 nval, floats."""
    out = [struct.pack("<i", len(entries))]
    for name, ncall, vals in entries:
        v = np.asarray(vals, "<f4")
        out += [struct.pack("<i", len(name)), name, struct.pack("<ii", ncall, v.size), v.tobytes()]
    return b"".join(out) + trailer


def test_legacy_means_and_trailer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(64) * 7).astype(np.float32)
    b = (rng.random(32) * 3).astype(np.float32)
    z = rng.random(8).astype(np.float32)
    data = legacy_bytes([(b"blk.0.attn_q.weight", 7, a), (b"blk.0.ffn_down.weight", 3, b),
                         (b"blk.1.ffn_up.weight\0junk", 0, z)],
                        trailer=struct.pack("<i", 7) + struct.pack("<i", 9) + b"wiki.txt\0")
    (tmp_path / "m.dat").write_bytes(data)
    im = read_imatrix(tmp_path / "m.dat")
    assert im.legacy and im.chunk_count == 7 and im.chunk_size == 0 and im.datasets == ("wiki.txt",)
    assert im.names == ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_up.weight"]  # name cut at NUL
    # float32 value / float32(ncall), exactly as the C loop divides
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"], a / np.float32(7))
    np.testing.assert_array_equal(im.entries["blk.0.ffn_down.weight"], b / np.float32(3))
    np.testing.assert_array_equal(im.entries["blk.1.ffn_up.weight"], z)  # ncall 0: the raw values
    assert all(v.dtype == np.float32 for v in im.entries.values())


def test_legacy_optional_trailer_and_duplicates(tmp_path: Path) -> None:
    one, two = np.ones(4, np.float32), np.full(4, 6, np.float32)
    (tmp_path / "a.dat").write_bytes(legacy_bytes([(b"w", 1, one), (b"w", 2, two)]))
    im = read_imatrix(tmp_path / "a.dat")
    assert im.chunk_count == 0 and im.datasets == ()
    np.testing.assert_array_equal(im.entries["w"], np.full(4, 3, np.float32))  # the later entry replaces
    (tmp_path / "b.dat").write_bytes(legacy_bytes([(b"w", 1, one)], trailer=struct.pack("<i", 5)))
    im = read_imatrix(tmp_path / "b.dat")
    assert im.chunk_count == 5 and im.datasets == ()


def test_legacy_writer_round_trip(tmp_path: Path) -> None:
    means = {"blk.0.attn_k.weight": np.array([0.25, 8.0, 0.0], np.float32)}
    write_legacy_imatrix(tmp_path / "r.dat", means, ncall=4, chunk_count=4, dataset="d")
    assert (tmp_path / "r.dat").read_bytes() == legacy_bytes(
        [(b"blk.0.attn_k.weight", 4, means["blk.0.attn_k.weight"] * 4)],
        trailer=struct.pack("<i", 4) + struct.pack("<i", 1) + b"d")
    np.testing.assert_array_equal(read_imatrix(tmp_path / "r.dat").entries["blk.0.attn_k.weight"],
                                  means["blk.0.attn_k.weight"])


def write_gguf_imatrix(path: Path, tensors: dict[str, np.ndarray], *, datasets: list[str] | None = None,
                       chunk_count: int | None = 10, chunk_size: int | None = 512) -> None:
    w = gguf.GGUFWriter(path, arch="imatrix")
    w.add_string("general.type", "imatrix")
    if datasets is not None:
        w.add_array("imatrix.datasets", datasets)
    if chunk_count is not None:
        w.add_uint32("imatrix.chunk_count", chunk_count)
    if chunk_size is not None:
        w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_means(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    s_dense = (rng.random((1, 48)) * 1000).astype(np.float32)  # numpy (n_mat, ne0) = GGUF [ne0, n_mat]
    s_moe = (rng.random((3, 16)) * 100).astype(np.float32)
    tensors = {
        "blk.0.attn_v.weight.in_sum2": s_dense,
        "blk.0.attn_v.weight.counts": np.array([[1024.0]], np.float32),
        "blk.0.ffn_up_exps.weight.in_sum2": s_moe,
        # expert 0 seen 2.5 -> lround 3 times, expert 1 never (weights 1), expert 2 seven times
        "blk.0.ffn_up_exps.weight.counts": np.array([[2.5, 0.0, 7.0]], np.float32),
    }
    write_gguf_imatrix(tmp_path / "m.gguf", tensors, datasets=["calib.txt", "more.txt"])
    im = read_imatrix(tmp_path / "m.gguf")
    assert not im.legacy and im.chunk_count == 10 and im.chunk_size == 512
    assert im.datasets == ("calib.txt", "more.txt")
    assert im.names == ["blk.0.attn_v.weight", "blk.0.ffn_up_exps.weight"]
    np.testing.assert_array_equal(im.entries["blk.0.attn_v.weight"], s_dense[0] / np.float32(1024))
    moe = im.entries["blk.0.ffn_up_exps.weight"]
    np.testing.assert_array_equal(moe[:16], s_moe[0] / np.float32(3))
    np.testing.assert_array_equal(moe[16:32], np.ones(16, np.float32))
    np.testing.assert_array_equal(moe[32:], s_moe[2] / np.float32(7))


def test_gguf_refusals(tmp_path: Path) -> None:
    ok = {"w.in_sum2": np.ones((1, 8), np.float32), "w.counts": np.ones((1, 1), np.float32)}
    write_gguf_imatrix(tmp_path / "nometa.gguf", ok, chunk_size=None)
    with pytest.raises(ImatrixFileError, match=r"nometa.gguf: missing imatrix metadata \(no imatrix.datasets, "
                                                r"imatrix.chunk_size\)"):
        read_imatrix(tmp_path / "nometa.gguf")
    write_gguf_imatrix(tmp_path / "unpaired.gguf", {"w.in_sum2": np.ones((1, 8), np.float32)}, datasets=["d"])
    with pytest.raises(ImatrixFileError, match="'w' has a .in_sum2 and no .counts tensor"):
        read_imatrix(tmp_path / "unpaired.gguf")
    write_gguf_imatrix(tmp_path / "f16.gguf", {"w.in_sum2": np.ones((1, 8), np.float16),
                                               "w.counts": np.ones((1, 1), np.float32)}, datasets=["d"])
    with pytest.raises(ImatrixFileError, match="'w.in_sum2' must be F32, found F16"):
        read_imatrix(tmp_path / "f16.gguf")
    bad = {"w.in_sum2": np.array([[1.0, np.inf]], np.float32), "w.counts": np.ones((1, 1), np.float32)}
    write_gguf_imatrix(tmp_path / "inf.gguf", bad, datasets=["d"])
    with pytest.raises(ImatrixFileError, match="entry 'w': column 1 is inf"):
        read_imatrix(tmp_path / "inf.gguf")
    data = (tmp_path / "nometa.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImatrixFileError, match="cut.gguf"):
        read_imatrix(tmp_path / "cut.gguf")


def test_legacy_refusals(tmp_path: Path) -> None:
    good = legacy_bytes([(b"w", 2, np.ones(8, np.float32))])
    cases = {
        "empty.dat": (b"", "the entry count needs 4 bytes"),
        "zero.dat": (struct.pack("<i", 0), r"no data \(entry count 0\)"),
        "huge.dat": (struct.pack("<i", 1 << 30) + good[4:], "entry count 1073741824 does not fit"),
        "cut.dat": (good[:-3], "entry 'w''s 8 values needs 32 bytes"),
        "nval.dat": (legacy_bytes([(b"w", 1, np.ones(0, np.float32))]), "'w' has 0 values"),
        "nan.dat": (legacy_bytes([(b"w", 1, np.array([1.0, np.nan], np.float32))]), "column 1 is nan"),
        "text.dat": (b"hello, this is not an imatrix file at all", "not an imatrix file"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImatrixFileError, match=msg) as e:
            read_imatrix(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImatrixFileError, match="not a regular file"):
        read_imatrix(tmp_path)


def test_weights_for_a_tensor(tmp_path: Path) -> None:
    """As llama-quantize looks an entry up: by tensor name, size ne0 x n_experts, row j for expert j; a size
    mismatch is refused naming the tensor, except for token_embd (quantized without weights then)."""
    means = {"blk.0.ffn_up_exps.weight": np.arange(12, dtype=np.float32), "token_embd.weight": np.ones(3, np.float32)}
    write_legacy_imatrix(tmp_path / "m.dat", means)
    im = read_imatrix(tmp_path / "m.dat")
    w = im.weights_for("blk.0.ffn_up_exps.weight", 4, 3)
    assert w is not None and w.shape == (3, 4) and w[2].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert im.weights_for("blk.0.attn_q.weight", 4) is None
    assert im.weights_for("token_embd.weight", 8) is None
    with pytest.raises(ImatrixFileError, match=r"'blk.0.ffn_up_exps.weight' has 12 values, the tensor needs 8"):
        im.weights_for("blk.0.ffn_up_exps.weight", 8)

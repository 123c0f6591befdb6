"""Importance-matrix files (l1quant/imatrix_file.py): both formats built byte by byte here, read into the per-column
means llama-quantize computes (tools/quantize/quantize.cpp ``load_imatrix`` over common/imatrix-loader.cpp); and
written as llama-imatrix saves them: the GGUF bytes compared with ggml's own gguf writer (libggml-base through
ctypes, with the calls ``IMatrixCollector::save_imatrix`` makes), the .dat bytes with the layout built by hand."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from ggml_oracle import ggml_library

from l1quant.imatrix_file import Imatrix, ImatrixFileError, quantize_keys, read_imatrix, write_imatrix


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


def test_dat_writer_bytes(tmp_path: Path) -> None:
    """save_imatrix_legacy: sorted names, entries without data skipped, ncall = ceil(max count / chunk size),
    values (sum / count) * ncall with 1 for an unused expert, then chunk count and the last dataset name."""
    sums_a = np.array([3.0, 6.0, 9.0, 12.0], np.float32)
    sums_b = np.array([10.0, 20.0, 5.0, 7.0, 1.0, 2.0], np.float32)  # 3 experts of 2 columns, expert 1 unused
    stats = {"z.weight": (sums_a, np.array([1000])), "a.weight": (sums_b, np.array([300, 0, 10])),
             "unused.weight": (np.ones(4, np.float32), np.array([0, 0]))}
    write_imatrix(tmp_path / "m.dat", stats, datasets=["first.txt", "calib.txt"], chunk_count=3, chunk_size=512,
                  output_format="dat")
    f = np.float32
    want_a = np.array([10 / f(300), 20 / f(300), 1, 1, 1 / f(10), 2 / f(10)], np.float32) * f(1)  # ncall 1
    want_z = (sums_a / f(1000)) * f(2)  # ncall = ceil(1000 / 512) = 2
    assert (tmp_path / "m.dat").read_bytes() == legacy_bytes(
        [(b"a.weight", 1, want_a), (b"z.weight", 2, want_z)],
        trailer=struct.pack("<i", 3) + struct.pack("<i", 9) + b"calib.txt")
    im = read_imatrix(tmp_path / "m.dat")
    np.testing.assert_array_equal(im.entries["z.weight"], want_z / f(2))


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
    (tmp_path / "m.dat").write_bytes(legacy_bytes([(k.encode(), 1, v) for k, v in means.items()]))
    im = read_imatrix(tmp_path / "m.dat")
    w = im.weights_for("blk.0.ffn_up_exps.weight", 4, 3)
    assert w is not None and w.shape == (3, 4) and w[2].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert im.weights_for("blk.0.attn_q.weight", 4) is None
    assert im.weights_for("token_embd.weight", 8) is None
    with pytest.raises(ImatrixFileError, match=r"'blk.0.ffn_up_exps.weight' has 12 values, the tensor needs 8"):
        im.weights_for("blk.0.ffn_up_exps.weight", 8)


def ggml_gguf_imatrix(path: Path, stats: dict[str, tuple[np.ndarray, np.ndarray]], datasets: list[str],
                      chunk_count: int, chunk_size: int) -> None:
    """What IMatrixCollector::save_imatrix does, through ggml's own gguf API (libggml-base via ctypes)."""
    lib = ggml_library()

    class InitParams(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

    vp = ctypes.c_void_p
    lib.ggml_init.restype = vp
    lib.ggml_init.argtypes = [InitParams]
    lib.ggml_new_tensor_2d.restype = vp
    lib.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_set_name.restype = vp
    lib.ggml_set_name.argtypes = [vp, ctypes.c_char_p]
    lib.ggml_get_data.restype = vp
    lib.ggml_get_data.argtypes = [vp]
    lib.ggml_free.argtypes = [vp]
    lib.gguf_init_empty.restype = vp
    lib.gguf_set_val_str.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
    lib.gguf_set_arr_str.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]
    lib.gguf_set_val_u32.argtypes = [vp, ctypes.c_char_p, ctypes.c_uint32]
    lib.gguf_add_tensor.argtypes = [vp, vp]
    lib.gguf_write_to_file.restype = ctypes.c_bool
    lib.gguf_write_to_file.argtypes = [vp, ctypes.c_char_p, ctypes.c_bool]
    lib.gguf_free.argtypes = [vp]
    ctx = lib.ggml_init(InitParams(64 << 20, None, False))
    g = lib.gguf_init_empty()
    lib.gguf_set_val_str(g, b"general.type", b"imatrix")
    arr = (ctypes.c_char_p * len(datasets))(*[d.encode() for d in datasets])
    lib.gguf_set_arr_str(g, b"imatrix.datasets", arr, len(datasets))
    lib.gguf_set_val_u32(g, b"imatrix.chunk_count", chunk_count)
    lib.gguf_set_val_u32(g, b"imatrix.chunk_size", chunk_size)
    for name in sorted(stats):
        values, counts = stats[name]
        nmat = counts.size
        for suffix, ne0, data in ((".in_sum2", values.size // nmat, values.astype(np.float32)),
                                  (".counts", 1, counts.astype(np.float32))):
            t = lib.ggml_new_tensor_2d(ctx, 0, ne0, nmat)  # GGML_TYPE_F32
            lib.ggml_set_name(t, (name + suffix).encode())
            ctypes.memmove(lib.ggml_get_data(t), data.ctypes.data, data.nbytes)
            lib.gguf_add_tensor(g, t)
    assert lib.gguf_write_to_file(g, str(path).encode(), False)
    lib.gguf_free(g)
    lib.ggml_free(ctx)


def test_gguf_writer_bytes_equal_ggml(tmp_path: Path) -> None:
    """write_imatrix(output_format="gguf") writes the bytes ggml's gguf writer writes for llama-imatrix's calls:
    dense and expert entries (1-D tensors where n_mat is 1: ggml drops trailing 1 dims), unused experts, several
    datasets, names sorted."""
    rng = np.random.default_rng(4)
    stats = {
        "blk.1.attn_q.weight": ((rng.random(96) * 500).astype(np.float32), np.array([2048])),
        "blk.0.ffn_down_exps.weight": ((rng.random(3 * 40) * 9).astype(np.float32), np.array([512, 0, 77])),
        "blk.0.attn_k.weight": ((rng.random(7) * 3).astype(np.float32), np.array([13])),
    }
    write_imatrix(tmp_path / "ours.gguf", stats, datasets=["calib.txt", "more.txt"], chunk_count=4, chunk_size=512)
    ggml_gguf_imatrix(tmp_path / "ggml.gguf", stats, ["calib.txt", "more.txt"], 4, 512)
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "ggml.gguf").read_bytes()
    im = read_imatrix(tmp_path / "ours.gguf")
    assert im.names == sorted(stats) and im.chunk_count == 4 and im.chunk_size == 512
    moe = im.entries["blk.0.ffn_down_exps.weight"]
    sums = stats["blk.0.ffn_down_exps.weight"][0]
    np.testing.assert_array_equal(moe, np.concatenate([sums[:40] / np.float32(512), np.ones(40, np.float32),
                                                       sums[80:] / np.float32(77)]))


def test_quantize_keys() -> None:
    """llama-quantize's four keys: the path as given cut to 127 bytes, the first dataset, the entry count after
    filtering, the chunk count only when non-zero; counts as u32."""
    im = Imatrix({"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)}, ("x" * 200, "y"), 0, 0, legacy=True)
    keys = quantize_keys(im, "dir/" + "é" * 70, n_entries=1)
    assert [k for k, _, _ in keys] == ["quantize.imatrix.file", "quantize.imatrix.dataset",
                                       "quantize.imatrix.entries_count"]
    file_value = keys[0][2]
    assert file_value == ("dir/" + "é" * 70).encode()[:127] and isinstance(file_value, bytes)  # cut mid-character
    assert keys[1][2] == "x" * 127
    assert keys[2][1:] == (gguf.GGUFValueType.UINT32, 1)
    keys = quantize_keys(Imatrix({}, (), 5, 512, legacy=False), "m.gguf")
    assert [(k, v) for k, _, v in keys] == [("quantize.imatrix.file", "m.gguf"),
                                            ("quantize.imatrix.entries_count", 0), ("quantize.imatrix.chunks_count", 5)]

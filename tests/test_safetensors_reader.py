"""Our safetensors reader against files written by the official ``safetensors`` library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l1quant.kernels import decode_bf16
from l1quant.source.safetensors import open_checkpoint, read_header
from l1quant.testing import write_safetensors

st_numpy = pytest.importorskip("safetensors.numpy")


def test_reads_what_safetensors_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        "b.f32": rng.standard_normal((7, 33), dtype=np.float32),
        "a.f16": rng.standard_normal((5, 64)).astype(np.float16),
        "c.i64": np.arange(12, dtype=np.int64).reshape(3, 4),
        "d.vec": rng.standard_normal(9).astype(np.float32),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = tmp_path / "model.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"format": "np"})
    got, meta = read_header(path)
    assert meta == {"format": "np"}
    assert set(got) == set(tensors)
    for name, arr in tensors.items():
        t = got[name]
        assert t.shape == arr.shape
        np.testing.assert_array_equal(t.read(), arr)
    # row ranges, into a caller buffer
    buf = np.empty((2, 33), np.float32)
    np.testing.assert_array_equal(got["b.f32"].read_rows(3, 5, out=buf), tensors["b.f32"][3:5])
    # the checkpoint index is sorted by name, as llama.cpp orders tensors
    assert list(open_checkpoint(tmp_path).tensors) == sorted(tensors)


def test_safetensors_library_agrees_on_our_bf16_files(tmp_path: Path) -> None:
    """Files written by l1quant.testing (bf16 included) load in the official library with the same values."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    bits = np.array([[0x3F80, 0xBF80, 0x0001, 0x7F7F], [0x0000, 0x8000, 0x4049, 0xC2F7]], dtype=np.uint16)
    write_safetensors(tmp_path / "m.safetensors", {"x": ((2, 4), "bf16")}, lambda n: iter([bits.tobytes()]))
    ref = load_file(str(tmp_path / "m.safetensors"))["x"].to(torch.float32).numpy()
    ours = decode_bf16(read_header(tmp_path / "m.safetensors")[0]["x"].read())
    np.testing.assert_array_equal(ours, ref)

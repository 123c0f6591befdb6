"""The GGUF header model (l1quant/gguf/header.py) and its writer: byte-identical to gguf-py's writer, a file's
header read back and rewritten unchanged, llama-quantize's key layout, verify's key-order check."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import l1quant
from l1quant.conversion.plan import layout
from l1quant.conversion.quantize import quantized_header
from l1quant.gguf.header import Header
from l1quant.gguf.reader import read_gguf
from l1quant.gguf.writer import data_offset, encode_header, write_header

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from gguf_builders import all_types_file  # noqa: E402

V = gguf.GGUFValueType
PKG = Path(l1quant.__file__).parent


def test_a_files_header_is_rewritten_byte_for_byte(tmp_path: Path) -> None:
    # every value type, arrays, a nested array and four tensor types, written by gguf-py's own writer
    data = all_types_file(str(tmp_path / "all.gguf"))
    gf = read_gguf(tmp_path / "all.gguf")
    h = Header.from_file(gf)
    assert data_offset(h) == gf.data_offset
    assert encode_header(h) == data[:len(encode_header(h))]
    assert data[len(encode_header(h)):gf.data_offset] == bytes(gf.data_offset - len(encode_header(h)))


def test_header_built_through_gguf_helpers_equals_gguf_writer(tmp_path: Path) -> None:
    h = Header()
    h.add("general.architecture", "qwen2", V.STRING)
    ours = h.gguf_writer("qwen2")
    theirs = gguf.GGUFWriter(tmp_path / "ref.gguf", "qwen2")
    for w in (ours, theirs):
        w.add_name("Tiny")
        w.add_context_length(4096)
        w.add_rope_freq_base(1e6)
        w.add_token_list([f"t{i}" for i in range(300)])
        w.add_token_types([1] * 299 + [3])
        w.add_chat_template([{"name": "default", "template": "x"}, {"name": "tool use", "template": "y"}])
        w.add_bool("tokenizer.ggml.add_bos_token", True)
        w.add_name("Tiny again")  # an existing key keeps its place
    for name, shape, gt, nbytes in (("a.weight", (3, 64), gguf.GGMLQuantizationType.Q8_0, 204),
                                    ("b.weight", (5,), gguf.GGMLQuantizationType.F32, 20)):
        h.add_tensor(name, tuple(reversed(shape)), gt, nbytes)
        theirs.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=gt)
    theirs.write_header_to_file()
    theirs.write_kv_data_to_file()
    theirs.write_ti_data_to_file()
    theirs.close()
    ref = (tmp_path / "ref.gguf").read_bytes()
    assert encode_header(h) == ref
    out = tmp_path / "ours.gguf"
    with open(out, "wb") as f:
        assert write_header(h, f.fileno()) == -(-len(ref) // 32) * 32
    assert out.read_bytes()[:len(ref)] == ref and set(out.read_bytes()[len(ref):]) <= {0}


def test_quantized_header_moves_and_drops_keys_as_llama_quantize(tmp_path: Path) -> None:
    path = tmp_path / "in.gguf"
    w = gguf.GGUFWriter(path, "qwen2")
    w.add_file_type(1)
    w.add_quantization_version(2)
    w.add_uint16("split.no", 0)
    w.add_block_count(1)
    w.add_token_list(["a", "b"])
    w.add_tensor("output_norm.weight", np.zeros(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gf = read_gguf(path)
    plan = layout("qwen2", "Q4_K_M", 15, [], [])
    h = quantized_header(gf, plan)
    assert list(h.kv) == ["general.architecture", "qwen2.block_count", "tokenizer.ggml.tokens",
                          "general.quantization_version", "general.file_type"]
    assert h.kv["general.file_type"].value == 15 and h.kv["general.file_type"].type == V.UINT32
    assert h.kv["tokenizer.ggml.tokens"].type == (V.ARRAY, V.STRING)


def test_gguf_package_imports_nothing_from_conversion() -> None:
    for py in sorted((PKG / "gguf").glob("*.py")):
        for node in ast.walk(ast.parse(py.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("l1quant.conversion") for n in names), py.name


def _rewrite_swapped(src: Path, dst: Path, a: str, b: str) -> None:
    """``src`` with keys ``a`` and ``b`` exchanging places (values, types and tensors unchanged)."""
    gf = read_gguf(src)
    h = Header.from_file(gf)
    keys = list(h.kv)
    i, j = keys.index(a), keys.index(b)
    keys[i], keys[j] = keys[j], keys[i]
    h.kv = {k: h.kv[k] for k in keys}
    data = bytearray(src.read_bytes())
    assert data_offset(h) == gf.data_offset
    head = encode_header(h)
    data[:len(head)] = head
    dst.write_bytes(bytes(data))


def test_verify_reports_a_key_out_of_order(tiny_r1: Path, tmp_path: Path) -> None:
    out = l1quant.convert(tiny_r1, "q8_0", tmp_path / "m.gguf")
    bad = tmp_path / "swapped.gguf"
    _rewrite_swapped(out, bad, "tokenizer.ggml.model", "tokenizer.ggml.pre")
    assert l1quant.verify(out, source=tiny_r1).passed
    rep = l1quant.verify(bad, source=tiny_r1)
    failed = {c.name: c.message for c in rep.checks if c.failed}
    assert list(failed) == ["source.tokenizer"], failed
    assert "'tokenizer.ggml.pre' comes before 'tokenizer.ggml.model'" in failed["source.tokenizer"]


@pytest.mark.parametrize("flags, group", [({"threads": 2, "fsync": True}, "write"),
                                          ({"durable": True, "chunk_bytes": 4096}, "write"),
                                          ({"pure": True}, "options")])
def test_flat_flags_and_grouped_options_write_the_same_file(tiny_r1: Path, tmp_path: Path,
                                                            flags: dict[str, object], group: str) -> None:
    from l1quant.conversion.write import split_flat_options

    options, write = split_flat_options("convert", flags, None, None)
    a = l1quant.convert(tiny_r1, "q4_k_m", tmp_path / "a.gguf", **flags)  # type: ignore[arg-type]
    b = l1quant.convert(tiny_r1, "q4_k_m", tmp_path / "b.gguf", options=options, write=write)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(TypeError, match="unexpected keyword argument 'thread'"):
        l1quant.convert(tiny_r1, "q8_0", tmp_path / "c.gguf", thread=2)  # type: ignore[call-arg]


def test_quantize_output_rule_is_converts(tiny_r1: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = l1quant.convert(tiny_r1, "bf16", tmp_path / "m-BF16.gguf")
    monkeypatch.chdir(tmp_path)
    assert l1quant.quantize(src, "new/", "q8_0", threads=1) == Path("new/m-Q8_0.gguf")
    assert l1quant.quantize(src, "x-{ftype}.gguf", "q8_0") == Path("x-q8_0.gguf")
    assert l1quant.quantize(src, None, "q8_0") == tmp_path / "m-Q8_0.gguf"



def test_verify_reports_tensors_out_of_order(tiny_r1: Path, tmp_path: Path) -> None:
    out = l1quant.convert(tiny_r1, "q8_0", tmp_path / "m.gguf")
    gf = read_gguf(out)
    src = Header.from_file(gf)
    order = [t.name for t in src.tensors]
    order[1], order[2] = order[2], order[1]
    h = Header(kv=dict(src.kv))
    for name in order:
        t = gf.tensor(name)
        h.add_tensor(name, t.shape, t.ggml_type, t.nbytes)
    bad = tmp_path / "reordered.gguf"
    with open(bad, "wb") as f:
        off = write_header(h, f.fileno())
        for e in h.tensors:
            f.seek(off + e.offset)
            f.write(gf.read_tensor_bytes(gf.tensor(e.name)))
        f.truncate(off + h.data_nbytes)
    rep = l1quant.verify(bad, source=tiny_r1)
    failed = {c.name: c.message for c in rep.checks if c.failed}
    assert list(failed) == ["source.general"], failed
    assert f"tensor #1 is '{order[1]}'" in failed["source.general"] and "tensor order differs" in failed["source.general"]

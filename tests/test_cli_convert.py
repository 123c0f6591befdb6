"""The convert command as a new user meets it: folder outputs, llama.cpp's flag spellings, the summary line,
and progress counted in output bytes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import l1quant
from l1quant.cli import main
from l1quant.errors import OutputError
from l1quant.gguf.reader import read_gguf


def _convert(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["convert", *args])
    return r.exit_code, r.stdout, r.stderr


def test_output_ending_in_a_slash_is_a_new_folder(tiny_r1: Path, tmp_path: Path) -> None:
    code, out, err = _convert(str(tiny_r1), "--type", "q8_0", "-o", str(tmp_path / "new") + "/", "-q")
    assert code == 0, err
    made = Path(out.strip())
    assert made.parent == tmp_path / "new" and made.is_file() and made.name.endswith("-Q8_0.gguf")
    # nested, too; and an existing folder with or without the slash
    code, out, _ = _convert(str(tiny_r1), "--type", "q8_0", "-o", str(tmp_path / "a" / "b") + "/", "-q")
    assert code == 0 and Path(out.strip()).parent == tmp_path / "a" / "b"
    code, out, _ = _convert(str(tiny_r1), "--type", "f16", "-o", str(tmp_path / "new"), "-q")
    assert code == 0 and Path(out.strip()).parent == tmp_path / "new"


def test_a_file_is_never_written_where_a_folder_was_named(tiny_r1: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        l1quant.convert(tiny_r1, "q8_0", str(tmp_path / "blocker" / "sub") + "/")
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


@pytest.mark.parametrize("flags", [
    ("--outtype", "q8_0", "--outfile", "{out}", "--model-name", "My L1"),
    ("--outtype", "Q8_0", "-o", "{out}", "--name", "My L1"),
    ("--type", "Q8_0", "--output", "{out}", "--model-name", "My L1"),
])
def test_llama_cpp_flag_spellings(tiny_r1: Path, tmp_path: Path, flags: tuple[str, ...]) -> None:
    out = tmp_path / "m.gguf"
    code, _, err = _convert(str(tiny_r1), *(f.format(out=out) for f in flags), "-q")
    assert code == 0, err
    gf = read_gguf(out)
    assert gf.kv["general.name"] == "My L1" and gf.kv["general.file_type"] == 7


def test_one_summary_line_after_a_conversion(tiny_r1: Path, tmp_path: Path) -> None:
    code, out, err = _convert(str(tiny_r1), "--type", "q4_k_m", "-o", str(tmp_path / "m.gguf"))
    assert code == 0
    assert out.strip() == str(tmp_path / "m.gguf")  # stdout: the path alone, for scripts
    lines = [ln for ln in err.splitlines() if ln.startswith("l1quant: wrote")]
    assert len(lines) == 1
    size = os.path.getsize(tmp_path / "m.gguf")
    m = re.fullmatch(r"l1quant: wrote (\S+) \((\d+\.\d\d) GB, Q4_K_M: (.+)\) in (\d+\.\d) s", lines[0])
    assert m and m.group(1) == str(tmp_path / "m.gguf") and abs(float(m.group(2)) - size / 1e9) < 0.006
    counts = dict(reversed(part.split(" ")) for part in m.group(3).split(", "))
    types = [t.ggml_type.name for t in read_gguf(tmp_path / "m.gguf").tensors]
    assert {k: int(v) for k, v in counts.items()} == {t: types.count(t) for t in set(types)}
    # -q: nothing but errors
    code, _, err = _convert(str(tiny_r1), "--type", "q8_0", "-o", str(tmp_path / "q.gguf"), "-q")
    assert code == 0 and err == ""


def test_progress_counts_output_bytes(tiny_r1: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    out = l1quant.convert(tiny_r1, "q4_k_m", tmp_path / "m.gguf", progress=seen.append, chunk_bytes=1 << 12)
    gf = read_gguf(out)
    assert len(seen) > 1 and sum(seen) == sum(t.nbytes for t in gf.tensors)

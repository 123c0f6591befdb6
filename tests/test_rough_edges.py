"""The rough edges a new user hit (issue 21), each pinned: ``-t`` means threads everywhere, the bundled width-256
example shows a real K-quant, a missing compiled build is said once, and the install line names every extra the
L1 workflow uses and warns about the llama-cpp-python build before it starts."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from l1quant.cli import main
from l1quant.gguf.reader import read_gguf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["convert", "quantize", "verify", "run", "compare", "budget-check"])
def test_dash_t_is_threads_in_every_command(command: str) -> None:
    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0
    assert re.search(r"-t, --threads", res.output), res.output


def test_dash_t_with_a_type_gets_a_hint(tiny_r1: Path, tmp_path: Path) -> None:
    """The old ``convert -t q8_0`` is a usage error that says what -t is now, and writes nothing."""
    out = tmp_path / "m.gguf"
    res = CliRunner().invoke(main, ["convert", str(tiny_r1), "-t", "q8_0", "-o", str(out), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "-t means --threads in every l1quant command" in res.output and "--type" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["convert", str(tiny_r1), "--type", "q8_0", "-t", "2", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_width_256_example_shows_k_quants(tmp_path: Path) -> None:
    """examples/make_tiny256.py builds a checkpoint whose Q4_K_M file has Q4_K tensors and no fallback; the script
    itself is what the repository carries (the built checkpoint is ~78 MB)."""
    script = ROOT / "examples" / "make_tiny256.py"
    assert script.stat().st_size < 4096
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "tiny256")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "t.gguf"
    res2 = CliRunner().invoke(main, ["convert", str(tmp_path / "tiny256"), "--type", "q4_k_m", "-o", str(out)])
    assert res2.exit_code == 0, res2.output
    assert "warning" not in res2.stderr  # no tensor falls back to another type
    types = Counter(t.ggml_type.name for t in read_gguf(out).tensors)
    assert types["Q4_K"] > 0 and types["Q6_K"] > 0, types


def test_missing_compiled_kernels_are_said_once() -> None:
    """Without the compiled build (import blocked), quantizing says so once on stderr and still works."""
    code = ("import sys; sys.modules['l1quant.kernels._fastq8'] = None\n"
            "import numpy as np\n"
            "from l1quant.kernels import get_quant_type, native_available\n"
            "assert not native_available()\n"
            "q = get_quant_type('q8_0')\n"
            "for _ in range(3): q.quantize(np.ones((2, 64), np.float32))\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "compiled kernels" in lines[0] and "numpy" in lines[0], res.stderr
    # turned off on purpose: silent
    res = subprocess.run([sys.executable, "-c", code.replace("sys.modules['l1quant.kernels._fastq8'] = None",
                                                             "import os; os.environ['L1QUANT_NO_NATIVE'] = '1'")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


def test_install_line_has_every_extra_and_warns_of_the_build() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith("pip install '.[run"))
    assert "plot" in line and "--plot" in readme  # step 4 uses --plot
    assert "13 minutes" in readme and "pip install -v" in readme
    from l1quant.l1.runner import RUN_INSTALL_HINT

    assert "13 min" in RUN_INSTALL_HINT


def test_readme_keeps_to_what_a_user_does_and_links_the_details() -> None:
    """issue 21: the README was 491 lines; the refusal table, benchmark details and format facts live in docs/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 400
    for needed in ("## Quick start", "## Using it on L1", "## Commands", "## Output types", "python -m pytest -q",
                   "l1quant convert examples/tiny-qwen2 --type q8_0 -o tiny-Q8_0.gguf"):
        assert needed in readme, needed
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert {"docs/refusals.md", "docs/performance.md", "docs/formats.md"} <= set(links)
    for link in links:
        assert (ROOT / link).is_file(), link
    assert "| Input problem |" not in readme and "| Input problem |" in (ROOT / "docs/refusals.md").read_text()
    assert "bench_kquants.py" in (ROOT / "docs/performance.md").read_text()

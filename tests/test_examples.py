"""Every script in examples/ runs as a user would run it; the model card is written and accurate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from reference import require_module

from l1quant.cli import main
from l1quant.conversion.card import MARKER, write_card

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    res = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    return res.stdout


def test_convert_from_python(tmp_path: Path) -> None:
    out = run_example("convert_from_python.py", str(tmp_path))
    assert (tmp_path / "tiny-q8_0.gguf").is_file()
    assert "pre-tokenizer: deepseek-r1-qwen" in out and "bos: 151646" in out


def test_quantize_numpy() -> None:
    out = run_example("quantize_numpy.py")
    assert "Q8_0  block=32 bytes/block=34" in out and "F32   block= 1" in out


def test_verify_report() -> None:
    out = run_example("verify_report.py")
    assert out.splitlines()[0].startswith("PASS")
    assert '"passed": true' in out


@pytest.mark.slow
def test_budgeted_run() -> None:
    require_module("llama_cpp")  # the run extra; skips locally without it, fails under CI
    out = run_example("budgeted_run.py")
    assert "Think for maximum 32 tokens." in out and "response tokens n:" in out


def test_problems_file_is_valid() -> None:
    from l1quant.l1 import load_problems

    probs = load_problems(EXAMPLES / "problems.jsonl")
    assert len(probs) >= 30 and all(isinstance(p.answer, int) for p in probs)


def test_convert_card(tmp_path: Path) -> None:
    out = tmp_path / "tiny-Q8_0.gguf"
    res = CliRunner().invoke(main, ["convert", str(EXAMPLES / "tiny-qwen2"), "--type", "q8_0", "-o", str(out), "-q",
                                    "--card"])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and MARKER in card  # the Hub's YAML front matter first
    # published like the GGUF beside it (readable by others under the usual umask), not as a private temp file
    assert (tmp_path / "README.md").stat().st_mode & 0o777 == out.stat().st_mode & 0o777
    assert "# Tiny Qwen2 — GGUF Q8_0" in card and "PASS" in card
    assert "Think for maximum 512 tokens." in card and "deepseek-r1-qwen" in card
    # a README.md that l1quant did not write is never overwritten
    (tmp_path / "README.md").write_text("mine")
    p = write_card(out, EXAMPLES / "tiny-qwen2")
    assert p.name == "tiny-Q8_0.README.md" and (tmp_path / "README.md").read_text() == "mine"

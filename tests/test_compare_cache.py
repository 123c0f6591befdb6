"""``compare``'s cache (issue 21): it says where the cache is and how big, ``--no-cache`` keeps nothing there, and
``--clear-cache`` deletes it. The numpy runtime keeps the test fast; the cache root is a temporary
``$L1QUANT_CACHE``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import l1quant.cli.compare  # noqa: F401 - registers the command
from l1quant.cli import main


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def test_compare_cache_is_shown_optional_and_clearable(tiny_factory: Callable[..., Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_factory(hidden=32, layers=1, heads=4, kv_heads=2, ff=64)
    cache = tmp_path / "cache"
    monkeypatch.setenv("L1QUANT_CACHE", str(cache))
    args = ["compare", str(model), "--types", "f16,q8_0", "--ctx", "16", "--chunks", "2", "--runtime", "numpy",
            "-t", "1", "-q"]
    r = CliRunner().invoke(main, [*args, "--no-cache"])
    assert r.exit_code == 0, r.output
    assert _files(cache) == []  # nothing kept
    assert "Q8_0" in r.stdout and "cache:" not in r.stderr
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    kept = _files(cache / "compare")
    assert any(p.suffix == ".gguf" for p in kept) and any(p.suffix == ".kld" for p in kept)
    line = [ln for ln in r.stderr.splitlines() if "cache:" in ln]
    assert len(line) == 1 and str(cache / "compare") in line[0] and "--clear-cache" in line[0]
    r = CliRunner().invoke(main, ["compare", "--clear-cache"])  # no MODEL needed
    assert r.exit_code == 0, r.output
    assert str(cache / "compare") in r.output and not (cache / "compare").exists()

"""Shared fixtures: tokenizer fixture folders and tiny qwen2 checkpoints built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from l1quant.testing import make_checkpoint

DATA = Path(__file__).parent / "data"
R1_TOK = DATA / "r1-distill-tokenizer"
QWEN_TOK = DATA / "qwen2.5-tokenizer"
TOKENIZERS = {"r1": R1_TOK, "qwen2.5": QWEN_TOK}


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per distinct arguments) a tiny random qwen2 checkpoint: ``tiny_factory(tok="r1", **kw)``."""
    cache: dict[tuple[Any, ...], Path] = {}

    def make(tok: str = "r1", **kw: Any) -> Path:
        key = (tok, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{tok}")
            cache[key] = make_checkpoint(d / "Tiny-Qwen2-Test", tokenizer_dir=TOKENIZERS[tok], **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_r1(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("qwen2.5")

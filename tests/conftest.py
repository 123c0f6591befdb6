"""Shared fixtures: tokenizer fixture folders and tiny qwen2 checkpoints built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from l1quant.testing import make_checkpoint

DATA = Path(__file__).parent / "data"
R1_TOK = DATA / "r1-distill-tokenizer"
QWEN_TOK = DATA / "qwen2.5-tokenizer"
TOKENIZERS = {"r1": R1_TOK, "qwen2.5": QWEN_TOK}


def original_qwen_tokenizer(out: Path) -> Path:
    """The Qwen2.5 fixture in the format Qwen ships (151643 BPE entries, ByteLevel post-processor) instead of the
    transformers-5 rebuild (151936 entries with [PAD] fillers, TemplateProcessing): conversion must handle both."""
    out.mkdir(parents=True, exist_ok=True)
    tj = json.loads((QWEN_TOK / "tokenizer.json").read_text(encoding="utf-8"))
    tj["model"]["vocab"] = {k: i for k, i in tj["model"]["vocab"].items() if i < 151643}
    tj["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False}
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    for f in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(QWEN_TOK / f, out / f)
    return out


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per distinct arguments) a tiny random qwen2 checkpoint: ``tiny_factory(tok="r1", **kw)``.

    ``tok`` is "r1", "qwen2.5", or "qwen2.5-orig" (see :func:`original_qwen_tokenizer`)."""
    cache: dict[tuple[Any, ...], Path] = {}
    toks = dict(TOKENIZERS)

    def make(tok: str = "r1", **kw: Any) -> Path:
        if tok == "qwen2.5-orig" and tok not in toks:
            toks[tok] = original_qwen_tokenizer(tmp_path_factory.mktemp("qwen-orig-tok"))
        key = (tok, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{tok}")
            cache[key] = make_checkpoint(d / "Tiny-Qwen2-Test", tokenizer_dir=toks[tok], **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_r1(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("qwen2.5")

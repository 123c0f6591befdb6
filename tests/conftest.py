"""Shared fixtures: tokenizer fixture folders and tiny checkpoints (qwen2, qwen3, llama) built once per session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from reference import require_module

from l1quant.testing import make_checkpoint

DATA = Path(__file__).parent / "data"
R1_TOK = DATA / "r1-distill-tokenizer"
QWEN_TOK = DATA / "qwen2.5-tokenizer"
QWEN3_TOK = DATA / "qwen3-tokenizer"
R1_LLAMA_TOK = DATA / "r1-distill-llama-tokenizer"
TOKENIZERS = {"r1": R1_TOK, "qwen2.5": QWEN_TOK, "qwen3": QWEN3_TOK, "r1-llama": R1_LLAMA_TOK}
#: What a checkpoint built with each tokenizer defaults to besides it: the architecture the tokenizer ships with,
#: its vocabulary size, its generation_config.json and config.json's token ids (as in the real repos).
TOKENIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": dict(arch="qwen3", generation_config=json.loads((QWEN3_TOK / "generation_config.json").read_text()),
                  extra_config={"bos_token_id": 151643, "eos_token_id": 151645}),
    "r1-llama": dict(arch="llama", vocab=128256,
                     generation_config=json.loads((R1_LLAMA_TOK / "generation_config.json").read_text()),
                     extra_config={"bos_token_id": 128000, "eos_token_id": 128001}),
}


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


def llama_tokenizer_with_prefix_space(out: Path) -> Path:
    """The R1-Distill-Llama fixture with ``add_prefix_space: false`` in tokenizer_config.json, which llama's
    converter writes as ``tokenizer.ggml.add_space_prefix`` (before the tokenizer model key)."""
    shutil.copytree(R1_LLAMA_TOK, out, dirs_exist_ok=True)
    tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["add_prefix_space"] = False
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def toy_tokenizer(out: Path) -> Path:
    """A 333-token byte-level BPE trained here on a few lines (pre-tokenizer hash unknown: convert with
    ``pre="qwen2"``). Headers with it are small, so gguf's own (slow) GGUFReader can read them back quickly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog. ", "def f(x):\n    return x * 2\n",
                             "我想在apple工作 🚀 3.14"] * 20, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": (QWEN_TOK / "chat_template.jinja").read_text(encoding="utf-8")}))
    return out


#: Folders under pytest's basetemp that outlive the module that made them (the session-wide tiny checkpoints).
_KEEP: set[Path] = set()


@pytest.fixture(scope="module", autouse=True)
def _free_module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """When a test module ends with every test passed, delete the folders its module-scoped fixtures made under
    basetemp (pytest itself keeps them to the session's end: ~7 GB at the peak of a full run, which once filled
    the disk CI shares and failed 490 tests at setup). Torn down after the module's other fixtures (autouse
    fixtures are set up first). A module with a failure keeps everything, as ``tmp_path_retention_policy``."""
    root = tmp_path_factory.getbasetemp()
    before = set(root.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for p in set(root.iterdir()) - before - _KEEP:
        shutil.rmtree(p, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build (once per distinct arguments) a tiny random checkpoint: ``tiny_factory(tok="r1", **kw)``.

    ``tok`` is "r1", "qwen2.5", "qwen2.5-orig" (see :func:`original_qwen_tokenizer`) or "toy" (see
    :func:`toy_tokenizer`; pass ``vocab=352`` or so, and convert with ``pre="qwen2"``) for a qwen2 checkpoint, or
    "qwen3" / "r1-llama" for a qwen3 / llama one (:data:`TOKENIZER_DEFAULTS`; ``kw`` overrides them), or
    "r1-llama-asp" (see :func:`llama_tokenizer_with_prefix_space`).

    A folder made while a module runs is deleted when it ends (:func:`_free_module_tmp`), so one that is gone is
    made again; ``keep=True`` (a session fixture's checkpoint) keeps it for the whole session."""
    cache: dict[tuple[Any, ...], Path] = {}
    toks = dict(TOKENIZERS)

    def make(tok: str = "r1", keep: bool = False, **kw: Any) -> Path:
        if tok not in toks or not toks[tok].exists():
            make_tok = {"qwen2.5-orig": original_qwen_tokenizer, "toy": toy_tokenizer,
                        "r1-llama-asp": llama_tokenizer_with_prefix_space}[tok]
            toks[tok] = make_tok(tmp_path_factory.mktemp(f"{tok}-tok"))
        key = (tok, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache or not cache[key].exists():
            d = tmp_path_factory.mktemp(f"tiny-{tok}")
            args = {**TOKENIZER_DEFAULTS.get(tok.removesuffix("-asp"), {}), **kw}
            folder = {"qwen3": "Tiny-Qwen3-Test", "llama": "Tiny-Llama-Test"}.get(args.get("arch", "qwen2"),
                                                                                "Tiny-Qwen2-Test")
            cache[key] = make_checkpoint(d / folder, tokenizer_dir=toks[tok], **args)
        if keep:
            _KEEP.add(cache[key].parent)
            _KEEP.update(p for p in tmp_path_factory.getbasetemp().iterdir() if toks[tok].is_relative_to(p))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_r1(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("r1", keep=True)


@pytest.fixture(scope="session")
def tiny_qwen(tiny_factory: Callable[..., Path]) -> Path:
    return tiny_factory("qwen2.5", keep=True)


@pytest.fixture(scope="module")
def llama_cpp() -> Iterator[ModuleType]:
    lc = require_module("llama_cpp")
    # should llama.cpp ever abort in this process, die at once: its backtrace forks a debugger and can hang
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GGML_NO_BACKTRACE", "1")
        yield lc

"""Issue 13 §6: inputs the reference converter reads that l1quant honours, byte for byte against the reference.

docs/reference-inputs.md lists every file and field llama.cpp's ``convert_hf_to_gguf.py`` reads for the qwen2
family; those l1quant does not reproduce are refused in one line (tests/test_reliability.py,
``test_reference_input_not_reproduced_is_one_line``). Here, the ones it honours that tests/test_parity.py does not
already cover:

* special tokens named by tokenizer_config.json (``additional_special_tokens``, ``extra_special_tokens``, a
  model-specific ``*_token`` key) and, without an ``added_tokens_decoder``, by special_tokens_map.json: transformers'
  AutoTokenizer makes them special, so the reference types them CONTROL;
* the model card's front matter and generation_config.json (gguf-py's Metadata, naming and sampling keys);
* inputs the reference reads for one architecture only, checked to change nothing for the others;
* ``additional_chat_templates/``: the one output the reference does not write deterministically. Its
  ``tokenizer.chat_templates`` array comes from a Python set, so its order changes from run to run; l1quant's file
  equals the reference's up to that order, and ``verify`` passes the reference's own file whatever the order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from reference import require_reference, run_reference
from test_parity import assert_same_gguf

import l1quant
from l1quant.check.fidelity import UNORDERED_KEYS, _values_differ
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow


def _edit_json(path: Path, **changes: object) -> None:
    d = json.loads(path.read_text(encoding="utf-8"))
    d.update(changes)
    path.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")


def _copy(src: Path, tmp_path: Path) -> Path:
    m = tmp_path / src.name
    shutil.copytree(src, m)
    return m


def _parity(m: Path, tmp_path: Path, type_: str = "q8_0") -> tuple[Path, Path]:
    ref = run_reference(require_reference(), m, type_, tmp_path / "ref.gguf")
    ours = l1quant.convert(m, type_, tmp_path / "ours.gguf")
    return ours, ref


#: (id, tokenizer fixture, mutation): each makes the reference type a token CONTROL that tokenizer.json leaves normal
NAMED_TOKENS: list[tuple[str, str, Callable[[Path], None]]] = [
    # the R1 tokenizer_config has no added_tokens_decoder: transformers' legacy path, special_tokens_map.json read
    ("r1-additional_special_tokens", "r1",
     lambda m: _edit_json(m / "tokenizer_config.json", additional_special_tokens=["<think>"])),
    ("r1-extra_special_tokens", "r1",
     lambda m: _edit_json(m / "tokenizer_config.json", extra_special_tokens=["<think>", "</think>"])),
    ("r1-special_tokens_map", "r1", lambda m: (m / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": ["<think>"]}))),
    ("qwen2.5-special_tokens_map", "qwen2.5", lambda m: (m / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": ["<tool_call>"],
                    "pad_token": {"content": "</tool_call>", "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False}}))),
    # Qwen3's tokenizer_config has an added_tokens_decoder: tokenizer_config still names, special_tokens_map not
    ("qwen3-additional_special_tokens", "qwen3",
     lambda m: _edit_json(m / "tokenizer_config.json", additional_special_tokens=["<think>"])),
    ("qwen3-model-specific-token-key", "qwen3",
     lambda m: _edit_json(m / "tokenizer_config.json", think_token="<think>")),
    ("qwen3-special_tokens_map-not-read", "qwen3", lambda m: (m / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": ["<think>"]}))),
]


@pytest.mark.parametrize("tok, mutate", [pytest.param(t, f, id=i) for i, t, f in NAMED_TOKENS])
def test_named_special_tokens_match_the_reference(tiny_factory: Callable[..., Path], tmp_path: Path, tok: str,
                                                  mutate: Callable[[Path], None]) -> None:
    m = _copy(tiny_factory(tok), tmp_path)
    mutate(m)
    ours, ref = _parity(m, tmp_path)
    assert_same_gguf(ours, ref)


#: config.json fields the reference reads (through AutoConfig) that l1quant honours: written the same, or ignored
#: by both (each run through the pinned reference; docs/reference-inputs.md)
CONFIG_FIELDS: list[tuple[str, dict[str, object]]] = [
    ("text_config-nesting", {"text_config": {"rms_norm_eps": 1e-5, "max_position_embeddings": 4096}}),
    ("is_causal-false", {"is_causal": False}),
    ("partial_rotary_factor", {"partial_rotary_factor": 0.5}),  # only mirrored into the rope dict, not written
    ("global_rope_theta", {"global_rope_theta": 5000.0}),  # AutoConfig's rope dict always has rope_theta first
    ("sliding-window-fields", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1}),
    ("torch_dtype-float32", {"torch_dtype": "float32"}),  # auto still follows the first 2-D tensor (bf16)
    ("max_position_embeddings-omitted", {"max_position_embeddings": None}),  # Qwen2Config's default 32768
]


@pytest.mark.parametrize("changes", [pytest.param(c, id=i) for i, c in CONFIG_FIELDS])
def test_config_fields_match_the_reference(tiny_factory: Callable[..., Path], tmp_path: Path,
                                           changes: dict[str, object]) -> None:
    m = _copy(tiny_factory("r1"), tmp_path)
    d = json.loads((m / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    (m / "config.json").write_text(json.dumps(d))
    ours, ref = _parity(m, tmp_path, "auto")
    assert_same_gguf(ours, ref)


CARD = """---
license: apache-2.0
license_name: custom-license
license_link: https://example.com/LICENSE
language:
- en
- zh
tags:
- reasoning
- no
pipeline_tag: text-generation
base_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
datasets:
- agentica-org/DeepScaleR-Preview-Dataset
model_name: L1 Tiny
author: l3lab
---

# L1 tiny

Card text.
"""


def test_model_card_and_generation_config_match_the_reference(tiny_factory: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    """README.md front matter (license, tags incl. the Norway 'no', pipeline tag, languages, base model, datasets,
    name, author) and generation_config.json sampling keys, as gguf-py's Metadata reads them for the reference."""
    m = _copy(tiny_factory("r1"), tmp_path)
    (m / "README.md").write_text(CARD, encoding="utf-8")
    (m / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20,
                                                          "min_p": 0.0, "repetition_penalty": 1.05}))
    ours, ref = _parity(m, tmp_path)
    assert_same_gguf(ours, ref)
    kv = read_gguf(ours).kv
    assert kv["general.license"] == "apache-2.0" and kv["general.base_model.count"] == 1
    assert "no" in kv["general.tags"] and kv["general.sampling.penalty_repeat"] == pytest.approx(1.05)


def test_llama_ignores_modules_json_as_the_reference(tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """LlamaModel never reads sentence-transformers' modules.json (only Qwen2Model does): a Pooling module changes
    neither file."""
    m = _copy(tiny_factory("r1-llama"), tmp_path)
    (m / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                 "type": "sentence_transformers.models.Pooling"}]))
    (m / "1_Pooling").mkdir()
    (m / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    ours, ref = _parity(m, tmp_path)
    assert_same_gguf(ours, ref)


def _with_named_templates(m: Path) -> None:
    extra = m / "additional_chat_templates"
    extra.mkdir()
    for name in ("tool_use", "zeta", "rag", "alpha"):
        (extra / f"{name}.jinja").write_text(f"{{# {name} #}}{{{{ messages[0].content }}}}", encoding="utf-8")


def test_named_chat_templates_match_the_reference_up_to_its_set_order(tiny_factory: Callable[..., Path],
                                                                      tmp_path: Path) -> None:
    """additional_chat_templates/*.jinja beside chat_template.jinja: every key in the reference's order (the
    folder's listing order) and value, and tokenizer.chat_templates with the same names in whatever order the
    reference's set gave this run. Then verify passes the reference's own file, whichever order it has
    (test_unordered_keys_compare_as_sets pins the comparison for every order)."""
    m = _copy(tiny_factory("qwen2.5"), tmp_path)  # its template is in chat_template.jinja, not tokenizer_config
    _with_named_templates(m)
    ours, ref = _parity(m, tmp_path)
    a, b = read_gguf(ours), read_gguf(ref)
    assert list(a.kv) == list(b.kv)
    key = "tokenizer.chat_templates"
    assert sorted(a.kv[key]) == sorted(b.kv[key]) == ["alpha", "rag", "tool_use", "zeta"]
    for k in a.kv:
        if k != key:
            assert a.kv[k] == b.kv[k], k
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    report = l1quant.verify(ref, source=m)
    assert report.passed, [str(c) for c in report.failed_checks]
    r = subprocess.run([sys.executable, "-m", "l1quant", "verify", str(ref), "--source", str(m)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr


def test_unordered_keys_compare_as_sets() -> None:
    """The order-free comparison is for tokenizer.chat_templates only; a different set, or any other array in
    another order, still fails."""
    from gguf import GGUFValueType as T
    arr = (T.ARRAY, T.STRING)
    key = next(iter(UNORDERED_KEYS))
    assert _values_differ(key, ["a", "b", "c"], arr, ["c", "a", "b"], arr) is None
    assert _values_differ(key, ["a", "b"], arr, ["a", "x"], arr) is not None
    assert _values_differ("tokenizer.ggml.merges", ["a b", "c d"], arr, ["c d", "a b"], arr) is not None

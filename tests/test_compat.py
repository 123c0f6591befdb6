"""verify's compatibility group: tiny checkpoints rebuilt from the situations users report each get the named
WARN or FAIL, and a clean conversion of each fixture tokenizer gets none.

Every situation is a real checkpoint (l1quant.testing with the tokenizers in tests/data), converted by l1quant, and
checked through ``l1quant verify --json`` (the CLI's stable check ids). Only the row-length case is planted in the
file: no converter writes such a file, and a reader must refuse it.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from l1quant.check.compat import CHECK_IDS, EOG_TEXTS, PRE_TOKENIZER_RELEASES, check_compat, eog_set
from l1quant.cli import main
from l1quant.conversion.convert import convert
from l1quant.gguf.reader import read_gguf

#: A Llama-3 Instruct chat template: turns end with <|eot_id|>, while the checkpoint's eos is 128001.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + (message['content'] or '') | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _verify(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    res = CliRunner().invoke(main, ["verify", str(path), "--json", "-t", "2", *args])
    assert "Traceback" not in res.output
    return res.exit_code, json.loads(res.stdout)


def _findings(doc: dict[str, Any]) -> dict[str, str]:
    """compat.* check id -> status, for the checks that are not a pass (every compat id is a documented one)."""
    names = [c["name"] for c in doc["checks"] if c["name"].startswith("compat")]
    assert set(names) <= set(CHECK_IDS) and len(names) == len(set(names)), names
    return {c["name"]: c["status"] for c in doc["checks"]
            if c["name"].startswith("compat") and c["status"] not in ("pass", "skip")}


def _message(doc: dict[str, Any], name: str) -> str:
    return next(c["message"] for c in doc["checks"] if c["name"] == name)


def _with_tokenizer_config(tok_dir: Path, out: Path, **changes: Any) -> Path:
    """A copy of a fixture tokenizer folder with tokenizer_config.json keys changed (None deletes)."""
    shutil.copytree(tok_dir, out)
    tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is None:
            tc.pop(k, None)
        else:
            tc[k] = v
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False), encoding="utf-8")
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def tokdir() -> Path:
    return Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    out = tmp_path_factory.mktemp("compat-conv")
    n = iter(range(1000))

    def run(src: Path, type_: str = "q8_0", **kw: Any) -> Path:
        return convert(src, type_, out / f"m{next(n)}-{type_}.gguf", threads=2, **kw)

    return run


# --------------------------------------------------------------------------------------------------- clean files

#: The clean checkpoint of each fixture tokenizer: consistent ids as the real repos ship them (Qwen2.5-Instruct's
#: config eos is <|im_end|>, its generation_config [im_end, endoftext]); qwen3 with head_dim = hidden/heads.
CLEAN: dict[str, dict[str, Any]] = {
    "r1": {},
    "qwen2.5": dict(extra_config={"eos_token_id": 151645},
                    generation_config={"bos_token_id": 151643, "eos_token_id": [151645, 151643]}),
    "qwen3": dict(head_dim=16),
    "r1-llama": {},
}
#: The current Qwen3 template (the qwen3 fixture's) has both constructs older template engines refuse.
QWEN3_TEMPLATE_FINDINGS = {"compat.template.reverse_slice": "warn", "compat.template.loop_method": "warn"}


@pytest.mark.parametrize("tok", list(CLEAN))
def test_clean_conversion_has_no_compat_finding(tiny_factory: Callable[..., Path], conv: Callable[..., Path],
                                                tok: str) -> None:
    src = tiny_factory(tok, **CLEAN[tok])
    code, doc = _verify(conv(src), "--source", str(src))
    assert code == 0, doc["verdict"]
    expected = QWEN3_TEMPLATE_FINDINGS if tok == "qwen3" else {}
    assert _findings(doc) == expected
    names = {c["name"] for c in doc["checks"]}
    assert {"compat.eog", "compat.pre", "compat.tensors"} <= names
    assert "compat.bos" in names and ("compat.template" in names or tok == "qwen3")


def test_clean_file_lists_its_eog_set_and_pre_release(tiny_r1: Path, conv: Callable[..., Path]) -> None:
    code, doc = _verify(conv(tiny_r1), "--source", str(tiny_r1))
    eog = _message(doc, "compat.eog")
    assert "151643 '<｜end▁of▁sentence｜>'" in eog and "the chat template's end-of-turn token" in eog
    pre = _message(doc, "compat.pre")
    assert "'deepseek-r1-qwen'" in pre and "b4514" in pre and "b3f499bb" in pre
    # without --source the same checks run on what the file holds
    code, doc = _verify(conv(tiny_r1))
    assert code == 0 and _findings(doc) == {}


# --------------------------------------------------------------------------------------------------- situations


def test_eos_split_between_config_files_warns(tiny_factory: Callable[..., Path], conv: Callable[..., Path]) -> None:
    """Qwen2.5-base style: config.json says <|endoftext|> 151643, tokenizer_config.json <|im_end|> 151645 (which
    the converter writes as the eos key), generation_config.json 151643."""
    src = tiny_factory("qwen2.5")
    code, doc = _verify(conv(src), "--source", str(src))
    assert code == 0
    assert _findings(doc) == {"compat.eog.config": "warn"}
    msg = _message(doc, "compat.eog.config")
    assert "config.json eos_token_id 151643 '<|endoftext|>'" in msg and "151645 '<|im_end|>'" in msg


def test_end_token_that_is_no_eog_fails(tiny_factory: Callable[..., Path], conv: Callable[..., Path]) -> None:
    """A generation_config eos that llama.cpp does not stop on: the model runs on past its turn in llama.cpp."""
    src = tiny_factory("r1", generation_config={"eos_token_id": [151643, 151644]})
    code, doc = _verify(conv(src), "--source", str(src))
    assert code == 1
    assert _findings(doc) == {"compat.eog.generation_config": "fail"}
    assert "151644 '<｜User｜>'" in _message(doc, "compat.eog.generation_config")


def test_llama3_eot_only_in_generation_config_warns(tiny_factory: Callable[..., Path], conv: Callable[..., Path],
                                                   tokdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """ollama #3759: eos 128001 in config.json and tokenizer_config.json, the template ends turns with <|eot_id|>
    128009, which only generation_config.json lists."""
    tok = _with_tokenizer_config(tokdir / "r1-distill-llama-tokenizer", tmp_path_factory.mktemp("l3") / "tok",
                                 chat_template=LLAMA3_TEMPLATE)
    from l1quant.testing import make_checkpoint

    src = make_checkpoint(tmp_path_factory.mktemp("l3") / "Tiny-Llama3", tokenizer_dir=tok, arch="llama",
                          vocab=128256, extra_config={"bos_token_id": 128000, "eos_token_id": 128001},
                          generation_config={"bos_token_id": 128000, "eos_token_id": [128001, 128009]})
    code, doc = _verify(conv(src), "--source", str(src))
    assert code == 0
    assert _findings(doc) == {"compat.eog.end_of_turn": "warn"}
    assert "128009 '<|eot_id|>'" in _message(doc, "compat.eog.end_of_turn")


def test_missing_bos_key_warns(tiny_factory: Callable[..., Path], conv: Callable[..., Path]) -> None:
    """Qwen3 with no bos anywhere (config.json bos_token_id null, tokenizer_config bos_token null)."""
    src = tiny_factory("qwen3", head_dim=16, extra_config={"bos_token_id": None, "eos_token_id": 151645})
    path = conv(src)
    assert "tokenizer.ggml.bos_token_id" not in read_gguf(path).kv
    code, doc = _verify(path, "--source", str(src))
    assert _findings(doc) == {"compat.bos.missing": "warn", **QWEN3_TEMPLATE_FINDINGS}
    assert "id 11" in _message(doc, "compat.bos.missing") or "11 ','" in _message(doc, "compat.bos.missing")


def test_recent_pre_tokenizer_warns(tiny_r1: Path, conv: Callable[..., Path]) -> None:
    """A pre-tokenizer name only recent runtimes know (qwen35, 2026), forced onto the R1 vocabulary: both the
    release and the misfit are named."""
    code, doc = _verify(conv(tiny_r1, pre="qwen35"), "--source", str(tiny_r1))
    f = _findings(doc)
    assert f.get("compat.pre.recent") == "warn" and f.get("compat.pre.fit") == "warn"
    assert "PR #19468" in _message(doc, "compat.pre.recent")
    assert "'deepseek-r1-qwen'" in _message(doc, "compat.pre.fit")


def test_qwen3_template_constructs_named_with_line(tiny_factory: Callable[..., Path], conv: Callable[..., Path],
                                                   tokdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The Qwen3 template (``messages[::-1]``, ``message.content.startswith``) on an R1 checkpoint."""
    qwen3 = json.loads((tokdir / "qwen3-tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok = _with_tokenizer_config(tokdir / "r1-distill-tokenizer", tmp_path_factory.mktemp("q3t") / "tok",
                                 chat_template=qwen3["chat_template"])
    from l1quant.testing import make_checkpoint

    src = make_checkpoint(tmp_path_factory.mktemp("q3t") / "m", tokenizer_dir=tok)
    code, doc = _verify(conv(src), "--source", str(src))
    f = _findings(doc)
    assert f["compat.template.reverse_slice"] == "warn" and f["compat.template.loop_method"] == "warn"
    assert "line 18: reverse slicing [::-1]" in _message(doc, "compat.template.reverse_slice")
    assert ".startswith() on the loop variable message.content" in _message(doc, "compat.template.loop_method")


def test_missing_template_warns(tokdir: Path, conv: Callable[..., Path],
                                tmp_path_factory: pytest.TempPathFactory) -> None:
    tok = _with_tokenizer_config(tokdir / "r1-distill-tokenizer", tmp_path_factory.mktemp("nt") / "tok",
                                 chat_template=None)
    from l1quant.testing import make_checkpoint

    src = make_checkpoint(tmp_path_factory.mktemp("nt") / "m", tokenizer_dir=tok)
    path = conv(src)
    assert "tokenizer.chat_template" not in read_gguf(path).kv
    code, doc = _verify(path, "--source", str(src))
    assert _findings(doc) == {"compat.template.missing": "warn"}


def test_template_that_does_not_render_warns() -> None:
    """A template that parses but fails on a system message is named with the case."""
    class _GF:  # a header without tensors
        kv = _header_stub()
        tensors: list[Any] = []

    _GF.kv["tokenizer.chat_template"] = ("{% for m in messages %}{% if m.role == 'system' %}"
                                         "{{ raise_exception('no system role') }}{% endif %}{{ m.content }}"
                                         "{% endfor %}")
    checks = {c.name: c for c in check_compat(_GF())}  # type: ignore[arg-type]
    c = checks["compat.template.render"]
    assert c.status == "warn" and "with a system message" in c.message and "no system role" in c.message


def _header_stub() -> dict[str, Any]:
    return {"general.architecture": "qwen2", "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": ["a", "b", "<|im_end|>"], "tokenizer.ggml.token_type": [1, 1, 3],
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.bos_token_id": 0}


def test_head_dim_not_hidden_over_heads_warns(tiny_factory: Callable[..., Path], conv: Callable[..., Path]) -> None:
    src = tiny_factory("r1", head_dim=32)  # hidden 64 / 4 heads = 16
    code, doc = _verify(conv(src), "--source", str(src))
    assert code == 0
    assert _findings(doc) == {"compat.tensors.head_dim": "warn"}
    assert "qwen2.attention.key_length=32" in _message(doc, "compat.tensors.head_dim")


def test_requantized_history_warns(tiny_r1: Path, conv: Callable[..., Path], tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"general.name": "Tiny-R1-Q4_K_M-GGUF"}))
    code, doc = _verify(conv(tiny_r1, metadata=meta))
    assert _findings(doc) == {"compat.tensors.requantized": "warn"}


def test_row_no_block_divides_is_refused(tiny_r1: Path, conv: Callable[..., Path], tmp_path: Path) -> None:
    """ne0 = 48 for a Q8_0 tensor (block 32): ggml refuses such a file, and so does verify, naming the tensor."""
    src = conv(tiny_r1)
    bad = tmp_path / "bad.gguf"
    shutil.copyfile(src, bad)
    name = "blk.0.attn_q.weight"
    head = bad.read_bytes()[: 1 << 24]
    pos = head.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name) + 4
    with open(bad, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack("<Q", 48))
    res = CliRunner().invoke(main, ["verify", str(bad), "--json"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = json.loads(res.stdout)["error"]
    assert name in err and "block size 32" in err


# --------------------------------------------------------------------------------------------------- units


def test_eog_set_follows_llama_cpp() -> None:
    """Text-listed tokens, FIM pad/repo/sep and the eos key; the eos key is the only declared one."""
    class _GF:
        kv = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.eos_token_id": 0,
              "tokenizer.ggml.tokens": ["<x>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
                                        "<|im_start|>"],
              "tokenizer.ggml.token_type": [3] * 6}

    assert eog_set(_GF()) == ({0, 1, 2, 3, 4}, {0})  # type: ignore[arg-type]
    assert "<|eot_id|>" in EOG_TEXTS and "<｜end▁of▁sentence｜>" in EOG_TEXTS


def test_pre_tokenizer_release_table_covers_every_name_l1quant_writes() -> None:
    from l1quant.conversion.vocab import PRE_TOKENIZERS

    assert set(PRE_TOKENIZERS.values()) <= set(PRE_TOKENIZER_RELEASES)
    assert PRE_TOKENIZER_RELEASES["deepseek-r1-qwen"].build == 4514


def test_verdict_and_text_count_warnings() -> None:
    from l1quant.check.report import Check, VerifyReport, format_report

    rep = VerifyReport("x.gguf", None, [Check("header", "pass", "ok"), Check("compat.bos.missing", "warn", "w")],
                       [], None, None, 0.1)
    assert rep.passed and rep.verdict == "PASS: 1 check passed, 1 warning"
    assert "  WARN  compat.bos.missing  w" in format_report(rep)
    rep.checks.append(Check("compat.eog.config", "fail", "f"))
    assert not rep.passed and rep.verdict.startswith("FAIL: 1 of 3 checks failed (compat.eog.config)")


@pytest.mark.parametrize("to", ["q8_0", "f16"])
def test_requantized_error_profile_warns(tiny_r1: Path, conv: Callable[..., Path], tmp_path: Path, to: str) -> None:
    """A Q4_0 file requantized to Q8_0 (or dequantized to F16) keeps 4-bit levels: at most 16 values per block."""
    from l1quant.conversion.quantize import quantize

    q4 = conv(tiny_r1, "q4_0")
    out = quantize(q4, tmp_path / f"re-{to}.gguf", to, allow_requantize=True, threads=2)
    code, doc = _verify(Path(out))
    assert _findings(doc) == {"compat.tensors.requantized": "warn"}, doc["verdict"]
    assert "distinct values per 32" in _message(doc, "compat.tensors.requantized")
    code, doc = _verify(conv(tiny_r1, to))  # the same type straight from the checkpoint: no finding
    assert _findings(doc) == {}


def test_hostile_template_costs_one_bounded_render() -> None:
    """A template that loops for ever is stopped by the chat sandbox's time bound, once."""
    import time

    class _GF:
        kv = _header_stub()
        tensors: list[Any] = []

    _GF.kv["tokenizer.chat_template"] = ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                                         "{% endfor %}")
    t0 = time.monotonic()
    checks = {c.name: c for c in check_compat(_GF())}  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 20
    assert checks["compat.template.render"].status == "warn"
    assert "render bound" in checks["compat.template.render"].message


# --------------------------------------------------------------------------------------------------- llama.cpp


def _llama_vocab(lc: Any, path: Path) -> tuple[set[int], int, bool]:
    """(EOG ids, BOS id, add_bos) as llama.cpp's own loader builds them (vocab only, no weights read)."""
    from llama_quantize import captured_log

    params = lc.llama_model_default_params()
    params.vocab_only = True
    with captured_log(lc):
        model = lc.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp cannot load {path}"
    try:
        vocab = lc.llama_model_get_vocab(model)
        n = lc.llama_vocab_n_tokens(vocab)
        eog = {i for i in range(n) if lc.llama_vocab_is_eog(vocab, i)}
        return eog, lc.llama_vocab_bos(vocab), bool(lc.llama_vocab_get_add_bos(vocab))
    finally:
        lc.llama_model_free(model)


@pytest.mark.parametrize("tok", [*CLEAN, "no-bos"])
def test_eog_set_and_bos_default_equal_llama_cpp(tiny_factory: Callable[..., Path], conv: Callable[..., Path],
                                                 llama_cpp: Any, tok: str) -> None:
    """Differential: the EOG set compat computes from the header is the one llama.cpp's loader builds, for every
    fixture tokenizer; and without a bos key llama.cpp's BOS is the id 11 the check names."""
    src = (tiny_factory("qwen3", head_dim=16, extra_config={"bos_token_id": None, "eos_token_id": 151645})
           if tok == "no-bos" else tiny_factory(tok, **CLEAN[tok]))
    path = conv(src)
    eog, bos, add_bos = _llama_vocab(llama_cpp, path)
    gf = read_gguf(path)
    assert eog_set(gf)[0] == eog
    if tok == "no-bos":
        assert bos == 11 and "tokenizer.ggml.bos_token_id" not in gf.kv
    else:
        assert bos == gf.kv["tokenizer.ggml.bos_token_id"]
    assert add_bos == gf.kv.get("tokenizer.ggml.add_bos_token", gf.kv.get("tokenizer.ggml.pre") == "llama-bpe")


def test_bos_written_after_the_start_is_a_double_bos() -> None:
    """llama.cpp (common/chat.cpp) and llama-cpp-python drop a BOS the template writes at the very start; one
    written after a newline stays, and add_bos puts a second one in front."""
    class _GF:
        kv = _header_stub()
        tensors: list[Any] = []

    _GF.kv.update({"tokenizer.ggml.add_bos_token": True,
                   "tokenizer.chat_template": "\n{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"})
    checks = {c.name: c for c in check_compat(_GF())}  # type: ignore[arg-type]
    assert checks["compat.bos.double"].status == "warn" and "0 'a'" in checks["compat.bos.double"].message
    _GF.kv["tokenizer.chat_template"] = _GF.kv["tokenizer.chat_template"].lstrip("\n")
    checks = {c.name: c for c in check_compat(_GF())}  # type: ignore[arg-type]
    assert "compat.bos.double" not in checks and checks["compat.bos"].status == "pass"

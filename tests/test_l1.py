"""L1 length control: prompt wording, sandboxed chat rendering, response parsing, reports, CLI, and runs.

The end-to-end tests at the bottom run a tiny converted GGUF through llama-cpp-python; they skip (with the reason)
when the ``run`` extra or the converter is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner
from reference import require_module

from l1quant import l1
from l1quant.cli import main
from l1quant.errors import InputError, L1QuantError, RuntimeMissingError, TokenizerError
from l1quant.l1 import (
    BudgetReport,
    BudgetRow,
    ChatTemplateError,
    budget_kept,
    chat_template_from,
    extract_boxed,
    l1_prompt,
    load_problems,
    parse_integer_answer,
    parse_response,
    render_chat,
)
from l1quant.l1.runner import _ThinkCounter

DATA = Path(__file__).parent / "data"
QWEN = DATA / "qwen2.5-tokenizer"
R1 = DATA / "r1-distill-tokenizer"
PROBLEMS = Path(__file__).parent.parent / "examples" / "problems.jsonl"

Q = "What is 17*3?"
EXACT = "What is 17*3? Let's think step by step and output the final answer within \\boxed{}. Think for 512 tokens."
MAX = "What is 17*3? Let's think step by step and output the final answer within \\boxed{}. Think for maximum 512 tokens."
QWEN_RENDERED = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n" + EXACT + "<|im_end|>\n<|im_start|>assistant\n")
R1_RENDERED = "<｜begin▁of▁sentence｜><｜User｜>" + MAX + "<｜Assistant｜><think>\n"


# --- prompt wording ---------------------------------------------------------------------------------------------


def test_prompt_exact_and_max_wording() -> None:
    assert l1_prompt(Q, 512) == EXACT
    assert l1_prompt(Q, 512, max_mode=True) == MAX
    # One literal backslash before "boxed", and nothing inside the braces.
    assert EXACT.count("\\") == 1 and "\\boxed{}." in EXACT


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "512"])
def test_prompt_rejects_bad_budget(bad: object) -> None:
    with pytest.raises(InputError, match="budget"):
        l1_prompt(Q, bad)  # type: ignore[arg-type]


def test_prompt_rejects_empty_question() -> None:
    with pytest.raises(InputError, match="question"):
        l1_prompt("   ", 100)


# --- chat templates ---------------------------------------------------------------------------------------------


def test_chat_template_from_qwen_folder_renders_chatml() -> None:
    template, bos, eos = chat_template_from(QWEN)
    assert (bos, eos) == ("<|endoftext|>", "<|im_end|>")
    assert render_chat(EXACT, template, bos_token=bos, eos_token=eos) == QWEN_RENDERED
    without = render_chat(EXACT, template, bos_token=bos, eos_token=eos, add_generation_prompt=False)
    assert without == QWEN_RENDERED[: -len("<|im_start|>assistant\n")]


def test_chat_template_from_r1_folder_opens_think() -> None:
    template, bos, eos = chat_template_from(R1)
    assert (bos, eos) == ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
    assert render_chat(MAX, template, bos_token=bos, eos_token=eos) == R1_RENDERED
    assert render_chat(MAX, template, bos_token=bos, eos_token=eos, add_generation_prompt=False) == (
        "<｜begin▁of▁sentence｜><｜User｜>" + MAX)


def test_folder_with_only_chat_template_jinja(tmp_path: Path) -> None:
    # Transformers 5 folders keep the template in chat_template.jinja and may lack tokenizer_config.json's key.
    shutil.copy(QWEN / "chat_template.jinja", tmp_path / "chat_template.jinja")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    template, bos, eos = chat_template_from(tmp_path)
    assert (bos, eos) == ("", "<|im_end|>")
    assert render_chat(EXACT, template) == QWEN_RENDERED


def test_folder_without_template_is_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ChatTemplateError, match="no chat template"):
        chat_template_from(tmp_path)


def _write_gguf(path: Path, template: str | None, tokens: list[str], bos: int | None, eos: int | None) -> Path:
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if template is not None:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_chat_template_from_gguf(tmp_path: Path) -> None:
    template, _, _ = chat_template_from(R1)
    tokens = ["a", "<｜end▁of▁sentence｜>", "b", "<｜begin▁of▁sentence｜>"]
    path = _write_gguf(tmp_path / "m.gguf", template, tokens, bos=3, eos=1)
    t2, bos, eos = chat_template_from(path)
    assert (t2, bos, eos) == (template, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
    assert render_chat(MAX, t2, bos_token=bos, eos_token=eos) == R1_RENDERED


def test_gguf_without_template_or_bad_bos(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="tokenizer.chat_template"):
        chat_template_from(_write_gguf(tmp_path / "a.gguf", None, ["a"], 0, 0))
    with pytest.raises(TokenizerError, match="bos_token_id=7"):
        chat_template_from(_write_gguf(tmp_path / "b.gguf", "{{ bos_token }}", ["a", "b"], 7, 0))
    with pytest.raises(InputError, match="no such"):
        chat_template_from(tmp_path / "missing.gguf")


def test_rendering_matches_transformers_for_both_fixtures() -> None:
    # Independent check of the environment (trim_blocks, lstrip_blocks, helpers) against transformers' renderer.
    ctu = require_module("transformers.utils.chat_template_utils")
    if not hasattr(ctu, "render_jinja_template"):
        pytest.skip("this transformers has no render_jinja_template")
    for folder, prompt in ((QWEN, EXACT), (R1, MAX)):
        template, bos, eos = chat_template_from(folder)
        rendered, _ = ctu.render_jinja_template([[{"role": "user", "content": prompt}]], chat_template=template,
                                                add_generation_prompt=True, bos_token=bos, eos_token=eos)
        assert render_chat(prompt, template, bos_token=bos, eos_token=eos) == rendered[0]


@pytest.mark.parametrize("hostile", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}",
    "{{ raise_exception.__globals__['os'].system('echo pwned') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{% set x = namespace(__dict__=1) %}",
    "{{ messages.append(1) }}",  # immutable sandbox: no mutating the caller's data
])
def test_sandbox_refuses_internals(hostile: str, tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError) as info:
        render_chat("hi", hostile)
    assert isinstance(info.value, L1QuantError)
    assert "\n" not in str(info.value)


def test_template_errors_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="only user roles"):
        render_chat("hi", "{{ raise_exception('only user roles') }}")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat("hi", "{% if %}")
    with pytest.raises(ChatTemplateError, match="rendered more than"):
        render_chat("hi", "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="non-empty"):
        render_chat("hi", "")


def test_hf_helpers() -> None:
    # HF's tojson does not HTML-escape and accepts json.dumps options; strftime_now and loop controls exist.
    assert render_chat("hi", "{{ {'a': '<é>'} | tojson }}") == '{"a": "<é>"}'
    assert render_chat("hi", "{{ {'b': 1, 'a': 2} | tojson(indent=1, sort_keys=True) }}") == '{\n "a": 2,\n "b": 1\n}'
    assert render_chat("hi", "{{ strftime_now('%Y') | length }}") == "4"
    assert render_chat("hi", "{% for i in [1,2,3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "1"
    assert render_chat("hi", "{% generation %}{{ messages[0].content }}{% endgeneration %}") == "hi"
    assert render_chat("hi", "{% set ns = namespace(n=1) %}{% set ns.n = 2 %}{{ ns.n }}{{ dict(a=1).a }}") == "21"


# --- parsing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is \\boxed{51}.", "51"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("first \\boxed{3} then \\boxed{4}", "4"),  # multiple boxes: the last wins
    ("no box here", None),
    ("\\boxed{12} and a broken \\boxed{1", "12"),  # unbalanced last box: the previous complete one
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
    ("\\boxed 42$", "42"),  # brace-less form
    ("\\boxed {7}", "7"),
    ("\\fbox{9}", "9"),
    ("\\boxed{}", ""),
    ("\\boxedx{1}", None),
])
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    ("42", 42), (" -7 ", -7), ("$1,024$", 1024), ("1{,}024", 1024), ("\\text{12}", 12), ("7.0", 7),
    ("65^\\circ", 65), ("16 apples", 16), ("\\frac{1}{2}", None), ("3.5", None), ("", None), (None, None),
])
def test_parse_integer_answer(answer: str | None, expected: int | None) -> None:
    assert parse_integer_answer(answer) == expected


def test_parse_response() -> None:
    r = parse_response("<think>\nadd them</think>\n\nSo \\boxed{8}.", reasoning_tokens=5)
    assert (r.reasoning, r.answer, r.boxed, r.think_closed, r.reasoning_tokens) == (
        "\nadd them", "\n\nSo \\boxed{8}.", "8", True, 5)
    open_ = parse_response("still thinking \\boxed{3}")
    assert (open_.reasoning, open_.answer, open_.boxed, open_.think_closed) == (
        "still thinking \\boxed{3}", "", "3", False)


def test_budget_kept_rules() -> None:
    assert budget_kept(512, 512) and budget_kept(614, 512) and not budget_kept(615, 512)
    assert budget_kept(410, 512) and not budget_kept(409, 512)
    assert budget_kept(600, 512, tolerance=0.5)
    assert budget_kept(512, 512, max_mode=True) and budget_kept(1, 512, max_mode=True)
    assert not budget_kept(513, 512, max_mode=True)


# --- problems ---------------------------------------------------------------------------------------------------


def test_shipped_problems_are_valid() -> None:
    problems = load_problems(PROBLEMS)
    assert len(problems) >= 30
    assert len({p.id for p in problems}) == len(problems)
    assert all(isinstance(p.answer, int) and p.question.endswith("?") for p in problems)
    assert [p.id for p in load_problems(PROBLEMS, limit=3)] == [p.id for p in problems[:3]]


@pytest.mark.parametrize(("content", "match"), [
    ('{"id": "a", "question": "q?", "answer": 1.5}\n', r":1: expected an integer \"answer\""),
    ('{"id": "a", "question": "q?", "answer": 1}\n{"id": "a", "question": "r?", "answer": 2}\n', "duplicate id"),
    ('{"id": "a", "question": "q?", "answer": 1}\nnot json\n', ":2: not valid JSON"),
    ('{"id": "a", "answer": 1}\n', "question"),
    ("\n\n", "no problems"),
])
def test_problem_file_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_problems(path)


# --- report -----------------------------------------------------------------------------------------------------


def _report() -> BudgetReport:
    rep = BudgetReport(mode="exact", tolerance=0.2, budgets=[256, 512], models=["a/A.gguf", "b/B.gguf"],
                       problems_path="p.jsonl", problem_ids=["x"], seed=0,
                       sampling_overrides={"temperature": None, "top_p": None, "top_k": None})
    for i, m in enumerate(rep.models):
        for b in rep.budgets:
            rep.rows.append(BudgetRow(m, b, 1, b * (1 + 0.1 * i), b + 20.0, 0.1 * i, 1.0 - i, 1.0, 1.0, 0.5))
    return rep


def test_report_json_schema_is_stable() -> None:
    data = json.loads(_report().to_json())
    assert data["schema"] == "l1quant.budget-check/1"
    assert list(data) == ["schema", "mode", "tolerance", "budgets", "models", "problems", "seed",
                          "sampling_overrides", "results", "runs"]
    assert list(data["results"][0]) == ["model", "budget", "runs", "mean_reasoning_tokens", "mean_total_tokens",
                                        "mean_rel_deviation", "share_within_budget", "share_kept",
                                        "share_think_closed", "accuracy"]
    assert data["problems"] == {"path": "p.jsonl", "count": 1, "ids": ["x"]}


def test_report_table_and_plot(tmp_path: Path) -> None:
    require_module("matplotlib")
    rep = _report()
    lines = rep.table().splitlines()
    assert "mean |n-N|/N" in lines[0] and len(lines) == 2 + 4
    assert lines[2].split()[:4] == ["A.gguf", "256", "1", "256.0"]
    out = rep.plot(tmp_path / "budget.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    with pytest.raises(RuntimeMissingError, match=r"l1quant\[plot\]"):
        _report().plot(tmp_path / "x.png")


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_prompt() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["prompt", Q, "--budget", "512"])
    assert res.exit_code == 0 and res.output == EXACT + "\n"
    res = runner.invoke(main, ["prompt", Q, "--budget", "512", "--max"])
    assert res.exit_code == 0 and res.output == MAX + "\n"


def test_cli_prompt_chat() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["prompt", Q, "-b", "512", "--max", "--chat", str(R1)])
    assert res.exit_code == 0 and res.output == R1_RENDERED
    res = runner.invoke(main, ["prompt", Q, "-b", "512", "--chat", str(QWEN)])
    assert res.exit_code == 0 and res.output == QWEN_RENDERED


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["prompt", Q, "--budget", "0"])
    assert res.exit_code == 2 and "--budget" in res.output
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ \'\'.__class__ }}"}')
    res = runner.invoke(main, ["prompt", Q, "-b", "8", "--chat", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.startswith("l1quant: error: chat template: refused by the sandbox") and res.output.count("\n") == 1
    res = runner.invoke(main, ["budget-check", str(PROBLEMS), "--budgets", "0,5", "--problems", str(PROBLEMS)])
    assert res.exit_code == 2 and "comma-separated positive integers" in res.output


def test_run_without_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(RuntimeMissingError, match=r"pip install 'l1quant\[run\]'"):
        l1.run(path, Q, 64, n_ctx=512)
    with pytest.raises(RuntimeMissingError, match=r"pip install 'l1quant\[run\]'"):
        l1.budget_check([path], [64], PROBLEMS)


# --- reasoning token counting (the counter the runtime loop feeds) ----------------------------------------------


def test_think_counter_by_token_id_and_by_text() -> None:
    by_id = _ThinkCounter(151649)
    for tok, piece in [(1, "a"), (2, "b"), (151649, "</think>"), (3, "\n\n"), (4, "x")]:
        by_id.feed(tok, piece)
    assert (by_id.generated, by_id.reasoning_tokens) == (5, 3)
    split = _ThinkCounter(None)  # a vocabulary without a </think> token: the tag spans tokens
    for i, piece in enumerate(["so", " 8", "</", "thi", "nk", ">", "\\boxed{8}"]):
        split.feed(i, piece)
    assert (split.generated, split.reasoning_tokens) == (7, 6)
    never = _ThinkCounter(151649)
    for i, piece in enumerate(["<", "/think", " >", "think>"]):
        never.feed(i, piece)
    assert (never.generated, never.reasoning_tokens) == (4, None)
    first = _ThinkCounter(151649)
    for tok, piece in [(151649, "</think>"), (151649, "</think>")]:
        first.feed(tok, piece)
    assert first.reasoning_tokens == 1  # the first close counts


# --- end to end: a tiny converted GGUF through llama-cpp-python ---------------------------------------------------

GEN_CONFIG = {"bos_token_id": 151646, "eos_token_id": 151643, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
              "top_k": 20}


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_factory: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny R1-tokenizer checkpoint converted to q8_0 and f16 (generation config with distinctive sampling)."""
    require_module("llama_cpp")  # the run extra; skips locally without it, fails under CI
    from l1quant.conversion.convert import convert

    ckpt = tiny_factory("r1", generation_config=GEN_CONFIG)  # type: ignore[operator]
    out = tmp_path_factory.mktemp("l1-gguf")
    return {t: Path(convert(ckpt, type=t, output=out / f"tiny-{t}.gguf")) for t in ("q8_0", "f16")}


def test_run_end_to_end(tiny_ggufs: dict[str, Path]) -> None:
    from tokenizers import Tokenizer

    pieces: list[str] = []
    r = l1.run(tiny_ggufs["q8_0"], Q, 16, seed=3, max_tokens=10, stream_to=pieces.append)
    assert "".join(pieces) == r.text
    assert r.prompt == ("<｜begin▁of▁sentence｜><｜User｜>" + l1_prompt(Q, 16) + "<｜Assistant｜><think>\n")
    # llama.cpp's tokenization of the rendered prompt equals the HF tokenizer's (one bos, special tokens parsed).
    hf = Tokenizer.from_file(str(R1 / "tokenizer.json")).encode(r.prompt, add_special_tokens=False).ids
    assert r.prompt_tokens == len(hf)
    assert 1 <= r.total_tokens <= 10 and r.max_tokens == 10
    assert (r.stop_reason == "length") == (r.total_tokens == 10)
    if not r.think_closed:
        assert r.reasoning_tokens == r.total_tokens and r.reasoning == r.text and r.answer_text == ""
    assert r.reasoning_tokens <= r.total_tokens
    assert r.rel_deviation == abs(r.reasoning_tokens - 16) / 16
    assert r.budget_kept == budget_kept(r.reasoning_tokens, 16) and r.tolerance == l1.EXACT_TOLERANCE
    # Sampling comes from the GGUF's general.sampling.* (written from generation_config.json).
    assert r.sampling == {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.0}
    again = l1.run(tiny_ggufs["q8_0"], Q, 16, seed=3, max_tokens=10)
    assert again.text == r.text and again.reasoning_tokens == r.reasoning_tokens
    assert json.loads(json.dumps(r.to_dict()))["reasoning_tokens"] == r.reasoning_tokens


def test_run_max_mode_and_overrides(tiny_ggufs: dict[str, Path]) -> None:
    a = l1.run(tiny_ggufs["f16"], Q, 4, max_mode=True, temperature=0.0, top_p=0.5, top_k=3, seed=1, max_tokens=6)
    b = l1.run(tiny_ggufs["f16"], Q, 4, max_mode=True, temperature=0.0, top_p=0.5, top_k=3, seed=2, max_tokens=6)
    assert a.sampling == {"temperature": 0.0, "top_p": 0.5, "top_k": 3, "min_p": 0.0}
    assert a.text == b.text  # greedy: the seed does not matter
    assert a.mode == "max" and "Think for maximum 4 tokens." in a.prompt and a.tolerance is None
    assert a.budget_kept == (a.reasoning_tokens <= 4)
    with pytest.raises(InputError, match="top_p"):
        l1.run(tiny_ggufs["f16"], Q, 4, top_p=0.0)


@pytest.mark.slow  # ~5 s on 2 cores: 2 model loads and 8 runs; test_cli_budget_check covers the mechanics quickly
def test_budget_check_end_to_end(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    require_module("matplotlib")
    models = [tiny_ggufs["q8_0"], tiny_ggufs["f16"]]
    seen: list[l1.RunResult] = []
    rep = l1.budget_check(models, [8, 4], PROBLEMS, limit=2, max_tokens=5, seed=7, progress=seen.append)
    data = json.loads(rep.to_json())
    assert data["budgets"] == [4, 8] and data["mode"] == "exact" and data["tolerance"] == l1.EXACT_TOLERANCE
    assert data["problems"]["count"] == 2 and len(seen) == 8 and len(data["runs"]) == 8
    assert [(r["model"], r["budget"]) for r in data["results"]] == [
        (str(models[0]), 4), (str(models[0]), 8), (str(models[1]), 4), (str(models[1]), 8)]
    for row in data["results"]:
        runs = [r for r in data["runs"] if r["model"] == row["model"] and r["budget"] == row["budget"]]
        assert row["runs"] == 2 and [r["seed"] for r in runs] == [7, 8]
        assert row["mean_reasoning_tokens"] == sum(r["reasoning_tokens"] for r in runs) / 2
        assert row["mean_rel_deviation"] == sum(r["rel_deviation"] for r in runs) / 2
        assert row["share_within_budget"] == sum(r["reasoning_tokens"] <= row["budget"] for r in runs) / 2
        assert row["accuracy"] == sum(r["correct"] for r in runs) / 2
        assert all(1 <= r["total_tokens"] <= 5 and r["expected"] in (16, 56) for r in runs)
    out = rep.plot(tmp_path / "len.png")
    assert out.stat().st_size > 1000


def test_cli_run(tiny_ggufs: dict[str, Path]) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(tiny_ggufs["q8_0"]), Q, "-b", "8", "--seed", "0", "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert "reasoning tokens: " in res.stderr and "budget kept (|n-N|/N <= 0.2): " in res.stderr
    assert "reasoning tokens" not in res.stdout
    res = runner.invoke(main, ["run", str(tiny_ggufs["q8_0"]), Q, "-b", "8", "--max", "--max-tokens", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["mode"] == "max"


def test_cli_budget_check(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    require_module("matplotlib")
    runner = CliRunner()
    plot = tmp_path / "p.png"
    res = runner.invoke(main, ["budget-check", str(tiny_ggufs["q8_0"]), "--budgets", "4,8", "--problems",
                               str(PROBLEMS), "--limit", "1", "--max-tokens", "3", "--max", "--json", "-q",
                               "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["mode"] == "max" and data["tolerance"] is None and len(data["results"]) == 2
    assert plot.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(main, ["budget-check", str(tiny_ggufs["q8_0"]), "--budgets", "4", "--problems",
                               str(PROBLEMS), "--limit", "1", "--max-tokens", "2", "-q"])
    assert res.exit_code == 0 and res.stdout.splitlines()[0].split()[:3] == ["model", "budget", "runs"]
    assert res.stdout.splitlines()[2].startswith("tiny-q8_0.gguf")


def test_folder_special_tokens_map_fallback(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}|{{ eos_token }}"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    template, bos, eos = chat_template_from(tmp_path)
    assert render_chat("x", template, bos_token=bos, eos_token=eos) == "<s>|</s>"

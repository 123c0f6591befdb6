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
    ctu = pytest.importorskip("transformers.utils.chat_template_utils")
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
    pytest.importorskip("matplotlib")
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

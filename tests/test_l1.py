"""L1 length control: prompt wording, sandboxed chat rendering, response parsing, reports, CLI, and runs.

The end-to-end tests at the bottom run a tiny converted GGUF through llama-cpp-python; they skip (with the reason)
when the ``run`` extra or the converter is not installed.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import statistics
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
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
from l1quant.l1.runner import RUN_INSTALL_HINT, _generate_counted, _Generation, _result, _ThinkCounter

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


def _report(mode: str = "exact", hard_limit: bool = False) -> BudgetReport:
    rep = BudgetReport(mode=mode, tolerance=0.2 if mode == "exact" else None, budgets=[256, 512],
                       models=["a/A.gguf", "b/B.gguf"], problems_path="p.jsonl", problem_ids=["x"], seed=0,
                       sampling_overrides={"temperature": None, "top_p": None, "top_k": None}, samples=4,
                       hard_limit=hard_limit)
    for i, m in enumerate(rep.models):
        for b in rep.budgets:
            n = b * (1 + 0.1 * i)
            rep.rows.append(BudgetRow(m, b, 4, n, n - 1, n - 30, 30.0, 0.1 * i, 1.0 - i, 1.0 - i / 2, 1.0, i, 0, 0.5))
    return rep


def test_report_json_schema_is_stable() -> None:
    data = json.loads(_report().to_json())
    assert data["schema"] == "l1quant.budget-check/2"
    assert list(data) == ["schema", "counted", "mode", "tolerance", "budgets", "models", "problems", "samples",
                          "max_tokens", "hard_limit", "seed", "sampling_overrides", "results", "runs"]
    # The report says which count the verdict uses, and why.
    assert "every generated token" in data["counted"] and "LCPO" in data["counted"]
    assert list(data["results"][0]) == ["model", "budget", "runs", "mean_tokens", "median_tokens",
                                        "mean_reasoning_tokens", "mean_answer_tokens", "mean_rel_deviation",
                                        "share_within_budget", "share_kept", "share_think_closed", "cap_hits",
                                        "forced", "accuracy"]
    assert data["problems"] == {"path": "p.jsonl", "count": 1, "ids": ["x"]}
    assert (data["samples"], data["max_tokens"], data["hard_limit"]) == (4, None, False)


def test_report_table_and_plot(tmp_path: Path) -> None:
    require_module("matplotlib")
    rep = _report()
    lines = rep.table().splitlines()
    assert lines[0].split() == ["model", "budget", "runs", "mean", "n", "median", "n", "think", "answer", "|n-N|/N",
                                "within", "±20%", "capped", "accuracy"]
    assert len(lines) == 2 + 4 and len({len(line) for line in lines}) == 1  # every column padded to one width
    assert lines[2].split() == ["A.gguf", "256", "4", "256.0", "255.0", "226.0", "30.0", "0.000", "100%", "0", "50%"]
    assert lines[5].split()[-3:] == ["50%", "1", "50%"]
    maxed = _report("max", hard_limit=True).table().splitlines()
    assert "within N" in maxed[0] and maxed[0].split()[-2:] == ["forced", "accuracy"]
    out = rep.plot(tmp_path / "budget.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    with pytest.raises(RuntimeMissingError, match=r"pip install matplotlib \(l1quant's plot extra\)"):
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


def test_cli_mode_option_and_old_max_flag() -> None:
    runner = CliRunner()
    for args, expected in ((["--mode", "max"], MAX), (["--max"], MAX), (["--mode", "max", "--max"], MAX),
                           (["--mode", "exact"], EXACT), ([], EXACT)):
        res = runner.invoke(main, ["prompt", Q, "-b", "512", *args])
        assert res.exit_code == 0 and res.output == expected + "\n", args
    res = runner.invoke(main, ["prompt", Q, "-b", "512", "--mode", "exact", "--max"])
    assert res.exit_code == 2 and "--max contradicts --mode exact" in res.output
    res = runner.invoke(main, ["prompt", Q, "-b", "512", "--mode", "maximum"])
    assert res.exit_code == 2 and "'exact', 'max'" in res.output
    # --max is kept working but no longer shown beside --max-tokens.
    for cmd in ("prompt", "run", "budget-check"):
        help_text = runner.invoke(main, [cmd, "--help"]).output
        assert "--mode [exact|max]" in help_text and "--max " not in help_text and "--max\n" not in help_text


def _capture(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, object]:
    """Replace ``l1quant.l1.<name>`` (what the CLI calls) by a recorder; returns the recorded call."""
    seen: dict[str, object] = {}

    def fake(*args: object, **kwargs: object) -> object:
        seen.update(kwargs, args=args)
        if name == "run":
            return l1.RunResult("m.gguf", Q, 8, "exact", "p", 3, "t", "t", "", None, None, 1, 1, False, "eos", False,
                                0.875, 0.2, {}, None, 16, 0.1)
        return _report()

    monkeypatch.setattr(l1, name, fake)
    return seen


@pytest.mark.parametrize(("args", "expected"), [
    (["-n", "64"], {"max_tokens": 64}),
    (["--n-predict", "64"], {"max_tokens": 64}),
    (["--max-tokens", "64"], {"max_tokens": 64}),
    (["-c", "4096"], {"n_ctx": 4096}),
    (["--ctx-size", "4096"], {"n_ctx": 4096}),
    (["--n-ctx", "4096"], {"n_ctx": 4096}),
    (["-t", "3"], {"threads": 3}),
    (["--threads", "3"], {"threads": 3}),
    (["-ngl", "99"], {"n_gpu_layers": 99}),
    (["--n-gpu-layers", "-1"], {"n_gpu_layers": -1}),
    (["--gpu-layers", "7"], {"n_gpu_layers": 7}),
    (["--hard-limit"], {"hard_limit": True}),
    (["--mode", "max"], {"mode": "max"}),
    (["--max"], {"mode": "max"}),
    ([], {"max_tokens": None, "n_ctx": None, "threads": None, "n_gpu_layers": None, "hard_limit": False,
          "mode": "exact"}),
])
def test_cli_run_options_as_llama_cpp_spells_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 args: list[str], expected: dict[str, object]) -> None:
    seen = _capture(monkeypatch, "run")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    res = CliRunner().invoke(main, ["run", str(model), Q, "-b", "8", *args])
    assert res.exit_code == 0, res.output
    assert {k: seen[k] for k in expected} == expected


def test_cli_budget_check_defaults_follow_the_paper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _capture(monkeypatch, "budget_check")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    res = CliRunner().invoke(main, ["budget-check", str(model), "--problems", str(PROBLEMS), "-q"])
    assert res.exit_code == 0, res.output
    assert seen["args"] == ([model], [512, 1024, 2048, 3600], PROBLEMS)
    assert (seen["samples"], seen["max_tokens"], seen["temperature"], seen["top_p"], seen["hard_limit"]) == (
        1, None, None, None, False)  # None: 2 x N per budget; sampling from the GGUF (L1: 0.6 / 0.95)
    res = CliRunner().invoke(main, ["budget-check", str(model), "--problems", str(PROBLEMS), "-q", "--samples", "4",
                                    "--budgets", "256,512", "-t", "2", "-ngl", "1", "--mode", "max"])
    assert res.exit_code == 0, res.output
    assert seen["args"] == ([model], [256, 512], PROBLEMS)
    assert (seen["samples"], seen["threads"], seen["n_gpu_layers"], seen["mode"]) == (4, 2, 1, "max")
    assert "--samples" in CliRunner().invoke(main, ["budget-check", "--help"]).output
    res = CliRunner().invoke(main, ["budget-check", str(model), "--problems", str(PROBLEMS), "--samples", "0"])
    assert res.exit_code == 2


def test_library_defaults_follow_the_paper() -> None:
    assert l1.default_max_tokens(512) == 1024 and l1.default_max_tokens(3600) == 7200
    assert l1.PAPER_BUDGETS == (512, 1024, 2048, 3600)
    assert l1.DEFAULT_SAMPLING["temperature"] == 0.6 and l1.DEFAULT_SAMPLING["top_p"] == 0.95
    assert l1.FORCED_THINK_END.startswith("</think>")


def test_install_hint_pins_the_run_extras_version() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    pin = re.search(r'^run = \["(llama-cpp-python==[^"]+)"\]', pyproject, re.M)
    assert pin is not None and f"pip install '{pin.group(1)}'" in RUN_INSTALL_HINT


def test_cli_run_and_budget_check_help_say_what_is_counted() -> None:
    runner = CliRunner()
    for cmd in ("run", "budget-check"):
        text = " ".join(runner.invoke(main, [cmd, "--help"]).output.split())
        assert "every generated token, reasoning and answer together" in text
        assert "LCPO's reward compares the budget with the whole response" in text


def test_bare_command_shows_help_and_succeeds() -> None:
    res = CliRunner().invoke(main, [])
    assert res.exit_code == 0 and "Commands:" in res.output


def test_group_help_one_liners_are_not_cut() -> None:
    res = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert res.exit_code == 0
    # Compared without whitespace: the help formatter wraps long lines, also after a hyphen ("llama-|quantize").
    listing = "".join(res.output.split("Commands:")[1].split())
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        whole = cmd.get_short_help_str(limit=10_000)  # the first sentence, never shortened
        assert "".join(f"{name} {whole}".split()) in listing, name
    assert "runeachMODEL(GGUF)oneachproblemateachbudget;needsllama-cpp-python(`pipinstall'.[run]'`inacheckout)." in listing


def test_run_without_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    # The hint installs the pinned runtime itself: l1quant is installed from a checkout, not from PyPI.
    hint = r"needs llama-cpp-python: pip install 'llama-cpp-python==0\.3\.36' \(l1quant's run extra"
    with pytest.raises(RuntimeMissingError, match=hint):
        l1.run(path, Q, 64, n_ctx=512)
    with pytest.raises(RuntimeMissingError, match=hint):
        l1.budget_check([path], [64], PROBLEMS)
    res = CliRunner().invoke(main, ["run", str(path), Q, "-b", "8"])
    assert res.exit_code == 1 and res.output.startswith("l1quant: error: running a GGUF needs llama-cpp-python")


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


# --- LCPO counting on scripted token streams (no model) --------------------------------------------------------
#
# _generate_counted is the runtime loop without llama.cpp: a script stands in for the sampler. Token ids: CLOSE is
# </think> (one token, as in R1/L1 vocabularies), EOG ends generation, everything else is a word.

CLOSE, EOG = 151649, 151643
PROMPT = [151646, 11, 12]
FORCE = [CLOSE, 90, 91]  # stands for FORCED_THINK_END's tokens: </think>, then the answer cue
_PIECES = {CLOSE: "</think>", EOG: "", 60: "</", 61: "think", 62: ">"}


def _piece(tok: int) -> bytes:
    return _PIECES.get(tok, f"w{tok} ").encode()


class _Script:
    """A stand-in sampler: each start() yields the next script and records the sequence it was started after."""

    def __init__(self, *scripts: Iterable[int]) -> None:
        self.scripts = list(scripts)
        self.starts: list[list[int]] = []

    def __call__(self, seq: list[int]) -> Iterator[int]:
        self.starts.append(list(seq))
        return iter(self.scripts.pop(0))


def _gen(script: _Script, *, max_tokens: int = 100, force_at: int | None = None,
         force_ids: list[int] = FORCE, close_id: int | None = CLOSE) -> _Generation:
    return _generate_counted(script, PROMPT, detokenize=_piece, is_eog=lambda t: t == EOG, think_close_id=close_id,
                             max_tokens=max_tokens, force_at=force_at, force_ids=force_ids)


def _verdict(gen: _Generation, budget: int, *, max_mode: bool, max_tokens: int = 100,
             hard_limit: bool = False) -> l1.RunResult:
    return _result(gen, model="m.gguf", question="q", budget=budget, max_mode=max_mode, prompt="p", prompt_tokens=3,
                   sampling={}, seed=0, max_tokens=max_tokens, tolerance=0.2, hard_limit=hard_limit, elapsed_s=1.0)


def test_budget_counts_the_whole_response_not_the_reasoning() -> None:
    g = _gen(_Script([1, 2, 3, CLOSE, 4, 5, EOG]))
    assert (g.total_tokens, g.reasoning_tokens, g.stop_reason, g.forced) == (6, 4, "eos", False)
    assert g.text == "w1 w2 w3 </think>w4 w5 "
    # Max, N=5: the reasoning (4) fits but the response (6) does not; LCPO judges the response.
    r = _verdict(g, 5, max_mode=True)
    assert (r.total_tokens, r.reasoning_tokens, r.answer_tokens, r.think_closed) == (6, 4, 2, True)
    assert not r.budget_kept and r.rel_deviation == pytest.approx(0.2) and not r.hit_cap
    # Exact, N=6: the response is exactly on budget although the reasoning alone is 33% short.
    r = _verdict(g, 6, max_mode=False)
    assert r.budget_kept and r.rel_deviation == 0.0
    assert "response tokens n: 6 = reasoning 4 (through </think>) + answer 2" in r.summary()


def test_budget_counts_a_response_that_never_closes_thinking() -> None:
    g = _gen(_Script([1, 2, 3, EOG]))
    r = _verdict(g, 3, max_mode=True)
    assert (g.total_tokens, g.reasoning_tokens) == (3, None)
    assert (r.total_tokens, r.reasoning_tokens, r.answer_tokens, r.think_closed) == (3, 3, 0, False)
    assert r.budget_kept and r.stop_reason == "eos" and r.answer_text == "" and r.reasoning == r.text
    assert "thinking never closed" in r.summary()
    # Only an end-of-generation token: nothing generated, nothing counted.
    empty = _verdict(_gen(_Script([EOG])), 4, max_mode=True)
    assert (empty.total_tokens, empty.reasoning_tokens, empty.rel_deviation, empty.budget_kept) == (0, 0, 1.0, True)


def test_budget_counts_a_response_cut_at_the_cap() -> None:
    g = _gen(_Script(itertools.count(1)), max_tokens=8)
    r = _verdict(g, 4, max_mode=False, max_tokens=8)
    assert (r.total_tokens, r.reasoning_tokens, r.stop_reason, r.hit_cap) == (8, 8, "length", True)
    assert r.rel_deviation == 1.0 and not r.budget_kept
    assert "stop: hit the cap (cap 8 tokens)" in r.summary()
    # Closed, then cut while answering: the cut answer counts.
    r = _verdict(_gen(_Script([1, CLOSE, *range(2, 100)]), max_tokens=5), 5, max_mode=True, max_tokens=5)
    assert (r.total_tokens, r.reasoning_tokens, r.answer_tokens, r.hit_cap, r.budget_kept) == (5, 2, 3, True, True)
    # The cap is reached before the end-of-generation token is even sampled: "length", never more than the cap.
    assert _gen(_Script([1, 2, 3, EOG]), max_tokens=3).stop_reason == "length"


def test_forced_end_of_thinking() -> None:
    script = _Script(itertools.count(1), [7, 8, EOG])
    g = _gen(script, force_at=4)
    # The response reached N=4 tokens with no </think>: </think> and the cue were appended, and sampling resumed
    # after them, on the whole sequence so far.
    assert script.starts == [PROMPT, PROMPT + [1, 2, 3, 4] + FORCE]
    assert (g.total_tokens, g.reasoning_tokens, g.stop_reason, g.forced) == (9, 5, "eos", True)
    assert g.text == "w1 w2 w3 w4 </think>w90 w91 w7 w8 "
    r = _verdict(g, 4, max_mode=True, hard_limit=True)
    assert (r.reasoning_tokens, r.answer_tokens, r.forced_think_end, r.hard_limit) == (5, 4, True, True)
    assert not r.budget_kept  # the inserted tokens and the answer are response tokens too
    assert "thinking forced to end at 4 tokens (--hard-limit)" in r.summary()


def test_hard_limit_verdict_is_on_the_thinking_and_reports_the_whole_response() -> None:
    # issue 21: `run --hard-limit --mode max` said "budget kept: no" for every forced run, because the forced
    # answer counts in n. The flag promises a thinking budget: that is the verdict, n is reported beside it.
    r = _verdict(_gen(_Script(itertools.count(1), [7, 8, EOG]), force_at=4), 4, max_mode=True, hard_limit=True)
    assert r.thinking_kept is True and r.budget_kept is False
    text = r.summary()
    assert "thinking budget kept (thinking <= 4, --hard-limit): yes" in text
    assert "whole response n = 9 (n <= 4: no" in text and "budget kept (n <= 4)" not in text
    assert r.to_dict()["thinking_kept"] is True
    # The model closed its thinking itself within N: kept; beyond N (it closed at the cap's edge): not kept.
    own = _verdict(_gen(_Script([1, 2, CLOSE, 4, EOG]), force_at=4), 4, max_mode=True, hard_limit=True)
    assert own.thinking_kept is True and not own.forced_think_end
    late = _verdict(_gen(_Script([1, 2, 3, 4, 5, CLOSE, EOG])), 4, max_mode=True, hard_limit=True)
    assert late.thinking_kept is False and "thinking budget kept (thinking <= 4, --hard-limit): no" in late.summary()
    # Without --hard-limit the verdict is LCPO's alone, as before.
    free = _verdict(_gen(_Script([1, 2, CLOSE, 4, EOG])), 4, max_mode=True)
    assert free.thinking_kept is None and "budget kept (n <= 4): yes" in free.summary()


def test_forced_end_respects_the_cap_and_the_models_own_close() -> None:
    # Only the room the cap leaves is inserted, and sampling does not resume at the cap.
    script = _Script(itertools.count(1), [7])
    g = _gen(script, force_at=4, max_tokens=5)
    assert (g.total_tokens, g.reasoning_tokens, g.stop_reason, g.forced) == (5, 5, "length", True)
    assert len(script.starts) == 1
    # At the cap itself nothing is forced.
    g = _gen(_Script(itertools.count(1)), force_at=4, max_tokens=4)
    assert (g.total_tokens, g.reasoning_tokens, g.forced) == (4, None, False)
    # A model that closes its thinking within the budget is left alone.
    script = _Script([1, CLOSE, 2, 3, 4, 5, 6, EOG])
    g = _gen(script, force_at=3)
    assert (g.total_tokens, g.reasoning_tokens, g.forced, len(script.starts)) == (7, 2, False, 1)
    # A vocabulary without a </think> token: the inserted tag is recognised by its text.
    g = _gen(_Script(itertools.count(1), [EOG]), force_at=2, force_ids=[60, 61, 62, 90], close_id=None)
    assert (g.total_tokens, g.reasoning_tokens, g.forced) == (6, 5, True)


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
    assert (r.stop_reason == "length") == (r.total_tokens == 10) == r.hit_cap
    if not r.think_closed:
        assert r.reasoning_tokens == r.total_tokens and r.reasoning == r.text and r.answer_text == ""
    assert r.reasoning_tokens + r.answer_tokens == r.total_tokens and not r.forced_think_end
    # The verdict is on every response token (LCPO's count), not on the reasoning.
    assert r.rel_deviation == abs(r.total_tokens - 16) / 16
    assert r.budget_kept == budget_kept(r.total_tokens, 16) and r.tolerance == l1.EXACT_TOLERANCE
    # Sampling comes from the GGUF's general.sampling.* (written from generation_config.json).
    assert r.sampling == {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.0}
    again = l1.run(tiny_ggufs["q8_0"], Q, 16, seed=3, max_tokens=10)
    assert again.text == r.text and again.reasoning_tokens == r.reasoning_tokens
    assert json.loads(json.dumps(r.to_dict()))["reasoning_tokens"] == r.reasoning_tokens


def test_run_max_mode_and_overrides(tiny_ggufs: dict[str, Path]) -> None:
    a = l1.run(tiny_ggufs["f16"], Q, 4, mode="max", temperature=0.0, top_p=0.5, top_k=3, seed=1, max_tokens=6)
    b = l1.run(tiny_ggufs["f16"], Q, 4, mode="max", temperature=0.0, top_p=0.5, top_k=3, seed=2, max_tokens=6)
    assert a.sampling == {"temperature": 0.0, "top_p": 0.5, "top_k": 3, "min_p": 0.0}
    assert a.text == b.text  # greedy: the seed does not matter
    assert a.mode == "max" and "Think for maximum 4 tokens." in a.prompt and a.tolerance is None
    assert a.budget_kept == (a.total_tokens <= 4)
    with pytest.raises(InputError, match="top_p"):
        l1.run(tiny_ggufs["f16"], Q, 4, top_p=0.0)


def test_run_hard_limit_end_to_end(tiny_ggufs: dict[str, Path]) -> None:
    # The tiny model's random weights never close their thinking: --hard-limit ends it at N and lets it answer.
    r = l1.run(tiny_ggufs["q8_0"], Q, 4, mode="max", temperature=0.0, max_tokens=16, hard_limit=True)
    assert r.forced_think_end and r.hard_limit and r.think_closed
    assert r.reasoning_tokens == 5  # 4 sampled + the inserted </think> (one token in the R1 vocabulary)
    assert r.text.startswith(r.reasoning) and l1.FORCED_THINK_END in r.text
    assert r.answer_tokens == r.total_tokens - 5 and r.total_tokens <= 16
    assert r.budget_kept == (r.total_tokens <= 4)
    free = l1.run(tiny_ggufs["q8_0"], Q, 4, mode="max", temperature=0.0, max_tokens=16)
    assert not free.forced_think_end and l1.FORCED_THINK_END not in free.text
    assert free.text.startswith(r.text[: r.text.index("</think>")])  # greedy: the same reasoning up to N


def test_run_default_cap_is_twice_the_budget(tiny_ggufs: dict[str, Path]) -> None:
    r = l1.run(tiny_ggufs["f16"], Q, 6, temperature=0.0, threads=1, n_gpu_layers=0)
    assert r.max_tokens == 12 and r.total_tokens <= 12


@pytest.mark.slow  # ~5 s on 2 cores: 2 model loads and 12 runs; test_cli_budget_check covers the mechanics quickly
def test_budget_check_end_to_end(tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    require_module("matplotlib")
    models = [tiny_ggufs["q8_0"], tiny_ggufs["f16"]]
    seen: list[l1.RunResult] = []
    rep = l1.budget_check(models, [8, 4], PROBLEMS, limit=2, samples=2, max_tokens=5, seed=7, progress=seen.append)
    data = json.loads(rep.to_json())
    assert data["budgets"] == [4, 8] and data["mode"] == "exact" and data["tolerance"] == l1.EXACT_TOLERANCE
    assert data["problems"]["count"] == 2 and data["samples"] == 2 and len(seen) == 16 and len(data["runs"]) == 16
    assert [(r["model"], r["budget"]) for r in data["results"]] == [
        (str(models[0]), 4), (str(models[0]), 8), (str(models[1]), 4), (str(models[1]), 8)]
    for row in data["results"]:
        runs = [r for r in data["runs"] if r["model"] == row["model"] and r["budget"] == row["budget"]]
        assert row["runs"] == 4 and [(r["problem_id"], r["sample"], r["seed"]) for r in runs] == [
            (runs[0]["problem_id"], 0, 7), (runs[0]["problem_id"], 1, 8), (runs[2]["problem_id"], 0, 9),
            (runs[2]["problem_id"], 1, 10)]
        assert row["mean_tokens"] == sum(r["tokens"] for r in runs) / 4
        assert row["median_tokens"] == statistics.median(r["tokens"] for r in runs)
        assert row["mean_reasoning_tokens"] + row["mean_answer_tokens"] == pytest.approx(row["mean_tokens"])
        assert row["mean_rel_deviation"] == sum(abs(r["tokens"] - row["budget"]) / row["budget"] for r in runs) / 4
        assert row["share_within_budget"] == sum(r["tokens"] <= row["budget"] for r in runs) / 4
        assert row["cap_hits"] == sum(r["stop_reason"] == "length" for r in runs) and row["forced"] == 0
        assert row["accuracy"] == sum(r["correct"] for r in runs) / 4
        assert all(1 <= r["tokens"] <= 5 and r["expected"] in (16, 56) for r in runs)
    out = rep.plot(tmp_path / "len.png")
    assert out.stat().st_size > 1000


def test_cli_run(tiny_ggufs: dict[str, Path]) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(tiny_ggufs["q8_0"]), Q, "-b", "8", "--seed", "0", "-n", "4", "-t", "1"])
    assert res.exit_code == 0, res.output
    assert "response tokens n: 4" in res.stderr and "budget kept (|n-N|/N <= 0.2): " in res.stderr
    assert "stop: hit the cap (cap 4 tokens)" in res.stderr
    assert "response tokens" not in res.stdout
    res = runner.invoke(main, ["run", str(tiny_ggufs["q8_0"]), Q, "-b", "8", "--mode", "max", "--max-tokens", "3",
                               "--json", "-c", "256"])
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
                               str(PROBLEMS), "--limit", "1", "--samples", "2", "-n", "2", "--hard-limit"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "budget", "runs"] and "forced" in lines[0]
    assert lines[2].split()[:3] == ["tiny-q8_0.gguf", "4", "2"]
    # Progress: problems x samples x budgets, done of total, and tqdm's ETA.
    assert "1 problems x 2 samples x 1 budgets" in res.stderr and "2/2" in res.stderr


def test_folder_special_tokens_map_fallback(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}|{{ eos_token }}"}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    template, bos, eos = chat_template_from(tmp_path)
    assert render_chat("x", template, bos_token=bos, eos_token=eos) == "<s>|</s>"

"""Issue 22, reliability round three: the surfaces that came with quantize, budget-check and hostile templates.

One section per kind of fault (the issue's numbering); each holds the issue's member and members we constructed.
Every CLI case checks the same promises as round two (tests/test_reliability.py): one ``l1quant: error:`` line,
the expected exit status, within a time (and, where the input is large, memory) bound, nothing written.
compare's members (its text streaming, base-logits cache, blame and vocabulary order) are tested with compare.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from cliutil import clean_env  # tests/ is on sys.path (pytest rootdir import)
from test_reliability import REFUSE_SECONDS, one_error, run
from test_signals import default_signals

import l1quant
from l1quant.evaluate.forward import Hparams, decoder_logits, random_weights
from l1quant.errors import InputError, L1QuantError
from l1quant.filetypes import out_types
from l1quant.gguf.reader import MAX_KV_COUNT, MAX_TENSOR_COUNT, read_gguf
from l1quant.l1.budget import load_problems
from l1quant.l1.chat import ChatTemplateError, render_chat

_T = gguf.GGUFValueType


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def f16(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny R1-shaped checkpoint as an F16 GGUF: quantize's usual input."""
    out = tmp_path_factory.mktemp("f16") / "tiny-F16.gguf"
    return l1quant.convert(tiny_r1, "f16", out)


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    o = tmp_path / "out"
    o.mkdir()
    return o


def rewrite(src: Path, dst: Path, *, drop: Callable[[str], bool] = lambda n: False,
            kv: dict[str, tuple[Any, Any]] | None = None, extra: dict[str, np.ndarray] | None = None,
            reshape: dict[str, tuple[int, ...]] | None = None, kv_first: dict[str, tuple[Any, Any]] | None = None,
            ) -> Path:
    """``src`` written again with tensors dropped, keys set (key -> (value, type or (ARRAY, elem))), tensors
    added or reshaped (numpy shape); ``kv_first`` keys come right after general.architecture."""
    gf = read_gguf(src)
    w = gguf.GGUFWriter(str(dst), arch=gf.kv["general.architecture"])

    def add(key: str, value: Any, vtype: Any) -> None:
        if isinstance(value, np.ndarray):  # gguf's writer takes sequences
            value = value.tolist()
        if isinstance(vtype, tuple):
            w.add_key_value(key, value, vtype[0], sub_type=vtype[1])
        else:
            w.add_key_value(key, value, vtype)

    for key, (value, vtype) in (kv_first or {}).items():
        add(key, value, vtype)
    kv = kv or {}
    for key, value in gf.kv.items():
        if key == "general.architecture":
            continue
        value, vtype = kv.pop(key, (value, gf.kv_types[key]))
        if value is not None:
            add(key, value, vtype)
    for key, (value, vtype) in kv.items():
        add(key, value, vtype)
    for t in gf.tensors:
        if drop(t.name):
            continue
        dt = {gguf.GGMLQuantizationType.F16: np.float16, gguf.GGMLQuantizationType.F32: np.float32}[t.ggml_type]
        a = np.frombuffer(gf.read_tensor_bytes(t), dtype=dt).reshape(t.np_shape)
        if reshape and t.name in reshape:
            a = np.zeros(reshape[t.name], dtype=dt)
        w.add_tensor(t.name, a, raw_dtype=t.ggml_type)
    for name, a in (extra or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def quantize_cli(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("quantize", str(src), str(out / "q.gguf"), "q8_0", *args, timeout=REFUSE_SECONDS)


def refused(r: subprocess.CompletedProcess[str], out: Path, *needles: str, rc: int = 1) -> str:
    line = one_error(r, *needles, rc=rc)
    assert os.listdir(out) == [], os.listdir(out)
    return line


def peak_rss_mib(code: str, *args: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run ``code`` in a fresh interpreter: (peak RSS growth after imports in MiB, its stdout, wall seconds)."""
    wrapper = ("import resource, sys\nimport l1quant, l1quant.cli\n"
               "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
               f"{code}\n"
               "print('RSS', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, timeout=timeout,
                       check=False, env=clean_env())
    dt = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    return int(last.split()[1]), r.stdout, dt


# ===================================================================== 1. a partial model accepted as whole


def test_a_whole_f16_file_quantizes(f16: Path, out: Path) -> None:
    r = quantize_cli(f16, out)
    assert r.returncode == 0, r.stderr
    assert len(read_gguf(out / "q.gguf").tensors) == len(read_gguf(f16).tensors)


def _first_half(name: str, names: list[str]) -> bool:
    return names.index(name) >= len(names) // 2


@pytest.mark.parametrize("case, needles", [
    ("split-part-1-of-2", ("part 1 of a 2-part split GGUF", "llama-gguf-split --merge")),      # the issue's
    ("missing-tensor", ("not a whole qwen2 model", "tensor 'blk.1.ffn_down.weight' is missing")),
    ("misshapen-tensor", ("tensor 'blk.0.attn_k.weight' has shape [64, 16]",)),
    ("extra-tensor", ("tensor 'foo.weight' is not part of a qwen2 model",)),
    ("block-count-4-for-2", ("tensor 'blk.2.", "is missing", "more)")),
    ("block-count-1e6", ("qwen2.block_count is 1000000, but the file has only",)),
    ("split-count-string", ("split.count is 'two'",)),
])
def test_partial_model_is_refused_by_quantize(f16: Path, out: Path, tmp_path: Path, case: str,
                                              needles: tuple[str, ...]) -> None:
    """Each was exit 0 (and ``verify`` then failed the output); the split's output even had no split.* keys."""
    names = [t.name for t in read_gguf(f16).tensors]
    n_layer = read_gguf(f16).kv["qwen2.block_count"]
    assert n_layer == 2 and len(names) > 20
    src = tmp_path / f"{case}.gguf"
    u32, u16, s = _T.UINT32, _T.UINT16, _T.STRING
    if case == "split-part-1-of-2":
        rewrite(f16, src, drop=lambda n: _first_half(n, names),
                kv={"split.no": (0, u16), "split.count": (2, u16), "split.tensors.count": (len(names), _T.INT32)})
    elif case == "missing-tensor":
        rewrite(f16, src, drop=lambda n: n == "blk.1.ffn_down.weight")
    elif case == "misshapen-tensor":
        rewrite(f16, src, reshape={"blk.0.attn_k.weight": (16, 64)})
    elif case == "extra-tensor":
        rewrite(f16, src, extra={"foo.weight": np.ones(32, dtype=np.float32)})
    elif case == "block-count-4-for-2":
        rewrite(f16, src, kv={"qwen2.block_count": (4, u32)})
    elif case == "block-count-1e6":
        rewrite(f16, src, kv={"qwen2.block_count": (1_000_000, u32)})
    else:
        rewrite(f16, src, kv={"split.count": ("two", s)})
    t0 = time.monotonic()
    refused(quantize_cli(src, out), out, str(src), *needles)
    assert time.monotonic() - t0 < REFUSE_SECONDS


# ===================================================================== 2. whole inputs materialised before a bound


def _sparse_gguf(p: Path, n_tensors: int, n_kv: int, size: int) -> Path:
    """A header claiming the counts, then zeros to ``size`` bytes (sparse: costs no disk)."""
    with open(p, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv))
        f.truncate(size)
    return p


@pytest.mark.parametrize("cmd", ["inspect", "quantize"])
@pytest.mark.parametrize("n_tensors, n_kv, needle", [
    (0, 10_000_000, "kv count 10000000 exceeds the maximum of 65536 keys"),          # the issue's
    (5_000_000, 1, "tensor count 5000000 exceeds the maximum of 100000 tensors"),    # the issue's
    (0, MAX_KV_COUNT + 1, f"kv count {MAX_KV_COUNT + 1} exceeds"),
    (MAX_TENSOR_COUNT + 1, 0, f"tensor count {MAX_TENSOR_COUNT + 1} exceeds"),
])
def test_header_key_and_tensor_counts_are_bounded(tmp_path: Path, out: Path, cmd: str, n_tensors: int, n_kv: int,
                                                  needle: str) -> None:
    """10 M scalar keys or 5 M one-element tensor infos passed the object cap: 57-79 s, 2.9 GB, then "out of
    memory". Each key or info is now bounded before the first is parsed."""
    p = _sparse_gguf(tmp_path / "h.gguf", n_tensors, n_kv, 250 << 20)
    t0 = time.monotonic()
    r = run(cmd, str(p), *((str(out / "q.gguf"), "q8_0") if cmd == "quantize" else ()), timeout=REFUSE_SECONDS)
    refused(r, out, "h.gguf", needle, rc=2)
    assert time.monotonic() - t0 < REFUSE_SECONDS


def test_many_real_keys_under_the_bound_are_accepted_quickly(tmp_path: Path) -> None:
    """The bound keeps honest headers: MAX_KV_COUNT real keys parse, in well under a second, in a few MiB."""
    p = tmp_path / "k.gguf"
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, i)
                    for i, k in enumerate(f"k.{i}".encode() for i in range(MAX_KV_COUNT)))
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, MAX_KV_COUNT) + body)
    grew, stdout, dt = peak_rss_mib("from l1quant.gguf.reader import read_gguf; "
                                    "print(len(read_gguf(sys.argv[1]).kv))", str(p))
    assert stdout.split()[0] == str(MAX_KV_COUNT)
    assert grew < 100 and dt < REFUSE_SECONDS


@pytest.mark.parametrize("n_layer", [1_000_000, 2**31 - 1, 3])
def test_verify_does_not_trust_block_count(f16: Path, tmp_path: Path, n_layer: int) -> None:
    """block_count = 1,000,000 on an 11 MB file: 35-50 s and 2.9 GB (2**31 - 1: 9 GB). Now one failed check,
    in seconds, in bounded memory; 3 (one more than the file holds) fails as missing tensors."""
    p = rewrite(f16, tmp_path / "b.gguf", kv={"qwen2.block_count": (n_layer, _T.UINT32)})
    grew, stdout, dt = peak_rss_mib(
        "from l1quant.check import verify\nrep = verify(sys.argv[1])\n"
        "print(rep.passed, [c.message for c in rep.checks if c.failed][:1])", str(p))
    assert stdout.startswith("False"), stdout
    want = "block_count is" if n_layer > 100 else "is missing"
    assert want in stdout, stdout
    assert grew < 200 and dt < REFUSE_SECONDS


def test_blank_lines_of_a_problems_file_are_not_materialised(tmp_path: Path) -> None:
    """127 MiB of blank lines: 1.19 GB before "no problems". Now the text is scanned for non-blank lines."""
    p = tmp_path / "blank.jsonl"
    p.write_bytes(b"\n" * (127 << 20))
    code = ("from l1quant.l1.budget import load_problems\nfrom l1quant.errors import InputError\n"
            "try:\n    load_problems(sys.argv[1])\nexcept InputError as e:\n    print(e)")
    grew, stdout, dt = peak_rss_mib(code, str(p))
    assert "blank.jsonl: no problems in file" in stdout
    assert grew < 400, f"{grew} MiB"  # the file's bytes and its text (127 MiB each), not a list of lines
    assert dt < REFUSE_SECONDS


def test_problems_after_many_blank_lines_keep_their_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text("\n" * 1000 + '{"id": "a", "question": "q", "answer": 1}\n  \n\t\n{"id": "b"}\n')
    with pytest.raises(InputError, match=r"p\.jsonl:1004: expected a non-empty string \"question\""):
        load_problems(p)


# ===================================================================== 4. library exceptions escaping as exit 70


def test_yarn_rope_in_the_reference_forward_is_a_clean_refusal() -> None:
    """compare's numpy forward on a yarn model raised a bare NotImplementedError (exit 70): it is now an
    L1QuantError (one line in the CLI) that is still a NotImplementedError (verify --logits skips the check)."""
    hp = Hparams(n_layer=1, n_embd=16, n_head=4, n_head_kv=2, n_ff=32, n_vocab=50, rope_theta=1e4, rms_eps=1e-6,
                 rope_scaling_type="yarn", rope_scaling_factor=4.0)
    w = random_weights(hp, seed=1, tied=True)
    for catch in (L1QuantError, NotImplementedError):
        with pytest.raises(catch, match="rope scaling type 'yarn' is not implemented"):
            decoder_logits(w.__getitem__, hp, [1, 2])


@pytest.mark.parametrize("line, needle", [
    ('{"id": "a", "question": "q", "answer": ' + "9" * 5000 + "}", ":1: not valid JSON: Exceeds the limit"),
    ('{"id": "a", "question": "q", "answer": 1e999999}', None),   # inf: not an integer answer
    ('{"id": "a", "question": "q", "answer": ' + "1" * 4300 + "}", None),  # the longest int Python reads: kept
])
def test_problems_answer_numbers(tmp_path: Path, line: str, needle: str | None) -> None:
    """A 5000-digit answer raised ValueError (not a JSONDecodeError): exit 70."""
    p = tmp_path / "p.jsonl"
    p.write_text(line + "\n")
    if needle is None and "e999999" in line:
        with pytest.raises(InputError, match=r"p\.jsonl:1: expected an integer \"answer\", found inf"):
            load_problems(p)
    elif needle is None:
        assert load_problems(p)[0].answer == int("1" * 4300)
    else:
        with pytest.raises(InputError, match=needle):
            load_problems(p)


def test_problems_answer_of_5000_digits_on_the_command_line(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "question": "q", "answer": ' + "9" * 5000 + "}\n")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    r = run("budget-check", str(model), "--problems", str(p), "--budgets", "64", timeout=REFUSE_SECONDS)
    one_error(r, "p.jsonl:1: not valid JSON")


@pytest.mark.parametrize("template", [
    "{{ '\\ud800' }}",                                           # the issue's
    "{{ messages[0].content }}{{ '\\udfff' }}",
    "{% set s = '\\udc80' %}{{ 'a' ~ s }}",
])
def test_chat_template_rendering_a_lone_surrogate(template: str) -> None:
    """'\\ud800' rendered, then UnicodeEncodeError (exit 70) wherever the text was encoded."""
    with pytest.raises(ChatTemplateError, match="not valid Unicode text"):
        render_chat("hi", template)


def test_chat_template_rendering_a_lone_surrogate_on_the_command_line(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ '\\ud800' }}"}))
    r = run("prompt", "What is 2+2?", "--budget", "256", "--chat", str(folder), timeout=REFUSE_SECONDS)
    one_error(r, "chat template", "not valid Unicode text")


_BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}


@pytest.mark.parametrize("pp, needle", [
    # the tokenizers library ignores fields a ByteLevel post-processor does not have; convert's reader did not
    ({**_BL, "processors": 5}, "post_processor.processors is 5, expected a list"),   # the issue's
    ({**_BL, "processors": {"type": "ByteLevel"}}, "post_processor.processors is {'type': 'ByteLevel'}"),
    ({**_BL, "processors": [{"type": "TemplateProcessing", "single": 5}]}, "post_processor.single is 5"),
    ({**_BL, "processors": [{"type": "TemplateProcessing", "single": [{"SpecialToken": 5}, {}], "pair": "x"}]},
     "post_processor.pair is 'x', expected a list"),
    ({**_BL, "processors": [{"type": "RobertaProcessing", "cls": 7}]}, "post_processor.cls is 7, expected a list"),
])
def test_tokenizer_post_processor_of_the_wrong_kind(tiny_r1: Path, tmp_path: Path, out: Path, pp: dict,
                                                    needle: str) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_r1, model)
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["post_processor"] = pp
    (model / "tokenizer.json").write_text(json.dumps(tok))
    r = run("convert", str(model), "--type", "q8_0", "-o", str(out / "m.gguf"), "-q")
    refused(r, out, str(model / "tokenizer.json"), needle)


# ===================================================================== 5. template values bounded before they exist

_S = "{% set s = 'x' * 1000000 %}"


@pytest.mark.parametrize("template", [
    _S + "{{ s|replace('x', 'y' * 2000)|length }}",                                          # the issue's
    _S + "{{ ([s] * 2000)|join|length }}",                                                   # the issue's
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s|length }}",                                                                      # the issue's
    "{{ ('%*d' % (1000000000, 1))|length }}",                                                 # the issue's
    _S + "{{ s.replace('x', 'yy')|length }}",
    _S + "{{ ''.join([s, s])|length }}",
    _S + "{{ (s ~ s)|length }}",
    "{{ ('{0}' * 300000).format('abcdefgh')|length }}",
    "{{ ('\\n' * 1000000)|indent(1000)|length }}",
    "{{ ('\\t' * 1000000).expandtabs(1000)|length }}",
    "{{ ('%s' * 1000 % ([('a' * 100000)] * 1000))|length }}",
    _S + "{{ ([s] * 2000)|string|length }}",
    _S + "{{ ([s] * 2000)|tojson|length }}",
    "{{ ('%*d'|format(1000000000, 1))|length }}",
])
def test_template_intermediate_values_are_bounded(template: str) -> None:
    """Each built 1-2 GB (or ran out of memory) before the rendered output was checked."""
    import tracemalloc

    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ChatTemplateError, match="exceeds a render bound"):
            render_chat("hi", template)
        peak = tracemalloc.get_traced_memory()[1] >> 20
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 5
    assert peak < 64, f"{peak} MiB"


@pytest.mark.parametrize("template, want", [
    ("{{ 'a-b'|replace('-', '--') }}", "a--b"),
    ("{{ ['a', 'b']|join(', ') }}", "a, b"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(3) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "ab" * 8),
    ("{{ '%*d' % (4, 7) }}", "   7"),
    ("{{ '{0}{0}'.format(messages[0].content) }}", "hihi"),
    ("{{ messages|tojson }}", '[{"role": "user", "content": "hi"}]'),
    ("{{ 'x\\ny'|indent(2) }}", "x\n  y"),
])
def test_honest_uses_of_the_bounded_operations(template: str, want: str) -> None:
    assert render_chat("hi", template) == want


# ===================================================================== 6. a valid file refused


def test_long_numeric_array_before_the_tensor_infos(f16: Path, tmp_path: Path, out: Path) -> None:
    """A numeric array of more than 2 Mi elements before the tensor infos: "tensor #0 name length ... got 0"
    (the array's memory map moved the shared file position). The file is valid: inspect and quantize read it."""
    big = np.arange(3 << 20, dtype=np.uint8)
    p = rewrite(f16, tmp_path / "a.gguf", kv_first={"x.big": (big, (_T.ARRAY, _T.UINT8))})
    gf = read_gguf(p)
    assert len(gf.tensors) == len(read_gguf(f16).tensors)
    assert np.array_equal(np.asarray(gf.kv["x.big"][:1000]), big[:1000])
    assert run("inspect", str(p)).returncode == 0
    r = quantize_cli(p, out)
    assert r.returncode == 0, r.stderr
    assert len(read_gguf(out / "q.gguf").tensors) == len(gf.tensors)


@pytest.mark.parametrize("etype, dtype", [(_T.FLOAT32, np.float32), (_T.BOOL, np.bool_), (_T.INT64, np.int64)])
def test_long_arrays_between_keys_and_tensors(tmp_path: Path, etype: gguf.GGUFValueType, dtype: Any) -> None:
    p = tmp_path / "b.gguf"
    w = gguf.GGUFWriter(str(p), arch="qwen2")
    w.add_key_value("a.long", np.zeros((1 << 21) + 5, dtype=dtype).tolist(), _T.ARRAY, sub_type=etype)
    w.add_key_value("b.after", "still read", _T.STRING)
    w.add_tensor("t", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gf = read_gguf(p)
    assert gf.kv["b.after"] == "still read" and [t.name for t in gf.tensors] == ["t"]
    assert np.array_equal(np.frombuffer(gf.read_tensor_bytes(gf.tensors[0]), np.float32), np.arange(64))


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_raw_line_separators_inside_a_question(tmp_path: Path, sep: str) -> None:
    """A raw U+2028 inside a question: ":1: not valid JSON" (str.splitlines splits at it; JSON Lines does not)."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "question": f"one{sep}two", "answer": 3}, ensure_ascii=False) + "\r\n"
                 + json.dumps({"id": "b", "question": "x", "answer": 4}) + "\n", encoding="utf-8")
    probs = load_problems(p)
    assert [(q.id, q.question, q.answer) for q in probs] == [("a", f"one{sep}two", 3), ("b", "x", 4)]


# ===================================================================== 7. the wrong file blamed


@pytest.mark.parametrize("depth, lineno", [(100_000, 1), (100_000, 3), (5_000, 2)])
def test_deeply_nested_problem_line_names_the_file(tmp_path: Path, depth: int, lineno: int) -> None:
    """A problems line nested 100,000 deep: "input nested too deeply", no file named."""
    p = tmp_path / "p.jsonl"
    good = json.dumps({"id": "g", "question": "q", "answer": 1})
    lines = [json.dumps({"id": f"g{i}", "question": "q", "answer": 1}) for i in range(lineno - 1)]
    p.write_text("\n".join([*lines, "[" * depth + "]" * depth, good]) + "\n")
    with pytest.raises(InputError, match=rf"p\.jsonl:{lineno}: "):
        load_problems(p)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    if depth == 100_000 and lineno == 1:
        r = run("budget-check", str(model), "--problems", str(p), "--budgets", "64", timeout=REFUSE_SECONDS)
        one_error(r, "p.jsonl:1:")


@pytest.mark.parametrize("override, readme, needle", [
    ({"general.base_models": [1, 2]}, False, "meta.json: 'general.base_models'[0] must be a mapping"),  # issue's
    ({"general.base_models": [1, 2]}, True, "meta.json: 'general.base_models'[0] must be a mapping"),
    ({"general.datasets": "x"}, False, "meta.json: 'general.datasets': expected a list"),
    ({"general.datasets": [{"name": 5}]}, True, "meta.json: 'general.datasets'[0].name must be a string"),
])
def test_metadata_override_is_blamed_not_the_card(tiny_r1: Path, tmp_path: Path, out: Path, override: dict,
                                                  readme: bool, needle: str) -> None:
    """--metadata '{"general.base_models": [1, 2]}' was blamed on a README.md that does not exist."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_r1, model)
    (model / "README.md").unlink(missing_ok=True)
    if readme:
        (model / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(override))
    r = run("convert", str(model), "--type", "q8_0", "-o", str(out / "m.gguf"), "-q", "--metadata", str(meta))
    line = refused(r, out, needle)
    assert "README.md" not in line


# ===================================================================== 8. silent mixtures


def _rewrite_in_place(p: Path) -> None:
    with open(p, "r+b") as f:  # same size, other bytes, same inode
        f.seek(p.stat().st_size - 64)
        f.write(bytes(range(64)))


def _replace(p: Path) -> None:
    tmp = p.with_name(p.name + ".new")
    tmp.write_bytes(p.read_bytes())
    os.replace(tmp, p)


def _grow(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"\0" * 32)


@pytest.mark.parametrize("change, needle", [
    (_rewrite_in_place, "rewritten in place"),     # the issue's
    (_replace, "replaced by another file"),
    (_grow, "size"),
])
@pytest.mark.parametrize("cmd", ["quantize", "convert"])
def test_input_changed_while_being_read(f16: Path, tiny_r1: Path, tmp_path: Path, out: Path, cmd: str,
                                        change: Callable[[Path], None], needle: str) -> None:
    """An input rewritten in place during convert or quantize: exit 0 and an output part old model, part new."""
    import shutil

    target = out / "o.gguf"
    if cmd == "quantize":
        src = tmp_path / "in.gguf"
        shutil.copy(f16, src)
        victim = src
    else:
        src = tmp_path / "m"
        shutil.copytree(tiny_r1, src)
        victim = sorted(src.glob("*.safetensors"))[0]
    done: list[int] = []

    def progress(n: int) -> None:
        if not done:  # the first chunk is written: the input changes under the running job
            change(victim)
        done.append(n)

    with pytest.raises(InputError, match=rf"{victim.name}: changed while it was being read \(.*{needle}"):
        if cmd == "quantize":
            l1quant.quantize(src, target, "q8_0", progress=progress, threads=1)
        else:
            l1quant.convert(src, "q8_0", target, progress=progress, threads=1)
    assert done and os.listdir(out) == []


# ===================================================================== 9. after publication


_CARD_RUN = """
import os, signal, sys
import l1quant.conversion.card as card
from l1quant.cli import main
real = card.write_card
def write_card(*a, **k):
    os.kill(os.getpid(), getattr(signal, sys.argv[3]))  # the GGUF is published; the card step is running
    return real(*a, **k)
card.write_card = write_card
sys.exit(main(["convert", sys.argv[1], "--type", "q8_0", "-o", sys.argv[2], "-q", "--card"], prog_name="l1quant"))
"""


@pytest.mark.parametrize("sig, rc, word", [("SIGTERM", 143, "terminated (SIGTERM)"),     # the issue's
                                           ("SIGINT", 130, "interrupted (SIGINT)"),
                                           ("SIGHUP", 129, "terminated (SIGHUP)")])
def test_signal_during_the_card_step_says_the_file_is_complete(tiny_r1: Path, out: Path, sig: str, rc: int,
                                                               word: str) -> None:
    """SIGTERM after the output was renamed into place was a silent kill; SIGINT said "written completely"."""
    target = out / "m.gguf"
    r = subprocess.run([sys.executable, "-c", _CARD_RUN, str(tiny_r1), str(target), sig], capture_output=True,
                       text=True, timeout=120, check=False, env=clean_env(), preexec_fn=default_signals)
    assert r.returncode == rc, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"l1quant: {word} after {target} was written completely (it is valid; " \
                                           "later steps did not run)", r.stderr
    assert sorted(os.listdir(out)) == ["m.gguf"]
    assert len(read_gguf(target).tensors) > 0


@pytest.mark.parametrize("blocker", ["README.md", "both"])
def test_card_step_failure_does_not_read_as_the_conversion_failing(tiny_r1: Path, out: Path, blocker: str) -> None:
    """A card that cannot be written (a folder in its place) was an internal error (exit 70) or a bare
    "cannot write README.md", as if the conversion had failed; the GGUF was complete."""
    (out / "README.md").mkdir()
    if blocker == "both":
        (out / "m.README.md").mkdir()
    r = run("convert", str(tiny_r1), "--type", "q8_0", "-o", str(out / "m.gguf"), "-q", "--card")
    line = one_error(r, f"{out / 'm.gguf'} was written completely; the --card step failed:")
    assert "internal error" not in line
    assert len(read_gguf(out / "m.gguf").tensors) > 0


# ===================================================================== 10. one line, always


@pytest.mark.parametrize("args, needles", [
    (["quantize", "IN.gguf", "OUT.gguf", "q9_9"], ["quantize: TYPE 'q9_9' is not one of q4_0,", "q8_0"]),  # issue
    (["quantize", "IN.gguf", "OUT.gguf", "q4_km"], ["did you mean 'q4_k_m'?"]),
    (["conver", "m"], ["no command 'conver'; did you mean 'convert'?", "(commands: budget-check, compare, convert,"]),
    (["convert", "m", "--type", "q4_km"], ["convert: Invalid value for", "'q4_km' is not one of",
                                            f"'{out_types()[-1]}'; did you mean 'q4_k_m'?"]),
    (["convert", "m", "--bogus"], ["convert: No such option '--bogus'"]),
    (["convert", "m", "--thread", "2"], ["convert: No such option '--thread'", "'--threads'?"]),
    (["inspect"], ["inspect: Missing argument 'FILE'", "(usage: l1quant inspect [OPTIONS] FILE; see --help)"]),
    (["--bogus"], ["No such option '--bogus'", "(usage: l1quant [OPTIONS] COMMAND [ARGS]...; see --help)"]),
    (["quantize", "IN.gguf"], ["quantize: Missing argument"]),
    (["quantize", "a", "b", "c", "q8_0"], ["expected INPUT.gguf [OUTPUT.gguf] TYPE, found 4 arguments"]),
    (["verify", "x.gguf", "--threads", "zero"], ["verify: Invalid value for '-t' / '--threads'"]),
    (["budget-check"], ["budget-check: Missing argument"]),
    (["prompt", "q", "--budget", "x"], ["prompt: Invalid value for"]),
    (["compare"], ["compare: Missing argument"]),
    (["run"], ["run: Missing argument"]),
])
def test_every_usage_error_is_one_line(args: list[str], needles: list[str]) -> None:
    r = run(*args, timeout=REFUSE_SECONDS)
    one_error(r, *needles, rc=2)


def test_every_command_refuses_an_unknown_option_in_one_line() -> None:
    from l1quant.cli import main

    for name in main.list_commands(None):  # type: ignore[arg-type]
        r = run(name, "--no-such-option", timeout=REFUSE_SECONDS)
        one_error(r, f"{name}: No such option '--no-such-option'", rc=2)

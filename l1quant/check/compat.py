"""The "compatibility" group of ``verify``: how the file will behave in the runtimes users run.

A file can be byte-identical to llama.cpp's converter and still fail its user, because the converter faithfully
copies a fine-tune's inconsistent tokenizer files. Each check here names the key or token id and what a runtime
will do with it: ``warn`` where some runtime (or an older llama.cpp) misbehaves, ``fail`` only where the llama.cpp
l1quant is tested against (llama-cpp-python 0.3.36's) would itself refuse the file or misbehave. Check names are
stable ids (``compat.eog.generation_config`` ...), listed in ``verify --json``.

* **End of generation** (``compat.eog``). llama.cpp stops on its EOG set, which ``llama_vocab::impl::load``
  (src/llama-vocab.cpp) builds from the eos/eot/eom keys, from the FIM pad/repo/file-separator tokens, and from a
  fixed list of token texts (:data:`EOG_TEXTS`). Every eos of config.json, generation_config.json and
  tokenizer_config.json (with ``source``) and the chat template's end-of-turn token must be in that set (else
  ``fail``: the model runs on past its turn); the primary eos (config.json, tokenizer_config.json) or the
  template's end of turn that is there only through the text list (not the file's eos/eot/eom keys) is a ``warn``:
  runtimes that stop on ``tokenizer.ggml.eos_token_id`` alone run on (ollama #3759). generation_config.json lists
  every id a model may end with, so an extra one there only needs to be in the set.
* **BOS** (``compat.bos``). No ``tokenizer.ggml.bos_token_id``: llama.cpp uses the tokenizer model's default (id
  11 for ``gpt2``), and prepends it when add_bos is on; a template that writes BOS somewhere other than the very
  start gives two BOS tokens (llama.cpp's chat code removes only a leading one).
* **Pre-tokenizer** (``compat.pre``). The name, its check-text hash (with ``source``) and the first llama.cpp
  release that knows it (:data:`PRE_TOKENIZER_RELEASES`; older runtimes refuse the file with "unknown
  pre-tokenizer type"); a name that does not fit the vocabulary.
* **Chat template** (``compat.template``). It renders under jinja2 for ``enable_thinking`` true, false and unset,
  with a system message and with tool calls; constructs known to break template engines other than jinja2
  (:data:`TEMPLATE_CONSTRUCTS`) are named with their line; a missing template.
* **Tensors** (``compat.tensors``). Row lengths divisible by their type's block (the reader already refuses a file
  where one is not: ggml's ``gguf_init_from_file`` does too); ``key_length``/``value_length`` against
  ``embedding_length / head_count``; a file requantized from an already quantized one, by its ``general.*`` names
  or by its error profile (Q8_0/F16/BF16/F32 blocks of 32 holding at most 16 distinct values: 4-bit levels).

Example:
    >>> from l1quant.gguf.reader import read_gguf
    >>> [c.name for c in check_compat(read_gguf("tiny-Q8_0.gguf")) if c.status != "pass"]   # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import gguf

from l1quant.check.report import FAIL, PASS, SKIP, WARN, Check
from l1quant.conversion.vocab import load_vocab
from l1quant.errors import InputError, L1QuantError, read_json
from l1quant.gguf.reader import GGUFFile
from l1quant.l1.chat import ChatTemplateError, render_messages

__all__ = ["CHECK_IDS", "EOG_TEXTS", "PRE_TOKENIZER_RELEASES", "REFERENCE_LLAMA_CPP", "TEMPLATE_CONSTRUCTS",
           "PreRelease", "check_compat", "eog_set"]

_TK = gguf.Keys.Tokenizer
_CONTROL, _USER_DEFINED = 3, 4

#: Token texts llama.cpp makes end-of-generation whatever the keys say (the list in ``llama_vocab::impl::load``,
#: src/llama-vocab.cpp, as vendored in llama-cpp-python 0.3.36).
EOG_TEXTS: frozenset[str] = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})
#: FIM tokens llama.cpp detects by text when the key is absent, and then also treats as end-of-generation.
_FIM_EOG_TEXTS: dict[str, tuple[str, ...]] = {
    _TK.FIM_PAD_ID: ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    _TK.FIM_REP_ID: ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    _TK.FIM_SEP_ID: ("<|file_sep|>",),
}
#: Pre-tokenizer names for which llama.cpp turns add_bos on when the file has no add_bos key.
_ADD_BOS_PRE = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})
#: The id llama.cpp assumes for bos and for eos of a ``gpt2`` (BPE) tokenizer without those keys.
_GPT2_DEFAULT_ID = 11


@dataclass(frozen=True)
class PreRelease:
    """When llama.cpp first knew a pre-tokenizer name: the pull request that added it, the day it was merged,
    the first release build that has it (None where not established), and the size of the base BPE vocabulary
    (NORMAL tokens) of the tokenizers it was added for (None: any)."""

    pr: int
    merged: date
    build: int | None
    base_vocab: int | None


#: The llama.cpp release that first knows each pre-tokenizer name l1quant writes (sources: the pull requests in
#: github.com/ggml-org/llama.cpp; b4514 for deepseek-r1-qwen is the release named in llama.cpp issue #11341).
PRE_TOKENIZER_RELEASES: dict[str, PreRelease] = {
    "llama-bpe": PreRelease(6920, date(2024, 4, 29), None, 128000),        # Llama 3, R1-Distill-Llama
    "qwen2": PreRelease(7114, date(2024, 5, 8), None, 151643),             # Qwen1.5 / 2 / 2.5 / 3
    "deepseek-r1-qwen": PreRelease(11310, date(2025, 1, 20), 4514, 151643),  # R1-Distill-Qwen, L1
    "qwen35": PreRelease(19468, date(2026, 2, 10), None, None),            # Qwen3.5
}
#: The llama.cpp l1quant is tested against (llama-cpp-python 0.3.36's vendored copy, commit of 2026-10-01). A
#: pre-tokenizer first known less than :data:`_RECENT_DAYS` before it is one many installed runtimes still refuse.
REFERENCE_LLAMA_CPP = date(2026, 10, 1)
_RECENT_DAYS = 365

#: (id suffix, pattern, what breaks): Jinja constructs that render under jinja2 (Hugging Face) but that other
#: template engines refused. The Qwen3 template's ``messages[::-1]``: llama.cpp's minja failed to parse it and fell
#: back to chatml (llama.cpp #13178, build 5217, April 2025), LM Studio 0.3.15 refused it
#: (lmstudio-bug-tracker #630), minijinja has no negative step; its ``message.content.startswith(...)``: minja had
#: no ``startswith`` (google/minja #64).
TEMPLATE_CONSTRUCTS: tuple[tuple[str, str, str], ...] = (
    ("reverse_slice", r"\[\s*:\s*:\s*-\s*1\s*\]", "reverse slicing [::-1]"),
    ("generation_tag", r"\{%-?\s*(end)?generation\b", "the {% generation %} tag (transformers-only)"),
)
_MAX_LISTED = 5

#: Every check id this group reports (``verify --json``'s ``checks[].name``): stable, so scripts can match them.
#: The bare group names (``compat.eog`` ...) are the passes; the dotted ones below them are findings.
CHECK_IDS: tuple[str, ...] = (
    "compat",
    "compat.eog", "compat.eog.end_of_turn", "compat.eog.config", "compat.eog.generation_config",
    "compat.eog.tokenizer_config",
    "compat.bos", "compat.bos.missing", "compat.bos.double",
    "compat.pre", "compat.pre.missing", "compat.pre.unknown", "compat.pre.recent", "compat.pre.fit",
    "compat.template", "compat.template.missing", "compat.template.render",
    *(f"compat.template.{sid}" for sid, _, _ in TEMPLATE_CONSTRUCTS), "compat.template.loop_method",
    "compat.tensors", "compat.tensors.head_dim", "compat.tensors.requantized",
)


# --------------------------------------------------------------------------------------------------- helpers


def _tokens(gf: GGUFFile) -> tuple[list[str], list[int]]:
    toks = gf.kv.get(_TK.LIST)
    types = gf.kv.get(_TK.TOKEN_TYPE)
    toks = toks if isinstance(toks, list) else []
    types = types if isinstance(types, list) and len(types) == len(toks) else [1] * len(toks)
    return toks, types


def _id(gf: GGUFFile, key: str) -> int | None:
    v = gf.kv.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _tok(tokens: list[str], i: int | None) -> str:
    return f"{i} {tokens[i]!r}" if i is not None and 0 <= i < len(tokens) else f"{i} (outside the vocabulary)"


def eog_set(gf: GGUFFile) -> tuple[set[int], set[int]]:
    """The end-of-generation ids llama.cpp builds for ``gf`` and the subset the file declares through its
    eos/eot/eom keys (the rest come from llama.cpp's token-text list and the FIM tokens).

    Follows ``llama_vocab::impl::load`` (src/llama-vocab.cpp): the FIM pad/repo/file-separator ids (key, else
    found by text), every token whose text is in :data:`EOG_TEXTS`, then eos, eot and eom. A ``gpt2`` vocabulary
    without an eos key gets llama.cpp's default eos, id 11.

    Example:
        >>> from types import SimpleNamespace
        >>> gf = SimpleNamespace(kv={"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "<|im_end|>",
        ...     "<|endoftext|>"], "tokenizer.ggml.token_type": [1, 3, 3], "tokenizer.ggml.eos_token_id": 1})
        >>> eog_set(gf)
        ({1, 2}, {1})
    """
    tokens, _ = _tokens(gf)
    n = len(tokens)
    eog: set[int] = set()
    for key, texts in _FIM_EOG_TEXTS.items():
        i = _id(gf, key)
        if i is None:
            i = next((j for j, t in enumerate(tokens) if t in texts), None)
        if i is not None and 0 <= i < n:
            eog.add(i)
    eog.update(i for i, t in enumerate(tokens) if t in EOG_TEXTS)
    declared: set[int] = set()
    eos = _id(gf, _TK.EOS_ID)
    if eos is None and gf.kv.get(_TK.MODEL) == "gpt2":
        eos = _GPT2_DEFAULT_ID  # llama.cpp's gpt2 default is the same id for bos and eos
    for i in (eos, _id(gf, _TK.EOT_ID), _id(gf, _TK.EOM_ID)):
        if i is not None and 0 <= i < n:
            declared.add(i)
    eog |= declared
    return eog, declared


def _read_json(path: Path) -> dict[str, Any] | None:
    """A source JSON file, bounded and regular files only (l1quant.errors.read_json); None when absent or bad
    (the source checks report a bad file; this group only reads what it can)."""
    if not path.is_file():
        return None
    try:
        d = read_json(path, InputError)
    except L1QuantError:
        return None
    return d if isinstance(d, dict) else None


def _ids(v: Any) -> list[int]:
    """config/generation_config ``eos_token_id``: an int or a list of ints."""
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    if isinstance(v, list):
        return [x for x in v if isinstance(x, int) and not isinstance(x, bool)]
    return []


def _token_text(v: Any) -> str | None:
    """tokenizer_config's ``eos_token``/``bos_token``: a string or an AddedToken dict."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


# --------------------------------------------------------------------------------------------------- templates


_REPLY = "Assistant reply 7f3e."
_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                          "parameters": {"type": "object", "properties": {
                                              "city": {"type": "string"}}, "required": ["city"]}}}


def _conversations(args_as_string: bool) -> dict[str, tuple[list[dict[str, Any]], list[Any] | None]]:
    args: Any = {"city": "Paris"}
    if args_as_string:
        args = json.dumps(args)
    call: dict[str, Any] = {"type": "function", "function": {"name": "get_weather", "arguments": args}}
    system: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    tools: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "name": "get_weather", "content": "{\"temp_c\": 18}"}]
    return {"with a system message": (system, None), "with tool calls": (tools, [_TOOL])}


def _render(tmpl: str, messages: list[dict[str, Any]], bos: str, eos: str, **context: Any) -> str:
    """The template rendered in the sandbox and bounds of :func:`l1quant.l1.chat.render_messages` (a hostile
    template in a GGUF cannot hang or exhaust verify)."""
    return render_messages(tmpl, messages, bos_token=bos, eos_token=eos, **context)


def _render_problems(tmpl: str, bos: str, eos: str) -> list[str]:
    """Each (conversation, enable_thinking) case the template cannot render, one line each. Tool-call arguments
    are tried as an object, then as a JSON string (templates expect one or the other; llama.cpp passes either)."""
    problems = []
    for think in (None, True, False):
        extra = {} if think is None else {"enable_thinking": think}
        for case in _conversations(False):
            err = None
            for as_string in (False, True):
                msgs, tools = _conversations(as_string)[case]
                try:
                    _render(tmpl, msgs, bos, eos, tools=tools, add_generation_prompt=True, **extra)
                    err = None
                    break
                except ChatTemplateError as e:
                    err = str(e).removeprefix("chat template: ").splitlines()[0]
                    if "syntax error" in err or "exceeds a render bound" in err:
                        return [err]  # no other case can do better; a hostile template costs one bounded render
            if err is not None:
                problems.append(f"does not render {case} (enable_thinking "
                                f"{'unset' if think is None else str(think).lower()}): {err}")
    return problems


def _construct_problems(tmpl: str) -> list[tuple[str, str]]:
    """(id suffix, "line N: what") for each construct of :data:`TEMPLATE_CONSTRUCTS`, and ``.startswith`` /
    ``.endswith`` called on a for-loop variable (or an attribute of one)."""
    out = []
    lines = tmpl.splitlines()
    loop_vars = set(re.findall(r"\{%-?\s*for\s+(\w+)(?:\s*,\s*\w+)?\s+in\b", tmpl))
    method = re.compile(r"\b(" + "|".join(map(re.escape, sorted(loop_vars))) + r")((?:\.\w+|\[[^\]]*\])*)\."
                        r"(startswith|endswith)\s*\(") if loop_vars else None
    for n, line in enumerate(lines, 1):
        for sid, pat, what in TEMPLATE_CONSTRUCTS:
            if re.search(pat, line):
                out.append((sid, f"line {n}: {what}"))
        if method is not None:
            for m in method.finditer(line):
                out.append(("loop_method", f"line {n}: .{m.group(3)}() on the loop variable "
                                           f"{m.group(1)}{m.group(2)}"))
    return out


def _end_of_turn(tmpl: str, tokens: list[str], types: list[int], bos: str, eos: str) -> int | None:
    """The special token the template writes right after an assistant reply (None when none or on error)."""
    try:
        out = _render(tmpl, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY}], bos, eos,
                      add_generation_prompt=False)
    except ChatTemplateError:  # the render check reports it
        return None
    pos = out.rfind(_REPLY)
    if pos < 0:
        return None
    rest = out[pos + len(_REPLY):].lstrip()
    best: int | None = None
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (_CONTROL, _USER_DEFINED) and t and rest.startswith(t) and (best is None
                                                                             or len(t) > len(tokens[best])):
            best = i
    return best


# --------------------------------------------------------------------------------------------------- the checks


def check_compat(gf: GGUFFile, source: str | Path | None = None) -> list[Check]:
    """The compatibility checks of ``gf`` (and of the checkpoint folder ``source``, when given): a list of
    :class:`~l1quant.check.report.Check` named ``compat.*``, status ``pass``, ``warn``, ``fail`` or ``skip``.

    Never raises for a bad file: every finding is a check (unreadable source files are skipped).

    Example:
        >>> from l1quant.gguf.reader import read_gguf
        >>> checks = check_compat(read_gguf("tiny-Q8_0.gguf"), source="tiny")   # doctest: +SKIP
        >>> {c.name: c.status for c in checks}["compat.pre"]                  # doctest: +SKIP
        'pass'
    """
    src = Path(source) if source is not None else None
    tokens, types = _tokens(gf)
    tmpl = gf.kv.get(_TK.CHAT_TEMPLATE)
    tmpl = tmpl if isinstance(tmpl, str) and tmpl.strip() else None
    bos_id = _id(gf, _TK.BOS_ID)
    eos_id = _id(gf, _TK.EOS_ID)
    bos_text = tokens[bos_id] if bos_id is not None and 0 <= bos_id < len(tokens) else ""
    eos_text = tokens[eos_id] if eos_id is not None and 0 <= eos_id < len(tokens) else ""
    checks: list[Check] = []
    if not tokens:
        return [Check("compat", SKIP, f"no {_TK.LIST}: the tokenizer checks cannot run")]
    checks += _check_eog(gf, src, tokens, types, tmpl, bos_text, eos_text)
    checks += _check_bos(gf, tokens, tmpl, bos_text, eos_text)
    checks += _check_pre(gf, src, tokens, types)
    checks += _check_template(tmpl, bos_text, eos_text)
    checks += _check_tensors(gf)
    return checks


def _check_eog(gf: GGUFFile, src: Path | None, tokens: list[str], types: list[int], tmpl: str | None,
               bos_text: str, eos_text: str) -> list[Check]:
    eog, declared = eog_set(gf)
    listed = ", ".join(_tok(tokens, i) for i in sorted(eog))
    # (id suffix, where it comes from, token id) of every token that ought to end a turn
    wanted: list[tuple[str, str, int]] = []
    if tmpl is not None:
        eot = _end_of_turn(tmpl, tokens, types, bos_text, eos_text)
        if eot is not None:
            wanted.append(("end_of_turn", "the chat template's end-of-turn token", eot))
    if src is not None:
        cfg = _read_json(src / "config.json") or {}
        wanted += [("config", "config.json eos_token_id", i) for i in _ids(cfg.get("eos_token_id"))]
        gen = _read_json(src / "generation_config.json") or {}
        wanted += [("generation_config", "generation_config.json eos_token_id", i)
                   for i in _ids(gen.get("eos_token_id"))]
        tc = _read_json(src / "tokenizer_config.json") or {}
        text = _token_text(tc.get("eos_token"))
        if text is not None:
            ids = [i for i, t in enumerate(tokens) if t == text]
            if ids:
                wanted.append(("tokenizer_config", "tokenizer_config.json eos_token", ids[-1]))
    eos = _id(gf, _TK.EOS_ID)
    found: dict[str, Check] = {}  # one line per source of end tokens, its worst finding
    for sid, where, i in wanted:
        name = f"compat.eog.{sid}"
        if i not in eog:
            found[name] = Check(name, FAIL, f"{where} {_tok(tokens, i)} is not an end-of-generation token in the "
                                            f"file: llama.cpp generates past it (EOG: {listed})")
        elif i not in declared and name not in found and sid != "generation_config":
            # generation_config lists every id the model may end with (Qwen: [im_end, endoftext]); an extra one
            # that llama.cpp stops on anyway is fine. The primary eos and the template's end of turn are not.
            found[name] = Check(name, WARN, f"{where} {_tok(tokens, i)} is not {_TK.EOS_ID} "
                                            f"({_tok(tokens, eos)}): llama.cpp stops on it only through its "
                                            "token-text list; runtimes that stop on the eos key alone run on "
                                            "past the turn")
    covered = sorted({w for sid, w, _ in wanted if f"compat.eog.{sid}" not in found})
    checks = list(found.values())
    checks.append(Check("compat.eog", PASS, f"EOG set: {listed}" + (f"; covers {', '.join(covered)}" if covered
                                                                    else "")))
    return checks


def _add_bos(gf: GGUFFile) -> bool:
    v = gf.kv.get(_TK.ADD_BOS)
    if isinstance(v, bool):
        return v
    return gf.kv.get(_TK.PRE) in _ADD_BOS_PRE


def _check_bos(gf: GGUFFile, tokens: list[str], tmpl: str | None, bos_text: str, eos_text: str) -> list[Check]:
    add_bos = _add_bos(gf)
    bos = _id(gf, _TK.BOS_ID)
    checks: list[Check] = []
    if bos is None:
        model = gf.kv.get(_TK.MODEL)
        default = (f"its default for tokenizer.ggml.model 'gpt2', {_tok(tokens, _GPT2_DEFAULT_ID)}"
                   if model == "gpt2" else f"the default of tokenizer.ggml.model {model!r}")
        if add_bos:
            checks.append(Check("compat.bos.missing", FAIL, f"{_TK.BOS_ID} is missing and add_bos is on: llama.cpp "
                                                            f"prepends {default} to every prompt"))
        else:
            checks.append(Check("compat.bos.missing", WARN, f"{_TK.BOS_ID} is missing: llama.cpp uses {default} "
                                                            "wherever a BOS is asked for (add_bos is off)"))
    elif add_bos and tmpl is not None and bos_text:
        try:
            out = _render(tmpl, [{"role": "user", "content": "Hi"}], bos_text, eos_text, add_generation_prompt=True)
        except ChatTemplateError:  # the template check reports render errors
            out = ""
        at = out.find(bos_text)
        if at > 0:
            checks.append(Check("compat.bos.double", WARN,
                                f"add_bos is on and the chat template writes BOS {_tok(tokens, bos)} at character "
                                f"{at}, not at the start: llama.cpp removes only a leading one, so prompts start "
                                "with two BOS tokens"))
    if not checks:
        checks.append(Check("compat.bos", PASS, f"BOS {_tok(tokens, bos)}, add_bos {str(add_bos).lower()}"))
    return checks


_PAD_FILLER = re.compile(r"\[PAD\d+\]")


def _check_pre(gf: GGUFFile, src: Path | None, tokens: list[str], types: list[int]) -> list[Check]:
    pre = gf.kv.get(_TK.PRE)
    if gf.kv.get(_TK.MODEL) != "gpt2":
        return [Check("compat.pre", SKIP, f"tokenizer.ggml.model is {gf.kv.get(_TK.MODEL)!r}, not a BPE vocabulary")]
    if not isinstance(pre, str):
        return [Check("compat.pre.missing", WARN, f"{_TK.PRE} is missing: llama.cpp splits text with its 'default' "
                                                  "(GPT-2) pre-tokenizer, which tokenizes differently from the source")]
    checks: list[Check] = []
    rel = PRE_TOKENIZER_RELEASES.get(pre)
    expected = chash = None
    if src is not None:
        try:
            v = load_vocab(src, vocab_size=len(types))
            expected, chash = v.pre, v.check_hash
        except L1QuantError as e:
            msg = str(e).splitlines()[0]
            m = re.search(r"[0-9a-f]{64}", msg)
            chash = m.group(0) if m else None
    if rel is None:
        checks.append(Check("compat.pre.unknown", WARN, f"{_TK.PRE} {pre!r}: l1quant has no record of the llama.cpp "
                                                        "release that first knows it; runtimes that do not know it "
                                                        "refuse the file (unknown pre-tokenizer type)"))
        when = ""
    else:
        build = f"b{rel.build}, " if rel.build else ""
        when = f"llama.cpp knows it since {build}PR #{rel.pr} of {rel.merged.isoformat()}"
        if (REFERENCE_LLAMA_CPP - rel.merged).days < _RECENT_DAYS:
            checks.append(Check("compat.pre.recent", WARN,
                                f"{_TK.PRE} {pre!r}: {when}; runtimes built before then refuse the file "
                                "(unknown pre-tokenizer type)"))
    if expected is not None and expected != pre:
        checks.append(Check("compat.pre.fit", WARN, f"{_TK.PRE} {pre!r} does not fit the source's tokenizer (check "
                                                    f"hash {chash[:8] if chash else '?'}… is {expected!r}): llama.cpp "
                                                    "splits text differently from it"))
    elif expected is None and rel is not None and rel.base_vocab is not None:
        # the [PAD{i}] fillers some tokenizer.json files list up to the config's vocab_size are not the base vocab
        n_normal = sum(1 for t, ty in zip(tokens, types) if ty == 1 and not _PAD_FILLER.fullmatch(t))
        if n_normal != rel.base_vocab:
            checks.append(Check("compat.pre.fit", WARN,
                                f"{_TK.PRE} {pre!r} is for a {rel.base_vocab}-token base vocabulary, the file has "
                                f"{n_normal} normal tokens: llama.cpp may split text differently from the source"))
    if not checks:
        h = f", check hash {chash[:8]}…" if chash else ""
        checks.append(Check("compat.pre", PASS, f"{pre!r}{h}: {when}; runtimes built before then refuse the file"))
    return checks


def _check_template(tmpl: str | None, bos_text: str, eos_text: str) -> list[Check]:
    if tmpl is None:
        return [Check("compat.template.missing", WARN,
                      f"no {_TK.CHAT_TEMPLATE}: llama.cpp's chat falls back to a generic template (chatml), which "
                      "is not the prompt format the model was trained on")]
    checks: list[Check] = []
    problems = _render_problems(tmpl, bos_text, eos_text)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        checks.append(Check("compat.template.render", WARN,
                            f"{_TK.CHAT_TEMPLATE} " + "; ".join(problems[:2]) + more, problems))
    found = _construct_problems(tmpl)
    for sid in dict.fromkeys(s for s, _ in found):
        lines = [w for s, w in found if s == sid]
        more = f" (+{len(lines) - _MAX_LISTED} more)" if len(lines) > _MAX_LISTED else ""
        checks.append(Check(f"compat.template.{sid}", WARN,
                            f"{_TK.CHAT_TEMPLATE} {'; '.join(lines[:_MAX_LISTED])}{more}: renders under jinja2, "
                            "but older llama.cpp builds (minja, 2025) fall back to chatml and LM Studio 0.3.15 "
                            "refuses the template", lines))
    if not checks:
        checks.append(Check("compat.template", PASS, "renders under jinja2 with enable_thinking true/false/unset, "
                                                     "with a system message and with tool calls"))
    return checks


#: general.* strings that tell where the weights came from; a GGUF quant type in one says the source was a GGUF.
_HISTORY_KEYS = re.compile(r"general\.(name|basename|finetune|source\.url|source\.huggingface\.repository|"
                           r"base_model\.\d+\.(name|repo_url|organization))")
_QUANT_NAME = re.compile(r"(?i)(?<![a-z0-9])(gguf|i?q[1-8]_(?:[01]|k(?:_[sml])?|nl|xxs|xs|s|m))(?![a-z0-9])")


def _check_tensors(gf: GGUFFile) -> list[Check]:
    checks: list[Check] = []
    arch = gf.kv.get(gguf.Keys.General.ARCHITECTURE)
    if isinstance(arch, str):
        g: Callable[[str], Any] = lambda k: gf.kv.get(k.format(arch=arch))  # noqa: E731
        n_embd, n_head = g(gguf.Keys.LLM.EMBEDDING_LENGTH), g(gguf.Keys.Attention.HEAD_COUNT)
        k_len, v_len = g(gguf.Keys.Attention.KEY_LENGTH), g(gguf.Keys.Attention.VALUE_LENGTH)
        if isinstance(n_embd, int) and isinstance(n_head, int) and n_head > 0:
            implied = n_embd // n_head
            odd = [(key.format(arch=arch), v) for key, v in ((gguf.Keys.Attention.KEY_LENGTH, k_len),
                                                             (gguf.Keys.Attention.VALUE_LENGTH, v_len))
                   if isinstance(v, int) and (v != implied or n_embd % n_head)]
            if odd:
                checks.append(Check("compat.tensors.head_dim", WARN,
                                    ", ".join(f"{k}={v}" for k, v in odd) + f" differs from embedding_length/"
                                    f"head_count = {n_embd}/{n_head}: llama.cpp reads the keys, but runtimes and "
                                    "ports that derive the head size from embedding_length/head_count build the "
                                    "wrong attention shapes"))
    hits = [(k, v) for k, v in gf.kv.items()
            if _HISTORY_KEYS.fullmatch(k) and isinstance(v, str) and _QUANT_NAME.search(v)]
    if hits:
        k, v = hits[0]
        checks.append(Check("compat.tensors.requantized", WARN,
                            f"{k} {v!r} names a GGUF quantization: the weights were likely requantized from an "
                            "already quantized file, which adds the two errors (compare with the original "
                            "checkpoint)", [f"{k} {v!r}" for k, v in hits]))
    if not hits:
        profile = _level_profile(gf)
        if profile is not None and profile[0] <= _REQUANT_LEVELS:
            med, n_blocks, types = profile
            checks.append(Check("compat.tensors.requantized", WARN,
                                f"the {'/'.join(types)} weight blocks hold a median of {med:g} distinct values per "
                                f"32 ({n_blocks} blocks sampled; weights from a checkpoint hold ~30): they were "
                                "likely requantized from a 4-bit or smaller GGUF quant, which adds the two errors"))
    if not checks:
        checks.append(Check("compat.tensors", PASS, "row lengths fit their types' blocks (checked on reading), head "
                                                    "sizes match embedding_length/head_count, no sign of "
                                                    "requantization (general.* names, value levels per block)"))
    return checks


#: A 32-value block of a 4-bit quant (Q4_0/Q4_1 blocks, Q4_K/Q5_K... sub-blocks of 32) holds at most 16 distinct
#: values, and requantizing to Q8_0 or dequantizing to F16 keeps that; trained weights hold ~25-32.
_REQUANT_LEVELS = 16
_PROFILE_BYTES = 1 << 16  # read from the start of each sampled tensor
_PROFILE_TENSORS = 8


def _level_profile(gf: GGUFFile) -> tuple[float, int, list[str]] | None:
    """(median distinct values per 32-value block, blocks sampled, types) over the first bytes of up to
    :data:`_PROFILE_TENSORS` per-layer weight matrices stored as Q8_0, F16, BF16 or F32; None when there are none.
    Blocks that are all one value (zero padding) are left out."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType as Q

    per_block = {Q.Q8_0: 34, Q.F16: 64, Q.BF16: 64, Q.F32: 128}
    counts: list[np.ndarray] = []
    types: list[str] = []
    picked = [t for t in gf.tensors if t.name.startswith("blk.") and len(t.shape) == 2 and t.ggml_type in per_block
              and t.shape[0] % 32 == 0][:_PROFILE_TENSORS]
    for t in picked:
        size = per_block[t.ggml_type]
        n = min(t.nbytes, _PROFILE_BYTES) // size * size
        if n == 0:
            continue
        raw = np.frombuffer(gf.read_tensor_bytes(t, 0, n), np.uint8).reshape(-1, size)
        if t.ggml_type == Q.Q8_0:
            vals = raw[:, 2:].view(np.int8)
        elif t.ggml_type == Q.F32:
            vals = raw.view("<u4")
        else:
            vals = raw.view("<u2")
        srt = np.sort(vals, axis=1)
        distinct = 1 + np.count_nonzero(srt[:, 1:] != srt[:, :-1], axis=1)
        counts.append(distinct[distinct > 1])
        if t.ggml_type.name not in types:
            types.append(t.ggml_type.name)
    if not counts or not sum(len(c) for c in counts):
        return None
    allc = np.concatenate(counts)
    return float(np.median(allc)), int(allc.size), types

"""L1 length control: the prompt wording L1 was trained on, chat rendering, budgeted runs and budget reports.

L1 models (``l3lab/L1-Qwen-1.5B-Exact`` / ``-Max``) are DeepSeek-R1-Distill-Qwen models trained with LCPO to think
for a number of tokens written into the prompt. This module:

* builds that prompt exactly (:func:`l1_prompt`),
* renders it through a model's chat template in a sandboxed Jinja environment (:func:`render_chat`,
  :func:`chat_template_from`),
* runs a GGUF with llama-cpp-python and measures what the model did with the budget (:func:`run`),
* checks length control across models, budgets and problems (:func:`budget_check`, :class:`BudgetReport`).

Counting rules (the same everywhere in l1quant):

* ``reasoning_tokens`` = generated tokens up to **and including** the ``</think>`` token. The ``<think>\\n`` that
  R1-style templates put in the generation prompt is prompt, not generation, so it is not counted. A run that never
  closes its thinking counts every generated token as reasoning (``think_closed`` is then false).
* Exact mode keeps the budget when ``|n - N| / N <= tolerance`` (default :data:`EXACT_TOLERANCE` = 0.2).
  Max mode keeps it when ``n <= N``.

Example:
    >>> l1_prompt("What is 2+3?", 512)
    "What is 2+3? Let's think step by step and output the final answer within \\\\boxed{}. Think for 512 tokens."
"""

from __future__ import annotations

import codecs
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InputError, L1QuantError, OutputError, RuntimeMissingError, TokenizerError, read_json, read_text

__all__ = [
    "EXACT_TOLERANCE",
    "REPORT_SCHEMA",
    "BudgetReport",
    "BudgetRow",
    "ChatTemplateError",
    "ParsedResponse",
    "Problem",
    "RunResult",
    "budget_check",
    "budget_kept",
    "chat_template_from",
    "default_max_tokens",
    "extract_boxed",
    "l1_prompt",
    "load_problems",
    "parse_integer_answer",
    "parse_response",
    "render_chat",
    "run",
]

#: Exact mode: a run keeps its budget when ``|n - N| / N`` is at most this. LCPO-Exact is trained with a penalty
#: proportional to ``|n - N|``, so a well-controlled model lands near N on average, but one sampled run scatters
#: around its mean (more so at small budgets, where a sentence is a sizeable share of N). 0.2 lets that ordinary
#: scatter pass while anything that ignores the budget (typically off by a factor, not by percent) fails. The
#: per-(model, budget) mean deviation in :class:`BudgetReport` is the continuous measure; this is only the flag.
EXACT_TOLERANCE = 0.2

#: Sampling used when the GGUF carries no ``general.sampling.*``: DeepSeek-R1 / L1's recommended settings.
#: top_k 0 disables top-k (as vLLM's -1 and HF generation configs that set none), min_p 0 disables min-p.
DEFAULT_SAMPLING: dict[str, float | int] = {"temperature": 0.6, "top_p": 0.95, "top_k": 0, "min_p": 0.0}

#: Version tag of :meth:`BudgetReport.to_json`; bumped only when a field changes meaning or disappears.
REPORT_SCHEMA = "l1quant.budget-check/1"

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# A rendered prompt larger than this is refused: a hostile template could otherwise fill memory.
_MAX_RENDER_CHARS = 1 << 20


class ChatTemplateError(TokenizerError):
    """A chat template is missing, does not parse, raised, or tried something the sandbox forbids."""


# --------------------------------------------------------------------------------------------------------------
# Prompt wording


def l1_prompt(question: str, budget: int, *, max_mode: bool = False) -> str:
    """The user message L1 was trained on: the question, the boxed-answer instruction, the budget.

    Exact models are trained on ``Think for N tokens.``; Max models on ``Think for maximum N tokens.``.

    Example:
        >>> l1_prompt("How many legs do 3 spiders have?", 256, max_mode=True)[-29:]
        'Think for maximum 256 tokens.'
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InputError(f"budget: expected a positive integer number of tokens, found {budget!r}")
    question = question.strip()
    if not question:
        raise InputError("question: expected a non-empty question, found an empty string")
    limit = f"maximum {budget}" if max_mode else f"{budget}"
    return f"{question} Let's think step by step and output the final answer within \\boxed{{}}. Think for {limit} tokens."


# --------------------------------------------------------------------------------------------------------------
# Chat templates (sandboxed Jinja, with the helpers Hugging Face templates expect)


def _make_env() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _StrictSandbox(ImmutableSandboxedEnvironment):
        # Jinja's sandbox returns an Undefined for unsafe attributes, which prints as "" and only raises when used
        # further. A template that reaches for internals is hostile: refuse it outright.
        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    class _Generation(jinja2.ext.Extension):
        # HF templates may mark assistant spans with {% generation %}...{% endgeneration %}; render the body as is.
        tags = {"generation"}  # noqa: RUF012 (jinja's own class attribute, overridden as jinja expects)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller: Callable[[], str]) -> str:
            return caller()

    class _Namespace(jinja2.utils.Namespace):
        # As in transformers: namespaces refuse underscore names, so templates cannot plant dunder attributes.
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                _Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            _Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"namespace attribute {name!r} starts with an underscore")

    class _Dict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # HF semantics: plain json.dumps, no HTML escaping (Jinja's own tojson escapes <, >, &, ').
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


_ENV: Any = None


def render_chat(prompt: str, chat_template: str, *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """Render one user message through a (Hugging Face style) chat template, in a sandbox.

    The template sees ``messages`` (one user message), ``bos_token``, ``eos_token`` and ``add_generation_prompt``,
    plus HF's helpers (``raise_exception``, ``strftime_now``, ``tojson``, ``namespace``, ``dict``), with HF's
    ``trim_blocks``/``lstrip_blocks``. Anything the template does wrong -- syntax, ``raise_exception``, touching
    internals -- becomes a :class:`ChatTemplateError`.

    Example:
        >>> render_chat("Hi", "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
        ...             "{% if add_generation_prompt %}<|assistant|>{% endif %}", bos_token="<s>")
        '<s><|user|>Hi<|assistant|>'
    """
    global _ENV
    import jinja2

    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ChatTemplateError("chat template: expected a non-empty Jinja template, found none")
    if _ENV is None:
        _ENV = _make_env()
    try:
        template = _ENV.from_string(chat_template)
        pieces: list[str] = []
        size = 0
        # Stream the output so a template that loops itself into gigabytes is stopped early.
        for piece in template.generate(messages=[{"role": "user", "content": prompt}], bos_token=bos_token,
                                       eos_token=eos_token, add_generation_prompt=add_generation_prompt):
            size += len(piece)
            if size > _MAX_RENDER_CHARS:
                raise ChatTemplateError(f"chat template: rendered more than {_MAX_RENDER_CHARS} characters")
            pieces.append(piece)
    except jinja2.exceptions.SecurityError as e:
        raise ChatTemplateError(f"chat template: refused by the sandbox: {e}") from None
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template: {type(e).__name__}: {e}") from None
    except L1QuantError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
            RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"chat template: failed while rendering: {type(e).__name__}: {e}") from None
    return "".join(pieces)


def _token_content(value: Any) -> str:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict; null means "none".
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"tokenizer_config.json: expected a token string or AddedToken dict, found {value!r}")


def _gguf_kv(path: Path) -> Mapping[str, Any]:
    """Key/value metadata of a GGUF file, through l1quant's hardened reader (bounded reads, clear errors)."""
    from .gguf_reader import read_gguf

    return read_gguf(path).kv


def _gguf_chat_info(path: Path, kv: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
    kv = _gguf_kv(path) if kv is None else kv
    template = kv.get("tokenizer.chat_template")
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"{path}: no tokenizer.chat_template key in the GGUF metadata")
    tokens = kv.get("tokenizer.ggml.tokens")

    def token(key: str) -> str:
        tid = kv.get(key)
        if tid is None:
            return ""
        if not isinstance(tokens, list) or isinstance(tid, bool) or not isinstance(tid, int) \
                or not 0 <= tid < len(tokens):
            n = len(tokens) if isinstance(tokens, list) else 0
            raise TokenizerError(f"{path}: {key}={tid!r} is not an index into tokenizer.ggml.tokens (0..{n - 1})")
        text = tokens[tid]
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)

    return template, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")


def _folder_chat_info(folder: Path) -> tuple[str, str, str]:
    cfg_path = folder / "tokenizer_config.json"
    cfg: dict[str, Any] = {}
    if cfg_path.is_file():
        cfg = read_json(cfg_path, TokenizerError)
        if not isinstance(cfg, dict):
            raise TokenizerError(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")
    template: Any = cfg.get("chat_template")
    if isinstance(template, list):
        # HF allows named templates: [{"name": "default", "template": "..."}, ...].
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    if not template:
        jinja_path = folder / "chat_template.jinja"
        if jinja_path.is_file():
            template = read_text(jinja_path, TokenizerError)
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"{folder}: no chat template (tokenizer_config.json chat_template or "
                                "chat_template.jinja)")
    specials = {k: cfg.get(k) for k in ("bos_token", "eos_token")}
    map_path = folder / "special_tokens_map.json"
    if any(v is None for v in specials.values()) and map_path.is_file():
        # Older folders keep bos/eos only in special_tokens_map.json.
        smap = read_json(map_path, TokenizerError)
        if isinstance(smap, dict):
            specials = {k: v if v is not None else smap.get(k) for k, v in specials.items()}
    return template, _token_content(specials["bos_token"]), _token_content(specials["eos_token"])


def chat_template_from(model: str | Path) -> tuple[str, str, str]:
    """``(chat_template, bos_token, eos_token)`` of a GGUF file or a Hugging Face model folder.

    A GGUF gives ``tokenizer.chat_template`` and the texts of its bos/eos token ids; a folder gives
    tokenizer_config.json's ``chat_template`` (else chat_template.jinja) and its ``bos_token``/``eos_token``.

    Example:
        >>> template, bos, eos = chat_template_from("L1-Qwen-1.5B-Max-Q8_0.gguf")  # doctest: +SKIP
        >>> bos  # doctest: +SKIP
        '<｜begin▁of▁sentence｜>'
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return _folder_chat_info(path)
    if path.is_file():
        return _gguf_chat_info(path)
    raise InputError(f"{path}: no such GGUF file or model folder")


# --------------------------------------------------------------------------------------------------------------
# Parsing responses


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) in ``text``, or None when there is none.

    Also accepts ``\\fbox{...}`` and the brace-less ``\\boxed 42``. An unbalanced last box is skipped in favour of
    an earlier complete one.

    Example:
        >>> extract_boxed(r"so \\boxed{1} no wait \\boxed{\\frac{1}{2}}")
        '\\\\frac{1}{2}'
    """
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
    for m in reversed(starts):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i > m.end() and i < len(text) and text[i] != "{":
            # "\boxed 42": the argument runs to the next whitespace or '$'.
            arg = re.match(r"[^\s$]+", text[i:])
            if arg:
                return arg.group(0)
            continue
        if i >= len(text) or text[i] != "{":
            continue
        depth = 0
        j = i
        while j < len(text):
            c = text[j]
            if c == "\\":
                j += 2  # a LaTeX command or an escaped brace (\{ \}): never counts as a delimiter
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
            j += 1
    return None


def parse_integer_answer(answer: str | None) -> int | None:
    """The integer an extracted answer denotes (``"42"``, ``"$1,000$"``, ``"\\text{12}"``, ``"7.0"``), else None.

    Example:
        >>> parse_integer_answer(r"\\text{1{,}024 apples}")
        1024
    """
    if answer is None:
        return None
    s = answer.strip().replace("{,}", "")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\,", "").replace("\\!", "").replace("\\ ", "").replace("$", "")
    s = s.replace("{", "").replace("}", "").strip()
    m = re.fullmatch(r"([-+−]?)\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?\s*(?:\^\\circ|°|%|[A-Za-z][A-Za-z ]*)?\.?", s)
    if not m:
        return None
    sign = -1 if m.group(1) in ("-", "−") else 1
    return sign * int(m.group(2).replace(",", ""))


@dataclass(frozen=True)
class ParsedResponse:
    """A model response split at ``</think>``, with its boxed answer."""

    reasoning: str
    answer: str
    boxed: str | None
    think_closed: bool
    reasoning_tokens: int | None = None


def parse_response(text: str, reasoning_tokens: int | None = None) -> ParsedResponse:
    """Split a response into reasoning (before ``</think>``) and answer (after it); pull the last boxed answer.

    A leading ``<think>`` (models whose template does not open it) is dropped from the reasoning. Without
    ``</think>`` the whole text is reasoning. The boxed answer is looked for in the whole text (the answer part
    normally holds the last one).

    Example:
        >>> r = parse_response("5+3 is 8.</think>The answer is \\\\boxed{8}.")
        >>> r.reasoning, r.boxed, r.think_closed
        ('5+3 is 8.', '8', True)
    """
    head, sep, tail = text.partition(THINK_CLOSE)
    stripped = head.lstrip()
    if stripped.startswith(THINK_OPEN):
        head = stripped[len(THINK_OPEN):]
    if sep:
        return ParsedResponse(head, tail, extract_boxed(text), True, reasoning_tokens)
    return ParsedResponse(head, "", extract_boxed(text), False, reasoning_tokens)


def budget_kept(reasoning_tokens: int, budget: int, *, max_mode: bool = False,
                tolerance: float = EXACT_TOLERANCE) -> bool:
    """Whether ``reasoning_tokens`` honours ``budget``: Max ``n <= N``; Exact ``|n - N| / N <= tolerance``.

    Example:
        >>> budget_kept(560, 512), budget_kept(700, 512), budget_kept(300, 512, max_mode=True)
        (True, False, True)
    """
    if max_mode:
        return reasoning_tokens <= budget
    return abs(reasoning_tokens - budget) / budget <= tolerance


def default_max_tokens(budget: int) -> int:
    """Generation cap used when none is given: twice the budget plus 512 for the answer.

    Room enough for an Exact model that overshoots by 100% and then writes its answer, bounded so a model that
    ignores the budget cannot run for ever.

    Example:
        >>> default_max_tokens(1024)
        2560
    """
    return 2 * budget + 512


# --------------------------------------------------------------------------------------------------------------
# Running a GGUF with llama-cpp-python


@dataclass
class RunResult:
    """One budgeted generation and what the model did with the budget.

    ``reasoning_tokens`` counts generated tokens up to and including ``</think>``; ``total_tokens`` every generated
    token (the end-of-generation token excluded). ``rel_deviation`` is ``|n - N| / N``. ``stop_reason`` is
    ``"eos"`` (the model ended) or ``"length"`` (``max_tokens`` reached).
    """

    model: str
    question: str
    budget: int
    mode: str
    prompt: str
    prompt_tokens: int
    text: str
    reasoning: str
    answer_text: str
    boxed: str | None
    answer: int | None
    reasoning_tokens: int
    total_tokens: int
    think_closed: bool
    stop_reason: str
    budget_kept: bool
    rel_deviation: float
    tolerance: float | None
    sampling: dict[str, Any]
    seed: int | None
    max_tokens: int
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (field names as above)."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable report, a few lines."""
        mode = "max" if self.mode == "max" else "exact"
        rule = f"n <= {self.budget}" if mode == "max" else f"|n-N|/N <= {self.tolerance:g}"
        closed = "" if self.think_closed else " (no </think>: thinking never closed)"
        lines = [
            f"reasoning tokens: {self.reasoning_tokens} of budget {self.budget} ({mode}){closed}",
            f"deviation |n-N|/N: {self.rel_deviation:.3f}",
            f"budget kept ({rule}): {'yes' if self.budget_kept else 'no'}",
            f"total tokens: {self.total_tokens} (stop: {self.stop_reason}), prompt tokens: {self.prompt_tokens}",
            "answer: " + (self.boxed if self.boxed is not None else "(no \\boxed{} answer)"),
            f"time: {self.elapsed_s:.1f} s"
            + (f", {self.total_tokens / self.elapsed_s:.1f} tok/s" if self.elapsed_s > 0 else ""),
        ]
        return "\n".join(lines)


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeMissingError("running a GGUF needs llama-cpp-python: pip install 'l1quant[run]'") from None
    return llama_cpp


def _sampling_from_kv(kv: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(DEFAULT_SAMPLING)
    for key, name, typ in (("general.sampling.temp", "temperature", float), ("general.sampling.top_p", "top_p", float),
                           ("general.sampling.top_k", "top_k", int), ("general.sampling.min_p", "min_p", float)):
        value = kv.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            # GGUF stores float32: 7 significant digits give back the decimal that was written (0.6, not 0.6000000238).
            out[name] = int(value) if typ is int else float(f"{value:.7g}")
    return out


class _ThinkCounter:
    """Counts generated tokens and marks the one that closes the reasoning (``</think>``).

    The closing token is recognised by id when the vocabulary has ``</think>`` as one token (R1/L1), and by text
    otherwise (or when a model spells the tag out over several tokens): the token whose text completes
    ``</think>`` is the last reasoning token.

    Example:
        >>> c = _ThinkCounter(None)
        >>> for i, piece in enumerate(["ok", "</", "think", ">", "5"]):
        ...     c.feed(i, piece)
        >>> c.generated, c.reasoning_tokens
        (5, 4)
    """

    def __init__(self, close_id: int | None) -> None:
        self.close_id = close_id
        self.generated = 0
        self.reasoning_tokens: int | None = None
        self._tail = ""

    def feed(self, token: int, piece: str) -> None:
        self.generated += 1
        if self.reasoning_tokens is not None:
            return
        buf = self._tail + piece
        if token == self.close_id or THINK_CLOSE in buf:
            self.reasoning_tokens = self.generated
        # Keep just enough text to catch a tag split across tokens.
        self._tail = buf[-(len(THINK_CLOSE) - 1):]


class _Runner:
    """One loaded GGUF (llama-cpp-python) plus what l1quant needs around it; reused across runs."""

    def __init__(self, model_path: str | Path, *, n_ctx: int, kv: Mapping[str, Any],
                 n_threads: int | None = None) -> None:
        llama_cpp = _import_llama()
        self.path = Path(model_path).expanduser()
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such GGUF file")
        # ``kv``: the header its caller already read (151k token strings are not free to read twice)
        self.template, self.bos_text, self.eos_text = _gguf_chat_info(self.path, kv)
        self.sampling = _sampling_from_kv(kv)
        self.n_ctx = n_ctx
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise InputError(f"{self.path}: llama.cpp could not load the model: {e}") from None
        self._llama_cpp = llama_cpp
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.llm._model.vocab))
        # </think> is one special token in R1/L1 vocabularies; when it is, count by id (exact, no text matching).
        ids = self.llm.tokenize(THINK_CLOSE.encode(), add_bos=False, special=True)
        self.think_close_id: int | None = ids[0] if len(ids) == 1 else None

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def tokenize_prompt(self, prompt: str) -> list[int]:
        # Add bos exactly when the GGUF asks for it (tokenizer.ggml.add_bos_token) and the rendered template has
        # not already put it there (R1 templates render bos_token themselves); never two.
        toks = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos = self.llm.token_bos()
        if self.add_bos and bos >= 0 and (not toks or toks[0] != bos):
            toks = [bos] + toks
        return toks

    def generate(self, question: str, budget: int, *, max_mode: bool, sampling: Mapping[str, Any],
                 seed: int | None, max_tokens: int, tolerance: float,
                 stream_to: Callable[[str], None] | None) -> RunResult:
        user = l1_prompt(question, budget, max_mode=max_mode)
        prompt = render_chat(user, self.template, bos_token=self.bos_text, eos_token=self.eos_text)
        toks = self.tokenize_prompt(prompt)
        room = self.n_ctx - len(toks)
        if room <= 0:
            raise InputError(f"{self.path}: prompt is {len(toks)} tokens, context is only {self.n_ctx}")
        max_tokens = min(max_tokens, room)
        if seed is not None:
            self.llm.set_seed(seed)
        self.llm.reset()

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        counter = _ThinkCounter(self.think_close_id)
        pieces: list[str] = []
        stop_reason = "length"
        start = time.perf_counter()
        for tok in self.llm.generate(toks, temp=sampling["temperature"], top_p=sampling["top_p"],
                                     top_k=sampling["top_k"], min_p=sampling["min_p"], repeat_penalty=1.0,
                                     reset=True):
            if self.is_eog(tok):
                stop_reason = "eos"
                break
            piece = decoder.decode(self.llm.detokenize([tok], special=True))
            counter.feed(tok, piece)
            pieces.append(piece)
            if stream_to is not None and piece:
                stream_to(piece)
            if counter.generated >= max_tokens:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if stream_to is not None:
                stream_to(tail)
        elapsed = time.perf_counter() - start
        text = "".join(pieces)
        parsed = parse_response(text)
        generated = counter.generated
        reasoning_tokens = counter.reasoning_tokens
        n = reasoning_tokens if reasoning_tokens is not None else generated
        return RunResult(
            model=str(self.path), question=question, budget=budget, mode="max" if max_mode else "exact",
            prompt=prompt, prompt_tokens=len(toks), text=text, reasoning=parsed.reasoning,
            answer_text=parsed.answer, boxed=parsed.boxed, answer=parse_integer_answer(parsed.boxed),
            reasoning_tokens=n, total_tokens=generated, think_closed=reasoning_tokens is not None,
            stop_reason=stop_reason, budget_kept=budget_kept(n, budget, max_mode=max_mode, tolerance=tolerance),
            rel_deviation=abs(n - budget) / budget, tolerance=None if max_mode else tolerance,
            sampling=dict(sampling), seed=seed, max_tokens=max_tokens, elapsed_s=elapsed,
        )

    def close(self) -> None:
        self.llm.close()


def _resolve_sampling(base: Mapping[str, Any], temperature: float | None, top_p: float | None,
                      top_k: int | None) -> dict[str, Any]:
    out = dict(base)
    if temperature is not None:
        if not (math.isfinite(temperature) and temperature >= 0):
            raise InputError(f"temperature: expected a finite number >= 0, found {temperature}")
        out["temperature"] = float(temperature)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise InputError(f"top_p: expected 0 < top_p <= 1, found {top_p}")
        out["top_p"] = float(top_p)
    if top_k is not None:
        if top_k < 0:
            raise InputError(f"top_k: expected >= 0 (0 disables), found {top_k}")
        out["top_k"] = int(top_k)
    return out


def _auto_ctx(prompt_bytes: int, max_tokens: int) -> int:
    # Byte-level BPE never makes more tokens than bytes (+1 for bos), so this always fits prompt + generation.
    need = prompt_bytes + 1 + max_tokens
    return max(512, -(-need // 256) * 256)


def run(model_path: str | Path, question: str, budget: int, *, max_mode: bool = False,
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        seed: int | None = None, max_tokens: int | None = None, n_ctx: int | None = None,
        tolerance: float = EXACT_TOLERANCE, stream_to: Callable[[str], None] | None = None) -> RunResult:
    """Ask an L1 GGUF ``question`` with a thinking budget and measure what it did with it.

    The prompt is :func:`l1_prompt` rendered through the GGUF's own chat template. Sampling defaults come from the
    GGUF's ``general.sampling.temp/top_p/top_k/min_p`` when present, else temperature 0.6, top_p 0.95 (R1/L1);
    each is overridable. ``max_tokens`` defaults to :func:`default_max_tokens`; ``n_ctx`` defaults to what the
    prompt plus ``max_tokens`` need. ``stream_to`` receives the text as it is generated.

    Example:
        >>> r = run("L1-Qwen-1.5B-Exact-Q8_0.gguf", "What is 17*3?", 512, seed=0)  # doctest: +SKIP
        >>> r.reasoning_tokens, r.budget_kept, r.boxed  # doctest: +SKIP
        (498, True, '51')
    """
    user = l1_prompt(question, budget, max_mode=max_mode)  # validates before loading anything
    max_tokens = default_max_tokens(budget) if max_tokens is None else max_tokens
    if max_tokens <= 0:
        raise InputError(f"max_tokens: expected a positive number, found {max_tokens}")
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file")
    _import_llama()  # fail on a missing extra before reading the model
    kv = _gguf_kv(path)
    if n_ctx is None:
        template, bos, eos = _gguf_chat_info(path, kv)
        n_ctx = _auto_ctx(len(render_chat(user, template, bos_token=bos, eos_token=eos).encode("utf-8")), max_tokens)
    runner = _Runner(path, n_ctx=n_ctx, kv=kv)
    try:
        sampling = _resolve_sampling(runner.sampling, temperature, top_p, top_k)
        return runner.generate(question, budget, max_mode=max_mode, sampling=sampling, seed=seed,
                               max_tokens=max_tokens, tolerance=tolerance, stream_to=stream_to)
    finally:
        runner.close()


# --------------------------------------------------------------------------------------------------------------
# Budget check: many models x budgets x problems


@dataclass(frozen=True)
class Problem:
    """One evaluation problem: an id, a question and its known integer answer."""

    id: str
    question: str
    answer: int


def load_problems(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Read a problems JSONL file: one ``{"id": str, "question": str, "answer": int}`` per line.

    Blank lines are skipped; ids must be unique. ``limit`` keeps the first K problems.

    Example:
        >>> load_problems("examples/problems.jsonl", limit=2)[0].answer  # doctest: +SKIP
        42
    """
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read problems file: {e}") from None
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{lineno}: expected a JSON object, found {type(obj).__name__}")
        pid, question, answer = obj.get("id"), obj.get("question"), obj.get("answer")
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or str(pid) == "":
            raise InputError(f"{p}:{lineno}: expected a string \"id\", found {pid!r}")
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{p}:{lineno}: expected a non-empty string \"question\", found {question!r}")
        if not isinstance(answer, int) or isinstance(answer, bool):
            raise InputError(f"{p}:{lineno}: expected an integer \"answer\", found {answer!r}")
        if str(pid) in seen:
            raise InputError(f"{p}:{lineno}: duplicate id {str(pid)!r}")
        seen.add(str(pid))
        problems.append(Problem(str(pid), question, answer))
    if not problems:
        raise InputError(f"{p}: no problems in file")
    if limit is not None:
        if limit <= 0:
            raise InputError(f"limit: expected a positive number of problems, found {limit}")
        problems = problems[:limit]
    return problems


@dataclass
class BudgetRow:
    """Aggregate for one (model, budget): see :meth:`BudgetReport.to_json` for the meaning of each field."""

    model: str
    budget: int
    runs: int
    mean_reasoning_tokens: float
    mean_total_tokens: float
    mean_rel_deviation: float
    share_within_budget: float
    share_kept: float
    share_think_closed: float
    accuracy: float


@dataclass
class BudgetReport:
    """Results of :func:`budget_check`: one :class:`BudgetRow` per (model, budget) and every run."""

    mode: str
    tolerance: float | None
    budgets: list[int]
    models: list[str]
    problems_path: str
    problem_ids: list[str]
    seed: int
    sampling_overrides: dict[str, Any]
    rows: list[BudgetRow] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; the schema is documented in :meth:`to_json`."""
        return {
            "schema": REPORT_SCHEMA,
            "mode": self.mode,
            "tolerance": self.tolerance,
            "budgets": list(self.budgets),
            "models": list(self.models),
            "problems": {"path": self.problems_path, "count": len(self.problem_ids), "ids": list(self.problem_ids)},
            "seed": self.seed,
            "sampling_overrides": dict(self.sampling_overrides),
            "results": [asdict(r) for r in self.rows],
            "runs": [dict(r) for r in self.runs],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of the report. Schema ``l1quant.budget-check/1`` (fields are only ever added):

        * ``schema`` (str), ``mode`` (``"exact"`` | ``"max"``), ``tolerance`` (float, Exact; null in Max mode),
          ``budgets`` (list[int]), ``models`` (list[str], paths as given), ``seed`` (int: run for problem i uses
          ``seed + i``), ``sampling_overrides`` (dict: the temperature/top_p/top_k given, null = GGUF default),
          ``problems``: ``{"path", "count", "ids"}``.
        * ``results``: one object per (model, budget), models in order, budgets ascending: ``model``, ``budget``,
          ``runs``, ``mean_reasoning_tokens``, ``mean_total_tokens``, ``mean_rel_deviation`` (mean ``|n-N|/N``),
          ``share_within_budget`` (share with ``n <= N``), ``share_kept`` (share keeping the mode's rule),
          ``share_think_closed`` (share that emitted ``</think>``), ``accuracy`` (share whose boxed answer equals
          the known integer). Shares are in [0, 1].
        * ``runs``: one object per run: ``model``, ``budget``, ``problem_id``, ``reasoning_tokens``,
          ``total_tokens``, ``think_closed``, ``stop_reason``, ``budget_kept``, ``rel_deviation``, ``boxed``,
          ``answer`` (int or null), ``expected``, ``correct``, ``seed``, ``elapsed_s``.

        Example:
            >>> json.loads(report.to_json())["results"][0]["mean_reasoning_tokens"]  # doctest: +SKIP
            497.3
        """
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def table(self) -> str:
        """Plain-text table, one line per (model, budget)."""
        dev_head = "mean |n-N|/N" if self.mode == "exact" else "within budget"
        header = f"{'model':<40} {'budget':>7} {'runs':>5} {'mean n':>9} {dev_head:>14} {'kept':>6} {'accuracy':>9}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            name = Path(r.model).name
            name = name if len(name) <= 40 else "…" + name[-39:]
            dev = f"{r.mean_rel_deviation:.3f}" if self.mode == "exact" else f"{100 * r.share_within_budget:.0f}%"
            lines.append(f"{name:<40} {r.budget:>7} {r.runs:>5} {r.mean_reasoning_tokens:>9.1f} {dev:>14} "
                         f"{100 * r.share_kept:>5.0f}% {100 * r.accuracy:>8.0f}%")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Write a PNG (or any matplotlib format, by suffix) of mean reasoning tokens vs budget, one line per model.

        The dashed diagonal is n = N (the Exact target; the Max ceiling). Needs matplotlib (``l1quant[plot]``).

        Example:
            >>> report.plot("budget.png")  # doctest: +SKIP
            PosixPath('budget.png')
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise RuntimeMissingError("plotting needs matplotlib: pip install 'l1quant[plot]'") from None
        out = Path(path).expanduser()
        # Figure + Agg canvas directly: no pyplot, so no global backend switch in the caller's process.
        fig = Figure(figsize=(6.4, 4.8))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        budgets = sorted(self.budgets)
        ax.plot(budgets, budgets, "--", color="grey", label="n = N")
        for model in self.models:
            rows = sorted((r for r in self.rows if r.model == model), key=lambda r: r.budget)
            ax.plot([r.budget for r in rows], [r.mean_reasoning_tokens for r in rows], "o-", label=Path(model).name)
        ax.set_xlabel("budget N (tokens)")
        ax.set_ylabel("mean reasoning tokens n")
        ax.set_title(f"L1 length control ({self.mode})")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        try:
            fig.savefig(out)
        except (OSError, ValueError) as e:
            raise OutputError(f"{out}: cannot write plot: {e}") from None
        return out


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def budget_check(models: Sequence[str | Path], budgets: Sequence[int], problems_path: str | Path, *,
                 max_mode: bool = False, seed: int = 0, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, max_tokens: int | None = None,
                 limit: int | None = None, tolerance: float = EXACT_TOLERANCE,
                 progress: Callable[[RunResult], None] | None = None) -> BudgetReport:
    """Run every model on every problem at every budget and aggregate length control and accuracy.

    Run ``i`` (problem index) uses seed ``seed + i`` for every model and budget, so models are compared on the
    same random stream. ``max_tokens`` defaults to :func:`default_max_tokens` of each budget. ``progress`` is
    called after each run.

    Example:
        >>> rep = budget_check(["L1-Q8_0.gguf", "L1-BF16.gguf"], [256, 512], "examples/problems.jsonl")  # doctest: +SKIP
        >>> print(rep.table())  # doctest: +SKIP
    """
    if not models:
        raise InputError("models: expected at least one GGUF file")
    budgets = sorted(set(budgets))
    if not budgets:
        raise InputError("budgets: expected at least one budget")
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise InputError(f"budgets: expected positive integers, found {b!r}")
    if max_tokens is not None and max_tokens <= 0:
        raise InputError(f"max_tokens: expected a positive number, found {max_tokens}")
    problems = load_problems(problems_path, limit=limit)
    paths = [Path(m).expanduser() for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such GGUF file")
    _import_llama()
    overrides = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
    report = BudgetReport(mode="max" if max_mode else "exact", tolerance=None if max_mode else tolerance,
                          budgets=list(budgets), models=[str(m) for m in models], problems_path=str(problems_path),
                          problem_ids=[q.id for q in problems], seed=seed, sampling_overrides=overrides)
    for model, path in zip(report.models, paths):
        kv = _gguf_kv(path)
        template, bos, eos = _gguf_chat_info(path, kv)
        # One context for the whole model: the longest prompt plus the largest generation cap.
        longest = max(len(render_chat(l1_prompt(q.question, max(budgets), max_mode=max_mode), template,
                                      bos_token=bos, eos_token=eos).encode("utf-8")) for q in problems)
        cap = max(max_tokens if max_tokens is not None else default_max_tokens(b) for b in budgets)
        runner = _Runner(path, n_ctx=_auto_ctx(longest, cap), kv=kv)
        try:
            sampling = _resolve_sampling(runner.sampling, temperature, top_p, top_k)
            for budget in budgets:
                results: list[tuple[Problem, RunResult]] = []
                for i, q in enumerate(problems):
                    r = runner.generate(q.question, budget, max_mode=max_mode, sampling=sampling, seed=seed + i,
                                        max_tokens=max_tokens if max_tokens is not None else default_max_tokens(budget),
                                        tolerance=tolerance, stream_to=None)
                    r.model = model
                    results.append((q, r))
                    report.runs.append({
                        "model": model, "budget": budget, "problem_id": q.id,
                        "reasoning_tokens": r.reasoning_tokens, "total_tokens": r.total_tokens,
                        "think_closed": r.think_closed, "stop_reason": r.stop_reason, "budget_kept": r.budget_kept,
                        "rel_deviation": r.rel_deviation, "boxed": r.boxed, "answer": r.answer,
                        "expected": q.answer, "correct": r.answer == q.answer, "seed": seed + i,
                        "elapsed_s": r.elapsed_s,
                    })
                    if progress is not None:
                        progress(r)
                rs = [r for _, r in results]
                report.rows.append(BudgetRow(
                    model=model, budget=budget, runs=len(rs),
                    mean_reasoning_tokens=_mean(r.reasoning_tokens for r in rs),
                    mean_total_tokens=_mean(r.total_tokens for r in rs),
                    mean_rel_deviation=_mean(r.rel_deviation for r in rs),
                    share_within_budget=_mean(float(r.reasoning_tokens <= budget) for r in rs),
                    share_kept=_mean(float(r.budget_kept) for r in rs),
                    share_think_closed=_mean(float(r.think_closed) for r in rs),
                    accuracy=_mean(float(r.answer == q.answer) for q, r in results),
                ))
        finally:
            runner.close()
    return report

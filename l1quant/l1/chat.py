"""Chat templates: a model's own template rendered in a sandboxed Jinja environment."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from l1quant.conversion.special_vocab import read_chat_template
from l1quant.errors import InputError, L1QuantError, TokenizerError, clip, read_json
from l1quant.gguf.reader import read_gguf

# A rendered prompt larger than this is refused: a hostile template could otherwise fill memory.
_MAX_RENDER_CHARS = 1 << 20
#: Largest string/list one template operation may build (``'a' * n``, ``x|center(n)``, ``'%*d'``...): the whole
#: rendered prompt is capped at _MAX_RENDER_CHARS, so no intermediate value needs to be larger. Checked *before*
#: the operation, so ``'a' * 10**9`` costs nothing rather than 1 GB.
_MAX_VALUE_ITEMS = 1 << 20
#: Largest field width or precision in a ``%`` or ``{}`` format spec: ``'%1000000000d' % 1`` would build 1 GB.
_MAX_FORMAT_WIDTH = 10_000
#: Largest exponent of ``**`` on integers: ``10 ** 10 ** 9`` would spin computing a billion-digit number.
_MAX_POW_EXPONENT = 4096
#: Wall time of one render. Real chat templates render in well under 10 ms; nested ``range(100000)`` loops
#: (each within jinja's own MAX_RANGE) would run for hours. 2 s is generous for any honest template.
_RENDER_SECONDS = 2.0

_FORMAT_NUMBERS = __import__("re").compile(r"(?:%[-#0 +]*|\{[^{}]*:[^{}\d.]*)(\d*)(?:\.(\d+))?")


class ChatTemplateError(TokenizerError):
    """A chat template is missing, does not parse, raised, or tried something the sandbox forbids."""


# --------------------------------------------------------------------------------------------------------------
# Chat templates (sandboxed Jinja, with the helpers Hugging Face templates expect)


def _make_env() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _BoundedConcat(CodeGenerator):
        # ``a ~ b`` compiles to a plain "".join: route it through the environment so its size is known first
        def visit_Concat(self, node: Any, frame: Any) -> None:
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class _StrictSandbox(ImmutableSandboxedEnvironment):
        # Every size-changing operator goes through call_binop (and is no longer constant-folded at compile time).
        intercepted_binops = frozenset({"*", "**", "%"})
        code_generator_class = _BoundedConcat

        @staticmethod
        def bounded_concat(parts: tuple[Any, ...]) -> str:
            _check_estimate(sum(_size(x) for x in parts), "a ~ concatenation")
            return "".join(map(str, parts))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_VALUE_ITEMS:
                        raise _BoundError(f"{type(seq).__name__} repeated {n} times exceeds {_MAX_VALUE_ITEMS} items")
            elif operator == "**":
                if isinstance(right, (int, float)) and abs(right) > _MAX_POW_EXPONENT and not isinstance(left, float):
                    raise _BoundError(f"exponent {right} exceeds {_MAX_POW_EXPONENT}")
            elif operator == "%" and isinstance(left, str):
                _check_format(left, right if isinstance(right, (tuple, list)) else (right,))
                _check_estimate(len(left) + (left.count("%") + 1) * _size(right), "a % format")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            owner = getattr(__obj, "__self__", None)
            if owner is None:
                owner = getattr(getattr(__obj, "__wrapped__", None), "__self__", None)
            if isinstance(owner, str):
                name = getattr(__obj, "__name__", "")
                if name in ("format", "format_map"):
                    _check_format(owner)
                _check_sizes(args, kwargs)  # 'a'.ljust(10**9), 'x'.zfill(...), ...
                _check_estimate(_str_method_size(owner, name, args, kwargs), f"str.{name}")
            return _check_result(super().call(__context, __obj, *args, **kwargs))

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
    for fname, f in list(env.filters.items()):  # x|center(10**9), x|indent(10**9), '%1000000000d'|format(1)...
        env.filters[fname] = _bounded_filter(f, fname)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


_ENV: Any = None


class _BoundError(Exception):
    """A template operation exceeded one of the render bounds above (becomes a ChatTemplateError)."""


def _check_format(fmt: str, args: Any = ()) -> None:
    for m in _FORMAT_NUMBERS.finditer(fmt):
        for g in m.groups():
            if g and (len(g) > 6 or int(g) > _MAX_FORMAT_WIDTH):
                raise _BoundError(f"format width/precision {g[:20]} exceeds {_MAX_FORMAT_WIDTH}")
    if "*" in fmt:  # '%*d' % (10**9, 1): the width is an argument
        for a in args:
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _MAX_FORMAT_WIDTH:
                raise _BoundError(f"format width/precision {a} exceeds {_MAX_FORMAT_WIDTH}")


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > _MAX_VALUE_ITEMS:
            raise _BoundError(f"size argument {a} exceeds {_MAX_VALUE_ITEMS}")


def _check_result(r: Any) -> Any:
    if isinstance(r, (str, list, tuple)) and len(r) > _MAX_VALUE_ITEMS:
        raise _BoundError(f"a value of {len(r)} items exceeds {_MAX_VALUE_ITEMS}")
    return r


def _check_estimate(n: int, what: str) -> None:
    if n > _MAX_VALUE_ITEMS:
        raise _BoundError(f"{what} would build about {n} characters, more than {_MAX_VALUE_ITEMS}")


def _size(x: Any, limit: int = _MAX_VALUE_ITEMS) -> int:
    """An upper estimate of ``len(str(x))`` (and of the items a join or copy of ``x`` makes), computed without
    building it; it stops counting once past ``limit`` (a repeated or self-containing value costs nothing more)."""
    total, stack = 0, [x]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(v)
            stack.extend(list(v)[: limit - total + 1] if len(v) > limit else v)
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            for k, w in list(v.items())[: max(0, limit - total + 1)]:
                stack += (k, w)
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 2  # digits, sign
        else:
            total += 32  # a float, None, a bool, an Undefined: a short repr
    return total


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _str_method_size(s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper estimate of the length of ``s.name(*args, **kwargs)``, before it runs."""
    if name == "replace":
        old, new = _arg(args, kwargs, 0, "old", ""), _arg(args, kwargs, 1, "new", "")
        if isinstance(old, str) and isinstance(new, str):
            n = s.count(old) if old else len(s) + 1
            count = _arg(args, kwargs, 2, "count", -1)
            if isinstance(count, int) and count >= 0:
                n = min(n, count)
            return len(s) + n * max(0, len(new) - len(old))
    elif name == "join":
        items = _arg(args, kwargs, 0, "iterable", ())
        if isinstance(items, (list, tuple, str)):
            return _size(items) + len(s) * len(items)
    elif name in ("format", "format_map"):
        return len(s) + (s.count("{") + 1) * (_size(args) + _size(kwargs))
    elif name == "expandtabs":
        tab = _arg(args, kwargs, 0, "tabsize", 8)
        return len(s) + s.count("\t") * (tab if isinstance(tab, int) else 8)
    return len(s)


#: Filters whose result is no larger than their input (or a number): nothing to estimate.
_NON_GROWING_FILTERS = frozenset({
    "length", "count", "first", "last", "trim", "lower", "upper", "capitalize", "title", "default", "d", "int",
    "float", "abs", "round", "bool", "selectattr", "rejectattr", "select", "reject", "unique", "sort", "reverse",
    "dictsort", "items", "attr", "random", "max", "min", "safe", "striptags", "truncate", "wordcount", "map",
    "groupby", "filesizeformat"})


def _filter_size(fname: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper estimate of the size of ``args[0]|fname(*args[1:])``'s result, before it runs (jinja's filters
    take the value first; a context/eval-context argument, when there is one, is skipped)."""
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    if args and isinstance(args[0], (EvalContext, Context)):
        args = args[1:]
    if not args:
        return 0
    value, rest = args[0], args[1:]
    if fname == "replace" and isinstance(value, str):
        return _str_method_size(value, "replace", rest, kwargs)
    if fname == "join" and isinstance(value, (list, tuple)):
        d = _arg(rest, kwargs, 0, "d", "")
        return _size(value) + (len(d) if isinstance(d, str) else 0) * len(value)
    if fname == "indent" and isinstance(value, str):
        w = _arg(rest, kwargs, 0, "width", 4)
        w = len(w) if isinstance(w, str) else w if isinstance(w, int) else 0
        return len(value) + (value.count("\n") + 1) * w
    if fname == "format" and isinstance(value, str):
        return len(value) + (value.count("%") + 1) * (_size(rest) + _size(kwargs))
    if fname in _NON_GROWING_FILTERS:
        return 0
    # string, tojson, list, pprint, wordwrap, center...: about the size of what they are given
    return _size(args) + _size(kwargs)


def _bounded_filter(f: Callable[..., Any], fname: str) -> Callable[..., Any]:
    import functools

    @functools.wraps(f)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        # args[0] may be the context/environment (pass_context filters) or the value; sizes are the rest
        values = [a for a in args if isinstance(a, str)]
        if fname == "format" and values:
            _check_format(values[0], args[args.index(values[0]) + 1:])
        _check_sizes(tuple(a for a in args[1:] if isinstance(a, int)), kwargs)
        _check_estimate(_filter_size(fname, args, kwargs), f"the {fname} filter")
        return _check_result(f(*args, **kwargs))

    return bounded


class _Deadline:
    """Stop a render after _RENDER_SECONDS of wall time, even in a loop that produces no output.

    In the main thread a SIGALRM timer raises between two bytecodes (compiled templates are Python code);
    elsewhere a line-trace function checks the clock. Either way the render ends with a _BoundError.
    """

    def __init__(self, seconds: float) -> None:
        import threading
        import time

        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.main = threading.current_thread() is threading.main_thread()
        self._old: Any = None

    def _expired(self) -> None:
        raise _BoundError(f"rendering took longer than {self.seconds:g} s")

    def __enter__(self) -> _Deadline:
        import signal
        import sys
        import time

        if self.main and hasattr(signal, "setitimer"):
            def on_alarm(signum: int, frame: Any) -> None:
                self._expired()
            self._old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            def trace(frame: Any, event: str, arg: Any) -> Any:
                if time.monotonic() > self.end:
                    self._expired()
                return trace
            self._old = sys.gettrace()
            sys.settrace(trace)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal
        import sys

        if self.main and hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old if self._old is not None else signal.SIG_DFL)
        else:
            sys.settrace(self._old)


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
    return render_messages(chat_template, [{"role": "user", "content": prompt}], bos_token=bos_token,
                           eos_token=eos_token, add_generation_prompt=add_generation_prompt)


def render_messages(chat_template: str, messages: list[dict[str, Any]], *, bos_token: str = "", eos_token: str = "",
                    add_generation_prompt: bool = True, **context: Any) -> str:
    """Render a whole conversation (``messages``; ``context`` adds variables such as ``tools`` or
    ``enable_thinking``) through a chat template, in the same sandbox and bounds as :func:`render_chat`.

    Raises :class:`ChatTemplateError` for anything the template does wrong, as :func:`render_chat`.

    Example:
        >>> render_messages("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}{{ tools | length }}",
        ...                 [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tools=[1, 2])
        'system:S;user:U;2'
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
        # Stream the output so a template that loops itself into gigabytes is stopped early; bound the wall time
        # of loops that output nothing, and (in the sandbox) the size of every value built on the way.
        with _Deadline(_RENDER_SECONDS):
            for piece in template.generate(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                           add_generation_prompt=add_generation_prompt, **context):
                size += len(piece)
                if size > _MAX_RENDER_CHARS:
                    raise ChatTemplateError(f"chat template: rendered more than {_MAX_RENDER_CHARS} characters")
                pieces.append(piece)
    except _BoundError as e:
        raise ChatTemplateError(f"chat template: exceeds a render bound: {e}") from None
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
    text = "".join(pieces)
    try:
        text.encode("utf-8")  # a lone surrogate ('\\ud800') renders, but no tokenizer or terminal can take it
    except UnicodeEncodeError as e:
        raise ChatTemplateError(f"chat template: rendered {clip(text[e.start:e.end])} at character {e.start}, "
                                "which is not valid Unicode text (a lone surrogate)") from None
    return text


def _token_content(value: Any) -> str:
    # tokenizer_config.json writes special tokens as a string or as an AddedToken dict; null means "none".
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        content: str = value["content"]
        return content
    raise TokenizerError(f"tokenizer_config.json: expected a token string or AddedToken dict, found {value!r}")


def gguf_kv(path: Path) -> Mapping[str, Any]:
    """Key/value metadata of a GGUF file, through l1quant's hardened reader (bounded reads, clear errors)."""
    return read_gguf(path).kv


def gguf_chat_info(path: Path, kv: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
    """(chat template, bos text, eos text) of a GGUF, read from its tokenizer keys; ``kv`` when already read."""
    kv = gguf_kv(path) if kv is None else kv
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
    if cfg_path.exists():  # exists, not is_file: a FIFO or device in its place is refused, not skipped
        cfg = read_json(cfg_path, TokenizerError)
        if not isinstance(cfg, dict):
            raise TokenizerError(f"{cfg_path}: expected a JSON object, found {type(cfg).__name__}")
    # the converter's own reader: the template convert embeds is the template prompt renders
    template: Any = read_chat_template(folder, cfg)
    if isinstance(template, list):
        # HF allows named templates: [{"name": "default", "template": "..."}, ...].
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    if not isinstance(template, str) or not template.strip():
        raise ChatTemplateError(f"{folder}: no chat template (tokenizer_config.json chat_template, "
                                "chat_template.jinja or chat_template.json)")
    specials = {k: cfg.get(k) for k in ("bos_token", "eos_token")}
    map_path = folder / "special_tokens_map.json"
    if any(v is None for v in specials.values()) and map_path.exists():
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
        return gguf_chat_info(path)
    raise InputError(f"{path}: no such GGUF file or model folder")

"""One exception hierarchy for everything l1quant refuses.

Every error carries a one-line message that names the file, tensor or key at fault and what was expected versus
found; the CLI prints ``str(err)`` and exits non-zero, never a traceback (``--debug`` shows one).

Example:
    >>> try:
    ...     raise ConfigError("config.json: num_attention_heads=7 does not divide hidden_size=1536")
    ... except L1QuantError as e:
    ...     print(e)
    config.json: num_attention_heads=7 does not divide hidden_size=1536
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class L1QuantError(Exception):
    """Base class: a clean, user-facing refusal. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class InputError(L1QuantError):
    """The model folder or one of its files is missing, unreadable or malformed."""


class ConfigError(InputError):
    """config.json (or generation_config.json) lacks a key, has a wrong type, or inconsistent values."""


class SafetensorsError(InputError):
    """A safetensors file or its shard index is malformed, truncated or inconsistent."""


class TensorError(InputError):
    """A tensor is missing, unexpected, has the wrong shape/dtype, or holds NaN/Inf."""


class TokenizerError(InputError):
    """Tokenizer files don't parse, don't fit the config, or hash to an unknown pre-tokenizer."""


class GGUFFormatError(L1QuantError):
    """A GGUF file cannot be read: bad magic, truncated, hostile lengths or offsets."""

    exit_code = 2


class OutputError(L1QuantError):
    """The output cannot be written (unwritable folder, disk full, target is a directory...)."""


class VerifyError(L1QuantError):
    """A verification check failed (used when verify is asked to raise rather than report)."""


class RuntimeMissingError(L1QuantError):
    """An optional extra (llama-cpp-python, matplotlib, huggingface_hub) is needed but not installed."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives during output, so cleanup runs exactly as for Ctrl-C.

    A KeyboardInterrupt subclass on purpose: ``except Exception`` must not swallow it. The CLI exits 143.
    """


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a hostile value cannot flood a one-line message.

    ``repr`` also escapes newlines and control characters, which keeps messages on one line.

    Example:
        >>> clip("x" * 100, 12)
        "'xxxxxxx...'"
        >>> clip([1, 2])
        '[1, 2]'
    """
    if isinstance(value, (list, dict, tuple)) and len(value) > 1000:
        return f"<{type(value).__name__} of {len(value)} items>"  # repr of a huge container would be slow
    try:
        r = repr(value)
    except RecursionError:  # a deeply nested JSON value
        return f"<deeply nested {type(value).__name__}>"
    if len(r) > limit:
        q = r[0] if r[:1] in ("'", '"') else ""
        r = r[: limit - 3 - len(q)] + "..." + q
    return r


def read_text(path: Path, error: type[L1QuantError]) -> str:
    """The UTF-8 text of ``path``, or ``error`` with one line naming the file (unreadable, or not UTF-8).

    Example:
        >>> read_text(Path("chat_template.jinja"), TokenizerError)  # doctest: +SKIP
        '{% for message in messages %}...'
    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text: {str(e)[:200]}") from None


def read_json(path: Path, error: type[L1QuantError]) -> Any:
    """The parsed JSON of ``path``, or ``error`` with one line naming the file. Hostile JSON (5000-digit numbers,
    deep nesting, bad UTF-8) is a clean refusal too, never a traceback.

    Example:
        >>> read_json(Path("tokenizer_config.json"), TokenizerError)["add_bos_token"]  # doctest: +SKIP
        False
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{path}: invalid JSON: {str(e)[:200]}") from None

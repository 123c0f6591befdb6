"""Reading a response: the boxed answer, the thinking split, and the budget verdict."""

from __future__ import annotations

import re
from dataclasses import dataclass

from l1quant.l1.prompt import EXACT_TOLERANCE, MAX_TOKENS_FACTOR, THINK_CLOSE, THINK_OPEN

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


def budget_kept(tokens: int, budget: int, *, max_mode: bool = False, tolerance: float = EXACT_TOLERANCE) -> bool:
    """Whether a response of ``tokens`` tokens honours ``budget``: Max ``n <= N``; Exact ``|n - N| / N <= tolerance``.

    ``tokens`` is n as LCPO counts it: every generated token of the response, reasoning and answer together (the
    end-of-generation token excluded); see :data:`l1quant.l1.prompt.BUDGET_COUNT_RULE`.

    Example:
        >>> budget_kept(560, 512), budget_kept(700, 512), budget_kept(300, 512, max_mode=True)
        (True, False, True)
    """
    if max_mode:
        return tokens <= budget
    return abs(tokens - budget) / budget <= tolerance


def default_max_tokens(budget: int) -> int:
    """Generation cap used when none is given: 2 x N, the L1 authors' evaluation protocol (Exact and Max alike).

    A response cut at the cap counts as it stands (``stop_reason == "length"``): reports show how many were cut.

    Example:
        >>> default_max_tokens(1024)
        2048
    """
    return MAX_TOKENS_FACTOR * budget

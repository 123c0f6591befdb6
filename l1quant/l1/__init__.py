"""L1 length control (``l1quant.l1``): the prompt wording L1 was trained on, chat rendering, budgeted runs and budget reports.

L1 models (``l3lab/L1-Qwen-1.5B-Exact`` / ``-Max``) are DeepSeek-R1-Distill-Qwen models trained with LCPO to think
for a number of tokens written into the prompt. This package (one module per concern: ``prompt``, ``chat``, ``answers``, ``run``, ``budget``):

* builds that prompt exactly (:func:`l1_prompt`),
* renders it through a model's chat template in a sandboxed Jinja environment (:func:`render_chat`,
  :func:`chat_template_from`),
* runs a GGUF with llama-cpp-python and measures what the model did with the budget (:func:`run`),
* checks length control across models, budgets and problems (:func:`budget_check`, :class:`BudgetReport`).

Counting rules (the same everywhere in l1quant):

* n, the length judged against the budget N, is **every generated token of the response**, reasoning and answer
  together (the end-of-generation token excluded): LCPO's reward compares N with the whole response, so that is
  what L1 learned to control (``total_tokens``).
* ``reasoning_tokens`` = generated tokens up to **and including** the ``</think>`` token; ``answer_tokens`` the
  rest. The ``<think>\\n`` that R1-style templates put in the generation prompt is prompt, not generation, so it
  is not counted. A run that never closes its thinking counts every generated token as reasoning
  (``think_closed`` is then false).
* Exact mode keeps the budget when ``|n - N| / N <= tolerance`` (default :data:`EXACT_TOLERANCE` = 0.2).
  Max mode keeps it when ``n <= N``.
* Generation is capped at 2 x N tokens (the authors' protocol, Exact and Max alike); a capped run counts as it
  stands and is reported as such.

Example:
    >>> l1_prompt("What is 2+3?", 512)
    "What is 2+3? Let's think step by step and output the final answer within \\\\boxed{}. Think for 512 tokens."
"""

from __future__ import annotations

from l1quant.l1.answers import (
    ParsedResponse,
    budget_kept,
    default_max_tokens,
    extract_boxed,
    parse_integer_answer,
    parse_response,
)
from l1quant.l1.budget import BudgetReport, BudgetRow, Problem, budget_check, load_problems
from l1quant.l1.chat import ChatTemplateError, chat_template_from, render_chat
from l1quant.l1.prompt import (
    BUDGET_COUNT_RULE,
    DEFAULT_SAMPLING,
    EXACT_TOLERANCE,
    FORCED_THINK_END,
    PAPER_BUDGETS,
    REPORT_SCHEMA,
    THINK_CLOSE,
    THINK_OPEN,
    l1_prompt,
)
from l1quant.l1.runner import RunResult, run

__all__ = [
    "BUDGET_COUNT_RULE",
    "DEFAULT_SAMPLING",
    "EXACT_TOLERANCE",
    "FORCED_THINK_END",
    "PAPER_BUDGETS",
    "REPORT_SCHEMA",
    "THINK_CLOSE",
    "THINK_OPEN",
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

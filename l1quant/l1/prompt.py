"""The prompt wording L1 was trained on (LCPO), and the L1 facts the other modules share."""

from __future__ import annotations

from l1quant.errors import InputError

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
#: 2: lengths count every response token (LCPO's rule), not the reasoning up to ``</think>``; samples per problem.
REPORT_SCHEMA = "l1quant.budget-check/2"

#: The budgets the L1 authors evaluate at (their paper's tables and length-control plots).
PAPER_BUDGETS: tuple[int, ...] = (512, 1024, 2048, 3600)

#: The authors' evaluation generates at most this many times N tokens, for Exact and Max alike: room for an Exact
#: model that overshoots by 100%, and a bound on a model that ignores the budget.
MAX_TOKENS_FACTOR = 2

#: What the budget is compared with, in words, for reports and ``--help``. LCPO's reward compares N with the
#: length of the whole response, so a model is trained (and judged) on reasoning and answer together.
BUDGET_COUNT_RULE = ("n = every generated token, reasoning and answer (the end-of-generation token excluded), "
                     "the length LCPO trains L1 to match")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

#: ``--hard-limit`` appends this when the response reaches N tokens with its thinking still open: the end of
#: thinking, then the heading R1-style models put before their final answer and an opened box, so the model's
#: next tokens are the answer itself (a gradable one even when the reasoning was cut short).
FORCED_THINK_END = THINK_CLOSE + "\n\n**Final Answer**\n\\boxed{"


# --------------------------------------------------------------------------------------------------------------
# Prompt wording


#: The two prompt wordings (``--mode``): L1-Exact's "Think for N tokens." and L1-Max's "Think for maximum N tokens."
MODES = ("exact", "max")


def mode_is_max(mode: str) -> bool:
    """``mode`` (``--mode``: ``"exact"`` or ``"max"``) as the bool :func:`l1_prompt` takes.

    Raises :class:`~l1quant.errors.InputError` for any other value.

    Example:
        >>> mode_is_max("max"), mode_is_max("exact")
        (True, False)
    """
    if mode not in MODES:
        raise InputError(f"mode: expected 'exact' or 'max', found {mode!r}")
    return mode == "max"


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

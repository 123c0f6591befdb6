"""Running a GGUF with llama-cpp-python under a thinking budget."""

from __future__ import annotations

import codecs
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from l1quant.errors import InputError, RuntimeMissingError
from l1quant.l1.answers import budget_kept, default_max_tokens, parse_integer_answer, parse_response
from l1quant.l1.chat import _gguf_chat_info, _gguf_kv, render_chat
from l1quant.l1.prompt import DEFAULT_SAMPLING, EXACT_TOLERANCE, THINK_CLOSE, l1_prompt

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

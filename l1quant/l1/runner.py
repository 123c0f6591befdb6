"""Running a GGUF under a thinking budget, in the llama.cpp runtime (:mod:`l1quant.runtime`)."""

from __future__ import annotations

import codecs
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from l1quant.errors import InputError
from l1quant.l1.answers import budget_kept, default_max_tokens, parse_integer_answer, parse_response
from l1quant.l1.chat import gguf_chat_info, gguf_kv, render_chat
from l1quant.l1.prompt import (
    DEFAULT_SAMPLING,
    EXACT_TOLERANCE,
    FORCED_THINK_END,
    THINK_CLOSE,
    l1_prompt,
    mode_is_max,
)
from l1quant.runtime import RUN_INSTALL_HINT, Model, extra_bufts, require

__all__ = ["RUN_INSTALL_HINT", "RunResult", "run"]

# --------------------------------------------------------------------------------------------------------------
# Running a GGUF with llama-cpp-python


@dataclass
class RunResult:
    """One budgeted generation and what the model did with the budget.

    Token counts (all in tokens of the model's vocabulary, the end-of-generation token never counted):

    * ``total_tokens`` (n): every token of the response, reasoning and answer together, including any that
      ``hard_limit`` inserted. This is the length LCPO's reward compares with N, so ``budget_kept`` and
      ``rel_deviation`` (``|n - N| / N``) are computed on it.
    * ``reasoning_tokens``: up to and including ``</think>`` (every token when the thinking never closed);
      ``answer_tokens`` = ``total_tokens - reasoning_tokens`` (0 when it never closed).

    ``stop_reason`` is ``"eos"`` (the model ended) or ``"length"`` (``max_tokens`` reached: ``hit_cap``).
    ``forced_think_end`` is true when ``hard_limit`` ended the thinking at N tokens (``</think>`` and an answer
    cue were inserted, see :data:`l1quant.l1.prompt.FORCED_THINK_END`).
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
    answer_tokens: int = 0
    hit_cap: bool = False
    hard_limit: bool = False
    forced_think_end: bool = False

    @property
    def thinking_kept(self) -> bool | None:
        """With ``hard_limit``: whether the thinking stayed within the budget -- what ``--hard-limit`` promises
        (it ended the thinking at N tokens, or the model closed it by then: at most N tokens before its
        ``</think>``). None without ``hard_limit``.

        ``budget_kept`` stays LCPO's verdict on the whole response n, in which the answer written after a forced
        ``</think>`` counts: a forced run is then almost always over N in Max mode, though its thinking was cut
        exactly at N.
        """
        if not self.hard_limit:
            return None
        # reasoning_tokens counts the </think> itself (forced or not): the thinking is the tokens before it
        return self.forced_think_end or (self.think_closed and self.reasoning_tokens - 1 <= self.budget)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (field names as above, and ``thinking_kept``)."""
        return {**asdict(self), "thinking_kept": self.thinking_kept}

    def summary(self) -> str:
        """Human-readable report, a few lines.

        Example:
            >>> r = RunResult("m.gguf", "q", 512, "max", "p", 40, "t", "r", "a", "391", 391, 431, 498, True, "eos",
            ...               True, 0.02734375, None, {}, 0, 1024, 2.0, answer_tokens=67)
            >>> print(r.summary())
            response tokens n: 498 = reasoning 431 (through </think>) + answer 67; budget 512 (max)
            budget kept (n <= 512): yes; |n-N|/N = 0.027
            stop: end of generation (cap 1024 tokens); prompt tokens: 40
            answer: 391
            time: 2.0 s, 249.0 tok/s
        """
        mode = "max" if self.mode == "max" else "exact"
        rule = f"n <= {self.budget}" if mode == "max" else f"|n-N|/N <= {self.tolerance:g}"
        if self.think_closed:
            split = f" = reasoning {self.reasoning_tokens} (through </think>) + answer {self.answer_tokens}"
        else:
            split = ", all reasoning (no </think>: the thinking never closed)"
        lines = [f"response tokens n: {self.total_tokens}{split}; budget {self.budget} ({mode})"]
        if self.forced_think_end:
            lines.append(f"thinking forced to end at {self.budget} tokens (--hard-limit): </think> and an answer cue "
                         "inserted")
        if self.hard_limit:
            # the flag bounds the thinking, not the answer after it: its verdict first, then LCPO's whole-response one
            lines.append(f"thinking budget kept (thinking <= {self.budget}, --hard-limit): "
                         f"{'yes' if self.thinking_kept else 'no'}; reasoning {self.reasoning_tokens} tokens through </think>")
            lines.append(f"whole response n = {self.total_tokens} ({rule}: {'yes' if self.budget_kept else 'no'}; "
                         f"the answer after </think> counts in n); |n-N|/N = {self.rel_deviation:.3f}")
        else:
            lines.append(f"budget kept ({rule}): {'yes' if self.budget_kept else 'no'}; "
                         f"|n-N|/N = {self.rel_deviation:.3f}")
        lines += [
            ("stop: end of generation" if self.stop_reason == "eos" else "stop: hit the cap")
            + f" (cap {self.max_tokens} tokens); prompt tokens: {self.prompt_tokens}",
            "answer: " + (self.boxed if self.boxed is not None else "(no \\boxed{} answer)"),
            f"time: {self.elapsed_s:.1f} s"
            + (f", {self.total_tokens / self.elapsed_s:.1f} tok/s" if self.elapsed_s > 0 else ""),
        ]
        return "\n".join(lines)


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


@dataclass
class _Generation:
    """What :func:`_generate_counted` produced: the text and the counts :class:`RunResult` reports."""

    text: str
    total_tokens: int
    reasoning_tokens: int | None  # None: </think> never came
    stop_reason: str  # "eos" | "length"
    forced: bool


def _generate_counted(start: Callable[[list[int]], Iterator[int]], prompt: Sequence[int], *,
                      detokenize: Callable[[int], bytes], is_eog: Callable[[int], bool], think_close_id: int | None,
                      max_tokens: int, force_at: int | None = None, force_ids: Sequence[int] = (),
                      stream_to: Callable[[str], None] | None = None) -> _Generation:
    """Sample a response token by token, counting it as LCPO does, optionally forcing the thinking to end.

    ``start(tokens)`` begins sampling after the token sequence ``tokens`` (prompt, then the response so far) and
    yields token ids; it is called again, with the inserted tokens appended, after a forced end of thinking.
    Every token it yields is a response token until an end-of-generation one (``is_eog``), which ends the
    response uncounted; the response is cut at ``max_tokens`` tokens (then ``stop_reason`` is ``"length"``).
    When ``force_at`` is set and the response reaches that many tokens with no ``</think>``, ``force_ids`` (the
    tokens of :data:`FORCED_THINK_END`) are appended as response tokens, only as many as the cap leaves room for.

    The model-free core of :meth:`Runner.generate`, so tests can pin the counts on scripted token streams.

    Example:
        >>> text = {1: b"so", 2: b" 8", 9: b"</think>", 3: b"It is 8.", 0: b""}
        >>> g = _generate_counted(lambda seq: iter([1, 2, 9, 3, 0]), [100], detokenize=text.__getitem__,
        ...                       is_eog=lambda t: t == 0, think_close_id=9, max_tokens=16)
        >>> g.total_tokens, g.reasoning_tokens, g.stop_reason, g.text
        (4, 3, 'eos', 'so 8</think>It is 8.')
    """
    seq = list(prompt)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    counter = _ThinkCounter(think_close_id)
    pieces: list[str] = []
    stop_reason = "length"
    forced = False

    def emit(tok: int) -> None:
        seq.append(tok)
        piece = decoder.decode(detokenize(tok))
        counter.feed(tok, piece)
        pieces.append(piece)
        if stream_to is not None and piece:
            stream_to(piece)

    stream = start(list(seq))
    try:
        while counter.generated < max_tokens:
            tok = next(stream, None)
            if tok is None or is_eog(tok):  # a backend that stops yielding has ended the response too
                stop_reason = "eos"
                break
            emit(tok)
            if (force_at is not None and not forced and counter.reasoning_tokens is None
                    and counter.generated >= force_at and counter.generated < max_tokens and force_ids):
                forced = True
                for f in list(force_ids)[: max_tokens - counter.generated]:
                    emit(f)
                _close(stream)
                if counter.generated < max_tokens:
                    # Sampling resumes after the inserted tokens (llama.cpp reuses the evaluated prefix).
                    stream = start(list(seq))
    finally:
        _close(stream)
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        if stream_to is not None:
            stream_to(tail)
    return _Generation("".join(pieces), counter.generated, counter.reasoning_tokens, stop_reason, forced)


def _close(stream: Iterator[int]) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def _result(gen: _Generation, *, model: str, question: str, budget: int, max_mode: bool, prompt: str,
            prompt_tokens: int, sampling: Mapping[str, Any], seed: int | None, max_tokens: int, tolerance: float,
            hard_limit: bool, elapsed_s: float) -> RunResult:
    """The :class:`RunResult` of a generation: the verdict on every response token (LCPO's count)."""
    parsed = parse_response(gen.text)
    n = gen.total_tokens
    reasoning = gen.reasoning_tokens if gen.reasoning_tokens is not None else n
    return RunResult(
        model=model, question=question, budget=budget, mode="max" if max_mode else "exact", prompt=prompt,
        prompt_tokens=prompt_tokens, text=gen.text, reasoning=parsed.reasoning, answer_text=parsed.answer,
        boxed=parsed.boxed, answer=parse_integer_answer(parsed.boxed), reasoning_tokens=reasoning, total_tokens=n,
        think_closed=gen.reasoning_tokens is not None, stop_reason=gen.stop_reason,
        budget_kept=budget_kept(n, budget, max_mode=max_mode, tolerance=tolerance),
        rel_deviation=abs(n - budget) / budget, tolerance=None if max_mode else tolerance, sampling=dict(sampling),
        seed=seed, max_tokens=max_tokens, elapsed_s=elapsed_s, answer_tokens=n - reasoning,
        hit_cap=gen.stop_reason == "length", hard_limit=hard_limit, forced_think_end=gen.forced,
    )


class Runner:
    """One loaded GGUF (:class:`l1quant.runtime.Model`) plus what l1quant needs around it; reused across runs."""

    def __init__(self, model_path: str | Path, *, n_ctx: int, kv: Mapping[str, Any],
                 n_threads: int | None = None, n_gpu_layers: int | None = None, no_repack: bool = False) -> None:
        self.path = Path(model_path).expanduser()
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such GGUF file")
        # ``kv``: the header its caller already read (151k token strings are not free to read twice)
        self.template, self.bos_text, self.eos_text = gguf_chat_info(self.path, kv)
        self.sampling = _sampling_from_kv(kv)
        self.n_ctx = n_ctx
        self.llm = Model(self.path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         extra_bufts=extra_bufts(no_repack))
        self.add_bos = self.llm.add_bos
        # </think> is one special token in R1/L1 vocabularies; when it is, count by id (exact, no text matching).
        ids = self.llm.tokenize(THINK_CLOSE, add_bos=False, special=True)
        self.think_close_id: int | None = ids[0] if len(ids) == 1 else None
        self.force_ids: list[int] = self.llm.tokenize(FORCED_THINK_END, add_bos=False, special=True)

    def is_eog(self, token: int) -> bool:
        return self.llm.is_eog(token)

    def tokenize_prompt(self, prompt: str) -> list[int]:
        # Add bos exactly when the GGUF asks for it (tokenizer.ggml.add_bos_token) and the rendered template has
        # not already put it there (R1 templates render bos_token themselves); never two.
        toks = self.llm.tokenize(prompt, add_bos=False, special=True)
        bos = self.llm.bos
        if self.add_bos and bos >= 0 and (not toks or toks[0] != bos):
            toks = [bos] + toks
        return toks

    def generate(self, question: str, budget: int, *, max_mode: bool, sampling: Mapping[str, Any],
                 seed: int | None, max_tokens: int, tolerance: float, stream_to: Callable[[str], None] | None,
                 hard_limit: bool = False) -> RunResult:
        user = l1_prompt(question, budget, max_mode=max_mode)
        prompt = render_chat(user, self.template, bos_token=self.bos_text, eos_token=self.eos_text)
        toks = self.tokenize_prompt(prompt)
        room = self.n_ctx - len(toks)
        if room <= 0:
            raise InputError(f"{self.path}: prompt is {len(toks)} tokens, context is only {self.n_ctx}")
        max_tokens = min(max_tokens, room)
        if seed is not None:
            self.llm.set_seed(seed)
        self.llm.reset()  # every run from an empty cache: a seed gives the same run whatever ran before

        def start(seq: list[int]) -> Iterator[int]:
            return self.llm.generate(seq, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                     top_k=sampling["top_k"], min_p=sampling["min_p"])

        t0 = time.perf_counter()
        gen = _generate_counted(start, toks, detokenize=self.llm.token_bytes, is_eog=self.is_eog,
                                think_close_id=self.think_close_id, max_tokens=max_tokens,
                                force_at=budget if hard_limit else None, force_ids=self.force_ids,
                                stream_to=stream_to)
        return _result(gen, model=str(self.path), question=question, budget=budget, max_mode=max_mode,
                       prompt=prompt, prompt_tokens=len(toks), sampling=sampling, seed=seed, max_tokens=max_tokens,
                       tolerance=tolerance, hard_limit=hard_limit, elapsed_s=time.perf_counter() - t0)

    def close(self) -> None:
        self.llm.close()


def resolve_sampling(base: Mapping[str, Any], temperature: float | None, top_p: float | None,
                      top_k: int | None) -> dict[str, Any]:
    """``base`` sampling (the GGUF's, else R1's defaults) with the caller's explicit values laid over it."""
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


def auto_ctx(prompt_bytes: int, max_tokens: int) -> int:
    """The context size that always fits a prompt of ``prompt_bytes`` bytes plus ``max_tokens`` generated."""
    # Byte-level BPE never makes more tokens than bytes (+1 for bos), so this always fits prompt + generation.
    need = prompt_bytes + 1 + max_tokens
    return max(512, -(-need // 256) * 256)


def check_resources(threads: int | None, n_gpu_layers: int | None) -> None:
    """Refuse a non-positive thread count or a negative GPU layer count (one-line :class:`InputError`)."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise InputError(f"threads: expected a positive number of threads, found {threads!r}")
    if n_gpu_layers is not None and (isinstance(n_gpu_layers, bool) or n_gpu_layers < -1):
        raise InputError(f"n_gpu_layers: expected -1 (all) or a number of layers >= 0, found {n_gpu_layers!r}")


def run(model_path: str | Path, question: str, budget: int, *, mode: str = "exact",
        temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
        seed: int | None = None, max_tokens: int | None = None, n_ctx: int | None = None,
        tolerance: float = EXACT_TOLERANCE, stream_to: Callable[[str], None] | None = None,
        hard_limit: bool = False, threads: int | None = None, n_gpu_layers: int | None = None,
        no_repack: bool = False) -> RunResult:
    """Ask an L1 GGUF ``question`` with a thinking budget of ``budget`` tokens and measure what it did with it.

    The prompt is :func:`l1_prompt` rendered through the GGUF's own chat template. The verdict
    (``budget_kept``, ``rel_deviation``) counts every response token, reasoning and answer together, as LCPO's
    reward does; reasoning and answer tokens are reported separately too (see :class:`RunResult`).

    Sampling defaults come from the GGUF's ``general.sampling.temp/top_p/top_k/min_p`` when present, else
    temperature 0.6, top_p 0.95 (R1/L1); each is overridable. ``max_tokens`` defaults to 2 x ``budget``
    (:func:`default_max_tokens`, the authors' protocol); ``n_ctx`` defaults to what the prompt plus
    ``max_tokens`` need. ``hard_limit`` ends the thinking when the response reaches ``budget`` tokens without
    ``</think>`` (inserting :data:`FORCED_THINK_END`) and lets the model write its answer: budget forcing for
    models that overshoot. ``mode`` is the prompt wording: ``"exact"`` (L1-Exact, "Think for N tokens.") or
    ``"max"`` (L1-Max); the parameters are named as ``l1quant run``'s flags (``--mode``, ``--threads``, ...).
    ``threads`` and ``n_gpu_layers`` go to llama.cpp (default: its own choice; no GPU
    layers). ``no_repack`` runs llama.cpp without its extra buffer types (``--no-repack``, llama.cpp's ``-nr``; by
    default :mod:`l1quant.runtime.probe` decides once per machine). ``stream_to`` receives the text as it is
    generated.

    Raises :class:`~l1quant.errors.InputError` for a bad argument, a missing or unloadable file, or a prompt
    longer than ``n_ctx``; :class:`~l1quant.errors.RuntimeMissingError` without llama-cpp-python.

    Example:
        >>> r = run("L1-Qwen-1.5B-Max-Q8_0.gguf", "What is 17*3?", 512, mode="max", seed=0)  # doctest: +SKIP
        >>> r.total_tokens, r.reasoning_tokens, r.budget_kept, r.boxed  # doctest: +SKIP
        (402, 371, True, '51')
    """
    max_mode = mode_is_max(mode)
    user = l1_prompt(question, budget, max_mode=max_mode)  # validates before loading anything
    max_tokens = default_max_tokens(budget) if max_tokens is None else max_tokens
    if max_tokens <= 0:
        raise InputError(f"max_tokens: expected a positive number, found {max_tokens}")
    check_resources(threads, n_gpu_layers)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file")
    require("running a GGUF")  # fail on a missing extra before reading the model
    kv = gguf_kv(path)
    if n_ctx is None:
        template, bos, eos = gguf_chat_info(path, kv)
        n_ctx = auto_ctx(len(render_chat(user, template, bos_token=bos, eos_token=eos).encode("utf-8")), max_tokens)
    runner = Runner(path, n_ctx=n_ctx, kv=kv, n_threads=threads, n_gpu_layers=n_gpu_layers, no_repack=no_repack)
    try:
        sampling = resolve_sampling(runner.sampling, temperature, top_p, top_k)
        return runner.generate(question, budget, max_mode=max_mode, sampling=sampling, seed=seed,
                               max_tokens=max_tokens, tolerance=tolerance, stream_to=stream_to,
                               hard_limit=hard_limit)
    finally:
        runner.close()

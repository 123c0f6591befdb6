"""Choose a type by measurement: size, PPL and KL divergence per GGUF type, as ``llama-perplexity`` computes them.

The protocol is llama-perplexity's (``tools/perplexity/perplexity.cpp`` of the pinned llama.cpp):

* the text is tokenized with the vocabulary's own rule (a BOS when ``add_bos``), cut into ``n_chunk`` chunks of
  ``ctx`` tokens (``n_chunk <= n_tokens // ctx``; at least two chunks' worth of text is required);
* each chunk is evaluated from an empty KV cache with its first token replaced by BOS (when the vocabulary adds
  one), and only the positions ``ctx // 2 .. ctx - 2`` are scored against the next token (``ctx - 1 - ctx // 2``
  tokens per chunk);
* the base model's log-probabilities are stored as llama-perplexity's ``--kl-divergence-base`` file
  (``_logits_`` header, the tokens, then per scored token a float32 scale and offset and ``n_vocab`` uint16
  codes spanning the 16 nats below the top log-prob); every other type is scored against that file, so the base
  is evaluated once and the statistics (``kl_divergence()`` / ``log_softmax()`` with a base) are the tool's.

The compression is the tool's own, so it does not change the numbers relative to llama-perplexity at all; relative
to the base's exact float logits it moves each stored log-prob by at most half a code step,
``16 / 65535 / 2 = 1.2e-4`` nats, and drops base probabilities below ``e**-16`` from the KL sum (a bias below
``1e-4`` nats per token, far under the ± of any real comparison). A base file written by ``llama-perplexity
--kl-divergence-base`` can be used directly (``base_logits=``), and llama-perplexity accepts the files this
module writes.

The logits come from the llama.cpp runtime (llama-cpp-python, all logits of the scored half): activations are
quantized by the runtime exactly as in llama-perplexity. Without llama-cpp-python the numpy reference forward pass
(:mod:`l1quant.check.forward`) stands in and the report is labelled ``weight-only``: it sees only the weights'
quantization error, so its KLD is lower than llama-perplexity's.

Example:
    >>> import numpy as np
    >>> lp = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
    >>> packed, nll = pack_base_rows(lp, np.array([0]))
    >>> packed.shape, round(float(nll[0]), 3)
    ((1, 8), 0.357)
    >>> acc = KldAccumulator()
    >>> _ = acc.add(lp, packed, np.array([0]), n_vocab=3)
    >>> abs(acc.summary()["kld"]["mean"]) < 1e-6, acc.summary()["same_top"]["value"]
    (True, 1.0)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from l1quant.errors import InputError, RuntimeMissingError, VerifyError

#: JSON schema of :meth:`CompareReport.to_dict`.
SCHEMA = "l1quant.compare/1"
#: ``_logits_`` magic of llama-perplexity's base log-prob file.
MAGIC = b"_logits_"
#: Base log-probs more than this many nats below the top are stored as 0 and left out of the KL sum (llama.cpp).
LOGPROB_RANGE = 16.0
#: llama-perplexity's default context and physical batch.
DEFAULT_CTX = 512
DEFAULT_UBATCH = 512
#: Rows processed at once in numpy: bounds the temporaries (rows x n_vocab float32 each). 4 rows of L1's vocabulary
#: are 2.4 MB, which stays in a core's 2 MiB L2 far better than 32 rows' 19 MB: per chunk of 256 rows, 2 threads,
#: KLD 0.063 s against 0.131 s and packing 0.048 s against 0.080 s (per-row results are the same at any block size).
ROW_BLOCK = 4
#: Fraction of a stored log-prob code step that bounds the compression error (nats): 16 / 65535 / 2.
COMPRESSION_BOUND_NATS = LOGPROB_RANGE / 65535 / 2


def row_width(n_vocab: int) -> int:
    """uint16 words per stored token: 4 (two float32: scale, min log-prob) + ``n_vocab`` rounded up to even.

    Matches ``nv = 2*((n_vocab + 1)/2) + 4`` in perplexity.cpp.

    Example:
        >>> row_width(151936), row_width(3)
        (151940, 8)
    """
    return 2 * ((n_vocab + 1) // 2) + 4


def pack_base_rows(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compress base logits to llama-perplexity's stored rows; return ``(packed, nll)``.

    ``logits``: (rows, n_vocab) float32; ``targets``: (rows,) next-token ids. ``packed``: (rows, row_width) uint16,
    each row a float32 scale, a float32 minimum log-prob and one code per vocabulary entry (the base's
    ``log_softmax(n_vocab, logits, log_prob, tok)`` in perplexity.cpp); ``nll``: (rows,) float64, the exact
    negative log-likelihood of each target (what the base run's PPL averages).

    Example:
        >>> p, nll = pack_base_rows(np.array([[0.0, 0.0]], dtype=np.float32), np.array([1]))
        >>> float(p[0, :4].view(np.float32)[0]), round(float(nll[0]), 4)
        (0.0, 0.6931)
    """
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    rows, n_vocab = logits.shape
    mx = logits.max(axis=1)
    t = np.subtract(logits, mx[:, None])
    np.exp(t, out=t)
    lse = np.log(t.sum(axis=1, dtype=np.float64)).astype(np.float32)
    mn = np.maximum(logits.min(axis=1), mx - np.float32(LOGPROB_RANGE))
    min_log_prob = (mn - mx - lse).astype(np.float32)
    scale = ((mx - mn) / np.float32(65535.0)).astype(np.float32)
    out = np.zeros((rows, row_width(n_vocab)), dtype=np.uint16)
    head = out[:, :4].view(np.float32)  # (rows, 2): the two floats share the row's first 4 words
    head[:, 0] = scale
    head[:, 1] = min_log_prob
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    np.subtract(logits, mn[:, None], out=t)
    t *= inv[:, None]
    np.rint(t, out=t)                      # round half to even, as nearest_int()'s magic-number trick
    np.maximum(t, 0, out=t)                # logits <= min: code 0 (their product is <= 0)
    out[:, 4:4 + n_vocab] = t              # exact: 0..65535 are whole floats
    idx = np.arange(rows)
    nll = (mx + lse - logits[idx, targets]).astype(np.float32).astype(np.float64)
    return out, nll


def _map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """``[fn(x) for x in items]`` on up to ``threads`` threads, results in order."""
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as ex:
        return list(ex.map(fn, items))


def _block_terms(lg: np.ndarray, packed: np.ndarray, tok: np.ndarray,
                 n_vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of one block: (nll, nll_base, KLD, same top token, Δp), float32 except KLD (float64 sum).

    Two (rows, n_vocab) float32 temporaries, reused in place: the block size bounds the memory.
    """
    lg = np.ascontiguousarray(lg, dtype=np.float32)
    rows = lg.shape[0]
    idx = np.arange(rows)
    mx = lg.max(axis=1)
    imax = lg.argmax(axis=1)  # first index of the max, as the strict ``>`` scan
    t = np.subtract(lg, mx[:, None])
    np.exp(t, out=t)
    lse = np.log(t.sum(axis=1, dtype=np.float64)).astype(np.float32)
    nll = (mx + lse - lg[idx, tok]).astype(np.float32)
    head = np.ascontiguousarray(packed[:, :4]).view(np.float32)
    scale, min_lp = head[:, 0], head[:, 1]
    codes = packed[:, 4:4 + n_vocab]
    imax_base = codes.argmax(axis=1)  # log-prob = scale * code + min is increasing in the code (scale >= 0)
    plb = codes.astype(np.float32)
    plb *= scale[:, None]
    plb += min_lp[:, None]
    nll_base = -plb[idx, tok]
    top = (mx + lse).astype(np.float32)
    np.subtract(plb, lg, out=t)
    t += top[:, None]                       # (p_log_base - logits[i]) + max_logit, in float as the C
    keep = plb > np.float32(-LOGPROB_RANGE)
    np.exp(plb, out=plb)
    plb *= t
    plb *= keep
    kl = plb.sum(axis=1, dtype=np.float64)
    p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(np.float32)
    return nll, nll_base, kl, imax == imax_base, p_diff


@dataclass
class KldAccumulator:
    """Running sums of ``kl_divergence_result`` in perplexity.cpp, plus every token's KLD and Δp.

    Memory: two float32 per scored token (the percentiles need them all, as in llama.cpp): 40 kB for 20 chunks.
    """

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, logits: np.ndarray, packed: np.ndarray, targets: np.ndarray, n_vocab: int,
            threads: int = 1) -> np.ndarray:
        """Score rows of ``logits`` (rows, n_vocab) against stored base rows ``packed``; return their KLDs.

        The per-token math of perplexity.cpp's ``log_softmax(n_vocab, logits, base_log_prob, tok, kld)``; blocks
        of :data:`ROW_BLOCK` rows run on ``threads`` threads (numpy releases the GIL), sums are taken in order.
        """
        spans = [(s, min(s + ROW_BLOCK, logits.shape[0])) for s in range(0, logits.shape[0], ROW_BLOCK)]

        def one(span: tuple[int, int]) -> tuple[np.ndarray, ...]:
            a, b = span
            return _block_terms(logits[a:b, :n_vocab], packed[a:b], targets[a:b], n_vocab)

        parts = _map(one, spans, threads)
        for nll, nll_base, kl, same, p_diff in parts:
            self._accumulate(nll, nll_base, kl, same, p_diff)
        return np.concatenate([p[2] for p in parts]).astype(np.float32) if parts else np.zeros(0, np.float32)

    def _accumulate(self, nll: np.ndarray, nll_base: np.ndarray, kl: np.ndarray, same: np.ndarray,
                    p_diff: np.ndarray) -> None:
        nll64, nllb64 = nll.astype(np.float64), nll_base.astype(np.float64)
        pd2 = (p_diff * p_diff).astype(np.float64)  # float product, then double (as ``double p_diff2 = p_diff*p_diff``)
        self.sum_nll += float(nll64.sum())
        self.sum_nll2 += float((nll * nll).astype(np.float64).sum())
        self.sum_nll_base += float(nllb64.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).astype(np.float64).sum())
        self.sum_nll_nll_base += float((nll * nll_base).astype(np.float64).sum())
        self.sum_kld += float(kl.sum())
        self.sum_kld2 += float((kl * kl).sum())
        self.sum_p_diff += float(p_diff.astype(np.float64).sum())
        self.sum_p_diff2 += float(pd2.sum())
        self.sum_p_diff4 += float((pd2 * pd2).sum())
        if p_diff.size:
            self.max_p_diff = max(self.max_p_diff, float(np.abs(p_diff).max()))
        self.n_same_top += int(same.sum())
        self.count += int(nll.size)
        self.kld_values.append(kl.astype(np.float32))
        self.p_diff_values.append(p_diff)

    def summary(self) -> dict[str, Any]:
        """The final statistics of llama-perplexity's ``kl_divergence()``, with its ± estimates.

        PPL and KLD in nats (PPL as e**mean NLL), probabilities as fractions (not percent).
        """
        n = self.count
        ppl_q = _mean_unc(self.sum_nll, self.sum_nll2, n)
        ppl_b = _mean_unc(self.sum_nll_base, self.sum_nll_base2, n)
        cov = _covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n)
        ratio = ppl_q[0] - ppl_b[0]
        ratio_unc = math.sqrt(max(ppl_q[1] ** 2 + ppl_b[1] ** 2 - 2.0 * cov, 0.0))
        kl = _mean_unc(self.sum_kld, self.sum_kld2, n)
        mse = _mean_unc(self.sum_p_diff2, self.sum_p_diff4, n)
        rms = math.sqrt(mse[0])
        same = self.n_same_top / n if n else 0.0
        vals = np.sort(np.concatenate(self.kld_values)) if self.kld_values else np.zeros(1, np.float32)
        ppl = math.exp(ppl_q[0])
        return {
            "tokens": n,
            "ppl": {"value": ppl, "unc": ppl * ppl_q[1]},
            "ppl_base_stored": {"value": math.exp(ppl_b[0]), "unc": math.exp(ppl_b[0]) * ppl_b[1]},
            "ln_ppl_ratio": {"value": ratio, "unc": ratio_unc},
            "kld": {"mean": kl[0], "unc": kl[1], "median": _median(vals), "p99": _percentile(vals, 0.99),
                    "p99_9": _percentile(vals, 0.999), "max": float(vals[-1])},
            "p_diff_rms": {"value": rms, "unc": (0.5 / rms * mse[1]) if rms > 0 else 0.0},
            "same_top": {"value": same, "unc": math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0},
        }


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    """perplexity.cpp's ``mean_and_uncertainty``: mean and standard error (0 for 10 or fewer values)."""
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def _covariance(a: float, b: float, ab: float, n: int) -> float:
    return 0.0 if n < 10 else (ab / n - (a / n) * (b / n)) / (n - 1)


def _median(v: np.ndarray) -> float:
    n = v.size
    return float(np.float32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def _percentile(v: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile: linear interpolation at ``fraction * (n - 1)`` in float32."""
    p = np.float32(fraction) * np.float32(v.size - 1)
    ip = int(p)
    p = np.float32(p - ip)
    return float((np.float32(1) - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])


# ------------------------------------------------------------------------------------------------ logit sources


_LOG_CALLBACK: Any = None


def _quiet_llama(lc: Any) -> None:
    """Drop llama.cpp's log lines (model loading chatter) unless L1QUANT_LLAMA_LOG=1; the callback is kept alive."""
    global _LOG_CALLBACK
    if os.environ.get("L1QUANT_LLAMA_LOG") == "1" or _LOG_CALLBACK is not None:
        return
    import ctypes

    @lc.llama_log_callback
    def _drop(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    _LOG_CALLBACK = _drop
    lc.llama_log_set(_drop, ctypes.c_void_p(0))


class LlamaCppLogits:
    """One GGUF in the llama.cpp runtime, evaluated chunk by chunk as llama-perplexity does.

    A context of ``ctx`` tokens, logical batch ``ctx``, physical batch 512 (``-ub`` default), flash attention
    ``auto``, F16 KV cache: the settings llama-perplexity runs one chunk with (it batches several sequences of
    ``ctx`` tokens in one call; each 512-token physical batch is still one sequence, so the logits are the same).
    """

    weight_only = False

    def __init__(self, path: Path, ctx: int, threads: int, vocab_only: bool = False) -> None:
        try:
            import llama_cpp as lc
        except ImportError:
            from l1quant.l1.runner import RUN_INSTALL_HINT

            raise RuntimeMissingError(f"llama-cpp-python is not installed: {RUN_INSTALL_HINT}") from None
        self.lc = lc
        _quiet_llama(lc)
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.vocab_only = vocab_only  # tokenizing only (the base is cached): no weights paged in
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        self.ctx = None
        if not self.model:
            raise VerifyError(f"{path}: llama.cpp cannot load the model")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.n_ctx = ctx
        if vocab_only:
            return
        cp = lc.llama_context_default_params()
        cp.n_ctx = ctx
        cp.n_batch = ctx
        cp.n_ubatch = min(DEFAULT_UBATCH, ctx)
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
        cp.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise VerifyError(f"{path}: llama.cpp cannot create a {ctx}-token context")
        self.batch = lc.llama_batch_init(ctx, 0, 1)

    def tokenize(self, text: str) -> list[int]:
        """``common_tokenize(ctx, text, add_special=true)`` (no special-token parsing)."""
        data = text.encode("utf-8")
        n = len(data) + 16
        buf = (self.lc.llama_token * n)()
        got = self.lc.llama_tokenize(self.vocab, data, len(data), buf, n, True, False)
        if got < 0:
            n = -got
            buf = (self.lc.llama_token * n)()
            got = self.lc.llama_tokenize(self.vocab, data, len(data), buf, n, True, False)
        return list(buf[:got])

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """Logits (ctx - first, n_vocab) float32 of positions ``first..ctx-1``; a view valid until the next call."""
        lc, b, n = self.lc, self.batch, len(tokens)
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        for k, t in enumerate(tokens):
            b.token[k] = self.bos if (k == 0 and self.add_bos) else int(t)
            b.pos[k] = k
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = 0
            b.logits[k] = k >= first
        b.n_tokens = n
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise VerifyError(f"llama.cpp failed to decode a chunk (llama_decode returned {rc})")
        ptr = lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=((n - first) * self.n_vocab,)).reshape(n - first, self.n_vocab)

    def close(self) -> None:
        """Free the batch, context and model."""
        if getattr(self, "ctx", None):
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.lc.llama_model_free(self.model)
            self.model = None


class NumpyLogits:
    """The numpy reference forward pass over a GGUF's dequantized weights: weights-only quantization error."""

    weight_only = True

    def __init__(self, path: Path, ctx: int, threads: int, tok_dir: Path | None = None) -> None:
        from l1quant.arch import get_arch
        from l1quant.check.forward import Hparams
        from l1quant.check.structure import config_from_gguf
        from l1quant.gguf.reader import read_gguf

        self.gf = read_gguf(path)
        name = self.gf.kv.get("general.architecture")
        if not isinstance(name, str):
            raise InputError(f"{path}: general.architecture is {name!r}; the reference forward pass needs it")
        arch = get_arch(name)
        self.hp = Hparams.from_config(config_from_gguf(self.gf, arch), arch)
        self.n_vocab = self.hp.n_vocab
        self.add_bos = bool(self.gf.kv.get("tokenizer.ggml.add_bos_token", False))
        self.bos = int(self.gf.kv.get("tokenizer.ggml.bos_token_id", 0))
        self.n_ctx = ctx
        self.path = path
        self.tok_dir = tok_dir

    def tokenize(self, text: str) -> list[int]:
        """There is no llama.cpp tokenizer here: the checkpoint's tokenizer.json (``tok_dir``, else one beside the
        GGUF or a folder up) splits the text, plus the BOS the GGUF asks for."""
        from l1quant.conversion.vocab import tokenizer_from_text
        from l1quant.errors import TokenizerError, read_text

        dirs = ([self.tok_dir] if self.tok_dir else []) + [self.path.parent, self.path.parent.parent]
        for cand in (d / "tokenizer.json" for d in dirs):
            if cand.is_file():
                ids = list(tokenizer_from_text(cand, read_text(cand, TokenizerError)).encode(text).ids)
                return [self.bos] + ids if self.add_bos else ids
        raise InputError(f"{self.path}: the numpy fallback needs a tokenizer.json beside the GGUF "
                         "(or llama-cpp-python)")

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        from l1quant.check.forward import decoder_logits

        toks = list(tokens)
        if self.add_bos:
            toks[0] = self.bos
        return decoder_logits(lambda n: self.gf.read_tensor_f32(self.gf.tensor(n)), self.hp, toks)[first:]

    def close(self) -> None:
        """Nothing to free."""


def open_logits(path: Path, ctx: int, threads: int, runtime: str = "auto",
                vocab_only: bool = False, tok_dir: Path | None = None) -> LlamaCppLogits | NumpyLogits:
    """llama.cpp when ``runtime`` is ``llama.cpp`` or ``auto`` with llama-cpp-python importable, else numpy.

    ``vocab_only``: llama.cpp loads only the vocabulary (for :meth:`LlamaCppLogits.tokenize`); ``tok_dir``: where
    the numpy fallback finds tokenizer.json (:meth:`NumpyLogits.tokenize`)."""
    if runtime == "numpy":
        return NumpyLogits(path, ctx, threads, tok_dir)
    if runtime == "auto":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return NumpyLogits(path, ctx, threads, tok_dir)
    return LlamaCppLogits(path, ctx, threads, vocab_only)


# ------------------------------------------------------------------------------------------------ base file


@dataclass
class BaseFile:
    """A ``_logits_`` file: header fields and where each chunk's rows start. Rows are read chunk by chunk."""

    path: Path
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray  # (n_chunk * n_ctx,) int32
    data_offset: int

    @property
    def rows_per_chunk(self) -> int:
        """Scored tokens per chunk: ``n_ctx - 1 - n_ctx // 2``."""
        return self.n_ctx - 1 - self.n_ctx // 2

    def chunk_rows(self, f: BinaryIO, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Stored rows of chunk ``i``: (rows_per_chunk, row_width) uint16, read from disk (never all in RAM).

        ``out``, when given, is filled and returned: reading into one reused buffer took 0.01 s per chunk of L1's
        78 MB where a fresh array each chunk took 0.13 s (its pages faulted in anew), 2.6 s over 20 chunks.
        """
        nv = row_width(self.n_vocab)
        shape = (self.rows_per_chunk, nv)
        if out is None or out.shape != shape or out.dtype != np.dtype("<u2"):
            out = np.empty(shape, dtype="<u2")
        f.seek(self.data_offset + i * self.rows_per_chunk * nv * 2)
        got = f.readinto(memoryview(out).cast("B"))  # type: ignore[attr-defined]
        if got != out.nbytes:
            raise InputError(f"{self.path}: truncated base log-prob file (chunk {i} of {self.n_chunk})")
        return out

    @classmethod
    def open(cls, path: Path) -> BaseFile:
        """Read and check the header of a base file (ours or llama-perplexity's)."""
        path = Path(path)
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:8] != MAGIC:
                raise InputError(f"{path}: not a llama-perplexity base log-prob file (no _logits_ header)")
            n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", head[8:20])
            if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
                raise InputError(f"{path}: bad header (n_ctx={n_ctx}, n_vocab={n_vocab}, n_chunk={n_chunk})")
            tokens = np.fromfile(f, dtype="<i4", count=n_ctx * n_chunk)
        bf = cls(path, n_ctx, n_vocab, n_chunk, tokens, 20 + 4 * n_ctx * n_chunk)
        need = bf.data_offset + n_chunk * bf.rows_per_chunk * row_width(n_vocab) * 2
        if tokens.size != n_ctx * n_chunk or path.stat().st_size < need:
            raise InputError(f"{path}: truncated base log-prob file ({path.stat().st_size} bytes, need {need})")
        return bf


# ------------------------------------------------------------------------------------------------ report


@dataclass
class TypeRow:
    """One line of the table: a GGUF file and its statistics against the base (``stats`` None for the base)."""

    name: str
    path: str
    size_bytes: int
    bpw: float
    ppl: float
    ppl_unc: float
    stats: dict[str, Any] | None = None
    budget: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompareReport:
    """Result of :func:`compare`: one :class:`TypeRow` per type, the base first."""

    base: str
    ctx: int
    chunks: int
    tokens_scored: int
    text: str
    runtime: str
    weight_only: bool
    base_logits: str
    threads: int
    rows: list[TypeRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, schema ``l1quant.compare/1``: PPL and KLD in nats, probabilities as fractions."""
        return {
            "schema": SCHEMA,
            "protocol": {"ctx": self.ctx, "chunks": self.chunks, "tokens_scored_per_type": self.tokens_scored,
                         "scored": "second half of each chunk, BOS per chunk (llama-perplexity)",
                         "text": self.text},
            "runtime": self.runtime,
            "kld_kind": "weights-only (numpy forward)" if self.weight_only else "llama-perplexity (llama.cpp runtime)",
            "base": self.base,
            "base_logits": {"path": self.base_logits, "format": "llama-perplexity --kl-divergence-base (uint16)",
                            "bound_nats": COMPRESSION_BOUND_NATS},
            "threads": self.threads,
            "seconds": self.seconds,
            "types": [{"name": r.name, "path": r.path, "size_bytes": r.size_bytes, "bpw": r.bpw,
                       "ppl": {"value": r.ppl, "unc": r.ppl_unc}, "vs_base": r.stats, "budget": r.budget}
                      for r in self.rows],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """The comparison as an aligned text table (KLD in nats; same-top and Δp RMS in percent)."""
        hdr = ["type", "size", "bpw", "PPL", "±", "mean KLD", "±", "median KLD", "p99 KLD", "max KLD",
               "same top %", "±", "Δp RMS %", "±"]
        lines = []
        big = max((r.size_bytes for r in self.rows), default=0) >= 1e9  # one unit for the whole column
        for r in self.rows:
            size = f"{r.size_bytes / 1e9:.2f} GB" if big else f"{r.size_bytes / 1e6:.1f} MB"
            cells = [r.name, size, f"{r.bpw:.2f}", _fmt_ppl(r.ppl), _fmt_ppl(r.ppl_unc)]
            s = r.stats
            if s is None:
                cells += ["(base)", "", "", "", "", "", "", "", ""]
            else:
                k = s["kld"]
                cells += [f"{k['mean']:.6f}", f"{k['unc']:.6f}", f"{k['median']:.6f}", f"{k['p99']:.6f}",
                          f"{k['max']:.6f}", f"{100 * s['same_top']['value']:.3f}",
                          f"{100 * s['same_top']['unc']:.3f}", f"{100 * s['p_diff_rms']['value']:.3f}",
                          f"{100 * s['p_diff_rms']['unc']:.3f}"]
            lines.append(cells)
        w = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(hdr)]
        fmt = lambda cs: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cs))  # noqa: E731
        out = [fmt(hdr), fmt(["-" * x for x in w])] + [fmt(c) for c in lines]
        kind = ("weights only (numpy forward; lower than llama-perplexity's)" if self.weight_only
                else "llama-perplexity's protocol through llama.cpp")
        out.append(f"{self.chunks} chunks x {self.ctx} tokens, {self.tokens_scored} tokens scored per type; "
                   f"KLD vs {self.base}: {kind}")
        if any(r.budget for r in self.rows):
            out.append("")
            out.append("type      budget  runs  mean n  within N  |n-N|/N  accuracy")
            for r in self.rows:
                for b in r.budget:
                    out.append(f"{r.name:8s}  {b['budget']:6d}  {b['runs']:4d}  {b['mean_tokens']:6.1f}  "
                               f"{100 * b['share_within_budget']:7.0f}%  {b['mean_rel_deviation']:7.3f}  "
                               f"{100 * b['accuracy']:7.0f}%")
        return "\n".join(out)

    def plot(self, path: str | Path) -> Path:
        """Size (GB) vs mean KLD, one labelled point per type (log KLD axis); needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise InputError("--plot needs matplotlib (pip install '.[plot]')") from None
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in self.rows:
            if r.stats is None:
                continue
            x, y = r.size_bytes / 1e9, max(r.stats["kld"]["mean"], 1e-9)
            ax.errorbar([x], [y], yerr=[[min(r.stats["kld"]["unc"], y * 0.999)], [r.stats["kld"]["unc"]]], fmt="o")
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel("file size (GB)")
        ax.set_ylabel(f"mean KLD vs {self.base} (nats)")
        ax.set_yscale("log")
        ax.set_title(f"{self.chunks}x{self.ctx} tokens" + (" (weights only)" if self.weight_only else ""))
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def _fmt_ppl(x: float) -> str:
    # 4 decimals as llama-perplexity prints; a random-weight model's astronomic PPL in scientific notation
    return f"{x:.4f}" if abs(x) < 1e6 else f"{x:.4e}"


# ------------------------------------------------------------------------------------------------ passes


def _chunk_targets(tokens: np.ndarray, start: int, first: int, n_ctx: int) -> np.ndarray:
    return tokens[start + first + 1:start + n_ctx].astype(np.int64)


def write_base(src: Any, tokens: Sequence[int], n_ctx: int, n_chunk: int, out: Path,
               progress: Callable[[], None] | None = None, threads: int = 1) -> tuple[float, float]:
    """Evaluate the base and write its ``_logits_`` file; return the base's exact (PPL, ±).

    The file is llama-perplexity's ``--kl-divergence-base`` output for the same tokens (its ``perplexity()`` with a
    logits file); written to a temporary name and renamed, so a cached file is always complete.
    """
    toks = np.asarray(tokens[:n_chunk * n_ctx], dtype=np.int32)
    first = n_ctx // 2
    n_vocab = src.n_vocab
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    nll_sum = nll2_sum = 0.0
    count = 0
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
            f.write(toks.astype("<i4").tobytes())
            for i in range(n_chunk):
                start = i * n_ctx
                lg = src.chunk_logits(toks[start:start + n_ctx], first)
                tg = _chunk_targets(toks, start, first, n_ctx)
                spans = [(s, min(s + ROW_BLOCK, tg.size)) for s in range(0, tg.size, ROW_BLOCK)]
                packs = _map(lambda sp, lg=lg, tg=tg: pack_base_rows(lg[sp[0]:sp[1], :n_vocab], tg[sp[0]:sp[1]]),
                             spans, threads)
                for packed, nll in packs:
                    # the array's own bytes when the machine is little-endian (no two 78 MB copies per chunk)
                    f.write(memoryview(packed if sys.byteorder == "little" else packed.astype("<u2")))
                    nll_sum += float(nll.sum())
                    nll2_sum += float((nll * nll).sum())
                    count += nll.size
                if progress:
                    progress()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    return ppl, (math.sqrt(var / (count - 1)) * ppl if var > 0 else 0.0)


def score_against_base(src: Any, base: BaseFile, progress: Callable[[], None] | None = None,
                       threads: int = 1) -> dict[str, Any]:
    """Score one model against a base file, chunk by chunk: llama-perplexity ``--kl-divergence``'s statistics."""
    if src.n_vocab != base.n_vocab:
        raise InputError(f"{base.path}: vocabulary of {base.n_vocab} tokens, the model has {src.n_vocab}")
    acc = KldAccumulator()
    first = base.n_ctx // 2
    rows: np.ndarray | None = None
    with open(base.path, "rb", buffering=0) as f:
        for i in range(base.n_chunk):
            start = i * base.n_ctx
            lg = src.chunk_logits(base.tokens[start:start + base.n_ctx], first)
            rows = base.chunk_rows(f, i, rows)
            tg = _chunk_targets(base.tokens, start, first, base.n_ctx)
            acc.add(lg[:tg.size], rows, tg, base.n_vocab, threads)
            if progress:
                progress()
    return acc.summary()


# ------------------------------------------------------------------------------------------------ driver


@functools.lru_cache(maxsize=256)
def _summary(path: Path, mtime_ns: int, size: int) -> tuple[str | None, int, int]:
    """(file type name, tensor bytes, tensor elements) of one version of a GGUF, parsed once: the label and the
    size/bpw columns both need it, and a 152k vocabulary's string arrays take ~0.25 s to parse. Only the three
    values are kept, not the parsed header."""
    from l1quant.check.structure import file_type_name
    from l1quant.gguf.reader import read_gguf

    gf = read_gguf(path)
    try:
        label = file_type_name(gf)
    except Exception:  # noqa: BLE001 - a label only
        label = None
    return label, sum(t.nbytes for t in gf.tensors), sum(t.n_elements for t in gf.tensors)


def _read_summary(path: Path) -> tuple[str | None, int, int]:
    st = path.stat()
    return _summary(path, st.st_mtime_ns, st.st_size)


def _file_info(path: Path) -> tuple[int, float]:
    _, nbytes, n = _read_summary(path)
    return path.stat().st_size, (8 * nbytes / n if n else 0.0)


def _type_label(path: Path) -> str:
    try:
        return _read_summary(path)[0] or path.stem
    except Exception:  # noqa: BLE001 - a label only
        return path.stem


def default_compare_text() -> str:
    """The bundled evaluation text (``l1quant/data/compare_text.txt``), built by ``benchmarks/make_compare_text.py``
    (prose written for this project, then worked problems from a fixed seed; the README says more)."""
    from importlib import resources

    return resources.files("l1quant").joinpath("data").joinpath("compare_text.txt").read_text(encoding="utf-8")


def _cache_dir() -> Path:
    root = os.environ.get("L1QUANT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                            or os.path.expanduser("~/.cache"), "l1quant")
    return Path(root) / "compare"


def compare(model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            types: Sequence[str] = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"), *,
            base: str | os.PathLike[str] | None = None, text: str | os.PathLike[str] | None = None,
            ctx: int = DEFAULT_CTX, chunks: int | None = None, keep: str | os.PathLike[str] | None = None,
            base_logits: str | os.PathLike[str] | None = None, threads: int | None = None,
            runtime: str = "auto", budgets: Sequence[int] = (), problems: str | os.PathLike[str] | None = None,
            budget_limit: int | None = None, max_mode: bool = False, progress: bool = False) -> CompareReport:
    """Table size, bits per weight, PPL and KLD statistics per GGUF type against a base, as llama-perplexity does.

    ``model``: a checkpoint folder (each of ``types`` is converted with :func:`l1quant.convert`, into ``keep`` or
    a cache folder; the base is ``types[0]``) or a list of GGUF files (then ``base`` names the base GGUF).
    ``text``: a text file (default: the bundled text); ``ctx`` tokens per chunk; ``chunks`` at most that many
    (default all the text gives). ``base_logits``: where to keep the base's log-prob file (default: a cache file
    named by a hash of the base file and tokens, reused on the next run; a llama-perplexity ``--kl-divergence-base``
    file works too). ``runtime``: ``auto``/``llama.cpp``/``numpy``. ``budgets`` + ``problems`` add
    :func:`l1quant.budget_check` per type (llama.cpp). The numbers match ``llama-perplexity -c ctx --chunks N``
    (with ``--kl-divergence-base`` / ``--kl-divergence``): see the module docstring.

    Raises :class:`~l1quant.errors.InputError` for bad arguments or a text shorter than two chunks.

    Example:
        >>> r = compare(["m-Q8_0.gguf"], base="m-F16.gguf", ctx=128, chunks=4)   # doctest: +SKIP
        >>> print(r.table())                                                     # doctest: +SKIP
    """
    t0 = time.perf_counter()
    threads = threads or max(1, (os.cpu_count() or 2))
    if ctx < 8 or ctx % 2:
        raise InputError(f"--ctx must be an even number of at least 8 tokens, got {ctx}")
    if runtime not in ("auto", "llama.cpp", "numpy"):
        raise InputError(f"runtime must be auto, llama.cpp or numpy, got {runtime!r}")
    if budgets and problems is None:
        raise InputError("--budgets needs --problems FILE")
    paths, names = _resolve_models(model, types, base, keep, threads, progress)
    tok_dir = Path(model) if isinstance(model, (str, os.PathLike)) and Path(model).is_dir() else None
    if text is None:
        text_s, text_label = default_compare_text(), "l1quant/data/compare_text.txt"
    else:
        from l1quant.errors import read_text

        text_s, text_label = read_text(Path(text), InputError, max_bytes=64 << 20), str(text)

    base_path = paths[0]
    bar = _Progress(progress)
    src = open_logits(base_path, ctx, threads, runtime, vocab_only=True, tok_dir=tok_dir)
    try:
        weight_only = src.weight_only
        toks = src.tokenize(text_s)
        n_max = len(toks) // ctx
        if len(toks) < 2 * ctx:
            raise InputError(f"{text_label}: {len(toks)} tokens; llama-perplexity needs at least {2 * ctx} "
                             f"(two chunks of --ctx {ctx})")
        n_chunk = min(chunks, n_max) if chunks else n_max
        bar.total = n_chunk * len(paths)
        bf_path = Path(base_logits) if base_logits else _base_cache_path(base_path, toks, ctx, n_chunk, runtime)
        bf_path.parent.mkdir(parents=True, exist_ok=True)
        base_ppl = None
        if bf_path.exists():
            bf = BaseFile.open(bf_path)
            if bf.n_ctx != ctx or bf.n_chunk < n_chunk:
                raise InputError(f"{bf_path}: base file has {bf.n_chunk} chunks of {bf.n_ctx} tokens; "
                                 f"asked for {n_chunk} of {ctx}")
            if not np.array_equal(bf.tokens[:n_chunk * ctx], np.asarray(toks[:n_chunk * ctx], dtype=np.int32)):
                raise InputError(f"{bf_path}: the base log-probs were computed for another text (tokens differ)")
            meta = _meta_path(bf_path)
            if meta.exists():
                base_ppl = tuple(json.loads(meta.read_text())["ppl"])
            bar.step(n_chunk, "base (cached)")
        else:
            src.close()
            src = open_logits(base_path, ctx, threads, runtime)
            base_ppl = write_base(src, toks, ctx, n_chunk, bf_path, lambda: bar.step(1, "base"), threads)
            _meta_path(bf_path).write_text(json.dumps({"ppl": list(base_ppl)}))
            bf = BaseFile.open(bf_path)
        bf.n_chunk = n_chunk  # score only the chunks asked for (a base file may hold more)
    finally:
        src.close()
    size, bpw = _file_info(base_path)
    rows = [TypeRow(names[0], str(base_path), size, bpw, *(base_ppl or (float("nan"), float("nan"))))]
    for p, name in zip(paths[1:], names[1:]):
        src = open_logits(p, ctx, threads, runtime)
        try:
            stats = score_against_base(src, bf, lambda n=name: bar.step(1, n), threads)
        finally:
            src.close()
        size, bpw = _file_info(p)
        rows.append(TypeRow(name, str(p), size, bpw, stats["ppl"]["value"], stats["ppl"]["unc"], stats))
        if base_ppl is None:  # a base file from elsewhere: the base's PPL from its stored log-probs
            base_ppl = (stats["ppl_base_stored"]["value"], stats["ppl_base_stored"]["unc"])
            rows[0].ppl, rows[0].ppl_unc = base_ppl
    bar.close()
    if budgets:
        _add_budgets(rows, budgets, problems, budget_limit, max_mode, threads)
    return CompareReport(base=names[0], ctx=ctx, chunks=n_chunk, tokens_scored=n_chunk * bf.rows_per_chunk,
                         text=text_label, runtime="numpy" if weight_only else "llama.cpp", weight_only=weight_only,
                         base_logits=str(bf_path), threads=threads, rows=rows, seconds=time.perf_counter() - t0)


def _resolve_models(model: Any, types: Sequence[str], base: Any, keep: Any, threads: int,
                    progress: bool) -> tuple[list[Path], list[str]]:
    if isinstance(model, (str, os.PathLike)) and not str(model).endswith(".gguf"):
        folder = Path(model)
        if not types:
            raise InputError("--types is empty")
        if base is not None:
            raise InputError("--base is for a list of GGUF files; with a checkpoint the base is the first type")
        from l1quant.conversion.convert import convert

        out_dir = Path(keep) if keep else _cache_dir() / "models" / _hash(str(folder.resolve()), _dir_stamp(folder))
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for t in types:
            target = out_dir / f"{folder.name}-{t.upper()}.gguf"
            if not target.exists():
                if progress:
                    print(f"converting {folder} -> {target.name}", file=sys.stderr)
                convert(folder, type=t, output=target, threads=threads)
            paths.append(target)
        return paths, [t.upper() for t in types]
    files = [Path(model)] if isinstance(model, (str, os.PathLike)) else [Path(m) for m in model]
    if base is None:
        raise InputError("comparing GGUF files needs --base BASE.gguf")
    paths = [Path(base)] + files
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such GGUF file")
    labels = [_type_label(p) for p in paths]
    if len(set(labels)) != len(labels):
        labels = [p.name for p in paths]
    return paths, labels


def _meta_path(base_file: Path) -> Path:
    """Beside the base file: the base's exact PPL (the base file itself stores only compressed log-probs)."""
    return base_file.with_name(base_file.name + ".json")


def _dir_stamp(folder: Path) -> str:
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*"))
                    if p.is_file())


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _base_cache_path(base: Path, toks: Sequence[int], ctx: int, n_chunk: int, runtime: str) -> Path:
    st = base.stat()
    key = _hash(str(base.resolve()), str(st.st_size), str(st.st_mtime_ns), str(ctx), str(n_chunk), runtime,
                hashlib.sha256(np.asarray(toks, np.int32).tobytes()).hexdigest(), SCHEMA)
    return _cache_dir() / f"base-{key}.kld"


def _add_budgets(rows: list[TypeRow], budgets: Sequence[int], problems: Any, limit: int | None, max_mode: bool,
                 threads: int) -> None:
    from l1quant.l1.budget import budget_check

    rep = budget_check([r.path for r in rows], list(budgets), problems, max_mode=max_mode, limit=limit,
                       n_threads=threads)
    for r in rows:
        r.budget = [{"budget": b.budget, "runs": b.runs, "mean_tokens": b.mean_tokens,
                     "share_within_budget": b.share_within_budget, "mean_rel_deviation": b.mean_rel_deviation,
                     "accuracy": b.accuracy} for b in rep.rows if b.model == r.path or Path(b.model) == Path(r.path)]


class _Progress:
    """A tqdm bar over chunks x types with an ETA (silent when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.total, self.bar = enabled, 0, None

    def step(self, n: int, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="chunk", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(label)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

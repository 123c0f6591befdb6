"""The statistics of logit evaluation, written once: KL divergence, perplexity, top-token agreement.

Two consumers, two arithmetic paths that must not be merged:

* :func:`compare_logits` (``verify --logits``/``--runtime``): exact, float64, every position of one sequence
  against the source's float logits, with a per-type limit;
* :class:`KldAccumulator` with :func:`pack_base_rows` (``compare``): llama-perplexity's ``--kl-divergence``
  statistics, in its own float32 order of operations, against its compressed ``_logits_`` base rows, so the
  numbers equal the tool's to the printed digits.

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
    >>> compare_logits(lp, lp, [0]).mean_kld
    0.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l1quant.errors import VerifyError

__all__ = ["COMPRESSION_BOUND_NATS", "LOGPROB_RANGE", "ROW_BLOCK", "KldAccumulator", "LogitReport",
           "compare_logits", "median", "pack_base_rows", "parallel_map", "percentile", "row_width"]

#: Base log-probs more than this many nats below the top are stored as 0 and left out of the KL sum (llama.cpp).
LOGPROB_RANGE = 16.0
#: Rows processed at once in numpy: bounds the temporaries (rows x n_vocab float32 each). 4 rows of L1's vocabulary
#: are 2.4 MB, which stays in a core's 2 MiB L2 far better than 32 rows' 19 MB: per chunk of 256 rows, 2 threads,
#: KLD 0.063 s against 0.131 s and packing 0.048 s against 0.080 s (per-row results are the same at any block size).
ROW_BLOCK = 4
#: Fraction of a stored log-prob code step that bounds the compression error (nats): 16 / 65535 / 2.
COMPRESSION_BOUND_NATS = LOGPROB_RANGE / 65535 / 2
# Rows of logits processed together in compare_logits: bounds the float64 temporaries.
_METRIC_ROW_BLOCK = 64

# ------------------------------------------------------------------------------ exact, one sequence (verify)


@dataclass(frozen=True)
class LogitReport:
    """Agreement between reference and test logits over one sequence.

    ``*_kld`` are per-position KL(P_ref || P_test) in nats; ``top1_agreement`` is the fraction of positions whose
    argmax matches; ``ppl_*`` are perplexities of ``tokens[1:]`` predicted from positions ``0..n-2`` (NaN when
    fewer than 2 tokens). NaN/Inf in the test logits propagate into the numbers: they are never hidden.

    Example:
        >>> import numpy as np
        >>> r = compare_logits(np.zeros((3, 4)), np.zeros((3, 4)), [0, 1, 2])
        >>> r.to_dict()["ppl_ref"]
        4.0
    """

    mean_kld: float
    max_kld: float
    p99_kld: float
    top1_agreement: float
    ppl_ref: float
    ppl_test: float
    n_tokens: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain-Python dict (JSON-ready; NaN stays NaN)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def summary(self) -> str:
        """One line for the CLI.

        Example:
            >>> import numpy as np
            >>> compare_logits(np.zeros((2, 2)), np.zeros((2, 2)), [0, 1]).summary()
            'n=2 mean KLD 0.000000 p99 0.000000 max 0.000000 top1 100.00% ppl 2.000 -> 2.000'
        """
        return (
            f"n={self.n_tokens} mean KLD {self.mean_kld:.6f} p99 {self.p99_kld:.6f} max {self.max_kld:.6f} "
            f"top1 {100.0 * self.top1_agreement:.2f}% ppl {self.ppl_ref:.3f} -> {self.ppl_test:.3f}"
        )


def _log_softmax64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf (or inf/NaN) row must not turn the shift itself into NaN
    z = x - m
    with np.errstate(divide="ignore"):
        result: np.ndarray = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
        return result


def compare_logits(ref: np.ndarray, test: np.ndarray, tokens: Sequence[int]) -> LogitReport:
    """KL divergence, top-1 agreement and perplexities of ``test`` logits against ``ref`` logits.

    Both are (n_tokens, n_vocab); ``tokens`` is the sequence they were computed on. Work is done in float64 in
    row blocks, so memory stays bounded for a 151936-entry vocabulary.

    Example:
        >>> import numpy as np
        >>> ref = np.log(np.array([[0.5, 0.5]]))
        >>> test = np.log(np.array([[0.9, 0.1]]))
        >>> round(compare_logits(ref, test, [0]).mean_kld, 6)  # 0.5*ln(0.5/0.9) + 0.5*ln(0.5/0.1)
        0.510826
    """
    ref = np.asarray(ref)
    test = np.asarray(test)
    toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if ref.ndim != 2 or ref.shape != test.shape:
        raise VerifyError(f"compare_logits: reference logits {ref.shape} and test logits {test.shape} differ")
    n_tokens, n_vocab = ref.shape
    if n_tokens == 0 or n_tokens != toks.size:
        raise VerifyError(f"compare_logits: {n_tokens} logit rows for {toks.size} tokens (need equal and non-zero)")
    if np.any((toks < 0) | (toks >= n_vocab)):
        raise VerifyError(f"compare_logits: a token id is outside 0..{n_vocab - 1}")

    kld = np.empty(n_tokens, dtype=np.float64)
    agree = np.empty(n_tokens, dtype=bool)
    nll_ref = np.empty(max(n_tokens - 1, 0), dtype=np.float64)
    nll_test = np.empty_like(nll_ref)
    for start in range(0, n_tokens, _METRIC_ROW_BLOCK):
        stop = min(start + _METRIC_ROW_BLOCK, n_tokens)
        lp = _log_softmax64(ref[start:stop])
        lq = _log_softmax64(test[start:stop])
        p = np.exp(lp)
        with np.errstate(invalid="ignore"):
            # 0 * log(0/q) = 0 by convention; p > 0 with q = 0 gives +inf, as it should.
            terms = np.where(p > 0, p * (lp - lq), 0.0)
        kld[start:stop] = np.maximum(terms.sum(axis=-1), 0.0)  # tiny negatives are rounding, KL is >= 0
        agree[start:stop] = np.argmax(ref[start:stop], axis=-1) == np.argmax(test[start:stop], axis=-1)
        # Row i predicts tokens[i + 1]; the last row predicts nothing.
        pred = np.arange(start, min(stop, n_tokens - 1))
        if pred.size:
            nll_ref[pred] = -lp[pred - start, toks[pred + 1]]
            nll_test[pred] = -lq[pred - start, toks[pred + 1]]
        del lp, lq, p, terms

    def ppl(nll: np.ndarray) -> float:
        if nll.size == 0:
            return float("nan")
        with np.errstate(over="ignore"):
            return float(np.exp(np.mean(nll)))

    return LogitReport(
        mean_kld=float(np.mean(kld)),
        max_kld=float(np.max(kld)),
        # "higher": an observed value, so an infinite KLD reads as inf rather than an interpolated NaN.
        p99_kld=float(np.percentile(kld, 99, method="higher")),
        top1_agreement=float(np.mean(agree)),
        ppl_ref=ppl(nll_ref),
        ppl_test=ppl(nll_test),
        n_tokens=int(n_tokens),
    )

# ------------------------------------------------------------------------------ llama-perplexity's (compare)


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


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """``[fn(x) for x in items]`` on up to ``threads`` threads, results in order (numpy releases the GIL)."""
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

        parts = parallel_map(one, spans, threads)
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
            "kld": {"mean": kl[0], "unc": kl[1], "median": median(vals), "p99": percentile(vals, 0.99),
                    "p99_9": percentile(vals, 0.999), "max": float(vals[-1])},
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


def median(v: np.ndarray) -> float:
    """perplexity.cpp's median of sorted float32 values (the mean of the middle two, in float32, for an even count).

    Example:
        >>> median(np.array([1, 2, 3, 4], np.float32))
        2.5
    """
    n = v.size
    return float(np.float32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


def percentile(v: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile of sorted values: linear interpolation at ``fraction * (n - 1)`` in float32.

    Example:
        >>> percentile(np.array([0, 10], np.float32), 0.5)
        5.0
    """
    p = np.float32(fraction) * np.float32(v.size - 1)
    ip = int(p)
    p = np.float32(p - ip)
    return float((np.float32(1) - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])

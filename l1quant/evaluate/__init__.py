"""Evaluating a GGUF by its logits: logit sources, the statistics, and ``compare``.

* :mod:`~l1quant.evaluate.sources`: where logits come from, behind one interface: the llama.cpp runtime
  (:mod:`l1quant.runtime`) or the numpy reference forward pass (:mod:`~l1quant.evaluate.forward`);
* :mod:`~l1quant.evaluate.metrics`: KL divergence, perplexity and top-token agreement, written once (verify's
  exact float64 path and llama-perplexity's float32 path with its compressed base);
* ``compare``: :mod:`~l1quant.evaluate.driver` (the function), :mod:`~l1quant.evaluate.basefile` (the
  ``_logits_`` file and the passes over it), :mod:`~l1quant.evaluate.report` (table, JSON) and
  :mod:`~l1quant.evaluate.plot` (the chart).

``verify --logits/--runtime`` (:mod:`l1quant.check.logits`) and ``compare`` both evaluate through here.

Example:
    >>> from l1quant.evaluate import compare, compare_logits
    >>> callable(compare) and callable(compare_logits)
    True
"""

from __future__ import annotations

from l1quant.evaluate.basefile import (MAGIC, BaseFile, read_base_ppl, score_against_base, sidecar_path, write_base,
                                       write_base_ppl)
from l1quant.evaluate.driver import DEFAULT_CTX, cache_size, clear_cache, compare, compare_cache_dir, default_compare_text
from l1quant.evaluate.metrics import (
    COMPRESSION_BOUND_NATS,
    LOGPROB_RANGE,
    KldAccumulator,
    LogitReport,
    compare_logits,
    median,
    pack_base_rows,
    percentile,
    row_width,
)
from l1quant.evaluate.report import SCHEMA, CompareReport, TypeRow
from l1quant.evaluate.sources import LlamaCppLogits, LogitSource, NumpyLogits, open_logits, tokenizer_json_ids

__all__ = ["BaseFile", "COMPRESSION_BOUND_NATS", "CompareReport", "DEFAULT_CTX", "KldAccumulator", "LOGPROB_RANGE",
           "LlamaCppLogits", "LogitReport", "LogitSource", "MAGIC", "NumpyLogits", "SCHEMA", "TypeRow", "cache_size",
           "clear_cache", "compare", "compare_cache_dir", "compare_logits", "default_compare_text", "median",
           "open_logits", "pack_base_rows", "percentile", "read_base_ppl", "row_width", "score_against_base",
           "sidecar_path", "tokenizer_json_ids", "write_base", "write_base_ppl"]

"""Checking a GGUF (``l1quant.check``): structure, fidelity to its source, logits.

One module per concern: ``structure`` (no source needed), ``fidelity`` (against the checkpoint), ``logits``
(KL divergence through :mod:`l1quant.evaluate`: the reference forward pass and llama.cpp), ``report`` (the result
types and their text form) and ``verify`` (the entry point that runs them).

Example:
    >>> from l1quant.check import VerifyReport, verify
    >>> callable(verify) and VerifyReport.__name__
    'VerifyReport'
"""

from __future__ import annotations

from l1quant.check.fidelity import Q8_0_BOUND_DOC
from l1quant.check.logits import LOGIT_KLD_LIMITS
from l1quant.check.report import Check, TensorFidelity, VerifyReport, format_report, iter_failed
from l1quant.check.verifier import verify

__all__ = ["LOGIT_KLD_LIMITS", "Q8_0_BOUND_DOC", "Check", "TensorFidelity", "VerifyReport", "format_report",
           "iter_failed", "verify"]

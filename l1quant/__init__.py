"""l1quant: Hugging Face checkpoints of the L1 reasoning models and their R1-distill relatives (qwen2, qwen3, llama) to GGUF, byte-identical to llama.cpp's converter.

The library is the product; the ``l1quant`` command is a thin layer over these functions.

Example:
    >>> import l1quant
    >>> l1quant.convert("L1-Qwen-1.5B-Max", type="q8_0")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q8_0.gguf')
    >>> l1quant.verify("L1-Qwen-1.5B-Max-Q8_0.gguf", source="L1-Qwen-1.5B-Max").passed  # doctest: +SKIP
    True
    >>> l1quant.l1_prompt("What is 2+2?", 256)  # doctest: +SKIP
    "What is 2+2? Let's think step by step and output the final answer within \\\\boxed{}. Think for 256 tokens."
"""

from __future__ import annotations

from l1quant._quiet_start import begin_quiet_start

begin_quiet_start()  # Ctrl-C while the command line starts: one line, never an import traceback

from l1quant.check import VerifyReport, verify
from l1quant.evaluate import CompareReport, compare

# The functions are bound after their submodules are imported, so ``l1quant.convert`` is the function.
from l1quant.conversion.convert import convert, convert_many
from l1quant.conversion.prepare import prepare
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.quantize import quantize
from l1quant.conversion.write import WriteOptions
from l1quant.errors import L1QuantError
from l1quant.imatrix_compute import imatrix
from l1quant.kernels import QUANT_TYPES, get_quant_type
from l1quant.l1 import budget_check, l1_prompt, render_chat, run

__all__ = ["QUANT_TYPES", "CompareReport", "L1QuantError", "QuantOptions", "VerifyReport", "WriteOptions",
           "budget_check", "compare", "convert", "convert_many",
           "get_quant_type", "imatrix", "l1_prompt", "prepare", "quantize", "render_chat", "run", "verify"]
__version__ = "0.1.0"

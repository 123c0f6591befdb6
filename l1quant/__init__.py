"""l1quant: L1 (qwen2) Hugging Face checkpoints to GGUF, byte-identical to llama.cpp's converter.

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

import importlib.util as _ilu
import os as _os

# kernels/ sits beside l1quant/ in the source tree and is installed as l1quant.kernels. Installed and editable
# layouts map it already; only when Python imports l1quant straight from a checkout (``python -m l1quant`` in the
# repo root next to a non-editable install) does the root join the package path, so the subpackage is found there.
if _ilu.find_spec(__name__ + ".kernels") is None:
    _root = _os.path.dirname(__path__[0])
    if _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
        __path__.append(_root)

# The functions are bound after their submodules are imported, so ``l1quant.convert`` is the function.
from .convert import convert, prepare
from .errors import L1QuantError
from .kernels import QUANT_TYPES, get_quant_type
from .l1 import budget_check, l1_prompt, render_chat, run
from .verify import VerifyReport, verify

__all__ = ["QUANT_TYPES", "L1QuantError", "VerifyReport", "budget_check", "convert", "get_quant_type", "l1_prompt",
           "prepare", "render_chat", "run", "verify"]
__version__ = "0.1.0"

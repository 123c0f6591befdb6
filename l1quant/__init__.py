"""l1quant: L1 (qwen2) Hugging Face checkpoints to GGUF, byte-identical to llama.cpp's converter.

Example:
    >>> import l1quant
    >>> l1quant.convert("L1-Qwen-1.5B-Max", type="q8_0")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q8_0.gguf')
"""

from __future__ import annotations

from .errors import L1QuantError

__all__ = ["L1QuantError"]
__version__ = "0.1.0"

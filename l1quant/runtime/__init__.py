"""The llama.cpp runtime (llama-cpp-python): the one home of everything that runs a GGUF in llama.cpp.

* :mod:`l1quant.runtime.llama`: :class:`Model` (load, tokenize, logits of a batch, sampling, ggml's ``cb_eval``);
  the only module that imports ``llama_cpp``.
* :mod:`l1quant.runtime.probe`: whether llama.cpp's extra buffer types (weight repacking) work on this machine,
  learnt once in a child process and cached (some AMX machines crash with them).
* :mod:`l1quant.runtime.crash`: a crash inside llama.cpp is one line naming the model and the signal.

``run``, ``budget-check``, ``compare`` and ``verify --runtime`` reach llama.cpp only through here; their
``no_repack`` parameter (``--no-repack``, llama.cpp's ``-nr``) is :func:`extra_bufts` ``False``.

Example:
    >>> extra_bufts(no_repack=True), extra_bufts(no_repack=False) is None
    (False, True)
"""

from __future__ import annotations

from l1quant.errors import RuntimeMissingError
from l1quant.runtime.llama import RUN_INSTALL_HINT, EvalCallback, EvalTensor, Model, available

__all__ = ["RUN_INSTALL_HINT", "EvalCallback", "EvalTensor", "Model", "available", "extra_bufts", "require"]


def extra_bufts(no_repack: bool) -> bool | None:
    """:class:`Model`'s ``extra_bufts`` for a command's ``no_repack``: off when asked, else as probed (None)."""
    return False if no_repack else None


def require(what: str) -> None:
    """Raise :class:`~l1quant.errors.RuntimeMissingError` naming ``what`` needs llama-cpp-python, when it is not
    installed (before any work is done)."""
    if not available():
        raise RuntimeMissingError(f"{what} needs llama-cpp-python: {RUN_INSTALL_HINT}")

"""Where l1quant keeps what it can compute again: one folder per user, one subfolder per kind.

Example:
    >>> user_cache_dir("compare").name
    'compare'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(*parts: str) -> Path:
    """``$L1QUANT_CACHE``, else ``$XDG_CACHE_HOME/l1quant``, else ``~/.cache/l1quant``; then ``parts`` below it.
    Nothing is created."""
    root = os.environ.get("L1QUANT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                            or os.path.expanduser("~/.cache"), "l1quant")
    return Path(root).joinpath(*parts)

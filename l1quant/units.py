"""Sizes as users type them: ``compare``'s ``auto@SIZE`` entries and the target-size search's ``--target-size``
read their value here (one home for the suffixes and their multipliers).

Example:
    >>> parse_size("400M"), parse_size("1.5GiB"), parse_size("123456")
    (400000000, 1610612736, 123456)
"""

from __future__ import annotations

import re

from l1quant.errors import ConfigError

__all__ = ["SIZE_UNITS", "parse_bpw", "parse_size"]

#: Size suffixes (case-insensitive; a trailing ``B`` is optional: ``400M`` = ``400MB``): K/M/G are powers of 1000,
#: as llama.cpp's tools and model cards print sizes; KiB/MiB/GiB powers of 1024.
SIZE_UNITS: dict[str, int] = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                              "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)
_BPW_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*bpw\s*", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """A size in bytes from ``text``: a number (bytes), or a number with K/M/G/T (10^3, 10^6, 10^9, 10^12) or
    KiB/MiB/GiB/TiB (2^10 ... 2^40), any case, optional trailing ``B``; fractions allowed and rounded to the
    nearest byte. ``what`` names the value in the error.

    Raises :class:`~l1quant.errors.ConfigError` (one line) for anything else or a size of 0 bytes.

    Example:
        >>> parse_size("4.2G"), parse_size("512KiB"), parse_size("800mb")
        (4200000000, 524288, 800000000)
        >>> parse_size("4 bpw")
        Traceback (most recent call last):
        ...
        l1quant.errors.ConfigError: size '4 bpw': expected bytes, or a number with K, M, G (10^3, 10^6, 10^9) or KiB, MiB, GiB (2^10, 2^20, 2^30), e.g. 400M or 1.5GiB
    """
    m = _SIZE_RE.fullmatch(str(text))
    if m is None:
        raise ConfigError(f"{what} {str(text)!r}: expected bytes, or a number with K, M, G (10^3, 10^6, 10^9) or "
                          "KiB, MiB, GiB (2^10, 2^20, 2^30), e.g. 400M or 1.5GiB")
    unit = (m.group(2) or "").lower()
    n = round(float(m.group(1)) * SIZE_UNITS[unit])
    if n <= 0:
        raise ConfigError(f"{what} {str(text)!r}: must be at least one byte")
    return n


def parse_bpw(text: str, what: str = "bits per weight") -> float:
    """Bits per weight from ``4.0bpw`` / ``4.5 BPW`` (the ``bpw`` suffix is required, so a bare number stays a
    size in bytes). Raises :class:`~l1quant.errors.ConfigError` (one line) unless 0 < value <= 32.

    Example:
        >>> parse_bpw("4.0bpw"), parse_bpw("3bpw")
        (4.0, 3.0)
    """
    m = _BPW_RE.fullmatch(str(text))
    if m is None:
        raise ConfigError(f"{what} {str(text)!r}: expected a number followed by bpw, e.g. 4.0bpw")
    v = float(m.group(1))
    if not 0 < v <= 32:
        raise ConfigError(f"{what} {str(text)!r}: must be above 0 and at most 32 (F32)")
    return v

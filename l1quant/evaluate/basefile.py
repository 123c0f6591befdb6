"""llama-perplexity's ``_logits_`` base file and the two passes over it: write the base, score a model against it.

The base model's log-probabilities are stored as llama-perplexity's ``--kl-divergence-base`` file (``_logits_``
header, the tokens, then per scored token a float32 scale and offset and ``n_vocab`` uint16 codes spanning the
16 nats below the top log-prob, :func:`l1quant.evaluate.metrics.pack_base_rows`); every other model is scored
against that file (:class:`l1quant.evaluate.metrics.KldAccumulator`), so the base is evaluated once. Files written
here and by llama-perplexity are interchangeable.

Example:
    >>> row_width(3)   # uint16 words per stored token: two float32 then the codes, rounded up to even
    8
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from l1quant.errors import InputError
from l1quant.evaluate.metrics import ROW_BLOCK, KldAccumulator, pack_base_rows, parallel_map, row_width
from l1quant.evaluate.sources import LogitSource

__all__ = ["MAGIC", "BaseFile", "score_against_base", "write_base"]

#: ``_logits_`` magic of llama-perplexity's base log-prob file.
MAGIC = b"_logits_"


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


def _chunk_targets(tokens: np.ndarray, start: int, first: int, n_ctx: int) -> np.ndarray:
    return tokens[start + first + 1:start + n_ctx].astype(np.int64)


def write_base(src: LogitSource, tokens: Sequence[int], n_ctx: int, n_chunk: int, out: Path,
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
                packs = parallel_map(lambda sp, lg=lg, tg=tg: pack_base_rows(lg[sp[0]:sp[1], :n_vocab], tg[sp[0]:sp[1]]),
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


def score_against_base(src: LogitSource, base: BaseFile, progress: Callable[[], None] | None = None,
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

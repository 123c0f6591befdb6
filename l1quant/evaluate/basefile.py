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

import json
import math
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from l1quant.errors import InputError, open_regular, read_bytes
from l1quant.output import AtomicOutput, pwrite_all
from l1quant.evaluate.metrics import ROW_BLOCK, KldAccumulator, pack_base_rows, parallel_map, row_width
from l1quant.evaluate.sources import LogitSource

__all__ = ["MAGIC", "MAX_SIDECAR_BYTES", "BaseFile", "read_base_ppl", "score_against_base", "sidecar_path", "write_base",
           "write_base_ppl"]

#: ``_logits_`` magic of llama-perplexity's base log-prob file.
MAGIC = b"_logits_"
#: Largest sidecar read (``<base file>.json``, the base's exact PPL): it holds two numbers.
MAX_SIDECAR_BYTES = 4096


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
        # ignore: typing.BinaryIO declares no readinto (the raw files passed here have it); numpy has no __buffer__ stub
        got = f.readinto(memoryview(out).cast("B"))  # type: ignore[attr-defined, arg-type]
        if got != out.nbytes:
            raise InputError(f"{self.path}: truncated base log-prob file (chunk {i} of {self.n_chunk})")
        _check_rows(self.path, i, out)
        return out

    @classmethod
    def open(cls, path: Path, *, n_ctx: int | None = None, n_vocab: int | None = None,
             n_chunk: int | None = None) -> BaseFile:
        """Read and check the header of a base file (ours or llama-perplexity's), bounded by the file itself.

        ``n_ctx`` / ``n_vocab``: the values the caller needs (checked before any count from the header is used);
        ``n_chunk``: the chunks the caller scores (at least that many must be stored; only their tokens are read).
        Every count is checked against the file's size before anything is allocated, so a header claiming
        ``n_ctx`` 2**31 or ``n_chunk`` 2**31 - 1 is one line, not ``array is too big`` or "out of memory"; a FIFO
        or device in place of the file is refused before a byte is read (:func:`~l1quant.errors.open_regular`).

        Raises :class:`~l1quant.errors.InputError` naming the file.
        """
        path = Path(path)
        fd = open_regular(path, InputError)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(20)
            if len(head) < 20 or head[:8] != MAGIC:
                raise InputError(f"{path}: not a llama-perplexity base log-prob file (no _logits_ header)")
            h_ctx, h_vocab, h_chunk = struct.unpack("<Iii", head[8:20])
            if h_ctx < 4 or h_vocab < 1 or h_chunk < 1:
                raise InputError(f"{path}: bad header (n_ctx={h_ctx}, n_vocab={h_vocab}, n_chunk={h_chunk})")
            if n_ctx is not None and h_ctx != n_ctx:
                raise InputError(f"{path}: base file has {h_chunk} chunks of {h_ctx} tokens; asked for "
                                 f"{n_chunk or '?'} of {n_ctx}")
            if n_vocab is not None and h_vocab != n_vocab:
                raise InputError(f"{path}: base log-probs over a vocabulary of {h_vocab} tokens; the base model "
                                 f"has {n_vocab}")
            if n_chunk is not None and h_chunk < n_chunk:
                raise InputError(f"{path}: base file has {h_chunk} chunks of {h_ctx} tokens; asked for "
                                 f"{n_chunk} of {n_ctx or h_ctx}")
            rows = h_ctx - 1 - h_ctx // 2
            need = 20 + 4 * h_ctx * h_chunk + h_chunk * rows * row_width(h_vocab) * 2  # Python ints: no overflow
            if size < need:
                raise InputError(f"{path}: truncated base log-prob file ({size} bytes, the header needs {need})")
            keep = h_chunk if n_chunk is None else n_chunk
            tokens = np.frombuffer(f.read(4 * h_ctx * keep), dtype="<i4").astype(np.int32)
        if tokens.size != h_ctx * keep:
            raise InputError(f"{path}: truncated base log-prob file (changed while being read?)")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= h_vocab):
            raise InputError(f"{path}: a stored token id is outside the vocabulary of {h_vocab}")
        return cls(path, h_ctx, h_vocab, h_chunk, tokens, 20 + 4 * h_ctx * h_chunk)


def sidecar_path(base_file: Path) -> Path:
    """Beside the base file: the base's exact PPL (the base file itself stores only compressed log-probs)."""
    return base_file.with_name(base_file.name + ".json")


def read_base_ppl(meta: Path) -> tuple[float, float]:
    """The base's exact (PPL, ±) from its sidecar (:func:`sidecar_path`), checked: a cut-short or hostile file is
    :class:`~l1quant.errors.InputError` naming it (a cut-short sidecar was exit 70 ``JSONDecodeError``)."""
    data = read_bytes(meta, InputError, MAX_SIDECAR_BYTES)
    try:
        d = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise InputError(f"{meta}: invalid JSON: {str(e)[:120]}") from None
    ppl = d.get("ppl") if isinstance(d, dict) else None
    if (not isinstance(ppl, list) or len(ppl) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              and math.isfinite(v) for v in ppl)
            or ppl[0] < 1 or ppl[1] < 0):
        raise InputError(f"{meta}: expected {{\"ppl\": [PPL >= 1, uncertainty >= 0]}}, found {data[:80]!r}")
    return float(ppl[0]), float(ppl[1])


def write_base_ppl(meta: Path, ppl: tuple[float, float]) -> None:
    """Write the base's exact (PPL, ±) to its sidecar atomically (:class:`~l1quant.output.AtomicOutput`): a
    killed run leaves the old file or none, never half of one (which broke the cache entry for every later run)."""
    data = json.dumps({"ppl": list(ppl)}).encode()
    with AtomicOutput(meta, len(data)) as out:
        pwrite_all(out.fd, data, 0)


def _check_rows(path: Path, chunk: int, rows: np.ndarray) -> None:
    """Each stored row's float32 scale and minimum log-prob must describe log-probs: finite, ``scale >= 0``, the
    range within ``[-1e4, 1]`` nats (the writer stores ``(max - min) / 65535`` over at most 16 nats and a minimum
    at most ``16 + ln(n_vocab)`` below 0, llama-perplexity alike; the slack is for rounding). A damaged file
    otherwise overflowed ``exp`` in the statistics (found by tests/fuzz/test_fuzz_compare.py)."""
    head = np.ascontiguousarray(rows[:, :4]).view("<f4")
    scale, low = head[:, 0].astype(np.float64), head[:, 1].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        high = low + scale * 65535.0
        bad = ~(np.isfinite(scale) & np.isfinite(low) & (scale >= 0) & (low >= -1e4) & (high <= 1.0))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: chunk {chunk}, scored token {r}: stored scale {scale[r]:g} and minimum log-prob "
                         f"{low[r]:g} do not describe log-probs (a damaged base file)")


def _chunk_targets(tokens: np.ndarray, start: int, first: int, n_ctx: int) -> np.ndarray:
    return tokens[start + first + 1:start + n_ctx].astype(np.int64)


def write_base(src: LogitSource, tokens: Sequence[int] | np.ndarray, n_ctx: int, n_chunk: int, out: Path,
               progress: Callable[[], None] | None = None, threads: int = 1) -> tuple[float, float]:
    """Evaluate the base and write its ``_logits_`` file; return the base's exact (PPL, ±).

    The file is llama-perplexity's ``--kl-divergence-base`` output for the same tokens (its ``perplexity()`` with a
    logits file); written through :class:`~l1quant.output.AtomicOutput`, so the file under ``out`` is complete or
    absent whatever ends the process (an existing ``out`` is untouched on failure).
    """
    toks = np.asarray(tokens[:n_chunk * n_ctx], dtype=np.int32)
    first = n_ctx // 2
    n_vocab = src.n_vocab
    rows = n_ctx - 1 - first
    size = 20 + 4 * toks.size + n_chunk * rows * row_width(n_vocab) * 2
    nll_sum = nll2_sum = 0.0
    count = 0
    with AtomicOutput(out, size) as ao, open(ao.fd, "wb", closefd=False) as f:
        f.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
        f.write(toks.astype("<i4").tobytes())
        for i in range(n_chunk):
            start = i * n_ctx
            lg = src.chunk_logits(toks[start:start + n_ctx], first)
            tg = _chunk_targets(toks, start, first, n_ctx)
            spans = [(s, min(s + ROW_BLOCK, tg.size)) for s in range(0, tg.size, ROW_BLOCK)]

            def pack(sp: tuple[int, int], lg: np.ndarray = lg, tg: np.ndarray = tg) -> tuple[np.ndarray, np.ndarray]:
                return pack_base_rows(lg[sp[0]:sp[1], :n_vocab], tg[sp[0]:sp[1]])

            packs = parallel_map(pack, spans, threads)
            for packed, nll in packs:
                # the array's own bytes when the machine is little-endian (no two 78 MB copies per chunk)
                f.write(memoryview(packed if sys.byteorder == "little" else packed.astype("<u2")))
                nll_sum += float(nll.sum())
                nll2_sum += float((nll * nll).sum())
                count += nll.size
            if progress:
                progress()
        f.flush()
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

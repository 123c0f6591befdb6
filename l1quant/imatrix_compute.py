"""Importance matrices computed as ``llama-imatrix`` computes them, through the llama.cpp runtime.

The activations are ggml's own: ggml's evaluation callback (``cb_eval``, :class:`l1quant.runtime.Model`) hands
every matrix product's input to :class:`Collector`, which keeps what llama.cpp's ``tools/imatrix/imatrix.cpp``
(``IMatrixCollector::collect_imatrix``) keeps, in the same order and precision:

* **Which products.** ``MUL_MAT`` whose weight is a ``blk.*`` tensor (``output.weight`` only with
  ``process_output``; ``token_embd`` is a row lookup, never a product), with an F32 input of at least 16 rows
  (``src1->ne[1] >= 16``); every ``MUL_MAT_ID`` (expert products, per expert). A weight name's ``CUDA0#...#0``
  decoration is removed as ``filter_tensor_name`` does.
* **Sums and counts.** Per weight, per matrix (``src0->ne[2] * ne[3]``), per input column: the sum of x² in
  float32, added row after row in the order ggml's input holds the rows, onto the running sum (so ``in_sum2`` is
  the same float32 numbers, bit for bit, as llama-imatrix's ``acc[j] += x[j] * x[j]``); the count is the rows
  seen (``ggml_nrows(src1) / n_mat``). Non-finite sums are refused.
* **Chunks.** The text (one trailing newline dropped, as ``-f`` reads it) is tokenized with the vocabulary's BOS
  when it adds one; it must give at least ``2 * ctx_size`` tokens. Chunks of ``ctx_size`` tokens,
  ``n_seq = max(1, batch_size // ctx_size)`` of them per decode in a context of ``n_seq * ctx_size`` tokens with
  ``n_seq`` sequences, physical batch 512, flash attention auto, F16 KV cache (llama.cpp's defaults); the first
  token of each chunk is replaced by BOS when the vocabulary adds one; every position's logits are requested.
  ``imatrix.chunk_count`` is the largest count divided by ``ctx_size``.
* **PPL.** For each chunk, the log-probability of tokens ``ctx/2 + 1 .. ctx - 1`` from the logits before them,
  printed as llama-imatrix prints it (``[1]12.3456,[2]...``, then ``Final estimate: PPL = x +/- y``).

The file is written by :func:`l1quant.imatrix_file.write_imatrix` (GGUF, or the legacy ``.dat``), byte for byte
as llama-imatrix saves it.

Example:
    >>> rep = imatrix("tiny-F16.gguf", "calibration.txt", "tiny.imatrix.gguf", ctx_size=128)  # doctest: +SKIP
    >>> rep.chunk_count, rep.entries                                                        # doctest: +SKIP
    (4, 14)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1quant.errors import InputError, L1QuantError, read_bytes
from l1quant.imatrix_file import write_imatrix

__all__ = [
    "BUNDLED_DATASET",
    "OUTPUT_FORMATS",
    "Collector",
    "ImatrixReport",
    "calibration_imatrix",
    "calibration_options",
    "default_calibration_text",
    "imatrix",
    "imatrix_path_for",
    "lossless_type",
    "seq_square_sum",
]

log = logging.getLogger("l1quant")

OUTPUT_FORMATS = ("gguf", "dat")
#: llama.cpp's common defaults the tool runs with (``common_params``): physical batch, rows below which a product is
#: not collected (imatrix.cpp: "why are small batches ignored (<16 tokens)?").
DEFAULT_UBATCH = 512
MIN_ROWS = 16
_F32 = 0


def seq_square_sum(acc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``acc`` plus the squares of ``rows``, added one row after another in float32, as llama-imatrix's
    ``for row: for j: acc[j] += x[j] * x[j]``: acc (ne0,) float32, rows (n, ne0) float32 -> (ne0,) float32.

    numpy reduces over the outer axis of a C-contiguous array row by row (no pairwise summation across rows), so
    the result is the sequential float32 sum; tests/test_imatrix_compute.py checks this against a loop.

    Example:
        >>> seq_square_sum(np.zeros(2, np.float32), np.array([[1, 2], [3, 4]], np.float32)).tolist()
        [10.0, 20.0]
    """
    sq = np.empty((rows.shape[0] + 1, rows.shape[1]), np.float32)
    sq[0] = acc
    np.multiply(rows, rows, out=sq[1:])
    result: np.ndarray = np.add.reduce(sq, axis=0)
    return result


def _weight_name(name: str) -> str:
    """``filter_tensor_name``: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    if "#" in name:
        rest = name.split("#", 1)[1]
        return rest.split("#", 1)[0]
    return name


def _ne(t: Any, i: int) -> int:
    return int(t.shape[i]) if i < len(t.shape) else 1


@dataclass
class Collector:
    """ggml's evaluation callback collecting llama-imatrix's statistics (see the module's docstring).

    ``chunk_size``: tokens per chunk (``n_ctx / n_parallel``); ``process_output``: also ``output.weight``.
    ``stats`` maps a weight name to (sums float32 (n_mat * ne0,), counts int64 (n_mat,)); ``last_chunk`` is
    llama-imatrix's ``m_last_chunk``. An error inside the callback stops the graph and is kept in ``error``.
    """

    chunk_size: int
    process_output: bool = False
    #: threads for the sums (ggml's are idle during the callback): columns are split between them, each column
    #: still summed row after row, so the result does not depend on the number
    threads: int = 1
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    last_chunk: int = 0
    error: BaseException | None = None
    # (src1 name, data address, shape, acc before) -> acc after: q/k/v (and gate/up) read the same input, so the
    # second and third products add the same squares onto equal sums; the result is reused when both are equal.
    _last: tuple[tuple[Any, ...], np.ndarray, np.ndarray] | None = None
    #: set while llama.cpp decodes; a terminating signal then only sets ``signum``, which stops the graph
    decoding: bool = False
    signum: int | None = None
    _pool: Any = None

    def __call__(self, t: Any, ask: bool) -> bool:
        if self.signum is not None:
            return False
        try:
            return self._collect(t, ask)
        except BaseException as e:  # noqa: BLE001 -- nothing may cross the C boundary: stop the graph, raise later
            self.error = e
            return False

    def wanted(self, t: Any) -> bool:
        if t.op == "MUL_MAT_ID":
            return True
        if t.op != "MUL_MAT":
            return False
        srcs = t.srcs
        if len(srcs) < 2:
            return False
        src0, src1 = srcs[0], srcs[1]
        if _ne(src1, 1) < MIN_ROWS or src1.type != _F32:
            return False
        w = _weight_name(src0.name)
        return w.startswith("blk.") or (self.process_output and w == "output.weight")

    def _collect(self, t: Any, ask: bool) -> bool:
        if ask or not self.wanted(t):  # never collect what was not asked for, whatever the scheduler calls
            return self.wanted(t) if ask else True
        srcs = t.srcs
        src0, src1 = srcs[0], srcs[1]
        wname = _weight_name(src0.name)
        if t.op == "MUL_MAT_ID":
            self._collect_id(wname, src0, src1, srcs[2])
        else:
            self._collect_dense(wname, src0, src1)
        return True

    def _entry(self, wname: str, nval: int, n_mat: int) -> tuple[np.ndarray, np.ndarray]:
        e = self.stats.get(wname)
        if e is None:
            e = self.stats[wname] = (np.zeros(nval, np.float32), np.zeros(n_mat, np.int64))
        elif e[0].size != nval:
            raise L1QuantError(f"{wname}: inconsistent activation size ({e[0].size} vs {nval}), as llama-imatrix")
        return e

    def _chunk_step(self, count: int) -> None:
        self.last_chunk = max(self.last_chunk, int(count) // self.chunk_size)

    def _collect_dense(self, wname: str, src0: Any, src1: Any) -> None:
        ne0, ne1, ne2, ne3 = (_ne(src1, i) for i in range(4))
        s02, s03 = _ne(src0, 2), _ne(src0, 3)
        n_mat = s02 * s03
        values, counts = self._entry(wname, ne0 * n_mat, 1)
        x = src1.to_numpy(copy=False).reshape(ne3, ne2, ne1, ne0)  # read during the callback only
        key = (src1.name, src1.data_address, src1.shape, src1.strides)
        for i3 in range(ne3):
            for i2 in range(ne2):
                mat = (i3 % s03) * s02 + (i2 % s02)
                acc = values[mat * ne0:(mat + 1) * ne0]
                last = self._last
                if n_mat == 1 and ne2 == ne3 == 1 and last is not None and last[0] == key \
                        and np.array_equal(last[1].view(np.uint32), acc.view(np.uint32)):
                    acc[:] = last[2]
                    continue
                before = acc.copy()
                acc[:] = self.square_sum(acc, x[i3, i2])
                if n_mat == 1 and ne2 == ne3 == 1:
                    self._last = (key, before, acc.copy())
        if not np.isfinite(values).all():
            raise L1QuantError(f"{wname}: non-finite activations (llama-imatrix stops on them too)")
        counts += (ne1 * ne2 * ne3) // n_mat
        for c in counts:
            self._chunk_step(c)

    def square_sum(self, acc: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """:func:`seq_square_sum`, the columns split between ``threads`` (the same numbers for any count)."""
        n = rows.shape[1]
        parts = min(self.threads, n // 256)  # ~256+ columns a thread, or the threads cost more than they save
        if parts < 2 or rows.size < 1 << 16:
            return seq_square_sum(acc, rows)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="l1q-imatrix")
        cuts = [n * k // parts for k in range(parts + 1)]
        out = np.empty_like(acc)

        def one(k: int) -> None:
            a, b = cuts[k], cuts[k + 1]
            out[a:b] = seq_square_sum(acc[a:b], rows[:, a:b])

        list(self._pool.map(one, range(parts)))
        return out

    def close(self) -> None:
        """Stop the summing threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _collect_id(self, wname: str, src0: Any, src1: Any, ids_t: Any) -> None:
        # src1 [cols, n_expert_used (or 1), n_tokens], ids [n_expert_used, n_tokens]: expert by expert, in
        # llama-imatrix's order (slot-major, then token)
        ne0, ne1, n_tokens = _ne(src1, 0), _ne(src1, 1), _ne(src1, 2)
        if _ne(src1, 3) != 1:
            raise L1QuantError(f"{wname}: expert input with more than 3 dimensions")
        n_as = _ne(src0, 2)
        values, counts = self._entry(wname, ne0 * n_as, n_as)
        x = src1.to_numpy().reshape(n_tokens, ne1, ne0)
        ids = ids_t.to_numpy().reshape(n_tokens, _ne(ids_t, 0))
        n_ids = ids.shape[1]
        if (ids < 0).any() or (ids >= n_as).any():
            raise L1QuantError(f"{wname}: expert id out of range")
        for idx in range(n_ids):
            rows = x[:, idx % ne1, :]
            for ex in np.unique(ids[:, idx]):
                sel = rows[ids[:, idx] == ex]
                acc = values[ex * ne0:(ex + 1) * ne0]
                acc[:] = seq_square_sum(acc, sel)
                counts[ex] += sel.shape[0]
        if not np.isfinite(values).all():
            raise L1QuantError(f"{wname}: non-finite activations (llama-imatrix stops on them too)")
        for c in counts:
            self._chunk_step(c)


@dataclass(frozen=True)
class ImatrixReport:
    """What :func:`imatrix` did: the file written, ``chunk_count`` (``imatrix.chunk_count``), ``chunk_size``,
    ``entries`` (weights collected), ``tokens`` (the text's), ``chunk_ppl`` (running PPL after each chunk, as
    printed), ``ppl`` and ``ppl_unc`` (the final estimate; None with ``no_ppl``), ``seconds``."""

    path: Path
    output_format: str
    chunk_count: int
    chunk_size: int
    entries: int
    tokens: int
    chunk_ppl: tuple[float, ...]
    ppl: float | None
    ppl_unc: float | None
    seconds: float


def lossless_type(model_dir: str | os.PathLike[str]) -> str:
    """The converter type that keeps every weight of a checkpoint exactly: ``bf16`` when its 2-D tensors are all
    BF16, ``f16`` when all F16, else ``f32``.

    Example:
        >>> lossless_type("L1-Qwen-1.5B-Max")  # doctest: +SKIP
        'bf16'
    """
    from l1quant.source.safetensors import open_checkpoint

    dtypes = {t.dtype for t in open_checkpoint(model_dir).tensors.values() if len(t.shape) >= 2}
    return {frozenset({"BF16"}): "bf16", frozenset({"F16"}): "f16"}.get(frozenset(dtypes), "f32")


@contextlib.contextmanager
def _as_gguf(model: str | os.PathLike[str], scratch: Path, threads: int | None) -> Iterator[Path]:
    """A GGUF for ``model``: the file itself, or a checkpoint folder converted losslessly into ``scratch``
    (removed afterwards)."""
    p = Path(model)
    if p.is_file():
        yield p
        return
    # prepare + write_gguf, not l1quant.convert: convert's --calibration calls into this module
    from l1quant.conversion.prepare import prepare, resolve_source
    from l1quant.conversion.write import WriteOptions, write_gguf

    folder = resolve_source(model)
    _check_model_folder(folder)
    typ = lossless_type(folder)
    with tempfile.TemporaryDirectory(prefix=".l1q-imatrix-", dir=scratch) as d:
        prep = prepare(folder, typ, Path(d) / f"source-{typ.upper()}.gguf")
        for warning in prep.warnings:
            log.warning(warning)
        write_gguf(prep.plan, prep.header, prep.output, WriteOptions(threads=threads),
                   create_folder=prep.create_folder)
        yield prep.output


#: The dataset name recorded for the bundled text (``imatrix.datasets``, then ``quantize.imatrix.dataset``).
BUNDLED_DATASET = "l1quant/data/calibration.txt"


def default_calibration_text() -> str:
    """The bundled calibration text (``l1quant/data/calibration.txt``, built by ``benchmarks/make_calibration.py``:
    math word problems with worked step-by-step solutions in L1's prompt and answer format, prose and code, all
    written for this project; ~67 k tokens with the Qwen tokenizer).

    Example:
        >>> "Think for 512 tokens." in default_calibration_text()
        True
    """
    from importlib import resources

    return resources.files("l1quant").joinpath("data").joinpath("calibration.txt").read_text(encoding="utf-8")


@contextlib.contextmanager
def _terminations_raise(collector: Collector) -> Iterator[None]:
    """SIGTERM/SIGHUP/SIGQUIT raise :class:`~l1quant.errors.Terminated` (as Ctrl-C raises KeyboardInterrupt) for
    the whole computation, so the temporary lossless GGUF is removed and nothing is written. During a decode the
    handler only records the signal (an exception raised inside ggml's callback could not be caught reliably):
    the collector then stops the graph and :func:`_run_chunks` raises after the decode. Main thread only."""
    import signal
    import threading

    from l1quant.errors import Terminated
    from l1quant.output import TERMINATING_SIGNALS

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        if collector.decoding:
            collector.signum = signum
            return
        raise Terminated(signum)

    old = {sig: signal.signal(sig, on_term) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, signal.SIG_DFL if h is None else h)


def _read_prompt(text: str | os.PathLike[str] | None) -> str:
    """``-f``: the file's text, one trailing newline dropped (common/arg.cpp); None: the bundled text, the same
    rule applied."""
    if text is None:
        s = default_calibration_text()
        return s.removesuffix("\n")
    raw = read_bytes(Path(text), InputError)
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{text}: not UTF-8 text (byte {e.start})") from None
    return s.removesuffix("\n")


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, as imatrix.cpp's ``log_softmax``: float32 max and ``expf``, the sum in double."""
    m = logits.max(axis=1)
    s = np.exp(logits - m[:, None]).sum(axis=1, dtype=np.float64)
    picked = logits[np.arange(len(targets)), targets] - m
    result: np.ndarray = -(picked.astype(np.float64) - np.log(s))
    return result


def imatrix(model: str | os.PathLike[str], text: str | os.PathLike[str] | None, output: str | os.PathLike[str], *,
            ctx_size: int = 512, chunks: int | None = None, batch_size: int = 2048, threads: int | None = None,
            output_format: str = "gguf", process_output: bool = False, no_ppl: bool = False,
            no_repack: bool = False, progress: bool = False,
            echo: Callable[[str], None] | None = None) -> ImatrixReport:
    """Compute an importance matrix as ``llama-imatrix -m MODEL -f TEXT -o OUTPUT`` does, and write it.

    ``model``: a GGUF, or a checkpoint folder (converted on the way to a temporary BF16/F16/F32 GGUF, whichever
    keeps its weights exact; :func:`lossless_type`). ``text``: UTF-8 calibration text; its path as given is the
    file's dataset name (None: the bundled text, :func:`default_calibration_text`, named
    :data:`BUNDLED_DATASET`). Parameters are llama-imatrix's flags: ``ctx_size`` (``-c``, tokens per chunk),
    ``chunks`` (``--chunks``, at most this many; default all), ``batch_size`` (``-b``: ``batch_size //
    ctx_size`` chunks per decode), ``threads`` (``-t``), ``output_format`` (``--output-format gguf|dat``),
    ``process_output`` (``--process-output``: also ``output.weight``), ``no_ppl`` (``--no-ppl``), ``no_repack``
    (``-nr``). ``progress``: a bar with an ETA on stderr; ``echo``: where the per-chunk PPL text goes (as
    llama-imatrix prints it on stdout; None: nowhere).

    Returns an :class:`ImatrixReport`. Raises :class:`~l1quant.errors.InputError` (one line) for an unknown
    output format, a model that is neither a GGUF nor a model folder, a text of fewer than ``2 * ctx_size``
    tokens; :class:`~l1quant.errors.RuntimeMissingError` without llama-cpp-python. ``output`` is written whole or
    not at all.

    Example:
        >>> imatrix("m-F16.gguf", "calib.txt", "m.imatrix.gguf", chunks=10).chunk_count  # doctest: +SKIP
        10
    """
    from l1quant.runtime import Model, extra_bufts, require

    t0 = time.monotonic()
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, found {output_format!r}")
    if ctx_size <= 0:
        raise InputError(f"--ctx-size must be > 0, found {ctx_size}")
    if batch_size <= 0:
        raise InputError(f"--batch-size must be > 0, found {batch_size}")
    if chunks is not None and chunks < 0:
        chunks = None  # llama-imatrix: a negative --chunks means all
    out = Path(output)
    if out.is_dir():
        raise InputError(f"{out}: is a folder (expected the imatrix file to write)")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder for the output")
    p = Path(model)
    if not p.exists():
        raise InputError(f"{p}: no such GGUF file or model folder")
    if p.is_dir():
        from l1quant.output import inside_folder

        if inside_folder(out, p):  # the input folder is only ever read
            raise InputError(f"{out}: refusing to write into the input folder {p}; pass -o elsewhere")
    if p.is_file() and _magic(p) != b"GGUF":
        raise InputError(f"{p}: not a GGUF file (expected a GGUF or a model folder)")
    if p.is_dir():
        _check_model_folder(p)  # a wrong input is named before a missing library (llama-cpp-python)
    prompt = _read_prompt(text)
    require("l1quant imatrix")
    if output_format == "gguf" and not out.name.endswith(".gguf"):
        log.warning("%s: saving a GGUF imatrix with a suffix other than .gguf (--output-format dat writes the "
                    "legacy format)", out)

    # llama-imatrix's main: n_seq chunks per decode, a context of n_seq * ctx tokens, each sequence its own cache
    n_seq = max(1, batch_size // ctx_size)
    n_kv = n_seq * ctx_size
    n_batch = min(batch_size, n_kv)
    collector = Collector(chunk_size=ctx_size, process_output=process_output,
                          threads=threads or os.cpu_count() or 1)
    with _terminations_raise(collector), _as_gguf(model, out.parent, threads) as gguf_path:
        m = Model(gguf_path, n_ctx=n_kv, n_threads=threads, n_batch=n_batch, n_ubatch=min(DEFAULT_UBATCH, n_batch),
                  flash_attn="auto", extra_bufts=extra_bufts(no_repack), cb_eval=collector, n_seq_max=n_seq)
        try:
            tokens = m.tokenize(prompt, add_bos=True, special=False)
            if len(tokens) < 2 * ctx_size:
                raise InputError(f"{text}: {len(tokens)} tokens; a context of {ctx_size} needs at least "
                                 f"{2 * ctx_size} (two chunks)")
            n_chunk_max = len(tokens) // ctx_size
            n_chunk = n_chunk_max if chunks is None else min(chunks, n_chunk_max)
            chunk_ppl, ppl, unc = _run_chunks(m, collector, tokens, ctx_size, n_chunk, n_seq, n_batch,
                                              not no_ppl, progress, echo)
        finally:
            m.close()
            collector.close()
    write_imatrix(out, collector.stats, datasets=[BUNDLED_DATASET if text is None else str(text)],
                  chunk_count=collector.last_chunk,
                  chunk_size=ctx_size, output_format=output_format)
    return ImatrixReport(out, output_format, collector.last_chunk, ctx_size, len(collector.stats), len(tokens),
                         tuple(chunk_ppl), ppl, unc, time.monotonic() - t0)


def _check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a model (a GGUF file, or a folder with config.json)")


def _magic(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(4)


def _run_chunks(m: Any, collector: Collector, tokens: list[int], n_ctx: int, n_chunk: int, n_seq: int,
                n_batch: int, compute_ppl: bool, progress: bool,
                echo: Callable[[str], None] | None) -> tuple[list[float], float | None, float | None]:
    """imatrix.cpp's ``compute_imatrix`` loop: the decodes, and the PPL of each chunk's second half."""
    num_batches = (n_ctx + n_batch - 1) // n_batch
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    chunk_ppl: list[float] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_chunk, unit="chunk", file=sys.stderr, dynamic_ncols=True, desc="imatrix")
    try:
        for i in range(0, n_chunk, n_seq):
            start = i * n_ctx
            n_seq_batch = min(n_seq, n_chunk - i)
            m.reset()
            kept: list[np.ndarray] = []
            for j in range(num_batches):
                batch_start = start + j * n_batch
                size = min(start + n_ctx - batch_start, n_batch)
                toks: list[int] = []
                pos: list[int] = []
                seq: list[int] = []
                for s in range(n_seq_batch):
                    s0 = batch_start + s * n_ctx
                    piece = tokens[s0:s0 + size]
                    if m.add_bos and j == 0:
                        piece = [m.bos, *piece[1:]]  # the chunk starts with BOS; the text keeps its token
                    toks += piece
                    pos += range(j * n_batch, j * n_batch + size)
                    seq += [s] * size
                collector._last = None  # the reuse of sums never reaches across decodes
                collector.decoding = True
                try:
                    logits = m.decode_batch(toks, pos, seq, [True] * len(toks))
                finally:
                    collector.decoding = False
                if collector.signum is not None:
                    from l1quant.errors import Terminated

                    raise Terminated(collector.signum)
                if collector.error is not None:
                    raise collector.error
                if compute_ppl:
                    kept.append(logits.copy() if num_batches > 1 else logits)
            if compute_ppl:
                all_logits = np.concatenate(kept) if num_batches > 1 else kept[0]
                parts = []
                for s in range(n_seq_batch):
                    rows = all_logits[s * n_ctx + first: s * n_ctx + n_ctx - 1]
                    tgt = np.asarray(tokens[start + s * n_ctx + first + 1: start + s * n_ctx + n_ctx])
                    v = _log_softmax_nll(rows, tgt)
                    nll += float(v.sum())
                    nll2 += float((v * v).sum())
                    count += n_ctx - first - 1
                    chunk_ppl.append(math.exp(nll / count))
                    parts.append(f"[{i + s + 1}]{chunk_ppl[-1]:.4f},")
                if echo is not None:
                    echo("".join(parts))
            if bar is not None:
                bar.update(n_seq_batch)
                if chunk_ppl:
                    bar.set_postfix_str(f"PPL {chunk_ppl[-1]:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    if echo is not None:
        echo("\n")
    if not compute_ppl or count == 0:
        return chunk_ppl, None, None
    mean, mean2 = nll / count, nll2 / count
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    unc = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else None
    if echo is not None:
        echo(f"Final estimate: PPL = {ppl:.4f} +/- {unc:.5f}\n" if unc is not None
             else "Unexpected negative standard deviation of log(prob)\n")
    return chunk_ppl, ppl, unc


# ------------------------------------------------------------------------------------- convert --calibration

#: Types an importance matrix does not change (llama-quantize ignores it for them): --calibration is refused.
_NO_IMATRIX_TYPES = frozenset({"auto", "f32", "f16", "bf16", "q8_0"})


def imatrix_path_for(output: Path) -> Path:
    """Where ``--calibration`` keeps the importance matrix: ``NAME.imatrix.gguf`` beside the output ``NAME.gguf``.

    Example:
        >>> imatrix_path_for(Path("out/L1-Qwen-1.5B-Max-Q4_K_M.gguf"))
        PosixPath('out/L1-Qwen-1.5B-Max-Q4_K_M.imatrix.gguf')
    """
    stem = output.name.removesuffix(".gguf")
    return output.with_name(f"{stem}.imatrix.gguf")


def calibration_imatrix(model: str | os.PathLike[str], calibration: str | os.PathLike[str] | bool,
                        output: Path, *, threads: int | None = None, no_repack: bool = False,
                        progress: bool = False) -> Path:
    """``--calibration [TEXT]`` of ``convert`` and ``quantize``: compute the importance matrix of ``model`` (a
    checkpoint folder, converted losslessly on the way, or an F32/F16/BF16 GGUF) over ``calibration`` (a text file,
    or True/"" for the bundled text) with llama-imatrix's defaults, into :func:`imatrix_path_for` ``output``
    (kept); return its path. Raises whatever :func:`imatrix` raises.

    Example:
        >>> calibration_imatrix("L1-Qwen-1.5B-Max", True, Path("L1-Q4_K_M.gguf"))  # doctest: +SKIP
        PosixPath('L1-Q4_K_M.imatrix.gguf')
    """
    # callers pass a text or True/"" (never False), so the bool test only narrows the type
    text = None if isinstance(calibration, bool) or calibration == "" else calibration
    kept = imatrix_path_for(output)
    kept.parent.mkdir(parents=True, exist_ok=True)  # an output folder the command creates anyway
    rep = imatrix(model, text, kept, threads=threads, no_repack=no_repack, progress=progress)
    log.info("importance matrix: %s (%d entries, %d chunks of %d tokens)", kept, rep.entries, rep.chunk_count,
             rep.chunk_size)
    return kept


def calibration_options(options: Any, output: Path | None, type: str) -> Any:
    """The quantization options of a ``--calibration`` run: ``options`` (a
    :class:`~l1quant.conversion.mixes.QuantOptions` or None) with ``imatrix`` = :func:`imatrix_path_for`
    ``output`` (``output`` None: only the checks, ``options`` returned as given). Checked before any work: raises
    :class:`~l1quant.errors.InputError` when ``type`` is one an importance matrix does not change
    (f32/f16/bf16/q8_0/auto), or when this build's convert/quantize take no importance matrix."""
    import dataclasses

    from l1quant.conversion.mixes import QuantOptions

    if type.lower() in _NO_IMATRIX_TYPES:
        raise InputError(f"--calibration: type {type.upper()} does not use an importance matrix (pick a K-quant or "
                         "4/5-bit type, e.g. q4_k_m)")
    if "imatrix" not in {f.name for f in dataclasses.fields(QuantOptions)}:
        raise InputError("--calibration: this build's convert/quantize cannot quantize with an importance matrix "
                         "(--imatrix)")
    if output is None:
        return options
    return dataclasses.replace(options or QuantOptions(), imatrix=str(imatrix_path_for(output)))

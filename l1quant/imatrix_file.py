"""Importance-matrix files, read as llama-quantize reads them: per weight, float32 per-column means.

Two formats (llama.cpp ``common/imatrix-loader.cpp``, ``tools/quantize/quantize.cpp``'s ``load_imatrix``):

* **GGUF** (llama-imatrix's default since mid-2025): keys ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32; llama-quantize refuses a GGUF imatrix without all
  three); per weight ``NAME.in_sum2`` (F32, ne0 x n_mat: raw sums of x²) and ``NAME.counts`` (F32, n_mat: rows
  seen, rounded to an integer as ``lround`` does). Mean of column i of matrix j = ``in_sum2[j, i] / count[j]``
  in float32; a matrix never activated (count 0) gets weights 1.
* **legacy .dat**: int32 entry count; per entry int32 name length, name, int32 ncall, int32 nval, float32[nval]
  (= mean x ncall); then, optionally, int32 chunk count, int32 length and the dataset name. Mean = value / ncall
  in float32 (the raw values when ncall <= 0). Later entries of the same name replace earlier ones.

llama-quantize tries GGUF first and falls back to the legacy parser; here a file starting with the GGUF magic is
read as GGUF (l1quant's hardened reader), anything else as legacy. Refused, with one line naming the file and the
entry: truncated or foreign files, missing GGUF metadata, unpaired or non-F32 sums/counts, non-finite means.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dat")
    >>> write_legacy_imatrix(path, {"blk.0.ffn_up.weight": np.array([0.5, 4.0], np.float32)}, ncall=10,
    ...                      chunk_count=10, dataset="calib.txt")
    >>> im = read_imatrix(path)
    >>> im.entries["blk.0.ffn_up.weight"].tolist(), im.chunk_count, im.datasets, im.legacy
    ([0.5, 4.0], 10, ('calib.txt',), True)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from l1quant.errors import InputError, L1QuantError, open_regular, read_bytes
from l1quant.gguf.reader import read_gguf

__all__ = ["Imatrix", "ImatrixFileError", "read_imatrix", "write_legacy_imatrix"]

SUM2_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
#: The largest legacy file read whole (a 70B model's imatrix is ~10 MB).
MAX_LEGACY_BYTES = 1 << 30


class ImatrixFileError(InputError):
    """An importance-matrix file is truncated, foreign, inconsistent or holds non-finite values."""


@dataclass(frozen=True)
class Imatrix:
    """A loaded importance matrix: per weight name, the float32 per-column means llama-quantize hands to
    ``ggml_quantize_chunk`` (shape (ne0 * n_mat,): ne0 columns per matrix, n_mat experts or 1).

    Example:
        >>> Imatrix({}, (), 0, 0, legacy=True).names
        []
    """

    entries: dict[str, np.ndarray]
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int  # 0 for legacy files
    legacy: bool

    @property
    def names(self) -> list[str]:
        """Entry names, sorted."""
        return sorted(self.entries)

    def weights_for(self, name: str, ne0: int, n_mat: int = 1) -> np.ndarray | None:
        """The importance weights llama-quantize passes when quantizing tensor ``name`` (rows of ``ne0`` values,
        ``n_mat`` experts): float32 (n_mat, ne0), row j for expert j's rows; None when the file has no entry
        (llama-quantize then logs and quantizes without). An entry of another size is refused, naming the tensor
        (an imatrix for another model), except for the token embeddings, which llama-quantize quantizes without
        one then (``llama_model_quantize_impl``).

        Example:
            >>> im = Imatrix({"blk.0.ffn_up.weight": np.ones(8, np.float32)}, (), 1, 512, legacy=False)
            >>> im.weights_for("blk.0.ffn_up.weight", 4, 2).shape, im.weights_for("output.weight", 4)
            ((2, 4), None)
        """
        e = self.entries.get(name)
        if e is None:
            return None
        if e.size != ne0 * n_mat:
            if name in ("token_embd.weight", "per_layer_token_embd.weight"):
                return None
            raise ImatrixFileError(f"imatrix entry {name!r} has {e.size} values, the tensor needs {ne0 * n_mat} "
                                   f"({ne0} columns x {n_mat}): an importance matrix for another model?")
        return e.reshape(n_mat, ne0)


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF or legacy .dat importance matrix as llama-quantize does (see the module docstring).

    Raises ImatrixFileError (one line naming the file and what is wrong) for a file it cannot use.

    Example:
        >>> read_imatrix("/dev/null")
        Traceback (most recent call last):
        ...
        l1quant.imatrix_file.ImatrixFileError: /dev/null: not a regular file (a character device)
    """
    p = Path(path)
    fd = open_regular(p, ImatrixFileError)  # a FIFO, device or folder is refused before a byte is read
    try:
        magic = os.read(fd, 4)
    except OSError as e:
        raise ImatrixFileError(f"{p}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if magic == b"GGUF":
        return _read_gguf(p)
    return _read_legacy(p, read_bytes(p, ImatrixFileError, max_bytes=MAX_LEGACY_BYTES))


def _read_gguf(p: Path) -> Imatrix:
    try:
        gf = read_gguf(p)
    except L1QuantError as e:  # the reader's one line already names the file and the field
        raise ImatrixFileError(str(e)) from e
    if not gf.tensors:
        raise ImatrixFileError(f"{p}: no data (a GGUF file without tensors)")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in gf.kv]
    if missing:
        raise ImatrixFileError(f"{p}: missing imatrix metadata (no {', '.join(missing)}): not an imatrix file?")
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if gf.kv_types[key] != GGUFValueType.UINT32:
            raise ImatrixFileError(f"{p}: {key} must be a u32, found {gf.kv_types[key]}")
    datasets: tuple[str, ...] = ()
    if gf.kv_types[KEY_DATASETS] == (GGUFValueType.ARRAY, GGUFValueType.STRING):
        datasets = tuple(str(s) for s in gf.kv[KEY_DATASETS])
    pairs: dict[str, list] = {}
    for t in gf.tensors:
        for suffix, slot in ((SUM2_SUFFIX, 0), (COUNTS_SUFFIX, 1)):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
    entries: dict[str, np.ndarray] = {}
    for name in sorted(pairs):
        sums_t, counts_t = pairs[name]
        if sums_t is None or counts_t is None:
            raise ImatrixFileError(f"{p}: {name!r} has {'no' if sums_t is None else 'a'} {SUM2_SUFFIX} and "
                                   f"{'no' if counts_t is None else 'a'} {COUNTS_SUFFIX} tensor (expected both)")
        for t in (sums_t, counts_t):
            if t.ggml_type != GGMLQuantizationType.F32:
                raise ImatrixFileError(f"{p}: tensor {t.name!r} must be F32, found {t.ggml_type.name}")
        sums = np.frombuffer(gf.read_tensor_bytes(sums_t), dtype="<f4").astype(np.float32)
        counts_f = np.frombuffer(gf.read_tensor_bytes(counts_t), dtype="<f4").astype(np.float64)
        if not np.isfinite(counts_f).all():
            raise ImatrixFileError(f"{p}: tensor {counts_t.name!r} holds non-finite counts")
        # std::lround: half away from zero, to int64; then (float) of that integer
        counts = (np.sign(counts_f) * np.floor(np.abs(counts_f) + 0.5)).astype(np.int64)
        ne0 = sums.size // counts.size
        means = np.zeros(sums.size, np.float32)
        for j, c in enumerate(counts.tolist()):
            seg = slice(j * ne0, (j + 1) * ne0)
            means[seg] = sums[seg] / np.float32(c) if c > 0 else np.float32(1.0)
        entries[name] = _finite(means, p, name)
    return Imatrix(entries, datasets, int(gf.kv[KEY_CHUNK_COUNT]), int(gf.kv[KEY_CHUNK_SIZE]), legacy=False)


def _read_legacy(p: Path, data: bytes) -> Imatrix:
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ImatrixFileError(f"{p}: truncated or not an imatrix file: {what} needs {n} bytes at offset {pos}, "
                                   f"{len(data) - pos} left")
        b = data[pos : pos + n]
        pos += n
        return b

    def i32(what: str) -> int:
        return int(struct.unpack("<i", take(4, what))[0])

    n_entries = i32("the entry count")
    if n_entries < 1:
        raise ImatrixFileError(f"{p}: no data (entry count {n_entries}): not an imatrix file?")
    # each entry takes at least 12 bytes (3 int32): a count beyond that is a foreign file, not a loop to run
    if n_entries > (len(data) - 4) // 12:
        raise ImatrixFileError(f"{p}: entry count {n_entries} does not fit in {len(data)} bytes: not an imatrix file?")
    raw: dict[str, tuple[np.ndarray, int]] = {}
    for i in range(n_entries):
        n = i32(f"entry {i + 1}'s name length")
        name = take(n, f"entry {i + 1}'s name").split(b"\0", 1)[0].decode("utf-8", "replace")
        ncall = i32(f"entry {name!r}'s call count")
        nval = i32(f"entry {name!r}'s value count")
        if nval < 1:
            raise ImatrixFileError(f"{p}: entry {name!r} has {nval} values (expected at least 1)")
        vals = np.frombuffer(take(4 * nval, f"entry {name!r}'s {nval} values"), dtype="<f4").astype(np.float32)
        raw[name] = (vals, ncall)
    chunk_count = 0
    datasets: tuple[str, ...] = ()
    if pos < len(data):  # optional trailer: chunk count, then the dataset name
        rest = data[pos : pos + 4]
        chunk_count = int(struct.unpack("<i", rest.ljust(4, b"\0"))[0])  # a short read keeps the bytes it got
        pos += 4
        if pos + 4 <= len(data):
            n = int(struct.unpack("<i", data[pos : pos + 4])[0])
            pos += 4
            if 0 < n <= len(data) - pos:
                datasets = (data[pos : pos + n].split(b"\0", 1)[0].decode("utf-8", "replace"),)
    entries = {}
    for name, (vals, ncall) in sorted(raw.items()):
        means = vals / np.float32(ncall) if ncall > 0 else vals.copy()
        entries[name] = _finite(means.astype(np.float32), p, name)
    return Imatrix(entries, datasets, chunk_count, 0, legacy=True)


def _finite(means: np.ndarray, p: Path, name: str) -> np.ndarray:
    ok = np.isfinite(means)
    if not ok.all():
        i = int(np.argmin(ok))
        raise ImatrixFileError(f"{p}: entry {name!r}: column {i} is {means[i]} (importance weights must be finite)")
    return means


def write_legacy_imatrix(path: str | os.PathLike[str], means: Mapping[str, np.ndarray], *, ncall: int = 1,
                         chunk_count: int | None = None, dataset: str | None = None) -> None:
    """Write per-column ``means`` in the legacy .dat layout (values stored as mean x ncall, as llama-imatrix does).

    For tests and conversions; ``chunk_count``/``dataset`` write the optional trailer (dataset needs a count).

    Example:
        >>> import tempfile
        >>> write_legacy_imatrix(os.path.join(tempfile.mkdtemp(), "x.dat"), {"w": np.ones(4, np.float32)})
    """
    parts = [struct.pack("<i", len(means))]
    for name, m in means.items():
        b = name.encode()
        vals = (np.asarray(m, np.float32) * np.float32(ncall)).astype("<f4")
        parts += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, vals.size), vals.tobytes()]
    if chunk_count is not None:
        parts.append(struct.pack("<i", chunk_count))
        if dataset is not None:
            d = dataset.encode()
            parts += [struct.pack("<i", len(d)), d]
    Path(path).write_bytes(b"".join(parts))


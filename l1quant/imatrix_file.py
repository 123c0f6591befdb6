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
:func:`write_imatrix` writes both formats as llama-imatrix saves them.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dat")
    >>> sums = np.array([512.0, 4096.0], np.float32)                  # sum of x² per column over 1024 rows
    >>> write_imatrix(path, {"blk.0.ffn_up.weight": (sums, np.array([1024]))}, datasets=["calib.txt"],
    ...               chunk_count=2, chunk_size=512, output_format="dat")
    >>> im = read_imatrix(path)
    >>> im.entries["blk.0.ffn_up.weight"].tolist(), im.chunk_count, im.datasets, im.legacy
    ([0.5, 4.0], 2, ('calib.txt',), True)
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from l1quant.errors import InputError, L1QuantError, open_regular, read_bytes
from l1quant.gguf.reader import TensorInfo, read_gguf

__all__ = ["Imatrix", "ImatrixFileError", "ImatrixStats", "describe_imatrix", "format_imatrix", "is_imatrix_file",
           "quantize_keys", "read_imatrix", "write_imatrix"]

SUM2_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
GGUF_ALIGNMENT = 32  # ggml's default (llama-imatrix does not set general.alignment)
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

    def select(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Imatrix:
        """The entries llama-quantize keeps with ``--exclude-weights`` / ``--include-weights`` (``prepare_imatrix``):
        first drop every entry whose name contains any ``exclude`` string, then, if ``include`` is given, keep only
        those containing one of them (plain substrings, not patterns). The result may be empty: llama-quantize then
        quantizes without an importance matrix and writes none of its keys.

        Example:
            >>> im = Imatrix({n: np.ones(1, np.float32) for n in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight")},
            ...              (), 1, 512, legacy=False)
            >>> im.select(exclude=["attn"]).names, im.select(include=["ffn", "q.w"]).names
            (['blk.0.ffn_up.weight'], ['blk.0.attn_q.weight', 'blk.0.ffn_up.weight'])
        """
        kept = {n: v for n, v in self.entries.items() if not any(x in n for x in exclude)}
        if include:
            kept = {n: v for n, v in kept.items() if any(x in n for x in include)}
        return Imatrix(kept, self.datasets, self.chunk_count, self.chunk_size, self.legacy)

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
    pairs: dict[str, list[TensorInfo | None]] = {}
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


def is_imatrix_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` reads as an importance matrix: a GGUF with ``general.type = "imatrix"``, or a file that is
    not GGUF and parses as a legacy .dat. False for anything else (a model GGUF, a broken file), never raises.

    Example:
        >>> is_imatrix_file("/dev/null")
        False
    """
    try:
        fd = open_regular(Path(path), ImatrixFileError)
        try:
            magic = os.read(fd, 4)
        finally:
            os.close(fd)
        if magic == b"GGUF":
            return read_gguf(path).kv.get("general.type") == "imatrix"
        read_imatrix(path)
        return True
    except (L1QuantError, OSError):
        return False


def describe_imatrix(path: str | os.PathLike[str], im: Imatrix | None = None) -> dict[str, object]:
    """A JSON-ready summary of an importance-matrix file: format, chunks (and chunk size), datasets, entries with
    their column count and matrices, and the columns never activated (mean x² exactly 0: inputs that were zero
    on every row seen; llama-quantize gives them no weight). Raises :class:`ImatrixFileError` as
    :func:`read_imatrix` does.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "m.dat")
        >>> write_imatrix(path, {"blk.0.ffn_up.weight": (np.array([0.0, 8.0], np.float32), np.array([4]))},
        ...               datasets=["calib.txt"], chunk_count=2, chunk_size=512, output_format="dat")
        >>> d = describe_imatrix(path)
        >>> d["format"], d["n_entries"], d["chunk_count"], d["datasets"], d["never_activated"]
        ('dat', 1, 2, ['calib.txt'], 1)
    """
    im = im or read_imatrix(path)
    rows: list[dict[str, Any]] = []
    for name in im.names:
        e = im.entries[name]
        rows.append({"name": name, "n_values": int(e.size), "never_activated": int(np.count_nonzero(e == 0)),
                     "min": float(e.min()), "max": float(e.max())})
    return {"file": str(path), "format": "dat" if im.legacy else "gguf", "n_entries": len(rows),
            "chunk_count": im.chunk_count, "chunk_size": im.chunk_size, "datasets": list(im.datasets),
            "never_activated": sum(r["never_activated"] for r in rows), "entries": rows}


def format_imatrix(d: dict[str, object], limit: int = 8) -> str:
    """Human-readable text for :func:`describe_imatrix` (the first ``limit`` entries, then a count).

    Example:
        >>> print(format_imatrix({"file": "m.dat", "format": "dat", "n_entries": 0, "chunk_count": 2,
        ...                       "chunk_size": 0, "datasets": [], "never_activated": 0, "entries": []}))
        file:            m.dat
        format:          importance matrix (legacy .dat)
        entries:         0
        chunks:          2
        datasets:        (none)
        never activated: 0 columns
    """
    chunks = f"{d['chunk_count']}" + (f" of {d['chunk_size']} tokens" if d["chunk_size"] else "")
    datasets = d["datasets"]
    assert isinstance(datasets, list)
    lines = [f"file:            {d['file']}",
             f"format:          importance matrix ({'legacy .dat' if d['format'] == 'dat' else 'GGUF'})",
             f"entries:         {d['n_entries']}",
             f"chunks:          {chunks}",
             f"datasets:        {', '.join(datasets) if datasets else '(none)'}",
             f"never activated: {d['never_activated']} columns"]
    entries = d["entries"]
    assert isinstance(entries, list)
    for r in entries[:limit]:
        lines.append(f"  {r['name']:<40} {r['n_values']:>8} values  never activated {r['never_activated']:>6}  "
                     f"mean x² {r['min']:.4g} .. {r['max']:.4g}")
    if len(entries) > limit:
        lines.append(f"  ... {len(entries) - limit} more entries")
    return "\n".join(lines)


#: The keys llama-quantize adds to a file quantized with an importance matrix (tools/quantize/quantize.cpp); a
#: file holding any key of this prefix was quantized with one.
IMATRIX_KEY_PREFIX = "quantize.imatrix."
KEY_QUANTIZE_FILE = "quantize.imatrix.file"
KEY_QUANTIZE_DATASET = "quantize.imatrix.dataset"
KEY_QUANTIZE_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_QUANTIZE_N_CHUNKS = "quantize.imatrix.chunks_count"
#: llama-quantize copies the strings into a 128-byte override field: at most 127 bytes survive.
_OVERRIDE_STR_BYTES = 127


def quantize_keys(
    imatrix: Imatrix, file_arg: str, n_entries: int | None = None
) -> list[tuple[str, GGUFValueType, str | bytes | int]]:
    """The ``quantize.imatrix.*`` key/values llama-quantize writes when quantizing with ``imatrix``, in its order:
    ``file`` (``file_arg``, the path exactly as given on the command line), ``dataset`` (the first dataset; absent
    without one), ``entries_count`` (``n_entries``: the entries left after --include-weights/--exclude-weights;
    default all), ``chunks_count`` (absent when the file says 0). Strings are cut to their first 127 bytes (a str,
    or bytes where the cut splits a UTF-8 character); counts are u32 (llama.cpp PR #14182).

    Example:
        >>> im = Imatrix({"w": np.ones(2, np.float32)}, ("calib.txt",), 10, 512, legacy=False)
        >>> [(k, v) for k, _, v in quantize_keys(im, "L1.imatrix.gguf")]   # doctest: +NORMALIZE_WHITESPACE
        [('quantize.imatrix.file', 'L1.imatrix.gguf'), ('quantize.imatrix.dataset', 'calib.txt'),
         ('quantize.imatrix.entries_count', 1), ('quantize.imatrix.chunks_count', 10)]
    """

    def cut(text: str) -> str | bytes:
        b = text.encode()[:_OVERRIDE_STR_BYTES]
        try:
            return b.decode()
        except UnicodeDecodeError:
            return b

    keys: list[tuple[str, GGUFValueType, str | bytes | int]] = [
        (KEY_QUANTIZE_FILE, GGUFValueType.STRING, cut(file_arg))]
    if imatrix.datasets:
        keys.append((KEY_QUANTIZE_DATASET, GGUFValueType.STRING, cut(imatrix.datasets[0])))
    n = len(imatrix.entries) if n_entries is None else n_entries
    keys.append((KEY_QUANTIZE_N_ENTRIES, GGUFValueType.UINT32, abs(n) & 0xFFFFFFFF))
    if imatrix.chunk_count > 0:
        keys.append((KEY_QUANTIZE_N_CHUNKS, GGUFValueType.UINT32, imatrix.chunk_count & 0xFFFFFFFF))
    return keys


#: Per weight name: (raw sums of x² per column, float32 (n_mat * ne0,); rows seen per matrix, int64 (n_mat,)), the
#: statistics llama-imatrix collects (its ``Stats``: ``values`` and ``counts``).
ImatrixStats = Mapping[str, tuple[np.ndarray, np.ndarray]]


def write_imatrix(path: str | os.PathLike[str], stats: ImatrixStats, *, datasets: Sequence[str], chunk_count: int,
                  chunk_size: int, output_format: str = "gguf") -> None:
    """Write collected statistics as llama-imatrix saves them (``IMatrixCollector::save_imatrix`` /
    ``save_imatrix_legacy``), byte for byte.

    ``stats``: see :data:`ImatrixStats`; ``datasets``: the dataset names (GGUF: all of them; .dat: the last one);
    ``chunk_count``: chunks processed; ``chunk_size``: tokens per chunk (ctx / n_parallel). ``output_format``:
    "gguf" -- keys ``general.type``, ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``, then
    per name in sorted order ``NAME.in_sum2`` (F32 [ne0, n_mat]) and ``NAME.counts`` (F32 [1, n_mat]), ggml's
    32-byte alignment; or "dat" -- entries with at least one non-zero count, sorted, each with ncall =
    ceil(max count / chunk_size) and values (sum / count) * ncall (1 * ncall for an unused matrix), then the chunk
    count and the dataset name. Written to a temporary file beside ``path`` and renamed over it.

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.gguf")
        >>> write_imatrix(p, {"blk.0.ffn_up.weight": (np.array([8.0, 2.0], np.float32), np.array([4]))},
        ...               datasets=["calib.txt"], chunk_count=1, chunk_size=512)
        >>> read_imatrix(p).entries["blk.0.ffn_up.weight"].tolist()
        [2.0, 0.5]
    """
    if output_format not in ("gguf", "dat"):
        raise ValueError(f"output_format must be 'gguf' or 'dat', found {output_format!r}")
    data = (_gguf_bytes(stats, datasets, chunk_count, chunk_size) if output_format == "gguf"
            else _dat_bytes(stats, datasets, chunk_count, chunk_size))
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp creates 0600; llama-imatrix's file is an ordinary one (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _checked(name: str, values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if c.size and v.size % c.size:
        raise ValueError(f"imatrix entry {name!r}: {v.size} values do not split into {c.size} matrices")
    return v, c


def _gguf_bytes(stats: ImatrixStats, datasets: Sequence[str], chunk_count: int, chunk_size: int) -> bytes:
    def string(t: str) -> bytes:
        b = t.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [
        string("general.type") + struct.pack("<I", int(GGUFValueType.STRING)) + string("imatrix"),
        string(KEY_DATASETS) + struct.pack("<IIQ", int(GGUFValueType.ARRAY), int(GGUFValueType.STRING), len(datasets))
        + b"".join(string(d) for d in datasets),
        string(KEY_CHUNK_COUNT) + struct.pack("<II", int(GGUFValueType.UINT32), chunk_count),
        string(KEY_CHUNK_SIZE) + struct.pack("<II", int(GGUFValueType.UINT32), chunk_size),
    ]
    tensors: list[tuple[str, tuple[int, int], bytes]] = []
    for name in sorted(stats):
        v, c = _checked(name, *stats[name])
        if v.size == 0 or c.size == 0:
            continue  # llama-imatrix writes only entries with values and counts
        tensors.append((name + SUM2_SUFFIX, (v.size // c.size, c.size), v.astype("<f4").tobytes()))
        tensors.append((name + COUNTS_SUFFIX, (1, c.size), c.astype(np.float32).astype("<f4").tobytes()))
    infos, blobs, offset = [], [], 0
    for tname, (ne0, ne1), blob in tensors:
        dims = (ne0,) if ne1 == 1 else (ne0, ne1)  # ggml_n_dims: trailing 1s dropped (at least one dim)
        infos.append(string(tname) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<q", d) for d in dims)
                     + struct.pack("<iQ", int(GGMLQuantizationType.F32), offset))
        padded = blob + b"\0" * (-len(blob) % GGUF_ALIGNMENT)
        blobs.append(padded)
        offset += len(padded)
    head = b"GGUF" + struct.pack("<Iqq", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % GGUF_ALIGNMENT)
    return head + b"".join(blobs)


def _dat_bytes(stats: ImatrixStats, datasets: Sequence[str], chunk_count: int, chunk_size: int) -> bytes:
    body = []
    n_entries = 0
    for name in sorted(stats):
        v, c = _checked(name, *stats[name])
        if c.size == 0 or not c.any():
            continue  # no data at all: llama-imatrix skips the entry
        n_entries += 1
        b = name.encode()
        # ceiling division, so that a matrix seen in part of one chunk still counts one call
        ncall = int(np.int32((int(c.max()) + (chunk_size - 1)) // chunk_size))
        out = np.empty(v.size, np.float32)
        if v.size:
            per = v.size // c.size
            count = np.repeat(c.astype(np.float32), per)
            unused = count == 0
            value = np.where(unused, np.float32(1), v)
            count = np.where(unused, np.float32(1), count)
            out = (value / count) * np.float32(ncall)
        body += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, v.size), out.astype("<f4").tobytes()]
    dataset = (datasets[-1] if datasets else "").encode()
    return (struct.pack("<i", n_entries) + b"".join(body) + struct.pack("<i", chunk_count)
            + struct.pack("<i", len(dataset)) + dataset)

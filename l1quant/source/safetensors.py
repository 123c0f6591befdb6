"""A hardened, torch-free safetensors reader that streams tensors in row chunks.

Why not the ``safetensors`` package: ``safe_open(..., framework="numpy")`` cannot return bf16 tensors (numpy has
no bfloat16, and L1 is bf16), and it memory-maps whole files, so every page a conversion touches stays resident
and counts against RSS. This reader parses the JSON header with explicit bounds, then reads row ranges with
``os.preadv`` into caller-owned buffers: memory stays flat whatever the model size, and bf16 comes back as raw
``uint16`` bits for :mod:`l1quant.kernels` to decode exactly.

Example:
    >>> ckpt = open_checkpoint("L1-Qwen-1.5B-Max")            # doctest: +SKIP
    >>> t = ckpt.tensors["model.embed_tokens.weight"]         # doctest: +SKIP
    >>> t.dtype, t.shape                                      # doctest: +SKIP
    ('BF16', (151936, 1536))
    >>> rows = t.read_rows(0, 8)  # a uint16 array of shape (8, 1536)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1quant.errors import SafetensorsError, TensorError, clip, open_regular, read_text

#: safetensors dtype -> (item size, numpy dtype used to hold the raw values). bf16 is kept as raw uint16 bits.
DTYPES: dict[str, tuple[int, np.dtype[Any]]] = {
    "BF16": (2, np.dtype(np.uint16)),
    "F16": (2, np.dtype(np.float16)),
    "F32": (4, np.dtype(np.float32)),
    "F64": (8, np.dtype(np.float64)),
    "I8": (1, np.dtype(np.int8)),
    "U8": (1, np.dtype(np.uint8)),
    "BOOL": (1, np.dtype(np.bool_)),
    "I16": (2, np.dtype(np.int16)),
    "U16": (2, np.dtype(np.uint16)),
    "I32": (4, np.dtype(np.int32)),
    "U32": (4, np.dtype(np.uint32)),
    "I64": (8, np.dtype(np.int64)),
    "U64": (8, np.dtype(np.uint64)),
    "F8_E4M3": (1, np.dtype(np.uint8)),
    "F8_E5M2": (1, np.dtype(np.uint8)),
}
#: The float dtypes a conversion can read as weights.
FLOAT_DTYPES = ("BF16", "F16", "F32")

#: The safetensors format caps the JSON header at 100 MB; a larger length is a corrupt or hostile file.
MAX_HEADER_BYTES = 100_000_000
#: Most tensors one safetensors file (or one index) may list. The largest real checkpoints list ~1-3 k per shard
#: (DeepSeek-V3: 91 k tensors over 163 shards, Mixtral-8x22B 2.3 k in all); 100 k entries keep the parse under
#: ~1 s and ~150 MB, where a 100 MB header of 1 M tiny entries took 12 s and 890 MB before being refused. Counted
#: on the raw bytes (one ``{`` per entry) before the JSON is parsed.
MAX_TENSORS = 100_000
#: Longest tensor name: real ones are under 100 characters (``model.layers.61.mlp.experts.255.down_proj.weight``).
#: The bound keeps every number parsed out of a name (the layer index) far below Python's 4300-digit int limit.
MAX_NAME_CHARS = 1024
MAX_DIMS = 8
#: No real tensor comes near 256 TiB; the bound keeps every shape product inside numpy's int64 arithmetic.
MAX_TENSOR_BYTES = 1 << 48


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice would let one entry silently hide another, so refuse it."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


class View2D:
    """The 2-D view every tensor source is read through: all leading dimensions flattened into rows, the last one
    the row length (a 1-D tensor is one row). Shared by :class:`SafeTensor` and the planned sources built on it."""

    shape: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def n_cols(self) -> int:
        return self.shape[-1] if self.shape else 1


@dataclass(frozen=True)
class SafeTensor(View2D):
    """One tensor inside a safetensors file: where its bytes are and how to read them in row chunks.

    Example:
        >>> t.read_rows(0, 2).shape  # doctest: +SKIP
        (2, 1536)
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return DTYPES[self.dtype][1]

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None, *, fd: int | None = None) -> np.ndarray:
        """Read rows ``[start, stop)`` of the 2-D view into ``out`` (or a new array) with one ``preadv``.

        ``fd``, when given, is an open read-only descriptor of ``self.path`` that the caller keeps open across many
        calls (the converter reads thousands of chunks; one open/close each is measurable); it is not closed here.

        Example:
            >>> t.read_rows(0, 4).dtype  # doctest: +SKIP
            dtype('uint16')
        """
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"{self.name}: rows [{start}, {stop}) outside [0, {self.n_rows})")
        n = (stop - start) * self.n_cols
        if out is None:
            out = np.empty((stop - start, self.n_cols), dtype=self.np_dtype)
        elif out.size != n or out.dtype != self.np_dtype or not out.flags.c_contiguous:
            raise ValueError(f"{self.name}: output buffer does not fit rows [{start}, {stop})")
        want = n * self.itemsize
        pos = self.offset + start * self.n_cols * self.itemsize
        own = fd is None
        if fd is None:
            fd = open_weights(self.path)
        try:
            view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # ndarray is a buffer
            got = 0
            while got < want:  # preadv may return short counts; loop until done or EOF
                try:
                    r = os.preadv(fd, [view[got:]], pos + got)
                except OSError as e:  # input-side (EIO...): must not be reported as an output write error
                    raise SafetensorsError(
                        f"{self.path}: cannot read tensor {self.name!r}: {e.strerror or e}") from e
                if r <= 0:
                    raise SafetensorsError(
                        f"{self.path.name}: tensor {self.name!r} is truncated: wanted {want} bytes at {pos}, "
                        f"file ends after {got}")
                got += r
        finally:
            if own:
                os.close(fd)
        return out

    def read(self) -> np.ndarray:
        """The whole tensor in its source shape (small tensors only: norms, biases, tests)."""
        return self.read_rows(0, self.n_rows).reshape(self.shape)


def open_weights(path: Path) -> int:
    """A read-only descriptor of a weights file for ``pread``, refusing anything but a regular file.

    The header was read earlier; if the file has since been swapped for a FIFO (or a device), a plain ``open``
    would block forever -- and a worker thread stuck in it cannot be interrupted. ``open_regular`` opens with
    ``O_NONBLOCK`` and checks the type on the descriptor, so the swap is one clean error instead.
    """
    return open_regular(path, SafetensorsError)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, SafeTensor], dict[str, str]]:
    """Parse and validate one safetensors file's header; no tensor data is read.

    Returns ``(tensors by name in file order, __metadata__)``. Every length, offset and shape is checked before
    it is trusted: header length within the file and below 100 MB, valid JSON object, known dtypes, shapes of
    non-negative ints, ``data_offsets`` inside the data section, consistent with shape x dtype, not overlapping.

    Example:
        >>> tensors, meta = read_header("model.safetensors")  # doctest: +SKIP
    """
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block open() forever; a folder is not a file
            raise SafetensorsError(f"{p}: not a regular file")
        size = st.st_size
        with open(open_regular(p, SafetensorsError), "rb") as f:  # swapped for a FIFO since the stat: refused
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{p}: file too short for a safetensors header ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise SafetensorsError(
                    f"{p}: header length {n} is impossible for a {size}-byte file (truncated or not safetensors)")
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsError(f"{p}: cannot read: {e.strerror or e}") from e
    if len(raw) != n:  # the file shrank between stat and read
        raise SafetensorsError(f"{p}: header truncated while reading ({len(raw)} of {n} bytes)")
    if raw.count(b"{") > MAX_TENSORS + 2:  # each tensor entry is one object; + the header and __metadata__
        raise SafetensorsError(f"{p}: header lists more than {MAX_TENSORS} entries (corrupt or hostile file)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise SafetensorsError(f"{p}: header has the key {clip(e.args[0])} twice") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and int-digit limits are ValueErrors
        raise SafetensorsError(f"{p}: header is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise SafetensorsError(f"{p}: header is not valid JSON: nested too deeply") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{p}: header is not a JSON object")
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:
        raise SafetensorsError(f"{p}: header lists {len(header)} entries, more than {MAX_TENSORS}")
    data_start = 8 + n
    data_size = size - data_start
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or not all(isinstance(v, str) for v in meta_raw.values()):
        # the format says a str -> str map; anything else is a corrupt header, not something to str() blindly
        raise SafetensorsError(f"{p}: __metadata__ must map strings to strings, found {clip(meta_raw)}")
    meta = dict(meta_raw)
    tensors: dict[str, SafeTensor] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if len(name) > MAX_NAME_CHARS:
            raise SafetensorsError(f"{p}: tensor name {clip(name)} is {len(name)} characters long, more than "
                                   f"{MAX_NAME_CHARS}")
        where = f"{p.name}: tensor {clip(name)}"
        if not isinstance(info, dict):
            raise SafetensorsError(f"{where}: entry is not an object")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:  # a list/dict here is unhashable (found by fuzzing)
            raise SafetensorsError(f"{where}: unknown dtype {clip(dtype)} (known: {', '.join(DTYPES)})")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SafetensorsError(f"{where}: bad shape {clip(shape)} (expected a list of at most {MAX_DIMS} "
                                   f"non-negative integers)")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise SafetensorsError(f"{where}: bad data_offsets {clip(offs)} (expected [begin, end] integers)")
        begin, end = offs
        itemsize = DTYPES[dtype][0]
        if math.prod(max(d, 1) for d in shape) * itemsize > MAX_TENSOR_BYTES:
            # even with a zero dim making it empty: [2**40, 2**40, 0] breaks numpy's shape arithmetic (fuzzing)
            raise SafetensorsError(f"{where}: shape {clip(shape)} is impossibly large")
        expect = math.prod(shape) * itemsize
        if not 0 <= begin <= end <= data_size:
            raise SafetensorsError(
                f"{where}: data_offsets [{clip(begin, 24)}, {clip(end, 24)}] outside the {data_size}-byte data "
                f"section (truncated file?)")
        if end - begin != expect:
            raise SafetensorsError(
                f"{where}: data_offsets span {end - begin} bytes but shape {clip(shape)} x {dtype} needs "
                f"{clip(expect, 24)}")
        tensors[name] = SafeTensor(name, dtype, tuple(shape), p, data_start + begin, end - begin)
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_b0, e0, n0), (b1, _e1, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise SafetensorsError(
                f"{p.name}: tensors {clip(n0)} and {clip(n1)} overlap at byte {b1} of the data section")
    return tensors, meta


@dataclass
class Checkpoint:
    """All safetensors shards of a model folder, indexed by tensor name in the reference converter's order.

    The order is llama.cpp's: shards sorted by file name, tensors sorted by name within each shard.

    Example:
        >>> ckpt = open_checkpoint("model_dir")  # doctest: +SKIP
        >>> list(ckpt.tensors)[:2]                # doctest: +SKIP
        ['lm_head.weight', 'model.embed_tokens.weight']
    """

    model_dir: Path
    files: list[Path]
    tensors: dict[str, SafeTensor] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)


def _shard_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():  # a FIFO or device in its place is refused (read_text), never skipped or read forever
        text = read_text(index_path, SafetensorsError, MAX_HEADER_BYTES)  # an index is a few hundred KB
        try:
            index = json.loads(text)
        except ValueError as e:
            raise SafetensorsError(f"{index_path}: not valid JSON: {str(e)[:200]}") from None
        except RecursionError:
            raise SafetensorsError(f"{index_path}: not valid JSON: nested too deeply") from None
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if isinstance(wm, dict) and len(wm) > MAX_TENSORS:
            raise SafetensorsError(f"{index_path}: 'weight_map' lists {len(wm)} tensors, more than {MAX_TENSORS}")
        if isinstance(wm, dict) and (long := next((k for k in wm if len(k) > MAX_NAME_CHARS), None)) is not None:
            raise SafetensorsError(f"{index_path}: tensor name {clip(long)} is {len(long)} characters long, more "
                                   f"than {MAX_NAME_CHARS}")
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise SafetensorsError(f"{index_path}: missing or malformed 'weight_map' (expected tensor name -> "
                                   f"shard file name)")
        names = sorted(set(wm.values()))
        for nm in names:
            if not nm or Path(nm).name != nm or nm in (".", ".."):
                raise SafetensorsError(f"{index_path}: shard name {clip(nm)} is not a plain file name")
        missing = [nm for nm in names if not (model_dir / nm).is_file()]
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            users = sum(1 for v in wm.values() if v == missing[0])
            raise SafetensorsError(f"{index_path}: shard {clip(missing[0])} is missing ({users} tensors listed "
                                   f"in it){more}; incomplete download?")
        return [model_dir / nm for nm in names], {str(k): v for k, v in wm.items()}
    files = sorted(f for f in model_dir.iterdir() if f.name.startswith("model") and f.name.endswith(".safetensors"))
    if not files:
        raise SafetensorsError(f"{model_dir}: no model*.safetensors files (and no model.safetensors.index.json)")
    return files, None


def open_checkpoint(model_dir: str | os.PathLike[str]) -> Checkpoint:
    """Index every tensor of a model folder (single file or shards with an index) without reading tensor data.

    With an index, every shard it names must exist and every tensor must be in the shard the index says; a tensor
    in two shards is an error.

    Example:
        >>> open_checkpoint("tiny-qwen2").files  # doctest: +SKIP
        [PosixPath('tiny-qwen2/model.safetensors')]
    """
    d = Path(model_dir)
    files, weight_map = _shard_files(d)
    ck = Checkpoint(d, files)
    for f in files:
        tensors, meta = read_header(f)
        ck.metadata[f.name] = meta
        for name in sorted(tensors):
            if name in ck.tensors:
                raise SafetensorsError(
                    f"{f.name}: tensor {clip(name)} also appears in {ck.tensors[name].path.name}")
            ck.tensors[name] = tensors[name]
    if weight_map is not None:
        for name, shard in weight_map.items():
            t = ck.tensors.get(name)
            if t is None:
                raise SafetensorsError(f"model.safetensors.index.json: tensor {clip(name)} is not in {shard} "
                                       f"(nor in any other shard)")
            if t.path.name != shard:
                raise SafetensorsError(
                    f"model.safetensors.index.json: tensor {clip(name)} is in {t.path.name}, index says {shard}")
        extra = [n for n in ck.tensors if n not in weight_map]
        if extra:
            raise SafetensorsError(
                f"model.safetensors.index.json: tensor {clip(extra[0])} ({ck.tensors[extra[0]].path.name}) "
                f"is not listed in the index" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    return ck


def require_float(t: SafeTensor) -> None:
    """Refuse a weight whose dtype a conversion cannot read (only BF16, F16, F32 are weights)."""
    if t.dtype not in FLOAT_DTYPES:
        raise TensorError(f"{t.path.name}: tensor {t.name!r} has dtype {t.dtype}; expected one of BF16, F16, F32")

"""Split GGUF files, as llama.cpp's ``gguf-split`` writes them and its loader reads them.

Layout (``split_strategy`` in tools/gguf-split/gguf-split.cpp, ``llama_split_path`` in src/llama.cpp):

* part ``i`` of ``n`` is named ``{prefix}-{i+1:05d}-of-{n:05d}.gguf`` (``prefix``: the single file's path without
  ``.gguf``);
* every part holds ``split.no`` (u16, from 0), ``split.tensors.count`` (i32, the tensors of all parts) and
  ``split.count`` (u16), in that order; the first part holds every key of the single file before them, the
  others only these three;
* tensors keep the single file's order. With a tensor limit ``T``, a new part starts at every T-th tensor; with a
  size limit ``S`` (bytes, 1000-based ``M``/``G``), a new part starts at the tensor that would take the part's
  tensor data (each tensor padded to 32 bytes; the header not counted) over S. A part with no tensor is refused;
* each part is a whole GGUF: its own header, padding, and its tensors from offset 0 of its data section.

Example:
    >>> from l1quant.gguf.header import Header
    >>> h = Header()
    >>> h.add("general.architecture", "qwen2", gguf.GGUFValueType.STRING)
    >>> for name in "abc":
    ...     _ = h.add_tensor(name, (32,), gguf.GGMLQuantizationType.F32, 128)
    >>> parts = split_header(h, max_tensors=2)
    >>> [[t.name for t in p.tensors] for p in parts], list(parts[1].kv)
    ([['a', 'b'], ['c']], ['split.no', 'split.tensors.count', 'split.count'])
    >>> split_path("out/m-Q8_0.gguf", 0, 2)
    PosixPath('out/m-Q8_0-00001-of-00002.gguf')
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import gguf

from l1quant.errors import ConfigError, InputError, clip
from l1quant.gguf.header import Header, pad
from l1quant.gguf.reader import GGUFFile, read_gguf

__all__ = ["SPLIT_COUNT", "SPLIT_NO", "SPLIT_TENSORS_COUNT", "merged_view", "parse_split_size", "read_parts",
           "split_header", "split_path"]

#: llama.cpp's LLM_KV_SPLIT_NO, LLM_KV_SPLIT_COUNT, LLM_KV_SPLIT_TENSORS_COUNT
SPLIT_NO = "split.no"
SPLIT_COUNT = "split.count"
SPLIT_TENSORS_COUNT = "split.tensors.count"
_SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)
#: gguf-split pads each tensor to GGUF_DEFAULT_ALIGNMENT whatever the file's alignment
_ALIGN = gguf.GGUF_DEFAULT_ALIGNMENT
_PART_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_path(prefix: str | os.PathLike[str], split_no: int, split_count: int) -> Path:
    """The path of part ``split_no`` (from 0) of ``split_count``: ``llama_split_path``'s ``%s-%05d-of-%05d.gguf``.
    A ``prefix`` ending in ``.gguf`` (the single file's name) loses it first.

    Example:
        >>> split_path("m", 2, 3).name
        'm-00003-of-00003.gguf'
    """
    p = str(prefix)
    if p.endswith(".gguf"):
        p = p[:-5]
    return Path(f"{p}-{split_no + 1:05d}-of-{split_count:05d}.gguf")


def parse_split_size(text: str) -> int:
    """``--split-max-size``'s value in bytes: a positive integer with ``M`` (10^6) or ``G`` (10^9), as gguf-split.

    Raises ``ConfigError`` for anything else.

    Example:
        >>> parse_split_size("500M"), parse_split_size("2G")
        (500000000, 2000000000)
    """
    m = re.fullmatch(r"\s*(\d+)\s*([MG])\s*", str(text))
    if m is None or int(m.group(1)) <= 0:
        raise ConfigError(f"--split-max-size {text!r}: expected a positive number of M (megabytes) or G "
                          "(gigabytes), e.g. 2G or 500M")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


def split_header(header: Header, *, max_size: int | None = None, max_tensors: int | None = None) -> list[Header]:
    """The headers of the parts gguf-split writes for a file with ``header`` (see the module docstring).

    Exactly one of ``max_size`` (bytes of tensor data per part) and ``max_tensors`` must be given. Raises
    ``ConfigError`` when a part would hold no tensor (a tensor larger than ``max_size`` right at a part's start),
    as gguf-split refuses it ("one of splits have 0 tensors").
    """
    if (max_size is None) == (max_tensors is None):
        raise ConfigError("give one of --split-max-size and --split-max-tensors")
    if max_tensors is not None and max_tensors < 1:
        raise ConfigError(f"--split-max-tensors must be >= 1, found {max_tensors}")
    n = len(header.tensors)
    groups: list[list[int]] = [[]]
    size = 0
    for i, t in enumerate(header.tensors):
        nbytes = pad(t.nbytes, _ALIGN)
        if max_tensors is not None:
            new = 0 < i < n and i % max_tensors == 0
        else:
            assert max_size is not None
            new = size + nbytes > max_size
        if new:
            if not groups[-1]:
                raise ConfigError(f"--split-max-size {max_size} bytes: tensor {t.name} alone "
                                  f"({nbytes} bytes) is larger; a part would hold no tensor")
            groups.append([])
            size = nbytes
        else:
            size += nbytes
        groups[-1].append(i)
    parts = []
    for no, idx in enumerate(groups):
        h = Header(alignment=header.alignment if no == 0 else _ALIGN, version=header.version)
        if no == 0:
            h.kv = dict(header.kv)
            for key in _SPLIT_KEYS:  # gguf_set_val_*: an existing key is removed and appended
                h.kv.pop(key, None)
        h.add(SPLIT_NO, no, gguf.GGUFValueType.UINT16)
        # gguf-split sets split.count as a placeholder before split.tensors.count, then sets it again once the
        # number of parts is known: gguf_set_val_* erases and appends, so it ends up last
        h.add(SPLIT_TENSORS_COUNT, n, gguf.GGUFValueType.INT32)
        h.add(SPLIT_COUNT, len(groups), gguf.GGUFValueType.UINT16)
        for i in idx:
            t = header.tensors[i]
            h.add_tensor(t.name, t.dims, t.ggml_type, t.nbytes)
        parts.append(h)
    return parts


def read_parts(path: str | os.PathLike[str]) -> list[GGUFFile]:
    """The parsed parts of the GGUF at ``path``: ``[file]`` for a single file, every part (in order) when ``path``
    is the first part of a split, as llama.cpp's loader reads them (``llama_model_loader``).

    Raises :class:`~l1quant.errors.InputError` in one line for a part that is not the first (naming the first),
    a missing part, or parts that disagree (``split.no``, ``split.count``, the tensor total).

    Example:
        >>> [gf.path.name for gf in read_parts("m-00001-of-00002.gguf")]  # doctest: +SKIP
        ['m-00001-of-00002.gguf', 'm-00002-of-00002.gguf']
    """
    first = read_gguf(path)
    count = first.kv.get(SPLIT_COUNT)
    if count is None:
        return [first]
    no = first.kv.get(SPLIT_NO, 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"{first.path}: {SPLIT_COUNT} is {clip(count)}, expected a positive integer")
    if no != 0:
        m = _PART_NAME.match(first.path.name)
        hint = f"; pass the first part, {split_path(first.path.parent / m['prefix'], 0, count).name}" if m else \
            "; pass the first part"
        raise InputError(f"{first.path}: part {clip(no)} (from 0) of a {count}-part split GGUF{hint}")
    if count == 1:
        return [first]
    m = _PART_NAME.match(first.path.name)
    if m is None or int(m["no"]) != 1 or int(m["count"]) != count:
        raise InputError(f"{first.path}: part 1 of a {count}-part split GGUF, but not named "
                         f"PREFIX-00001-of-{count:05d}.gguf, so the other parts cannot be found; name the parts as "
                         "llama-gguf-split does, or merge them (llama-gguf-split --merge)")
    parts = [first]
    for i in range(1, count):
        p = split_path(first.path.parent / m["prefix"], i, count)
        if not p.exists():
            raise InputError(f"{p}: part {i + 1} of {count} of the split GGUF {first.path.name} is missing "
                             "(every part is read, as llama.cpp does)")
        gf = read_gguf(p)
        if gf.kv.get(SPLIT_NO) != i or gf.kv.get(SPLIT_COUNT) != count:
            raise InputError(f"{p}: expected {SPLIT_NO}={i} and {SPLIT_COUNT}={count}, found "
                             f"{clip(gf.kv.get(SPLIT_NO))} and {clip(gf.kv.get(SPLIT_COUNT))}")
        parts.append(gf)
    total = sum(len(gf.tensors) for gf in parts)
    expected = first.kv.get(SPLIT_TENSORS_COUNT)
    if expected is not None and expected != total:
        raise InputError(f"{first.path}: {SPLIT_TENSORS_COUNT} is {clip(expected)} but the {count} parts hold "
                         f"{total} tensors")
    return parts


def merged_view(parts: list[GGUFFile]) -> GGUFFile:
    """One :class:`GGUFFile` for header-level checks of a split: the first part's keys without ``split.*``, every
    part's tensor infos in order. Its tensors' offsets are each in its own part (``GGUFFile.file_of``), which its
    ``read_tensor_*`` methods follow.

    Example:
        >>> len(merged_view(read_parts("m-00001-of-00002.gguf")).tensors)  # doctest: +SKIP
        339
    """
    first = parts[0]
    if len(parts) == 1 and SPLIT_COUNT not in first.kv:
        return first
    kv = {k: v for k, v in first.kv.items() if k not in _SPLIT_KEYS}
    kv_types = {k: v for k, v in first.kv_types.items() if k not in _SPLIT_KEYS}
    return GGUFFile(first.path, first.version, first.alignment, kv, kv_types,
                    [t for gf in parts for t in gf.tensors], first.data_offset,
                    sum(gf.file_size for gf in parts),
                    tensor_files={t.name: gf.path for gf in parts for t in gf.tensors})

"""The IQ3 grid codebooks and the search tables ggml derives from them (``iq3xs_init_impl``), built once per process.

IQ3_XXS encodes each group of 4 magnitudes as an index into a 256-point grid, IQ3_S into a 512-point grid; each
point is 4 levels l in 0..7 (the quantizer works with the odd values 2l+1 = 1..15, the dequantizer with gguf's
``grid_map`` values). The quantizer rounds 4 values to levels, packs them as a 12-bit key ``sum(l_i << 3i)`` and
looks the key up:

* ``kmap`` (int32 (4096,)): the grid index of a key that is a grid point; for any other key ``-(offset + 1)``, where
  ``neighbours[offset]`` is the count n and ``neighbours[offset+1 : offset+1+n]`` the candidate grid indices.
* the candidates of an off-grid key are every grid point whose squared distance (in 2l+1 units) is one of the
  ``nwant`` smallest distinct distances (2 for the 256 grid, 3 for the 512 grid), ordered by (distance, index):
  ggml sorts (distance, index) pairs with a comparator that breaks ties by index, so the order does not depend on
  the sort algorithm. The search takes the first candidate of least weighted error, so this order matters.
* offsets follow the keys in increasing order, as ggml lays them out.

The grids come from gguf-py (``gguf.quants.IQ3_XXS`` / ``IQ3_S``: the dequantizer's codebooks); a point's levels are
the positions of its values in ``grid_map``. tests/test_iquants34.py proves the tables equal ggml's: the grid by
ggml's own dequantizer, the neighbour lists by re-deriving them with a separate per-key loop and by byte identity
of quantized output on inputs that hit every off-grid key.

Example:
    >>> t = iq3_tables(256)
    >>> t.grid.shape, int((t.kmap >= 0).sum()), int(t.kmap[0])
    ((256, 4), 256, 0)
    >>> int(t.neighbours[-int(t.kmap[1]) - 1]) > 0   # key 1 (levels 1,0,0,0) is off the grid: it has candidates
    True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import quants as gguf_quants

from l1quant.kernels.iq_grids import counted_lists, neighbour_lists

__all__ = ["IQ3Tables", "KMAP_SIZE", "iq3_tables", "lane_codes"]

KMAP_SIZE = 4096  # 8 levels ** 4 values


@dataclass(frozen=True)
class IQ3Tables:
    """One IQ3 grid and its search tables (read-only arrays).

    ``levels``: uint8 (n, 4), 0..7; ``grid``: int8 (n, 4) = 2*levels + 1 (what the searches compare with);
    ``keys``: int32 (n,) the 12-bit key of each point; ``kmap``: int32 (4096,); ``neighbours``: uint16, the flat
    lists (see the module docstring); ``padded``: int32 (4096, width) the candidates of each key, -1 padded (rows of
    grid keys are all -1), for the vectorised search.
    """

    size: int
    levels: np.ndarray
    grid: np.ndarray
    keys: np.ndarray
    kmap: np.ndarray
    neighbours: np.ndarray
    padded: np.ndarray


def grid_levels(size: int) -> np.ndarray:
    """The levels (uint8 (size, 4), 0..7) of gguf-py's IQ3 grid of ``size`` points (256: IQ3_XXS, 512: IQ3_S).

    Example:
        >>> grid_levels(512)[:2].tolist()
        [[0, 0, 0, 0], [1, 0, 0, 0]]
    """
    # Any: gguf-py's grid classes are unannotated (init_grid has no hints)
    cls: Any = {256: gguf_quants.IQ3_XXS, 512: gguf_quants.IQ3_S}.get(size)
    if cls is None:
        raise ValueError(f"IQ3 grids have 256 or 512 points, not {size}")
    cls.init_grid()
    assert cls.grid is not None
    values = np.asarray(cls.grid, dtype=np.float32).reshape(size, 4)
    grid_map = np.asarray(cls.grid_map, dtype=np.float32)
    # every grid value is one of grid_map's 8 values; its position there is the level
    hit = values[..., None] == grid_map
    assert hit.sum(axis=-1).min() == 1, "gguf grid value outside grid_map"
    result: np.ndarray = np.argmax(hit, axis=-1).astype(np.uint8)
    return result


def _key_levels() -> np.ndarray:
    """(4096, 4) int: the levels of every 12-bit key."""
    k = np.arange(KMAP_SIZE)
    return np.stack([(k >> (3 * i)) & 7 for i in range(4)], axis=1)


@functools.lru_cache(maxsize=None)
def iq3_tables(size: int) -> IQ3Tables:
    """The tables of the ``size``-point grid (256 or 512), derived once per process (see the module docstring).

    Example:
        >>> t = iq3_tables(512)
        >>> t.kmap.dtype, t.neighbours.dtype, t.padded.shape[0]
        (dtype('int32'), dtype('uint16'), 4096)
    """
    levels = grid_levels(size)
    grid = (2 * levels.astype(np.int8) + 1).astype(np.int8)
    keys = (levels.astype(np.int32) << np.array([0, 3, 6, 9], np.int32)).sum(axis=1).astype(np.int32)
    nwant = 2 if size == 256 else 3
    kmap = np.full(KMAP_SIZE, -1, np.int32)
    kmap[keys] = np.arange(size, dtype=np.int32)
    pos = 2 * _key_levels() + 1
    # per off-grid key, the nwant nearest distinct distances' grid points (iq_grids.neighbour_lists: the rule is
    # ggml's for IQ2 and IQ3 alike)
    off = np.flatnonzero(kmap < 0)
    counts, cand = neighbour_lists(pos[off], grid, nwant)
    flat, starts = counted_lists(counts, cand)
    kmap[off] = -(starts + 1)
    padded = np.full((KMAP_SIZE, int(counts.max())), -1, np.int32)
    padded[np.repeat(off, counts), np.arange(cand.size) - np.repeat(np.cumsum(counts) - counts, counts)] = cand
    arrays = (levels, grid, keys, kmap, flat, padded)
    for a in arrays:
        a.setflags(write=False)
    return IQ3Tables(size, *arrays)


@functools.lru_cache(maxsize=None)
def lane_codes(size: int, multiple: int = 16) -> np.ndarray:
    """The candidate lists laid out for a search that scores many candidates at once (kernels/_iquants3.c): uint16
    (4096, W), row = key, each candidate's key (its 4 levels as 3-bit fields, level i at bit 3i) in list order,
    W = the longest list rounded up to ``multiple``; padding and the rows of grid keys hold 0. Two bytes per
    candidate: a key's whole list is one or two cache lines, where the float table of its values was 1 KiB per key
    (the search reads a candidate's levels from its key and its distance terms from a per-search table).

    Example:
        >>> c = lane_codes(256)
        >>> c.dtype, c.shape[1] % 16, int(c[0, 0])
        (dtype('uint16'), 0, 0)
    """
    t = iq3_tables(size)
    width = -(-t.padded.shape[1] // multiple) * multiple
    out = np.zeros((KMAP_SIZE, width), np.uint16)
    out[:, : t.padded.shape[1]] = np.where(t.padded >= 0, t.keys[np.maximum(t.padded, 0)], 0)
    out.setflags(write=False)
    return out

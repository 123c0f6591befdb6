"""The grid codebooks of IQ2_XXS (256 points), IQ2_XS (512), IQ2_S (1024) and IQ1_S / IQ1_M (2048), with the
reverse map and neighbour lists that ggml's quantizers search, derived from gguf-py's grids.

Every grid point is 8 levels in 0..2 (gguf-py stores the dequantized values: 8/25/43 for the IQ2 grids, -1/0/1
for IQ1's; a level is the value's position in ``grid_map``). ggml (``iq2xs_init_impl`` in ggml-quants.c) derives,
once per process:

- the code of a point, ``u = sum(level[i] << 2*i)``, and a map from every code to its grid index;
- for a code that is not a grid point, the grid points nearest to it: with the point and the code placed at
  ``2*level + 1`` per coordinate, the squared distances of all grid points are ordered by (distance, index) and
  the list keeps every point whose distance is among the ``nwant`` smallest distinct distances, in that order
  (``nwant`` = 3 for IQ1_S/IQ1_M, 2 for IQ2_XXS/IQ2_XS, 1 for IQ2_S).

The quantizers only look up codes whose 8 levels are each 0..2 (they clamp to ``kMaxQ - 1 = 2``, and IQ1 has three
levels), so the neighbour lists are built for those 3**8 = 6561 codes only (ggml also lists codes holding a
level 3, which no search reaches). The layout is ggml's: ``kmap[u] >= 0`` is the grid index of an on-grid code;
otherwise ``-kmap[u] - 1`` is the offset in ``neighbours`` of the list's length, followed by the list.

Example:
    >>> g = iq_grid("IQ2_XXS")
    >>> g.levels.shape, g.levels.dtype, int(g.kmap[0]), g.neighbours_of(1).tolist()[:6]
    ((256, 8), dtype('uint8'), 0, [0, 1, 2, 5, 11, 21])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from gguf import quants as gguf_quants

__all__ = ["GRID_TYPES", "KMAP_SIZE", "IqGrid", "iq_grid"]

#: ggml's map size: every 16-bit code with 2-bit fields up to 0b10 in the top field (0xAAAA + 2).
KMAP_SIZE = 43692
#: Codes per block of the neighbour derivation (a 512 x 1024 int32 block is 2 MiB).
_BLOCK = 512

#: The largest m*n*k of a matrix product that OpenBLAS runs on the calling thread (SMP_THRESHOLD_MIN 65536 times
#: GEMM_MULTITHREAD_THRESHOLD 4, interface/gemm.c). The neighbour derivation's products stay under it, a few rows
#: each: OpenBLAS's helper threads spin after every larger one, 0.3 s of CPU per process for IQ2_S + IQ3_S's
#: tables (wall the same, 0.10 s), taken from the threads that quantize.
_GEMM_ONE_THREAD = 4 * 65536

#: type -> (gguf-py class name whose grid it uses, nwant).
GRID_TYPES: dict[str, tuple[str, int]] = {
    "IQ2_XXS": ("IQ2_XXS", 2),
    "IQ2_XS": ("IQ2_XS", 2),
    "IQ2_S": ("IQ2_S", 1),
    "IQ1_S": ("IQ1_S", 3),
    "IQ1_M": ("IQ1_S", 3),  # IQ1_M shares IQ1_S's grid (gguf-py's IQ1_M class holds the same table)
}


@dataclass(frozen=True)
class IqGrid:
    """One grid and its derived tables (read-only arrays, C-contiguous, shared by every caller).

    levels: uint8 (n, 8), 0..2; codes: int32 (n,); kmap: int32 (KMAP_SIZE,); neighbours: uint16 (flat lists).
    """

    name: str
    nwant: int
    levels: np.ndarray
    codes: np.ndarray
    kmap: np.ndarray
    neighbours: np.ndarray

    @functools.cached_property
    def neighbour_codes(self) -> np.ndarray:
        """uint16 (neighbours.size,): ``neighbours`` with each listed grid index replaced by that point's code
        (``sum(level[i] << 2*i)``, so its 8 levels are 2-bit fields); the count positions keep the count. A search
        reads a list's count and all its candidates' levels from one run of 2 bytes per candidate (one or two
        cache lines for IQ2_S's mean of 8), where a (8, size) float table of levels spread each list over 8 lines
        8 table rows apart (10.6 MB for IQ1_S; the codes alone made the IQ2_S kernel ~7% and IQ1_S ~12% faster).

        Example:
            >>> g = iq_grid("IQ2_S")
            >>> off = -int(g.kmap[1]) - 1
            >>> int(g.neighbour_codes[off]), [int(c) for c in g.neighbour_codes[off + 1: off + 4]]
            (9, [0, 2, 5])
        """
        out: np.ndarray = self.codes[np.minimum(self.neighbours, self.levels.shape[0] - 1)].astype(np.uint16)
        counts = np.unique(-self.kmap[self.kmap < 0] - 1)  # every list's count position (unreached codes: list 0's)
        out[counts] = self.neighbours[counts]
        out.setflags(write=False)
        return out

    def neighbours_of(self, code: int) -> np.ndarray:
        """The neighbour list (grid indices, search order) of an off-grid code; ValueError for an on-grid one.

        Example:
            >>> iq_grid("IQ2_S").neighbours_of(1).tolist()  # code 1: level 1 first, all at distance 4
            [0, 1, 2, 5, 13, 34, 81, 206, 471]
        """
        m = int(self.kmap[code])
        if m >= 0:
            raise ValueError(f"{self.name}: code {code} is grid point {m}, it has no neighbour list")
        off = -m - 1
        return self.neighbours[off + 1: off + 1 + int(self.neighbours[off])]


def _levels_from_gguf(cls_name: str) -> np.ndarray:
    cls = getattr(gguf_quants, cls_name)
    cls.init_grid()
    values = np.asarray(cls.grid, dtype=np.float32).reshape(-1, 8)
    gmap = np.asarray(cls.grid_map, dtype=np.float32)
    lev = np.argmax(values[..., None] == gmap, axis=-1)
    if not np.array_equal(gmap[lev], values):  # every value is one of the map's
        raise AssertionError(f"gguf-py {cls_name} grid holds values outside its grid_map")
    result: np.ndarray = lev.astype(np.uint8)
    return result


def neighbour_lists(pos: np.ndarray, gpos: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """Each off-grid point's neighbour list, as ggml's grid inits build it (``iq2xs_init_impl``,
    ``iq3xs_init_impl``): the grid points at the ``nwant`` least distinct squared distances (all of them when
    fewer exist), in (distance, grid index) order.

    pos: (m, d) and gpos: (n, d) small integers (the points' values 2 * level + 1). Returns the list sizes,
    (m,) int64, and the candidates' grid indices one list after another, (sizes.sum(),) int64.

    Example:
        >>> size, cand = neighbour_lists(np.array([[2, 2]]), np.array([[1, 1], [3, 3], [1, 3], [9, 9]]), 1)
        >>> size.tolist(), cand.tolist()
        ([3], [0, 1, 2])
    """
    sizes: list[np.ndarray] = []
    cands: list[np.ndarray] = []
    gsq = (gpos.astype(np.int64) ** 2).sum(axis=1)
    gposf = gpos.T.astype(np.float32)  # small integers: float products and sums are exact, and BLAS forms them
    n = gpos.shape[0]
    rows = max(1, _GEMM_ONE_THREAD // max(1, n * gpos.shape[1]))  # per product (32 for IQ2_S's 1024 x 8 grid)
    big = np.iinfo(np.int64).max
    # a block of points at a time: a whole (m, n) distance matrix was the peak RSS of an IQ2_M convert
    for b0 in range(0, pos.shape[0], _BLOCK):
        p = pos[b0: b0 + _BLOCK]
        pf = p.astype(np.float32)
        dot = np.empty((p.shape[0], n), np.float32)
        for r0 in range(0, p.shape[0], rows):
            np.matmul(pf[r0: r0 + rows], gposf, out=dot[r0: r0 + rows])
        d2 = (p.astype(np.int64) ** 2).sum(axis=1)[:, None] + gsq[None, :] - (2 * dot).astype(np.int64)
        # the threshold by nwant successive minima, then only the kept candidates sorted: a stable argsort of every
        # row and a np.unique per point took 0.35 of IQ2_S's 0.47 s, a startup cost of every IQ convert
        thr = d2.min(axis=1)
        for _ in range(nwant - 1):
            above = np.where(d2 > thr[:, None], d2, big).min(axis=1)
            thr = np.where(above == big, thr, above)
        r, c = np.nonzero(d2 <= thr[:, None])
        cands.append(c[np.argsort((r * (int(d2.max()) + 1) + d2[r, c]) * n + c)])
        sizes.append(np.bincount(r, minlength=p.shape[0]))
    return np.concatenate(sizes), np.concatenate(cands)


def counted_lists(size: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lists of :func:`neighbour_lists` as ggml stores them: each list's count, then its candidates, the lists
    one after another (uint16), and where each list starts (int64, its count's position).

    Example:
        >>> flat, starts = counted_lists(np.array([2, 1]), np.array([5, 7, 9]))
        >>> flat.tolist(), starts.tolist()
        ([2, 5, 7, 1, 9], [0, 3])
    """
    starts = np.concatenate(([0], np.cumsum(size + 1)[:-1])).astype(np.int64)
    flat = np.empty(int((size + 1).sum()), np.uint16)
    head = np.zeros(flat.size, bool)
    head[starts] = True
    flat[head] = size
    flat[~head] = cand
    return flat, starts


@functools.lru_cache(maxsize=None)
def iq_grid(type_name: str) -> IqGrid:
    """The tables of one IQ type ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"), built once per process.

    Rule: ggml-quants.c ``iq2xs_init_impl`` (map, neighbour order and count), on gguf-py's grid.
    Raises KeyError for another type name.

    Example:
        >>> g = iq_grid("IQ1_S")
        >>> g.levels.shape[0], g.nwant
        (2048, 3)
    """
    cls_name, nwant = GRID_TYPES[type_name.upper()]
    if type_name.upper() == "IQ1_M":  # the same tables as IQ1_S: build them once
        return iq_grid("IQ1_S")
    lev = _levels_from_gguf(cls_name)
    n = lev.shape[0]
    shifts = (2 * np.arange(8)).astype(np.int32)
    codes = (lev.astype(np.int32) << shifts).sum(axis=1).astype(np.int32)
    kmap = np.full(KMAP_SIZE, -1, np.int32)
    kmap[codes] = np.arange(n, dtype=np.int32)
    # the reachable codes: 8 levels in 0..2, in increasing code order (ggml's list order)
    digits = np.array(np.meshgrid(*([np.arange(3)] * 8), indexing="ij")).reshape(8, -1).T[:, ::-1]
    all_codes = (digits.astype(np.int32) << shifts).sum(axis=1)
    order = np.argsort(all_codes)
    digits, all_codes = digits[order], all_codes[order]
    off = all_codes[kmap[all_codes] < 0]
    pos = 2 * digits[kmap[all_codes] < 0].astype(np.int32) + 1  # (m, 8)
    gpos = 2 * lev.astype(np.int32) + 1  # (n, 8)
    size, cand = neighbour_lists(pos, gpos, nwant)
    neighbours, starts = counted_lists(size, cand)
    kmap[off] = -(starts + 1)
    for a in (lev, codes, kmap, neighbours):
        a.setflags(write=False)
    return IqGrid(type_name.upper(), nwant, lev, codes, kmap, neighbours)

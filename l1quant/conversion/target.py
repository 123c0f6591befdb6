"""``--target-size`` / ``--target-bpw`` with type ``auto``: each tensor's type chosen by measurement to fit a size.

The method (docs/target-size.md says more, and what did worse):

1. **Candidates.** Every tensor llama-quantize may quantize (:func:`l1quant.conversion.mixes.is_quantizable`) and
   that no user flag fixes gets a list of candidate types: the quantized types whose block divides its row length
   (:data:`CANDIDATES`), plus its lossless input type. A tensor without importance weights (``token_embd.weight``:
   llama-imatrix collects none) cannot take the types that need them (``needs_imatrix``: IQ1_S ... IQ3_XXS).
2. **Error per candidate.** On the :data:`TOP_ROWS` rows of largest output energy and a deterministic sample of the
   rest (:data:`SAMPLE_ROWS`, in a few contiguous runs spread over the tensor), each candidate quantizes the rows
   exactly as the file will (same kernels, same importance weights) and the importance-weighted squared error
   ``sum_j E[x_j^2] (w_ij - q_ij)^2`` (the expected energy of the output perturbation per token, ``E[x^2]`` = the
   imatrix entry) is divided by the output energy ``sum_j E[x_j^2] w_ij^2`` of the rows outside the top ones: a
   relative error, comparable between tensors.
3. **From errors to KLD.** The model's KLD is predicted as ``sum_t s(role_t) * rel_t``: each tensor's relative
   output error times a sensitivity per role (:data:`SENSITIVITY`), measured once with real forward passes
   (KLD of files where one role at a time is quantized, divided by that role's summed relative error; see the docs).
4. **Allocation.** Per tensor the lower convex hull of (bytes, predicted KLD); from every tensor at its cheapest
   candidate, the upgrade with the largest KLD reduction per byte is taken while the whole file (header and
   padding, exactly as written) stays within the target; then single upgrades that still fit are tried.

The result is an ordinary llama-quantize file: the choice becomes one ``--tensor-type`` override per tensor on a
base mix (:func:`base_mix`), which :func:`l1quant.conversion.plan.apply_mix` applies as llama-quantize would, so
the same table given to llama-quantize (:func:`tensor_type_file`, :func:`llama_quantize_command`) rebuilds the same
bytes.

Example:
    >>> parse_size("432M"), parse_size("1.5GiB"), parse_size("1000")
    (432000000, 1610612736, 1000)
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from l1quant.conversion.mixes import QuantOptions, Role, is_quantizable, tensor_role
from l1quant.conversion.plan import ConversionPlan, apply_mix, load_imatrix
from l1quant.conversion.sources import TensorSource
from l1quant.conversion.write import file_nbytes
from l1quant.errors import ConfigError, OutputError, clip
from l1quant.filetypes import MIXES, Mix
from l1quant.gguf.header import Header, pad
from l1quant.imatrix_file import Imatrix
from l1quant.kernels import QuantType, get_quant_type
from l1quant import units

__all__ = [
    "CANDIDATES",
    "KEY_TARGET",
    "KEY_TARGET_KLD",
    "TARGET_KEYS",
    "SAMPLE_ROWS",
    "SENSITIVITY",
    "TargetChoice",
    "TensorChoice",
    "apply_target",
    "base_mix",
    "candidates_for",
    "choose_types",
    "llama_quantize_command",
    "parse_size",
    "parse_target",
    "tensor_type_file",
]

T = GGMLQuantizationType
log = logging.getLogger("l1quant")

#: The quantized types a searched tensor may take, smallest first (those whose block divides the row length; the
#: input's lossless type is added on top). Q4_1/Q5_1/Q2_K..: all that llama.cpp loads and l1quant writes exactly.
CANDIDATES: tuple[GGMLQuantizationType, ...] = (
    T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.Q2_K, T.IQ3_XXS, T.IQ3_S, T.Q3_K, T.IQ4_XS, T.IQ4_NL,
    T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_0, T.Q5_1, T.Q5_K, T.Q6_K, T.Q8_0)

#: Rows sampled per tensor for the error measurement (in :data:`SAMPLE_RUNS` contiguous runs spread evenly), besides
#: the :data:`TOP_ROWS` of largest energy. Few, not 128: on Qwen2.5-Coder-1.5B (real weights, one imatrix) a table
#: chosen from 32 evenly sampled rows costs +1.5 %, +1.1 % and +0.5 % predicted KLD (judged with 128-row errors)
#: at Q4_K_M's, Q3_K_M's and IQ2_M's sizes, for a quarter of the kernel time; what even samples of any size miss
#: is the outlier rows, which TOP_ROWS measures exactly (docs/target-size.md).
SAMPLE_ROWS = 24
SAMPLE_RUNS = 8
#: Rows of largest output energy measured exactly in every tensor, besides the sample (:func:`measure_errors`).
TOP_ROWS = 8

#: Candidates this many bits per weight below the target's mean are not measured (never chosen in practice).
PRUNE_BPW = 2.5

#: KLD (nats/token) per unit of relative output error, per role (summed over the role's tensors). Measured on
#: Qwen2.5-Coder-0.5B with benchmarks/target_sensitivity.py (each role alone at Q4_0, every other tensor Q8_0, one
#: imatrix from the bundled calibration text; KLD over 6 chunks of 512 of compare's text, minus all-Q8_0's 0.0008).
#: The output matrix dominates: its errors land on the logits directly.
SENSITIVITY: dict[Role, float] = {
    Role.TOKEN_EMBD: 0.117, Role.OUTPUT: 2.54, Role.ATTN_Q: 0.0227, Role.ATTN_K: 0.0710, Role.ATTN_V: 0.0455,
    Role.ATTN_OUTPUT: 0.0457, Role.FFN_UP: 0.0886, Role.FFN_GATE: 0.0590, Role.FFN_DOWN: 0.0759, Role.OTHER: 0.06,
}
#: A tied token_embd.weight is also the output matrix: its error counts as both.
TIED_EMBD_SENSITIVITY = SENSITIVITY[Role.OUTPUT] + SENSITIVITY[Role.TOKEN_EMBD]

#: Metadata keys of a target-size file (written as llama-quantize ``--override-kv`` writes them, so the printed
#: command reproduces them): the target as asked (str ``size=BYTES`` or ``bpw=BITS``) and the predicted mean KLD
#: (f32, nats/token).
KEY_TARGET = "quantize.target"
KEY_TARGET_KLD = "quantize.target.kld"
TARGET_KEYS = (KEY_TARGET, KEY_TARGET_KLD)

def parse_size(text: str | int) -> int:
    """Bytes of a ``--target-size``: an int as it is, a text as :func:`l1quant.units.parse_size` reads it (K/M/G/T
    are powers of 1000, KiB/MiB/GiB/TiB of 1024, a trailing B is optional). Raises :class:`ConfigError` in one line
    otherwise.

    Example:
        >>> parse_size("4.5G"), parse_size("800MiB"), parse_size(12)
        (4500000000, 838860800, 12)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ConfigError(f"--target-size must be positive, found {text}")
        return text
    return units.parse_size(str(text), "--target-size")


def parse_target(target_size: str | int | None, target_bpw: float | str | None, n_params: int) -> tuple[int, str]:
    """The byte budget for the whole file and its ``quantize.target`` text, from exactly one of ``target_size`` and
    ``target_bpw`` (bits per parameter over every tensor of the file: ``floor(bpw * n_params / 8)`` bytes).

    Example:
        >>> parse_target("1K", None, 10), parse_target(None, 4.0, 1000)
        ((1000, 'size=1000'), (500, 'bpw=4'))
    """
    if (target_size is None) == (target_bpw is None):
        raise ConfigError("type auto needs exactly one of --target-size and --target-bpw")
    if target_size is not None:
        n = parse_size(target_size)
        return n, f"size={n}"
    try:
        bpw = float(target_bpw)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"--target-bpw {clip(target_bpw)}: expected a number of bits per weight, e.g. 4.5") from None
    if not math.isfinite(bpw) or bpw <= 0:
        raise ConfigError(f"--target-bpw {clip(target_bpw)}: expected a positive number of bits per weight")
    return int(bpw * n_params / 8), f"bpw={bpw:g}"


def candidates_for(n_cols: int, input_type: QuantType, has_weights: bool) -> list[QuantType]:
    """The types a searched tensor with rows of ``n_cols`` values may take, smallest first, its lossless
    ``input_type`` last; without importance weights (``has_weights`` False) not the types that need them.

    Example:
        >>> [q.name for q in candidates_for(96, get_quant_type("bf16"), False)]
        ['IQ4_NL', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0', 'BF16']
    """
    out = []
    for t in CANDIDATES:
        qt = get_quant_type(t)
        if n_cols % qt.block_size or not qt.served or (qt.needs_imatrix and not has_weights):
            continue
        out.append(qt)
    out.sort(key=lambda q: q.type_size / q.block_size)
    if input_type.ggml_type in (T.F16, T.BF16, T.F32):
        out.append(input_type)
    return out


def sample_runs(n_rows: int, n_sample: int = SAMPLE_ROWS, n_runs: int = SAMPLE_RUNS) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of the deterministic sample: ``n_runs`` contiguous runs spread evenly (all rows when
    there are fewer than ``n_sample``).

    Example:
        >>> sample_runs(1000, 16, 4)
        [(0, 4), (332, 336), (664, 668), (996, 1000)]
    """
    if n_rows <= n_sample:
        return [(0, n_rows)]
    per = max(1, n_sample // n_runs)
    starts = np.linspace(0, n_rows - per, n_runs).round().astype(int)
    return [(int(s), int(s) + per) for s in sorted(set(starts.tolist()))]


def _as_f32(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint16:  # bf16 bits
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def row_energies(source: TensorSource, weights: np.ndarray | None) -> np.ndarray:
    """Each row's output energy ``sum_j E[x_j^2] w_ij^2`` (float64, one per row of the flattened tensor; uniform
    ``E[x^2]`` without ``weights``), read in blocks of about 4 M values (bounded memory per worker).

    Example:
        >>> row_energies(src, None).shape  # doctest: +SKIP
        (1536,)
    """
    shape = tuple(source.shape)
    n_cols = shape[-1]
    n_rows = math.prod(shape[:-1])
    n_mat = 1 if weights is None else weights.shape[0]
    per_mat = n_rows // n_mat
    imps = np.ones((1, n_cols), np.float32) if weights is None else np.maximum(weights, 0).astype(np.float32)
    out = np.empty(n_rows, np.float64)
    step = max(1, (1 << 22) // max(1, n_cols))
    for a in range(0, n_rows, step):
        b = min(n_rows, a + step)
        x = _as_f32(np.ascontiguousarray(source.read_rows(a, b)))
        x *= x
        r = a
        while r < b:
            j = r // per_mat
            e = min(b, (j + 1) * per_mat)
            out[r:e] = x[r - a:e - a] @ imps[j]
            r = e
    return out


def measure_errors(source: TensorSource, weights: np.ndarray | None,
                   candidates: Sequence[QuantType | None]) -> list[float]:
    """Each candidate's relative importance-weighted error on ``source``:
    ``sum E[x^2] (w - q)^2 / sum E[x^2] w^2`` (``weights`` float32 (n_mat, n_cols) or None: uniform), 0 for the
    lossless input type; NaN for a candidate marked None (not measured). ``source`` is 2-D or 3-D (experts:
    matrix j's rows take weights row j).

    The numerator is exact on the :data:`TOP_ROWS` rows of largest energy (:func:`row_energies`, every row read)
    and estimated from the even sample (:func:`sample_runs`) on the rest; the denominator is the exact energy of
    the rows outside the top ones. A real model's few outlier rows (an early ``ffn_down``'s massive-activation
    channels) can break a grid type alone (Qwen2.5-Coder-1.5B ``blk.2.ffn_down``: IQ3_S's error is 0.44 of the
    output energy on all rows, 0.003 on an even sample of 128), and, in the denominator, would hide the error of
    every other row.

    Example:
        >>> measure_errors(src, None, [get_quant_type("q8_0")])  # doctest: +SKIP
        [1.6e-05]
    """
    shape = tuple(source.shape)
    n_cols = shape[-1]
    n_rows = math.prod(shape[:-1])
    n_mat = 1 if weights is None else weights.shape[0]
    per_mat = n_rows // n_mat
    energy = row_energies(source, weights)
    if n_rows <= SAMPLE_ROWS + TOP_ROWS:
        top = np.arange(n_rows)
        rest: list[int] = []
        den = float(energy.sum())
    else:
        top = np.sort(np.argpartition(energy, n_rows - TOP_ROWS)[n_rows - TOP_ROWS:])
        in_top = set(top.tolist())
        rest = [r for a, b in sample_runs(n_rows) for r in range(a, b) if r not in in_top]
        # relative to the other rows' energy: a few massive-activation channels would otherwise make every other
        # row's error look negligible (IQ1_S for 1.5B's blk.2.ffn_down looked cheap); their own error still counts
        den = float(energy.sum() - energy[top].sum())
    # the rest's sampled error stands for every row outside the top ones
    scale = (n_rows - len(top)) / len(rest) if rest else 0.0
    # rows grouped by matrix (weights differ per expert), each group quantized with one kernel call per candidate
    groups: dict[int, list[tuple[int, float]]] = {}
    for r in top.tolist():
        groups.setdefault(r // per_mat, []).append((r, 1.0))
    for r in rest:
        groups.setdefault(r // per_mat, []).append((r, scale))
    num = np.zeros(len(candidates))
    for j, rows in groups.items():
        rs = np.ascontiguousarray(np.concatenate([source.read_rows(r, r + 1) for r, _ in rows]))
        mult = np.array([m for _, m in rows], np.float64)
        xs = _as_f32(rs)
        w = None if weights is None else weights[j]
        imp = np.ones(n_cols, np.float64) if w is None else np.maximum(w, 0).astype(np.float64)
        for k, qt in enumerate(candidates):
            if qt is None:
                num[k] = np.nan
                continue
            if qt.ggml_type.name == _type_name(rs):
                continue  # the input type itself: lossless
            q = qt.quantize(rs, imatrix=w if qt.takes_imatrix else None)
            d = (qt.dequantize(q, xs.shape) - xs).astype(np.float64)
            num[k] += float(mult @ ((d * d) @ imp))
    return [float(v / den) if den > 0 else 0.0 for v in num]


def _type_name(raw: np.ndarray) -> str:
    return {np.dtype(np.uint16): "BF16", np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[raw.dtype]


@dataclass
class TensorChoice:
    """One searched tensor: its candidates (smallest first), their padded bytes in the file and predicted KLD
    contributions, and the index chosen."""

    name: str
    shape: tuple[int, ...]
    candidates: list[QuantType]
    nbytes: list[int]
    kld: list[float]
    chosen: int = 0

    @property
    def type(self) -> QuantType:
        return self.candidates[self.chosen]


@dataclass
class TargetChoice:
    """The search's answer: the base mix and the per-tensor overrides for llama-quantize's rule, the tensors
    searched, the budget, the reachable range and the predicted KLD."""

    mix: Mix
    options: QuantOptions
    overrides: list[tuple[str, GGMLQuantizationType]]
    tensors: list[TensorChoice]
    target: int
    target_text: str
    reachable: tuple[int, int]
    predicted_kld: float
    kv: list[tuple[str, str, object]] = field(default_factory=list)

    def table(self) -> str:
        """The chosen types, one line per searched tensor (name, shape, type, bytes, predicted KLD share)."""
        lines = [f"  {'tensor':<36} {'shape':<16} {'type':<8} {'bytes':>12} {'kld':>10}"]
        for t in self.tensors:
            lines.append(f"  {t.name:<36} {list(reversed(t.shape))!s:<16} {t.type.name:<8} "
                         f"{t.nbytes[t.chosen]:>12} {t.kld[t.chosen]:>10.2e}")
        return "\n".join(lines)


def override_pattern(name: str) -> str:
    """The ``--tensor-type`` pattern matching exactly tensor ``name`` (anchored, dots escaped; lower-case, as
    llama-quantize lower-cases patterns).

    Example:
        >>> override_pattern("blk.0.attn_q.weight")
        '^blk\\\\.0\\\\.attn_q\\\\.weight$'
    """
    return "^" + re.escape(name).lower() + "$"


def base_mix(tensors: Sequence[TensorChoice]) -> Mix:
    """The mix whose ``general.file_type`` the file gets: the one named after the type holding most bytes, among
    the mixes l1quant and llama-quantize make without an importance matrix (else Q4_K_M).

    Example:
        >>> base_mix([]).name
        'Q4_K_M'
    """
    by_type: dict[str, int] = {}
    for t in tensors:
        by_type[t.type.name] = by_type.get(t.type.name, 0) + t.nbytes[t.chosen]
    names = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
    for name, _ in sorted(by_type.items(), key=lambda kv: -kv[1]):
        mix = MIXES.get(names.get(name, name))
        if mix is not None and mix.quantized and name != "Q2_K":  # Q2_K: fine, but keep Q2_K_S's rule out
            return mix
        if name == "Q2_K":
            return MIXES["Q2_K"]
    return MIXES["Q4_K_M"]


def _hull(t: TensorChoice) -> list[int]:
    """Indices of ``t``'s lower convex hull in (bytes, kld), cheapest first (dominated candidates dropped)."""
    order = sorted((i for i in range(len(t.candidates)) if math.isfinite(t.kld[i])),
                   key=lambda i: (t.nbytes[i], t.kld[i]))
    pts: list[int] = []
    for i in order:
        if pts and t.kld[i] >= t.kld[pts[-1]]:
            continue  # costs more, no better
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            # b is above the line a -> i: drop it
            if (t.kld[b] - t.kld[a]) * (t.nbytes[i] - t.nbytes[a]) >= (t.kld[i] - t.kld[a]) * (t.nbytes[b] - t.nbytes[a]):
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def allocate(tensors: list[TensorChoice], budget: int) -> None:
    """Choose each tensor's candidate to minimise the summed predicted KLD with summed bytes <= ``budget``
    (greedy on the convex hulls by KLD reduction per byte, then single upgrades that still fit). Sets ``chosen``.

    Example:
        >>> t = TensorChoice("w", (1, 32), [get_quant_type("q4_0"), get_quant_type("q8_0")], [18, 34], [1.0, 0.1])
        >>> allocate([t], 40); t.type.name
        'Q8_0'
    """
    hulls = [_hull(t) for t in tensors]
    pos = [0] * len(tensors)
    for t, h in zip(tensors, hulls):
        t.chosen = h[0]
    used = sum(t.nbytes[t.chosen] for t in tensors)
    heap: list[tuple[float, int]] = []

    def push(k: int) -> None:
        h, p = hulls[k], pos[k]
        if p + 1 < len(h):
            t = tensors[k]
            a, b = h[p], h[p + 1]
            slope = (t.kld[a] - t.kld[b]) / max(1, t.nbytes[b] - t.nbytes[a])
            heapq.heappush(heap, (-slope, k))

    for k in range(len(tensors)):
        push(k)
    while heap:
        _, k = heapq.heappop(heap)
        t, h = tensors[k], hulls[k]
        nxt = h[pos[k] + 1]
        extra = t.nbytes[nxt] - t.nbytes[t.chosen]
        if used + extra > budget:
            continue  # this tensor's next step does not fit; smaller steps of others may
        used += extra
        pos[k] += 1
        t.chosen = nxt
        push(k)
    # leftovers: the best single non-hull upgrade that fits, repeatedly
    improved = True
    while improved:
        improved = False
        best: tuple[float, int, int] | None = None
        for k, t in enumerate(tensors):
            for i in range(len(t.candidates)):
                extra = t.nbytes[i] - t.nbytes[t.chosen]
                gain = t.kld[t.chosen] - t.kld[i]
                if gain > 0 and used + extra <= budget and (best is None or gain > best[0]):
                    best = (gain, k, i)
        if best is not None:
            _, k, i = best
            used += tensors[k].nbytes[i] - tensors[k].nbytes[tensors[k].chosen]
            tensors[k].chosen = i
            improved = True


def choose_types(
    planned: Sequence[tuple[str, TensorSource, QuantType]],
    options: QuantOptions,
    imatrix: Imatrix,
    *,
    target_size: str | int | None,
    target_bpw: float | str | None,
    file_size: Callable[[Mix, QuantOptions], int],
    fixed: Callable[[str], bool],
    tied: bool,
    threads: int = 1,
) -> TargetChoice:
    """Search each tensor's type so the file fits the target (see the module docstring for the method).

    ``planned``: every tensor of the (virtual or real) input file as (GGUF name, source, input type).
    ``options``: the user's per-tensor flags (with ``imatrix``); ``imatrix``: its loaded entries.
    ``file_size(mix, options)``: the exact size of the file those would write (header included).
    ``fixed(name)``: the user's flags already decide the tensor (it is not searched). ``tied``: no output.weight.
    ``threads``: tensors measured at once (the kernels release the GIL); the answer does not depend on it.

    Raises :class:`ConfigError` in one line for a target outside the reachable range (which it names).

    Example:
        >>> choose_types(planned, opts, im, target_size="400M", target_bpw=None, file_size=size, fixed=f,
        ...              tied=True).mix.name  # doctest: +SKIP
        'Q4_K_M'
    """
    n_params = sum(math.prod(st.shape) or 1 for _, st, _ in planned)
    budget, target_text = parse_target(target_size, target_bpw, n_params)

    def measure(floor: float, errors: bool = True) -> list[TensorChoice]:
        jobs: list[tuple[str, TensorSource, tuple[int, ...], list[QuantType], np.ndarray | None,
                         list[QuantType | None]]] = []
        for name, st, t_in in planned:
            shape = tuple(st.shape)
            ggml_shape = tuple(reversed(shape)) or (1,)
            if not is_quantizable(name, ggml_shape, options) or fixed(name):
                continue
            n_mat = shape[-3] if len(shape) >= 3 else 1
            w = imatrix.weights_for(name, shape[-1], n_mat)
            cands = candidates_for(shape[-1], t_in, w is not None)
            if not cands:
                continue
            # types far below the file's mean bits per weight are never chosen: not measured (the grid i-quants
            # are the slowest kernels); they still count for the reachable range
            measured = [q if q.type_size * 8 / q.block_size >= floor or q is cands[-1] else None for q in cands]
            jobs.append((name, st, shape, cands, w, measured))

        def errs(job: tuple[str, TensorSource, tuple[int, ...], list[QuantType], np.ndarray | None,
                            list[QuantType | None]]) -> list[float]:
            _, st, _, cands, w, measured = job
            return [math.inf if math.isnan(r) else r for r in measure_errors(st, w, measured)] if errors \
                else [0.0] * len(cands)

        # one tensor per worker (its kernels release the GIL); map keeps the order, so the answer is the same
        with ThreadPoolExecutor(max(1, threads)) as pool:
            rels = list(pool.map(errs, jobs))
        out: list[TensorChoice] = []
        for (name, _, shape, cands, _, _), rel in zip(jobs, rels):
            role = tensor_role(name)
            s = TIED_EMBD_SENSITIVITY if (role is Role.TOKEN_EMBD and tied) else SENSITIVITY[role]
            out.append(TensorChoice(name, shape, cands, [pad(q.nbytes(shape)) for q in cands], [s * r for r in rel]))
        return out

    searched = measure(0, errors=False)  # sizes first: an unreachable target is refused before any work

    def opts_for(choice: list[TensorChoice]) -> tuple[Mix, QuantOptions, list[tuple[str, GGMLQuantizationType]]]:
        ov = [(override_pattern(t.name), t.type.ggml_type) for t in choice]
        return base_mix(choice), replace(options, tensor_types=(*options.tensor_types, *ov)), ov

    for t in searched:
        t.chosen = 0
    mix, o, _ = opts_for(searched)
    low = file_size(mix, o)
    searched_low = sum(t.nbytes[0] for t in searched)
    for t in searched:
        t.chosen = len(t.candidates) - 1
    high = file_size(*opts_for(searched)[:2])
    if not low <= budget <= high:
        raise ConfigError(f"target {target_text.replace('=', ' ')} ({budget} bytes) is out of reach for this model: "
                          f"files from {low} bytes (every tensor at its smallest type) to {high} bytes (lossless) "
                          "can be made")
    fixed_bytes = low - searched_low
    searched = measure(budget * 8 / n_params - PRUNE_BPW)
    if sum(t.nbytes[_hull(t)[0]] for t in searched) > budget - fixed_bytes:
        searched = measure(-math.inf)  # near the low end: every candidate is needed
    allocate(searched, budget - fixed_bytes)
    mix, o, ov = opts_for(searched)
    while file_size(mix, o) > budget:  # the base mix changed the header by a few bytes: step the cheapest down
        k = max((k for k, t in enumerate(searched) if t.chosen != _hull(t)[0]),
                key=lambda k: searched[k].nbytes[searched[k].chosen], default=None)
        if k is None:
            break
        t = searched[k]
        t.chosen = max((i for i in range(len(t.candidates)) if t.nbytes[i] < t.nbytes[t.chosen]),
                       key=lambda i: t.nbytes[i])
        mix, o, ov = opts_for(searched)
    kld = float(sum(t.kld[t.chosen] for t in searched))
    return TargetChoice(mix, o, ov, searched, budget, target_text, (low, high), kld)


def kld_text(kld: float) -> str:
    """The predicted KLD as written on the llama-quantize command line (6 significant digits).

    Example:
        >>> kld_text(0.0123456789)
        '0.0123457'
    """
    return f"{kld:.6g}"


def target_kv(choice: TargetChoice) -> list[tuple[str, str, str]]:
    """The ``--override-kv`` entries (key, llama.cpp type tag, value text) that record the target.

    Example:
        >>> target_kv(c)  # doctest: +SKIP
        [('quantize.target', 'str', 'size=432000000'), ('quantize.target.kld', 'float', '0.0213')]
    """
    return [(KEY_TARGET, "str", choice.target_text), (KEY_TARGET_KLD, "float", kld_text(choice.predicted_kld))]


def tensor_type_file(choice: TargetChoice) -> str:
    """The chosen table as llama-quantize's ``--tensor-type-file``: one ``REGEX=TYPE`` per line.

    Example:
        >>> tensor_type_file(c).splitlines()[0]  # doctest: +SKIP
        '^output\\\\.weight$=q6_k'
    """
    return "".join(f"{p}={t.name.lower()}\n" for p, t in choice.overrides)


def llama_quantize_command(choice: TargetChoice, input: str | os.PathLike[str], output: str | os.PathLike[str],
                           tensor_types_path: str | os.PathLike[str], imatrix: str | os.PathLike[str]) -> str:
    """The llama-quantize command line that writes the same bytes (the user's own per-tensor flags aside, which
    must be repeated as given).

    Example:
        >>> llama_quantize_command(c, "m-BF16.gguf", "m-auto.gguf", "m-auto.tensor-types.txt", "m.imatrix")  # doctest: +SKIP
        'llama-quantize --imatrix m.imatrix --tensor-type-file m-auto.tensor-types.txt ... m-BF16.gguf m-auto.gguf Q4_K_M'
    """
    kv = " ".join(f"--override-kv {shlex.quote(f'{k}={tag}:{v}')}" for k, tag, v in target_kv(choice))
    return (f"llama-quantize --imatrix {shlex.quote(os.fspath(imatrix))} --tensor-type-file "
            f"{shlex.quote(os.fspath(tensor_types_path))} {kv} {shlex.quote(os.fspath(input))} "
            f"{shlex.quote(os.fspath(output))} {choice.mix.name}")


def _user_fixed(options: QuantOptions, tied: bool) -> Callable[[str], bool]:
    """Whether the user's own flags decide tensor ``name`` (then it is not searched)."""
    def fixed(name: str) -> bool:
        role = tensor_role(name)
        if options.token_embedding_type is not None and role is Role.TOKEN_EMBD:
            return True
        if options.output_tensor_type is not None and (role is Role.OUTPUT or (tied and role is Role.TOKEN_EMBD)):
            return True
        return options.override_for(name) is not None
    return fixed


def apply_target(
    arch_name: str,
    planned: list[tuple[str, TensorSource, QuantType]],
    options: QuantOptions | None,
    warnings: list[str],
    *,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    target_size: str | int | None,
    target_bpw: float | str | None,
    header_for: Callable[[ConversionPlan], Header],
    threads: int = 1,
) -> ConversionPlan:
    """:func:`l1quant.conversion.plan.apply_mix` for type ``auto``: search the types (:func:`choose_types`) for the
    target, then lay the file out as llama-quantize would with the chosen overrides; ``header_for(plan)`` is the
    header the caller writes for a plan (its size counts); ``threads`` measure tensors at once. The plan's
    ``target`` holds the answer and its first
    kv entries the ``quantize.target*`` keys.

    Raises :class:`ConfigError` without an importance matrix or for a target out of reach.

    Example:
        >>> apply_target("qwen2", planned, opts, [], n_layer=24, n_head=14, n_head_kv=2, target_size="400M",
        ...              target_bpw=None, header_for=h).target.mix.name  # doctest: +SKIP
        'Q4_K_M'
    """
    im = load_imatrix(options)
    if options is None or im is None:
        raise ConfigError("type auto chooses each tensor's type from an importance matrix: pass --imatrix FILE "
                          "(or --calibration [TEXT] to compute one)")
    tied = all(name != "output.weight" for name, _, _ in planned)

    def make(mix: Mix, o: QuantOptions, kv: Sequence[tuple[str, str, str]] = ()) -> ConversionPlan:
        plan = apply_mix(arch_name, list(planned), mix, o, list(warnings), n_layer=n_layer, n_head=n_head,
                         n_head_kv=n_head_kv)
        keys: list[tuple[str, GGUFValueType, str | bytes | int | float]] = [
            (k, GGUFValueType.STRING, v) if tag == "str" else (k, GGUFValueType.FLOAT32, float(np.float32(float(v))))
            for k, tag, v in kv]
        plan.imatrix_keys = keys + [x for x in plan.imatrix_keys if x[0] not in {k for k, _, _ in kv}]
        return plan

    # the two keys' sizes do not depend on the table (a str of fixed text, an f32): count them from the start
    def size(mix: Mix, o: QuantOptions) -> int:
        return file_nbytes(header_for(make(mix, o, kv_probe)))

    n_params = sum(math.prod(st.shape) or 1 for _, st, _ in planned)
    _, text = parse_target(target_size, target_bpw, n_params)
    kv_probe = [(KEY_TARGET, "str", text), (KEY_TARGET_KLD, "float", "0")]
    t0 = time.perf_counter()
    choice = choose_types(planned, options, im, target_size=target_size, target_bpw=target_bpw, file_size=size,
                          fixed=_user_fixed(options, tied), tied=tied, threads=threads)
    # the search's own cost (issue 20's bar: under one llama-quantize run); benchmarks/bench_target.py parses it
    log.info(f"search: {time.perf_counter() - t0:.2f} s ({len(choice.tensors)} tensors)")
    choice.kv = list(target_kv(choice))
    plan = make(choice.mix, choice.options, target_kv(choice))
    plan.target = choice
    plan.type_name = "auto"  # the output's default name; general.file_type is the base mix's
    return plan


def tensor_types_path(output: str | os.PathLike[str]) -> Path:
    """Where the tensor-type file of a target-size ``output`` is written: beside it, ``NAME.tensor-types.txt``.

    Example:
        >>> tensor_types_path("m/L1-auto.gguf")
        PosixPath('m/L1-auto.tensor-types.txt')
    """
    p = Path(output)
    return p.with_name(p.name.removesuffix(".gguf") + ".tensor-types.txt")


def summary(choice: TargetChoice, size: int) -> str:
    """One line: the target, the file's size and the predicted KLD.

    Example:
        >>> summary(c, 431999872)  # doctest: +SKIP
        'target size=432000000: 431999872 bytes (4.81 bpw), base Q4_K_M, predicted mean KLD 0.0213'
    """
    n = sum(math.prod(t.shape) for t in choice.tensors) or 1
    return (f"target {choice.target_text}: {size} bytes, {choice.mix.name} base, searched tensors at "
            f"{8 * sum(t.nbytes[t.chosen] for t in choice.tensors) / n:.2f} bpw, reachable {choice.reachable[0]}.."
            f"{choice.reachable[1]} bytes, predicted mean KLD {kld_text(choice.predicted_kld)}")


def export_target(choice: TargetChoice, input: str | os.PathLike[str], output: str | os.PathLike[str],
                  options: QuantOptions | None) -> Path:
    """Write the chosen table beside ``output`` as a llama-quantize ``--tensor-type-file`` and log the command
    that rebuilds ``output`` from ``input`` with it; return the file's path. Raises ``OutputError`` if it cannot
    be written.

    Example:
        >>> export_target(choice, "m-BF16.gguf", "m-auto.gguf", opts)  # doctest: +SKIP
        PosixPath('m-auto.tensor-types.txt')
    """
    path = tensor_types_path(output)
    try:
        path.write_text(tensor_type_file(choice), encoding="utf-8")
    except OSError as e:
        raise OutputError(f"{path}: cannot write the tensor-type file ({e.strerror or e})") from None
    im = options.imatrix if options is not None and options.imatrix is not None else "IMATRIX"
    log.info(f"tensor types: {path}; llama-quantize rebuilds the same file with: "
             + llama_quantize_command(choice, input, output, path, im))
    return path


def target_report(choice: TargetChoice) -> dict[str, object]:
    """The ``--json``/``--dry-run`` record of the search: target, budget, reachable range, base mix, predicted KLD,
    and per searched tensor its type and bytes.

    Example:
        >>> target_report(c)["predicted_kld"]  # doctest: +SKIP
        0.0213
    """
    return {"target": choice.target_text, "budget": choice.target, "reachable": list(choice.reachable),
            "base": choice.mix.name, "predicted_kld": float(kld_text(choice.predicted_kld)),
            "tensor_types": tensor_type_file(choice).split()}

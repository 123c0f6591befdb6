"""Fidelity checks against the source checkpoint: metadata key by key, tensor bytes and error metrics."""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np
from gguf.constants import GGUFValueType

from l1quant.arch import Arch
from l1quant.check.report import Check, TensorFidelity, problems_check
from l1quant.check.structure import CHUNK_BYTES, STRICT_GENERAL
from l1quant.conversion.plan import PlannedTensor
from l1quant.errors import GGUFFormatError, quote
from l1quant.gguf.header import Header
from l1quant.gguf.reader import (  # one type-naming rule for reader and verifier
    GGUFFile,
    TensorInfo,
    type_name,
)
from l1quant.kernels import QUANT_TYPES, KernelArgumentError, QuantType, decode_bf16

Q8_0_BOUND_DOC = (
    "Q8_0 bound: per block of 32, d = amax/127 (float32) and q = round(x/d), so |x - q*d| <= d/2; the stored "
    "scale is f16(d), adding |q|*|f16(d) - d| <= 127*|f16(d) - d|. Each element must satisfy "
    "|err| <= d/2 + 127*|f16(d) - d| + 2^-20*amax (float32 rounding slack), with d computed from the source "
    "block. The tensor's rel-RMSE threshold is that bound's RMS over the tensor divided by the source RMS; the "
    "expected value (uniform rounding noise, d/sqrt(12) per element) is about amax/(127*sqrt(12)*rms), 0.5-1% "
    "for Gaussian-like weights."
)


# --------------------------------------------------------------------------------------------------- fidelity


#: The block types' noise model is their record's (:attr:`l1quant.kernels.QuantType.noise`: values per scale group,
#: bits per value, symmetric). A group's step is its range (2*amax when symmetric, max-min otherwise) over
#: 2^bits - 1 levels; uniform rounding noise is step/sqrt(12) per value. The searches (make_qkx2_quants,
#: make_qx_quants...) and the 6/8-bit quantized group scales move the real error around that figure, so a tensor
#: fails only when its rel RMSE exceeds NOISE_SLACK times it: a net for gross faults (wrong dequantization, garbage
#: blocks); the byte identity with re-quantizing the source is the precise check.
#: Measured (verify --json on tiny random-normal models, every mix): rel RMSE is 0.85-0.97x the model for every
#: type (Q2_K/Q3_K 0.85, Q4_K 0.88, Q6_K 0.91, Q4_1 0.97). 3x leaves room for real weights' heavier tails and
#: still fails a gross fault (garbage blocks are >10x).
NOISE_SLACK = 3.0


#: Array keys whose element order the reference converter does not fix: ``tokenizer.chat_templates`` is written from
#: a Python set of template names (gguf-py's ``GGUFWriter.add_chat_template``), so with per-process string hashing
#: the reference's own output lists them in a different order from run to run. Compared as multisets.
UNORDERED_KEYS = frozenset({gguf.Keys.Tokenizer.CHAT_TEMPLATES})


def _values_differ(key: str, exp: Any, exp_type: Any, found: Any, found_type: Any) -> str | None:
    """A one-line description of how ``found`` differs from ``exp`` (None when equal)."""
    if exp_type != found_type:
        return f"key {quote(key)} has type {type_name(found_type)}, the source gives {type_name(exp_type)}"
    if key in UNORDERED_KEYS and isinstance(exp, list) and isinstance(found, list):
        if sorted(map(str, exp)) == sorted(map(str, found)):
            return None
        return f"{key}: expected {_short(sorted(map(str, exp)))} in any order, found {_short(found)}"
    if isinstance(exp, list):
        if len(exp) != len(found):
            return f"key {quote(key)} has {len(found)} items, the source gives {len(exp)}"
        elem = exp_type[-1] if isinstance(exp_type, tuple) else None
        if elem in (GGUFValueType.FLOAT32,):
            e, f = np.asarray(exp, np.float32), np.asarray(found, np.float32)
            diff: list[int] = np.flatnonzero(e != f).tolist()
        else:
            diff = [i for i, (a, b) in enumerate(zip(exp, found)) if a != b]
        if len(diff):
            i = int(diff[0])
            return (f"{key}[{i}]: expected {exp[i]!r}, found {found[i]!r} "
                    f"({len(diff)} of {len(exp)} items differ)")
        return None
    if exp_type in (GGUFValueType.FLOAT32,):
        if np.float32(exp) == np.float32(found):
            return None
        ratio = f" (x{found / exp:.6g})" if exp else ""
        # float32 values shown at float32 precision: 1e-06, not 9.999999974752427e-07
        return f"{key}: expected {np.float32(exp)!s}, found {np.float32(found)!s}{ratio}"
    if exp != found:
        off = f" (off by {found - exp:+})" if isinstance(exp, int) and not isinstance(exp, bool) else ""
        return f"{key}: expected {exp!r}, found {found!r}{off}"
    return None


def check_metadata(gf: GGUFFile, header: Header, arch: Arch) -> list[Check]:
    """The file's keys against ``header`` (what the converter writes for the source): each key present, with its
    value type and value, no extra key, and the keys both hold in the same order."""
    found = Header.from_file(gf)
    groups: dict[str, list[str]] = {"source.hparams": [], "source.tokenizer": [], "source.general": []}
    notes: list[str] = []

    def group(key: str) -> str:
        if key.startswith("tokenizer."):
            return "source.tokenizer"
        if key.startswith(f"{arch.name}."):
            return "source.hparams"
        return "source.general"

    for key, kv in header.kv.items():
        if key not in found.kv:
            (notes if key.startswith("general.") and key not in STRICT_GENERAL else groups[group(key)]).append(
                f"key {quote(key)} is missing (the source gives {_short(kv.value)})")
            continue
        d = _values_differ(key, kv.value, kv.type, found.kv[key].value, found.kv[key].type)
        if d:
            (notes if key.startswith("general.") and key not in STRICT_GENERAL else groups[group(key)]).append(d)
    for key in found.kv:
        if key not in header.kv and key != "general.alignment":
            if key.startswith("general.") and key not in STRICT_GENERAL:
                notes.append(f"key {quote(key)} is not what the converter writes for this source")
            else:
                groups[group(key)].append(f"key {quote(key)} is not what the converter writes for this source")
    order = header.order_difference(found)
    if order:
        key, prev = order
        groups[group(key)].append(f"key {quote(key)} comes before {quote(prev)}; the converter writes it after")
    # tensor presence, shapes and types are the fidelity checks' (a llama-quantize file may choose its own
    # types); the order of the tensor infos is the header's
    t_order = header.tensor_order_difference(found)
    if t_order:
        i, got, want = t_order
        groups["source.general"].append(f"tensor #{i} is {quote(got)}, the converter writes {quote(want)} there "
                                        "(tensor order differs)")
    ok = {
        "source.hparams": "hparams (layers, context, sizes, heads, rope, eps) equal the source config",
        "source.tokenizer": "tokens, token types, merges, special ids, chat template equal the source tokenizer",
        "source.general": "architecture, file type, quantization version and tensor order as the converter "
                          "writes them",
    }
    checks = [problems_check(n, p, ok[n]) for n, p in groups.items()]
    if notes:
        # Naming keys (general.name, size label, sampling...) depend on --name/--metadata: reported, not failed.
        checks[-1].message += f"; naming metadata differs (allowed, set by --name/--metadata): {notes[0]}" + (
            f" (+{len(notes) - 1} more)" if len(notes) > 1 else "")
        checks[-1].details += notes
    return checks


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def to_f32(x: np.ndarray) -> np.ndarray:
    """Source values as float32 (uint16 arrays are raw bf16 bits, widened exactly)."""
    if x.dtype == np.uint16:
        return decode_bf16(x)
    return np.asarray(x, dtype=np.float32)


def _block_amax(src: np.ndarray, ref: np.ndarray, nb: int) -> np.ndarray:
    """max |x| per block of 32 values, as float32. For bf16 sources the max runs on the 15 magnitude bits
    (they order like |x|), which is half the memory traffic of the float32 path."""
    if src.dtype == np.uint16:
        mag = np.bitwise_and(src.reshape(-1), np.uint16(0x7FFF))
        bits: np.ndarray = np.left_shift(np.max(mag.reshape(nb, 32), axis=1), 16, dtype=np.uint32).view(np.float32)
        return bits
    amax: np.ndarray = np.max(np.abs(ref).reshape(nb, 32), axis=1)
    return amax


@dataclass
class _Acc:
    """Running sums for one tensor (float64 across chunks)."""

    sse: float = 0.0
    ssr: float = 0.0
    sst: float = 0.0
    maxerr: float = 0.0
    max_bound: float = 0.0
    bound_ss: float = 0.0  # sum of bound^2 over elements (Q8_0)
    noise_ss: float = 0.0  # sum of (d^2/12) over elements (Q8_0)
    identical: bool = True
    first_diff: str | None = None
    n_viol: int = 0
    first_viol: str | None = None


def _fidelity_job(fd: int, info: TensorInfo, st: Any, qt: QuantType, r0: int, r1: int,
                  pt: PlannedTensor | None = None) -> _Acc:
    """Compare rows [r0, r1) of one tensor: bytes against re-quantizing the source (with ``pt``'s importance
    weights, if it has any), then the error metrics."""
    rows, ncols = r1 - r0, st.n_cols
    rnb = qt.row_nbytes(ncols)
    src = st.read_rows(r0, r1)
    expect: np.ndarray | None
    if pt is None or pt.imatrix is None:
        try:
            expect = qt.quantize(src)
        except KernelArgumentError:
            if not qt.needs_imatrix:
                raise
            # IQ2_XXS, IQ2_XS, IQ1_S have no unweighted quantizer (ggml's asserts importance weights): an imatrix
            # quant verified without its matrix, whose bytes are not checked; the error metrics still are
            expect = None
    else:
        expect = np.empty((rows, rnb), dtype=np.uint8)
        for a, b, w in pt.imatrix_for_rows(r0, r1):
            qt.quantize(src[a - r0:b - r0], expect[a - r0:b - r0], imatrix=w)
    got = np.empty((rows, rnb), dtype=np.uint8)
    pos = info.abs_offset + r0 * rnb
    view = memoryview(got.reshape(-1))  # type: ignore[arg-type]
    n = 0
    while n < got.nbytes:  # preadv may return short counts; 0 means end of file
        r = os.preadv(fd, [view[n:]], pos + n)
        if r <= 0:
            break
        n += r
    if n != got.nbytes:
        raise GGUFFormatError(f"tensor {quote(info.name)}: expected {got.nbytes} bytes at offset {pos}, got {n}; "
                              "was the file truncated while verifying?")
    acc = _Acc()
    if expect is None:
        acc.identical, acc.first_diff = False, f"row {r0} (not re-quantized: {qt.name} needs importance weights)"
    elif not np.array_equal(expect, got):
        acc.identical = False
        flat = int(np.flatnonzero(expect.reshape(-1) != got.reshape(-1))[0])
        row, byte = divmod(flat, rnb)
        where = f"row {r0 + row}"
        if qt.block_size > 1:
            blk, off = divmod(byte, qt.type_size)
            where += f", block {blk} ({'scale' if off < 2 else f'value {off - 2}'})"
        else:
            where += f", column {byte // qt.type_size}"
        acc.first_diff = where
    del expect
    ref = to_f32(src).reshape(-1)
    deq = qt.dequantize(got, (rows, ncols)).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        acc.ssr = float(np.dot(ref, ref))
        acc.sst = float(np.dot(deq, deq))
        err = np.subtract(deq, ref, out=deq)  # in place: deq is not needed any more
        acc.sse = float(np.dot(err, err))
        np.abs(err, out=err)
    acc.maxerr = float(err.max()) if err.size else 0.0
    model = qt.noise
    if model is not None:
        group, bits, symmetric = model.group, model.bits, model.symmetric
        g = ref.reshape(-1, group)
        with np.errstate(over="ignore", invalid="ignore"):
            rng = 2 * np.abs(g).max(axis=1) if symmetric else g.max(axis=1) - g.min(axis=1)
            step = rng / np.float32(2 ** bits - 1)
            acc.noise_ss = float(np.dot(step, step)) * group / 12
    if qt.name == "Q8_0":
        nb = ref.size // 32
        amax = _block_amax(src, ref, nb)
        d = amax / np.float32(127)
        d16 = d.astype(np.float16).astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            bound = d * np.float32(0.5) + np.float32(127) * np.abs(d16 - d) + amax * np.float32(2.0 ** -20)
            inside = np.less_equal(err.reshape(nb, 32), bound[:, None])  # NaN compares False: a violation
        acc.max_bound = float(bound.max()) if nb else 0.0
        acc.bound_ss = float(np.dot(bound, bound)) * 32
        acc.noise_ss = float(np.dot(d, d)) * 32 / 12
        if not inside.all():
            viol = ~inside.all(axis=1)
            acc.n_viol = int(viol.sum())
            b = int(np.flatnonzero(viol)[0])
            bmax = float(np.max(err.reshape(nb, 32)[b]))
            per_row = ncols // 32
            acc.first_viol = (f"row {r0 + b // per_row}, block {b % per_row} "
                              f"(|err| {bmax:.4g} > bound {float(bound[b]):.4g})")
    return acc


def _merge(a: _Acc, b: _Acc) -> None:
    a.sse += b.sse
    a.ssr += b.ssr
    a.sst += b.sst
    if not b.maxerr <= a.maxerr:  # NaN propagates
        a.maxerr = b.maxerr
    a.max_bound = max(a.max_bound, b.max_bound)
    a.bound_ss += b.bound_ss
    a.noise_ss += b.noise_ss
    if a.identical and not b.identical:
        a.identical, a.first_diff = False, b.first_diff
    if b.n_viol and a.first_viol is None:
        a.first_viol = b.first_viol
    a.n_viol += b.n_viol


def _sqrt_ratio(num: float, den: float) -> float:
    """sqrt(num / den), 0 for den == 0, NaN (never an exception) when either is inf/NaN."""
    if not den > 0:
        return 0.0 if den == 0 else math.nan
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.float64(num) / np.float64(den)))


def _snr(ssr: float, sse: float) -> float:
    """10 log10(ssr / sse) in dB, defined for every input: inf/NaN sums (an overflowed or NaN tensor) give inf,
    -inf or NaN, never a ``math domain error``."""
    if math.isnan(ssr) or math.isnan(sse):
        return math.nan
    if sse == 0:
        return math.inf
    with np.errstate(all="ignore"):
        r = float(np.float64(ssr) / np.float64(sse))
    if math.isnan(r):
        return math.nan
    if r == 0:
        return -math.inf
    return 10 * math.log10(r) if math.isfinite(r) else math.inf


def _row(name: str, qt: QuantType, shape: tuple[int, ...], a: _Acc, bytes_checked: bool = True) -> TensorFidelity:
    with np.errstate(all="ignore"):  # inf/inf and the like: NaN, reported as such
        rel = float(np.sqrt(np.float64(a.sse) / np.float64(a.ssr))) if a.ssr > 0 else (
            0.0 if a.sse == 0 else math.inf)
    if math.isnan(a.sse):
        rel = math.nan
    snr = _snr(a.ssr, a.sse)
    # cos = a.b / (|a||b|) rewritten with |a-b|^2 = |a|^2 + |b|^2 - 2 a.b as 1 - (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|):
    # near 1 (what quantization gives) a direct float32-accumulated a.b loses the digits that matter, while
    # |a-b|^2 is summed from the errors themselves and keeps them.
    na = math.sqrt(a.ssr) if a.ssr >= 0 else math.nan  # NaN sums stay NaN (math.sqrt(nan) is nan)
    nb = math.sqrt(a.sst) if a.sst >= 0 else math.nan
    if math.isnan(na) or math.isnan(nb):
        cos = math.nan
    elif na > 0 and nb > 0:
        with np.errstate(all="ignore"):
            cos = float(1.0 - (np.float64(a.sse) - (np.float64(na) - nb) ** 2) / (2 * np.float64(na) * nb))
        cos = max(-1.0, min(1.0, cos)) if not math.isnan(cos) else cos
    else:
        cos = 1.0 if a.sse == 0 else 0.0
    problems = []
    if not a.identical and bytes_checked:
        problems.append(f"bytes differ from re-quantizing the source at {a.first_diff}")
    threshold = err_bound = expected = None
    if qt.name == "Q8_0":
        threshold = _sqrt_ratio(a.bound_ss, a.ssr)
        expected = _sqrt_ratio(a.noise_ss, a.ssr)
        err_bound = a.max_bound
        if a.n_viol:
            problems.append(f"{a.n_viol} block(s) outside the Q8_0 error bound, first at {a.first_viol}")
        if not rel <= threshold:
            problems.append(f"rel RMSE {rel:.4g} above the bound {threshold:.4g}")
    elif qt.noise is not None:
        expected = _sqrt_ratio(a.noise_ss, a.ssr)
        threshold = NOISE_SLACK * expected
        if not rel <= threshold:
            problems.append(f"rel RMSE {rel:.4g} above {NOISE_SLACK:g}x the {qt.name} rounding noise "
                            f"{expected:.4g}")
    passed = not problems
    if passed:
        msg = "bytes identical" if a.identical else "bytes not checked (an imatrix quant); within the noise bound"
        msg += "; all errors within the Q8_0 bound" if qt.name == "Q8_0" else ""
    else:
        msg = "; ".join(problems)
        if math.isfinite(rel) and a.ssr > 0:
            msg += f" (rel RMSE {rel:.3g}, max abs err {a.maxerr:.3g})"
    return TensorFidelity(name, qt.name, shape, rel, a.maxerr, cos, snr, a.identical, threshold, err_bound,
                          expected, passed, msg)


def check_fidelity(gf: GGUFFile, plan: Any, threads: int, *, own_types: bool = False,
                   bytes_checked: bool = True) -> tuple[list[Check], list[TensorFidelity]]:
    """Every tensor against re-quantizing its source. ``own_types``: a tensor whose type differs from the plan's
    is re-quantized with the file's own type (a llama-quantize file made with per-tensor flags) instead of
    failing; the structure check reports such deviations. ``bytes_checked`` False (an imatrix quant verified
    without its imatrix): differing bytes are not a failure, the error must be within the type's noise bound."""
    planned = {pt.name: pt for pt in plan.tensors}
    pres: list[str] = []
    for t in gf.tensors:
        if t.name not in planned:
            pres.append(f"tensor {quote(t.name)} has no source tensor (the converter would not write it)")
    in_file = {t.name for t in gf.tensors}
    for name, pt in planned.items():
        if name not in in_file:
            pres.append(f"tensor {quote(name)} is missing (the source has {pt.source.name!r})")
    rows: list[TensorFidelity] = []
    jobs: list[tuple[TensorInfo, Any, int, int]] = []
    for t in gf.tensors:
        pt = planned.get(t.name)
        if pt is None:
            continue
        if t.shape != pt.gguf_dims:
            pres.append(f"tensor {quote(t.name)} has shape {list(t.shape)}, the source {pt.source.name!r} gives "
                        f"{list(pt.gguf_dims)}")
            continue
        if t.ggml_type != pt.qtype.ggml_type and own_types and t.ggml_type.name in QUANT_TYPES:
            pt = dataclasses.replace(pt, qtype=QUANT_TYPES[t.ggml_type.name])
            planned[t.name] = pt
        if t.ggml_type != pt.qtype.ggml_type:
            rows.append(TensorFidelity(t.name, t.ggml_type.name, pt.shape, math.nan, math.nan, math.nan, math.nan,
                                       False, None, None, None, False,
                                       f"type {t.ggml_type.name}, the converter writes {pt.qtype.name} for this "
                                       "source and type"))
            continue
        step = max(1, CHUNK_BYTES // max(1, pt.n_cols * pt.source.itemsize))
        jobs += [(t, pt, r, min(pt.n_rows, r + step)) for r in range(0, pt.n_rows, step)]

    accs: dict[str, _Acc] = {}
    # one descriptor per file the tensors are in (the parts of a split file: GGUFFile.file_of)
    fds = {p: os.open(p, os.O_RDONLY) for p in {gf.file_of(t) for t, _, _, _ in jobs} | {gf.path}}
    try:
        ex = ThreadPoolExecutor(max_workers=threads)
        try:
            results = ex.map(lambda j: (j[0].name, _fidelity_job(fds[gf.file_of(j[0])], j[0], j[1].source,
                                                                 j[1].qtype, j[2], j[3], j[1])), jobs)
            for name, acc in results:
                if name in accs:
                    _merge(accs[name], acc)
                else:
                    accs[name] = acc
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # a read error or Ctrl-C: do not run the remaining jobs
            raise
        ex.shutdown(wait=True)
    finally:
        for fd in fds.values():
            os.close(fd)
    for t in gf.tensors:
        if t.name in accs:
            pt = planned[t.name]
            rows.append(_row(t.name, pt.qtype, pt.shape, accs[t.name], bytes_checked))
    rows.sort(key=lambda r: (r.passed, -(r.rel_rmse if not math.isnan(r.rel_rmse) else math.inf)))
    bad = [f"{r.name}: {r.message}" for r in rows if not r.passed]
    worst = next((r for r in rows if r.passed), None)
    ok = f"{len(rows)} tensors byte-identical to re-quantizing the source"
    if not bytes_checked:
        n_same = sum(r.bytes_identical for r in rows)
        ok = (f"cannot check byte identity of an imatrix quant without its imatrix (pass --imatrix FILE): "
              f"{len(rows)} tensors within their noise bound ({n_same} byte-identical anyway)")
    if worst is not None:
        ok += f"; worst rel RMSE {worst.rel_rmse:.3g} ({worst.name})"
    if any(r.type == "Q8_0" for r in rows):
        ok += "; every Q8_0 element within the 8-bit absmax bound"
    return [problems_check("source.tensors.present", pres, "the file has exactly the tensors the source yields"),
            problems_check("source.tensors", bad, ok)], rows

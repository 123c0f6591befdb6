"""Structural checks of a GGUF file against its architecture's description (no source needed)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from l1quant.arch import Arch
from l1quant.arch.from_gguf import config_from_gguf
from l1quant.check.report import FAIL, PASS, SKIP, Check, problems_check
from l1quant.conversion.metadata import FIELDS
from l1quant.conversion.mixes import assign_types
from l1quant.conversion.plan import stays_f32, tensor_qtype
from l1quant.conversion.target import KEY_TARGET
from l1quant.errors import ConfigError, clip, quote
from l1quant.filetypes import FileType, Mix, file_type_of
from l1quant.gguf.reader import (  # one type-naming rule for reader and verifier
    GGUFFile,
    TensorInfo,
    type_name,
)
from l1quant.imatrix_file import IMATRIX_KEY_PREFIX
from l1quant.kernels import QUANT_TYPES
from l1quant.kernels.nonfinite import first_nonfinite_output
from l1quant.source.config import ModelConfig

#: Source bytes per scan/fidelity job. Each job makes ~10 passes over its float32 copies, so they should stay in
#: cache: measured on the L1-shaped checkpoint, 512 KiB is ~30% less CPU than 4 MiB (and than 128 KiB).
CHUNK_BYTES = 512 << 10

_T = GGUFValueType
_TK = gguf.Keys.Tokenizer
# (key, type, required). Array types are (ARRAY, element type), as the reader reports them.
_GENERIC_KEYS: tuple[tuple[str, Any, bool], ...] = (
    (gguf.Keys.General.ARCHITECTURE, _T.STRING, True),
    (gguf.Keys.General.FILE_TYPE, _T.UINT32, False),
    (gguf.Keys.General.QUANTIZATION_VERSION, _T.UINT32, False),
    (_TK.MODEL, _T.STRING, True),
    (_TK.PRE, _T.STRING, False),
    (_TK.LIST, (_T.ARRAY, _T.STRING), True),
    (_TK.TOKEN_TYPE, (_T.ARRAY, _T.INT32), True),
    (_TK.MERGES, (_T.ARRAY, _T.STRING), True),
    (_TK.BOS_ID, _T.UINT32, False), (_TK.EOS_ID, _T.UINT32, False), (_TK.UNK_ID, _T.UINT32, False),
    (_TK.SEP_ID, _T.UINT32, False), (_TK.PAD_ID, _T.UINT32, False),
    (_TK.ADD_BOS, _T.BOOL, False), (_TK.ADD_EOS, _T.BOOL, False), (_TK.ADD_SEP, _T.BOOL, False),
    (_TK.CHAT_TEMPLATE, _T.STRING, True),
)
_SPECIAL_ID_KEYS = tuple(k for k, t, _ in _GENERIC_KEYS if k.endswith("_token_id"))
# general.* keys that depend on naming options (--name, --metadata, README), not on the weights.
STRICT_GENERAL = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.TYPE, gguf.Keys.General.FILE_TYPE,
                   gguf.Keys.General.QUANTIZATION_VERSION, "general.alignment")


# --------------------------------------------------------------------------------------------------- structure


def _general_key_types() -> dict[str, Any]:
    """The GGUF type llama.cpp reads each ``general.*`` authorship/sampling key as (a key of another type makes
    llama.cpp's loader throw "wrong type"), from the converter-side table in conversion/metadata.py."""
    from gguf import GGUFValueType as V

    kinds = {"str": V.STRING, "license": V.STRING, "f32": V.FLOAT32, "i32": V.INT32,
             "strs": (V.ARRAY, V.STRING)}
    out: dict[str, Any] = {key: kinds[kind] for key, _, kind in FIELDS.values() if kind in kinds}
    out["general.base_model.count"] = out["general.dataset.count"] = V.UINT32
    return out


#: ``general.base_model.{i}.name`` and ``general.dataset.{i}.*``: strings in llama.cpp's converter and loader
_INDEXED_GENERAL = __import__("re").compile(r"general\.(base_model|dataset)\.\d+\.[a-z_]+")


def loader_type_problems(gf: GGUFFile, checked: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Key types ggml's GGUF loader or llama.cpp's key reader refuse: an array of arrays anywhere (ggml's
    ``gguf_init_from_file`` rejects nested arrays: the file does not load at all), and a ``general.*`` key whose
    type is not the one llama.cpp reads it as. ``checked`` keys were already type-checked by the caller."""
    from gguf import GGUFValueType as V

    want = _general_key_types()
    problems = []
    for key, t in gf.kv_types.items():
        if isinstance(t, tuple) and len(t) > 2:
            problems.append(f"key {quote(key)} is an array of arrays ({type_name(t)}): ggml's loader refuses the file")
            continue
        if key in checked:
            continue
        exp = want.get(key)
        if exp is None and _INDEXED_GENERAL.fullmatch(key):
            exp = V.STRING
        if exp is not None and t != exp:
            problems.append(f"key {quote(key)} has type {type_name(t)}, llama.cpp reads it as {type_name(exp)}")
    return problems


def check_keys(gf: GGUFFile, arch: Arch) -> Check:
    spec: list[tuple[str, Any, bool]] = list(_GENERIC_KEYS)
    for row in arch.all_hparams:
        spec.append((row.key.format(arch=arch.name), row.vtype, row.required))
    problems = []
    for key, vtype, req in spec:
        if key not in gf.kv:
            if req:
                problems.append(f"missing required key {quote(key)}")
            continue
        found = gf.kv_types[key]
        if found != vtype:
            problems.append(f"key {quote(key)} has type {type_name(found)}, expected {type_name(vtype)}")
    problems += loader_type_problems(gf, {k for k, *_ in spec})
    return problems_check("keys", problems, f"{len(gf.kv)} keys; the {sum(r for *_, r in spec)} required keys present, "
                                    "value types as the converter writes them")


def check_hparams(gf: GGUFFile, arch: Arch) -> tuple[Check, ModelConfig | None]:
    try:
        cfg = config_from_gguf(gf, arch)
    except ConfigError as e:
        msg = str(e)
        prefix = f"{gf.path}: "
        return Check("hparams", FAIL, msg.removeprefix(prefix)), None
    # keys the table derives from others (value_length, llama's rope.dimension_count) must agree with them
    problems = arch.derived_mismatches(gf.kv, cfg)
    return problems_check("hparams", problems,
                  f"{cfg.num_hidden_layers} layers, embedding {cfg.hidden_size}, ff {cfg.intermediate_size}, "
                  f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads (head dim {cfg.head_dim}), "
                  f"vocab {cfg.vocab_size}"), cfg


def check_tokenizer(gf: GGUFFile, arch: Arch, n_vocab: int | None) -> Check:
    kv = gf.kv
    problems: list[str] = []

    def typed(key: str, want: Any) -> Any:
        # A value of the wrong type is reported by the "keys" check; here it is simply not inspected.
        return kv.get(key) if gf.kv_types.get(key) == want else None

    tokens = typed(_TK.LIST, (_T.ARRAY, _T.STRING))
    types = typed(_TK.TOKEN_TYPE, (_T.ARRAY, _T.INT32))
    merges = typed(_TK.MERGES, (_T.ARRAY, _T.STRING))
    if kv.get(_TK.MODEL) not in (None, arch.tokenizer_model):
        problems.append(f"{_TK.MODEL} is {kv.get(_TK.MODEL)!r}, expected {arch.tokenizer_model!r} for {arch.name}")
    if isinstance(tokens, list):
        if n_vocab is not None and len(tokens) != n_vocab:
            problems.append(f"{_TK.LIST} has {len(tokens)} tokens, token_embd.weight has {n_vocab} rows")
        if len(set(tokens)) != len(tokens):  # fast path; find the first duplicate only when there is one
            seen: dict[str, int] = {}
            for i, t in enumerate(tokens):
                j = seen.setdefault(t, i)
                if j != i:
                    problems.append(f"{_TK.LIST}[{i}] {quote(t)} duplicates token {j}")
                    break
    if isinstance(types, list):
        if isinstance(tokens, list) and len(types) != len(tokens):
            problems.append(f"{_TK.TOKEN_TYPE} has {len(types)} entries, {_TK.LIST} has {len(tokens)}")
        arr = np.asarray(types, dtype=np.int64) if types else np.zeros(0, np.int64)
        bad = np.flatnonzero((arr < 1) | (arr > 6))
        if bad.size:
            i = int(bad[0])
            problems.append(f"{_TK.TOKEN_TYPE}[{i}] is {int(arr[i])}, expected 1..6 "
                            f"({bad.size} invalid)")
    if isinstance(merges, list):
        bad_m = _bad_merges(merges)
        if bad_m:
            problems.append(f"{_TK.MERGES}[{bad_m[0]}] {quote(str(merges[bad_m[0]]))} is not two space-separated "
                            f"parts ({len(bad_m)} malformed)")
        if not merges:
            problems.append(f"{_TK.MERGES} is empty")
    size = n_vocab if n_vocab is not None else (len(tokens) if isinstance(tokens, list) else None)
    for key in _SPECIAL_ID_KEYS:
        v = typed(key, _T.UINT32)
        if v is not None and size is not None and not 0 <= v < size:
            problems.append(f"{key} is {v}, outside the vocabulary (size {size})")
    tmpl = typed(_TK.CHAT_TEMPLATE, _T.STRING)
    if tmpl is not None:
        if not tmpl.strip():
            problems.append(f"{_TK.CHAT_TEMPLATE} is empty")
        else:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment

                ImmutableSandboxedEnvironment().parse(tmpl)
            except ImportError:  # pragma: no cover - jinja2 ships with the CLI extras
                pass
            except Exception as e:  # noqa: BLE001 - any template syntax error
                problems.append(f"{_TK.CHAT_TEMPLATE} does not parse as Jinja: {str(e).splitlines()[0]}")
    n_tok = len(tokens) if isinstance(tokens, list) else 0
    n_merge = len(merges) if isinstance(merges, list) else 0
    return problems_check("tokenizer", problems, f"{n_tok} tokens, {n_merge} merges, token types valid, special ids in "
                                         "range, chat template present and parses")


_MERGE_RE = re.compile(r"^[^ \n]+ [^ \n]+$", re.MULTILINE)


def _bad_merges(merges: list[Any]) -> list[int]:
    """Indices of merges that are not exactly two non-empty parts separated by one space.

    One regex over the joined list (C speed) confirms the common all-good case; the per-item loop runs only
    when something is off.

    Example:
        >>> _bad_merges(["a b", "ab", "a  b", "Ġ t"])
        [1, 2]
    """
    if all(isinstance(m, str) for m in merges):
        joined = "\n".join(merges)
        if joined.count("\n") == len(merges) - 1 and len(_MERGE_RE.findall(joined)) == len(merges):
            return []
    return [i for i, m in enumerate(merges)
            if not isinstance(m, str) or len(parts := m.split(" ")) != 2 or not all(parts) or "\n" in m]


def file_mix(gf: GGUFFile) -> Mix | None:
    """The llama-quantize mix a file was written as (:func:`l1quant.filetypes.file_type_of`), or None.

    Example:
        >>> file_mix(read_gguf("m-Q4_K_M.gguf")).name  # doctest: +SKIP
        'Q4_K_M'
    """
    return file_type_of(gf).mix


def file_type_name(gf: GGUFFile) -> str | None:
    """The file's type as llama.cpp names it (``Q4_K_M``, ``Q8_0``...), from ``general.file_type``.

    Example:
        >>> file_type_name(read_gguf("m-Q4_K_M.gguf"))  # doctest: +SKIP
        'Q4_K_M'
    """
    return file_type_of(gf).name


def _mix_types(gf: GGUFFile, arch: Arch, cfg: ModelConfig, mix: Mix) -> tuple[list[str], list[str]]:
    """(structural problems, deviations from the mix's default rule) of a llama-quantize file's tensor types."""
    problems: list[str] = []
    # a file quantized with an importance matrix says so in its quantize.imatrix.* keys; the rule depends on it
    has_imatrix = any(k.startswith(IMATRIX_KEY_PREFIX) for k in gf.kv)
    try:
        a = assign_types([(t.name, t.shape) for t in gf.tensors], mix, n_layer=cfg.num_hidden_layers,
                         n_head=cfg.num_attention_heads, n_head_kv=cfg.num_key_value_heads, arch=arch.name,
                         has_imatrix=has_imatrix)
    except ConfigError as e:
        return [f"the {mix.name} rule cannot be applied: {e}"], []
    deviations = []
    for t in gf.tensors:
        want = a.types.get(t.name)
        if want is not None and t.ggml_type != want:
            deviations.append(f"{quote(t.name)} is {t.ggml_type.name} (rule: {want.name})")
        if want is None and t.ggml_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16,
                                                 GGMLQuantizationType.BF16):
            problems.append(f"tensor {quote(t.name)} is {t.ggml_type.name}; llama-quantize never quantizes it")
    if a.order != tuple(t.name for t in gf.tensors):
        problems.append("tensors are not in llama-quantize's order (non-blk names sorted, then layer by layer)")
    return problems, deviations


def check_tensors(gf: GGUFFile, arch: Arch, cfg: ModelConfig, ft: FileType | None = None) -> list[Check]:
    """The tensors against the description and the file's type ``ft`` (recognised once by the caller)."""
    ft = ft or file_type_of(gf)
    expected = arch.file_tensors(cfg, frozenset(t.name for t in gf.tensors))  # llama's rope_freqs has no key
    by_name = {t.name: t for t in gf.tensors}
    missing = [n for n in expected if n not in by_name]
    extra = [t.name for t in gf.tensors if t.name not in expected]
    pres = [f"tensor {quote(n)} is missing" for n in missing] + \
           [f"tensor {quote(n)} is not expected by a {arch.name} model with these hparams" for n in extra]
    shapes = []
    for name, hf_shape in expected.items():
        t = by_name.get(name)
        if t is not None and t.shape != tuple(reversed(hf_shape)):
            shapes.append(f"tensor {quote(name)} has shape {list(t.shape)}, the hparams imply "
                          f"{list(reversed(hf_shape))} (ggml order)")
    mix, ftype = ft.mix, ft.converter
    types = []
    ft_val = ft.value
    if ft_val is not None and ftype is None and mix is None:
        types.append(f"general.file_type is {ft_val!r}, not a type l1quant knows (converter types "
                     f"{', '.join(f'{q.file_type} ({q.name})' for q in QUANT_TYPES.values() if q.outtype)}"
                     ", or a llama-quantize type as the last key)")
    for t in gf.tensors:
        if stays_f32(t.name, len(t.shape), arch):
            if t.ggml_type != GGMLQuantizationType.F32:
                types.append(f"tensor {quote(t.name)} is {t.ggml_type.name}, norms/biases/1-D tensors must be F32")
            continue
        if t.ggml_type.name not in QUANT_TYPES:
            types.append(f"tensor {quote(t.name)} has type {t.ggml_type.name}, which l1quant does not write "
                         f"({', '.join(QUANT_TYPES)})")
            continue
        if ftype is None:
            continue
        want = tensor_qtype(t.name, t.shape[0], len(t.shape), arch, ftype)  # ggml order: shape[0] is the row
        if t.ggml_type != want.ggml_type:
            types.append(f"tensor {quote(t.name)} is {t.ggml_type.name}, general.file_type says {want.name}")
    checks = [
        problems_check("tensors.present", pres, f"all {len(expected)} expected tensors present, none unexpected"),
        problems_check("tensors.shapes", shapes, "every tensor has the shape the hparams imply"),
    ]
    if mix is None:
        checks.append(problems_check("tensors.types", types, f"norms/biases F32, matrices "
                                                     f"{ftype.name if ftype else 'a known type'} (the converter's "
                                                     "type rules)"))
        return checks
    problems, deviations = _mix_types(gf, arch, cfg, mix)
    checks.append(problems_check("tensors.types", types + problems,
                         f"norms/biases F32, every type known, in llama-quantize's order for {mix.name}"))
    if deviations and KEY_TARGET in gf.kv:
        # type auto: the search chose these types (the source check rebuilds each with its chosen type)
        checks.append(Check("tensors.mix", PASS, f"{len(deviations)} tensor(s) typed by the target-size search "
                                                 f"({KEY_TARGET} = {clip(gf.kv[KEY_TARGET])}) on the {mix.name} "
                                                 "rule"))
    elif deviations:
        # per-tensor flags (--pure, --tensor-type ...) legitimately change types: said, not failed
        checks.append(Check("tensors.mix", SKIP, f"{len(deviations)} tensor(s) differ from the default {mix.name} "
                                                 f"rule (made with per-tensor options?): {'; '.join(deviations[:3])}"
                                                 + (" ..." if len(deviations) > 3 else ""),
                            deviations))
    else:
        checks.append(Check("tensors.mix", PASS, f"every tensor has the type llama-quantize's {mix.name} rule gives"))
    return checks


def check_layout(gf: GGUFFile) -> Check:
    end = gf.data_offset
    if gf.tensors:
        last = gf.tensors[-1]
        end = last.abs_offset + -(-last.nbytes // gf.alignment) * gf.alignment
    problems = []
    if gf.file_size > end:
        problems.append(f"{gf.file_size - end} unexpected bytes after the last tensor's padded end "
                        f"(offset {end}, file size {gf.file_size})")
    return problems_check("header", problems,
                  f"GGUF v{gf.version}, {len(gf.kv)} keys, {len(gf.tensors)} tensors, alignment {gf.alignment}, "
                  f"offsets aligned, packed and inside the file")


def check_finite(gf: GGUFFile, threads: int) -> Check:
    """Scan every tensor for NaN/Inf (block types: their f16 scales, kernels/nonfinite.py), in parallel row
    chunks. Runs with and without ``--source``: one file, one verdict."""
    jobs = []
    for t in gf.tensors:
        step = max(1, CHUNK_BYTES // max(1, t.row_nbytes))
        jobs += [(t, r, min(t.n_rows, r + step)) for r in range(0, t.n_rows, step)]

    def scan(job: tuple[TensorInfo, int, int]) -> str | None:
        t, r0, r1 = job
        raw = np.frombuffer(gf.read_tensor_bytes(t, r0 * t.row_nbytes, (r1 - r0) * t.row_nbytes), np.uint8)
        # every type: F32/F16/BF16 values, the f16 scales of every block type (Q8_0 d, Q4_K d/dmin, Q6_K d, ...)
        i = first_nonfinite_output(t.ggml_type.name, raw.reshape(r1 - r0, t.row_nbytes))  # the type's record
        if i is None:
            return None
        flat = r0 * t.shape[0] + i
        return f"tensor {quote(t.name)} holds NaN/Inf at row {flat // t.shape[0]}, column {flat % t.shape[0]}"

    with ThreadPoolExecutor(max_workers=threads) as ex:
        found = [m for m in ex.map(scan, jobs) if m is not None]
    seen: set[str] = set()
    problems = []
    for m in found:  # one message per tensor
        key = m.split(" holds")[0]
        if key not in seen:
            seen.add(key)
            problems.append(m)
    return problems_check("tensors.finite", problems, "no NaN/Inf in any tensor")

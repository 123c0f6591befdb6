"""``l1quant.verify``: prove a GGUF file is sound, faithful to its source checkpoint, and runs like it.

Three layers, each a list of named checks (pass / fail / skip) in one :class:`VerifyReport`:

* **Structure** (always). Everything :func:`l1quant.gguf_reader.read_gguf` enforces (header, version, counts,
  bounded lengths, known types, aligned non-overlapping in-file offsets: a hostile or truncated file raises
  :class:`~l1quant.errors.GGUFFormatError`, exit code 2), then for the architecture's table (qwen2): required keys
  present with the right value types, head counts consistent, token arrays as long as ``token_embd``'s rows,
  merges that parse, valid token types, special ids inside the vocabulary, a chat template that parses, every
  expected tensor present with the shape the hparams imply, no unexpected tensor, tensor types allowed by the
  type rules (norms, biases and 1-D tensors F32; matrices the file type, or F16 where the row length does not
  fit the block), no NaN/Inf in any tensor (scanned only without ``source``: the fidelity pass covers it).
* **Fidelity** (``source=MODEL_DIR``). The header the converter would write for this source
  (:func:`l1quant.convert.prepare`, nothing written) is compared key by key: hparams, rope, eps, tokens, token
  types, merges, special ids, chat template. Every tensor is streamed in row chunks (bounded memory, a thread
  pool, the same kernels as the converter): its bytes must equal re-quantizing the source exactly (the converter
  is deterministic and byte-identical with llama.cpp, so this is the strongest statement), and for Q8_0 every
  element must also sit inside the documented 8-bit absmax error bound (see :data:`Q8_0_BOUND_DOC`). Relative
  RMSE, max abs error, cosine and SNR are reported for every tensor.
* **Logits** (``logits=True``). The reference numpy qwen2 forward (:mod:`l1quant.forward`) runs once on the
  source weights and once on the GGUF's dequantized weights and hparams over the first ``n_tokens`` tokens of a
  text; mean/max/p99 KL divergence, top-1 agreement and both perplexities are compared with a per-type limit
  (:data:`LOGIT_KLD_LIMITS`). ``runtime="llama.cpp"`` also runs the file itself through llama-cpp-python.

Example:
    >>> from l1quant.verify import verify
    >>> rep = verify("L1-Qwen-1.5B-Max-Q8_0.gguf", source="L1-Qwen-1.5B-Max")   # doctest: +SKIP
    >>> rep.passed, rep.verdict                                                # doctest: +SKIP
    (True, 'PASS: 14 checks passed, 339 tensors byte-identical to re-quantizing the source')
    >>> print(format_report(rep))                                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from .arch import Arch, get_arch
from .config import ModelConfig
from .errors import ConfigError, GGUFFormatError, InputError, L1QuantError
from .gguf_reader import GGUFFile, TensorInfo, _q, read_gguf  # one quoting/type-naming rule for reader and verifier
from .gguf_reader import _type_name as _tname
from .kernels import QUANT_TYPES, QuantType, decode_bf16, first_nonfinite
from .plan import stays_f32, tensor_qtype

__all__ = [
    "LOGIT_KLD_LIMITS",
    "Q8_0_BOUND_DOC",
    "Check",
    "TensorFidelity",
    "VerifyReport",
    "config_from_gguf",
    "format_report",
    "verify",
]

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: Source bytes per fidelity job. Each job makes ~10 passes over its float32 copies, so they should stay in
#: cache: measured on the L1-shaped checkpoint, 512 KiB is ~30% less CPU than 4 MiB (and than 128 KiB).
CHUNK_BYTES = 512 << 10

Q8_0_BOUND_DOC = (
    "Q8_0 bound: per block of 32, d = amax/127 (float32) and q = round(x/d), so |x - q*d| <= d/2; the stored "
    "scale is f16(d), adding |q|*|f16(d) - d| <= 127*|f16(d) - d|. Each element must satisfy "
    "|err| <= d/2 + 127*|f16(d) - d| + 2^-20*amax (float32 rounding slack), with d computed from the source "
    "block. The tensor's rel-RMSE threshold is that bound's RMS over the tensor divided by the source RMS; the "
    "expected value (uniform rounding noise, d/sqrt(12) per element) is about amax/(127*sqrt(12)*rms), 0.5-1% "
    "for Gaussian-like weights."
)

#: Mean KL divergence limit (nats/token) of the logit check per GGUF file type, reference forward and llama.cpp
#: alike. Measured here on random-weight models (real weights were not available): Q8_0 costs ~1e-6 on the tiny
#: test model and 7e-4 on the L1-shaped one (128 tokens); F32 and BF16 from a bf16 source are exact (0), F16
#: nearly so. One layer's ffn_down scaled x64 gives 1.8e-2 on the tiny model (>1000x its Q8_0 value). The limits
#: sit ~10x above each type's expected cost; the per-tensor checks are the precise ones, this is the end-to-end net.
LOGIT_KLD_LIMITS: dict[str, float] = {"F32": 1e-4, "BF16": 1e-3, "F16": 1e-3, "Q8_0": 1e-2}

# Keys every qwen2-family file needs (the converter always writes them); their types come from the arch table.
_REQUIRED_HPARAMS = (
    gguf.Keys.LLM.BLOCK_COUNT, gguf.Keys.LLM.CONTEXT_LENGTH, gguf.Keys.LLM.EMBEDDING_LENGTH,
    gguf.Keys.LLM.FEED_FORWARD_LENGTH, gguf.Keys.Attention.HEAD_COUNT, gguf.Keys.Attention.HEAD_COUNT_KV,
    gguf.Keys.Rope.FREQ_BASE, gguf.Keys.Attention.LAYERNORM_RMS_EPS,
)
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
_STRICT_GENERAL = (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.TYPE, gguf.Keys.General.FILE_TYPE,
                   gguf.Keys.General.QUANTIZATION_VERSION, "general.alignment")
_MAX_LISTED = 3  # problems named in a check's one-line message; all of them are in ``details``


# --------------------------------------------------------------------------------------------------- report types


@dataclass
class Check:
    """One named check: ``status`` is ``pass``, ``fail`` or ``skip``; ``message`` is one line.

    ``details`` holds every problem found (the message names the first few).

    Example:
        >>> Check("tokenizer", "fail", "token 5: type 9, expected 1..6").failed
        True
    """

    name: str
    status: str
    message: str
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class TensorFidelity:
    """One tensor of the file against its source tensor.

    ``shape`` is the source (HF, row-major) shape. ``rel_rmse`` = ||deq - src|| / ||src||; ``snr_db`` =
    10 log10(||src||^2 / ||deq - src||^2) (inf when exact); ``bytes_identical``: the file's bytes equal
    re-quantizing the source with the same kernels. ``threshold`` is the rel-RMSE bound implied by the
    per-element bound (Q8_0; None for the float types, whose criterion is identical bytes), ``err_bound`` the
    largest per-element bound, ``expected_rel_rmse`` the uniform-noise estimate (Q8_0).

    Example:
        >>> TensorFidelity("w", "F32", (2, 32), 0.0, 0.0, 1.0, math.inf, True, None, None, None, True, "").passed
        True
    """

    name: str
    type: str
    shape: tuple[int, ...]
    rel_rmse: float
    max_abs_err: float
    cosine: float
    snr_db: float
    bytes_identical: bool
    threshold: float | None
    err_bound: float | None
    expected_rel_rmse: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class VerifyReport:
    """Everything :func:`verify` found. ``passed`` is True when no check failed.

    ``tensors`` is sorted worst first (failed, then by relative RMSE); ``logits`` / ``runtime_logits`` are
    :meth:`l1quant.forward.LogitReport.to_dict` plus ``limit`` and ``passed`` (None when not run).

    Example:
        >>> rep = VerifyReport("x.gguf", None, [Check("header", "pass", "ok")], [], None, None, 0.1)
        >>> rep.passed, rep.verdict
        (True, 'PASS: 1 check passed')
    """

    path: str
    source: str | None
    checks: list[Check]
    tensors: list[TensorFidelity]
    logits: dict[str, Any] | None
    runtime_logits: dict[str, Any] | None
    elapsed_s: float
    file_type: str | None = None
    n_tensors: int = 0
    file_size: int = 0

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def verdict(self) -> str:
        """One line: PASS/FAIL and why."""
        n = len(self.checks)
        bad = self.failed_checks
        skipped = sum(c.status == SKIP for c in self.checks)
        if bad:
            first = bad[0]
            return (f"FAIL: {len(bad)} of {n} checks failed ({', '.join(c.name for c in bad)}); "
                    f"first: {first.name}: {first.message}")
        s = f"PASS: {n - skipped} check{'s' if n - skipped != 1 else ''} passed"
        if skipped:
            s += f", {skipped} skipped"
        if self.tensors:
            s += f"; {len(self.tensors)} tensors byte-identical to re-quantizing the source"
        return s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become the strings "inf", "-inf", "nan")."""
        d = {
            "file": self.path,
            "source": self.source,
            "file_type": self.file_type,
            "file_size": self.file_size,
            "n_tensors": self.n_tensors,
            "passed": self.passed,
            "verdict": self.verdict,
            "elapsed_s": self.elapsed_s,
            "checks": [asdict(c) for c in self.checks],
            "tensors": [t.to_dict() for t in self.tensors],
            "logits": self.logits,
            "runtime_logits": self.runtime_logits,
        }
        return _json_safe(d)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (no NaN/Infinity literals)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        return _json_safe(v.item())
    return v


def _check(name: str, problems: list[str], ok_message: str) -> Check:
    if not problems:
        return Check(name, PASS, ok_message)
    more = f" (+{len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    return Check(name, FAIL, "; ".join(problems[:_MAX_LISTED]) + more, list(problems))


# --------------------------------------------------------------------------------------------------- structure


def config_from_gguf(gf: GGUFFile, arch: Arch) -> ModelConfig:
    """The :class:`ModelConfig` a GGUF's hparams imply (vocab size from ``token_embd`` rows, else the token list;
    tied embeddings when there is no ``output.weight``), so the arch table can say which tensors must exist.

    Raises :class:`ConfigError` (naming GGUF keys) when a required key is missing, mistyped or inconsistent.

    Example:
        >>> cfg = config_from_gguf(read_gguf("model.gguf"), get_arch("qwen2"))   # doctest: +SKIP
        >>> cfg.num_hidden_layers, cfg.head_dim                                  # doctest: +SKIP
        (28, 128)
    """
    kv, a = gf.kv, arch.name

    def get(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        full = key.format(arch=a)
        v = kv.get(full, default)
        if v is None:
            raise ConfigError(f"{gf.path}: missing required key {_q(full)}")
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"{gf.path}: key {_q(full)} is {v!r}, expected a number")
        return v

    n_embd = get(gguf.Keys.LLM.EMBEDDING_LENGTH, int)
    n_head = get(gguf.Keys.Attention.HEAD_COUNT, int)
    n_kv = get(gguf.Keys.Attention.HEAD_COUNT_KV, int, n_head)
    key_len = kv.get(gguf.Keys.Attention.KEY_LENGTH.format(arch=a))
    for key, v in ((gguf.Keys.Attention.HEAD_COUNT, n_head), (gguf.Keys.Attention.HEAD_COUNT_KV, n_kv)):
        if v <= 0:
            raise ConfigError(f"{gf.path}: {key.format(arch=a)} is {v}, expected a positive integer")
    if key_len is None and n_embd % n_head:
        raise ConfigError(f"{gf.path}: {a}.attention.head_count={n_head} does not divide "
                          f"{a}.embedding_length={n_embd}")
    if n_head % n_kv:
        raise ConfigError(f"{gf.path}: {a}.attention.head_count_kv={n_kv} does not divide "
                          f"{a}.attention.head_count={n_head}")
    names = {t.name for t in gf.tensors}
    emb = next((t for t in gf.tensors if t.name == "token_embd.weight"), None)
    tokens = kv.get(_TK.LIST)
    if emb is not None and len(emb.shape) == 2:
        n_vocab = emb.shape[1]
    elif isinstance(tokens, list) and tokens:
        n_vocab = len(tokens)
    else:
        raise ConfigError(f"{gf.path}: cannot tell the vocabulary size (no token_embd.weight, no {_TK.LIST})")
    d: dict[str, Any] = {
        "architectures": [arch.hf_architectures[0]],
        "hidden_size": n_embd,
        "intermediate_size": get(gguf.Keys.LLM.FEED_FORWARD_LENGTH, int),
        "num_hidden_layers": get(gguf.Keys.LLM.BLOCK_COUNT, int),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "vocab_size": n_vocab,
        "max_position_embeddings": get(gguf.Keys.LLM.CONTEXT_LENGTH, int),
        "rms_norm_eps": get(gguf.Keys.Attention.LAYERNORM_RMS_EPS, (int, float)),
        "rope_theta": get(gguf.Keys.Rope.FREQ_BASE, (int, float), 10000.0),
        "tie_word_embeddings": "output.weight" not in names,
    }
    if key_len is not None:
        d["head_dim"] = key_len
    return ModelConfig.from_dict(d, source=f"{gf.path} (GGUF hparams)")


def _check_keys(gf: GGUFFile, arch: Arch) -> Check:
    spec: list[tuple[str, Any, bool]] = list(_GENERIC_KEYS)
    required = {k.format(arch=arch.name) for k in _REQUIRED_HPARAMS}
    for key, _get, vtype in arch.hparam_rows:
        full = key.format(arch=arch.name)
        spec.append((full, vtype, full in required))
    problems = []
    for key, vtype, req in spec:
        if key not in gf.kv:
            if req:
                problems.append(f"missing required key {_q(key)}")
            continue
        found = gf.kv_types[key]
        if found != vtype:
            problems.append(f"key {_q(key)} has type {_tname(found)}, expected {_tname(vtype)}")
    return _check("keys", problems, f"{len(gf.kv)} keys; the {sum(r for *_, r in spec)} required keys present, "
                                    "value types as the converter writes them")


def _check_hparams(gf: GGUFFile, arch: Arch) -> tuple[Check, ModelConfig | None]:
    try:
        cfg = config_from_gguf(gf, arch)
    except ConfigError as e:
        msg = str(e)
        prefix = f"{gf.path}: "
        return Check("hparams", FAIL, msg.removeprefix(prefix)), None
    problems = []
    a = arch.name
    kl, vl = (gf.kv.get(k.format(arch=a)) for k in (gguf.Keys.Attention.KEY_LENGTH, gguf.Keys.Attention.VALUE_LENGTH))
    if kl is not None and vl is not None and kl != vl:
        problems.append(f"{a}.attention.key_length={kl} differs from value_length={vl}")
    return _check("hparams", problems,
                  f"{cfg.num_hidden_layers} layers, embedding {cfg.hidden_size}, ff {cfg.intermediate_size}, "
                  f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads (head dim {cfg.head_dim}), "
                  f"vocab {cfg.vocab_size}"), cfg


def _check_tokenizer(gf: GGUFFile, arch: Arch, n_vocab: int | None) -> Check:
    kv = gf.kv
    problems: list[str] = []

    def typed(key: str, want: Any) -> Any:
        # A value of the wrong type is reported by the "keys" check; here it is simply not inspected.
        return kv.get(key) if gf.kv_types.get(key) == want else None

    tokens = typed(_TK.LIST, (_T.ARRAY, _T.STRING))
    types = typed(_TK.TOKEN_TYPE, (_T.ARRAY, _T.INT32))
    merges = typed(_TK.MERGES, (_T.ARRAY, _T.STRING))
    if kv.get(_TK.MODEL) not in (None, "gpt2") and arch.name == "qwen2":
        problems.append(f"{_TK.MODEL} is {kv.get(_TK.MODEL)!r}, expected 'gpt2' (BPE) for {arch.name}")
    if isinstance(tokens, list):
        if n_vocab is not None and len(tokens) != n_vocab:
            problems.append(f"{_TK.LIST} has {len(tokens)} tokens, token_embd.weight has {n_vocab} rows")
        if len(set(tokens)) != len(tokens):  # fast path; find the first duplicate only when there is one
            seen: dict[str, int] = {}
            for i, t in enumerate(tokens):
                j = seen.setdefault(t, i)
                if j != i:
                    problems.append(f"{_TK.LIST}[{i}] {_q(t)} duplicates token {j}")
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
            problems.append(f"{_TK.MERGES}[{bad_m[0]}] {_q(str(merges[bad_m[0]]))} is not two space-separated "
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
    return _check("tokenizer", problems, f"{n_tok} tokens, {n_merge} merges, token types valid, special ids in "
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


def _matrix_types(gf: GGUFFile) -> QuantType | None:
    """The kernel type general.file_type names (None when absent or not one l1quant writes)."""
    ft = gf.kv.get(gguf.Keys.General.FILE_TYPE)
    for qt in QUANT_TYPES.values():
        if qt.file_type == ft:
            return qt
    return None


def _check_tensors(gf: GGUFFile, arch: Arch, cfg: ModelConfig) -> list[Check]:
    expected = arch.expected_tensors(cfg)
    by_name = {t.name: t for t in gf.tensors}
    missing = [n for n in expected if n not in by_name]
    extra = [t.name for t in gf.tensors if t.name not in expected]
    pres = [f"tensor {_q(n)} is missing" for n in missing] + \
           [f"tensor {_q(n)} is not expected by a {arch.name} model with these hparams" for n in extra]
    shapes = []
    for name, hf_shape in expected.items():
        t = by_name.get(name)
        if t is not None and t.shape != tuple(reversed(hf_shape)):
            shapes.append(f"tensor {_q(name)} has shape {list(t.shape)}, the hparams imply "
                          f"{list(reversed(hf_shape))} (ggml order)")
    ftype = _matrix_types(gf)
    types = []
    ft_val = gf.kv.get(gguf.Keys.General.FILE_TYPE)
    if ft_val is not None and ftype is None:
        types.append(f"general.file_type is {ft_val!r}, not one of "
                     f"{', '.join(f'{q.file_type} ({q.name})' for q in QUANT_TYPES.values())}")
    for t in gf.tensors:
        if stays_f32(t.name, len(t.shape), arch):
            if t.ggml_type != GGMLQuantizationType.F32:
                types.append(f"tensor {_q(t.name)} is {t.ggml_type.name}, norms/biases/1-D tensors must be F32")
            continue
        if ftype is None:
            if t.ggml_type.name not in QUANT_TYPES:
                types.append(f"tensor {_q(t.name)} has type {t.ggml_type.name}, which l1quant does not write "
                             f"({', '.join(QUANT_TYPES)})")
            continue
        want = tensor_qtype(t.name, t.shape[0], len(t.shape), arch, ftype)  # ggml order: shape[0] is the row
        if t.ggml_type != want.ggml_type:
            types.append(f"tensor {_q(t.name)} is {t.ggml_type.name}, general.file_type says {want.name}")
    return [
        _check("tensors.present", pres, f"all {len(expected)} expected tensors present, none unexpected"),
        _check("tensors.shapes", shapes, "every tensor has the shape the hparams imply"),
        _check("tensors.types", types,
               f"norms/biases F32, matrices {ftype.name if ftype else 'a known type'} (the converter's type rules)"),
    ]


def _check_layout(gf: GGUFFile) -> Check:
    end = gf.data_offset
    if gf.tensors:
        last = gf.tensors[-1]
        end = last.abs_offset + -(-last.nbytes // gf.alignment) * gf.alignment
    problems = []
    if gf.file_size > end:
        problems.append(f"{gf.file_size - end} unexpected bytes after the last tensor's padded end "
                        f"(offset {end}, file size {gf.file_size})")
    return _check("header", problems,
                  f"GGUF v{gf.version}, {len(gf.kv)} keys, {len(gf.tensors)} tensors, alignment {gf.alignment}, "
                  f"offsets aligned, packed and inside the file")


def _check_finite(gf: GGUFFile, threads: int) -> Check:
    """Scan every tensor (Q8_0: its scales) for NaN/Inf, in parallel row chunks."""
    jobs = []
    for t in gf.tensors:
        step = max(1, CHUNK_BYTES // max(1, t.row_nbytes))
        jobs += [(t, r, min(t.n_rows, r + step)) for r in range(0, t.n_rows, step)]

    def scan(job: tuple[TensorInfo, int, int]) -> str | None:
        t, r0, r1 = job
        raw = np.frombuffer(gf.read_tensor_bytes(t, r0 * t.row_nbytes, (r1 - r0) * t.row_nbytes), np.uint8)
        name = t.ggml_type.name
        if name == "Q8_0":
            vals = raw.reshape(-1, 34)[:, :2].copy().view(np.float16).reshape(-1)
            per = 32
        elif name in ("F32", "F16", "BF16"):
            vals = raw.view({"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[name])
            per = 1
        else:
            return None
        i = first_nonfinite(vals)
        if i is None:
            return None
        flat = r0 * t.shape[0] + i * per
        return f"tensor {_q(t.name)} holds NaN/Inf at row {flat // t.shape[0]}, column {flat % t.shape[0]}"

    with ThreadPoolExecutor(max_workers=threads) as ex:
        found = [m for m in ex.map(scan, jobs) if m is not None]
    seen: set[str] = set()
    problems = []
    for m in found:  # one message per tensor
        key = m.split(" holds")[0]
        if key not in seen:
            seen.add(key)
            problems.append(m)
    return _check("tensors.finite", problems, "no NaN/Inf in any tensor")


# --------------------------------------------------------------------------------------------------- fidelity


def _values_differ(key: str, exp: Any, exp_type: Any, found: Any, found_type: Any) -> str | None:
    """A one-line description of how ``found`` differs from ``exp`` (None when equal)."""
    if exp_type != found_type:
        return f"key {_q(key)} has type {_tname(found_type)}, the source gives {_tname(exp_type)}"
    if isinstance(exp, list):
        if len(exp) != len(found):
            return f"key {_q(key)} has {len(found)} items, the source gives {len(exp)}"
        elem = exp_type[-1] if isinstance(exp_type, tuple) else None
        if elem in (_T.FLOAT32,):
            e, f = np.asarray(exp, np.float32), np.asarray(found, np.float32)
            diff: list[int] = np.flatnonzero(e != f).tolist()
        else:
            diff = [i for i, (a, b) in enumerate(zip(exp, found)) if a != b]
        if len(diff):
            i = int(diff[0])
            return (f"{key}[{i}]: expected {exp[i]!r}, found {found[i]!r} "
                    f"({len(diff)} of {len(exp)} items differ)")
        return None
    if exp_type in (_T.FLOAT32,):
        if np.float32(exp) == np.float32(found):
            return None
        ratio = f" (x{found / exp:.6g})" if exp else ""
        # float32 values shown at float32 precision: 1e-06, not 9.999999974752427e-07
        return f"{key}: expected {np.float32(exp)!s}, found {np.float32(found)!s}{ratio}"
    if exp != found:
        off = f" (off by {found - exp:+})" if isinstance(exp, int) and not isinstance(exp, bool) else ""
        return f"{key}: expected {exp!r}, found {found!r}{off}"
    return None


def _check_metadata(gf: GGUFFile, header: gguf.GGUFWriter, arch: Arch) -> list[Check]:
    expected: dict[str, Any] = header.kv_data[0]
    groups: dict[str, list[str]] = {"source.hparams": [], "source.tokenizer": [], "source.general": []}
    notes: list[str] = []

    def group(key: str) -> str:
        if key.startswith("tokenizer."):
            return "source.tokenizer"
        if key.startswith(f"{arch.name}."):
            return "source.hparams"
        return "source.general"

    for key, gv in expected.items():
        etype: Any = gv.type
        if gv.type == _T.ARRAY:
            sub = gv.sub_type
            if sub is None:
                sub = _T.get_type(gv.value[0]) if gv.value else _T.STRING
            etype = (_T.ARRAY, sub)
        if key not in gf.kv:
            (notes if key.startswith("general.") and key not in _STRICT_GENERAL else groups[group(key)]).append(
                f"key {_q(key)} is missing (the source gives {_short(gv.value)})")
            continue
        d = _values_differ(key, gv.value, etype, gf.kv[key], gf.kv_types[key])
        if d:
            (notes if key.startswith("general.") and key not in _STRICT_GENERAL else groups[group(key)]).append(d)
    for key in gf.kv:
        if key not in expected and key != "general.alignment":
            if key.startswith("general.") and key not in _STRICT_GENERAL:
                notes.append(f"key {_q(key)} is not what the converter writes for this source")
            else:
                groups[group(key)].append(f"key {_q(key)} is not what the converter writes for this source")
    ok = {
        "source.hparams": "hparams (layers, context, sizes, heads, rope, eps) equal the source config",
        "source.tokenizer": "tokens, token types, merges, special ids, chat template equal the source tokenizer",
        "source.general": "architecture, file type, quantization version as the converter writes them",
    }
    checks = [_check(n, p, ok[n]) for n, p in groups.items()]
    if notes:
        # Naming keys (general.name, size label, sampling...) depend on --name/--metadata: reported, not failed.
        checks[-1].message += f"; naming metadata differs (allowed, set by --name/--metadata): {notes[0]}" + (
            f" (+{len(notes) - 1} more)" if len(notes) > 1 else "")
        checks[-1].details += notes
    return checks


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _to_f32(x: np.ndarray) -> np.ndarray:
    """Source values as float32 (uint16 arrays are raw bf16 bits, widened exactly)."""
    if x.dtype == np.uint16:
        return decode_bf16(x)
    return np.asarray(x, dtype=np.float32)


def _block_amax(src: np.ndarray, ref: np.ndarray, nb: int) -> np.ndarray:
    """max |x| per block of 32 values, as float32. For bf16 sources the max runs on the 15 magnitude bits
    (they order like |x|), which is half the memory traffic of the float32 path."""
    if src.dtype == np.uint16:
        mag = np.bitwise_and(src.reshape(-1), np.uint16(0x7FFF))
        return np.left_shift(np.max(mag.reshape(nb, 32), axis=1), 16, dtype=np.uint32).view(np.float32)
    return np.max(np.abs(ref).reshape(nb, 32), axis=1)


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


def _fidelity_job(fd: int, info: TensorInfo, st: Any, qt: QuantType, r0: int, r1: int) -> _Acc:
    """Compare rows [r0, r1) of one tensor: bytes against re-quantizing the source, then the error metrics."""
    rows, ncols = r1 - r0, st.n_cols
    rnb = qt.row_nbytes(ncols)
    src = st.read_rows(r0, r1)
    expect = qt.quantize(src)
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
        raise GGUFFormatError(f"tensor {_q(info.name)}: expected {got.nbytes} bytes at offset {pos}, got {n}; "
                              "was the file truncated while verifying?")
    acc = _Acc()
    if not np.array_equal(expect, got):
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
    ref = _to_f32(src).reshape(-1)
    deq = qt.dequantize(got, (rows, ncols)).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        acc.ssr = float(np.dot(ref, ref))
        acc.sst = float(np.dot(deq, deq))
        err = np.subtract(deq, ref, out=deq)  # in place: deq is not needed any more
        acc.sse = float(np.dot(err, err))
        np.abs(err, out=err)
    acc.maxerr = float(err.max()) if err.size else 0.0
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


def _row(name: str, qt: QuantType, shape: tuple[int, ...], a: _Acc) -> TensorFidelity:
    rel = math.sqrt(a.sse / a.ssr) if a.ssr > 0 else (0.0 if a.sse == 0 else math.inf)
    if math.isnan(a.sse):
        rel = math.nan
    snr = math.inf if a.sse == 0 else (10 * math.log10(a.ssr / a.sse) if a.ssr > 0 else -math.inf)
    if math.isnan(a.sse):
        snr = math.nan
    # cos = a.b / (|a||b|) rewritten with |a-b|^2 = |a|^2 + |b|^2 - 2 a.b as 1 - (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|):
    # near 1 (what quantization gives) a direct float32-accumulated a.b loses the digits that matter, while
    # |a-b|^2 is summed from the errors themselves and keeps them.
    na, nb = math.sqrt(a.ssr), math.sqrt(a.sst)
    if na > 0 and nb > 0:
        cos = 1.0 - (a.sse - (na - nb) ** 2) / (2 * na * nb)
        cos = max(-1.0, min(1.0, cos)) if not math.isnan(cos) else cos
    else:
        cos = 1.0 if a.sse == 0 else 0.0
    problems = []
    if not a.identical:
        problems.append(f"bytes differ from re-quantizing the source at {a.first_diff}")
    threshold = err_bound = expected = None
    if qt.name == "Q8_0":
        threshold = math.sqrt(a.bound_ss / a.ssr) if a.ssr > 0 else 0.0
        expected = math.sqrt(a.noise_ss / a.ssr) if a.ssr > 0 else 0.0
        err_bound = a.max_bound
        if a.n_viol:
            problems.append(f"{a.n_viol} block(s) outside the Q8_0 error bound, first at {a.first_viol}")
        if not rel <= threshold:
            problems.append(f"rel RMSE {rel:.4g} above the bound {threshold:.4g}")
    passed = not problems
    if passed:
        msg = "bytes identical" + ("; all errors within the Q8_0 bound" if qt.name == "Q8_0" else "")
    else:
        msg = "; ".join(problems)
        if math.isfinite(rel) and a.ssr > 0:
            msg += f" (rel RMSE {rel:.3g}, max abs err {a.maxerr:.3g})"
    return TensorFidelity(name, qt.name, shape, rel, a.maxerr, cos, snr, a.identical, threshold, err_bound,
                          expected, passed, msg)


def _check_fidelity(gf: GGUFFile, plan: Any, threads: int) -> tuple[list[Check], list[TensorFidelity]]:
    planned = {pt.name: pt for pt in plan.tensors}
    pres: list[str] = []
    for t in gf.tensors:
        if t.name not in planned:
            pres.append(f"tensor {_q(t.name)} has no source tensor (the converter would not write it)")
    in_file = {t.name for t in gf.tensors}
    for name, pt in planned.items():
        if name not in in_file:
            pres.append(f"tensor {_q(name)} is missing (the source has {pt.source.name!r})")
    rows: list[TensorFidelity] = []
    jobs: list[tuple[TensorInfo, Any, int, int]] = []
    for t in gf.tensors:
        pt = planned.get(t.name)
        if pt is None:
            continue
        if t.shape != pt.gguf_dims:
            pres.append(f"tensor {_q(t.name)} has shape {list(t.shape)}, the source {pt.source.name!r} gives "
                        f"{list(pt.gguf_dims)}")
            continue
        if t.ggml_type != pt.qtype.ggml_type:
            rows.append(TensorFidelity(t.name, t.ggml_type.name, pt.shape, math.nan, math.nan, math.nan, math.nan,
                                       False, None, None, None, False,
                                       f"type {t.ggml_type.name}, the converter writes {pt.qtype.name} for this "
                                       "source and type"))
            continue
        step = max(1, CHUNK_BYTES // max(1, pt.n_cols * pt.source.itemsize))
        jobs += [(t, pt, r, min(pt.n_rows, r + step)) for r in range(0, pt.n_rows, step)]

    accs: dict[str, _Acc] = {}
    fd = os.open(gf.path, os.O_RDONLY)
    try:
        ex = ThreadPoolExecutor(max_workers=threads)
        try:
            results = ex.map(lambda j: (j[0].name, _fidelity_job(fd, j[0], j[1].source, j[1].qtype, j[2], j[3])),
                             jobs)
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
        os.close(fd)
    for t in gf.tensors:
        if t.name in accs:
            pt = planned[t.name]
            rows.append(_row(t.name, pt.qtype, pt.shape, accs[t.name]))
    rows.sort(key=lambda r: (r.passed, -(r.rel_rmse if not math.isnan(r.rel_rmse) else math.inf)))
    bad = [f"{r.name}: {r.message}" for r in rows if not r.passed]
    worst = next((r for r in rows if r.passed), None)
    ok = f"{len(rows)} tensors byte-identical to re-quantizing the source"
    if worst is not None:
        ok += f"; worst rel RMSE {worst.rel_rmse:.3g} ({worst.name})"
    if any(r.type == "Q8_0" for r in rows):
        ok += "; every Q8_0 element within the 8-bit absmax bound"
    return [_check("source.tensors.present", pres, "the file has exactly the tensors the source yields"),
            _check("source.tensors", bad, ok)], rows


# --------------------------------------------------------------------------------------------------- logits


def _file_type_name(gf: GGUFFile) -> str | None:
    qt = _matrix_types(gf)
    if qt is not None:
        return qt.name
    try:
        return gf.tensor("token_embd.weight").ggml_type.name
    except KeyError:
        return None


def _tokenize(source: Path, text: str, n_tokens: int) -> list[int]:
    from tokenizers import Tokenizer

    from .errors import TokenizerError

    path = source / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise TokenizerError(f"{path}: cannot be loaded: {str(e).splitlines()[0] if str(e) else e}") from None
    return list(tok.encode(text).ids[:n_tokens])


def _logit_dict(rep: Any, limit: float) -> dict[str, Any]:
    d = dict(rep.to_dict())
    d["limit"] = limit
    d["passed"] = bool(rep.mean_kld <= limit)
    return d


def _run_logits(gf: GGUFFile, prep: Any, source: Path, text: str, n_tokens: int, runtime: str | None,
                threads: int) -> tuple[list[Check], dict[str, Any] | None, dict[str, Any] | None]:
    from .forward import Qwen2Hparams, compare_logits, qwen2_logits

    checks: list[Check] = []
    ftype = _file_type_name(gf) or "F32"
    limit = LOGIT_KLD_LIMITS.get(ftype, LOGIT_KLD_LIMITS["Q8_0"])
    toks = _tokenize(source, text, n_tokens)
    if len(toks) < 2:
        checks.append(Check("logits", FAIL, f"the text gives {len(toks)} token(s); need at least 2"))
        return checks, None, None
    planned = {pt.name: pt for pt in prep.plan.tensors}

    def src_weight(name: str) -> np.ndarray:
        pt = planned[name]  # KeyError for an absent tensor (tied output), as qwen2_logits expects
        return _to_f32(pt.source.read_rows(0, pt.source.n_rows)).reshape(pt.shape)

    def gguf_weight(name: str) -> np.ndarray:
        return gf.read_tensor_f32(gf.tensor(name))

    try:
        hp_src = Qwen2Hparams.from_hf_config(prep.cfg.raw)
        ref = qwen2_logits(src_weight, hp_src, toks)
    except NotImplementedError as e:
        checks.append(Check("logits", SKIP, str(e)))
        return checks, None, None
    logits_d = None
    try:
        emb = gf.tensor("token_embd.weight")
        hp_file = Qwen2Hparams.from_gguf_fields(gf.kv, n_vocab=emb.shape[1], arch=gf.kv[gguf.Keys.General.ARCHITECTURE])
        test = qwen2_logits(gguf_weight, hp_file, toks)
        rep = compare_logits(ref, test, toks)
        logits_d = _logit_dict(rep, limit)
        msg = f"{rep.summary()} (limit mean KLD {limit:g} for {ftype})"
        checks.append(Check("logits", PASS if logits_d["passed"] else FAIL,
                            ("" if logits_d["passed"] else f"mean KLD {rep.mean_kld:.4g} > {limit:g}: ") + msg))
    except NotImplementedError as e:
        checks.append(Check("logits", SKIP, str(e)))
    except KeyError as e:
        checks.append(Check("logits", FAIL, f"the file lacks tensor {e.args[0]!r} needed by the reference forward"))
    except L1QuantError as e:
        checks.append(Check("logits", FAIL, f"the file's weights cannot run the reference forward: {e}"))

    runtime_d = None
    if runtime is not None:
        runtime_d = _run_llama_cpp(gf, text, toks, ref, limit, ftype, threads, checks)
    return checks, logits_d, runtime_d


def _run_llama_cpp(gf: GGUFFile, text: str, toks: list[int], ref: np.ndarray, limit: float, ftype: str,
                   threads: int, checks: list[Check]) -> dict[str, Any] | None:
    from .forward import compare_logits

    try:
        import llama_cpp
    except ImportError:
        checks.append(Check("runtime", SKIP, "llama-cpp-python is not installed (pip install llama-cpp-python); "
                                             "the llama.cpp logit check was not run"))
        return None
    try:
        llm = llama_cpp.Llama(model_path=str(gf.path), n_ctx=max(64, len(toks)), n_batch=max(64, len(toks)),
                              n_ubatch=max(64, len(toks)), logits_all=True, n_threads=threads, verbose=False)
    except Exception as e:  # noqa: BLE001 - llama.cpp reports load failures as ValueError/RuntimeError
        checks.append(Check("runtime", FAIL, f"llama.cpp cannot load the file: {str(e).splitlines()[0]}"))
        return None
    try:
        rt_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:len(toks)]
        if list(rt_ids) != toks:
            i = next((i for i, (a, b) in enumerate(zip(rt_ids, toks)) if a != b), min(len(rt_ids), len(toks)))
            checks.append(Check("runtime.tokenize", FAIL,
                                f"llama.cpp tokenizes the text differently from tokenizer.json from position {i} "
                                f"(llama.cpp {list(rt_ids[i:i + 3])}, tokenizers {toks[i:i + 3]})"))
        else:
            checks.append(Check("runtime.tokenize", PASS,
                                f"llama.cpp tokenization equals tokenizer.json on the first {len(toks)} tokens"))
        llm.reset()
        llm.eval(toks)
        scores = np.array(llm.scores[: len(toks)], dtype=np.float32)
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()
    rep = compare_logits(ref, scores, toks)
    d = _logit_dict(rep, limit)
    msg = f"llama.cpp vs source: {rep.summary()} (limit mean KLD {limit:g} for {ftype})"
    checks.append(Check("runtime", PASS if d["passed"] else FAIL,
                        ("" if d["passed"] else f"mean KLD {rep.mean_kld:.4g} > {limit:g}: ") + msg))
    return d


# --------------------------------------------------------------------------------------------------- entry point


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def verify(
    gguf_path: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    logits: bool = False,
    text: str | None = None,
    n_tokens: int = 256,
    runtime: str | None = None,
    threads: int | None = None,
) -> VerifyReport:
    """Check ``gguf_path``; return a :class:`VerifyReport` (``report.passed``, ``report.verdict``).

    ``source`` is the checkpoint folder it was converted from (enables the metadata and per-tensor fidelity
    checks). ``logits`` runs the reference forward on the source and on the file (needs ``source``); ``text`` is
    the text to tokenize (default: the bundled :func:`l1quant.forward.default_text`), of which the first
    ``n_tokens`` tokens are used. ``runtime="llama.cpp"`` also runs the file through llama-cpp-python (implies
    ``logits``; skipped with a message when it is not installed). ``threads`` defaults to every core.

    Raises :class:`~l1quant.errors.GGUFFormatError` (exit code 2) when the file cannot be read at all, and
    :class:`~l1quant.errors.ConfigError` for contradictory arguments; every other finding is a check in the
    report.

    Example:
        >>> rep = verify("tiny-Q8_0.gguf", source="tiny", logits=True, n_tokens=64)   # doctest: +SKIP
        >>> [c.name for c in rep.checks if c.failed]                                  # doctest: +SKIP
        []
    """
    t0 = time.perf_counter()
    if runtime is not None and runtime != "llama.cpp":
        raise ConfigError(f"runtime must be 'llama.cpp', found {runtime!r}")
    if runtime is not None:
        logits = True
    if logits and source is None:
        raise ConfigError("the logit check (--logits / --runtime) needs --source MODEL_DIR")
    if n_tokens < 2:
        raise ConfigError(f"n_tokens must be at least 2, found {n_tokens}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, found {threads}")
    n_threads = threads or _default_threads()

    try:
        gf = read_gguf(gguf_path)
    except InputError as e:  # missing, unreadable, not a regular file: "cannot be read" like a malformed one
        raise GGUFFormatError(str(e)) from None
    checks: list[Check] = [_check_layout(gf)]
    rows: list[TensorFidelity] = []
    logits_d = runtime_d = None

    arch_name = gf.kv.get(gguf.Keys.General.ARCHITECTURE)
    arch: Arch | None = None
    try:
        arch = get_arch(arch_name) if isinstance(arch_name, str) else None
    except ConfigError:
        arch = None
    if arch is None:
        checks.append(Check("architecture", FAIL,
                            f"general.architecture is {arch_name!r}; l1quant verifies only "
                            "qwen2-family files (its architecture-specific checks cannot run)"))
    else:
        checks.append(Check("architecture", PASS, f"{arch.name}"))
        checks.append(_check_keys(gf, arch))
        hp_check, cfg = _check_hparams(gf, arch)
        checks.append(hp_check)
        checks.append(_check_tokenizer(gf, arch, cfg.vocab_size if cfg else None))
        if cfg is not None:
            checks += _check_tensors(gf, arch, cfg)
        else:
            checks.append(Check("tensors.shapes", SKIP, "hparams are inconsistent; expected shapes unknown"))

    if source is None:
        checks.append(_check_finite(gf, n_threads))
    elif arch is None:
        checks.append(Check("source", SKIP, "the architecture is not supported: nothing to compare with the source"))
    else:
        src = Path(source)
        prep = None
        ftype = _file_type_name(gf)
        try:
            from .convert import prepare

            prep = _prepare_like(prepare, src, ftype or "auto", gf)
        except L1QuantError as e:
            checks.append(Check("source", FAIL, f"cannot prepare the source for comparison: {e}"))
        if prep is not None:
            checks.append(Check("source", PASS, f"{src}: {prep.cfg.architecture}, "
                                                f"{len(prep.plan.tensors)} tensors, vocab {prep.cfg.vocab_size}"))
            checks += _check_metadata(gf, prep.header, arch)
            fchecks, rows = _check_fidelity(gf, prep.plan, n_threads)
            checks += fchecks
            if logits:
                lchecks, logits_d, runtime_d = _run_logits(
                    gf, prep, src, text if text is not None else _default_text(), n_tokens, runtime, n_threads)
                checks += lchecks

    return VerifyReport(str(gf.path), None if source is None else str(source), checks, rows, logits_d, runtime_d,
                        round(time.perf_counter() - t0, 3), _file_type_name(gf), len(gf.tensors), gf.file_size)


def _default_text() -> str:
    from .forward import default_text

    return default_text()


def _prepare_like(prepare: Any, src: Path, ftype: str, gf: GGUFFile) -> Any:
    """``convert.prepare`` for the file's type; if the source's pre-tokenizer hash is unknown, retry with the
    file's ``tokenizer.ggml.pre`` (what ``--pre`` would have done). Repeated calls are cheap: the tokenizer, the
    slow part, is cached by :func:`l1quant.vocab.load_vocab` while the source files are unchanged."""
    from .errors import TokenizerError

    try:
        return prepare(src, ftype.lower(), gf.path)
    except TokenizerError as e:
        pre = gf.kv.get(_TK.PRE)
        if "unknown BPE pre-tokenizer" not in str(e) or not isinstance(pre, str):
            raise
        return prepare(src, ftype.lower(), gf.path, pre=pre)


# --------------------------------------------------------------------------------------------------- text output


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def format_report(rep: VerifyReport, *, max_tensors: int = 12) -> str:
    """Readable text: the checks, the worst tensors first (all failed ones plus up to ``max_tensors``), the
    logit results and a one-line verdict at the end.

    Example:
        >>> print(format_report(VerifyReport("x.gguf", None, [Check("header", "pass", "ok")], [], None, None, 0.1)))
        l1quant verify x.gguf
        <BLANKLINE>
          PASS  header  ok
        <BLANKLINE>
        PASS: 1 check passed
    """
    lines = [f"l1quant verify {rep.path}" + (f" --source {rep.source}" if rep.source else "")]
    if rep.n_tensors:
        lines[0] += f"  ({rep.file_type or '?'}, {rep.n_tensors} tensors, {rep.file_size / 1e9:.2f} GB, " \
                    f"{rep.elapsed_s:.1f} s)"
    lines.append("")
    w = max((len(c.name) for c in rep.checks), default=4)
    for c in rep.checks:
        lines.append(f"  {c.status.upper():<4}  {c.name:<{w}}  {c.message}")
    if rep.tensors:
        shown = [t for t in rep.tensors if not t.passed]
        shown += [t for t in rep.tensors if t.passed][: max(0, max_tensors - len(shown))]
        nw = max(6, *(len(t.name) for t in shown))
        lines += ["", f"tensors, worst first ({len(shown)} of {len(rep.tensors)}; --json for all):",
                  (f"  {'tensor':<{nw}}  {'type':<5} {'rel_rmse':>9} {'bound':>9} {'max_abs':>9} {'cosine':>10} "
                   f"{'snr_db':>7}  bytes  ok")]
        for t in shown:
            lines.append(
                f"  {t.name:<{nw}}  {t.type:<5} {_fmt(t.rel_rmse, '9.3e')} {_fmt(t.threshold, '9.3e')} "
                f"{_fmt(t.max_abs_err, '9.3e')} {_fmt(t.cosine, '10.7f')} {_fmt(t.snr_db, '7.2f')}  "
                f"{'same ' if t.bytes_identical else 'DIFF '}  {'ok' if t.passed else 'FAIL'}")
    lines += ["", rep.verdict]
    return "\n".join(lines)


def iter_failed(rep: VerifyReport) -> Iterator[str]:
    """Every problem of every failed check, one line each (for logs).

    Example:
        >>> list(iter_failed(VerifyReport("x", None, [Check("a", "fail", "m", ["m"])], [], None, None, 0)))
        ['a: m']
    """
    for c in rep.checks:
        if c.failed:
            for d in c.details or [c.message]:
                yield f"{c.name}: {d}"

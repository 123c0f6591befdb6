"""``l1quant.verify``: prove a GGUF file is sound, faithful to its source checkpoint, and runs like it.

Three layers and a compatibility group, each a list of named checks (pass / warn / fail / skip) in one
:class:`VerifyReport`:

* **Structure** (always). Everything :func:`l1quant.gguf.reader.read_gguf` enforces (header, version, counts,
  bounded lengths, known types, aligned non-overlapping in-file offsets: a hostile or truncated file raises
  :class:`~l1quant.errors.GGUFFormatError`, exit code 2), then for the architecture's description
  (:mod:`l1quant.arch`: qwen2, qwen3, llama): required keys
  present with the right value types, head counts consistent, token arrays as long as ``token_embd``'s rows,
  merges that parse, valid token types, special ids inside the vocabulary, a chat template that parses, every
  expected tensor present with the shape the hparams imply, no unexpected tensor, tensor types allowed by the
  type rules (norms, biases and 1-D tensors F32; matrices the file type, or F16 where the row length does not
  fit the block), no NaN/Inf in any tensor (every type's values or f16 block scales; with or without ``source``).
* **Compatibility** (always; more with ``source``). How the file behaves in the runtimes users run: end of
  generation, BOS, pre-tokenizer release, chat template, head sizes, requantization (:mod:`l1quant.check.compat`;
  ``compat.*`` checks, ``warn`` unless llama.cpp itself would refuse the file or misbehave).
* **Fidelity** (``source=MODEL_DIR``). The header the converter would write for this source
  (:func:`l1quant.conversion.prepare.prepare`, nothing written) is compared key by key: hparams, rope, eps, tokens, token
  types, merges, special ids, chat template. Every tensor is streamed in row chunks (bounded memory, a thread
  pool, the same kernels as the converter): its bytes must equal re-quantizing the source exactly (the converter
  is deterministic and byte-identical with llama.cpp, so this is the strongest statement), and for Q8_0 every
  element must also sit inside the documented 8-bit absmax error bound (see :data:`Q8_0_BOUND_DOC`). Relative
  RMSE, max abs error, cosine and SNR are reported for every tensor.
* **Logits** (``logits=True``). The reference numpy decoder forward (:mod:`l1quant.evaluate.forward`) runs once on the
  source weights and once on the GGUF's dequantized weights and hparams over the first ``tokens`` tokens of a
  text; mean/max/p99 KL divergence, top-1 agreement and both perplexities are compared with a per-type limit
  (:data:`LOGIT_KLD_LIMITS`). ``runtime="llama.cpp"`` also runs the file itself through llama-cpp-python.

Example:
    >>> from l1quant.check.verifier import verify
    >>> rep = verify("L1-Qwen-1.5B-Max-Q8_0.gguf", source="L1-Qwen-1.5B-Max")   # doctest: +SKIP
    >>> rep.passed, rep.verdict                                                # doctest: +SKIP
    (True, 'PASS: 14 checks passed, 339 tensors byte-identical to re-quantizing the source')
    >>> print(format_report(rep))                                              # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gguf

from l1quant.arch import Arch, all_arches, get_arch
from l1quant.check.compat import check_compat
from l1quant.check.fidelity import check_fidelity, check_metadata
from l1quant.check.logits import run_logits
from l1quant.check.report import FAIL, PASS, SKIP, Check, TensorFidelity, VerifyReport
from l1quant.check.structure import (
    check_finite,
    check_hparams,
    check_keys,
    check_layout,
    check_tensors,
    check_tokenizer,
)
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.prepare import prepare
from l1quant.conversion.target import KEY_TARGET, TARGET_KEYS, override_pattern
from l1quant.errors import ConfigError, GGUFFormatError, InputError, L1QuantError, TokenizerError, read_text
from l1quant.evaluate.forward import default_text
from l1quant.filetypes import FileType, file_type_of
from l1quant.gguf.header import Header
from l1quant.gguf.reader import GGUFFile
from l1quant.gguf.split import merged_view, read_parts
from l1quant.imatrix_file import IMATRIX_KEY_PREFIX, KEY_QUANTIZE_FILE
from l1quant.runtime import require
from l1quant.source.hub import resolve_model

__all__ = ["verify"]


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
    text: str | os.PathLike[str] | None = None,
    tokens: int = 256,
    runtime: str | None = None,
    threads: int | None = None,
    no_repack: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Check ``gguf_path``; return a :class:`VerifyReport` (``report.passed``, ``report.verdict``).

    ``source`` is the checkpoint folder it was converted from (enables the metadata and per-tensor fidelity
    checks). ``logits`` runs the reference forward on the source and on the file (needs ``source``); ``text`` is
    a UTF-8 text file to tokenize (``--text FILE``, as :func:`l1quant.compare`'s ``text``; default: the bundled
    :func:`l1quant.evaluate.forward.default_text`), of which the first ``tokens`` tokens are used (``--tokens``).
    The parameters are named as ``l1quant verify``'s flags. ``runtime="llama.cpp"`` also runs the file through
    llama-cpp-python (implies ``logits``); ``no_repack`` runs it without llama.cpp's extra buffer types
    (``--no-repack``; by default :mod:`l1quant.runtime.probe` decides). ``threads`` defaults to every core.
    ``imatrix`` (``--imatrix FILE``): the importance matrix the file was quantized with (llama-quantize
    ``--imatrix``): the source is re-quantized with it and the bytes must be identical. Without it, a file holding
    ``quantize.imatrix.*`` keys cannot be checked byte for byte: its tensors must be within their type's noise
    bound instead, and the fidelity check says so.

    Raises :class:`~l1quant.errors.GGUFFormatError` (exit code 2) when the file cannot be read at all,
    :class:`~l1quant.errors.ConfigError` for contradictory arguments, :class:`~l1quant.errors.InputError` when
    ``source`` is neither a folder nor a resolvable Hugging Face repo id or ``text`` is not a readable text file, and
    :class:`~l1quant.errors.RuntimeMissingError` when ``runtime`` is asked for without llama-cpp-python (a check
    that was asked for and cannot run is a failure); every other finding is a check in the report.

    Example:
        >>> rep = verify("tiny-Q8_0.gguf", source="tiny", logits=True, tokens=64)     # doctest: +SKIP
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
    if tokens < 2:
        raise ConfigError(f"tokens must be at least 2, found {tokens}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, found {threads}")
    n_threads = threads or _default_threads()
    if runtime is not None:
        # A check the caller asked for that cannot run is a failure, not a skip: say so before any work.
        require("--runtime llama.cpp")
    # bounded, regular file only (a FIFO would block verify forever); read before any work, as the source
    text_s = default_text() if text is None else read_text(Path(text), InputError)
    src: Path | None = None
    local: Path | None = None  # the source's local folder (a hub id resolved to its cached snapshot)
    if source is not None:
        # An unusable source is a wrong argument, not a fault of the file: refuse it before reading the file.
        # (prepare() below resolves it again from the name as given, so a hub id keeps its repo name.)
        local = resolve_model(str(source))
        src = Path(source)

    try:
        # a split's first part: the whole model, every part read (another part or a missing one: one line)
        parts = read_parts(gguf_path)
        gf = merged_view(parts)
    except InputError as e:  # missing, unreadable, not a regular file: "cannot be read" like a malformed one
        raise GGUFFormatError(str(e)) from None
    ft = file_type_of(gf)  # what the file is, recognised once and passed along
    layouts = [check_layout(p) for p in parts]  # each part of a split is a whole GGUF of its own
    layout = next((c for c in layouts if c.status == FAIL), layouts[0])
    if len(parts) > 1 and layout.status != FAIL:
        layout = Check(layout.name, layout.status, f"{len(parts)} parts (split), first: " + layout.message)
    checks: list[Check] = [layout]
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
                            f"{', '.join(a.name for a in all_arches())} files (its architecture-specific checks "
                            "cannot run)"))
    else:
        checks.append(Check("architecture", PASS, f"{arch.name}"))
        checks.append(check_keys(gf, arch))
        hp_check, cfg = check_hparams(gf, arch)
        checks.append(hp_check)
        checks.append(check_tokenizer(gf, arch, cfg.vocab_size if cfg else None))
        if cfg is not None:
            checks += check_tensors(gf, arch, cfg, ft)
        else:
            checks.append(Check("tensors.shapes", SKIP, "hparams are inconsistent; expected shapes unknown"))

    # how the file behaves in the runtimes users run (warnings; a failure only where llama.cpp itself misbehaves)
    checks += check_compat(gf, local)
    # NaN/Inf scan with or without a source: a file must not pass with --source what it fails without it
    checks.append(check_finite(gf, n_threads))
    if src is None:
        pass
    elif arch is None:
        checks.append(Check("source", SKIP, "the architecture is not supported: nothing to compare with the source"))
    else:
        prep = None
        try:
            prep = _prepare_like(prepare, src, ft, gf, imatrix)
        except L1QuantError as e:
            checks.append(Check("source", FAIL, f"cannot prepare the source for comparison: {e}"))
        if prep is not None:
            checks.append(Check("source", PASS, f"{src}: {prep.cfg.architecture}, "
                                                f"{len(prep.plan.tensors)} tensors, vocab {prep.cfg.vocab_size}"))
            _recorded_quantize_keys(gf, prep.header, imatrix is not None)
            checks += check_metadata(gf, prep.header, arch)
            fchecks, rows = check_fidelity(gf, prep.plan, n_threads, own_types=ft.mix is not None,
                                           bytes_checked=imatrix is not None or not _imatrix_quant(gf))
            checks += fchecks
            if logits:
                lchecks, logits_d, runtime_d = run_logits(
                    gf, prep, src, text_s, tokens, runtime, n_threads,
                    no_repack, ft)
                checks += lchecks

    return VerifyReport(str(gf.path), None if source is None else str(source), checks, rows, logits_d, runtime_d,
                        round(time.perf_counter() - t0, 3), ft.label, len(gf.tensors), gf.file_size)


def _imatrix_quant(gf: GGUFFile) -> bool:
    """The file says it was quantized with an importance matrix (it holds ``quantize.imatrix.*`` keys)."""
    return any(k.startswith(IMATRIX_KEY_PREFIX) for k in gf.kv)


def _recorded_quantize_keys(gf: GGUFFile, expected: Header, have_imatrix: bool) -> None:
    """What the source cannot tell about an imatrix quant, taken from the file into ``expected`` (the header the
    source gives): the imatrix path (recorded as it was typed, so it may name the same file differently), and,
    without ``--imatrix``, all four keys; a target-size file's ``quantize.target*`` keys (the target as asked, the
    search's prediction), before the imatrix keys as written."""
    found = Header.from_file(gf)
    for key, kv in found.kv.items():
        if key in TARGET_KEYS:
            # before any imatrix key already expected, as llama-quantize appends its --override-kv keys
            tail = {k: v for k, v in expected.kv.items() if k.startswith(IMATRIX_KEY_PREFIX)}
            for k in tail:
                del expected.kv[k]
            expected.add(key, kv.value, kv.type)
            expected.kv.update(tail)
        elif key.startswith(IMATRIX_KEY_PREFIX) and (not have_imatrix or key == KEY_QUANTIZE_FILE):
            if have_imatrix and key not in expected.kv:
                continue  # the source with this imatrix writes no such key: the metadata check reports it
            if key in expected.kv:
                expected.kv[key] = kv  # same place, the file's value
            else:
                expected.add(key, kv.value, kv.type)


def _prepare_like(prepare: Any, src: Path, ft: FileType, gf: GGUFFile,
                  imatrix: str | os.PathLike[str] | None = None) -> Any:
    """:func:`~l1quant.conversion.prepare.prepare` for the file's type (its
    :attr:`~l1quant.filetypes.FileType.request`: a mix keeps llama-quantize's layout, which differs from the
    converter's for Q8_0/F16...), with ``imatrix`` (without one, an imatrix quant's types); if the source's
    pre-tokenizer hash is unknown, retry with the file's ``tokenizer.ggml.pre`` (what ``--pre`` would have done).
    Repeated calls are cheap: the tokenizer, the slow part, is cached by
    :func:`l1quant.conversion.vocab.load_vocab` while the source files are unchanged."""
    kw: dict[str, Any] = {}
    # a target-size file's types were chosen per tensor: each is rebuilt with the type the file gives it (one
    # anchored override per tensor on the base mix, as the search wrote it; the bytes are still checked)
    chosen = [(override_pattern(t.name), t.ggml_type) for t in gf.tensors] \
        if ft.mix is not None and KEY_TARGET in gf.kv else []
    if imatrix is not None:
        kw["options"] = QuantOptions(imatrix=imatrix, tensor_types=chosen)
    elif ft.mix is not None and _imatrix_quant(gf):
        kw["assume_imatrix"] = True
        if chosen:
            kw["options"] = QuantOptions(tensor_types=chosen)
    try:
        return prepare(src, ft.request, gf.path, **kw)
    except TokenizerError as e:
        pre = gf.kv.get(gguf.Keys.Tokenizer.PRE)
        if "unknown BPE pre-tokenizer" not in str(e) or not isinstance(pre, str):
            raise
        return prepare(src, ft.request, gf.path, pre=pre, **kw)

"""``l1quant.compare``: choose a type by measurement: size, PPL and KL divergence per GGUF type, as
``llama-perplexity`` computes them (the driver; :mod:`~l1quant.evaluate.basefile` holds the passes,
:mod:`~l1quant.evaluate.report` the table, :mod:`~l1quant.evaluate.plot` the chart).

The protocol is llama-perplexity's (``tools/perplexity/perplexity.cpp`` of the pinned llama.cpp):

* the text is tokenized with the vocabulary's own rule (a BOS when ``add_bos``), cut into ``n_chunk`` chunks of
  ``ctx`` tokens (``n_chunk <= n_tokens // ctx``; at least two chunks' worth of text is required);
* each chunk is evaluated from an empty KV cache with its first token replaced by BOS (when the vocabulary adds
  one), and only the positions ``ctx // 2 .. ctx - 2`` are scored against the next token (``ctx - 1 - ctx // 2``
  tokens per chunk);
* the base model's log-probabilities are stored as llama-perplexity's ``--kl-divergence-base`` file
  (``_logits_`` header, the tokens, then per scored token a float32 scale and offset and ``n_vocab`` uint16
  codes spanning the 16 nats below the top log-prob); every other type is scored against that file, so the base
  is evaluated once and the statistics (``kl_divergence()`` / ``log_softmax()`` with a base) are the tool's.

The compression is the tool's own, so it does not change the numbers relative to llama-perplexity at all; relative
to the base's exact float logits it moves each stored log-prob by at most half a code step,
``16 / 65535 / 2 = 1.2e-4`` nats, and drops base probabilities below ``e**-16`` from the KL sum (a bias below
``1e-4`` nats per token, far under the ± of any real comparison). A base file written by ``llama-perplexity
--kl-divergence-base`` can be used directly (``base_logits=``), and llama-perplexity accepts the files this
module writes.

The logits come from the llama.cpp runtime (llama-cpp-python, all logits of the scored half): activations are
quantized by the runtime exactly as in llama-perplexity. Without llama-cpp-python the numpy reference forward pass
(:mod:`l1quant.evaluate.forward`) stands in and the report is labelled ``weight-only``: it sees only the weights'
quantization error, so its KLD is lower than llama-perplexity's.

Example:
    >>> r = compare(["m-Q8_0.gguf"], base="m-F16.gguf", ctx=128, chunks=4)   # doctest: +SKIP
    >>> print(r.table())                                                     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1quant.cache import user_cache_dir
from l1quant.conversion.write import file_sha256
from l1quant.errors import InputError
from l1quant.evaluate.basefile import (BaseFile, read_base_ppl, score_against_base, sidecar_path, write_base,
                                         write_base_ppl)
from l1quant.evaluate.entries import CompareEntry, parse_entries
from l1quant.evaluate.report import SCHEMA, CompareReport, TypeRow
from l1quant.evaluate.sources import open_logits, text_blocks, tokenize_stream
from l1quant.l1.prompt import mode_is_max

__all__ = ["DEFAULT_CTX", "cache_size", "clear_cache", "compare", "compare_cache_dir", "default_compare_text"]

#: llama-perplexity's default context.
DEFAULT_CTX = 512
#: Largest --text read (it is streamed; the cap bounds a run over all the chunks a text gives).
MAX_TEXT_BYTES = 64 << 20

log = logging.getLogger("l1quant")


@functools.lru_cache(maxsize=256)
def _summary(path: Path, mtime_ns: int, size: int) -> tuple[str | None, int, int]:
    """(file type name, tensor bytes, tensor elements) of one version of a GGUF, parsed once: the label and the
    size/bpw columns both need it, and a 152k vocabulary's string arrays take ~0.25 s to parse. Only the three
    values are kept, not the parsed header."""
    from l1quant.check.structure import file_type_name
    from l1quant.gguf.reader import read_gguf

    gf = read_gguf(path)
    try:
        label = file_type_name(gf)
    except Exception:  # noqa: BLE001 - a label only
        label = None
    return label, sum(t.nbytes for t in gf.tensors), sum(t.n_elements for t in gf.tensors)


def _read_summary(path: Path) -> tuple[str | None, int, int]:
    st = path.stat()
    return _summary(path, st.st_mtime_ns, st.st_size)


def _file_info(path: Path) -> tuple[int, float]:
    _, nbytes, n = _read_summary(path)
    return path.stat().st_size, (8 * nbytes / n if n else 0.0)


def _type_label(path: Path) -> str:
    try:
        return _read_summary(path)[0] or path.stem
    except Exception:  # noqa: BLE001 - a label only
        return path.stem


def _file_label(path: Path) -> str:
    """A compared file's row label: its type name when the file is named for it (``m-Q4_K_M.gguf``: ``Q4_K_M``),
    else its own name, since a hand mix or a target-size file holds its base mix's ``general.file_type`` and
    would pass for that mix."""
    name = _type_label(path)
    return name if path.stem.upper().endswith(name.upper()) else path.stem


def default_compare_text() -> str:
    """The bundled evaluation text (``l1quant/data/compare_text.txt``), built by ``benchmarks/make_compare_text.py``
    (prose written for this project, then worked problems from a fixed seed; the README says more)."""
    from importlib import resources

    return resources.files("l1quant").joinpath("data").joinpath("compare_text.txt").read_text(encoding="utf-8")


def _cache_dir() -> Path:
    return user_cache_dir("compare")


def compare_cache_dir() -> Path:
    """Where ``compare`` keeps converted files and base log-probs between runs (``$L1QUANT_CACHE/compare``,
    default ``~/.cache/l1quant/compare``); ``--no-cache`` keeps nothing there, ``--clear-cache`` empties it.

    Example:
        >>> compare_cache_dir().name
        'compare'
    """
    return _cache_dir()


def cache_size() -> int:
    """Bytes held in :func:`compare_cache_dir` (0 when it does not exist).

    Example:
        >>> cache_size() >= 0
        True
    """
    root = _cache_dir()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) if root.is_dir() else 0


def clear_cache() -> tuple[Path, int]:
    """Delete :func:`compare_cache_dir` and everything in it; return (the folder, bytes freed).

    Example:
        >>> clear_cache()  # doctest: +SKIP
        (PosixPath('/root/.cache/l1quant/compare'), 13421772800)
    """
    import shutil

    root = _cache_dir()
    size = cache_size()
    if root.is_dir():
        shutil.rmtree(root)
    return root, size


def compare(model: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            types: Sequence[str] = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"), *,
            base: str | os.PathLike[str] | None = None, text: str | os.PathLike[str] | None = None,
            ctx: int = DEFAULT_CTX, chunks: int | None = None, keep: str | os.PathLike[str] | None = None,
            base_logits: str | os.PathLike[str] | None = None, threads: int | None = None,
            runtime: str = "auto", budgets: Sequence[int] = (), problems: str | os.PathLike[str] | None = None,
            limit: int | None = None, mode: str = "exact", progress: bool = False,
            no_repack: bool = False, no_cache: bool = False, imatrix: str | os.PathLike[str] | None = None,
            calibration: str | os.PathLike[str] | bool | None = None) -> CompareReport:
    """Table size, bits per weight, PPL and KLD statistics per GGUF type against a base, as llama-perplexity does.

    ``model``: a checkpoint folder (each of ``types`` is converted with :func:`l1quant.convert`, into ``keep`` or
    a cache folder; the base is ``types[0]``), one F32/F16/BF16 GGUF without ``base`` (each of ``types`` is made
    with :func:`l1quant.quantize`; the base is ``types[0]`` when that is a float type, else the GGUF itself), or
    a list of GGUF files (then ``base`` names the base GGUF). ``types``: entries as
    :mod:`l1quant.evaluate.entries` parses them (a list, or one comma-separated text): named types and mixes
    (``q4_k_m``), hand mixes with llama-quantize's per-tensor flags (``q4_k_m+token_embd=q4_0+output=q5_0``,
    ``+REGEX=TYPE``, ``+pure``) and target-size files (``auto@4.0bpw``, ``auto@400M``, ``auto@q3_k_m``: the size of
    that entry's file as made in this run). ``imatrix``: quantize the entries with this importance matrix
    (``--imatrix``); ``calibration``: compute one first from the lossless conversion over that text (True or ""
    for the bundled calibration text), as ``convert --calibration``, kept in the cache/``keep`` folder and reused.
    Entries that need an importance matrix (Q2_K_S, i-quant overrides, ``auto@``) are refused without one.
    ``text``: a text file (default: the bundled text); ``ctx`` tokens per chunk; ``chunks`` at most that many
    (default all the text gives). ``base_logits``: where to keep the base's log-prob file (default: a cache file
    named by a hash of the base file and tokens, reused on the next run; a llama-perplexity ``--kl-divergence-base``
    file works too). ``runtime``: ``auto``/``llama.cpp``/``numpy``. ``budgets`` + ``problems`` add
    :func:`l1quant.budget_check` per type (llama.cpp), with its ``limit`` (the first K problems) and ``mode``
    (``"exact"``/``"max"``): the parameters are named as ``l1quant compare``'s flags. ``no_repack``: llama.cpp
    without its extra buffer types (``--no-repack``; by default :mod:`l1quant.runtime.probe` decides).
    ``no_cache``: keep nothing in :func:`compare_cache_dir` (converted files and the base's log-probs go to a
    temporary folder, removed at the end; ``keep``/``base_logits`` still name where to keep them).
    The numbers match ``llama-perplexity -c ctx --chunks N``
    (with ``--kl-divergence-base`` / ``--kl-divergence``): see the module docstring.

    Raises :class:`~l1quant.errors.InputError` for bad arguments or a text shorter than two chunks.

    Example:
        >>> r = compare(["m-Q8_0.gguf"], base="m-F16.gguf", ctx=128, chunks=4)   # doctest: +SKIP
        >>> print(r.table())                                                     # doctest: +SKIP
    """
    if no_cache and (keep is None or base_logits is None):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="l1quant-compare-") as td:
            return compare(model, types, base=base, text=text, ctx=ctx, chunks=chunks,
                           keep=keep if keep is not None else Path(td) / "models",
                           base_logits=base_logits if base_logits is not None else Path(td) / "base.kld",
                           threads=threads, runtime=runtime, budgets=budgets, problems=problems,
                           limit=limit, mode=mode, progress=progress, no_repack=no_repack, imatrix=imatrix,
                           calibration=calibration)
    t0 = time.perf_counter()
    threads = threads or max(1, (os.cpu_count() or 2))
    if ctx < 8 or ctx % 2:
        raise InputError(f"--ctx must be an even number of at least 8 tokens, got {ctx}")
    if runtime not in ("auto", "llama.cpp", "numpy"):
        raise InputError(f"runtime must be auto, llama.cpp or numpy, got {runtime!r}")
    if budgets and problems is None:
        raise InputError("--budgets needs --problems FILE")
    if budgets:
        mode_is_max(mode)  # a bad mode fails now, not after the perplexity runs
    made = _resolve_models(model, types, base, keep, threads, progress, imatrix, calibration, no_repack)
    paths, names = made.paths, made.names
    models = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    tok_dir: Path | None = None
    if len(models) == 1 and base is None:  # made from a folder or one GGUF: the numpy runtime's tokenizer.json is
        src_path = Path(models[0])           # in the folder, or beside that GGUF (not beside the made files)
        tok_dir = src_path if src_path.is_dir() else src_path.parent
    _check_vocabularies(paths)
    if text is None:
        blocks: Any = iter([default_compare_text()])
        text_label = "l1quant/data/compare_text.txt"
    else:
        blocks, text_label = text_blocks(Path(text), MAX_TEXT_BYTES), str(text)

    base_path = paths[0]
    bar = _Progress(progress)
    src = open_logits(base_path, ctx, threads, runtime, vocab_only=True, tok_dir=tok_dir,
                      no_repack=no_repack)
    try:
        weight_only = src.weight_only
        # llama-perplexity tokenizes the whole text; the chunks asked for use only its first ids
        toks = tokenize_stream(src, blocks, max(2, chunks) * ctx if chunks else None)
        n_max = len(toks) // ctx
        if len(toks) < 2 * ctx:
            raise InputError(f"{text_label}: {len(toks)} tokens; llama-perplexity needs at least {2 * ctx} "
                             f"(two chunks of --ctx {ctx})")
        n_chunk = min(chunks, n_max) if chunks else n_max
        toks = toks[:n_chunk * ctx]
        bar.total = n_chunk * len(paths)
        given = base_logits is not None
        bf_path = (Path(base_logits) if base_logits is not None
                   else _base_cache_path(base_path, toks, ctx, n_chunk, runtime))
        bf_path.parent.mkdir(parents=True, exist_ok=True)
        base_ppl: tuple[float, float] | None = None
        bf = None
        if os.path.lexists(bf_path):
            try:
                bf, base_ppl = _open_base(bf_path, toks, ctx, src.n_vocab, n_chunk, sidecar_required=not given)
            except InputError as e:
                if given:  # the user's file: theirs to fix
                    raise
                log.warning("%s; rebuilding that cache entry", e)  # a cache is ours: a bad entry is rebuilt
                _remove_entry(bf_path)
        if bf is not None:
            bar.step(n_chunk, "base (cached)")
        else:
            src.close()
            src = open_logits(base_path, ctx, threads, runtime, no_repack=no_repack)
            base_ppl = write_base(src, toks, ctx, n_chunk, bf_path, lambda: bar.step(1, "base"), threads)
            write_base_ppl(sidecar_path(bf_path), base_ppl)
            bf = BaseFile.open(bf_path, n_ctx=ctx, n_chunk=n_chunk)
        bf.n_chunk = n_chunk  # score only the chunks asked for (a base file may hold more)
    finally:
        src.close()
    size, bpw = _file_info(base_path)
    rows = [TypeRow(names[0], str(base_path), size, bpw, *(base_ppl or (float("nan"), float("nan"))),
                    kind=made.kinds[0], target=made.targets[0])]
    for p, name, kind, tgt in zip(paths[1:], names[1:], made.kinds[1:], made.targets[1:]):
        src = open_logits(p, ctx, threads, runtime, no_repack=no_repack)
        try:
            stats = score_against_base(src, bf, functools.partial(bar.step, 1, name), threads)
        finally:
            src.close()
        size, bpw = _file_info(p)
        rows.append(TypeRow(name, str(p), size, bpw, stats["ppl"]["value"], stats["ppl"]["unc"], stats, kind=kind,
                            target=tgt))
        if base_ppl is None:  # a base file from elsewhere: the base's PPL from its stored log-probs
            base_ppl = (stats["ppl_base_stored"]["value"], stats["ppl_base_stored"]["unc"])
            rows[0].ppl, rows[0].ppl_unc = base_ppl
    bar.close()
    if budgets:
        _add_budgets(rows, budgets, problems, limit, mode, threads, no_repack)
    return CompareReport(base=names[0], ctx=ctx, chunks=n_chunk, tokens_scored=n_chunk * bf.rows_per_chunk,
                         text=text_label, runtime="numpy" if weight_only else "llama.cpp", weight_only=weight_only,
                         base_logits=str(bf_path), threads=threads, rows=rows, seconds=time.perf_counter() - t0)


#: The float types: a GGUF of one of them can be quantized to every entry; as the first entry, the base.
_FLOAT_TYPES = ("f32", "f16", "bf16")
_FLOAT_TYPES_UPPER = tuple(t.upper() for t in _FLOAT_TYPES)


@dataclass
class _Made:
    """The files compare made or was given, in table order: paths, names, kinds and auto targets."""

    paths: list[Path]
    names: list[str]
    kinds: list[str]
    targets: list[dict[str, Any] | None]


def _resolve_models(model: Any, types: Sequence[str] | str, base: Any, keep: Any, threads: int, progress: bool,
                    imatrix: Any, calibration: Any, no_repack: bool) -> _Made:
    one = [Path(model)] if isinstance(model, (str, os.PathLike)) else [Path(m) for m in model]
    source = one[0] if len(one) == 1 else None
    if source is not None and (not str(source).endswith(".gguf") or base is None):
        # a checkpoint folder (converted) or one float GGUF (quantized): --types are made from it
        if base is not None:
            raise InputError("--base is for a list of GGUF files; with a checkpoint the base is the first type")
        if isinstance(types, str) and not types.strip() or not isinstance(types, str) and not types:
            raise InputError("--types is empty")
        entries = parse_entries(types)
        return _make_entries(source, entries, keep, threads, progress, imatrix, calibration, no_repack)
    if imatrix is not None or calibration is not None:
        raise InputError("--imatrix/--calibration quantize the --types of a checkpoint folder or of one F32/F16/BF16 "
                         "GGUF; GGUF files given with --base are compared as they are")
    if base is None:
        raise InputError("comparing GGUF files needs --base BASE.gguf")
    paths = [Path(base)] + one
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such GGUF file")
    labels = [_type_label(paths[0])] + [_file_label(p) for p in paths[1:]]
    if len(set(labels)) != len(labels):
        labels = [p.name for p in paths]
    return _Made(paths, labels, ["file"] * len(paths), [None] * len(paths))


def _file_stem(entry: CompareEntry) -> str:
    """A file-name-safe form of an entry's name (a hash is added when characters had to be replaced, so two
    patterns that differ only there do not share a cached file)."""
    safe = re.sub(r"[^A-Za-z0-9_.=+@-]", "_", entry.name)
    if safe != entry.name or len(safe) > 80:
        safe = f"{safe[:60]}-{_hash(entry.name)[:8]}"
    return safe


def _make_entries(source: Path, entries: list[CompareEntry], keep: Any, threads: int, progress: bool,
                  imatrix: Any, calibration: Any, no_repack: bool) -> _Made:
    """Make each entry from ``source`` (a checkpoint folder: :func:`l1quant.convert`; one F32/F16/BF16 GGUF:
    :func:`l1quant.quantize`) into ``keep`` or the cache, reusing a file already there (its name holds the entry
    and, when one is used, the importance matrix's hash); the auto entries last, after the entries whose size
    they target. The base is the first entry (for a GGUF: the GGUF itself unless the first entry is a float type)."""
    is_gguf = source.is_file() and source.suffix == ".gguf"
    if not is_gguf and not source.is_dir():
        why = "" if source.exists() else " (no such file or folder)"
        raise InputError(f"{source}: neither a checkpoint folder nor a GGUF file{why}")
    if imatrix is not None and calibration is not None:
        raise InputError("give one of --imatrix FILE and --calibration [TEXT]")
    if imatrix is not None and not Path(imatrix).is_file():
        raise InputError(f"{imatrix}: no such importance-matrix file")
    has_imatrix = imatrix is not None or calibration is not None
    for e in entries:
        if not has_imatrix and e.needs_imatrix():
            raise InputError(f"--types entry {e.text!r}: {'the target-size search' if e.kind == 'auto' else e.name} "
                             "needs an importance matrix: pass --imatrix FILE or --calibration [TEXT]")
    if is_gguf:
        label = _type_label(source)
        if label.upper() not in _FLOAT_TYPES_UPPER:
            raise InputError(f"{source}: a {label} file; compare quantizes --types from an F32, F16 or BF16 GGUF "
                             "(or pass GGUF files with --base to compare them as they are)")
    stamp = _file_stamp(source) if is_gguf else _dir_stamp(source)
    out_dir = Path(keep) if keep else _cache_dir() / "models" / _hash(str(source.resolve()), stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = source.name.removesuffix(".gguf") if is_gguf else source.name
    im = _imatrix_for(source, out_dir, stem, imatrix, calibration, threads, no_repack, progress)
    im_tag = f"-imatrix-{file_sha256(Path(im))[:8]}" if im is not None else ""

    made: dict[str, Path] = {}

    def make(e: CompareEntry, target: dict[str, Any] | None) -> Path:
        if e.name in made:
            return made[e.name]
        opts = e.options(im)
        tag = im_tag if opts is not None and opts.imatrix is not None else ""
        size_tag = "" if target is None else "-" + _hash(repr(sorted(target.items())))[:8]
        out = out_dir / f"{stem}-{_file_stem(e)}{tag}{size_tag}.gguf"
        if is_gguf and e.kind == "named" and e.type.upper() == _type_label(source).upper():
            out = source  # the GGUF is already that type: quantizing it to its own type copies it
        elif not out.exists():
            if progress:
                print(f"{'converting' if not is_gguf else 'quantizing'} {source} -> {out.name}", file=sys.stderr)
            extra: dict[str, Any] = {}
            if target is not None:
                extra = {"target_size": target.get("size_bytes"), "target_bpw": target.get("bpw")}
            if is_gguf:
                from l1quant.conversion.quantize import quantize

                quantize(source, out, e.type, options=opts, threads=threads, **extra)
            else:
                from l1quant.conversion.convert import convert

                convert(source, type=e.type, output=out, threads=threads, options=opts, **extra)
        made[e.name] = out
        return out

    targets: dict[str, dict[str, Any] | None] = {}
    for e in entries:  # the named and hand entries first: an auto entry may target one's size
        if e.kind != "auto":
            make(e, None)
    for e in entries:
        if e.kind == "auto":
            t = e.target()
            assert t is not None
            if e.target_ref is not None:  # an entry of the run (made now if it is not listed)
                t = {"size_bytes": make(e.target_ref, None).stat().st_size, "size_of": e.target_ref.name}
            targets[e.name] = t
            make(e, t)
    out = _Made([made[e.name] for e in entries], [e.name for e in entries], [e.kind for e in entries],
                [targets.get(e.name) for e in entries])
    if is_gguf and not (entries[0].kind == "named" and entries[0].type in _FLOAT_TYPES):
        # the base is the GGUF itself unless the first entry is a float type (then that, as from a checkpoint)
        out.paths.insert(0, source)
        out.names.insert(0, _type_label(source))
        out.kinds.insert(0, "file")
        out.targets.insert(0, None)
    return out


def _imatrix_for(source: Path, out_dir: Path, stem: str, imatrix: Any, calibration: Any, threads: int,
                 no_repack: bool, progress: bool) -> str | None:
    """The importance matrix the entries are made with: ``imatrix`` as given, or (``calibration``: a text file, or
    True/"" for the bundled calibration text) one computed from ``source`` as ``convert --calibration`` does
    (:func:`l1quant.imatrix_compute.calibration_imatrix`), kept in ``out_dir`` under a name holding the text's hash
    and reused by the next run; None without either."""
    if imatrix is not None:
        return str(imatrix)
    if calibration is None or calibration is False:
        return None
    from l1quant.imatrix_compute import calibration_imatrix, default_calibration_text, imatrix_path_for

    bundled = calibration is True or calibration == ""
    if not bundled and not Path(calibration).is_file():
        raise InputError(f"{calibration}: no such calibration text file")
    text_hash = _hash(default_calibration_text()) if bundled else file_sha256(Path(calibration))
    anchor = out_dir / f"{stem}-calibration-{text_hash[:12]}.gguf"
    kept = imatrix_path_for(anchor)
    if not kept.exists():
        if progress:
            print(f"computing the importance matrix of {source} -> {kept.name}", file=sys.stderr)
        kept = calibration_imatrix(source, True if bundled else calibration, anchor, threads=threads,
                                   no_repack=no_repack, progress=progress)
    return str(kept)


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check_vocabularies(paths: Sequence[Path]) -> None:
    """Refuse a model whose vocabulary is not the base's, token for token, in one line naming both files.

    llama-perplexity compares only the vocabulary sizes; a KL divergence between two vocabularies of the same
    size in another order compares unrelated tokens' probabilities, so it is meaningless: refused, not reported.
    """
    base = paths[0]
    want = _vocab_summary(base)
    for p in paths[1:]:
        got = _vocab_summary(p)
        if got[0] != want[0]:
            raise InputError(f"{p}: vocabulary of {got[0]} tokens, the base {base} has {want[0]}: "
                             "KL divergence needs the same vocabulary")
        if got[1] != want[1]:
            i = _first_difference(base, p)
            raise InputError(f"{p}: vocabulary differs from the base {base}'s (same size {got[0]}, but token {i} "
                             "differs): KL divergence between different vocabularies is meaningless")


def _read_tokens(path: Path) -> list[Any]:
    from l1quant.gguf.reader import read_gguf

    toks = read_gguf(path).kv.get("tokenizer.ggml.tokens")
    if not isinstance(toks, (list, tuple)) and not hasattr(toks, "__len__"):
        raise InputError(f"{path}: no tokenizer.ggml.tokens: a model to compare needs its vocabulary")
    return list(toks)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _vocab_key(path: Path, mtime_ns: int, size: int) -> tuple[int, str]:
    toks = _read_tokens(path)
    h = hashlib.sha256()
    for t in toks:
        b = t.encode("utf-8", "surrogatepass") if isinstance(t, str) else bytes(t)
        h.update(len(b).to_bytes(4, "little") + b)
    return len(toks), h.hexdigest()


def _vocab_summary(path: Path) -> tuple[int, str]:
    """(token count, hash of the token texts in order) of a GGUF's ``tokenizer.ggml.tokens``."""
    st = path.stat()
    return _vocab_key(path, st.st_mtime_ns, st.st_size)


def _first_difference(a: Path, b: Path) -> int:
    return next(i for i, (x, y) in enumerate(zip(_read_tokens(a), _read_tokens(b))) if x != y)


def _open_base(path: Path, toks: np.ndarray, ctx: int, n_vocab: int, n_chunk: int,
               sidecar_required: bool) -> tuple[BaseFile, tuple[float, float] | None]:
    """An existing base file checked against what this run needs (context, vocabulary, chunks, the very tokens)
    and its sidecar's PPL (None when there is none and ``sidecar_required`` is False: a llama-perplexity file).
    Raises InputError naming the file that does not check out."""
    bf = BaseFile.open(path, n_ctx=ctx, n_vocab=n_vocab, n_chunk=n_chunk)
    if not np.array_equal(bf.tokens[:n_chunk * ctx], toks[:n_chunk * ctx]):
        raise InputError(f"{path}: the base log-probs were computed for another text (tokens differ)")
    meta = sidecar_path(path)
    if not os.path.lexists(meta):
        if sidecar_required:
            raise InputError(f"{meta}: missing (the run that wrote {path.name} did not finish)")
        return bf, None
    return bf, read_base_ppl(meta)


def _remove_entry(path: Path) -> None:
    """Remove a cache entry (base file and sidecar) that did not check out; a folder in its place is refused."""
    for p in (path, sidecar_path(path)):
        if p.is_dir() and not p.is_symlink():
            raise InputError(f"{p}: a folder in place of a compare cache file; remove it")
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _dir_stamp(folder: Path) -> str:
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*"))
                    if p.is_file())


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _base_cache_path(base: Path, toks: np.ndarray, ctx: int, n_chunk: int, runtime: str) -> Path:
    """The cache entry for the base file, the tokens the chunks use, the protocol and the runtime."""
    st = base.stat()
    key = _hash(str(base.resolve()), str(st.st_size), str(st.st_mtime_ns), str(ctx), str(n_chunk), runtime,
                hashlib.sha256(np.asarray(toks[:n_chunk * ctx], "<i4").tobytes()).hexdigest(), SCHEMA)
    return _cache_dir() / f"base-{key}.kld"


def _add_budgets(rows: list[TypeRow], budgets: Sequence[int], problems: Any, limit: int | None, mode: str,
                 threads: int, no_repack: bool) -> None:
    from l1quant.l1.budget import budget_check

    rep = budget_check([r.path for r in rows], list(budgets), problems, mode=mode, limit=limit,
                       threads=threads, no_repack=no_repack)
    for r in rows:
        r.budget = [{"budget": b.budget, "runs": b.runs, "mean_tokens": b.mean_tokens,
                     "share_within_budget": b.share_within_budget, "mean_rel_deviation": b.mean_rel_deviation,
                     "accuracy": b.accuracy} for b in rep.rows if b.model == r.path or Path(b.model) == Path(r.path)]


class _Progress:
    """A tqdm bar over chunks x types with an ETA (silent when disabled)."""

    bar: Any  # a tqdm bar, made on the first step (None until then)

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.total, self.bar = enabled, 0, None

    def step(self, n: int, label: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="chunk", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(label)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Model card for a converted L1 GGUF: source, type, sizes, verify summary, and how to prompt with a budget.

``l1quant convert --card`` writes it as ``README.md`` beside the GGUF (the name the Hugging Face Hub shows).
An existing README.md that l1quant did not write is never overwritten: the card then goes to
``<gguf stem>.README.md``.

It is a card the Hub reads for a GGUF repo: YAML front matter first (``base_model`` -- the source repo, when it is
known: a hub id, or a hub cache snapshot -- with ``base_model_relation: quantized``, ``tags`` starting with
``gguf``, ``quantized_by``, and the source's license as the converter copied it into ``general.license``), then
the table of the files (``convert --type q8_0,q4_k_m --card`` lists every file of the run) with their sizes,
verify verdicts and mean KLD when a verify measured it, and the L1 prompt format.

Example:
    >>> path = write_card(Path("out/L1-Qwen-1.5B-Max-Q8_0.gguf"), Path("L1-Qwen-1.5B-Max"))  # doctest: +SKIP
    >>> path.name                                                                               # doctest: +SKIP
    'README.md'
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf

from l1quant.check.verifier import verify
from l1quant.conversion.write import file_sha256
from l1quant.gguf.split import merged_view, read_parts
from l1quant.l1.prompt import l1_prompt
from l1quant.output import AtomicOutput, pwrite_all
from l1quant.source.hub import resolve_model

MARKER = "<!-- written by l1quant; safe to regenerate -->"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


#: Where a repo id can be read from a hub cache folder: .../models--ORG--NAME/snapshots/<commit>
_SNAPSHOT = "snapshots"


def source_repo_id(source: Path | None, source_name: str | None) -> str | None:
    """The Hub repo id of the source, when it is known: ``source_name`` if it is one (``org/name``), or the id a
    hub cache snapshot folder encodes (``models--org--name/snapshots/<commit>``); None for a plain local folder.

    Example:
        >>> source_repo_id(Path("/c/hub/models--l3lab--L1-Qwen-1.5B-Max/snapshots/abc"), None)
        'l3lab/L1-Qwen-1.5B-Max'
        >>> source_repo_id(Path("L1-Qwen-1.5B-Max"), None) is None
        True
    """
    if source_name and source_name.count("/") == 1:
        return source_name
    if source is not None and source.parent.name == _SNAPSHOT and source.parent.parent.name.startswith("models--"):
        return source.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    return None


def _yaml_str(v: str) -> str:
    """A YAML scalar that always reads back as the string ``v`` (JSON strings are YAML)."""
    return json.dumps(v, ensure_ascii=False)


def front_matter(kv: dict[str, Any], repo_id: str | None, quantized_by: str = "l1quant") -> list[str]:
    """The card's YAML front matter lines (``---`` ... ``---``), as the Hub reads a GGUF repo's card.

    Example:
        >>> print("\\n".join(front_matter({"general.license": "mit", "general.architecture": "qwen2"}, "l3lab/L1")))
        ---
        base_model: "l3lab/L1"
        base_model_relation: quantized
        license: "mit"
        tags:
        - gguf
        - l1quant
        - llama.cpp
        - qwen2
        - reasoning
        quantized_by: "l1quant"
        ---
    """
    lines = ["---"]
    if repo_id:
        lines += [f"base_model: {_yaml_str(repo_id)}", "base_model_relation: quantized"]
    else:
        lines.append("# base_model: the source's Hub repo id (unknown for a local folder)")
    lic = kv.get("general.license")
    if isinstance(lic, str) and lic:
        lines.append(f"license: {_yaml_str(lic)}")
        for key, field in (("general.license.name", "license_name"), ("general.license.link", "license_link")):
            if isinstance(kv.get(key), str):
                lines.append(f"{field}: {_yaml_str(kv[key])}")
    arch = kv.get("general.architecture")
    tags = ["gguf", "l1quant", "llama.cpp"] + ([arch] if isinstance(arch, str) else []) + ["reasoning"]
    lines += ["tags:", *[f"- {t}" for t in tags], f"quantized_by: {_yaml_str(quantized_by)}", "---"]
    return lines


def _file_type(kv: dict[str, Any]) -> str:
    try:
        return gguf.LlamaFileType(int(kv.get("general.file_type", -1))).name.partition("_")[2]
    except ValueError:
        return "?"


def _kld(report: Any | None) -> str:
    logits = getattr(report, "logits", None)
    v = logits.get("mean_kld") if isinstance(logits, dict) else getattr(logits, "mean_kld", None)
    return f"{v:.4g}" if isinstance(v, (int, float)) else "—"


def render_card(gguf_path: Path, source: Path | None, report: Any | None = None, *,
                source_name: str | None = None, files: Sequence[tuple[Path, Any | None]] = ()) -> str:
    """The card's Markdown for ``gguf_path`` (converted from ``source``), with ``report`` (a VerifyReport) if given.

    ``source_name`` is how the card names the source (default: the folder's name); pass the repo id for a hub
    checkout, whose folder is a snapshot hash. ``files``: every file of the run with its report (default: this
    one), for the files table; a split file is listed by its first part, with the size of all its parts.

    Example:
        >>> print(render_card(Path("tiny-Q8_0.gguf"), Path("tiny"))[:4])  # doctest: +SKIP
        ---
    """
    gf = merged_view(read_parts(gguf_path))  # a split: the whole model (every part's tensors)
    shown = source_name or (source.name if source else "?")
    kv = gf.kv
    name = kv.get("general.name", gguf_path.stem)
    arch = kv.get("general.architecture", "?")
    types: dict[str, int] = {}
    for t in gf.tensors:
        types[t.ggml_type.name] = types.get(t.ggml_type.name, 0) + 1
    src_size = sum(p.stat().st_size for p in source.glob("*.safetensors")) if source else 0
    ftype = _file_type(kv)
    rows = list(files) or [(gguf_path, report)]
    table = ["| file | type | size | verify | mean KLD |", "|---|---|---|---|---|"]
    for path, rep in rows:
        parts = read_parts(path)
        size = sum(p.path.stat().st_size for p in parts)
        n = f" ({len(parts)} parts)" if len(parts) > 1 else ""
        verdict = "not run" if rep is None else ("PASS" if rep.passed else "FAIL")
        table.append(f"| `{path.name}`{n} | {_file_type(parts[0].kv)} | {_human(size)} | {verdict} | {_kld(rep)} |")
    lines = [
        *front_matter(kv, source_repo_id(source, source_name)),
        MARKER,
        f"# {name} — GGUF {ftype}" if len(rows) == 1 else
        f"# {name} — GGUF {', '.join(_file_type(read_parts(p)[0].kv) for p, _ in rows)}",
        "",
        (f"Converted with l1quant from `{shown}`; "
         "tensors byte-identical to llama.cpp's `convert_hf_to_gguf.py` (and `llama-quantize` for the mixes)."),
        "",
        "## Files",
        "",
        *table,
        "",
        (f"Source safetensors: {_human(src_size)}. " if src_size else "")
        + "Mean KLD (vs the source's logits) is shown when a verify with `--logits` measured it.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{gguf_path.name}` |",
        f"| sha256 | `{file_sha256(gguf_path)}` |",
        f"| architecture | {arch}, {kv.get(f'{arch}.block_count', '?')} layers, "
        f"hidden {kv.get(f'{arch}.embedding_length', '?')}, "
        f"{kv.get(f'{arch}.attention.head_count', '?')}/{kv.get(f'{arch}.attention.head_count_kv', '?')} heads |",
        f"| parameters | {sum(int(_prod(t.shape)) for t in gf.tensors) / 1e9:.3f} B |",
        f"| tensor types | {', '.join(f'{k} x{v}' for k, v in sorted(types.items()))} |",
        f"| context length | {kv.get(f'{arch}.context_length', '?')} |",
        f"| pre-tokenizer | {kv.get('tokenizer.ggml.pre', '?')} |",
    ]
    samp = {k.rsplit('.', 1)[-1]: v for k, v in kv.items() if k.startswith("general.sampling.")}
    if samp:
        lines.append("| sampling defaults | " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in samp.items()) + " |")
    lines += ["", "## Verification", ""]
    if report is None:
        lines.append(f"Not verified. Run `l1quant verify {gguf_path.name} --source SOURCE_DIR`.")
    else:
        lines += [f"`l1quant verify {gguf_path.name} --source {shown}`:", "",
                  f"**{report.verdict}** ({report.elapsed_s:.1f} s)", ""]
        if report.tensors:
            lines += ["Worst tensors (relative RMSE vs the source weights):", "",
                      "| tensor | type | rel. RMSE | max abs err | SNR dB |", "|---|---|---|---|---|"]
            for t in report.tensors[:5]:
                lines.append(f"| {t.name} | {t.type} | {t.rel_rmse:.3e} | {t.max_abs_err:.3e} | {t.snr_db:.1f} |")
    q = "What is the sum of the first 20 odd numbers?"
    lines += [
        "", "## Prompting L1 with a thinking budget", "",
        "L1 was trained (LCPO) to follow a length instruction at the end of the question:", "",
        "```text", l1_prompt("{question}", 512), "```",
        "(L1-Qwen-1.5B-Exact: aim for N tokens) or", "",
        "```text", l1_prompt("{question}", 512, max_mode=True), "```",
        "(L1-Qwen-1.5B-Max: at most N tokens).", "",
        "With l1quant (installed with its `run` extra, llama-cpp-python):", "",
        "```sh",
        f'l1quant prompt "{q}" --budget 512 --chat {gguf_path.name}',
        f'l1quant run {gguf_path.name} "{q}" --budget 512 --seed 0',
        f"l1quant budget-check {gguf_path.name} --problems problems.jsonl --samples 4 --plot budget.png",
        "```", "",
        "The run reports the response tokens n (reasoning through `</think>` plus answer: the length LCPO trains "
        "L1 to match), whether the budget was kept, and the `\\boxed{}` answer. budget-check follows the paper: "
        "budgets 512-3600, at most 2N tokens.",
        "",
    ]
    return "\n".join(lines)


def _prod(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def write_card(gguf_path: str | os.PathLike[str], source: str | os.PathLike[str] | None,
               report: Any | None = None, *, source_name: str | None = None,
               files: Sequence[tuple[Path, Any | None]] = ()) -> Path:
    """Write the card beside ``gguf_path`` (atomically); return its path.

    Example:
        >>> write_card("out.gguf", "L1-Qwen-1.5B-Max")  # doctest: +SKIP
        PosixPath('README.md')
    """
    g = Path(gguf_path)
    text = render_card(g, Path(source) if source is not None else None, report, source_name=source_name,
                       files=files)
    target = card_path(g)
    data = text.encode("utf-8")
    with AtomicOutput(target, len(data)) as out:  # same temp-file, mode and cleanup rules as the GGUF itself
        pwrite_all(out.fd, data, 0)
    return target


def card_path(gguf_path: str | os.PathLike[str]) -> Path:
    """Where the card of ``gguf_path`` goes: ``README.md`` beside it, unless a README.md that l1quant did not
    write is there (never overwritten): then ``<gguf stem>.README.md``.

    Example:
        >>> card_path("/nonexistent/m-Q8_0.gguf")
        PosixPath('/nonexistent/README.md')
    """
    g = Path(gguf_path)
    target = g.parent / "README.md"
    # the marker follows the YAML front matter (a few hundred bytes): look for it in the card's head
    if target.exists() and MARKER not in target.read_text(encoding="utf-8", errors="replace")[:8192]:
        return g.parent / f"{g.stem}.README.md"
    return target


def write_verified_card(gguf_path: str | os.PathLike[str], model: str | os.PathLike[str], *,
                        threads: int | None = None) -> tuple[Path, Any]:
    """``convert --card``: verify ``gguf_path`` against its source ``model`` (a folder or a hub repo id), then write
    the card with the verify summary beside it; return (card path, the :class:`~l1quant.check.report.VerifyReport`).

    The card is written whatever the verdict (it states it); the caller decides what a failed verify means
    (``convert(card=True)`` raises :class:`~l1quant.errors.VerifyError`).

    Example:
        >>> path, report = write_verified_card("out/m-Q8_0.gguf", "m", threads=2)  # doctest: +SKIP
        >>> path.name, report.passed                                              # doctest: +SKIP
        ('README.md', True)
    """
    where, reports = write_verified_cards([Path(gguf_path)], model, threads=threads)
    return where, reports[0]


def write_verified_cards(gguf_paths: Sequence[Path], model: str | os.PathLike[str], *,
                         threads: int | None = None) -> tuple[Path, list[Any]]:
    """``convert --type q8_0,q4_k_m --card``: verify every file of the run against ``model``, then write one card
    (beside the first file) whose files table lists them all; return (card path, the reports in order).

    Example:
        >>> files = [Path("o/m-Q8_0.gguf"), Path("o/m-Q4_K_M.gguf")]
        >>> where, reports = write_verified_cards(files, "m")  # doctest: +SKIP
    """
    src = resolve_model(model)
    reports = [verify(p, source=src, threads=threads) for p in gguf_paths]
    # a hub checkout's folder is named after its snapshot hash: the card names the repo id instead
    shown = None if Path(model).is_dir() else str(model)
    where = write_card(gguf_paths[0], src, reports[0], source_name=shown, files=list(zip(gguf_paths, reports)))
    return where, reports

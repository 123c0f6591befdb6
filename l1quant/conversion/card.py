"""Model card for a converted L1 GGUF: source, type, sizes, verify summary, and how to prompt with a budget.

``l1quant convert --card`` writes it as ``README.md`` beside the GGUF (the name the Hugging Face Hub shows).
An existing README.md that l1quant did not write is never overwritten: the card then goes to
``<gguf stem>.README.md``.

Example:
    >>> path = write_card(Path("out/L1-Qwen-1.5B-Max-Q8_0.gguf"), Path("L1-Qwen-1.5B-Max"))  # doctest: +SKIP
    >>> path.name                                                                               # doctest: +SKIP
    'README.md'
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import gguf

from l1quant.gguf.reader import read_gguf
from l1quant.l1 import l1_prompt
from l1quant.output import AtomicOutput, pwrite_all
from l1quant.source.hub import resolve_model

MARKER = "<!-- written by l1quant; safe to regenerate -->"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render_card(gguf_path: Path, source: Path | None, report: Any | None = None, *,
                source_name: str | None = None) -> str:
    """The card's Markdown for ``gguf_path`` (converted from ``source``), with ``report`` (a VerifyReport) if given.

    ``source_name`` is how the card names the source (default: the folder's name); pass the repo id for a hub
    checkout, whose folder is a snapshot hash.

    Example:
        >>> print(render_card(Path("tiny-Q8_0.gguf"), Path("tiny"))[:30])  # doctest: +SKIP
        <!-- written by l1quant; safe
    """
    gf = read_gguf(gguf_path)
    shown = source_name or (source.name if source else "?")
    kv = gf.kv
    name = kv.get("general.name", gguf_path.stem)
    arch = kv.get("general.architecture", "?")
    types: dict[str, int] = {}
    for t in gf.tensors:
        types[t.ggml_type.name] = types.get(t.ggml_type.name, 0) + 1
    n_params = sum(int(_prod(t.shape)) for t in gf.tensors)
    src_size = sum(p.stat().st_size for p in source.glob("*.safetensors")) if source else 0
    try:
        ftype = gguf.LlamaFileType(int(kv.get("general.file_type", -1))).name.partition("_")[2]
    except ValueError:
        ftype = "?"
    lines = [
        MARKER,
        f"# {name} — GGUF {ftype}",
        "",
        (f"Converted with [l1quant](https://pypi.org/project/l1quant/) from `{shown}`; "
         "tensors byte-identical to llama.cpp's `convert_hf_to_gguf.py`."),
        "",
        "| | |",
        "|---|---|",
        f"| file | `{gguf_path.name}` |",
        f"| sha256 | `{_sha256(gguf_path)}` |",
        (f"| size | {_human(gguf_path.stat().st_size)}"
         + (f" (source safetensors: {_human(src_size)})" if src_size else "") + " |"),
        f"| architecture | {arch}, {kv.get(f'{arch}.block_count', '?')} layers, "
        f"hidden {kv.get(f'{arch}.embedding_length', '?')}, "
        f"{kv.get(f'{arch}.attention.head_count', '?')}/{kv.get(f'{arch}.attention.head_count_kv', '?')} heads |",
        f"| parameters | {n_params / 1e9:.3f} B |",
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
               report: Any | None = None, *, source_name: str | None = None) -> Path:
    """Write the card beside ``gguf_path`` (atomically); return its path.

    Example:
        >>> write_card("out.gguf", "L1-Qwen-1.5B-Max")  # doctest: +SKIP
        PosixPath('README.md')
    """
    g = Path(gguf_path)
    text = render_card(g, Path(source) if source is not None else None, report, source_name=source_name)
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
    if target.exists() and MARKER not in target.read_text(encoding="utf-8", errors="replace")[:200]:
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
    from l1quant.check.verifier import verify  # check/ builds on conversion/: imported when a card is asked for

    src = resolve_model(model)
    report = verify(gguf_path, source=src, threads=threads)
    # a hub checkout's folder is named after its snapshot hash: the card names the repo id instead
    shown = None if Path(model).is_dir() else str(model)
    return write_card(gguf_path, src, report, source_name=shown), report

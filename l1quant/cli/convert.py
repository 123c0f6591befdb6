"""``l1quant convert``: parses options and calls :func:`l1quant.conversion.convert.convert` with the same parameters."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from l1quant.cli import main
from l1quant.cli.l1 import NO_REPACK_OPTION
from l1quant.cli.options import (CALIBRATION_OPTION, THREADS, format_tensor_table, per_tensor_options, run_report_options, setup_logging,
                                 split_options, split_write_fields, target_options)
from l1quant.conversion.card import card_path
from l1quant.conversion.convert import convert_many, parse_types, prepare_many
from l1quant.conversion.mixes import quant_options
from l1quant.conversion.target import summary, target_report
from l1quant.conversion.write import (DEFAULT_CHUNK_MB, MAX_CHUNK_MB, MIN_CHUNK_MB, WriteOptions, file_nbytes, output_parts,
                                     output_report, written_report)
from l1quant.errors import ConfigError, Terminated
from l1quant.filetypes import out_types
from l1quant.gguf.split import read_parts
from l1quant.output import TERMINATING_SIGNALS

OUT_TYPES = out_types()  # the registry as the command line is built


class _TypeList(click.ParamType):  # type: ignore[type-arg]  # click 8.1 (allowed) cannot subscript ParamType
    """``--type``: one type or several separated by commas, each one of :data:`OUT_TYPES` (case-insensitive)."""

    name = "type"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return ",".join(parse_types(value))
        except ConfigError as e:
            self.fail(str(e).removeprefix("--type "), param, ctx)


@main.command("convert")
@click.argument("model", metavar="MODEL")
@click.option("--type", "--outtype", "type_", type=_TypeList(),
              default="auto", show_default=True, metavar="TYPE[,TYPE...]",
              help="Output type, or several separated by commas (the checkpoint is then read once and one file "
                   "written per type; -o must then be a folder): q4_k_m (llama.cpp's usual choice), q5_k_m, q6_k, "
                   "q3_k_m, ... (llama-quantize's "
                   "mixes, same bytes), q8_0 (near-lossless), f16/bf16 (16-bit), f32, or auto (bf16 or f16 as "
                   "the checkpoint). Choices: " + ", ".join(OUT_TYPES) + ".")
@click.option("-o", "--output", "--outfile", type=click.Path(), default=None,
              help="Output file or folder (a path ending in / is a folder, created if missing). Default: a "
                   "name like L1-Qwen-1.5B-Max-Q4_K_M.gguf in the current folder. '{ftype}' in a file name is "
                   "replaced by the type.")
@click.option("--name", "--model-name", default=None,
              help="Model name for general.name (default: from README/config/folder).")
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON file of general.* keys overriding the naming/sampling metadata (as llama.cpp's "
                   "--metadata).")
@click.option("--pre", default=None, metavar="NAME",
              help="Pre-tokenizer name (e.g. qwen2, deepseek-r1-qwen) when the tokenizer's hash is unknown.")
@click.option("-t", "--threads", type=THREADS, default=None,
              help="Worker threads (default: all cores; at most 64 and 4 x cores). Output bytes do not depend on it.")
@click.option("--chunk-mb", type=float, default=DEFAULT_CHUNK_MB,
              show_default=True, help="Source MiB per work item; bounds memory (about 3 x threads x chunk).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Convert even if weights hold NaN/Inf (refused by default, naming the tensor and index).")
@click.option("--fsync", is_flag=True,
              help="Flush the output to disk (file and folder) before publishing it, so it also survives a power "
                   "loss. Costs the time the disk needs to write the whole file. Without it the output is still "
                   "atomic: complete under its name, or absent.")
@click.option("--card", is_flag=True,
              help="Also verify the result against the source and write a model card (README.md) beside it: "
                   "source, type, sizes, verify summary, and the L1 budget prompt format.")
@per_tensor_options
@target_options
@CALIBRATION_OPTION
@NO_REPACK_OPTION
@run_report_options
@split_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no warnings.")
def convert_cmd(model: str, type_: str, output: str | None, name: str | None, metadata: Path | None,
                pre: str | None, threads: int | None, chunk_mb: float, allow_nonfinite: bool, fsync: bool,
                card: bool, pure: bool, output_tensor_type: str | None, token_embedding_type: str | None,
                tensor_types: tuple[str, ...], tensor_type_file: str | None, leave_output_tensor: bool,
                imatrix: str | None, include_weights: tuple[str, ...], exclude_weights: tuple[str, ...],
                target_size: str | None, target_bpw: float | None, dry_run: bool, as_json: bool,
                split_max_size: str | None, split_max_tensors: int | None, calibration: str | None,
                no_repack: bool, quiet: bool) -> None:
    """Convert a Hugging Face checkpoint (L1-Qwen-1.5B-Max/-Exact...) to GGUF, any type, in one pass.

    MODEL is a model folder (config.json, tokenizer.json, *.safetensors) or a Hugging Face repo id such as
    l3lab/L1-Qwen-1.5B-Max (needs huggingface_hub: `pip install '.[hub]'` in a checkout; a local folder wins).

    The file is byte-identical to llama.cpp's convert_hf_to_gguf.py (f32/f16/bf16/q8_0), or to its lossless
    output followed by llama-quantize (q4_k_m and the other mixes, and any type with a per-tensor option).
    Everything is checked before writing; the file appears atomically, and nothing is left behind on error or
    Ctrl-C.
    """
    setup_logging(quiet)
    if not MIN_CHUNK_MB <= chunk_mb <= MAX_CHUNK_MB:  # also NaN (every comparison with NaN is false) and inf
        raise ConfigError(f"--chunk-mb must be a number of MiB in [{MIN_CHUNK_MB}, {MAX_CHUNK_MB}], found {chunk_mb}")
    options = quant_options(pure=pure, output_tensor_type=output_tensor_type,
                            token_embedding_type=token_embedding_type, tensor_types=tensor_types,
                            leave_output_tensor=leave_output_tensor, imatrix=imatrix,
                            include_weights=include_weights, exclude_weights=exclude_weights,
                            tensor_type_file=tensor_type_file)
    split = split_write_fields(split_max_size, split_max_tensors)
    if dry_run:
        prepared = prepare_many(model, type_, output, name=name, metadata=metadata, pre=pre, options=options,
                                target_size=target_size, target_bpw=target_bpw, threads=threads)
        reports = []
        for p in prepared:
            reps = [output_report(h, path) for path, h in output_parts(p.output, p.header, WriteOptions(**split))]
            if p.plan.target is not None:
                reps[0]["target"] = target_report(p.plan.target)
            reports += reps
        click.echo(json.dumps({"dry_run": True, "outputs": reports}, indent=2) if as_json
                   else "\n".join(format_tensor_table(r) for r in reports))
        for p in prepared:
            if p.plan.target is not None and not as_json:
                click.echo(summary(p.plan.target, file_nbytes(p.header)))
        return
    with _polite_signals(card):
        started = time.monotonic()
        outs = convert_many(model, type_, output, name=name, metadata=metadata, pre=pre, card=card,
                            options=options,
                            write=WriteOptions(threads=threads, chunk_mb=chunk_mb, allow_nonfinite=allow_nonfinite,
                                               fsync=fsync, progress=not quiet and sys.stderr.isatty(), **split),
                            calibration=calibration, no_repack=no_repack, target_size=target_size,
                            target_bpw=target_bpw)
        seconds = time.monotonic() - started
        if as_json:
            click.echo(json.dumps({"dry_run": False, "outputs": [written_report(gf.path, seconds) for o in outs
                                                                 for gf in read_parts(o)]}, indent=2))
            return
        for out in outs:
            click.echo(str(out))
        if card:
            click.echo(str(card_path(outs[0])))  # one card for the run, beside the first file


@contextmanager
def _polite_signals(on: bool) -> Iterator[None]:
    """With ``on``, SIGTERM/SIGHUP/SIGQUIT raise :class:`~l1quant.errors.Terminated` for the whole command, as
    Ctrl-C raises KeyboardInterrupt: a signal after the GGUF is published (during --card's verify) is then the
    same one line as Ctrl-C ("... after m.gguf was written completely"), not a silent kill. The output's own
    handler (AtomicOutput) nests inside and puts this one back."""
    if not on or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    old = {sig: signal.signal(sig, on_term) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, signal.SIG_DFL if h is None else h)

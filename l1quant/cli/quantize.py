"""``l1quant quantize``: parses options and calls :func:`l1quant.conversion.quantize.quantize` with the same
parameters."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from l1quant.cli import did_you_mean, main
from l1quant.cli.l1 import NO_REPACK_OPTION
from l1quant.cli.options import (CALIBRATION_OPTION, THREADS, format_tensor_table, per_tensor_options, run_report_options, setup_logging,
                                 split_options, split_write_fields, target_options)
from l1quant.conversion.mixes import quant_options
from l1quant.conversion.quantize import plan_quantize, quantize
from l1quant.conversion.target import summary, target_report
from l1quant.conversion.write import (DEFAULT_CHUNK_MB, MIN_CHUNK_MB, WriteOptions, output_parts, output_report,
                                     written_report)
from l1quant.filetypes import ALIASES, MIXES
from l1quant.gguf.split import read_parts

_TYPES = tuple(n.lower() for n in (*MIXES, *ALIASES))


@main.command("quantize")
@click.argument("input_", metavar="INPUT.gguf", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", metavar="[OUTPUT.gguf] TYPE", nargs=-1, required=True)
@per_tensor_options
@target_options
@click.option("--allow-requantize", is_flag=True,
              help="Accept an input whose tensors are already quantized (they are dequantized first; quality "
                   "suffers: quantize from F32/F16/BF16 when you can).")
@click.option("-t", "--threads", type=THREADS, default=None,
              help="Worker threads (default: all cores). Output bytes do not depend on it.")
@click.option("--chunk-mb", type=click.FloatRange(min=MIN_CHUNK_MB), default=DEFAULT_CHUNK_MB,
              show_default=True, help="Source MiB per work item; bounds memory.")
@click.option("--allow-nonfinite", is_flag=True, help="Write the output even if tensors hold NaN/Inf.")
@click.option("--fsync", is_flag=True, help="Flush the output to disk before publishing it.")
@CALIBRATION_OPTION
@NO_REPACK_OPTION
@run_report_options
@split_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no warnings.")
def quantize_cmd(input_: Path, args: tuple[str, ...], pure: bool, output_tensor_type: str | None,
                 token_embedding_type: str | None, tensor_types: tuple[str, ...], tensor_type_file: str | None,
                 leave_output_tensor: bool, imatrix: str | None, include_weights: tuple[str, ...],
                 exclude_weights: tuple[str, ...], target_size: str | None, target_bpw: float | None,
                 allow_requantize: bool, threads: int | None, chunk_mb: float, allow_nonfinite: bool, fsync: bool,
                 dry_run: bool, as_json: bool, split_max_size: str | None, split_max_tensors: int | None,
                 calibration: str | None,
                 no_repack: bool, quiet: bool) -> None:
    """Quantize an F32/F16/BF16 GGUF to TYPE, byte-identical to llama-quantize.

    TYPE auto with --target-size SIZE or --target-bpw BPW (and --imatrix) chooses each tensor's type by
    measurement to fit the size (docs/target-size.md); the table is also written as NAME.tensor-types.txt
    for llama-quantize --tensor-type-file.

    TYPE is one of q4_0 q4_1 q5_0 q5_1 q2_k q2_k_s q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k q8_0 f16
    bf16 f32 iq4_nl iq4_xs iq3_s iq3_m iq3_xs iq3_xxs iq2_m iq2_s iq2_xs iq2_xxs iq1_m iq1_s (q3_k, q4_k, q5_k
    mean the _m mixes; q2_k_s, iq3_xs and below need --imatrix or --calibration). Without OUTPUT.gguf the result
    is written beside the input as {name}-{TYPE}.gguf. Works on any qwen2, qwen3 or llama GGUF, not only
    l1quant's.
    """
    if len(args) > 2:
        raise click.UsageError(f"expected INPUT.gguf [OUTPUT.gguf] TYPE, found {len(args) + 1} arguments")
    type_ = args[-1]
    if type_.lower() not in (*_TYPES, "auto"):
        raise click.UsageError(f"TYPE {type_!r} is not one of {', '.join(_TYPES)}{did_you_mean(type_, _TYPES)}")
    output = args[0] if len(args) == 2 else None
    setup_logging(quiet)
    options = quant_options(pure=pure, output_tensor_type=output_tensor_type,
                            token_embedding_type=token_embedding_type, tensor_types=tensor_types,
                            leave_output_tensor=leave_output_tensor, imatrix=imatrix,
                            include_weights=include_weights, exclude_weights=exclude_weights,
                            tensor_type_file=tensor_type_file)
    split = split_write_fields(split_max_size, split_max_tensors)
    if dry_run:
        job = plan_quantize(input_, output, type_, allow_requantize=allow_requantize, options=options,
                            target_size=target_size, target_bpw=target_bpw, threads=threads)
        reps = [output_report(h, path) for path, h in output_parts(job.output, job.header, WriteOptions(**split))]
        if job.plan.target is not None:
            reps[0]["target"] = target_report(job.plan.target)
        click.echo(json.dumps({"dry_run": True, "outputs": reps}, indent=2) if as_json
                   else "\n".join(map(format_tensor_table, reps)))
        if job.plan.target is not None and not as_json:
            click.echo(summary(job.plan.target, reps[0]["size"]))
        return
    started = time.monotonic()
    out = quantize(input_, output, type_, allow_requantize=allow_requantize, options=options,
                   write=WriteOptions(threads=threads, chunk_mb=chunk_mb, allow_nonfinite=allow_nonfinite,
                                      fsync=fsync, progress=not quiet and sys.stderr.isatty(), **split),
                   calibration=calibration, no_repack=no_repack, target_size=target_size, target_bpw=target_bpw)
    if as_json:
        seconds = time.monotonic() - started
        click.echo(json.dumps({"dry_run": False, "outputs": [written_report(gf.path, seconds)
                                                             for gf in read_parts(out)]}, indent=2))
    else:
        click.echo(str(out))

"""``l1quant.convert``: a Hugging Face checkpoint folder (or hub id) to a GGUF file.

Pipeline: read config, tokenizer and safetensors headers -> find the architecture's description
(:mod:`l1quant.arch`) -> validate and plan -> build the header (metadata in llama.cpp's key order, the hparam keys
from the description's table) -> stream every tensor through the kernels to its planned offset -> atomic rename.

Example:
    >>> import l1quant
    >>> l1quant.convert("L1-Qwen-1.5B-Max", type="q8_0")  # doctest: +SKIP
    PosixPath('L1-Qwen-1.5B-Max-Q8_0.gguf')
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from l1quant.arch import get_arch
from l1quant.conversion.mixes import QuantOptions, quant_options
from l1quant.conversion.pipeline import DEFAULT_CHUNK_BYTES, stream_tensors
from l1quant.conversion.plan import ConversionPlan, make_plan
from l1quant.filetypes import Mix
from l1quant.kernels import QuantType
from l1quant.conversion.vocab import Vocab, load_vocab
from l1quant.errors import ConfigError, InputError, OutputError, read_json
from l1quant.conversion.metadata import check_model_card, validate_metadata
from l1quant.gguf.writer import AtomicOutput, inside_folder, new_header, write_header
from l1quant.source.config import ModelConfig
from l1quant.source.hub import is_repo_id, resolve_model
from l1quant.source.inputs import check_reference_inputs
from l1quant.source.safetensors import open_checkpoint

log = logging.getLogger("l1quant")


@dataclass
class Prepared:
    """Everything decided before the first byte is written (exposed for verify, the card and tests)."""

    model_dir: Path
    cfg: ModelConfig
    plan: ConversionPlan
    vocab: Vocab
    header: gguf.GGUFWriter
    metadata: gguf.Metadata
    output: Path
    warnings: list[str] = field(default_factory=list)
    #: the output names a folder that does not exist yet (``-o new/``): convert creates it
    create_folder: bool = False


def _resolve_model(model: str | os.PathLike[str]) -> tuple[Path, str]:
    """(local folder, the name naming heuristics should see): a hub id is named after its repo, not its snapshot."""
    p = Path(model)
    if p.is_dir():
        return p, p.name if p.name not in ("", "..") else p.resolve().name  # `convert .`: the folder's real name
    if not p.exists() and is_repo_id(str(model)):
        return Path(resolve_model(str(model))), str(model).rsplit("/", 1)[-1]
    if p.exists():
        raise InputError(f"{p}: not a folder (expected a Hugging Face model folder with config.json)")
    raise InputError(f"{p}: no such folder (nor a Hugging Face repo id like org/name)")


def resolve_source(model: str | os.PathLike[str]) -> Path:
    """The local folder for ``model`` (a folder, or a hub id resolved through the local cache/hub).

    Example:
        >>> resolve_source("l3lab/L1-Qwen-1.5B-Max")  # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--l3lab--L1-Qwen-1.5B-Max/snapshots/...')
    """
    return _resolve_model(model)[0]


def _load_metadata(model_dir: Path, display_name: str, metadata: str | os.PathLike[str] | None,
                   name: str | None, total_params: int) -> gguf.Metadata:
    override = None
    if metadata is not None:
        override = Path(metadata)
        if not override.is_file():
            raise InputError(f"{override}: metadata override file not found")
        read_json(override, InputError)  # gguf would crash on JSON it cannot parse: refuse it in one line first
    # Read once here, where it is used: gguf's Metadata would fail on it with a message that names no file.
    gen_path = model_dir / "generation_config.json"
    gen = read_json(gen_path, InputError) if gen_path.exists() else {}  # a FIFO/device is refused, not skipped
    if not isinstance(gen, dict):
        raise InputError(f"{gen_path}: expected a JSON object, found a {type(gen).__name__}")
    check_model_card(model_dir)  # README.md bounded (size, YAML aliases) before gguf-py parses it
    try:
        if display_name == model_dir.name:
            md = gguf.Metadata.load(override, model_dir, name, total_params)
        else:
            # gguf's naming heuristics fall back to the folder's name; show them the repo name through a link
            # rather than the hub cache's snapshot folder (a commit hash).
            with tempfile.TemporaryDirectory() as td:
                link = Path(td) / display_name
                link.symlink_to(model_dir.resolve(), target_is_directory=True)
                md = gguf.Metadata.load(override, link, name, total_params)
    except Exception as e:  # README front matter (yaml) or generation_config.json that gguf cannot parse
        raise InputError(f"{model_dir}: cannot read model card / generation config metadata: {e}") from e
    if md.name is None:
        md.name = display_name
    # The pinned reference's gguf-py also reads generation_config's "repetition_penalty" (PyPI gguf 0.19.0 only
    # reads "penalty_repeat"); an override file still wins, as for every sampling key.
    if md.sampling_penalty_repeat is None and "repetition_penalty" in gen and not (
            override and gguf.Keys.General.SAMPLING_PENALTY_REPEAT in gguf.Metadata.load_metadata_override(override)):
        md.sampling_penalty_repeat = gen["repetition_penalty"]
    validate_metadata(md, model_dir, override)  # every general.* value has its GGUF type, or one line naming it
    return md


def prepare(
    model: str | os.PathLike[str],
    type: str | Mix | QuantType = "auto",
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    options: QuantOptions | None = None,
    as_mix: bool = False,
) -> Prepared:
    """Read and validate everything, build the header and decide the output path; write nothing.

    ``as_mix`` treats a converter type (``q8_0``, ``f16``...) as llama-quantize's mix of that name, the layout
    of a file llama-quantize wrote (verify uses it to rebuild such a file).

    Example:
        >>> p = prepare("tiny-qwen3", "q8_0")  # doctest: +SKIP
        >>> p.output.name                      # doctest: +SKIP
        'Tiny-Qwen3-Q8_0.gguf'
    """
    model_dir, display_name = _resolve_model(model)
    cfg = ModelConfig.load(model_dir)
    arch = get_arch(cfg.architecture)
    # inputs the reference would read into a different file (docs/reference-inputs.md): refused before any work
    check_reference_inputs(model_dir, cfg, arch)
    ckpt = open_checkpoint(model_dir)
    plan = make_plan(ckpt, cfg, arch, type, options, as_mix=as_mix)  # before the vocab: tensor problems are refused seconds sooner
    vocab = load_vocab(model_dir, cfg.vocab_size, pre=pre)

    gw = new_header(plan)
    total, shared, expert, n_expert = gw.get_total_parameter_count()
    md = _load_metadata(model_dir, display_name, metadata, name, total)
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, n_expert)
    # Key order is the reference's: architecture (GGUFWriter adds it), type, sampling + naming, hparams, file
    # type, the architecture's later hparams (llama: vocab size, rope dimensions), quantization version,
    # tokenizer. llama-quantize (a mix) removes file type and quantization version and appends them at the end,
    # quantization version first: so does the one-pass mix (mixes.py, "the output file").
    gw.add_type(gguf.GGUFType.MODEL)
    md.set_gguf_meta_model(gw)
    for key, value, vtype in arch.kv_rows(cfg):
        gw.add_key_value(key, value, vtype)
    if not plan.quantized_layout:
        gw.add_file_type(plan.file_type)
    for key, value, vtype in arch.kv_rows(cfg, after_file_type=True):
        gw.add_key_value(key, value, vtype)
    if not plan.quantized_layout:
        gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if arch.add_space_prefix and vocab.special.add_prefix_space is not None:
        gw.add_add_space_prefix(vocab.special.add_prefix_space)
    gw.add_tokenizer_model(arch.tokenizer_model)
    gw.add_tokenizer_pre(vocab.pre)
    gw.add_token_list(vocab.tokens)
    gw.add_token_types(vocab.token_types)
    vocab.special.add_to(gw)
    if plan.quantized_layout:
        gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gw.add_file_type(plan.file_type)

    out_type = plan.type_name
    # the reference's default name (e.g. L1-Qwen-1.5B-Max-Q8_0.gguf) in a folder, or a templated file name
    default_name = gguf.naming_convention(md.name, md.basename, md.finetune, md.version, md.size_label,
                                          out_type) + ".gguf"
    out = Path.cwd() if output is None else Path(output)
    # "new/" (a trailing separator) names a folder, existing or not: never a file called "new"
    names_folder = output is not None and str(output).endswith(("/", os.sep))
    create = names_folder and not out.exists()
    if out.is_dir() or names_folder:
        out = out / default_name
    else:
        out = out.parent / gguf.fill_templated_filename(out.name, out_type)
    return Prepared(model_dir, cfg, plan, vocab, gw, md, out, list(plan.warnings), create_folder=create)


def convert(
    model: str | os.PathLike[str],
    type: str = "auto",
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    threads: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    allow_nonfinite: bool = False,
    durable: bool = False,
    progress: bool | Callable[[int], None] = False,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Sequence[tuple[str, str]] | Sequence[str] = (),
    leave_output_tensor: bool = False,
) -> Path:
    """Convert a checkpoint (folder or Hugging Face repo id) to GGUF in one pass; return the output path.

    ``type`` is a converter type -- ``auto`` (bf16/f16 from the source dtype), ``f32``, ``f16``, ``bf16``,
    ``q8_0``: the bytes ``convert_hf_to_gguf.py --outtype`` writes -- or a llama-quantize mix (``q4_0``, ``q4_1``,
    ``q5_0``, ``q5_1``, ``q2_k``, ``q3_k_s/m/l``, ``q4_k_s/m``, ``q5_k_s/m``, ``q6_k``; ``q3_k``, ``q4_k``, ``q5_k``
    are aliases of the ``_m`` ones): the bytes of the converter's lossless output (BF16 for a bf16 checkpoint)
    followed by ``llama-quantize`` with that type. ``pure``, ``output_tensor_type``, ``token_embedding_type``,
    ``tensor_types`` (``"REGEX=TYPE"`` strings or (regex, type) pairs) and ``leave_output_tensor`` are
    llama-quantize's per-tensor flags; with any of them a converter type is applied as a mix too.
    ``output`` is a file path (``{ftype}`` in it is replaced by the type), a folder, or None for a name like
    ``L1-Qwen-1.5B-Max-Q8_0.gguf`` in the current folder. ``name`` and ``metadata`` (a JSON file of
    ``general.*`` keys) override the naming metadata; ``pre`` overrides the pre-tokenizer name. ``threads``
    defaults to every core; the output bytes do not depend on it or on ``chunk_bytes``. ``durable`` fsyncs the
    output (and its folder) before publishing it, so it survives a power loss too. ``progress`` is True
    for a progress bar on stderr, or a callback receiving the output bytes written.

    Nothing is written until everything has been validated; the output appears atomically, and on any error
    no partial file is left and an existing file at ``output`` is untouched.

    Example:
        >>> convert("L1-Qwen-1.5B-Max", "q8_0", "out.gguf", threads=2)  # doctest: +SKIP
        PosixPath('out.gguf')
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, found {threads}")
    options = quant_options(pure=pure, output_tensor_type=output_tensor_type,
                            token_embedding_type=token_embedding_type, tensor_types=tensor_types,
                            leave_output_tensor=leave_output_tensor)
    p = prepare(model, type, output, name=name, metadata=metadata, pre=pre, options=options)
    # The input folder is only ever read: no output (let alone one named like an input file) goes into it. Checked
    # here, not in prepare(), which writes nothing and also serves verify for a GGUF kept beside its source.
    if inside_folder(p.output, p.model_dir):  # any depth, symlinks and bind mounts: compared by device and inode
        raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; pass -o elsewhere")
    for w in p.warnings:
        log.warning(w)
    if p.create_folder:
        try:
            p.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{p.output.parent}: cannot create the output folder: {e.strerror or e}") from e
    write_gguf(p.plan, p.header, p.output, threads=threads, chunk_bytes=chunk_bytes,
               allow_nonfinite=allow_nonfinite, durable=durable, progress=progress)
    return p.output


def write_gguf(plan: ConversionPlan, header: gguf.GGUFWriter, output: Path, *, threads: int | None = None,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, allow_nonfinite: bool = False, durable: bool = False,
               progress: bool | Callable[[int], None] = False) -> None:
    """Write ``header`` and stream every tensor of ``plan`` into ``output``, atomically; log one summary line.

    The shared last step of ``convert`` and ``quantize`` (their parameters of the same names). ``progress``: True
    for a bar on stderr counting output bytes, or a callback receiving them.

    Example:
        >>> write_gguf(plan, header, Path("out.gguf"), threads=2)  # doctest: +SKIP
    """
    started = time.monotonic()
    bar: Any = None
    cb: Callable[[int], None] | None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.nbytes for t in plan.tensors), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=output.name, leave=True)
        cb = bar.update
    else:
        cb = progress or None
    try:
        with AtomicOutput(output, 0, durable=durable) as out:
            data_offset = write_header(header, out.path)
            out.reserve(data_offset + plan.data_nbytes)
            # early writeback only pays off when a final fsync will wait for the disk anyway
            stream_tensors(plan, out.fd, data_offset, threads=threads, chunk_bytes=chunk_bytes,
                           allow_nonfinite=allow_nonfinite, on_progress=cb, writeback=durable)
    finally:
        if bar is not None:
            bar.close()
    log.info(summary_line(output, plan, time.monotonic() - started))


def summary_line(path: Path, plan: ConversionPlan, seconds: float) -> str:
    """One line saying what was written: path, size, file type, the tensor types and their counts, time.

    Example:
        >>> from l1quant.conversion.plan import layout
        >>> summary_line(Path("m-Q4_K_M.gguf"), layout("qwen2", "Q4_K_M", 15, [], []), 7.25)
        'wrote m-Q4_K_M.gguf (0.00 GB, Q4_K_M: no tensors) in 7.2 s'
    """
    counts: dict[str, int] = {}
    for t in plan.tensors:
        counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    mix = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no tensors"
    try:
        size = path.stat().st_size
    except OSError:
        size = plan.data_nbytes
    return f"wrote {path} ({size / 1e9:.2f} GB, {plan.type_name}: {mix}) in {seconds:.1f} s"

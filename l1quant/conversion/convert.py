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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from l1quant.arch import Arch, get_arch
from l1quant.conversion.card import write_verified_card
from l1quant.conversion.metadata import check_model_card, validate_metadata
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.plan import ConversionPlan, make_plan
from l1quant.conversion.vocab import Vocab, load_vocab
from l1quant.conversion.write import WriteOptions, output_path, split_flat_options, write_gguf
from l1quant.errors import InputError, L1QuantError, OutputError, VerifyError, read_json
from l1quant.gguf.header import Header
from l1quant.output import inside_folder
from l1quant.source.config import ModelConfig
from l1quant.source.hub import is_repo_id, resolve_model
from l1quant.source.inputs import check_reference_inputs
from l1quant.source.safetensors import open_checkpoint

__all__ = ["Prepared", "WriteOptions", "build_header", "convert", "prepare", "resolve_source"]

log = logging.getLogger("l1quant")


@dataclass
class Prepared:
    """Everything decided before the first byte is written (exposed for verify, the card and tests)."""

    model_dir: Path
    cfg: ModelConfig
    plan: ConversionPlan
    vocab: Vocab
    header: Header
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


def build_header(plan: ConversionPlan, cfg: ModelConfig, arch: Arch, vocab: Vocab,
                 metadata: gguf.Metadata | None = None) -> Header:
    """The header the reference writes for this plan: tensor infos from ``plan``, then the keys in its order.

    Key order is the reference's: architecture, type, sampling + naming (``metadata``; gguf-py's
    ``Metadata.set_gguf_meta_model``), hparams, file type, the architecture's later hparams (llama: vocab size,
    rope dimensions), quantization version, tokenizer. llama-quantize (a mix: ``plan.quantized_layout``) removes
    file type and quantization version and appends them at the end, quantization version first: so does the
    one-pass mix (mixes.py, "the output file"). With ``metadata`` None the naming keys are left for the caller
    (:func:`prepare` needs the tensor infos first: the size label counts their parameters).

    Example:
        >>> h = build_header(plan, cfg, get_arch("qwen2"), vocab, md)  # doctest: +SKIP
        >>> list(h.kv)[:2]                                            # doctest: +SKIP
        ['general.architecture', 'general.type']
    """
    h = Header()
    for t in plan.tensors:
        h.add_tensor(t.name, t.gguf_dims, t.qtype.ggml_type, t.nbytes)
    h.add(gguf.Keys.General.ARCHITECTURE, plan.arch_name, gguf.GGUFValueType.STRING)
    if metadata is not None:
        add_model_keys(h, plan, cfg, arch, vocab, metadata)
    return h


def add_model_keys(h: Header, plan: ConversionPlan, cfg: ModelConfig, arch: Arch, vocab: Vocab,
                   metadata: gguf.Metadata) -> None:
    """Every key after ``general.architecture``, in the reference's order (see :func:`build_header`)."""
    gw = h.gguf_writer(plan.arch_name)  # gguf-py's add_* helpers, recording into ``h``
    gw.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(gw)
    for key, value, vtype in arch.kv_rows(cfg):
        h.add(key, value, vtype)
    if not plan.quantized_layout:
        gw.add_file_type(plan.file_type)
    for key, value, vtype in arch.kv_rows(cfg, after_file_type=True):
        h.add(key, value, vtype)
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


def prepare(
    model: str | os.PathLike[str],
    type: str = "auto",
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

    header = build_header(plan, cfg, arch, vocab)
    total, shared, expert, n_expert = header.parameter_count()
    md = _load_metadata(model_dir, display_name, metadata, name, total)
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, n_expert)
    add_model_keys(header, plan, cfg, arch, vocab, md)

    # the reference's default name (e.g. L1-Qwen-1.5B-Max-Q8_0.gguf) in a folder, or a templated file name
    default_name = gguf.naming_convention(md.name, md.basename, md.finetune, md.version, md.size_label,
                                          plan.type_name) + ".gguf"
    out, create = output_path(output, Path.cwd() / default_name, plan.type_name)
    return Prepared(model_dir, cfg, plan, vocab, header, md, out, list(plan.warnings), create_folder=create)


def convert(
    model: str | os.PathLike[str],
    type: str = "auto",
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    metadata: str | os.PathLike[str] | None = None,
    pre: str | None = None,
    card: bool = False,
    options: QuantOptions | None = None,
    write: WriteOptions | None = None,
    calibration: str | os.PathLike[str] | bool | None = None,
    no_repack: bool = False,
    **flags: Any,
) -> Path:
    """Convert a checkpoint (folder or Hugging Face repo id) to GGUF in one pass; return the output path.

    ``type`` is a converter type -- ``auto`` (bf16/f16 from the source dtype), ``f32``, ``f16``, ``bf16``,
    ``q8_0``: the bytes ``convert_hf_to_gguf.py --outtype`` writes -- or a llama-quantize mix (``q4_0``, ``q4_1``,
    ``q5_0``, ``q5_1``, ``q2_k``, ``q3_k_s/m/l``, ``q4_k_s/m``, ``q5_k_s/m``, ``q6_k``; ``q3_k``, ``q4_k``, ``q5_k``
    are aliases of the ``_m`` ones): the bytes of the converter's lossless output (BF16 for a bf16 checkpoint)
    followed by ``llama-quantize`` with that type.
    ``output`` is a file path (``{ftype}`` in it is replaced by the type), a folder (a path ending in ``/`` is
    one, created if missing), or None for a name like ``L1-Qwen-1.5B-Max-Q8_0.gguf`` in the current folder
    (:func:`l1quant.conversion.write.output_path`, the rule ``quantize`` follows too). ``name`` and ``metadata``
    (a JSON file of ``general.*`` keys) override the naming metadata; ``pre`` overrides the pre-tokenizer name.
    ``card`` also verifies the result against the source and writes a model card beside it
    (:func:`l1quant.conversion.card.write_verified_card`; a failed verify raises
    :class:`~l1quant.errors.VerifyError` after the card is written).

    The flags of ``l1quant convert`` are grouped: ``options`` holds llama-quantize's per-tensor flags
    (:class:`~l1quant.conversion.mixes.QuantOptions`: ``pure``, ``output_tensor_type``, ``token_embedding_type``,
    ``tensor_types``, ``leave_output_tensor``; with any of them a converter type is applied as a mix too), and
    ``write`` how the file is written (:class:`~l1quant.conversion.write.WriteOptions`: ``threads``,
    ``chunk_mb``, ``allow_nonfinite``, ``fsync``, ``progress``). Each can also be passed by its flag's name
    (``threads=2``, ``pure=True``, ``tensor_types=["attn_v=q8_0"]``; ``durable`` and ``chunk_bytes`` are the
    older spellings of ``fsync`` and ``chunk_mb``).

    ``calibration`` (``--calibration [TEXT]``; True or "" for the bundled text) first computes an importance matrix
    from the lossless conversion as llama-imatrix does (:func:`l1quant.imatrix_compute.calibration_imatrix`, kept
    as ``NAME.imatrix.gguf`` beside the output) and then quantizes with it; ``no_repack`` is llama.cpp's ``-nr``
    for that step.

    Nothing is written until everything has been validated; the output appears atomically, and on any error
    no partial file is left and an existing file at ``output`` is untouched.

    Example:
        >>> convert("L1-Qwen-1.5B-Max", "q8_0", "out.gguf", write=WriteOptions(threads=2))  # doctest: +SKIP
        PosixPath('out.gguf')
        >>> convert("L1-Qwen-1.5B-Max", "q4_k_m", threads=2, pure=True)                     # doctest: +SKIP
        PosixPath('L1-Qwen-1.5B-Max-Q4_K_M.gguf')
    """
    options, w = split_flat_options("convert", flags, options, write)
    if calibration is not None and calibration is not False:
        from l1quant.imatrix_compute import calibration_imatrix, calibration_options

        p = prepare(model, type, output, name=name, metadata=metadata, pre=pre, options=options)  # refusals first
        if inside_folder(p.output, p.model_dir):
            raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; pass -o elsewhere")
        options = calibration_options(options, p.output, type)
        calibration_imatrix(p.model_dir, calibration, p.output, threads=w.threads, no_repack=no_repack,
                            progress=w.progress)
    p = prepare(model, type, output, name=name, metadata=metadata, pre=pre, options=options)
    # The input folder is only ever read: no output (let alone one named like an input file) goes into it. Checked
    # here, not in prepare(), which writes nothing and also serves verify for a GGUF kept beside its source.
    if inside_folder(p.output, p.model_dir):  # any depth, symlinks and bind mounts: compared by device and inode
        raise OutputError(f"{p.output}: refusing to write into the input folder {p.model_dir}; pass -o elsewhere")
    for warning in p.warnings:
        log.warning(warning)
    write_gguf(p.plan, p.header, p.output, w, create_folder=p.create_folder)
    if card:
        try:
            where, report = write_verified_card(p.output, model, threads=w.threads)
        except (L1QuantError, OSError) as e:
            # the GGUF is complete and valid: the message must not read as the conversion failing
            code = e.exit_code if isinstance(e, L1QuantError) else 1
            detail = str(e) if isinstance(e, L1QuantError) else f"{e.strerror or e}: {e.filename or ''}"
            raise CardStepError(f"{p.output} was written completely; the --card step failed: {detail}", code) from e
        if not report.passed:
            raise VerifyError(f"{p.output}: verify: {report.verdict} (the card {where} says so)")
    return p.output


class CardStepError(L1QuantError):
    """The GGUF was written and published; only the ``--card`` step after it failed (its own exit code kept)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

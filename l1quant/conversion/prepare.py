"""Everything ``convert`` decides before the first byte is written: the source resolved, config, vocabulary,
naming metadata, the plan and the header (:func:`prepare`, :class:`Prepared`).

Its own module because two commands build on it: ``convert`` writes what it prepares, and ``verify`` compares a
file with the header and tensors the converter would write for its source (nothing written). Keeping it apart
from :func:`l1quant.conversion.convert.convert` (which can verify what it wrote, ``card=True``) keeps the two
free of an import circle.

Example:
    >>> p = prepare("L1-Qwen-1.5B-Max", "q8_0")  # doctest: +SKIP
    >>> p.plan.tensors[0].name, p.output.name    # doctest: +SKIP
    ('token_embd.weight', 'L1-Qwen-1.5B-Max-Q8_0.gguf')
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from l1quant.arch import Arch, get_arch
from l1quant.conversion.metadata import check_model_card, validate_metadata
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.pipeline import default_threads
from l1quant.conversion.plan import ConversionPlan, make_plan
from l1quant.conversion.vocab import Vocab, load_vocab
from l1quant.conversion.write import output_path
from l1quant.errors import ConfigError, InputError, clip, read_json
from l1quant.filetypes import Mix
from l1quant.gguf.header import Header
from l1quant.kernels import QuantType
from l1quant.source.config import ModelConfig
from l1quant.source.hub import is_repo_id, resolve_model
from l1quant.source.inputs import check_reference_inputs
from l1quant.source.safetensors import open_checkpoint

__all__ = ["Prepared", "add_model_keys", "build_header", "prepare", "resolve_source"]

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
        for key, vtype, value in plan.imatrix_keys:  # llama-quantize's kv overrides, set after file_type
            h.add(key, value, vtype)


def _model_metadata(header: Header, model_dir: Path, display_name: str, metadata: str | os.PathLike[str] | None,
                    name: str | None) -> gguf.Metadata:
    """The naming metadata, its size label from the header's parameter count (which the types do not change)."""
    total, shared, expert, n_expert = header.parameter_count()
    md = _load_metadata(model_dir, display_name, metadata, name, total)
    if md.size_label is None and total > 0:
        md.size_label = gguf.size_label(total, shared, expert, n_expert)
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
    assume_imatrix: bool = False,
    target_size: str | int | None = None,
    target_bpw: float | str | None = None,
    threads: int | None = None,
) -> Prepared:
    """Read and validate everything, build the header and decide the output path; write nothing.

    ``as_mix`` treats a converter type (``q8_0``, ``f16``...) as llama-quantize's mix of that name, the layout
    of a file llama-quantize wrote (verify uses it to rebuild such a file); ``assume_imatrix`` picks the types of
    an imatrix quant without its importance matrix (verify, which then cannot compare bytes). ``target_size`` /
    ``target_bpw`` with type ``auto``: each tensor's type is searched to fit (:mod:`l1quant.conversion.target`),
    measuring ``threads`` tensors at once (the answer does not depend on it).

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
    has_target = target_size is not None or target_bpw is not None
    if str(type).lower() == "auto" and has_target:
        # the search needs the exact header of every candidate table: vocab and naming metadata first
        from l1quant.conversion.target import apply_target

        vocab = load_vocab(model_dir, cfg.vocab_size, pre=pre)
        mds: list[gguf.Metadata] = []

        def header_for(p: ConversionPlan) -> Header:
            h = build_header(p, cfg, arch, vocab)
            if not mds:
                mds.append(_model_metadata(h, model_dir, display_name, metadata, name))
            add_model_keys(h, p, cfg, arch, vocab, mds[0])
            return h

        plan = make_plan(ckpt, cfg, arch, type, options, target=functools.partial(
            apply_target, target_size=target_size, target_bpw=target_bpw, header_for=header_for,
            threads=threads or default_threads()))
        header = header_for(plan)
    else:
        if has_target:
            raise ConfigError(f"--target-size/--target-bpw choose the types themselves: use type auto, not "
                              f"{clip(str(type))}")
        # before the vocab: tensor problems are refused seconds sooner
        plan = make_plan(ckpt, cfg, arch, type, options, as_mix=as_mix, assume_imatrix=assume_imatrix)
        vocab = load_vocab(model_dir, cfg.vocab_size, pre=pre)
        header = build_header(plan, cfg, arch, vocab)
        mds = [_model_metadata(header, model_dir, display_name, metadata, name)]
        add_model_keys(header, plan, cfg, arch, vocab, mds[0])
    md = mds[0]

    # the reference's default name (e.g. L1-Qwen-1.5B-Max-Q8_0.gguf) in a folder, or a templated file name
    default_name = gguf.naming_convention(md.name, md.basename, md.finetune, md.version, md.size_label,
                                          plan.type_name) + ".gguf"
    out, create = output_path(output, Path.cwd() / default_name, plan.type_name)
    return Prepared(model_dir, cfg, plan, vocab, header, md, out, list(plan.warnings), create_folder=create)

"""Inputs of a model folder that llama.cpp's converter reads and l1quant does not reproduce: refused in one line.

The pinned reference (``convert_hf_to_gguf.py`` of llama-cpp-python 0.3.36, its ``conversion/`` package and
``gguf-py``) reads more of a folder than the files l1quant converts from. Each input listed here would change
the reference's output, so converting without it would silently give a different file; l1quant refuses instead,
naming the file and the key (docs/reference-inputs.md has the whole inventory, with what is honoured).

* **config.json, read through transformers' AutoConfig** (``ModelBase.load_hparams``). ``model_type`` picks the
  config class whose defaults fill the keys config.json omits (and without a known one AutoConfig fails and the
  reference falls back to the raw file, with no defaults); the base class ``TextModel`` looks several
  hparams up under alternative spellings, some *before* the usual one (``n_layers`` before
  ``num_hidden_layers``), and writes keys for others (experts, a second norm epsilon, sliding-window rope base,
  M-RoPE sections, pooling); ``quantization_config`` selects a dequantization; ``llm_config`` and its kin are
  renamed to ``text_config`` and merged.
* **Weights:** ``hf_quant_config.json`` (ModelOpt quantization).
* **Tokenizer:** ``tokenizer.model`` (every class here tries a SentencePiece vocabulary first).
* **sentence-transformers:** ``modules.json`` naming a Pooling module, whose ``config.json`` gives
  ``{arch}.pooling_type`` (qwen2 and qwen3 read it; llama does not).

Architecture-specific inputs (the Qwen3 reranker heuristics, llama's vocabulary-size special cases) are checked by
the architecture's own ``check_folder`` hook.

Example:
    >>> check_reference_inputs(Path("model"), cfg, get_arch("qwen2"))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    l1quant.errors.ConfigError: model/config.json: 'n_layers' (3) ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from l1quant.errors import ConfigError, InputError, TokenizerError, clip, read_json

if TYPE_CHECKING:  # the architecture descriptions import this package
    from l1quant.arch import Arch
    from l1quant.source.config import ModelConfig

#: Keys the reference's ``TextModel`` finds *before* the one l1quant reads (``find_hparam`` takes the first
#: present): key -> the key l1quant reads, whose value it would replace.
PRECEDING_SPELLINGS: dict[str, str] = {
    "n_layers": "num_hidden_layers",
    "prefix_dense_intermediate_size": "intermediate_size",
    "dense_intermediate_size": "intermediate_size",
}
#: Keys whose (non-null) value makes the reference write a key l1quant does not: key -> the GGUF key written.
EXTRA_KEY_SPELLINGS: dict[str, str] = {
    **{k: "{arch}.rope.freq_base_swa" for k in ("local_rope_theta", "rope_local_theta", "rope_theta_local",
                                               "swa_rope_theta", "rope_local_base_freq")},
    **{k: "{arch}.attention.layer_norm_epsilon" for k in ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")},
    **{k: "{arch}.expert_count" for k in ("num_local_experts", "num_experts", "n_routed_experts")},
    **{k: "{arch}.expert_used_count" for k in ("num_experts_per_tok", "num_experts_per_token", "top_k_experts")},
    "n_group": "{arch}.expert_group_count",
    "topk_group": "{arch}.expert_group_used_count",
    **{k: "{arch}.expert_gating_func" for k in ("score_function", "scoring_func", "score_func",
                                               "moe_router_activation", "moe_router_activation_func",
                                               "expert_selection_fn")},
    "classifier_pooling": "{arch}.classifier.pooling_type",
}
#: Nested configs ``load_hparams`` renames to ``text_config`` (then merged over the top level).
#: A model card is text for people: the largest on the Hub are ~100 KB. 4 MiB bounds
#: (convert's metadata and an architecture's folder check both read README.md through this bound) the read and the scan.
MAX_MODEL_CARD_BYTES = 4 << 20

WRAPPERS = ("llm_config", "lm_config", "thinker_config", "language_config", "lfm")
#: Keys of the rope dict the reference reads that l1quant does not reproduce: key -> what the reference does.
ROPE_EXTRAS = {
    "mrope_section": "writes {arch}.rope.dimension_sections",
    "full_attention": "reads the rope parameters from it",
    "sliding_attention": "writes {arch}.rope.freq_base_swa",
}


def check_reference_inputs(model_dir: Path, cfg: ModelConfig, arch: Arch) -> None:
    """Refuse (one line naming file and key) any input of ``model_dir`` the reference would read into a different
    file than l1quant writes. ``cfg`` is the folder's validated config.json, ``arch`` its description."""
    src = cfg.source
    raw = cfg.raw  # config.json with text_config merged over the top level, as the reference sees it
    mt = raw.get("model_type")
    if arch.hf_model_type and mt != arch.hf_model_type:
        why = ("without it transformers' AutoConfig fails and the reference reads the bare file, without the "
               "config class's defaults" if mt is None else
               f"the reference reads it with {clip(mt)}'s config class and its defaults")
        raise ConfigError(f"{src}: model_type is {clip(mt)}, expected {arch.hf_model_type!r} for "
                          f"{cfg.architecture} ({why})")
    for key in WRAPPERS:
        if key in raw:
            raise ConfigError(f"{src}: {key!r} is not supported (the reference merges it over the config as "
                              "text_config)")
    for key, ours in PRECEDING_SPELLINGS.items():
        if key in raw and raw[key] != raw.get(ours):
            raise ConfigError(f"{src}: {key!r} ({clip(raw[key], 40)}) is not supported: the reference reads it "
                              f"instead of {ours!r} ({clip(raw.get(ours), 40)})")
    for key, gkey in EXTRA_KEY_SPELLINGS.items():
        if raw.get(key) is not None:
            raise ConfigError(f"{src}: {key!r} ({clip(raw[key], 40)}) is not supported: the reference would "
                              f"write {gkey.format(arch=arch.name)}, which l1quant does not")
    rope = raw.get("rope_parameters", raw.get("rope_scaling"))
    for key, what in ROPE_EXTRAS.items():
        if isinstance(rope, dict) and key in rope:
            raise ConfigError(f"{src}: rope parameter {key!r} is not supported (the reference "
                              f"{what.format(arch=arch.name)})")
    qc = raw.get("quantization_config")
    if qc:
        method = qc.get("quant_method") if isinstance(qc, dict) else None
        raise ConfigError(f"{src}: quantization_config (quant_method {clip(method)}) is not supported: l1quant "
                          "converts unquantized BF16/F16/F32 checkpoints only")
    _no_file(model_dir / "hf_quant_config.json", ConfigError,
             "ModelOpt quantization: l1quant converts unquantized checkpoints only")
    _no_file(model_dir / "tokenizer.model", TokenizerError,
             "a SentencePiece model, which the reference converts instead of tokenizer.json (tokenizer.ggml.model "
             "'llama'); l1quant converts BPE tokenizers (tokenizer.json) only: remove it if tokenizer.json is the "
             "tokenizer")
    if arch.sentence_transformers_pooling:
        _check_modules(model_dir)
    if arch.check_folder is not None:
        arch.check_folder(model_dir, cfg)


def _no_file(path: Path, error: type[InputError], why: str) -> None:
    if path.exists() or path.is_symlink():
        raise error(f"{path}: not supported ({why})")


def _check_modules(model_dir: Path) -> None:
    """modules.json naming a sentence-transformers Pooling module makes the reference write a pooling type."""
    path = model_dir / "modules.json"
    if not (path.exists() or path.is_symlink()):
        return
    modules: Any = read_json(path, ConfigError)
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            raise ConfigError(f"{path}: Pooling module {clip(m.get('path'))} is not supported (the reference "
                              "writes its pooling type: an embedding model, not a causal LM)")

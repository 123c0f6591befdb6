"""qwen3: Qwen3 dense models and L1-Qwen3-8B (``Qwen3ForCausalLM``).

The shared decoder without biases, with a per-head RMS norm of q and k (``attn_q_norm``/``attn_k_norm``, applied
before rope) and NEOX rope. ``head_dim`` is explicit (Qwen3-0.6B: 16 heads x 128 = 2048 != hidden 1024), and
transformers' ``Qwen3Config`` defaults it to 128, so ``key_length``/``value_length`` are always written. The small
sizes tie their embeddings.

Example:
    >>> ARCH.features.qk_norm, ARCH.features.qkv_bias, ARCH.config_defaults["head_dim"]
    (True, False, 128)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gguf

from l1quant.arch import Arch
from l1quant.arch.decoder import HPARAMS, decoder_tensors, head_dim_rows
from l1quant.errors import ConfigError, clip, read_text
from l1quant.source.inputs import MAX_MODEL_CARD_BYTES

if TYPE_CHECKING:  # a description is data about a config; parsing a config reads the descriptions
    from l1quant.source.config import ModelConfig

#: What makes the reference's Qwen3Model a reranker (``_is_qwen3_reranker``): a README heading, or one of these in
#: the folder's path, config.json's ``_name_or_path`` or ``model_type``, or a sequence-classification architecture.
_RERANKER_HINTS = ("qwen3-reranker", "qwen3-vl-reranker")


def _check(cfg: ModelConfig) -> None:
    # attention_bias adds q/k/v/o biases, which llama.cpp's qwen3 graph has no place for
    if cfg.raw.get("attention_bias"):
        raise ConfigError(f"{cfg.source}: attention_bias=true is not supported for qwen3 (llama.cpp's qwen3 "
                          "has no attention biases)")


def _check_folder(model_dir: Path, cfg: ModelConfig) -> None:
    """Refuse a folder the reference would convert as a Qwen3 reranker (pooling RANK, a yes/no classifier head
    cut from the output matrix, a rerank chat template): ``Qwen3Model._is_qwen3_reranker``'s hints."""
    readme = model_dir / "README.md"
    if readme.exists():
        # bounded like every input, with the model card's own limit (this runs before the metadata reader)
        text = read_text(readme, ConfigError, MAX_MODEL_CARD_BYTES).lower()
        for hint in _RERANKER_HINTS:
            if f"# {hint}" in text:
                raise ConfigError(f"{readme}: the heading '# {hint}' makes the reference convert a Qwen3 reranker "
                                  "(not supported)")
    hints = {"folder path": str(model_dir.resolve()), "_name_or_path": cfg.raw.get("_name_or_path"),
             "model_type": cfg.raw.get("model_type")}
    for where, value in hints.items():
        if isinstance(value, str) and any(h in value.lower() for h in _RERANKER_HINTS):
            raise ConfigError(f"{cfg.source}: {where} {clip(value)} makes the reference convert a Qwen3 reranker "
                              "(not supported)")


ARCH = Arch(
    name="qwen3",
    model_arch=gguf.MODEL_ARCH.QWEN3,
    hf_architectures=("Qwen3ForCausalLM",),
    hparams=HPARAMS + head_dim_rows(lambda c: c.head_dim),
    tensors=decoder_tensors(qk_norm=True),
    # transformers' Qwen3Config defaults
    config_defaults={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                     "tie_word_embeddings": False, "head_dim": 128},
    check_config=_check,
    check_folder=_check_folder,
    sentence_transformers_pooling=True,  # inherited from Qwen2Model
    # llama.cpp has no 70B size class for qwen3
    llama_quantize_70b=lambda n_layer, n_head, n_head_kv: False,
    hf_model_type="qwen3",
)

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

import gguf

from l1quant.arch import Arch
from l1quant.arch.decoder import HPARAMS, decoder_tensors, head_dim_rows
from l1quant.errors import ConfigError
from l1quant.source.config import ModelConfig


def _check(cfg: ModelConfig) -> None:
    # attention_bias adds q/k/v/o biases, which llama.cpp's qwen3 graph has no place for
    if cfg.raw.get("attention_bias"):
        raise ConfigError(f"{cfg.source}: attention_bias=true is not supported for qwen3 (llama.cpp's qwen3 "
                          "has no attention biases)")


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
    # llama.cpp has no 70B size class for qwen3
    llama_quantize_70b=lambda n_layer, n_head, n_head_kv: False,
    hf_model_type="qwen3",
)

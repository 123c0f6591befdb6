"""qwen2: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, L1-Qwen (``Qwen2ForCausalLM``).

The shared decoder with q/k/v biases and NEOX rope (halves of each head rotated, as in Hugging Face's weights, so
no permutation). Keys: the shared rows; ``key_length``/``value_length`` only when config.json has ``head_dim``
(transformers' ``Qwen2Config`` has no default for it, so the reference writes them only then).

Example:
    >>> ARCH.name, ARCH.features.qkv_bias, ARCH.features.rope_style
    ('qwen2', True, 'neox')
"""

from __future__ import annotations

import gguf

from l1quant.arch import Arch
from l1quant.arch.decoder import HPARAMS, decoder_tensors, head_dim_rows

ARCH = Arch(
    name="qwen2",
    model_arch=gguf.MODEL_ARCH.QWEN2,
    hf_architectures=("Qwen2ForCausalLM",),
    hparams=HPARAMS + head_dim_rows(lambda c: c.head_dim_override),
    tensors=decoder_tensors(qkv_bias=True),
    # transformers' Qwen2Config defaults (the reference reads config.json through AutoConfig)
    config_defaults={"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                     "tie_word_embeddings": False},
    # llama.cpp sizes an 80-layer qwen2 as 70B (llama-quantize then gives attn_v more bits)
    llama_quantize_70b=lambda n_layer, n_head, n_head_kv: n_layer == 80,
    hf_model_type="qwen2",
    # Qwen2Model.set_gguf_parameters reads sentence-transformers' modules.json (a pooling type)
    sentence_transformers_pooling=True,
)

"""The parts the dense decoder architectures share (qwen2, qwen3, llama): key rows and the tensor table.

The key rows follow llama.cpp's converter base class for text models (``TextModel.set_gguf_parameters``): block
count, context length, embedding length, feed-forward length, head counts, causal flag (only when config.json
says false), rope scaling keys (linear and yarn only), rope base, RMS epsilon, then key/value length. The
tensor table is the Hugging Face decoder block every one of them uses, in GGUF names.

Example:
    >>> [r.key for r in HPARAMS][:2]
    ['{arch}.block_count', '{arch}.context_length']
    >>> [s.name for s in decoder_tensors(qk_norm=True)][-2:]
    ['blk.{bid}.attn_q_norm.weight', 'blk.{bid}.attn_k_norm.weight']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gguf

from l1quant.arch import HParam, TensorSpec, Transform

if TYPE_CHECKING:  # a description is data about a config; parsing a config reads the descriptions
    from l1quant.source.config import ModelConfig

K = gguf.Keys
T = gguf.GGUFValueType


def rope_row(key: str, name: str, vtype: gguf.GGUFValueType, kinds: tuple[str, ...]) -> HParam:
    """A rope-scaling key: written only for the scaling types in ``kinds`` (the reference writes none for the
    others: llama3 scaling is a tensor, ``rope_freqs``)."""
    field = f"rope_scaling.{name}"

    def value(cfg: ModelConfig) -> Any:
        return cfg.param(field) if cfg.rope_type in kinds else None

    return HParam(key, vtype, field, value)


def _causal(cfg: ModelConfig) -> bool | None:
    return False if cfg.raw.get("is_causal") is False else None


#: Rows up to the RMS epsilon, in the reference's order.
HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.BLOCK_COUNT, T.UINT32, "num_hidden_layers", required=True),
    HParam(K.LLM.CONTEXT_LENGTH, T.UINT32, "max_position_embeddings", required=True),
    HParam(K.LLM.EMBEDDING_LENGTH, T.UINT32, "hidden_size", required=True),
    HParam(K.LLM.FEED_FORWARD_LENGTH, T.UINT32, "intermediate_size", required=True),
    HParam(K.Attention.HEAD_COUNT, T.UINT32, "num_attention_heads", required=True),
    # llama.cpp's loader takes head_count when head_count_kv is absent
    HParam(K.Attention.HEAD_COUNT_KV, T.UINT32, "num_key_value_heads", required=True,
           default=lambda d: d.get("num_attention_heads")),
    HParam(K.Attention.CAUSAL, T.BOOL, "is_causal", _causal),
    rope_row(K.Rope.SCALING_TYPE, "rope_type", T.STRING, ("linear", "yarn")),
    rope_row(K.Rope.SCALING_FACTOR, "factor", T.FLOAT32, ("linear", "yarn")),
    rope_row(K.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings", T.UINT32, ("yarn",)),
    rope_row(K.Rope.SCALING_YARN_EXT_FACTOR, "extrapolation_factor", T.FLOAT32, ("yarn",)),
    rope_row(K.Rope.SCALING_YARN_ATTN_FACTOR, "attention_factor|attn_factor", T.FLOAT32, ("yarn",)),
    rope_row(K.Rope.SCALING_YARN_BETA_FAST, "beta_fast", T.FLOAT32, ("yarn",)),
    rope_row(K.Rope.SCALING_YARN_BETA_SLOW, "beta_slow", T.FLOAT32, ("yarn",)),
    HParam(K.Rope.FREQ_BASE, T.FLOAT32, "rope_theta", required=True, default=lambda d: 10000.0),
    HParam(K.Attention.LAYERNORM_RMS_EPS, T.FLOAT32, "rms_norm_eps", required=True),
)


def head_dim_rows(head_dim: Callable[[ModelConfig], int | None]) -> tuple[HParam, ...]:
    """``key_length`` (read back as ``head_dim``) and ``value_length`` (derived: must equal it), both written as
    ``head_dim(cfg)`` (None: omitted)."""
    return (HParam(K.Attention.KEY_LENGTH, T.UINT32, "head_dim", head_dim),
            HParam(K.Attention.VALUE_LENGTH, T.UINT32, None, head_dim))


def untied(cfg: ModelConfig) -> bool:
    """``output.weight`` exists only without tied embeddings (llama.cpp then reuses ``token_embd``)."""
    return not cfg.tie_word_embeddings


def decoder_tensors(*, qkv_bias: bool = False, qk_norm: bool = False, q_transform: Transform | None = None,
                    k_transform: Transform | None = None) -> tuple[TensorSpec, ...]:
    """The decoder's tensors: embeddings, final norm, untied output, and per layer attention + SwiGLU MLP.

    ``qkv_bias`` adds q/k/v biases (qwen2), ``qk_norm`` per-head RMS norms of q and k (qwen3); the transforms
    apply to the q and k projection weights (llama).
    """
    def b(name: str, *shape: str, transform: Transform | None = None) -> TensorSpec:
        return TensorSpec(f"blk.{{bid}}.{name}", shape, transform=transform)

    layer = [b("attn_norm.weight", "e"), b("attn_q.weight", "q", "e", transform=q_transform)]
    if qkv_bias:
        layer.append(b("attn_q.bias", "q"))
    layer.append(b("attn_k.weight", "kv", "e", transform=k_transform))
    if qkv_bias:
        layer.append(b("attn_k.bias", "kv"))
    layer.append(b("attn_v.weight", "kv", "e"))
    if qkv_bias:
        layer.append(b("attn_v.bias", "kv"))
    layer += [b("attn_output.weight", "e", "q"), b("ffn_norm.weight", "e"), b("ffn_gate.weight", "ff", "e"),
              b("ffn_up.weight", "ff", "e"), b("ffn_down.weight", "e", "ff")]
    if qk_norm:
        layer += [b("attn_q_norm.weight", "hd"), b("attn_k_norm.weight", "hd")]
    return (TensorSpec("token_embd.weight", ("v", "e")), TensorSpec("output_norm.weight", ("e",)),
            TensorSpec("output.weight", ("v", "e"), when=untied), *layer)

"""The qwen2 table (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, L1-Qwen).

Key order and value types follow llama.cpp's converter for ``Qwen2ForCausalLM`` (TextModel.set_gguf_parameters):
block count, context length, embedding length, feed-forward length, head counts, rope scaling (when configured),
rope base, RMS epsilon, key/value length (only when config.json has ``head_dim``).
"""

from __future__ import annotations

from typing import Any

import gguf

from l1quant.arch import Arch, KeyRow
from l1quant.source.config import ModelConfig

K = gguf.Keys
T = gguf.GGUFValueType


def _rope(cfg: ModelConfig, param: str, *alts: str) -> Any:
    s = cfg.rope_scaling
    if s is None:
        return None
    for p in (param, *alts):
        if p in s:
            return s[p]
    return None


def _rope_if(kind: str, param: str, *alts: str) -> Any:
    def get(cfg: ModelConfig) -> Any:
        s = cfg.rope_scaling
        return _rope(cfg, param, *alts) if s and s.get("rope_type") in kind.split("|") else None
    return get


HPARAMS: tuple[KeyRow, ...] = (
    (K.LLM.BLOCK_COUNT, lambda c: c.num_hidden_layers, T.UINT32),
    (K.LLM.CONTEXT_LENGTH, lambda c: c.max_position_embeddings, T.UINT32),
    (K.LLM.EMBEDDING_LENGTH, lambda c: c.hidden_size, T.UINT32),
    (K.LLM.FEED_FORWARD_LENGTH, lambda c: c.intermediate_size, T.UINT32),
    (K.Attention.HEAD_COUNT, lambda c: c.num_attention_heads, T.UINT32),
    (K.Attention.HEAD_COUNT_KV, lambda c: c.num_key_value_heads, T.UINT32),
    (K.Attention.CAUSAL, lambda c: False if c.raw.get("is_causal") is False else None, T.BOOL),
    (K.Rope.SCALING_TYPE, lambda c: c.rope_scaling["rope_type"] if c.rope_scaling else None, T.STRING),
    (K.Rope.SCALING_FACTOR, _rope_if("linear|yarn", "factor"), T.FLOAT32),
    (K.Rope.SCALING_ORIG_CTX_LEN, _rope_if("yarn", "original_max_position_embeddings"), T.UINT32),
    (K.Rope.SCALING_YARN_EXT_FACTOR, _rope_if("yarn", "extrapolation_factor"), T.FLOAT32),
    (K.Rope.SCALING_YARN_ATTN_FACTOR, _rope_if("yarn", "attention_factor", "attn_factor"), T.FLOAT32),
    (K.Rope.SCALING_YARN_BETA_FAST, _rope_if("yarn", "beta_fast"), T.FLOAT32),
    (K.Rope.SCALING_YARN_BETA_SLOW, _rope_if("yarn", "beta_slow"), T.FLOAT32),
    (K.Rope.FREQ_BASE, lambda c: c.rope_theta, T.FLOAT32),
    (K.Attention.LAYERNORM_RMS_EPS, lambda c: c.rms_norm_eps, T.FLOAT32),
    (K.Attention.KEY_LENGTH, lambda c: c.head_dim_override, T.UINT32),
    (K.Attention.VALUE_LENGTH, lambda c: c.head_dim_override, T.UINT32),
)


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GGUF name -> source (HF row-major) shape of every tensor a complete qwen2 checkpoint has."""
    e, v, ff, hd = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e), "output_norm.weight": (e,)}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = (v, e)
    for i in range(cfg.num_hidden_layers):
        b = f"blk.{i}."
        out.update({
            b + "attn_norm.weight": (e,),
            b + "attn_q.weight": (q, e), b + "attn_q.bias": (q,),
            b + "attn_k.weight": (kv, e), b + "attn_k.bias": (kv,),
            b + "attn_v.weight": (kv, e), b + "attn_v.bias": (kv,),
            b + "attn_output.weight": (e, q),
            b + "ffn_norm.weight": (e,),
            b + "ffn_gate.weight": (ff, e), b + "ffn_up.weight": (ff, e), b + "ffn_down.weight": (e, ff),
        })
    return out


ARCH = Arch(
    name="qwen2",
    model_arch=gguf.MODEL_ARCH.QWEN2,
    hf_architectures=("Qwen2ForCausalLM",),
    hparam_rows=HPARAMS,
    expected_tensors=expected_tensors,
)

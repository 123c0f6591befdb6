"""Synthetic checkpoints of any described architecture for tests, examples and benchmarks (deterministic random
weights, real tokenizers).

The tensors come from the architecture's description (:mod:`l1quant.arch`): its tensor table in GGUF names, named
back the way Hugging Face's decoder checkpoints name them (:data:`HF_MODULES`). The safetensors files are written
directly (JSON header + raw little-endian data), tensor by tensor, so an L1-shaped 3.55 GB checkpoint is built
with flat memory and without torch.

Example:
    >>> make_checkpoint("tiny", tokenizer_dir="tests/data/r1-distill-tokenizer")                  # doctest: +SKIP
    PosixPath('tiny')
    >>> make_checkpoint("l1-shaped", tokenizer_dir=tok, **L1_SHAPE)                               # doctest: +SKIP
    >>> make_checkpoint("tiny-llama", tokenizer_dir=tok, arch="llama", vocab=128256)              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from l1quant.arch import Arch, get_arch
from l1quant.source.config import ModelConfig

#: L1-Qwen-1.5B's exact shapes (1.78 B parameters, untied).
L1_SHAPE: dict[str, Any] = dict(hidden=1536, layers=28, heads=12, kv_heads=2, ff=8960, vocab=151936, tied=False,
                                max_pos=131072)
#: DeepSeek-R1-Distill-Qwen-1.5B generation_config.json values (what L1 ships).
R1_GENERATION_CONFIG: dict[str, Any] = {"_from_model_config": True, "bos_token_id": 151646,
                                        "eos_token_id": 151643, "do_sample": True, "temperature": 0.6,
                                        "top_p": 0.95}

_ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32"}

#: GGUF tensor kind -> the Hugging Face module that holds it in a decoder checkpoint (``model.layers.{i}.`` is
#: prepended to per-layer ones). Only for building test checkpoints: conversion maps names with gguf's own map.
HF_MODULES: dict[str, str] = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """The Hugging Face name of a GGUF tensor in a decoder checkpoint.

    Example:
        >>> hf_name("blk.3.attn_q_norm.weight"), hf_name("output.weight")
        ('model.layers.3.self_attn.q_norm.weight', 'lm_head.weight')
    """
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{HF_MODULES[parts[2]]}.{parts[3]}"
    return f"{HF_MODULES[parts[0]]}.{parts[1]}"


def hf_tensor_shapes(arch: Arch, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF names -> shapes of every checkpoint tensor ``cfg`` implies for ``arch`` (generated tensors excluded).

    Order: global tensors, then per layer the two block norms first, then the rest in the table's order.

    Example:
        >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
        ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        ...     "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True})
        >>> hf_tensor_shapes(get_arch("qwen2"), cfg)["model.layers.0.self_attn.k_proj.weight"]
        (32, 64)
    """
    expected = arch.expected_tensors(cfg, generated=False)
    first = (".attn_norm.weight", ".ffn_norm.weight")
    order = sorted(expected, key=lambda n: (n.startswith("blk."), int(n.split(".")[1]) if n.startswith("blk.")
                                            else 0, not n.endswith(first)))
    return {hf_name(n): expected[n] for n in order}


def _random_rows(rng: np.random.Generator, name: str, shape: tuple[int, ...], dtype: str,
                 rows_per_chunk: int) -> Iterator[bytes]:
    """Deterministic random values in the source dtype, yielded in row chunks (flat memory)."""
    n_rows = shape[0] if len(shape) > 1 else 1
    n_cols = shape[-1]
    norm = name.endswith("norm.weight")
    scale = np.float32(0.02 if not name.endswith(".bias") else 0.1)
    for r in range(0, n_rows, rows_per_chunk):
        rows = min(rows_per_chunk, n_rows - r)
        x = rng.standard_normal((rows, n_cols), dtype=np.float32)
        x *= scale
        if norm:
            x += np.float32(1.0)
        if dtype == "bf16":
            u = x.view(np.uint32)
            # round to nearest even into bf16 bits (finite inputs only, which these are)
            u += np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
            yield (u >> np.uint32(16)).astype("<u2").tobytes()
        elif dtype == "f16":
            yield x.astype("<f2").tobytes()
        else:
            yield x.astype("<f4").tobytes()


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], str]], chunks: Any,
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file: ``tensors`` maps name -> (shape, dtype key), ``chunks(name)`` yields its bytes.

    Tensors are laid out in the given order.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for name, (shape, dt) in tensors.items():
        n = int(np.prod(shape)) * {"bf16": 2, "f16": 2, "f32": 4}[dt]
        header[name] = {"dtype": _ST_DTYPE[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in tensors:
            f.writelines(chunks(name))


def make_checkpoint(
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_dir: str | os.PathLike[str],
    arch: str = "qwen2",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    ff: int = 128,
    vocab: int = 151936,
    head_dim: int | None = None,
    tied: bool = False,
    max_pos: int = 131072,
    rope_theta: float = 10000.0,
    dtype: str = "bf16",
    shards: int = 1,
    style: str = "t4",
    rope_scaling: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = R1_GENERATION_CONFIG,
    name_or_path: str | None = None,
    extra_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Build a checkpoint folder of architecture ``arch`` (a name :func:`l1quant.arch.get_arch` knows) with
    random weights and the tokenizer files from ``tokenizer_dir``.

    ``head_dim`` is written to config.json when given (otherwise the architecture's config default applies, e.g.
    128 for qwen3). ``style`` is ``t4`` (transformers 4: rope_theta/rope_scaling/torch_dtype) or ``t5``
    (rope_parameters/dtype). ``shards`` > 1 writes ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``. ``extra_config`` entries are merged into config.json last (e.g. token ids
    for a small test tokenizer).

    Example:
        >>> make_checkpoint(tmp / "m", tokenizer_dir=tok, shards=2, style="t5")  # doctest: +SKIP
    """
    a = get_arch(arch)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    tok = Path(tokenizer_dir)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tok / f).is_file():
            shutil.copyfile(tok / f, d / f)
    torch_dtype = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    cfg: dict[str, Any] = {
        "architectures": [a.hf_architectures[0]], "model_type": a.hf_model_type or a.name,
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": ff,
        "max_position_embeddings": max_pos, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-06,
        "tie_word_embeddings": tied, "use_cache": True, "vocab_size": vocab,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    if name_or_path is not None:
        cfg["_name_or_path"] = name_or_path
    cfg.update(extra_config or {})
    if style == "t4":
        cfg.update({"rope_theta": rope_theta, "rope_scaling": rope_scaling, "torch_dtype": torch_dtype,
                    "transformers_version": "4.44.0"})
    elif style == "t5":
        rp: dict[str, Any] = {"rope_theta": rope_theta, "rope_type": "default"}
        if rope_scaling:
            rp = {"rope_theta": rope_theta,
                  **{("rope_type" if k == "type" else k): v for k, v in rope_scaling.items()}}
        cfg.update({"rope_parameters": rp, "dtype": torch_dtype, "transformers_version": "5.0.0"})
    else:
        raise ValueError(f"style must be t4 or t5, not {style!r}")
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    if generation_config is not None:
        (d / "generation_config.json").write_text(json.dumps(generation_config, indent=2))

    shapes = hf_tensor_shapes(a, ModelConfig.from_dict(cfg, str(d / "config.json")))
    names = list(shapes)
    rng = np.random.default_rng(seed)
    per = -(-len(names) // shards)
    groups = [names[i:i + per] for i in range(0, len(names), per)]
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        spec = {n: (shapes[n], dtype) for n in group}

        def chunks(n: str) -> Iterator[bytes]:
            rows = max(1, (8 << 20) // (shapes[n][-1] * 4))
            return _random_rows(rng, n, shapes[n], dtype, rows)

        write_safetensors(d / fname, spec, chunks, {"format": "pt"})
        for n in group:
            weight_map[n] = fname
            total += int(np.prod(shapes[n])) * {"bf16": 2, "f16": 2, "f32": 4}[dtype]
    if shards > 1:
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return d

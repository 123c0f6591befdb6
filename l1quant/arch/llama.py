"""llama: Llama 3 and DeepSeek-R1-Distill-Llama (``LlamaForCausalLM``) with a BPE tokenizer.json (a SentencePiece
``tokenizer.model``, as Llama 2 ships, is refused: the reference converts that vocabulary instead).

The shared decoder without biases, with two llama-specific parts:

* **Q/K rows permuted** for llama.cpp's rope layout (:class:`~l1quant.arch.RopeRowPermutation`): Hugging Face
  rotates the halves of each head, llama.cpp's llama graph adjacent pairs. A pure row reordering, so it streams.
* **rope_freqs** -- for llama-3 rope scaling (``rope_type: llama3``) the converter writes no scaling keys but a
  ``rope_freqs.weight`` tensor of per-frequency divisors (:func:`llama3_rope_factors`), first in the file.

Keys: the shared rows, ``key_length``/``value_length`` always (transformers' ``LlamaConfig`` always has a
``head_dim``), then after ``general.file_type`` the vocabulary size and the rope dimension count (the reference's
llama class adds them after its base class). tokenizer_config's ``add_prefix_space``, when present, is written
as ``tokenizer.ggml.add_space_prefix``.

Example:
    >>> from l1quant.source.config import ModelConfig
    >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
    ...     "vocab_size": 10})
    >>> ARCH.features.rope_style, ARCH.kv_rows(cfg, after_file_type=True)[1][:2]
    ('norm', ('llama.rope.dimension_count', 16))
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np

from l1quant.arch import Arch, HParam, RopeRowPermutation, TensorSpec
from l1quant.arch.decoder import HPARAMS, decoder_tensors, head_dim_rows
from l1quant.errors import ConfigError, TokenizerError, clip, read_json

if TYPE_CHECKING:  # a description is data about a config; parsing a config reads the descriptions
    from l1quant.source.config import ModelConfig

K = gguf.Keys
T = gguf.GGUFValueType
F32 = np.float32


def _libm_powf() -> Callable[[float, float], float] | None:
    """C's ``powf`` from the libm already loaded into the process, or None where it cannot be found."""
    try:
        fn = ctypes.CDLL(None).powf
    except (OSError, AttributeError):  # pragma: no cover - no dlopen(NULL) or no powf symbol
        return None
    fn.argtypes = [ctypes.c_float, ctypes.c_float]
    fn.restype = ctypes.c_float
    return fn


_POWF = _libm_powf()


def _pow_f32(base: float, exps: np.ndarray) -> np.ndarray:
    """float32 ``base ** exps`` as torch computes it for short vectors (C's ``powf`` per element).

    torch uses SIMD (Sleef) ``pow`` on whole runs of 2 x vector width and ``powf`` on the rest; for the head
    sizes of tiny test models everything is ``powf``. Measured on this machine (AVX-512, 64-value runs): Sleef and
    ``powf`` disagree by 1 ulp on 1.8 % of random inputs, and on none of R1-Distill-Llama-8B's 64 factors.
    Without a libm ``powf``, float64 rounded once (correctly rounded, as ``powf`` nearly always is).
    """
    if _POWF is None:  # pragma: no cover - every Linux/macOS libc has powf
        result: np.ndarray = (np.float64(F32(base)) ** exps.astype(np.float64)).astype(F32)
        return result
    return np.array([_POWF(float(F32(base)), float(e)) for e in exps], dtype=F32)


def llama3_rope_factors(cfg: ModelConfig) -> np.ndarray:
    """The ``rope_freqs`` divisors of llama-3 rope scaling: one per rotary pair (head_dim / 2, float32).

    A frequency whose wavelength is shorter than ``original_max_position_embeddings / high_freq_factor`` keeps
    divisor 1, one longer than ``... / low_freq_factor`` gets ``factor``, and those between are blended smoothly.
    Computed in float32 step by step as the reference converter's torch code is (LlamaModel's
    ``generate_extra_tensors``), including torch's ``a / t`` being ``reciprocal(t) * a``, so the bytes match.

    Example:
        >>> from l1quant.source.config import ModelConfig
        >>> cfg = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        ...     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        ...     "num_key_value_heads": 2, "vocab_size": 10, "rope_theta": 10000.0, "rope_scaling": {
        ...     "rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64}})
        >>> [round(float(f), 3) for f in llama3_rope_factors(cfg)]
        [1.0, 1.294, 7.667, 8.0, 8.0, 8.0, 8.0, 8.0]
    """
    rp = cfg.rope_params
    base = rp.get("rope_theta", 10000.0)
    dim = cfg.head_dim
    factor = rp.get("factor", 8.0)
    low = rp.get("low_freq_factor", 1.0)
    high = rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    freqs = F32(1.0) / _pow_f32(base, np.arange(0, dim, 2, dtype=F32) / F32(dim))
    wavelen = (F32(1.0) / freqs) * F32(2 * math.pi)
    # the wavelength bounds are Python floats compared with float32 values: torch compares in float32
    short = wavelen < F32(old / high)
    long_ = wavelen > F32(old / low)
    with np.errstate(divide="ignore", invalid="ignore"):  # the blend is computed everywhere, kept only between
        smooth = ((F32(1.0) / wavelen) * F32(old) - F32(low)) / F32(high - low)
        blend = F32(1.0) / ((F32(1.0) - smooth) / F32(factor) + smooth)
    result: np.ndarray = np.where(short, F32(1.0), np.where(long_, F32(factor), blend)).astype(F32)
    return result


def _llama3(cfg: ModelConfig) -> bool:
    return cfg.rope_type == "llama3"


def _check(cfg: ModelConfig) -> None:
    for key in ("attention_bias", "mlp_bias"):
        if cfg.raw.get(key):
            raise ConfigError(f"{cfg.source}: {key}=true is not supported for llama (no such tensors in "
                              "llama.cpp's llama graph)")


#: config.json vocab_size values the reference's LlamaModel.set_vocab treats specially: CodeLlama's four infill
#: token ids (prefix/suffix/middle/eot), granite-small's add_bos_token = false
_SPECIAL_VOCAB_SIZES = {32016: "adds CodeLlama's infill token ids", 49152: "forces add_bos_token false (granite)"}


def _check_folder(model_dir: Path, cfg: ModelConfig) -> None:
    """Refuse what the reference's LlamaModel reads beyond the shared decoder: vocabulary-size special cases,
    EAGLE-3 drafts (``draft_vocab_size``), Eagle3Speculator's nested ``transformer_layer_config``, a Mistral
    ``tekken.json`` and the HybridDNA tokenizer."""
    why = _SPECIAL_VOCAB_SIZES.get(cfg.vocab_size)
    if why:
        raise ConfigError(f"{cfg.source}: vocab_size={cfg.vocab_size} is not supported (the reference {why})")
    for key in ("draft_vocab_size", "transformer_layer_config"):
        if key in cfg.raw:
            raise ConfigError(f"{cfg.source}: {key!r} is not supported (an EAGLE-3 draft model for the reference)")
    if (model_dir / "tekken.json").exists():
        raise TokenizerError(f"{model_dir / 'tekken.json'}: not supported (a Mistral tokenizer, which the "
                             "reference converts when tokenizer.json is absent)")
    tc_path = model_dir / "tokenizer_config.json"
    tc = read_json(tc_path, TokenizerError) if tc_path.exists() else None
    if isinstance(tc, dict) and tc.get("tokenizer_class") == "HybridDNATokenizer":
        raise TokenizerError(f"{tc_path}: tokenizer_class {clip(tc['tokenizer_class'])} is not supported")


ARCH = Arch(
    name="llama",
    model_arch=gguf.MODEL_ARCH.LLAMA,
    hf_architectures=("LlamaForCausalLM",),
    hparams=HPARAMS + head_dim_rows(lambda c: c.head_dim),
    hparams_after_file_type=(
        HParam(K.LLM.VOCAB_SIZE, T.UINT32, "vocab_size"),
        HParam(K.Rope.DIMENSION_COUNT, T.UINT32, None, lambda c: c.head_dim),
    ),
    tensors=(TensorSpec("rope_freqs.weight", ("rot",), when=_llama3, generate=llama3_rope_factors,
                        file_optional=True),
             *decoder_tensors(q_transform=RopeRowPermutation("heads"), k_transform=RopeRowPermutation("kv_heads"))),
    # transformers' LlamaConfig defaults
    config_defaults={"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                     "tie_word_embeddings": False},
    rope_types=("linear", "yarn", "llama3"),
    check_config=_check,
    check_folder=_check_folder,
    add_space_prefix=True,
    rope_style="norm",
    # llama.cpp sizes an 80-layer llama with grouped-query attention as 70B
    llama_quantize_70b=lambda n_layer, n_head, n_head_kv: n_layer == 80 and n_head != n_head_kv,
    hf_model_type="llama",
)


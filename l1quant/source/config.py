"""Typed, validated model configuration read from ``config.json`` (transformers 4 and 5 styles).

transformers 4 writes ``rope_theta`` / ``rope_scaling`` / ``torch_dtype``; transformers 5 writes
``rope_parameters`` / ``dtype``. Both normalise to the same :class:`ModelConfig`. Unknown keys are kept in
``raw`` and otherwise ignored; the keys a conversion needs are checked for presence, type and consistency
before anything is written. A key config.json omits takes the default of the architecture's transformers config
class (its description, :attr:`l1quant.arch.Arch.config_defaults`), as it does for the reference converter,
which reads config.json through ``AutoConfig``.

Example:
    >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
    ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "vocab_size": 1000, "rope_theta": 10000.0})
    >>> cfg.head_dim, cfg.rope_theta, cfg.rope_scaling
    (16, 10000.0, None)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from l1quant.arch import get_arch
from l1quant.errors import ConfigError, clip, read_text

# Defaults for keys an architecture description does not default itself (transformers' PretrainedConfig and
# the common decoder configs agree on these).
_DEFAULTS: dict[str, Any] = {
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
_REQUIRED_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size")
#: GGUF stores these as uint32 and llama.cpp reads them into int32: anything larger is corrupt, not a model.
MAX_INT = 2**31 - 1
#: Largest finite float32: rope/eps values are written as GGUF FLOAT32.
MAX_F32 = 3.4028234663852886e38
#: Optional numeric rope parameters written as FLOAT32 when present.
_ROPE_FLOATS = ("factor", "extrapolation_factor", "attention_factor", "attn_factor", "beta_fast", "beta_slow")
#: Rope scaling types a config may name (an architecture supports a subset: :attr:`l1quant.arch.Arch.rope_types`).
ROPE_TYPES = ("linear", "yarn", "llama3")
#: llama-3 rope parameters (numbers), with the defaults llama.cpp's converter uses when one is absent.
_LLAMA3_DEFAULTS = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> TypeGuard[float]:
    """A finite number that float32 can hold (GGUF writes these as FLOAT32)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_F32


@dataclass(frozen=True)
class ModelConfig:
    """The hyperparameters a dense decoder conversion needs, validated.

    ``rope_scaling`` is the normalised scaling dict (``rope_type`` plus its parameters) or None for plain RoPE;
    ``rope_params`` is the full rope dict as the reference sees it (theta and type included).
    """

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_params: dict[str, Any]
    tie_word_embeddings: bool
    head_dim_override: int | None
    dtype: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    source: str = "config.json"

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        t = self.rope_params.get("rope_type")
        return None if t in (None, "default") else dict(self.rope_params)

    @property
    def rope_type(self) -> str | None:
        """The rope scaling type (``linear``, ``yarn``, ``llama3``) or None for plain RoPE."""
        t = self.rope_params.get("rope_type")
        return None if t in (None, "default") else str(t)

    def param(self, name: str) -> Any:
        """A config field by the name an architecture's key table uses: a ModelConfig field
        (``num_hidden_layers``), ``head_dim`` (only when config.json gives one), ``rope_scaling.X`` (a rope
        scaling parameter, None without scaling; ``X|Y`` tries each spelling), or any other config.json key.

        Example:
            >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 1000,
            ...     "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
            ...                      "attn_factor": 0.5}})
            >>> cfg.param("num_hidden_layers"), cfg.param("rope_scaling.attention_factor|attn_factor")
            (2, 0.5)
        """
        if name.startswith("rope_scaling."):
            s = self.rope_scaling
            if s is None:
                return None
            return next((s[n] for n in name.removeprefix("rope_scaling.").split("|") if n in s), None)
        if name == "head_dim":
            return self.head_dim_override
        if name in self.__dataclass_fields__ and name not in ("raw", "source"):
            return getattr(self, name)
        return self.raw.get(name)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json", *,
                  arch_defaults: bool = True) -> ModelConfig:
        """Build and validate from a parsed config dict.

        Keys the dict omits take the architecture's config defaults (``arch_defaults``; an unknown architecture
        is refused here) or, with ``arch_defaults=False`` (a config read back from a GGUF), generic ones.

        Example:
            >>> ModelConfig.from_dict({"architectures": ["Qwen2ForCausalLM"]})
            Traceback (most recent call last):
            ...
            l1quant.errors.ConfigError: config.json: missing required key 'hidden_size'
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: not a JSON object")
        if "text_config" in d and isinstance(d["text_config"], dict):
            d = {**d, **d["text_config"]}  # multimodal wrappers keep the LM config nested, as the reference flattens
        arches = d.get("architectures")
        if not isinstance(arches, list) or not arches or not isinstance(arches[0], str):
            raise ConfigError(f"{source}: missing 'architectures' (expected e.g. [\"Qwen2ForCausalLM\"])")
        defaults = dict(_DEFAULTS)
        if arch_defaults:
            try:
                defaults.update(get_arch(arches[0]).config_defaults)
            except ConfigError as e:
                raise ConfigError(str(e).replace("config.json:", f"{source}:", 1)) from None
        for k in _REQUIRED_INTS:
            if k not in d:
                raise ConfigError(f"{source}: missing required key {k!r}")
            if not _is_int(d[k]):
                raise ConfigError(f"{source}: {k} must be an integer, found {clip(d[k])}")
            if not 0 < d[k] <= MAX_INT:
                raise ConfigError(f"{source}: {k} must be a positive integer up to {MAX_INT}, found {clip(d[k], 40)}")
        vals = {k: d.get(k, defaults[k]) for k in _DEFAULTS}
        mpe = vals["max_position_embeddings"]
        if not _is_int(mpe) or not 0 < mpe <= MAX_INT:
            raise ConfigError(f"{source}: max_position_embeddings must be a positive integer up to {MAX_INT}, "
                              f"found {clip(mpe, 40)}")
        if not _is_num(vals["rms_norm_eps"]) or not 0 < vals["rms_norm_eps"] < 1:
            raise ConfigError(f"{source}: rms_norm_eps must be a number in (0, 1), found {clip(vals['rms_norm_eps'])}")
        if not isinstance(vals["tie_word_embeddings"], bool):
            raise ConfigError(
                f"{source}: tie_word_embeddings must be true/false, found {clip(vals['tie_word_embeddings'])}")

        # Rope: transformers 5 puts everything in rope_parameters; transformers 4 has rope_theta + rope_scaling.
        rp_src = d.get("rope_parameters", d.get("rope_scaling"))
        if rp_src is not None and not isinstance(rp_src, dict):
            raise ConfigError(f"{source}: rope_parameters/rope_scaling must be an object, found {clip(rp_src)}")
        rope_params: dict[str, Any] = dict(rp_src or {})
        if "rope_type" not in rope_params and "type" in rope_params:
            rope_params["rope_type"] = rope_params["type"]
        theta = rope_params.get("rope_theta", d.get("rope_theta", defaults["rope_theta"]))
        if not _is_num(theta) or theta <= 0:
            raise ConfigError(f"{source}: rope_theta must be a positive float32 number, found {clip(theta)}")
        rope_params.setdefault("rope_theta", theta)
        rtype = rope_params.get("rope_type")
        if rtype in ("linear", "yarn"):
            factor = rope_params.get("factor")
            if not _is_num(factor) or factor <= 0:
                raise ConfigError(
                    f"{source}: rope scaling {rtype!r} needs a positive 'factor', found {clip(factor)}")
            if rtype == "yarn":
                omp = rope_params.get("original_max_position_embeddings",
                                      d.get("original_max_position_embeddings"))
                if not _is_int(omp) or not 0 < omp <= MAX_INT:
                    raise ConfigError(f"{source}: yarn rope scaling needs original_max_position_embeddings "
                                      f"(a positive integer), found {clip(omp)}")
                rope_params.setdefault("original_max_position_embeddings", omp)
            for k in _ROPE_FLOATS:
                if rope_params.get(k) is not None and not _is_num(rope_params[k]):
                    raise ConfigError(f"{source}: rope scaling {k} must be a number, found {clip(rope_params[k])}")
        elif rtype == "llama3":
            if "original_max_position_embeddings" not in rope_params and "original_max_position_embeddings" in d:
                rope_params["original_max_position_embeddings"] = d["original_max_position_embeddings"]
            for k, default in _LLAMA3_DEFAULTS.items():
                v = rope_params.get(k, default)
                if not _is_num(v) or v <= 0:
                    raise ConfigError(f"{source}: llama3 rope scaling {k} must be a positive number, found {clip(v)}")
            lo, hi = (rope_params.get(k, _LLAMA3_DEFAULTS[k]) for k in ("low_freq_factor", "high_freq_factor"))
            if hi <= lo:
                raise ConfigError(f"{source}: llama3 rope scaling needs high_freq_factor > low_freq_factor, found "
                                  f"{clip(hi)} <= {clip(lo)}")
        elif rtype not in (None, "default"):
            raise ConfigError(f"{source}: unsupported rope scaling type {clip(rtype)} "
                              f"(supported: {', '.join(ROPE_TYPES)})")

        hd = d.get("head_dim", defaults.get("head_dim"))
        if hd is not None and (not _is_int(hd) or not 0 < hd <= MAX_INT):
            raise ConfigError(f"{source}: head_dim must be a positive integer, found {clip(hd)}")
        n_embd, n_head, n_kv = d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"]
        if hd is None and n_embd % n_head:
            raise ConfigError(f"{source}: num_attention_heads={n_head} does not divide hidden_size={n_embd}")
        if n_head % n_kv:
            raise ConfigError(f"{source}: num_key_value_heads={n_kv} does not divide num_attention_heads={n_head}")
        head_dim = hd or n_embd // n_head
        if head_dim % 2:
            raise ConfigError(f"{source}: head dimension {head_dim} must be even for RoPE")
        dtype = d.get("dtype", d.get("torch_dtype"))
        return cls(
            architecture=arches[0],
            hidden_size=n_embd,
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=n_head,
            num_key_value_heads=n_kv,
            vocab_size=d["vocab_size"],
            max_position_embeddings=vals["max_position_embeddings"],
            rms_norm_eps=float(vals["rms_norm_eps"]),
            rope_theta=float(theta),
            rope_params=rope_params,
            tie_word_embeddings=vals["tie_word_embeddings"],
            head_dim_override=hd,
            dtype=dtype if isinstance(dtype, str) else None,
            raw=d,
            source=source,
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelConfig:
        """Read ``MODEL_DIR/config.json``.

        Example:
            >>> ModelConfig.load("L1-Qwen-1.5B-Max").hidden_size  # doctest: +SKIP
            1536
        """
        path = Path(model_dir) / "config.json"
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"{path}: not found (is {model_dir} a Hugging Face model folder?)")
        # a config is a few KB; a FIFO, /dev/zero or a huge file is refused before it is read (errors.read_text)
        text = read_text(path, ConfigError, 16 << 20)
        try:
            d = json.loads(text)
        except ValueError as e:  # JSONDecodeError, or an integer with too many digits
            raise ConfigError(f"{path}: invalid JSON: {str(e)[:200]}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
        return cls.from_dict(d, source=str(path))

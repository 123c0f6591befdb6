"""Reference decoder forward pass in pure numpy: ``verify --logits``'s logits and ``compare``'s weights-only source.

The same function runs on the source checkpoint (bf16 weights upcast to float32, through the architecture's
transforms, so in the file's layout) and on the dequantized GGUF, so the two logit matrices differ only by what
quantization did. One function covers every described architecture (:mod:`l1quant.arch`); what differs is data in
:class:`Hparams`, built from a config by :meth:`Hparams.from_config`:

* qkv biases (qwen2), per-head RMS norms of q and k before rope (qwen3);
* the rope layout of the weights: ``neox`` rotates the two halves of each head (Hugging Face's layout, kept by
  qwen2/qwen3), ``norm`` rotates adjacent pairs (llama after the converter's Q/K row permutation);
* rope frequency divisors from a ``rope_freqs.weight`` tensor when there is one (llama-3 scaling);

and otherwise Hugging Face's decoder (RMSNorm, grouped-query causal attention, SwiGLU MLP, final norm, lm_head),
computed in float32 with float64 where it is cheap (norm statistics, rope angles, log-softmax in the metrics).

Weights are pulled through a callback, one layer at a time, so peak memory is about one layer's weights plus the
activations plus whichever of the embedding / lm_head matrix is in use (for the 1.5B L1 model: ~0.93 GB for the
151936 x 1536 embedding, ~0.2 GB per layer, ~0.16 GB of logits for 256 tokens).

Example:
    >>> import numpy as np
    >>> hp = Hparams(n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16, n_vocab=10,
    ...              rope_theta=10000.0, rms_eps=1e-6, qk_norm=True)
    >>> weights = random_weights(hp, seed=0)
    >>> logits = decoder_logits(weights.__getitem__, hp, [1, 2, 3])
    >>> logits.shape, logits.dtype
    ((3, 10), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from l1quant.errors import ConfigError, NotImplementedInputError, TensorError, VerifyError

if TYPE_CHECKING:
    from l1quant.arch import Arch
    from l1quant.source.config import ModelConfig

__all__ = [
    "Hparams",
    "check_supported",
    "decoder_logits",
    "default_text",
    "random_weights",
]

# RoPE scaling types that change nothing (HF "default", GGUF "none").
_NO_SCALING = (None, "", "none", "default")
# Query rows processed together in attention: bounds the score buffer to group * block * n_tokens floats.
_ATTN_QUERY_BLOCK = 512
_ROPE_STYLES = ("neox", "norm")


@dataclass(frozen=True)
class Hparams:
    """Shape, numeric hyperparameters and features of a decoder.

    ``head_dim`` defaults to ``n_embd // n_head``. ``rope_scaling_type`` is ``None``/``"none"``/``"default"`` (no
    scaling), ``"linear"`` (positions divided by ``rope_scaling_factor``, as HF and llama.cpp do) or ``"llama3"``
    (frequencies divided by the ``rope_freqs.weight`` tensor, which must then exist); ``"yarn"`` and other schemes
    are accepted here but :func:`decoder_logits` refuses them with ``NotImplementedError``. ``qkv_bias`` adds
    ``attn_{q,k,v}.bias``, ``qk_norm`` applies ``attn_{q,k}_norm.weight`` to each head before rope,
    ``rope_style`` is ``neox`` (rotate halves) or ``norm`` (rotate adjacent pairs).

    Example:
        >>> hp = Hparams(n_layer=28, n_embd=1536, n_head=12, n_head_kv=2, n_ff=8960, n_vocab=151936,
        ...              rope_theta=10000.0, rms_eps=1e-6, qkv_bias=True)
        >>> hp.d_head, hp.n_group
        (128, 6)
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    rope_theta: float
    rms_eps: float
    rope_scaling_type: str | None = None
    rope_scaling_factor: float = 1.0
    head_dim: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_style: str = "neox"

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_vocab"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ConfigError(f"Hparams: {key} must be a positive integer, found {value!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, (int, np.integer)) or self.head_dim <= 0):
            raise ConfigError(f"Hparams: head_dim must be a positive integer or None, found {self.head_dim!r}")
        if self.n_head % self.n_head_kv:
            raise ConfigError(f"Hparams: n_head={self.n_head} is not a multiple of n_head_kv={self.n_head_kv}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ConfigError(f"Hparams: n_head={self.n_head} does not divide n_embd={self.n_embd}")
        if self.d_head % 2:
            raise ConfigError(f"Hparams: head dimension must be even for RoPE, found {self.d_head}")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ConfigError(f"Hparams: rope_theta must be a positive finite number, found {self.rope_theta!r}")
        if not (math.isfinite(self.rms_eps) and self.rms_eps >= 0):
            raise ConfigError(f"Hparams: rms_eps must be a finite number >= 0, found {self.rms_eps!r}")
        if not (math.isfinite(self.rope_scaling_factor) and self.rope_scaling_factor > 0):
            raise ConfigError(
                f"Hparams: rope_scaling_factor must be a positive finite number, found {self.rope_scaling_factor!r}"
            )
        if self.rope_style not in _ROPE_STYLES:
            raise ConfigError(f"Hparams: rope_style must be one of {', '.join(_ROPE_STYLES)}, found {self.rope_style!r}")

    @property
    def d_head(self) -> int:
        """Per-head dimension: ``head_dim`` if set, else ``n_embd // n_head``."""
        return int(self.head_dim) if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def n_group(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.n_head // self.n_head_kv

    @classmethod
    def from_config(cls, cfg: ModelConfig, arch: Arch) -> Hparams:
        """From a validated config (read from config.json, or back from a GGUF by
        :func:`l1quant.arch.from_gguf.config_from_gguf`) and the architecture's forward-pass features.

        Example:
            >>> from l1quant.arch import get_arch
            >>> from l1quant.source.config import ModelConfig
            >>> cfg = ModelConfig.from_dict({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64,
            ...     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            ...     "num_key_value_heads": 2, "vocab_size": 300, "rope_scaling": {"type": "linear", "factor": 2.0}})
            >>> hp = Hparams.from_config(cfg, get_arch("qwen3"))
            >>> hp.d_head, hp.qk_norm, hp.qkv_bias, hp.rope_scaling_type, hp.rope_scaling_factor
            (128, True, False, 'linear', 2.0)
        """
        f = arch.features
        factor = cfg.param("rope_scaling.factor") if cfg.rope_type in ("linear", "yarn") else None
        return cls(
            n_layer=cfg.num_hidden_layers, n_embd=cfg.hidden_size, n_head=cfg.num_attention_heads,
            n_head_kv=cfg.num_key_value_heads, n_ff=cfg.intermediate_size, n_vocab=cfg.vocab_size,
            rope_theta=float(cfg.rope_theta), rms_eps=float(cfg.rms_norm_eps), rope_scaling_type=cfg.rope_type,
            rope_scaling_factor=float(factor) if factor is not None else 1.0, head_dim=cfg.head_dim,
            qkv_bias=f.qkv_bias, qk_norm=f.qk_norm, rope_style=f.rope_style,
        )


# --------------------------------------------------------------------------------------------------- forward pass


class _Absent(TensorError):
    """get_weight raised KeyError: the tensor is not in the checkpoint."""


def _fetch(get_weight: Callable[[str], np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """get_weight(name) as a float32 array of exactly ``shape``; TensorError if absent or misshapen."""
    try:
        raw = get_weight(name)
    except KeyError:
        raise _Absent(f"reference forward: tensor {name!r} is missing (expected shape {shape})") from None
    w = np.asarray(raw, dtype=np.float32)
    if w.shape != shape:
        raise TensorError(f"reference forward: tensor {name!r} has shape {w.shape}, expected {shape}")
    return w


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # Mean of squares in float64 (cheap: one row vector per token); the scaling itself stays float32 as in HF.
    var = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    inv = (1.0 / np.sqrt(var + eps)).astype(np.float32)
    result: np.ndarray = (x * inv) * w
    return result


def _silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), in place on x (a fresh matmul product). exp(-x) may overflow to inf: x / inf = -0, correct."""
    with np.errstate(over="ignore"):
        denom = np.exp(-x)
    denom += np.float32(1.0)
    x /= denom
    return x


def _rope_tables(hp: Hparams, n_tokens: int, freq_factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape (n_tokens, 1, d_head/2): angle of pair i at position p is p * scale * theta^(-2i/d) / f_i."""
    stype = hp.rope_scaling_type.lower() if isinstance(hp.rope_scaling_type, str) else hp.rope_scaling_type
    if stype in _NO_SCALING or stype == "llama3":
        scale = 1.0  # llama3 scales through freq_factors (rope_freqs.weight), not positions
    elif stype == "linear":
        scale = 1.0 / hp.rope_scaling_factor
    else:
        raise NotImplementedInputError(
            f"reference forward: rope scaling type {hp.rope_scaling_type!r} is not implemented "
            "(supported: none, linear, llama3); skip --logits for this model"
        )
    d = hp.d_head
    # float64 angles, cast once: as accurate as HF's float32 tables or better, never worse.
    inv_freq = 1.0 / (hp.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    angles = (np.arange(n_tokens, dtype=np.float64) * scale)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32)[:, None, :], np.sin(angles).astype(np.float32)[:, None, :]


def _apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str) -> np.ndarray:
    """x: (n_tokens, n_heads, d_head). ``neox`` pairs are (i, i + d/2); ``norm`` pairs are (2i, 2i + 1)."""
    if style == "norm":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
        return out
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate((x1 * cos - x2 * sin, x2 * cos + x1 * sin), axis=-1)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_group: int) -> np.ndarray:
    """Causal GQA attention. q: (T, H, D), k/v: (T, H_kv, D) -> (T, H, D)."""
    n_tokens, _, d = q.shape
    scale = np.float32(1.0 / math.sqrt(d))
    out = np.empty_like(q)
    for start in range(0, n_tokens, _ATTN_QUERY_BLOCK):
        stop = min(start + _ATTN_QUERY_BLOCK, n_tokens)
        # Queries start..stop-1 see keys 0..stop-1 only; the causal mask is added as -inf above the diagonal.
        mask = np.where(np.arange(stop)[None, :] > np.arange(start, stop)[:, None], -np.inf, 0.0).astype(np.float32)
        for kv in range(k.shape[1]):
            heads = slice(kv * n_group, (kv + 1) * n_group)  # HF repeat_kv: query head h reads kv head h // n_group
            q_g = q[start:stop, heads, :].transpose(1, 0, 2)  # (G, B, D)
            scores = q_g @ k[:stop, kv, :].T  # (G, B, stop)
            scores *= scale
            scores += mask
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            out[start:stop, heads, :] = (scores @ v[:stop, kv, :]).transpose(1, 0, 2)
    return out


def _freq_factors(get_weight: Callable[[str], np.ndarray], hp: Hparams) -> np.ndarray | None:
    """``rope_freqs.weight`` (d_head/2 divisors) if the model has one; required for llama3 scaling."""
    try:
        return _fetch(get_weight, "rope_freqs.weight", (hp.d_head // 2,))
    except _Absent:
        if hp.rope_scaling_type == "llama3":
            raise
        return None


def check_supported(hp: Hparams) -> None:
    """Raise :class:`~l1quant.errors.NotImplementedInputError` when :func:`decoder_logits` cannot run ``hp``
    (rope scaling other than none/linear/llama3), before any weight is read.

    Example:
        >>> check_supported(Hparams(n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16, n_vocab=10,
        ...                         rope_theta=1e4, rms_eps=1e-6, rope_scaling_type="linear"))
    """
    _rope_tables(hp, 1, None)


def decoder_logits(
    get_weight: Callable[[str], np.ndarray],
    hp: Hparams,
    tokens: Sequence[int],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Logits of the decoder ``hp`` describes for one sequence, as float32 of shape (len(tokens), n_vocab).

    ``get_weight(name)`` takes GGUF tensor names (``token_embd.weight``, ``blk.{i}.attn_q.weight``, ...,
    ``output_norm.weight``, ``output.weight``, ``rope_freqs.weight``) and returns the tensor in HF orientation (rows
    = output features) and in the GGUF's layout (llama's Q/K rows permuted: ``rope_style="norm"``); it must raise
    ``KeyError`` for an absent tensor: a missing ``output.weight`` means tied embeddings, a missing
    ``rope_freqs.weight`` no frequency factors. Weights are requested layer by layer and dropped after use, so a
    lazy ``get_weight`` keeps memory flat. ``progress(done, total)`` is called after each of the ``n_layer + 2``
    steps (embed, layers, head).

    Raises TensorError for a missing/misshapen tensor, VerifyError for empty or out-of-range tokens,
    NotImplementedError for rope scaling other than none/linear/llama3.

    Example:
        >>> hp = Hparams(n_layer=2, n_embd=16, n_head=4, n_head_kv=2, n_ff=32, n_vocab=50,
        ...              rope_theta=10000.0, rms_eps=1e-6, qkv_bias=True)
        >>> w = random_weights(hp, seed=1, tied=True)
        >>> "output.weight" in w
        False
        >>> decoder_logits(w.__getitem__, hp, [5, 7, 9, 11]).shape
        (4, 50)
    """
    toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if toks.size == 0:
        raise VerifyError("reference forward: the token sequence is empty")
    bad = np.flatnonzero((toks < 0) | (toks >= hp.n_vocab))
    if bad.size:
        i = int(bad[0])
        raise VerifyError(
            f"reference forward: token id {int(toks[i])} at position {i} is outside the vocabulary (n_vocab={hp.n_vocab})"
        )
    n_tokens = int(toks.size)
    total_steps = hp.n_layer + 2
    E, D, H, Hkv, F, V = hp.n_embd, hp.d_head, hp.n_head, hp.n_head_kv, hp.n_ff, hp.n_vocab
    _rope_tables(hp, 1, None)  # before any weight is read: unsupported scaling fails fast
    cos, sin = _rope_tables(hp, n_tokens, _freq_factors(get_weight, hp))

    emb = _fetch(get_weight, "token_embd.weight", (V, E))
    x = np.array(emb[toks], dtype=np.float32)  # own copy: the embedding matrix is released right away
    del emb
    if progress is not None:
        progress(1, total_steps)

    def proj(h: np.ndarray, name: str, rows: int) -> np.ndarray:
        y: np.ndarray = h @ _fetch(get_weight, name + ".weight", (rows, E)).T
        if hp.qkv_bias:
            y += _fetch(get_weight, name + ".bias", (rows,))
        return y

    for il in range(hp.n_layer):
        p = f"blk.{il}."
        h = _rms_norm(x, _fetch(get_weight, p + "attn_norm.weight", (E,)), hp.rms_eps)
        q = proj(h, p + "attn_q", H * D).reshape(n_tokens, H, D)
        k = proj(h, p + "attn_k", Hkv * D).reshape(n_tokens, Hkv, D)
        v = proj(h, p + "attn_v", Hkv * D).reshape(n_tokens, Hkv, D)
        if hp.qk_norm:  # per head, before rope (HF Qwen3Attention)
            q = _rms_norm(q, _fetch(get_weight, p + "attn_q_norm.weight", (D,)), hp.rms_eps)
            k = _rms_norm(k, _fetch(get_weight, p + "attn_k_norm.weight", (D,)), hp.rms_eps)
        q = _apply_rope(q, cos, sin, hp.rope_style)
        k = _apply_rope(k, cos, sin, hp.rope_style)
        attn = _attention(q, k, v, hp.n_group).reshape(n_tokens, H * D)
        del q, k, v
        x += attn @ _fetch(get_weight, p + "attn_output.weight", (E, H * D)).T
        del attn

        h = _rms_norm(x, _fetch(get_weight, p + "ffn_norm.weight", (E,)), hp.rms_eps)
        gate = h @ _fetch(get_weight, p + "ffn_gate.weight", (F, E)).T
        up = h @ _fetch(get_weight, p + "ffn_up.weight", (F, E)).T
        act = _silu(gate)  # in place: gate is not needed afterwards
        act *= up
        del gate, up
        x += act @ _fetch(get_weight, p + "ffn_down.weight", (E, F)).T
        del act, h
        if progress is not None:
            progress(il + 2, total_steps)

    h = _rms_norm(x, _fetch(get_weight, "output_norm.weight", (E,)), hp.rms_eps)
    del x
    try:
        head = _fetch(get_weight, "output.weight", (V, E))
    except _Absent:
        head = _fetch(get_weight, "token_embd.weight", (V, E))  # tied embeddings: lm_head is the embedding matrix
    logits = np.ascontiguousarray(h @ head.T, dtype=np.float32)
    del head
    if progress is not None:
        progress(total_steps, total_steps)
    return logits


# --------------------------------------------------------------------------------------------------- helpers


def default_text() -> str:
    """The shipped evaluation text (``l1quant/data/logit_text.txt``): original prose with a little math and code.

    Example:
        >>> len(default_text().split()) > 300
        True
    """
    return resources.files("l1quant").joinpath("data").joinpath("logit_text.txt").read_text(encoding="utf-8")


def random_weights(
    hp: Hparams, seed: int = 0, *, tied: bool = False, scale: float = 0.5
) -> dict[str, np.ndarray]:
    """A random decoder checkpoint in GGUF names and HF orientation (float32), for tests and benchmarks.

    Linear weights are N(0, scale / sqrt(fan_in)) so activations stay O(1); norms are 1 + N(0, 0.1); biases
    N(0, 0.1); q/k norms (``hp.qk_norm``) and biases (``hp.qkv_bias``) only when the hparams have them.
    ``tied=True`` omits ``output.weight``.

    Example:
        >>> hp = Hparams(n_layer=1, n_embd=8, n_head=2, n_head_kv=1, n_ff=16, n_vocab=10,
        ...              rope_theta=10000.0, rms_eps=1e-6, qk_norm=True)
        >>> w = random_weights(hp)
        >>> w["blk.0.attn_k.weight"].shape, w["blk.0.attn_q_norm.weight"].shape, "blk.0.attn_q.bias" in w
        ((4, 8), (4,), False)
    """
    rng = np.random.default_rng(seed)
    E, D, H, Hkv, F, V = hp.n_embd, hp.d_head, hp.n_head, hp.n_head_kv, hp.n_ff, hp.n_vocab

    def lin(rows: int, cols: int) -> np.ndarray:
        result: np.ndarray = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / math.sqrt(cols))
        return result

    def vec(n: int, center: float) -> np.ndarray:
        return (center + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": rng.standard_normal((V, E), dtype=np.float32)}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        w[p + "attn_norm.weight"] = vec(E, 1.0)
        for name, rows in (("attn_q", H * D), ("attn_k", Hkv * D), ("attn_v", Hkv * D)):
            w[p + name + ".weight"] = lin(rows, E)
            if hp.qkv_bias:
                w[p + name + ".bias"] = vec(rows, 0.0)
        w[p + "attn_output.weight"] = lin(E, H * D)
        w[p + "ffn_norm.weight"] = vec(E, 1.0)
        w[p + "ffn_gate.weight"] = lin(F, E)
        w[p + "ffn_up.weight"] = lin(F, E)
        w[p + "ffn_down.weight"] = lin(E, F)
        if hp.qk_norm:
            w[p + "attn_q_norm.weight"] = vec(D, 1.0)
            w[p + "attn_k_norm.weight"] = vec(D, 1.0)
    w["output_norm.weight"] = vec(E, 1.0)
    if not tied:
        w["output.weight"] = lin(V, E) * np.float32(math.sqrt(E))
    return w

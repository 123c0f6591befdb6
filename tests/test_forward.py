"""Tests for l1quant.evaluate.forward and .metrics: the numpy reference decoder forward (qwen2, qwen3, llama) and
the logit metrics."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from l1quant.arch import get_arch
from l1quant.evaluate.forward import Hparams, decoder_logits, default_text, random_weights
from l1quant.evaluate.metrics import LogitReport, compare_logits
from l1quant.errors import ConfigError, TensorError, VerifyError
from l1quant.source.config import ModelConfig

TINY = Hparams(
    n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=300, rope_theta=10000.0, rms_eps=1e-6,
    qkv_bias=True,
)
#: the qwen3 and llama variants of TINY: q/k norms without biases (head_dim 32: 4 x 32 != 64), and llama's
#: adjacent-pair rope on permuted Q/K rows
TINY_QWEN3 = dataclasses.replace(TINY, qkv_bias=False, qk_norm=True, head_dim=32)
TINY_LLAMA = dataclasses.replace(TINY, qkv_bias=False, rope_style="norm")
TOKENS = [int(t) for t in np.random.default_rng(7).integers(0, TINY.n_vocab, 48)]

# HF decoder parameter names -> GGUF tensor names (per-layer suffixes).
_HF_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_HF_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(hf_name: str, tied: bool) -> str:
    if hf_name in _HF_TOP:
        name = _HF_TOP[hf_name]
        return "token_embd.weight" if tied and name == "output.weight" else name
    parts = hf_name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
    return f"blk.{parts[2]}.{_HF_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"


def _config(hp: Hparams, arch: str, rope: dict[str, Any] | None = None) -> ModelConfig:
    hf = get_arch(arch).hf_architectures[0]
    d: dict[str, Any] = {"architectures": [hf], "hidden_size": hp.n_embd, "intermediate_size": hp.n_ff,
                         "num_hidden_layers": hp.n_layer, "num_attention_heads": hp.n_head,
                         "num_key_value_heads": hp.n_head_kv, "vocab_size": hp.n_vocab, "rope_theta": hp.rope_theta,
                         "rms_norm_eps": hp.rms_eps, "head_dim": hp.d_head, "rope_scaling": rope}
    return ModelConfig.from_dict(d)


def _hf_logits(arch: str, hp: Hparams, weights: dict[str, np.ndarray], tokens: list[int], tied: bool,
               rope: dict[str, Any] | None = None) -> np.ndarray:
    """transformers' own model of ``arch`` on ``weights`` (GGUF names, Hugging Face's layout)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg_cls, model_cls = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                          "llama": ("LlamaConfig", "LlamaForCausalLM")}[arch]
    params = rope or {"rope_type": "default"}
    if hp.rope_scaling_type == "linear":
        params = {"rope_type": "linear", "factor": hp.rope_scaling_factor}
    config = getattr(transformers, cfg_cls)(
        vocab_size=hp.n_vocab, hidden_size=hp.n_embd, intermediate_size=hp.n_ff, num_hidden_layers=hp.n_layer,
        num_attention_heads=hp.n_head, num_key_value_heads=hp.n_head_kv, rms_norm_eps=hp.rms_eps,
        rope_parameters={**params, "rope_theta": hp.rope_theta}, tie_word_embeddings=tied,
        max_position_embeddings=1024, attn_implementation="eager", head_dim=hp.d_head,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    state = {k: torch.from_numpy(weights[_gguf_name(k, tied)].copy()) for k in model.state_dict()}
    model.load_state_dict(state)
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def _permuted(arch: str, hp: Hparams, weights: dict[str, np.ndarray], rope: dict[str, Any] | None = None
              ) -> dict[str, np.ndarray]:
    """``weights`` as the converter writes them for ``arch``: transforms applied, generated tensors added."""
    a, cfg = get_arch(arch), _config(hp, arch, rope)
    out = {}
    for name, w in weights.items():
        tf = a.transform_for(name)
        order = tf.row_order(cfg, w.shape) if tf is not None else None
        out[name] = w if order is None else w[order]
    out.update(a.generated_tensors(cfg))
    return out


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


@pytest.mark.slow  # importing transformers alone takes ~12 s on the 2-core box; the golden test below is the fast anchor
@pytest.mark.parametrize(
    ("arch", "hp", "tied", "rope"),
    [
        ("qwen2", TINY, False, None),
        ("qwen2", TINY, True, None),
        ("qwen2", dataclasses.replace(TINY, rope_scaling_type="linear", rope_scaling_factor=2.0), False, None),
        ("qwen2", dataclasses.replace(TINY, head_dim=32, n_head_kv=1), False, None),  # 4 x 32 != 64, 4 heads/group
        ("qwen3", TINY_QWEN3, False, None),
        ("qwen3", TINY_QWEN3, True, None),
        ("llama", TINY_LLAMA, False, None),
        # 48 positions against an original context of 16: every frequency band (kept, blended, divided) matters
        ("llama", dataclasses.replace(TINY_LLAMA, rope_scaling_type="llama3"), False, LLAMA3_ROPE),
    ],
    ids=["qwen2-untied", "qwen2-tied", "qwen2-linear-rope-2x", "qwen2-head_dim-32-mqa", "qwen3-untied",
         "qwen3-tied", "llama-untied", "llama-llama3-rope"],
)
def test_matches_transformers(arch: str, hp: Hparams, tied: bool, rope: dict[str, Any] | None) -> None:
    """The numpy forward on the converter's layout (llama: permuted Q/K, rope_freqs) equals transformers' model of
    the same architecture on Hugging Face's layout."""
    weights = random_weights(hp, seed=3, tied=tied)
    ref = _hf_logits(arch, hp, weights, TOKENS, tied, rope)
    ours = decoder_logits(_permuted(arch, hp, weights, rope).__getitem__, hp, TOKENS)
    assert ours.dtype == np.float32 and ours.shape == (len(TOKENS), hp.n_vocab)
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits
    assert np.abs(ours - ref).max() < 1e-3
    report = compare_logits(ref, ours, TOKENS)
    assert report.top1_agreement == 1.0 and report.max_kld < 1e-6


def test_hparams_from_config_follow_the_architecture() -> None:
    """Features come from the architecture description; the numbers from the config."""
    q2 = Hparams.from_config(_config(TINY, "qwen2"), get_arch("qwen2"))
    assert q2 == dataclasses.replace(TINY, head_dim=16)
    assert Hparams.from_config(_config(TINY_QWEN3, "qwen3"), get_arch("qwen3")) == TINY_QWEN3
    ll = Hparams.from_config(_config(TINY_LLAMA, "llama", LLAMA3_ROPE), get_arch("llama"))
    assert ll == dataclasses.replace(TINY_LLAMA, rope_scaling_type="llama3", head_dim=16)
    lin = Hparams.from_config(_config(TINY, "qwen2", {"type": "linear", "factor": 4.0}), get_arch("qwen2"))
    assert (lin.rope_scaling_type, lin.rope_scaling_factor) == ("linear", 4.0)


def test_rope_styles_differ_and_llama3_needs_its_factors() -> None:
    """The same weights under the two rope layouts give different logits (the layout is not a no-op), and llama3
    scaling without rope_freqs.weight is a named error, not unscaled rope."""
    weights = random_weights(TINY_LLAMA, seed=4)
    norm = decoder_logits(weights.__getitem__, TINY_LLAMA, TOKENS[:12])
    neox = decoder_logits(weights.__getitem__, dataclasses.replace(TINY_LLAMA, rope_style="neox"), TOKENS[:12])
    assert np.allclose(norm[0], neox[0], atol=1e-5) and np.abs(norm[1:] - neox[1:]).max() > 1e-2
    with pytest.raises(TensorError, match=r"rope_freqs\.weight.*missing"):
        decoder_logits(weights.__getitem__, dataclasses.replace(TINY_LLAMA, rope_scaling_type="llama3"), [1, 2])
    ones = {**weights, "rope_freqs.weight": np.ones(TINY_LLAMA.d_head // 2, np.float32)}
    assert np.array_equal(decoder_logits(ones.__getitem__, TINY_LLAMA, TOKENS[:12]), norm)  # divisors of 1: no-op


def test_golden_logits_from_transformers() -> None:
    """Torch-free anchor: values printed by transformers 5.24 Qwen2ForCausalLM (eager, float32) for TINY, seed 3."""
    assert TOKENS[:5] == [283, 187, 205, 269, 173]  # the token stream itself has not drifted
    weights = random_weights(TINY, seed=3)
    ours = decoder_logits(weights.__getitem__, TINY, TOKENS)
    golden = np.array(
        [
            [-0.035848, 2.442791, 3.132781, 0.707776],
            [3.466318, -2.633699, 6.850978, -0.043104],
            [1.386806, -1.392463, 0.211516, 3.065539],
        ]
    )
    assert np.abs(ours[np.ix_([0, 17, 47], [0, 1, 150, 299])] - golden).max() < 1e-4


def test_linear_rope_scaling_changes_logits() -> None:
    weights = random_weights(TINY, seed=3)
    plain = decoder_logits(weights.__getitem__, TINY, TOKENS)
    scaled_hp = dataclasses.replace(TINY, rope_scaling_type="linear", rope_scaling_factor=2.0)
    scaled = decoder_logits(weights.__getitem__, scaled_hp, TOKENS)
    assert np.allclose(plain[0], scaled[0], atol=1e-5)  # position 0 has angle 0 either way
    assert np.abs(plain[1:] - scaled[1:]).max() > 1e-2
    # factor 1.0 linear scaling is the identity
    same = decoder_logits(weights.__getitem__, dataclasses.replace(TINY, rope_scaling_type="linear"), TOKENS)
    assert np.array_equal(plain, same)


def test_causal_prefix_invariance() -> None:
    weights = random_weights(TINY, seed=5)
    full = decoder_logits(weights.__getitem__, TINY, TOKENS)
    prefix = decoder_logits(weights.__getitem__, TINY, TOKENS[:10])
    assert np.allclose(full[:10], prefix, atol=1e-4)
    changed = TOKENS[:10] + [(TOKENS[10] + 1) % TINY.n_vocab] + TOKENS[11:]
    other = decoder_logits(weights.__getitem__, TINY, changed)
    assert np.allclose(full[:10], other[:10], atol=1e-4)
    assert np.abs(full[10:] - other[10:]).max() > 1e-2


def test_gqa_equals_expanded_multi_head() -> None:
    """Two KV heads shared by groups of two equal four KV heads holding duplicated K/V rows."""
    weights = random_weights(TINY, seed=9)
    mha = dataclasses.replace(TINY, n_head_kv=TINY.n_head)
    d = TINY.d_head
    expanded = dict(weights)
    for il in range(TINY.n_layer):
        for part in ("attn_k", "attn_v"):
            for kind in ("weight", "bias"):
                name = f"blk.{il}.{part}.{kind}"
                heads = weights[name].reshape(TINY.n_head_kv, d, -1)
                expanded[name] = np.repeat(heads, TINY.n_group, axis=0).reshape(
                    TINY.n_head * d, *weights[name].shape[1:]
                )
    a = decoder_logits(weights.__getitem__, TINY, TOKENS)
    b = decoder_logits(expanded.__getitem__, mha, TOKENS)
    assert np.allclose(a, b, atol=1e-4)


def test_weights_fetched_layer_by_layer_and_tied_fallback() -> None:
    weights = random_weights(TINY, seed=1, tied=True)
    calls: list[str] = []

    def get(name: str) -> np.ndarray:
        calls.append(name)
        return weights[name]

    steps: list[tuple[int, int]] = []
    decoder_logits(get, TINY, TOKENS[:5], progress=lambda done, total: steps.append((done, total)))
    layer_of = [int(c.split(".")[1]) for c in calls if c.startswith("blk.")]
    assert layer_of == sorted(layer_of) and set(layer_of) == {0, 1}
    assert calls[:2] == ["rope_freqs.weight", "token_embd.weight"]  # no rope_freqs (KeyError): plain rope
    assert calls[-2:] == ["output.weight", "token_embd.weight"]  # tried, absent (KeyError), fell back
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_missing_and_misshapen_tensors_are_named() -> None:
    weights = random_weights(TINY, seed=1)
    del weights["blk.1.attn_q.bias"]
    with pytest.raises(TensorError, match=r"blk\.1\.attn_q\.bias.*missing"):
        decoder_logits(weights.__getitem__, TINY, [1, 2])
    weights = random_weights(TINY, seed=1)
    weights["blk.0.ffn_down.weight"] = weights["blk.0.ffn_down.weight"].T
    with pytest.raises(TensorError, match=r"blk\.0\.ffn_down\.weight.*\(128, 64\).*\(64, 128\)"):
        decoder_logits(weights.__getitem__, TINY, [1, 2])
    weights = random_weights(TINY, seed=1)
    weights["output.weight"] = weights["output.weight"][:10]
    with pytest.raises(TensorError, match=r"output\.weight"):
        decoder_logits(weights.__getitem__, TINY, [1, 2])


def test_bad_tokens_and_unsupported_rope() -> None:
    weights = random_weights(TINY, seed=1)
    with pytest.raises(VerifyError, match="300 at position 1"):
        decoder_logits(weights.__getitem__, TINY, [1, 300])
    with pytest.raises(VerifyError, match="empty"):
        decoder_logits(weights.__getitem__, TINY, [])
    yarn = dataclasses.replace(TINY, rope_scaling_type="yarn", rope_scaling_factor=4.0)
    with pytest.raises(NotImplementedError, match="yarn"):
        decoder_logits(weights.__getitem__, yarn, [1, 2])


@pytest.mark.parametrize(
    "changes",
    [{"n_head_kv": 3}, {"n_layer": 0}, {"n_embd": 66}, {"rope_theta": -1.0}, {"rope_scaling_factor": 0.0}],
)
def test_inconsistent_hparams_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(changes))):
        dataclasses.replace(TINY, **changes)


# ------------------------------------------------------------------------------------------------ compare_logits


def test_identical_logits() -> None:
    logits = np.random.default_rng(0).standard_normal((6, 11)).astype(np.float32) * 5
    r = compare_logits(logits, logits.copy(), [0, 1, 2, 3, 4, 5])
    assert r.mean_kld == 0.0 and r.max_kld == 0.0 and r.p99_kld == 0.0
    assert r.top1_agreement == 1.0
    assert r.ppl_ref == r.ppl_test and r.n_tokens == 6


def test_two_token_kld_hand_computed() -> None:
    # Position 0: P = (0.5, 0.5), Q = (0.9, 0.1); position 1: P = Q = (0.2, 0.8).
    ref = np.log(np.array([[0.5, 0.5], [0.2, 0.8]]))
    test = np.log(np.array([[0.9, 0.1], [0.2, 0.8]])) + np.array([[3.0], [-7.0]])  # shifts must not matter
    kld0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    r = compare_logits(ref, test, [0, 1])
    assert r.max_kld == pytest.approx(kld0, rel=1e-12)
    assert r.mean_kld == pytest.approx(kld0 / 2, rel=1e-12)
    assert r.top1_agreement == 1.0  # row 0: exact tie in ref picks index 0, as does test; row 1: both pick 1
    # ppl: row 0 predicts token 1: ref p=0.5, test q=0.1
    assert r.ppl_ref == pytest.approx(2.0) and r.ppl_test == pytest.approx(10.0)


def test_uniform_logits_perplexity_is_vocab_size() -> None:
    r = compare_logits(np.zeros((5, 37), np.float32), np.full((5, 37), 2.5, np.float32), [3, 1, 4, 1, 5])
    assert r.ppl_ref == pytest.approx(37.0) and r.ppl_test == pytest.approx(37.0)
    assert r.mean_kld == pytest.approx(0.0, abs=1e-12)


def test_extreme_and_nonfinite_logits() -> None:
    # Large logits (typical of real models) stay stable; -inf in test where ref has mass gives inf, not NaN.
    ref = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    test = np.array([[1000.0, 0.0, -1000.0], [0.0, -np.inf, 0.0]])
    r = compare_logits(ref, test, [0, 0])
    assert r.ppl_ref == pytest.approx(1.0) and r.max_kld == math.inf and r.p99_kld == math.inf
    assert r.top1_agreement == 1.0
    nan = compare_logits(ref, np.full_like(ref, np.nan), [0, 1])
    assert math.isnan(nan.mean_kld)  # NaN weights must not look like a perfect match


def test_compare_logits_report_and_errors() -> None:
    r = compare_logits(np.eye(3), np.eye(3)[::-1], [0, 1, 2])
    assert r.top1_agreement == pytest.approx(1 / 3)
    d = r.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(LogitReport)} and d["n_tokens"] == 3
    assert "top1 33.33%" in r.summary()
    single = compare_logits(np.zeros((1, 4)), np.zeros((1, 4)), [2])
    assert math.isnan(single.ppl_ref)
    with pytest.raises(VerifyError, match="differ"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1])
    with pytest.raises(VerifyError, match="tokens"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(VerifyError, match="outside"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 3)), [0, 3])


def test_default_text() -> None:
    text = default_text()
    assert 350 <= len(text.split()) <= 700
    assert "def " in text and "sqrt" in text  # a little code and a little math
    assert text.isascii()

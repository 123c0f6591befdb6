"""The real runtime: llama.cpp (llama-cpp-python==0.3.36) loads l1quant's Q8_0 output, tokenizes like ``tokenizers``,
generates, and computes the logits that l1quant's numpy reference forward pass computes.

The checkpoints are tiny and random (tests/conftest.py), so generated text is meaningless: what is checked is that
the file is a working model for llama.cpp, that its vocabulary/merges/pre-tokenizer/special tokens reproduce the
Hugging Face tokenizer exactly, and that every tensor is where and what llama.cpp expects (logits agree).

Skips when llama_cpp is not importable, except under CI=true where that fails (CI installs it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from reference import require_module

import l1quant
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

TOKENIZER_IDS = ("r1", "qwen2.5")

#: Code, Chinese, emoji (incl. ZWJ sequences and a flag), digits, contractions, odd whitespace, the reasoning tags,
#: the R1 chat special tokens and the Qwen2.5 ones (plain text for the other tokenizer), a lone surrogate-free
#: mix of scripts. Each fragment stresses a different part of the pre-tokenizer regex or of the added-token split.
MIXED_TEXT = (
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Solve x^2 - 5x + 6 = 0; think for 512 tokens max.\n"
    "<｜Assistant｜><think>\nLet me factor: (x-2)(x-3)=0, so x ∈ {2, 3}.\n</think>\n\n"
    "```python\ndef roots(a: float, b: float, c: float) -> tuple[float, float]:\n"
    "    d = (b * b - 4 * a * c) ** 0.5  # discriminant\n\treturn ((-b + d) / (2 * a), (-b - d) / (2 * a))\n```\n"
    "中文测试：你好，世界！今天的天气很好。日本語もテストします。한국어도요.\n"
    "Emoji: 🤗🚀👩‍💻 👨‍👩‍👧‍👦 🇫🇷 ✅\u00a0non-breaking   spaces\r\nand CRLF.\n"
    "It's, we'll, they're, I'd; 1234567890 3.14159 1e-9 0x1F\n"
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|><tool_call>{}</tool_call>"
    "<｜end▁of▁sentence｜><|EOT|>   trailing  "
)

#: A short prompt for the logits check (stays well inside n_ctx).
LOGIT_PROMPT = "<｜User｜>What is 2+2?<｜Assistant｜><think>\nTwo plus two is four.\n</think>\n\n4"


def _tok_dirs(tiny_factory: Callable[..., Path]) -> dict[str, Path]:
    return {tok: tiny_factory(tok) for tok in TOKENIZER_IDS}


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return require_module("llama_cpp")


@pytest.fixture(scope="module")
def q8_models(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """l1quant's Q8_0 conversion of the tiny checkpoint of each fixture tokenizer."""
    out = tmp_path_factory.mktemp("runtime")
    return {tok: l1quant.convert(d, "q8_0", out / f"{tok}-Q8_0.gguf", threads=2)
            for tok, d in _tok_dirs(tiny_factory).items()}


@pytest.fixture(scope="module")
def llms(llama_cpp: Any, q8_models: dict[str, Path]) -> Iterator[dict[str, Any]]:
    models = {tok: llama_cpp.Llama(model_path=str(p), logits_all=True, n_ctx=512, n_batch=512, n_threads=2,
                                   seed=0, verbose=False)
              for tok, p in q8_models.items()}
    yield models
    for m in models.values():
        m.close()


def test_loads_as_qwen2(llms: dict[str, Any]) -> None:
    for tok, llm in llms.items():
        assert llm.metadata["general.architecture"] == "qwen2", tok
        assert llm.n_vocab() == 151936, tok
        assert llm.n_embd() == 64, tok
        assert llm.n_ctx() == 512, tok
    assert llms["r1"].token_bos() == 151646  # R1's <｜begin▁of▁sentence｜>
    assert llms["r1"].token_eos() == 151643


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
@pytest.mark.parametrize("add_bos", [False, True], ids=["no-bos", "bos"])
def test_tokenization_matches_tokenizers(tok: str, add_bos: bool, llms: dict[str, Any],
                                         tiny_factory: Callable[..., Path]) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(tiny_factory(tok) / "tokenizer.json"))
    llm = llms[tok]
    # add_bos=True asks llama.cpp for the model's special prefix (BOS only if tokenizer.ggml.add_bos_token is
    # true: R1 yes, Qwen2.5 no), which must match what the tokenizer's own post-processor adds.
    text = MIXED_TEXT
    if add_bos and tok == "r1":
        text = text.removeprefix("<｜begin▁of▁sentence｜>")  # else both would show a doubled BOS; fine but noisy
    expected = hf.encode(text, add_special_tokens=add_bos).ids
    got = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
    if got != expected:
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pytest.fail(f"{tok}: token #{i} differs: llama.cpp {got[i:i + 6]} vs tokenizers {expected[i:i + 6]} "
                    f"(text around: {hf.decode(expected[max(0, i - 3):i + 3], skip_special_tokens=False)!r})")
    if add_bos:
        assert (expected[0] == 151646) == (tok == "r1")
    # and back: llama.cpp's detokenization of the ids is the original text
    assert llm.detokenize(got, special=True).decode("utf-8") == (
        ("<｜begin▁of▁sentence｜>" if add_bos and tok == "r1" else "") + text)


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
def test_special_tokens_as_text_match(tok: str, llms: dict[str, Any], tiny_factory: Callable[..., Path]) -> None:
    """special=False (llama.cpp) == encode_special_tokens (tokenizers): special tokens are split as plain text."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(tiny_factory(tok) / "tokenizer.json"))
    hf.encode_special_tokens = True
    expected = hf.encode(MIXED_TEXT, add_special_tokens=False).ids
    assert llms[tok].tokenize(MIXED_TEXT.encode("utf-8"), add_bos=False, special=False) == expected


def test_generates_tokens(llms: dict[str, Any]) -> None:
    llm = llms["r1"]
    prompt = llm.tokenize(b"<\xef\xbd\x9cUser\xef\xbd\x9c>Hello<\xef\xbd\x9cAssistant\xef\xbd\x9c><think>\n",
                          add_bos=True, special=True)
    greedy = list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0), 8))
    assert len(greedy) == 8
    assert all(0 <= t < llm.n_vocab() for t in greedy)
    again = list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0), 8))
    assert again == greedy, "greedy decoding is not deterministic"
    out = llm.create_completion("Hello", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------------------------ logits


def _gguf_weights(path: Path) -> tuple[Callable[[str], np.ndarray], dict[str, Any]]:
    """(get_weight for l1quant.check.forward: GGUF name -> float32 in HF orientation, decoded metadata).

    Headers via l1quant's read_gguf (gguf.GGUFReader takes ~40 s on a 151k-token vocabulary); dequantization via
    gguf.quants (llama.cpp's Python reference), not l1quant's kernels.
    """
    gf = read_gguf(path)

    def get(name: str) -> np.ndarray:
        t = gf.tensor(name)  # KeyError for an absent tensor (tied output) is what qwen2_logits expects
        raw = np.frombuffer(gf.read_tensor_bytes(t), dtype=np.uint8).reshape(t.n_rows, t.row_nbytes)
        if t.ggml_type == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.np_shape)
        return np.asarray(dequantize(raw, t.ggml_type), dtype=np.float32).reshape(t.np_shape)

    return get, gf.kv


def _reference_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from l1quant import forward
    get, fields = _gguf_weights(path)
    hp = forward.Qwen2Hparams.from_gguf_fields(fields, n_vocab=get("token_embd.weight").shape[0])
    return forward.qwen2_logits(get, hp, tokens)


def _logit_report(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Scale-free agreement measures. The tiny random models have near-flat logits (std ~0.16), so KL divergence
    says little; the largest error relative to the logits' spread and the correlation do."""
    err = np.abs(ref - got)
    return {"max_abs": float(err.max()), "rel_max": float(err.max() / ref.std()),
            "corr": float(np.corrcoef(ref.reshape(-1), got.reshape(-1))[0, 1]),
            "top1": float((ref.argmax(-1) == got.argmax(-1)).mean())}


def test_logits_match_numpy_forward(llama_cpp: Any, llms: dict[str, Any], q8_models: dict[str, Path],
                                    tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """Measured (tiny R1 checkpoint, 21-token prompt, 2 threads): llama.cpp F32 vs numpy F32 rel_max 0.0013;
    llama.cpp Q8_0 vs numpy on the Q8_0 weights 0.054 (llama.cpp also rounds activations to Q8_0); llama.cpp Q8_0
    vs numpy F32 0.087 (correlations 1 - 1e-8, 1 - 3e-5, 1 - 8e-5). A misplaced or mis-shaped tensor, wrong RoPE
    or wrong norm eps gives errors of order 1."""
    llm = llms["r1"]
    tokens = llm.tokenize(LOGIT_PROMPT.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert got.shape == (len(tokens), 151936) and np.isfinite(got).all()

    # 1. Full precision end to end: llama.cpp on the F32 conversion vs the numpy forward on the same weights.
    #    Only float summation order differs, so this is tight: it pins every tensor's placement and meaning.
    f32 = l1quant.convert(tiny_factory("r1"), "f32", tmp_path / "r1-F32.gguf", threads=2)
    full = _reference_logits(f32, tokens)
    llm32 = llama_cpp.Llama(model_path=str(f32), logits_all=True, n_ctx=512, n_threads=2, seed=0, verbose=False)
    try:
        llm32.eval(tokens)
        got32 = np.array(llm32.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm32.close()
    rep = _logit_report(full, got32)
    assert rep["rel_max"] < 0.01 and rep["corr"] > 0.999999 and rep["top1"] == 1.0, rep

    # 2. The Q8_0 file vs the numpy forward on its own (dequantized) weights: adds llama.cpp's Q8_0 activations.
    same = _reference_logits(q8_models["r1"], tokens)
    rep = _logit_report(same, got)
    assert rep["rel_max"] < 0.15 and rep["corr"] > 0.9995, rep

    # 3. The Q8_0 file vs the F32 reference: adds the Q8_0 weight error on top.
    rep = _logit_report(full, got)
    assert rep["rel_max"] < 0.25 and rep["corr"] > 0.999, rep

    # llama.cpp's greedy next token is the reference's argmax wherever no error within rel_max could flip it.
    last, err = same[-1], float(np.abs(same[-1] - got[-1]).max())
    top2 = np.sort(last)[-2:]
    if top2[1] - top2[0] > 2 * err:
        assert int(got[-1].argmax()) == int(last.argmax())

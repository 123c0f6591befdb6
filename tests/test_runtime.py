"""The real runtime: llama.cpp (llama-cpp-python==0.3.36) loads l1quant's Q8_0 output of every architecture (qwen2
with the R1 and Qwen2.5 tokenizers, qwen3 with Qwen3's, llama with R1-Distill-Llama's and llama-3 rope scaling),
tokenizes like ``tokenizers``, generates, and computes the logits that l1quant's numpy reference forward pass
computes.

The checkpoints are tiny and random (tests/conftest.py), so generated text is meaningless: what is checked is that
the file is a working model for llama.cpp, that its vocabulary/merges/pre-tokenizer/special tokens reproduce the
Hugging Face tokenizer exactly, and that every tensor is where and what llama.cpp expects (logits agree: for llama
that includes the Q/K row permutation and rope_freqs).

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
from l1quant.arch import get_arch
from l1quant.arch.from_gguf import config_from_gguf
from l1quant.evaluate.forward import Hparams, decoder_logits
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

TOKENIZER_IDS = ("r1", "qwen2.5", "qwen3", "r1-llama")
#: llama-3 rope scaling with an original context of 64 so that the ~20-token prompt meets every band of it
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
#: per tokenizer: (checkpoint arguments, GGUF architecture, vocabulary size, bos the tokenizer prepends or None)
MODELS: dict[str, tuple[dict[str, Any], str, int, int | None]] = {
    "r1": ({}, "qwen2", 151936, 151646),
    "qwen2.5": ({}, "qwen2", 151936, None),
    "qwen3": ({"head_dim": 32, "tied": True}, "qwen3", 151936, None),
    "r1-llama": ({"rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE}, "llama", 128256, 128000),
}

#: Code, Chinese, emoji (incl. ZWJ sequences and a flag), digits, contractions, odd whitespace, the reasoning tags,
#: the R1 chat special tokens, the Qwen ones and the Llama-3 ones (plain text for the tokenizers without them), a
#: lone surrogate-free mix of scripts. Each fragment stresses a different part of the pre-tokenizer regex or of the
#: added-token split.
MIXED_TEXT = (
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Solve x^2 - 5x + 6 = 0; think for 512 tokens max.\n"
    "<｜Assistant｜><think>\nLet me factor: (x-2)(x-3)=0, so x ∈ {2, 3}.\n</think>\n\n"
    "```python\ndef roots(a: float, b: float, c: float) -> tuple[float, float]:\n"
    "    d = (b * b - 4 * a * c) ** 0.5  # discriminant\n\treturn ((-b + d) / (2 * a), (-b - d) / (2 * a))\n```\n"
    "中文测试：你好，世界！今天的天气很好。日本語もテストします。한국어도요.\n"
    "Emoji: 🤗🚀👩‍💻 👨‍👩‍👧‍👦 🇫🇷 ✅\u00a0non-breaking   spaces\r\nand CRLF.\n"
    "It's, we'll, they're, I'd; 1234567890 3.14159 1e-9 0x1F\n"
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|><tool_call>{}</tool_call>"
    "<|start_header_id|>user<|end_header_id|>\n\nhey<|eot_id|><｜▁pad▁｜>"
    "<｜end▁of▁sentence｜><|EOT|>   trailing  "
)

#: A short prompt for the logits check (stays well inside n_ctx).
LOGIT_PROMPT = "<｜User｜>What is 2+2?<｜Assistant｜><think>\nTwo plus two is four.\n</think>\n\n4"


def _checkpoint(tiny_factory: Callable[..., Path], tok: str) -> Path:
    return tiny_factory(tok, **MODELS[tok][0])


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return require_module("llama_cpp")


@pytest.fixture(scope="module")
def q8_models(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """l1quant's Q8_0 conversion of the tiny checkpoint of each fixture tokenizer."""
    out = tmp_path_factory.mktemp("runtime")
    return {tok: l1quant.convert(_checkpoint(tiny_factory, tok), "q8_0", out / f"{tok}-Q8_0.gguf", threads=2)
            for tok in TOKENIZER_IDS}


@pytest.fixture(scope="module")
def llms(llama_cpp: Any, q8_models: dict[str, Path]) -> Iterator[dict[str, Any]]:
    models = {tok: llama_cpp.Llama(model_path=str(p), logits_all=True, n_ctx=512, n_batch=512, n_threads=2,
                                   seed=0, verbose=False)
              for tok, p in q8_models.items()}
    yield models
    for m in models.values():
        m.close()


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
def test_loads_as_its_architecture(tok: str, llms: dict[str, Any]) -> None:
    _, arch, n_vocab, bos = MODELS[tok]
    llm = llms[tok]
    assert llm.metadata["general.architecture"] == arch
    assert llm.n_vocab() == n_vocab
    assert llm.n_embd() == 64
    assert llm.n_ctx() == 512
    if bos is not None:
        assert llm.token_bos() == bos
    if tok == "r1":
        assert llm.token_eos() == 151643  # R1's <｜end▁of▁sentence｜>
    if tok == "qwen3":
        assert llm.token_eos() == 151645  # <|im_end|>
    if tok == "r1-llama":
        assert llm.token_eos() == 128001  # <｜end▁of▁sentence｜>


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
@pytest.mark.parametrize("add_bos", [False, True], ids=["no-bos", "bos"])
def test_tokenization_matches_tokenizers(tok: str, add_bos: bool, llms: dict[str, Any],
                                         tiny_factory: Callable[..., Path]) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(_checkpoint(tiny_factory, tok) / "tokenizer.json"))
    llm = llms[tok]
    bos = MODELS[tok][3]
    # add_bos=True asks llama.cpp for the model's special prefix (BOS only if tokenizer.ggml.add_bos_token is
    # true: R1 and R1-Llama yes, Qwen no), which must match what the tokenizer's own post-processor adds.
    text = MIXED_TEXT
    bos_text = "<｜begin▁of▁sentence｜>" if bos is not None else ""
    if add_bos and bos is not None:
        text = text.removeprefix(bos_text)  # else both would show a doubled BOS; fine but noisy
    expected = hf.encode(text, add_special_tokens=add_bos).ids
    got = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
    if got != expected:
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pytest.fail(f"{tok}: token #{i} differs: llama.cpp {got[i:i + 6]} vs tokenizers {expected[i:i + 6]} "
                    f"(text around: {hf.decode(expected[max(0, i - 3):i + 3], skip_special_tokens=False)!r})")
    if add_bos:
        assert (expected[0] == bos) == (bos is not None)
    # and back: llama.cpp's detokenization of the ids is the original text
    assert llm.detokenize(got, special=True).decode("utf-8") == ((bos_text if add_bos else "") + text)


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
def test_special_tokens_as_text_match(tok: str, llms: dict[str, Any], q8_models: dict[str, Path],
                                      tiny_factory: Callable[..., Path]) -> None:
    """special=False (llama.cpp) == encode_special_tokens (tokenizers): special tokens are split as plain text.

    One documented difference is left out of the text: an added token that tokenizer.json does not flag special
    but that looks special (R1-Distill-Llama's ``<｜User｜>``/``<｜Assistant｜>``) is CONTROL in the GGUF, as the
    reference converter types it, so llama.cpp splits it as text here while tokenizers still matches it."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(_checkpoint(tiny_factory, tok) / "tokenizer.json"))
    kv = read_gguf(q8_models[tok]).kv
    control = {t for t, typ in zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]) if typ == 3}
    text = MIXED_TEXT
    for i, added in hf.get_added_tokens_decoder().items():
        if not added.special and added.content in control:
            text = text.replace(added.content, "")
    hf.encode_special_tokens = True
    expected = hf.encode(text, add_special_tokens=False).ids
    assert llms[tok].tokenize(text.encode("utf-8"), add_bos=False, special=False) == expected


@pytest.mark.parametrize("tok", TOKENIZER_IDS)
def test_generates_tokens(tok: str, llms: dict[str, Any]) -> None:
    llm = llms[tok]
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


def _gguf_weights(path: Path) -> tuple[Callable[[str], np.ndarray], Any]:
    """(get_weight for l1quant.evaluate.forward: GGUF name -> float32 in HF orientation, the parsed file).

    Headers via l1quant's read_gguf (gguf.GGUFReader takes ~40 s on a 151k-token vocabulary); dequantization via
    gguf.quants (llama.cpp's Python reference), not l1quant's kernels.
    """
    gf = read_gguf(path)

    def get(name: str) -> np.ndarray:
        t = gf.tensor(name)  # KeyError for an absent tensor (tied output) is what decoder_logits expects
        raw = np.frombuffer(gf.read_tensor_bytes(t), dtype=np.uint8).reshape(t.n_rows, t.row_nbytes)
        if t.ggml_type == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(t.np_shape)
        return np.asarray(dequantize(raw, t.ggml_type), dtype=np.float32).reshape(t.np_shape)

    return get, gf


def _reference_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """The numpy forward on a GGUF: hparams read back through its architecture's key table."""
    get, gf = _gguf_weights(path)
    arch = get_arch(gf.kv["general.architecture"])
    return decoder_logits(get, Hparams.from_config(config_from_gguf(gf, arch), arch), tokens)


def _logit_report(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Scale-free agreement measures. The tiny random models have near-flat logits (std ~0.16), so KL divergence
    says little; the largest error relative to the logits' spread and the correlation do."""
    err = np.abs(ref - got)
    return {"max_abs": float(err.max()), "rel_max": float(err.max() / ref.std()),
            "corr": float(np.corrcoef(ref.reshape(-1), got.reshape(-1))[0, 1]),
            "top1": float((ref.argmax(-1) == got.argmax(-1)).mean())}


@pytest.mark.parametrize("tok", ["r1", "qwen3", "r1-llama"])
def test_logits_match_numpy_forward(tok: str, llama_cpp: Any, llms: dict[str, Any], q8_models: dict[str, Path],
                                    tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """Measured (tiny checkpoints, 21-27-token prompt, 2 threads), rel_max for llama.cpp F32 vs numpy F32 /
    llama.cpp Q8_0 vs numpy on the Q8_0 weights / llama.cpp Q8_0 vs numpy F32: qwen2 (R1) 0.0013 / 0.054 / 0.087;
    qwen3 (tied, head_dim 32, q/k norms) 0.0017 / 0.059 / 0.096; llama (permuted Q/K, llama-3 rope_freqs) 0.0011 /
    0.042 / 0.067 (correlations >= 1 - 1e-8, 1 - 4e-5, 1 - 1.1e-4). A misplaced or mis-shaped tensor, unpermuted
    Q/K rows, wrong RoPE factors or norm eps give errors of order 1."""
    llm = llms[tok]
    tokens = llm.tokenize(LOGIT_PROMPT.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert got.shape == (len(tokens), MODELS[tok][2]) and np.isfinite(got).all()

    # 1. Full precision end to end: llama.cpp on the F32 conversion vs the numpy forward on the same weights.
    #    Only float summation order differs, so this is tight: it pins every tensor's placement and meaning.
    f32 = l1quant.convert(_checkpoint(tiny_factory, tok), "f32", tmp_path / f"{tok}-F32.gguf", threads=2)
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
    same = _reference_logits(q8_models[tok], tokens)
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


# ------------------------------------------------------------------------------------------------ every feature


@pytest.mark.parametrize("tok", ["qwen3", "r1-llama"])
def test_every_command_on_the_new_architectures(tok: str, llama_cpp: Any, q8_models: dict[str, Path],
                                                tiny_factory: Callable[..., Path], tmp_path: Path) -> None:
    """quantize, verify (--source, --logits, --runtime llama.cpp), inspect, prompt --chat, run, budget-check and
    the model card on a qwen3 and a llama file, through the CLI as a user types them."""
    from click.testing import CliRunner

    from l1quant.cli import main

    model = _checkpoint(tiny_factory, tok)
    q8 = q8_models[tok]
    cli = CliRunner()

    def ok(*args: str) -> str:
        res = cli.invoke(main, list(args), catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    # quantize the lossless conversion to a K-quant mix, then verify it all the way through llama.cpp
    bf16 = l1quant.convert(model, "bf16", tmp_path / "m-BF16.gguf", threads=2)
    q4 = tmp_path / "m-Q4_K_M.gguf"
    ok("quantize", str(bf16), str(q4), "q4_k_m", "-q")
    out = ok("verify", str(q4), "--source", str(model), "--logits", "--tokens", "48", "--runtime", "llama.cpp")
    assert "PASS" in out
    assert MODELS[tok][1] in ok("inspect", str(q8))
    chat = ok("prompt", "What is 17 * 23?", "--budget", "64", "--mode", "max", "--chat", str(q8))
    if tok == "qwen3":  # Qwen3's template, thinking on (enable_thinking not set): the model opens <think> itself
        assert chat.startswith("<|im_start|>user\nWhat is 17 * 23?") and chat.rstrip().endswith("<|im_start|>assistant")
    else:  # the distill template: bos, <｜User｜>, and a generation prompt that opens <think>
        assert chat.startswith("<｜begin▁of▁sentence｜><｜User｜>What is 17 * 23?")
        assert chat.rstrip().endswith("<｜Assistant｜><think>")
    r = l1quant.run(q8, "What is 17 * 23?", 16, mode="max", seed=0, threads=2)
    assert 1 <= r.total_tokens <= 32
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "add", "question": "What is 2 + 2?", "answer": 4}\n')
    assert "within N" in ok("budget-check", str(q8), "--budgets", "8", "--problems", str(problems), "--mode", "max",
                            "-q", "-t", "2")
    # the card, written after a verified conversion
    ok("convert", str(model), "--type", "q8_0", "-o", str(tmp_path / "card") + "/", "--card", "-q")
    card = (tmp_path / "card" / "README.md").read_text()
    assert f"| architecture | {MODELS[tok][1]}, 2 layers" in card and "PASS" in card

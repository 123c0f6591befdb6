"""Logit sources: where logits come from, behind one interface (:class:`LogitSource`).

* :class:`LlamaCppLogits`: the GGUF in the llama.cpp runtime (:mod:`l1quant.runtime`), activations quantized as
  llama.cpp quantizes them: what llama-perplexity measures;
* :class:`NumpyLogits`: the reference forward pass (:mod:`l1quant.evaluate.forward`) over the GGUF's dequantized
  weights: the weights' quantization error only.

Tokens come from the source's own tokenizer: llama.cpp's vocabulary for llama.cpp, a checkpoint's
``tokenizer.json`` (:func:`tokenizer_json_ids`, the one place that loads one for evaluation) for numpy.

Example:
    >>> src = open_logits(Path("m-Q8_0.gguf"), ctx=128, threads=2)      # doctest: +SKIP
    >>> src.chunk_logits(src.tokenize("Some text ...")[:128], 64).shape  # doctest: +SKIP
    (64, 151936)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from l1quant.arch import Arch, get_arch
from l1quant.check.structure import config_from_gguf
from l1quant.conversion.vocab import tokenizer_from_text
from l1quant.errors import InputError, TokenizerError, read_text
from l1quant.evaluate.forward import Hparams, decoder_logits
from l1quant.gguf.reader import GGUFFile, read_gguf
from l1quant.runtime import Model, available, extra_bufts

__all__ = ["DEFAULT_UBATCH", "LlamaCppLogits", "LogitSource", "NumpyLogits", "open_logits", "tokenizer_json_ids"]

#: llama-perplexity's default physical batch (``-ub``).
DEFAULT_UBATCH = 512


class LogitSource(Protocol):
    """What an evaluation needs from a model: its vocabulary size, its tokenizer and the logits of a chunk."""

    weight_only: bool
    n_vocab: int

    def tokenize(self, text: str) -> list[int]:
        """The text's tokens, with the BOS the vocabulary asks for."""
        ...

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """Logits (len(tokens) - first, n_vocab) float32 of positions ``first..`` of ``tokens`` evaluated from an
        empty cache, the first token replaced by BOS when the vocabulary adds one (llama-perplexity's chunks)."""
        ...

    def close(self) -> None:
        """Free what the source holds."""
        ...


def tokenizer_json_ids(path: Path, text: str) -> list[int]:
    """The ids a checkpoint's ``tokenizer.json`` gives ``text`` (no special tokens added).

    Raises :class:`~l1quant.errors.TokenizerError` for an unreadable or invalid file."""
    return list(tokenizer_from_text(path, read_text(path, TokenizerError)).encode(text).ids)


class LlamaCppLogits:
    """One GGUF in the llama.cpp runtime, evaluated chunk by chunk as llama-perplexity does.

    A context of ``ctx`` tokens, logical batch ``ctx``, physical batch 512 (``-ub`` default), flash attention
    ``auto``, F16 KV cache: the settings llama-perplexity runs one chunk with (it batches several sequences of
    ``ctx`` tokens in one call; each 512-token physical batch is still one sequence, so the logits are the same).
    ``no_repack`` is llama.cpp's ``--no-repack``.
    """

    weight_only = False

    def __init__(self, path: Path, ctx: int, threads: int, vocab_only: bool = False, no_repack: bool = False) -> None:
        self.model = Model(path, n_ctx=ctx, n_threads=threads, n_batch=ctx, n_ubatch=min(DEFAULT_UBATCH, ctx),
                           flash_attn="auto", extra_bufts=extra_bufts(no_repack), vocab_only=vocab_only)
        self.n_vocab = self.model.n_vocab
        self.add_bos = self.model.add_bos
        self.bos = self.model.bos
        self.n_ctx = ctx

    def tokenize(self, text: str) -> list[int]:
        """``common_tokenize(ctx, text, add_special=true)`` (no special-token parsing)."""
        return self.model.tokenize(text, add_bos=True, special=False)

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """See :class:`LogitSource`; a view valid until the next call."""
        toks = [int(t) for t in tokens]
        if self.add_bos:
            toks[0] = self.bos
        return self.model.logits(toks, first)

    def close(self) -> None:
        """Free the context and model."""
        self.model.close()


class NumpyLogits:
    """The numpy reference forward pass over a GGUF's dequantized weights: weights-only quantization error.

    ``tok_dir``: where the checkpoint's tokenizer.json is (else beside the GGUF or a folder up)."""

    weight_only = True

    def __init__(self, path: Path, ctx: int, threads: int, tok_dir: Path | None = None, *,
                 gf: GGUFFile | None = None, arch: Arch | None = None) -> None:
        # ``gf``: the file already read (a 152k vocabulary is not free to parse twice); ``arch``: the architecture
        # to run it as (default: the file's general.architecture). Its hparams are read back through the same key
        # table the converter writes with.
        self.gf = gf if gf is not None else read_gguf(path)
        if arch is None:
            name = self.gf.kv.get("general.architecture")
            if not isinstance(name, str):
                raise InputError(f"{path}: general.architecture is {name!r}; the reference forward pass needs it")
            arch = get_arch(name)
        self.hp = Hparams.from_config(config_from_gguf(self.gf, arch), arch)
        self.n_vocab = self.hp.n_vocab
        self.add_bos = bool(self.gf.kv.get("tokenizer.ggml.add_bos_token", False))
        self.bos = int(self.gf.kv.get("tokenizer.ggml.bos_token_id", 0))
        self.n_ctx = ctx
        self.path = path
        self.tok_dir = tok_dir

    def tokenize(self, text: str) -> list[int]:
        """The checkpoint's tokenizer.json splits the text, plus the BOS the GGUF asks for."""
        dirs = ([self.tok_dir] if self.tok_dir else []) + [self.path.parent, self.path.parent.parent]
        for cand in (d / "tokenizer.json" for d in dirs):
            if cand.is_file():
                ids = tokenizer_json_ids(cand, text)
                return [self.bos] + ids if self.add_bos else ids
        raise InputError(f"{self.path}: the numpy fallback needs a tokenizer.json beside the GGUF "
                         "(or llama-cpp-python)")

    def sequence_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (len(tokens), n_vocab) float32 of ``tokens`` as given (verify's every-position comparison).

        Raises what :func:`~l1quant.evaluate.forward.decoder_logits` raises (a missing tensor, unsupported rope
        scaling)."""
        return decoder_logits(lambda n: self.gf.read_tensor_f32(self.gf.tensor(n)), self.hp, list(tokens))

    def chunk_logits(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """See :class:`LogitSource`."""
        toks = list(tokens)
        if self.add_bos:
            toks[0] = self.bos
        return self.sequence_logits(toks)[first:]

    def close(self) -> None:
        """Nothing to free."""


def open_logits(path: Path, ctx: int, threads: int, runtime: str = "auto", vocab_only: bool = False,
                tok_dir: Path | None = None, no_repack: bool = False) -> LlamaCppLogits | NumpyLogits:
    """llama.cpp when ``runtime`` is ``llama.cpp`` or ``auto`` with llama-cpp-python importable, else numpy.

    ``vocab_only``: llama.cpp loads only the vocabulary (for :meth:`LlamaCppLogits.tokenize`); ``tok_dir``: where
    the numpy fallback finds tokenizer.json (:meth:`NumpyLogits.tokenize`)."""
    if runtime == "numpy" or (runtime == "auto" and not available()):
        return NumpyLogits(path, ctx, threads, tok_dir)
    return LlamaCppLogits(path, ctx, threads, vocab_only, no_repack)

"""Logit sources: where logits come from, behind one interface (:class:`LogitSource`).

* :class:`LlamaCppLogits`: the GGUF in the llama.cpp runtime (:mod:`l1quant.runtime`), activations quantized as
  llama.cpp quantizes them: what llama-perplexity measures;
* :class:`NumpyLogits`: the reference forward pass (:mod:`l1quant.evaluate.forward`) over the GGUF's dequantized
  weights: the weights' quantization error only.

Tokens come from the source's own tokenizer: llama.cpp's vocabulary for llama.cpp, a checkpoint's
``tokenizer.json`` for numpy (:func:`tokenizer_json_ids` for verify; :class:`NumpyLogits` loads it once).
compare tokenizes its text as it streams (:func:`tokenize_stream`): only the ids its chunks use, with the whole
text's ids.

Example:
    >>> src = open_logits(Path("m-Q8_0.gguf"), ctx=128, threads=2)      # doctest: +SKIP
    >>> src.chunk_logits(src.tokenize("Some text ...")[:128], 64).shape  # doctest: +SKIP
    (64, 151936)
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from l1quant.arch import Arch, get_arch
from l1quant.arch.from_gguf import check_complete_model, config_from_gguf
from l1quant.conversion.vocab import tokenizer_from_text
from l1quant.errors import InputError, NotImplementedInputError, TokenizerError, open_regular, read_text
from l1quant.evaluate.forward import Hparams, check_supported, decoder_logits
from l1quant.gguf.reader import GGUFFile, read_gguf
from l1quant.runtime import Model, available, extra_bufts

__all__ = ["DEFAULT_UBATCH", "LlamaCppLogits", "LogitSource", "NumpyLogits", "open_logits", "safe_pieces",
           "text_blocks", "tokenize_stream", "tokenizer_json_ids"]

#: llama-perplexity's default physical batch (``-ub``).
DEFAULT_UBATCH = 512


class LogitSource(Protocol):
    """What an evaluation needs from a model: its vocabulary size, its tokenizer and the logits of a chunk."""

    weight_only: bool
    n_vocab: int
    add_bos: bool
    add_eos: bool
    bos: int
    eos: int

    # read-only here: LlamaCppLogits sets an attribute, NumpyLogits computes a property
    @property
    def streamable(self) -> bool:
        """Whether tokenizing pieces cut by :func:`safe_pieces` gives the whole text's ids (a byte-level BPE)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The text's tokens, with the BOS the vocabulary asks for."""
        ...

    def tokenize_piece(self, text: str) -> list[int]:
        """The ids of ``text`` alone, no BOS/EOS added (special-token text is not parsed)."""
        ...

    def chunk_logits(self, tokens: Sequence[int] | np.ndarray, first: int) -> np.ndarray:
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


#: llama.h's ``LLAMA_VOCAB_TYPE_BPE``: GPT-2 style byte-level BPE (Qwen2, Qwen3, Llama 3 vocabularies).
_LLAMA_VOCAB_TYPE_BPE = 2
#: ``tokenizer.ggml.pre`` values whose pre-tokenizer regex (llama-vocab.cpp: LLAMA_VOCAB_PRE_TYPE_LLAMA3, _QWEN2,
#: _QWEN35) matches newline runs with ``\s*[\r\n]+`` before any lookahead alternative, so the cuts of
#: :func:`safe_pieces` are word boundaries. (GPT-2's regex is not among them: its ``\s+(?!\S)`` looks past a
#: cut.) Other vocabularies are tokenized whole, as before.
STREAMABLE_PRE = frozenset({"qwen2", "deepseek-r1-qwen", "qwen35", "llama-bpe", "llama3", "llama-v3"})


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
        self.add_eos = self.model.add_eos
        self.eos = self.model.eos
        self.streamable = (self.model.vocab_type == _LLAMA_VOCAB_TYPE_BPE
                           and read_gguf(path).kv.get("tokenizer.ggml.pre") in STREAMABLE_PRE)
        self.n_ctx = ctx

    def tokenize(self, text: str) -> list[int]:
        """``common_tokenize(ctx, text, add_special=true)`` (no special-token parsing)."""
        return self.model.tokenize(text, add_bos=True, special=False)

    def tokenize_piece(self, text: str) -> list[int]:
        """``llama_tokenize`` without specials: llama.cpp's BPE adds BOS/EOS around the fragments only."""
        return self.model.tokenize(text, add_bos=False, special=False)

    def chunk_logits(self, tokens: Sequence[int] | np.ndarray, first: int) -> np.ndarray:
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

    ``tok_dir``: where the checkpoint's tokenizer.json is (else beside the GGUF or a folder up). ``whole``: the
    file is to be evaluated, so it must hold every tensor its hparams imply
    (:func:`~l1quant.arch.from_gguf.check_complete_model`) and a rope scaling the forward pass implements; each is
    refused here in one line naming the GGUF, before any work (else a vocab-only base failed in the middle of
    compare with "reference forward: tensor ... is missing", naming no file)."""

    weight_only = True

    def __init__(self, path: Path, ctx: int, threads: int, tok_dir: Path | None = None, *,
                 gf: GGUFFile | None = None, arch: Arch | None = None, whole: bool = False) -> None:
        # ``gf``: the file already read (a 152k vocabulary is not free to parse twice); ``arch``: the architecture
        # to run it as (default: the file's general.architecture). Its hparams are read back through the same key
        # table the converter writes with.
        self.gf = gf if gf is not None else read_gguf(path)
        if arch is None:
            name = self.gf.kv.get("general.architecture")
            if not isinstance(name, str):
                raise InputError(f"{path}: general.architecture is {name!r}; the reference forward pass needs it")
            arch = get_arch(name)
        if whole:
            check_complete_model(self.gf)
        self.hp = Hparams.from_config(config_from_gguf(self.gf, arch), arch)
        if whole:
            try:
                check_supported(self.hp)
            except NotImplementedInputError:
                raise NotImplementedInputError(
                    f"{path}: rope scaling type {self.hp.rope_scaling_type!r} is not implemented by the numpy "
                    "reference forward pass (supported: none, linear, llama3); --runtime llama.cpp implements it"
                ) from None
        self.n_vocab = self.hp.n_vocab
        self.add_bos = bool(self.gf.kv.get("tokenizer.ggml.add_bos_token", False))
        self.bos = int(self.gf.kv.get("tokenizer.ggml.bos_token_id", 0))
        self.add_eos = False  # tokenize() never added one
        self.eos = int(self.gf.kv.get("tokenizer.ggml.eos_token_id", 0))
        self.n_ctx = ctx
        self.path = path
        self.tok_dir = tok_dir
        self._tok: tuple[Path, object, bool] | None = None

    def _tokenizer(self) -> tuple[Path, object, bool]:
        """(tokenizer.json path, its ``tokenizers.Tokenizer``, whether it is a byte-level BPE), loaded once."""
        if self._tok is None:
            dirs = ([self.tok_dir] if self.tok_dir else []) + [self.path.parent, self.path.parent.parent]
            for cand in (d / "tokenizer.json" for d in dirs):
                if cand.is_file():
                    text = read_text(cand, TokenizerError)
                    tok = tokenizer_from_text(cand, text)
                    self._tok = (cand, tok, _byte_level_bpe(text))
                    break
            else:
                raise InputError(f"{self.path}: the numpy fallback needs a tokenizer.json beside the GGUF "
                                 "(or llama-cpp-python)")
        return self._tok

    @property
    def streamable(self) -> bool:
        """Whether the checkpoint's tokenizer is a byte-level BPE (pieces cut by :func:`safe_pieces` are safe)."""
        return self._tokenizer()[2]

    def tokenize_piece(self, text: str) -> list[int]:
        """The checkpoint's tokenizer.json ids of ``text`` (no BOS)."""
        return list(self._tokenizer()[1].encode(text, add_special_tokens=False).ids)  # type: ignore[attr-defined]

    def tokenize(self, text: str) -> list[int]:
        """The checkpoint's tokenizer.json splits the text, plus the BOS the GGUF asks for."""
        ids = self.tokenize_piece(text)
        return [self.bos] + ids if self.add_bos else ids

    def sequence_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (len(tokens), n_vocab) float32 of ``tokens`` as given (verify's every-position comparison).

        Raises what :func:`~l1quant.evaluate.forward.decoder_logits` raises (a missing tensor, unsupported rope
        scaling)."""
        return decoder_logits(lambda n: self.gf.read_tensor_f32(self.gf.tensor(n)), self.hp, list(tokens))

    def chunk_logits(self, tokens: Sequence[int] | np.ndarray, first: int) -> np.ndarray:
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
        return NumpyLogits(path, ctx, threads, tok_dir, whole=not vocab_only)
    return LlamaCppLogits(path, ctx, threads, vocab_only, no_repack)


def _byte_level_bpe(tokenizer_json: str) -> bool:
    """A tokenizer.json whose model is a byte-level BPE with no normalizer but NFC, split by a regex that matches newline
    runs with ``\\s*[\\r\\n]+`` (Qwen2's, Llama 3's): it splits at the boundaries :func:`safe_pieces` cuts at."""
    try:
        d = json.loads(tokenizer_json)
    except ValueError:
        return False
    steps = json.dumps([d.get("pre_tokenizer"), d.get("decoder")])
    return (isinstance(d.get("model"), dict) and d["model"].get("type") == "BPE"
            and d.get("normalizer") in (None, {"type": "NFC"})  # NFC composes nothing across a space or newline
            and "Metaspace" not in steps and "ByteLevel" in steps and r"\\s*[\\r\\n]+" in steps)


#: A newline followed by a letter, or a space between two letters: places where the pre-tokenizer regexes of the
#: GPT-2, Llama 3 and Qwen2 byte-level BPE vocabularies (llama.cpp's ``unicode_regex_split`` and the tokenizers
#: library alike) always end one word and start the next, whatever precedes: no alternative matches a newline
#: and then a letter (``[^\r\n\p{L}\p{N}]?\p{L}+`` excludes it; ``\s*[\r\n]+`` stops at the letter), and a
#: letter run ends at a space, which starts the next word ``' ?\p{L}+'``. BPE merges stay inside words, so the
#: ids of the pieces, concatenated, are the ids of the whole text (tests/test_reliability_compare.py proves it on
#: the four vocabularies in tests/data).
_SAFE_CUT = re.compile(r"\n(?=[^\W\d_])|(?<=[^\W\d_]) (?=[^\W\d_])")


def _last_safe_cut(buf: str, start: int) -> int:
    """The last safe cut position in ``buf[start:]`` (0 for none); letters checked with ``str.isalpha``."""
    cut = 0
    for m in _SAFE_CUT.finditer(buf, max(start, 1)):
        i = m.start() if buf[m.start()] == " " else m.end()
        after = buf[i + 1] if buf[i] == " " else buf[i]
        if after.isalpha() and (buf[i] != " " or buf[i - 1].isalpha()):
            cut = i
    return cut


def safe_pieces(blocks: Iterable[str], first: int = 64 << 10, largest: int = 1 << 20) -> Iterator[str]:
    """Cut a text given as ``blocks`` into pieces at safe boundaries (see ``_SAFE_CUT``): the first about
    ``first`` characters, each next twice the last, up to ``largest``. A text with no safe boundary (60 MB of
    digits) comes out as one piece.

    Example:
        >>> [len(p) for p in safe_pieces(["word " * 10], first=12, largest=12)]
        [9, 10, 10, 10, 11]
    """
    buf = ""
    scanned = 0  # safe cuts before this index were looked for already (no rescanning: linear in the text)
    want = first
    for block in blocks:
        buf += block
        while len(buf) >= want:
            cut = _last_safe_cut(buf[:want], scanned) or _last_safe_cut(buf, scanned)
            if not cut:
                scanned = max(0, len(buf) - 2)
                break
            yield buf[:cut]
            buf, scanned, want = buf[cut:], 0, min(2 * want, largest)
    if buf:
        yield buf


def text_blocks(path: Path, max_bytes: int, block: int = 1 << 20) -> Iterator[str]:
    """The UTF-8 text of regular file ``path``, ``block`` bytes at a time (a FIFO, device or folder, more than
    ``max_bytes`` bytes, or bytes that are not UTF-8: :class:`~l1quant.errors.InputError` naming the file)."""
    fd = open_regular(path, InputError, max_bytes=max_bytes)
    dec = codecs.getincrementaldecoder("utf-8")()
    done = 0
    try:
        while True:
            try:
                b = os.read(fd, min(block, max_bytes + 1 - done))
            except OSError as e:
                raise InputError(f"{path}: cannot read: {e.strerror or e}") from e
            done += len(b)
            if done > max_bytes:
                raise InputError(f"{path}: more than {max_bytes} bytes (grew while being read?)")
            try:
                text = dec.decode(b, final=not b)
            except UnicodeDecodeError as e:
                raise InputError(f"{path}: not UTF-8 text: {str(e)[:120]} (near byte {done - len(b) + e.start})") from None
            if text:
                yield text
            if not b:
                return
    finally:
        os.close(fd)


def tokenize_stream(src: LogitSource, blocks: Iterable[str], need: int | None) -> np.ndarray:
    """The text's ids as ``src.tokenize`` gives the whole text, (n,) int32, tokenizing only until ``need`` ids
    are there (None: all): llama-perplexity tokenizes the whole text, but chunk ``i`` uses only ids
    ``i * ctx .. (i + 1) * ctx``, so the first ``need`` ids are all the chunks asked for can use.

    A byte-level BPE (``src.streamable``) is tokenized piece by piece (:func:`safe_pieces`): memory is one piece
    of text and the int32 ids, never a list of Python ints for a 60 MB text. Another tokenizer gets the whole
    text in one call (what the file-size cap bounds)."""
    if not src.streamable:
        return np.asarray(src.tokenize("".join(blocks)), dtype=np.int32)
    parts: list[np.ndarray] = [np.asarray([src.bos] if src.add_bos else [], dtype=np.int32)]
    n = parts[0].size
    ended = True
    for piece in safe_pieces(blocks):
        ids = np.asarray(src.tokenize_piece(piece), dtype=np.int32)
        parts.append(ids)
        n += ids.size
        if need is not None and n >= need:
            ended = False
            break
    if ended and src.add_eos:
        parts.append(np.asarray([src.eos], dtype=np.int32))
    return np.concatenate(parts)

"""A GGUF read back through its architecture's description: the config its hparams imply, and whether it holds
exactly the tensors those imply.

This lives beside the descriptions because it is the descriptions' own key table read in reverse
(:meth:`l1quant.arch.Arch.config_from_kv`); verify, the forward pass over a GGUF and ``quantize``'s input check
(:func:`check_complete_model`) all use it.

``convert`` refuses a checkpoint that lacks a tensor, has an extra or misshapen one, or whose config disagrees
with its tensors (:meth:`l1quant.arch.Arch.expected_tensors`); :func:`check_complete_model` is the same rule for a
GGUF: the hparam keys become a config (:func:`config_from_gguf`, which also bounds ``block_count`` by the tensors
present), the config says which tensors must exist and their shapes (:meth:`l1quant.arch.Arch.file_tensors`), and
the file must hold exactly those. One part of a split GGUF (``split.count`` > 1) is refused: the other parts hold
the rest of the model.

Example:
    >>> from l1quant.gguf.reader import read_gguf
    >>> check_complete_model(read_gguf("m-F16-00001-of-00002.gguf"))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    l1quant.errors.InputError: m-F16-00001-of-00002.gguf: part 1 of a 2-part split GGUF ...
"""

from __future__ import annotations

import gguf

from l1quant.arch import Arch, get_arch
from l1quant.errors import ConfigError, InputError, clip
from l1quant.gguf.reader import GGUFFile
from l1quant.source.config import ModelConfig

__all__ = ["check_complete_model", "config_from_gguf"]

_TK = gguf.Keys.Tokenizer


def config_from_gguf(gf: GGUFFile, arch: Arch) -> ModelConfig:
    """The :class:`ModelConfig` a GGUF's hparams imply, read back through the architecture's own key table
    (:meth:`~l1quant.arch.Arch.config_from_kv`, the rows convert writes with): vocab size from ``token_embd`` rows,
    else the token list; tied embeddings when there is no ``output.weight``. The arch table then says which
    tensors must exist, and the forward pass runs the file from it.

    Raises :class:`ConfigError` (naming GGUF keys) when a required key is missing, mistyped or inconsistent.

    Example:
        >>> cfg = config_from_gguf(read_gguf("model.gguf"), get_arch("qwen2"))   # doctest: +SKIP
        >>> cfg.num_hidden_layers, cfg.head_dim                                  # doctest: +SKIP
        (28, 128)
    """
    kv, a = gf.kv, arch.name
    d = arch.config_from_kv(kv, str(gf.path))
    n_embd, n_head, n_kv = d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"]
    for key, v in ((gguf.Keys.Attention.HEAD_COUNT, n_head), (gguf.Keys.Attention.HEAD_COUNT_KV, n_kv)):
        if v <= 0:
            raise ConfigError(f"{gf.path}: {key.format(arch=a)} is {v}, expected a positive integer")
    if d.get("head_dim") is None and n_embd % n_head:
        raise ConfigError(f"{gf.path}: {a}.attention.head_count={n_head} does not divide "
                          f"{a}.embedding_length={n_embd}")
    if n_head % n_kv:
        raise ConfigError(f"{gf.path}: {a}.attention.head_count_kv={n_kv} does not divide "
                          f"{a}.attention.head_count={n_head}")
    n_layer = d["num_hidden_layers"]
    if isinstance(n_layer, int) and n_layer > max(len(gf.tensors), 1):
        # every block has several tensors: a larger count is not this file's, and trusting it would build
        # n_layer x (tensors per block) expected names (block_count 10**6: seconds and gigabytes)
        raise ConfigError(f"{gf.path}: {a}.block_count is {n_layer}, but the file has only {len(gf.tensors)} "
                          "tensors (each block has several)")
    names = {t.name for t in gf.tensors}
    emb = next((t for t in gf.tensors if t.name == "token_embd.weight"), None)
    tokens = kv.get(_TK.LIST)
    if emb is not None and len(emb.shape) == 2:
        n_vocab = emb.shape[1]
    elif isinstance(tokens, list) and tokens:
        n_vocab = len(tokens)
    else:
        raise ConfigError(f"{gf.path}: cannot tell the vocabulary size (no token_embd.weight, no {_TK.LIST})")
    if d.get("vocab_size", n_vocab) != n_vocab:  # an architecture that writes {arch}.vocab_size (llama)
        raise ConfigError(f"{gf.path}: {a}.vocab_size={d['vocab_size']} but the vocabulary has {n_vocab} entries")
    d.update(architectures=[arch.hf_architectures[0]], vocab_size=n_vocab,
             tie_word_embeddings="output.weight" not in names)
    return ModelConfig.from_dict(d, source=f"{gf.path} (GGUF hparams)", arch_defaults=False)


_SPLIT_COUNT = "split.count"  # llama-gguf-split's keys (LLM_KV_SPLIT_COUNT, LLM_KV_SPLIT_NO)
_SPLIT_NO = "split.no"


def check_complete_model(gf: GGUFFile) -> ModelConfig:
    """Refuse ``gf`` unless it holds exactly the tensors its architecture and hparams imply; return the config.

    Raises :class:`~l1quant.errors.InputError` (one line naming the file and the first fault, with the number of
    others) for: one part of a split GGUF (llama-gguf-split's ``split.count`` > 1); hparams that do not read back
    as a config (a missing key, ``block_count`` larger than the tensors present); a missing tensor, one the
    architecture does not have (``foo.weight``, a block past ``block_count``), or one of another shape.

    Example:
        >>> check_complete_model(read_gguf("L1-Qwen-1.5B-Max-F16.gguf")).num_hidden_layers  # doctest: +SKIP
        28
    """
    count = gf.kv.get(_SPLIT_COUNT)
    if count is not None and count != 1:
        no = gf.kv.get(_SPLIT_NO)
        part = f"part {no + 1} of a {count}-part" if isinstance(no, int) and isinstance(count, int) else \
            f"{_SPLIT_COUNT} is {clip(count)}: a part of a"
        raise InputError(f"{gf.path}: {part} split GGUF; merge the parts first (llama-gguf-split --merge) and "
                         "quantize the merged file")
    arch = get_arch(str(gf.kv.get(gguf.Keys.General.ARCHITECTURE)))
    cfg = config_from_gguf(gf, arch)
    names = [t.name for t in gf.tensors]
    expected = arch.file_tensors(cfg, frozenset(names))
    by_name = {t.name: t for t in gf.tensors}
    problems = [f"tensor {n!r} is missing" for n in expected if n not in by_name]
    problems += [f"tensor {clip(n)} is not part of a {arch.name} model with {cfg.num_hidden_layers} blocks"
                 for n in names if n not in expected]
    for n, hf_shape in expected.items():
        t = by_name.get(n)
        if t is not None and t.shape != tuple(reversed(hf_shape)):
            problems.append(f"tensor {n!r} has shape {list(t.shape)}, the hparams imply "
                            f"{list(reversed(hf_shape))} (ggml order)")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{gf.path}: not a whole {arch.name} model: {problems[0]}{more}")
    return cfg

"""Is a GGUF a whole model? The check ``quantize`` runs on its input before planning anything.

``convert`` refuses a checkpoint that lacks a tensor, has an extra or misshapen one, or whose config disagrees
with its tensors (:meth:`l1quant.arch.Arch.expected_tensors`); this is the same rule for a GGUF, read through the
same architecture description: the hparam keys become a config (:func:`l1quant.check.structure.config_from_gguf`,
which also bounds ``block_count`` by the tensors present), the config says which tensors must exist and their
shapes (:meth:`l1quant.arch.Arch.file_tensors`), and the file must hold exactly those. One part of a split GGUF
(``split.count`` > 1) is refused: the other parts hold the rest of the model.

Example:
    >>> from l1quant.gguf.reader import read_gguf
    >>> check_complete_model(read_gguf("m-F16-00001-of-00002.gguf"))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    l1quant.errors.InputError: m-F16-00001-of-00002.gguf: part 1 of a 2-part split GGUF ...
"""

from __future__ import annotations

import gguf

from l1quant.arch import get_arch
from l1quant.check.structure import config_from_gguf
from l1quant.errors import InputError, clip
from l1quant.gguf.reader import GGUFFile
from l1quant.source.config import ModelConfig

__all__ = ["check_complete_model"]

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

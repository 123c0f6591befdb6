"""Architecture tables: everything model-specific a conversion needs, as data.

An :class:`Arch` says which Hugging Face architectures it covers, how HF tensor names map to GGUF names (via
gguf's own tensor-name map), which config values become which GGUF keys with which value types (in the
reference converter's order), and which tensors with which shapes a complete checkpoint must have. Adding an
architecture means adding one table module and listing it in ``_TABLES``.

Example:
    >>> arch = get_arch("Qwen2ForCausalLM")
    >>> arch.name
    'qwen2'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf

from l1quant.errors import ConfigError
from l1quant.source.config import ModelConfig

#: A KV row: (key template with ``{arch}``, getter from config -> value or None to omit, GGUF value type).
KeyRow = tuple[str, Callable[[ModelConfig], Any], gguf.GGUFValueType]


@dataclass(frozen=True)
class Arch:
    """One architecture's conversion table.

    ``hparam_rows`` are written in order after the general/naming keys; a getter returning None omits its key.
    ``expected_tensors(cfg)`` gives every GGUF tensor name a complete checkpoint yields, with its source (HF,
    row-major) shape. ``skip_suffixes`` are HF tensors that are dropped silently (e.g. rotary caches).
    ``f32_suffixes`` are GGUF names that always stay F32 (norms), beside the generic rules in plan.py.
    """

    name: str
    model_arch: gguf.MODEL_ARCH
    hf_architectures: tuple[str, ...]
    hparam_rows: tuple[KeyRow, ...]
    expected_tensors: Callable[[ModelConfig], dict[str, tuple[int, ...]]]
    skip_suffixes: tuple[str, ...] = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
    f32_suffixes: tuple[str, ...] = ("_norm.weight",)

    def tensor_name_map(self, n_blocks: int) -> gguf.TensorNameMap:
        """gguf's HF -> GGUF tensor-name map for this architecture (we use it rather than copy its tables)."""
        return gguf.get_tensor_name_map(self.model_arch, n_blocks)

    def kv_rows(self, cfg: ModelConfig) -> list[tuple[str, Any, gguf.GGUFValueType]]:
        """The (key, value, type) rows for ``cfg``, in order, omitted keys dropped.

        Example:
            >>> [k for k, _, _ in get_arch("qwen2").kv_rows(cfg)][:2]  # doctest: +SKIP
            ['qwen2.block_count', 'qwen2.context_length']
        """
        out = []
        for key, get, vtype in self.hparam_rows:
            v = get(cfg)
            if v is not None:
                out.append((key.format(arch=self.name), v, vtype))
        return out


_TABLES = ("qwen2",)


def all_arches() -> list[Arch]:
    """Every registered architecture table."""
    return [importlib.import_module(f"{__name__}.{m}").ARCH for m in _TABLES]


def get_arch(name: str) -> Arch:
    """Find the table for an HF architecture (``Qwen2ForCausalLM``) or a GGUF arch name (``qwen2``).

    Example:
        >>> get_arch("qwen2").hf_architectures
        ('Qwen2ForCausalLM',)
    """
    for a in all_arches():
        if name == a.name or name in a.hf_architectures:
            return a
    known = ", ".join(h for a in all_arches() for h in a.hf_architectures)
    raise ConfigError(f"config.json: architecture {name!r} is not supported (supported: {known})")

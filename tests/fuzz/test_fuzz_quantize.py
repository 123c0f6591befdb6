"""Property fuzz of ``quantize``'s input: a mutated whole-model GGUF is quantized, or refused with one
:class:`~l1quant.errors.L1QuantError` line and no output, within the same per-input time and memory budget as the
reader's fuzz (fuzzkit.Budget). Never another exception, never a partial or unreadable output.

The seed is the tiny toy-vocabulary qwen2 checkpoint converted to F16 (a few KB of header, so each example is a
full read-check-plan-quantize in milliseconds). ``L1QUANT_FUZZ_EXAMPLES`` examples run in CI (~5 s). Failing inputs
are saved to ``corpus_quantize/`` and replayed by ``test_quantize_corpus_replay``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import l1quant
from l1quant.errors import L1QuantError
from l1quant.gguf.reader import read_gguf

sys.path.insert(0, str(Path(__file__).parent))
from fuzzkit import EXAMPLES, Budget, CrashCorpus, assert_one_line, scratch_dir
from gguf_builders import field_offsets
from test_fuzz_gguf import mutate

CRASHES = CrashCorpus(Path(__file__).parent / "corpus_quantize")
_TMP = scratch_dir("l1quant-fuzz-quantize-")
_SEED: list[tuple[bytes, list[int], list[int]]] = []


@pytest.fixture(scope="module", autouse=True)
def seed(tiny_factory: Callable[..., Path]) -> Iterator[None]:
    p = _TMP / "seed-F16.gguf"
    model = tiny_factory("toy", vocab=352, extra_config={"bos_token_id": 0, "eos_token_id": 2})
    l1quant.convert(model, "f16", p, pre="qwen2")
    _SEED.append((p.read_bytes(), *field_offsets(str(p))))
    yield
    CRASHES.save()


def check_quantize(data: bytes, name: str = "in.gguf") -> str:
    """The property: an output that reads back with every tensor, or one line and nothing written."""
    src, out = _TMP / name, _TMP / "out.gguf"
    src.write_bytes(data)
    out.unlink(missing_ok=True)
    with Budget():
        try:
            l1quant.quantize(src, out, "q8_0", threads=1)
        except L1QuantError as e:
            assert_one_line(str(e))
            assert not out.exists(), "a refused input left an output"
            return "refused: " + type(e).__name__
    assert len(read_gguf(out).tensors) == len(read_gguf(src).tensors)
    return "accepted"


@st.composite
def mutated_model(draw: st.DrawFn) -> bytes:
    return mutate(draw, *_SEED[0])


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_model())
def test_fuzz_quantize_input(data: bytes) -> None:
    try:
        event(check_quantize(data))
    except BaseException as e:
        CRASHES.remember(e, data)
        raise


def test_quantize_seed_is_accepted() -> None:
    assert check_quantize(_SEED[0][0]) == "accepted"


def _block_count(data: bytes, n: int) -> bytes:
    """The seed with ``qwen2.block_count`` (a u32 after its key and type) set to ``n``."""
    key = b"qwen2.block_count"
    at = data.index(key) + len(key) + 4
    return data[:at] + struct.pack("<I", n) + data[at + 4:]


#: Hostile members of issue 22's kinds, built from the seed (per kind: the outcome check_quantize must report).
HOSTILE = {
    "block-count-3-for-2": (lambda d: _block_count(d, 3), "refused: InputError"),
    "block-count-1e6": (lambda d: _block_count(d, 1_000_000), "refused: ConfigError"),
    "block-count-1": (lambda d: _block_count(d, 1), "refused: InputError"),
    "data-cut-short": (lambda d: d[:-100], "refused: GGUFFormatError"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_quantize_hostile_kinds_within_budget(kind: str) -> None:
    build, expected = HOSTILE[kind]
    assert check_quantize(build(_SEED[0][0]), name=f"{kind}.gguf") == expected


@pytest.mark.parametrize("path", CRASHES.files(), ids=lambda p: p.name)
def test_quantize_corpus_replay(path: Path) -> None:
    check_quantize(path.read_bytes(), name=path.name)

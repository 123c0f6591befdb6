"""Property fuzz of ``compare``'s inputs: the base log-prob file (``--base-logits``, llama-perplexity's
``_logits_`` format, and compare's own cache entries), its ``.json`` sidecar, and the problems file of
``budget-check`` / ``compare --budgets``. Each mutated input is read (and a base file scored) or refused with one
:class:`~l1quant.errors.L1QuantError` line, within the same per-input time and memory budget as the GGUF reader's
fuzz (fuzzkit.Budget). Never another exception, never a hang or an allocation the file's size does not justify.

Seeds: a base file written by :func:`l1quant.evaluate.write_base` for a 50-token vocabulary (2 chunks of 16
tokens, a few KB), its sidecar, and ``examples/problems.jsonl``. Failing inputs are saved to ``corpus_compare/``
(prefix ``base-``, ``sidecar-`` or ``problems-`` says which reader) and replayed by ``test_compare_corpus_replay``.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from l1quant.errors import L1QuantError
from l1quant.evaluate import BaseFile, read_base_ppl, score_against_base, write_base, write_base_ppl
from l1quant.l1.budget import load_problems

sys.path.insert(0, str(Path(__file__).parent))
from fuzzkit import EXAMPLES, Budget, CrashCorpus, assert_one_line, scratch_dir
from test_fuzz_gguf import mutate

CRASHES = CrashCorpus(Path(__file__).parent / "corpus_compare")
_TMP = scratch_dir("l1quant-fuzz-compare-")
N_VOCAB, CTX, CHUNKS = 50, 16, 2
PROBLEMS = Path(__file__).resolve().parents[2] / "examples" / "problems.jsonl"


class Logits:
    """A deterministic logit source over N_VOCAB tokens (the base file's writer and the scorer need one)."""

    n_vocab = N_VOCAB

    def chunk_logits(self, toks: Any, first: int) -> np.ndarray:
        rng = np.random.default_rng(int(toks[1]) % 1000)
        return rng.standard_normal((len(toks) - first, N_VOCAB)).astype(np.float32)


def _seeds() -> dict[str, bytes]:
    base = _TMP / "seed.kld"
    if not base.exists():
        ppl = write_base(Logits(), list(range(1, CTX * CHUNKS + 1)), CTX, CHUNKS, base)
        write_base_ppl(_TMP / "seed.kld.json", ppl)
    return {"base": base.read_bytes(), "sidecar": (_TMP / "seed.kld.json").read_bytes(),
            "problems": PROBLEMS.read_bytes()}


#: Where the header's and the first tokens' 4-byte fields start (n_ctx, n_vocab, n_chunk, tokens 0..3).
_U32 = [8, 12, 16, 20, 24, 28, 32]


def check(kind: str, data: bytes, name: str = "in") -> str:
    """The property for one reader: accepted (and, for a base file, scored to the end) or one line."""
    p = _TMP / f"{name}.{kind}"
    p.write_bytes(data)
    with Budget():
        try:
            if kind == "base":
                bf = BaseFile.open(p)
                BaseFile.open(p, n_ctx=CTX, n_vocab=N_VOCAB, n_chunk=min(bf.n_chunk, CHUNKS))
                if bf.n_vocab == N_VOCAB and bf.n_ctx == CTX:
                    bf.n_chunk = min(bf.n_chunk, CHUNKS)
                    score_against_base(Logits(), bf)
            elif kind == "sidecar":
                read_base_ppl(p)
            else:
                load_problems(p)
        except L1QuantError as e:
            assert_one_line(str(e))
            assert str(p) in str(e), f"the file is not named: {e}"
            return f"{kind} refused: {type(e).__name__}"
    return f"{kind} accepted"


@st.composite
def mutated_input(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["base", "sidecar", "problems"]))
    data = _seeds()[kind]
    offsets = _U32 if kind == "base" else [0]
    return kind, mutate(draw, data, offsets[:2], offsets)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_input())
def test_fuzz_compare_inputs(case: tuple[str, bytes]) -> None:
    kind, data = case
    try:
        event(check(kind, data))
    except BaseException as e:
        CRASHES.remember(e, kind.encode() + b"\0" + data)
        raise


@pytest.fixture(scope="module", autouse=True)
def _save() -> Any:
    yield
    CRASHES.save()


@pytest.mark.parametrize("kind", ["base", "sidecar", "problems"])
def test_compare_seeds_are_accepted(kind: str) -> None:
    assert check(kind, _seeds()[kind]) == f"{kind} accepted"


def _header(data: bytes, n_ctx: int | None = None, n_vocab: int | None = None, n_chunk: int | None = None) -> bytes:
    c, v, k = struct.unpack("<Iii", data[8:20])
    return data[:8] + struct.pack("<IIi", n_ctx if n_ctx is not None else c, n_vocab if n_vocab is not None else v,
                                  n_chunk if n_chunk is not None else k) + data[20:]


#: Issue 22's members of the cached-file kind and more (per input: the outcome check must report).
HOSTILE = {
    "base-n_ctx-2^31": ("base", lambda d: _header(d, n_ctx=2**31), "base refused: InputError"),
    "base-n_chunk-2^31-1": ("base", lambda d: _header(d, n_chunk=2**31 - 1), "base refused: InputError"),
    "base-n_vocab-2^31-1": ("base", lambda d: _header(d, n_vocab=2**31 - 1), "base refused: InputError"),
    "base-n_ctx-odd": ("base", lambda d: _header(d, n_ctx=17), "base refused: InputError"),
    "base-cut-short": ("base", lambda d: d[:-1], "base refused: InputError"),
    "base-token-negative": ("base", lambda d: d[:20] + struct.pack("<i", -1) + d[24:], "base refused: InputError"),
    "sidecar-cut-short": ("sidecar", lambda d: d[:9], "sidecar refused: InputError"),
    "sidecar-ppl-inf": ("sidecar", lambda d: b'{"ppl": [Infinity, 0]}', "sidecar refused: InputError"),
    "sidecar-nested": ("sidecar", lambda d: b"[" * 3000 + b"]" * 3000, "sidecar refused: InputError"),
    "problems-5000-digits": ("problems", lambda d: b'{"id": "a", "question": "q", "answer": ' + b"9" * 5000 + b"}\n",
                             "problems refused: InputError"),
    "problems-nested": ("problems", lambda d: b"[" * 100_000 + b"]" * 100_000 + b"\n", "problems refused: InputError"),
    "problems-blank": ("problems", lambda d: b"\n" * (8 << 20), "problems refused: InputError"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_compare_hostile_inputs_within_budget(name: str) -> None:
    kind, build, expected = HOSTILE[name]
    assert check(kind, build(_seeds()[kind]), name=name) == expected


@pytest.mark.parametrize("path", CRASHES.files(), ids=lambda p: p.name)
def test_compare_corpus_replay(path: Path) -> None:
    kind, _, data = path.read_bytes().partition(b"\0")
    check(kind.decode(), data, name=path.name)

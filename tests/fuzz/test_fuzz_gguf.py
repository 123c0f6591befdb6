"""Property fuzz of ``read_gguf``: mutated valid files give a GGUFFile or a GGUFFormatError, never anything else,
and each parse is fast. ``L1QUANT_FUZZ_EXAMPLES`` sets the budget (default 300; see README.md in this folder).

Inputs that break the property are saved to ``corpus_gguf/`` (``crash-<sha1>``) and replayed forever after by
``test_corpus_replay``.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from l1quant.errors import GGUFFormatError
from l1quant.gguf.reader import describe, read_gguf

sys.path.insert(0, str(Path(__file__).parent))
from fuzzkit import EXAMPLES, MAX_PARSE_S, Budget, CrashCorpus, assert_one_line, scratch_dir
from gguf_builders import all_types_file, field_offsets, valid_file

CRASHES = CrashCorpus(Path(__file__).parent / "corpus_gguf")
_TMP = scratch_dir("l1quant-fuzz-")

HUGE = [0, 1, 2**8, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**60, 2**62, 2**63 - 1, 2**63,
        2**64 - 32, 2**64 - 1]


@functools.lru_cache(maxsize=1)
def seeds() -> list[tuple[bytes, list[int], list[int]]]:
    out = []
    p = _TMP / "seed-builder.gguf"
    p.write_bytes(valid_file())
    out.append((p.read_bytes(), *field_offsets(str(p))))
    p = _TMP / "seed-writer.gguf"
    data = all_types_file(str(p))
    out.append((data, *field_offsets(str(p))))
    return out


def check_input(data: bytes, name: str = "case.gguf") -> str:
    """The property: GGUFFile or GGUFFormatError, within MAX_PARSE_S; a parsed file is self-consistent."""
    p = _TMP / name
    p.write_bytes(data)
    t0 = time.perf_counter()
    try:
        with Budget():  # time and memory per input (fuzzkit.MAX_PARSE_S, MAX_PARSE_MIB)
            gf = read_gguf(p)
    except GGUFFormatError as e:
        assert_one_line(str(e))
        gf = None
        # Group refusals by what was wrong (the text after the path, numbers and names dropped).
        why = re.sub(r"\d+", "N", re.sub(r"'(?:[^'\\]|\\.)*'", "'…'", str(e)[len(str(p)) + 2:]))
        outcome = "refused: " + " ".join(why.split()[:5])
    elapsed = time.perf_counter() - t0
    assert elapsed < MAX_PARSE_S * 2, f"parse took {elapsed:.3f}s"  # x2: Budget's tracemalloc overhead
    if gf is None:
        return outcome
    # Accepted: everything the reader promises must hold, and the consumers must not trip on it.
    end = gf.data_offset
    for t in gf.tensors:
        assert t.abs_offset == gf.data_offset + t.offset and t.abs_offset % gf.alignment == 0
        assert t.abs_offset >= end and t.abs_offset + t.nbytes <= gf.file_size
        assert 1 <= len(t.shape) <= 4 and all(d >= 1 for d in t.shape)
        end = t.abs_offset + t.nbytes
        assert len(gf.read_tensor_bytes(t)) == t.nbytes
    json.dumps(describe(gf, tokens=3))
    return "accepted"


@pytest.fixture(scope="module", autouse=True)
def _save_failures() -> Iterator[None]:
    yield
    CRASHES.save()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    return mutate(draw, *seeds()[draw(st.integers(0, len(seeds()) - 1))])


def mutate(draw: st.DrawFn, data: bytes, u64s: list[int], u32s: list[int]) -> bytes:
    """1-4 mutations of the valid file ``data`` whose u64/u32 fields start at ``u64s``/``u32s`` (also used by
    test_fuzz_quantize.py on a whole model's file)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "u64", "u32", "insert", "delete", "byte"]))
        n = len(buf)
        if n == 0:
            break
        # Positions: anywhere, or near a real field (hypothesis favours small integers, i.e. the magic, otherwise).
        near_field = st.tuples(st.sampled_from(u64s + u32s), st.integers(0, 7)).map(lambda t, n=n: min(t[0] + t[1], n - 1))
        if kind == "flip":
            i = draw(st.integers(0, n - 1) | near_field)
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            buf[draw(st.integers(0, n - 1) | near_field)] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[draw(st.integers(0, n - 1) | near_field):]
        elif kind in ("u64", "u32"):
            offs = [o for o in (u64s if kind == "u64" else u32s) if o + 8 <= n] or [0]
            # Aim at a real length/count/type field most of the time, anywhere in the header otherwise.
            o = draw(st.sampled_from(offs) | st.integers(0, max(0, min(n, len(data)) - 8)))
            v = draw(st.sampled_from(HUGE) | st.integers(0, 2**64 - 1) | st.integers(0, 2 * n))
            if kind == "u64":
                buf[o:o + 8] = struct.pack("<Q", v % 2**64)
            else:
                buf[o:o + 4] = struct.pack("<I", v % 2**32)
        elif kind == "insert":
            i = draw(st.integers(0, n) | near_field)
            buf[i:i] = draw(st.binary(min_size=1, max_size=64))
        else:
            i = draw(st.integers(0, n - 1) | near_field)
            del buf[i:i + draw(st.integers(1, 64))]
    return bytes(buf)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(mutated())
def test_fuzz_read_gguf(data: bytes) -> None:
    try:
        event(check_input(data))
    except BaseException as e:
        CRASHES.remember(e, data)
        raise


def test_seeds_are_valid() -> None:
    # The fuzz starts from files the reader accepts, so mutations probe every field, not just the magic.
    for data, u64s, u32s in seeds():
        check_input(data)
        assert len(u64s) > 20 and len(u32s) > 10


@pytest.mark.parametrize("path", CRASHES.files(), ids=lambda p: p.name)
def test_corpus_replay(path: Path) -> None:
    check_input(path.read_bytes(), name=path.name)


def _kstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _hostile(kv: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + _kstr("general.architecture") + struct.pack("<I", 8) \
        + _kstr("qwen2") + kv


#: Issue 13's kinds of hostile header, built here (too large for the corpus): each is parsed within the budget and
#: accepted with bounded memory (a long numeric array stays in the file as a memory map) or refused in one line, as
#: stated per kind.
HOSTILE_KINDS = {  # kind -> (builder, the outcome check_input must report)
    "nested-empty-arrays": (lambda: _hostile(_kstr("n") + struct.pack("<IIQ", 9, 9, 300_000)
                                            + struct.pack("<IQ", 0, 0) * 300_000), "refused: key '…': more than N"),
    "nested-arrays-of-empty-arrays": (lambda: _hostile(_kstr("n") + struct.pack("<IIQ", 9, 9, 150_000)
                                                      + struct.pack("<IIQ", 9, 0, 0) * 150_000),
                                      "refused: key '…': more than N"),
    "millions-of-empty-strings": (lambda: _hostile(_kstr("s") + struct.pack("<IIQ", 9, 8, 4_000_001)
                                                  + struct.pack("<Q", 0) * 4_000_001),
                                  "refused: key '…': the header's values"),
    "long-u8-array": (lambda: _hostile(_kstr("u") + struct.pack("<IIQ", 9, 0, 3 << 20) + bytes(3 << 20)),
                      "accepted"),
    "long-bool-array": (lambda: _hostile(_kstr("b") + struct.pack("<IIQ", 9, 7, 3 << 20) + bytes(3 << 20)),
                        "accepted"),
    "long-bool-array-bad-byte": (lambda: _hostile(_kstr("b") + struct.pack("<IIQ", 9, 7, 3 << 20)
                                                 + bytes((3 << 20) - 1) + b"\x02"),
                                 "refused: key '…'[N]: bool byte is"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_KINDS))
def test_hostile_kinds_within_budget(kind: str) -> None:
    build, expected = HOSTILE_KINDS[kind]
    assert check_input(build(), name=f"{kind}.gguf") == expected

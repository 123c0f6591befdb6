"""Issue 22, reliability round three: ``compare``'s members (the rest is in tests/test_reliability3.py).

One section per kind of fault (the issue's numbering); each holds the issue's member and members we constructed.
CLI cases check the promises of tests/test_reliability.py: one ``l1quant: error:`` line, the exit status, a time
(and, for large inputs, memory) bound, nothing written. The models are the tiny R1-shaped checkpoint, evaluated
by the numpy reference forward pass (``--runtime numpy``), so nothing here needs llama-cpp-python except the
token-equality proof through llama.cpp's own tokenizer (skipped without it, failed under CI).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_reliability import REFUSE_SECONDS, one_error, run
from test_reliability3 import peak_rss_mib, rewrite

import l1quant
from l1quant.conversion.vocab import tokenizer_from_text
from l1quant.errors import InputError
from l1quant.evaluate import (MAGIC, BaseFile, compare, default_compare_text, read_base_ppl, sidecar_path)
from l1quant.evaluate.sources import LlamaCppLogits, safe_pieces, tokenize_stream
from l1quant.gguf.reader import read_gguf

DATA = Path(__file__).parent / "data"
_T = gguf.GGUFValueType
CTX, CHUNKS = 16, 2


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def models(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """m-F16.gguf and m-Q8_0.gguf of the tiny checkpoint, with its tokenizer.json beside them (numpy runtime)."""
    d = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_r1 / "tokenizer.json", d / "tokenizer.json")
    l1quant.convert(tiny_r1, "f16", d / "m-F16.gguf")
    l1quant.convert(tiny_r1, "q8_0", d / "m-Q8_0.gguf")
    return d


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """compare's cache in this test's folder (the CLI subprocesses inherit it)."""
    c = tmp_path / "cache"
    monkeypatch.setenv("L1QUANT_CACHE", str(c))
    return c


def compare_cli(model: Path, base: Path, *args: str, timeout: float = REFUSE_SECONDS) -> subprocess.CompletedProcess[str]:
    return run("compare", str(model), "--base", str(base), "--runtime", "numpy", "--ctx", str(CTX), "--chunks",
               str(CHUNKS), "-t", "1", "-q", *args, timeout=timeout)


def in_folder(tmp_path: Path, models: Path, *names: str) -> Path:
    """A fresh folder holding copies of ``names`` from ``models`` and the tokenizer.json."""
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for n in ("tokenizer.json", *names):
        shutil.copy(models / n, d / n)
    return d


def listing(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def base_header(n_ctx: int, n_vocab: int, n_chunk: int) -> bytes:
    return MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk)


# ===================================================================== 2. whole inputs materialised before a bound

#: Text that exercises every pre-tokenizer alternative near a cut: contractions, digits, punctuation runs,
#: whitespace runs, CRLF, tabs, marks and NFC-sensitive letters, CJK, Hangul jamo, emoji, special-token text.
HOSTILE_TEXT = (
    "It's 12345 o'clock; we'll see—they'd've said \"no\".\r\nNext line\tafter a tab.\n\n\n  Indented   words\n"
    "café cafe\u0301 Ångström naïve résumé ℌello ǅemal\n数学は楽しい。 한국어 \u1100\u1161 text\nemoji 🙂🙃 ok\n"
    "def f(x):\n    return x * 2  # comment\n\n<think>not special</think>\n<|im_start|>user\nq<|im_end|>\n"
    "a b c d e f\nLLM's 'quoted' words\n\u00a0nbsp\u2028sep\u2029para\x85nel\nZ\n" * 1
)


def _long_text(n_chars: int) -> str:
    base = default_compare_text() + HOSTILE_TEXT
    return (base * (n_chars // len(base) + 1))[:n_chars]


@pytest.mark.parametrize("tok", sorted(p.name for p in DATA.iterdir() if (p / "tokenizer.json").is_file()))
def test_streamed_ids_equal_the_whole_texts_tokenizers(tok: str) -> None:
    """Tokenizing piece by piece at safe boundaries gives exactly the ids of the whole text (tokenizers library,
    the numpy runtime's tokenizer), for every real vocabulary in tests/data, with pieces small enough to cut
    hundreds of times, at every kind of boundary."""
    path = DATA / tok / "tokenizer.json"
    t = tokenizer_from_text(path, path.read_text(encoding="utf-8"))
    text = default_compare_text()[:30000] + HOSTILE_TEXT * 20
    whole = t.encode(text, add_special_tokens=False).ids
    pieces = list(safe_pieces([text[i:i + 997] for i in range(0, len(text), 997)], first=40, largest=300))
    assert "".join(pieces) == text and len(pieces) > 100
    got = [i for p in pieces for i in t.encode(p, add_special_tokens=False).ids]
    assert got == whole


@pytest.mark.parametrize("tok", ["r1", "qwen2.5", "qwen3", "r1-llama"])
def test_streamed_ids_equal_llama_cpps_whole_text(tiny_factory, tmp_path: Path, tok: str,
                                                 llama_cpp: object) -> None:
    """The same through llama.cpp's tokenizer (what llama-perplexity tokenizes with, the whole text at once): the
    ids of the first N chunks are exactly llama-perplexity's."""
    model = tiny_factory(tok, hidden=32, layers=1, heads=4, kv_heads=2, ff=64)
    g = l1quant.convert(model, "f16", tmp_path / "m.gguf")
    src = LlamaCppLogits(g, 64, 1, vocab_only=True)
    try:
        assert src.streamable
        text = _long_text(300_000)  # past the first 64 KiB piece: cut at several sizes
        whole = src.tokenize(text)
        streamed = tokenize_stream(src, iter([text[i:i + 4096] for i in range(0, len(text), 4096)]), None)
        assert streamed.tolist() == whole
        small = list(safe_pieces([text[:40000]], first=40, largest=300))
        head = ([src.bos] if src.add_bos else []) + [i for p in small for i in src.tokenize_piece(p)]
        assert head == src.tokenize(text[:40000])
        need = 1000
        part = tokenize_stream(src, iter([text]), need)
        assert part.size >= need and part.size < len(whole) // 2
        assert part[:need].tolist() == whole[:need]
    finally:
        src.close()


def _words(n_bytes: int, sep: str) -> bytes:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    line = sep.join(words * 10) + "\n"
    return (line.encode() * (n_bytes // len(line) + 1))[:n_bytes]


@pytest.mark.parametrize("case", ["60MB-words", "60MB-one-line", "5MB-ordinary"])
def test_big_text_is_tokenized_only_as_far_as_the_chunks_need(models: Path, tmp_path: Path, case: str) -> None:
    """60 MB of words (under the 64 MiB cap): 13-36 s and 2.8 GB, then the Rust tokenizer aborted; an ordinary
    5 MB text took 30 s and 1.07 GB to score 128 tokens. Now the text is read and tokenized piece by piece, only
    until the chunks asked for have their tokens."""
    p = tmp_path / "big.txt"
    if case == "5MB-ordinary":
        p.write_text(_long_text(5_000_000), encoding="utf-8")
    else:
        p.write_bytes(_words(60_000_000, " "))
        if case == "60MB-one-line":
            p.write_bytes(p.read_bytes().replace(b"\n", b" "))
    code = ("from l1quant.evaluate import compare\n"
            f"r = compare([sys.argv[1]], base=sys.argv[2], text=sys.argv[3], ctx={CTX}, chunks={CHUNKS}, "
            "runtime='numpy', threads=1, base_logits=sys.argv[4])\n"
            "print(r.chunks, r.rows[1].stats['tokens'])")
    grew, stdout, dt = peak_rss_mib(code, str(models / "m-Q8_0.gguf"), str(models / "m-F16.gguf"), str(p),
                                    str(tmp_path / "b.kld"), timeout=120)
    assert stdout.split()[:2] == [str(CHUNKS), str(CHUNKS * (CTX - 1 - CTX // 2))], stdout
    assert dt < REFUSE_SECONDS, f"{dt:.1f} s"
    assert grew < 250, f"{grew} MiB"  # tokenizer and numpy imports included; the text's size is not


def test_text_ids_for_the_chunks_equal_the_whole_texts(models: Path, tmp_path: Path) -> None:
    """Acceptance: the streamed run writes the same base file (tokens and log-probs) as a whole-text one would:
    the tokens stored are the first chunks of the whole text's ids."""
    p = tmp_path / "t.txt"
    text = _long_text(200_000)
    p.write_text(text, encoding="utf-8")
    compare([models / "m-Q8_0.gguf"], base=models / "m-F16.gguf", text=p, ctx=CTX, chunks=3, runtime="numpy",
            threads=1, base_logits=tmp_path / "b.kld")
    bf = BaseFile.open(tmp_path / "b.kld")
    t = tokenizer_from_text(models / "tokenizer.json", (models / "tokenizer.json").read_text())
    whole = t.encode(text, add_special_tokens=False).ids
    add_bos = read_gguf(models / "m-F16.gguf").kv.get("tokenizer.ggml.add_bos_token", False)
    if add_bos:
        whole = [read_gguf(models / "m-F16.gguf").kv["tokenizer.ggml.bos_token_id"], *whole]
    assert bf.tokens.tolist() == whole[:3 * CTX]


@pytest.mark.parametrize("content, needle", [
    (b"ok text \xff\xfe bad", "not UTF-8 text"),
    (b"short", "tokens; llama-perplexity needs at least 32"),
])
def test_bad_or_short_text_is_one_line(models: Path, tmp_path: Path, content: bytes, needle: str) -> None:
    p = tmp_path / "t.txt"
    p.write_bytes(content)
    before = listing(tmp_path)
    one_error(compare_cli(models / "m-Q8_0.gguf", models / "m-F16.gguf", "--text", str(p)), str(p), needle)
    assert listing(tmp_path) == before


# ===================================================================== 3. cached files trusted


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("case, needle", [
    ("fifo", "not a regular file (a FIFO)"),                                               # the issue's
    ("n_ctx-2^31", "base file has 1 chunks of 2147483648 tokens; asked for"),              # the issue's
    ("n_chunk-2^31-1", "truncated base log-prob file"),                                    # the issue's
    ("n_vocab-2^31-1", "vocabulary of 2147483647 tokens; the base model has"),
    ("n_chunk-2^31-1-header-only", "truncated base log-prob file"),
    ("token-out-of-range", "a stored token id is outside the vocabulary"),
    ("folder", "is a directory"),  # click's usage error (exit 2)
    ("cut-short-sidecar", "b.kld.json: invalid JSON"),                                     # the issue's
    ("sidecar-nan", "b.kld.json: expected"),
    ("sidecar-fifo", "b.kld.json: not a regular file (a FIFO)"),
])
def test_a_given_base_logits_file_is_checked(models: Path, tmp_path: Path, case: str, needle: str) -> None:
    """compare --base-logits trusted the file: a FIFO hung; a header claiming n_ctx 2**31 gave exit 70 "array is
    too big"; n_chunk 2**31 - 1 "out of memory" naming no file; a cut-short sidecar exit 70 JSONDecodeError.
    A file the user gave is refused in one line naming it; it and its folder are untouched."""
    d = tmp_path / "given"
    d.mkdir()
    b = d / "b.kld"
    n_vocab = read_gguf(models / "m-F16.gguf").kv["qwen2.vocab_size"] if "qwen2.vocab_size" in \
        read_gguf(models / "m-F16.gguf").kv else len(read_gguf(models / "m-F16.gguf").kv["tokenizer.ggml.tokens"])
    if case in ("fifo",):
        _fifo(b)
    elif case == "folder":
        b.mkdir()
    elif case == "n_ctx-2^31":
        b.write_bytes(base_header(2**31, n_vocab, 1) + b"\0" * 4096)
    elif case == "n_chunk-2^31-1":
        b.write_bytes(base_header(CTX, n_vocab, 2**31 - 1) + b"\0" * 4096)
    elif case == "n_chunk-2^31-1-header-only":
        b.write_bytes(base_header(CTX, n_vocab, 2**31 - 1))
    elif case == "n_vocab-2^31-1":
        b.write_bytes(base_header(CTX, 2**31 - 1, CHUNKS) + b"\0" * 4096)
    else:  # a real base file first, then one part of it spoiled
        r = compare_cli(models / "m-Q8_0.gguf", models / "m-F16.gguf", "--base-logits", str(b))
        assert r.returncode == 0, r.stderr
        meta = sidecar_path(b)
        if case == "token-out-of-range":
            with open(b, "r+b") as f:
                f.seek(20 + 4 * 3)
                f.write(struct.pack("<i", n_vocab + 5))
        elif case == "cut-short-sidecar":
            meta.write_bytes(meta.read_bytes()[:7])
        elif case == "sidecar-nan":
            meta.write_text('{"ppl": [NaN, 1]}')
        else:
            meta.unlink()
            _fifo(meta)
    before = listing(d)
    t0 = time.monotonic()
    one_error(compare_cli(models / "m-Q8_0.gguf", models / "m-F16.gguf", "--base-logits", str(b)), str(b), needle,
              rc=2 if case == "folder" else 1)
    assert time.monotonic() - t0 < REFUSE_SECONDS
    assert listing(d) == before


def test_base_file_header_counts_are_bounded_by_the_file(tmp_path: Path) -> None:
    """The library reader alone (no expectations): every count is checked against the file's size first."""
    for hdr in (base_header(2**31, 10, 1), base_header(2**32 - 1, 2**31 - 1, 2**31 - 1), base_header(16, 1, 2**31 - 1)):
        p = tmp_path / "h.kld"
        p.write_bytes(hdr + b"\0" * 1000)
        with pytest.raises(InputError, match=r"h\.kld: truncated base log-prob file"):
            BaseFile.open(p)


def _cached_run(models: Path, **kw: object) -> dict:
    rep = compare([models / "m-Q8_0.gguf"], base=models / "m-F16.gguf", ctx=CTX, chunks=CHUNKS, runtime="numpy",
                  threads=1, **kw)  # type: ignore[arg-type]
    return json.loads(rep.to_json())


def _numbers(d: dict) -> list:
    return [(t["name"], t["ppl"], t["vs_base"] and t["vs_base"]["kld"]["mean"]) for t in d["types"]]


@pytest.mark.parametrize("spoil", ["cut-short-sidecar", "no-sidecar", "truncated-base", "fifo-base", "garbage-base",
                                   "other-text-tokens"])
def test_a_cache_entry_that_does_not_check_out_is_rebuilt(models: Path, cache: Path, spoil: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A cache is input: an entry that does not check out (a killed run's leftovers: a sidecar cut short, a base
    file with no sidecar; or any other damage) is one warning line and rebuilt; the numbers are the first run's."""
    first = _cached_run(models)
    (entry,) = sorted((cache / "compare").glob("base-*.kld"))
    meta = sidecar_path(entry)
    assert read_base_ppl(meta)[0] >= 1
    if spoil == "cut-short-sidecar":
        meta.write_bytes(meta.read_bytes()[:5])
    elif spoil == "no-sidecar":
        meta.unlink()
    elif spoil == "truncated-base":
        entry.write_bytes(entry.read_bytes()[:-3])
    elif spoil == "fifo-base":
        entry.unlink()
        _fifo(entry)
    elif spoil == "garbage-base":
        entry.write_bytes(b"\0" * 100)
    else:
        data = bytearray(entry.read_bytes())
        data[20:24] = struct.pack("<i", 7)
        entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="l1quant"):
        again = _cached_run(models)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry.name) in warnings[0] and "rebuilding that cache entry" in warnings[0]
    assert _numbers(again) == _numbers(first)
    assert entry.is_file() and read_base_ppl(meta) == read_base_ppl(meta)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l1quant"):
        third = _cached_run(models)  # the rebuilt entry is used as is
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert _numbers(third) == _numbers(first)


def test_a_cache_entry_warning_is_one_line_on_the_command_line(models: Path, cache: Path) -> None:
    args = ("compare", str(models / "m-Q8_0.gguf"), "--base", str(models / "m-F16.gguf"), "--runtime", "numpy",
            "--ctx", str(CTX), "--chunks", str(CHUNKS), "-t", "1", "--json")
    r = run(*args, timeout=60)
    assert r.returncode == 0, r.stderr
    (entry,) = sorted((cache / "compare").glob("base-*.kld"))
    sidecar_path(entry).write_text('{"ppl": [1.')
    r2 = run(*args, timeout=60)
    assert r2.returncode == 0, r2.stderr
    # (not `"warning" in ln`: this test's own folder name holds that word, and the cache notice names the folder)
    warn = [ln for ln in r2.stderr.splitlines() if ln.startswith("l1quant: warning: ")]
    assert len(warn) == 1 and "invalid JSON" in warn[0], r2.stderr
    assert _numbers(json.loads(r2.stdout)) == _numbers(json.loads(r.stdout))


def test_a_killed_writer_leaves_no_cache_entry(models: Path, cache: Path, tmp_path: Path) -> None:
    """SIGKILL while the base file is being written: nothing under its name (the file is published only when
    complete), so the next run computes it afresh rather than reading half a file."""
    code = ("import os, signal, sys\nimport l1quant.evaluate.basefile as bfm\nfrom l1quant.evaluate import compare\n"
            "real = bfm.pack_base_rows\n"
            "def pack(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "bfm.pack_base_rows = pack\n"
            f"compare([sys.argv[1]], base=sys.argv[2], ctx={CTX}, chunks={CHUNKS}, runtime='numpy', threads=1)\n")
    from cliutil import clean_env

    r = subprocess.run([sys.executable, "-c", code, str(models / "m-Q8_0.gguf"), str(models / "m-F16.gguf")],
                       capture_output=True, text=True, timeout=60, env=clean_env())
    assert r.returncode == -9, r.stderr
    assert [p.name for p in (cache / "compare").iterdir() if not p.name.startswith(".")] == []
    assert _cached_run(models)["types"][1]["vs_base"]["kld"]["mean"] >= 0


def test_a_folder_in_place_of_a_cache_entry_is_refused(models: Path, cache: Path) -> None:
    _cached_run(models)
    (entry,) = sorted((cache / "compare").glob("base-*.kld"))
    entry.unlink()
    entry.mkdir()
    with pytest.raises(InputError, match="a folder in place of a compare cache file"):
        _cached_run(models)


# ===================================================================== 7. the wrong file blamed


@pytest.mark.parametrize("case, needle", [
    ("vocab-only", "but the file has only 0 tensors"),                            # the issue's
    ("missing-tensor", "tensor 'blk.1.ffn_down.weight' is missing"),              # the issue's
    ("misshapen-tensor", "tensor 'blk.0.attn_k.weight' has shape"),
    ("extra-tensor", "tensor 'foo.weight' is not part of a qwen2 model"),
])
def test_an_incomplete_base_is_named(models: Path, tmp_path: Path, case: str, needle: str) -> None:
    """compare with a vocab-only base or a base missing a tensor: "reference forward: tensor ... is missing",
    naming no GGUF. Now the base is checked as quantize checks its input, before any work, and named."""
    d = in_folder(tmp_path, models, "m-Q8_0.gguf")
    base = d / "base-F16.gguf"
    f16 = models / "m-F16.gguf"
    if case == "vocab-only":
        rewrite(f16, base, drop=lambda n: True)
    elif case == "missing-tensor":
        rewrite(f16, base, drop=lambda n: n == "blk.1.ffn_down.weight")
    elif case == "misshapen-tensor":
        rewrite(f16, base, reshape={"blk.0.attn_k.weight": (16, 64)})
    else:
        rewrite(f16, base, extra={"foo.weight": np.ones(32, dtype=np.float32)})
    before = listing(d)
    line = one_error(compare_cli(d / "m-Q8_0.gguf", base), str(base), needle)
    assert "reference forward" not in line
    assert listing(d) == before


@pytest.mark.parametrize("which", ["model", "base"])
def test_another_architectures_vocabulary_is_named(models: Path, tiny_factory, tmp_path: Path, which: str) -> None:
    """A llama model against a qwen2 base blamed compare's own cache file. Now: the model file and the base."""
    llama = l1quant.convert(tiny_factory("r1-llama", hidden=32, layers=1, heads=4, kv_heads=2, ff=64), "f16",
                            tmp_path / "llama-F16.gguf")
    model, base = (llama, models / "m-F16.gguf") if which == "model" else (models / "m-Q8_0.gguf", llama)
    line = one_error(compare_cli(model, base), f"{model}: vocabulary of ", f"the base {base} has ")
    assert "cache" not in line and ".kld" not in line


# ===================================================================== 8. silent mixtures


def _tokens(g: Path) -> list[str]:
    return list(read_gguf(g).kv["tokenizer.ggml.tokens"])


@pytest.mark.parametrize("case, index", [
    ("swap-two", 0),                                                               # the issue's
    ("reverse", 0),
    ("one-token-renamed", 1000),
    ("last-two-swapped", -2),
])
def test_a_vocabulary_in_another_order_is_refused(models: Path, tmp_path: Path, case: str, index: int) -> None:
    """compare accepted two vocabularies of the same size in a different order with no word; llama-perplexity
    compares only the sizes, but a KL divergence across two token orders compares unrelated tokens: refused."""
    d = in_folder(tmp_path, models, "m-F16.gguf")
    toks = _tokens(models / "m-F16.gguf")
    if case == "swap-two":
        toks[0], toks[1] = toks[1], toks[0]
    elif case == "reverse":
        toks = toks[::-1]
    elif case == "one-token-renamed":
        toks[1000] = "zzz-not-a-token"
    else:
        toks[-1], toks[-2] = toks[-2], toks[-1]
    model = rewrite(models / "m-F16.gguf", d / "other-F16.gguf",
                    kv={"tokenizer.ggml.tokens": (toks, (_T.ARRAY, _T.STRING))})
    before = listing(d)
    want = index % len(toks)
    one_error(compare_cli(model, d / "m-F16.gguf"), f"{model}: vocabulary differs from the base",
              f"token {want} differs", "meaningless")
    assert listing(d) == before


def test_the_same_vocabulary_is_accepted(models: Path, tmp_path: Path) -> None:
    r = compare_cli(models / "m-Q8_0.gguf", models / "m-F16.gguf", "--base-logits", str(tmp_path / "b.kld"))
    assert r.returncode == 0, r.stderr
    assert "Q8_0" in r.stdout


# ===================================================================== 4. library exceptions (compare's member)


@pytest.mark.parametrize("where, scaling, needle", [
    ("base", "yarn", "rope scaling type 'yarn' is not implemented by the numpy reference forward pass"),   # issue's
    ("model", "yarn", "rope scaling type 'yarn' is not implemented by the numpy reference forward pass"),
    ("base", "longrope", "(GGUF hparams): unsupported rope scaling type 'longrope'"),
])
def test_unimplemented_rope_scaling_is_one_line(models: Path, tmp_path: Path, where: str, scaling: str,
                                                needle: str) -> None:
    """A --base declaring yarn rope scaling: NotImplementedError (exit 70). Now one line naming the GGUF, before
    any work (the numpy runtime; llama.cpp implements yarn)."""
    d = in_folder(tmp_path, models, "m-F16.gguf", "m-Q8_0.gguf")
    victim = d / "m-F16.gguf"  # as the model too: rewrite() copies F16/F32 tensors only
    spoiled = rewrite(victim, d / f"r-{where}.gguf", kv={"qwen2.rope.scaling.type": (scaling, _T.STRING),
                                                         "qwen2.rope.scaling.factor": (4.0, _T.FLOAT32),
                                                         "qwen2.rope.scaling.original_context_length":
                                                             (4096, _T.UINT32)})
    base, model = (spoiled, d / "m-Q8_0.gguf") if where == "base" else (d / "m-F16.gguf", spoiled)
    before = listing(d)
    one_error(compare_cli(model, base, "--base-logits", str(tmp_path / "b.kld")), str(spoiled), needle)
    assert listing(d) == before
    assert not (tmp_path / "b.kld").exists() or where == "model"  # the base is fine when only the model is not

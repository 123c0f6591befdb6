"""Broken checkpoints: each is refused by the real CLI with one clean line, and nothing is lost.

Every case copies a tiny valid checkpoint, breaks exactly one thing, and runs ``l1quant convert`` in a subprocess
with a pre-existing target file. The contract checked for every case:

* non-zero exit status;
* stderr is exactly one line, ``l1quant: error: ...``, naming the file/tensor/key at fault (and no traceback);
* the output folder holds only the pre-existing target, byte-identical (no temp file, no partial output);
* the input folder is byte-for-byte unchanged and has no new files.

The subprocesses run in parallel (one per core) from one module fixture, so the whole file takes well under a
minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from l1quant.kernels import _native
from l1quant.testing import make_checkpoint

DATA = Path(__file__).parent / "data"
R1_TOK = DATA / "r1-distill-tokenizer"
#: The tiny valid checkpoint every case starts from (tied: one 151936 x 32 embedding, ~10 MB).
TINY: dict[str, Any] = {"hidden": 32, "heads": 4, "kv_heads": 2, "ff": 64, "layers": 2, "tied": True}
from cliutil import PRECIOUS, TARGET, clean_env, cli, tree_hash  # tests/ is on sys.path (pytest rootdir import)
from reference import unavailable

# ---------------------------------------------------------------------------------------------- file surgery


def st_read(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path: Path, header: dict[str, Any], data: bytes) -> None:
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(len(hb).to_bytes(8, "little") + hb + data)


def edit_header(fname: str, fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A breaker that rewrites the JSON header of ``fname`` with ``fn`` and keeps the data section as is."""
    def brk(d: Path) -> None:
        header, data = st_read(d / fname)
        fn(header)
        st_write(d / fname, header, data)
    return brk


def set_value(tensor: str, index: tuple[int, ...], bits: int, fname: str = "model.safetensors") -> Callable[[Path], None]:
    """A breaker that writes one raw bf16 value (e.g. 0x7FC0 = NaN) into ``tensor`` at ``index``."""
    def brk(d: Path) -> None:
        header, data = st_read(d / fname)
        info = header[tensor]
        flat = 0
        for i, n in zip(index, info["shape"]):
            flat = flat * n + i
        at = info["data_offsets"][0] + 2 * flat
        buf = bytearray(data)
        buf[at:at + 2] = bits.to_bytes(2, "little")
        st_write(d / fname, header, bytes(buf))
    return brk


def edit_json(fname: str, fn: Callable[[Any], object]) -> Callable[[Path], None]:
    """A breaker that edits a JSON file in place with ``fn`` (its return value is ignored)."""
    def brk(d: Path) -> None:
        obj = json.loads((d / fname).read_text(encoding="utf-8"))
        fn(obj)
        (d / fname).write_text(json.dumps(obj), encoding="utf-8")
    return brk


def write_bytes(fname: str, data: bytes) -> Callable[[Path], None]:
    def brk(d: Path) -> None:
        (d / fname).write_bytes(data)
    return brk


def remove(fname: str) -> Callable[[Path], None]:
    def brk(d: Path) -> None:
        (d / fname).unlink()
    return brk


def truncate(fname: str, fraction: float) -> Callable[[Path], None]:
    def brk(d: Path) -> None:
        p = d / fname
        os.truncate(p, int(p.stat().st_size * fraction))
    return brk


def overwrite_header_len(value: int) -> Callable[[Path], None]:
    def brk(d: Path) -> None:
        p = d / "model.safetensors"
        with open(p, "r+b") as f:
            f.write(value.to_bytes(8, "little"))
    return brk


def header_garbage(d: Path) -> None:
    p = d / "model.safetensors"
    with open(p, "r+b") as f:
        f.seek(8 + 20)
        f.write(b"\x00\xff not json at all }}}")


def add_tensor(name: str, shape: list[int], dtype: str = "BF16") -> Callable[[Path], None]:
    """A breaker that appends a well-formed extra tensor (consistent offsets) to model.safetensors."""
    def brk(d: Path) -> None:
        header, data = st_read(d / "model.safetensors")
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        st_write(d / "model.safetensors", header, data + b"\x00" * n)
    return brk


def duplicate_key(d: Path) -> None:
    # json.dumps cannot write a key twice: splice a second "model.norm.weight" entry into the header text.
    header, data = st_read(d / "model.safetensors")
    entry = json.dumps(header["model.norm.weight"])
    hb = json.dumps(header)[:-1] + f', "model.norm.weight": {entry}}}'
    raw = hb.encode() + b" " * (-len(hb) % 8)
    (d / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def overlap(h: dict[str, Any]) -> None:
    # Two norms of the same size: point the second at the first's bytes.
    h["model.layers.1.input_layernorm.weight"]["data_offsets"] = list(h["model.norm.weight"]["data_offsets"])


def past_end(h: dict[str, Any]) -> None:
    b, e = h["model.norm.weight"]["data_offsets"]
    h["model.norm.weight"]["data_offsets"] = [b + 10**9, e + 10**9]


def other_pre_tokenizer(tok: dict[str, Any]) -> None:
    # Words no longer take their leading space/punctuation ("Ġword" becomes "Ġ" + "word"): a different
    # pre-tokenizer, so an unknown check-text hash. (Digit grouping would not do: Qwen has no multi-digit tokens.)
    pt = tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    new = pt["Regex"].replace("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", "\\p{L}+", 1)
    assert new != pt["Regex"]
    pt["Regex"] = new


def small_vocab(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()
    make_checkpoint(d, tokenizer_dir=R1_TOK, **{**TINY, "vocab": 151000})


def index_move(h: dict[str, Any]) -> None:
    wm = h["weight_map"]
    name = next(n for n, s in wm.items() if s.startswith("model-00001"))
    wm[name] = "model-00002-of-00002.safetensors"


# ---------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    breaker: Callable[[Path], None]
    expect: tuple[str, ...]  # substrings the error line must contain (file / tensor / key, expected vs found)
    base: str = "single"  # or "sharded"
    args: tuple[str, ...] = ()


def _pop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.__setitem__(key, value)


SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
NAN, INF = 0x7FC0, 0x7F80

CASES: list[Case] = [
    # safetensors files
    Case("truncated_safetensors", truncate("model.safetensors", 0.6), ("model.safetensors", "truncated")),
    Case("empty_safetensors", write_bytes("model.safetensors", b""), ("model.safetensors", "too short")),
    Case("header_length_huge", overwrite_header_len(2**60), ("model.safetensors", "header length 1152921504606846976")),
    Case("header_not_json", header_garbage, ("model.safetensors", "not valid JSON")),
    Case("header_duplicate_key", duplicate_key, ("model.safetensors", "'model.norm.weight' twice")),
    Case("unknown_dtype", edit_header("model.safetensors", lambda h: h["model.norm.weight"].update(dtype="Q4_K")),
         ("model.safetensors", "model.norm.weight", "unknown dtype 'Q4_K'")),
    Case("offsets_past_end", edit_header("model.safetensors", past_end),
         ("model.safetensors", "model.norm.weight", "outside the")),
    Case("overlapping_tensors", edit_header("model.safetensors", overlap), ("model.safetensors", "overlap")),
    Case("shape_dtype_size_mismatch",
         edit_header("model.safetensors", lambda h: h["model.norm.weight"].update(shape=[33])),
         ("model.norm.weight", "span 64 bytes", "needs 66")),
    Case("no_safetensors", remove("model.safetensors"), ("no model*.safetensors",)),
    # shard index
    Case("missing_shard", remove(SHARD2), ("model.safetensors.index.json", SHARD2, "missing"), base="sharded"),
    Case("tensor_not_where_indexed", edit_json("model.safetensors.index.json", index_move),
         ("model.safetensors.index.json", "index says " + SHARD2), base="sharded"),
    Case("index_lists_unknown_tensor",
         edit_json("model.safetensors.index.json",
                   lambda i: i["weight_map"].__setitem__("model.layers.0.mlp.ghost.weight", SHARD1)),
         ("model.safetensors.index.json", "model.layers.0.mlp.ghost.weight", SHARD1), base="sharded"),
    Case("index_not_json", write_bytes("model.safetensors.index.json", b'{"weight_map": {'),
         ("model.safetensors.index.json", "not valid JSON"), base="sharded"),
    Case("tensor_missing_from_index",
         edit_json("model.safetensors.index.json", lambda i: i["weight_map"].pop("model.norm.weight")),
         ("model.safetensors.index.json", "model.norm.weight", "not listed"), base="sharded"),
    # config.json
    Case("config_missing", remove("config.json"), ("config.json", "not found")),
    Case("config_not_json", write_bytes("config.json", b'{"hidden_size": 32,'), ("config.json", "invalid JSON")),
    Case("config_missing_key", edit_json("config.json", _pop("num_key_value_heads")),
         ("config.json", "missing required key 'num_key_value_heads'")),
    Case("config_non_integer", edit_json("config.json", _set("hidden_size", "32")),
         ("config.json", "hidden_size must be an integer", "'32'")),
    Case("config_zero_layers", edit_json("config.json", _set("num_hidden_layers", 0)),
         ("config.json", "num_hidden_layers must be a positive integer", "found 0")),
    Case("config_huge_layers", edit_json("config.json", _set("num_hidden_layers", 1_000_000_000)),
         ("config.json", "num_hidden_layers=1000000000", "layers 0..1 only")),
    Case("config_context_overflows_u32", edit_json("config.json", _set("max_position_embeddings", 2**40)),
         ("config.json", "max_position_embeddings", str(2**40))),
    Case("heads_dont_divide_hidden", edit_json("config.json", _set("num_attention_heads", 5)),
         ("config.json", "num_attention_heads=5 does not divide hidden_size=32")),
    Case("kv_heads_dont_divide_heads", edit_json("config.json", _set("num_key_value_heads", 3)),
         ("config.json", "num_key_value_heads=3 does not divide num_attention_heads=4")),
    Case("unsupported_architecture", edit_json("config.json", _set("architectures", ["MistralForCausalLM"])),
         ("config.json", "'MistralForCausalLM' is not supported")),
    Case("rope_factor_not_number",
         edit_json("config.json", _set("rope_scaling", {"type": "linear", "factor": "4"})),
         ("config.json", "'factor'", "'4'")),
    # tensors against the config
    Case("wrong_tensor_shape",
         edit_header("model.safetensors", lambda h: h["model.layers.0.self_attn.k_proj.weight"].update(shape=[32, 16])),
         ("model.layers.0.self_attn.k_proj.weight", "shape [32, 16]", "implies [16, 32]")),
    Case("missing_tensor", edit_header("model.safetensors", lambda h: h.pop("model.layers.1.mlp.up_proj.weight")),
         ("blk.1.ffn_up.weight", "missing")),
    Case("unexpected_tensor", add_tensor("model.layers.0.self_attn.extra_proj.weight", [4, 32]),
         ("model.layers.0.self_attn.extra_proj.weight", "cannot map")),
    Case("extra_layer_tensor", add_tensor("model.layers.7.mlp.up_proj.weight", [64, 32]),
         ("model.layers.7.mlp.up_proj.weight", "layer 7", "num_hidden_layers=2")),
    Case("int_tensor_dtype",
         edit_header("model.safetensors", lambda h: h["model.norm.weight"].update(dtype="I16")),
         ("model.norm.weight", "dtype I16", "BF16, F16, F32")),
    # tokenizer files
    Case("tokenizer_json_corrupt", truncate("tokenizer.json", 0.5), ("tokenizer.json", "cannot be parsed")),
    Case("tokenizer_json_missing", remove("tokenizer.json"), ("tokenizer.json", "not found")),
    Case("tokenizer_vocab_exceeds_config", small_vocab, ("tokenizer.json", "vocab_size=151000")),
    Case("unknown_pre_tokenizer", edit_json("tokenizer.json", other_pre_tokenizer),
         ("tokenizer.json", "unknown BPE pre-tokenizer", "--pre")),
    Case("tokenizer_config_not_json", write_bytes("tokenizer_config.json", b'{"bos_token": '),
         ("tokenizer_config.json", "invalid JSON")),
    Case("generation_config_not_json", write_bytes("generation_config.json", b'{"temperature": '),
         ("generation_config.json", "invalid JSON")),
    Case("chat_template_not_utf8", write_bytes("chat_template.jinja", b"\xff{{ messages }}"),
         ("chat_template.jinja", "not UTF-8")),
    Case("tokenizer_config_not_object", write_bytes("tokenizer_config.json", b'["bos"]'),
         ("tokenizer_config.json", "expected a JSON object")),
    Case("chat_template_bad_list", edit_json("tokenizer_config.json", lambda t: t.__setitem__("chat_template", [1])),
         ("tokenizer_config.json", "chat_template")),
    # weights found broken while streaming
    Case("nan_weight", set_value("model.layers.1.mlp.down_proj.weight", (17, 5), NAN),
         ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", "index [17, 5]", "--allow-nonfinite")),
    Case("inf_weight", set_value("model.embed_tokens.weight", (150000, 31), INF),
         ("model.embed_tokens.weight", "index [150000, 31]"), args=("--threads", "2", "--chunk-mb", "0.05")),
    Case("nan_in_norm", set_value("model.norm.weight", (3,), NAN), ("model.norm.weight", "index [3]")),
]


@dataclass
class Outcome:
    rc: int = -1
    stderr: str = ""
    stdout: str = ""
    input_before: dict[str, str] = field(default_factory=dict)
    input_after: dict[str, str] = field(default_factory=dict)
    out_files: list[str] = field(default_factory=list)
    target_bytes: bytes = b""
    setup_error: str = ""


def run_convert(model: Path, out_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli(), "convert", str(model), "--type", "q8_0", "-o", str(out_dir / TARGET), "-q",
                           *args], check=False, capture_output=True, text=True, timeout=timeout, env=clean_env())


def run_case(case: Case, bases: dict[str, Path], root: Path) -> Outcome:
    o = Outcome()
    try:
        model = root / case.id / "Tiny-Qwen2-Test"
        shutil.copytree(bases[case.base], model)
        case.breaker(model)
        out_dir = root / case.id / "out"
        out_dir.mkdir()
        (out_dir / TARGET).write_bytes(PRECIOUS)
        o.input_before = tree_hash(model)
    except Exception as e:  # noqa: BLE001 - reported by the test: one bad case must not hide the others
        o.setup_error = f"{type(e).__name__}: {e}"
        return o
    r = run_convert(model, out_dir, *case.args)
    o.rc, o.stderr, o.stdout = r.returncode, r.stderr, r.stdout
    o.input_after = tree_hash(model)
    o.out_files = sorted(os.listdir(out_dir))
    o.target_bytes = (out_dir / TARGET).read_bytes() if (out_dir / TARGET).is_file() else b""
    return o


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    return {
        "single": make_checkpoint(root / "single" / "Tiny-Qwen2-Test", tokenizer_dir=R1_TOK, **TINY),
        "sharded": make_checkpoint(root / "sharded" / "Tiny-Qwen2-Test", tokenizer_dir=R1_TOK, shards=2, **TINY),
    }


@pytest.fixture(scope="module")
def outcomes(bases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("broken")
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        futs = {c.id: pool.submit(run_case, c, bases, root) for c in CASES}
        return {k: f.result() for k, f in futs.items()}


def test_case_ids_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_checkpoint_refused_cleanly(case: Case, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[case.id]
    assert not o.setup_error, o.setup_error
    assert o.rc != 0, f"accepted a broken checkpoint; stdout={o.stdout!r}"
    assert "Traceback" not in o.stderr
    lines = o.stderr.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {o.stderr!r}"
    line = lines[0]
    assert line.startswith("l1quant: error: "), line
    for s in case.expect:
        assert s in line, f"{s!r} not in {line!r}"
    assert o.out_files == [TARGET], f"left beside the target: {o.out_files}"
    assert o.target_bytes == PRECIOUS, "the pre-existing target was modified"
    assert o.input_after == o.input_before, "the input folder changed"


def test_valid_checkpoint_converts(bases: dict[str, Path], tmp_path: Path) -> None:
    """The control: the unbroken checkpoints convert, replacing the target, with nothing else left behind."""
    for kind, model in bases.items():
        out = tmp_path / kind
        out.mkdir()
        (out / TARGET).write_bytes(PRECIOUS)
        before = tree_hash(model)
        r = run_convert(model, out)
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert sorted(os.listdir(out)) == [TARGET]
        assert (out / TARGET).read_bytes()[:4] == b"GGUF"
        assert tree_hash(model) == before


def test_pre_flag_fixes_unknown_pre_tokenizer(bases: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "Tiny-Qwen2-Test"
    shutil.copytree(bases["single"], model)
    edit_json("tokenizer.json", other_pre_tokenizer)(model)
    out = tmp_path / "out"
    out.mkdir()
    r = run_convert(model, out, "--pre", "deepseek-r1-qwen")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == [TARGET]
    from l1quant.gguf.reader import read_gguf

    gf = read_gguf(out / TARGET)
    assert gf.kv["tokenizer.ggml.pre"] == "deepseek-r1-qwen"


def test_pre_flag_contradicting_the_hash_warns(bases: dict[str, Path], tmp_path: Path) -> None:
    # The R1 tokenizer's check-text hash says deepseek-r1-qwen; --pre qwen2 is written as asked, never silently.
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([*cli(), "convert", str(bases["single"]), "--type", "f32", "-o", str(out / TARGET),
                        "--pre", "qwen2"], check=False, capture_output=True, text=True, timeout=120, env=clean_env())
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "--pre" in line]
    assert len(warnings) == 1 and warnings[0].startswith("l1quant: warning: ")
    assert "--pre qwen2 contradicts" in warnings[0] and "(deepseek-r1-qwen," in warnings[0]
    from l1quant.gguf.reader import read_gguf

    assert read_gguf(out / TARGET).kv["tokenizer.ggml.pre"] == "qwen2"
    # Agreeing with the hash is silent.
    r = subprocess.run([*cli(), "convert", str(bases["single"]), "--type", "f32", "-o", str(out / TARGET),
                        "--pre", "deepseek-r1-qwen"], check=False, capture_output=True, text=True, timeout=120,
                       env=clean_env())
    assert r.returncode == 0 and "contradicts" not in r.stderr


def test_allow_nonfinite_converts_nan(bases: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "Tiny-Qwen2-Test"
    shutil.copytree(bases["single"], model)
    set_value("model.layers.1.mlp.down_proj.weight", (17, 5), NAN)(model)
    out = tmp_path / "out"
    out.mkdir()
    r = run_convert(model, out, "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == [TARGET]


@pytest.mark.parametrize("text, why", [(b'{"general.author": ' + b"9" * 5000 + b"}", "invalid JSON"),
                                       (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
                                       (b'{"general.author": "\xff"}', "invalid JSON")])
def test_hostile_metadata_override_refused_in_one_line(bases: dict[str, Path], tmp_path: Path, text: bytes,
                                                       why: str) -> None:
    meta = tmp_path / "meta.json"
    meta.write_bytes(text)
    out = tmp_path / "out"
    out.mkdir()
    r = run_convert(bases["single"], out, "--metadata", str(meta))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l1quant: error: ") and str(meta) in lines[0] and why in lines[0]
    assert os.listdir(out) == []


@pytest.mark.parametrize("var, type_", [("L1QUANT_KQUANT_ISA", "q4_k_m"), ("L1QUANT_IQUANT_ISA", "iq4_nl")])
@pytest.mark.parametrize("value", ["mmx", "AVX2 ", "avx1024"])
def test_unknown_code_path_setting_refused_in_one_line(bases: dict[str, Path], tmp_path: Path, var: str,
                                                       type_: str, value: str) -> None:
    """A code-path variable naming no path this build and CPU run is the user's setting, not a bug: one line naming
    the variable, the value and the choices, exit 1, the existing target untouched (the IQ kernels read
    L1QUANT_IQUANT_ISA as written, so a case or blank difference is refused too)."""
    if not _native.AVAILABLE:
        unavailable("l1quant.kernels._fastq8 is not built: the code-path variables only steer it")
    out = tmp_path / "out"
    out.mkdir()
    (out / TARGET).write_bytes(PRECIOUS)
    r = subprocess.run([*cli(), "convert", str(bases["single"]), "--type", type_, "-o", str(out / TARGET), "-q"],
                       check=False, capture_output=True, text=True, timeout=120, env={**clean_env(), var: value})
    if var == "L1QUANT_KQUANT_ISA" and value.strip().lower() in _native.KQUANT_PATHS:
        assert r.returncode == 0, r.stderr  # that variable is read with case and blanks ignored
        return
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"l1quant: error: {var}=") and "expected auto" in lines[0], lines
    assert (out / TARGET).read_bytes() == PRECIOUS and os.listdir(out) == [TARGET]


def test_debug_shows_traceback(bases: dict[str, Path], tmp_path: Path) -> None:
    """``--debug`` is the way to see where an error came from."""
    model = tmp_path / "Tiny-Qwen2-Test"
    shutil.copytree(bases["single"], model)
    edit_json("config.json", _pop("num_key_value_heads"))(model)
    r = subprocess.run([*cli(), "--debug", "convert", str(model), "-o", str(tmp_path / TARGET)],
                       check=False, capture_output=True, text=True, timeout=120, env=clean_env())
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ConfigError" in r.stderr
    assert not (tmp_path / TARGET).exists()


def test_output_onto_an_input_file_is_refused(bases: dict[str, Path], tmp_path: Path) -> None:
    """``-o MODEL/model.safetensors`` must not replace the checkpoint's weights with the GGUF."""
    model = tmp_path / "Tiny-Qwen2-Test"
    shutil.copytree(bases["single"], model)
    before = tree_hash(model)
    r = subprocess.run([*cli(), "convert", str(model), "--type", "q8_0", "-o", str(model / "model.safetensors"),
                        "-q"], check=False, capture_output=True, text=True, timeout=120, env=clean_env())
    assert tree_hash(model) == before, "the input folder was written to"
    assert r.returncode != 0 and r.stderr.startswith("l1quant: error: ")

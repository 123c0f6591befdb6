"""Parity with llama.cpp's own converter: l1quant's GGUF must be the reference's GGUF, byte for byte.

Each case converts one tiny random checkpoint -- qwen2 (R1 and Qwen2.5 tokenizers), qwen3 (Qwen3's) or llama
(R1-Distill-Llama's), built by ``l1quant.testing.make_checkpoint`` with real tokenizers from tests/data -- to one
output type twice, with l1quant and with ``convert_hf_to_gguf.py`` from the
llama-cpp-python==0.3.36 sdist (see tests/reference.py for where it is found; under CI=true a missing reference
fails instead of skipping), then compares header by header (l1quant's read_gguf; one case also with
``gguf.GGUFReader``, which takes ~40 s per file on a 151k-token vocabulary):

* metadata: the same keys in the same order, each with the same value type and value;
* tensor infos: the same names in the same order, types, shapes, data offsets and sizes;
* tensor data byte-equal;
* finally the whole files byte-equal. Nothing is exempt today: not even the ``general.name``-style keys differ,
  because both tools derive them from the same folder name and generation_config.json.

The reference costs ~10 s per run (torch/transformers imports + the 151k-token vocab), so a session fixture starts
every selected reference conversion up front on a pool of two subprocesses; the tests then convert with l1quant
while the remaining reference runs proceed in the background.

For qwen3 and llama one K-quant mix is also checked: l1quant's one-pass ``convert(model, "q4_k_m")`` (and
``quantize`` of the reference's BF16 file) against the reference's ``--outtype bf16`` followed by llama-quantize.
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType
from llama_quantize import llama_quantize
from reference import require_reference, run_reference

import l1quant
from l1quant.gguf.reader import read_gguf

pytestmark = pytest.mark.slow

YARN = {"factor": 4.0, "original_max_position_embeddings": 32768}
#: llama-3 rope scaling as R1-Distill-Llama-8B has it, but an original context of 64 so that the tiny head
#: (16 values: 8 frequencies) has frequencies kept, blended and divided
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}

#: checkpoint id -> tiny_factory arguments. Both tokenizers, both config styles and every variant are spread over
#: the checkpoints so that each combination asked for appears at least once without multiplying reference runs.
CHECKPOINTS: dict[str, dict[str, Any]] = {
    "single-r1-t4": dict(tok="r1", style="t4"),
    "sharded3-qwen-t5": dict(tok="qwen2.5", shards=3, style="t5"),
    "tied-r1-t5": dict(tok="r1", tied=True, style="t5"),
    "tied-sharded2-qwen-t4": dict(tok="qwen2.5", tied=True, shards=2, style="t4"),
    # rope scaling, in both config styles and both transformers-4 spellings ("type" and "rope_type")
    "rope-linear-r1-t4": dict(tok="r1", style="t4", rope_scaling={"type": "linear", "factor": 2.0}),
    "rope-yarn-qwen-t5": dict(tok="qwen2.5", style="t5", rope_scaling={"type": "yarn", **YARN}),
    "rope-yarn-r1-t4": dict(tok="r1", style="t4", rope_scaling={"rope_type": "yarn", **YARN}),
    # ff=80: ffn_down rows have 80 values, not a multiple of Q8_0's 32-value block -> F16 fallback;
    # also no generation_config.json (no general.sampling.* keys)
    "ff80-qwen-t4": dict(tok="qwen2.5", style="t4", ff=80, generation_config=None),
    "src-f16-r1-t5": dict(tok="r1", style="t5", dtype="f16"),
    "src-f32-qwen-t4": dict(tok="qwen2.5", style="t4", dtype="f32"),
    # Qwen's own tokenizer.json format (ByteLevel post-processor -> add_bos/add_eos false, 151643 BPE entries ->
    # [PAD] fillers) and Qwen2.5's generation_config (repetition_penalty -> general.sampling.penalty_repeat)
    "orig-qwen-t4": dict(tok="qwen2.5-orig", style="t4",
                         generation_config={"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                                            "pad_token_id": 151643, "repetition_penalty": 1.05, "temperature": 0.7,
                                            "top_k": 20, "top_p": 0.8}),
    # qwen3: explicit head_dim (4 x 32 != hidden 64); tied + sharded with head_dim left to Qwen3Config's default 128
    "qwen3-t4": dict(tok="qwen3", style="t4", head_dim=32),
    "qwen3-tied-sharded2-t5": dict(tok="qwen3", tied=True, shards=2, style="t5"),
    # llama: Q/K rows permuted; llama-3 rope scaling -> rope_freqs.weight, in both config styles
    "llama-llama3-sharded3-t4": dict(tok="r1-llama", shards=3, style="t4", rope_theta=500000.0, rope_scaling=LLAMA3),
    # ... and tokenizer_config's add_prefix_space, which llama's converter writes (tokenizer.ggml.add_space_prefix)
    "llama-tied-llama3-t5": dict(tok="r1-llama-asp", tied=True, style="t5", rope_theta=500000.0, rope_scaling=LLAMA3),
    # rows of 256 (K-quant blocks fit): the K-quant mix cases
    "qwen3-h256": dict(tok="qwen3", hidden=256, ff=512, head_dim=64),
    "llama-h256-llama3": dict(tok="r1-llama", hidden=256, ff=512, rope_theta=500000.0, rope_scaling=LLAMA3),
}

#: (checkpoint id, --outtype)
CASES: list[tuple[str, str]] = [
    *[(c, t) for c in ("single-r1-t4", "sharded3-qwen-t5", "tied-r1-t5", "tied-sharded2-qwen-t4")
      for t in ("f16", "bf16", "q8_0")],
    ("single-r1-t4", "f32"),
    ("single-r1-t4", "auto"),  # bf16 source -> BF16
    ("rope-linear-r1-t4", "q8_0"),
    ("rope-yarn-qwen-t5", "q8_0"),
    ("rope-yarn-r1-t4", "q8_0"),
    ("ff80-qwen-t4", "q8_0"),
    ("ff80-qwen-t4", "f16"),
    ("src-f16-r1-t5", "auto"),  # f16 source -> F16
    ("src-f16-r1-t5", "q8_0"),
    ("src-f16-r1-t5", "bf16"),
    ("src-f32-qwen-t4", "auto"),  # f32 source -> F16 (the reference's fallback when no 16-bit tensor is seen)
    ("src-f32-qwen-t4", "q8_0"),
    ("src-f32-qwen-t4", "f32"),
    ("orig-qwen-t4", "q8_0"),
    *[(c, t) for c in ("qwen3-t4", "llama-llama3-sharded3-t4") for t in ("f16", "bf16", "q8_0")],
    ("qwen3-tied-sharded2-t5", "q8_0"),
    ("qwen3-tied-sharded2-t5", "f16"),
    ("llama-tied-llama3-t5", "q8_0"),
    ("qwen3-h256", "bf16"),
    ("llama-h256-llama3", "bf16"),
]

#: (checkpoint id, llama-quantize mix): the reference's BF16 output of the checkpoint, then llama-quantize
KQUANT_CASES: list[tuple[str, str]] = [("qwen3-h256", "q4_k_m"), ("llama-h256-llama3", "q4_k_m")]

#: the architecture each tokenizer's checkpoints have (tests/conftest.py)
ARCH_OF_TOK = {"r1": "qwen2", "qwen2.5": "qwen2", "qwen2.5-orig": "qwen2", "qwen3": "qwen3", "r1-llama": "llama",
               "r1-llama-asp": "llama"}

#: the case whose two files are also read with gguf.GGUFReader (slow on a 151k vocabulary, so only one)
VIEW_CASE = ("single-r1-t4", "q8_0")

#: what general.file_type must be for auto (checks that the auto cases test what they claim)
AUTO_FILE_TYPE = {"single-r1-t4": LlamaFileType.MOSTLY_BF16, "src-f16-r1-t5": LlamaFileType.MOSTLY_F16,
                  "src-f32-qwen-t4": LlamaFileType.MOSTLY_F16}


def _case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1]}"


class ParityEnv:
    """Checkpoints and reference outputs (futures) for the selected cases."""

    def __init__(self, checkpoints: dict[str, Path], futures: dict[tuple[str, str], Future[Path]]) -> None:
        self.checkpoints = checkpoints
        self.futures = futures

    def reference(self, case: tuple[str, str]) -> Path:
        return self.futures[case].result()


@pytest.fixture(scope="module")
def parity_env(request: pytest.FixtureRequest, tiny_factory: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParityEnv]:
    ref = require_reference()
    # Only the cases pytest actually selected (-k, node ids) start a reference run.
    selected: list[tuple[str, str]] = []
    for item in request.session.items:
        if getattr(item, "module", None) is None or item.module.__name__ != __name__:
            continue
        if getattr(item, "originalname", "") == "test_gguf_reader_view_agrees":
            selected.append(VIEW_CASE)
        elif hasattr(item, "callspec") and "case" in item.callspec.params:
            selected.append(item.callspec.params["case"])
        elif hasattr(item, "callspec") and "kcase" in item.callspec.params:
            selected.append((item.callspec.params["kcase"][0], "bf16"))
    wanted = list(dict.fromkeys(selected)) or CASES
    checkpoints = {cid: tiny_factory(**CHECKPOINTS[cid]) for cid in dict.fromkeys(c for c, _ in wanted)}
    out = tmp_path_factory.mktemp("reference")
    jobs = max(1, min(2, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="reference")
    futures = {case: pool.submit(run_reference, ref, checkpoints[case[0]], case[1], out / f"{_case_id(case)}.gguf")
               for case in wanted}
    try:
        yield ParityEnv(checkpoints, futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- comparison
# The structured comparison parses headers with l1quant's own reader (read_gguf: 0.6 s for a 151k-token vocabulary;
# gguf.GGUFReader needs 35-40 s per such file, far over this file's time budget). Its job is a precise message; the
# verdict that nothing differs anywhere is the whole-file byte comparison at the end, which no reader can fool.
# test_gguf_reader_view_agrees cross-checks once, with gguf.GGUFReader, that the two readers see the same file.


def _kv_repr(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 200 else s[:200] + "..."


def assert_same_gguf(ours: Path, ref: Path) -> None:
    """Assert two GGUF files are identical, reporting the first difference as precisely as possible."""
    a, b = read_gguf(ours), read_gguf(ref)
    assert (a.version, a.alignment, a.data_offset) == (b.version, b.alignment, b.data_offset), \
        f"(version, alignment, data offset) l1quant {(a.version, a.alignment, a.data_offset)} vs reference " \
        f"{(b.version, b.alignment, b.data_offset)}"

    ka, kb = list(a.kv), list(b.kv)
    if ka != kb:
        only_a = [k for k in ka if k not in b.kv]
        only_b = [k for k in kb if k not in a.kv]
        first = next((i for i, (x, y) in enumerate(zip(ka, kb)) if x != y), min(len(ka), len(kb)))
        pytest.fail(f"metadata keys differ: only in l1quant {only_a}, only in reference {only_b}; "
                    f"order first differs at #{first}: l1quant {ka[first:first + 3]} vs reference {kb[first:first + 3]}")
    for k in ka:
        assert a.kv_types[k] == b.kv_types[k], \
            f"metadata {k}: value type l1quant {a.kv_types[k]} vs reference {b.kv_types[k]}"
        va, vb = a.kv[k], b.kv[k]
        if va != vb:
            if isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb):
                i = next(i for i, (x, y) in enumerate(zip(va, vb)) if x != y)
                pytest.fail(f"metadata {k}[{i}]: l1quant {va[i]!r} vs reference {vb[i]!r}")
            pytest.fail(f"metadata {k}: l1quant {_kv_repr(va)} vs reference {_kv_repr(vb)}")

    na, nb = [t.name for t in a.tensors], [t.name for t in b.tensors]
    assert na == nb, f"tensor names/order differ: l1quant {na} vs reference {nb}"
    for ta, tb in zip(a.tensors, b.tensors):
        info_a = (ta.ggml_type.name, ta.shape, ta.offset, ta.nbytes)
        info_b = (tb.ggml_type.name, tb.shape, tb.offset, tb.nbytes)
        assert info_a == info_b, f"tensor {ta.name}: (type, shape, offset, nbytes) l1quant {info_a} vs reference {info_b}"
        da = np.frombuffer(a.read_tensor_bytes(ta), dtype=np.uint8)
        db = np.frombuffer(b.read_tensor_bytes(tb), dtype=np.uint8)
        if not np.array_equal(da, db):
            diff = np.flatnonzero(da != db)
            pytest.fail(f"tensor {ta.name} ({info_a[0]}): {diff.size} of {da.size} bytes differ, "
                        f"first at byte {int(diff[0])}: l1quant {int(da[diff[0]])} vs reference {int(db[diff[0]])}")

    assert a.file_size == b.file_size, \
        f"file sizes differ: l1quant {a.file_size} vs reference {b.file_size} (padding/alignment?)"
    assert filecmp.cmp(ours, ref, shallow=False), "headers and tensors match but the files differ (padding bytes?)"


# ----------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_parity_with_reference(case: tuple[str, str], parity_env: ParityEnv, tmp_path: Path) -> None:
    ckpt_id, outtype = case
    model = parity_env.checkpoints[ckpt_id]
    ours = l1quant.convert(model, outtype, tmp_path / "l1quant.gguf", threads=1)
    ref = parity_env.reference(case)
    assert_same_gguf(ours, ref)

    # The case exercises what it claims (checked on our file; it equals the reference's by now).
    gf = read_gguf(ours)
    fields = gf.kv
    types = {t.name: t.ggml_type for t in gf.tensors}
    if outtype == "auto":
        assert fields["general.file_type"] == AUTO_FILE_TYPE[ckpt_id]
    arch = ARCH_OF_TOK[CHECKPOINTS[ckpt_id]["tok"]]
    assert fields["general.architecture"] == arch
    if "rope_scaling" in CHECKPOINTS[ckpt_id]:
        kind = CHECKPOINTS[ckpt_id]["rope_scaling"].get("type") or CHECKPOINTS[ckpt_id]["rope_scaling"]["rope_type"]
        if kind == "llama3":  # no scaling keys: a frequency-factor tensor, first in the file
            assert f"{arch}.rope.scaling.type" not in fields and gf.tensors[0].name == "rope_freqs.weight"
        else:
            assert fields[f"{arch}.rope.scaling.type"] == kind
    if arch == "qwen3":
        assert "blk.1.attn_k_norm.weight" in types and "blk.1.attn_q.bias" not in types
        assert fields["qwen3.attention.key_length"] == CHECKPOINTS[ckpt_id].get("head_dim", 128)
    if ckpt_id.startswith("ff80") and outtype == "q8_0":
        assert types["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
        assert types["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0
    if ckpt_id.startswith("orig-qwen"):
        assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.ggml.add_eos_token"] is False
        assert fields["general.sampling.penalty_repeat"] == pytest.approx(1.05)
    if CHECKPOINTS[ckpt_id].get("tied"):
        assert "output.weight" not in types
    else:
        assert "output.weight" in types
    pre = {"r1": "deepseek-r1-qwen", "qwen2.5": "qwen2", "qwen2.5-orig": "qwen2", "qwen3": "qwen2",
           "r1-llama": "llama-bpe", "r1-llama-asp": "llama-bpe"}[CHECKPOINTS[ckpt_id]["tok"]]
    assert ("tokenizer.ggml.add_space_prefix" in fields) == CHECKPOINTS[ckpt_id]["tok"].endswith("-asp")
    assert fields["tokenizer.ggml.pre"] == pre


@pytest.mark.parametrize("kcase", KQUANT_CASES, ids=_case_id)
def test_kquant_mix_equals_reference_then_llama_quantize(kcase: tuple[str, str], parity_env: ParityEnv,
                                                         llama_cpp: Any, tmp_path: Path) -> None:
    """The one-pass ``convert(model, mix)`` and ``quantize(reference BF16, mix)`` equal the reference's BF16
    output run through llama-quantize, for qwen3 and llama (Q/K permuted, rope_freqs) as for qwen2."""
    ckpt_id, mix = kcase
    ref_bf16 = parity_env.reference((ckpt_id, "bf16"))
    want = llama_quantize(llama_cpp, ref_bf16, tmp_path / "llama-quantize.gguf", mix.upper())
    assert want.rc == 0, want.log[-2000:]
    assert_same_gguf(l1quant.convert(parity_env.checkpoints[ckpt_id], mix, tmp_path / "convert.gguf", threads=2),
                     want.path)
    assert_same_gguf(l1quant.quantize(ref_bf16, tmp_path / "quantize.gguf", mix, threads=2), want.path)
    types = {t.name: t.ggml_type for t in read_gguf(want.path).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_K  # the case quantizes what it claims


def test_gguf_reader_view_agrees(parity_env: ParityEnv, tmp_path: Path) -> None:
    """gguf.GGUFReader (llama.cpp's own Python reader) sees in l1quant's file exactly what read_gguf sees in the
    reference's: every key, value type and value in order, and every tensor's info and data (one case: ~10-40 s)."""
    case = VIEW_CASE
    ours = l1quant.convert(parity_env.checkpoints[case[0]], case[1], tmp_path / "l1quant.gguf", threads=1)
    ref = read_gguf(parity_env.reference(case))
    r = GGUFReader(ours)
    fields = [(k, f) for k, f in r.fields.items() if not k.startswith("GGUF.")]
    assert [k for k, _ in fields] == list(ref.kv)
    for k, f in fields:
        types = [GGUFValueType(t) for t in f.types]
        want = ref.kv_types[k]
        assert types == ([want] if isinstance(want, GGUFValueType) else list(want)), k
        assert f.contents() == ref.kv[k], k
    assert len(r.tensors) == len(ref.tensors)
    for t, u in zip(r.tensors, ref.tensors):
        assert (t.name, GGMLQuantizationType(t.tensor_type), tuple(int(x) for x in t.shape)) == \
            (u.name, u.ggml_type, u.shape)
        assert int(t.data_offset) == ref.data_offset + u.offset, t.name
        assert np.asarray(t.data).tobytes() == ref.read_tensor_bytes(u), t.name

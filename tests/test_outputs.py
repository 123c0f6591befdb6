"""``convert``/``quantize`` outputs beyond one file: ``--dry-run``, ``--json`` and several types in one run.

* ``--dry-run`` reads no tensor data and writes nothing, and the sizes it prints are the real files' sizes for
  every type (every converter type and every llama-quantize mix), through ``convert`` and ``quantize``;
* ``--json`` of a real run is the dry run's JSON plus ``sha256`` and ``seconds``, and both are true of the file;
* ``--type q8_0,q4_k_m,q3_k_m`` writes each file byte for byte as its single run does, reading the checkpoint
  once: the bytes read through ``os.preadv`` (the source layer's only read of tensor data,
  :meth:`l1quant.source.safetensors.SafeTensor.read_rows`) are counted and must equal one single run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from l1quant.cli import main
from l1quant.conversion.convert import convert, convert_many, prepare_many
from l1quant.conversion.mixes import QuantOptions
from l1quant.conversion.prepare import prepare
from l1quant.conversion.quantize import plan_quantize, quantize
from l1quant.conversion.write import output_report, written_report
from l1quant.filetypes import ALIASES, MIXES, NEEDS_IMATRIX, convert_types
from l1quant.gguf.reader import read_gguf
from l1quant.imatrix_file import write_imatrix

from cliutil import clean_env, cli, tree_hash

#: the mixes llama-quantize refuses without an importance matrix (Q2_K_S: its Q2_K tensors need one)
#: the mixes llama-quantize makes only with an importance matrix (IQ3_XS too: its attn_k/attn_q get IQ3_XXS)
IMATRIX_MIXES = [m.lower() for m in MIXES if m in NEEDS_IMATRIX]
#: every distinct file type: the converter's types (auto is bf16 here) and every mix (aliases name the same file)
#: that needs no importance matrix
ALL_TYPES = [t for t in convert_types() if t != "auto"] + [m.lower() for m in MIXES
                                                         if m.lower() not in convert_types() and m not in ALIASES
                                                         and m.lower() not in IMATRIX_MIXES]


@pytest.fixture(scope="module")
def model(tiny_factory: Callable[..., Path]) -> Path:
    # width 256: every K-quant gets real K-quant tensors (no fallback); a 352-token vocabulary keeps it fast
    return tiny_factory("toy", vocab=352, hidden=256, ff=512, layers=2,
                        extra_config={"bos_token_id": 0, "eos_token_id": 2})


@pytest.fixture(scope="module")
def imatrix(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A uniform importance matrix for ``model`` (every layer matrix, as llama-imatrix collects them)."""
    plan = prepare(model, "f32", pre="qwen2").plan
    path = tmp_path_factory.mktemp("imatrix") / "toy.imatrix.gguf"
    write_imatrix(path, {t.name: (np.full(t.n_cols, 4.0, np.float32), np.array([4]))
                         for t in plan.tensors if t.name.startswith("blk.") and len(t.shape) == 2},
                  datasets=["calib.txt"], chunk_count=1, chunk_size=512)
    return path


@pytest.fixture
def preadv_bytes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Bytes read through ``os.preadv`` while the test runs (a counter around the real call, not a stand-in)."""
    count = [0]
    real = os.preadv

    def counting(fd: int, buffers: list, offset: int, *a: int) -> int:
        n = real(fd, buffers, offset, *a)
        count[0] += n
        return n

    monkeypatch.setattr(os, "preadv", counting)
    yield count


def test_dry_run_sizes_equal_the_real_files_for_every_type(model: Path, tmp_path: Path) -> None:
    dry = [output_report(p.header, p.output) for p in prepare_many(model, ALL_TYPES, f"{tmp_path}/out/", pre="qwen2")]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing, not even the folder
    outs = convert_many(model, ALL_TYPES, f"{tmp_path}/out/", pre="qwen2", threads=2)
    assert len(outs) == len(ALL_TYPES) == len(dry)
    for d, out in zip(dry, outs):
        real = written_report(out, 1.0)
        assert d["size"] == out.stat().st_size, out.name
        assert real.pop("sha256") == hashlib.sha256(out.read_bytes()).hexdigest()
        assert real.pop("seconds") == 1.0
        assert real == d, out.name  # the real run's record is the dry run's plus sha256 and seconds
    assert {d["type"] for d in dry} >= {"Q4_K_M", "Q3_K_S", "Q6_K", "BF16", "F32"}
    assert dry[ALL_TYPES.index("q4_k_m")]["tensor_types"].get("Q4_K", 0) > 0  # width 256: real K-quants


def test_dry_run_with_an_imatrix_equals_the_real_files(model: Path, imatrix: Path, tmp_path: Path) -> None:
    """q2_k_s (refused without an imatrix) and q4_0 (weighted by it): the dry run plans the same files,
    ``quantize.imatrix.*`` keys included, as the real run writes, through the library and ``--dry-run``."""
    types = [*IMATRIX_MIXES, "q4_0"]
    dry = [output_report(p.header, p.output)
           for p in prepare_many(model, types, f"{tmp_path}/out/", pre="qwen2", options=QuantOptions(imatrix=imatrix))]
    assert not (tmp_path / "out").exists()
    outs = convert_many(model, types, f"{tmp_path}/out/", pre="qwen2", threads=2, imatrix=imatrix)
    for d, out in zip(dry, outs, strict=True):
        real = written_report(out)
        real.pop("sha256")
        assert real == d, out.name
        assert read_gguf(out).kv["quantize.imatrix.file"] == str(imatrix)
    assert dry[types.index("q2_k_s")]["tensor_types"].get("Q2_K", 0) > 0  # the tensors that need the weights
    r = CliRunner().invoke(main, ["convert", str(model), "--type", ",".join(types), "--imatrix", str(imatrix),
                                  "--pre", "qwen2", "-o", f"{tmp_path}/cli/", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    assert [{**d, "path": Path(d["path"]).name} for d in json.loads(r.output)["outputs"]] == [
        {**d, "path": Path(d["path"]).name} for d in dry]
    assert not (tmp_path / "cli").exists()


def test_dry_run_reads_no_tensor_data(model: Path, tmp_path: Path, preadv_bytes: list[int]) -> None:
    prepare_many(model, "q8_0,q4_k_m", f"{tmp_path}/o/", pre="qwen2")
    assert preadv_bytes[0] == 0


def test_quantize_dry_run_sizes_equal_the_real_files(model: Path, imatrix: Path, tmp_path: Path,
                                                     preadv_bytes: list[int]) -> None:
    src = convert(model, "bf16", tmp_path / "m-BF16.gguf", pre="qwen2", threads=2)
    for t in [m.lower() for m in MIXES if m not in ALIASES]:
        options = QuantOptions(imatrix=imatrix) if t in IMATRIX_MIXES else None
        before = preadv_bytes[0]
        job = plan_quantize(src, f"{tmp_path}/q/", t, options=options)
        assert preadv_bytes[0] == before, t  # header only
        assert not job.output.exists()
        out = quantize(src, f"{tmp_path}/q/", t, threads=2, options=options)
        rep = written_report(out)
        rep.pop("sha256")
        assert output_report(job.header, job.output) == rep, t
        assert rep["size"] == out.stat().st_size


def test_several_types_equal_single_runs_and_read_the_checkpoint_once(model: Path, tmp_path: Path,
                                                                      preadv_bytes: list[int]) -> None:
    types = ["q8_0", "q4_k_m", "q3_k_m"]
    singles = {}
    single_reads = []
    for t in types:
        before = preadv_bytes[0]
        singles[t] = convert(model, t, f"{tmp_path}/single/", pre="qwen2", threads=2)
        single_reads.append(preadv_bytes[0] - before)
    before = preadv_bytes[0]
    outs = convert_many(model, ",".join(types), f"{tmp_path}/many/", pre="qwen2", threads=2)
    many_reads = preadv_bytes[0] - before
    data = (model / "model.safetensors").stat().st_size
    assert single_reads[0] > data // 2  # the counter sees the tensor reads
    assert many_reads == single_reads[0] <= data  # three files, one read of the checkpoint
    for t, out in zip(types, outs):
        assert out.name == singles[t].name
        assert out.read_bytes() == singles[t].read_bytes(), t


def test_cli_several_types_json_and_output_rules(model: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["convert", str(model), "--type", "q8_0,Q4_K_M", "--pre", "qwen2", "-o",
                                  str(tmp_path / "o") + "/", "--json", "-q", "-t", "2"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["dry_run"] is False
    assert [Path(o["path"]).name.rsplit("-", 1)[1] for o in rec["outputs"]] == ["Q8_0.gguf", "Q4_K_M.gguf"]
    for o in rec["outputs"]:
        p = Path(o["path"])
        assert o["size"] == p.stat().st_size and o["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert sum(o["tensor_types"].values()) == len(o["tensors"]) and o["seconds"] >= 0
    dry = CliRunner().invoke(main, ["convert", str(model), "--type", "q8_0,q4_k_m", "--pre", "qwen2", "-o",
                                    str(tmp_path / "o") + "/", "--json", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    drec = json.loads(dry.output)
    assert drec["dry_run"] is True
    assert drec["outputs"] == [{k: v for k, v in o.items() if k not in ("sha256", "seconds")}
                               for o in rec["outputs"]]


def test_cli_several_types_refuse_a_plain_output_file(model: Path, tmp_path: Path) -> None:
    before = tree_hash(tmp_path)
    p = subprocess.run([*cli(), "convert", str(model), "--type", "q8_0,q4_k_m", "--pre", "qwen2", "-o",
                        str(tmp_path / "x.gguf")], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "must be a folder" in p.stderr, p.stderr
    assert tree_hash(tmp_path) == before


def test_cli_dry_run_table_and_quantize_json(model: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["convert", str(model), "--type", "q4_k_m", "--pre", "qwen2", "-o",
                                  str(tmp_path / "m.gguf"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "m.gguf").exists()
    first = r.output.splitlines()[0]
    size = int(first.split("tensors, ")[1].split(" bytes")[0])
    assert "blk.0.attn_q.weight" in r.output and "Q4_K" in r.output
    out = convert(model, "q4_k_m", tmp_path / "m.gguf", pre="qwen2", threads=2)
    assert size == out.stat().st_size
    src = convert(model, "f16", tmp_path / "m-F16.gguf", pre="qwen2", threads=2)
    q = CliRunner().invoke(main, ["quantize", str(src), "q6_k", "--json", "-q", "-t", "2"])
    assert q.exit_code == 0, q.output
    rec = json.loads(q.output)["outputs"][0]
    assert rec["type"] == "Q6_K" and Path(rec["path"]).stat().st_size == rec["size"]
    assert rec["sha256"] == hashlib.sha256(Path(rec["path"]).read_bytes()).hexdigest()


def test_card_is_a_hub_gguf_card_listing_every_file(model: Path, tmp_path: Path) -> None:
    import yaml

    lic = tmp_path / "src"
    shutil.copytree(model, lic)
    # the toy vocabulary's own end token (make_checkpoint writes R1's ids, outside its 352 tokens: verify fails)
    (lic / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 2}))
    (lic / "README.md").write_text("---\nlicense: mit\nbase_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B\n"
                                   "---\n# x\n")
    outs = convert_many(lic, "q8_0,q4_k_m", f"{tmp_path}/o/", pre="qwen2", threads=2, card=True)
    text = (tmp_path / "o" / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit" and meta["tags"][0] == "gguf" and meta["quantized_by"]
    assert "base_model" not in meta  # a local folder: its repo id is unknown (never the base model's id)
    assert "pypi.org" not in text
    for out in outs:  # both files in the table, with their sizes
        assert f"| `{out.name}` |" in text
    assert "Think for maximum 512 tokens." in text


def test_card_front_matter_names_the_hub_repo() -> None:
    from l1quant.conversion.card import front_matter, source_repo_id

    import yaml

    snap = Path("/c/hub/models--l3lab--L1-Qwen-1.5B-Max/snapshots/0123abc")
    meta = yaml.safe_load("\n".join(front_matter({"general.architecture": "qwen2"}, source_repo_id(snap, None))[1:-1]))
    assert meta == {"base_model": "l3lab/L1-Qwen-1.5B-Max", "base_model_relation": "quantized",
                    "tags": ["gguf", "l1quant", "llama.cpp", "qwen2", "reasoning"], "quantized_by": "l1quant"}
    assert source_repo_id(Path("x"), "l3lab/L1-Qwen-1.5B-Exact") == "l3lab/L1-Qwen-1.5B-Exact"

"""Hugging Face repo ids resolve through a hand-built, offline hub cache; local folders win; misses are clear."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from reference import in_ci

from l1quant.errors import InputError, RuntimeMissingError
from l1quant.source.hub import CONVERT_FILES, is_repo_id, resolve_model

if not in_ci():  # CI installs the hub extra: there a missing huggingface_hub must fail, not skip
    pytest.importorskip("huggingface_hub")

DATA = Path(__file__).parent / "data"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], *, commit: str = COMMIT,
                   ref: str = "main") -> Path:
    """Lay out ``files`` as huggingface_hub's cache does: blobs by hash, snapshot symlinks, a ref to the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(repo / "blobs" / blob, link.parent)
        try:
            link.symlink_to(rel)
        except OSError:  # no symlinks (some Windows setups): huggingface_hub then stores copies
            link.write_bytes(data)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _model_files() -> dict[str, bytes]:
    files = {name: (DATA / "r1-distill-tokenizer" / name).read_bytes()
             for name in ("tokenizer.json", "tokenizer_config.json")}
    files["config.json"] = b'{"architectures": ["Qwen2ForCausalLM"]}'
    files["model.safetensors"] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    return files


def test_repo_id_resolves_from_offline_cache(offline_cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = fill_hub_cache(offline_cache, "l3lab/L1-Qwen-1.5B-Max", _model_files())
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    got = resolve_model("l3lab/L1-Qwen-1.5B-Max")
    assert got.resolve() == snapshot.resolve()
    assert (got / "config.json").read_bytes() == b'{"architectures": ["Qwen2ForCausalLM"]}'
    assert (got / "tokenizer.json").read_bytes() == (DATA / "r1-distill-tokenizer" / "tokenizer.json").read_bytes()


def test_revision_is_looked_up_in_refs(offline_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = "f" * 40
    fill_hub_cache(offline_cache, "l3lab/L1-Qwen-1.5B-Max", _model_files())
    snap_v2 = fill_hub_cache(offline_cache, "l3lab/L1-Qwen-1.5B-Max", _model_files(), commit=other, ref="v2")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("l3lab/L1-Qwen-1.5B-Max", revision="v2").resolve() == snap_v2.resolve()
    with pytest.raises(InputError, match="@v3: not in the local Hugging Face cache"):
        resolve_model("l3lab/L1-Qwen-1.5B-Max", revision="v3")


def test_local_folder_wins_over_cached_repo(offline_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fill_hub_cache(offline_cache, "l3lab/L1-Qwen-1.5B-Max", _model_files())
    work = tmp_path / "work"
    local = work / "l3lab" / "L1-Qwen-1.5B-Max"
    local.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_model("l3lab/L1-Qwen-1.5B-Max") == Path("l3lab/L1-Qwen-1.5B-Max")
    assert resolve_model(local) == local


def test_cache_miss_offline_is_clear(offline_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        resolve_model("l3lab/L1-Qwen-1.5B-Exact")
    msg = str(info.value)
    assert msg.startswith("l3lab/L1-Qwen-1.5B-Exact: not in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE" in msg and str(offline_cache) in msg and "\n" not in msg


def test_snapshot_without_config_is_refused(offline_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fill_hub_cache(offline_cache, "someone/not-a-model", {"README.md": b"# hi"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="has no config.json"):
        resolve_model("someone/not-a-model")


def test_neither_folder_nor_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no such model folder, and not a Hugging Face repo id"):
        resolve_model("./models/L1")
    with pytest.raises(InputError, match="not a Hugging Face repo id"):
        resolve_model("L1")  # bare names are treated as mistyped folders
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(InputError, match="found a file"):
        resolve_model("model.gguf")


def test_missing_huggingface_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(RuntimeMissingError, match=r"pip install huggingface_hub .*pip install '\.\[hub\]'"):
        resolve_model("l3lab/L1-Qwen-1.5B-Max")


def test_repo_id_spelling() -> None:
    assert is_repo_id("l3lab/L1-Qwen-1.5B-Max") and is_repo_id("a/b.c_d")
    for bad in ("L1", "a/b/c", "/abs/path", "a--b/c", "a/b..c", "a/", "a/b-", "~/x"):
        assert not is_repo_id(bad), bad


def test_convert_files_are_what_conversion_reads() -> None:
    assert "*.safetensors" in CONVERT_FILES and "config.json" in CONVERT_FILES
    assert not any(p.endswith((".bin", ".pt", ".gguf", "*")) for p in CONVERT_FILES)


def test_folder_copy_is_not_needed(offline_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The snapshot is used in place: resolving twice gives the same folder and copies nothing.
    fill_hub_cache(offline_cache, "l3lab/L1-Qwen-1.5B-Max", _model_files())
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(offline_cache) for p in offline_cache.rglob("*"))
    assert resolve_model("l3lab/L1-Qwen-1.5B-Max") == resolve_model("l3lab/L1-Qwen-1.5B-Max")
    after = sorted(p.relative_to(offline_cache) for p in offline_cache.rglob("*"))
    assert before == after



@pytest.fixture(scope="module")
def hub_and_dir_ggufs(tiny_r1: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny checkpoint converted twice: from an offline hub cache (as l3lab/L1-Tiny-Test) and from a folder."""
    from l1quant.conversion.convert import convert

    tmp = tmp_path_factory.mktemp("hub-convert")
    files = {p.name: p.read_bytes() for p in tiny_r1.iterdir() if p.is_file()}
    fill_hub_cache(tmp / "cache", "l3lab/L1-Tiny-Test", files)
    local = tmp / "local" / "L1-Tiny-Test"  # same folder name as the repo, so naming metadata can match
    shutil.copytree(tiny_r1, local)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(tmp / "cache"))
        mp.chdir(tmp)
        from_hub = Path(convert("l3lab/L1-Tiny-Test", type="q8_0", output=tmp / "hub.gguf"))
    from_dir = Path(convert(local, type="q8_0", output=tmp / "dir.gguf"))
    return from_hub, from_dir


def _kv_and_tensors(path: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    from l1quant.gguf.reader import read_gguf
    gf = read_gguf(path)
    return dict(gf.kv), {t.name: gf.read_tensor_bytes(t) for t in gf.tensors}


@pytest.mark.slow
def test_convert_from_offline_cache_names_after_repo(hub_and_dir_ggufs: tuple[Path, Path]) -> None:
    """Issue 6: ``convert l3lab/...`` works from a pre-filled cache with HF_HUB_OFFLINE=1, named after the repo:
    the very file a folder of the same name gives."""
    hub_kv, _ = _kv_and_tensors(hub_and_dir_ggufs[0])
    dir_kv, _ = _kv_and_tensors(hub_and_dir_ggufs[1])
    assert hub_kv == dir_kv and hub_kv["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert hub_and_dir_ggufs[0].read_bytes() == hub_and_dir_ggufs[1].read_bytes()


@pytest.mark.slow
def test_card_names_the_repo_not_the_snapshot(tiny_r1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from l1quant.cli import main

    fill_hub_cache(tmp_path / "cache", "l3lab/L1-Tiny-Test",
                   {p.name: p.read_bytes() for p in tiny_r1.iterdir() if p.is_file()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    res = CliRunner().invoke(main, ["convert", "l3lab/L1-Tiny-Test", "--type", "q8_0", "-o", str(out / "t.gguf"), "-q",
                                    "--card"])
    assert res.exit_code == 0, res.output
    card = (out / "README.md").read_text()
    assert "from `l3lab/L1-Tiny-Test`" in card and "--source l3lab/L1-Tiny-Test`" in card
    assert COMMIT not in card

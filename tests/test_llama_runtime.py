"""The runtime module (l1quant.runtime): the extra-buffer-type probe and its fallback, the one-line crash report,
ggml's evaluation callback, and --no-repack on every command that runs llama.cpp.

The crash paths are forced (a probe child that dies by a signal, a signal raised inside a llama.cpp call), so they
run on every machine, AMX or not. Skips without llama_cpp, except under CI=true where that fails.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from reference import REPO, require_module

import l1quant
from l1quant.cli import main
from l1quant.runtime import probe
from l1quant.runtime.llama import build_id


#: the one-line report needs Linux's sigaction layout; elsewhere llama.cpp's crash keeps the default action
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="crash report is Linux-only")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


@linux_only
def test_crash_inside_a_guard_is_one_line_and_the_signal_code() -> None:
    r = _python("import ctypes\nfrom l1quant.runtime import crash\n"
                "with crash.guard('m-Q8_0.gguf', 'decode'):\n    ctypes.string_at(0)\n")
    assert r.returncode == 128 + 11, (r.returncode, r.stderr)
    assert r.stderr == "l1quant: error: m-Q8_0.gguf: llama.cpp crashed with SIGSEGV (decode); exit 139\n"


@linux_only
def test_guard_restores_the_previous_handlers() -> None:
    # After the guard, a fault is the interpreter's again (faulthandler's report here), not our line.
    r = _python("import ctypes, faulthandler\nfaulthandler.enable()\nfrom l1quant.runtime import crash\n"
                "with crash.guard('m.gguf', 'decode'):\n    pass\nassert not crash.installed()\nctypes.string_at(0)\n")
    assert r.returncode == -11 and "llama.cpp crashed" not in r.stderr and "Segmentation fault" in r.stderr


@pytest.fixture(scope="module")
def q8(tiny_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("llama_cpp")
    out = tmp_path_factory.mktemp("rt") / "tiny-Q8_0.gguf"
    return l1quant.convert(tiny_factory(hidden=64, layers=1, heads=4, kv_heads=2, ff=128), "q8_0", out, threads=2)


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache folder and no answer remembered in this process."""
    monkeypatch.setenv("L1QUANT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(probe, "_memo", {})
    return tmp_path / "cache"


def test_probe_child_crash_turns_extra_bufts_off_once_and_caches(q8: Path, fresh_probe: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(probe.CRASH_ENV, "SIGSEGV")  # the child dies as on an AMX machine with unusable tiles
    from l1quant.runtime import Model

    with Model(q8, n_ctx=64, n_threads=2) as m:
        assert m.extra_bufts is False
        assert m.logits([1, 2, 3], first=0).shape == (3, m.n_vocab)
    with Model(q8, n_ctx=64, n_threads=2) as m:  # the answer is remembered: no second probe, no second line
        assert m.extra_bufts is False
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("l1quant: ") and "SIGSEGV" in err[0] and "--no-repack" in err[0]
    cached = json.loads(probe.cache_path(build_id()).read_text())
    assert cached["extra_bufts"] is False and cached["signal"] == "SIGSEGV"
    monkeypatch.delenv(probe.CRASH_ENV)  # a new process reads the file: it does not probe again
    res = probe.probe(build_id())
    assert res.cached and not res.extra_bufts and res.signal == "SIGSEGV"


def test_probe_on_this_machine_is_fast_and_cached(q8: Path, fresh_probe: Path) -> None:
    t0 = time.perf_counter()
    res = probe.probe(build_id())
    took = time.perf_counter() - t0
    print(f"probe: extra_bufts={res.extra_bufts} signal={res.signal} {took:.2f} s ({probe.machine_id()[:60]})")
    assert not res.cached and res.path.is_file() and took < 60
    again = probe.probe(build_id())
    assert again.cached and again.extra_bufts == res.extra_bufts


def test_no_repack_needs_no_probe(q8: Path, fresh_probe: Path) -> None:
    from l1quant.runtime import Model, extra_bufts

    with Model(q8, n_ctx=64, n_threads=2, extra_bufts=extra_bufts(no_repack=True)) as m:
        assert m.extra_bufts is False
    assert not probe.cache_path(build_id()).exists()


def test_cb_eval_sees_the_graph_by_name(q8: Path) -> None:
    from l1quant.runtime import EvalTensor, Model

    asked: list[str] = []
    seen: dict[str, np.ndarray] = {}

    def cb(t: EvalTensor, ask: bool) -> bool:
        if ask:
            asked.append(t.name)
            return t.name == "result_output"
        seen[t.name] = t.to_numpy()
        return True

    toks = [1, 2, 3, 4]
    with Model(q8, n_ctx=64, n_threads=2, extra_bufts=False, cb_eval=cb) as m:
        logits = np.array(m.logits(toks, first=0))
        n_vocab = m.n_vocab
    assert "result_output" in asked and "attn_norm-0" in asked, asked[:10]
    assert seen["result_output"].shape == (len(toks), n_vocab)
    assert np.array_equal(seen["result_output"], logits)


@linux_only
def test_crash_in_a_decode_names_the_model(q8: Path) -> None:
    code = ("import signal\nfrom l1quant.runtime import Model\n"
            "def cb(t, ask):\n    signal.raise_signal(signal.SIGSEGV)\n    return True\n"
            f"m = Model({str(q8)!r}, n_ctx=64, n_threads=2, extra_bufts=False, cb_eval=cb)\n"
            "m.logits([1, 2, 3])\n")
    r = _python(code)
    assert r.returncode == 139, (r.returncode, r.stderr[-2000:])
    assert r.stderr.splitlines() == [f"l1quant: error: {q8}: llama.cpp crashed with SIGSEGV (decode); exit 139"]


def test_greedy_generation_follows_the_logits(q8: Path) -> None:
    from l1quant.runtime import Model

    with Model(q8, n_ctx=64, n_threads=2, extra_bufts=False, seed=0) as m:
        prompt = [1, 2, 3]
        stream = m.generate(prompt, temperature=0, top_p=1.0, top_k=0, min_p=0.0)
        got = [next(stream) for _ in range(4)]
        want: list[int] = []
        seq = list(prompt)
        for _ in range(4):
            want.append(int(np.argmax(m.logits(seq)[-1])))
            seq.append(want[-1])
        # resuming after inserted tokens reuses the cached prefix and continues as a fresh evaluation would
        m.reset()
        s1 = m.generate(prompt, temperature=0, top_p=1.0, top_k=0, min_p=0.0)
        first = next(s1)
        s2 = m.generate(prompt + [first, 7], temperature=0, top_p=1.0, top_k=0, min_p=0.0)
        resumed = next(s2)
        fresh = int(np.argmax(m.logits(prompt + [first, 7])[-1]))
    assert got == want and resumed == fresh


@pytest.mark.parametrize("cmd", ["run", "budget-check", "compare", "verify"])
def test_every_llama_command_takes_no_repack(cmd: str) -> None:
    import l1quant.cli.compare  # noqa: F401 - registers the command
    import l1quant.cli.verify  # noqa: F401

    out = CliRunner().invoke(main, [cmd, "--help"]).output
    assert "--no-repack" in out and "-nr" in out


def test_run_with_no_repack(q8: Path, fresh_probe: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(q8), "What is 2+2?", "-b", "8", "--seed", "0", "-n", "4", "-t", "1",
                                    "--no-repack", "--json"])
    assert res.exit_code == 0, res.output
    d: dict[str, Any] = json.loads(res.output)
    assert 1 <= d["total_tokens"] <= 4 and not probe.cache_path(build_id()).exists()


def test_tests_using_llama_directly_follow_the_probe(q8: Path, tmp_path: Path) -> None:
    """The suite's own llama-cpp-python loads (tests/reference.require_module) get the probe's answer too."""
    code = ("import reference\nlc = reference.require_module('llama_cpp')\n"
            f"llm = lc.Llama(model_path={str(q8)!r}, n_ctx=64, verbose=False)\n"
            "print(lc.llama_cpp.llama_model_default_params().use_extra_bufts, len(llm.tokenize(b'hi')))\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "L1QUANT_CACHE": str(tmp_path)}
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env, probe.CRASH_ENV: "SIGSEGV"})
    assert off.returncode == 0 and off.stdout.split()[0] == "False", off.stderr[-2000:]
    assert "SIGSEGV" in off.stderr and "--no-repack" in off.stderr
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                        env={**os.environ, **env, "L1QUANT_CACHE": str(tmp_path / "other")})
    found = json.loads(next((tmp_path / "other" / "runtime").glob("extra-bufts-*.json")).read_text())
    assert on.returncode == 0 and on.stdout.split()[0] == str(found["extra_bufts"]), on.stderr[-2000:]


@pytest.mark.parametrize("seed", [3, 7])  # not 0: Llama(seed=0) means a random seed
def test_sampling_equals_llama_cpp_pythons_generate(q8: Path, seed: int) -> None:
    """The sampler chain is llama-cpp-python's (Llama.generate at repeat_penalty 1): same seed, same tokens."""
    llama_cpp = require_module("llama_cpp")
    from l1quant.runtime import Model

    prompt = [5, 9, 2, 33, 4]
    kw = dict(top_k=40, top_p=0.95, min_p=0.05)
    ref = llama_cpp.Llama(model_path=str(q8), n_ctx=128, n_threads=2, seed=seed, verbose=False)
    try:
        want = list(itertools.islice(ref.generate(prompt, temp=0.6, repeat_penalty=1.0, **kw), 12))
    finally:
        ref.close()
    with Model(q8, n_ctx=128, n_threads=2, seed=seed) as m:
        got = list(itertools.islice(m.generate(prompt, temperature=0.6, **kw), 12))
    assert got == want

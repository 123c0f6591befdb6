"""The bundled calibration text (``l1quant/data/calibration.txt``): reproducible from its generator
(``benchmarks/make_calibration.py``), within its size, long enough, mixed, and shipped as package data."""

from __future__ import annotations

import importlib.util

import tomllib
from reference import REPO

from l1quant.imatrix_compute import default_calibration_text

DATA = REPO / "l1quant" / "data" / "calibration.txt"
MIN_TOKENS = 50_000
MAX_BYTES = 400_000


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("make_calibration", REPO / "benchmarks" / "make_calibration.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generator_reproduces_the_bundled_text() -> None:
    assert _generator().build() == DATA.read_text(encoding="utf-8")  # type: ignore[attr-defined]


def test_size_tokens_and_mix() -> None:
    from tokenizers import Tokenizer

    text = default_calibration_text()
    assert text == DATA.read_text(encoding="utf-8")
    assert len(text.encode()) < MAX_BYTES
    n = len(Tokenizer.from_file(str(REPO / "tests" / "data" / "r1-distill-tokenizer" / "tokenizer.json"))
            .encode(text).ids)
    assert n >= MIN_TOKENS, n
    # math with worked reasoning in L1's format, prose, and code
    assert text.count("</think>") >= 100 and text.count("Think for ") >= 100
    assert text.count("The answer is $\\boxed{") >= 100
    assert text.count("\ndef ") >= 10 and text.count("#include") >= 5
    assert "The first mechanical calculators" in text


def test_shipped_as_package_data() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/*" in cfg["tool"]["setuptools"]["package-data"]["l1quant"]

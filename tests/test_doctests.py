"""Every docstring example in the package runs (the examples are documentation; this keeps them true).

Examples that need files or a model (a converted GGUF, a checkpoint folder) are marked ``# doctest: +SKIP`` in
place; everything else is executed here, module by module.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import l1quant

#: modules not imported here: ``python -m`` entry points run the CLI (and exit) when imported
SKIP: dict[str, str] = {"l1quant.__main__": "runs the CLI", "l1quant.cli.__main__": "runs the CLI"}

MODULES = sorted(m.name for m in pkgutil.walk_packages(l1quant.__path__, "l1quant.") if m.name not in SKIP)


def test_every_module_is_found() -> None:
    assert {"l1quant.kernels", "l1quant.conversion.mixes", "l1quant.conversion.plan"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={**vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

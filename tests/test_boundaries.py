"""The package's module boundaries: no private cross-imports and no import circles (issue 17).

Walks every module of ``l1quant/`` with :mod:`ast` (nothing is imported) and fails on either rule.

**Private names.** A private name is one that starts with a single underscore. A module may not take one from
another module, neither by ``from X import _name`` nor by attribute use ``X._name`` on a name bound to an imported
l1quant module. "Another module" is any other file: a package's ``__init__`` that re-exports its submodules' names
is a different module from those submodules, so it must use their public names too. Two things are allowed:

* dunder names (``__version__``, ``__all__``) are not private;
* a *private module* (``kernels/_native.py``, the compiled ``kernels/_fastq8``) may be imported by name from within
  its own package (``from . import _fastq8``, ``from ._native import native_available``): the leading underscore
  of a module says "not part of the package's API", not "not for the package's own modules". A private module
  is still off limits from outside its package.

**Circles.** The graph has one edge per import between l1quant modules, module-level and function-level alike
(imports under ``if TYPE_CHECKING:`` are left out: they never run, and only give annotations their types);
``from pkg import name`` is an edge to the submodule ``pkg.name`` when ``name`` is a submodule and to ``pkg``
otherwise; importing ``a.b.c`` also runs ``a`` and ``a.b``, but those package edges are left out because a package
``__init__`` that imports its own submodules would otherwise make every submodule that imports a sibling a circle
with its package. Any strongly connected component of more than one module fails, whatever the kind of import:
a function-level import is never an excuse for a circle. Function-level imports remain where they defer an
*optional or heavy* dependency (llama_cpp, torch, transformers, tqdm, matplotlib, the compiled kernels) or a
large part of l1quant that only one command needs (so ``import l1quant`` and ``--help`` stay fast); those are not
circles and this test does not forbid them.
"""
from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "l1quant"


def _modules() -> dict[str, pathlib.Path]:
    mods: dict[str, pathlib.Path] = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()
# Compiled extension modules (no .py file) are modules too.
for _ext in PKG.rglob("*.c"):
    MODULES.setdefault(".".join(_ext.relative_to(ROOT).with_suffix("").parts), _ext)


def _package(mod: str) -> str:
    return mod if MODULES[mod].name == "__init__.py" else mod.rpartition(".")[0]


def _absolute(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(mod).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (never true when the program runs: annotations are strings, PEP 563)."""
    return (isinstance(node, ast.If) and not node.orelse
            and ((isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                 or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")))


def _scan() -> tuple[list[str], dict[str, set[str]]]:
    """(private cross-import findings, import graph) over every l1quant module."""
    problems: list[str] = []
    edges: dict[str, set[str]] = defaultdict(set)
    typing_only: set[int] = set()
    for mod, path in MODULES.items():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}  # local name -> l1quant module it is bound to
        for node in ast.walk(tree):
            if _type_checking_only(node):
                typing_only.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                target = _absolute(mod, node)
                if not target.startswith("l1quant"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in MODULES:
                        edges[mod].add(full)
                        bound[alias.asname or alias.name] = full
                        if _is_private(alias.name) and _package(mod) != target:
                            problems.append(f"{mod} imports private module {full} from outside its package")
                    else:
                        edges[mod].add(target)
                        if _is_private(alias.name) and target != mod:
                            problems.append(f"{mod} imports {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("l1quant"):
                        edges[mod].add(alias.name)
                        if alias.asname:
                            bound[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in bound
                    and bound[node.value.id] != mod):
                target = bound[node.value.id]
                if f"{target}.{node.attr}" in MODULES and _package(mod) == target:
                    continue
                problems.append(f"{mod} uses {target}.{node.attr}")
    return problems, edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package() -> None:
    # A walk that found nothing would pass vacuously.
    _, edges = _scan()
    assert "l1quant.conversion.convert" in MODULES and len(MODULES) > 50
    assert "l1quant.conversion.plan" in edges["l1quant.conversion.prepare"]
    # and the circle finder finds a circle when there is one (through a third module)
    fake = {"l1quant.errors": {"l1quant.output"}, "l1quant.output": {"l1quant.cache"},
            "l1quant.cache": {"l1quant.errors"}}
    assert _cycles(fake) == [["l1quant.cache", "l1quant.errors", "l1quant.output"]]


def test_no_private_cross_imports() -> None:
    problems, _ = _scan()
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_no_import_circles() -> None:
    _, edges = _scan()
    cycles = _cycles(edges)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# Options that shape the command line's own output, not the library call.
_CLI_ONLY = {"as_json", "quiet", "plot_path", "max_flag", "debug"}
# --temp is llama.cpp's spelling (llama-cli --temp); the library takes the sampling parameter's name.
_SPELLED_AS_LLAMA_CPP = {"temperature"}


@pytest.mark.parametrize(("command", "function"), [
    ("run", "l1quant.l1.runner:run"),
    ("budget-check", "l1quant.l1.budget:budget_check"),
    ("compare", "l1quant.evaluate.driver:compare"),
    ("verify", "l1quant.check.verifier:verify"),
])
def test_the_library_parameters_are_the_flags(command: str, function: str) -> None:
    # "The library is the CLI": every option a command forwards has the same name in the library function
    # (--mode -> mode, --threads -> threads, --problems -> problems, --limit -> limit, --tokens -> tokens).
    import importlib
    import inspect

    import click

    from l1quant.cli import main

    mod, _, name = function.partition(":")
    params = set(inspect.signature(getattr(importlib.import_module(mod), name)).parameters)
    cmd = main.commands[command]
    for opt in cmd.params:
        if not isinstance(opt, click.Option) or opt.name in _CLI_ONLY or not opt.expose_value:
            continue  # an eager action flag (--help, compare --clear-cache) runs and exits: nothing is forwarded
        spelled = {o.lstrip("-").replace("-", "_") for o in opt.opts + opt.secondary_opts if o.startswith("--")}
        assert opt.name in params, f"{command} {opt.opts}: {function} has no parameter {opt.name!r}"
        assert opt.name in spelled or opt.name in _SPELLED_AS_LLAMA_CPP, \
            f"{command} {opt.opts}: the library parameter {opt.name!r} is not named as the flag"

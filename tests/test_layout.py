"""The package layout: no package reaches into another package's private modules.

A package is a subfolder of ``src/deqkit`` (``deqkit.solvers``, ``deqkit.nn``, ...) or a
top-level module (``deqkit.study``, ``deqkit.cli``, ...). What several packages need is
either public (exported by its package) or lives in one of the documented internal modules
below. Tests may import private modules (they test internals); the library, the
experiments and the benchmarks may not.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("src/deqkit", "experiments", "benchmarks")

# The documented internal modules: private (not for users), shared by every package.
INTERNAL_MODULES = {
    "deqkit._validate": "one rule for checking settings and the error it raises",
    "deqkit._io": "atomic file writers and matplotlib figures without pyplot",
    "deqkit._autodiff": "torch.func.jvp without torch's first-use warning",
}

# The packages whose __all__ is their public API.
PUBLIC_PACKAGES = (
    "deqkit",
    "deqkit.analysis",
    "deqkit.bench",
    "deqkit.models",
    "deqkit.nn",
    "deqkit.solvers",
    "deqkit.testing",
    "deqkit.tasks",
    "deqkit.train",
)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _package_of(path: Path) -> str | None:
    """The package a source file belongs to (``deqkit.nn``, ``deqkit.study``), or ``None``
    for a script outside the library (experiments, benchmarks)."""
    rel = path.relative_to(ROOT)
    if rel.parts[:2] != ("src", "deqkit"):
        return None
    inner = rel.parts[2:]
    if len(inner) == 1:  # a top-level module, or the root __init__
        stem = Path(inner[0]).stem
        return "deqkit" if stem == "__init__" else f"deqkit.{stem}"
    return f"deqkit.{inner[0]}"


def _module_of(path: Path) -> str | None:
    """The dotted name of a library file (``deqkit.nn._deq``); ``None`` outside it."""
    rel = path.relative_to(ROOT)
    if rel.parts[:2] != ("src", "deqkit"):
        return None
    parts = list(rel.with_suffix("").parts[1:])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _violation(target: str, importer: str | None) -> str | None:
    """The private module (or name) of another package that reaching ``target`` (a dotted
    name under ``deqkit``) from ``importer``'s package goes through; ``None`` if none."""
    parts = target.split(".")
    if parts[0] != "deqkit" or len(parts) < 2:
        return None
    start = 2
    for internal in INTERNAL_MODULES:
        if target == internal or target.startswith(internal + "."):
            start = len(internal.split("."))
            break
    else:
        if _is_private(parts[1]):  # a top-level private module that is not documented
            return ".".join(parts[:2])
        if ".".join(parts[:2]) == importer:
            return None
    for i in range(start, len(parts)):
        if _is_private(parts[i]):
            return ".".join(parts[: i + 1])
    return None


class _Finder(ast.NodeVisitor):
    """Every dotted name under ``deqkit`` a file imports or reaches: imports (absolute and
    relative), attribute chains and constant ``getattr`` calls on names bound to deqkit
    modules, and ``importlib.import_module`` of a constant name."""

    def __init__(self, module: str | None, is_package: bool):
        self.module = module
        self.is_package = is_package
        self.bound: dict[str, str] = {}  # local name -> dotted name under deqkit
        self.reached: list[tuple[int, str]] = []

    def _absolute(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module
        if self.module is None:
            return None
        base = self.module.split(".")
        if not self.is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "deqkit":
                self.reached.append((node.lineno, alias.name))
                if alias.asname:
                    self.bound[alias.asname] = alias.name
                else:
                    self.bound["deqkit"] = "deqkit"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self._absolute(node)
        if module is None or module.split(".")[0] != "deqkit":
            return
        self.reached.append((node.lineno, module))
        for alias in node.names:
            if alias.name == "*":
                continue
            target = f"{module}.{alias.name}"
            self.reached.append((node.lineno, target))
            self.bound[alias.asname or alias.name] = target

    def _resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            base = self._resolve(node.args[0])
            return f"{base}.{node.args[1].value}" if base else None
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        target = self._resolve(node) if _is_private(node.attr) else None
        if target:
            self.reached.append((node.lineno, target))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        target = self._resolve(node)
        if target and _is_private(target.rpartition(".")[2]):
            self.reached.append((node.lineno, target))
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self.reached.append((node.lineno, node.args[0].value))
        self.generic_visit(node)


def private_cross_package_imports() -> list[str]:
    """``path:line: private.module (names)`` for every reach into another package's
    privates, the names being what the line takes from it."""
    found: dict[tuple[str, int, str], set[str]] = {}
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            finder = _Finder(_module_of(path), path.name == "__init__.py")
            finder.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            importer = _package_of(path)
            for line, target in finder.reached:
                private = _violation(target, importer)
                if private:
                    names = found.setdefault((str(path.relative_to(ROOT)), line, private), set())
                    rest = target[len(private) :].lstrip(".")
                    if rest:
                        names.add(rest.split(".")[0])
    return [
        f"{path}:{line}: {private}" + (f" ({', '.join(sorted(names))})" if names else "")
        for (path, line, private), names in sorted(found.items())
    ]


def test_no_private_cross_package_imports():
    violations = private_cross_package_imports()
    assert not violations, f"{len(violations)} reach(es) into private modules:\n" + "\n".join(
        violations
    )


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_public_names_are_exported_and_documented(name):
    """Every name in a package's ``__all__`` exists, once, and every public class and
    function has a docstring."""
    package = importlib.import_module(name)
    assert len(package.__all__) == len(set(package.__all__)), name
    for public in package.__all__:
        obj = getattr(package, public)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name}.{public} has no docstring"


@pytest.mark.parametrize("name", sorted(INTERNAL_MODULES))
def test_internal_modules_say_what_they_are(name):
    assert importlib.import_module(name).__doc__, name


def test_the_finder_catches_each_kind():
    """The kinds of reach the check is meant to catch, and what it lets through."""
    cases = {
        "from deqkit.nn._state import Packer": True,
        "from ..nn._state import Packer": True,
        "from ..nn import _state": True,
        "from .._secret import x": True,
        "import deqkit.train._data": True,
        "from deqkit import models\nmodels._registry._MODELS": True,
        "from .. import models\ngetattr(getattr(models, '_registry', None), '_MODELS', None)": True,
        "import importlib\nimportlib.import_module('deqkit.train._model')": True,
        "from deqkit.solvers import solve, Solver": False,
        "from .._validate import integer": False,
        "from ._base import State": False,  # the same package
        "from .train.__main__ import main": False,  # a dunder module is not private
    }
    for code, bad in cases.items():
        finder = _Finder("deqkit.analysis._curve", False)
        finder.visit(ast.parse(code))
        hits = [t for _, t in finder.reached if _violation(t, "deqkit.analysis")]
        assert bool(hits) == bad, (code, finder.reached)


def test_the_readme_layout_table_lists_every_folder_and_module_of_the_tree():
    # README's layout section (also the docs' layout page) names each package folder and
    # top-level module once; the internal modules are named in the paragraph below it
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("[start:layout]")[1].split("[end:layout]")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in row.split("|")[1].replace("`", "").split(", ")}
    listed = {name.strip() for name in listed}
    src = ROOT / "src" / "deqkit"
    tree = {f"{p.name}/" for p in src.iterdir() if (p / "__init__.py").is_file()}
    tree |= {p.name for p in src.glob("*.py") if not p.name.startswith("_")}
    assert listed == tree
    internal = {p.name for p in src.glob("_*.py") if p.name != "__init__.py"}
    assert internal == {name.split(".")[-1] + ".py" for name in INTERNAL_MODULES}
    assert all(f"`{name}`" in section for name in internal), internal

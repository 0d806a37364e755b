"""Every package's docstring says what each of its files does (STYLE.md), and names no file that
is gone.

The rules, read from the source with ``ast`` (no package is imported):

* **Complete**: every module (``*.py`` but ``__init__``) and every subpackage of a package under
  ``ema_core`` appears in an inline literal (``...`` in double or single backticks) of the
  package's ``__init__`` docstring, as the literal itself or as a part of a dotted name in it
  (``_leaves``, ``_leaves._blend``, ``backends.host`` and ``ema_core.backends.host`` all name
  their module). Prose does not count: a file is named as code.
* **Nothing stale**: every private name in those literals (one leading underscore, then a
  lowercase letter: the modules' naming style) exists. A name that opens a dotted name (or
  stands alone) is this package's: one of its modules or subpackages, or a name its
  ``__init__`` binds at module level (a function, a class, an assignment, an import). A name
  after a dot is looked up in what comes before it, when that is ``ema_core`` or a package or
  module of it: a module or subpackage of a package, else a name the module (or the package's
  ``__init__``) binds (``_leaves._blend``, ``ema_core._atomic``,
  ``ema_core.torch._state.check``). A dotted name that opens with anything else (``np``,
  ``jax.jit``, ``torch.no_grad`` outside ``backends``, ``schedules.warmup`` outside the root)
  is not checked: it may name another library. So a module of another package is named by
  its full path (``ema_core._stateless``), never bare.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ema_core"
PACKAGES = sorted(p.parent for p in PACKAGE.rglob("__init__.py"))
LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
PRIVATE = re.compile(r"_[a-z]\w*")


def _docstring(package: Path) -> str:
    return ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""


def _dotted_names(doc: str) -> list[list[str]]:
    """The dotted names inside the inline literals of ``doc``, each split at its dots."""
    literals = [a or b for a, b in LITERAL.findall(doc)]
    return [name.split(".") for text in literals for name in DOTTED.findall(text)]


def _children(package: Path) -> set[str]:
    """The modules (``.py`` files but ``__init__``) and subpackages of ``package``."""
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    return modules | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


def _bound(module: Path) -> set[str]:
    """The names a module binds at its top level."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _member(where: Path, name: str) -> Path | None:
    """The package or module ``name`` inside the package ``where``, if there is one."""
    if (where / name / "__init__.py").is_file():
        return where / name
    return where / f"{name}.py" if (where / f"{name}.py").is_file() else None


def _exists(where: Path, name: str) -> bool:
    """Whether ``name`` is a module, subpackage or top-level name of ``where`` (a package
    folder or a module file)."""
    if where.is_dir():
        return _member(where, name) is not None or name in _bound(where / "__init__.py")
    return name in _bound(where)


def _stale(package: Path, parts: list[str]) -> list[str]:
    """The private names of one dotted name that name nothing (see the module docstring)."""
    first, rest = parts[0], parts[1:]
    if first == "ema_core":
        where: Path | None = PACKAGE
    elif PRIVATE.fullmatch(first) and not _exists(package, first):
        return [first]
    else:
        where = _member(package, first)
    stale = []
    for name in rest:
        if where is None:
            break
        if PRIVATE.fullmatch(name) and not _exists(where, name):
            stale.append(".".join(parts))
            break
        where = _member(where, name) if where.is_dir() else None
    return stale


def _label(package: Path) -> str:
    return str(package.relative_to(ROOT))


@pytest.mark.parametrize("package", PACKAGES, ids=_label)
def test_the_package_docstring_names_every_module_of_the_package(package: Path) -> None:
    named = {part for parts in _dotted_names(_docstring(package)) for part in parts}
    assert sorted(_children(package) - named) == [], _label(package)


@pytest.mark.parametrize("package", PACKAGES, ids=_label)
def test_the_package_docstring_names_no_module_that_does_not_exist(package: Path) -> None:
    doc = _docstring(package)
    stale = [name for parts in _dotted_names(doc) for name in _stale(package, parts)]
    assert stale == [], _label(package)


def test_the_rules_catch_a_missing_module_and_a_stale_name() -> None:
    # the old backends.torch docstring named ``_mixed`` / ``_triton`` and neither ``_plan`` nor
    # ``_memory``
    torch = PACKAGE / "backends" / "torch"
    old = "``_routes`` groups; ``_foreach``, ``_host``, ``_mixed`` / ``_triton`` the blend."
    assert {"_plan", "_memory", "_cuda"} <= _children(torch) - {
        part for parts in _dotted_names(old) for part in parts
    }
    found = [name for parts in _dotted_names(old) for name in _stale(torch, parts)]
    assert found == ["_mixed", "_triton"]
    # a name after a module is looked up in that module; ``ema_core.`` paths from the root
    jax = PACKAGE / "backends" / "jax"
    assert _stale(jax, ["_leaves", "_blend"]) == []
    assert _stale(jax, ["_leaves", "_gone"]) == ["_leaves._gone"]
    assert _stale(jax, ["ema_core", "_stateless"]) == []
    assert _stale(jax, ["ema_core", "_stateful"]) == ["ema_core._stateful"]
    assert _stale(jax, ["_stateless"]) == ["_stateless"]  # bare: this package's only
    assert _stale(jax, ["np", "_private"]) == []  # another library's names are not checked

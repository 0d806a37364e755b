"""Layers point downward: no import cycle inside ``ema_core``, backends never import the API.

The rule, read from the source with ``ast`` (imports at module level, inside functions and under
``TYPE_CHECKING`` alike):

* The modules of ``ema_core`` form no cycle. ``from pkg import name`` is an edge to the module
  ``pkg.name`` when there is one, else to ``pkg`` itself; ``import pkg`` is an edge to ``pkg``.
  A package's ``__init__`` is not an implicit edge of its submodules (Python runs it first, and
  it only gathers names), but a module that names its package imports it, so
  ``import ema_core`` inside ``ema_core/backends/`` is an edge up to the whole library.
* No module under ``ema_core/backends/`` (the leaf kernels) imports anything above them: the
  top-level ``ema_core`` package, the public API ``ema_core._api``, or the user-facing packages
  ``ema_core.torch`` and ``ema_core.jax``. The layers are, bottom to top: the core
  (``_settings``, ``_types``, ``_mappings``, ``_ops``, ``_tree``, ``_checks``,
  ``_leaf_checks``, ``_core``, ``_writes``, ``schedules``, ``_config``, ``_stateless``); the
  backends' leaf kernels; the public API (``_api``, which finds a backend by name when arrays
  arrive); the user-facing pieces (``ema_core.torch``: ``EMA``, ``ddp_ema``,
  ``full_state_dict``; ``ema_core.jax``: ``make_update``, ``with_ema``, checkpoints; presets,
  compat). One exception, named below: the kernel packages ``ema_core.backends.torch`` and
  ``ema_core.backends.jax`` keep the old import paths of the user-facing names
  (``ema_core.backends.torch.EMA``) through a module ``__getattr__`` that imports
  ``ema_core.torch`` / ``ema_core.jax`` on first use; no kernel module imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ema_core"
OLD_PATHS = frozenset(
    {
        ("ema_core.backends.torch", "ema_core.torch"),
        ("ema_core.backends.jax", "ema_core.jax"),
    }
)


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that one import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & known
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        kept = package[: len(package) - node.level + 1]
        base = ".".join([*kept, base] if base else kept)
    loads = {f"{base}.{alias.name}" for alias in node.names} & known
    plain = [alias for alias in node.names if f"{base}.{alias.name}" not in known]
    return loads | ({base} & known if plain else set())


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included)."""
    modules = _modules(root)
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(node, name, path, known)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or ``None`` (depth first)."""
    state: dict[str, int] = {}  # 1 while on the current path, 2 once finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_checker_sees_cycles_and_function_level_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import pkg\n")
    assert find_cycle(import_graph(pkg)) == ["pkg", "pkg.a", "pkg.sub.b", "pkg"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _above_kernels(target: str) -> bool:
    return target == "ema_core" or target.startswith(
        ("ema_core._api", "ema_core.torch", "ema_core.jax")
    )


def test_backends_do_not_import_the_api_or_the_package() -> None:
    wrong = {
        f"{name} -> {target}"
        for name, edges in import_graph().items()
        if name.startswith("ema_core.backends")
        for target in edges
        if _above_kernels(target) and (name, target) not in OLD_PATHS
    }
    assert not wrong, f"backends import above themselves: {sorted(wrong)}"


def test_old_paths_are_looked_up_inside_getattr_only() -> None:
    """The two upward edges allowed are the old-path aliases, imported in ``__getattr__``."""
    for name, target in OLD_PATHS:
        path = _modules(PACKAGE)[name]
        tree = ast.parse(path.read_text(), str(path))
        getattr_defs = [
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        ]
        inside = {id(n) for d in getattr_defs for n in ast.walk(d)}
        upward = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Import) and any(a.name == target for a in node.names)
        ]
        assert upward and all(id(node) in inside for node in upward), name


def test_old_paths_still_work() -> None:
    import importlib

    torch_old = importlib.import_module("ema_core.backends.torch")
    torch_new = importlib.import_module("ema_core.torch")
    assert torch_old.EMA is torch_new.EMA and torch_old.ddp_ema is torch_new.ddp_ema
    jax_old = importlib.import_module("ema_core.backends.jax")
    jax_new = importlib.import_module("ema_core.jax")
    assert jax_old.make_update is jax_new.make_update and jax_old.with_ema is jax_new.with_ema

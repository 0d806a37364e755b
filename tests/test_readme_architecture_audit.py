"""README "Why" (ema-core's own behaviour) and "Architecture": the promises no other test pinned.

Already pinned elsewhere, not repeated here: no import cycle, the kernels import nothing above
them and the old paths are imported inside ``__getattr__`` only (``test_import_layers``); the
core imports nothing above it and no framework at module level, ``import ema_core`` imports no
optional dependency (``test_design_contract``); the tree names every module, the plan cache's
4 entries, JAX / array-api-strict calls not cached, ``ema_core.integrations`` imports no
framework (``test_readme_claims_more``); the crash-safe writes (``test_atomic``); the plan
cache (``test_stateless_cache*``); ``_settings`` read once, the only reader of the environment
(``test_settings``). Every test quotes the words it pins.

Frameworks are looked for in ``sys.modules`` of one subprocess for the whole file
(``_fresh_imports``), the layering is read with ``ast`` from the source.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import typing
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from tests.test_import_layers import OLD_PATHS, PACKAGE, import_graph

ROOT = PACKAGE.parent
README = (ROOT / "README.md").read_text()
ARCHITECTURE = README.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]

#: Array frameworks and optional dependencies that a framework-free import must not load.
FRAMEWORKS = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "cupy",
    "numba",
    "triton",
    "array_api_strict",
    "safetensors",
    "ml_dtypes",
    "keras",
    "lightning",
    "accelerate",
    "tensorflow",
    "flax",
    "optax",
    "equinox",
)

#: The layers of the README, bottom to top (the two numpy modules beside the core: rank 1).
USER_FACING = ("torch", "jax", "presets", "compat", "testing", "posthoc", "checkpoint")
USER_FACING += ("integrations",)
BESIDE_CORE = {"ema_core._safetensors", "ema_core._safetensors_header", "ema_core._bf16"}


def _rank(module: str) -> int:
    """1 the core (and the numpy modules beside it), 2 the kernels, 3 the API, 4 the user-facing
    pieces and the tools on them (and the package itself, which gathers the API and presets)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 4
    top = parts[1]
    if top == "backends":
        return 2
    if top in ("_api", "_api_read"):
        return 3
    if top in USER_FACING:
        return 4
    return 1


def _module_path(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _tree(module: str) -> ast.Module:
    return ast.parse(_module_path(module).read_text())


def _top_level_imports(module: str) -> set[str]:
    """The modules a module imports at module level (inside ``try`` blocks too)."""
    found: set[str] = set()
    stack: list[ast.AST] = list(_tree(module).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
        elif isinstance(node, ast.Try | ast.If):
            stack += [*node.body, *node.orelse, *getattr(node, "handlers", [])]
        elif isinstance(node, ast.ExceptHandler):
            stack += node.body
    return found


# ---- the layers (ast) ------------------------------------------------------------------------


def test_every_import_points_down_or_sideways_across_the_four_layers() -> None:
    # "Four layers, each importing only the ones below it": test_import_layers and
    # test_design_contract pin the core and the kernels; this is the whole rule, the API too
    graph = import_graph()
    assert "ema_core._api" in graph and "ema_core.backends.numpy" in graph
    upward = sorted(
        f"{name} -> {target}"
        for name, edges in graph.items()
        for target in edges
        if _rank(target) > _rank(name) and (name, target) not in OLD_PATHS
    )
    assert upward == []


def test_the_api_imports_the_core_and_the_kernels_only() -> None:
    # "3. The API, `ema_core/_api.py`" sits on the core and the kernels: nothing user-facing,
    # not the package (which imports it), not the numpy modules beside the core
    graph = import_graph()
    edges = graph["ema_core._api"]
    assert "ema_core.backends" in edges and "ema_core._core" in edges
    assert "ema_core.backends" in graph["ema_core._api_read"]
    edges = (edges | graph["ema_core._api_read"]) - {"ema_core._api_read"}
    wrong = sorted(t for t in edges if _rank(t) > 2 or t in BESIDE_CORE)
    assert wrong == []


def test_only_checkpoint_and_posthoc_import_the_numpy_modules_beside_the_core() -> None:
    # "`_safetensors.py` and `_bf16.py` ... only `ema_core.checkpoint` and `ema_core.posthoc`
    # import them" (one imports the other: they sit side by side)
    importers = sorted(
        name
        for name, edges in import_graph().items()
        if edges & BESIDE_CORE and name not in BESIDE_CORE
    )
    assert importers, "nobody imports _safetensors / _bf16: the claim lost its subject"
    outside = [
        n for n in importers if not n.startswith(("ema_core.checkpoint", "ema_core.posthoc"))
    ]
    assert outside == []
    assert any(n.startswith("ema_core.checkpoint") for n in importers)
    assert any(n.startswith("ema_core.posthoc") for n in importers)


@pytest.mark.parametrize("module", sorted(BESIDE_CORE))
def test_the_modules_beside_the_core_import_numpy_at_module_level(module: str) -> None:
    # "`_safetensors.py` and `_bf16.py` import numpy at module level"
    assert "numpy" in _top_level_imports(module)


def test_pytree_imports_jax_only_inside_its_functions() -> None:
    # "`_pytree.py` open one jax.tree_util node (flax nnx, equinox); imports JAX in its calls"
    assert not {m for m in _top_level_imports("ema_core._pytree") if m.split(".")[0] == "jax"}
    inner = {
        alias.name.split(".")[0]
        for node in ast.walk(_tree("ema_core._pytree"))
        if isinstance(node, ast.FunctionDef)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Import)
        for alias in sub.names
    }
    assert "jax" in inner


@pytest.mark.parametrize(
    ("module", "framework"),
    [("lightning", "lightning"), ("keras", "keras"), ("accelerate", "torch")],
)
def test_each_integration_imports_its_framework_when_imported_itself(
    module: str, framework: str
) -> None:
    # "lightning ..., keras ..., accelerate: each imports its framework when imported itself"
    # (accelerate's module imports torch and never accelerate: see its docstring)
    tops = {m.split(".")[0] for m in _top_level_imports(f"ema_core.integrations.{module}")}
    assert framework in tops
    assert "accelerate" not in tops


# ---- lazy imports: one fresh interpreter for the whole file ----------------------------------

_PROBE = """
import json, sys
seen = {}
def snap(label):
    seen[label] = sorted(sys.modules)
import ema_core
snap("ema_core")
import ema_core.backends, ema_core.integrations, ema_core.compat
snap("lazy packages")
import numpy as np
ema_core.ema_update({"w": np.zeros(3)}, {"w": np.ones(3)}, 1, decay=0.5)
snap("numpy update")
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    import ema_core.backends.torch as old
    snap("old path imported")
    old.EMA
    snap("old path used")
print(json.dumps(seen))
"""


@cache
def _fresh_imports() -> dict[str, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return {label: set(mods) for label, mods in json.loads(out.stdout).items()}


def _loaded(mods: set[str], names: tuple[str, ...] | list[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in names or m in names)


def test_import_ema_core_loads_no_framework_no_kernel_and_no_numpy_module() -> None:
    # "`__init__.py` public names; importing it imports no framework", "so `import ema_core`
    # imports no numpy", "the lazy registry (module per namespace)"
    mods = _fresh_imports()["ema_core"]
    assert "ema_core._api" in mods
    assert _loaded(mods, FRAMEWORKS) == []
    kernels = sorted(m for m in mods if m.startswith("ema_core.backends."))
    assert kernels == []
    above = [f"ema_core.{p}" for p in ("torch", "jax", "posthoc", "checkpoint", "integrations")]
    assert sorted(m for m in mods if m in BESIDE_CORE or m.startswith(tuple(above))) == []


def test_the_lazy_packages_load_no_framework_and_no_kernel_when_imported() -> None:
    # "`backends/__init__` the Backend protocol and the lazy registry", "`ema_core.integrations`
    # (each framework imported only when used)", compat's drop-in classes on first access
    mods = _fresh_imports()["lazy packages"]
    assert {"ema_core.backends", "ema_core.integrations", "ema_core.compat"} <= mods
    assert _loaded(mods, FRAMEWORKS) == []
    submodules = ("ema_core.backends.", "ema_core.integrations.", "ema_core.compat.")
    assert sorted(m for m in mods if m.startswith(submodules)) == []


def test_numpy_arrays_load_the_numpy_kernel_only() -> None:
    # "one module per framework, found by namespace when its arrays arrive"; the numpy modules
    # beside the core stay unloaded (only checkpoint / posthoc import them)
    mods = _fresh_imports()["numpy update"]
    assert "ema_core.backends.numpy" in mods and "ema_core.backends.host" in mods
    others = ("torch", "jax", "cupy")
    assert (
        sorted(m for m in mods if m.startswith(tuple(f"ema_core.backends.{o}" for o in others)))
        == []
    )
    assert _loaded(mods, ["torch", "jax", "jaxlib", "cupy", "array_api_strict"]) == []
    assert sorted(mods & BESIDE_CORE) == []
    assert sorted(m for m in mods if m.startswith(("ema_core.torch", "ema_core.jax"))) == []


def test_the_old_torch_path_looks_up_ema_core_torch_on_first_use() -> None:
    # "each kernel package looks them up in `ema_core.torch` / `ema_core.jax` on first use"
    seen = _fresh_imports()
    if "old path imported" not in seen:
        pytest.skip("torch is not installed")
    before, after = seen["old path imported"], seen["old path used"]
    assert "ema_core.backends.torch" in before and "torch" in before
    assert "ema_core.torch" not in before
    assert "ema_core.torch" in after


# ---- public names ----------------------------------------------------------------------------


def test_the_api_module_exports_the_four_functions_the_package_hands_out() -> None:
    # "3. **The API**, `ema_core/_api.py`: `ema_update`, `init`, `update`, `average`"
    from ema_core import _api

    line = re.search(r"3\. \*\*The API\*\*[^\n]*", ARCHITECTURE)[0]
    names = set(re.findall(r"`(\w+)`", line.split(":", 1)[1]))
    assert names == {"ema_update", "init", "update", "average"}
    assert set(_api.__all__) == names
    for name in names:
        assert getattr(ema, name) is getattr(_api, name) and name in ema.__all__


def test_ema_core_torch_exports_the_names_the_readme_lists() -> None:
    # "`ema_core.torch` (`EMA`, `EMABank`, `ddp_ema`, `full_state_dict`)"
    pytest.importorskip("torch")
    import ema_core.torch as ema_torch

    listed = {"EMA", "EMABank", "ddp_ema", "full_state_dict"}
    assert listed <= set(ema_torch.__all__)
    assert all(callable(getattr(ema_torch, n)) for n in listed)
    # the one more public name is the bank's snapshot error, shared with ema_core.jax
    assert set(ema_torch.__all__) - listed == {"SnapshotWriteError"}


def test_ema_core_jax_exports_the_names_the_readme_lists() -> None:
    # "`ema_core.jax` (`make_update`, `make_bank_update`, `with_ema`, checkpoints)"
    pytest.importorskip("jax")
    import ema_core.jax as ema_jax

    listed = {"make_update", "make_bank_update", "with_ema", "state_dict", "load_state_dict"}
    assert listed <= set(ema_jax.__all__)
    assert all(callable(getattr(ema_jax, n)) for n in listed)


def test_compat_holds_the_four_seed_systems_each_a_drop_in_class() -> None:
    # "`compat/` drop-in classes of the four seed systems: mmedit, tensorflow, allennlp, paddle"
    import ema_core.compat as compat

    assert set(compat.__all__) == {"mmedit", "tensorflow", "allennlp", "paddle"}
    for name in compat.__all__:
        classes = {
            n.name for n in _tree(f"ema_core.compat.{name}").body if isinstance(n, ast.ClassDef)
        }
        assert "ExponentialMovingAverage" in classes, name


def test_checkpoint_exports_save_load_load_peer_and_export() -> None:
    # "`checkpoint/` save / load (...); load_peer (...); export (_export)"
    import ema_core.checkpoint as checkpoint

    assert {"save", "load", "load_peer", "export"} <= set(checkpoint.__all__)
    assert all(callable(getattr(checkpoint, n)) for n in ("save", "load", "load_peer", "export"))


def test_types_holds_the_aliases_and_the_state_of_step_shadow_weight() -> None:
    # "`_types.py` Array / Tree / Step aliases, EMAState (step, shadow, weight)"
    from ema_core import _types

    assert all(hasattr(_types, n) for n in ("Array", "Tree", "Step"))
    assert _types.EMAState is ema.EMAState
    assert _types.EMAState._fields == ("step", "shadow", "weight")


def test_the_backends_package_defines_the_backend_protocol() -> None:
    # "`backends/__init__` the Backend protocol and the lazy registry"
    from ema_core import backends

    assert typing.Protocol in backends.Backend.__mro__
    assert callable(backends.get_backend)


# ---- one-line descriptions that state a fact ---------------------------------------------------


def _docstring_table_rows(module: str) -> dict[str, list[str]]:
    """The first word of each row of the rst table in a module's docstring -> the row's words."""
    doc = ast.get_docstring(_tree(module)) or ""
    blocks = re.findall(r"^(=+(?:  +=+)+)\n(.*?)\n\1\n(.*?)\n\1$", doc, re.S | re.M)
    rows: dict[str, list[str]] = {}
    for _, _header, body in blocks:
        for line in body.splitlines():
            if line and not line.startswith(" "):
                words = line.split()
                rows.setdefault(words[0], []).append(line)
    return rows


def _route_names(module: str) -> list[str]:
    for node in _tree(module).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        target = node.targets[0] if isinstance(node, ast.Assign) else target
        if getattr(target, "id", None) == "Route":
            value = node.value
            return [
                c.value
                for c in ast.walk(value)  # type: ignore[arg-type]
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
    raise AssertionError(f"{module} defines no Route")


@pytest.mark.parametrize(
    "module",
    ["ema_core.backends.torch._routes", "ema_core.backends.generic", "ema_core.backends.cupy"],
)
def test_every_route_has_a_row_in_its_module_table(module: str) -> None:
    # "Each has one route function whose table (in its docstring) says which code blends which
    # tensor": every value of the module's Route type is a row of its docstring table
    routes = _route_names(module)
    rows = _docstring_table_rows(module)
    assert len(routes) >= 3
    assert [r for r in routes if r not in rows] == []
    assert "route" in {n.name for n in _tree(module).body if isinstance(n, ast.FunctionDef)}


def test_every_numpy_route_is_named_in_its_table() -> None:
    # the numpy table lists its routes as ``"engine"`` ... in its right column
    doc = ast.get_docstring(_tree("ema_core.backends.numpy")) or ""
    assert [r for r in _route_names("ema_core.backends.numpy") if f'``"{r}"``' not in doc] == []


def _test_marks(path: Path) -> dict[str, set[str]]:
    """``test_<name>`` -> the names of its ``pytest.mark.<x>`` decorators."""
    marks = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            names = set()
            for decorator in node.decorator_list:
                dec = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(dec, ast.Attribute):
                    names.add(dec.attr)
            marks[node.name] = names
    return marks


@pytest.mark.parametrize("module", ["ema_core.backends.torch._routes", "ema_core.backends.generic"])
def test_every_route_runs_in_the_cpu_suite_or_is_marked_gpu(module: str) -> None:
    # "every route runs in the CPU suite or is marked `gpu`": the table's test column names a
    # test of tests/test_torch_routes.py; the CUDA rows' tests are marked gpu, the others not
    marks = _test_marks(ROOT / "tests" / "test_torch_routes.py")
    rows = _docstring_table_rows(module)
    assert set(_route_names(module)) <= set(rows)
    wrong, cuda_rows = [], 0
    for route, lines in rows.items():
        for line in lines:
            test = f"test_{line.split()[-1]}"
            cuda = " CUDA " in line
            cuda_rows += cuda
            if test not in marks or ("gpu" in marks[test]) != cuda:
                wrong.append(f"{route}: {test}")
    assert wrong == []
    assert cuda_rows == (6 if module.endswith("_routes") else 0)  # 4 mixed, 2 float32 Triton


def test_the_cupy_routes_name_existing_tests() -> None:
    # the CuPy table's routes run in tests/test_cupy_backend.py (on the CPU or marked gpu)
    doc = ast.get_docstring(_tree("ema_core.backends.cupy")) or ""
    named = set(re.findall(r"``(test_\w+)``", doc))
    marks = _test_marks(ROOT / "tests" / "test_cupy_backend.py")
    assert len(named) >= 4 and named <= set(marks)
    assert "gpu" not in marks["test_cupy_routes"]


def test_bf16_is_held_as_uint16_bits_and_converts_as_ml_dtypes_does() -> None:
    # "`_bf16.py` bfloat16 as its bits (numpy uint16), to and from float32" (rounded to nearest
    # even, as torch does): every bit pattern, and float32 values with ties, against ml_dtypes
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from ema_core._bf16 import bf16_to_float32, float32_to_bf16

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    wide = bf16_to_float32(bits)
    want = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    assert wide.dtype == np.float32
    finite = ~np.isnan(want)
    assert np.array_equal(wide.view(np.uint32)[finite], want.view(np.uint32)[finite])
    assert np.isnan(wide[~finite]).all()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 1 << 32, 4096, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 1 << 16, 512, dtype=np.uint32) << 16) | 0x8000  # exactly half way
    values = np.concatenate([raw, ties]).view(np.float32)
    values = values[~np.isnan(values)]
    got = float32_to_bf16(values)
    assert got.dtype == np.uint16
    assert np.array_equal(got, values.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_posthoc_shares_the_schedules_gamma_conversion() -> None:
    # "`_power` (EDM2; `_gamma`: sigma_rel <-> gamma, shared with posthoc)"
    from ema_core import posthoc, schedules

    for module in ("ema_core.posthoc._math", "ema_core.schedules._power"):
        assert "ema_core.schedules._gamma" in import_graph()[module], module
    for sigma_rel in (0.01, 0.05, 0.1, 0.2):
        gamma = schedules.sigma_rel_to_gamma(sigma_rel)
        assert posthoc.sigma_rel_to_gamma(sigma_rel) == gamma
        assert posthoc.gamma_to_sigma_rel(gamma) == schedules.gamma_to_sigma_rel(gamma)


# ---- Why: ema-core's own behaviour -----------------------------------------------------------


def test_a_bf16_model_gets_a_shadow_that_moves_at_decay_0_9999() -> None:
    # "a bfloat16 shadow with decay 0.9999 never moves (`1 + 1e-4` rounds to 1 in bf16)":
    # ema-core's default shadow of bf16 weights moves, in the EMA class and the functional API
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    assert torch.tensor(1 + 1e-4, dtype=torch.bfloat16).item() == 1.0  # the peers' trap
    want = np.float32(1.0 + (1 - 0.9999) * (2.0 - 1.0))
    model = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(model.weight)
    averaged = EMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(2.0)
    averaged.update()
    shadow = averaged.average["weight"]
    assert shadow.dtype == torch.float32
    np.testing.assert_allclose(shadow.numpy(), np.full((4, 4), want), rtol=2e-7)
    config = ema.Config(schedule=0.9999)
    state = ema.init({"w": torch.ones(3, dtype=torch.bfloat16)}, config)
    state = ema.update(state, {"w": torch.full((3,), 2.0, dtype=torch.bfloat16)}, config)
    assert state.shadow["w"].dtype == torch.float32
    np.testing.assert_allclose(state.shadow["w"].numpy(), np.full(3, want), rtol=2e-7)

"""Statements of ``../shared/DESIGN.md`` that hold and had no test of their own.

Each test quotes the sentence it pins. The rest of the contract is covered by the topic files
(semantics: ``test_properties``, ``test_shadow_writes``, ``test_interval_product``,
``test_host_values``; layers: ``test_import_layers``; presets: ``test_presets``).
"""

from __future__ import annotations

import ast
import copy
import pickle
import subprocess
import sys
from dataclasses import FrozenInstanceError
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from tests.test_import_layers import PACKAGE, import_graph

ROOT = PACKAGE.parent

#: The packages above the core: the kernels, the API and everything built on it.
ABOVE_CORE = (
    "ema_core.backends",
    "ema_core._api",
    "ema_core.torch",
    "ema_core.jax",
    "ema_core.presets",
    "ema_core.compat",
    "ema_core.testing",
    "ema_core.posthoc",
    "ema_core.checkpoint",
    "ema_core.integrations",
)
#: "Optional dependencies (numba, safetensors, matplotlib, lightning, keras, accelerate,
#: triton)", and the array frameworks, all extras.
OPTIONAL = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "cupy",
    "numba",
    "safetensors",
    "matplotlib",
    "lightning",
    "keras",
    "accelerate",
    "triton",
    "optax",
    "flax",
    "equinox",
)
FRAMEWORKS = ("torch", "jax", "jaxlib", "cupy", "numba", "triton", "keras", "lightning")


@cache
def _trees() -> dict[Path, ast.Module]:
    """Every module of the package, parsed once for the tests below."""
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def _core_modules() -> dict[str, set[str]]:
    graph = import_graph()
    return {
        name: edges
        for name, edges in graph.items()
        if name != "ema_core" and not name.startswith(ABOVE_CORE)
    }


# ---- 1. Layout --------------------------------------------------------------------------------


def test_import_ema_core_imports_no_optional_dependency() -> None:
    # "`import ema_core` imports none of them"
    code = f"import sys, ema_core; print([m for m in {OPTIONAL!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_core_modules_import_nothing_above_them() -> None:
    # "Imports point downward only ... the core never imports" the kernels or what sits above
    core = _core_modules()
    assert {"ema_core._core", "ema_core._tree", "ema_core.schedules"} <= set(core)
    wrong = sorted(
        f"{name} -> {target}"
        for name, edges in core.items()
        for target in edges
        if target == "ema_core" or target.startswith(ABOVE_CORE)
    )
    assert wrong == []


def test_core_modules_import_no_framework_when_imported() -> None:
    # "the core never imports a framework": not at module level (a function may, once the
    # framework's arrays are there, as ``_pytree`` does for JAX)
    found = []
    for name in _core_modules():
        parts = name.split(".")[1:]
        path = PACKAGE.joinpath(*parts)
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in _trees()[path].body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{name}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert found == []


# ---- 2. Semantics ---------------------------------------------------------------------------


def test_a_same_dtype_half_shadow_blends_with_a_wide_rate_numpy() -> None:
    # "The decay and `1 - d` are computed in float64 on the host ... never in the leaf's low
    # precision": 1 - 0.9999 rounded to float16 would give another result for about 1 in 4
    params = (np.random.default_rng(0).random(4096) * 100 + 1).astype(np.float16)
    shadow = ema.ema_update(np.zeros(4096, np.float16), params, 1, decay=0.9999)
    wide = (params.astype(np.float64) * (1 - 0.9999)).astype(np.float16)
    half = (params.astype(np.float64) * float(np.float16(1 - 0.9999))).astype(np.float16)
    assert np.array_equal(shadow, wide) and not np.array_equal(shadow, half)


def test_a_same_dtype_half_shadow_blends_with_a_wide_rate_torch() -> None:
    pytest.importorskip("torch")
    import torch

    from ema_core.torch import EMA

    model = torch.nn.Linear(64, 64, bias=False).to(torch.bfloat16)
    torch.nn.init.zeros_(model.weight)
    averaged = EMA(model, decay=0.9999, dtype="same")
    with torch.no_grad():
        model.weight.copy_(torch.rand(64, 64) * 100 + 1)
    averaged.update()
    live = model.weight.detach().double()
    wide = (live * (1 - 0.9999)).bfloat16()
    half = (live * float(torch.tensor(1 - 0.9999).bfloat16())).bfloat16()
    got = averaged.average["weight"]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, wide) and not torch.equal(got, half)


def test_config_is_frozen_and_hashable_and_the_state_a_picklable_named_tuple() -> None:
    # STYLE 3: "State is an immutable `NamedTuple` (... picklable); hyperparameters live in a
    # frozen `Config`" that "works as a static `jax.jit` argument" (hashable, equal by value)
    config = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros", interval=2)
    twin = ema.Config(schedule=ema.schedules.warmup(0.99), init="zeros", interval=2)
    assert config == twin and hash(config) == hash(twin)
    with pytest.raises(FrozenInstanceError):
        config.init = "params"  # type: ignore[misc]
    state = ema.init({"w": np.ones(2)}, config)
    assert isinstance(state, tuple) and state._fields == ("step", "shadow", "weight")
    back = pickle.loads(pickle.dumps(state))
    assert int(back.step) == 0 and float(back.weight) == 0.0
    assert np.array_equal(back.shadow["w"], np.zeros(2))


# ---- 4. Backends: the torch EMA ---------------------------------------------------------------


def test_the_torch_ema_never_deep_copies_the_model() -> None:
    # "an `EMA` class for `nn.Module`s ... that never deep-copies the model (FSDP2 models
    # cannot be deep-copied)"
    pytest.importorskip("torch")
    import torch

    from ema_core.torch import EMA

    class NoCopy(torch.nn.Sequential):
        def __deepcopy__(self, memo: dict[int, Any]) -> NoCopy:
            raise RuntimeError("deep-copied")

        def __copy__(self) -> NoCopy:
            raise RuntimeError("copied")

    linear = torch.nn.Linear(3, 2)
    model = NoCopy(linear, torch.nn.BatchNorm1d(2))
    with pytest.raises(RuntimeError, match="deep-copied"):
        copy.deepcopy(model)
    averaged = EMA(model, decay=0.5)
    with torch.no_grad():
        linear.weight.add_(1.0)
    averaged.update()
    with averaged.swap():
        pass
    averaged.load_state_dict(averaged.state_dict())
    lives = {n: t.untyped_storage().data_ptr() for n, t in model.state_dict().items()}
    shadows = {n: t.untyped_storage().data_ptr() for n, t in averaged.average.items()}
    assert set(shadows) <= set(lives) and not set(shadows.values()) & set(lives.values())


# ---- 6. Bad input ---------------------------------------------------------------------------


def test_no_assert_statement_in_the_package() -> None:
    # "No `assert` on user input" (``python -O`` would drop them)
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert)
    ]
    assert found == []

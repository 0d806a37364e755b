"""Every public function carries a runnable ``>>>`` example (STYLE.md habit 8).

A public function is a function named in the ``__all__`` of a public module (a module without
``__all__``, such as ``ema_core.compat.paddle``, offers its public names defined there). The
examples run as doctests with the rest of ``ema_core/`` (``--doctest-modules``); this file only
makes sure none is missing. Classes are left out: habit 8 asks for examples on functions, and
almost none of the classes' public methods (callbacks, ``state_dict``, ``Schedule.pair``) have
one, the class docstring carrying the example instead.

A module whose framework is not installed is skipped.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType

import pytest

import ema_core

#: Public module -> the optional packages it imports (the test skips without them).
MODULES: dict[str, tuple[str, ...]] = {
    "ema_core": (),
    "ema_core.schedules": (),
    "ema_core.presets": (),
    "ema_core.torch": ("torch",),
    "ema_core.jax": ("jax",),
    "ema_core.checkpoint": ("numpy",),
    "ema_core.posthoc": ("numpy",),
    "ema_core.testing": ("numpy", "hypothesis"),
    "ema_core.compat": (),
    "ema_core.compat.allennlp": (),
    "ema_core.compat.mmedit": ("torch",),
    "ema_core.compat.paddle": (),
    "ema_core.compat.tensorflow": (),
    "ema_core.integrations": (),
    "ema_core.integrations.accelerate": ("torch", "accelerate"),
    "ema_core.integrations.keras": ("jax", "keras"),
    "ema_core.integrations.lightning": ("torch", "lightning"),
}

#: Public modules this file does not check: the leaf kernels, which users do not call.
NOT_CHECKED = frozenset({"ema_core.backends"})


def _import(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for package in MODULES[name]:
        pytest.importorskip(package)
    if name == "ema_core.integrations.keras" and "keras" not in sys.modules:
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # Keras reads it once, on import
    return importlib.import_module(name)


def _public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    ]


def _functions_without_example(module: ModuleType) -> set[str]:
    missing = set()
    for name in _public_names(module):
        value = getattr(module, name)
        if inspect.isclass(value) or not inspect.isroutine(value):
            continue
        if ">>>" not in (inspect.getdoc(value) or ""):
            missing.add(f"{module.__name__}.{name}")
    return missing


@pytest.mark.parametrize("name", sorted(MODULES))
def test_public_functions_have_an_example(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = sorted(_functions_without_example(_import(name, monkeypatch)))
    assert not missing, f"public functions without a >>> example: {missing}"


def test_every_public_module_is_listed() -> None:
    """A new public module (a file or package without a leading ``_``) joins ``MODULES``."""
    root = Path(ema_core.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        name = ".".join(parts)
        if not any(name == skip or name.startswith(skip + ".") for skip in NOT_CHECKED):
            found.add(name)
    unlisted = sorted(found - set(MODULES))
    assert not unlisted, f"public modules missing from MODULES (or NOT_CHECKED): {unlisted}"

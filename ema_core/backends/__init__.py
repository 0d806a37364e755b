"""Backends: per-framework implementations of the leaf update, found lazily by namespace.

Every backend offers ``update_leaves`` (the blend of many leaves, in place where asked) and
``guard()`` (a context the core runs in, such as ``torch.no_grad``). The generic Array API backend
serves every namespace; a framework's own file is imported only when its arrays show up, and
detection reads ``sys.modules`` through array-api-compat, so no framework is ever imported here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import array_api_compat as compat

from ema_core._types import Namespace

#: (namespace test, module) pairs; the first match wins, the generic backend is the fallback.
_REGISTRY: list[tuple[Callable[[Any], bool], str]] = [
    (compat.is_torch_namespace, "ema_core.backends.torch"),
    (compat.is_jax_namespace, "ema_core.backends.jax"),
    (compat.is_numpy_namespace, "ema_core.backends.numpy"),
    (compat.is_cupy_namespace, "ema_core.backends.cupy"),
]
_GENERIC = "ema_core.backends.generic"
_CACHE: dict[int, Any] = {}


def get_backend(xp: Namespace) -> Any:
    """The backend module for namespace ``xp`` (cached per namespace)."""
    key = id(xp)
    if key not in _CACHE:
        name = next((mod for test, mod in _REGISTRY if test(xp)), _GENERIC)
        _CACHE[key] = _load(name)
    return _CACHE[key]


def _load(name: str) -> Any:
    """Import a backend module; a framework whose adapter file does not exist yet uses generic."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return importlib.import_module(_GENERIC)

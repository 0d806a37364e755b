"""Backends: per-framework leaf kernels (below the API), found lazily by namespace.

Every backend is a module that follows ``Backend``: ``update_leaves`` (the blend of many
leaves, in place where asked; its route table is in the module's docstring) and ``guard()`` (a
context the core runs in, such as ``torch.no_grad``). Optional members, read with ``getattr``:
``scalar_device`` (where ``init`` puts its 0-d step and weight), ``leaf_signature`` /
``same_signature`` (what the stateless call's plan cache compares, ``ema_core._stateless``),
``PLAN_MEMO`` (``update_leaves`` takes a ``memo`` dict to keep its plan in), ``update_scalars``
(an eager ``update``'s step, decay, rate and weight in one call, or ``None``),
``correct_leaves`` (``average``'s division of all float leaves in one call), ``NAMES_LEAVES``
(``update_leaves`` takes ``names``, the roots and paths its errors name a leaf by),
``check_storage`` (a refusal of leaves with no memory behind them) and ``finite_stand_ins``
(what ``guard_finite`` reads in the leaves' place: torch's all-reduced count for a sharded
DTensor, so that every rank gives one answer); ``leaf_names``, ``check_storage`` and
``finite_values`` below call the last three for the API.

The generic Array API backend serves every namespace; a framework's own module is imported only
when its arrays show up, and detection reads ``sys.modules`` through array-api-compat, so no
framework is ever imported here:

==================  ===========================================================================
namespace           module (its docstring has the route table)
==================  ===========================================================================
torch               ``torch``: ``torch._plan`` groups, ``torch._routes`` routes (foreach, the
                    host engine on CPU, ``torch._cuda`` blocked / Triton on CUDA, the core for
                    the rest)
JAX                 ``jax``: one compiled function per structure (``jax._leaves``)
numpy               ``numpy``: the host engine (``host``), the core for the rest;
                    ``_numpy_memory``: what its plan cache reads of an array's memory
CuPy                ``cupy``: fused elementwise and multi-tensor kernels (their CUDA source
                    and builders: ``_cupy_kernels``)
anything else       ``generic``: the core's math leaf by leaf
==================  ===========================================================================

``host`` is the CPU engine that numpy arrays and CPU torch tensors share (a plan over flat host
views, numba's compiled loops or numpy blocks); its docstring says how.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import array_api_compat as compat

from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy, Value


class Backend(Protocol):
    """What the API calls on a backend module (the optional members: module docstring)."""

    def guard(self) -> AbstractContextManager[None]:
        """The context every leaf operation runs in."""

    def update_leaves(
        self,
        xp: Namespace,
        shadows: Sequence[Array],
        params: Sequence[Array],
        kinds: Sequence[LeafKind],
        decay: Value,
        rate: Value,
        *,
        non_float: NonFloatPolicy,
        writes: Sequence[bool],
    ) -> list[Array]:
        """New shadows: float leaves blended with ``decay`` (``rate = 1 - decay``), exact ones
        copied per ``non_float``; ``writes[i]`` writes into ``shadows[i]`` and returns it."""


#: (namespace test, module) pairs; the first match wins, the generic backend is the fallback.
_REGISTRY: list[tuple[Callable[[Any], bool], str]] = [
    (compat.is_torch_namespace, "ema_core.backends.torch"),
    (compat.is_jax_namespace, "ema_core.backends.jax"),
    (compat.is_numpy_namespace, "ema_core.backends.numpy"),
    (compat.is_cupy_namespace, "ema_core.backends.cupy"),
]
_GENERIC = "ema_core.backends.generic"
_CACHE: dict[int, Any] = {}


def get_backend(xp: Namespace) -> Backend:
    """The backend module for namespace ``xp`` (cached per namespace)."""
    key = id(xp)
    if key not in _CACHE:
        name = next((mod for test, mod in _REGISTRY if test(xp)), _GENERIC)
        _CACHE[key] = _load(name)
    backend: Backend = _CACHE[key]
    return backend


def _load(name: str) -> Any:
    """Import a backend module; a framework whose adapter file does not exist yet uses generic."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return importlib.import_module(_GENERIC)


def leaf_names(backend: Any, shadow: str, params: str, paths: Sequence[Any]) -> dict[str, Any]:
    """``update_leaves``'s keyword ``names`` (the shadows' root, the params' root, the leaves'
    paths) for a backend that names the leaves it refuses; no keyword for the others."""
    return {"names": (shadow, params, paths)} if getattr(backend, "NAMES_LEAVES", False) else {}


def check_storage(backend: Any, leaves: Sequence[Array], paths: Sequence[Any], name: str) -> None:
    """The backend's refusal of leaves without memory behind them (torch: a storage freed or
    shrunk), for ``init`` and ``average``, whose copies no backend update sees."""
    check = getattr(backend, "check_storage", None)
    if check is not None:
        check(leaves, paths, name)


def finite_values(backend: Any, leaves: Sequence[Array]) -> Sequence[Array]:
    """What ``guard_finite`` checks in the ``leaves``' place: the backend's stand-ins (torch:
    one value per sharded DTensor, the same on every rank), else the leaves themselves."""
    stand_ins = getattr(backend, "finite_stand_ins", None)
    return leaves if stand_ins is None else stand_ins(leaves)

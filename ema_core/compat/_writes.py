"""The drop-in classes' writes into the caller's arrays, and the checks that keep them whole:
``assign`` (in place for numpy, CuPy and torch, by rebinding for JAX), ``assign_all`` (every
name, all checked before the first write), ``check_writable`` (a read-only numpy array cannot
take a write) and ``check_parameters`` / ``check_materialized`` (tracked arrays of one framework,
dense, with values: not on torch's meta device). Frameworks are found from the arrays; nothing
here imports one."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TypeVar

import array_api_compat as compat

from ema_core._leaf_checks import check_leaves
from ema_core._types import Array

_Key = TypeVar("_Key")  # names (str), or positions in TF's var_list (int)


def check_parameters(params: Mapping[_Key, Array], name: str) -> None:
    """The parameters a class is built on (or TF's ``var_list`` of an ``apply``, keyed by name
    or position): arrays of one framework, dense, with values.

    Raises:
        TypeError: arrays of two frameworks, or a sparse or nested torch tensor.
        ValueError: a torch tensor on the meta device (a skeleton not yet materialized).
    """
    leaves = list(params.values())
    check_leaves(leaves, leaves, [(("key", k),) for k in params], (name, name))
    check_materialized(params, name)


_BUILD_LATER = "build the EMA after the weights are materialized"


def check_materialized(arrays: Mapping[_Key, Array], name: str, fix: str = _BUILD_LATER) -> None:
    """Raise ``ValueError`` for a torch tensor on the meta device: it has no values to average,
    and a write into it is lost (``to_empty`` later gives the module new tensors). ``fix`` says
    what to do first (default: build the EMA later)."""
    for key, value in arrays.items():
        if compat.is_torch_array(value) and value.is_meta:
            raise ValueError(
                f"{name}[{key!r}] is on the meta device (it has no values to average): {fix} "
                "(module.to_empty(...) and initialization, or loading a checkpoint)"
            )


def check_writable(arrays: Mapping[str, Array], name: str) -> None:
    """Raise ``ValueError`` for an array that a write is needed in but that refuses writes: a
    read-only numpy array (``flags.writeable`` False: ``np.load(mmap_mode="r")``,
    ``np.asarray`` of a JAX array). JAX arrays and numpy scalars pass: they are rebound, not
    written."""
    for key, value in arrays.items():
        if not (compat.is_writeable_array(value) or _rebound(value)):
            raise ValueError(
                f"{name}[{key!r}] is a read-only {type(value).__name__} (flags.writeable is "
                "False), but the values must be written into it in place: pass a writeable "
                "array (np.array(x) copies one)"
            )


def assign(dst: Array, src: Array) -> Array:
    """Write ``src`` into ``dst`` in place and return ``dst``; where ``dst`` is immutable (a
    JAX array, a numpy scalar) return ``src`` in ``dst``'s dtype instead, for the caller to
    rebind. A read-only numpy ``dst`` raises numpy's error: callers name it with
    ``check_writable`` before any write."""
    if compat.is_torch_array(dst):
        import torch

        with torch.no_grad():
            dst.copy_(src)
        return dst
    xp = compat.array_namespace(dst)
    value = src if src.dtype == dst.dtype else xp.astype(src, dst.dtype)
    if not _rebound(dst):
        dst[...] = value
        return dst
    np = sys.modules.get("numpy")
    if np is not None and isinstance(dst, np.generic):  # a scalar in, a scalar out
        return np.asarray(value, dtype=dst.dtype)[()]
    return value if value is not src else xp.asarray(src, copy=True)


def _rebound(value: Array) -> bool:
    """Whether a parameter is rebound to its new values rather than written: immutable (a JAX
    array, a numpy scalar)."""
    np = sys.modules.get("numpy")  # (a numpy scalar exists only once numpy is imported)
    return compat.is_jax_array(value) or (np is not None and isinstance(value, np.generic))


def assign_all(
    dst: dict[str, Array], src: Mapping[str, Array], name: str = "parameters"
) -> dict[str, Array]:
    """``assign`` for every name; ``dst`` is updated to the arrays now holding the values.

    Raises:
        ValueError: a pair whose shapes differ (a parameter resized in place, ``p.data =
            torch.zeros(3)``, after the EMA was built), or a read-only ``dst`` (named as
            ``name[key]``), before anything is written.
    """
    for key, value in dst.items():
        if tuple(value.shape) != tuple(src[key].shape):
            raise ValueError(
                f"{key!r} has shape {tuple(value.shape)} but the values to write into it "
                f"{tuple(src[key].shape)}: a parameter resized after the EMA was built cannot "
                "take its average or backup; build a new EMA for the new shapes"
            )
    check_writable(dst, name)
    for key, value in dst.items():
        dst[key] = assign(value, src[key])
    if any(map(compat.is_torch_array, dst.values())):
        from ema_core.backends.torch._caches import forget_derived

        forget_derived()  # casts / parametrized weights of the old values, cached in a region
    return dst

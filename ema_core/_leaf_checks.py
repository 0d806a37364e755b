"""Validation of the leaves: one namespace, matching shapes, devices and layouts, the leaf kinds
(float or exact) and finite values on request. Everything here runs before the first write.

Errors follow ``_checks``' rule: ``TypeError`` for a wrong type, ``ValueError`` for a wrong value,
naming the leaf by its path. Only shapes, dtypes, devices and host values are read, never values
inside traced or compiled code. torch leaves are checked in bulk (the namespace found once per
type, shapes, devices, layouts and dtype pairs compared together); on any failure the per-leaf
loop runs, so the first failing leaf and its message are the same either way.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import sys
from collections.abc import Sequence
from typing import Any

import array_api_compat as compat

from ema_core._leaf_dtypes import pair_kind
from ema_core._paths import Path, path_str
from ema_core._types import Array, LeafKind, Namespace, NonFloatPolicy

_NOT_AN_ARRAY = (
    "convert it (np.asarray, jnp.asarray, torch.as_tensor) or leave it out of the tree you "
    "average (for flax nnx: nnx.state(model, nnx.Param))"
)
_TO_DEVICE = (
    "; a state brought to the host (jax.device_get, pickle) goes back with jax.device_put(state); "
    "a numpy leaf among JAX ones converts with jnp.asarray"
)


def _namespace_of(leaf: Any, where: str) -> Namespace:
    if not compat.is_array_api_obj(leaf):
        raise TypeError(f"{where} must be an array, got {type(leaf).__name__}: {_NOT_AN_ARRAY}")
    if _masked(type(leaf)):
        raise TypeError(
            f"{where} is a numpy masked array (np.ma), whose mask the blend would not keep "
            "consistently: pass np.ma.getdata(a) (every value) or a.filled(x)"
        )
    return compat.array_namespace(leaf)


def _masked(kind: type) -> bool:
    """An ``np.ma`` array type (``numpy.ma`` is imported lazily: not loaded, none exist). A
    module another thread is still importing may not have its class yet: none of its arrays
    exist then either."""
    masked = getattr(sys.modules.get("numpy.ma"), "MaskedArray", None)
    return masked is not None and issubclass(kind, masked)


def check_leaves(
    shadows: Sequence[Array],
    params: Sequence[Array],
    paths: Sequence[Path],
    names: tuple[str, str] = ("shadow", "params"),
    non_float: NonFloatPolicy = "copy",
) -> tuple[Namespace, list[LeafKind]]:
    """Check leaf pairs: arrays of one namespace, equal shapes and devices, compatible dtypes.

    Returns the namespace and, per leaf, whether it is averaged ("float") or copied ("exact").
    Work per leaf is a shape compare, a device compare (not for numpy) and a dict lookup; the
    namespace is found once per array type and the dtype rules once per dtype pair.
    """
    if not params:
        raise ValueError(f"{names[1]} holds no arrays: nothing to average")
    xp = _common_namespace(shadows, params, paths, names)
    kinds = _torch_kinds(xp, shadows, params, non_float)
    if kinds is not None:
        return xp, kinds
    devices = not compat.is_numpy_namespace(xp) and not _is_traced(params[0])
    layouts = compat.is_torch_namespace(xp)
    by_dtypes: dict[tuple[Any, Any], LeafKind] = {}
    kinds = []
    for i, (s, p) in enumerate(zip(shadows, params, strict=True)):
        if layouts:
            _check_layouts(s, p, paths[i], names)
        if s.shape != p.shape:
            raise ValueError(
                f"{path_str(names[0], paths[i])} has shape {tuple(s.shape)} but "
                f"{path_str(names[1], paths[i])} has shape {tuple(p.shape)}; they must be equal"
            )
        if devices:
            _check_devices(s, p, paths[i], names)
        kind = by_dtypes.get((s.dtype, p.dtype))
        if kind is None:
            kind = pair_kind(xp, s.dtype, p.dtype, paths[i], names, non_float)
            by_dtypes[(s.dtype, p.dtype)] = kind
        kinds.append(kind)
    return xp, kinds


_SHAPE, _DEVICE, _DTYPE = (operator.attrgetter(a) for a in ("shape", "device", "dtype"))


def _torch_kinds(
    xp: Namespace, shadows: Sequence[Array], params: Sequence[Array], non_float: NonFloatPolicy
) -> list[LeafKind] | None:
    """The kinds of torch leaf pairs found with C-level passes (``map``, no tuple kept per leaf)
    when every check passes; None sends the caller to the per-leaf loop, which names the first
    leaf that fails."""
    if not compat.is_torch_namespace(xp):
        return None
    eq = operator.eq
    # layouts first: a nested tensor (strided layout, is_nested) has no plain shape to read
    layouts = set(map(operator.attrgetter("layout"), itertools.chain(shadows, params)))
    nested = any(map(operator.attrgetter("is_nested"), itertools.chain(shadows, params)))
    if nested or layouts != {sys.modules["torch"].strided}:
        return None
    if not all(map(eq, map(_SHAPE, shadows), map(_SHAPE, params))):
        return None
    if not all(map(eq, map(_DEVICE, shadows), map(_DEVICE, params))):
        return None
    by_dtypes: dict[tuple[Any, Any], LeafKind] = {}
    for pair in set(zip(map(_DTYPE, shadows), map(_DTYPE, params), strict=True)):
        try:
            by_dtypes[pair] = pair_kind(xp, *pair, (), ("shadow", "params"), non_float)
        except TypeError:
            return None
    return list(
        map(by_dtypes.__getitem__, zip(map(_DTYPE, shadows), map(_DTYPE, params), strict=True))
    )


def _common_namespace(
    shadows: Sequence[Array], params: Sequence[Array], paths: Sequence[Path], names: tuple[str, str]
) -> Namespace:
    one_of_each = dict(
        zip(
            map(type, itertools.chain(shadows, params)),
            itertools.chain(shadows, params),
            strict=True,
        )
    )
    if all(map(compat.is_array_api_obj, one_of_each.values())) and not any(
        map(_masked, one_of_each)
    ):
        spaces = set(map(compat.array_namespace, one_of_each.values()))
        if len(spaces) == 1:
            return spaces.pop()
    by_type: dict[type, Namespace] = {}
    xp: Any = None
    first = ""  # the leaf that set xp, for the message
    for name, leaves in zip(names, (shadows, params), strict=True):
        for leaf, path in zip(leaves, paths, strict=True):
            ns = by_type.get(type(leaf))
            if ns is None:
                ns = by_type[type(leaf)] = _namespace_of(leaf, path_str(name, path))
            if xp is None:
                xp, first = ns, f"{path_str(name, path)} ({type(leaf).__name__})"
            if ns is not xp:
                where = f"{path_str(name, path)} ({type(leaf).__name__})"
                raise TypeError(_mixed(where, ns, first, xp))
    return xp


def _mixed(where: str, ns: Namespace, first: str, xp: Namespace) -> str:
    """Leaf ``where`` of ``ns`` after ``first`` of ``xp``; the way back for numpy beside JAX."""
    pair = (ns, xp)
    host = any(map(compat.is_numpy_namespace, pair)) and any(map(compat.is_jax_namespace, pair))
    return (
        f"{where} is an array of {ns.__name__}, but {first} is of {xp.__name__}: all leaves "
        f"must come from one namespace{_TO_DEVICE if host else ''}"
    )


def _is_traced(x: Any) -> bool:
    """A JAX tracer: its placement is jit's business (and asking costs a walk of the trace)."""
    return compat.is_jax_array(x) and isinstance(x, sys.modules["jax"].core.Tracer)


def _check_layouts(s: Array, p: Array, path: Path, names: tuple[str, str]) -> None:
    """Torch tensors must be dense: sparse and nested ones have no in-place blend (checked
    before writing)."""
    strided = sys.modules["torch"].strided
    for leaf, name in ((s, names[0]), (p, names[1])):
        if leaf.layout is not strided or leaf.is_nested:
            what = "nested" if leaf.is_nested else leaf.layout
            raise TypeError(
                f"{path_str(name, path)} is a {what} tensor; only dense (torch.strided) "
                "tensors can be averaged: convert it with .to_dense() (a nested tensor: "
                "average its components, t.unbind())"
            )


def _check_devices(s: Array, p: Array, path: Path, names: tuple[str, str]) -> None:
    try:
        ds, dp = compat.device(s), compat.device(p)
    except RuntimeError:  # a deleted JAX array has no device: name it (checked only now)
        for leaf, name in ((s, names[0]), (p, names[1])):
            if compat.is_jax_array(leaf) and leaf.is_deleted():
                raise ValueError(
                    f"{path_str(name, path)} was deleted (donated to a call that donates it, "
                    "such as make_update, or deleted by hand): pass the arrays that call "
                    "returned"
                ) from None
        raise
    mismatch = ds is not None and dp is not None and ds != dp and not _equivalent(ds, dp, s)
    # JAX moves an array made without device_put to the other one's devices: read only then
    if mismatch and not (_uncommitted(s) or _uncommitted(p)):
        raise ValueError(
            f"{path_str(names[0], path)} is on device {ds} but {path_str(names[1], path)} is on "
            f"{dp}; move them to one device"
        )


def _uncommitted(x: Array) -> bool:
    """A JAX array made without ``device_put`` (JAX places it by the other arguments); a
    tracer has no placement to read (the outer transformation places it)."""
    with contextlib.suppress(Exception):
        return compat.is_jax_array(x) and x.committed is False
    return False


def _equivalent(ds: Any, dp: Any, s: Array) -> bool:
    """Two JAX shardings that place ``s``'s elements alike (``P('x',)`` and ``P('x', None)``;
    ``P()`` and ``P(None,)``): the same devices for the same elements, spelled otherwise."""
    same = getattr(ds, "is_equivalent_to", None)
    return same is not None and hasattr(dp, "is_equivalent_to") and bool(same(dp, s.ndim))


def check_finite(
    xp: Namespace,
    params: Sequence[Array],
    kinds: Sequence[LeafKind],
    paths: Sequence[Path],
    name: str = "params",
) -> None:
    """Reject NaN or infinite params (reads values: a host sync, done only when asked).

    Raises:
        ValueError: a floating leaf (averaged or copied) holds NaN or inf (its path named),
            or the params are traced
            (JAX: inside ``jit``, ``vmap`` or ``scan`` no value can be read).
    """
    jax = sys.modules.get("jax")
    for p, kind, path in zip(params, kinds, paths, strict=True):
        if kind != "float" and not xp.isdtype(p.dtype, ("real floating", "complex floating")):
            continue  # an integer leaf; a copied floating one (torch buffers="copy") counts
        finite = xp.all(xp.isfinite(p))  # traced too for concrete params inside a jax.lax.scan
        if jax is not None and isinstance(finite, jax.core.Tracer):
            raise ValueError(
                "Config(guard_finite=True) reads the params on the host, but they are traced "
                "(the update called inside jax.jit, vmap or scan): call it outside, or wrap "
                "the optimizer in optax.apply_if_finite to skip non-finite steps"
            )
        if not bool(finite):
            raise ValueError(
                f"{path_str(name, path)} holds NaN or infinite values "
                "(guard_finite=True); no shadow was changed"
            )

"""What the drop-in classes share: named arrays from the seeds' inputs, their checks against the
tracked ones, copies and reads (the writes are in ``_writes``). Frameworks are found from the
arrays; nothing here imports one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import array_api_compat as compat

from ema_core._types import Array


def is_module(obj: Any) -> bool:
    """A torch ``nn.Module`` (checked without importing torch)."""
    return callable(getattr(obj, "named_parameters", None)) and callable(
        getattr(obj, "named_buffers", None)
    )


def named_arrays(
    obj: Any, name: str, *, allow_plain: bool = False, allow_empty: bool = False
) -> dict[str, Array]:
    """``{name: array}`` from a torch module (its named parameters), a mapping, or an iterable of
    ``(name, array)`` pairs (or of plain arrays, named ``"0"``, ``"1"``, ..., if allowed; none
    if allowed)."""
    if is_module(obj):
        items: list[Any] = list(obj.named_parameters())
    elif isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, Iterable) and not compat.is_array_api_obj(obj):
        items = list(obj)
    else:
        raise TypeError(f"{name} must be named arrays, got {type(obj).__name__}")
    if allow_plain and items and all(compat.is_array_api_obj(x) for x in items):
        items = [(str(i), x) for i, x in enumerate(items)]
    out: dict[str, Array] = {}
    for i, item in enumerate(items):
        # a tuple, or a two-item list as AllenNLP's trainers build (``[[n, p] for n, p in ...]``)
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"{name}[{i}] must be a (name, array) pair, got {item!r:.80}")
        check_array(item[1], f"{name}[{item[0]!r}]")
        if item[0] in out:
            raise ValueError(f"{name} holds the name {item[0]!r} twice")
        out[item[0]] = item[1]
    if not out and not allow_empty:
        raise ValueError(f"{name} holds no arrays: nothing to average")
    return out


_Key = TypeVar("_Key")  # the names (str), or TF's keys (a name or an id)
VarKey = str | int  # TF's variables: by name, or by id for a plain array


def check_array(x: Any, where: str) -> None:
    if not compat.is_array_api_obj(x):
        raise TypeError(f"{where} must be an array, got {type(x).__name__}")


def check_like(new: Mapping[_Key, Array], old: Mapping[_Key, Array], name: str) -> None:
    """New values for the tracked arrays must name exactly the same arrays, each of the same
    shape, dtype and array type, with data (not a torch meta or sparse tensor). Checked for all
    before any is written, so that the writes that follow cannot fail halfway."""
    if set(new) != set(old):
        missing = sorted(set(old) - set(new), key=repr)
        extra = sorted(set(new) - set(old), key=repr)
        raise ValueError(f"{name} must name the tracked arrays; missing {missing}, extra {extra}")
    for key, value in new.items():
        where, ref = f"{name}[{key!r}]", old[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"{where} has shape {tuple(value.shape)}, the tracked array {tuple(ref.shape)}"
            )
        if compat.array_namespace(value) is not compat.array_namespace(ref):
            raise TypeError(
                f"{where} is a {type(value).__name__}, the tracked array a {type(ref).__name__}"
            )
        if value.dtype != ref.dtype:
            raise TypeError(f"{where} has dtype {value.dtype}, the tracked array {ref.dtype}")
        if compat.is_torch_array(value) and (value.is_meta or value.layout != ref.layout):
            raise ValueError(
                f"{where} must be a dense tensor with data like the tracked one, got "
                f"layout {value.layout} on device {value.device}"
            )


def clone(x: Array) -> Array:
    """An independent copy (detached from autograd for torch)."""
    if compat.is_torch_array(x):
        return x.detach().clone()
    return compat.array_namespace(x).asarray(x, copy=True)


def divide(x: Array, weight: float) -> Array:
    """``x / weight`` in ``x``'s dtype (float32 or wider arithmetic; complex as it is); non-float
    arrays, and all where ``weight`` is 0 (a zero-started average read through ``1 - d ** t``
    with a decay that rounds to 1: the peers' inf / nan), as they are (copied), as
    ``ema_core.average`` reads."""
    xp = compat.array_namespace(x)
    if weight == 0.0 or not xp.isdtype(x.dtype, ("real floating", "complex floating")):
        return xp.asarray(x, copy=True)
    if xp.isdtype(x.dtype, "complex floating"):  # complex64 or wider; torch's complex32 too
        wide = x if x.dtype in (xp.complex64, xp.complex128) else xp.astype(x, xp.complex64)
    else:
        wide = x if x.dtype in (xp.float32, xp.float64) else xp.astype(x, xp.float32)
    out = wide / weight
    return out if out.dtype == x.dtype else xp.astype(out, x.dtype)


def var_items(
    var_list: Any, arg: str = "var_list", *, merge: bool = False
) -> list[tuple[VarKey, str | None, Array]]:
    """``(key, name, array)`` per variable: named ones are keyed by name, plain arrays by id;
    errors name the argument ``arg`` (``var_list``, or ``moving_avg_variables``). A variable
    given twice is refused, or with ``merge`` kept once (TF merges the overlap of its default
    ``moving_average_variables() + trainable_variables()``)."""
    if var_list is None:
        raise ValueError(f"{arg} must list the variables to average, got None")
    if is_module(var_list):
        var_list = list(var_list.named_parameters())
    elif isinstance(var_list, Mapping):
        var_list = list(var_list.items())
    elif compat.is_array_api_obj(var_list):
        var_list = [var_list]
    elif isinstance(var_list, str) or not isinstance(var_list, Iterable):
        raise TypeError(
            f"{arg} must be arrays or (name, array) pairs, got {type(var_list).__name__}"
        )
    out: dict[VarKey, tuple[VarKey, str | None, Array]] = {}
    # id of each mutable array -> its first index (tied weights: one array under two names);
    # an immutable JAX array under two names is two variables that hold the same values now
    seen: dict[int, int] = {}
    for i, item in enumerate(var_list):
        name, var = floating_item(item, f"{arg}[{i}]")
        key: VarKey = id(var) if name is None else name
        first = i if name is not None and compat.is_jax_array(var) else seen.setdefault(id(var), i)
        if (key in out or first != i) and merge:
            continue
        if key in out or first != i:
            what = "the same array" if name is None else f"the name {name!r}"
            if key not in out:
                what = f"{arg}[{first}]'s array" + ("" if name is None else f" as {name!r}")
            raise ValueError(
                f"{arg}[{i}] repeats {what}: each variable is averaged once, under one name"
            )
        out[key] = (key, name, var)
    return list(out.values())


def floating_item(item: Any, where: str) -> tuple[str | None, Array]:
    """A variable given as an array or a ``(name, array)`` pair; floating arrays only."""
    name, var = None, item
    if isinstance(item, tuple) and len(item) == 2:
        if not isinstance(item[0], str):
            raise TypeError(
                f"{where} must be an array or a (name, array) pair with a str name, "
                f"got a pair starting with {type(item[0]).__name__}"
            )
        name, var = item
    check_array(var, where)
    if not compat.array_namespace(var).isdtype(var.dtype, "real floating"):
        raise TypeError(f"{where} must be bfloat16/float16/float32/float64, got {var.dtype}")
    return name, var


def same_memory(a: Any, b: Any) -> bool:
    """Two arrays over the same elements (torch, numpy, CuPy): one shape, dtype, first
    element and strides (``w.detach()``, ``w[:]``; not ``w.T`` or ``w[::2]``)."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        return False
    first = _layout(a)
    return first is not None and first == _layout(b)


def _layout(x: Any) -> tuple[int, tuple[int, ...]] | None:
    """The address of the first element and the strides (in bytes for numpy and CuPy, in
    elements for torch: compared within one framework), None if not known or empty."""
    if compat.is_torch_array(x):
        return (int(x.data_ptr()), tuple(x.stride())) if x.numel() else None
    if compat.is_numpy_array(x):
        return (int(x.__array_interface__["data"][0]), x.strides) if x.size else None
    if compat.is_cupy_array(x):
        return (int(x.data.ptr), tuple(x.strides)) if x.size else None
    return None

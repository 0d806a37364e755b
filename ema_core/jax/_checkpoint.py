"""Checkpoints of an ``EMAState`` of JAX arrays as flat numpy arrays (``np.savez``).

An ``EMAState`` is a pytree, so orbax and other pytree checkpointers save it as it is; these two
functions are for plain ``.npz`` files. Values round-trip bit for bit (bfloat16 included: numpy
stores it as raw 2-byte records, which are viewed back), so training continues identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, overload

import jax
import numpy as np
from array_api_compat import is_array_api_obj

from ema_core._types import EMAState
from ema_core.jax._call_checks import check_readable
from ema_core.jax._packed import PackedState, fill, unpack
from ema_core.jax._split import split


def state_dict(state: EMAState | PackedState, /) -> dict[str, np.ndarray]:
    """The state's arrays on the host, by path: ``"step"``, ``"weight"``, ``"shadow/<key>/..."``.

    A name joins the path's keys with ``/``, each key escaped as in a JSON pointer (``~`` as
    ``~0``, ``/`` as ``~1``), so the key ``"a/b"`` and the nest ``{"a": {"b": ...}}`` save as
    ``shadow/a~1b`` and ``shadow/a/b``. A ``PackedState`` (``pack``) is saved as the
    ``EMAState`` it packs (``unpack``): the same names and arrays, either loads into either.
    A shadow's leaves that are not arrays (an equinox module's functions and flags) are not
    saved: ``load_state_dict`` takes them from ``like``.

    Raises:
        TypeError: ``state`` is not an ``EMAState`` or a ``PackedState`` (params, say), or its
            shadow holds arrays of another framework (a torch state: its shadows would be lost).
        ValueError: two arrays would still share a name (a custom pytree node whose keys
            print alike, such as the int ``0`` and the string ``"0"``), or an array of the
            state was deleted (donated to an update since).

    Example:
        >>> import io, numpy as np, jax.numpy as jnp, ema_core as ema
        >>> from ema_core.jax import load_state_dict, state_dict
        >>> state = ema.init({"w": jnp.ones(2)})
        >>> sorted(state_dict(state))
        ['shadow/w', 'step', 'weight']
        >>> buf = io.BytesIO(); np.savez(buf, **state_dict(state)); _ = buf.seek(0)
        >>> load_state_dict(np.load(buf), state).shadow["w"].tolist()
        [1.0, 1.0]
    """
    if isinstance(state, PackedState):  # saved as its EMAState: the two files are alike
        state = unpack(state)
    if not isinstance(state, EMAState):  # params passed by mistake would save without a step
        raise TypeError(
            "state must be an EMAState (ema.init, make_update) or a PackedState (pack), got "
            f"{type(state).__name__}"
        )
    check_readable(state, "state")
    every = jax.tree_util.tree_flatten_with_path(state)[0]
    foreign = [(p, x) for p, x in every if not _saved(p, x) and is_array_api_obj(x)]
    if foreign:  # a torch state's shadows: not a module's static leaves, which are left out
        raise TypeError(
            f"state.shadow holds {_kind(foreign[0][1])} arrays "
            f"({', '.join(_names([p for p, _ in foreign[:3]]))}): this saves JAX and numpy "
            "arrays; save such a state with ema_core.checkpoint.save, or move its arrays to JAX"
        )
    pairs = [pair for pair in every if _saved(*pair)]
    paths = [path for path, _ in pairs]
    names = _names(paths)
    _check_distinct(names, paths)
    return {
        name: np.asarray(jax.device_get(leaf)) for name, (_, leaf) in zip(names, pairs, strict=True)
    }


@overload
def load_state_dict(arrays: Mapping[str, Any], like: PackedState, /) -> PackedState: ...
@overload
def load_state_dict(arrays: Mapping[str, Any], like: EMAState, /) -> EMAState: ...
def load_state_dict(arrays: Mapping[str, Any], like: Any, /) -> Any:
    """An ``EMAState`` shaped like ``like`` (structure, dtypes, shardings) holding ``arrays``.

    ``arrays`` is what ``state_dict`` returned. A checkpoint written before keys were escaped
    (names holding a raw ``~`` or ``/`` of a key) still loads where its names are unambiguous.
    With a ``PackedState`` as ``like``, the arrays are loaded as its ``EMAState`` and packed in
    ``like``'s layout, on its device (``like``'s values are not read).

    Raises:
        ValueError: a name of ``like`` is missing from ``arrays``, an extra name is present, a
            shape differs, or two arrays of ``like`` share a name.
        TypeError: a dtype differs (other than bfloat16 stored as raw 2-byte records).

    Example:
        >>> import jax, jax.numpy as jnp, ema_core as ema
        >>> from ema_core.jax import load_state_dict, state_dict
        >>> saved = state_dict(ema.init({"w": jnp.array([1.0, 2.0])}))  # numpy arrays by name
        >>> like = ema.init({"w": jnp.zeros(2)})  # the structure, dtypes and placement to fill
        >>> w = load_state_dict(saved, like).shadow["w"]
        >>> w.tolist(), isinstance(w, jax.Array), w.dtype
        ([1.0, 2.0], True, dtype('float32'))
    """
    if isinstance(like, PackedState):  # loaded as its EMAState, then laid out as ``like``
        home = _home(like)
        return _repacked(load_state_dict(arrays, _unpacked_like(like, home)), like, home)
    every, treedef = jax.tree_util.tree_flatten_with_path(like)
    pairs = [pair for pair in every if _saved(*pair)]
    paths = [path for path, _ in pairs]
    names = _names(paths)
    _check_distinct(names, paths)
    names = _names_in(arrays, names, paths)
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ValueError(f"arrays holds names that like does not have: {extra}")
    restored = iter(
        [_restore(arrays, name, leaf) for name, (_, leaf) in zip(names, pairs, strict=True)]
    )
    leaves = [next(restored) if _saved(*pair) else pair[1] for pair in every]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _home(like: PackedState) -> Any:
    """Where a packed ``like``'s arrays go: the device of its first array that has one (step,
    weight, flat buffers, loose shadows), or the default device when none has (a host copy
    from ``jax.device_get``, ``ShapeDtypeStruct``s without a sharding)."""
    for leaf in (like.step, like.weight, *like.flats, *like.loose):
        devices = getattr(getattr(leaf, "sharding", None), "device_set", None)
        if devices:
            return jax.sharding.SingleDeviceSharding(next(iter(devices)))
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _saved(path: Any, leaf: Any) -> bool:
    """Whether a leaf of a state is saved: the step, the weight and the shadow's arrays; not a
    shadow's other leaves (an equinox module's functions and flags), which ``load_state_dict``
    takes from ``like``, as ``make_update`` keeps them aside as static values."""
    arrays = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)  # the last: a packed like
    return path[:1] != (_SHADOW,) or isinstance(leaf, arrays)


_SHADOW = jax.tree_util.GetAttrKey("shadow")


def _names(paths: list[Any]) -> list[str]:
    return ["/".join(_escape(_key(entry)) for entry in path) for path in paths]


def _key(entry: Any) -> str:
    """One path entry as JAX's simple key string: a dict key, an index, an attribute name."""
    return jax.tree_util.keystr((entry,), simple=True)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _legacy_names(paths: list[Any]) -> list[str]:
    """The names of checkpoints written before keys were escaped."""
    return [jax.tree_util.keystr(path, simple=True, separator="/") for path in paths]


def _check_distinct(names: list[str], paths: list[Any]) -> None:
    seen: dict[str, Any] = {}
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise ValueError(
                f"{_where(seen[name])} and {_where(path)} would both be saved as {name!r}; "
                "give every array of the state a distinct key"
            )
        seen[name] = path


def _names_in(arrays: Mapping[str, Any], names: list[str], paths: list[Any]) -> list[str]:
    """``names``, or the unescaped names where ``arrays`` is a checkpoint written with them."""
    legacy = _legacy_names(paths)
    if legacy == names or all(name in arrays for name in names):
        return names
    if not all(name in arrays for name in legacy):
        return names  # neither fits: the missing name is reported in the current form
    if len(set(legacy)) < len(legacy):
        shared = next(n for i, n in enumerate(legacy) if n in legacy[:i])
        first, second = [paths[i] for i, n in enumerate(legacy) if n == shared][:2]
        raise ValueError(
            f"arrays was saved before keys were escaped: {_where(first)} and {_where(second)} "
            f"were both saved as {shared!r}, one array for two; it cannot be loaded"
        )
    return legacy


def _where(path: Any) -> str:
    return "state" + jax.tree_util.keystr(path)


def _restore(arrays: Mapping[str, Any], name: str, like: Any) -> Any:
    if name not in arrays:
        raise ValueError(f"arrays has no {name!r}; it must hold every array of like")
    value = np.asarray(arrays[name])
    if type(like) in (int, float):  # a Python step or weight (not numpy's float64 or a bool)
        kind = "iu" if isinstance(like, int) else "f"
        if value.shape != () or value.dtype.kind not in kind:
            raise TypeError(
                f"arrays[{name!r}] has shape {value.shape} dtype {value.dtype}; like holds a "
                f"Python {type(like).__name__} there: a 0-d "
                f"{'integer' if kind == 'iu' else 'floating'} array restores it"
            )
        return type(like)(value)
    if value.shape != like.shape:
        raise ValueError(f"arrays[{name!r}] has shape {value.shape}, like has {like.shape}")
    want = np.dtype(like.dtype)
    if name in ("step", "weight") and value.dtype != want:
        value = _scalar_as(value, name, want)
    if value.dtype != want and value.dtype.kind == "V" and value.dtype.itemsize == want.itemsize:
        value = value.view(want)
    if value.dtype != want:
        raise TypeError(f"arrays[{name!r}] has dtype {value.dtype}, like has {want}")
    sharding = getattr(like, "sharding", None)
    if sharding is None or not getattr(like, "committed", True):
        # as like: an uncommitted array stays uncommitted (committed, a jitted step fed it and
        # uncommitted params would compile again)
        return jax.numpy.asarray(value)
    return jax.device_put(value, sharding)


def _scalar_as(value: np.ndarray, name: str, want: np.dtype[Any]) -> np.ndarray:
    """The saved step or weight in ``like``'s dtype, as ``checkpoint.load`` takes it: a step of
    any integer dtype that fits (a file saved with x64 on or off), a weight of any float dtype
    (rounded to ``like``'s)."""
    if name == "step" and value.dtype.kind in "iu" and want.kind in "iu":
        info = np.iinfo(want)  # a stacked state (vmapped EMAs) holds one step per EMA
        outside = value[(value < info.min) | (value > info.max)] if value.size else value
        if outside.size:
            raise ValueError(
                f"arrays['step'] holds {int(outside.flat[0])}, which like's {want} cannot hold"
            )
        return value.astype(want)
    if name == "weight" and value.dtype.kind == "f" and want.kind == "f":
        return value.astype(want)
    return value  # refused with both dtypes named below


def _unpacked_like(like: PackedState, home: Any) -> EMAState:
    """``like`` as the ``EMAState`` it packs, every array abstract (shape, dtype, on ``home``):
    no value is read, so a ``like`` whose arrays were donated since still serves."""
    layout = like.layout

    def struct(shape: Any, dtype: Any) -> Any:
        return jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=home)  # type: ignore[no-untyped-call]

    shadows = [struct(s, d) for s, d in zip(layout.shapes, layout.dtypes, strict=True)]
    step, weight = (struct(x.shape, x.dtype) for x in (like.step, like.weight))
    return EMAState(step, layout.split.merge(shadows), weight)


def _repacked(state: EMAState, like: PackedState, home: Any) -> PackedState:
    """``state`` laid out as ``like`` (its blocks and loose leaves), the flats on ``home``."""
    arrays, _ = split(state.shadow)
    flats, loose = fill(arrays, like.layout, home)
    return PackedState(state.step, flats, loose, state.weight, like.layout)


def _kind(x: Any) -> str:
    """An array's type as its framework names it (``torch.Tensor``)."""
    return f"{type(x).__module__.partition('.')[0]}.{type(x).__name__}"

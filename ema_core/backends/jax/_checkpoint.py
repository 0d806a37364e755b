"""Checkpoints of an ``EMAState`` of JAX arrays as flat numpy arrays (``np.savez``).

An ``EMAState`` is a pytree, so orbax and other pytree checkpointers save it as it is; these two
functions are for plain ``.npz`` files. Values round-trip bit for bit (bfloat16 included: numpy
stores it as raw 2-byte records, which are viewed back), so training continues identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ema_core._types import EMAState


def state_dict(state: EMAState, /) -> dict[str, np.ndarray]:
    """The state's arrays on the host, by path: ``"step"``, ``"weight"``, ``"shadow/<key>/..."``.

    Example:
        >>> import io, numpy as np, jax.numpy as jnp, ema_core as ema
        >>> from ema_core.backends.jax import load_state_dict, state_dict
        >>> state = ema.init({"w": jnp.ones(2)})
        >>> sorted(state_dict(state))
        ['shadow/w', 'step', 'weight']
        >>> buf = io.BytesIO(); np.savez(buf, **state_dict(state)); _ = buf.seek(0)
        >>> load_state_dict(np.load(buf), state).shadow["w"].tolist()
        [1.0, 1.0]
    """
    pairs = jax.tree_util.tree_flatten_with_path(state)[0]
    return {_name(path): np.asarray(jax.device_get(leaf)) for path, leaf in pairs}


def load_state_dict(arrays: Mapping[str, Any], like: EMAState, /) -> EMAState:
    """An ``EMAState`` shaped like ``like`` (structure, dtypes, shardings) holding ``arrays``.

    Raises:
        ValueError: a name of ``like`` is missing from ``arrays``, an extra name is present, or a
            shape differs.
        TypeError: a dtype differs (other than bfloat16 stored as raw 2-byte records).
    """
    pairs, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [_name(path) for path, _ in pairs]
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise ValueError(f"arrays holds names that like does not have: {extra}")
    leaves = [_restore(arrays, name, leaf) for name, (_, leaf) in zip(names, pairs, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)  # type: ignore[no-any-return]


def _name(path: Any) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _restore(arrays: Mapping[str, Any], name: str, like: Any) -> Any:
    if name not in arrays:
        raise ValueError(f"arrays has no {name!r}; it must hold every array of like")
    value = np.asarray(arrays[name])
    if value.shape != like.shape:
        raise ValueError(f"arrays[{name!r}] has shape {value.shape}, like has {like.shape}")
    want = np.dtype(like.dtype)
    if value.dtype != want and value.dtype.kind == "V" and value.dtype.itemsize == want.itemsize:
        value = value.view(want)
    if value.dtype != want:
        raise TypeError(f"arrays[{name!r}] has dtype {value.dtype}, like has {want}")
    sharding = getattr(like, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)

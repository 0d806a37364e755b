"""The sharding check of a compiled update: a shadow sharded otherwise than its param.

A shadow is updated where its param lives, with the param's sharding. Given a state sharded one
way and params another (another ``PartitionSpec``, another mesh over the same devices, or a
replicated shadow of a sharded param), JAX either refuses the call (meshes with explicit axes:
``select cases must have the same shardings`` or ``Mesh for all inputs should be equal``, naming
no leaf, and on the chunked path only once the earlier chunks ran) or, with ``AxisType.Auto``
axes, compiles a shadow of a third sharding (a traced value's type does not hold automatic axes:
both read ``P(None, ...)``). ``check_shardings`` names the first such pair, for ``make_update``'s
state or each of a bank's states; ``_placement`` calls it before anything runs.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from ema_core._types import EMAState

__all__ = ["check_shardings", "pairs"]


class _Slot:
    """Stands for the array at ``index`` of a split tree, to pair shadows with params."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def check_shardings(
    arrays: list[Any], params_arrays: list[Any], state_split: Any, params_split: Any
) -> None:
    """Raise when a committed shadow's sharding differs from its committed param's
    (``*_split.merge`` rebuild the trees to pair and name the leaves).

    Raises:
        ValueError: naming the leaf, both shardings, and the ways out.
    """
    if any(isinstance(x, jax.core.Tracer) for x in (*arrays, *params_arrays)):
        return  # placed by the outer transformation
    differ: dict[tuple[int, int, int], bool] = {}  # by sharding pair: a few for 20,000 leaves
    for name, path, i, j in pairs(len(arrays), len(params_arrays), state_split, params_split):
        shadow, param = arrays[i], params_arrays[j]
        if not (_committed(shadow) and _committed(param)) or shadow.sharding is param.sharding:
            continue
        key = (id(shadow.sharding), id(param.sharding), shadow.ndim)
        if key not in differ:
            differ[key] = _differ(shadow, param)
        if differ[key]:
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"{name}.shadow{where} is sharded {_text(shadow.sharding)}, but params{where} "
                f"{_text(param.sharding)}: a shadow is updated where its param lives, with its "
                "sharding; ema.init the state from params sharded as in training, or "
                "jax.device_put the state onto the params' shardings; nothing was donated"
            )


def pairs(
    n_arrays: int, n_params: int, state_split: Any, params_split: Any
) -> list[tuple[str, Any, int, int]]:
    """``(state name, leaf path, shadow array index, param array index)`` for each shadow
    array whose param is an array; none where a structure differs (the update names it)."""
    state = state_split.merge([_Slot(i) for i in range(n_arrays)])
    if isinstance(state, EMAState):
        states = [("state", state)]
    elif isinstance(state, tuple) and all(isinstance(s, EMAState) for s in state):
        states = [(f"states[{k}]", s) for k, s in enumerate(state)]  # a bank's
    else:
        return []
    params = jax.tree_util.tree_leaves(params_split.merge([_Slot(j) for j in range(n_params)]))
    found = []
    for name, one in states:
        shadows = jax.tree_util.tree_flatten_with_path(one.shadow)[0]
        if len(shadows) != len(params):
            continue
        for (path, a), b in zip(shadows, params, strict=True):
            if isinstance(a, _Slot) and isinstance(b, _Slot):
                found.append((name, path, a.index, b.index))
    return found


def _committed(x: Any) -> bool:
    return isinstance(x, jax.Array) and bool(getattr(x, "committed", True))


def _differ(shadow: Any, param: Any) -> bool:
    a, b = shadow.sharding, param.sharding
    if isinstance(a, NamedSharding) and isinstance(b, NamedSharding) and a.mesh != b.mesh:
        return True  # JAX refuses two meshes in one call, even over the same devices
    return not a.is_equivalent_to(b, shadow.ndim)


def _text(sharding: Any) -> str:
    if not isinstance(sharding, NamedSharding):
        return str(sharding)
    mesh, spec = sharding.mesh, sharding.spec
    axes = ", ".join(f"{n}={s}" for n, s in mesh.shape.items())
    return f"{spec} on a mesh ({axes}) of devices {[d.id for d in mesh.devices.flat]}"

"""The sharding check of a compiled update: a shadow sharded otherwise than its param.

A shadow is updated where its param lives, with the param's sharding. Given a state sharded one
way and params another (another ``PartitionSpec``, another mesh over the same devices, or a
replicated shadow of a sharded param), JAX either refuses the call (meshes with explicit axes:
``select cases must have the same shardings`` or ``Mesh for all inputs should be equal``, naming
no leaf) or, with automatic axes, compiles a shadow of a third sharding. ``check_shardings``
names the first such pair, called where JAX has refused and before anything was donated.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from ema_core._types import EMAState

__all__ = ["check_shardings"]


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
    state = state_split.merge(arrays)
    if not isinstance(state, EMAState):
        return
    shadows = jax.tree_util.tree_flatten_with_path(state.shadow)[0]
    params = jax.tree_util.tree_leaves(params_split.merge(params_arrays))
    if len(shadows) != len(params):
        return  # another structure: the update's own check names it
    for (path, shadow), param in zip(shadows, params, strict=True):
        if _committed(shadow) and _committed(param) and _differ(shadow, param):
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"state.shadow{where} is sharded {_text(shadow.sharding)}, but params{where} "
                f"{_text(param.sharding)}: a shadow is updated where its param lives, with its "
                "sharding; ema.init the state from params sharded as in training, or "
                "jax.device_put the state onto the params' shardings; nothing was donated"
            )


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

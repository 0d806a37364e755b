"""The public functions: validate every input, find the namespace once, then hand the leaves to
the backend. ``ema_update`` is the stateless in-place call; ``init`` / ``update`` / ``average``
are the pure functional triple (optax style) over an ``EMAState``."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat

from ema_core import _core, _stateless
from ema_core._api_read import read_average
from ema_core._arguments import checked_config, decay_array, resolve_rule, shadow_dtype
from ema_core._checks import (
    check_decay_namespace,
    check_decay_value,
    check_state,
    check_weight,
)
from ema_core._config import Config
from ema_core._graph_break import eager_under_torch_compile
from ema_core._leaf_checks import check_finite, check_leaves
from ema_core._ops import default_int, next_step, wide_float
from ema_core._read_checks import check_zeros_read
from ema_core._settings import settings
from ema_core._step_forms import step_in
from ema_core._tree import flatten, unflatten
from ema_core._tree_pair import flatten_pair
from ema_core._types import Array, EMAState, Step, Tree
from ema_core._writes import resolve_writes
from ema_core.backends import check_storage, finite_values, get_backend, leaf_names
from ema_core.schedules import Schedule


@eager_under_torch_compile
def ema_update(
    shadow: Tree,
    params: Tree,
    step: Step,
    /,
    *,
    decay: float | Array | None = None,
    schedule: Schedule | Any = None,
    config: Config | None = None,
    copy: bool | None = None,
) -> Tree:
    """Move ``shadow`` toward ``params`` by the decay of update ``step``; return the new shadow.

    ``shadow_t = shadow_{t-1} + (1 - d_t) * (params_t - shadow_{t-1})``, with ``d_t`` from
    ``decay`` (constant), ``schedule(step)`` or ``config`` (its schedule, interval and copy
    policy); pass at most one. The default is ``decay=0.9999``. Nothing else is hidden: no
    warm-up and no first-step copy unless the schedule or config asks for them. Integer and bool
    leaves are not averaged: they take the params' value on every call, also one whose decay is
    1 (where the floating leaves keep their bits), unless ``config.non_float`` says otherwise.

    Args:
        shadow: the running average; a nest (dict, list, tuple, NamedTuple) or one array.
        params: the current weights, a nest of the same structure, shapes and namespace.
        step: t, the optimizer steps taken counting this one (a Python int or a 0-d integer
            array, which may be traced or on a device).
        decay: the weight on the old average, a float in [0, 1] or a 0-d float array.
        schedule: a ``Schedule`` or callable ``t -> decay``.
        config: a ``Config`` (schedule, interval, copy policy, non-float leaves, finite guard).
        copy: ``None`` writes into writeable arrays and returns them (new arrays for JAX);
            ``True`` never mutates an input; ``False`` must write in place and raises otherwise.

    Returns:
        The updated shadow, same structure. Always rebind it: ``shadow = ema_update(...)``.

    Raises:
        TypeError: an argument or leaf has the wrong type or dtype, or namespaces are mixed.
        ValueError: structures, shapes or devices differ; decay outside [0, 1]; negative step.
            On any error no shadow has been changed.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> shadow = {"w": np.zeros(3)}
        >>> ema.ema_update(shadow, {"w": np.ones(3)}, 1, decay=0.9)
        {'w': array([0.1, 0.1, 0.1])}
        >>> shadow["w"]  # updated in place
        array([0.1, 0.1, 0.1])
    """
    rule, non_float, guard_finite = resolve_rule(decay, schedule, config)
    shadows, leaves, paths, treedef = flatten_pair(shadow, params, "shadow", "params")
    array_decay = compat.is_array_api_obj(rule)
    options = (non_float, type(copy), copy, array_decay)
    entry = _stateless.find(shadows, leaves, treedef, options)
    if entry is None:
        xp, kinds = check_leaves(shadows, leaves, paths, non_float=non_float)
    else:  # the same leaves, unchanged since they passed these checks
        xp, kinds = entry.xp, entry.kinds
    t = step_in(step, xp, "step")
    if array_decay:  # a 0-d decay array given directly
        check_decay_namespace(rule, xp)
        d = decay_array(xp, rule, leaves[0])
        r = 1.0 - d
    else:
        head = getattr(get_backend(xp), "pair_scalars", None)  # JAX: as a traced call computes
        found = None if head is None else head(rule, t)
        d, r = rule._pair_at(t) if found is None else found
        check_decay_value(d, "the decay", step=t)
    writes = resolve_writes(copy, shadows, paths, params=leaves) if entry is None else entry.writes
    backend = get_backend(xp)
    if guard_finite:
        check_finite(xp, finite_values(backend, leaves), kinds, paths)
    settings()  # EMA_CORE_* refused here, not by an engine after some groups were written
    if entry is None:
        found = (xp, kinds, writes)
        entry = _stateless.remember(backend, shadows, leaves, treedef, options, found)
    extra = leaf_names(backend, "shadow", "params", paths)
    if entry is not None and getattr(backend, "PLAN_MEMO", False):
        extra["memo"] = entry.memo
    with backend.guard():
        new = backend.update_leaves(
            xp, shadows, leaves, kinds, d, r, non_float=non_float, writes=writes, **extra
        )
        if copy is True:  # a kept leaf (decay 1, frozen) is still a new array
            new = [
                xp.asarray(n, copy=True) if n is s else n for n, s in zip(new, shadows, strict=True)
            ]
    return unflatten(treedef, new)


@eager_under_torch_compile
def init(params: Tree, /, config: Config | None = None) -> EMAState:
    """A new EMA state for ``params`` under ``config`` (never aliasing the params).

    The shadow is a copy of the params (``init="params"`` or ``"copy"``) or zeros (``"zeros"``),
    in float32 for float16/bfloat16 leaves unless ``config.dtype`` says otherwise; integer and
    bool leaves are copied. ``step`` (0, the default integer dtype) and ``weight`` (1; 0 for
    ``"zeros"``) are 0-d arrays on the params' device, never weak-typed (as a loaded state).

    Example:
        >>> import numpy as np, ema_core as ema
        >>> state = ema.init({"w": np.ones(2, dtype=np.float16)})
        >>> state.shadow["w"].dtype, int(state.step), float(state.weight)
        (dtype('float32'), 0, 1.0)
    """
    config = checked_config(config)
    leaves, paths, treedef = flatten(params, "params")
    xp, kinds = check_leaves(leaves, leaves, paths, ("params", "params"), config.non_float)
    zeros = config.init == "zeros"
    backend = get_backend(xp)
    check_storage(backend, leaves, paths, "params")
    with backend.guard():
        shadow = [
            _core.init_leaf(xp, p, shadow_dtype(xp, p, config) if kind == "float" else None, zeros)
            for p, kind in zip(leaves, kinds, strict=True)
        ]
    # the scalars' device: a backend may refine it (a 2-D sharding does not fit a 0-d array)
    device = getattr(backend, "scalar_device", compat.device)(leaves[0])
    step = xp.asarray(0, dtype=default_int(xp, device), device=device)
    weight = xp.asarray(0.0 if zeros else 1.0, dtype=wide_float(xp, device), device=device)
    return EMAState(step, unflatten(treedef, shadow), weight)


@eager_under_torch_compile
def update(state: EMAState, params: Tree, /, config: Config | None = None) -> EMAState:
    """The state after one more update with ``params``: pure, usable inside ``jax.jit``.

    ``t = state.step + 1``; ``shadow_t = shadow + (1 - d_t) (params - shadow)`` and
    ``weight_t = d_t weight + (1 - d_t)``, with ``d_t`` from ``config``. Integer and bool leaves
    take the params at every update, ``d_t = 1`` included (``non_float="copy"``).

    Example:
        >>> import numpy as np, ema_core as ema
        >>> cfg = ema.Config(schedule=0.5, init="zeros")
        >>> state = ema.update(ema.init({"w": np.zeros(1)}, cfg), {"w": np.full(1, 4.0)}, cfg)
        >>> state.shadow["w"], float(state.weight), ema.average(state, cfg)["w"]
        (array([2.]), 0.5, array([4.]))
    """
    config = checked_config(config)
    check_state(state)
    shadows, leaves, paths, treedef = flatten_pair(state.shadow, params, "state.shadow", "params")
    xp, kinds = check_leaves(shadows, leaves, paths, ("state.shadow", "params"), config.non_float)
    check_weight(state.weight)
    backend = get_backend(xp)
    head = getattr(backend, "update_scalars", None)  # one compiled call where eager ops are dear
    found = None if head is None else head(config, state.step, state.weight, shadows[0])
    if found is None:
        t = next_step(state.step)
        d, r = config._pair_at(t)
    else:
        t, d, r, weight = found
    check_decay_value(d, "the decay of Config.schedule", step=t)
    if config.guard_finite:
        check_finite(xp, finite_values(backend, leaves), kinds, paths)
    with backend.guard():
        new = backend.update_leaves(
            xp,
            shadows,
            leaves,
            kinds,
            d,
            r,
            non_float=config.non_float,
            writes=[False] * len(leaves),
            **leaf_names(backend, "state.shadow", "params", paths),
        )
        if found is None:
            weight = _core.next_weight(xp, state.weight, d, r)
    if isinstance(t, int) and not isinstance(state.step, int):
        step_xp = compat.array_namespace(state.step)  # a numpy step beside JAX shadows stays one
        t = step_xp.asarray(t, dtype=state.step.dtype, device=compat.device(state.step))
    return EMAState(t, unflatten(treedef, new), weight)


@eager_under_torch_compile
def average(state: EMAState, /, config: Config | None = None) -> Tree:
    """The bias-corrected average ``shadow / weight`` (the shadow itself unless ``init="zeros"``).

    ``weight`` is the state's exact weight, or ``1 - d_t ** t`` under ``correction="power"``;
    ``correction="none"`` returns the shadow as it is. The read of a ``"zeros"`` EMA is in
    float32 (or the shadow's dtype when wider) also over a float16/bfloat16 shadow, as optax
    returns its EMA: it is never rounded back to the half dtype.

    Integer and bool leaves are returned as they are. Before the first update of a ``"zeros"``
    EMA (weight 0) the zeros are returned. A state made with ``init="zeros"`` read with a config
    of another ``init`` is a ``ValueError`` where the host reads its weight (below 1) at no cost.

    Example:
        >>> import numpy as np, ema_core as ema
        >>> cfg = ema.Config(schedule=0.9, init="zeros")
        >>> state = ema.update(ema.init({"w": np.zeros(1)}, cfg), {"w": np.full(1, 3.0)}, cfg)
        >>> ema.average(state, cfg)["w"]
        array([3.])
    """
    config = checked_config(config)
    check_state(state)
    check_zeros_read(state, config)
    return read_average(state, config)


__all__ = ["average", "ema_update", "init", "update"]

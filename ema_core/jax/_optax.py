"""``with_ema``: an optax transformation whose state carries the EMA of the params.

optax is imported when ``with_ema`` is called, never before.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from ema_core import _api, _api_read
from ema_core._arguments import checked_config
from ema_core._checks import check_state
from ema_core._config import Config
from ema_core._read_checks import check_zeros_read
from ema_core._types import EMAState, Tree
from ema_core.jax._finite_params import check_finite_params


class WithEMAState(NamedTuple):
    """The state of ``with_ema``: the wrapped optimizer's state and the EMA state."""

    inner: Any
    ema: EMAState


def with_ema(optimizer: Any, /, config: Config | None = None) -> Any:
    """Wrap an optax ``GradientTransformation`` so that its state also carries the EMA.

    ``update(grads, state, params)`` runs the wrapped optimizer, then updates the EMA with the
    params after this step, ``params + updates`` (what ``optax.apply_updates`` returns), by
    ``ema_core.update``. The returned updates are the wrapped optimizer's. Works inside a jitted
    train step; read the average with ``ema_average(opt_state, config)``.

    The EMA moves once per optimizer step, in either order of wrapping: around
    ``optax.MultiSteps`` it skips the micro-batches that only accumulate gradients (the
    accumulator's ``gradient_step`` did not move), around ``optax.apply_if_finite`` the steps it
    skipped (``last_finite`` false); a schedule counts optimizer steps. Only the wrappers
    inside ``with_ema`` are seen: after one in a chain (``chain(apply_if_finite(...),
    with_ema(scale(-lr)))``) every call moves the EMA, so wrap the whole chain.

    Args:
        optimizer: an optax ``GradientTransformation`` (anything with ``init`` and ``update``).
        config: the EMA's ``Config`` (default ``Config()``).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; its ``update`` requires ``params``.

    Raises:
        TypeError: ``optimizer`` has no ``init``/``update`` or ``config`` is not a ``Config``.

    Example:
        >>> import jax.numpy as jnp, optax, ema_core as ema
        >>> from ema_core.jax import ema_average, with_ema
        >>> config = ema.Config(schedule=0.5)
        >>> opt = with_ema(optax.sgd(1.0), config)
        >>> params = {"w": jnp.zeros(2)}
        >>> opt_state = opt.init(params)
        >>> updates, opt_state = opt.update({"w": -jnp.ones(2)}, opt_state, params)
        >>> ema_average(opt_state, config)["w"].tolist()  # halfway from 0 to 1
        [0.5, 0.5]
    """
    import optax

    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )
    config = checked_config(config)
    inner = optax.with_extra_args_support(optimizer)

    def init(params: Tree) -> WithEMAState:
        return WithEMAState(inner.init(params), _api.init(params, config))

    def update(
        updates: Tree, state: WithEMAState, params: Tree | None = None, **extra: Any
    ) -> tuple[Tree, WithEMAState]:
        if params is None:
            raise ValueError(
                "with_ema needs the params: call update(grads, opt_state, params), got params=None"
            )
        if config.guard_finite and _traced(params):
            check_finite_params(params)  # names the traced guard, pointing to apply_if_finite
        updates, inner_state = inner.update(updates, state.inner, params, **extra)
        new_params = optax.apply_updates(params, updates)
        stepped = _stepped(optax, state.inner, inner_state)

        def ema() -> EMAState:
            return _api.update(state.ema, new_params, config)

        def kept() -> EMAState:
            return jax.tree_util.tree_map(jax.numpy.asarray, state.ema)  # type: ignore[no-any-return]

        if stepped is None:
            return updates, WithEMAState(inner_state, ema())
        if not isinstance(stepped, jax.core.Tracer):
            return updates, WithEMAState(inner_state, ema() if bool(stepped) else state.ema)
        return updates, WithEMAState(inner_state, jax.lax.cond(stepped, ema, kept))

    return optax.GradientTransformationExtraArgs(init, update)


def _traced(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def _stepped(optax: Any, old: Any, new: Any) -> Any:
    """Whether the wrapped optimizer took a step: ``None`` (always) unless its state holds an
    ``optax.MultiSteps`` (its ``gradient_step`` moved) or ``apply_if_finite`` state (its
    ``last_finite``); the outermost of each kind is read, also where one is nested in the other
    (``MultiSteps(apply_if_finite(...))``: a rejected step inside a micro-batch's last)."""
    flags = []
    for kind in (optax.MultiStepsState, optax.ApplyIfFiniteState):

        def is_kind(x: Any, kind: type = kind) -> bool:
            return isinstance(x, kind)

        pairs = zip(
            [x for x in jax.tree_util.tree_leaves(old, is_leaf=is_kind) if is_kind(x)],
            [x for x in jax.tree_util.tree_leaves(new, is_leaf=is_kind) if is_kind(x)],
            strict=True,
        )
        finite = kind is optax.ApplyIfFiniteState
        flags += [n.last_finite if finite else n.gradient_step != o.gradient_step for o, n in pairs]
    return jax.numpy.all(jax.numpy.stack(flags)) if flags else None


_PASS_THE_CONFIG = "pass the Config given to with_ema: ema_average(opt_state, config)"


def ema_average(opt_state: Any, /, config: Config | None = None) -> Tree:
    """The EMA carried by a ``with_ema`` state, anywhere inside ``opt_state`` (a chain, ...).

    It is ``ema_core.average`` of that EMA state: bias-corrected when ``config.init="zeros"``.
    Pass the ``config`` given to ``with_ema``.

    Raises:
        ValueError: ``opt_state`` holds no ``with_ema`` state, or more than one; or its EMA was
            made with ``init="zeros"`` and ``config`` has another ``init`` (``check_zeros_read``).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from ema_core.jax import ema_average, with_ema
        >>> opt = optax.chain(optax.clip(1.0), with_ema(optax.sgd(0.1)))
        >>> ema_average(opt.init({"w": jnp.ones(1)}))["w"].tolist()
        [1.0]
    """
    found = [
        node
        for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, WithEMAState)
        )
        if isinstance(node, WithEMAState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"opt_state must hold exactly one with_ema state, found {len(found)} "
            f"in a {type(opt_state).__name__}"
        )
    config = checked_config(config)
    check_state(found[0].ema)
    check_zeros_read(
        found[0].ema, config, "the EMA in opt_state", _PASS_THE_CONFIG, "opt_state's EMA weight"
    )
    return _api_read.read_average(found[0].ema, config)

"""The checks ``make_update`` and the JAX bank make on the host before a compiled call: a state
donated to an earlier call (its step, or any array: ``check_live``), a step out of range, a state
of 64-bit arrays (JAX's, or a numpy shadow's) while x64 is off, Python scalars in a state (static
under jit: they would never move; ``_finite_params`` holds ``guard_finite``'s look at the
params). Nothing here donates or writes."""

from __future__ import annotations

import operator
from typing import Any

import jax
import numpy as np
from array_api_compat import is_array_api_obj

from ema_core._checks import check_weight
from ema_core._leaf_checks_x64 import check_x64_dtype
from ema_core._ops import host_float, is_readable, ops_for
from ema_core._step_forms import step_in
from ema_core._types import EMAState
from ema_core.backends.jax._leaves import scalar_device
from ema_core.jax._devices import leaf_name

__all__ = [
    "DONATED_BY",
    "check_live",
    "check_not_donated",
    "check_readable",
    "check_step",
    "check_x64",
    "host_checked",
    "host_scalars",
]


def check_not_donated(step: Any, what: str, by: str) -> None:
    """Raise when the state whose step is ``step`` was donated to an earlier call (a donated
    state's arrays are deleted; JAX's own error says only "Array has been deleted").

    Raises:
        ValueError: naming ``what``, ``by`` and the two ways out.
    """
    if isinstance(step, jax.Array) and not isinstance(step, jax.core.Tracer) and step.is_deleted():
        raise ValueError(
            f"{what} was donated to an earlier call of {by}, which deletes the arrays it is "
            "given: pass the state that call returned, or use donate=False to update the same "
            "state more than once"
        )


_IS_DELETED = operator.methodcaller("is_deleted")


def check_readable(tree: Any, name: str) -> None:
    """Raise when an array of ``tree`` was deleted, before it is read on the host (``pack``,
    ``unpack``, ``state_dict``): JAX's own error names no leaf.

    Raises:
        ValueError: naming the leaf (``state.shadow['w']``, ``state.flats[0]``).
    """
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted():
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} was deleted (donated to an update, which "
                "deletes the arrays it is given, or deleted by hand): pass the state that "
                "update returned"
            )


def check_live(
    arrays: list[Any], params_arrays: list[Any], state_split: Any, params_split: Any
) -> None:
    """Raise when an array of the state or params was deleted: donated to an earlier call (a
    state put together from a returned step and an old shadow) or ``.delete()`` d. JAX's own
    error names no leaf, and the chunked path would donate the step before reaching it.

    Raises:
        ValueError: naming the leaf (``state.shadow['w']``, ``params['w']``).
    """
    try:  # one C call per array on the usual path: JAX arrays, none deleted
        if not any(map(_IS_DELETED, arrays)) and not any(map(_IS_DELETED, params_arrays)):
            return
    except (AttributeError, jax.errors.ConcretizationTypeError):  # a numpy array or a tracer
        pass  # (inside a user's jit, vmap or scan): looked at one by one below
    for x in (*arrays, *params_arrays):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted():
            state, params = state_split.merge(arrays), params_split.merge(params_arrays)
            name = "state" if isinstance(state, EMAState) else "states"
            where = leaf_name(x, name, state) or leaf_name(x, "params", params)
            raise ValueError(
                f"{where} was deleted (donated to an earlier call that donates it, such as "
                "make_update or a JAX bank, or deleted by hand): pass the arrays that call "
                "returned, or use donate=False to update the same state more than once; "
                "nothing was donated"
            )


_SHADOW = jax.tree_util.GetAttrKey("shadow")
_X64_FIX = (
    "enable x64 for the update as when the state was made, or cast the state to {narrow} yourself"
)
_X64_FIX_NUMPY = (
    "enable x64 for the update, cast the numpy state to {narrow} yourself, or update it "
    "eagerly with ema_core.update (numpy keeps 64 bits)"
)


def check_x64(state: Any, what: str = "state") -> None:
    """Raise when a JAX array of ``state``, or a numpy array of its shadow, has a 64-bit dtype
    while x64 is off: JAX would compute it in 32 bits and hand back a float32 shadow (an int64
    JAX step near its top would not even convert). A numpy step or weight is narrowed harmlessly
    (the step is range-checked first, the weight is at most 1). Made before the compiled call
    on a state this update did not return, so once per new state, never in the steady state.

    Raises:
        TypeError: naming the leaf, its dtype, the one JAX would use and the ways out.
    """
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            fix = _X64_FIX
        elif isinstance(x, np.ndarray) and path[:1] == (_SHADOW,):
            fix = _X64_FIX_NUMPY
        else:
            continue
        check_x64_dtype(x.dtype, f"{what}{jax.tree_util.keystr(path)}", fix)


def check_step(step: Any) -> None:
    """The range check ``ema_core.update`` makes on a step the host can read (numpy, a concrete
    CPU JAX array), made before the call: inside the jit the step is traced. Reading it
    dispatches nothing; its type is checked when the update is traced."""
    if (
        isinstance(step, (jax.Array, np.ndarray))
        and is_readable(step)
        and step.ndim == 0
        and np.issubdtype(np.dtype(step.dtype), np.integer)
        and not (isinstance(step, jax.Array) and step.is_deleted())
    ):
        ops_for(int(step), "state.step")


#: Who took a donated state's buffers, as ``make_update``'s errors say it.
DONATED_BY = "this update (make_update donates by default)"


def host_checked(state: Any, trusted: bool, what: str, by: str) -> Any:
    """``host_scalars(state)``, after the checks of a state the caller did not return itself
    (``trusted``: its step is one the caller made, valid and not read again): a step donated
    to an earlier call (``by``), a step out of range, 64-bit arrays without x64. ``what`` names
    the state in the errors (``"state"``, ``"states[1]"``)."""
    if not trusted:
        step = getattr(state, "step", None)
        check_not_donated(step, what, by)
        check_step(step)
        check_x64(state, what)
    return host_scalars(state)


def host_scalars(state: Any) -> Any:
    """``state`` with a Python or numpy integer step (a scalar or a 0-d array: in its own dtype
    where JAX has it, as the eager update keeps it; a Python int, or int64 / uint64 with x64
    off, as JAX's default int saturated at its top, as jit would wrap it) and a Python number
    weight as 0-d JAX arrays beside the shadow (a non-array leaf is static in the jit: it would
    never move); another framework's step and weight (a torch state's, on the CPU) read as a
    Python int and float first, one on a device refused. A weak-typed weight
    (``jnp.asarray(1.0)``) is made strong (the update returns a strong one: a weak one would
    compile a second time), after checking the weight's shape and dtype (the update does not
    look at it).

    Raises:
        TypeError: ``state.weight`` is not a number or a 0-d float array, or the step or
            weight is another framework's array that the host cannot read (on a device).
        ValueError: ``state.weight`` is an array that is not 0-d, or the step is negative.
    """
    if not all(hasattr(state, f) for f in EMAState._fields):
        return state  # refused by the update, before anything runs
    step = state.step
    if not isinstance(step, (jax.Array, np.ndarray, np.generic, int)) and is_array_api_obj(step):
        step = step_in(step, jax.numpy, "state.step")  # another framework's (torch): its int
    if _host_integer(step):
        ops_for(int(step), "state.step")
        own = np.asarray(step).dtype if not isinstance(step, int) else None
        if own is not None and jax.dtypes.canonicalize_dtype(own) == own:
            step = _beside(state.shadow, np.asarray(step))  # a dtype JAX holds: kept (uint8...)
        else:  # a Python int, or int64 / uint64 without x64: the default int, saturated
            top = int(np.iinfo(jax.numpy.asarray(0).dtype).max)
            step = _beside(state.shadow, np.asarray(min(int(step), top)))
    weight = _weight(state.weight, state.shadow)
    if step is state.step and weight is state.weight:
        return state
    return state._replace(step=step, weight=weight)


def _weight(weight: Any, shadow: Any) -> Any:
    """``host_scalars``'s weight: checked, a number or another framework's as a 0-d JAX array."""
    if not isinstance(weight, (jax.Array, np.ndarray, np.generic)) and is_array_api_obj(weight):
        check_weight(weight)  # another framework's 0-d float (a torch state's): its value
        if not is_readable(weight):
            raise TypeError(
                f"state.weight is a {type(weight).__name__} that cannot be read here (on a "
                "device or traced): pass a Python float or a JAX array"
            )
        weight = host_float(weight)
    if isinstance(weight, (int, float, np.floating)) and not isinstance(weight, bool):
        check_weight(weight)  # a Python number (an int too large for a float refused)
        weight = _beside(shadow, np.asarray(weight, jax.numpy.result_type(float)))
    elif getattr(weight, "weak_type", False) and not isinstance(weight, jax.core.Tracer):
        weight = jax.numpy.asarray(weight, weight.dtype)  # the update returns a strong weight
    if not isinstance(weight, (jax.Array, np.ndarray)):
        raise TypeError(
            f"state.weight must be a number or a 0-d float array, got {type(weight).__name__}"
        )
    if not jax.numpy.issubdtype(weight.dtype, jax.numpy.floating):  # bfloat16 included
        raise TypeError(f"state.weight must be a 0-d float array, got dtype {weight.dtype}")
    if weight.ndim != 0:
        raise ValueError(f"state.weight must be a 0-d float array, got shape {weight.shape}")
    return weight


def _host_integer(step: Any) -> bool:
    """A Python or numpy integer, or a 0-d numpy integer array."""
    if isinstance(step, np.ndarray):
        return step.ndim == 0 and step.dtype.kind in "iu"
    return isinstance(step, (int, np.integer)) and not isinstance(step, bool)


def _beside(shadow: Any, value: np.ndarray) -> Any:
    """``value`` where ``init`` puts the 0-d scalars of a state for ``shadow``; kept a numpy
    array beside a shadow of numpy arrays (a state fetched to the host), which the update puts
    with them where the params are (``_placement.commit_state``), not on the default device."""
    leaves = [x for x in jax.tree_util.tree_leaves(shadow) if isinstance(x, jax.Array)]
    where = scalar_device(leaves[0]) if leaves else None
    if where is None:
        return value if not leaves else jax.numpy.asarray(value)
    return jax.device_put(value, where)

"""What ``assert_matches`` compares: the EMA's returned average leaf by leaf against the oracle
(tolerances per leaf), and the inputs it must leave as they were. Each failure names the step,
the leaf path, the element and both values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core._config import Config, shadow_dtype_name
from ema_core._tree import Path, path_str
from ema_core._tree_pair import flatten_pair
from ema_core._types import Tree
from ema_core.testing._convert import host64
from ema_core.testing._dtypes import name_of
from ema_core.testing._inputs import Checked

#: Relative tolerance per shadow dtype (scaled by the magnitude of each leaf over the trajectory).
RTOL = {
    "float64": 1e-10,
    "float32": 2e-5,
    "float16": 4e-3,
    "bfloat16": 3e-2,
    "complex128": 1e-10,
    "complex64": 2e-5,
    "complex32": 4e-3,
}
_WIDE = 1e-10  # long double shadows: the oracle is float64


def tolerances(
    config: Config, checked: Checked, rtol: float | None, atol: float | None
) -> list[float]:
    """Per leaf: ``atol + rtol * scale``, scale the largest finite magnitude the leaf takes over
    the trajectory; rtol defaults from the leaf's shadow dtype unless a tolerance is given."""
    out = []
    for i, param_dtype in enumerate(checked.dtypes):
        finite = [np.abs(nest[i][np.isfinite(nest[i])]) for nest in checked.host]
        scale = max([1e-30] + [float(np.max(a, initial=0.0)) for a in finite])
        name = shadow_dtype_name(config.dtype, param_dtype)
        default = RTOL.get(name, _WIDE if name.startswith(("float", "complex")) else 0.0)
        r = rtol if rtol is not None else (0.0 if atol is not None else default)
        out.append((atol or 0.0) + r * scale)
    return out


def returned(init: Tree, average: Any, t: int) -> tuple[list[np.ndarray], list[str]]:
    """The EMA's returned average as host leaves in ``init``'s order (matched by key), and
    each leaf's dtype name as returned."""
    if average is None:
        raise AssertionError(
            f"step t={t}: the EMA's step(params, {t}) returned None; it must return the "
            "average it would evaluate with, a nest like the params"
        )
    try:
        pair = flatten_pair(init, average, "params", "the EMA's average")
    except (TypeError, ValueError) as err:
        raise AssertionError(f"step t={t}: {err}") from None
    for leaf, path in zip(pair.other, pair.paths, strict=True):
        if not (compat.is_array_api_obj(leaf) or isinstance(leaf, (int, float, complex))):
            raise AssertionError(
                f"step t={t}: the EMA's average has {type(leaf).__name__} at "
                f"{path_str('params', path)}, not an array"
            )
    out = host64(pair.other)
    for arr, path in zip(out, pair.paths, strict=True):
        if arr.dtype.kind not in "biufc":
            raise AssertionError(
                f"step t={t}: the EMA's average has dtype {arr.dtype} at "
                f"{path_str('params', path)}, not a number"
            )
    return out, [name_of(leaf) for leaf in pair.other]


def compare_leaf(got: np.ndarray, want: np.ndarray, tol: float, where: str) -> None:
    """``where`` is ``"step t=.., leaf params[..]"``; the caller adds the decay and config."""
    if got.shape != want.shape:
        raise AssertionError(
            f"the EMA differs from ema-core first at {where}: shape {got.shape}, ema-core has "
            f"{want.shape}"
        )
    bad = np.flatnonzero(~_close(got, want, tol))
    if bad.size:
        k = int(bad[0])
        g, w = got.reshape(-1)[k].item(), want.reshape(-1)[k].item()
        index = k if want.ndim == 1 else tuple(int(i) for i in np.unravel_index(k, want.shape))
        raise AssertionError(
            f"the EMA differs from ema-core first at {where}, element {index}: got {g!r}, "
            f"ema-core has {w!r} (|diff| {abs(g - w):.3g}, tolerance {tol:.3g}); "
            f"{bad.size} element(s) of this leaf differ"
        )


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> np.ndarray:
    """Elementwise: equal (NaN where ema-core has NaN, the same infinity), or within ``tol``
    for a floating leaf."""
    if want.dtype.kind not in "fc":
        return np.asarray(got == want)
    if tol == 0.0:
        near = np.zeros(want.shape, bool)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            near = np.abs(got - want) <= tol
    return np.asarray(near | (got == want) | (np.isnan(got) & np.isnan(want)))


def unchanged(checked: Checked, indices: Sequence[int], t: int, final: bool = False) -> None:
    """The trajectory's nests ``indices`` (0: ``init``, k: the params of step k) still hold
    the values read before the EMA ran: an EMA must not write into (or donate) its inputs.
    ``final``: the sweep after step ``t``, the last, over inputs each checked right after its own
    step (and ``init`` after every step), so a change found then happened in one of the steps
    after the input's own, and the message names them."""
    for k in indices:
        name = "trajectory.init" if k == 0 else f"trajectory.steps[{k - 1}]"
        when = f"step t={t}" if not final or k + 1 >= t else f"one of the steps t={k + 1}..{t}"
        nest = checked.init if k == 0 else checked.steps[k - 1]
        try:
            now = host64(flatten_pair(checked.init, nest, "trajectory.init", name).other)
        except (RuntimeError, TypeError, ValueError) as err:  # a deleted (donated) JAX array
            raise AssertionError(
                f"the EMA changed its input {name} during {when}: it can no longer be read ({err})"
            ) from None
        for before, after, path in zip(checked.host[k], now, checked.paths, strict=True):
            _same(before, after, name, path, when)


def _same(before: np.ndarray, after: np.ndarray, name: str, path: Path, when: str) -> None:
    if before.shape == after.shape and np.array_equal(before, after, equal_nan=True):
        return
    where = path_str(name, path)
    if before.shape != after.shape:
        raise AssertionError(
            f"the EMA changed its input {where} during {when}: shape {before.shape} is now "
            f"{after.shape}"
        )
    k = int(np.flatnonzero(~_close(after, before, 0.0))[0])
    raise AssertionError(
        f"the EMA changed its input {where} during {when}: element {k} was "
        f"{before.reshape(-1)[k].item()!r}, is {after.reshape(-1)[k].item()!r}; an EMA must "
        "not write into the params it is given (nor into trajectory.init)"
    )


__all__ = ["RTOL", "compare_leaf", "returned", "tolerances", "unchanged"]

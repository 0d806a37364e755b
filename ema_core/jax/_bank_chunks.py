"""The EMA bank on trees of more than ``CHUNK`` arrays (``ema_core.jax._bank``'s slow-compile
guard, as ``_chunked`` is ``make_update``'s): one small jitted head computes the K decays, then
each chunk of leaves is one compiled call that updates all K shadows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ema_core import _api
from ema_core._config import Config
from ema_core._types import EMAState, Tree
from ema_core.backends.jax._leaves import update_compiled
from ema_core.backends.jax._scalars import scalars
from ema_core.jax import _chunked

__all__ = ["Chunks", "updates"]


class Chunks:
    """The bank on trees of more than ``CHUNK`` arrays: one small head computes the K decays,
    then each chunk of leaves is one compiled call updating all K shadows (as ``_chunked``)."""

    def __init__(self, configs: tuple[Config, ...], donate: bool) -> None:
        self.configs = configs
        self._head = jax.jit(self._decays, donate_argnums=(0, 1) if donate else ())
        self._kernel = jax.jit(
            _kernel, static_argnames=("kinds", "non_floats"), donate_argnums=(0,) * donate
        )
        self._kinds: dict[Any, tuple[str, ...]] = {}

    def _decays(self, steps: list[Any], weights: list[Any]) -> list[tuple[Any, ...]]:
        return [
            scalars(config, step, weight)
            for step, weight, config in zip(steps, weights, self.configs, strict=True)
        ]

    def kinds(self, key: Any, merge: Any, arrays: list[Any], params: list[Any]) -> Any:
        """Per leaf "float" or "exact", after validating the bank's update once per signature
        on abstract values (nothing runs, nothing is donated)."""
        if key not in self._kinds:

            def check(a: list[Any], p: list[Any]) -> Any:
                states, tree = merge(a, p)
                return updates(states, tree, self.configs)

            jax.eval_shape(check, arrays, params)
            inexact = [jax.numpy.issubdtype(p.dtype, jax.numpy.inexact) for p in params]
            self._kinds[key] = tuple("float" if f else "exact" for f in inexact)
        return self._kinds[key]

    def run(self, arrays: list[Any], params: list[Any], kinds: tuple[str, ...]) -> list[Any]:
        """``arrays`` is K blocks ``[step, *shadow arrays, weight]``, as the states flatten."""
        size = len(params) + 2
        blocks = [arrays[i : i + size] for i in range(0, len(arrays), size)]
        heads = self._head([b[0] for b in blocks], [b[-1] for b in blocks])
        ds, rs = tuple(h[1] for h in heads), tuple(h[2] for h in heads)
        non_floats = tuple(c.non_float for c in self.configs)
        new: list[list[Any]] = [[] for _ in blocks]
        for i in range(0, len(params), _chunked.CHUNK):
            part = slice(i, i + _chunked.CHUNK)
            shadows = tuple(tuple(b[1:-1][part]) for b in blocks)
            outs = self._kernel(
                shadows, tuple(params[part]), ds, rs, kinds=kinds[part], non_floats=non_floats
            )
            for k, out in enumerate(outs):
                new[k] += out
        return [x for h, n in zip(heads, new, strict=True) for x in (h[0], *n, h[3])]


def _kernel(
    shadows: tuple[tuple[Any, ...], ...],
    params: tuple[Any, ...],
    ds: tuple[Any, ...],
    rs: tuple[Any, ...],
    *,
    kinds: tuple[Any, ...],
    non_floats: tuple[Any, ...],
) -> tuple[Any, ...]:
    """One chunk of leaves of all K EMAs, each as ``update_compiled`` does it."""
    return tuple(
        update_compiled(s, params, d, r, kinds=kinds, non_float=nf)
        for s, d, r, nf in zip(shadows, ds, rs, non_floats, strict=True)
    )


def updates(states: Sequence[EMAState], params: Tree, configs: Sequence[Config]) -> list[EMAState]:
    """``_api.update`` of each state with its config; a refusal names the state (``states[k]``),
    as ``update`` names every state ``state``."""
    out = []
    for k, (state, config) in enumerate(zip(states, configs, strict=True)):
        try:
            out.append(_api.update(state, params, config))
        except (TypeError, ValueError) as error:
            if type(error) not in (TypeError, ValueError):  # JAX's own errors, as they are
                raise
            raise type(error)(f"states[{k}]: {error}") from error
    return out

"""``make_update`` for trees of many arrays: the leaves in chunks, each chunk its own jit call.

XLA compiles one kernel per leaf, and on a CPU its time and memory grow faster than the leaf
count (20,000 tensors: minutes and over 12 GB). Here the decay is computed once per step by a
small compiled head, and the leaves are updated in chunks of ``CHUNK`` by one compiled kernel per
chunk signature (chunks of equal shapes share it). The whole update is validated by
``ema_core.update`` on abstract values (``jax.eval_shape``) before anything runs, once per
signature of the arguments, so a bad call raises before any buffer is donated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ema_core import _api
from ema_core._config import Config
from ema_core.backends.jax._leaves import update_compiled, update_donated
from ema_core.backends.jax._scalars import scalars

#: Leaves per compiled chunk.
CHUNK = 1024


class Chunked:
    """The chunked update: ``run(state_arrays, params_arrays, state, params)`` -> new arrays."""

    def __init__(self, config: Config, donate: bool) -> None:
        self.config = config
        self.donate = donate
        self._head = jax.jit(self._decay, donate_argnums=(0, 1) if donate else ())
        self._kinds: dict[Any, tuple[str, ...]] = {}

    def _decay(self, step: Any, weight: Any) -> tuple[Any, Any, Any, Any]:
        return scalars(self.config, step, weight)

    def kinds(self, key: Any, merge: Any, arrays: list[Any], params_arrays: list[Any]) -> Any:
        """Per leaf "float" or "exact", after validating this signature once: ``merge(arrays,
        params_arrays)`` rebuilds the state and params from their arrays."""
        if key not in self._kinds:

            def check(a: list[Any], p: list[Any]) -> Any:
                state, params = merge(a, p)
                return _api.update(state, params, self.config)

            jax.eval_shape(check, arrays, params_arrays)
            self._kinds[key] = tuple(
                "float" if jnp.issubdtype(p.dtype, jnp.inexact) else "exact" for p in params_arrays
            )
        return self._kinds[key]

    def run(self, arrays: list[Any], params: list[Any], kinds: tuple[str, ...]) -> list[Any]:
        """``arrays`` is ``[step, *shadow arrays, weight]``, as an ``EMAState`` flattens."""
        step, shadows, weight = arrays[0], arrays[1:-1], arrays[-1]
        t, d, r, new_weight = self._head(step, weight)
        kernel = update_donated if self.donate else update_compiled
        new: list[Any] = []
        for i in range(0, len(shadows), CHUNK):
            part = slice(i, i + CHUNK)
            new += kernel(
                tuple(shadows[part]),
                tuple(params[part]),
                d,
                r,
                kinds=kinds[part],
                non_float=self.config.non_float,
            )
        return [t, *new, new_weight]

"""``BankUpdate``, the callable ``make_bank_update`` returns: K EMA states updated by one
jitted call (or, over ``CHUNK`` arrays, chunk by chunk: ``_bank_chunks``), their snapshots
checked before and written after it, and ``save_snapshots``."""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax

from ema_core import _api, _bank_snapshots, _banks, _snapshot_args
from ema_core._config import Config
from ema_core._types import EMAState, Tree
from ema_core.jax._bank_chunks import Chunks, updates
from ema_core.jax._call_checks import (
    check_readable,
    check_x64,
    host_checked,
)
from ema_core.jax._compiled import dispatch
from ema_core.jax._finite_params import check_finite_params
from ema_core.jax._placement import commit_state
from ema_core.jax._split import Split, split

__all__ = ["BankUpdate"]


class BankUpdate:
    """The callable ``make_bank_update`` returns (``configs`` holds the K configs)."""

    def __init__(
        self, configs: tuple[Config, ...], donate: bool, every: int | None, directory: Any
    ) -> None:
        self.configs = configs
        # guard_finite is checked before the call, as make_update's: traced params cannot raise
        self._guard = any(c.guard_finite for c in configs)
        self._compiled = tuple(dataclasses.replace(c, guard_finite=False) for c in configs)
        self._every, self._directory = every, directory
        self._jitted = jax.jit(self._arrays, static_argnums=(2, 3), donate_argnums=(0,) * donate)
        self._chunks = Chunks(self._compiled, donate)
        self._donate = donate
        self._made: tuple[Callable[[], Any], ...] = ()  # the steps this bank last returned
        self._host_steps: list[int] = []  # with snapshot_every: the steps, counted here

    def init(self, params: Tree, /) -> tuple[EMAState, ...]:
        """K new states for ``params``: ``ema_core.init(params, config)`` for each config; with
        ``snapshot_every``, what every snapshot would refuse is refused here, before training."""
        states = tuple(_api.init(params, c) for c in self.configs)
        if self._every is not None:
            _bank_snapshots.check_at_start(
                self._directory,
                [s.shadow for s in states],
                every=self._every,
                sigma_rels=_snapshot_args.snapshot_sigma_rels(self.configs),
                intervals=[c.interval for c in self.configs],
            )
        return states

    def averages(self, states: Sequence[EMAState], /) -> tuple[Tree, ...]:
        """``ema_core.average(states[k], configs[k])`` for each EMA."""
        return tuple(
            _api.average(s, c) for s, c in zip(self._states(states), self.configs, strict=True)
        )

    def __call__(self, states: Sequence[EMAState], params: Tree, /) -> tuple[EMAState, ...]:
        states = self._states(states)
        made = [m() for m in self._made] or [None] * len(states)
        trusted = all(s.step is m for s, m in zip(states, made, strict=True))
        states = tuple(  # a step this bank made is valid: not read again
            host_checked(s, trusted, f"states[{k}]", "this bank") for k, s in enumerate(states)
        )
        if self._guard:
            check_finite_params(params)
        every = self._every
        counted = [] if every is None else self._count(states, trusted)
        due = [k for k, t in enumerate(counted) if every is not None and t % every == 0]
        if due:  # each EMA by its own step, as the torch bank; refused before any donation
            sigma_rels = _snapshot_args.snapshot_sigma_rels(self.configs)
            _bank_snapshots.check_set(
                self._directory,
                [states[k].shadow for k in due],
                steps=[counted[k] for k in due],
                sigma_rels=[sigma_rels[k] for k in due],
                intervals=[self.configs[k].interval for k in due],
            )
        # beside steps it made, a leaf swapped in (state._replace(shadow=...)) is checked
        prepared = self._prepare(
            states, params, partial(_check_x64_all, states) if trusted else None
        )
        out: tuple[EMAState, ...] = prepared[2].merge(
            dispatch(self._jitted, self._chunks, *prepared)
        )
        steps = [s.step for s in out]
        if all(isinstance(t, jax.Array) and not isinstance(t, jax.core.Tracer) for t in steps):
            self._made = tuple(weakref.ref(t) for t in steps)
        self._host_steps = counted  # kept only once the update went through
        if due:
            note, args = ", error.states the new states", "snapshot_dir, error.states"
            with _bank_snapshots.retrying(args, due, len(out), note) as retry:
                self._write(self._directory, out, None, counted, retry, due)
        return out

    def save_snapshots(
        self,
        directory: str | os.PathLike[str],
        states: Sequence[EMAState],
        /,
        *,
        dtype: str | None = None,
        steps: Sequence[int] | None = None,
        which: Sequence[int] | None = None,
    ) -> list[Any]:
        """Write each EMA's average as an EDM2 snapshot (``ema_core.posthoc.save_snapshot``)
        at its step (read from the state unless ``steps`` gives them), all K (or the EMAs of
        indices ``which``) as one set (all written, or none: a failure removes the others);
        return their paths. After a ``SnapshotWriteError`` (a call with ``snapshot_every``
        whose update went through but whose snapshots did not),
        ``save_snapshots(snapshot_dir, error.states, which=error.which)`` writes them.

        Raises:
            ValueError: an EMA's average is not a power-function EMA (as above), two share a
                sigma_rel, or their intervals differ (``snapshot_sigma_rels``); an EMA to
                write is at step 0; ``steps`` does not hold K steps, or does not scale the
                states' steps by one whole factor (``_snapshot_args.snapshot_steps``);
                ``which`` empty or repeating an index. TypeError: ``steps`` or ``which`` is
                not a list or tuple. IndexError: an index of ``which`` out of range.
        """
        own = self._states(states)
        chosen = _banks.indices(which, len(own))
        _snapshot_args.snapshot_sigma_rels(self.configs)  # the configs first: no step fixes them
        for k, state in enumerate(own):  # a donated state named, not read
            check_readable(state, f"states[{k}]")
        labels = _snapshot_args.snapshot_steps([int(s.step) for s in own], steps, chosen, "states")
        return self._write(directory, own, dtype, labels, None, chosen)

    def _write(
        self,
        directory: Any,
        states: tuple[EMAState, ...],
        dtype: str | None,
        steps: Sequence[int],
        retry: str | None,
        which: Sequence[int],
    ) -> list[Any]:
        """The snapshots of the EMAs ``which`` (indices) at ``steps`` as one set."""
        sigma_rels = _snapshot_args.snapshot_sigma_rels(self.configs)
        return _bank_snapshots.write_set(
            directory,
            [_api.average(states[k], self.configs[k]) for k in which],
            steps=[steps[k] for k in which],
            sigma_rels=[sigma_rels[k] for k in which],
            intervals=[self.configs[k].interval for k in which],
            dtype=dtype,
            retry=retry,
            states=states,
        )

    def lower(self, states: Sequence[EMAState], params: Tree, /) -> Any:
        """JAX's lowered computation (``.compile().as_text()``: the HLO) for these arguments."""
        return self._jitted.lower(*self._prepare(self._states(states), params))

    def _count(self, states: tuple[EMAState, ...], trusted: bool) -> list[int]:
        """The host's count of each EMA's step after this update (snapshot_every); the caller
        keeps it only when the update succeeds, so a refused call does not shift it."""
        if any(isinstance(s.step, jax.core.Tracer) for s in states):
            raise TypeError("a bank with snapshot_every writes files: call it outside jax.jit")
        tops = [_top(s.step) for s in states]  # a count stops at its dtype's top, as the step
        if trusted and self._host_steps:
            return [min(t + 1, top) for t, top in zip(self._host_steps, tops, strict=True)]
        return [min(int(s.step) + 1, top) for s, top in zip(states, tops, strict=True)]

    def _states(self, states: Any) -> tuple[EMAState, ...]:
        return _banks.ema_states(states, len(self.configs))

    def _prepare(
        self,
        states: tuple[EMAState, ...],
        params: Tree,
        on_new: Callable[[], None] | None = None,
    ) -> tuple[Any, ...]:
        state_arrays, state_split = split(states)
        params_arrays, params_split = split(params)
        splits = state_split, params_split
        state_arrays = commit_state(state_arrays, params_arrays, self._donate, on_new, splits)
        return state_arrays, params_arrays, state_split, params_split

    def _arrays(
        self, arrays: list[Any], params_arrays: list[Any], state_split: Split, params_split: Split
    ) -> list[Any]:
        states, params = state_split.merge(arrays), params_split.merge(params_arrays)
        new = tuple(updates(states, params, self._compiled))
        return split(new)[0]


def _check_x64_all(states: tuple[EMAState, ...]) -> None:
    for k, state in enumerate(states):
        check_x64(state, f"states[{k}]")


def _top(step: Any) -> int:
    """The largest count ``step`` holds: its integer dtype's top (a Python int: JAX's default
    int's, the dtype the update gives it)."""
    dtype = getattr(step, "dtype", None)
    if dtype is None or not jax.numpy.issubdtype(dtype, jax.numpy.integer):
        dtype = jax.numpy.asarray(0).dtype
    return int(jax.numpy.iinfo(dtype).max)  # type: ignore[no-untyped-call]

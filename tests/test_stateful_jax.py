"""A stateful property test of ema-core's JAX side: random sequences of optax steps under
``with_ema`` (steps that ``apply_if_finite`` skips and ``MultiSteps`` micro-batches included),
written params, ``.npz`` resumes into fresh states and refused calls, with every step's EMA
kept four ways (``make_update`` donating and not, the eager ``ema_core.update``, ``with_ema``)
and checked against the float64 model of the README's update rule in tests/stateful_models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
pytest.importorskip("optax")
torch = pytest.importorskip("torch")

from hypothesis import seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import ema_core as ema  # noqa: E402
from ema_core.jax import ema_average, load_state_dict, make_update  # noqa: E402
from tests import stateful_jax_models as jm  # noqa: E402
from tests import stateful_models as sm  # noqa: E402
from tests.stateful_jax_models import bits, named, snapshot  # noqa: E402

BAD_UPDATES = ["negative_step", "float_step", "weight_shape", "weight_dtype", "shape"]
BAD_UPDATES += ["int_leaf", "complex_leaf", "missing", "other_state"]
BAD_LOADS = ["load_missing", "load_extra", "load_shape", "load_dtype", "load_other"]
PATHS = ("donate", "keep", "eager")  # make_update(donate=True / False), ema_core.update


class JaxEMAMachine(RuleBasedStateMachine):
    def __init__(self, which: int) -> None:
        super().__init__()
        self.spec, self.config, self.optimizer = jm.CONFIGS[which]

    @initialize(seed=st.integers(0, 2**32 - 1), warm=st.integers(0, 4))
    def build(self, seed: int, warm: int) -> None:
        """Fresh params, optimizer and states, then ``warm`` optax steps."""
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.opt, self.train_step = jm.train_step(self.config, self.optimizer)
        self.params = jm.new_params(self.rng)
        self.opt_state = self.opt.init(self.params)
        self.states = {path: ema.init(self.params, self.config) for path in PATHS}
        self.twins: dict[str, ema.EMAState] = {}  # resumed from a state of PATHS, by path
        self.spent: ema.EMAState | None = None  # the last state given to the donating update
        live = jm.live(self.params)
        self.ref = sm.Reference(self.config, self.spec, dict.fromkeys(live, "avg"), live)
        # the weight is the EMA of the constant 1 (from 0 under init="zeros", else from 1)
        self.weight = sm.Track("avg", np.asarray(float(self.config.init != "zeros")))
        for _ in range(warm):
            self._train(1.0, None)

    def update_of(self, path: str) -> Callable[[ema.EMAState, Any], ema.EMAState]:
        if path == "eager":
            return lambda state, params: ema.update(state, params, self.config)
        return jm.compiled(self.config, path == "donate")

    def all_bits(self) -> dict[str, Any]:
        """Every state's and the params' bits (a deleted, donated array raises)."""
        states = {p: snapshot(s) for p, s in (self.states | self.twins).items()}
        return states | {"optax": snapshot(self.opt_state.ema), "params": snapshot(self.params)}

    # --- rules: what a user does ---

    @rule(
        scale=st.sampled_from([0.0, 1e-3, 1.0, 100.0]),
        bad=st.sampled_from([None, None, "nan", "inf"]),
        repeat=st.integers(1, 3),
    )
    def train(self, scale: float, bad: str | None, repeat: int) -> None:
        """``repeat`` optax steps (``bad`` grads in the last); the EMA moves when the optimizer
        applies one (``apply_if_finite``: finite grads; ``MultiSteps``: every
        ``EVERY_K``-th call)."""
        for _ in range(repeat - 1):
            self._train(scale, None)
        self._train(scale, bad)

    def _train(self, scale: float, bad: str | None) -> None:
        grads = jax.tree.map(
            lambda p: jnp.asarray(self.rng.uniform(-scale, scale, p.shape), p.dtype), self.params
        )
        multi = self.optimizer == "multi_steps"
        if bad is not None and not multi:
            grads["dense"]["w"] = grads["dense"]["w"].at[1, 2].set(float(bad))
        self.calls += 1
        stepped = self.calls % jm.EVERY_K == 0 if multi else bad is None
        self.params, self.opt_state = self.train_step(self.params, self.opt_state, grads)
        if stepped:
            self._update()

    def _update(self) -> None:
        """The EMA update of step ``t`` on every path, then its ends: a decay of 1 keeps every
        shadow's bits, a decay of 0 copies the params; ``donate=False`` and the eager update
        leave the state they were given as it was."""
        before, given = self.all_bits(), dict(self.states)
        self.spent = self.states["donate"]
        for path in self.states:
            self.states[path] = self.update_of(path)(self.states[path], self.params)
        for path in self.twins:
            self.twins[path] = self.update_of(path)(self.twins[path], self.params)
        for path in ("keep", "eager"):
            assert snapshot(given[path]) == before[path], path
        live = jm.live(self.params)
        d = self.ref.update(self.ref.step + 1, live, dict.fromkeys(live, torch.float32))
        self.weight.blend(d, np.asarray(1.0), jm.EPS32, 0.0)
        params = named(self.params)
        for path, state in self.states.items():
            shadows = named(state.shadow)
            for name in self.ref.tracks:
                if d == 1.0:
                    assert bits(shadows[name]) == before[path]["shadow/" + name], (path, name)
                elif d == 0.0:
                    want = params[name].astype(shadows[name].dtype)
                    assert bits(shadows[name]) == bits(want), (path, name)

    @rule(what=st.sampled_from(["inf", "-inf", "nan", "fix"]), leaf=st.sampled_from(["w", "b"]))
    def write_params(self, what: str, leaf: str) -> None:
        """The user writes an inf or a NaN into the params, or clears them (``"fix"``)."""
        if what == "fix":
            self.params = jax.tree.map(lambda p: jnp.nan_to_num(p, nan=0.0), self.params)
        else:
            dense = self.params["dense"] | {leaf: self.params["dense"][leaf].at[0].set(float(what))}
            self.params = {"dense": dense, "low": self.params["low"]}

    @rule(path=st.sampled_from(["donate", "eager"]))
    def resume(self, path: str) -> None:
        """``state_dict`` -> ``.npz`` -> ``load_state_dict`` into a fresh state mid-run; the
        twin is updated beside the original from now on."""
        like = ema.init(jax.tree.map(jnp.zeros_like, self.params), self.config)
        self.twins[path] = jm.resumed(self.states[path], like)

    @rule(kind=st.sampled_from(BAD_UPDATES + BAD_LOADS + ["no_params", "donated"]))
    def refused(self, kind: str) -> None:
        """A refused call raises and changes nothing: no state, no twin, no params, and the
        donating update gave no array away. A state once given to the donating update is
        refused by name on every path."""
        before = self.all_bits()
        if kind == "donated" and self.spent is not None:
            for path in PATHS:
                with pytest.raises(ValueError, match="donated"):
                    self.update_of(path)(self.spent, self.params)
        elif kind in BAD_LOADS:
            arrays, error = jm.bad_load(self.states["donate"], kind)
            with pytest.raises(error):
                load_state_dict(arrays, self.states["donate"])
        elif kind == "no_params":
            with pytest.raises(ValueError, match="needs the params"):
                self.opt.update(self.params, self.opt_state)
        else:
            kind = "negative_step" if kind == "donated" else kind  # nothing donated yet
            for path in PATHS:
                state, params, error = jm.bad_update(self.states[path], self.params, kind)
                with pytest.raises(error):
                    self.update_of(path)(state, params)
        assert self.all_bits() == before

    # --- invariants ---

    @invariant()
    def states_follow_the_rule(self) -> None:
        for path, state in self.states.items():
            assert int(state.step) == self.ref.step, path
            self.weight.check(np.asarray(state.weight, np.float64), f"{path} weight")
            shadows, params = named(state.shadow), named(self.params)
            for name, track in self.ref.tracks.items():
                dtype = sm.shadow_dtype(self.config, jm.torch_dtype(params[name].dtype))
                assert jm.torch_dtype(shadows[name].dtype) == dtype, (path, name)
                track.check(np.asarray(shadows[name], np.float64), f"{path} {name}")

    @invariant()
    def compiled_paths_agree_bit_for_bit(self) -> None:
        """``make_update`` with and without donation and ``with_ema`` in a jitted step; the
        eager update's shadows agree with theirs (README, Choices)."""
        want = snapshot(self.states["donate"])
        assert snapshot(self.states["keep"]) == want
        assert snapshot(self.opt_state.ema) == want
        eager = self.states["eager"]  # README: its weight may differ in the last bit
        assert snapshot(eager.shadow) == snapshot(self.states["donate"].shadow)

    @invariant()
    def averages_read_the_state(self) -> None:
        """``average`` and ``ema_average`` (which reads the optax EMA alike); under
        ``init="zeros"`` a read with ``init="params"`` is refused (no decay of 0 in these
        configs: the weight stays below 1)."""
        for state in self.states.values():
            jm.check_average(state, ema.average(state, self.config), self.config.init)
        read = snapshot(ema_average(self.opt_state, self.config))
        assert read == snapshot(ema.average(self.states["donate"], self.config))
        if self.config.init == "zeros":
            c = self.config
            other = ema.Config(schedule=c.schedule, interval=c.interval, compensate=c.compensate)
            assert float(self.states["donate"].weight) < 1.0
            with pytest.raises(ValueError, match="init"):
                ema.average(self.states["donate"], other)
            with pytest.raises(ValueError, match="init"):
                ema_average(self.opt_state, other)

    @invariant()
    def resumed_twins_are_bit_identical(self) -> None:
        for path, twin in self.twins.items():
            assert snapshot(twin) == snapshot(self.states[path]), path


@pytest.mark.parametrize("which", range(len(jm.CONFIGS)), ids=jm.IDS)
def test_random_sequences_follow_the_rule(which: int) -> None:
    """Each config runs its own sequences (seeded by the config: reproducible, and not the
    same sequences for every config); its updates compile once, not per example."""

    @seed(which)
    def machine() -> JaxEMAMachine:
        return JaxEMAMachine(which)

    run_state_machine_as_test(
        machine,  # type: ignore[arg-type]
        settings=settings(max_examples=6, stateful_step_count=15, deadline=None, database=None),
    )


def test_eager_and_compiled_shadows_agree_under_an_interval() -> None:
    """Step 3 of constant(0.9) every 3 steps: the product 0.729 of three decays. The eager
    update took the host's float64 product for a concrete CPU count, one ulp off the compiled
    float32 one (README Choices: eager and compiled shadows agree)."""
    config = ema.Config(schedule=0.9, interval=3)
    state = ema.init({"w": jnp.zeros(8)}, config)._replace(step=jnp.asarray(2, jnp.int32))
    params = {"w": jnp.arange(1.0, 9.0)}
    eager = ema.update(state, params, config)
    compiled = make_update(config, donate=False)(state, params)
    assert bits(eager.shadow["w"]) == bits(compiled.shadow["w"])

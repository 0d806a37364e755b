"""The public test kit finds planted defects, passes correct EMAs, and its strategies generate
valid inputs on every backend."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ema_core as ema
from ema_core import schedules, testing
from tests.conftest import Backend

WARMUP = ema.Config(schedule=schedules.warmup(0.999), init="copy")


def _xp(backend: Backend) -> Any:
    return compat.array_namespace(backend.asarray(np.zeros(1, np.float32)))


def _trajectory(backend: Backend, steps: int = 12, dtype: str | None = None) -> testing.Trajectory:
    rng = np.random.default_rng(3)
    nests = [
        {
            "w": backend.asarray(rng.standard_normal((2, 3)).astype(np.float32), dtype),
            "b": [backend.asarray(rng.standard_normal(2).astype(np.float32), dtype)],
        }
        for _ in range(steps + 1)
    ]
    return testing.Trajectory(nests[0], nests[1:])


def functional(config: ema.Config):
    """ema-core's own functional API as an EMA under test."""

    def make(init: Any):
        box = {"state": ema.init(init, config)}

        def step(params: Any, t: int) -> Any:
            box["state"] = ema.update(box["state"], params, config)
            return ema.average(box["state"], config)

        return step

    return make


def hand_written(decay_of, *, swap: bool = False, low_precision: bool = False):
    """A plain loop EMA over numpy copies, with optional planted defects."""

    def make(init: Any):
        shadow = [testing._convert.to_numpy(x) for x in ema._tree.flatten(init)[0]]
        if not low_precision:
            shadow = [s.astype(np.float64) for s in shadow]

        def step(params: Any, t: int) -> Any:
            d = decay_of(t)
            w = 1 - d if swap else d
            for i, p in enumerate(ema._tree.flatten(params)[0]):
                mixed = w * shadow[i] + (1 - w) * testing._convert.to_numpy(p)
                shadow[i] = mixed.astype(shadow[i].dtype)
            return {"b": [shadow[1]], "w": shadow[0]}

        return step

    return make


def test_kit_passes_ema_core_on_every_backend(backend: Backend) -> None:
    for cfg in (
        WARMUP,
        ema.Config(schedule=0.9, init="zeros", interval=2),
        ema.Config(schedule=schedules.power_function(sigma_rel=0.1)),
    ):
        testing.assert_matches(functional(cfg), cfg, _trajectory(backend))


def test_kit_passes_a_correct_hand_written_ema() -> None:
    # it keeps float64 shadows for float32 params: a float of another width is accepted
    testing.assert_matches(
        hand_written(WARMUP.decay), WARMUP, _trajectory(_numpy()), returned_dtype="kind"
    )


@pytest.mark.parametrize(
    ("defect", "match"),
    [
        (hand_written(lambda t: WARMUP.decay(t + 1)), "step t=1"),  # off by one step
        (hand_written(schedules.warmup(0.999)), "step t=1"),  # no first-step copy
        (hand_written(WARMUP.decay, swap=True), "step t=1"),  # decay and 1 - decay swapped
    ],
    ids=["off-by-one", "missing-copy", "swapped"],
)
def test_kit_finds_planted_defects(defect, match: str) -> None:
    with pytest.raises(AssertionError, match=match) as err:
        testing.assert_matches(defect, WARMUP, _trajectory(_numpy()))
    assert "leaf params['b'][0]" in str(err.value) or "leaf params['w']" in str(err.value)
    assert "ema-core applies decay" in str(err.value)


def test_kit_finds_bf16_accumulation() -> None:
    torch = pytest.importorskip("torch")
    cfg = ema.Config(schedule=0.999)

    def make(init: Any):
        shadow = {"w": init["w"].clone(), "b": init["b"][0].clone()}

        def step(params: Any, t: int) -> Any:
            shadow["w"].lerp_(params["w"], 1 - 0.999)  # a bf16 shadow: the peers' silent stall
            shadow["b"].lerp_(params["b"][0], 1 - 0.999)
            return {"b": [shadow["b"]], "w": shadow["w"]}

        return step

    rng = np.random.default_rng(0)
    nests = [
        {
            "w": torch.from_numpy(rng.standard_normal(8).astype(np.float32)).bfloat16(),
            "b": [torch.from_numpy(rng.standard_normal(2).astype(np.float32)).bfloat16()],
        }
        for _ in range(30)
    ]
    with pytest.raises(AssertionError, match="differs from ema-core first at step"):
        testing.assert_matches(make, cfg, testing.Trajectory(nests[0], nests[1:]))
    testing.assert_matches(functional(cfg), cfg, testing.Trajectory(nests[0], nests[1:]))


def test_properties_pass_ema_core_and_catch_a_swap(backend: Backend) -> None:
    xp = _xp(backend)
    testing.assert_ema_properties(
        lambda s, p, d: ema.ema_update(s, p, 1, decay=d), xp, max_examples=15
    )
    with pytest.raises(AssertionError, match=r"decay=0\.0 must copy the params"):
        testing.assert_ema_properties(
            lambda s, p, d: ema.ema_update(s, p, 1, decay=1 - d), xp, max_examples=15
        )


def test_strategies_generate_valid_inputs(backend: Backend) -> None:
    xp = _xp(backend)
    dtypes = ("float32", "bfloat16") if backend.has_bf16 else ("float32",)

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        nest=testing.nests(xp, dtypes=dtypes, int_buffers=True),
        cfg=testing.configs(),
        traj=testing.trajectories(xp),
    )
    def check(nest: Any, cfg: ema.Config, traj: testing.Trajectory) -> None:
        leaves = ema._tree.flatten(nest)[0]
        assert leaves and all(compat.array_namespace(x) is xp for x in leaves)
        state = ema.update(ema.init(nest, cfg), nest, cfg)
        assert int(state.step) == 1
        testing.assert_matches(functional(cfg), cfg, traj)

    check()


@pytest.mark.parametrize("init", ["params", "copy", "zeros"])
@pytest.mark.parametrize("interval", [1, 3])
def test_kit_reference_equals_the_independent_oracle(init: str, interval: int) -> None:
    """The kit's oracle reads decays from the Config; tests/reference.py from the formulas."""
    from tests.reference import SPECS, config_for, run_loop

    traj = _trajectory(_numpy(), steps=9)
    init_host = {"w": testing._convert.to_numpy(traj.init["w"])}
    seq = [{"w": testing._convert.to_numpy(p["w"])} for p in traj.steps]
    for spec in SPECS:
        cfg = config_for(spec, init, interval, compensate=True)
        got = testing.reference(cfg, testing.Trajectory(init_host, seq))
        want = run_loop(spec, init, interval, True, init_host, seq)
        for g, (shadow, weight) in zip(got, want, strict=True):
            np.testing.assert_allclose(g.shadow[0], shadow["w"], rtol=1e-12, atol=1e-12)
            assert g.weight == pytest.approx(weight, rel=1e-12, abs=1e-15)


def _numpy() -> Backend:
    from tests.conftest import Name, _make

    return _make(Name.NUMPY)

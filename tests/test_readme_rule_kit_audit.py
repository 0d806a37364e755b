"""README audit: "## The update rule", "## Quickstart" and "## Test your own EMA". Each test
pins one concrete promise that no other test pinned; the comment quotes it. References are the
README's own formulas, computed in float64 by a plain loop."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, testing
from ema_core import schedules as S

# ---------------------------------------------------------------- "## The update rule"


def _warmup(t: int, decay: float, inv_gamma: float = 1.0, power: float = 2 / 3) -> float:
    return min(max(1 - (1 + t / inv_gamma) ** -power, 0.0), decay)


def test_an_update_is_the_readme_formula_under_a_schedule() -> None:
    # "s_t = s_{t-1} + (1 - d_t) (p_t - s_{t-1})", t counting updates from 1
    rng = np.random.default_rng(0)
    config = ema.Config(schedule=S.warmup(0.99))
    nests = [{"w": rng.standard_normal(5)} for _ in range(8)]
    state = ema.init(nests[0], config)
    s = nests[0]["w"].copy()
    for t, params in enumerate(nests[1:], 1):
        state = ema.update(state, params, config)
        s = s + (1 - _warmup(t, 0.99)) * (params["w"] - s)
        np.testing.assert_allclose(np.asarray(state.shadow["w"]), s, rtol=1e-13, atol=1e-15)
    assert int(state.step) == 7


def test_decay_0_copies_and_decay_1_keeps_bit_exactly() -> None:
    # "`d_t = 0` copies the params bit-exactly; `d_t = 1` leaves an averaged shadow bit-exactly
    # unchanged."
    rng = np.random.default_rng(1)
    params = {"w": (rng.standard_normal(64) * 1e3).astype(np.float32)}
    shadow = {"w": (rng.standard_normal(64) * 1e-3).astype(np.float32)}
    kept = shadow["w"].copy()
    out = ema.ema_update(shadow, params, 5, decay=1.0)
    assert np.array_equal(out["w"], kept)
    out = ema.ema_update(shadow, params, 6, decay=0.0)
    assert np.array_equal(out["w"], params["w"])


@pytest.mark.parametrize(
    "schedule",
    [S.num_updates(0.999), S.warmup(0.999), S.constant(0.9)],
    ids=["num_updates", "warmup", "constant"],
)
def test_zeros_weight_is_one_minus_the_product_and_average_divides_by_it(schedule: Any) -> None:
    # "`w_t = d_t w_{t-1} + (1 - d_t)` with `w_0 = 0`, which is `1 - prod(d_1 .. d_t)` under any
    # schedule, and reads the average as s_t / w_t"; for a constant decay "`1 - d^t`"
    config = ema.Config(schedule=schedule, init="zeros")
    rng = np.random.default_rng(2)
    state = ema.init({"w": rng.standard_normal(3)}, config)
    assert float(state.weight) == 0.0
    keep, s = 1.0, np.zeros(3)
    for t in range(1, 9):
        params = {"w": rng.standard_normal(3)}
        state = ema.update(state, params, config)
        d = float(schedule(t))
        keep *= d
        s = s + (1 - d) * (params["w"] - s)
        assert float(state.weight) == pytest.approx(1 - keep, rel=1e-12, abs=1e-15)
        got = np.asarray(ema.average(state, config)["w"])
        np.testing.assert_allclose(got, s / (1 - keep), rtol=1e-11)
    if isinstance(schedule, type(S.constant(0.9))):
        assert float(state.weight) == pytest.approx(1 - 0.9**8, rel=1e-13)


def test_power_correction_is_tf_one_minus_d_t_to_the_t_and_differs_under_a_schedule() -> None:
    # "under a schedule it stays exact, where `1 - d_t^t` (TF, Paddle) does not";
    # `correction` ("exact", "power", "none")
    schedule = S.num_updates(0.999)
    rng = np.random.default_rng(3)
    params = [{"w": rng.standard_normal(3) + 5} for _ in range(6)]
    reads = {}
    for correction in ("exact", "power", "none"):
        config = ema.Config(schedule=schedule, init="zeros", correction=correction)
        state = ema.init(params[0], config)
        for p in params[1:]:
            state = ema.update(state, p, config)
        reads[correction] = np.asarray(ema.average(state, config)["w"])
    t = 5
    shadow = reads["none"]
    np.testing.assert_allclose(reads["power"], shadow / (1 - float(schedule(t)) ** t), rtol=1e-12)
    prod = math.prod(float(schedule(k)) for k in range(1, t + 1))
    np.testing.assert_allclose(reads["exact"], shadow / (1 - prod), rtol=1e-12)
    assert not np.allclose(reads["exact"], reads["power"], rtol=1e-3)


def test_a_float16_leaf_gets_a_float32_shadow_and_integers_keep_their_dtype() -> None:
    # "a float16/bfloat16 leaf gets a float32 shadow by default"
    params = {"h": np.ones(2, np.float16), "n": np.arange(2, dtype=np.int32), "b": np.ones(2, bool)}
    state = ema.init(params, ema.Config())
    assert state.shadow["h"].dtype == np.float32
    assert state.shadow["n"].dtype == np.int32
    assert state.shadow["b"].dtype == np.bool_


def test_a_bfloat16_torch_leaf_gets_a_float32_shadow() -> None:
    torch = pytest.importorskip("torch")
    state = ema.init({"w": torch.ones(2, dtype=torch.bfloat16)}, ema.Config())
    assert state.shadow["w"].dtype == torch.float32


def test_integer_and_bool_leaves_are_copied_even_at_decay_1_or_frozen() -> None:
    # "they take the params' value, bit for bit, on every call, also one whose decay is 1
    # (`non_float="copy"`, the default), or keep their value from `init` (`"freeze"`)"
    init = {"n": np.array([1, 2], np.int64), "b": np.array([True, False]), "w": np.zeros(2)}
    new = {"n": np.array([2**62 + 1, -7], np.int64), "b": np.array([False, True]), "w": np.ones(2)}
    for policy, want in (("copy", new), ("freeze", init)):
        config = ema.Config(schedule=1.0, non_float=policy)
        state = ema.update(ema.init(init, config), new, config)
        for key in ("n", "b"):
            assert state.shadow[key].dtype == want[key].dtype
            assert np.array_equal(state.shadow[key], want[key]), (policy, key)
        assert np.array_equal(state.shadow["w"], init["w"])  # decay 1 keeps the average
    assert ema.Config().non_float == "copy"


def test_freeze_is_the_policy_of_the_presets_the_readme_names() -> None:
    # "(`"freeze"`: the ema-pytorch presets, `presets.mmedit(update_buffers=True)`)"
    assert presets.mmedit(update_buffers=True).non_float == "freeze"
    assert presets.ema_pytorch().non_float == "freeze"
    assert presets.ema_pytorch_karras(gamma=7.0).non_float == "freeze"


def test_rate_is_one_minus_the_decay_in_an_accurate_form() -> None:
    # "Each schedule returns `1 - d_t` in its own accurate form (`schedule.rate(t)`)"
    t = 10**9
    assert float(S.warmup(1.0).rate(t)) == pytest.approx((1 + t) ** (-2 / 3), rel=1e-14)
    steps = 1e6
    want = -math.expm1(math.log(0.5) / steps)
    assert float(S.half_life(steps).rate(7)) == pytest.approx(want, rel=1e-14)
    assert float(S.constant(0.99999).rate(3)) == pytest.approx(1 - 0.99999, rel=1e-14)
    for schedule in (S.num_updates(0.99), S.annealing(0.01), S.power_function(7.0)):
        for k in (1, 5, 50):
            assert float(schedule.rate(k)) == pytest.approx(1 - float(schedule(k)), abs=1e-15)


def test_a_decay_of_0_99999_keeps_its_precision_in_jitted_float32_jax() -> None:
    # "so a decay like 0.99999 keeps its precision where the widest float is float32 (JAX
    # without x64)": 1 - float32(0.99999) is off by 0.14 %
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if jax.config.jax_enable_x64:
        pytest.skip("needs JAX without x64")
    config = ema.Config(schedule=0.99999)
    state = ema.init({"w": jnp.zeros(4, jnp.float32)}, config)
    state = jax.jit(lambda s, p: ema.update(s, p, config))(state, {"w": jnp.ones(4, jnp.float32)})
    got = np.asarray(state.shadow["w"], np.float64)
    np.testing.assert_allclose(got, 1 - 0.99999, rtol=1e-6)


def _every_ref(inner: Callable[[int], float], n: int, t: int) -> float:
    if t % n:
        return 1.0
    return math.prod(float(inner(k)) for k in range(t - n + 1, t + 1))


TABLE: dict[str, tuple[Any, Callable[[int], float]]] = {
    "constant": (S.constant(0.95), lambda t: 0.95),
    "num_updates": (S.num_updates(0.99), lambda t: min(0.99, (1 + t) / (10 + t))),
    "warmup": (S.warmup(0.999), lambda t: _warmup(t, 0.999)),
    "warmup_args": (
        S.warmup(0.999, inv_gamma=3.0, power=0.75, min_decay=0.2),
        lambda t: min(max(1 - (1 + t / 3.0) ** -0.75, 0.2), 0.999),
    ),
    "power_function": (S.power_function(7.0), lambda t: 0.0 if t <= 1 else (1 - 1 / t) ** 8),
    "half_life": (S.half_life(10.0), lambda t: 0.5 ** (1 / 10.0)),
    "annealing": (S.annealing(0.0002), lambda t: 1 - max(0.0002, 100 / (100 + t))),
    "every": (S.every(S.warmup(0.99), 3), lambda t: _every_ref(S.warmup(0.99), 3, t)),
    "every_plain": (
        S.every(S.warmup(0.99), 3, compensate=False),
        lambda t: float(S.warmup(0.99)(t)) if t % 3 == 0 else 1.0,
    ),
    "momentum": (S.momentum(0.01), lambda t: 0.99),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_each_schedule_is_its_table_formula_with_the_readme_defaults(name: str) -> None:
    # the "schedule | d_t" table, defaults as the README writes them; "each takes a Python int
    # or a 0-d integer array"
    # ("step may be 0 (schedules are defined there)": t = 0 too, but for `every`, whose
    # product at t = 0 the table leaves undefined)
    schedule, formula = TABLE[name]
    first = 1 if name.startswith("every") else 0
    for t in range(first, 25):
        want = formula(t)
        counts: list[Any] = [t, np.asarray(t)]
        if importlib.util.find_spec("torch") is not None:
            import torch

            counts.append(torch.tensor(t))
        for step in counts:
            got = float(schedule(step))
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (t, type(step))


def test_power_function_sigma_rel_is_the_gamma_it_names() -> None:
    # "`power_function(gamma=None, *, sigma_rel=None)`"
    gamma = S.sigma_rel_to_gamma(0.05)
    for t in (2, 10, 100):
        want = (1 - 1 / t) ** (gamma + 1)
        assert float(S.power_function(sigma_rel=0.05)(t)) == pytest.approx(want, rel=1e-12)


def test_in_float32_is_the_decay_rounded_to_float32() -> None:
    # "`in_float32` (a decay rounded to float32, as TensorFlow, Keras, Paddle and ema-pytorch
    # compute it)"
    assert float(S.in_float32(S.warmup(0.999))(7)) == float(np.float32(_warmup(7, 0.999)))
    assert float(S.in_float32(0.9999)(3)) == float(np.float32(0.9999))


def test_config_fields_are_the_readme_list_frozen_and_hashable() -> None:
    # "`Config(schedule, init, dtype, interval, compensate, non_float, guard_finite, correction,
    # buffers)` (frozen, hashable)"
    names = [f.name for f in dataclasses.fields(ema.Config)]
    assert names == [
        "schedule",
        "init",
        "dtype",
        "interval",
        "compensate",
        "non_float",
        "guard_finite",
        "correction",
        "buffers",
    ]
    a = ema.Config(schedule=S.warmup(0.999), init="zeros")
    b = ema.Config(schedule=S.warmup(0.999), init="zeros")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.init = "copy"  # type: ignore[misc]


# ---------------------------------------------------------------- "## Quickstart"


def test_numpy_quickstart_writes_in_place_returns_the_shadow_and_lags() -> None:
    # "`ema_update` writes into the shadow in place and returns it"; "lags behind params["w"]"
    params = {"w": np.ones(3), "b": np.zeros(1)}
    shadow = {"w": np.zeros(3), "b": np.zeros(1)}
    w_array = shadow["w"]
    ref = np.zeros(3)
    for step in range(1, 11):
        params["w"] += 0.1
        out = ema.ema_update(shadow, params, step, decay=0.9)
        # the same arrays, written in place (the dict returned is a new one: README wording)
        assert out["w"] is w_array and out["b"] is shadow["b"]
        ref = 0.9 * ref + 0.1 * params["w"]  # no hidden warm-up: exactly decay 0.9
    np.testing.assert_allclose(shadow["w"], ref, rtol=1e-13)
    assert np.all(shadow["w"] < params["w"]) and np.allclose(params["w"], 2.0)


def test_torch_ema_update_builds_no_graph_beside_params_that_require_grad() -> None:
    # "torch: the same call on tensors (no autograd graph is built; shadows never require grad)"
    torch = pytest.importorskip("torch")
    params = {"w": torch.ones(3, requires_grad=True)}
    shadow = {"w": torch.zeros(3)}
    out = ema.ema_update(shadow, params, 1, decay=0.75)
    assert not out["w"].requires_grad and out["w"].grad_fn is None
    torch.testing.assert_close(out["w"], torch.full((3,), 0.25))


def test_torch_quickstart_step_keys_no_grad_and_bias_correction() -> None:
    # "no autograd graph is built; shadows never require grad"; "name -> tensor,
    # bias-corrected"; `int(state.step)` counts the 20 updates
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = ema.Config(schedule=S.warmup(0.999), init="zeros")
    state = ema.init(dict(model.named_parameters()), config)
    ref = {k: np.zeros(tuple(v.shape)) for k, v in model.named_parameters()}
    keep = 1.0
    for t in range(1, 21):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = ema.update(state, dict(model.named_parameters()), config)
        d = _warmup(t, 0.999)
        keep *= d
        for k, v in model.named_parameters():
            ref[k] = d * ref[k] + (1 - d) * v.detach().double().numpy()
    averaged = ema.average(state, config)
    assert int(state.step) == 20
    assert sorted(averaged) == ["bias", "weight"]
    for k, leaf in [*state.shadow.items(), *averaged.items()]:
        assert not leaf.requires_grad and leaf.grad_fn is None, k
    for k, want in ref.items():
        got = averaged[k].double().numpy()
        np.testing.assert_allclose(got, want / (1 - keep), rtol=1e-5, atol=1e-6)


def test_jax_quickstart_compiles_once_and_matches_the_loop() -> None:
    # "the step is traced and never triggers a recompile"; the average is the EMA under
    # power_function(sigma_rel=0.05) with a first-update copy
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    config = ema.Config(schedule=S.power_function(sigma_rel=0.05), init="copy")
    traces = []

    @jax.jit
    def train_step(params: Any, state: Any) -> Any:
        traces.append(1)
        grads = jax.grad(lambda p: jnp.sum((p["w"] - 3.0) ** 2))(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        return params, ema.update(state, params, config)

    params = {"w": jnp.zeros(4)}
    state = ema.init(params, config)
    ref, w = np.zeros(4), np.zeros(4)
    schedule = config.schedule
    for t in range(1, 51):
        params, state = train_step(params, state)
        w = w - 0.1 * 2 * (w - 3.0)
        d = 0.0 if t == 1 else float(schedule(t))
        ref = d * ref + (1 - d) * w
    assert len(traces) == 1
    assert int(state.step) == 50
    got = np.asarray(ema.average(state, config)["w"], np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


# ---------------------------------------------------------------- "## Test your own EMA"

WARMUP_COPY = ema.Config(schedule=S.warmup(0.999), init="copy")


def test_the_readme_kit_example_passes_and_prints_its_message() -> None:
    # "prints `the EMA differs from ema-core first at step t=2, leaf params['w'], element 0:
    # ..., ema-core applies decay 0.5192501432308638 at this step under Config(...)`"
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nests = [{"w": torch.randn(3)} for _ in range(6)]
    trajectory = testing.Trajectory(nests[0], nests[1:])

    def my_ema(offset: int) -> Callable[[Any], Any]:
        def make(init: Any) -> Callable[[Any, int], Any]:
            shadow = {"w": init["w"].clone()}

            def step(params: Any, t: int) -> Any:
                decay = 0.0 if t == 1 else min(0.999, 1 - (1 + t + offset) ** (-2 / 3))
                shadow["w"].lerp_(params["w"], 1 - decay)
                return shadow

            return step

        return make

    testing.assert_matches(my_ema(offset=0), WARMUP_COPY, trajectory)
    with pytest.raises(AssertionError) as err:
        testing.assert_matches(my_ema(offset=-1), WARMUP_COPY, trajectory)
    text = str(err.value)
    assert text.startswith(
        "the EMA differs from ema-core first at step t=2, leaf params['w'], element 0: "
    )
    assert math.isclose(1 - 3 ** (-2 / 3), 0.5192501432308638, rel_tol=1e-15)
    assert "ema-core applies decay 0.5192501432308638 at this step under Config(" in text


def _counting() -> tuple[list[int], Callable[[Any], Any]]:
    calls: list[int] = []

    def make(init: Any) -> Callable[[Any, int], Any]:
        calls.append(1)
        return lambda params, t: params

    return calls, make


_W = {"w": np.zeros(2)}
REFUSED: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "rtol negative": ({"rtol": -1e-3}, ValueError),
    "atol nan": ({"atol": math.nan}, ValueError),
    "rtol a str": ({"rtol": "0.1"}, TypeError),
    "config a float": ({"config": 0.9}, TypeError),
    "returned_dtype unknown": ({"returned_dtype": "width"}, ValueError),
    "empty trajectory": ({"trajectory": testing.Trajectory(_W, [])}, ValueError),
    "a step with another key": (
        {"trajectory": testing.Trajectory(_W, [{"v": np.ones(2)}])},
        ValueError,
    ),
    "a step of another shape": (
        {"trajectory": testing.Trajectory(_W, [{"w": np.ones(3)}])},
        ValueError,
    ),
    "a step of another kind": (
        {"trajectory": testing.Trajectory(_W, [{"w": np.ones(2, np.int32)}])},
        ValueError,
    ),
    "non_float error with an int leaf": (
        {
            "config": ema.Config(non_float="error"),
            "trajectory": testing.Trajectory({"n": np.arange(2)}, [{"n": np.arange(2)}]),
        },
        TypeError,
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refusals_come_before_the_ema_is_built(name: str) -> None:
    # "Refused by name (`TypeError`/`ValueError` before anything runs)"
    over, error = REFUSED[name]
    calls, make = _counting()
    args = {"config": ema.Config(0.9), "trajectory": testing.Trajectory(_W, [{"w": np.ones(2)}])}
    args.update(over)
    config, trajectory = args.pop("config"), args.pop("trajectory")
    with pytest.raises(error):
        testing.assert_matches(make, config, trajectory, **args)
    assert calls == []


def test_empty_trajectory_says_it_would_check_nothing() -> None:
    # 'an empty trajectory ("would check nothing")'
    with pytest.raises(ValueError, match="would check nothing"):
        testing.assert_matches(_counting()[1], ema.Config(0.9), testing.Trajectory(_W, ()))


def test_the_oracle_skipped_step_keeps_the_shadow_beside_infinite_params() -> None:
    # "decays of exactly 0 and 1 are exact (a skipped step keeps the shadow even beside infinite
    # params)"
    config = ema.Config(schedule=0.5, interval=2)  # t = 1 is skipped: decay 1
    init = {"w": np.array([1.0, -2.0, 3.0])}
    steps = [{"w": np.array([np.inf, -np.inf, np.nan])}, {"w": np.array([5.0, 6.0, 7.0])}]
    first, second = testing.reference(config, testing.Trajectory(init, steps))
    assert first.decay == 1.0
    assert np.array_equal(first.average[0], init["w"])
    assert second.decay == 0.25  # compensated: the product of the two decays
    np.testing.assert_allclose(second.average[0], 0.25 * init["w"] + 0.75 * steps[1]["w"])
    # decay 0 copies exactly, whatever the shadow held (infinite, NaN)
    copy = ema.Config(schedule=0.0)
    got = testing.reference(copy, testing.Trajectory(steps[0], [{"w": np.array([0.1, 0.2, 0.3])}]))
    assert np.array_equal(got[0].average[0], np.array([0.1, 0.2, 0.3]))


def test_the_oracle_rounds_a_same_dtype_half_shadow_after_each_update_and_stalls() -> None:
    # "under `dtype="same"` with float16/bfloat16 params it rounds to the half shadow dtype after
    # each update, as a half shadow does (so its stalls are reproduced)"
    config = ema.Config(schedule=0.999, dtype="same")
    init = {"w": np.array([1.0, 100.0, 0.3], np.float16)}
    steps = [{"w": np.array([1.2, 100.5, 0.31], np.float16)} for _ in range(20)]
    out = testing.reference(config, testing.Trajectory(init, steps))
    s = init["w"].astype(np.float64)
    for e, p in zip(out, steps, strict=True):
        s = (0.999 * s + 0.001 * p["w"].astype(np.float64)).astype(np.float16).astype(np.float64)
        assert np.array_equal(e.average[0], s)
    assert np.array_equal(out[-1].average[0], init["w"].astype(np.float64))  # stalled
    # ema-core's own float16 shadow stalls where the oracle does
    state = ema.init(init, config)
    for p in steps:
        state = ema.update(state, p, config)
    assert state.shadow["w"].dtype == np.float16
    assert np.array_equal(state.shadow["w"], init["w"])


def test_the_oracle_keeps_the_imaginary_part_of_complex_leaves() -> None:
    # "complex leaves keep their imaginary part"
    config = ema.Config(schedule=S.num_updates(0.9))
    init = {"z": np.array([1 + 2j, -3j])}
    steps = [{"z": np.array([k - 1j * k, 2 + 0.5j * k])} for k in range(1, 5)]
    s = init["z"].copy()
    for e, p in zip(testing.reference(config, testing.Trajectory(init, steps)), steps, strict=True):
        d = float(config.schedule(e.t))
        s = s + (1 - d) * (p["z"] - s)
        assert e.average[0].dtype == np.complex128
        np.testing.assert_allclose(e.average[0], s, rtol=1e-14)
        assert np.any(e.average[0].imag != 0)


def test_the_oracle_is_float64_and_pairs_steps_by_key() -> None:
    # "`reference(config, trajectory)` is the float64 oracle"; "steps are paired with `init` by
    # dict key"
    init = {"a": np.zeros(2, np.float32), "b": np.full(2, 10.0, np.float32)}
    steps = [{"b": np.full(2, 20.0, np.float32), "a": np.ones(2, np.float32)}]
    (e,) = testing.reference(ema.Config(0.75), testing.Trajectory(init, steps))
    assert all(a.dtype == np.float64 for a in e.average)
    np.testing.assert_array_equal(e.average[0], np.full(2, 0.25))
    np.testing.assert_array_equal(e.average[1], np.full(2, 12.5))


def test_an_int_buffer_beside_a_small_leaf_does_not_loosen_its_check() -> None:
    # "a large leaf or an integer buffer does not loosen the check of a small one"
    config = ema.Config(0.9)
    nests = [{"n": np.array([10**9 * k]), "w": np.full(2, 1e-3 * (k + 1))} for k in range(4)]

    def make(init: Any) -> Callable[[Any, int], Any]:
        box = {"w": init["w"].astype(np.float64)}

        def step(params: Any, t: int) -> Any:
            box["w"] = 0.9 * box["w"] + 0.1 * params["w"]
            return {"n": params["n"].copy(), "w": box["w"] * 1.01}

        return step

    with pytest.raises(AssertionError, match=r"leaf params\['w'\], element 0"):
        testing.assert_matches(make, config, testing.Trajectory(nests[0], nests[1:]))


def _nudged(ulps: int) -> Callable[[Any, Any, float], Any]:
    """ema-core's update, moved ``ulps`` float32 units up at every decay strictly in (0, 1)."""

    def step(s: Any, p: Any, d: float) -> Any:
        out = ema.ema_update(s.copy(), p, 1, decay=d)
        if 0.0 < d < 1.0:
            for _ in range(ulps):
                out = np.nextafter(out, np.float32(np.inf)).astype(np.float32)
        return out

    return step


def test_the_property_checks_allow_4_units_of_rounding_per_update() -> None:
    # "The property checks allow 4 units of rounding of `dtype` (times the larger of |s| and
    # |p|) per update for the one-update, fixed-point and min/max checks"; "decay 0 and 1 stay
    # exact"
    testing.assert_ema_properties(_nudged(3), np, max_examples=15)
    with pytest.raises(AssertionError, match=r"one update|fixed point|running"):
        testing.assert_ema_properties(_nudged(12), np, max_examples=15)

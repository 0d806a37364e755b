"""Schedules users write themselves, through every entry point.

A plain ``t -> decay`` callable, a ``Schedule`` subclass and a ``Config`` subclass, used by
``ema_update``, ``init``/``update``/``average`` (numpy, torch, JAX eager), ``make_update``, the
JAX bank, the torch ``EMA`` and checkpoints. Pinned here: the callable runs once per update
(never on reads), host returns of any framework are read as floats, bad returns are refused at
their step before anything is written, a traced Python branch fails with the step's note and
donates nothing, and a checkpoint names the callable by its qualified name.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import checkpoint, schedules
from ema_core._config_text import config_text
from ema_core._ops import Ops
from ema_core.schedules import Schedule

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy

from ema_core.jax import make_bank_update, make_update  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


class Recorder:
    """A ``t -> decay`` callable that records each step it is called with."""

    def __init__(self, decay: float = 0.5) -> None:
        self.decay = decay
        self.steps: list[Any] = []

    def __call__(self, t: Any) -> float:
        self.steps.append(t)
        return self.decay


class Half(Schedule):
    """A user's own schedule: the decay 0.5 at every step, in the step's arithmetic."""

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(0.5), ops.const(0.5)


class TooBig(Schedule):
    """A user's own schedule whose decay is outside [0, 1]."""

    def pair(self, ops: Ops, /) -> tuple[Any, Any]:
        return ops.const(1.5), ops.const(-0.5)


@dataclasses.dataclass(frozen=True)
class TaggedConfig(ema.Config):
    """A user's ``Config`` subclass with one field of its own."""

    tag: str = "run"


def _model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def _averages(averaged: Any) -> list[Any]:
    return [t.clone() for t in averaged.average.values()]


def _one_weight(**options: Any) -> tuple[Any, Any]:
    """A float64 one-weight model at 0, its EMA (shadow 0), then the weight set to 1."""
    model = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
        averaged = EMA(model, **options)
        model.weight.fill_(1.0)
    return model, averaged


def _same(a: list[Any], b: list[Any]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- how many times the callable runs -------------------------------------------------------


def _ema_update_np_int(fn: Recorder) -> None:
    ema.ema_update({"w": np.zeros(2)}, {"w": np.ones(2)}, 3, schedule=fn)


def _ema_update_np_int64(fn: Recorder) -> None:
    ema.ema_update({"w": np.zeros(2)}, {"w": np.ones(2)}, np.int64(3), schedule=fn)


def _ema_update_torch_step(fn: Recorder) -> None:
    ema.ema_update({"w": torch.zeros(2)}, {"w": torch.ones(2)}, torch.tensor(3), schedule=fn)


def _update(make: Callable[[Any], Any]) -> Callable[[Recorder], None]:
    def run(fn: Recorder) -> None:
        config = ema.Config(schedule=fn)
        ema.update(ema.init({"w": make(np.zeros(2))}, config), {"w": make(np.ones(2))}, config)

    return run


def _torch_ema(step: Any) -> Callable[[Recorder], None]:
    def run(fn: Recorder) -> None:
        EMA(_model(), schedule=fn).update(step)

    return run


ONCE = {
    "ema_update numpy int": _ema_update_np_int,
    "ema_update numpy int64": _ema_update_np_int64,
    "ema_update torch step": _ema_update_torch_step,
    "update numpy": _update(np.asarray),
    "update torch": _update(torch.as_tensor),
    "update jax eager": _update(jnp.asarray),
    "EMA.update()": _torch_ema(None),
    "EMA.update(5)": _torch_ema(5),
    "EMA.update(tensor)": _torch_ema(torch.tensor(5)),
}


@pytest.mark.parametrize("entry", list(ONCE), ids=list(ONCE))
def test_a_callable_runs_exactly_once_per_eager_update(entry: str) -> None:
    """Each eager entry point calls the user's schedule once per update (no probe call, no
    second call for the rate or the weight)."""
    fn = Recorder()
    ONCE[entry](fn)
    assert len(fn.steps) == 1


def test_reads_never_call_the_schedule() -> None:
    """``average`` (also of a zeros state), ``state_dict`` and ``swap`` read stored values:
    the schedule is not called by them."""
    fn = Recorder()
    config = ema.Config(schedule=fn, init="zeros")
    state = ema.update(ema.init({"w": np.zeros(2)}, config), {"w": np.ones(2)}, config)
    averaged = EMA(_model(), schedule=fn)
    averaged.update()
    fn.steps.clear()
    ema.average(state, config)
    averaged.state_dict()
    with averaged.swap():
        pass
    assert fn.steps == []


def test_make_update_and_the_bank_trace_the_callable_once_for_many_calls() -> None:
    """Compiled, the callable is traced once (with a tracer), not run per update."""
    fn = Recorder()
    config = ema.Config(schedule=fn)
    update = make_update(config)
    state = ema.init({"w": jnp.zeros(2)}, config)
    for _ in range(3):
        state = update(state, {"w": jnp.ones(2)})
    assert len(fn.steps) == 1 and isinstance(fn.steps[0], jax.core.Tracer)
    bank_fn = Recorder()
    bank = make_bank_update([ema.Config(schedule=bank_fn), ema.Config(0.9)])
    states = bank.init({"w": jnp.zeros(2)})
    for _ in range(3):
        states = bank(states, {"w": jnp.ones(2)})
    assert len(bank_fn.steps) == 1
    assert int(states[0].step) == 3


def test_gates_and_intervals_call_the_callable_only_where_they_need_it() -> None:
    """On a host int step ``gated`` calls it only on its gated steps; ``Config(interval=3)``
    evaluates the three decays of the product on the gated step only; ``init="copy"`` does
    not call it at the copying step."""
    fn = Recorder()
    gate = schedules.gated(fn, every=3)
    assert [gate(t) for t in range(1, 7)] == [1.0, 1.0, 0.5, 1.0, 1.0, 0.5]
    assert fn.steps == [3, 6]
    fn = Recorder()
    interval = ema.Config(schedule=fn, interval=3)
    assert [interval.decay(t) for t in range(1, 4)] == [1.0, 1.0, 0.125]
    assert sorted(fn.steps) == [1, 2, 3]
    fn = Recorder()
    copy = ema.Config(schedule=fn, init="copy")
    assert [copy.decay(t) for t in range(1, 4)] == [0.0, 0.5, 0.5]
    assert fn.steps == [2, 3]


# --- what it returns ------------------------------------------------------------------------

HOST_RETURNS = {
    "np.float16": lambda: np.float16(0.5),
    "np.longdouble": lambda: np.longdouble(0.25),
    "numpy 0-d float32": lambda: np.asarray(0.75, dtype=np.float32),
    "torch 0-d": lambda: torch.tensor(0.25),
    "torch 0-d bfloat16": lambda: torch.tensor(0.5, dtype=torch.bfloat16),
    "jax 0-d": lambda: jnp.asarray(0.25),
    "jax 0-d bfloat16": lambda: jnp.asarray(0.5, dtype=jnp.bfloat16),
    "int 1": lambda: 1,
    "int 0": lambda: 0,
    "-0.0": lambda: -0.0,
}


@pytest.mark.parametrize("name", list(HOST_RETURNS), ids=list(HOST_RETURNS))
def test_any_frameworks_0d_float_for_an_int_step_is_read_as_its_float(name: str) -> None:
    """For a Python-int step the decay is read on the host: the float64 shadow is
    ``1 - float(value)`` bit for bit, whatever framework the 0-d value comes from."""
    value = HOST_RETURNS[name]()
    want = 1.0 - float(value)
    shadow = {"w": np.zeros(2)}
    ema.ema_update(shadow, {"w": np.ones(2)}, 3, schedule=lambda t: value)
    assert shadow["w"].tolist() == [want, want]
    _, averaged = _one_weight(schedule=lambda t: value)
    averaged.update()
    assert averaged.average["weight"].item() == want


ONE_ELEMENT = {
    "numpy (1,)": lambda: np.ones(1) / 2,
    "torch (1,)": lambda: torch.tensor([0.5]),
    "jax (1,)": lambda: jnp.asarray([0.5]),
    "numpy (1, 1)": lambda: np.full((1, 1), 0.5),
}


@pytest.mark.parametrize("name", list(ONE_ELEMENT), ids=list(ONE_ELEMENT))
def test_a_one_element_array_is_refused_not_squeezed(name: str) -> None:
    """``float()`` would take a 1-element array; the check does not: a ``TypeError`` naming
    ``schedule(t)``, the callable, the shape and the step, with nothing written."""
    value = ONE_ELEMENT[name]()

    def decay_of(t: Any) -> Any:
        return value

    pattern = r"schedule\(t\) \(.*decay_of\) returned .* of shape \(1,( 1)?\) .*at t=3"
    shadow = {"w": np.zeros(2)}
    with pytest.raises(TypeError, match=pattern):
        ema.ema_update(shadow, {"w": np.ones(2)}, 3, schedule=decay_of)
    assert shadow["w"].tolist() == [0.0, 0.0]
    averaged = EMA(_model(), schedule=decay_of)
    before = _averages(averaged)
    with pytest.raises(TypeError, match=r"of shape \(1"):
        averaged.update()
    assert averaged.step == 0 and _same(before, _averages(averaged))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), -1e-300, 1.0 + 2**-52])
def test_a_decay_just_outside_or_infinite_is_a_value_error_at_its_step(bad: float) -> None:
    """Infinite and barely-out-of-range host decays are refused at their step, nothing
    written."""
    shadow = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match=r"schedule\(t\): the decay at step 3 must be in"):
        ema.ema_update(shadow, {"w": np.ones(2)}, 3, schedule=lambda t: bad)
    assert shadow["w"].tolist() == [0.0, 0.0]


def test_a_torch_value_for_a_jax_eager_update_is_refused_and_the_state_lives() -> None:
    """An eager JAX update hands the callable a JAX step; a torch tensor back is another
    namespace: a ``TypeError`` naming both, the state neither changed nor donated."""
    config = ema.Config(schedule=lambda t: torch.tensor(0.5, dtype=torch.float64))
    state = ema.init({"w": jnp.zeros(2)}, config)
    with pytest.raises(TypeError, match=r"returned a torch array for a jax.numpy step at t=1"):
        ema.update(state, {"w": jnp.ones(2)}, config)
    assert np.asarray(state.shadow["w"]).tolist() == [0.0, 0.0] and int(state.step) == 0


@pytest.mark.parametrize("step", [None, torch.tensor(1)], ids=["int counter", "tensor step"])
def test_a_parameter_decay_is_read_without_a_torch_warning(step: Any) -> None:
    """A learnable decay (an ``nn.Parameter``) returned to the ``EMA`` class is read without
    torch warning about ema-core's own read. torch warns once per process:
    ``set_warn_always`` makes the test independent of the tests run before it."""
    decay = torch.nn.Parameter(torch.tensor(0.5))
    averaged = EMA(_model(), schedule=lambda t: decay)
    was = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            averaged.update(step)
    finally:
        torch.set_warn_always(was)
    assert averaged.step == 1


# --- raising, NaN at one step, mutable state ------------------------------------------------


def test_the_torch_ema_survives_a_nan_and_an_exception_at_one_step() -> None:
    """A NaN at step 2 is a ``ValueError`` at step 2, an exception at step 3 keeps its type
    with a note naming t=3; neither counts the step nor touches the averages, and once the
    schedule behaves the EMA goes on from that step."""
    trouble = {2: "nan", 3: "raise"}

    def flaky(t: int) -> float:
        kind = trouble.pop(t, None)
        if kind == "raise":
            raise RuntimeError("lookup failed")
        return float("nan") if kind == "nan" else 0.5

    model = _model()
    averaged = EMA(model, schedule=flaky)
    averaged.update()
    before = _averages(averaged)
    with pytest.raises(ValueError, match=r"the decay at step 2 must be in"):
        averaged.update()
    assert averaged.step == 1 and _same(before, _averages(averaged))
    averaged.update()
    assert averaged.step == 2
    before = _averages(averaged)
    with pytest.raises(RuntimeError, match="lookup failed") as caught:
        averaged.update()
    if sys.version_info >= (3, 11):  # 3.10 has no notes
        assert caught.value.__notes__ == [f"raised by schedule(t) ({flaky.__qualname__}) at t=3"]
    assert averaged.step == 2 and _same(before, _averages(averaged))
    averaged.update()
    assert averaged.step == 3


def test_a_closure_over_a_changing_setting_is_read_at_each_update() -> None:
    """A lambda over a mutable setting: numpy ``update`` and the torch ``EMA`` apply the
    value it holds at each call (the callable is not cached)."""
    setting = [0.5]
    config = ema.Config(schedule=lambda t: setting[0])
    state = ema.init({"w": np.zeros(1)}, config)
    model, averaged = _one_weight(config=config)
    state = ema.update(state, {"w": np.ones(1)}, config)
    averaged.update()
    setting[0] = 0.0
    state = ema.update(state, {"w": np.full(1, 4.0)}, config)
    with torch.no_grad():
        model.weight.fill_(4.0)
    averaged.update()
    assert state.shadow["w"].tolist() == [4.0]
    assert averaged.average["weight"].item() == 4.0


WRAPS: dict[str, Callable[[Any], Any]] = {
    "plain": lambda fn: ema.Config(schedule=fn),
    "gated": lambda fn: ema.Config(schedule=schedules.gated(fn, every=1)),
    "in_float32": lambda fn: ema.Config(schedule=schedules.in_float32(fn)),
    "every 2": lambda fn: ema.Config(schedule=schedules.every(fn, 2)),
    "interval 2": lambda fn: ema.Config(schedule=fn, interval=2),
}


@pytest.mark.parametrize("wrap", list(WRAPS), ids=list(WRAPS))
def test_eager_jax_keeps_a_wrapped_callable_in_python(wrap: str) -> None:
    """Inside ``gated``, ``in_float32``, ``every`` or an interval, a callable still runs in
    Python at each eager JAX update (not compiled once): a setting changed to 0 after step 2
    makes step 4 a copy, and the callable ran once per step it decays."""
    fn = Recorder()
    config = WRAPS[wrap](fn)
    state = ema.init({"w": jnp.zeros(1)}, config)
    for t in range(1, 5):
        state = ema.update(state, {"w": jnp.full(1, float(t))}, config)
        if t == 2:
            fn.decay = 0.0
    assert np.asarray(state.shadow["w"]).tolist() == [4.0]
    assert len(fn.steps) == 4


def test_the_banks_refuse_a_bad_decay_before_writing_any_ema() -> None:
    """A NaN from one EMA's callable at step 3 of a torch ``EMABank`` leaves every EMA of the
    bank (also the well-behaved one) at step 2 with its averages; a JAX bank refuses an
    out-of-range constant before donating any state."""
    from ema_core.torch import EMABank

    calls = Recorder()

    def nan_at_three(t: int) -> float:
        calls(t)
        return float("nan") if t == 3 else 0.5

    model = _model()
    bank = EMABank(model, [ema.Config(schedule=nan_at_three), ema.Config(0.9)])
    bank.update()
    bank.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    before = [_averages(one) for one in bank.emas]
    with pytest.raises(ValueError, match=r"schedule\(t\): the decay at step 3 must be in"):
        bank.update()
    assert [one.step for one in bank.emas] == [2, 2]
    assert all(_same(b, _averages(one)) for b, one in zip(before, bank.emas, strict=True))
    assert calls.steps == [1, 2, 3]
    jax_bank = make_bank_update([ema.Config(schedule=lambda t: 1.5), ema.Config(0.9)])
    states = jax_bank.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"schedule\(t\): the decay must be in"):
        jax_bank(states, {"w": jnp.ones(2)})
    assert [np.asarray(one.shadow["w"]).tolist() for one in states] == [[0.0, 0.0]] * 2


# --- a Python branch on a traced step ------------------------------------------------------


def test_a_python_branch_on_the_traced_step_fails_with_a_note_and_donates_nothing() -> None:
    """``lambda t: 0.0 if t < 3 else 0.9`` is fine eagerly; under ``make_update`` and the bank
    JAX's own error comes out with a note naming the schedule, the state not donated."""
    config = ema.Config(schedule=lambda t: 0.0 if t < 3 else 0.9)
    state = ema.init({"w": jnp.zeros(2)}, config)
    with pytest.raises(jax.errors.TracerBoolConversionError) as caught:
        make_update(config)(state, {"w": jnp.ones(2)})
    notes = getattr(caught.value, "__notes__", [])
    pattern = r"raised by schedule\(t\) \(.*<lambda>\) at a traced or device step"
    assert any(re.fullmatch(pattern, note) for note in notes)
    bank = make_bank_update([config])
    states = bank.init({"w": jnp.zeros(2)})
    with pytest.raises(jax.errors.TracerBoolConversionError):
        bank(states, {"w": jnp.ones(2)})
    assert np.asarray(states[0].shadow["w"]).tolist() == [0.0, 0.0]
    eager = ema.update(state, {"w": jnp.ones(2)}, config)  # the state still lives
    assert np.asarray(eager.shadow["w"]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("value", [1.5, np.float64(-0.5)])
def test_make_update_refuses_a_constant_out_of_range_before_donating(value: Any) -> None:
    """A callable that returns a host constant under ``make_update`` is range-checked while
    tracing (no step to name): ``ValueError``, the state still readable."""
    config = ema.Config(schedule=lambda t: value)
    state = ema.init({"w": jnp.zeros(2)}, config)
    with pytest.raises(ValueError, match=r"schedule\(t\): the decay must be in \[0.0, 1.0\]"):
        make_update(config)(state, {"w": jnp.ones(2)})
    assert np.asarray(state.shadow["w"]).tolist() == [0.0, 0.0]


# --- Schedule and Config subclasses ---------------------------------------------------------


def test_a_schedule_subclass_works_on_every_route() -> None:
    """``pair`` alone makes a schedule: int and tensor steps, numpy/torch/JAX eager,
    ``make_update``, ``every`` and ``Config(interval=...)`` all apply 0.5."""
    for step in (3, np.int64(3), torch.tensor(3)):
        shadow = {"w": np.zeros(2)}
        ema.ema_update(shadow, {"w": np.ones(2)}, step, schedule=Half())
        assert shadow["w"].tolist() == [0.5, 0.5]
    config = ema.Config(schedule=Half())
    eager = ema.update(ema.init({"w": jnp.zeros(2)}, config), {"w": jnp.ones(2)}, config)
    compiled = make_update(config)(ema.init({"w": jnp.zeros(2)}, config), {"w": jnp.ones(2)})
    assert np.asarray(eager.shadow["w"]).tolist() == [0.5, 0.5]
    assert np.asarray(compiled.shadow["w"]).tolist() == [0.5, 0.5]
    assert schedules.every(Half(), 3)(6) == 0.125
    assert ema.Config(schedule=Half(), interval=2).decay(2) == 0.25


def test_a_schedule_subclass_out_of_range_is_refused_at_its_step() -> None:
    """A subclass is not a callable but its decay is still checked where it is used:
    ``ValueError`` at the step, nothing written, the ``EMA``'s step uncounted."""
    shadow = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match=r"decay at step 3 must be in \[0.0, 1.0\], got 1.5"):
        ema.ema_update(shadow, {"w": np.ones(2)}, 3, schedule=TooBig())
    assert shadow["w"].tolist() == [0.0, 0.0]
    averaged = EMA(_model(), schedule=TooBig())
    before = _averages(averaged)
    with pytest.raises(ValueError, match="decay at step 1 must be in"):
        averaged.update()
    assert averaged.step == 0 and _same(before, _averages(averaged))


def test_a_config_subclass_runs_everywhere_and_keeps_its_field_in_the_text() -> None:
    """A frozen dataclass subclass of ``Config`` with a field of its own is taken by
    ``update``, ``make_update`` and the ``EMA`` class; its text names the lambda and the
    field."""
    config = TaggedConfig(schedule=lambda t: 0.5, tag="a")
    numpy_state = ema.update(ema.init({"w": np.zeros(2)}, config), {"w": np.ones(2)}, config)
    jax_state = make_update(config)(ema.init({"w": jnp.zeros(2)}, config), {"w": jnp.ones(2)})
    averaged = EMA(_model(), config=config)
    averaged.update()
    assert numpy_state.shadow["w"].tolist() == [0.5, 0.5]
    assert np.asarray(jax_state.shadow["w"]).tolist() == [0.5, 0.5]
    assert averaged.step == 1
    text = config_text(config)
    assert text.startswith("TaggedConfig(schedule=FromCallable(fn=<function ")
    assert "<lambda>" in text and text.endswith("tag='a')")


# --- wrappers -------------------------------------------------------------------------------


def test_in_float32_and_gated_over_a_callable() -> None:
    """``in_float32`` rounds the callable's decay on int and tensor steps; a bad value inside
    it is still named at its step; ``gated``'s floor lifts a low decay."""
    rounded = schedules.in_float32(lambda t: 0.1)
    assert rounded(3) == float(np.float32(0.1))
    assert rounded(torch.tensor(3)).item() == float(np.float32(0.1))
    with pytest.raises(ValueError, match="at step 3 must be in"):
        schedules.in_float32(lambda t: 1.5)(3)
    floored = schedules.gated(lambda t: 0.25, every=2, floor=0.5)
    assert [floored(t) for t in range(1, 5)] == [1.0, 0.5, 1.0, 0.5]


def test_momentum_and_ramped_half_life_beside_a_callable_of_the_same_decay() -> None:
    """The built-in ``momentum`` and ``ramped_half_life`` and a callable giving the same
    formula in float64 produce the same float64 shadows over a few steps."""
    pairs = [
        (schedules.momentum(0.25), lambda t: 0.75),
        (schedules.ramped_half_life(ratio=0.5), lambda t: 0.5 ** (1 / max(0.5 * t, 1e-8))),
    ]
    for built_in, own in pairs:
        a, b = {"w": np.zeros(3)}, {"w": np.zeros(3)}
        for t in range(1, 6):
            params = {"w": np.arange(3.0) * t}
            ema.ema_update(a, params, t, schedule=built_in)
            ema.ema_update(b, params, t, schedule=own)
        np.testing.assert_allclose(a["w"], b["w"], rtol=1e-15, atol=0)


# --- checkpoints ----------------------------------------------------------------------------


def _factory() -> Callable[[int], float]:
    return lambda t: 0.5


def _other(t: int) -> float:
    return 0.5


def test_a_checkpoint_names_the_callable_and_loads_only_into_the_same_source(
    tmp_path: Path,
) -> None:
    """Saved with a lambda, an ``EMA`` loads strictly into one built with a lambda of the
    same source (another object); another function is refused naming ``schedule.fn`` and
    both names, nothing loaded; ``strict=False`` keeps this EMA's config and loads."""
    model = _model()
    saved = EMA(model, schedule=_factory())
    saved.update()
    path = checkpoint.save(tmp_path / "ema.safetensors", saved)
    assert checkpoint.load(path, EMA(model, schedule=_factory())).step == 1
    other = EMA(model, schedule=_other)
    pattern = re.escape("schedule.fn: <function _other> in this EMA, <function _factory.")
    with pytest.raises(ValueError, match=pattern):
        checkpoint.load(path, other)
    assert other.step == 0
    assert checkpoint.load(path, other, strict=False).step == 1


def test_a_state_checkpoint_with_a_callable_config(tmp_path: Path) -> None:
    """An ``EMAState`` saved with a callable's config loads with a config of the same source
    and is refused with another callable's, naming both."""
    config = ema.Config(schedule=_factory())
    state = ema.update(ema.init({"w": np.zeros(2)}, config), {"w": np.ones(2)}, config)
    path = checkpoint.save(tmp_path / "state.safetensors", state, config)
    loaded = checkpoint.load(path, state, config=ema.Config(schedule=_factory()))
    assert loaded.shadow["w"].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"schedule\.fn: <function _other> in config"):
        checkpoint.load(path, state, config=ema.Config(schedule=_other))


@pytest.mark.parametrize(
    "fn",
    [Recorder(), functools.partial(lambda t, d: d, d=0.5), Recorder().__call__],
    ids=["callable object", "partial", "bound method"],
)
def test_the_config_text_of_any_callable_has_no_address(fn: Any) -> None:
    """Callable objects, partials and bound methods are written without ``0x...``
    addresses, so two runs of the same code write the same text."""
    text = config_text(ema.Config(schedule=fn))
    assert " at 0x" not in text
    assert text.startswith("Config(schedule=FromCallable(fn=")
    assert text == config_text(ema.Config(schedule=fn))

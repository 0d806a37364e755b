"""What a callable schedule returns is checked on every path, where it is produced.

Allowed: a real number (int or float, not bool or str) or a 0-d real floating array (numpy, or
of the step's namespace, traced too). A wrong type is a ``TypeError`` naming ``schedule(t)``,
the step and the type; a host value outside [0, 1] a ``ValueError``; nothing is written first.
Device and traced values are trusted; a schedule's own exception gets a note naming the step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy

WRONG = [
    ("0.5", "str"),
    (True, "bool"),
    (None, "NoneType"),
    (0.5 + 0j, "complex"),
    ([0.5], "list"),
    (np.ones(2), r"shape \(2,\)"),
    (np.asarray(1), "dtype int64"),
    (np.int64(1), "dtype int64"),
    (np.bool_(True), "dtype bool"),
    (np.asarray(0.5 + 0j), "dtype complex128"),
]
IDS = [repr(v)[:24] for v, _ in WRONG]


def _wrapped(kind: str, fn: Callable[[Any], Any]) -> Any:
    """``fn`` as given, or wrapped in ``every`` / ``gated`` (both call it at t=2)."""
    if kind == "every":
        return schedules.every(fn, 2)
    if kind == "gated":
        return schedules.gated(fn, every=2, floor=0.5)
    return fn


@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
@pytest.mark.parametrize(("value", "named"), WRONG, ids=IDS)
def test_ema_update_numpy_refuses_a_wrong_type_and_writes_nothing(
    kind: str, value: Any, named: str
) -> None:
    shadow = {"w": np.zeros(3)}
    with pytest.raises(TypeError, match=rf"schedule\(t\) \(.*<lambda>\) returned .*{named}.* t=2"):
        ema.ema_update(shadow, {"w": np.ones(3)}, 2, schedule=_wrapped(kind, lambda t: value))
    assert shadow["w"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
@pytest.mark.parametrize(("value", "named"), WRONG, ids=IDS)
def test_torch_step_refuses_a_wrong_type(kind: str, value: Any, named: str) -> None:
    shadow = {"w": torch.zeros(3)}
    step = torch.tensor(2)
    with pytest.raises(TypeError, match=rf"schedule\(t\).* returned .*{named}.* t=2"):
        ema.ema_update(shadow, {"w": torch.ones(3)}, step, schedule=_wrapped(kind, lambda t: value))
    assert shadow["w"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "value", [torch.tensor(1), torch.tensor(True), torch.ones(2, dtype=torch.float64)]
)
def test_torch_arrays_of_a_wrong_dtype_or_shape_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match=r"schedule\(t\).* returned Tensor of shape"):
        schedules.FromCallable(lambda t: value)(torch.tensor(3))
    with pytest.raises(TypeError, match=r"schedule\(t\).* returned Tensor of shape"):
        schedules.FromCallable(lambda t: value)(3)


@pytest.mark.parametrize(("value", "named"), WRONG[:4], ids=IDS[:4])
def test_functional_update_and_torch_ema_refuse_a_wrong_type(value: Any, named: str) -> None:
    config = ema.Config(schedule=lambda t: value)
    state = ema.init({"w": np.zeros(2)}, config)
    with pytest.raises(TypeError, match=rf"schedule\(t\).* returned {named}.* at t=1"):
        ema.update(state, {"w": np.ones(2)}, config)
    from ema_core.torch import EMA

    model = torch.nn.Linear(2, 1)
    averaged = EMA(model, schedule=lambda t: value)
    before = [s.clone() for s in averaged.average.values()]
    for step in (None, 1, torch.tensor(1)):
        with pytest.raises(TypeError, match=rf"schedule\(t\).* returned {named}.* at t=1"):
            averaged.update(step)
    assert averaged.step == 0
    assert all(torch.equal(a, b) for a, b in zip(averaged.average.values(), before, strict=True))


@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
def test_make_update_refuses_a_traced_wrong_dtype_before_donating(kind: str) -> None:
    from ema_core.jax import make_update

    config = ema.Config(schedule=_wrapped(kind, lambda t: t > 0))  # a traced bool
    state = ema.init({"w": jnp.zeros(2)}, config)
    with pytest.raises(TypeError, match=r"schedule\(t\).* returned .*dtype bool at a traced"):
        make_update(config)(state, {"w": jnp.ones(2)})
    assert np.asarray(state.shadow["w"]).tolist() == [0.0, 0.0]  # not donated


@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
def test_make_update_trusts_a_traced_decay(kind: str) -> None:
    from ema_core.jax import make_update

    traced = ema.Config(schedule=_wrapped(kind, lambda t: 0.5 + 0.0 * t))  # a traced float
    host = ema.Config(schedule=_wrapped(kind, lambda t: 0.5))
    params = {"w": jnp.ones(2)}
    got = make_update(traced)(ema.init({"w": jnp.zeros(2)}, traced), params)
    want = make_update(host)(ema.init({"w": jnp.zeros(2)}, host), params)
    assert np.asarray(got.shadow["w"]).tolist() == np.asarray(want.shadow["w"]).tolist()


ALLOWED = [
    (lambda t: 1, 1.0),
    (lambda t: 0, 0.0),
    (lambda t: 0.25, 0.25),
    (lambda t: np.float32(0.25), 0.25),
    (lambda t: np.asarray(0.25), 0.25),
    (lambda t: torch.tensor(0.25, dtype=torch.float64), 0.25),
]


@pytest.mark.parametrize(("fn", "want"), ALLOWED)
def test_allowed_values_are_used_as_given(fn: Callable[[Any], Any], want: float) -> None:
    for step in (3, torch.tensor(3)):
        shadow = {"w": torch.zeros(1, dtype=torch.float64)}
        ema.ema_update(shadow, {"w": torch.ones(1, dtype=torch.float64)}, step, schedule=fn)
        assert shadow["w"].item() == 1.0 - want


@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan"), np.asarray(2.0)])
def test_a_host_value_out_of_range_is_a_value_error_at_its_step(kind: str, bad: Any) -> None:
    """Also where a wrapper would hide it: ``gated``'s floor lifts -0.25 to 0.5, ``every``'s
    product of 1.5 and the 0.5 of step 1 is 0.75."""
    fn = _wrapped(kind, lambda t: bad if t == 2 else 0.5)
    shadow = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match=r"schedule\(t\): the decay at step 2 must be in"):
        ema.ema_update(shadow, {"w": np.ones(2)}, 2, schedule=fn)
    assert shadow["w"].tolist() == [0.0, 0.0]


def test_every_names_the_inner_step_that_gave_the_bad_value() -> None:
    fn = schedules.every(lambda t: 1.5 if t == 5 else 0.5, 3)
    with pytest.raises(ValueError, match="at step 5 must be in"):
        fn(6)
    with pytest.raises(ValueError, match="at step 5 must be in"):
        fn(torch.tensor(6))


def test_a_huge_int_is_shown_by_its_size() -> None:
    with pytest.raises(ValueError, match=r"got an int of 1329 bits$"):
        schedules.FromCallable(lambda t: 10**400)(1)


def test_device_values_are_trusted_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors stand in for CUDA ones: out of range, but not read, so not refused."""
    monkeypatch.setattr(ema._ops, "HOST_PLATFORMS", frozenset())
    value = torch.tensor(1.5, dtype=torch.float64)
    assert schedules.FromCallable(lambda t: value)(torch.tensor(3)).item() == 1.5
    with pytest.raises(TypeError, match=r"dtype torch.int64 at a traced or device step"):
        schedules.FromCallable(lambda t: torch.tensor(1))(torch.tensor(3))


def _host_reads(schedule: Any, step: Any) -> list[str]:
    """The aten ops through which ``schedule.decay_and_rate(step)`` reads a tensor's value on
    the host (``_local_scalar_dense``: a sync on CUDA)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        schedule.decay_and_rate(step)
    assert seen, "the recorder saw nothing"
    return [op for op in seen if "_local_scalar_dense" in op or "item" in op]


def test_no_host_read_of_a_device_step_or_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CPU tensors standing in for CUDA ones, the check reads no value; on the host
    platform the same CPU decay is read (the recorder does see reads)."""
    value, step = torch.tensor(0.5, dtype=torch.float64), torch.tensor(3)
    assert _host_reads(schedules.FromCallable(lambda t: value), step)  # a CPU tensor: read
    monkeypatch.setattr(ema._ops, "HOST_PLATFORMS", frozenset())
    for fn in (lambda t: value, lambda t: 0.5, lambda t: 0.9 ** t.double()):
        for schedule in (schedules.FromCallable(fn), schedules.gated(fn, every=3)):
            assert _host_reads(schedule, step) == []


def test_another_namespace_than_the_step_is_refused() -> None:
    with pytest.raises(TypeError, match=r"returned a jax.numpy array for a torch step at t=3"):
        schedules.FromCallable(lambda t: jnp.asarray(0.5))(torch.tensor(3))


def test_a_traced_value_for_a_python_int_step_is_refused() -> None:
    def at_three(d: Any) -> Any:
        return schedules.FromCallable(lambda t: d)(3)

    with pytest.raises(TypeError, match=r"traced array for a Python-int step at t=3"):
        jax.jit(at_three)(jnp.asarray(0.5))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are new in 3.11")
@pytest.mark.parametrize("kind", ["plain", "every", "gated"])
def test_an_exception_keeps_its_type_and_names_the_step(kind: str) -> None:
    shadow = {"w": np.zeros(2)}

    def fn(t: Any) -> float:
        return 1.0 - 1.0 / (t - 2)

    with pytest.raises(ZeroDivisionError) as caught:
        ema.ema_update(shadow, {"w": np.ones(2)}, 2, schedule=_wrapped(kind, fn))
    assert caught.value.__notes__ == [f"raised by schedule(t) ({fn.__qualname__}) at t=2"]
    assert shadow["w"].tolist() == [0.0, 0.0]


def test_decay_given_a_callable_points_to_schedule() -> None:
    with pytest.raises(TypeError, match="pass a Schedule or a callable t -> decay as schedule="):
        ema.ema_update({"w": np.zeros(1)}, {"w": np.ones(1)}, 1, decay=lambda t: 0.5)
    from ema_core.torch import EMA

    with pytest.raises(TypeError, match="as schedule="):
        EMA(torch.nn.Linear(1, 1), decay=schedules.constant(0.5))


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda: schedules.num_updates(0.9, 10**400), "got an int of 1329 bits"),
        (lambda: schedules.num_updates(0.9, -(10**400)), "got a negative int of 1329 bits"),
        (lambda: schedules.every(0.9, 10**400), "got an int of 1329 bits"),
        (lambda: schedules.gated(0.9, phase=-(10**400)), "got a negative int of 1329 bits"),
        (lambda: schedules.gated(0.9, offset=10**400), "got an int of 1329 bits"),
        (lambda: schedules.every(0.9, -(10**400)), "got a negative int of 1329 bits"),
        (lambda: schedules.warmup(0.99, inv_gamma=-(10**400)), "got a negative int of 1329 bits"),
    ],
)
def test_huge_int_arguments_are_shown_by_their_size(make: Callable[[], Any], shown: str) -> None:
    with pytest.raises(ValueError, match=f"{shown}$"):
        make()

"""What a hunt for broken promises in the core found (2026-12-04), each fixed:

* the masked-array check read ``numpy.ma.MaskedArray`` from a module another thread was still
  importing (the first calls of a process from several threads: an ``AttributeError``);
* an empty array of shape (3, 0) (numpy gives it zero strides) was taken for a broadcast view:
  ``copy=None`` returned a new array, ``copy=False`` refused it;
* ``checkpoint.save`` wrote a float step truncated (2.7 as 2), and refused NaN or a bool weight
  with errors that did not name the argument or were not ``TypeError``;
* ``power_function(sigma_rel=0.29)`` blamed a ``gamma`` the caller never gave;
* ``Config(dtype=3)``, a value of none of the allowed types, was a ``ValueError``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core import _leaf_checks, checkpoint, schedules


def test_a_numpy_ma_still_being_imported_is_not_read_half_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    half = types.ModuleType("numpy.ma")  # as another thread's import leaves it, part-way
    monkeypatch.setitem(sys.modules, "numpy.ma", half)
    assert _leaf_checks._masked(np.ndarray) is False


def test_masked_arrays_are_still_refused() -> None:
    ma = pytest.importorskip("numpy.ma")
    with pytest.raises(TypeError, match="masked array"):
        ema.ema_update({"w": ma.zeros(2)}, {"w": np.ones(2)}, 1, decay=0.5)


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (2, 0, 5)])
def test_an_empty_array_with_zero_strides_is_updated_in_place(shape: tuple[int, ...]) -> None:
    shadow = np.zeros(shape, np.float32)
    assert 0 in shadow.strides or shadow.ndim == 1
    assert (
        ema.ema_update({"w": shadow}, {"w": np.zeros(shape, np.float32)}, 1, decay=0.5)["w"]
        is shadow
    )
    ema.ema_update({"w": shadow}, {"w": np.zeros(shape, np.float32)}, 1, decay=0.5, copy=False)


def test_a_broadcast_view_with_elements_is_still_refused_in_place() -> None:
    shadow = np.broadcast_to(np.zeros(1, np.float32), (3,))
    with pytest.raises(ValueError, match=r"read-only|broadcast"):
        ema.ema_update(shadow, np.ones(3, np.float32), 1, decay=0.5, copy=False)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("step", 2.7, TypeError),
        ("step", float("nan"), TypeError),
        ("step", 1e30, TypeError),
        ("step", np.asarray(2.0), TypeError),
        ("step", True, TypeError),
        ("weight", True, TypeError),
        ("step", -1, ValueError),
    ],
)
def test_save_refuses_a_step_or_weight_of_the_wrong_kind_and_writes_nothing(
    tmp_path: Path, field: str, value: object, error: type[Exception]
) -> None:
    state = ema.init({"w": np.ones(2, np.float32)})._replace(**{field: value})
    path = tmp_path / "ema.safetensors"
    with pytest.raises(error, match=rf"ema_or_state\.{field}"):
        checkpoint.save(path, state)
    assert list(tmp_path.iterdir()) == []


def test_save_takes_integer_steps_and_float_weights_of_any_kind(tmp_path: Path) -> None:
    for k, (step, weight) in enumerate([(3, 1.0), (np.int32(3), np.float32(0.5)), (3, 1)]):
        state = ema.init({"w": np.ones(2, np.float32)})._replace(step=step, weight=weight)
        path = checkpoint.save(tmp_path / f"e{k}.safetensors", state)
        loaded = checkpoint.load(path, ema.init({"w": np.zeros(2, np.float32)}))
        assert int(loaded.step) == 3 and float(loaded.weight) == float(weight)


@pytest.mark.parametrize("sigma_rel", [0.2887, 0.29, 0.5])
def test_power_function_names_sigma_rel_and_its_range(sigma_rel: float) -> None:
    with pytest.raises(ValueError, match=r"sigma_rel must be in \(0, 12\*\*-0\.5\)") as info:
        schedules.power_function(sigma_rel=sigma_rel)
    assert "gamma must" not in str(info.value)
    assert schedules.power_function(sigma_rel=0.288).gamma > 0  # just inside: gamma > 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"dtype": 3}, TypeError),
        ({"init": True}, TypeError),
        ({"non_float": 0}, TypeError),
        ({"dtype": "float33"}, ValueError),
        ({"init": "ones"}, ValueError),
    ],
)
def test_a_config_choice_of_another_type_is_a_type_error(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=rf"Config\.{name} must be one of"):
        ema.Config(**kwargs)  # type: ignore[arg-type]


# --- a second hunt (the test kit, the stateless API) --------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", None])
def test_the_test_kit_keeps_complex_leaves_complex_as_ema_core_does(dtype: str | None) -> None:
    from ema_core import testing

    config = ema.Config(schedule=0.9, dtype=dtype)
    rng = np.random.default_rng(0)

    def draw() -> dict[str, np.ndarray]:
        return {"w": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64)}

    trajectory = testing.Trajectory(draw(), [draw() for _ in range(3)])

    def make(init: object) -> object:
        box = {"s": ema.init(init, config)}

        def step(params: object, t: int) -> object:
            box["s"] = ema.update(box["s"], params, config)
            return ema.average(box["s"], config)

        return step

    assert testing.reference(config, trajectory)[0].average[0].imag.any()
    testing.assert_matches(make, config, trajectory)  # ema-core passes its own kit


def test_a_torch_step_beside_array_api_strict_leaves_is_read_as_an_int() -> None:
    torch = pytest.importorskip("torch")
    xps = pytest.importorskip("array_api_strict")
    shadow = {"count": xps.asarray([0, 0]), "w": xps.zeros(3)}
    params = {"count": xps.asarray([7, 7]), "w": xps.ones(3)}
    schedule = schedules.num_updates(0.9)
    out = ema.ema_update(shadow, params, torch.tensor(3), schedule=schedule)
    host = {"count": np.zeros(2, np.int64), "w": np.zeros(3)}
    want = ema.ema_update(host, {"count": np.full(2, 7), "w": np.ones(3)}, 3, schedule=schedule)
    assert np.asarray(out["w"]).tolist() == want["w"].tolist()
    assert np.asarray(out["count"]).tolist() == [7, 7]


def test_a_step_of_another_framework_that_cannot_be_read_is_refused_before_any_write() -> None:
    jax = pytest.importorskip("jax")
    shadow = {"count": np.zeros(2, np.int64), "w": np.zeros(3)}
    params = {"count": np.full(2, 7), "w": np.ones(3)}

    def inside(step: object) -> object:
        return ema.ema_update(shadow, params, step, decay=0.5)

    with pytest.raises(TypeError, match=r"step is a 0-d array of jax.*cannot be read"):
        jax.jit(inside)(jax.numpy.asarray(3))
    assert shadow["count"].tolist() == [0, 0] and shadow["w"].tolist() == [0.0] * 3


def test_a_config_choice_given_as_a_str_subclass_is_kept_as_the_plain_str() -> None:
    import enum

    class Correction(str, enum.Enum):
        POWER = "power"

    for given in (np.str_("power"), Correction.POWER):
        config = ema.Config(correction=given, init=np.str_("zeros"))  # type: ignore[arg-type]
        assert type(config.correction) is str and config.correction == "power"
        assert type(config.init) is str and config.init == "zeros"
    assert ema.Config(correction=np.str_("power")) == ema.Config(correction="power")


def test_a_schedule_at_a_cpu_tensor_step_gives_a_0d_float64_tensor() -> None:
    torch = pytest.importorskip("torch")
    from ema_core._config import power_weight

    schedule = schedules.num_updates(0.999)
    for value in (schedule(torch.tensor(8)), *schedule.decay_and_rate(torch.tensor(8))):
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float64
    assert float(schedule(torch.tensor(8))) == schedule(8)
    weight = power_weight(schedule, torch.tensor(8))
    assert isinstance(weight, torch.Tensor) and float(weight) == power_weight(schedule, 8)

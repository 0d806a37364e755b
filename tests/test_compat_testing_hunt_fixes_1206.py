"""Two small promises a hunt of 2026-12-06 found broken: TensorFlow's compat EMA gave an
unnamed array that is a new object each step (``w.detach()``) a new average every ``apply``
without a word (found by identity, as TF does: the old averages stay and none advances), and
the test kit refused a tolerance sized as ``np.finfo(np.float32).eps * 8`` (a float32)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ema_core import Config, schedules
from ema_core.compat.tensorflow import ExponentialMovingAverage
from ema_core.testing import Trajectory, assert_matches


@pytest.mark.parametrize("renew", ["torch-detach", "numpy-view", "jax"])
def test_tf_warns_when_an_unnamed_array_renewed_each_step_starts_a_new_average(renew: str) -> None:
    ema = ExponentialMovingAverage(0.5)
    if renew == "torch-detach":
        torch = pytest.importorskip("torch")
        w = torch.nn.Parameter(torch.ones(3))
        arrays = [w.detach(), w.detach()]  # new objects over the param's memory
    elif renew == "numpy-view":
        v = np.ones(3, dtype=np.float32)
        arrays = [v[:], v[:]]
    else:
        jnp = pytest.importorskip("jax.numpy")
        arrays = [jnp.ones(3), jnp.ones(3) + 1.0]  # immutable: each step's arrays are new
    ema.apply([arrays[0]])
    with pytest.warns(UserWarning, match=r"var_list\[0\] is a new unnamed array over a variable"):
        ema.apply([arrays[1]])


def test_tf_keeps_quiet_for_kept_arrays_named_ones_and_alternating_var_lists() -> None:
    w, v = np.ones(3, dtype=np.float32), np.ones(2, dtype=np.float32)
    g, d = np.ones(3, dtype=np.float32), np.zeros(3, dtype=np.float32)  # same shape and dtype
    ema = ExponentialMovingAverage(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ema.apply([w])
        w += 1.0
        ema.apply([w])  # the same object, updated in place
        ema.apply([w, v])  # a new variable of another shape
        ema.apply([g])  # a GAN's generator, then its discriminator: two variables, apart
        ema.apply([d])
        ema.apply([g])
        flat = np.arange(8, dtype=np.float32)
        views = ExponentialMovingAverage(0.5)
        views.apply([flat[0:4]])  # two variables over one buffer, other elements
        views.apply([flat[::2]])
        square = np.ones((3, 3), dtype=np.float32)
        views.apply([square])
        views.apply([square.T])  # the same first element, other strides
        named = ExponentialMovingAverage(0.5)
        named.apply([("w", w.copy())])
        named.apply([("w", w.copy())])  # named: found by its name
    assert float(ema.average(w)[0]) == 1.75
    assert len(ema._slots) == 4


def _make(init: dict[str, np.ndarray]):  # a correct EMA: a copy, then decay 0.9
    shadow = {k: v.astype(np.float64) for k, v in init.items()}

    def step(params: dict[str, np.ndarray], t: int) -> dict[str, np.ndarray]:
        decay = 0.0 if t == 1 else 0.9  # ema-core's first update copies
        for k, v in params.items():
            shadow[k] = decay * shadow[k] + (1 - decay) * v
        return {k: v.astype(np.float32) for k, v in shadow.items()}

    return step


@pytest.mark.parametrize(
    "tolerance",
    [
        np.finfo(np.float32).eps * 8,
        np.float16(1e-3),
        np.int64(0) + np.float32(1e-4),
        pytest.param("bfloat16-eps", id="ml_dtypes-bfloat16"),
    ],
)
def test_the_kit_takes_a_tolerance_that_is_a_numpy_scalar(tolerance: object) -> None:
    if tolerance == "bfloat16-eps":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        tolerance = ml_dtypes.finfo(ml_dtypes.bfloat16).eps  # what jnp.finfo gives too
    config = Config(schedule=schedules.constant(0.9), init="copy")
    rng = np.random.default_rng(0)
    nests = [{"w": rng.standard_normal(4).astype(np.float32)} for _ in range(5)]
    trajectory = Trajectory(nests[0], nests[1:])
    assert_matches(_make, config, trajectory, rtol=tolerance)  # refused: "got float32"
    with pytest.raises(TypeError, match="rtol must be a real number"):
        assert_matches(_make, config, trajectory, rtol=np.bool_(True))


@pytest.mark.parametrize(
    ("tolerance", "shown"),
    [
        (np.float32(np.inf), "np.float32(inf)"),
        (np.float64(-np.inf), "np.float64(-inf)"),
        (np.float16(np.nan), "np.float16(nan)"),
        (10**400, "a huge int"),
    ],
)
def test_a_tolerance_that_is_no_finite_number_is_shown_as_given(
    tolerance: object, shown: str
) -> None:
    """A numpy inf was reported as "a huge int" (only a Python float was shown as itself)."""
    config = Config(schedule=schedules.constant(0.9), init="copy")
    trajectory = Trajectory({"w": np.ones(2, np.float32)}, [{"w": np.ones(2, np.float32)}])
    with pytest.raises(ValueError, match="atol must be a finite float >= 0") as raised:
        assert_matches(_make, config, trajectory, atol=tolerance)
    assert str(raised.value).endswith(f"got {shown}")

"""Every entry reads decay / schedule / config and the step alike: the same arguments give the
same decays, and the same bad arguments the same error, word for word (``ema_core._arguments``
is the one reader; ``_ops.concrete_step`` the one step check).

Entries: ``ema_update``, ``init`` / ``update`` / ``average``, the torch ``EMA``, JAX's
``make_update`` and ``with_ema``, and the drop-in classes that take a ``decay``."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules
from ema_core.compat import allennlp, paddle, tensorflow

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_OPTAX = HAS_JAX and importlib.util.find_spec("optax") is not None

Entry = tuple[frozenset[str], Callable[..., Any]]
RULE = frozenset({"decay", "schedule", "config"})
CONFIG = frozenset({"config"})
DECAY = frozenset({"decay"})


def _zeros() -> dict[str, Any]:
    return {"w": np.zeros(2)}


def _ema_update(**kw: Any) -> None:
    ema.ema_update(_zeros(), {"w": np.ones(2)}, 1, **kw)


def _torch_ema(**kw: Any) -> None:
    import torch

    from ema_core.torch import EMA

    EMA({"w": torch.zeros(2)}, **kw)


def _make_update(config: Any = None) -> None:
    from ema_core.jax import make_update

    make_update(config)


def _with_ema(config: Any = None) -> None:
    import optax

    from ema_core.jax import with_ema

    with_ema(optax.sgd(1.0), config)


ENTRIES: dict[str, Entry] = {
    "ema_update": (RULE, _ema_update),
    "init": (CONFIG, lambda config=None: ema.init(_zeros(), config)),
    "update": (CONFIG, lambda config=None: ema.update(ema.init(_zeros()), _zeros(), config)),
    "average": (CONFIG, lambda config=None: ema.average(ema.init(_zeros()), config)),
    "allennlp": (DECAY, lambda decay: allennlp.ExponentialMovingAverage(_zeros(), decay)),
    "paddle": (DECAY, lambda decay: paddle.ExponentialMovingAverage(_zeros(), decay)),
    "tensorflow": (DECAY, tensorflow.ExponentialMovingAverage),
}
if HAS_TORCH:
    ENTRIES["EMA"] = (RULE, _torch_ema)
if HAS_JAX:
    ENTRIES["make_update"] = (CONFIG, _make_update)
if HAS_OPTAX:
    ENTRIES["with_ema"] = (CONFIG, _with_ema)

BAD = [
    (
        {"decay": 0.5, "schedule": 0.5},
        TypeError,
        "pass at most one of decay, schedule or config; got decay, schedule",
    ),
    (
        {"decay": 0.5, "config": ema.Config()},
        TypeError,
        "pass at most one of decay, schedule or config; got decay, config",
    ),
    (
        {"schedule": 0.5, "config": ema.Config()},
        TypeError,
        "pass at most one of decay, schedule or config; got schedule, config",
    ),
    (
        {"config": 0.9},
        TypeError,
        "config must be an ema_core.Config, got float: use ema_core.Config(0.9)",
    ),
    ({"config": {"decay": 0.9}}, TypeError, "config must be an ema_core.Config, got dict"),
    ({"decay": 1.5}, ValueError, "decay must be in [0.0, 1.0], got 1.5"),
    ({"decay": -0.1}, ValueError, "decay must be in [0.0, 1.0], got -0.1"),
    ({"decay": math.nan}, ValueError, "decay must be in [0.0, 1.0], got nan"),
    ({"decay": "0.5"}, TypeError, "decay must be a float in [0.0, 1.0], got str '0.5'"),
    ({"decay": True}, TypeError, "decay must be a float in [0.0, 1.0], got bool True"),
    (
        {"schedule": "fast"},
        TypeError,
        "schedule must be a Schedule, a float decay or a callable t -> decay, got str",
    ),
    ({"schedule": 1.5}, ValueError, "decay must be in [0.0, 1.0], got 1.5"),
]


def _takers(kwargs: dict[str, Any]) -> list[str]:
    return [name for name, (keys, _) in ENTRIES.items() if set(kwargs) <= keys]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD, ids=[str(b[0]) for b in BAD])
def test_every_entry_refuses_the_same_arguments_with_the_same_words(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    takers = _takers(kwargs)
    assert "ema_update" in takers and len(takers) >= 2  # a comparison, not one entry alone
    for name in takers:
        with pytest.raises(error) as caught:
            ENTRIES[name][1](**kwargs)
        assert str(caught.value) == message, name


def _rate_ema_update(t: int, kw: dict[str, Any]) -> float:
    return float(ema.ema_update(_zeros(), {"w": np.ones(2)}, t, **kw)["w"][0])


def _rate_torch_ema(t: int, kw: dict[str, Any]) -> float:
    import torch

    from ema_core.torch import EMA

    w = torch.zeros(2, dtype=torch.float64)
    average = EMA({"w": w}, **kw)
    w.fill_(1.0)
    average.update(t)
    return float(average.average["w"][0])


def _rate_make_update(t: int, kw: dict[str, Any]) -> float:
    import jax.numpy as jnp

    from ema_core.jax import make_update

    config = kw.get("config")
    state = ema.init({"w": jnp.zeros(2)}, config)
    state = state._replace(step=jnp.asarray(t - 1, dtype=state.step.dtype))
    return float(make_update(config)(state, {"w": jnp.ones(2)}).shadow["w"][0])


def _rate_allennlp(t: int, kw: dict[str, Any]) -> float:
    w = np.zeros(2)
    average = allennlp.ExponentialMovingAverage([("w", w)], **kw)
    w += 1.0
    average.apply()  # a constant decay: the same at every t
    return float(average.assign_average_value()["w"][0])


RATES: dict[str, tuple[frozenset[str], Callable[[int, dict[str, Any]], float]]] = {
    "ema_update": (RULE, _rate_ema_update),
    "allennlp": (DECAY, _rate_allennlp),
}
if HAS_TORCH:
    RATES["EMA"] = (RULE, _rate_torch_ema)
if HAS_JAX:
    RATES["make_update"] = (CONFIG, _rate_make_update)

GOOD = [
    {},
    {"decay": 0.5},
    {"decay": 0.25},
    {"schedule": 0.75},
    {"schedule": schedules.warmup(0.99, 1.0, 0.75)},
    {"config": ema.Config(schedule=0.5)},
    {"config": ema.Config(schedule=schedules.warmup(0.9), init="copy", interval=2)},
]


@pytest.mark.parametrize("kwargs", GOOD, ids=[str(g) for g in GOOD])
def test_every_entry_reads_the_same_arguments_as_the_same_decays(kwargs: dict[str, Any]) -> None:
    """From a zero shadow toward ones, one update at step t leaves exactly its rate ``1 - d_t``:
    every entry that takes these arguments leaves the same (JAX in float32)."""
    takers = [n for n, (keys, _) in RATES.items() if set(kwargs) <= keys]
    assert "ema_update" in takers and len(takers) >= 2
    for t in (1, 2, 3, 10):
        want = _rate_ema_update(t, kwargs)
        for name in takers:
            got = RATES[name][1](t, kwargs)
            tolerance = 1e-6 if name == "make_update" else 0.0
            assert got == pytest.approx(want, rel=tolerance, abs=tolerance), (name, t)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_the_ema_config_is_the_config_the_arguments_name() -> None:
    import torch

    from ema_core.torch import EMA

    given = ema.Config(schedule=0.5, init="zeros")
    assert EMA({"w": torch.zeros(1)}, config=given).config == given
    made = EMA({"w": torch.zeros(1)}, decay=0.5, dtype=torch.float64).config
    assert made == ema.Config(schedule=0.5, dtype="float64", buffers="copy")
    with pytest.raises(
        ValueError,
        match=re.escape("buffers must be one of ['copy', 'average', 'skip'], got 'mean'"),
    ):
        EMA({"w": torch.zeros(1)}, buffers="mean")


STEPS = [
    (lambda xp: -1, ValueError, "step must be >= 0, got -1"),
    (lambda xp: 2**63, ValueError, r"step must be <= 2\*\*63 - 1 \(the largest int64\), got 9223"),
    (lambda xp: 1.5, TypeError, "step must be a Python int or a 0-d integer array, got float 1.5"),
    (lambda xp: True, TypeError, "step must be a Python int or a 0-d integer array, got bool True"),
    (
        lambda xp: xp.asarray([1, 2]),
        TypeError,
        r"step must be a 0-d integer array, got shape \(2,\)",
    ),
    (
        lambda xp: xp.asarray(0.5, dtype=xp.float64),
        TypeError,
        r"step must be a 0-d integer array, got shape \(\) dtype",
    ),
]
STEP_IDS = ["negative", "2**63", "float", "bool", "1-d array", "float array"]


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize(("make", "error", "message"), STEPS, ids=STEP_IDS)
def test_ema_update_and_the_ema_class_check_a_step_alike(
    make: Callable[[Any], Any], error: type[Exception], message: str
) -> None:
    """The same step (a numpy array for ``ema_update``, a tensor for ``EMA.update``) is refused
    with the same words, and the EMA has not counted it."""
    import torch

    from ema_core.torch import EMA

    with pytest.raises(error) as host:
        ema.ema_update(_zeros(), {"w": np.ones(2)}, make(np), decay=0.5)
    average = EMA({"w": torch.zeros(2)}, decay=0.5)
    with pytest.raises(error) as device:
        average.update(make(torch))
    assert average.step == 0
    assert re.match(message, str(host.value)) and re.match(message, str(device.value))
    assert str(host.value).replace("torch.", "") == str(device.value).replace("torch.", "")


def test_a_counter_array_is_checked_as_a_step_is() -> None:
    """The drop-ins' counters take the step's array check (their range is their peer's)."""
    bad = np.asarray([1, 2])
    with pytest.raises(TypeError) as step_error:
        ema.ema_update(_zeros(), {"w": np.ones(2)}, bad, decay=0.5)
    average = allennlp.ExponentialMovingAverage(_zeros(), 0.5)
    with pytest.raises(TypeError) as counter_error:
        average.apply(num_updates=bad)
    assert str(counter_error.value) == str(step_error.value).replace("step", "num_updates", 1)

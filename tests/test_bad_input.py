"""Every bad input of DESIGN.md section 6 raises the documented error, names what is wrong, and
leaves every shadow bit-identical (validation runs before the first write)."""

from __future__ import annotations

import copy as copy_module
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import schedules
from tests.conftest import Backend, Name, to_numpy

HOST = {
    "layer1": [
        np.arange(6.0, dtype=np.float32).reshape(2, 3),
        np.ones(3, np.float32),
        np.full(4, 2.0, np.float32),
    ],
    "bn": {"count": np.asarray([7, 8])},
}


def _nest(backend: Backend, host: dict[str, Any] = HOST) -> dict[str, Any]:
    return {
        "layer1": [backend.asarray(a) for a in host["layer1"]],
        "bn": {"count": backend.asarray(host["bn"]["count"])},
    }


def _snapshot(nest: dict[str, Any]) -> list[bytes]:
    return [to_numpy(a).tobytes() for a in (*nest["layer1"], nest["bn"]["count"])]


def _edit(backend: Backend, change: str) -> dict[str, Any]:
    """Params that differ from the shadow in one way (the last leaf, so earlier ones would be
    written first by a careless implementation)."""
    host = copy_module.deepcopy(HOST)
    params = _nest(backend, host)
    if change == "short list":
        params["layer1"] = params["layer1"][:2]
    elif change == "extra key":
        params["extra"] = params["bn"]["count"]
    elif change == "missing key":
        params["bn"] = {}
    elif change == "dict for list":
        params["layer1"] = {"0": params["layer1"][0]}
    elif change == "shape":
        params["layer1"][2] = backend.asarray(np.ones(5, np.float32))
    elif change == "int for float":
        params["layer1"][2] = backend.asarray(np.ones(4, np.int32))
    elif change == "int dtype":
        params["bn"]["count"] = backend.asarray(np.asarray([7, 8], dtype=np.int16))
    elif change == "python float":
        params["layer1"][2] = 1.5
    elif change == "nan":
        params["layer1"][2] = backend.asarray(np.asarray([1, np.nan, 2, 3], np.float32))
    return params


STRUCTURE = [
    ("short list", ValueError, r"params\['layer1'\]\[2\]"),
    ("extra key", ValueError, r"params\['extra'\]"),
    ("missing key", ValueError, r"params\['bn'\]\['count'\]"),
    ("dict for list", TypeError, r"params\['layer1'\]"),
    ("shape", ValueError, r"params\['layer1'\]\[2\].*\(5,\)"),
    ("int for float", TypeError, r"shadow\['layer1'\]\[2\].*float"),
    ("int dtype", TypeError, r"params\['bn'\]\['count'\]"),
    ("python float", TypeError, r"params\['layer1'\]\[2\] must be an array"),
]


@pytest.mark.parametrize(("change", "error", "match"), STRUCTURE, ids=[c[0] for c in STRUCTURE])
def test_structure_and_leaf_errors(backend: Backend, change: str, error: type, match: str) -> None:
    shadow = _nest(backend)
    before = _snapshot(shadow)
    with pytest.raises(error, match=match):
        ema.ema_update(shadow, _edit(backend, change), 1, decay=0.5)
    assert _snapshot(shadow) == before
    with pytest.raises(error):
        ema.update(ema.EMAState(0, shadow, 1.0), _edit(backend, change))


ARGUMENTS = [
    ({"decay": 1.5}, 1, ValueError, r"decay must be in \[0.0, 1.0\], got 1.5"),
    ({"decay": -0.1}, 1, ValueError, "decay"),
    ({"decay": float("nan")}, 1, ValueError, "decay.*nan"),
    ({"decay": "0.9"}, 1, TypeError, "decay must be a float"),
    ({"decay": True}, 1, TypeError, "decay"),
    ({"decay": np.ones(2)}, 1, TypeError, "0-d"),
    ({"decay": 0.5}, -1, ValueError, "step must be >= 0, got -1"),
    ({"decay": 0.5}, 1.0, TypeError, "step must be a Python int"),
    ({"decay": 0.5}, True, TypeError, "step"),
    ({"decay": 0.5}, np.asarray([1, 2]), TypeError, "0-d integer"),
    ({"decay": 0.5, "schedule": schedules.constant(0.5)}, 1, TypeError, "at most one"),
    ({"schedule": lambda t: 1.5}, 1, ValueError, "decay at step 1 must be in"),
    ({"schedule": "fast"}, 1, TypeError, "schedule must be"),
    ({"config": {"decay": 0.9}}, 1, TypeError, "config must be an ema_core.Config"),
    ({"decay": 0.5, "copy": "no"}, 1, TypeError, "copy must be None, True or False"),
    ({"config": ema.Config(non_float="error")}, 1, TypeError, "non_float='error'"),
]


@pytest.mark.parametrize(("kwargs", "step", "error", "match"), ARGUMENTS)
def test_argument_errors(
    backend: Backend, kwargs: dict, step: Any, error: type, match: str
) -> None:
    shadow = _nest(backend)
    before = _snapshot(shadow)
    with pytest.raises(error, match=match):
        ema.ema_update(shadow, _nest(backend), step, **kwargs)
    assert _snapshot(shadow) == before


def test_guard_finite_rejects_nan_before_writing(backend: Backend) -> None:
    shadow = _nest(backend)
    before = _snapshot(shadow)
    cfg = ema.Config(schedule=0.5, guard_finite=True)
    with pytest.raises(ValueError, match=r"params\['layer1'\]\[2\] holds NaN"):
        ema.ema_update(shadow, _edit(backend, "nan"), 1, config=cfg)
    assert _snapshot(shadow) == before
    ema.ema_update(shadow, _edit(backend, "nan"), 1, decay=0.5)  # unguarded: no check


def test_mixed_namespaces(backend: Backend) -> None:
    shadow = _nest(backend)
    before = _snapshot(shadow)
    params = _nest(backend)
    other = [1.0, 1.0, 1.0]
    if backend.name is Name.NUMPY:
        other = pytest.importorskip("array_api_strict").asarray(other, dtype=None)
    else:
        other = np.asarray(other, np.float32)
    params["layer1"][1] = other
    with pytest.raises(TypeError, match=r"params\['layer1'\]\[1\].*one namespace"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _snapshot(shadow) == before


def test_devices_must_match() -> None:
    aas = pytest.importorskip("array_api_strict")
    other = aas.Device("device1")
    shadow = {"a": aas.ones(3), "b": aas.ones(3)}
    params = {"a": aas.zeros(3), "b": aas.zeros(3, device=other)}
    with pytest.raises(ValueError, match=r"shadow\['b'\] is on device .* params\['b'\] is on"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert np.all(np.asarray(shadow["a"]._array) == 1.0)


def test_copy_false_needs_writeable_arrays() -> None:
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(ValueError, match=r"copy=False .* shadow\['w'\] cannot be written"):
        ema.ema_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 1, decay=0.5, copy=False)
    frozen = np.ones(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="copy=False"):
        ema.ema_update(frozen, np.zeros(2), 1, decay=0.5, copy=False)
    out = ema.ema_update(frozen, np.zeros(2), 1, decay=0.5)  # copy=None: a new array
    assert out is not frozen and np.all(frozen == 1.0) and np.all(out == 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init": "ones"}, ValueError, "Config.init must be one of"),
        ({"interval": 0}, ValueError, "Config.interval must be an int > 0, got 0"),
        ({"interval": 1.5}, TypeError, "Config.interval"),
        ({"dtype": "int8"}, ValueError, "Config.dtype"),
        ({"non_float": "average"}, ValueError, "Config.non_float"),
        ({"compensate": 1}, TypeError, "Config.compensate must be a bool"),
        ({"schedule": 2.0}, ValueError, "decay must be in"),
        ({"schedule": object()}, TypeError, "Config.schedule must be"),
    ],
)
def test_config_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ema.Config(**kwargs)


def test_functional_api_errors() -> None:
    params = {"w": np.ones(2)}
    with pytest.raises(TypeError, match="state must be an EMAState"):
        ema.update({"step": 0}, params)
    with pytest.raises(ValueError, match="holds no arrays"):
        ema.init({})
    with pytest.raises(TypeError, match="config must be"):
        ema.init(params, "zeros")
    with pytest.raises(ValueError, match=r"state.step must be >= 0"):
        ema.update(ema.EMAState(np.asarray(-5), {"w": np.ones(2)}, np.asarray(1.0)), params)

"""Random bad inputs through the public entries: each raises the promised exception type
(``TypeError`` for a type, ``ValueError`` for a value) and leaves every shadow bit-identical.

A drawn case is a valid nest of arrays plus one defect (a bad decay, step, structure, leaf or
option), sent through ``ema_update``, ``update``, ``init`` + ``average`` and the torch ``EMA``
class on every installed backend. The defect is put in the LAST place a careless implementation
would check, so that a partial write would show.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ema_core as ema
from tests.conftest import Backend, Name, _load, to_numpy
from tests.refusals import refused

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
BAD_DECAYS = [-0.5, -1e-3, 1.001, 1.5, math.nan, math.inf, -math.inf]
BAD_STEPS = [-1, -7, -(2**40)]
WRONG_TYPE_DECAYS: list[Any] = ["0.5", True, [0.5], np.ones(2), np.asarray(True)]
WRONG_TYPE_STEPS: list[Any] = [1.5, True, "1", np.asarray(1.0), np.ones(2, np.int64), None]
Case = tuple[dict[str, Any], dict[str, Any], Callable[..., Any], type[Exception]]


def _host_nest(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, 4))
    shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
    nest = {
        f"k{i}": np.asarray(
            draw(st.floats(-4, 4, width=32)) + np.arange(math.prod(s)), np.float32
        ).reshape(s)
        for i, s in enumerate(draw(st.lists(shapes, min_size=n, max_size=n)))
    }
    if draw(st.booleans()):
        nest["count"] = np.asarray([3, 4], np.int32)  # a BatchNorm counter, copied exactly
    return nest


def _native_scalar(backend: Backend, value: Any, integer: bool) -> Any:
    dtype = "int32" if integer else "float32"
    return backend.asarray(np.asarray(value), dtype)


@st.composite
def _decay_defect(draw: st.DrawFn, backend: Backend) -> tuple[Any, type[Exception]]:
    if draw(st.booleans()):
        return draw(st.sampled_from(WRONG_TYPE_DECAYS)), TypeError
    value = draw(st.sampled_from(BAD_DECAYS))
    form = draw(st.sampled_from(["float", "numpy 0-d", "numpy scalar", "native 0-d"]))
    if form == "numpy 0-d":
        value = np.asarray(value)
    elif form == "numpy scalar":
        value = np.float64(value)
    elif form == "native 0-d":
        value = _native_scalar(backend, value, integer=False)
    return value, ValueError


@st.composite
def _step_defect(draw: st.DrawFn, backend: Backend) -> tuple[Any, type[Exception]]:
    if draw(st.booleans()):
        return draw(st.sampled_from(WRONG_TYPE_STEPS)), TypeError
    value = draw(st.sampled_from(BAD_STEPS))
    form = draw(st.sampled_from(["int", "numpy 0-d", "native 0-d"]))
    if value < -(2**31) and form != "int":
        form = "int"
    if form == "numpy 0-d":
        return np.asarray(value), ValueError
    if form == "native 0-d":
        return _native_scalar(backend, value, integer=True), ValueError
    return value, ValueError


def _broken_params(
    draw: st.DrawFn, backend: Backend, host: dict[str, np.ndarray]
) -> tuple[dict[str, Any], type[Exception]]:
    params = {k: backend.asarray(v) for k, v in host.items()}
    last = sorted(k for k in host if k != "count")[-1]
    kind = draw(st.sampled_from(["drop", "extra", "shape", "int leaf", "python leaf", "list"]))
    if kind == "drop":
        del params[last]
        return params, ValueError
    if kind == "extra":
        params["zz"] = params[last]
        return params, ValueError
    if kind == "shape":
        params[last] = backend.asarray(np.ones((*host[last].shape, 2), np.float32))
        return params, ValueError
    if kind == "int leaf":
        params[last] = backend.asarray(host[last].astype(np.int32))
        return params, TypeError
    if kind == "python leaf":
        params[last] = 0.5
        return params, TypeError
    params[last] = [params[last]]
    return params, TypeError


@st.composite
def _case(draw: st.DrawFn, backend: Backend) -> tuple[dict[str, np.ndarray], Any]:
    """A valid nest, and the keyword arguments of one bad call with its expected error."""
    host = _host_nest(draw)
    params: Any = {k: backend.asarray(v + 1) for k, v in host.items()}
    step: Any = draw(st.integers(1, 10))
    decay: Any = 0.5
    copy: Any = None
    what = draw(st.sampled_from(["decay", "step", "params", "copy"]))
    if what == "decay":
        decay, error = draw(_decay_defect(backend))
    elif what == "step":
        step, error = draw(_step_defect(backend))
    elif what == "params":
        params, error = _broken_params(draw, backend, host)
    else:
        copy, error = draw(st.sampled_from(["no", 1, 0.0])), TypeError
    return host, {
        "what": what,
        **{"params": params, "step": step, "decay": decay, "copy": copy, "error": error},
    }


def _snapshot(nest: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    return {k: (str(v.dtype), to_numpy(v).tobytes()) for k, v in nest.items()}


AVAILABLE = [n for n in Name if importlib.util.find_spec(n.value) is not None]


@pytest.mark.parametrize("name", AVAILABLE, ids=[n.value for n in AVAILABLE])
@SETTINGS
@given(data=st.data())
def test_ema_update_raises_the_promised_type_and_writes_nothing(name: Name, data: Any) -> None:
    backend = _load(name)
    host, case = data.draw(_case(backend))
    shadow = {k: backend.asarray(v) for k, v in host.items()}
    before = _snapshot(shadow)
    with pytest.raises(case["error"]):
        ema.ema_update(shadow, case["params"], case["step"], decay=case["decay"], copy=case["copy"])
    assert _snapshot(shadow) == before


@pytest.mark.parametrize("name", AVAILABLE, ids=[n.value for n in AVAILABLE])
@SETTINGS
@given(data=st.data())
def test_functional_update_raises_the_promised_type_and_changes_nothing(
    name: Name, data: Any
) -> None:
    backend = _load(name)
    host, case = data.draw(_case(backend))
    config = ema.Config(schedule=0.5, init=data.draw(st.sampled_from(["params", "zeros"])))
    state = ema.init({k: backend.asarray(v) for k, v in host.items()}, config)
    state = ema.update(state, {k: backend.asarray(v) for k, v in host.items()}, config)
    params = {k: backend.asarray(v + 1) for k, v in host.items()}
    what = case["what"]
    if what == "decay" and case["error"] is ValueError:
        config = ema.Config(schedule=lambda t: case["decay"])  # a schedule returns the bad decay
    elif what == "params":
        params = case["params"]
    else:  # no decay or copy argument here: the state's step takes a defect
        if what != "step":
            case["step"], case["error"] = data.draw(_step_defect(backend))
        state = state._replace(step=case["step"])
    before = _snapshot(state.shadow), to_numpy(state.weight).tobytes()
    with pytest.raises(case["error"]):
        ema.update(state, params, config)
    assert (_snapshot(state.shadow), to_numpy(state.weight).tobytes()) == before


torch_missing = importlib.util.find_spec("torch") is None


@pytest.mark.skipif(torch_missing, reason="torch is not installed")
@SETTINGS
@given(data=st.data())
def test_torch_ema_class_raises_the_promised_type_and_changes_nothing(data: Any) -> None:
    from ema_core.torch import EMA

    backend = _load(Name.TORCH)
    host, _ = data.draw(_case(backend))
    live = {k: backend.asarray(v) for k, v in host.items()}
    averaged = EMA(live, decay=0.5)
    averaged.update(1)
    before = _snapshot(averaged.average), averaged.state_dict()["step"]
    what = data.draw(st.sampled_from(["update", "load_state_dict"]))
    if what == "update":
        step, error = data.draw(_step_defect(backend))
        if step is None:  # None counts internally: a valid call
            step, error = -1, ValueError
        with pytest.raises(error):
            averaged.update(step)
    else:
        state = averaged.state_dict()
        key = data.draw(st.sampled_from(sorted(k for k in state["shadow"] if k != "count")))
        bad = data.draw(st.sampled_from(["shape", "nan weight", "negative step", "meta"]))
        _corrupt(state, key, bad)
        with pytest.raises((TypeError, ValueError)):
            averaged.load_state_dict(state)
    assert (_snapshot(averaged.average), averaged.state_dict()["step"]) == before


def _corrupt(state: dict[str, Any], key: str, bad: str) -> None:
    import torch

    if bad == "shape":
        state["shadow"][key] = torch.zeros((*state["shadow"][key].shape, 2))
    elif bad == "nan weight":
        state["weight"] = math.nan
    elif bad == "negative step":
        state["step"] = -3
    else:
        state["shadow"][key] = torch.empty_like(state["shadow"][key], device="meta")


def _foreign(name: Name) -> Callable[[Any], Any]:
    """A 0-d array maker of another namespace than ``name``'s leaves."""
    other = {Name.NUMPY: "torch", Name.TORCH: "array_api_strict", Name.STRICT: "jax.numpy"}
    module = importlib.import_module(other.get(name, "torch"))
    return module.tensor if hasattr(module, "tensor") else module.asarray


TARGETED = {  # kind -> (error, what the message names)
    "decay out of range": (ValueError, "decay"),
    "decay of another namespace": (TypeError, "decay"),
    "negative array step": (ValueError, "step"),
    "step beyond int64": (ValueError, "step"),
    "one array twice": (ValueError, "share memory"),
}


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from([Name.NUMPY, Name.STRICT, Name.TORCH, Name.JAX]),
    kind=st.sampled_from(list(TARGETED)),
    size=st.integers(2, 5),
    data=st.data(),
)
def test_targeted_bad_inputs_raise_and_change_nothing(
    name: Name, kind: str, size: int, data: st.DataObject
) -> None:
    backend = _load(name)
    shadow = {f"k{i}": backend.asarray(np.full(2, float(i))) for i in range(size)}
    params = {k: backend.asarray(np.full(2, 9.0)) for k in shadow}
    step: Any = 1
    decay: Any = 0.5
    if kind == "decay out of range":
        # outside [0, 1] even in float32 (JAX runs without x64)
        value = data.draw(st.one_of(st.floats(1.001, 1e9), st.just(np.nan), st.floats(-1e9, -1e-3)))
        decay = backend.asarray(np.asarray(value))
    elif kind == "decay of another namespace":
        decay = _foreign(name)(np.asarray(0.5))
    elif kind == "negative array step":
        step = backend.asarray(np.asarray(data.draw(st.integers(-(2**31), -1))))
    elif kind == "step beyond int64":
        step = data.draw(st.integers(2**63, 2**70))
    elif name is not Name.JAX:  # one array twice (JAX arrays are never written in place)
        i, j = sorted(data.draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=2,
                                         unique=True)))  # fmt: skip
        shadow[f"k{j}"] = shadow[f"k{i}"]
    else:
        return
    error, match = TARGETED[kind]
    refused(error, match, shadow, lambda: ema.ema_update(shadow, params, step, decay=decay))
    if kind in ("negative array step", "step beyond int64"):
        state = ema.init(params)._replace(step=step, shadow=shadow)
        refused(error, match, shadow, lambda: ema.update(state, params))

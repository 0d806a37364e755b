"""Copied tensors follow the model on every call, also one whose decay is 1 (issue 14, item 1).

When the averaged tensors skip (decay exactly 1: between interval updates, ``decay=1.0``),
floating buffers under ``buffers="copy"`` and integer/bool leaves under ``non_float="copy"``
still take the params' values bit for bit, as timm, swa_utils and mmengine copy buffers on
every call; averaged tensors keep their bits. Checked against the real peers through the
``EMA`` class and the presets (slow), and on every backend through ``ema_update``,
``init``/``update``, ``make_update`` (also chunked) and the testing kit.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, testing
from tests.conftest import Backend, Name, to_numpy
from tests.peers import load_timm_model_ema, make_model, require, train_steps

CALLS = 7


def _bits(x: Any) -> bytes:
    return np.ascontiguousarray(to_numpy(x)).tobytes()


def _check(ema_avg: dict[str, Any], want: dict[str, Any], where: str) -> None:
    torch = require("torch")
    for name, value in want.items():
        assert torch.equal(ema_avg[name], value), f"{where}: {name} differs"


def _peer_parity(model: Any, peer_update: Any, peer_state: Any, config: ema.Config) -> None:
    """The ``EMA`` class beside a peer, every tensor compared exactly after every call; the
    model's buffers must move (a training-mode forward each step) for the check to mean it."""
    from ema_core.torch import EMA

    ours = EMA(model, config=config)
    first = model.state_dict()["1.running_mean"].clone()
    for t in train_steps(model, CALLS):
        peer_update(t)
        ours.update()
        _check(ours.average, peer_state(), f"call {t}")
    assert not model.state_dict()["1.running_mean"].equal(first)


@pytest.mark.slow
@pytest.mark.parametrize("interval", [3, 2])
def test_mmengine_interval_copies_buffers_between_updates(interval: int) -> None:
    averaged = require("mmengine.model.averaged_model")
    model = make_model()
    peer = averaged.ExponentialMovingAverage(model, 0.5, interval, update_buffers=False)
    _peer_parity(
        model,
        lambda t: peer.update_parameters(model),
        peer.module.state_dict,
        presets.mmedit(0.5, interval=interval),
    )


@pytest.mark.slow
@pytest.mark.parametrize("exclude_buffers", [False, True])
@pytest.mark.parametrize("with_step", [True, False], ids=["step", "no-step"])
def test_timm_decay_one_copies_buffers(exclude_buffers: bool, with_step: bool) -> None:
    """timm at ``decay=1.0``: integer buffers (and all buffers under ``exclude_buffers``)
    copied on every call, floating ones averaged at decay 1 (kept) otherwise."""
    model = make_model()
    peer = load_timm_model_ema().ModelEmaV3(model, decay=1.0, exclude_buffers=exclude_buffers)
    config = presets.timm(1.0, exclude_buffers=exclude_buffers)
    if not with_step:  # timm without step: decay from the start, no first copy
        config = ema.Config(schedule=1.0, buffers="copy" if exclude_buffers else "average")
    update = (lambda t: peer.update(model, step=t)) if with_step else lambda t: peer.update(model)
    _peer_parity(model, update, peer.module.state_dict, config)


@pytest.mark.slow
@pytest.mark.parametrize("use_buffers", [False, True])
def test_swa_utils_decay_one_copies_buffers(use_buffers: bool) -> None:
    """swa_utils at decay 1: buffers copied every call (``use_buffers=False``) or averaged,
    which keeps the floating ones; integers are then copied by ema-core (a documented
    difference: swa_utils averages and truncates them), so they equal the model's."""
    swa = require("torch.optim.swa_utils")
    model = make_model()
    peer = swa.AveragedModel(
        model, multi_avg_fn=swa.get_ema_multi_avg_fn(1.0), use_buffers=use_buffers
    )

    def peer_state() -> dict[str, Any]:
        state = peer.module.state_dict()
        if use_buffers:
            state["1.num_batches_tracked"] = model.state_dict()["1.num_batches_tracked"]
        return state

    _peer_parity(
        model,
        lambda t: peer.update_parameters(model),
        peer_state,
        presets.swa_utils(1.0, use_buffers=use_buffers),
    )


@pytest.mark.slow
@pytest.mark.parametrize("interval", [1, 3])
def test_compat_mmedit_matches_mmengine_with_integer_parameters(interval: int) -> None:
    """mmengine blends floating tensors only: an integer parameter keeps its first copy (and,
    under ``update_buffers=True``, so do integer buffers)."""
    torch = require("torch")
    averaged = require("mmengine.model.averaged_model")
    from ema_core.compat.mmedit import ExponentialMovingAverage

    for update_buffers in (False, True):
        model = torch.nn.Module()
        model.net = make_model()
        model.n = torch.nn.Parameter(torch.arange(3), requires_grad=False)
        args = (model, 0.5, interval, None, update_buffers)
        peer, ours = averaged.ExponentialMovingAverage(*args), ExponentialMovingAverage(*args)
        for t in train_steps(model.net, CALLS):
            model.n.add_(1)
            peer.update_parameters(model)
            ours.update_parameters(model)
            where = f"update_buffers={update_buffers}, call {t}"
            _check(ours.module.state_dict(), peer.module.state_dict(), where)


@pytest.mark.parametrize("step", ["count", "int", "tensor"])
@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_ema_class_follows_buffers_on_skipped_calls(buffers: str, step: str) -> None:
    """``Config(interval=3)``: on the skipped calls the parameters (and averaged buffers) keep
    their bits, copied buffers and ``num_batches_tracked`` take the model's; with a tensor step
    the decay is a tensor and the copy needs no select."""
    torch = require("torch")
    from ema_core.torch import EMA

    model = make_model()
    ours = EMA(model, config=ema.Config(schedule=0.5, interval=3), buffers=buffers)
    copied = {"1.num_batches_tracked"} | (
        {"1.running_mean", "1.running_var"} if buffers == "copy" else set()
    )
    for t in train_steps(model, CALLS):
        before = {k: v.clone() for k, v in ours.average.items()}
        ours.update(None if step == "count" else torch.tensor(t) if step == "tensor" else t)
        live = model.state_dict()
        for name, value in ours.average.items():
            want = live[name] if name in copied else before[name]
            assert name in copied or t % 3 == 0 or torch.equal(value, want), (t, name)
            assert name not in copied or torch.equal(value, want), (t, name)


def _leaves(backend: Backend, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "w": backend.asarray(rng.standard_normal(5).astype(np.float32)),
        "n": backend.asarray(rng.integers(-9, 9, 4).astype(np.int32)),
        "b": backend.asarray(rng.integers(0, 2, 3).astype(bool)),
    }


@pytest.mark.parametrize("copy", [None, True])
@pytest.mark.parametrize("how", ["float", "array", "interval"])
def test_ema_update_copies_integers_at_decay_one(backend: Backend, how: str, copy: Any) -> None:
    shadow, params = _leaves(backend, 0), _leaves(backend, 1)
    before = {k: _bits(v) for k, v in shadow.items()}
    kwargs: dict[str, Any] = {"decay": 1.0}
    if how == "array":
        kwargs = {"decay": backend.asarray(np.float32(1.0))}
    elif how == "interval":  # step 4 of 3: skipped
        kwargs = {"config": ema.Config(schedule=0.5, interval=3)}
    out = ema.ema_update(shadow, params, 4, copy=copy, **kwargs)
    assert _bits(out["w"]) == before["w"]
    for key in ("n", "b"):
        assert _bits(out[key]) == _bits(params[key]), key
        assert copy is None or _bits(shadow[key]) == before[key]  # copy=True never writes
    frozen = ema.ema_update(
        _leaves(backend, 0), params, 3, config=ema.Config(0.5, non_float="freeze")
    )
    assert _bits(frozen["n"]) == before["n"]


def test_update_copies_integers_on_every_step(backend: Backend) -> None:
    config = ema.Config(schedule=0.5, interval=3, init="zeros")
    state = ema.init(_leaves(backend, 0), config)
    for t in range(1, CALLS + 1):
        params = _leaves(backend, t)
        new = ema.update(state, params, config)
        assert t % 3 == 0 or _bits(new.shadow["w"]) == _bits(state.shadow["w"]), t
        for key in ("n", "b"):
            assert _bits(new.shadow[key]) == _bits(params[key]), (t, key)
            assert _bits(ema.average(new, config)[key]) == _bits(params[key]), (t, key)
        state = new


@pytest.mark.parametrize("chunk", [None, 2])
def test_make_update_copies_integers_on_traced_skips(
    chunk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traced step and decay, one jit call or chunks of 2 leaves; ``ema_update`` under jit
    with a traced decay of 1."""
    jax = pytest.importorskip("jax")
    from ema_core.jax import _chunked, make_update

    if chunk is not None:
        monkeypatch.setattr(_chunked, "CHUNK", chunk)
    backend = Backend(Name.JAX, jax.numpy, jax.numpy.asarray, has_bf16=True)
    config = ema.Config(schedule=0.5, interval=3)
    step = make_update(config)
    state = ema.init(_leaves(backend, 0), config)
    for t in range(1, CALLS + 1):
        params = _leaves(backend, t)
        w = _bits(state.shadow["w"])
        state = step(state, params)
        assert t % 3 == 0 or _bits(state.shadow["w"]) == w, t
        assert [_bits(state.shadow[k]) for k in "nb"] == [_bits(params[k]) for k in "nb"], t
    jitted = jax.jit(lambda s, p, d: ema.ema_update(s, p, 1, decay=d))
    shadow, params = _leaves(backend, 0), _leaves(backend, 1)
    out = jitted(shadow, params, jax.numpy.float32(1.0))
    assert _bits(out["w"]) == _bits(shadow["w"]) and _bits(out["n"]) == _bits(params["n"])


def test_reference_and_properties_copy_integers_at_decay_one(backend: Backend) -> None:
    init, steps = {"n": np.arange(3)}, [{"n": np.arange(3) + t} for t in range(1, 5)]
    for non_float, first in (("copy", False), ("freeze", True)):
        config = ema.Config(schedule=0.5, interval=2, non_float=non_float)
        got = [e.shadow[0] for e in testing.reference(config, testing.Trajectory(init, steps))]
        want = [init["n"] if first else s["n"] for s in steps]
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), non_float
    xp = compat.array_namespace(backend.asarray(np.zeros(1, np.float32)))
    step_fn = lambda s, p, d: ema.ema_update(s, p, 1, decay=d)  # noqa: E731
    for dtype in ("int32", "bool"):
        testing.assert_ema_properties(step_fn, xp, dtype=dtype, max_examples=8)
    with pytest.raises(AssertionError, match="int32 leaves are copied at every decay"):
        testing.assert_ema_properties(lambda s, p, d: s, xp, dtype="int32", max_examples=8)

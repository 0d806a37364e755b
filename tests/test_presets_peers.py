"""Parity of every preset with the real peer library, over a seeded 240-step trajectory.

Each test runs the peer and ema-core side by side on the same parameters (a BatchNorm model where
the peer tracks buffers) and compares after every step. Tolerances are in float32 ulps at the
magnitude of the values (``peers.ulps``): the peers and ema-core use different but equivalent
float32 formulas (``lerp`` with FMA, ``d*s + (1-d)*p``, ``s - r*(s-p)``), so the trajectories
agree to rounding, not bit for bit. A peer that is not installed skips its tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ema_core
from ema_core import presets
from tests.peers import (
    Ours,
    compare,
    load_timm_model_ema,
    make_model,
    require,
    require_installed,
    train_steps,
    ulps,
)

pytestmark = pytest.mark.slow  # the real peer libraries: `pytest -m "not slow"` leaves it out

STEPS = 240
#: float32 ulps (at the values' magnitude) allowed between a peer and ema-core. Observed on
#: the dev machine (torch 2.13 CPU): torch peers <= 1.32 (swa_utils, mmengine, timm and KarrasEMA
#: bit-exact, since ema-core's torch path and the peer both run ``lerp_``), Keras 2.59 (it forms
#: ``m*a + (1-m)*v``), optax 5.27 (it forms the decay and ``1 - decay ** t`` in float32).
TOL = 2.0
TOL_KERAS = 4.0
TOL_OPTAX = 8.0


def _run(model, peer_update, peer_tensors, config, keys=lambda _: True):
    ours = Ours(model, config)
    worst = 0.0
    for t in train_steps(model, STEPS):
        peer_update(t)
        ours.update(model)
        worst = max(worst, compare(ours.tensors(), peer_tensors(), TOL, f"step {t}", keys))
    return worst


def _is_float_key(name):
    return not name.endswith("num_batches_tracked")


def test_torch_ema():
    torch_ema = require("torch_ema")
    model = make_model()
    peer = torch_ema.ExponentialMovingAverage(model.parameters(), decay=0.99)
    names = [n for n, _ in model.named_parameters()]
    _run(
        model,
        lambda t: peer.update(model.parameters()),
        lambda: dict(zip(names, peer.shadow_params, strict=True)),
        presets.torch_ema(0.99),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 0.99, "update_after_step": 20, "update_every": 3},
        {"beta": 0.995, "update_after_step": 0, "update_every": 1, "power": 3 / 4},
        {"beta": 0.9, "update_after_step": 5, "update_every": 2, "min_value": 0.5},
    ],
)
def test_ema_pytorch(kwargs):
    ema_pytorch = require("ema_pytorch")
    model = make_model()
    peer = ema_pytorch.EMA(model, include_online_model=False, **kwargs)
    _run(
        model,
        lambda t: peer.update(),
        peer.ema_model.state_dict,
        presets.ema_pytorch(**kwargs),
    )


def test_ema_pytorch_karras():
    ema_pytorch = require("ema_pytorch")
    model = make_model()
    peer = ema_pytorch.KarrasEMA(model, sigma_rel=0.1, update_every=2)
    _run(
        model,
        lambda t: peer.update(),
        peer.ema_model.state_dict,
        presets.ema_pytorch_karras(sigma_rel=0.1, update_every=2),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"decay": 0.995, "update_after_step": 10, "use_ema_warmup": True},
        {"decay": 0.99, "min_decay": 0.3, "update_after_step": 3},
        {"decay": 0.99, "use_ema_warmup": True, "inv_gamma": 2.0, "power": 0.75},
    ],
)
def test_diffusers(kwargs):
    training_utils = require("diffusers.training_utils")
    model = make_model()
    peer = training_utils.EMAModel(model.parameters(), **kwargs)
    names = [n for n, _ in model.named_parameters()]
    _run(
        model,
        lambda t: peer.step(model.parameters()),
        lambda: dict(zip(names, peer.shadow_params, strict=True)),
        presets.diffusers(**kwargs),
    )


@pytest.mark.parametrize("use_buffers", [False, True])
def test_swa_utils(use_buffers):
    swa = require("torch.optim.swa_utils")
    model = make_model()
    peer = swa.AveragedModel(
        model, multi_avg_fn=swa.get_ema_multi_avg_fn(0.95), use_buffers=use_buffers
    )
    # torch averages and truncates integer buffers under use_buffers; ema-core copies them
    keys = _is_float_key if use_buffers else (lambda _: True)
    _run(
        model,
        lambda t: peer.update_parameters(model),
        peer.module.state_dict,
        presets.swa_utils(0.95, use_buffers=use_buffers),
        keys,
    )


@pytest.mark.parametrize(
    ("kwargs", "gamma"),
    [
        ({"momentum": 0.05, "interval": 3, "update_buffers": True}, None),
        ({"momentum": 0.05, "interval": 1, "update_buffers": False}, None),
        ({"momentum": 0.01, "interval": 2, "update_buffers": False}, 20),
    ],
)
def test_mmengine(kwargs, gamma):
    averaged = require("mmengine.model.averaged_model")
    model = make_model()
    if gamma is None:
        peer = averaged.ExponentialMovingAverage(model, **kwargs)
    else:
        peer = averaged.MomentumAnnealingEMA(model, gamma=gamma, **kwargs)
    # integer buffers under update_buffers: mmengine copies them once at the first call,
    # ema-core keeps their value from init (documented in presets.mmedit)
    keys = _is_float_key if kwargs["update_buffers"] else (lambda _: True)
    _run(
        model,
        lambda t: peer.update_parameters(model),
        peer.module.state_dict,
        presets.mmedit(**kwargs, gamma=gamma),
        keys,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"decay": 0.99, "update_after_step": 5, "use_warmup": True},
        {"decay": 0.98, "exclude_buffers": True},
        {"decay": 0.999, "use_warmup": True, "min_decay": 0.5, "warmup_power": 0.75},
    ],
)
def test_timm_model_ema_v3(kwargs):
    model_ema = load_timm_model_ema()
    model = make_model()
    peer = model_ema.ModelEmaV3(model, **kwargs)
    _run(
        model,
        lambda t: peer.update(model, step=t),
        peer.module.state_dict,
        presets.timm(**kwargs),
    )


@pytest.mark.parametrize("debias", [True, False])
def test_optax_ema(debias):
    optax = require("optax")
    jnp = require("jax.numpy")
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.standard_normal((STEPS + 1, 2, 6)).astype(np.float32), axis=0)
    p0 = {"a": jnp.asarray(walk[0, 0]), "b": jnp.asarray(walk[0, 1, :4])}
    tx = optax.ema(0.95, debias=debias)
    config = presets.optax(0.95, debias=debias)
    peer_state, state = tx.init(p0), ema_core.init(p0, config)
    for t in range(1, STEPS + 1):
        params = {"a": jnp.asarray(walk[t, 0]), "b": jnp.asarray(walk[t, 1, :4])}
        out, peer_state = tx.update(params, peer_state)
        state = ema_core.update(state, params, config)
        mine = ema_core.average(state, config)
        for key in ("a", "b"):
            err = ulps(np.asarray(mine[key]), np.asarray(out[key]))
            assert err <= TOL_OPTAX, f"step {t} {key}: {err:.2f} ulps"


_KERAS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = sys.argv[2]
    import numpy as np, keras
    rng = np.random.default_rng(5)
    shapes = [(4, 3), (7,)]
    variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
    opt = keras.optimizers.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.9)
    opt.build(variables)
    as_np = keras.ops.convert_to_numpy
    out = {f"init{i}": as_np(v) for i, v in enumerate(variables)}
    for t in range(int(sys.argv[3])):
        grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32"))
                 for s in shapes]
        opt.apply(grads, variables)
        for i, (v, e) in enumerate(zip(variables, opt._model_variables_moving_average)):
            out[f"var{i}_{t}"], out[f"ema{i}_{t}"] = as_np(v), as_np(e)
    np.savez(sys.argv[1], **out)
    """
)


@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_keras_use_ema(tmp_path: Path, keras_backend):
    require_installed("keras")
    require_installed(keras_backend)
    path = tmp_path / "keras.npz"
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-c", _KERAS_SCRIPT, str(path), keras_backend, str(STEPS)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    data = np.load(path)
    config = presets.keras(0.9)
    state = ema_core.init({i: data[f"init{i}"] for i in range(2)}, config)
    for t in range(STEPS):
        state = ema_core.update(state, {i: data[f"var{i}_{t}"] for i in range(2)}, config)
        for i in range(2):
            err = ulps(state.shadow[i], data[f"ema{i}_{t}"])
            assert err <= TOL_KERAS, f"step {t + 1} variable {i}: {err:.2f} ulps"

"""The test kit passes the real peers' own EMAs when each is checked against its preset: what a
peer's maintainers would write to adopt ema_core.testing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ema_core import presets, testing
from tests.peers import load_timm_model_ema, require

pytestmark = pytest.mark.slow  # the real peer libraries: `pytest -m "not slow"` leaves it out

# name -> (build(module) -> (update(t), read() -> name -> tensor), the preset that mirrors it)
Peer = Callable[[Any], tuple[Callable[[int], Any], Callable[[], dict[str, Any]]]]


def _torch_ema(m: Any) -> Any:
    ema = require("torch_ema").ExponentialMovingAverage(m.parameters(), 0.99)
    names = [n for n, _ in m.named_parameters()]
    return lambda t: ema.update(), lambda: dict(zip(names, ema.shadow_params, strict=True))


def _ema_pytorch(m: Any) -> Any:
    ema = require("ema_pytorch").EMA(
        m, beta=0.99, update_after_step=3, update_every=2, include_online_model=False
    )
    return lambda t: ema.update(), lambda: dict(ema.ema_model.named_parameters())


def _diffusers(m: Any) -> Any:
    ema = require("diffusers.training_utils").EMAModel(
        m.parameters(), decay=0.99, use_ema_warmup=True
    )
    names = [n for n, _ in m.named_parameters()]
    return (
        lambda t: ema.step(m.parameters()),
        lambda: dict(zip(names, ema.shadow_params, strict=True)),
    )


def _swa_utils(m: Any) -> Any:
    swa = require("torch.optim.swa_utils")
    avg = swa.AveragedModel(m, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9))
    return lambda t: avg.update_parameters(m), lambda: dict(avg.module.named_parameters())


def _timm(m: Any) -> Any:
    ema = load_timm_model_ema().ModelEmaV3(m, decay=0.99, use_warmup=True)
    return lambda t: ema.update(m, step=t), lambda: dict(ema.module.named_parameters())


def _mmengine(m: Any) -> Any:
    ema = require("mmengine.model").ExponentialMovingAverage(m, momentum=0.1, interval=2)
    return lambda t: ema.update_parameters(m), lambda: dict(ema.module.named_parameters())


PEERS: dict[str, tuple[Peer, Any]] = {
    "torch_ema": (_torch_ema, lambda: presets.torch_ema(0.99)),
    "ema-pytorch": (
        _ema_pytorch,
        lambda: presets.ema_pytorch(0.99, update_after_step=3, update_every=2),
    ),
    "diffusers": (_diffusers, lambda: presets.diffusers(0.99, use_ema_warmup=True)),
    "swa_utils": (_swa_utils, lambda: presets.swa_utils(0.9)),
    "timm": (_timm, lambda: presets.timm(0.99, use_warmup=True)),
    "mmengine": (_mmengine, lambda: presets.mmedit(0.1, interval=2)),
}


def _peer_ema(build: Peer) -> Callable[[Any], Callable[[Any, int], Any]]:
    torch = require("torch")

    def make(init: dict[str, Any]) -> Callable[[Any, int], Any]:
        module = torch.nn.Module()
        for name, value in init.items():
            module.register_parameter(name, torch.nn.Parameter(value.clone()))
        update, read = build(module)

        def step(params: dict[str, Any], t: int) -> dict[str, Any]:
            with torch.no_grad():
                for name, value in params.items():
                    getattr(module, name).copy_(value)
            update(t)
            return {k: v.detach() for k, v in read().items()}

        return step

    return make


@pytest.mark.parametrize("name", list(PEERS))
def test_kit_passes_each_peer_against_its_preset(name: str) -> None:
    torch = require("torch")
    build, preset = PEERS[name]
    rng = np.random.default_rng(7)
    walk = np.cumsum(rng.standard_normal((41, 7)).astype(np.float32) * 0.1, axis=0)
    nests = [
        {"w": torch.from_numpy(row[:4].copy()), "b": torch.from_numpy(row[4:].copy())}
        for row in walk
    ]
    testing.assert_matches(_peer_ema(build), preset(), testing.Trajectory(nests[0], nests[1:]))


def test_kit_flags_a_peer_checked_against_the_wrong_preset() -> None:
    torch = require("torch")
    nests = [{"w": torch.full((3,), float(k)), "b": torch.zeros(2)} for k in range(12)]
    with pytest.raises(AssertionError, match="step t=1"):  # torch_ema does not copy first
        testing.assert_matches(
            _peer_ema(_torch_ema), presets.timm(0.99), testing.Trajectory(nests[0], nests[1:])
        )

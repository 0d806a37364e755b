"""``load_peer``: a running peer EMA continued in ema-core, mid-run, as the peer would go on.

Acceptance: each real peer runs 50 steps of the parity suite's trajectory; its state, written
and read back as a checkpoint (``torch.save`` / ``torch.load(weights_only=True)``), goes into an
ema-core ``EMA`` built with the peer's preset; then both run 50 more steps. Right after the load
the averages are the peer's bit for bit and the step is the peer's count; after every later step
ema-core is within the preset's parity bound of the peer and of the float64 oracle continued from
the loaded values (``tests/test_presets_peers.py``'s bounds, oracles and ``Judge``).
Hand-written peer states: ``test_checkpoint_peers_states.py`` (what loads) and
``test_checkpoint_peers_refusals.py`` (what cannot continue exactly raises, nothing is written).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests import peer_oracles  # noqa: E402
from tests.peers import (  # noqa: E402
    Judge,
    Setting,
    as_float64,
    kinds,
    load_timm_model_ema,
    make_model,
    require,
    snapshot,
    train_steps,
)
from tests.test_presets_peers import bound_for, config_of, decay_of, plan_of  # noqa: E402


@dataclass(frozen=True)
class Live:
    """A running peer: one update (given t), its averages by name, the state it writes."""

    update: Callable[[int], None]
    averages: Callable[[], dict[str, torch.Tensor]]
    state: Callable[[], dict[str, Any]]


def _by_name(model: Any, tensors: Any) -> dict[str, torch.Tensor]:
    return dict(zip([n for n, _ in model.named_parameters()], tensors, strict=True))


def _timm(model: Any, args: dict[str, Any]) -> Live:
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    update = lambda t: peer.update(model, step=t)  # noqa: E731
    return Live(update, peer.module.state_dict, peer.module.state_dict)  # state_dict_ema


def _torch_ema(model: Any, args: dict[str, Any]) -> Live:
    peer = require("torch_ema").ExponentialMovingAverage(model.parameters(), **args)
    averages = lambda: _by_name(model, peer.shadow_params)  # noqa: E731
    return Live(lambda t: peer.update(model.parameters()), averages, peer.state_dict)


def _ema_pytorch(cls: str) -> Callable[[Any, dict[str, Any]], Live]:
    def build(model: Any, args: dict[str, Any]) -> Live:
        peer = getattr(require("ema_pytorch"), cls)(model, **args)
        return Live(lambda t: peer.update(), peer.ema_model.state_dict, peer.state_dict)

    return build


def _diffusers(model: Any, args: dict[str, Any]) -> Live:
    peer = require("diffusers.training_utils").EMAModel(model.parameters(), **args)
    averages = lambda: _by_name(model, peer.shadow_params)  # noqa: E731
    return Live(lambda t: peer.step(model.parameters()), averages, peer.state_dict)


def _swa_utils(model: Any, args: dict[str, Any]) -> Live:
    swa = require("torch.optim.swa_utils")
    avg = swa.get_ema_multi_avg_fn(args["decay"])
    peer = swa.AveragedModel(model, multi_avg_fn=avg, use_buffers=args["use_buffers"])
    return Live(lambda t: peer.update_parameters(model), peer.module.state_dict, peer.state_dict)


def _mmengine(model: Any, args: dict[str, Any]) -> Live:
    averaged = require("mmengine.model.averaged_model")
    plain = {k: v for k, v in args.items() if k != "gamma"}
    cls = averaged.MomentumAnnealingEMA if "gamma" in args else averaged.ExponentialMovingAverage
    with warnings.catch_warnings():  # it warns at momentum > 0.5
        warnings.simplefilter("ignore", UserWarning)
        peer = cls(model, **plain, **({"gamma": args["gamma"]} if "gamma" in args else {}))
    return Live(lambda t: peer.update_parameters(model), peer.module.state_dict, peer.state_dict)


BUILDERS: dict[str, Callable[[Any, dict[str, Any]], Live]] = {
    "timm": _timm,
    "torch_ema": _torch_ema,
    "ema_pytorch": _ema_pytorch("EMA"),
    "ema_pytorch_karras": _ema_pytorch("KarrasEMA"),
    "diffusers": _diffusers,
    "swa_utils": _swa_utils,
    "mmengine": _mmengine,
}
#: One setting per peer where the step decides the next decay, gate or copy (a wrong step, an
#: off-by-one included, moves the averages far past the bound).
CASES: list[tuple[str, dict[str, Any]]] = [
    ("timm", {"decay": 0.999, "update_after_step": 5, "use_warmup": True}),
    ("torch_ema", {"decay": 0.99}),
    ("ema_pytorch", {"beta": 0.99, "update_after_step": 20, "update_every": 3}),
    ("ema_pytorch_karras", {"sigma_rel": 0.1, "update_every": 2}),
    ("diffusers", {"decay": 0.995, "update_after_step": 10, "use_ema_warmup": True}),
    ("swa_utils", {"decay": 0.95, "use_buffers": True}),
    ("mmengine", {"momentum": 0.05, "interval": 3, "update_buffers": True}),
    ("mmengine", {"momentum": 0.01, "interval": 2, "update_buffers": False, "gamma": 20}),
]
BEFORE, AFTER = 50, 50


def _as_written(state: dict[str, Any]) -> dict[str, Any]:
    """The state as a checkpoint file gives it back (copies, no pickled objects)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("peer", "args"), CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)]
)
def test_peer_continues_in_ema_core(peer: str, args: dict[str, Any]) -> None:
    setting, model = Setting(args), make_model(0)
    live = BUILDERS[peer](model, args)
    oracle = peer_oracles.Oracle(snapshot(model), kinds(model), plan_of(peer, setting))
    steps = train_steps(model, BEFORE + AFTER, seed=1)
    for t in islice(steps, BEFORE):
        live.update(t)
        oracle.call(snapshot(model))
    ema = EMA(model, config=config_of(peer, setting))
    stored = None if peer in ("torch_ema", "diffusers") else args  # they store their own
    load_peer(
        ema,
        _as_written(live.state()),
        peer=peer,
        args=stored,
        step=BEFORE if peer == "timm" else None,
    )

    assert ema.step == BEFORE
    theirs = live.averages()
    for name, value in theirs.items():
        assert torch.equal(ema.average[name], value), f"{peer}: {name} differs right after the load"
    # the oracle of ema-core continues from the values it loaded
    oracle.ours = {n: as_float64(ema.average[n]) for n in oracle.ours}
    what = f"{peer} {args}, continued by load_peer after {BEFORE} steps"
    judge = Judge(bound_for(peer, decay_of(peer, setting)), what, kinds(model), oracle.deviating())
    for t in steps:
        live.update(t)
        ema.update()
        oracle.call(snapshot(model))
        view = oracle.peer_view(), oracle.ours_view()
        judge.check(t, "EMA after load_peer", ema.average, live.averages(), *view)
    assert ema.step == BEFORE + AFTER

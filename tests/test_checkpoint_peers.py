"""``load_peer``: a running peer EMA continued in ema-core, mid-run, as the peer would go on.

Acceptance: each real peer runs 50 steps of the parity suite's trajectory; its state, written
and read back as a checkpoint (``torch.save`` / ``torch.load(weights_only=True)``), goes into an
ema-core ``EMA`` built with the peer's preset; then both run 50 more steps. Right after the load
the averages are the peer's bit for bit and the step is the peer's count; after every later step
ema-core is within the preset's parity bound of the peer and of the float64 oracle continued from
the loaded values (``tests/test_presets_peers.py``'s bounds, oracles and ``Judge``). The
refusals use hand-written peer states: what cannot continue exactly raises, and nothing is
written.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pytest
import torch

from ema_core import presets
from ema_core.checkpoint._peers import load_peer
from ema_core.torch import EMA
from tests import peer_oracles
from tests.peers import (
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
from tests.test_presets_peers import bound_for, config_of, decay_of, plan_of


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


# ---- refusals: hand-written peer states, nothing written ----------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _snapshot(ema: EMA) -> dict[str, Any]:
    state = ema.state_dict()
    return {**state, "shadow": {n: t.clone() for n, t in state["shadow"].items()}}


def _refused(ema: EMA, error: type[Exception], match: str, state: Any, **kwargs: Any) -> None:
    before = _snapshot(ema)
    with pytest.raises(error, match=match):
        load_peer(ema, state, **kwargs)
    after = ema.state_dict()
    assert after["step"] == before["step"] and after["weight"] == before["weight"]
    for name, value in before["shadow"].items():
        assert torch.equal(after["shadow"][name], value), f"{name} was written"


def _torch_ema_state(model: torch.nn.Module, **changes: Any) -> dict[str, Any]:
    shadows = [p.detach() + 1.0 for p in model.parameters()]
    return {
        "decay": 0.99,
        "num_updates": 7,
        "shadow_params": shadows,
        "collected_params": None,
        **changes,
    }


def _module_state(model: torch.nn.Module, prefix: str = "module.") -> dict[str, Any]:
    return {
        prefix + k: v.clone() + (1 if v.is_floating_point() else 0)
        for k, v in model.state_dict().items()
    }


def test_torch_ema_state_fills_shadows_and_step() -> None:
    model = _model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    state = _torch_ema_state(model)
    load_peer(ema, state, peer="torch_ema")
    assert ema.step == 7
    for (name, _), shadow in zip(model.named_parameters(), state["shadow_params"], strict=True):
        assert torch.equal(ema.average[name], shadow)


def _swa_state(model: torch.nn.Module, **changes: Any) -> dict[str, Any]:
    return {**_module_state(model), "n_averaged": torch.tensor(4), **changes}


def _ema_pytorch_state(model: torch.nn.Module, initted: bool) -> dict[str, Any]:
    state = _module_state(model, "ema_model.")
    return {**state, "step": torch.tensor(3), "initted": torch.tensor(initted)}


def _without(state: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != key}


def _fewer_shadows(model: torch.nn.Module) -> dict[str, Any]:
    return _torch_ema_state(model, shadow_params=[p.detach() for p in model.parameters()][:-1])


SWA = {"decay": 0.9}


def _case(what: str, config: Any, state: Any, match: str, **kwargs: Any) -> Any:
    """One refusal: the EMA's config, the peer state of the model, the ValueError's message
    pattern and load_peer's arguments."""
    return pytest.param(config, state, match, kwargs, id=what)


REFUSALS = [
    _case(
        "decay", presets.torch_ema(0.999), _torch_ema_state, "presets.torch_ema", peer="torch_ema"
    ),
    _case(
        "another peer's preset",
        presets.swa_utils(0.9),
        lambda m: {**_module_state(m), "steps": torch.tensor(2)},
        "continues as",
        peer="mmengine",
        args={"momentum": 0.1},
    ),
    _case(
        "a hyperparameter the preset refuses",
        presets.diffusers(0.99),
        lambda m: {
            "decay": 0.99,
            "optimization_step": 3,
            "inv_gamma": 0.0,
            "shadow_params": [p.detach() for p in m.parameters()],
        },
        "inv_gamma",
        peer="diffusers",
    ),
    _case(
        "args against the state",
        presets.torch_ema(0.99),
        _torch_ema_state,
        "disagree",
        peer="torch_ema",
        args={"decay": 0.9},
    ),
    _case(
        "shadow_params count",
        presets.torch_ema(0.99),
        _fewer_shadows,
        "3 shadow_params; this EMA tracks 4",
        peer="torch_ema",
    ),
    _case(
        "a shape",
        presets.swa_utils(0.9),
        lambda m: _swa_state(m, **{"module.0.weight": torch.zeros(2, 4)}),
        r"'0.weight' has shape \(2, 4\)",
        peer="swa_utils",
        args=SWA,
    ),
    _case(
        "a missing name",
        presets.swa_utils(0.9),
        lambda m: _without(_swa_state(m), "module.1.running_var"),
        r"missing \['1.running_var'\]",
        peer="swa_utils",
        args=SWA,
    ),
    _case(
        "an unexpected entry",
        presets.swa_utils(0.9),
        lambda m: _swa_state(m, extra=torch.ones(1)),
        r"\['extra'\] is not an entry",
        peer="swa_utils",
        args=SWA,
    ),
    _case(
        "a missing counter",
        presets.swa_utils(0.9),
        lambda m: _without(_swa_state(m), "n_averaged"),
        r"missing \['n_averaged'\]",
        peer="swa_utils",
        args=SWA,
    ),
    _case(
        "no args",
        presets.ema_pytorch(),
        lambda m: _ema_pytorch_state(m, True),
        "args is None",
        peer="ema_pytorch",
    ),
    _case(
        "initted against step",
        presets.ema_pytorch(),
        lambda m: _ema_pytorch_state(m, False),
        "initted",
        peer="ema_pytorch",
        args={},
    ),
    _case(
        "step against the counter",
        presets.torch_ema(0.99),
        _torch_ema_state,
        "disagrees",
        peer="torch_ema",
        step=8,
    ),
    _case(
        "a narrowing dtype",
        presets.torch_ema(0.99),
        lambda m: _torch_ema_state(m, shadow_params=[p.detach().double() for p in m.parameters()]),
        "torch.float64",
        peer="torch_ema",
    ),
]


@pytest.mark.parametrize(("config", "state", "match", "kwargs"), REFUSALS)
def test_refuses_what_cannot_continue_exactly(
    config: Any, state: Callable[[Any], Any], match: str, kwargs: dict[str, Any]
) -> None:
    model = _model()
    _refused(EMA(model, config=config), ValueError, match, state(model), **kwargs)


def test_timm_needs_the_step_and_reads_both_layouts() -> None:
    model = _model()
    ema = EMA(model, config=presets.timm(0.99, use_warmup=True))
    state = _module_state(model, prefix="")
    _refused(
        ema,
        ValueError,
        "timm stores no counter",
        state,
        peer="timm",
        args={"decay": 0.99, "use_warmup": True},
    )
    _refused(
        ema, ValueError, "state_dict_ema", {"state_dict_ema": state}, peer="timm", args={}, step=3
    )
    load_peer(
        ema, _module_state(model), peer="timm", args={"decay": 0.99, "use_warmup": True}, step=3
    )
    assert ema.step == 3
    assert torch.equal(ema.average["1.running_var"], model.state_dict()["1.running_var"] + 1)


def test_a_step_equal_to_the_counter_is_accepted() -> None:
    model = _model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    load_peer(ema, _torch_ema_state(model), peer="torch_ema", step=7)
    assert ema.step == 7


def test_a_narrower_float_widens_losslessly() -> None:
    model = _model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    narrow = [(p.detach() + 0.1).bfloat16() for p in model.parameters()]
    load_peer(ema, _torch_ema_state(model, shadow_params=narrow), peer="torch_ema")
    assert torch.equal(ema.average["0.weight"], narrow[0].float())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"peer": "keras"}, ValueError, "peer must be one of"),
        ({"peer": "torch_ema", "args": ["decay"]}, TypeError, "args must be"),
        ({"peer": "torch_ema", "step": -1}, ValueError, "step must be an int in"),
        ({"peer": "torch_ema", "step": 1.0}, TypeError, "step must be an int"),
    ],
)
def test_refuses_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    model = _model()
    ema = EMA(model, config=presets.torch_ema(0.99, use_num_updates=False))
    _refused(ema, error, match, _torch_ema_state(model, num_updates=None), **kwargs)


def test_refuses_what_is_not_an_ema_or_a_state() -> None:
    model = _model()
    with pytest.raises(TypeError, match=r"ema must be an ema_core\.torch\.EMA"):
        load_peer(model, {}, peer="torch_ema")  # type: ignore[arg-type]
    ema = EMA(model, config=presets.torch_ema(0.99))
    _refused(ema, TypeError, "state_dict must be a dict", [1, 2], peer="torch_ema")
    _refused(ema, ValueError, "missing", {"decay": 0.99}, peer="torch_ema")

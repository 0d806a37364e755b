"""``load_peer`` refuses what cannot continue exactly, from hand-written peer states.

Each refusal raises (``ValueError`` for values, ``TypeError`` for types) and writes nothing: the
step, the weight and every shadow are as before the call. The states that load are
``test_checkpoint_peers_states.py``; the live peers continued mid-run, ``test_checkpoint_peers.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._load_peer_helpers import module_state, refused, small_model, torch_ema_state  # noqa: E402


def _swa_state(model: torch.nn.Module, **changes: Any) -> dict[str, Any]:
    return {**module_state(model), "n_averaged": torch.tensor(4), **changes}


def _ema_pytorch_state(model: torch.nn.Module, initted: bool) -> dict[str, Any]:
    state = module_state(model, "ema_model.")
    return {**state, "step": torch.tensor(3), "initted": torch.tensor(initted)}


def _without(state: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != key}


def _fewer_shadows(model: torch.nn.Module) -> dict[str, Any]:
    return torch_ema_state(model, shadow_params=[p.detach() for p in model.parameters()][:-1])


SWA = {"decay": 0.9}


def _case(what: str, config: Any, state: Any, match: str, **kwargs: Any) -> Any:
    """One refusal: the EMA's config, the peer state of the model, the ValueError's message
    pattern and load_peer's arguments."""
    return pytest.param(config, state, match, kwargs, id=what)


REFUSALS = [
    _case(
        "decay", presets.torch_ema(0.999), torch_ema_state, "presets.torch_ema", peer="torch_ema"
    ),
    _case(
        "another peer's preset",
        presets.swa_utils(0.9),
        lambda m: {**module_state(m), "steps": torch.tensor(2)},
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
        torch_ema_state,
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
        torch_ema_state,
        "disagrees",
        peer="torch_ema",
        step=8,
    ),
    _case(
        "a narrowing dtype",
        presets.torch_ema(0.99),
        lambda m: torch_ema_state(m, shadow_params=[p.detach().double() for p in m.parameters()]),
        "torch.float64",
        peer="torch_ema",
    ),
]


@pytest.mark.parametrize(("config", "state", "match", "kwargs"), REFUSALS)
def test_refuses_what_cannot_continue_exactly(
    config: Any, state: Callable[[Any], Any], match: str, kwargs: dict[str, Any]
) -> None:
    model = small_model()
    refused(EMA(model, config=config), ValueError, match, state(model), **kwargs)


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
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99, use_num_updates=False))
    refused(ema, error, match, torch_ema_state(model, num_updates=None), **kwargs)


def test_refuses_what_is_not_an_ema_or_a_state() -> None:
    model = small_model()
    with pytest.raises(TypeError, match=r"ema must be an ema_core\.torch\.EMA"):
        load_peer(model, {}, peer="torch_ema")  # type: ignore[arg-type]
    ema = EMA(model, config=presets.torch_ema(0.99))
    refused(ema, TypeError, "state_dict must be a dict", [1, 2], peer="torch_ema")
    refused(ema, ValueError, "missing", {"decay": 0.99}, peer="torch_ema")

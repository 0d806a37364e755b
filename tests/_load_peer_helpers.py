"""Hand-written peer states for the ``load_peer`` tests, and the check that a refusal wrote nothing.

Shared by ``test_checkpoint_peers_states.py`` and ``test_checkpoint_peers_refusals.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _snapshot(ema: EMA) -> dict[str, Any]:
    state = ema.state_dict()
    return {**state, "shadow": {n: t.clone() for n, t in state["shadow"].items()}}


def refused(ema: EMA, error: type[Exception], match: str, state: Any, **kwargs: Any) -> None:
    """``load_peer(ema, state, **kwargs)`` raises ``error`` matching ``match``; nothing written."""
    before = _snapshot(ema)
    with pytest.raises(error, match=match):
        load_peer(ema, state, **kwargs)
    after = ema.state_dict()
    assert after["step"] == before["step"] and after["weight"] == before["weight"]
    for name, value in before["shadow"].items():
        assert torch.equal(after["shadow"][name], value), f"{name} was written"


def torch_ema_state(model: torch.nn.Module, **changes: Any) -> dict[str, Any]:
    shadows = [p.detach() + 1.0 for p in model.parameters()]
    return {
        "decay": 0.99,
        "num_updates": 7,
        "shadow_params": shadows,
        "collected_params": None,
        **changes,
    }


def module_state(model: torch.nn.Module, prefix: str = "module.") -> dict[str, Any]:
    return {
        prefix + k: v.clone() + (1 if v.is_floating_point() else 0)
        for k, v in model.state_dict().items()
    }

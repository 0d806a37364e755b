"""``load_peer`` on hand-written peer states that load: the averages and the step they give.

The live peers continued mid-run are ``test_checkpoint_peers.py``; the states refused are
``test_checkpoint_peers_refusals.py``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint._peers import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests._load_peer_helpers import module_state, refused, small_model, torch_ema_state  # noqa: E402


def test_torch_ema_state_fills_shadows_and_step() -> None:
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    state = torch_ema_state(model)
    load_peer(ema, state, peer="torch_ema")
    assert ema.step == 7
    for (name, _), shadow in zip(model.named_parameters(), state["shadow_params"], strict=True):
        assert torch.equal(ema.average[name], shadow)


def test_timm_needs_the_step_and_reads_both_layouts() -> None:
    model = small_model()
    ema = EMA(model, config=presets.timm(0.99, use_warmup=True))
    state = module_state(model, prefix="")
    refused(
        ema,
        ValueError,
        "timm stores no counter",
        state,
        peer="timm",
        args={"decay": 0.99, "use_warmup": True},
    )
    refused(
        ema, ValueError, "state_dict_ema", {"state_dict_ema": state}, peer="timm", args={}, step=3
    )
    load_peer(
        ema, module_state(model), peer="timm", args={"decay": 0.99, "use_warmup": True}, step=3
    )
    assert ema.step == 3
    assert torch.equal(ema.average["1.running_var"], model.state_dict()["1.running_var"] + 1)


def test_a_step_equal_to_the_counter_is_accepted() -> None:
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    load_peer(ema, torch_ema_state(model), peer="torch_ema", step=7)
    assert ema.step == 7


def test_a_narrower_float_widens_losslessly() -> None:
    model = small_model()
    ema = EMA(model, config=presets.torch_ema(0.99))
    narrow = [(p.detach() + 0.1).bfloat16() for p in model.parameters()]
    load_peer(ema, torch_ema_state(model, shadow_params=narrow), peer="torch_ema")
    assert torch.equal(ema.average["0.weight"], narrow[0].float())

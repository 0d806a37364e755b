"""``load_peer`` from a by-name peer that averaged the whole model into an EMA built with
``exclude=`` (README, "Coming from another EMA": ema-pytorch's ``param_or_buffer_names_no_ema``
and ``ignore_names`` are ``exclude=``): the peer's entries of the excluded tensors were counted
as unexpected, so the state of the same model was refused as another model's."""

from __future__ import annotations

import pytest

from tests._load_peer_helpers import module_state, refused, small_model

torch = pytest.importorskip("torch")
ema_pytorch = pytest.importorskip("ema_pytorch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

ARGS = {"beta": 0.99, "update_after_step": 0, "update_every": 1}


@pytest.mark.parametrize("option", ["param_or_buffer_names_no_ema", "ignore_names"])
def test_an_ema_pytorch_state_loads_into_an_ema_that_excludes_what_it_did_not_average(
    option: str,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    theirs = ema_pytorch.EMA(model, **{option: {"1.bias"}}, **ARGS)
    ours = EMA(model, config=presets.ema_pytorch(**ARGS), exclude=["1.bias"])

    def train() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)

    for _ in range(5):
        train()
        theirs.update()
    load_peer(ours, theirs.state_dict(), peer="ema_pytorch", args=ARGS)
    assert ours.step == 5 and "1.bias" not in ours.names
    for _ in range(5):  # both go on as one
        train()
        theirs.update()
        ours.update()
    averaged = dict(theirs.ema_model.named_parameters())
    for name in ours.names:
        torch.testing.assert_close(ours.average[name], averaged[name], rtol=3e-7, atol=1e-7)


def test_a_name_the_model_does_not_have_is_still_refused() -> None:
    model = small_model()
    ema = EMA(model, config=presets.timm(0.9), exclude=["1.running_var"])
    state = {**module_state(model, prefix=""), "2.weight": torch.ones(2)}
    refused(
        ema,
        ValueError,
        r"unexpected \['2.weight'\]",
        state,
        peer="timm",
        args={"decay": 0.9},
        step=3,
    )
    without = {k: v for k, v in module_state(model, prefix="").items() if k != "0.weight"}
    refused(
        ema,
        ValueError,
        r"missing \['0.weight'\]",
        without,
        peer="timm",
        args={"decay": 0.9},
        step=3,
    )

"""torch ``EMA`` leftovers of the 2026-12-07 hunt: weights tied after the EMA was built were
reported as removed from the module (it still holds them, under the tied name); a numpy step
with dimensions got the peer-API hint (a model passed as the step) instead of its shape."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402


class _LM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 5, bias=False)


def test_weights_tied_after_the_ema_are_named_as_tied_not_removed() -> None:
    model = _LM()
    ema = EMA(model, decay=0.9)
    model.head.weight = model.emb.weight  # model.tie_weights(), after the EMA
    before = {k: v.clone() for k, v in ema.average.items()}
    tied = r"'head\.weight' is now the tensor of 'emb\.weight' \(weights tied after the EMA"
    with pytest.raises(ValueError, match=tied):
        ema.update()
    with pytest.raises(ValueError, match=tied), ema.swap():
        pass
    assert ema.step == 0 and all(torch.equal(ema.average[k], v) for k, v in before.items())
    del model.head.weight  # a tensor truly gone keeps its own message
    with pytest.raises(ValueError, match="the module no longer has the tracked tensor"):
        ema.update()


def test_tying_before_the_ema_tracks_the_tensor_once() -> None:
    model = _LM()
    model.head.weight = model.emb.weight
    ema = EMA(model, decay=0.5)
    ema.update()
    assert "head.weight" not in ema.names and "emb.weight" in ema.names


@pytest.mark.parametrize("make", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_a_step_with_dimensions_is_refused_by_its_shape(make: object) -> None:
    ema = EMA(torch.nn.Linear(2, 2), decay=0.5)
    with pytest.raises(TypeError, match=r"step must be a 0-d integer array, got shape \(1,\)"):
        ema.update(make([3]))  # type: ignore[operator]
    assert ema.step == 0


@pytest.mark.parametrize("init", ["params", "zeros"])
def test_restart_sets_the_shadows_in_place_to_the_weights_as_they_are_now(init: str) -> None:
    """``_copies.restart`` (the Lightning callback's first batch): the shadows take the
    module's weights as ``EMA(module)`` would start from them, in their own memory (a
    ``load_state_dict`` of a new EMA's state held a second copy of every shadow), step 0."""
    from ema_core import Config
    from ema_core.torch import _copies

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, config=Config(0.5, init=init), buffers="copy")
    addresses = [s.data_ptr() for s in ema._bound.shadows]
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    assert _copies.restart(ema)
    fresh = EMA(model, config=Config(0.5, init=init), buffers="copy")
    assert [s.data_ptr() for s in ema._bound.shadows] == addresses
    assert ema.step == 0 and ema.state_dict()["weight"] == fresh.state_dict()["weight"]
    for name, value in fresh.state_dict()["shadow"].items():
        assert torch.equal(ema.state_dict()["shadow"][name], value), name


def test_restart_refuses_a_module_whose_tensors_no_longer_fit() -> None:
    from ema_core.torch import _copies

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.average.items()}
    model[0] = torch.nn.Linear(3, 4)  # another shape: a new EMA is built instead
    assert not _copies.restart(ema)
    assert all(torch.equal(ema.average[k], v) for k, v in before.items())


def test_a_module_whose_state_dict_takes_no_keep_vars_keeps_the_removed_message() -> None:
    """The tied-weights note reads ``state_dict(keep_vars=True)``; a module that overrides
    ``state_dict`` without it got a ``TypeError`` in place of the message."""

    class Custom(_LM):
        def state_dict(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {}

    model = Custom()
    ema = EMA(model, decay=0.9)
    del model.head.weight
    with pytest.raises(ValueError, match="the module no longer has the tracked tensor"):
        ema.update()

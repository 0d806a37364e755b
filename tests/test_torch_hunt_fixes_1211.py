"""torch fixes of the hunt of 2026-12-05 (second part): ``copy_to(model.parameters())`` (torch_ema's
habit) pointed to ``model.named_parameters()``, which a model with buffers then refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402


def test_copy_to_of_bare_tensors_points_to_a_call_that_works():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    with pytest.raises(TypeError, match=r"\(copy_to\(model\)\) or model\.state_dict\(\)$") as err:
        ema.copy_to(model.parameters())
    target = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    suggested = str(err.value).rsplit(" or ", 1)[1]
    assert suggested == "model.state_dict()"
    ema.copy_to(target.state_dict())  # the suggestion, followed, works on a model with buffers
    for name, avg in ema.average.items():
        assert torch.equal(target.state_dict()[name], avg), name

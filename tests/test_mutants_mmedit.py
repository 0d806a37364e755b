"""Tests that the third mutation-testing audit found missing in the MMEditing drop-in
(``ema_core.compat.mmedit`` and its checks in ``compat._modules``): each kills a small
plausible bug that the rest of the suite let through."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core.compat.mmedit import ExponentialMovingAverage  # noqa: E402


def test_mmedit_load_refuses_a_meta_tensor() -> None:
    """A meta tensor has the right layout, shape and dtype but no data: refused before torch
    loads anything, so the averaged module keeps its values."""
    ema = ExponentialMovingAverage(torch.nn.Linear(2, 1), momentum=0.5)
    state = ema.state_dict()
    before = state["module.weight"].clone()
    state["module.weight"] = torch.empty_like(before, device="meta")
    with pytest.raises(ValueError, match="must be a dense tensor with data"):
        ema.load_state_dict(state)
    assert torch.equal(ema.module.weight, before)


def _with_buffer(value: torch.Tensor) -> torch.nn.Module:
    """A linear layer with one extra buffer ``flag``."""
    model = torch.nn.Linear(2, 1)
    model.register_buffer("flag", value)
    return model


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [("bool", "int64"), ("int64", "bool"), ("complex64", "int64"), ("int64", "complex64")],
)
def test_mmedit_refuses_a_buffer_of_another_kind_of_dtype(mine: str, theirs: str) -> None:
    """bool, integer and complex tensors are three kinds: copying one into another would
    truncate or reinterpret it, so the pair is refused before any copy."""
    ema = ExponentialMovingAverage(_with_buffer(torch.zeros(2, dtype=getattr(torch, mine))))
    other = _with_buffer(torch.ones(2, dtype=getattr(torch, theirs)))
    with pytest.raises(TypeError, match="cannot be copied into"):
        ema.update_parameters(other)
    assert int(ema.steps) == 0


def test_mmedit_averages_buffers_of_a_module_with_extra_state() -> None:
    """A module's extra state sits in its ``state_dict`` beside the tensors; with
    ``update_buffers=True`` only the tensors are copied and blended."""

    class WithExtra(torch.nn.Linear):
        def get_extra_state(self) -> dict[str, int]:
            return {"version": 1}

        def set_extra_state(self, state: object) -> None:
            pass

    model = WithExtra(2, 1)
    ema = ExponentialMovingAverage(model, momentum=0.5, update_buffers=True)
    ema.update_parameters(model)
    with torch.no_grad():
        model.bias.add_(2.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.bias, model.bias - 1.0)

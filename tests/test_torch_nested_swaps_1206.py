"""Two EMAs of one model swapped one inside the other: inside ``a.swap(copy=False)`` the model
holds ``a``'s shadows, and a copying ``b.swap()`` writes ``b``'s averages into them and puts
them back bit for bit on exit. ``a`` took those undone writes for writes into its shadows and
raised "were written inside the block"; a real write in ``a``'s block is still caught."""

from __future__ import annotations

import pytest
import torch

from ema_core.torch import EMA


def _two() -> tuple[torch.nn.Linear, EMA, EMA]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    a, b = EMA(model, decay=0.5), EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    a.update()
    b.update()
    return model, a, b


def _values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("earlier_swaps", [0, 2])
@pytest.mark.parametrize("inner_swaps", [1, 3])
def test_copying_swaps_inside_a_non_copying_one_are_not_writes(
    earlier_swaps: int, inner_swaps: int
) -> None:
    model, a, b = _two()
    live, averages = _values(model), {k: v.clone() for k, v in a.average.items()}
    for _ in range(earlier_swaps):  # a run of copying swaps before (its versions are on record)
        with a.swap():
            pass
    with a.swap(copy=False):
        for _ in range(inner_swaps):
            with b.swap():
                assert torch.equal(model.weight, b.average["weight"])
            assert torch.equal(model.weight, averages["weight"])
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, averages[k]) for k, v in a.average.items())


def test_a_write_inside_the_inner_copying_swap_is_undone_by_it() -> None:
    model, a, b = _two()
    averages = {k: v.clone() for k, v in a.average.items()}
    with a.swap(copy=False), b.swap(), torch.no_grad():
        model.weight.mul_(3.0)  # into the model's tensor: b puts the values back on exit
    assert all(torch.equal(v, averages[k]) for k, v in a.average.items())


def test_a_write_after_the_inner_swap_still_counts_as_written() -> None:
    model, a, b = _two()
    live = _values(model)
    with pytest.raises(RuntimeError, match=r"were written inside the block"), a.swap(copy=False):
        with b.swap():
            pass
        with torch.no_grad():
            model.weight.add_(1.0)  # into a's shadow itself
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("how", ["half-float", "data"])
def test_a_conversion_inside_the_inner_swap_leaves_the_outer_averages(how: str) -> None:
    """A conversion inside the copying swap moves the param off the outer EMA's shadow: the
    inner swap restores the shadow it wrote too (it was left holding the inner averages)."""
    model, a, b = _two()
    live, averages = _values(model), {k: v.clone() for k, v in a.average.items()}
    with a.swap(copy=False), b.swap():
        if how == "data":
            model.weight.data = model.weight.data.clone()
        else:
            model.half()
            model.float()
    assert all(torch.equal(v, averages[k]) for k, v in a.average.items())
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


def test_three_levels_a_copying_swap_inside_two_non_copying_ones() -> None:
    model, a, b = _two()
    c = EMA(model, decay=0.7)
    c.update()
    live, averages = _values(model), {k: v.clone() for k, v in a.average.items()}
    with a.swap(copy=False), b.swap(copy=False):
        with c.swap():
            assert torch.equal(model.weight, c.average["weight"])
        assert torch.equal(model.weight, b.average["weight"])
    assert all(torch.equal(v, averages[k]) for k, v in a.average.items())
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())


def test_many_inner_swaps_keep_one_version_per_open_swap() -> None:
    from ema_core.torch import _restored

    _, a, b = _two()
    with a.swap(copy=False):
        for _ in range(50):
            with b.swap():
                pass
        assert [len(kept) for kept in _restored._KEPT.values()] == [1, 1]  # weight and bias
    assert not _restored._KEPT

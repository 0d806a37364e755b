"""Mutation-audit tests (round 2) of the torch ``EMA``'s updates cut short by an exception:
each kills a small plausible bug in the bookkeeping of the groups already done."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config  # noqa: E402
from ema_core.backends.torch import _foreach  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.torch_models import nudge, two_groups  # noqa: E402


def _cut(monkeypatch: pytest.MonkeyPatch, which: set[int]) -> None:
    """The lerp calls numbered in ``which`` (from 1) raise; the others run."""
    calls: list[int] = []
    original = _foreach.lerp_

    def lerp_(*args: object) -> object:
        calls.append(1)
        if len(calls) in which:
            raise RuntimeError("cut")
        return original(*args)

    monkeypatch.setattr(_foreach, "lerp_", lerp_)


def _pair() -> tuple[torch.nn.Module, EMA, torch.nn.Module, EMA]:
    config = Config(schedule=0.75, buffers="average")
    model, twin = two_groups(), two_groups()
    return model, EMA(model, config=config), twin, EMA(twin, config=config)


def _same(a: EMA, b: EMA) -> None:
    assert a.step == b.step
    for name, value in a.average.items():
        assert torch.equal(value, b.average[name]), name


def test_an_update_cut_after_a_complete_one_redoes_the_groups_it_did_not_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Update 1 completes; update 2 is cut at its first lerp group: its retry applies every
    group left (what update 1 finished does not count as done for update 2)."""
    model, ema, twin, reference = _pair()
    for m, e in ((model, ema), (twin, reference)):
        nudge(m, 1)
        e.update()
        nudge(m, 2)
    reference.update()
    _cut(monkeypatch, {1})
    with pytest.raises(RuntimeError, match="cut"):
        ema.update()
    monkeypatch.undo()
    ema.update()
    _same(ema, reference)


def test_an_update_cut_twice_applies_each_group_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut at its second lerp group, then its retry cut again: the third try still knows
    the first group is done (applied twice, the average would differ)."""
    model, ema, twin, reference = _pair()
    nudge(model, 1)
    nudge(twin, 1)
    reference.update()
    _cut(monkeypatch, {2, 3})  # the first try's second group, the retry's first (the same)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="cut"):
            ema.update()
    monkeypatch.undo()
    ema.update()
    _same(ema, reference)


def _tensors() -> dict[str, torch.Tensor]:
    """A frozen integer tensor first, then two lerp groups (float32, float64)."""
    return {
        "n": torch.arange(3),
        "a": torch.linspace(0.0, 1.0, 4),
        "b": torch.linspace(1.0, 2.0, 4, dtype=torch.float64),
    }


@pytest.mark.parametrize("first", ["cut", "nothing done"])
def test_a_cut_update_with_a_frozen_tensor_first_is_completed_exactly(
    monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """The groups done are recorded as positions among all tracked tensors, not among the
    moving ones (the frozen integer tensor shifts them); an update cut before any group is
    done is dropped, and a later explicit step applies that step only."""
    config = Config(schedule=0.75, non_float="freeze")
    live, twin = _tensors(), _tensors()
    ema, reference = EMA(live, config=config), EMA(twin, config=config)
    for t in (*live.values(), *twin.values()):
        t.add_(1)
    _cut(monkeypatch, {2} if first == "cut" else {1})
    with pytest.raises(RuntimeError, match="cut"):
        ema.update(1)
    monkeypatch.undo()
    if first == "cut":
        ema.update(1)
        reference.update(1)
    else:
        ema.update(2)
        reference.update(2)
    _same(ema, reference)


def test_a_step_below_a_cut_update_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``update(5)`` was cut short, ``update(3)`` would go back: refused, nothing done."""
    model, ema, _, _ = _pair()
    nudge(model, 1)
    _cut(monkeypatch, {2})
    with pytest.raises(RuntimeError, match="cut"):
        ema.update(5)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="step=3 is below this EMA's step 5"):
        ema.update(3)
    assert ema.step == 0


def test_load_state_dict_drops_an_update_left_unfinished(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut update is not completed over the shadows loaded after it."""
    model, ema, twin, reference = _pair()
    nudge(model, 1)
    _cut(monkeypatch, {2})
    with pytest.raises(RuntimeError, match="cut"):
        ema.update()
    monkeypatch.undo()
    ema.load_state_dict(reference.state_dict())
    nudge(twin, 1)
    model.load_state_dict(twin.state_dict())
    ema.update()
    reference.update()
    _same(ema, reference)

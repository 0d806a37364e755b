"""Fixes of the post-hoc hunt of 2026-12-05: a torch bank that writes snapshots refuses a step
that leaves out a due update (its averages would not be the power functions their labels name).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core.torch import EMABank  # noqa: E402


def _model() -> torch.nn.Module:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.ones_(model.weight)
    return model


def _shadows(bank: EMABank) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in e.average.items()} for e in bank]


def _unchanged(bank: EMABank, before: list[dict[str, torch.Tensor]], step: int) -> None:
    for e, kept in zip(bank, before, strict=True):
        assert e.step == step
        for name, value in e.average.items():
            assert torch.equal(value, kept[name]), name


def test_a_step_that_skips_due_updates_is_refused_before_anything_is_written(tmp_path) -> None:
    model = _model()
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=4, snapshot_dir=tmp_path)
    before = _shadows(bank)
    with pytest.raises(ValueError, match=r"step=4 leaves out step 1 of bank\[0\] \(at step 0"):
        bank.update(4)  # a first update at 4: steps 1 to 3 left out
    _unchanged(bank, before, 0)
    for step in (1, 2, 3, 4):
        bank.update(step)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 2  # step 4's snapshots
    before = _shadows(bank)
    with pytest.raises(ValueError, match=r"step=8 leaves out step 5 .*interval 1.*every step"):
        bank.update(8)  # a micro-batch counter that moves by 4
    _unchanged(bank, before, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    bank.update(4)  # the same step again is no gap (an update an exception cut short)
    bank.update(5)
    assert [e.step for e in bank] == [5, 5]


def test_an_interval_bank_may_be_given_only_its_due_steps(tmp_path) -> None:
    # interval 4 (compensated): updates at 4, 8 are every due update; 16 after 8 leaves out 12
    kw = {"sigma_rels": (0.05, 0.10), "interval": 4}
    model = _model()
    bank = EMABank(model, snapshot_every=8, snapshot_dir=tmp_path, **kw)
    reference = EMABank(model, **kw)
    for step in range(1, 9):
        with torch.no_grad():
            model.weight.fill_(float(step * step))
        reference.update(step)
        if step % 4 == 0:
            bank.update(step)
    for a, b in zip(bank, reference, strict=True):
        assert a.step == b.step == 8
        for name, value in a.average.items():
            assert torch.equal(value, b.average[name]), name
    assert a.average["weight"][0, 0] not in (1.0, 64.0)  # averaged, not a copy
    with pytest.raises(ValueError, match=r"step=16 leaves out step 12 .*interval 4"):
        bank.update(16)
    bank.update(11)  # no due step between 8 and 11
    assert [e.step for e in bank] == [11, 11]


def test_a_bank_without_snapshots_still_takes_any_forward_step() -> None:
    bank = EMABank(_model(), sigma_rels=(0.05, 0.10))
    bank.update(4)
    bank.update(8)
    assert [e.step for e in bank] == [8, 8]

"""README "Choices where the contract is silent": the claims no other test pinned, one test per
claim (the comment gives the README line of the claim)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import ema_core as ema
from ema_core import _stateless, schedules


def _zeros_toward_ones(step: int, **kwargs: Any) -> float:
    return float(ema.ema_update({"w": np.zeros(2)}, {"w": np.ones(2)}, step, **kwargs)["w"][0])


# README 1442: no decay, schedule or config means decay=0.9999, applied as given from step 1
def test_the_default_decay_is_0_9999_with_no_hidden_warmup_or_first_copy() -> None:
    for step in (1, 2, 1000):
        assert _zeros_toward_ones(step) == 1.0 - 0.9999  # a warm-up or a copy would differ


# README 1445: step 0 is a step every built-in schedule is defined at
@pytest.mark.parametrize(
    "schedule",
    [
        schedules.constant(0.5),
        schedules.warmup(0.999),
        schedules.power_function(7.0),
        schedules.half_life(10),
        schedules.annealing(0.999),
        schedules.num_updates(0.999),
    ],
    ids=lambda s: type(s).__name__,
)
def test_step_zero_is_accepted(schedule: schedules.Schedule) -> None:
    decay = float(schedule(0))
    assert 0.0 <= decay <= 1.0
    assert _zeros_toward_ones(0, schedule=schedule) == pytest.approx(1.0 - decay, abs=1e-15)


# README 1455: average returns the shadow arrays themselves, unless init="zeros"
def test_average_returns_the_shadow_arrays_themselves_unless_init_zeros() -> None:
    params = {"w": np.ones(3), "h": np.ones(3, np.float16)}
    same = ema.Config(schedule=0.5, dtype="same")
    state = ema.update(ema.init(params, same), params, same)
    read = ema.average(state, same)
    assert read["w"] is state.shadow["w"] and read["h"] is state.shadow["h"]
    assert read["h"].dtype == np.float16  # the shadow's dtype
    zeros = ema.Config(schedule=0.5, init="zeros")
    state = ema.update(ema.init(params, zeros), params, zeros)
    read = ema.average(state, zeros)
    assert read["w"] is not state.shadow["w"]
    assert read["w"].dtype == np.float64  # the shadow's dtype when wider than float32


class _AB(NamedTuple):
    a: Any
    b: Any


class _OtherAB(NamedTuple):  # another class, not a subclass, with the same fields in order
    a: Any
    b: Any


# README 1462: a list and a tuple of one length match; the result has the shadow's types
def test_a_list_and_a_tuple_match_and_the_result_has_the_shadows_types() -> None:
    out = ema.ema_update([np.zeros(1), np.zeros(1)], (np.ones(1), np.ones(1)), 1, decay=0.5)
    assert type(out) is list and [float(x[0]) for x in out] == [0.5, 0.5]
    out = ema.ema_update((np.zeros(1), np.zeros(1)), [np.ones(1), np.ones(1)], 1, decay=0.5)
    assert type(out) is tuple and [float(x[0]) for x in out] == [0.5, 0.5]
    with pytest.raises(ValueError, match="length"):
        ema.ema_update([np.zeros(1)], (np.ones(1), np.ones(1)), 1, decay=0.5)


# README 1464: NamedTuples are matched by their fields, whatever their class
def test_namedtuples_of_any_class_with_the_same_fields_match_by_field() -> None:
    shadow = _AB(np.zeros(1), np.zeros(1))
    out = ema.ema_update(shadow, _OtherAB(np.ones(1), np.full(1, 3.0)), 1, decay=0.0)
    assert type(out) is _AB and (float(out.a[0]), float(out.b[0])) == (1.0, 3.0)


# README 1504: `_stateless.clear()` empties the cache; copy=True chains are never cached
def test_clear_empties_the_plan_cache_and_copy_true_chains_are_never_kept() -> None:
    params = {"w": np.ones(3), "v": np.ones(3)}
    _stateless.clear()
    shadow = {"w": np.zeros(3), "v": np.zeros(3)}
    for step in range(1, 6):
        shadow = ema.ema_update(shadow, params, step, decay=0.5, copy=True)
    assert not _stateless._ENTRIES
    for step in range(6, 9):
        ema.ema_update(shadow, params, step, decay=0.5)
    assert _stateless._ENTRIES
    _stateless.clear()
    assert not _stateless._ENTRIES


# README 1572: copy_to writes float into float or complex, complex into complex, integers into
# the same dtype, TypeError otherwise, after checking every target
def test_copy_to_writes_float_into_complex_and_refuses_other_kinds_before_writing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = {"w": torch.zeros(2), "c": torch.zeros(2, dtype=torch.complex64),
             "n": torch.arange(2)}  # fmt: skip
    averager = EMA(model, decay=0.5)
    model["w"].add_(1.0)
    model["c"].add_(1.0 + 1.0j)
    averager.update()

    def targets(**changes: Any) -> dict[str, Any]:
        out = {k: torch.zeros_like(v) for k, v in averager.average.items()}
        out.update(changes)
        return out

    wide = torch.complex128
    good = targets(w=torch.zeros(2, dtype=wide), c=torch.zeros(2, dtype=wide))
    averager.copy_to(good)
    assert good["w"].tolist() == [0.5 + 0j] * 2 and good["c"].tolist() == [0.5 + 0.5j] * 2
    assert good["n"].tolist() == [0, 1]
    for name, target in (("c", torch.zeros(2)), ("n", torch.zeros(2, dtype=torch.int32)),
                         ("n", torch.zeros(2, dtype=torch.float64))):  # fmt: skip
        bad = targets(**{name: target})
        with pytest.raises(TypeError, match=f"copy_to: '{name}'"):
            averager.copy_to(bad)
        assert not any(bool(t.any()) for t in bad.values())  # nothing written, "w" included


# README 1577: hyperparameters are Python numbers: np.float64 passes, other numpy scalars are a
# TypeError naming the argument
def test_hyperparameters_take_np_float64_and_refuse_other_numpy_scalars_by_name() -> None:
    assert ema.Config(schedule=np.float64(0.5)) == ema.Config(schedule=0.5)
    assert schedules.constant(np.float64(0.5)) == schedules.constant(0.5)
    with pytest.raises(TypeError, match=r"Config\.schedule .*got float32"):
        ema.Config(schedule=np.float32(0.5))
    with pytest.raises(TypeError, match=r"Config\.interval .*got int64"):
        ema.Config(interval=np.int64(2))
    with pytest.raises(TypeError, match=r"decay must be a float .*got float32"):
        schedules.warmup(np.float32(0.9))


# README 1585: MMEditing's buffers are synced by name (mmengine pairs them by position)
def test_mmedit_buffers_are_synced_by_name() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.compat import mmedit

    class Buffers(torch.nn.Module):
        def __init__(self, order: str) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            for name in order:
                self.register_buffer(name, torch.zeros(3))

    model, reordered = Buffers("ab"), Buffers("ba")
    reordered.load_state_dict(model.state_dict())
    averager = mmedit.ExponentialMovingAverage(model, 0.5)
    averager.update_parameters(model)
    reordered.get_buffer("a").fill_(1.0)
    reordered.get_buffer("b").fill_(2.0)
    averager.update_parameters(reordered)
    assert averager.module.get_buffer("a").tolist() == [1.0] * 3
    assert averager.module.get_buffer("b").tolist() == [2.0] * 3


# README 1617: save_snapshot takes numpy integers for step; directory None is a TypeError
def test_save_snapshot_takes_numpy_integer_steps_and_refuses_a_none_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ema_core.posthoc import list_snapshots, save_snapshot

    for step in (np.int64(10), np.uint16(20)):
        save_snapshot(tmp_path, {"w": np.ones(2)}, step=step, sigma_rel=0.05)  # type: ignore[arg-type]
    assert [s.step for s in list_snapshots(tmp_path)] == [10, 20]
    monkeypatch.chdir(tmp_path)  # None must not mean the working directory
    with pytest.raises(TypeError, match=r"directory must be a str or os\.PathLike"):
        save_snapshot(None, {"w": np.ones(2)}, step=30, sigma_rel=0.05)  # type: ignore[arg-type]
    assert len(list_snapshots(tmp_path)) == 2


# README 1614: sigma_rel_to_gamma alone works down to 1/1.8e308
def test_sigma_rel_to_gamma_works_down_to_one_over_1_8e308() -> None:
    from ema_core.posthoc import sigma_rel_to_gamma

    for sigma_rel in (1e-300, 1 / 1.7e308):
        gamma = sigma_rel_to_gamma(sigma_rel)
        assert np.isfinite(gamma) and gamma == pytest.approx(1 / sigma_rel, rel=1e-6)

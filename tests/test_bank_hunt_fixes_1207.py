"""EMA bank fixes of a hostile-user hunt (1207): a bank's ``save_snapshots`` (torch and JAX)
and ``save_snapshot_set`` refuse a set that could not share its directory (intervals that
differ, two snapshots of one sigma_rel) before writing anything; the refusal of configs that
differ in ``non_float`` names a remedy that exists; a failed automatic write is written again
exactly (``which=error.which``); ``save_snapshots`` before any update names the EMA at step 0.
Each test failed before its fix."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ema_core import Config, schedules
from ema_core.posthoc import list_snapshots, reconstruct, save_snapshot
from ema_core.posthoc._snapshots import save_snapshot_set

torch = pytest.importorskip("torch")

from ema_core.torch import EMABank, SnapshotWriteError  # noqa: E402

jnp = pytest.importorskip("jax.numpy")

from ema_core.jax import make_bank_update  # noqa: E402

P05, P10 = (schedules.power_function(sigma_rel=s) for s in (0.05, 0.10))
MIXED_INTERVALS = [Config(schedule=P10, interval=2), Config(schedule=P05, interval=1)]
ONE_SIGMA_REL = [Config(schedule=P10, init="copy"), Config(schedule=P10, init="zeros")]
SHARE_ONE_INTERVAL = r"must share one interval; got intervals \[2, 1\]"
OWN_SIGMA_REL = r"configs\[1\] has sigma_rel 0\.1, as configs\[0\]: .*needs its own sigma_rel"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _step(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)


def _torch_bank(configs: list[Config], steps: int) -> EMABank:
    model = _model()
    bank = EMABank(model, configs)
    for t in range(1, steps + 1):
        _step(model)
        bank.update(t)
    return bank


def _jax_states(configs: list[Config], updates: int) -> tuple[Any, tuple[Any, ...]]:
    bank = make_bank_update(configs)
    states = bank.init({"w": jnp.arange(3.0)})
    for k in range(updates):
        states = bank(states, {"w": jnp.arange(3.0) + k})
    return bank, states


def _refused_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", replace)


# 1. a set of different intervals: its directory could not be read back


def test_torch_save_snapshots_refuses_configs_of_different_intervals(tmp_path: Path) -> None:
    bank = _torch_bank(MIXED_INTERVALS, 4)
    with pytest.raises(ValueError, match=SHARE_ONE_INTERVAL):
        bank.save_snapshots(tmp_path / "snaps")
    assert _names(tmp_path / "snaps") == []
    with pytest.raises(ValueError, match=SHARE_ONE_INTERVAL):  # a rule of the bank's configs
        bank.save_snapshots(tmp_path / "snaps", which=[0])
    path = save_snapshot(tmp_path / "one", bank[0])  # one EMA alone: one interval
    assert list_snapshots(tmp_path / "one")[0].interval == 2 and path.exists()


def test_jax_save_snapshots_refuses_configs_of_different_intervals(tmp_path: Path) -> None:
    bank, states = _jax_states(MIXED_INTERVALS, 4)
    with pytest.raises(ValueError, match=SHARE_ONE_INTERVAL):
        bank.save_snapshots(tmp_path, states)
    assert _names(tmp_path) == []


def test_save_snapshot_set_refuses_a_set_of_different_intervals(tmp_path: Path) -> None:
    averages = [{"w": np.ones(2, np.float32)}, {"w": np.zeros(2, np.float32)}]
    folder = tmp_path / "snaps"
    args: dict[str, Any] = {"steps": [4, 4], "sigma_rels": [0.05, 0.1]}
    with pytest.raises(ValueError, match=r"intervals\[1\]=2 but intervals\[0\]=1: .*one interval"):
        save_snapshot_set(folder, averages, **args, intervals=[1, 2])
    assert not folder.exists()
    save_snapshot_set(folder, averages, **args, intervals=[2, 2])
    assert [s.interval for s in list_snapshots(folder)] == [2, 2]


# 2. the refusal of configs that differ names a remedy that exists


def test_configs_that_differ_in_non_float_are_told_to_agree_in_each_config() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match=r"configs\[1\]\.non_float='copy'.* must agree") as caught:
        EMABank(model, [Config(0.9, non_float="freeze"), Config(0.5)])
    assert "give each Config the same non_float" in str(caught.value)
    assert "pass non_float=" not in str(caught.value)
    for field, values in (("buffers", ("copy", "average")), ("dtype", ("float32", "float64"))):
        configs = [Config(0.9, **{field: values[0]}), Config(0.5, **{field: values[1]})]
        with pytest.raises(ValueError, match=f"pass {field}= to EMABank to set it for all"):
            EMABank(model, configs)
        bank = EMABank(model, configs, **{field: values[0]})  # the remedy works
        assert [getattr(ema.config, field) for ema in bank] == [values[0]] * 2


# 3. two EMAs of one sigma_rel: the second snapshot would overwrite the first


def test_a_torch_bank_with_snapshots_refuses_two_configs_of_one_sigma_rel(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match=OWN_SIGMA_REL):
        EMABank(_model(), ONE_SIGMA_REL, snapshot_every=2, snapshot_dir=tmp_path)
    bank = _torch_bank(ONE_SIGMA_REL, 2)  # harmless without snapshots
    assert [ema.step for ema in bank] == [2, 2]
    with pytest.raises(ValueError, match=OWN_SIGMA_REL):
        bank.save_snapshots(tmp_path)
    assert _names(tmp_path) == []


def test_a_jax_bank_with_snapshots_refuses_two_configs_of_one_sigma_rel(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=OWN_SIGMA_REL):
        make_bank_update(ONE_SIGMA_REL, snapshot_every=2, snapshot_dir=tmp_path)
    bank, states = _jax_states(ONE_SIGMA_REL, 2)
    assert [int(s.step) for s in states] == [2, 2]
    with pytest.raises(ValueError, match=OWN_SIGMA_REL):
        bank.save_snapshots(tmp_path, states)
    assert _names(tmp_path) == []


def test_save_snapshot_set_refuses_two_snapshots_of_one_step_and_sigma_rel(
    tmp_path: Path,
) -> None:
    averages = [{"w": np.ones(2, np.float32)}, {"w": np.zeros(2, np.float32)}]
    with pytest.raises(ValueError, match=r"snapshot 1 repeats .* of snapshot 0: both would be"):
        save_snapshot_set(tmp_path, averages, steps=[2, 2], sigma_rels=[0.1, 0.1], intervals=[1, 1])
    assert _names(tmp_path) == []


# 4. a failed automatic write is written again exactly: the EMAs that were due


def _apart(folder: Path) -> tuple[EMABank, torch.nn.Module]:
    """A bank whose EMAs are at steps 1 and 2 (bank[1] updated alone), snapshots every 2."""
    model = _model()
    bank = EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)
    bank.update()
    _step(model)
    bank[1].update()
    _step(model)
    return bank, model


def test_a_torch_retry_writes_exactly_the_snapshots_that_were_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (bank, _), (twin, _) = _apart(tmp_path / "snaps"), _apart(tmp_path / "twin")
    twin.update()  # steps 2 and 3: only bank[0] is due
    assert _names(tmp_path / "twin") == ["phema-0000000002-0.05.safetensors"]
    _refused_rename(monkeypatch)
    with pytest.raises(SnapshotWriteError) as caught:
        bank.update()
    error = caught.value
    assert error.which == (0,) and "bank.save_snapshots(which=[0]) before" in str(error)
    monkeypatch.undo()
    paths = bank.save_snapshots(which=error.which)
    assert _names(tmp_path / "snaps") == _names(tmp_path / "twin")  # no step-3 snapshot
    assert paths[0].read_bytes() == (tmp_path / "twin" / paths[0].name).read_bytes()


def test_a_torch_retry_of_a_bank_at_one_step_names_every_ema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = EMABank(_model(), sigma_rels=(0.05, 0.10), snapshot_every=1, snapshot_dir=tmp_path)
    _refused_rename(monkeypatch)
    with pytest.raises(SnapshotWriteError) as caught:
        bank.update()
    assert caught.value.which == (0, 1) and "bank.save_snapshots() before" in str(caught.value)


def test_a_jax_retry_writes_exactly_the_snapshots_that_were_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {"w": jnp.arange(3.0)}
    plain = make_bank_update(sigma_rels=(0.05, 0.10), donate=False)
    one = plain(plain.init(params), params)
    apart = (one[0], plain(one, params)[1])  # steps 1 and 2
    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=tmp_path)
    _refused_rename(monkeypatch)
    with pytest.raises(SnapshotWriteError) as caught:
        bank(apart, {"w": jnp.arange(3.0) + 1})
    error = caught.value
    assert error.which == (0,) and [int(s.step) for s in error.states] == [2, 3]
    assert "bank.save_snapshots(snapshot_dir, error.states, which=[0])" in str(error)
    monkeypatch.undo()
    bank.save_snapshots(tmp_path, error.states, which=error.which)
    assert _names(tmp_path) == ["phema-0000000002-0.05.safetensors"]


def test_which_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    bank = _torch_bank([Config(schedule=P05), Config(schedule=P10)], 2)
    for which, error, words in (
        ([], ValueError, r"which=\[\] names no EMA"),
        ([0, -2], ValueError, r"which\[1\]=-2 repeats EMA 0"),
        ([2], IndexError, r"which\[0\]: bank\[2\] is out of range"),
        ([1.0], TypeError, r"which\[0\]: bank\[k\] takes an int"),
        (1, TypeError, "which must be a sequence"),
    ):
        with pytest.raises(error, match=words):
            bank.save_snapshots(tmp_path, which=which)
    assert _names(tmp_path) == []
    (path,) = bank.save_snapshots(tmp_path, which=[-1])
    assert path.name == "phema-0000000002-0.1.safetensors"
    out = reconstruct(tmp_path, 0.1)
    np.testing.assert_array_equal(out["weight"], bank[1].average["weight"].numpy())


# 5. save_snapshots before any update names the EMA at step 0


def test_save_snapshots_before_an_update_names_the_ema_at_step_0(tmp_path: Path) -> None:
    bank = EMABank(_model(), sigma_rels=(0.05, 0.10))
    with pytest.raises(ValueError, match=r"^bank\[0\] is at step 0: snapshot it after an update"):
        bank.save_snapshots(tmp_path)
    jax_bank = make_bank_update(sigma_rels=(0.05, 0.10))
    states = jax_bank.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"^states\[0\] is at step 0: snapshot it after an"):
        jax_bank.save_snapshots(tmp_path, states)
    assert _names(tmp_path) == []


def test_steps_of_emas_left_out_of_which_are_not_checked(tmp_path: Path) -> None:
    """``save_snapshots(which=[1], steps=[0, 20])``: EMA 0 (at step 0) is not written, but its
    label was checked against its step and refused ("steps[0]=0 is not a multiple of
    states[0].step (0)")."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import make_bank_update

    bank = make_bank_update(sigma_rels=(0.05, 0.1))
    params = {"w": jnp.ones(2)}
    updated = bank(bank(bank.init(params), params), params)
    states = (bank.init(params)[0], updated[1])  # EMA 0 at step 0, EMA 1 at step 2
    (path,) = bank.save_snapshots(tmp_path, states, which=[1], steps=[0, 20])
    assert path.name == "phema-0000000020-0.1.safetensors"
    with pytest.raises(ValueError, match=r"steps\[1\]=21 is not a multiple of states\[1\]"):
        bank.save_snapshots(tmp_path / "b", states, which=[1], steps=[0, 21])

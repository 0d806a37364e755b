"""``make_bank_update`` under hostile but realistic use (issue 16): a call refused midway must
not move the host's snapshot step count, a snapshot directory that is (or became) a file is
refused before the call donates anything, a donated state passed again is named. Each case
failed before its fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ema_core import Config

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from ema_core.jax import make_bank_update  # noqa: E402
from ema_core.posthoc import list_snapshots  # noqa: E402


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("not a directory")
    return path


def test_jax_refused_call_does_not_shift_the_snapshot_steps(tmp_path: Path) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=tmp_path)
    params = {"w": jnp.arange(3.0)}
    states = bank(bank.init(params), params)
    with pytest.raises(ValueError, match="structure"):
        bank(states, {"v": jnp.arange(3.0)})  # refused: the same states go on below
    for _ in range(3):
        states = bank(states, params)
    assert [int(s.step) for s in states] == [4, 4]
    assert sorted({s.step for s in list_snapshots(tmp_path)}) == [2, 4]


def test_jax_bank_refuses_a_snapshot_dir_that_is_a_file(tmp_path: Path) -> None:
    path = _a_file(tmp_path)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        make_bank_update(sigma_rels=(0.05,), snapshot_every=1, snapshot_dir=path)


def test_jax_bank_refuses_the_call_before_donating_when_its_dir_became_a_file(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "snaps"
    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)
    params = {"w": jnp.arange(3.0)}
    states = bank(bank.init(params), params)
    folder.write_text("replaced by a file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        bank(states, params)
    assert not any(s.step.is_deleted() for s in states)  # not donated: the states live on
    assert [int(s.step) for s in states] == [1, 1]
    assert os.path.isfile(folder)


def test_jax_bank_names_a_donated_state_passed_again() -> None:
    bank = make_bank_update([Config(schedule=0.9), Config(schedule=0.5)])
    params = {"w": jnp.arange(3.0)}
    states = bank.init(params)
    bank(states, params)
    with pytest.raises(ValueError, match=r"states\[0\] was donated .* donate=False"):
        bank(states, params)


def test_jax_bank_writes_each_ema_at_its_own_steps(tmp_path: Path) -> None:
    """EMAs whose steps differ (one resumed a step ahead) each write at their own multiples of
    snapshot_every, as the torch bank does; the first EMA's step used to decide for all."""
    import ema_core

    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=tmp_path)
    params = {"w": jnp.arange(3.0)}
    first, second = bank.init(params)
    states = (first, ema_core.update(second, params, bank.configs[1]))
    for _ in range(4):
        states = bank(states, params)
    assert [int(s.step) for s in states] == [4, 5]
    written = sorted((s.step, round(s.sigma_rel, 6)) for s in list_snapshots(tmp_path))
    assert written == [(2, 0.05), (2, 0.1), (4, 0.05), (4, 0.1)]


def test_jax_bank_save_snapshots_refuses_steps_of_another_length(tmp_path: Path) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    states = bank.init({"w": jnp.arange(3.0)})
    with pytest.raises(ValueError, match=r"steps must hold one step per EMA \(2\), got 1"):
        bank.save_snapshots(tmp_path, states, steps=[3])
    with pytest.raises(TypeError, match="steps must be a sequence"):
        bank.save_snapshots(tmp_path, states, steps=7)  # type: ignore[arg-type]
    assert list_snapshots(tmp_path) == []

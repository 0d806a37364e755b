"""A bank's update and its snapshots are one step from the user's view: what the snapshot
writer would refuse (a folder at a file's name, a loop of links, a folder that is not
writable, a leaf a snapshot cannot hold) is refused before any shadow changes (a JAX bank:
before it donates its states); a write that fails after the update (a full disk, a file system
gone read-only) leaves the update applied and says so (``SnapshotWriteError``: the step, that
the update was applied, how to write the snapshots again), and the bank's ``save_snapshots``
then writes the very files the update would have written. Each case failed before its fix."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core  # noqa: E402
from ema_core._bank_snapshots import SnapshotWriteError  # noqa: E402
from ema_core.posthoc import list_snapshots  # noqa: E402
from ema_core.torch import EMABank  # noqa: E402

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from ema_core.jax import make_bank_update  # noqa: E402


def _torch_bank(folder: Path, dtype: torch.dtype = torch.float32) -> EMABank:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, dtype=dtype)
    return EMABank(model, sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)


def _move(bank: EMABank, by: float = 1.0) -> None:
    with torch.no_grad():
        for ema in bank:
            for tensor in ema._bound.live:
                tensor.add_(by)


def _shadows(bank: EMABank) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in ema.average.items()} for ema in bank]


def _assert_unchanged(bank: EMABank, before: list[dict[str, torch.Tensor]], step: int) -> None:
    assert [ema.step for ema in bank] == [step] * len(bank)
    for ema, saved in zip(bank, before, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, saved[name]), name


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _deny_writes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``os.access`` answers as for a user without write permission in ``folder`` (the tests
    run as root, which may write anywhere)."""
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _refused_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", replace)


def _loop(folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).symlink_to(folder / name)


TORCH_REFUSALS = {
    "folder at a name": (
        lambda folder, mp: (folder / "phema-0000000002-0.1.safetensors").mkdir(parents=True),
        ValueError,
        r"holds a folder named 'phema-0000000002-0\.1\.safetensors'",
    ),
    "loop of links": (
        lambda folder, mp: _loop(folder, "phema-0000000002-0.05.safetensors"),
        OSError,
        "is a loop of symbolic links",
    ),
    "not writable": (
        lambda folder, mp: (folder.mkdir(), _deny_writes(mp, folder)),
        PermissionError,
        r"snapshot_dir='.*snaps': the folder '.*snaps' is not writable.*Nothing was updated",
    ),
    "missing folder under one not writable": (
        lambda folder, mp: _deny_writes(mp, folder.parent),
        PermissionError,
        r"the folder '.*' is not writable \(the snapshots, or the missing folders",
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_REFUSALS))
def test_a_torch_bank_refuses_a_snapshot_it_cannot_write_before_updating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    folder = tmp_path / "snaps"
    bank = _torch_bank(folder)
    bank.update()  # step 1: no snapshot due
    make, error, words = TORCH_REFUSALS[case]
    make(folder, monkeypatch)
    made = _names(folder)
    _move(bank)
    before = _shadows(bank)
    with pytest.raises(error, match=words):
        bank.update()  # step 2: snapshots due
    _assert_unchanged(bank, before, 1)
    assert _names(folder) == made


def test_a_torch_bank_refuses_a_leaf_a_snapshot_cannot_hold_before_updating(
    tmp_path: Path,
) -> None:
    # refused when the bank is built (since 2026-12-05; it was refused at each due step)
    named = {"w": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}
    with pytest.raises(TypeError, match=r"snapshot_every=1: .*averages\['z'\] has dtype complex64"):
        EMABank(named, sigma_rels=(0.05,), snapshot_every=1, snapshot_dir=tmp_path)
    assert _names(tmp_path) == []


def test_a_torch_bank_whose_write_fails_says_the_update_stands_and_writes_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, twin_folder = tmp_path / "snaps", tmp_path / "twin"
    bank, twin = _torch_bank(folder), _torch_bank(twin_folder)
    for b in (bank, twin):
        b.update()
        _move(b)
    twin.update()
    _refused_rename(monkeypatch)
    with pytest.raises(SnapshotWriteError) as caught:
        bank.update()
    error = caught.value
    assert isinstance(error, OSError) and error.errno == errno.EROFS
    assert error.step == 2 and error.states is None
    assert str(error).startswith("[Errno 30] Read-only file system: the bank's update of step 2 ")
    for words in ("was applied", "snapshots of step 2 were not written", "bank.save_snapshots()"):
        assert words in str(error)
    assert [ema.step for ema in bank] == [2, 2]  # the update stands, as the twin's
    for ema, other in zip(bank, twin, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, other.average[name])
    assert _names(folder) == []  # none of the set, no temporary
    monkeypatch.undo()
    paths = bank.save_snapshots()
    assert [p.name for p in paths] == _names(twin_folder)
    for path in paths:
        assert path.read_bytes() == (twin_folder / path.name).read_bytes()


def test_torch_save_snapshots_needs_a_directory_and_power_functions(tmp_path: Path) -> None:
    from ema_core import Config

    bank = EMABank(torch.nn.Linear(2, 2), sigma_rels=(0.05,))
    with pytest.raises(TypeError, match="needs a directory: this bank has no snapshot_dir"):
        bank.save_snapshots()
    bank.update()
    (path,) = bank.save_snapshots(tmp_path / "made")
    assert path.name == "phema-0000000001-0.05.safetensors"
    plain = EMABank(torch.nn.Linear(2, 2), [Config(schedule=0.9)])
    with pytest.raises(ValueError, match=r"configs\[0\] has no sigma_rel"):
        plain.save_snapshots(tmp_path)


def _jax_bank(folder: Path) -> tuple[Any, dict[str, Any], tuple[Any, ...]]:
    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)
    params = {"w": jnp.arange(3.0)}
    return bank, params, bank(bank.init(params), params)


@pytest.mark.parametrize("case", sorted(TORCH_REFUSALS))
def test_a_jax_bank_refuses_a_snapshot_it_cannot_write_before_donating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    folder = tmp_path / "snaps"
    bank, params, states = _jax_bank(folder)
    make, error, words = TORCH_REFUSALS[case]
    make(folder, monkeypatch)
    with pytest.raises(error, match=words):
        bank(states, params)
    assert not any(s.step.is_deleted() or s.shadow["w"].is_deleted() for s in states)
    assert [int(s.step) for s in states] == [1, 1]
    monkeypatch.undo()
    shutil.rmtree(folder, ignore_errors=True)
    states = bank(states, params)  # the same states go on, the step count unmoved
    assert {s.step for s in list_snapshots(folder)} == {2}


def test_a_jax_bank_refuses_a_leaf_a_snapshot_cannot_hold_before_donating(
    tmp_path: Path,
) -> None:
    # bank.init refuses such a leaf before training (test_bank_hunt_fixes_1209); states made
    # another way are refused at the due step, before donation
    bank = make_bank_update(sigma_rels=(0.05,), snapshot_every=1, snapshot_dir=tmp_path)
    params = {"w": jnp.ones(2), "z": jnp.ones(2, dtype=jnp.complex64)}
    states = tuple(ema_core.init(params, c) for c in bank.configs)
    with pytest.raises(TypeError, match=r"averages\['z'\] has dtype complex64"):
        bank(states, params)
    assert not states[0].shadow["w"].is_deleted() and int(states[0].step) == 0
    assert _names(tmp_path) == []


def test_a_jax_bank_whose_write_fails_hands_back_the_new_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank, params, states = _jax_bank(tmp_path / "snaps")
    twin, _, twin_states = _jax_bank(tmp_path / "twin")
    moved = {"w": params["w"] + 1.0}
    twin_states = twin(twin_states, moved)
    _refused_rename(monkeypatch)
    with pytest.raises(SnapshotWriteError) as caught:
        bank(states, moved)
    error = caught.value
    assert error.errno == errno.EROFS and error.step == 2
    assert "the bank's update of step 2 was applied" in str(error)
    assert "bank.save_snapshots(snapshot_dir, error.states)" in str(error)
    assert _names(tmp_path / "snaps") == []
    new = error.states
    assert [int(s.step) for s in new] == [2, 2]
    for s, t in zip(new, twin_states, strict=True):
        np.testing.assert_array_equal(np.asarray(s.shadow["w"]), np.asarray(t.shadow["w"]))
    monkeypatch.undo()
    paths = bank.save_snapshots(tmp_path / "snaps", new)
    assert [p.name for p in paths] == _names(tmp_path / "twin")
    for path in paths:
        assert path.read_bytes() == (tmp_path / "twin" / path.name).read_bytes()
    states = bank(new, moved)  # the bank carries on from the handed-back states
    assert [int(s.step) for s in states] == [3, 3]

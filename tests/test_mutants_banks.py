"""Tests that the third mutation-testing audit (the EMA banks: ``_banks``, ``_bank_snapshots``,
the torch ``EMABank`` and the JAX ``make_bank_update``) found missing: each kills a small
plausible bug that the rest of the suite let through."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ema_core import _bank_snapshots, _banks, _snapshot_args

torch = pytest.importorskip("torch")

from ema_core.torch import EMABank  # noqa: E402


def _model() -> torch.nn.Module:
    return torch.nn.Linear(2, 1, bias=False)


def test_a_snapshot_dir_that_is_a_file_is_refused_when_the_bank_is_built(tmp_path: Path) -> None:
    """A bank whose snapshot_dir is an existing file could never write a snapshot: it is
    refused when built, not only at the first update that writes one."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        _snapshot_args.check_snapshots(2, blocker, _banks.power_configs([0.05], 1))
    with pytest.raises(ValueError, match="is a file, not a directory"):
        EMABank(_model(), sigma_rels=(0.05,), snapshot_every=2, snapshot_dir=blocker / "sub")


def test_an_empty_snapshot_dir_is_refused_not_taken_for_the_working_directory() -> None:
    """``snapshot_dir=""`` is refused as empty: it is not read as "." (the snapshots would
    land in whatever the working directory is)."""
    with pytest.raises(ValueError, match="snapshot_dir='' is empty"):
        _snapshot_args.check_snapshot_dir("")
    with pytest.raises(ValueError, match="snapshot_dir='' is empty"):
        EMABank(_model(), sigma_rels=(0.05,), snapshot_every=2, snapshot_dir="")


def test_bank_index_takes_minus_k_to_k_minus_1_as_a_tuple_does() -> None:
    """``bank[-K]`` is the first EMA, as for a tuple; ``bank[-K - 1]`` and ``bank[K]`` are
    out of range (not wrapped around to an EMA)."""
    assert _banks.index("bank", -3, 3) == 0
    bank = EMABank(_model(), sigma_rels=(0.05, 0.10))
    assert bank[-2] is bank[0]
    for k in (-3, 2):
        with pytest.raises(IndexError, match=rf"bank\[{k}\] is out of range: the bank has 2"):
            bank[k]
    with pytest.raises(TypeError, match="bank\\[k\\] takes an int k, got bool True"):
        bank[True]  # a bool is no index here, though operator.index takes it


def _refuse_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_snapshot_write_names_the_latest_step_only_after_an_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an update (``retry`` given) a failed write becomes a ``SnapshotWriteError`` that
    names the latest step of the set and carries the states; a plain ``save_snapshots`` call
    (no ``retry``) gets the ``OSError`` itself, with no words about an applied update."""
    _refuse_renames(monkeypatch)
    averages = [{"w": np.ones(2, np.float32)}, {"w": np.zeros(2, np.float32)}]
    args: dict[str, Any] = {"steps": [4, 2], "sigma_rels": [0.05, 0.1], "intervals": [2, 2]}
    with pytest.raises(_bank_snapshots.SnapshotWriteError) as caught:
        _bank_snapshots.write_set(tmp_path, averages, **args, retry="again()", states="new")
    assert (caught.value.step, caught.value.states) == (4, "new")
    assert "update of step 4 was applied" in str(caught.value)
    with pytest.raises(OSError) as plain:
        _bank_snapshots.write_set(tmp_path, averages, **args, retry=None)
    assert type(plain.value) is OSError and plain.value.errno == errno.EROFS
    assert "applied" not in str(plain.value)


def test_a_jax_bank_reads_the_step_of_states_it_did_not_make(tmp_path: Path) -> None:
    """A JAX bank with snapshots counts steps on the host only while it is handed back the
    states it made: given other states (a resume, or new ones), it reads their step, so new
    states at step 0 write nothing at their first update and the step-2 set at their second."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import make_bank_update

    bank = make_bank_update(sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=tmp_path)
    params = {"w": jnp.arange(3.0)}
    bank(bank.init(params), params)  # step 1: no snapshot
    states = bank(bank.init(params), params)  # other states, step 0 -> 1: still none
    assert [int(s.step) for s in states] == [1, 1]
    assert list(tmp_path.iterdir()) == []
    bank(states, params)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["phema-0000000002-0.05.safetensors", "phema-0000000002-0.1.safetensors"]


def _torch_bank(folder: Path) -> EMABank:
    torch.manual_seed(0)
    return EMABank(_model(), sigma_rels=(0.05, 0.10), snapshot_every=2, snapshot_dir=folder)


def _after_one_update(bank: EMABank) -> list[torch.Tensor]:
    bank.update()
    with torch.no_grad():
        bank[0]._bound.live[0].add_(1.0)
    return [ema.average["weight"].clone() for ema in bank]


def _assert_not_updated(bank: EMABank, before: list[torch.Tensor]) -> None:
    assert [ema.step for ema in bank] == [1, 1]
    for ema, saved in zip(bank, before, strict=True):
        assert torch.equal(ema.average["weight"], saved)


def test_a_folder_that_cannot_be_entered_is_refused_before_the_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are made in a folder only with both write and search (x) permission: a folder
    writable but not searchable refuses the update before any shadow changes."""
    folder = tmp_path / "snaps"
    folder.mkdir()
    bank = _torch_bank(folder)
    before = _after_one_update(bank)
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == folder and mode & os.X_OK:
            return False  # as for a user without search permission (the tests run as root)
        return real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(PermissionError, match=r"the folder '.*snaps' is not writable"):
        bank.update()
    _assert_not_updated(bank, before)


def test_a_jax_bank_writes_snapshots_at_the_steps_it_is_given(tmp_path: Path) -> None:
    """``save_snapshots(..., steps=...)`` names the files by the steps given, not the states'."""
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.jax import make_bank_update

    bank = make_bank_update(sigma_rels=(0.05, 0.10))
    params = {"w": jnp.arange(3.0)}
    states = bank(bank.init(params), params)  # step 1
    paths = bank.save_snapshots(tmp_path, states, steps=[6, 6])
    names = sorted(p.name for p in paths)
    assert names == ["phema-0000000006-0.05.safetensors", "phema-0000000006-0.1.safetensors"]


def test_a_file_put_at_snapshot_dir_after_building_refuses_the_update(tmp_path: Path) -> None:
    """A file put where the snapshot folder was (after the bank was built) is refused before
    the update that would write into it, as a ValueError naming snapshot_dir."""
    folder = tmp_path / "snaps"
    bank = _torch_bank(folder)
    before = _after_one_update(bank)
    folder.write_text("in the way")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        bank.update()
    _assert_not_updated(bank, before)


def test_a_step_0_update_writes_no_snapshot(tmp_path: Path) -> None:
    """Step 0 is a multiple of every ``snapshot_every``, but no update ends there: a bank
    updated at step 0 writes no snapshot."""
    bank = _torch_bank(tmp_path)
    bank.update(0)
    assert list(tmp_path.iterdir()) == []


def test_a_bank_refuses_configs_that_differ_in_non_float() -> None:
    """The EMAs of a torch bank share one pass over the same tensors, so their configs must
    agree on ``non_float`` too (as on ``buffers`` and ``dtype``)."""
    from ema_core import Config

    with pytest.raises(ValueError, match=r"configs\[1\].non_float='freeze' but configs\[0\]"):
        EMABank(_model(), [Config(), Config(non_float="freeze")])


def test_a_bank_state_dict_with_an_extra_ema_is_refused_by_count() -> None:
    """A bank ``state_dict`` holding more EMAs than the bank is refused, saying both counts
    (not loaded into the first K)."""
    bank = EMABank(_model(), sigma_rels=(0.05, 0.10))
    state = bank.state_dict()
    state["emas"].append(state["emas"][0])
    with pytest.raises(ValueError, match=r"state_dict\['emas'\] holds 3 EMAs; this bank has 2"):
        bank.load_state_dict(state)

"""Tests that the third mutation-testing audit found missing in post-hoc snapshots: the step's
bound and the ``policies`` / ``aliases`` records ``save_snapshot_set`` checks before writing.
Each kills a small plausible bug that the rest of the suite let through."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ema_core.posthoc import list_snapshots, save_snapshot
from ema_core.posthoc._snapshots import save_snapshot_set


def _save_set(folder: Path, averages: dict[str, Any], **records: Any) -> list[Path]:
    return save_snapshot_set(
        folder, [averages], steps=[10], sigma_rels=[0.05], intervals=[1], **records
    )


def test_the_first_step_past_2_to_the_53_is_refused(tmp_path: Path) -> None:
    """2**53 is the last step float64 holds with its neighbours apart: it is written, and the
    step right after it is refused (the bound is exact, not off by one)."""
    save_snapshot(tmp_path / "ok", {"w": np.ones(2)}, step=2**53, sigma_rel=0.05)
    assert list_snapshots(tmp_path / "ok")[0].step == 2**53
    with pytest.raises(ValueError, match=r"step must be <= 2\*\*53"):
        save_snapshot(tmp_path / "no", {"w": np.ones(2)}, step=2**53 + 1, sigma_rel=0.05)
    assert not (tmp_path / "no").exists()


def test_policies_must_name_every_array(tmp_path: Path) -> None:
    """A ``policies`` record that leaves an array out is refused, naming the rule, and nothing
    is written."""
    averages = {"w": np.ones(2, np.float32), "n": np.zeros((), np.int64)}
    with pytest.raises(ValueError, match="policies must map each array name"):
        _save_set(tmp_path, averages, policies=[{"w": "average"}])
    assert os.listdir(tmp_path) == []


def test_an_alias_may_not_be_an_arrays_own_name(tmp_path: Path) -> None:
    """An alias is another name of an array; one that is itself an array's name would make
    ``reconstruct(like=...)`` fill that array from another: refused."""
    averages = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="an alias must not be an array's name"):
        _save_set(tmp_path, averages, aliases=[{"b": "a"}])
    assert os.listdir(tmp_path) == []


def test_an_integer_array_cannot_be_given_the_average_policy(tmp_path: Path) -> None:
    """Only float arrays are averaged: a ``policies`` record saying ``"average"`` for an int64
    counter is refused before anything is written."""
    averages = {"w": np.ones(2, np.float32), "n": np.zeros((), np.int64)}
    policies = [{"w": "average", "n": "average"}]
    with pytest.raises(ValueError, match=r"policies\['n'\] is 'average', but the array is int64"):
        _save_set(tmp_path, averages, policies=policies)
    assert os.listdir(tmp_path) == []

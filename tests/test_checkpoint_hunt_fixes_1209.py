"""Checkpoint messages a hostile-user hunt of 2026-12-05 found misleading, each pinned: a save
below a path that is a file (told to create a folder that cannot be created) and ``strict=``
given a numpy bool (the message said "must be a bool, got bool")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ema_core
from ema_core.checkpoint import load, save


def _state() -> ema_core.EMAState:
    return ema_core.init({"w": np.ones(3, dtype=np.float32)})


@pytest.mark.parametrize("depth", [1, 2])
def test_save_below_a_file_names_the_file(tmp_path: Path, depth: int) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    path = blocker.joinpath(*["sub"] * (depth - 1), "ema.safetensors")
    with pytest.raises(NotADirectoryError, match="which is a file, not a folder") as info:
        save(path, _state())
    assert repr(str(blocker)) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert blocker.read_text() == "not a folder"


def test_save_into_missing_folder_still_says_create_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create the folder first"):
        save(tmp_path / "missing" / "ema.safetensors", _state())


def test_numpy_bool_strict_is_named_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "ema.safetensors"
    save(path, _state())
    with pytest.raises(TypeError, match=r"strict must be a bool \(True or False\), got np\.True_"):
        load(path, _state(), strict=np.True_)  # type: ignore[arg-type]


def test_numpy_bool_strict_torch_load_state_dict() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    ema = EMA(torch.nn.Linear(2, 2), decay=0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(TypeError, match=r"strict must be a bool \(True or False\), got np\.False_"):
        ema.load_state_dict(ema.state_dict(), strict=np.False_)  # type: ignore[arg-type]
    after = ema.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())

"""Post-hoc snapshots under hostile but realistic conditions (review leftovers): a missing or
non-directory snapshot directory is refused by name (Python API and CLI, no traceback); the
CLI refuses an ``--out`` that would be a snapshot-named file among the snapshots before it
computes anything; an EMA bank's K snapshots of one step are written all or none, under a real
write failure (``os.fsync`` reporting a full disk for one file, a rename refused, a folder in
the way). Symbolic links and checkpoints: ``test_leftovers_files``."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ema_core.posthoc import list_snapshots, reconstruct, save_snapshot  # noqa: E402
from ema_core.posthoc.__main__ import main as posthoc_main  # noqa: E402
from ema_core.torch import EMABank  # noqa: E402

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from ema_core.jax import make_bank_update  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _snapshots(folder: Path) -> Path:
    for step in (10, 20):
        for sigma in (0.05, 0.10):
            save_snapshot(folder, {"w": np.full(2, step, np.float32)}, step=step, sigma_rel=sigma)
    return folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "call", [list_snapshots, lambda d: reconstruct(d, 0.05)], ids=["list", "reconstruct"]
)
def test_a_missing_snapshot_directory_is_named(tmp_path: Path, call: Callable[[Path], Any]) -> None:
    with pytest.raises(FileNotFoundError, match=r"directory '.*gone' does not exist: give the"):
        call(tmp_path / "gone")


def test_a_snapshot_directory_that_is_a_file_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"directory '.*file' is a file, not a folder"):
        list_snapshots(tmp_path / "file")


def test_the_cli_names_a_missing_directory_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "ema.safetensors"
    argv = [str(tmp_path / "gone"), "--sigma-rel", "0.05", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "ema_core.posthoc", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist: give the folder the snapshots were written to" in proc.stderr
    assert "gone" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "sigmas"),
    [
        ("phema-0000000020-0.07.safetensors", ["0.07"]),
        ("phema-0000000020.safetensors", ["0.07", "0.08"]),  # -> phema-0000000020-0.07...
    ],
)
def test_the_cli_refuses_an_out_named_like_a_snapshot_among_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, sigmas: list[str]
) -> None:
    folder = _snapshots(tmp_path / "snaps")
    before = _names(folder)
    with pytest.raises(SystemExit) as exit_info:
        posthoc_main([str(folder), "--sigma-rel", *sigmas, "--out", str(folder / name)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "would be a snapshot-named file in the snapshot directory" in err
    assert "snapshot 1/" not in err  # refused before reading a snapshot
    assert _names(folder) == before
    assert len(list_snapshots(folder)) == 4


def test_the_cli_writes_other_names_into_the_snapshot_directory(tmp_path: Path) -> None:
    folder = _snapshots(tmp_path / "snaps")
    out = folder / "ema.safetensors"
    assert posthoc_main([str(folder), "--sigma-rel", "0.07", "--out", str(out)]) == 0
    assert out.is_file() and len(list_snapshots(folder)) == 4


def _full_disk_on_file(monkeypatch: pytest.MonkeyPatch, which: int) -> None:
    """``os.fsync`` of the ``which``-th regular file reports a full disk (ENOSPC)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(fd)
            if len(seen) == which:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _refused_rename(monkeypatch: pytest.MonkeyPatch, which: int) -> None:
    """``os.replace`` fails on its ``which``-th call (a file system gone read-only)."""
    real, calls = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == which:
            raise OSError(errno.EROFS, "Read-only file system")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


FAILURES = {
    "fsync": (_full_disk_on_file, "No space left on device"),
    "rename": (_refused_rename, "Read-only file system"),
}


def _torch_bank(folder: Path) -> tuple[EMABank, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return EMABank(
        model, sigma_rels=(0.05, 0.10, 0.15), snapshot_every=1, snapshot_dir=folder
    ), model


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_torch_bank_writes_its_snapshots_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    folder = tmp_path / "snaps"
    bank, _ = _torch_bank(folder)
    bank.update()
    assert len(list_snapshots(folder)) == 3
    inject, words = FAILURES[failure]
    inject(monkeypatch, 2)
    with pytest.raises(OSError, match=words):
        bank.update()
    monkeypatch.undo()
    assert {s.step for s in list_snapshots(folder)} == {1}  # none of step 2's set
    assert len(_names(folder)) == 3  # and no temporary left


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_jax_bank_writes_its_snapshots_all_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    bank = make_bank_update(sigma_rels=(0.05, 0.10, 0.15), snapshot_every=1, snapshot_dir=tmp_path)
    params = {"w": jnp.arange(3.0)}
    states = bank(bank.init(params), params)
    inject, words = FAILURES[failure]
    inject(monkeypatch, 3)
    with pytest.raises(OSError, match=words):
        bank(states, params)
    monkeypatch.undo()
    assert {s.step for s in list_snapshots(tmp_path)} == {1}
    assert len(_names(tmp_path)) == 3


def test_a_bank_with_a_folder_in_a_snapshots_way_writes_none_of_the_set(tmp_path: Path) -> None:
    folder = tmp_path / "snaps"
    bank, _ = _torch_bank(folder)
    folder.mkdir()
    (folder / "phema-0000000001-0.15.safetensors").mkdir()  # the third EMA's file
    with pytest.raises(ValueError, match=r"holds a folder named 'phema-0000000001-0\.15"):
        bank.update()
    assert _names(folder) == ["phema-0000000001-0.15.safetensors"]

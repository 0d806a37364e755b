"""Files under hostile but realistic paths (review leftovers): ``checkpoint.save`` onto a symbolic
link writes the link's target and keeps the link, as ``open(path, "wb")`` and ``torch.save`` do
(also the shared writer's other users: the post-hoc CLI's ``--out``); a dangling link writes its
target where the target's folder exists and is refused by name where it does not; ``load`` of a
directory is a ``ValueError`` naming ``path``; a diffusers export writes both files or neither.
Post-hoc and bank snapshots: ``test_leftovers_files_snapshots``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core as ema  # noqa: E402
from ema_core import presets  # noqa: E402
from ema_core._atomic import write_atomic  # noqa: E402
from ema_core.checkpoint import load, save  # noqa: E402
from ema_core.checkpoint._export import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, export  # noqa: E402
from ema_core.posthoc import save_snapshot  # noqa: E402
from ema_core.posthoc.__main__ import main as posthoc_main  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX")


def _state(value: float) -> ema.EMAState:
    return ema.init({"w": np.full(3, value, dtype=np.float32)})


def _like() -> ema.EMAState:
    return _state(0.0)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("relative", [False, True])
def test_save_onto_a_link_replaces_its_target_and_keeps_the_link(
    tmp_path: Path, relative: bool
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    target = save(real / "ema-v1.safetensors", _state(1.0))
    link = tmp_path / "latest.safetensors"
    pointer = os.path.join("real", "ema-v1.safetensors") if relative else str(target)
    link.symlink_to(pointer)
    assert save(link, _state(2.0)) == link
    assert link.is_symlink() and os.readlink(link) == pointer  # the link is still the link
    np.testing.assert_array_equal(load(target, _like()).shadow["w"], np.full(3, 2.0))
    assert _names(tmp_path) == ["latest.safetensors", "real"]  # no temporary left anywhere
    assert _names(real) == ["ema-v1.safetensors"]


def test_save_through_a_chain_of_links_writes_the_last_target(tmp_path: Path) -> None:
    target = save(tmp_path / "ema.safetensors", _state(1.0))
    (tmp_path / "b").symlink_to("ema.safetensors")
    (tmp_path / "a").symlink_to("b")
    save(tmp_path / "a", _state(3.0))
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()
    np.testing.assert_array_equal(load(target, _like()).shadow["w"], np.full(3, 3.0))


def test_save_onto_a_link_keeps_the_targets_permissions(tmp_path: Path) -> None:
    target = save(tmp_path / "ema.safetensors", _state(1.0))
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    save(link, _state(2.0))
    np.testing.assert_array_equal(load(target, _like()).shadow["w"], np.full(3, 2.0))
    assert target.stat().st_mode & 0o777 == 0o600  # the new target keeps the old one's mode


def test_save_onto_a_dangling_link_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "latest.safetensors"
    link.symlink_to("step-100.safetensors")  # not written yet: the link dangles
    save(link, _state(4.0))
    assert link.is_symlink()
    loaded = load(tmp_path / "step-100.safetensors", _like())
    np.testing.assert_array_equal(loaded.shadow["w"], np.full(3, 4.0))


def test_save_onto_a_link_into_a_missing_folder_is_refused_by_name(tmp_path: Path) -> None:
    link = tmp_path / "latest.safetensors"
    link.symlink_to(tmp_path / "gone" / "ema.safetensors")
    with pytest.raises(
        FileNotFoundError,
        match=r"path '.*latest\.safetensors' is a symbolic "
        r"link to '.*gone/ema\.safetensors', which lies in a folder that does not",
    ):
        save(link, _state(1.0))
    assert _names(tmp_path) == ["latest.safetensors"] and link.is_symlink()


def test_save_into_a_missing_folder_names_the_path_not_a_temporary(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "ema.safetensors"
    with pytest.raises(FileNotFoundError, match=r"path '.*gone/ema\.safetensors' lies in a fold"):
        save(path, _state(1.0))


def test_save_onto_a_loop_of_links_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match=r"path '.*/a' is a loop of symbolic links"):
        save(tmp_path / "a", _state(1.0))
    assert _names(tmp_path) == ["a", "b"]


def test_the_shared_writer_and_the_posthoc_cli_write_through_links(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to("real.bin")
    write_atomic(tmp_path / "link.bin", lambda f: f.write(b"new"))
    assert (tmp_path / "link.bin").is_symlink()
    assert (tmp_path / "real.bin").read_bytes() == b"new"
    snaps, out = tmp_path / "snaps", tmp_path / "out"
    out.mkdir()
    for step in (10, 20):
        save_snapshot(snaps, {"w": np.full(2, step, np.float32)}, step=step, sigma_rel=0.05)
    (out / "real.safetensors").write_bytes(b"old")
    (out / "ema.safetensors").symlink_to("real.safetensors")
    argv = [str(snaps), "--sigma-rel", "0.05", "--out", str(out / "ema.safetensors")]
    assert posthoc_main(argv) == 0
    assert (out / "ema.safetensors").is_symlink()
    assert (out / "real.safetensors").read_bytes() != b"old"
    assert _names(out) == ["ema.safetensors", "real.safetensors"]


def test_load_of_a_directory_is_a_value_error_naming_path(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"path '.*' is a directory; load reads a file written by "
        r"ema_core\.checkpoint\.save",
    ):
        load(tmp_path, _like())
    with pytest.raises(ValueError, match="is a directory"):  # before any other argument
        load(tmp_path, None, config="not a config")  # type: ignore[arg-type]
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"path '.*link' is a directory"):
        load(link, _like())


def test_diffusers_export_writes_both_files_or_neither(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    averaged = EMA(model, config=presets.diffusers())
    folder = tmp_path / "unet_ema"
    (folder / DIFFUSERS_CONFIG).mkdir(parents=True)  # config.json cannot be replaced
    with pytest.raises(OSError):
        export(averaged, format="diffusers", path=folder, model_config={"in": 2})
    assert _names(folder) == [DIFFUSERS_CONFIG]  # no weights without their config
    assert DIFFUSERS_WEIGHTS not in _names(folder)

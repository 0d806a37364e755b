"""ema_core._atomic: a file is its old self or the whole new one; no temporary file is left."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ema_core import _atomic
from ema_core._atomic import atomic_path, write_atomic


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, lambda f: f.write(b"old"))
    write_atomic(path, lambda f: f.write(b"new!"))
    assert path.read_bytes() == b"new!"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_crash_at_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    seen = []

    def crash(src, dst):
        seen.append(Path(src).read_bytes())  # the new content was complete before the rename
        raise OSError("power cut")

    monkeypatch.setattr(_atomic.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        write_atomic(path, lambda f: f.write(b"new"))
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(_atomic.os, "fsync", lambda fd: synced.append(os.fstat(fd)) or real(fd))
    write_atomic(tmp_path / "f", lambda f: f.write(b"x"))
    kinds = [stat.S_ISDIR(s.st_mode) for s in synced]
    assert False in kinds  # the file
    assert kinds[-1] is True  # then the directory, after the rename


def test_atomic_path_for_name_based_writers(tmp_path):
    path = tmp_path / "g.txt"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".g.txt.")
        tmp.write_text("hello")
        assert not path.exists()
    assert path.read_text() == "hello"
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("bye")
        raise KeyboardInterrupt
    assert path.read_text() == "hello"
    assert os.listdir(tmp_path) == ["g.txt"]


def _read_fifo(path: Path, got: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_is_written_into_not_replaced_by_a_file(tmp_path: Path) -> None:
    """``open(path, "wb")`` writes into a FIFO or a device; a rename would replace the node
    with a regular file (as root, ``--out /dev/null`` replaced /dev/null itself)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    write_atomic(fifo, lambda f: f.write(b"through"))
    reader.join(timeout=30)
    assert got == [b"through"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_a_checkpoint_saved_to_a_fifo_or_device_leaves_the_node(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    import ema_core as ema
    from ema_core import checkpoint

    state = ema.init({"w": np.ones(3, np.float32)})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    checkpoint.save(fifo, state)
    reader.join(timeout=30)
    assert len(got) == 1 and len(got[0]) > 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    if os.geteuid() == 0:  # a device node of its own, as /dev/null (1, 3): only root makes one
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        checkpoint.save(node, state)
        assert stat.S_ISCHR(os.stat(node).st_mode)
    assert sorted(os.listdir(tmp_path)) == sorted(["pipe"] + ["null"] * (os.geteuid() == 0))


def test_a_temporary_that_cannot_be_made_raises_its_own_error_and_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of a set's temporaries fails (no permission, a full disk): its own OSError
    comes out, and the first temporary is removed."""
    made = _atomic._create_temporary
    calls: list[Path] = []

    def second_fails(target: Path) -> Path:
        if calls:
            raise PermissionError(13, "Permission denied", str(target))
        calls.append(target)
        return made(target)

    monkeypatch.setattr(_atomic, "_create_temporary", second_fails)
    with (
        pytest.raises(PermissionError, match="Permission denied"),
        _atomic.atomic_paths([tmp_path / "a", tmp_path / "b"]),
    ):
        pass
    assert os.listdir(tmp_path) == []


def test_a_name_near_the_longest_a_file_system_takes_is_written(tmp_path: Path) -> None:
    path = tmp_path / ("a" * 250 + ".bin")  # 254 bytes: its temporary's name is shortened
    write_atomic(path, lambda f: f.write(b"x"))
    assert path.read_bytes() == b"x" and os.listdir(tmp_path) == [path.name]

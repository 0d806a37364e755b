"""Crash-safe file writes: a file is either its old self or completely new, never half written.

The new content goes to a temporary file in the same directory (same file system, so the rename
is atomic), which is flushed and fsynced, then ``os.replace``d onto the path; the directory is
fsynced afterwards where the OS allows it (POSIX), so the rename itself survives a power cut. On
any failure before the rename the temporary file is removed and the old file is untouched.

The temporary file is created with ``O_EXCL`` and mode ``0o666`` minus the umask, so the result
has the permissions a plain ``open(path, "wb")`` would give: a new file's, or those of the file it
replaces (a ``0o600`` file stays ``0o600``).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], /) -> Path:
    """Write a file through ``write(file)`` so that readers see the old or the new whole file.

    Args:
        path: the file to create or replace.
        write: called once with the temporary file, opened for binary writing.

    Returns:
        The path written, as a ``Path``.

    Example:
        >>> import tempfile, pathlib
        >>> from ema_core._atomic import write_atomic
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = write_atomic(pathlib.Path(d) / "a.bin", lambda f: f.write(b"hi"))
        ...     p.read_bytes(), sorted(x.name for x in p.parent.iterdir())
        (b'hi', ['a.bin'])
    """
    with atomic_path(path) as tmp, open(tmp, "r+b") as file:
        write(file)
        file.flush()
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike[str], /) -> Iterator[Path]:
    """A context manager yielding an empty temporary path to write; on a clean exit it becomes
    ``path`` (fsynced, renamed, directory fsynced), on an exception it is removed.

    For writers that take a file name rather than a file object.
    """
    target = Path(path)
    tmp = _create_temporary(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _create_temporary(target: Path) -> Path:
    """A new empty file beside ``target``, hidden and unique (``O_EXCL``)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
        os.close(fd)
        _keep_mode(target, tmp)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {target}")  # pragma: no cover


def _keep_mode(target: Path, tmp: Path) -> None:
    """Give ``tmp`` the permission bits of the regular file ``target`` replaces, if any."""
    try:
        mode = os.stat(target).st_mode
    except OSError:  # no file there yet (or none we may read): the new file's mode
        return
    if stat.S_ISREG(mode):
        try:
            os.chmod(tmp, stat.S_IMODE(mode))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows fsyncs writers only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable. Windows cannot open a directory: skipped there."""
    if os.name != "posix":  # pragma: no cover - not run on POSIX CI
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

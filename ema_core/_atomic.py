"""Crash-safe file writes: a file is either its old self or completely new, never half written.

The new content goes to a temporary file in the same directory (same file system, so the rename
is atomic), which is flushed and fsynced, then ``os.replace``d onto the path; the directory is
fsynced afterwards where the OS allows it (POSIX), so the rename itself survives a power cut. On
any failure before the rename the temporary file is removed and the old file is untouched.

The temporary file is created with ``O_EXCL`` and mode ``0o666`` minus the umask, so the result
has the permissions a plain ``open(path, "wb")`` would give: a new file's, or those of the file it
replaces (a ``0o600`` file stays ``0o600``).

A path that is a symbolic link is written as ``open(path, "wb")`` writes it: the link stays and
its target is replaced (atomically, beside the target). A dangling link creates its target when
the target's folder exists. A path that exists and is not a regular file (a device such as
``/dev/null``, a FIFO) is written in place, as ``open(path, "wb")`` writes it: a rename would
replace the node with a file (as root, ``/dev/null`` itself), so such a write is not atomic.
``atomic_paths`` writes several files as one set: all of them are
written and fsynced as temporaries before the first is renamed, so a failure (disk full, no
permission) leaves none of the new files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "atomic_paths", "resolve_link", "write_atomic"]

_MAX_LINKS = 40  # as Linux's ELOOP limit


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
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a FIFO cannot seek: not r+b
        write(file)
        file.flush()
    return Path(path)  # the path given, a link stays one (as torch.save and open return)


@contextmanager
def atomic_path(path: str | os.PathLike[str], /) -> Iterator[Path]:
    """A context manager yielding an empty temporary path to write; on a clean exit it becomes
    ``path`` (fsynced, renamed, directory fsynced), on an exception it is removed.

    For writers that take a file name rather than a file object.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]], /) -> Iterator[list[Path]]:
    """``atomic_path`` for several files written as one set: on a clean exit every temporary
    is fsynced, then each is renamed onto its path; on an exception (before or during the
    renames) every temporary is removed, and so is each path already renamed that did not
    exist before, so none of the new files is left. A file that a rename already replaced
    keeps its new content (its old one is gone).
    """
    targets = [resolve_link(p) for p in paths]
    existed = [t.exists() for t in targets]
    direct = [_special(t) for t in targets]  # written in place: no temporary, no rename
    tmps: list[Path] = []
    done: list[Path] = []
    try:
        for target, special in zip(targets, direct, strict=True):
            tmps.append(target if special else _create_temporary(target))
        yield list(tmps)
        renamed = [
            (tmp, target, old)
            for tmp, target, old, special in zip(tmps, targets, existed, direct, strict=True)
            if not special
        ]
        for tmp, _, _ in renamed:
            _fsync_file(tmp)
        for tmp, target, old in renamed:
            os.replace(tmp, target)
            if not old:
                done.append(target)
    except BaseException:  # the temporaries made so far (not a device written in place)
        made = [t for t, special in zip(tmps, direct, strict=False) if not special]
        for leftover in [*made, *done]:
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(t.parent for t, d in zip(targets, direct, strict=True) if not d):
        _fsync_directory(folder)


def _special(target: Path) -> bool:
    """Whether ``target`` exists and is neither a regular file nor a folder (a device, a FIFO,
    a socket): ``open(path, "wb")`` writes into it, a rename would replace it."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def resolve_link(path: str | os.PathLike[str], /) -> Path:
    """``path``, or the file its chain of symbolic links ends at (relative links are read from
    the link's folder), which is what ``open(path, "wb")`` writes.

    Raises:
        FileNotFoundError: the file's folder does not exist (a dangling link's target's too).
        NotADirectoryError: a file stands where the file's folder (or one above it) should be.
        OSError: a loop of links (or more than 40), naming ``path``.
    """
    target = Path(path)
    for _ in range(_MAX_LINKS):
        if not target.is_symlink():
            break
        target = target.parent / os.readlink(target)
    else:
        raise OSError(f"path {os.fspath(path)!r} is a loop of symbolic links (or over 40)")
    if not target.parent.is_dir():
        link = f" is a symbolic link to {os.fspath(target)!r}, which"
        link = "" if target == Path(path) else link
        blocker = _file_above(target)
        if blocker is not None:
            raise NotADirectoryError(
                f"path {os.fspath(path)!r}{link} lies below {os.fspath(blocker)!r}, which is a "
                "file, not a folder: choose another path or move the file away",
            )
        raise FileNotFoundError(
            f"path {os.fspath(path)!r}{link} lies in a folder that does not exist "
            f"({os.fspath(target.parent)!r}): create the folder first",
        )
    return target


def _file_above(target: Path) -> Path | None:
    """The nearest existing folder-or-file above ``target``, when it is not a folder."""
    for above in target.parents:
        if above.exists():
            return None if above.is_dir() else above
    return None


def _create_temporary(target: Path) -> Path:
    """A new empty file beside ``target``, hidden and unique (``O_EXCL``)."""
    for _ in range(100):
        # ".", 12 hex digits and ".tmp" on top of the name: kept within 255 bytes (a file
        # system's longest name), the name shortened for a temporary of a long one
        tmp = target.with_name(f".{_short(target.name)}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
        os.close(fd)
        _keep_mode(target, tmp)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {target}")  # pragma: no cover


def _short(name: str, most: int = 255 - 18) -> str:
    """``name`` cut to at most ``most`` UTF-8 bytes (at a character's boundary)."""
    return name.encode("utf-8", "surrogateescape")[:most].decode("utf-8", "ignore")


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

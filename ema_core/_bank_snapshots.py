"""An EMA bank's snapshots of one step, as one step with its update (torch and JAX banks).

A bank that writes post-hoc snapshots (``snapshot_every=``) updates its K EMAs and then writes
their snapshots of that step as one set (``ema_core.posthoc``'s ``save_snapshot_set``). From
the user's view the two are one step:

* ``check_set`` runs before the update, while no shadow has changed: every check the writer
  would make (each snapshot's step, sigma_rel, interval, leaf names and dtypes, no folder at a
  file's name), plus what the file system can tell without writing: the directory is one (or
  can be made one), each snapshot's file (through its links) lies in an existing folder, and
  the folder that receives the files (or the nearest existing one above a missing directory)
  is writable. Free disk space is not checked: only the write can tell.
* ``write_set`` writes after the update. A failure there (a full disk, a file system gone
  read-only) cannot be checked before, and the update is not undone: undoing it would need a
  copy of the K shadows at every snapshot step (the blend cannot be inverted exactly, and a
  JAX bank donates the old states). The update stands, and the failure is a
  ``SnapshotWriteError`` (an ``OSError``, the cause's errno) saying that the step's update was
  applied and its snapshots were not written, and how to write them again: the bank's
  ``save_snapshots`` of the EMAs that were due (``which=error.which``; all K when they are at
  one step, the usual case, where ``which=`` may be left out), which gives the same files as
  the automatic write, since the shadows have not moved since (``retry_call`` spells the
  call). The writer leaves none of the set on disk then.

The steps a bank's ``save_snapshots`` writes are checked by ``_snapshot_args.snapshot_steps``.

``ema_core.posthoc`` (numpy) is imported when a bank first needs it.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ema_core import _snapshot_args
from ema_core._atomic import resolve_link

__all__ = ["SnapshotWriteError", "check_set", "retry_call", "retrying", "write_set"]


class SnapshotWriteError(OSError):
    """A bank's update of step ``step`` was applied, but its snapshots of that step were not
    written (none of the set is on disk). ``errno`` is the cause's; ``__cause__`` the cause.

    Attributes:
        step: the step whose snapshots are missing.
        states: for a JAX bank, the updated states (the call's result: the states passed in
            were donated); None for a torch bank, which holds its shadows itself.
        which: the indices of the EMAs whose snapshots were due (all K when the EMAs are at
            one step); ``save_snapshots(..., which=error.which)`` writes exactly them.
    """

    step: int
    states: Any
    which: tuple[int, ...]


def posthoc_snapshots() -> Any:
    """``ema_core.posthoc._snapshots``, imported on first use.

    Raises:
        ImportError: ``ema_core.posthoc`` (numpy) is not there.
    """
    return importlib.import_module("ema_core.posthoc._snapshots")


def check_at_start(
    directory: str | os.PathLike[str],
    trees: Sequence[Any],
    *,
    every: int,
    sigma_rels: Sequence[float],
    intervals: Sequence[int],
    policies: Sequence[Mapping[str, str] | None] | None = None,
    aliases: Sequence[Mapping[str, str]] | None = None,
) -> None:
    """``check_set`` at each EMA's first update, before training starts: what every due step
    would refuse (a complex array, a name a snapshot cannot hold, a folder in the way) is
    refused once, up front; nothing is written.

    Raises:
        What ``check_set`` raises; a ``TypeError`` / ``ValueError`` prefixed with
        ``snapshot_every``.
    """
    try:
        check_set(
            directory,
            trees,
            steps=list(intervals),
            sigma_rels=sigma_rels,
            intervals=intervals,
            policies=policies,
            aliases=aliases,
        )
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise
        raise type(error)(
            f"snapshot_every={every}: every snapshot would be refused: {error}"
        ) from (error)


def check_set(
    directory: str | os.PathLike[str],
    trees: Sequence[Any],
    *,
    steps: Sequence[int],
    sigma_rels: Sequence[float],
    intervals: Sequence[int],
    policies: Sequence[Mapping[str, str] | None] | None = None,
    aliases: Sequence[Mapping[str, str]] | None = None,
) -> None:
    """Raise what writing these snapshots would refuse, before anything is written: ``trees``
    are the EMAs' arrays before the update (the same names, shapes and kinds of dtype as
    their averages after it); ``policies`` and ``aliases`` as ``write_set`` gets them.

    Raises:
        TypeError / ValueError: what ``save_snapshot_set`` refuses (a folder at a file's name
            included), or ``check_snapshot_dir``. FileNotFoundError / OSError: a snapshot's
            file is a link into a missing folder, or a loop of links. PermissionError: the
            folder the files go to (or the nearest existing one above it) is not writable.
    """
    _snapshot_args.check_snapshot_dir(directory)
    snapshots = posthoc_snapshots()
    folder = Path(os.fsdecode(os.fspath(directory)))
    count = len(trees)
    records = zip(policies or [None] * count, aliases or [{}] * count, strict=True)
    found = zip(trees, steps, sigma_rels, intervals, records, strict=True)
    prepared = [
        snapshots.prepare(
            folder, tree, step=t, sigma_rel=s, dtype=None, interval=i, policies=p, aliases=n
        )
        for tree, t, s, i, (p, n) in found
    ]
    snapshots.check_together(prepared)
    paths = [p.path for p in prepared]
    if folder.is_dir():
        targets = [resolve_link(p) for p in paths]
        for path, target in zip(paths, targets, strict=True):
            if target.is_dir():
                raise ValueError(
                    f"snapshot_dir={os.fspath(directory)!r}: the snapshot file {path.name!r} "
                    f"is a link to the folder {os.fspath(target)!r}: move that folder away"
                )
        folders = list(dict.fromkeys(t.parent for t in targets))
    else:
        folders = [_existing_ancestor(folder)]
    for where in folders:
        _check_writable(directory, where)


def write_set(
    directory: str | os.PathLike[str],
    averages: Sequence[Any],
    *,
    steps: Sequence[int],
    sigma_rels: Sequence[float],
    intervals: Sequence[int],
    dtype: str | None = None,
    retry: str | None,
    states: Any = None,
    policies: Sequence[Mapping[str, str] | None] | None = None,
    aliases: Sequence[Mapping[str, str]] | None = None,
) -> list[Path]:
    """``save_snapshot_set`` (``policies``: which arrays each EMA copies, ``aliases``: the
    model's other names of its arrays; None where unknown); after a bank's update (``retry``
    given: the call that writes the set again), an ``OSError`` while writing becomes a
    ``SnapshotWriteError`` naming the step, ``retry``, and carrying ``states`` (``retrying``
    adds ``which``).

    Raises:
        SnapshotWriteError: the write failed; the update stands.
        TypeError / ValueError: what ``save_snapshot_set`` refuses (checked before the update
            by ``check_set``).
    """
    try:
        paths: list[Path] = posthoc_snapshots().save_snapshot_set(
            directory,
            list(averages),
            steps=list(steps),
            sigma_rels=list(sigma_rels),
            intervals=list(intervals),
            dtype=dtype,
            policies=policies,
            aliases=aliases,
        )
    except OSError as cause:
        if retry is None:
            raise
        error = _not_written(cause, directory, max(steps), retry)
        error.states, error.which = states, ()
        raise error from cause
    return paths


@contextlib.contextmanager
def retrying(args: str, which: Sequence[int], count: int, note: str = "") -> Iterator[str]:
    """Around a bank's automatic write of the EMAs ``which`` (indices; of ``count``): yields
    ``retry`` for ``write_set``, the call that writes the set again (``retry_call``, then
    ``note``), and gives a ``SnapshotWriteError`` raised inside ``which``."""
    try:
        yield retry_call(args, which, count) + note
    except SnapshotWriteError as error:
        error.which = tuple(which)
        raise


def retry_call(args: str, which: Sequence[int], count: int) -> str:
    """The call that writes a bank's failed set again: ``bank.save_snapshots(args)``, with
    ``which=`` when the set was not all ``count`` EMAs.

    Example:
        >>> retry_call("", [0, 1], 2), retry_call("", [1], 2)
        ('bank.save_snapshots()', 'bank.save_snapshots(which=[1])')
    """
    chosen = [] if len(which) == count else [f"which={list(which)}"]
    return f"bank.save_snapshots({', '.join([args, *chosen] if args else chosen)})"


def _not_written(cause: OSError, directory: Any, step: int, retry: str) -> SnapshotWriteError:
    text = (
        f"{cause.strerror or cause}: the bank's update of step {step} was applied (its shadows "
        f"and steps are the updated ones), but its snapshots of step {step} were not written "
        f"into snapshot_dir={os.fspath(directory)!r} (none of the set is on disk). Fix the "
        f"cause, then write them with {retry} before the next update"
    )
    error = SnapshotWriteError(cause.errno, text) if cause.errno else SnapshotWriteError(text)
    error.step = step
    return error


def _existing_ancestor(folder: Path) -> Path:
    node = Path(os.path.abspath(folder))
    while not node.exists() and node.parent != node:
        node = node.parent
    return node


def _check_writable(directory: Any, where: Path) -> None:
    if not os.access(where, os.W_OK | os.X_OK):
        raise PermissionError(
            errnos.EACCES,
            f"snapshot_dir={os.fspath(directory)!r}: the folder {os.fspath(where)!r} is not "
            "writable (the snapshots, or the missing folders above them, are made there); "
            "give a folder this process may write into. Nothing was updated",
        )

"""Post-hoc EMA snapshots read back: ``list_snapshots`` reads each snapshot's header (never its
tensors) and checks that the snapshots of a directory could come from one run: one interval,
the same tensor names, shapes and policies (``_snapshots`` writes them). Two runs of one model
with one interval are not told apart (a run restarted into the folder of an earlier one): give
each run its own folder."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ema_core._safetensors import Reader, name_of
from ema_core.posthoc._math import check_posthoc_sigma_rel

__all__ = [
    "FLOATS",
    "FORMAT",
    "VERSION",
    "SnapshotInfo",
    "directory_path",
    "existing_directory",
    "is_snapshot_name",
    "list_snapshots",
]

FORMAT = "ema-core.posthoc-snapshot"
VERSION = "1"
#: The float dtypes a snapshot averages (integer and bool arrays are kept from the last one).
FLOATS = ("float16", "bfloat16", "float32", "float64")
_FILE = re.compile(r"phema-(\d+)-(.+)\.safetensors")


class SnapshotInfo(NamedTuple):
    """What a snapshot file says about itself (read from its header, not its tensors)."""

    path: Path
    step: int
    sigma_rel: float
    gamma: float
    interval: int
    names: tuple[str, ...]
    dtypes: tuple[str, ...]  # the source arrays' dtypes, by name order
    shapes: tuple[tuple[int, ...], ...]
    framework: str
    storage: str | None  # the averaged float arrays' storage dtype (None: none is averaged)
    #: the arrays the EMA copied (``"copy"`` policy, ``_records``); None: a file without the
    #: record (older ema-core), whose float arrays are averaged
    copied: frozenset[str] | None = None
    #: other names of its arrays (tied weights), alias -> name
    aliases: tuple[tuple[str, str], ...] = ()


def directory_path(directory: Any) -> Path:
    """``directory`` as a Path, or ``TypeError`` (``None`` would mean the working directory)."""
    path = os.fspath(directory) if isinstance(directory, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(
            f"directory must be a str or os.PathLike of str, got {type(directory).__name__} "
            f"{directory!r}"
        )
    return Path(path)


def existing_directory(directory: Any) -> Path:
    """``directory`` as a Path, checked to be an existing folder of snapshots.

    Raises:
        TypeError: what ``directory_path`` refuses. FileNotFoundError: nothing is there.
        ValueError: a file is there.
    """
    path = directory_path(directory)
    if not path.exists():
        raise FileNotFoundError(
            f"directory {os.fspath(path)!r} does not exist: give the folder the snapshots were "
            "written to (save_snapshot's directory, a bank's snapshot_dir)",
        )
    if not path.is_dir():
        raise ValueError(
            f"directory {os.fspath(path)!r} is a file, not a folder: give the folder of the "
            "snapshots (phema-<step>-<sigma_rel>.safetensors files)"
        )
    return path


def list_snapshots(directory: str | os.PathLike[str], /) -> list[SnapshotInfo]:
    """The snapshots in ``directory``, sorted by (step, sigma_rel); only headers are read.

    Files whose names do not look like snapshots (``phema-<step>-<sigma_rel>.safetensors``) are
    skipped, temporary files of unfinished writes included.

    Raises:
        TypeError: ``directory`` is not a str or ``os.PathLike``.
        FileNotFoundError: ``directory`` does not exist (the message names it).
        ValueError: ``directory`` is a file; a snapshot-named file that is not a valid
            snapshot (the message names it), two files for one (step, sigma_rel), or files
            that disagree on ``interval``, on the array names or on their shapes.

    Example:
        >>> import pathlib, tempfile, numpy as np
        >>> from ema_core.posthoc import list_snapshots, save_snapshot
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for step, sigma_rel in [(200, 0.05), (100, 0.1), (100, 0.05)]:
        ...         _ = save_snapshot(d, {"w": np.ones(3)}, step=step, sigma_rel=sigma_rel)
        ...     _ = (pathlib.Path(d) / "notes.txt").write_text("not a snapshot: skipped")
        ...     [(s.step, s.sigma_rel, s.shapes) for s in list_snapshots(d)]
        [(100, 0.05, ((3,),)), (100, 0.1, ((3,),)), (200, 0.05, ((3,),))]
    """
    folder = existing_directory(directory)
    with os.scandir(folder) as found:
        paths = sorted(Path(e.path) for e in found if _FILE.fullmatch(e.name) and e.is_file())
    infos = sorted((_read_info(p) for p in paths), key=lambda i: (i.step, i.sigma_rel))
    _check_agree(infos)
    return infos


def is_snapshot_name(name: str) -> bool:
    """Whether ``list_snapshots`` takes a file of this name for a snapshot."""
    return _FILE.fullmatch(name) is not None


def _read_info(path: Path) -> SnapshotInfo:
    with Reader(path) as reader:
        meta, entries = reader.metadata, reader.entries
    if meta.get("format") != FORMAT or meta.get("format_version") != VERSION:
        raise ValueError(
            f"{path} is not an ema-core snapshot of format version {VERSION} (its metadata "
            f"says format {meta.get('format')!r}, version {meta.get('format_version')!r})"
        )
    try:
        names, dtypes = json.loads(meta["names"]), json.loads(meta["dtypes"])
        copied = _copied(meta, names)
        averaged = [n for n in names if copied is None or n not in copied]
        info = SnapshotInfo(
            path,
            int(meta["step"]),
            check_posthoc_sigma_rel(float(meta["sigma_rel"])),
            float(meta["gamma"]),
            int(meta["interval"]),
            tuple(names),
            tuple(dtypes),
            tuple(entries[name].shape for name in names),
            meta["framework"],
            _storage(entries[name].code for name in averaged),
            copied,
            _aliases(meta),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path} has metadata that is not valid: {err!r}") from None
    if sorted(info.names) != sorted(entries) or len(info.dtypes) != len(info.names):
        raise ValueError(
            f"{path}: its metadata names {len(info.names)} arrays, it holds {len(entries)}"
        )
    if info.step < 1 or info.interval < 1 or info.step % info.interval:
        raise ValueError(f"{path}: step {info.step} and interval {info.interval} are not valid")
    return info


def _copied(meta: dict[str, str], names: list[str]) -> frozenset[str] | None:
    """The names whose recorded policy is ``"copy"`` (None where there is no record)."""
    if "policies" not in meta:
        return None
    policies = json.loads(meta["policies"])
    if len(policies) != len(names) or not set(policies) <= {"average", "copy"}:
        raise ValueError(f"policies {policies!r:.80} do not match the {len(names)} names")
    return frozenset(n for n, p in zip(names, policies, strict=True) if p == "copy")


def _aliases(meta: dict[str, str]) -> tuple[tuple[str, str], ...]:
    aliases = json.loads(meta.get("aliases", "{}"))
    if not (isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values())):
        raise ValueError(f"aliases {aliases!r:.80} is not a dict of names")
    return tuple(sorted(aliases.items()))


def _storage(codes: Iterable[str]) -> str | None:
    floats = {name_of(code) for code in codes} & set(FLOATS)
    if len(floats) > 1:
        raise ValueError(f"its float arrays are stored in several dtypes: {sorted(floats)}")
    return floats.pop() if floats else None


def _check_agree(infos: list[SnapshotInfo]) -> None:
    for first, info in itertools.pairwise(infos):
        if (first.step, first.sigma_rel) == (info.step, info.sigma_rel):
            raise ValueError(
                f"{first.path} and {info.path} are both step {info.step}, "
                f"sigma_rel {info.sigma_rel}"
            )
    for info in infos[1:]:
        ref = infos[0]
        if info.interval != ref.interval:
            raise ValueError(
                f"{ref.path} has interval {ref.interval}, {info.path} has {info.interval}; the "
                "snapshots of one directory must come from one run"
            )
        if _arrays(info) != _arrays(ref):
            diff = sorted(_arrays(info).items() ^ _arrays(ref).items())
            raise ValueError(f"{ref.path} and {info.path} hold different arrays: {diff[:5]}")
        _check_kinds(ref, info)
    recorded = [(info, info.copied) for info in infos if info.copied is not None]
    for info, copied in recorded[1:]:
        first, first_copied = recorded[0]
        if copied != first_copied:
            changed = sorted(copied ^ first_copied)
            raise ValueError(
                f"{first.path} and {info.path} disagree on which arrays the EMA copied "
                f"(buffers='copy') and which it averaged: {changed[:5]}; the snapshots of one "
                "directory must come from one run"
            )


def _check_kinds(ref: SnapshotInfo, info: SnapshotInfo) -> None:
    """An array is float (averaged) in every snapshot or in none (kept from the last one)."""
    ref_floats = {n for n, d in zip(ref.names, ref.dtypes, strict=True) if d in FLOATS}
    floats = {n for n, d in zip(info.names, info.dtypes, strict=True) if d in FLOATS}
    for name in sorted(ref_floats ^ floats):
        first, second = (ref, info) if name in ref_floats else (info, ref)
        raise ValueError(
            f"array {name!r} is float in {first.path} and not in {second.path}: an array is "
            "averaged only if it is float in every snapshot of the directory"
        )


def _arrays(info: SnapshotInfo) -> dict[str, tuple[int, ...]]:
    return dict(zip(info.names, info.shapes, strict=True))

"""Post-hoc EMA snapshots on disk: one safetensors file per (step, sigma_rel).

A snapshot is named ``phema-{step:010d}-{sigma_rel!r}.safetensors`` (a directory listing sorts
by step) and holds each averaged array under its name (``_leaves``) with string metadata: the
format and its version, step, sigma_rel and gamma (``repr``: they round-trip exactly), interval,
the names in order, the source dtypes and framework, each array's policy (averaged or copied)
and the model's other names of the arrays (tied weights; both ``_records``). Float arrays are
stored in float32 unless asked otherwise; integer and bool arrays (BatchNorm counters) and the
arrays the EMA copied (policy ``"copy"``) are stored as they are, in their own dtype. Reading
the headers back and checking that a directory's snapshots agree is ``_listing``'s.
``save_snapshot_set`` writes an EMA bank's snapshots of one step as one set (all or none), of
one interval and one file each (``check_together``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ema_core._atomic import atomic_paths
from ema_core._safetensors import check_names, write
from ema_core.posthoc._leaves import check_has_data, framework_of, named_leaves
from ema_core.posthoc._listing import FLOATS as _FLOATS
from ema_core.posthoc._listing import directory_path
from ema_core.posthoc._math import check_posthoc_sigma_rel
from ema_core.posthoc._records import (
    check_aliases,
    check_count,
    code_for,
    dtype_name,
    metadata,
    policies_of,
    stored,
)
from ema_core.posthoc._sources import source_of

__all__ = ["code_for", "save_snapshot", "save_snapshot_set"]

_STEP_MAX = 2**53  # steps are float64 in the solve: larger ones would collide


def save_snapshot(
    directory: str | os.PathLike[str],
    averages: Any,
    /,
    *,
    step: int | None = None,
    sigma_rel: float | None = None,
    dtype: str | None = None,
    interval: int | None = None,
) -> Path:
    """Write one snapshot of a power-function EMA, atomically (temporary file, then rename).

    Args:
        directory: where to write (created if missing).
        averages: the EMA's averages: a name -> array mapping or any nest, of numpy, torch (any
            device), JAX, CuPy or array-api-strict arrays (``ema_core.average(state, config)``,
            not the ``EMAState``); or a torch ``EMA`` of a power function, whose averages,
            step, sigma_rel and interval are taken (those given must agree with it), with
            which tensors it copies (BatchNorm statistics) and its model's tied names.
        step: the step of the EMA's last update (a multiple of ``interval``); required but for
            an ``EMA``.
        sigma_rel: the EMA's relative standard deviation, in (0, 12**-0.5); required but for
            an ``EMA``.
        dtype: the storage dtype of float arrays: ``"float32"`` (``None``), ``"float64"``,
            ``"float16"`` or ``"bfloat16"``.
        interval: the EMA's update interval (``Config(interval=...)``), kept as metadata;
            ``None``: 1, or the ``EMA``'s.

    Returns:
        The snapshot's path.

    Raises:
        TypeError: an argument or a leaf of the wrong type (complex leaves and sparse torch
            tensors included), an ``EMAState``, an EMA bank. ValueError: a value out of range,
            two leaves that would share a name, an ``EMA`` that is not a power function (or whose
            average is not its EMA) or disagrees with ``step`` / ``sigma_rel`` /
            ``interval``. Nothing is written then.

    Example:
        >>> import tempfile, numpy as np
        >>> from ema_core.posthoc import list_snapshots, save_snapshot
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_snapshot(d, {"w": np.ones(3)}, step=100, sigma_rel=0.05)
        ...     path.name, list_snapshots(d)[0].names
        ('phema-0000000100-0.05.safetensors', ('w',))
    """
    source = source_of(averages, step, sigma_rel, interval)
    return save_snapshot_set(
        directory,
        [source.averages],
        steps=[source.step],
        sigma_rels=[source.sigma_rel],
        intervals=[source.interval],
        dtype=dtype,
        policies=[source.policies],
        aliases=[source.aliases],
    )[0]


def save_snapshot_set(
    directory: str | os.PathLike[str],
    averages: Sequence[Any],
    /,
    *,
    steps: Sequence[int],
    sigma_rels: Sequence[float],
    intervals: Sequence[int],
    dtype: str | None = None,
    policies: Sequence[Mapping[str, str] | None] | None = None,
    aliases: Sequence[Mapping[str, str]] | None = None,
) -> list[Path]:
    """``save_snapshot`` for each of several EMAs (an EMA bank's step), as one set: every
    snapshot is checked, then all are written to temporary files and only then renamed, so a
    failure (disk full, no permission) leaves none of them. ``policies`` and ``aliases`` (one
    per EMA, ``_records``) say which arrays are copied and which other names they have.

    Raises:
        What ``save_snapshot`` raises, and ValueError: snapshots of different intervals, or
        two of one step and sigma_rel (``check_together``); before anything is written.
    """
    folder = directory_path(directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"directory {os.fspath(folder)!r} is a file, not a folder: give a folder for the "
            "snapshots (a missing one is created)"
        )
    count = len(averages)
    records = zip(policies or [None] * count, aliases or [{}] * count, strict=True)
    prepared = [
        prepare(folder, a, step=t, sigma_rel=s, dtype=dtype, interval=i, policies=p, aliases=n)
        for a, t, s, i, (p, n) in zip(averages, steps, sigma_rels, intervals, records, strict=True)
    ]
    check_together(prepared)
    created = _make_parents(folder / "_")
    try:
        with atomic_paths([p.path for p in prepared]) as tmps:
            for tmp, snapshot in zip(tmps, prepared, strict=True):
                with open(tmp, "r+b") as file:
                    write(
                        file,
                        snapshot.specs,
                        stored(snapshot.leaves, snapshot.specs),
                        snapshot.meta,
                    )
    except BaseException:
        for made in created:  # deepest first; a folder someone filled meanwhile stays
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    return [p.path for p in prepared]


class _Prepared(NamedTuple):
    path: Path
    specs: list[tuple[str, str, tuple[int, ...]]]
    leaves: list[Any]
    meta: dict[str, str]
    interval: int


def check_together(prepared: Sequence[_Prepared]) -> None:
    """Raise unless the snapshots of a set (``prepare``'s results) can share their directory:
    one interval (``list_snapshots`` and ``reconstruct`` refuse a directory of several) and
    one file each (a second snapshot of a step and sigma_rel would overwrite the first).

    Raises:
        ValueError: naming the first snapshot that differs from, or repeats, another.
    """
    for k, snapshot in enumerate(prepared):
        if snapshot.interval != prepared[0].interval:
            raise ValueError(
                f"intervals[{k}]={snapshot.interval} but intervals[0]={prepared[0].interval}: "
                "the snapshots of one directory share one interval (list_snapshots and "
                "reconstruct refuse a mix); write these into separate directories"
            )
        paths = [p.path for p in prepared[:k]]
        if snapshot.path in paths:
            raise ValueError(
                f"snapshot {k} repeats the step and sigma_rel of snapshot "
                f"{paths.index(snapshot.path)}: both would be the file {snapshot.path.name!r}, "
                "the second overwriting the first; each snapshot of a set needs its own "
                "(step, sigma_rel)"
            )


def prepare(
    folder: Path,
    averages: Any,
    *,
    step: Any,
    sigma_rel: Any,
    dtype: Any,
    interval: Any,
    policies: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> _Prepared:
    """One snapshot's file, arrays and metadata, every argument checked (nothing written)."""
    sigma = check_posthoc_sigma_rel(sigma_rel)
    step, interval = check_count(step, "step"), check_count(interval, "interval")
    if step > _STEP_MAX:
        raise ValueError(
            f"step must be <= 2**53 (float64 holds every step up to it exactly), got {step}"
        )
    if step % interval:
        raise ValueError(
            f"step must be a multiple of interval={interval} (the EMA's last update), got {step}"
        )
    if dtype is not None and not isinstance(dtype, str):
        raise TypeError(f"dtype must be a str or None, got {type(dtype).__name__}")
    storage = "float32" if dtype is None else dtype
    if storage not in _FLOATS:
        raise ValueError(f"dtype must be one of {[*_FLOATS]} or None, got {dtype!r}")
    names, leaves, _ = named_leaves(averages, "averages")
    check_names(names, "an array of averages")
    kinds = [
        dtype_name(leaf, f"averages[{name!r}]") for name, leaf in zip(names, leaves, strict=True)
    ]
    kept = policies_of(names, kinds, policies)
    specs = [  # a copied array keeps its own dtype: dtype= is the averaged arrays' storage
        (name, code_for(storage if p == "average" else kind), tuple(map(int, leaf.shape)))
        for name, leaf, kind, p in zip(names, leaves, kinds, kept, strict=True)
    ]
    frameworks = sorted(
        {framework_of(leaf, f"averages[{n!r}]") for n, leaf in zip(names, leaves, strict=True)}
    )
    for name, leaf in zip(names, leaves, strict=True):
        check_has_data(leaf, f"averages[{name!r}]")
    tied = check_aliases(names, aliases or {})
    meta = metadata(step, sigma, interval, names, kinds, frameworks, kept, tied)
    path = folder / f"phema-{step:010d}-{sigma!r}.safetensors"
    if path.is_dir():
        raise ValueError(
            f"directory {os.fspath(folder)!r} holds a folder named {path.name!r}, the file of "
            f"the snapshot at step {step}, sigma_rel {sigma!r}: move that folder away"
        )
    return _Prepared(path, specs, leaves, meta, interval)


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; returns those created, deepest first."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing

"""Post-hoc EMA snapshots on disk: one safetensors file per (step, sigma_rel).

A snapshot is named ``phema-{step:010d}-{sigma_rel!r}.safetensors`` (a directory listing sorts
by step) and holds each averaged array under its name (``_leaves``) with string metadata: the
format and its version, step, sigma_rel and gamma (``repr``: they round-trip exactly), interval,
the names in order, the source dtypes and framework. Float arrays are stored in float32 unless
asked otherwise; integer and bool arrays (BatchNorm counters) are stored as they are.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ema_core._atomic import atomic_path
from ema_core._safetensors import CODES, Reader, code_of, float32_to_bf16, name_of, write
from ema_core.posthoc._leaves import framework_of, named_leaves, to_host
from ema_core.posthoc._math import check_sigma_rel, sigma_rel_to_gamma

__all__ = ["FORMAT", "VERSION", "SnapshotInfo", "code_for", "list_snapshots", "save_snapshot"]

FORMAT = "ema-core.posthoc-snapshot"
VERSION = "1"
_FILE = re.compile(r"phema-(\d+)-(.+)\.safetensors")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_KEPT = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


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
    storage: str | None  # the float arrays' storage dtype (None: the snapshot holds none)


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if count < 1:
        raise ValueError(f"{what} must be >= 1, got {count}")
    return count


def save_snapshot(
    directory: str | os.PathLike[str],
    averages: Any,
    /,
    *,
    step: int,
    sigma_rel: float,
    dtype: str | None = None,
    interval: int = 1,
) -> Path:
    """Write one snapshot of a power-function EMA, atomically (temporary file, then rename).

    Args:
        directory: where to write (created if missing).
        averages: the EMA's arrays: a name -> array mapping or any nest, of numpy, torch (any
            device), JAX, CuPy or array-api-strict arrays.
        step: the step of the EMA's last update (a multiple of ``interval``).
        sigma_rel: the EMA's relative standard deviation, in (0, 12**-0.5).
        dtype: the storage dtype of float arrays: ``"float32"`` (``None``), ``"float64"``,
            ``"float16"`` or ``"bfloat16"``.
        interval: the EMA's update interval (``Config(interval=...)``), kept as metadata.

    Returns:
        The snapshot's path.

    Raises:
        TypeError: an argument or a leaf of the wrong type (complex leaves included).
        ValueError: a value out of range, or two leaves that would share a name. Nothing is
            written then.

    Example:
        >>> import tempfile, numpy as np
        >>> from ema_core.posthoc import list_snapshots, save_snapshot
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_snapshot(d, {"w": np.ones(3)}, step=100, sigma_rel=0.05)
        ...     path.name, list_snapshots(d)[0].names
        ('phema-0000000100-0.05.safetensors', ('w',))
    """
    sigma = check_sigma_rel(sigma_rel)
    step, interval = _check_count(step, "step"), _check_count(interval, "interval")
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
    kinds = [
        _dtype_name(leaf, f"averages[{name!r}]") for name, leaf in zip(names, leaves, strict=True)
    ]
    specs = [
        (name, code_for(storage if kind in _FLOATS else kind), tuple(map(int, leaf.shape)))
        for name, leaf, kind in zip(names, leaves, kinds, strict=True)
    ]
    frameworks = sorted(
        {framework_of(leaf, f"averages[{n!r}]") for n, leaf in zip(names, leaves, strict=True)}
    )
    meta = {
        "format": FORMAT,
        "format_version": VERSION,
        "step": str(step),
        "sigma_rel": repr(sigma),
        "gamma": repr(sigma_rel_to_gamma(sigma)),
        "interval": str(interval),
        "names": json.dumps(names),
        "dtypes": json.dumps(kinds),
        "framework": ",".join(frameworks),
    }
    path = Path(directory) / f"phema-{step:010d}-{sigma!r}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "r+b") as file:
        write(file, specs, _stored(leaves, specs), meta)
    return path


def _dtype_name(leaf: Any, where: str) -> str:
    dtype = getattr(leaf, "dtype", None)
    name = str(dtype).rpartition(".")[2] if dtype is not None else ""
    if name not in _FLOATS + _KEPT:
        kind = f"dtype {name}" if name else f"type {type(leaf).__name__}"
        raise TypeError(f"{where} has {kind}; snapshots hold float, integer and bool arrays")
    return name


def code_for(dtype_name: str) -> str:
    """The safetensors code of a float, integer or bool dtype name."""
    code = code_of(dtype_name)
    if code is None:  # pragma: no cover - the callers pass floats, integers and bools only
        raise AssertionError(f"safetensors has no code for {dtype_name}")
    return code


def _stored(
    leaves: list[Any], specs: list[tuple[str, str, tuple[int, ...]]]
) -> Iterator[np.ndarray]:
    """Each leaf on the host in its storage's bytes (bfloat16 as bit patterns), one at a time;
    values beyond float16's range become inf, as a cast does."""
    for leaf, (_, code, _) in zip(leaves, specs, strict=True):
        host = to_host(leaf)
        if code == "BF16":
            yield float32_to_bf16(host)
        else:
            with np.errstate(over="ignore"):
                yield np.asarray(host, dtype=CODES[code][1])


def list_snapshots(directory: str | os.PathLike[str], /) -> list[SnapshotInfo]:
    """The snapshots in ``directory``, sorted by (step, sigma_rel); only headers are read.

    Files whose names do not look like snapshots (``phema-<step>-<sigma_rel>.safetensors``) are
    skipped, temporary files of unfinished writes included.

    Raises:
        ValueError: a snapshot-named file that is not a valid snapshot (the message names it),
            two files for one (step, sigma_rel), or files that disagree on ``interval``, on
            the array names or on their shapes.
    """
    with os.scandir(directory) as found:
        paths = sorted(Path(e.path) for e in found if _FILE.fullmatch(e.name) and e.is_file())
    infos = sorted((_read_info(p) for p in paths), key=lambda i: (i.step, i.sigma_rel))
    _check_agree(infos)
    return infos


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
        info = SnapshotInfo(
            path,
            int(meta["step"]),
            check_sigma_rel(float(meta["sigma_rel"])),
            float(meta["gamma"]),
            int(meta["interval"]),
            tuple(names),
            tuple(dtypes),
            tuple(entries[name].shape for name in names),
            meta["framework"],
            _storage(entries[name].code for name in names),
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


def _storage(codes: Iterable[str]) -> str | None:
    floats = {name_of(code) for code in codes} & set(_FLOATS)
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


def _arrays(info: SnapshotInfo) -> dict[str, tuple[int, ...]]:
    return dict(zip(info.names, info.shapes, strict=True))

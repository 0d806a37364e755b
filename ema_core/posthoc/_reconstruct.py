"""Reconstruct post-hoc EMAs from snapshots, streaming: one tensor of one snapshot at a time.

The coefficients of every target come from ``_coefficients`` in float64 (one solve over the
snapshots at or before ``at``, one right-hand side per target); each snapshot is then read once,
tensor by tensor (bfloat16 widened to float32, exactly), and added with its coefficient into one
accumulator per target and array. Snapshots after ``at`` and
snapshots whose coefficients are all 0 are not opened. Integer and bool arrays, and the arrays
the EMA copied (the snapshots' ``"copy"`` policy, ``_records``: BatchNorm statistics under
``buffers="copy"``), are not averaged: they come from a snapshot at ``at``. Snapshots without
that record (older ema-core) average every float array. With ``like``, a name the snapshots
record as an alias of an array (tied weights) is filled from that array.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ema_core._checks import check_choice
from ema_core._safetensors import Reader, bf16_to_float32
from ema_core.posthoc._coefficients import Solution, solve_quietly
from ema_core.posthoc._leaves import Like, like_leaves, rebuild, tied_groups
from ema_core.posthoc._listing import SnapshotInfo, list_snapshots
from ema_core.posthoc._math import check_posthoc_sigma_rel
from ema_core.posthoc._warning import UNIT_ROUNDOFF, amplification_limit, warn_if_inaccurate

__all__ = ["Progress", "aliases_of", "plan", "reconstruct", "with_aliases"]

#: Called after each snapshot read: ``(done, total, info)``.
Progress = Callable[[int, int, SnapshotInfo], None]
_ACCUMULATORS: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float64": np.float64}


def plan(
    directory: str | os.PathLike[str], sigma_rels: Sequence[float], at: int | None
) -> tuple[list[SnapshotInfo], Solution, int]:
    """The snapshots up to ``at``, their ``Solution`` for the targets (not warned about) and
    ``at`` itself."""
    sigma_rels = [check_posthoc_sigma_rel(s) for s in sigma_rels]
    infos = list_snapshots(directory)
    if not infos:
        raise ValueError(f"directory {os.fspath(directory)!r} holds no snapshots")
    steps = sorted({info.step for info in infos})
    at = steps[-1] if at is None else _step(at)
    if at not in steps:
        below = [s for s in steps if s < at][-1:]
        above = [s for s in steps if s > at][:1]
        raise ValueError(
            f"at={at} is not a snapshot step (the EMA after the last snapshot is unknown); the "
            f"nearest snapshot steps are {below + above}"
        )
    kept = [info for info in infos if info.step <= at]
    solution = solve_quietly(
        [info.step for info in kept], [info.sigma_rel for info in kept], at, list(sigma_rels)
    )
    return kept, solution, at


def _step(at: Any) -> int:
    """``at`` as an int: Python and numpy integers (0-d arrays too), not bools or floats."""
    try:
        if isinstance(at, (bool, np.bool_)) or (isinstance(at, np.ndarray) and at.dtype == bool):
            raise TypeError
        return operator.index(at)
    except TypeError:
        raise TypeError(f"at must be an int step or None, got {type(at).__name__} {at!r}") from None


def _targets(sigma_rel: Any) -> tuple[list[float], bool]:
    """The target sigma_rels and whether several were asked for (a sequence or a 1-d array)."""
    several = isinstance(sigma_rel, Sequence) and not isinstance(sigma_rel, (str, bytes))
    several = several or (isinstance(sigma_rel, np.ndarray) and sigma_rel.ndim > 0)
    if not several:
        return [check_posthoc_sigma_rel(sigma_rel)], False
    targets = [check_posthoc_sigma_rel(s, f"sigma_rel[{i}]") for i, s in enumerate(sigma_rel)]
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"sigma_rel must hold distinct values, got {sigma_rel!r}")
    return targets, True


def storage_of(infos: Sequence[SnapshotInfo]) -> str:
    """The storage dtype with the largest rounding among the snapshots (float32 if none holds
    float arrays): it sets the amplification limit of the warning."""
    stored = [info.storage for info in infos if info.storage is not None]
    return max(stored, key=UNIT_ROUNDOFF.__getitem__, default="float32")


def reconstruct(
    directory: str | os.PathLike[str],
    sigma_rel: float | Sequence[float],
    /,
    *,
    at: int | None = None,
    dtype: str = "float32",
    like: Any = None,
    progress: Progress | None = None,
) -> Any:
    """The EMA of relative standard deviation ``sigma_rel`` at step ``at``, from snapshots.

    ``ema = sum_i c_i * snapshot_i`` over the snapshots with step <= ``at``, where ``c`` solves
    EDM2's least-squares problem (``solve``) in float64 and sums to 1. Warns
    (``PostHocWarning``) as ``solve`` does, with the limit of the snapshots' storage dtype
    (the coarsest one if they differ): ``sum |c|`` above 100 for float32 / float64 snapshots,
    45.3 for float16, 16 for bfloat16 (``amplification_limit``).

    Args:
        directory: the snapshots' directory (``save_snapshot``).
        sigma_rel: one target in (0, 12**-0.5), or a sequence of them, reconstructed in one
            pass over the files.
        at: a snapshot step; ``None`` is the last one.
        dtype: the accumulators' and results' dtype, ``"float32"`` or ``"float64"``; an array
            the EMA copied (integers, BatchNorm statistics) keeps the dtype it was stored in.
        like: a nest (a ``state_dict``, a pytree) whose names match the snapshots' arrays: the
            result is then such a nest, each array in ``like``'s framework, device and dtype.
            A tied name (``out.weight = emb.weight``) the snapshots record as an alias of an
            array is filled from that array; a torch module's extra state (a key
            ``_extra_state`` or ``<prefix>._extra_state``: any object) is kept as it is.
        progress: called after each snapshot read with ``(done, total, info)``.

    Returns:
        For one ``sigma_rel``: ``{name: numpy array}`` (or a nest like ``like``). For a
        sequence: ``{sigma_rel: that}``, in the sequence's order.

    Raises:
        ValueError: no snapshots, ``at`` not a snapshot step (the nearest ones are named), a
            ``sigma_rel`` out of range, a ``dtype`` not allowed, or ``like`` not matching the
            snapshots or holding a meta tensor or a DTensor (checked before any file is read).
        TypeError: a ``dtype`` not a str, or a leaf of ``like`` that is not an array.

    Example:
        >>> import tempfile, numpy as np
        >>> from ema_core.posthoc import reconstruct, save_snapshot
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for step in (100, 200):
        ...         for s in (0.05, 0.10):
        ...             _ = save_snapshot(d, {"w": np.full(2, s)}, step=step, sigma_rel=s)
        ...     ema = reconstruct(d, 0.10)["w"]
        ...     both = reconstruct(d, [0.05, 0.10], at=100)
        >>> print(ema.dtype, ema.astype(float).round(6), both[0.05]["w"].astype(float).round(6))
        float32 [0.1 0.1] [0.05 0.05]
    """
    targets, several = _targets(sigma_rel)
    accumulator = _ACCUMULATORS[check_choice("dtype", dtype, list(_ACCUMULATORS))]
    shaped = None if like is None else like_leaves(like)  # checked before any file is read
    infos, solution, at = plan(directory, targets, at)
    storage = storage_of(infos)
    limit = amplification_limit(storage)
    warn_if_inaccurate(solution, targets, limit, storage)
    copied = frozenset().union(*(info.copied or () for info in infos))
    sums = _accumulate(infos, solution.coefficients, at, accumulator, copied, progress)
    where = f"the snapshots in {os.fspath(directory)!r}"
    results = [
        s if shaped is None else rebuild(_tied(s, shaped, infos), shaped, where) for s in sums
    ]
    return dict(zip(targets, results, strict=True)) if several else results[0]


def _accumulate(
    infos: list[SnapshotInfo],
    matrix: np.ndarray,
    at: int,
    dtype: type[np.floating[Any]],
    copied: frozenset[str],
    progress: Progress | None,
) -> list[dict[str, np.ndarray]]:
    read = [i for i in range(len(infos)) if np.any(matrix[:, i] != 0)]
    if not any(infos[i].step == at for i in read):  # the integers come from a snapshot at `at`
        read = sorted([*read, next(i for i, info in enumerate(infos) if info.step == at)])
    sums: list[dict[str, np.ndarray]] = [{} for _ in range(matrix.shape[0])]
    for done, i in enumerate(read, 1):
        with Reader(infos[i].path) as reader:
            for name in infos[i].names:
                value, at_target = _read(reader, name), infos[i].step == at
                if name in copied or value.dtype.kind not in "f":
                    _keep(sums, name, value, at_target)
                else:
                    _add(sums, name, value, matrix[:, i], dtype)
        if progress is not None:
            progress(done, len(read), infos[i])
    return sums


def _read(reader: Reader, name: str) -> np.ndarray:
    """One tensor as numpy, bfloat16 widened to float32 (exactly)."""
    value = reader.read(name)
    return bf16_to_float32(value) if reader.entries[name].code == "BF16" else value


def _keep(
    sums: list[dict[str, np.ndarray]],
    name: str,
    value: np.ndarray,
    at_target: bool,
) -> None:
    """Keep a copied tensor (integers, bools, floats the EMA copied) of the first snapshot read
    at the target step, in the dtype it was stored in (bfloat16 read as float32)."""
    if at_target and name not in sums[0]:
        kept = value.copy()
        for target in sums:
            target[name] = kept.copy()


def _add(
    sums: list[dict[str, np.ndarray]],
    name: str,
    value: np.ndarray,
    weights: np.ndarray,
    dtype: type[np.floating[Any]],
) -> None:
    """Add one float tensor of one snapshot into every target's accumulator."""
    value = value.astype(dtype, copy=False)
    for target, weight in zip(sums, weights, strict=True):
        if name not in target:
            target[name] = np.zeros(value.shape, dtype)
        if weight != 0:
            target[name] += dtype(weight) * value


def _tied(
    arrays: dict[str, np.ndarray], like: Like, infos: list[SnapshotInfo]
) -> dict[str, np.ndarray]:
    """``arrays`` and each name of ``like`` (``like_leaves``) that is another name of one of
    them (tied weights): recorded as an alias in the snapshots, or a torch tensor of ``like``
    on the storage of one of them (``model.state_dict()`` of a tied model)."""
    names, leaves = like.names, like.leaves
    aliases = aliases_of(infos)
    for group in tied_groups(names, leaves):
        source = next((n for n in group if n in arrays), None)
        aliases.update({n: source for n in group if source is not None and n not in arrays})
    return with_aliases(arrays, aliases, set(names))


def aliases_of(infos: Sequence[SnapshotInfo]) -> dict[str, str]:
    """The tied names the snapshots record: ``{alias: name of the array it holds}``."""
    return dict(pair for info in infos for pair in info.aliases)


def with_aliases(
    arrays: dict[str, np.ndarray], aliases: dict[str, str], wanted: set[str] | None = None
) -> dict[str, np.ndarray]:
    """``arrays`` and each alias of one of them not already among them (only those in
    ``wanted`` when given), holding that array."""
    tied = {a: n for a, n in aliases.items() if n in arrays and a not in arrays}
    return {**arrays, **{a: arrays[n] for a, n in tied.items() if wanted is None or a in wanted}}

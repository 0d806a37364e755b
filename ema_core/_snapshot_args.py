"""The snapshot arguments of an EMA bank (``snapshot_every``, ``snapshot_dir``), checked once for
all frameworks before anything is built (pure Python, core level).

* ``check_snapshots``: the two settings together, and what they ask of the bank's EMAs.
* ``check_snapshot_dir``: the directory alone, also checked again before an update after which
  a bank writes snapshots.
* ``snapshot_steps``: the steps a bank's ``save_snapshots`` writes (each EMA updated at least
  once), and ``check_given_steps``: the labels its ``steps=`` may give (the EMAs' steps times
  one factor).
* ``snapshot_sigma_rels``: each EMA's sigma_rel, refusing an EMA without one, and
  (``check_power_profile``) one whose average is not the power-function EMA of that sigma_rel:
  an uncompensated interval, or a zero-started shadow read with another ``correction`` than
  ``"exact"``; and K EMAs whose snapshots cannot share a directory: intervals that differ
  (the rule below), or two EMAs of one sigma_rel (a snapshot's file is named by its step and
  sigma_rel: the second would overwrite the first). A bank checks this when built with
  snapshots and at every ``save_snapshots``; a bank without snapshots may hold both.

The snapshot interval rule: the EMAs of a bank that writes snapshots share one ``interval``
and ``snapshot_every`` is a multiple of it. ``posthoc.save_snapshot`` refuses a step that is
not a multiple of its interval (no update ends there) and ``posthoc.list_snapshots`` refuses
a directory whose snapshots have different intervals (the solve assumes one), so any other
rule would build a bank whose snapshots fail to be written or to be read back.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

from ema_core._banks import sequence, sigma_rel_of
from ema_core._checks import check_positive
from ema_core._config import Config

__all__ = [
    "check_given_steps",
    "check_power_profile",
    "check_snapshot_dir",
    "check_snapshots",
    "snapshot_sigma_rels",
    "snapshot_steps",
]


def snapshot_sigma_rels(configs: Sequence[Config], every: int | None = None) -> tuple[float, ...]:
    """Each config's sigma_rel, for its snapshots, once the K configs are known to share a
    snapshot directory (``every``: the bank's ``snapshot_every``, if it has one).

    Raises:
        ValueError: a config is not a power function, naming it (its sigma_rel is unknown),
            or reads an average that is not its power function (``check_power_profile``);
            the configs' intervals differ, or do not divide ``every`` (the interval rule);
            two configs have one sigma_rel, naming both.

    Example:
        >>> from ema_core._banks import power_configs
        >>> snapshot_sigma_rels(power_configs([0.05, 0.10], 2), every=4)
        (0.05, 0.1)
    """
    found = []
    for k, config in enumerate(configs):
        sigma_rel = sigma_rel_of(config)
        if sigma_rel is None:
            raise ValueError(
                f"configs[{k}] has no sigma_rel (its schedule {config.schedule!r} is not a "
                "schedules.power_function); post-hoc snapshots need power-function EMAs"
            )
        check_power_profile(config, f"configs[{k}]")
        found.append(sigma_rel)
    _check_intervals([c.interval for c in configs], every)
    for k, sigma_rel in enumerate(found):
        if sigma_rel in found[:k]:
            raise ValueError(
                f"configs[{k}] has sigma_rel {sigma_rel!r}, as configs[{found.index(sigma_rel)}]"
                ": a snapshot is named by its step and sigma_rel, so the second EMA's would "
                "overwrite the first's; each EMA of a bank with snapshots needs its own "
                "sigma_rel (the same profile twice adds nothing to a post-hoc EMA)"
            )
    return tuple(found)


def _check_intervals(given: Sequence[int], every: int | None) -> None:
    intervals = sorted(set(given))
    if every is not None and (len(intervals) > 1 or every % intervals[0]):
        raise ValueError(
            f"snapshot_every={every} must be a multiple of the EMAs' interval, and the EMAs "
            f"of a bank with snapshots must share one interval; got intervals {intervals} "
            "(a snapshot directory holds one interval, and a snapshot follows an update)"
        )
    if len(intervals) > 1:
        raise ValueError(
            "the EMAs of a bank whose snapshots are written must share one interval; got "
            f"intervals {list(given)} (a snapshot directory holds one interval: "
            "list_snapshots and reconstruct refuse a mix)"
        )


def check_power_profile(config: Config, what: str) -> None:
    """Raise unless ``config``'s average is the power-function EMA of its sigma_rel, the
    profile its snapshots record. Two settings read another average:

    * an ``interval`` n > 1 with ``compensate=False`` applies one step's decay every n steps,
      a profile of another gamma;
    * ``init="zeros"`` read with a ``correction`` other than ``"exact"``. ``"power"`` divides
      by ``1 - d_t**t``, but a power function's first decay is 0, so its zero-started shadow
      needs no correction: the average comes out scaled by up to ``1 / (1 - e**-(gamma + 1))``
      (1 + 3.6e-4 for sigma_rel 0.10, 1.22 for 0.25). ``"none"`` is right only when the
      first update is step 1: one at a later step t0 starts at ``(1 - d_t0) * params``.
      ``"exact"`` divides by ``1 - prod(d)``: 1 from step 1 on, a copy at a later first
      update (as ``init="copy"``). Under another ``init`` the correction is not used.

    Raises:
        ValueError: naming ``what``, the offending settings and the remedy.

    Example:
        >>> check_power_profile(Config(interval=4), "configs[0]")
        >>> check_power_profile(Config(init="zeros"), "configs[0]")  # correction="exact"
    """
    if config.interval > 1 and not config.compensate:
        raise ValueError(
            f"{what} has interval={config.interval} with compensate=False: it applies one "
            f"step's decay every {config.interval} steps, which is not the power function of "
            "its sigma_rel, so its snapshots would be reconstructed wrongly; post-hoc "
            "snapshots need compensate=True (the default)"
        )
    if config.init == "zeros" and config.correction != "exact":
        why = (
            "divides the zero-started shadow by 1 - d_t**t, which a power function (first "
            "decay 0) does not need: the average is scaled away from the EMA of its sigma_rel"
            if config.correction == "power"
            else "reads the raw zero-started shadow, which is scaled by 1 - prod(d) unless "
            "the first update was step 1"
        )
        raise ValueError(
            f"{what} has init='zeros' with correction={config.correction!r}: it {why}, so its "
            "snapshots would be reconstructed wrongly; post-hoc snapshots of a zero-started "
            "EMA need correction='exact' (the default)"
        )


def check_snapshots(every: Any, directory: Any, configs: Sequence[Config]) -> None:
    """Raise unless ``snapshot_every`` and ``snapshot_dir`` are both None, or both given with
    ``every`` an int >= 1, ``directory`` a path, every EMA a power function of its own
    sigma_rel, one ``interval`` shared by all EMAs and ``every`` a multiple of it (the
    module's interval rule).

    Raises:
        TypeError: ``every`` not an int, ``directory`` not a str or ``os.PathLike``.
        ValueError: one given without the other, ``every`` < 1, what
            ``check_snapshot_dir`` refuses, an EMA without a sigma_rel, two EMAs of one
            sigma_rel, EMAs with different intervals, ``every`` not a multiple of theirs.
    """
    if every is None and directory is None:
        return
    if every is None or directory is None:
        given, missing = ("snapshot_every", "snapshot_dir")[:: 1 if directory is None else -1]
        raise ValueError(f"{given} needs {missing} too (got {missing}=None)")
    check_positive("snapshot_every", every, integer=True)
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"snapshot_dir must be a str or os.PathLike, got {type(directory).__name__}"
        )
    check_snapshot_dir(directory)
    snapshot_sigma_rels(configs, every)


def check_snapshot_dir(directory: str | os.PathLike[str]) -> None:
    """Raise unless ``directory`` is a directory or can be made one: not empty, not a file,
    and its nearest existing ancestor a directory. A bank checks this when built and again
    before an update after which it writes snapshots, so a bad directory refuses the update
    before any shadow changes instead of failing after it.

    Raises:
        ValueError: naming ``snapshot_dir``, its value and what is in the way.

    Example:
        >>> check_snapshot_dir(".")
    """
    path = os.fsdecode(os.fspath(directory))
    if not path:
        raise ValueError("snapshot_dir='' is empty; give the directory of the snapshots")
    node = os.path.abspath(path)
    while not os.path.exists(node) and os.path.dirname(node) != node:
        node = os.path.dirname(node)
    if not os.path.isdir(node):
        where = "is" if node == os.path.abspath(path) else f"lies under {node!r}, which is"
        raise ValueError(
            f"snapshot_dir={directory!r} {where} a file, not a directory: snapshots need a "
            "directory (an existing one, or a path that can be made one)"
        )


def snapshot_steps(
    own: Sequence[int], given: Sequence[Any] | None, which: Sequence[int], what: str
) -> list[int]:
    """The steps at which a bank's ``save_snapshots`` writes its EMAs: their own steps
    ``own``, or ``given`` (``steps=``, checked by ``check_given_steps``); each EMA of
    ``which`` must have been updated (``what[k]`` names EMA k).

    Raises:
        ValueError: an EMA of ``which`` at step 0, or ``given`` not one step per EMA, or
            what ``check_given_steps`` refuses. TypeError: ``given`` not a list or tuple.

    Example:
        >>> snapshot_steps([3, 3], [12, 12], [0, 1], "states")
        [12, 12]
    """
    if given is not None and len(sequence("steps", given)) != len(own):
        raise ValueError(f"steps must hold one step per EMA ({len(own)}), got {len(given)}")
    for k in which:
        if own[k] < 1:
            raise ValueError(f"{what}[{k}] is at step {own[k]}: snapshot it after an update")
    if given is None:
        return list(own)
    check_given_steps(given, own, which)
    return list(given)


def check_given_steps(
    steps: Sequence[Any], own: Sequence[int], which: Sequence[int] | None = None
) -> None:
    """A bank's ``save_snapshots(steps=)``: each average is labelled with its EMA's step
    ``own[k]`` times one factor for all (a bank called every k optimizer steps, labelled in
    optimizer steps: the solve reads only the ratios of the times); another label would
    misplace the snapshot. A step that is not an int is left to the writer's checks; only
    the EMAs of ``which`` (default: all) are written, and checked.

    Raises:
        ValueError: a step that is not a multiple of its EMA's, or factors that differ.

    Example:
        >>> check_given_steps([12, 12], [3, 3])  # a bank called every 4 steps
    """
    factors = set()
    chosen = range(len(own)) if which is None else set(which)
    for k, (value, mine) in enumerate(zip(steps, own, strict=True)):
        if k not in chosen:
            continue
        try:
            given = operator.index(value)
        except TypeError:
            continue
        if mine < 1 or given % mine:
            raise ValueError(
                f"steps[{k}]={given!r} is not a multiple of states[{k}].step ({mine}): a "
                "snapshot is labelled with its EMA's step, or with that step times one factor "
                "for every EMA (a bank called every k steps); leave steps out"
            )
        factors.add(given // mine)
    if len(factors) > 1:
        raise ValueError(
            f"steps={list(steps)!r} scale the states' steps {list(own)} by different factors "
            f"{sorted(factors)}: one factor labels every EMA of the set"
        )

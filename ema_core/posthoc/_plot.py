"""Draw the power-function profiles of the snapshots, the reconstructed profile and the target.

The EMA at step t with exponent gamma weights the params of step tau by
``(gamma + 1) / t * (tau / t) ** gamma`` for tau <= t (and 0 later); a reconstruction is the sum
of its coefficients times the snapshots' profiles. matplotlib (the ``plot`` extra) is imported
here only, without pyplot: no global backend is chosen or changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ema_core.posthoc._listing import SnapshotInfo
from ema_core.posthoc._math import sigma_rel_to_gamma

__all__ = ["plot_profiles", "profile"]


def profile(tau: np.ndarray, t: float, gamma: float) -> np.ndarray:
    """The weight per step of a power-function EMA ending at ``t``, at the steps ``tau``.

    Example:
        >>> import numpy as np
        >>> from ema_core.posthoc._plot import profile
        >>> profile(np.array([50.0, 100.0, 150.0]), 100.0, 1.0).tolist()
        [0.01, 0.02, 0.0]
    """
    inside = (tau > 0) & (tau <= t)
    return np.where(inside, (gamma + 1.0) / t * (np.clip(tau, 0.0, t) / t) ** gamma, 0.0)


def plot_profiles(
    path: str | os.PathLike[str],
    infos: Sequence[SnapshotInfo],
    matrix: np.ndarray,
    at: int,
    sigma_rels: Sequence[float],
) -> Path:
    """Write a PNG of the snapshots' profiles (grey), each reconstruction (solid) and its
    target (dashed); ``matrix[k, i]`` is the coefficient of ``infos[i]`` for ``sigma_rels[k]``.

    Raises:
        ImportError: matplotlib is not installed (``pip install ema-core[plot]``).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plotting post-hoc EMA profiles needs matplotlib: pip install ema-core[plot]"
        ) from err
    tau = np.linspace(0.0, float(at), 2001)[1:]
    figure = Figure(figsize=(8.0, 4.5))
    axes = figure.add_subplot()
    for i, info in enumerate(infos):
        if np.any(matrix[:, i] != 0):
            axes.plot(tau, profile(tau, info.step, info.gamma), color="0.8", linewidth=0.6)
    for k, sigma in enumerate(sigma_rels):
        tracked = [profile(tau, info.step, info.gamma) for info in infos]
        rebuilt = np.sum([c * p for c, p in zip(matrix[k], tracked, strict=True)], axis=0)
        line = axes.plot(tau, rebuilt, linewidth=1.5, label=f"reconstructed sigma_rel={sigma}")
        axes.plot(
            tau,
            profile(tau, at, sigma_rel_to_gamma(sigma)),
            linestyle="--",
            color=line[0].get_color(),
            label=f"target sigma_rel={sigma}",
        )
    peak = max((sigma_rel_to_gamma(s) + 1.0) / at for s in sigma_rels)
    axes.set_ylim(-0.5 * peak, 2.0 * peak)  # the early snapshots' peaks are far higher
    axes.set_xlabel("training step")
    axes.set_ylabel("weight of the step's params")
    axes.set_title(f"post-hoc EMA at step {at} (grey: the snapshots used)")
    axes.legend()
    figure.savefig(os.fspath(path), format="png", dpi=100)
    return Path(path)

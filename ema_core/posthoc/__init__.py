"""Post-hoc EMA (Karras et al. 2023, EDM2): choose the EMA length after training.

Track two or more power-function EMAs (``schedules.power_function(sigma_rel=...)``), save
snapshots of them now and then, and reconstruct the EMA of any other ``sigma_rel`` afterwards
as a least-squares combination of the snapshots.

How the pieces fit:

- ``_math``: gamma <-> sigma_rel and inner products of power-function profiles (numpy float64).
- ``_coefficients``: the coefficients of targets (``solve``: validation, the float64 solve,
  normalisation, cond(A)); ``_inputs``: its checks of the snapshot times and sigma_rels;
  ``_warning``: when the coefficients are inaccurate (``PostHocWarning``, its limits per
  storage dtype, and the fit error past which a target is out of the snapshots' reach).
- ``_snapshots``: ``save_snapshot`` (one safetensors file per step and sigma_rel, written
  atomically through ``ema_core._atomic``); ``_sources``: what it takes (averages, or a torch
  ``EMA``; not an ``EMAState``); ``_records``: the metadata, with each array's policy
  (averaged or copied) and the model's other names of it (tied weights); ``_listing``:
  ``list_snapshots`` (reads headers only, checks that a directory's snapshots agree). The
  file format itself is ``ema_core._safetensors`` (numpy alone, bfloat16 without torch, one
  tensor at a time), shared with ``ema_core.checkpoint``.
- ``_leaves``: names of a nest's arrays, host copies and back to a framework (``like``'s
  torch extra state kept as it is).
- ``_reconstruct``: ``reconstruct``, streaming one tensor of one snapshot at a time.
- ``__main__``: ``python -m ema_core.posthoc DIR --sigma-rel 0.05 0.1 --out FILE``; ``_plot``
  draws the profiles (matplotlib, the ``plot`` extra).

numpy is needed (the ``posthoc`` extra); no framework is imported unless its arrays arrive.
"""

from __future__ import annotations

try:
    import numpy  # noqa: F401 - the one requirement, named here before anything else needs it
except ImportError as err:
    raise ImportError("ema_core.posthoc needs numpy: pip install ema-core[posthoc]") from err

from ema_core.posthoc._coefficients import Solution, coefficient_matrix, coefficients, solve
from ema_core.posthoc._listing import SnapshotInfo, list_snapshots
from ema_core.posthoc._math import gamma_to_sigma_rel, inner_products, sigma_rel_to_gamma
from ema_core.posthoc._reconstruct import reconstruct
from ema_core.posthoc._snapshots import save_snapshot
from ema_core.posthoc._warning import PostHocWarning, amplification_limit

__all__ = [
    "PostHocWarning",
    "SnapshotInfo",
    "Solution",
    "amplification_limit",
    "coefficient_matrix",
    "coefficients",
    "gamma_to_sigma_rel",
    "inner_products",
    "list_snapshots",
    "reconstruct",
    "save_snapshot",
    "sigma_rel_to_gamma",
    "solve",
]

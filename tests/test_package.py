"""Packaging contracts: no framework import, the documented public names, the acceptance line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys, ema_core, ema_core.schedules, ema_core.backends; "
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'jaxlib') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_acceptance_one_liner_updates_in_place() -> None:
    code = (
        "import ema_core as e, numpy as np; s = {'w': np.zeros(3)}; "
        "print(e.ema_update(s, {'w': np.ones(3)}, 1, decay=0.9)); print(s)"
    )
    assert _run(code).splitlines() == ["{'w': array([0.1, 0.1, 0.1])}"] * 2


def test_public_names() -> None:
    import ema_core

    for name in ("ema_update", "init", "update", "average", "Config", "EMAState", "schedules"):
        assert name in ema_core.__all__ and hasattr(ema_core, name)
    for name in (
        "constant",
        "num_updates",
        "warmup",
        "power_function",
        "half_life",
        "annealing",
        "every",
    ):
        assert callable(getattr(ema_core.schedules, name))
    assert (ROOT / "ema_core" / "py.typed").exists()

"""An optional part imported without its extra says which extra to install (DESIGN: optional
dependencies fail "with an error that names the extra"), in a subprocess where the dependency
is hidden (``sys.modules[name] = None`` makes its import fail as if it were not installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    (
        "ema_core.checkpoint",
        "numpy",
        "ema_core.checkpoint needs numpy: pip install ema-core[checkpoint]",
    ),
    ("ema_core.posthoc", "numpy", "ema_core.posthoc needs numpy: pip install ema-core[posthoc]"),
    (
        "ema_core.integrations.lightning",
        "lightning",
        "ema_core.integrations.lightning needs lightning: pip install ema-core[lightning]",
    ),
    (
        "ema_core.integrations.keras",
        "keras",
        "ema_core.integrations.keras needs keras: pip install ema-core[keras]",
    ),
    (
        "ema_core.integrations.accelerate",
        "torch",
        "ema_core.integrations.accelerate needs torch: pip install ema-core[accelerate]",
    ),
]


@pytest.mark.parametrize(("module", "hidden", "message"), CASES)
def test_a_missing_extra_is_named(module: str, hidden: str, message: str) -> None:
    code = (
        f"import sys; sys.modules[{hidden!r}] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"ImportError {message}", out.stdout + out.stderr

"""`make demo` runs examples/demo.py: it must finish and print its agreement table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the demo, in a subprocess: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_agreement_table() -> None:
    out = subprocess.run(
        [sys.executable, "examples/demo.py"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.endswith("agrees, EMA better")]
    assert {row.split()[0] for row in rows} >= {"numpy", "torch", "jax"}
    assert "(a) EMA trajectories agree to 1e-05 relative: yes" in out.stdout

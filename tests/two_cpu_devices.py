"""Run a JAX script on two CPU devices: ``XLA_FLAGS`` must be set before JAX starts, so the
script runs in a subprocess (from the repository root, so that it imports this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_on_two_cpu_devices(script: str, marker: str) -> None:
    """Run ``script`` with two CPU devices; it must exit 0 and print ``marker``."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert marker in proc.stdout, proc.stdout[-4000:]

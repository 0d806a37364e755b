"""Run a JAX script on two CPU devices: ``XLA_FLAGS`` must be set before JAX starts, so the
script runs in a subprocess (from the repository root, so that it imports this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, marker: str, env: Mapping[str, str | None]) -> None:
    """Run ``script`` in a new interpreter from the repository root, with ``os.environ``
    changed by ``env`` (None removes a variable) and this checkout first on ``PYTHONPATH``
    after any path ``env`` gives; it must exit 0 and print ``marker``."""
    merged = {**os.environ, **env}
    merged["PYTHONPATH"] = os.pathsep.join(
        filter(None, [env.get("PYTHONPATH"), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={k: v for k, v in merged.items() if v is not None},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert marker in proc.stdout, proc.stdout[-4000:]


def run_on_two_cpu_devices(script: str, marker: str) -> None:
    """Run ``script`` with two CPU devices; it must exit 0 and print ``marker``."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    run_script(script, marker, env)

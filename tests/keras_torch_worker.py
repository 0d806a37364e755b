"""Run a Keras script on the torch backend: Keras picks its backend at import and the in-process
tests run JAX, so the script runs in a subprocess with ``KERAS_BACKEND=torch``."""

from __future__ import annotations

import os
import subprocess
import sys


def run_on_torch_backend(script: str, marker: str, **env: str) -> None:
    """Run ``script``; it must exit 0 and end its output with ``marker``."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env={**os.environ, "KERAS_BACKEND": "torch", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(marker), done.stdout[-3000:]

"""JAX across processes: 2 processes x 4 CPU devices joined by ``jax.distributed`` (gloo).

``tests/dist_jax_worker.py`` runs once per module in two processes; each prints one line per
check it passed, and the tests below look for those lines in both outputs.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scaling_out import run_workers

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    folder, port = tmp_path_factory.mktemp("jax_dist"), str(_free_port())
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    worker = [sys.executable, "-m", "tests.dist_jax_worker"]
    commands = [[*worker, str(i), port, str(folder)] for i in range(2)]
    return run_workers(commands, env, TIMEOUT)


def _passed(outputs, check):
    for i, log in enumerate(outputs):
        shown = "\n".join(line for line in log.splitlines() if "[Gloo]" not in line)
        assert f"JAX-DIST-OK {check}" in log, f"process {i}:\n{shown[-4000:]}"


def test_two_processes_update_a_global_mesh_with_no_collective(outputs):
    """The compiled update over arrays sharded across both processes' 8 devices holds no
    all-reduce, all-gather, all-to-all, reduce-scatter or collective-permute."""
    _passed(outputs, "no-collectives")


def test_two_processes_update_equals_the_unsharded_update_bit_for_bit(outputs):
    """Four updates (warm-up schedule, a bfloat16 leaf with its float32 shadow): every shard
    equals the same slice of a one-device run; shardings are kept."""
    _passed(outputs, "update-equals-unsharded")


@pytest.mark.skipif(importlib.util.find_spec("orbax") is None, reason="orbax is not installed")
def test_orbax_restores_the_state_onto_another_mesh(outputs):
    """Saved from the (2, 4) mesh by both processes, restored onto a (4, 2) mesh with other
    partition specs: every restored shard equals the saved values bit for bit."""
    _passed(outputs, "orbax-restore-on-another-mesh")


def test_readme_jax_mesh_example_runs(tmp_path):
    from tests import scaling_out

    blocks = scaling_out.blocks("make_mesh", scaling_out.README)
    if not blocks:
        pytest.skip("README.md has no 'Scaling out' section with a JAX mesh example yet")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    proc = subprocess.run(
        [sys.executable, "-c", blocks[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "P('data', 'model') False"

"""An ``EMA`` under two more FSDP2 configurations (CPU, gloo, 4 ranks:
tests/fsdp_configs_worker.py in the shared 4-rank job; the GPU test launches one CUDA rank).

``reshard_after_forward=2`` leaves FSDP2's post-forward params on a (2, 2) mesh between forward
and backward; ``CPUOffloadPolicy`` keeps the shards (and so the shadows) on the CPU. For each,
the averages equal a one-process EMA fed the same full params bit for bit, after updates after
the optimizer step and between forward and backward (the gradients after that are the
reference's too), through ``swap()`` (both ways) from the post-forward state, and through
``state_dict`` / ``full_state_dict`` round trips, also into another sharded EMA and a plain one.

The default ``CPUOffloadPolicy()`` pins its shards' memory, which torch refuses without an
accelerator ("Cannot access accelerator device when none is available"): on the CPU the cases
use ``pin_memory=False``, and ``test_cpu_offload_policy_on_a_cuda_mesh`` runs the default one
on a CUDA device.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.scaling_out import (
    ROOT,
    assert_every_rank,
    rank_results,
    require_fsdp2,
    run_workers,
    shared_launch,
)

torch, dist, fsdp = require_fsdp2()

from tests.fsdp_configs_worker import CASES  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out

TIMEOUT = 90  # seconds for the GPU launch; a hung collective ends here


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, str]]:
    return shared_launch(tmp_path_factory, 4)[1]["configs"]  # 4: reshard_after_forward=2 divides it


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(results, case):
    assert_every_rank(results, case)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_nccl_available()),
    reason="CPUOffloadPolicy() pins memory, which torch refuses without an accelerator: "
    "needs a CUDA device and NCCL",
)
def test_cpu_offload_policy_on_a_cuda_mesh(tmp_path):
    """One rank, a CUDA mesh, the shards offloaded to pinned CPU memory: the shadows' local
    shards stay on the CPU beside the params', and every check of ``check`` holds (outputs
    and gradients, computed on the GPU, within float32 rounding of the CPU reference)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "tests.fsdp_configs_worker", "gpu", str(tmp_path)]
    logs = run_workers([command], env, TIMEOUT)
    assert_every_rank(rank_results([tmp_path / "gpu.0.json"], logs), "gpu")

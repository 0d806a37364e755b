"""FSDP2 params replaced by plain tensors, told apart from FSDP2's own all-gathered copies
(CPU, gloo, 2 ranks, one launch of tests/dtensor_leftover_worker.py).

A plain ``nn.Parameter`` put in a sharded param's place is refused by name at every update,
before any write; the plain copies FSDP2 itself leaves in the module (``unshard()``, a forward
with ``reshard_after_forward=False``) are put back to their shards and never taken for one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.scaling_out import assert_every_rank, rank_results, require_fsdp2, run_workers

torch, dist, fsdp = require_fsdp2()

from tests.dtensor_leftover_worker import CASES  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
TIMEOUT = 90  # seconds for the whole launch; a hung collective ends here


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict[str, str]]:
    folder = tmp_path_factory.mktemp("leftover")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, "-m", "tests.dtensor_leftover_worker"]
    commands = [[*worker, str(rank), str(WORLD), str(folder)] for rank in range(WORLD)]
    logs = run_workers(commands, env, TIMEOUT)
    return rank_results([folder / f"leftover.{rank}.json" for rank in range(WORLD)], logs)


@pytest.mark.parametrize("case", CASES)
def test_case_on_every_rank(results, case):
    assert_every_rank(results, case)

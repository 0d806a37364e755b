"""The Lightning ``EMACallback`` under FSDP2: Lightning's ``ModelParallelStrategy`` on 2 CPU
ranks (gloo), the module sharded by ``fully_shard`` in ``configure_model``, the real ``Trainer``.

The ranks run ``tests/lightning_fsdp2_worker.py`` once per module; the tests read each check's
result on every rank. Each rank's EMA is checked against its own shards: the averages are
DTensors beside the params, and their local shards are bit for bit what ``ema_core.update``
gives on plain copies of that rank's shards after each optimizer step (and within 1e-6 of the
float64 oracle).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.scaling_out import assert_every_rank, rank_results, require_fsdp2, run_workers

pytest.importorskip("lightning.pytorch")
torch, dist, fsdp = require_fsdp2()

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
TIMEOUT = 120  # seconds for the whole job; a hung collective ends here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every rank's check -> "ok" or its traceback (and ``_log``: the end of its output)."""
    folder = tmp_path_factory.mktemp("lightning_fsdp2")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(WORLD),
        "NODE_RANK": "0",
    }
    worker = [sys.executable, "-m", "tests.lightning_fsdp2_worker"]
    logs = run_workers([[*worker, str(r), str(WORLD), str(folder)] for r in range(WORLD)], env,
                       TIMEOUT)  # fmt: skip
    return rank_results([folder / f"{rank}.json" for rank in range(WORLD)], logs)


def test_the_ema_is_the_average_of_each_ranks_shards(ranks: list[dict[str, Any]]) -> None:
    """8 optimizer steps; the layers split 2/1 and 1/0 rows (an empty shard on rank 1)."""
    assert_every_rank(ranks, "whole")
    assert_every_rank(ranks, "ema_is_the_average_of_local_shards")


def test_validation_sees_the_averages_and_training_gets_its_weights_back(
    ranks: list[dict[str, Any]],
) -> None:
    """Inside validation each shard is its average and the forward (FSDP's all-gather) runs
    on them; after it the live shards are back bit for bit; the sanity check (no update yet)
    runs on the live weights."""
    assert_every_rank(ranks, "validation_runs_on_the_averages")


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_last_ckpt_resumes_each_ranks_ema_bit_for_bit(
    ranks: list[dict[str, Any]], kind: str
) -> None:
    """``ModelCheckpoint(save_last=True)`` after one epoch, then ``fit(ckpt_path=last.ckpt)``
    to two: each rank's EMA shards, step and live shards equal the run that never stopped.
    ``sharded``: ``save_distributed_checkpoint=True`` (a DCP folder); ``full``: one file."""
    assert_every_rank(ranks, f"resume_{kind}")


def test_a_checkpoint_written_during_validation_holds_the_live_shards(
    ranks: list[dict[str, Any]],
) -> None:
    """``trainer.save_checkpoint`` inside validation (averages swapped in) writes the live
    shards as the model's state (read back with ``torch.distributed.checkpoint``) and the EMA
    gathered into full tensors in ``meta.pt``; validation goes on with the averages."""
    assert_every_rank(ranks, "checkpoint_in_validation")

"""torch.distributed on CPU (gloo): FSDP2, HSDP, DCP resharding and DDP, in spawned processes.

Each scenario of ``tests/dist_workers.py`` runs once per test run (one process group per rank for
all its checks): "two" and "four" in the shared 2- and 4-rank jobs of
``tests.scaling_out.shared_launch`` ("four" loads the DCP checkpoint "two" saved in the 2-rank
job's folder, onto 4 shards). The tests below read each check's result on every rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scaling_out import (
    assert_every_rank,
    require_fsdp2,
    shared_launch,
)

torch, dist, fsdp = require_fsdp2()

from ema_core.torch import EMA, ddp_ema, full_state_dict  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: `pytest -m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # seconds for the torchrun example; a hung collective ends here


@pytest.fixture(scope="module")
def shared_two(tmp_path_factory):
    return shared_launch(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def two(shared_two):
    return shared_two[1]["two"]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return shared_launch(tmp_path_factory, 4)[1]["four"]


def test_fsdp2_uneven_shards_equal_an_unsharded_replica(two):
    """Linear(5, 3) and Linear(3, 1) on 2 ranks (rows 2/1 and 1/0): every shadow is a DTensor
    with its param's placements and local shape, within 1e-6 of the replica's EMA."""
    assert_every_rank(two, "fsdp_train")


def test_fsdp2_update_issues_no_collective(two):
    """CommDebugMode counts 0 collectives in every update, and > 0 for one full_tensor()."""
    assert_every_rank(two, "no_collectives")


def test_fsdp2_unsharded_params_are_resharded_before_swap_and_construction(two):
    """After an eval forward with reshard_after_forward=False, the forward inside swap() uses
    the averages and the one after it the live weights; an EMA built then tracks shards."""
    assert_every_rank(two, "unsharded_eval_then_swap")


def test_fsdp2_swap_restores_the_shards_after_an_exception(two):
    assert_every_rank(two, "swap_restores_on_error")


def test_full_state_dict_on_rank0_loads_unsharded_and_resharded(two):
    """The rank-0 export loads into an unsharded EMA, and a full dict on every rank into a
    sharded one, bit for bit; the other rank gets {}."""
    assert_every_rank(two, "checkpoints")


def test_dcp_checkpoint_of_two_ranks_loads_on_four_bit_exactly(four):
    assert_every_rank(four, "dcp_load")


def test_ddp_replicas_stay_bit_identical_and_rank0_only_keeps_none_elsewhere(two):
    assert_every_rank(two, "ddp")


def test_hsdp_2x2_with_bf16_mixed_precision(four):
    """fp32 shadows placed (Replicate, Shard(0)), no collective per update, within 1e-6 of an
    EMA of the gathered full params."""
    assert_every_rank(four, "hsdp")


def test_hsdp_guard_finite_refuses_a_nan_in_one_replica_on_every_rank(four):
    # before 2026-12-05 the count was summed over the shard dimension only: ranks 0 and 1
    # refused, ranks 2 and 3 (the other replica group) applied the update
    assert_every_rank(four, "hsdp_guard")


def test_keep_on_is_validated_before_anything_is_built():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"keep_on must be 'all' or 'rank0', got 'rank1'"):
        ddp_ema(model, keep_on="rank1")
    with pytest.raises(ValueError, match="keep_on must be"):
        full_state_dict(EMA(model), keep_on=0)
    if not dist.is_initialized():
        with pytest.raises(ValueError, match=r"needs an initialised torch\.distributed"):
            ddp_ema(model, keep_on="rank0")
    assert isinstance(ddp_ema(model, decay=0.5), EMA)


def test_a_dtensor_shadow_refuses_another_device():
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        fsdp.fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(ValueError, match=r"device=cpu:1 differs from the device"):
            EMA(model, device="cpu:1")
        from torch.distributed.tensor.debug import CommDebugMode

        sharded = EMA(model, decay=0.5)
        exported = full_state_dict(sharded)
        assert type(exported["shadow"]["weight"]) is torch.Tensor
        exported["shadow"]["weight"] += 1.0
        with CommDebugMode() as comm:  # a full dict on every rank fills the shards locally
            sharded.load_state_dict(exported)
        assert comm.get_total_counts() == 0
        assert torch.equal(sharded.average["weight"].full_tensor(), exported["shadow"]["weight"])
    finally:
        dist.destroy_process_group()


def test_bias_corrected_average_and_swap_on_dtensor_shadows():
    """init="zeros" on one FSDP2 rank: the corrected average, and what swap() writes into the
    shard, equal those of an EMA of an unsharded copy."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh

    import ema_core as ema

    config = ema.Config(schedule=ema.schedules.warmup(0.9), init="zeros")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.Linear(3, 2)
        sharded = copy.deepcopy(plain)
        fsdp.fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        emas = [EMA(plain, config=config), EMA(sharded, config=config)]
        for step in range(1, 4):
            with torch.no_grad():
                for model in (plain, sharded):
                    for p in model.parameters():
                        p.mul_(0.5).add_(step)
            for e in emas:
                e.update()
        for name, value in emas[0].average.items():
            assert torch.equal(emas[1].average[name].full_tensor(), value), name
        with emas[1].swap():
            assert torch.equal(sharded.weight.full_tensor(), emas[0].average["weight"])
    finally:
        dist.destroy_process_group()


def test_params_whose_local_shard_fsdp2_replaced_are_still_followed():
    """``module.to(...)`` makes FSDP2 give each sharded param a new local tensor (the param
    object stays): the next update reads the new one, not the tensor it replaced."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        fsdp.fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        average = EMA(model, decay=0.5)
        average.update()
        before = model.weight._local_tensor
        model.to(torch.float64)
        assert model.weight._local_tensor is not before  # what this test relies on
        with torch.no_grad():
            model.weight.fill_(2.0)
        old = average.average["weight"].full_tensor().clone()
        average.update()
        expected = (old.double() + 2.0) / 2  # the blend with decay 0.5, exact in float64
        got = average.average["weight"].full_tensor().double()
        torch.testing.assert_close(got, expected, rtol=2 * 2.0**-23, atol=0)  # 2 float32 ulp
    finally:
        dist.destroy_process_group()


def test_readme_torchrun_fsdp2_example_runs(tmp_path):
    from tests import scaling_out

    blocks = scaling_out.blocks("fully_shard", scaling_out.README)
    if not blocks:
        pytest.skip("README.md has no 'Scaling out' section with an FSDP2 example yet")
    (tmp_path / "train_fsdp.py").write_text(blocks[0])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    proc = subprocess.run(
        [*command, "2", "train_fsdp.py"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 100, eval loss with the EMA" in proc.stdout
    assert (tmp_path / "ema_full.pt").exists() and (tmp_path / "ema_ckpt").is_dir()

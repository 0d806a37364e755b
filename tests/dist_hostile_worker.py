"""Worker processes for tests/test_dist_hostile_torch.py: hostile inputs to FSDP2 EMAs (gloo).

The cases run as the "hostile" part of the shared 2-rank job (``tests.scaling_out.SHARED``):
all ranks run every case in the same order (a barrier after each, so that a
case that hangs one rank is seen as a timeout, not as the next case failing) and write
``DIR/hostile.RANK.json``: case name -> "ok" or the traceback.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

import ema_core
from ema_core import posthoc
from ema_core.torch import EMA, EMABank, _dtensor, ddp_ema, full_state_dict


def net() -> torch.nn.Sequential:
    """Linear(4, 4) and Linear(4, 1): on 2 ranks the last bias is empty on rank 1."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    with torch.no_grad():  # quarters: every blend below is exact in float32
        for param in model.parameters():
            param.copy_(torch.arange(param.numel()).reshape(param.shape) / 4)
    return model


def locals_of(ema: EMA) -> dict[str, torch.Tensor]:
    """This rank's part of every average, copied."""
    return {
        n: (t.to_local() if isinstance(t, DTensor) else t).clone() for n, t in ema.average.items()
    }


def unchanged(ema: EMA, before: dict[str, torch.Tensor]) -> None:
    for name, value in locals_of(ema).items():
        assert torch.equal(value, before[name]), f"{name} was written"


class Cases:
    def __init__(self, world: int) -> None:
        self.mesh = init_device_mesh("cpu", (world,))
        self.other = init_device_mesh("cpu", (world,), mesh_dim_names=("other",))

    def sharded(self) -> tuple[torch.nn.Sequential, EMA]:
        model = net()
        fully_shard(model, mesh=self.mesh)
        return model, EMA(model, decay=0.5)

    def load_refuses_other_placements_before_writing(self) -> None:
        _, ema = self.sharded()
        state = ema.state_dict()
        bumped = distribute_tensor(
            state["shadow"]["0.weight"].full_tensor() + 1, self.mesh, [Shard(0)]
        )
        whole = state["shadow"]["1.weight"].full_tensor()
        for bad, where in (
            (distribute_tensor(whole, self.mesh, [Replicate()]), "placements"),
            (distribute_tensor(whole, self.other, [Shard(0)]), "mesh"),
        ):
            before = locals_of(ema)
            shadows = {**state["shadow"], "0.weight": bumped, "1.weight": bad}
            with pytest.raises(ValueError, match=rf"\['1\.weight'\].*{where}"):
                ema.load_state_dict({**state, "shadow": shadows})
            unchanged(ema, before)

    def copy_to_refuses_a_sharded_average_into_a_plain_tensor(self) -> None:
        tensors = {
            "plain": torch.zeros(3),
            "sharded": distribute_tensor(torch.ones(4, 2), self.mesh, [Shard(0)]),
        }
        ema = EMA(tensors, decay=0.5)
        targets = {"plain": torch.full((3,), 7.0), "sharded": torch.full((4, 2), 7.0)}
        with pytest.raises(
            ValueError, match=r"'sharded': the target is a plain tensor.*average is a DTensor"
        ):
            ema.copy_to(targets)
        assert all(bool((t == 7.0).all()) for t in targets.values())  # nothing written
        elsewhere = {
            **targets,
            "sharded": distribute_tensor(torch.ones(4, 2), self.other, [Shard(0)]),
        }
        with pytest.raises(ValueError, match=r"'sharded'.*mesh"):
            ema.copy_to(elsewhere)
        assert bool((targets["plain"] == 7.0).all())

    def a_param_replaced_by_a_new_dtensor_is_followed(self) -> None:
        model, ema = self.sharded()
        whole = model[0].weight.full_tensor().detach()
        model[0].weight = torch.nn.Parameter(distribute_tensor(whole + 10, self.mesh, [Shard(0)]))
        with CommDebugMode() as comm:
            ema.update()
        assert comm.get_total_counts() == 0
        assert torch.equal(ema.average["0.weight"].full_tensor(), whole + 5)  # exact: 10 / 2

    def a_param_resharded_another_way_is_refused_by_name(self) -> None:
        for mesh, placements in ((self.mesh, [Replicate()]), (self.other, [Shard(0)])):
            model, ema = self.sharded()
            whole = model[0].weight.full_tensor().detach()
            new = distribute_tensor(whole + 10, mesh, placements)
            model[0].weight = torch.nn.Parameter(new)
            before = locals_of(ema)
            with pytest.raises(ValueError, match=r"'0\.weight'.*DTensor on mesh"):
                ema.update()
            unchanged(ema, before)
            with pytest.raises(ValueError, match=r"'0\.weight'"):  # and at every later call
                ema.update()

    def a_model_sharded_after_the_ema_is_refused_by_name(self) -> None:
        model = net()
        ema = EMA(model, decay=0.5)
        before = locals_of(ema)
        fully_shard(model, mesh=self.mesh)
        with pytest.raises(ValueError, match=r"'0\.weight'.*build a new EMA"):
            ema.update()
        unchanged(ema, before)

    def unsharded_params_left_by_a_forward_are_not_tracked(self) -> None:
        model, ema = self.sharded()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(2.0)
        start = {n: t.full_tensor().clone() for n, t in ema.average.items()}
        model.set_reshard_after_forward(False)
        with torch.no_grad():
            model(torch.ones(2, 4))  # the module now holds all-gathered plain tensors
        assert not isinstance(model[0].weight, DTensor)
        ema.update()  # from the shards, which FSDP2 keeps
        model.reshard()
        for name, value in ema.average.items():
            assert torch.equal(value.full_tensor(), start[name] + 1.0), name

    def partly_sharded_module_round_trips_bit_for_bit(self) -> None:
        model = net()
        fully_shard(model[0], mesh=self.mesh)
        ema = EMA(model, decay=0.75)
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(1.5)
        with CommDebugMode() as comm:
            ema.update()
        assert comm.get_total_counts() == 0
        assert isinstance(ema.average["0.weight"], DTensor)
        assert not isinstance(ema.average["1.weight"], DTensor)
        exported = full_state_dict(ema, keep_on="all")
        plain = EMA(net(), decay=0.75)
        plain.load_state_dict(exported)
        again = full_state_dict(plain, keep_on="all")
        for name, value in exported["shadow"].items():
            assert torch.equal(again["shadow"][name], value), name

    def guard_finite_refuses_on_every_rank(self) -> None:
        """A NaN in rank 0's shard only: every rank refuses, none updates (nor hangs)."""
        model = net()
        fully_shard(model, mesh=self.mesh)
        config = ema_core.Config(schedule=ema_core.schedules.constant(0.5), guard_finite=True)
        ema = EMA(model, config=config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)
            if dist.get_rank() == 0:
                model[0].weight.to_local()[0, 0] = float("nan")
        before = locals_of(ema)
        with pytest.raises(ValueError, match=r"'0\.weight'.*NaN or infinite"):
            ema.update()
        unchanged(ema, before)
        assert ema.step == 0

    def finite_stand_ins_agree_on_every_rank(self) -> None:
        sharded = distribute_tensor(torch.ones(4, 2), self.mesh, [Shard(0)])
        with torch.no_grad():
            if dist.get_rank() == 1:
                sharded.to_local()[0, 0] = float("inf")
        clean = distribute_tensor(torch.ones(4), self.mesh, [Shard(0)])
        plain = torch.ones(2)
        out = _dtensor.finite_stand_ins([sharded, clean, plain])
        assert bool(torch.isnan(out[0])) and float(out[1]) == 0.0 and float(out[2]) == 0.0
        if dist.get_rank() == 0:  # a plain tensor bad on one rank: bad on every rank
            plain = torch.tensor([1.0, float("nan")])
        assert bool(torch.isnan(_dtensor.finite_stand_ins([clean, plain])[1]))

    def guard_finite_counts_a_buffer_bad_on_one_rank_on_every_rank(self) -> None:
        """FSDP2 leaves buffers whole on each rank: a NaN in rank 1's BatchNorm statistics
        refuses the update on both ranks (checked alone, rank 0 would have updated)."""
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        fully_shard(model, mesh=self.mesh)
        config = ema_core.Config(schedule=0.5, guard_finite=True, buffers="average")
        ema = EMA(model, config=config)
        with torch.no_grad():
            if dist.get_rank() == 1:
                model[1].running_mean[0] = float("nan")
        before = locals_of(ema)
        with pytest.raises(ValueError, match=r"'1\.running_mean'.*NaN or infinite"):
            ema.update()
        unchanged(ema, before)
        assert ema.step == 0

    def bank_guard_finite_refuses_on_every_rank(self) -> None:
        """The bank decides as one EMA does: a NaN in rank 0's shard refuses on every rank."""
        model = net()
        fully_shard(model, mesh=self.mesh)
        guarded = ema_core.Config(schedule=0.5, guard_finite=True)
        bank = EMABank(model, [guarded, ema_core.Config(schedule=0.75)])
        with torch.no_grad():
            if dist.get_rank() == 0:
                model[0].weight.to_local()[0, 0] = float("nan")
        before = [locals_of(ema) for ema in bank]
        with pytest.raises(ValueError, match=r"'0\.weight'.*NaN or infinite"):
            bank.update()
        for ema, kept in zip(bank, before, strict=True):
            unchanged(ema, kept)
            assert ema.step == 0

    def snapshots_of_sharded_tensors_are_refused_by_name(self) -> None:
        """A bank with snapshot_every over FSDP2 params is refused when built (before any
        update); save_snapshot of DTensor averages and reconstruct with a DTensor like= are
        refused by name, not with torch's own error."""
        model = net()
        fully_shard(model, mesh=self.mesh)
        with tempfile.TemporaryDirectory() as folder:
            with pytest.raises(ValueError, match=r"'0\.weight' is sharded"):
                EMABank(model, sigma_rels=(0.05, 0.1), snapshot_every=1, snapshot_dir=folder)
            ema = EMA(model, config=ema_core.Config(schedule=ema_core.schedules.power_function(
                sigma_rel=0.05), init="copy"))  # fmt: skip
            ema.update()
            with pytest.raises(ValueError, match=r"averages\['0\.weight'\] is a DTensor"):
                posthoc.save_snapshot(folder, ema.average, step=1, sigma_rel=0.05)
            assert os.listdir(folder) == []
            plain = EMA(net(), config=ema.config)
            for step in (1, 2):
                plain.update()
                for sigma_rel in (0.05, 0.1):
                    posthoc.save_snapshot(folder, plain.average, step=step, sigma_rel=sigma_rel)
            with pytest.raises(ValueError, match=r"like\['0\.weight'\] is a DTensor"):
                posthoc.reconstruct(folder, 0.07, like=model.state_dict())

    def ddp_ema_refuses_bad_options_on_every_rank(self) -> None:
        """keep_on="rank0": the ranks that keep none refuse what rank 0 refuses."""
        model = net()
        with pytest.raises(ValueError, match="decay"):
            ddp_ema(model, keep_on="rank0", decay=2.0)
        with pytest.raises(TypeError, match="decai"):
            ddp_ema(model, keep_on="rank0", decai=0.9)
        with pytest.raises(ValueError, match="no tensor"):
            ddp_ema(model, keep_on="rank0", exclude="*")
        kept = ddp_ema(model, keep_on="rank0", decay=0.5, exclude="1.*")
        assert (kept is None) == (dist.get_rank() != 0)


CASES = [name for name in vars(Cases) if not name.startswith("_") and name != "sharded"]


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Cases, list[str]]:
    """This module's part of a shared job (``tests.scaling_out.SHARED``): the cases, in order."""
    return Cases(world), CASES

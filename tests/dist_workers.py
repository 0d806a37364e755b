"""The checks of tests/test_dist_torch.py (CPU, gloo), parts of the shared multi-rank jobs.

``part(tag, ...)`` hands ``tests.scaling_out``'s shared worker a ``Run`` and the names of the
checks of scenario ``tag`` ("two" on 2 ranks, "four" on 4); every rank runs them in the same
order (the checks issue collectives) and the worker records each as "ok" or its traceback. A
check that fails on one rank may leave the others waiting in a collective; the parent's timeout
ends them and reports what was written.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.debug import CommDebugMode
from torch.nn.parallel import DistributedDataParallel as DDP

import ema_core as ema
from ema_core.torch import EMA, ddp_ema, full_state_dict

CONFIG = ema.Config(schedule=ema.schedules.warmup(0.99), init="copy")
STEPS = 8


def net(seed: int = 0) -> torch.nn.Sequential:
    """Linear(5, 3) and Linear(3, 1): on 2 ranks their rows split 2/1 and 1/0 (uneven, empty)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    model.register_buffer("count", torch.zeros((), dtype=torch.int64))
    return model


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(4, 5, generator=torch.Generator().manual_seed(1000 * step + rank))


def sgd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        model.count.add_(1)


def shard(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    for layer in (model[0], model[2]):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def mine(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: its local shard of a DTensor, a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


class Run:
    """Shared objects of one scenario; the checks are its methods, run in order."""

    def __init__(self, rank: int, world: int, folder: Path) -> None:
        self.rank, self.world, self.folder = rank, world, folder
        self.results: dict[str, str] = {}

    def check(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            self.results[name] = "ok"
        except Exception:
            self.results[name] = traceback.format_exc()

    # ---- 2 ranks: FSDP2 with uneven shards, checkpoints, DDP ----
    def fsdp_train(self) -> None:
        self.replica = net()
        self.model = shard(copy.deepcopy(self.replica))
        self.ema, self.ema_ref = EMA(self.model, config=CONFIG), EMA(self.replica, config=CONFIG)
        opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        opt_ref = torch.optim.SGD(self.replica.parameters(), lr=0.1, momentum=0.9)
        self.comm_counts = []
        for step in range(1, STEPS + 1):
            sgd_step(self.model, opt, batch(step, self.rank))
            sgd_step(self.replica, opt_ref, torch.cat([batch(step, r) for r in range(self.world)]))
            with CommDebugMode() as comm:
                self.ema.update()
            self.comm_counts.append(comm.get_total_counts())
            self.ema_ref.update()
        for name, shadow in self.ema.average.items():
            live = dict(self.model.named_parameters()).get(name)
            if live is not None:
                assert isinstance(shadow, DTensor), name
                assert shadow.placements == live.placements, name
                assert shadow.to_local().shape == live.to_local().shape, name
            diff = max_diff(full(shadow), self.ema_ref.average[name])
            assert diff <= 1e-6, (name, diff)
        assert self.model[2].weight.to_local().shape[0] == (1, 0)[self.rank]  # empty on rank 1

    def no_collectives(self) -> None:
        assert self.comm_counts == [0] * STEPS, self.comm_counts
        with CommDebugMode() as comm:  # the counter does see a collective
            self.model[0].weight.full_tensor()
        assert comm.get_total_counts() > 0

    def unsharded_eval_then_swap(self) -> None:
        x = batch(99, 0)
        self.model.set_reshard_after_forward(False)
        with torch.no_grad():
            self.model(x)  # leaves every module unsharded
        assert not isinstance(self.model[0].weight, DTensor)
        averaged = copy.deepcopy(self.replica)
        self.ema_ref.copy_to(averaged)
        with torch.no_grad(), self.ema.swap():
            inside = self.model(x)
        with torch.no_grad():
            after = self.model(x)
        assert max_diff(inside, averaged(x)) <= 1e-6
        assert max_diff(after, self.replica(x)) <= 1e-6
        again = EMA(self.model, config=CONFIG)  # built while unsharded: it reshards first
        assert isinstance(self.model[0].weight, DTensor)
        assert all(isinstance(again.average[n], DTensor) for n in ("0.weight", "2.bias"))
        self.model.set_reshard_after_forward(True)

    def swap_restores_on_error(self) -> None:
        before = {n: full(p).clone() for n, p in self.model.named_parameters()}
        try:
            with self.ema.swap():
                assert torch.equal(full(self.model[0].weight), full(self.ema.average["0.weight"]))
                raise KeyError("inside")
        except KeyError:
            pass
        for name, param in self.model.named_parameters():
            assert torch.equal(full(param), before[name]), name

    def checkpoints(self) -> None:
        dcp.save(self.ema.state_dict(), checkpoint_id=self.folder / "ckpt")
        exported = full_state_dict(self.ema)
        everywhere = full_state_dict(self.ema, keep_on="all")
        expected = {n: full(t) for n, t in self.ema.average.items()}  # gathers on every rank
        if self.rank == 0:
            torch.save(exported, self.folder / "full.pt")
            plain = EMA(copy.deepcopy(self.replica), config=CONFIG)
            plain.load_state_dict(torch.load(self.folder / "full.pt", weights_only=True))
            for name, value in plain.average.items():
                assert torch.equal(value, expected[name]), name
        else:
            assert exported == {}
        resharded = EMA(shard(net(seed=5)), config=CONFIG)  # full tensors into DTensor shards
        resharded.load_state_dict(everywhere)
        for name, value in resharded.average.items():
            assert torch.equal(full(value), expected[name]), name
        assert resharded.step == self.ema.step

    def ddp(self) -> None:
        model = DDP(
            torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        )
        keys = set(model.module.state_dict())
        every = ddp_ema(model, config=CONFIG)
        only0 = ddp_ema(model, config=CONFIG, keep_on="rank0")
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(1, 51):
            opt.zero_grad()
            x = torch.randn(3, 4, generator=torch.Generator().manual_seed(step * 7 + self.rank))
            model(x).pow(2).mean().backward()
            opt.step()
            every.update()
            if only0 is not None:
                only0.update()
        flat = torch.cat([t.reshape(-1) for t in every.average.values()])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(g, gathered[0]) for g in gathered)
        assert set(model.module.state_dict()) == keys  # nothing was added to the module
        if self.rank == 0:
            assert only0 is not None
            for name, value in only0.average.items():
                assert torch.equal(value, every.average[name]), name
        else:
            assert only0 is None

    # ---- 4 ranks: the 2-rank DCP checkpoint loaded onto another sharding ----
    def dcp_load(self) -> None:
        two = self.folder.parent / "shared2"  # the 2-rank shared job's folder (shared_launch)
        loaded = EMA(shard(net(seed=7)), config=CONFIG)
        state = loaded.state_dict()
        dcp.load(state, checkpoint_id=two / "ckpt")
        loaded.load_state_dict(state)
        rows = 1 if self.rank < 3 else 0  # 3 rows on 4 ranks: the last shard is empty
        assert loaded.average["0.weight"].to_local().shape == (rows, 5)
        exported = full_state_dict(loaded)
        if self.rank == 0:
            saved = torch.load(two / "full.pt", weights_only=True)
            assert saved["shadow"].keys() == exported["shadow"].keys()
            for name, value in saved["shadow"].items():
                assert torch.equal(value, exported["shadow"][name]), name
            assert torch.equal(saved["step"], exported["step"])
            assert torch.equal(saved["weight"], exported["weight"])
            assert saved["config"] == exported["config"]

    # ---- 4 ranks: 2 x 2 HSDP with bf16 mixed precision ----
    def hsdp(self) -> None:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        model = shard(net(), mesh=mesh, mp_policy=policy)
        average = EMA(model, config=CONFIG)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        live: dict[str, torch.Tensor] = {}
        reference: EMA | None = None  # an EMA of the gathered full tensors, refilled in place
        for step in range(1, STEPS + 1):
            sgd_step(model, opt, batch(step, mesh.get_local_rank("replicate")))
            with CommDebugMode() as comm:
                average.update()
            assert comm.get_total_counts() == 0, step
            for name, tensor in model.state_dict().items():
                live.setdefault(name, torch.empty_like(full(tensor))).copy_(full(tensor))
            reference = reference or EMA(live, config=CONFIG)
            reference.update()
        assert reference is not None
        weight = average.average["0.weight"]
        assert weight.dtype == torch.float32 and model[0].weight.dtype == torch.float32
        assert weight.placements == (Replicate(), Shard(0)) == model[0].weight.placements
        for name, value in average.average.items():
            assert max_diff(full(value), reference.average[name]) <= 1e-6, name
        with average.swap():
            assert torch.equal(full(model[0].weight), full(weight))

    # ---- 4 ranks: a NaN in one replica's shard under HSDP refuses the update on all ranks ----
    def hsdp_guard(self) -> None:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
        model = shard(net(), mesh=mesh)
        guarded = ema.Config(schedule=ema.schedules.constant(0.5), guard_finite=True)
        average = EMA(model, config=guarded)
        shadow = {k: v.detach().clone() for k, v in model.named_parameters()}
        before = {k: mine(v).clone() for k, v in average.average.items()}
        with torch.no_grad():
            if self.rank == 0:  # replica group 0 only: ranks 2 and 3 hold a clean copy
                model[0].weight.to_local()[0, 0] = float("nan")
        try:
            average.update()
        except ValueError as error:
            assert "'0.weight'" in str(error), error
        else:
            raise AssertionError(f"rank {self.rank} applied the update")
        assert average.step == 0
        for name, value in average.average.items():
            assert torch.equal(mine(value), before[name]), name
        params = {k: v.detach() for k, v in model.named_parameters()}
        try:  # the functional call over the same DTensors answers alike
            ema.ema_update(shadow, params, 1, config=guarded)
        except ValueError:
            pass
        else:
            raise AssertionError(f"rank {self.rank}: ema_update applied the update")
        for name, value in shadow.items():
            assert torch.equal(mine(value), before[name]), name


SCENARIOS = {
    "two": (
        "fsdp_train",
        "no_collectives",
        "unsharded_eval_then_swap",
        "swap_restores_on_error",
        "checkpoints",
        "ddp",
    ),
    "four": ("dcp_load", "hsdp", "hsdp_guard"),
}


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Run, tuple[str, ...]]:
    """Scenario ``tag`` as a part of a shared job (``tests.scaling_out.SHARED``)."""
    return Run(rank, world, folder), SCENARIOS[tag]

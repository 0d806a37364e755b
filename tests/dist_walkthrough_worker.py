"""Worker processes for tests/test_dist_walkthrough.py: a new user's DDP and FSDP2 walkthrough.

The cases run as the "walk" part of the shared 2-rank job (``tests.scaling_out.SHARED``; gloo, CPU):
every rank runs them in the same order, a barrier after each, and writes ``DIR/walk.RANK.json``:
case name -> "ok" or the traceback. ``fsdp_file_round_trip`` leaves ``DIR/full.safetensors`` and
``DIR/reference.pt`` for the parent to load into an unsharded EMA (2 ranks -> 1).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

import ema_core
from ema_core.checkpoint import load, save
from ema_core.torch import EMA, ddp_ema, full_state_dict

CONFIG = ema_core.Config(schedule=ema_core.schedules.warmup(0.99), init="copy")


def net(seed: int = 0) -> torch.nn.Sequential:
    """Linear(6, 5) and Linear(5, 3): rows 3/2 and 2/1 on 2 ranks."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def shard(model: torch.nn.Module, mesh: object, **options: object) -> torch.nn.Module:
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh, **options)
    fully_shard(model, mesh=mesh, **options)
    return model


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    batch = torch.randn(4, 6, generator=torch.Generator().manual_seed(100 * step + dist.get_rank()))
    opt.zero_grad()
    model(batch).pow(2).mean().backward()
    opt.step()


class Cases:
    def __init__(self, world: int, folder: Path) -> None:
        self.mesh = init_device_mesh("cpu", (world,))
        self.folder = folder  # the shared job's folder

    def ddp_ema_refuses_device_and_names_on_every_rank(self) -> None:
        """keep_on="rank0": rank 0 builds an EMA, the others only check; both refuse a meta,
        unknown or non-device ``device=`` and word an unknown option alike (rank 1 used to
        return None for device="meta" while rank 0 raised)."""
        model = DDP(net())
        with pytest.raises(ValueError, match="device='meta'"):
            ddp_ema(model, keep_on="rank0", device="meta")
        with pytest.raises(ValueError, match="device='nonsense' is not a device"):
            ddp_ema(model, keep_on="rank0", device="nonsense")
        with pytest.raises(TypeError, match=r"device must be a torch\.device"):
            ddp_ema(model, keep_on="rank0", device=3.5)
        with pytest.raises(TypeError, match=r"^EMA\.__init__\(\) got an unexpected keyword"):
            ddp_ema(model, keep_on="rank0", decayy=0.9)

    def swap_refuses_a_model_sharded_after_the_ema(self) -> None:
        """swap() of an EMA whose model was sharded after it (or holds a plain tensor in a
        sharded param's place) is update()'s ValueError on every rank, the model unchanged
        (it was torch's RuntimeError about mixed Tensor and DTensor)."""
        late = net()
        averaged = EMA(late, config=CONFIG)
        shard(late, self.mesh)
        before = [full(p).clone() for p in late.parameters()]
        with pytest.raises(ValueError, match="keeps the sharding it was built with"):
            averaged.swap().__enter__()
        assert all(torch.equal(full(p), b) for p, b in zip(late.parameters(), before, strict=True))
        model = shard(net(), self.mesh)
        sharded = EMA(model, config=CONFIG)
        model[0].weight = torch.nn.Parameter(torch.zeros(5, 6))
        with pytest.raises(ValueError, match="is a plain tensor"):
            sharded.swap().__enter__()
        assert torch.equal(model[0].weight, torch.zeros(5, 6))

    def ddp_file_resume_is_bit_exact(self) -> None:
        """EMA(DDP(model)) and EMA(model.module) share names; saved on rank 0 with
        checkpoint.save, loaded on every rank, the run continues bit for bit."""
        model = DDP(net())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        wrapped, inner = EMA(model, config=CONFIG), ddp_ema(model.module, config=CONFIG)
        assert inner is not None and list(wrapped.average) == list(inner.average)
        for step in range(1, 4):
            train_step(model, opt, step)
            wrapped.update()
        path = self.folder / "ddp.safetensors"
        if dist.get_rank() == 0:
            save(path, wrapped)
        dist.barrier()
        resumed_model = DDP(copy.deepcopy(model.module))
        resumed_opt = torch.optim.SGD(resumed_model.parameters(), lr=0.1)
        resumed = load(path, EMA(resumed_model, config=CONFIG))
        for step in range(4, 7):
            train_step(model, opt, step)
            wrapped.update()
            train_step(resumed_model, resumed_opt, step)
            resumed.update()
        assert resumed.step == wrapped.step == 6
        for name, value in wrapped.average.items():
            assert torch.equal(resumed.average[name], value), name

    def fsdp_file_round_trip(self) -> None:
        """bf16 mixed precision: the sharded EMA equals an EMA of the gathered params bit for
        bit; its full_state_dict saved on rank 0 loads into a model sharded another way; a
        save of the {} that other ranks get names rank 0 and writes nothing; a sharded state
        into an unsharded EMA is refused, naming full_state_dict()."""
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
        model = shard(net(), self.mesh, mp_policy=policy)
        averaged = EMA(model, config=CONFIG)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        live: dict[str, torch.Tensor] = {}
        reference: EMA | None = None
        for step in range(1, 4):
            train_step(model, opt, step)
            averaged.update()
            for name, tensor in model.state_dict().items():
                live.setdefault(name, torch.empty_like(full(tensor))).copy_(full(tensor))
            reference = reference or EMA(live, config=CONFIG)
            reference.update()
        assert reference is not None
        for name, value in averaged.average.items():
            assert torch.equal(full(value), reference.average[name]), name
        exported = full_state_dict(averaged)
        path = self.folder / "full.safetensors"
        if dist.get_rank() == 0:
            save(path, exported)
            torch.save(dict(reference.average), self.folder / "reference.pt")
        else:
            with pytest.raises(TypeError, match=r"got an empty dict .*save on rank 0 only"):
                save(self.folder / "other.safetensors", exported)
            assert not list(self.folder.glob("*other*"))
        dist.barrier()
        root_only = EMA(fully_shard(net(seed=1), mesh=self.mesh), config=CONFIG)
        load(path, root_only)
        for name, value in root_only.average.items():
            assert torch.equal(full(value), reference.average[name]), name
        with pytest.raises(ValueError, match=r"is a DTensor \(sharded\).*full_state_dict"):
            EMA(net(), config=CONFIG).load_state_dict(averaged.state_dict())


CASES = [name for name in vars(Cases) if not name.startswith("_")]


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Cases, list[str]]:
    """This module's part of a shared job (``tests.scaling_out.SHARED``): the cases, in order."""
    return Cases(world, folder), CASES

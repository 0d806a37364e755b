"""Worker processes for tests/test_dist_hunt_fixes_1208.py (CPU, gloo): params FSDP2 leaves
alone, ``model.to(dtype)`` of a sharded model, and the functional ``guard_finite`` over
DTensors.

The cases run as the "hunt1208" part of the shared 2-rank job (``tests.scaling_out.SHARED``):
all ranks run every case in the same order (a barrier after each) and write
``DIR/hunt1208.RANK.json``: case name -> "ok" or the traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

import ema_core
from ema_core.torch import EMA


def net() -> torch.nn.Sequential:
    """Linear(4, 4) and Linear(4, 2) in quarters: every blend below is exact."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.arange(param.numel()).reshape(param.shape) / 4)
    return model


def step(model: torch.nn.Module) -> None:
    """The same change on every rank (to every shard and to the plain params)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)


def fulls(ema: EMA) -> dict[str, torch.Tensor]:
    return {
        n: (t.full_tensor() if isinstance(t, DTensor) else t).clone()
        for n, t in ema.average.items()
    }


class Cases:
    def __init__(self, world: int) -> None:
        self.mesh = init_device_mesh("cpu", (world,))

    def a_param_fsdp2_ignores_is_tracked_as_a_plain_tensor(self) -> None:
        reference, model = net(), net()
        fully_shard(model, mesh=self.mesh, ignored_params={model[1].bias})
        assert not isinstance(model[1].bias, DTensor) and isinstance(model[1].weight, DTensor)
        ema, ref = EMA(model, decay=0.5), EMA(reference, decay=0.5)
        for _ in range(2):
            step(model)
            step(reference)
            ema.update()
            ref.update()
        got, want = fulls(ema), fulls(ref)
        assert sorted(got) == sorted(want)
        for name in want:
            assert torch.equal(got[name], want[name]), name
        assert not isinstance(ema.average["1.bias"], DTensor)
        excluded = EMA(model, decay=0.5, exclude="1.bias")
        assert "1.bias" not in excluded.average and "1.weight" in excluded.average

    def a_param_registered_after_fully_shard_is_tracked(self) -> None:
        model = net()
        fully_shard(model, mesh=self.mesh)
        model[1].scale = torch.nn.Parameter(torch.ones(2))
        ema = EMA(model, decay=0.5)
        with torch.no_grad():
            model[1].scale.fill_(3.0)
        ema.update()
        assert torch.equal(ema.average["1.scale"], torch.full((2,), 2.0))

    def an_ema_built_inside_forward_is_still_refused(self) -> None:
        model = net()
        fully_shard(model, mesh=self.mesh, reshard_after_forward=False)
        seen: list[BaseException] = []

        def build(*_: object) -> None:
            try:
                EMA(model, decay=0.5)
            except ValueError as err:
                seen.append(err)

        model[1].register_forward_hook(build)
        with torch.no_grad():
            model(torch.ones(2, 4))
        assert len(seen) == 1 and "is not sharded after reshard()" in str(seen[0]), seen

    def model_to_dtype_converts_sharded_shadows_as_plain_ones(self) -> None:
        for dtype, options in ((torch.float64, {}), (torch.bfloat16, {"dtype": "same"})):
            reference, model = net(), net()
            fully_shard(model, mesh=self.mesh)
            ema = EMA(model, decay=0.5, **options)
            ref = EMA(reference, decay=0.5, **options)
            model.to(dtype)
            reference.to(dtype)
            step(model)
            step(reference)
            ema.update()
            ref.update()
            got, want = fulls(ema), fulls(ref)
            for name in want:
                assert got[name].dtype == want[name].dtype == dtype, (name, got[name].dtype)
                assert torch.equal(got[name], want[name]), name

    def functional_guard_finite_refuses_on_every_rank(self) -> None:
        config = ema_core.Config(schedule=0.5, guard_finite=True)
        param = distribute_tensor(torch.ones(4, 2), self.mesh, [Shard(0)])
        shadow = {"w": distribute_tensor(torch.zeros(4, 2), self.mesh, [Shard(0)])}
        with torch.no_grad():
            if dist.get_rank() == 1:
                param.to_local()[0, 0] = float("nan")
        with pytest.raises(ValueError, match=r"params\['w'\] holds NaN"):
            ema_core.ema_update(shadow, {"w": param}, 1, config=config)
        assert torch.equal(shadow["w"].to_local(), torch.zeros(2, 2))
        state = ema_core.init({"w": param}, config)
        with pytest.raises(ValueError, match=r"holds NaN"):
            ema_core.update(state, {"w": param}, config)


CASES = [name for name in vars(Cases) if not name.startswith("_")]


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Cases, list[str]]:
    """This module's part of a shared job (``tests.scaling_out.SHARED``): the cases, in order."""
    return Cases(world), CASES

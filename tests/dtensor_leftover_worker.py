"""Worker processes for tests/test_torch_leftovers_dtensor.py: an FSDP2 param replaced by a plain
tensor, told apart from FSDP2's own all-gathered copies (CPU, gloo).

The cases run as the "leftover" part of the shared 2-rank job (``tests.scaling_out.SHARED``): all
ranks run every case in the same order (a barrier after each) and write ``DIR/leftover.RANK.json``:
case name -> "ok" or the traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ema_core.torch import EMA


def net() -> torch.nn.Sequential:
    """Linear(4, 4), Linear(4, 1) and a plain float buffer; quarters, so blends are exact."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.arange(param.numel()).reshape(param.shape) / 4)
    model.register_buffer("scale", torch.ones(()))
    return model


def locals_of(ema: EMA) -> dict[str, torch.Tensor]:
    """This rank's part of every average, copied."""
    return {
        n: (t.to_local() if isinstance(t, DTensor) else t).clone() for n, t in ema.average.items()
    }


def fulls(ema: EMA) -> dict[str, torch.Tensor]:
    return {n: t.full_tensor() if isinstance(t, DTensor) else t for n, t in ema.average.items()}


class Cases:
    def __init__(self, world: int) -> None:
        self.mesh = init_device_mesh("cpu", (world,))

    def sharded(self) -> tuple[torch.nn.Sequential, EMA]:
        model = net()
        fully_shard(model[0], mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)
        return model, EMA(model, decay=0.5)

    def unsharded(self, model: torch.nn.Sequential) -> None:
        """Leave every FSDP2 module holding its all-gathered plain copies, as FSDP2 does."""
        model.set_reshard_after_forward(False)
        with torch.no_grad():
            model(torch.ones(2, 4))
        assert all(not isinstance(p, DTensor) for p in model.parameters())

    def a_param_replaced_by_a_plain_tensor_is_refused_by_name(self) -> None:
        model, ema = self.sharded()
        whole = model[0].weight.full_tensor().detach()
        model[0].weight = torch.nn.Parameter(whole + 10)  # plain, the full shape
        before = locals_of(ema)
        for _ in range(2):  # at the next update, and at every later one
            with pytest.raises(
                ValueError,
                match=r"\['0\.weight'\] is a plain tensor, and its shadow is a DTensor on mesh "
                r".*Shard\(dim=0\).*copy them into the param in place",
            ):
                ema.update()
            for name, value in locals_of(ema).items():
                assert torch.equal(value, before[name]), f"{name} was written"
        assert ema.step == 0

    def a_rebind_while_unsharded_follows_the_shards(self) -> None:
        model, ema = self.sharded()
        start = fulls(ema)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(2.0)
        self.unsharded(model)
        model.scale = torch.full((), 3.0)  # a new buffer object: the EMA looks again by name
        ema.update()  # FSDP2's copies are put back, never taken for replacements
        assert all(isinstance(p, DTensor) for p in model.parameters())
        now = fulls(ema)
        assert float(now["scale"]) == 3.0
        for name, value in start.items():
            if name != "scale":
                assert torch.equal(now[name], value + 1.0), name

    def load_state_dict_while_unsharded_then_update(self) -> None:
        model, ema = self.sharded()
        state = ema.state_dict()
        start = fulls(ema)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(2.0)
        self.unsharded(model)
        ema.load_state_dict(state)
        ema.update()
        for name, value in fulls(ema).items():
            assert torch.equal(value, start[name] + (name != "scale")), name

    def unshard_then_update_reads_the_shards(self) -> None:
        model, ema = self.sharded()
        start = fulls(ema)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(2.0)
        model[0].unshard()
        model.unshard()
        assert not isinstance(model[0].weight, DTensor)
        ema.update()
        for name, value in fulls(ema).items():
            assert torch.equal(value, start[name] + (name != "scale")), name
        with torch.no_grad():
            out = model(torch.ones(2, 4))  # FSDP2 still runs the model as usual
        assert out.shape == (2, 1)

    def after_fsdp2_drops_the_replacement_the_update_goes_on(self) -> None:
        model, ema = self.sharded()
        with torch.no_grad():
            model(torch.ones(2, 4))  # FSDP2's lazy init (it fails on a plain param first)
        whole = model[0].weight.full_tensor().detach()
        model[0].weight = torch.nn.Parameter(whole + 10)
        with pytest.raises(ValueError, match=r"\['0\.weight'\] is a plain tensor"):
            ema.update()
        with torch.no_grad():  # FSDP2 gathers from its shards and puts them back after
            model(torch.ones(2, 4))
        assert isinstance(model[0].weight, DTensor)
        ema.update()
        assert torch.equal(ema.average["0.weight"].full_tensor(), whole)

    def gathered_copy_of(self, ema: EMA) -> dict[str, torch.Tensor]:
        """``ema.copy_to`` a fresh model (its params 5 off), sharded like ``net``'s EMA and
        left holding its all-gathered copies by an eval forward; then resharded, as FSDP2 does
        at the next backward: its state, whole."""
        target = net()
        with torch.no_grad():
            for param in target.parameters():
                param.add_(5.0)
        fully_shard(target[0], mesh=self.mesh)
        fully_shard(target, mesh=self.mesh)
        self.unsharded(target)
        ema.copy_to(target)
        target[0].reshard()
        target.reshard()
        held = target.state_dict()
        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in held.items()}

    def copy_to_a_gathered_eval_model_reaches_its_shards(self) -> None:
        """A plain EMA (a full checkpoint) copied into an FSDP2 eval model whose forward left
        the all-gathered copies: the averages reach the shards (they went into the copies,
        which FSDP2 frees at the next reshard without writing them back)."""
        averaged = EMA(net(), decay=0.5)
        held = self.gathered_copy_of(averaged)
        for name, value in fulls(averaged).items():
            assert torch.equal(held[name], value), name

    def copy_to_a_gathered_model_sharded_alike_from_a_sharded_ema(self) -> None:
        """The same for a sharded EMA: refused before as 'the target is a plain tensor'."""
        model, ema = self.sharded()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(2.0)
        ema.update()
        held = self.gathered_copy_of(ema)
        for name, value in fulls(ema).items():
            assert torch.equal(held[name], value), name


CASES = [
    name
    for name in vars(Cases)
    if not name.startswith("_") and name not in {"sharded", "unsharded", "gathered_copy_of"}
]


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Cases, list[str]]:
    """This module's part of a shared job (``tests.scaling_out.SHARED``): the cases, in order."""
    return Cases(world), CASES

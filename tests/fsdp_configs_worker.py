"""Worker processes for tests/test_torch_fsdp_configs.py: an ``EMA`` of models sharded with
``fully_shard(..., reshard_after_forward=2)`` (params resharded after forward onto a 2-rank
sub-mesh of the 4-rank one) and with ``offload_policy=CPUOffloadPolicy(pin_memory=False)``,
against a one-process EMA fed the same full params (CPU, gloo).

The cases run as the "configs" part of the shared 4-rank job (``tests.scaling_out.SHARED``): every
rank runs them in the same order (a barrier after each) and writes ``DIR/configs.RANK.json``: case
name -> "ok" or the traceback. ``gpu_main`` runs the same checks on one CUDA rank with the default
``CPUOffloadPolicy()`` (pinned memory), which torch refuses on a machine without one.
"""

from __future__ import annotations

import copy
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

from ema_core.torch import EMA, full_state_dict

DECAY = 0.75
STEPS = 3


def net() -> torch.nn.Sequential:
    """Linear(4, 8) (2 rows a rank on 4 ranks), Tanh, Linear(8, 3) (uneven: 1/1/1/0 rows)."""
    torch.manual_seed(0)  # the same full params on every rank
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on this rank (``full_tensor()``, a collective), on the CPU."""
    whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    return whole.detach().cpu()


class Run:
    """An FSDP2 model, its EMA, and the unsharded reference (model and EMA) fed its full params."""

    def __init__(self, mesh: DeviceMesh, **shard: Any) -> None:
        model = net()
        self.ref = copy.deepcopy(model)  # before fully_shard
        fully_shard(model[0], mesh=mesh, **shard)
        fully_shard(model, mesh=mesh, **shard)
        self.model = model
        self.sharded = {n: p for n, p in model.named_parameters()}
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with CommDebugMode() as comm:  # shadows made shard by shard
            self.ema = EMA(model, decay=DECAY)
        assert comm.get_total_counts() == 0
        self.ref_ema = EMA(self.ref, decay=DECAY)
        self.device = self.sharded["0.weight"].device_mesh.device_type

    def batch(self, step: int) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, 8, device=self.device).reshape(2, 4) * (step + 1)

    def forward(self, step: int) -> torch.Tensor:
        return self.model(self.batch(step)).pow(2).sum()

    def ref_step(self) -> None:
        """Feed the reference the model's full params and update its EMA."""
        with torch.no_grad():
            for name, param in self.ref.named_parameters():
                param.copy_(full(self.sharded[name]))
        self.ref_ema.update()

    def check_averages(self) -> None:
        """Every average, gathered, equals the reference EMA's, and has its param's layout."""
        averages, want = self.ema.average, self.ref_ema.average
        assert sorted(averages) == sorted(want)
        for name, average in averages.items():
            param = self.sharded[name]
            assert isinstance(average, DTensor), name
            assert average.placements == param.placements, name
            assert average.to_local().device == param.to_local().device, name
            assert torch.equal(full(average), want[name]), name

    def check_params(self, expected: dict[str, torch.Tensor]) -> None:
        for name, param in self.sharded.items():
            assert torch.equal(full(param), expected[name]), name

    def alike(self, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
        """Equal on the CPU; within float32 rounding where the model ran on an accelerator
        (its kernels differ from the reference's CPU ones; the EMAs still run on the CPU)."""
        if self.device == "cpu":
            assert torch.equal(got, want), what
        else:
            torch.testing.assert_close(got, want, msg=what)

    def holds_shards(self) -> bool:
        """Whether the module holds its sharded params themselves (not FSDP2's other copies)."""
        held = dict(self.model.named_parameters())
        return all(held[n] is p for n, p in self.sharded.items())

    def train(self, step: int, *, update_in_between: bool = False) -> None:
        """One forward, backward and optimizer step; the EMA updated after it, and (when
        ``update_in_between``) also between forward and backward, each time checked."""
        loss = self.forward(step)
        if update_in_between:
            assert not self.holds_shards()  # FSDP2's post-forward params
            self.update()
            assert self.holds_shards()
            self.ref_step()
            self.check_averages()
        ref_loss = self.ref(self.batch(step).cpu()).pow(2).sum()
        ref_loss.backward()
        loss.backward()  # gathers again from the shards after an update in between
        for name, param in self.ref.named_parameters():
            assert param.grad is not None and self.sharded[name].grad is not None
            self.alike(full(self.sharded[name].grad), param.grad, name)
            param.grad = None
        self.opt.step()
        self.opt.zero_grad()
        self.update()
        self.ref_step()
        self.check_averages()

    def update(self) -> None:
        with CommDebugMode() as comm:  # resharding FSDP2's post-forward params included
            self.ema.update()
        assert comm.get_total_counts() == 0

    def swap_and_restore(self) -> None:
        """``swap()`` (both ways) from the post-forward state: the forward inside sees the
        averages, and the trained params and FSDP2's training come back after."""
        trained = {n: full(p) for n, p in self.sharded.items()}
        with torch.no_grad():
            self.model(self.batch(0))  # leaves FSDP2's post-forward params in place
            with self.ref_ema.swap():
                want = self.ref(self.batch(0).cpu())
            for copy_ in (True, False):
                with self.ema.swap(copy=copy_):
                    assert self.holds_shards()
                    self.check_params(self.ref_ema.average)
                    self.alike(self.model(self.batch(0)).cpu(), want, "output")
                assert self.holds_shards()
                self.check_params(trained)

    def state_dict_round_trip(self, mesh: DeviceMesh, **shard: Any) -> None:
        """``state_dict``/``load_state_dict`` (sharded, and from a full dict held by every
        rank) and ``full_state_dict`` against the reference's state dict."""
        state = self.ema.state_dict()
        saved = {**state, "shadow": {n: t.clone() for n, t in state["shadow"].items()}}
        want = {n: t.clone() for n, t in self.ref_ema.state_dict()["shadow"].items()}
        whole = full_state_dict(self.ema, keep_on="all")
        assert sorted(whole["shadow"]) == sorted(want)
        for name, tensor in whole["shadow"].items():
            assert not isinstance(tensor, DTensor) and torch.equal(tensor, want[name]), name
        assert int(whole["step"]) == int(self.ref_ema.state_dict()["step"])
        self.train(STEPS + 1)  # the averages move on
        self.ema.load_state_dict(saved)
        for name, shadow in self.ema.state_dict()["shadow"].items():
            assert torch.equal(full(shadow), want[name]), name
        other = Run(mesh, **shard)  # another model, sharded alike
        other.ema.load_state_dict(whole)
        plain = EMA(copy.deepcopy(self.ref), decay=DECAY)
        plain.load_state_dict(whole)
        for name, value in want.items():
            assert torch.equal(full(other.ema.state_dict()["shadow"][name]), value), name
            assert torch.equal(plain.state_dict()["shadow"][name], value), name


def check(mesh: DeviceMesh, **shard: Any) -> None:
    """The whole sequence for one ``fully_shard`` configuration."""
    run = Run(mesh, **shard)
    run.check_averages()  # built after fully_shard: copies of the shards
    for step in range(STEPS):
        run.train(step, update_in_between=step % 2 == 1)
    run.swap_and_restore()
    run.train(STEPS)  # FSDP2 trains on after a swap from the post-forward state
    run.state_dict_round_trip(mesh, **shard)


class Cases:
    def __init__(self, world: int) -> None:
        self.mesh = init_device_mesh("cpu", (world,))

    def reshard_after_forward_onto_2_of_4_ranks(self) -> None:
        run = Run(self.mesh, reshard_after_forward=2)
        run.forward(0)  # the setting does what it says: a 2-rank mesh after forward
        post = dict(run.model.named_parameters())["0.weight"]
        assert isinstance(post, DTensor) and post.device_mesh.shape == (2, 2), post.device_mesh
        check(self.mesh, reshard_after_forward=2)

    def cpu_offload_without_pinned_memory(self) -> None:
        check(self.mesh, offload_policy=CPUOffloadPolicy(pin_memory=False))

    def cpu_offload_and_reshard_after_forward_onto_2_ranks(self) -> None:
        check(self.mesh, offload_policy=CPUOffloadPolicy(pin_memory=False), reshard_after_forward=2)


CASES = [name for name in vars(Cases) if not name.startswith("_")]


def gpu_main() -> None:
    """One CUDA rank (argv: FOLDER): ``CPUOffloadPolicy()`` (pinned memory, shards on the CPU,
    a CUDA mesh), checked as ``check``; writes ``gpu.0.json`` (one entry, "gpu")."""
    folder = Path(sys.argv[2])
    torch.cuda.set_device(0)
    store = f"file://{folder / 'gpu.store'}"
    dist.init_process_group("cpu:gloo,cuda:nccl", init_method=store, rank=0, world_size=1)
    try:
        outcome = "ok"
        try:
            check(init_device_mesh("cuda", (1,)), offload_policy=CPUOffloadPolicy())
        except Exception:
            outcome = traceback.format_exc()
        (folder / "gpu.0.json").write_text(json.dumps({"gpu": outcome}))
    finally:
        dist.destroy_process_group()


def part(tag: str, rank: int, world: int, folder: Path) -> tuple[Cases, list[str]]:
    """This module's part of a shared job (``tests.scaling_out.SHARED``): the cases, in order."""
    return Cases(world), CASES


# the GPU test's one CUDA rank: python -m tests.fsdp_configs_worker gpu FOLDER
if __name__ == "__main__":
    gpu_main()

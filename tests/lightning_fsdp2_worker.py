"""One rank of tests/test_integration_lightning_fsdp2.py: Lightning's ``ModelParallelStrategy``
(FSDP2 through ``fully_shard``) on the CPU with gloo, and the ``EMACallback``.

Run as ``python -m tests.lightning_fsdp2_worker RANK WORLD DIR`` with ``MASTER_ADDR``,
``MASTER_PORT`` and ``NODE_RANK`` set; the worker sets ``LOCAL_RANK``, ``RANK`` and
``WORLD_SIZE``, so Lightning joins the ranks the parent started instead of launching its own.
Trainers run in turn: a whole fit, then a fit that stops after one epoch (writing one more
checkpoint inside validation) and one resumed from its ``last.ckpt``, once with a sharded
checkpoint folder and once with a full file. Each rank writes ``DIR/RANK.json`` after every
check: check name -> "ok" or the traceback.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch.distributed.fsdp")  # pytest imports this file for doctests too
pytest.importorskip("lightning.pytorch")

import lightning.pytorch as pl
import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from torch.distributed.fsdp import fully_shard

import ema_core as ema
from ema_core.integrations.lightning import EMACallback
from ema_core.testing import Trajectory, reference

CONFIG = ema.Config(schedule=ema.schedules.warmup(0.99))
STEPS_PER_EPOCH = 4  # 8 batches of 4 over 2 ranks
Shards = dict[str, torch.Tensor]


def layers() -> torch.nn.Sequential:
    """Linear(5, 3) and Linear(3, 1): on 2 ranks their rows split 2/1 and 1/0 (uneven, empty)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def local(module: torch.nn.Module) -> Shards:
    """This rank's shard of every parameter, copied."""
    return {n: p.to_local().detach().clone() for n, p in module.named_parameters()}


class Net(pl.LightningModule):
    """The layers, FSDP2-sharded over the data-parallel mesh; validation records the shards it
    sees, its output, and the output of an unsharded copy run on the gathered params."""

    def __init__(self, save_to: Path | None = None) -> None:
        super().__init__()
        self.net = layers()
        self.plain = [layers()]  # in a list: not a submodule
        self.seen: list[tuple[int, Shards, torch.Tensor, torch.Tensor]] = []
        self.save_to, self.after_save = save_to, {}

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net[0], self.net[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        out = self.net(x)
        gathered = {n: p.full_tensor() for n, p in self.net.named_parameters()}
        plain = torch.func.functional_call(self.plain[0], gathered, (x,))
        self.seen.append((self.trainer.global_step, local(self), out.detach(), plain.detach()))

    def on_validation_epoch_end(self) -> None:
        if self.save_to is not None and self.trainer.global_step == STEPS_PER_EPOCH:
            self.trainer.save_checkpoint(self.save_to)  # with the averages swapped in
            self.after_save = local(self)

    def configure_optimizers(self) -> Any:
        # momentum: Lightning 2.6 cannot load a full-file checkpoint of an optimizer with no
        # state (an IndexError in _rekey_optimizer_state_if_needed)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Recorder(pl.Callback):
    """Placed after the EMA callback: this rank's shards at the start of training, after each
    optimizer step, and once each validation has ended."""

    def __init__(self) -> None:
        self.start: Shards = {}
        self.steps: list[int] = []
        self.live: list[Shards] = []
        self.after_validation: list[tuple[int, Shards]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = local(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > (self.steps[-1] if self.steps else 0):
            self.steps.append(trainer.global_step)
            self.live.append(local(pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_validation.append((trainer.global_step, local(pl_module)))


def loader(batches: int) -> Any:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4 * batches, 5, generator=generator)
    y = torch.randn(4 * batches, 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def fit(
    folder: Path, epochs: int, distributed: bool | None, save_to: Path | None = None, **options: Any
) -> Any:
    """A trainer on 2 CPU ranks with FSDP2, writing ``last.ckpt`` (a sharded folder or a full
    file; none when ``distributed`` is None); returns the module, the callback, the recorder."""
    model, callback, recorder = Net(save_to), EMACallback(CONFIG), Recorder()
    callbacks: list[Any] = [callback, recorder]
    if distributed is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(
            data_parallel_size=2,
            tensor_parallel_size=1,
            save_distributed_checkpoint=distributed is not False,
        ),
        enable_checkpointing=distributed is not None,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=callbacks,
    )
    trainer.fit(model, loader(2 * STEPS_PER_EPOCH), loader(2), **options)
    return model, callback, recorder


def expected(recorder: Recorder) -> list[Shards]:
    """The averages after each recorded step: ``ema_core.update`` on plain tensors of this
    rank's shards, and (checked here) the float64 oracle within float32 rounding."""
    state, out = ema.init(recorder.start, CONFIG), []
    for params in recorder.live:
        state = ema.update(state, params, CONFIG)
        out.append(ema.average(state, CONFIG))
    names = list(recorder.start)
    steps = [[p[n].numpy() for n in names] for p in recorder.live]
    oracle = reference(CONFIG, Trajectory([recorder.start[n].numpy() for n in names], steps))
    for averages, row in zip(out, oracle, strict=True):
        for name, value in zip(names, row.average, strict=True):
            got = averages[name].double().numpy()
            assert abs(got - value).max(initial=0.0) <= 1e-6, name
    return out


def assert_same(a: Shards, b: Shards) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for name, value in a.items():
        assert value.shape == b[name].shape and torch.equal(value, b[name]), name


def averages(callback: EMACallback) -> Shards:
    """This rank's shard of each average (a DTensor beside its param, local shape and all)."""
    assert callback.ema is not None
    return {n: v.to_local().detach().clone() for n, v in callback.ema.average.items()}


class Run:
    def __init__(self, rank: int, folder: Path) -> None:
        self.rank, self.folder = rank, folder
        self.results: dict[str, str] = {}

    def check(self, name: str, fn: Callable[[], None]) -> None:
        """Run one check; write every result so far (a later hang keeps them)."""
        try:
            fn()
            self.results[name] = "ok"
        except Exception:
            self.results[name] = traceback.format_exc()
            print(self.results[name], file=sys.stderr, flush=True)
        (self.folder / f"{self.rank}.json").write_text(json.dumps(self.results))

    def whole(self) -> None:
        self.model, self.callback, self.recorder = fit(self.folder / "whole", 2, None)
        self.expected = expected(self.recorder)

    def ema_is_the_average_of_local_shards(self) -> None:
        assert self.recorder.steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))
        assert self.callback.ema is not None and int(self.callback.ema.step) == 8
        assert self.recorder.start["net.2.weight"].shape[0] == (1, 0)[self.rank]  # uneven
        assert_same(averages(self.callback), self.expected[-1])

    def validation_runs_on_the_averages(self) -> None:
        seen = [(step, shards) for step, shards, _, _ in self.model.seen]
        assert [s for s, _ in seen] == [0, 4, 8], [s for s, _ in seen]  # the sanity check first
        for step, shards in seen:
            assert_same(shards, self.recorder.start if step == 0 else self.expected[step - 1])
        for step, _, out, plain in self.model.seen:
            assert torch.equal(out, plain), step  # the forward used the params we read
        for step, shards in self.recorder.after_validation[1:]:  # the live weights are back
            assert_same(shards, self.recorder.live[step - 1])
            assert not torch.equal(shards["net.0.weight"], self.expected[step - 1]["net.0.weight"])

    def resume(self, kind: str, distributed: bool) -> None:
        folder = self.folder / kind
        self.first = fit(folder, 1, distributed, folder / "in_validation.ckpt")
        last = folder / "last.ckpt"
        assert last.is_dir() == distributed
        _, callback, recorder = fit(folder / "again", 2, distributed, ckpt_path=last)
        assert recorder.steps == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))
        assert_same(recorder.start, self.recorder.live[STEPS_PER_EPOCH - 1])
        assert callback.ema is not None and int(callback.ema.step) == 8
        assert_same(averages(callback), averages(self.callback))  # bit for bit, this rank's shard
        assert_same(recorder.live[-1], self.recorder.live[-1])

    def checkpoint_in_validation(self) -> None:
        """The sharded checkpoint written inside validation: its model state is the live
        shards, its EMA state full tensors (one copy for every rank); the averages are back
        in the model after the save."""
        model, callback, recorder = self.first
        path = self.folder / "sharded" / "in_validation.ckpt"
        state = {k: torch.zeros_like(v) for k, v in get_model_state_dict(model).items()}
        dcp.load({"state_dict": state}, checkpoint_id=path)
        saved = {k: v.to_local() for k, v in state.items()}
        assert_same(saved, recorder.live[STEPS_PER_EPOCH - 1])
        assert_same(model.after_save, self.expected[STEPS_PER_EPOCH - 1])
        meta = torch.load(path / "meta.pt", weights_only=True)
        shadows = meta["callbacks"][callback.state_key]["shadow"]
        assert {k: tuple(v.shape) for k, v in shadows.items()} == {
            "net.0.weight": (3, 5), "net.0.bias": (3,), "net.2.weight": (1, 3), "net.2.bias": (1,)
        }  # fmt: skip
        assert all(type(v) is torch.Tensor for v in shadows.values())


def main(rank: int, world: int, folder: Path) -> None:
    faulthandler.dump_traceback_later(100, exit=True)  # a hung rank says where, in its log
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    run = Run(rank, folder)
    run.check("whole", run.whole)
    if run.results["whole"] == "ok":
        run.check("ema_is_the_average_of_local_shards", run.ema_is_the_average_of_local_shards)
        run.check("validation_runs_on_the_averages", run.validation_runs_on_the_averages)
    run.check("resume_sharded", lambda: run.resume("sharded", True))
    if run.results["resume_sharded"] == "ok":
        run.check("checkpoint_in_validation", run.checkpoint_in_validation)
    run.check("resume_full", lambda: run.resume("full", False))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

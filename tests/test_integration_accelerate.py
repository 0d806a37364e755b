"""accelerate: the EMA through save_state / load_state, by register_for_checkpointing and by
``ema_core.integrations.accelerate.register`` (safetensors next to the model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")
safetensors_torch = pytest.importorskip("safetensors.torch")

import ema_core as ema  # noqa: E402
from ema_core.integrations.accelerate import ema_path, register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

ACCUMULATE = 2
SCHEDULE = ema.schedules.warmup(0.9)


pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # conftest: a clean accelerate


def _setup(seed: int) -> tuple[Any, Any, Any, EMA]:
    torch.manual_seed(seed)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    layers = (torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = accelerator.prepare(model, opt)
    return accelerator, model, opt, EMA(model, schedule=SCHEDULE)


def _batches(seed: int, n: int) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def _train(accelerator: Any, model: Any, opt: Any, averager: EMA, batches: list[Any]) -> None:
    model.train()
    for x, y in batches:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
        if accelerator.sync_gradients:  # one EMA update per optimizer step
            averager.update()


def _snapshot(averager: EMA) -> dict[str, Any]:
    return {k: v.clone() for k, v in averager.average.items()}


def _assert_bits(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert value.dtype == b[name].dtype
        assert torch.equal(value, b[name]), name


def _resume(tmp_path: Path, hook: bool) -> None:
    """Train, save, train on; then in a fresh setup load and train on alike: same bits."""
    accelerator, model, opt, averager = _setup(0)
    if hook:
        register(accelerator, averager)
    else:
        accelerator.register_for_checkpointing(averager)
    _train(accelerator, model, opt, averager, _batches(1, 10))
    assert averager.step == 10 // ACCUMULATE  # optimizer steps, not batches
    saved = _snapshot(averager)
    accelerator.save_state(str(tmp_path))
    _train(accelerator, model, opt, averager, _batches(2, 6))
    expected, expected_step = _snapshot(averager), averager.step

    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    accelerator, model2, opt, resumed = _setup(7)  # other initial weights
    if hook:
        register(accelerator, resumed)
    else:
        accelerator.register_for_checkpointing(resumed)
    accelerator.load_state(str(tmp_path))
    assert resumed.step == 10 // ACCUMULATE
    _assert_bits(_snapshot(resumed), saved)
    _train(accelerator, model2, opt, resumed, _batches(2, 6))
    assert resumed.step == expected_step
    _assert_bits(_snapshot(resumed), expected)
    _assert_bits(dict(model2.state_dict()), dict(model.state_dict()))


def test_register_for_checkpointing_resumes_bit_for_bit(tmp_path: Path) -> None:
    _resume(tmp_path, hook=False)
    assert (tmp_path / "custom_checkpoint_0.pkl").is_file()


def test_register_resumes_bit_for_bit_from_safetensors(tmp_path: Path) -> None:
    _resume(tmp_path, hook=True)
    assert not list(tmp_path.glob("custom_checkpoint_*"))  # no pickle for the EMA
    path = ema_path(tmp_path)
    assert path == tmp_path / "ema.safetensors"
    assert (tmp_path / "model.safetensors").is_file()  # accelerate still saves the model
    tensors = safetensors_torch.load_file(path)
    assert int(tensors["step"]) == 10 // ACCUMULATE  # the step travels with the shadows


def test_two_emas_by_name_and_remove(tmp_path: Path) -> None:
    accelerator, model, opt, fast = _setup(0)
    slow = EMA(model, decay=0.99)
    register(accelerator, fast, name="ema_fast")
    hooks = register(accelerator, slow, name="ema_slow")
    _train(accelerator, model, opt, fast, _batches(1, 4))
    slow.update()
    accelerator.save_state(str(tmp_path / "a"))
    assert ema_path(tmp_path / "a", name="ema_fast").is_file()
    assert ema_path(tmp_path / "a", name="ema_slow").is_file()
    hooks.remove()
    accelerator.save_state(str(tmp_path / "b"))
    assert ema_path(tmp_path / "b", name="ema_fast").is_file()
    assert not ema_path(tmp_path / "b", name="ema_slow").exists()


def test_only_the_main_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accelerator, _, _, averager = _setup(0)
    register(accelerator, averager)
    monkeypatch.setattr(type(accelerator), "is_main_process", property(lambda self: False))
    accelerator.save_state(str(tmp_path / "other"))
    assert not ema_path(tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match=r"ema\.safetensors does not exist"):
        accelerator.load_state(str(tmp_path / "other"))
    # save_on_each_node: each node's main process writes
    accelerator.project_configuration.save_on_each_node = True
    accelerator.save_state(str(tmp_path / "node"))
    assert ema_path(tmp_path / "node").is_file()


def test_load_checks_before_writing(tmp_path: Path) -> None:
    accelerator, model, opt, averager = _setup(0)
    register(accelerator, averager)
    _train(accelerator, model, opt, averager, _batches(1, 4))
    accelerator.save_state(str(tmp_path))
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    accelerator, model, _, _ = _setup(3)
    other = EMA(model, decay=0.5)  # another config: a strict load refuses it
    register(accelerator, other)
    before, step = _snapshot(other), other.step
    with pytest.raises(ValueError, match="config"):
        accelerator.load_state(str(tmp_path))
    _assert_bits(_snapshot(other), before)
    assert other.step == step


def test_bad_arguments_register_nothing() -> None:
    accelerator, _, _, averager = _setup(0)
    with pytest.raises(TypeError, match=r"accelerator must be an accelerate\.Accelerator"):
        register(object(), averager)
    with pytest.raises(TypeError, match=r"ema must be an ema_core\.torch\.EMA, got dict"):
        register(accelerator, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str, got int"):
        register(accelerator, averager, name=3)  # type: ignore[arg-type]
    for name in ("", "../ema", "a/b", ".hidden", "model", "model_1"):
        with pytest.raises(ValueError, match=f"got {name!r}"):
            register(accelerator, averager, name=name)
    assert not accelerator._save_model_state_pre_hook
    assert not accelerator._load_model_state_pre_hook


WORKER = """
import os, sys
os.environ["RANK"] = os.environ["LOCAL_RANK"] = sys.argv[2]  # what torchrun sets per rank
import torch
from accelerate import Accelerator
from ema_core.integrations.accelerate import register
from ema_core.torch import EMA

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = accelerator.prepare(torch.nn.Linear(3, 2))
opt = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
averager = EMA(model, decay=0.5)
register(accelerator, averager)
g = torch.Generator().manual_seed(accelerator.process_index)  # DDP averages the gradients
def train():
    accelerator.backward(model(torch.randn(4, 3, generator=g)).pow(2).mean())
    opt.step(); opt.zero_grad(); averager.update()
for _ in range(3):
    train()
early = {k: v.clone() for k, v in averager.average.items()}
if accelerator.is_main_process:  # diffusers' training scripts save on the main process only
    accelerator.save_state(sys.argv[1] + "-main")
train()  # a DDP all-reduce: rank 0 must not be left waiting in a barrier of the save
saved = {k: v.clone() for k, v in averager.average.items()}
accelerator.save_state(sys.argv[1])
accelerator.wait_for_everyone()  # rank 0 writes accelerate's own files after the hooks
averager.update()
accelerator.load_state(sys.argv[1])
same = all(torch.equal(saved[k], v) for k, v in averager.average.items())
accelerator.load_state(sys.argv[1] + "-main")
main = all(torch.equal(early[k], v) for k, v in averager.average.items())
print(f"rank {accelerator.process_index}: step {averager.step}, restored {same}, main {main}")
accelerator.end_training()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_save_once_and_both_load(tmp_path: Path) -> None:
    """A real gloo process group: rank 0 writes, both ranks load the file back bit for bit.
    A save on the main process alone (diffusers' training scripts) writes too and leaves the
    other rank free to go on: the hook's barrier after it hung the next step's all-reduce.
    The two ranks are started directly with torchrun's environment (a launcher process would
    import torch once more for nothing)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        **{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"},
        **{"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"},
    }
    command = [sys.executable, str(script), str(tmp_path / "ckpt")]
    ranks = [
        subprocess.Popen([*command, str(rank)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]  # fmt: skip
    try:
        logs = [rank.communicate(timeout=90)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()  # a hung rank (after the other one's timeout); a no-op once exited
            rank.communicate()
    for rank, log in enumerate(logs):
        assert ranks[rank].returncode == 0, log[-3000:]
        assert f"rank {rank}: step 3, restored True, main True" in log, log[-3000:]
    assert ema_path(tmp_path / "ckpt").is_file()


def test_a_second_ema_under_a_taken_name_is_refused(tmp_path: Path) -> None:
    accelerator = accelerate.Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    fast, slow = EMA(model, decay=0.5), EMA(model, decay=0.5)
    hooks = register(accelerator, fast)
    with pytest.raises(ValueError, match=r"name 'ema' is already registered.*name="):
        register(accelerator, slow)  # it would overwrite fast's file
    fast.update()
    accelerator.save_state(str(tmp_path))  # only fast's hooks run
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "ema.safetensors",
        "model.safetensors",
    ]
    register(accelerator, slow, name="ema_slow")
    hooks.remove()
    register(accelerator, EMA(model, decay=0.9))  # the name is free once removed

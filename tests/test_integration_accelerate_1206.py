"""``register`` refuses one EMA under a second name on the same accelerator (the README lists
"the same EMA registered twice" among the refusals; under another name it was taken, and every
``save_state`` wrote the EMA twice); the hooks and names stay as they were. The save on the main
process alone (diffusers' scripts) is pinned in ``test_integration_accelerate``'s two-process
test."""

from __future__ import annotations

from pathlib import Path

import pytest

accelerate = pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

from ema_core.integrations.accelerate import register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


def test_one_ema_under_a_second_name_is_refused_and_registers_nothing(tmp_path: Path) -> None:
    accelerator = accelerate.Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    averager = EMA(model, decay=0.5)
    register(accelerator, averager)
    hooks = (
        dict(accelerator._save_model_state_pre_hook),
        dict(accelerator._load_model_state_pre_hook),
    )
    with pytest.raises(
        ValueError, match=r"this EMA is already registered on this accelerator as 'ema'"
    ):
        register(accelerator, averager, name="ema_again")
    assert (
        dict(accelerator._save_model_state_pre_hook),
        dict(accelerator._load_model_state_pre_hook),
    ) == hooks
    accelerator.save_state(str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "ema.safetensors",
        "model.safetensors",
    ]
    register(accelerator, EMA(model, decay=0.9), name="ema_again")  # the name was left free

"""accelerate hooks against a hostile but realistic user: two EMAs under one name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from ema_core.integrations.accelerate import register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()
    yield
    accelerate.state.AcceleratorState._reset_state(True)
    accelerate.state.GradientState._reset_state()


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
    register(accelerator, slow)  # the name is free once removed

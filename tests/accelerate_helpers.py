"""What the accelerate tests share: a CPU accelerator and a prepared small model."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")


def setup() -> tuple[Any, Any]:
    """A CPU ``Accelerator`` and a ``Linear(3, 2)`` it prepared (seeded)."""
    torch.manual_seed(0)
    accelerator = accelerate.Accelerator(cpu=True)
    return accelerator, accelerator.prepare(torch.nn.Linear(3, 2))

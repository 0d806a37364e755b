"""No host read in the torch update path, checked on CPU.

A host sync on CUDA is a read of a device value on the host: ``.item()``, ``bool(t)``,
``float(t)``, ``int(t)``, a comparison used in an ``if``, and also a 0-d tensor passed where
torch expects a Python number (``torch._foreach_lerp_(s, p, tensor)`` reads it). Every one of
these goes through the aten op ``_local_scalar_dense``. A ``TorchDispatchMode`` sees every aten op
a call runs, on CPU as on CUDA, so running the update with 0-d tensor steps and decays under a
mode that records ops, and finding no ``_local_scalar_dense`` (and no ``is_nonzero`` or
``equal``), shows that the same code on CUDA tensors makes no host sync. The first test shows the
detector does catch such reads.

The other direction matters too: a tensor made from host data (``torch.asarray(0.5,
device="cuda")``, op ``lift_fresh``) is a blocking copy from pageable memory on CUDA and cannot be
captured in a CUDA graph; neither the backend nor the schedules' constants make one. On a GPU,
tests/test_torch_gpu.py also runs the update under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import ema_core  # noqa: E402
from ema_core import Config, schedules  # noqa: E402
from ema_core.backends import torch as torch_backend  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


@pytest.fixture(autouse=True)
def cpu_tensors_stand_in_for_cuda(monkeypatch):
    """CPU tensors are host values that ema-core range-checks (a read); here they stand in for
    CUDA tensors, which it trusts and never reads, so no platform counts as the host."""
    monkeypatch.setattr(ema_core._ops, "HOST_PLATFORMS", frozenset())


HOST_READS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.equal", "aten.item")


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def host_reads(self):
        return [op for op in self.ops if op.startswith(HOST_READS)]

    def host_data(self):
        return [op for op in self.ops if op.startswith("aten.lift_fresh")]


def test_the_detector_sees_host_reads():
    s, p, w = [torch.zeros(3)], [torch.ones(3)], torch.tensor(0.5)
    for read in (
        lambda: torch._foreach_lerp_(s, p, w),  # Scalar overload: reads w
        lambda: bool(w > 0),
        lambda: float(w),
        w.item,
    ):
        with RecordOps() as rec:
            read()
        assert rec.host_reads(), "the detector missed a host read"


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    model[2].to(torch.bfloat16)  # a mixed-precision group (fp32 shadow over bf16)
    return model


@pytest.mark.parametrize(
    "config",
    [
        Config(schedule=0.99, init="copy"),
        Config(schedule=schedules.warmup(0.999), init="zeros", interval=2),
        Config(schedule=schedules.num_updates(0.999), buffers="average"),
    ],
    ids=["copy", "zeros-interval", "num_updates"],
)
def test_EMA_update_with_a_tensor_step_reads_nothing_on_the_host(config):
    model = _model()
    ema = EMA(model, config=config)
    step = torch.tensor(0)
    with RecordOps() as rec:
        for _ in range(3):
            step += 1
            ema.update(step)
            ema.update()  # the internal counter continues from the tensor step
    assert rec.host_reads() == []
    assert any("lerp" in op for op in rec.ops)  # the fused path ran


def test_update_leaves_with_a_tensor_decay_reads_nothing_on_the_host():
    shadows = [torch.zeros(5), torch.zeros(3, dtype=torch.float64), torch.zeros(2)]
    shadows += [torch.zeros(2, dtype=torch.bfloat16), torch.zeros((), dtype=torch.int64)]
    params = [torch.ones(5).bfloat16(), torch.ones(3, dtype=torch.float64), torch.ones(2)]
    params += [torch.ones(2, dtype=torch.bfloat16), torch.tensor(4)]
    kinds = ["float"] * 4 + ["exact"]
    decay = torch.tensor(0.75, dtype=torch.float64)
    with RecordOps() as rec, torch_backend.guard():
        torch_backend.update_leaves(
            xp, shadows, params, kinds, decay, 1.0 - decay, non_float="copy", writes=[True] * 5
        )
    assert rec.host_reads() == []
    assert rec.host_data() == []
    assert float(shadows[0][0]) == 0.25 and int(shadows[4]) == 4


def test_schedule_constants_for_a_tensor_step_are_made_on_the_device():
    ema = EMA(_model(), config=Config(schedule=schedules.warmup(0.999), init="copy"))
    step = torch.tensor(1)
    with RecordOps() as rec:
        ema.update(step)
    assert rec.host_data() == []


def test_functional_ema_update_with_a_tensor_step_reads_nothing_on_the_host():
    shadow, params, step = {"w": torch.zeros(3)}, {"w": torch.ones(3)}, torch.tensor(2)
    with RecordOps() as rec:
        ema_core.ema_update(shadow, params, step, decay=0.9)
    assert rec.host_reads() == []

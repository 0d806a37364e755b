"""Helpers for the parity tests against the real peer libraries.

Peers are imported lazily and their tests skip with a reason when one is missing. timm does not
import here (torchvision is missing), so its ``timm/utils/model_ema.py``, which needs only torch,
is loaded by file path. The torch trajectory is seeded: every step perturbs the parameters as an
optimizer would and runs a training-mode forward pass, so BatchNorm buffers move as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core

EPS32 = float(np.finfo(np.float32).eps)


def require(module: str) -> Any:
    """Import a peer or skip the test, saying which one is missing. Warnings raised while a
    peer imports itself (mmengine scripts a function with the deprecated ``torch.jit.script``)
    are the peer's, not ours, and are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"peer {module} is not installed: {err}")


def require_installed(module: str) -> None:
    """Skip unless a peer is installed, without importing it (Keras picks its backend at import)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"peer {module} is not installed")


def load_timm_model_ema() -> Any:
    """timm's ``model_ema`` module, loaded by file path (``import timm`` needs torchvision)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    path = Path(spec.origin).parent / "utils" / "model_ema.py"
    if not path.exists():
        pytest.skip(f"timm has no {path}")
    file_spec = importlib.util.spec_from_file_location("_timm_model_ema", path)
    if file_spec is None or file_spec.loader is None:
        pytest.skip(f"cannot load {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def make_model(seed: int = 0, batchnorm: bool = True) -> Any:
    """A small torch model (two linear layers, optionally a BatchNorm between them)."""
    torch = require("torch")
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(5, 8)]
    if batchnorm:
        layers.append(torch.nn.BatchNorm1d(8))
    layers += [torch.nn.ReLU(), torch.nn.Linear(8, 3)]
    return torch.nn.Sequential(*layers)


def train_steps(model: Any, steps: int, seed: int = 1) -> Iterator[int]:
    """Perturb the parameters (scale 0.1, a drifting random walk) and run a training-mode
    forward pass, ``steps`` times; yields the step t = 1, 2, ... after each."""
    torch = require("torch")
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen) + 0.01)
            model(torch.randn(16, 5, generator=gen))
        yield t


class Ours:
    """ema-core driven through ``init`` / ``update`` on a module's named tensors under a
    Config's buffer policy: buffers averaged, copied from the model at every call, or skipped."""

    def __init__(self, model: Any, config: ema_core.Config) -> None:
        self.config = config
        self.state = ema_core.init(self._averaged(model), config)
        self.copied = self._buffers(model) if config.buffers == "copy" else {}

    def _averaged(self, model: Any) -> dict[str, Any]:
        leaves = {k: v.detach().clone() for k, v in model.named_parameters()}
        if self.config.buffers == "average":
            leaves.update(self._buffers(model))
        return leaves

    @staticmethod
    def _buffers(model: Any) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in model.named_buffers()}

    def update(self, model: Any) -> None:
        self.state = ema_core.update(self.state, self._averaged(model), self.config)
        if self.config.buffers == "copy":
            self.copied = self._buffers(model)

    def tensors(self) -> dict[str, Any]:
        """The averages (bias-corrected where the config says) and the copied buffers."""
        return {**ema_core.average(self.state, self.config), **self.copied}


def ulps(got: Any, want: Any) -> float:
    """The largest difference in float32 ulps at the magnitude of ``want`` (at least 1)."""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
    return float(np.max(np.abs(g - w), initial=0.0)) / (EPS32 * scale)


def compare(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    max_ulps: float,
    what: str,
    keys: Callable[[str], bool] = lambda _: True,
) -> float:
    """Assert every compared tensor agrees within ``max_ulps``; return the worst seen."""
    worst = 0.0
    names = [k for k in theirs if keys(k)]
    assert names, f"{what}: nothing to compare"
    for name in names:
        a, b = ours[name], theirs[name]
        if not b.dtype.is_floating_point:
            assert np.array_equal(a.numpy(), b.numpy()), f"{what}: {name} {a} != {b}"
            continue
        err = ulps(a.detach().numpy(), b.detach().numpy())
        assert err <= max_ulps, f"{what}: {name} differs by {err:.2f} float32 ulps > {max_ulps}"
        worst = max(worst, err)
    return worst

"""Fixes from the documentation hunt of 2026-12-05: the Keras integration's import error when
keras is installed but its backend is not, and ``compat.mmedit``'s meta message."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ema_core.compat.mmedit import ExponentialMovingAverage

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]


def _import_keras(code: str, backend: str) -> subprocess.CompletedProcess[str]:
    """``code`` run in a fresh interpreter with ``KERAS_BACKEND=backend``."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_keras_without_its_backend_says_to_set_keras_backend() -> None:
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed: keras's default backend imports")
    run = _import_keras("import ema_core.integrations.keras", "tensorflow")  # keras's default
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "keras is installed, but its backend needs 'tensorflow'" in last, run.stderr
    assert "KERAS_BACKEND=jax or KERAS_BACKEND=torch" in last
    assert "pip install ema-core[keras]" not in last


_BLOCK_ABSL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "absl" or name.startswith("absl."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import ema_core.integrations.keras
"""


def test_keras_missing_its_own_dependency_is_not_blamed_on_the_backend() -> None:
    run = _import_keras(_BLOCK_ABSL, "jax")
    last = run.stderr.strip().splitlines()[-1]
    assert "keras is installed, but 'absl', which it imports, is not" in last, run.stderr
    assert "KERAS_BACKEND" not in last


def test_mmedit_meta_module_is_refused_at_update_saying_to_materialize_first() -> None:
    ema = ExponentialMovingAverage(torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(
        ValueError,
        match=r"the EMA's module\['weight'\] is on the meta device .*: materialize them before "
        r"the first update_parameters",
    ):
        ema.update_parameters(torch.nn.Linear(2, 2))


def test_allennlp_takes_the_list_pairs_its_trainers_build() -> None:
    from ema_core.compat.allennlp import ExponentialMovingAverage as AllenNLPEMA

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():  # quarters: every blend below is exact
        model.weight.copy_(torch.tensor([[0.25, -0.5]]))
    pairs = [[n, p] for n, p in model.named_parameters() if p.requires_grad]  # AllenNLP's form
    start = model.weight.detach().clone()
    ema = AllenNLPEMA(pairs, decay=0.5)
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.apply()
    ema.assign_average_value()
    assert torch.equal(model.weight.detach(), start + 1.0)  # 0.5 * start + 0.5 * (start + 2)
    ema.restore()
    assert torch.equal(model.weight.detach(), start + 2.0)
    with pytest.raises(TypeError, match=r"parameters\[0\] must be a \(name, array\) pair"):
        AllenNLPEMA([["weight", model.weight, "extra"]], decay=0.5)

"""``ema_core.integrations.accelerate.register`` against hostile use: names that are one file
on macOS and Windows, the same EMA registered twice, a folder lacking one EMA's file (no EMA
loads), and ``ema_path`` of a bad folder. One process, on the CPU, no launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from ema_core.integrations.accelerate import ema_path, register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.accelerate_helpers import setup as _setup  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # conftest: a clean accelerate


def _bits(averager: EMA) -> dict[str, Any]:
    return {k: v.clone() for k, v in averager.average.items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["Model", "MODEL_1", "mOdEl_2"])
def test_accelerates_names_are_refused_in_any_case(name: str) -> None:
    """model.safetensors and Model.safetensors are one file on macOS and Windows: accelerate
    wrote its weights over the EMA's file after the hook."""
    accelerator, model = _setup()
    with pytest.raises(ValueError, match=f"got {name!r}"):
        register(accelerator, EMA(model, decay=0.5), name=name)
    assert not accelerator._save_model_state_pre_hook


def test_two_emas_under_names_differing_in_case_are_refused() -> None:
    accelerator, model = _setup()
    register(accelerator, EMA(model, decay=0.5), name="ema")
    with pytest.raises(ValueError, match=r"name 'EMA' is already registered .*another EMA.*'ema'"):
        register(accelerator, EMA(model, decay=0.5), name="EMA")
    assert len(accelerator._save_model_state_pre_hook) == 1


def test_the_same_ema_twice_under_one_name_is_refused(tmp_path: Path) -> None:
    """Allowed before: the second registration's remove() freed the name while the first
    hooks stayed, so another EMA could take the name and both wrote and read one file."""
    accelerator, model = _setup()
    fast, slow = EMA(model, decay=0.5), EMA(model, decay=0.9)
    register(accelerator, fast)
    with pytest.raises(ValueError, match=r"name 'ema' is already registered .*this EMA"):
        register(accelerator, fast)
    assert len(accelerator._save_model_state_pre_hook) == 1
    with pytest.raises(ValueError, match="another EMA"):
        register(accelerator, slow)


def test_a_folder_lacking_one_emas_file_loads_no_ema(tmp_path: Path) -> None:
    """A second EMA registered after the folder was saved: its file is missing. The first
    EMA's hook ran first and loaded its file before the second one raised."""
    accelerator, model = _setup()
    fast = EMA(model, decay=0.5)
    register(accelerator, fast, name="ema_fast")
    fast.update()
    accelerator.save_state(str(tmp_path))
    slow = EMA(model, decay=0.9)
    register(accelerator, slow, name="ema_slow")
    with torch.no_grad():
        model.weight.add_(1.0)
    fast.update()
    before, step = _bits(fast), fast.step
    with pytest.raises(FileNotFoundError, match=r"ema_slow\.safetensors does not exist.*no EMA"):
        accelerator.load_state(str(tmp_path))
    assert fast.step == step and _same(_bits(fast), before)


def test_removed_hooks_are_not_required_when_loading(tmp_path: Path) -> None:
    accelerator, model = _setup()
    fast = EMA(model, decay=0.5)
    register(accelerator, fast, name="ema_fast")
    fast.update()
    accelerator.save_state(str(tmp_path))
    saved = _bits(fast)
    register(accelerator, EMA(model, decay=0.9), name="ema_slow").remove()
    fast.update()
    accelerator.load_state(str(tmp_path))
    assert fast.step == 1 and _same(_bits(fast), saved)


@pytest.mark.parametrize("directory", [None, 3, b"folder"])
def test_ema_path_names_a_bad_directory(directory: Any) -> None:
    with pytest.raises(TypeError, match=r"directory must be a str or os\.PathLike, got"):
        ema_path(directory)

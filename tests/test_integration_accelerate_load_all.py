"""``load_state`` with two EMAs registered on one accelerator loads both or neither: a second
file that ``ema_core.checkpoint.load`` would refuse (another shape, config or set of names) is
found before the first EMA's hook loads its file. One process, on the CPU, no launcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from ema_core.checkpoint import save  # noqa: E402
from ema_core.integrations.accelerate import ema_path, register  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # conftest: a clean accelerate


def _two_emas_saved(folder: Path) -> tuple[Any, Any, EMA, EMA]:
    """An accelerator with a prepared model and two registered EMAs, one update each, saved."""
    torch.manual_seed(0)
    accelerator = accelerate.Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    fast, slow = EMA(model, decay=0.5), EMA(model, decay=0.9)
    register(accelerator, fast, name="ema_fast")
    register(accelerator, slow, name="ema_slow")
    fast.update()
    slow.update()
    accelerator.save_state(str(folder))
    return accelerator, model, fast, slow


def _bits(module_or_ema: Any) -> dict[str, Any]:
    tensors = (
        module_or_ema.state_dict()
        if isinstance(module_or_ema, torch.nn.Module)
        else module_or_ema.state_dict()["shadow"]
    )
    return {k: v.clone().view(-1).view(torch.uint8) for k, v in tensors.items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wrong_shape(model: Any) -> EMA:
    return EMA(torch.nn.Linear(3, 4), decay=0.9)


def _wrong_config(model: Any) -> EMA:
    return EMA(model, decay=0.25)


def _missing_key(model: Any) -> EMA:
    return EMA(model, decay=0.9, exclude="bias")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            _wrong_shape,
            r"ema_slow\.safetensors: state_dict\['shadow'\]\['weight'\] has shape \(4, 3\) "
            r"dtype torch\.float32; this EMA's shadow has shape \(2, 3\)",
        ),
        (
            _wrong_config,
            r"ema_slow\.safetensors: state_dict\['config'\] differs from this EMA's config: "
            r"schedule\.decay: 0\.9 in this EMA, 0\.25 in state_dict;",
        ),
        (
            _missing_key,
            r"ema_slow\.safetensors: state_dict\['shadow'\] does not match this EMA: missing "
            r"\['bias'\], unexpected \[\]",
        ),
    ],
    ids=["shape", "config", "missing-key"],
)
def test_a_refused_second_file_loads_no_ema(
    tmp_path: Path, replace: Callable[[Any], EMA], message: str
) -> None:
    """Before, the first EMA's hook loaded its file, then the second EMA's hook raised: the
    first EMA was back at the checkpoint, the second not, the model not either."""
    accelerator, model, fast, slow = _two_emas_saved(tmp_path)
    other = replace(model)
    other.update()
    save(ema_path(tmp_path, name="ema_slow"), other)  # not the EMA registered under that name
    with torch.no_grad():
        model.weight.add_(1.0)
    fast.update()
    slow.update()
    before = {"fast": _bits(fast), "slow": _bits(slow), "model": _bits(model)}
    with pytest.raises(ValueError, match=message + r".*\(load_state loaded no EMA\)"):
        accelerator.load_state(str(tmp_path))
    assert fast.step == 2 and _same(_bits(fast), before["fast"])
    assert slow.step == 2 and _same(_bits(slow), before["slow"])
    assert _same(_bits(model), before["model"])  # accelerate's own load never ran


def test_two_good_files_load_both(tmp_path: Path) -> None:
    """The checks of every file before any loads do not stop a folder that fits."""
    accelerator, model, fast, slow = _two_emas_saved(tmp_path)
    saved = {"fast": _bits(fast), "slow": _bits(slow)}
    with torch.no_grad():
        model.weight.add_(1.0)
    fast.update()
    slow.update()
    accelerator.load_state(str(tmp_path))
    assert fast.step == 1 and _same(_bits(fast), saved["fast"])
    assert slow.step == 1 and _same(_bits(slow), saved["slow"])

"""Tests that the third mutation-testing audit found missing in ``export(format="diffusers")``:
what its config.json and weights file hold, and what it refuses before writing. Each kills a
small plausible bug that the rest of the suite let through."""

from __future__ import annotations

import json
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core._safetensors import Reader  # noqa: E402
from ema_core.checkpoint._export import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, export  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


class _Configured(torch.nn.Linear):
    """A model with a diffusers-like ``config`` mapping (a fresh dict each time it is read)."""

    @property
    def config(self) -> dict[str, Any]:
        return {"width": 2}


class _Named(torch.nn.Linear):
    """A model whose ``config`` names a class other than its own."""

    @property
    def config(self) -> dict[str, Any]:
        return {"width": 2, "_class_name": "UNet2DModel"}


def _ema(model: torch.nn.Module | None = None) -> EMA:
    return EMA(model if model is not None else torch.nn.Linear(2, 1), config=presets.diffusers())


def _config(tmp_path: Path, ema: EMA, model_config: dict[str, Any]) -> dict[str, Any]:
    folder = export(ema, format="diffusers", path=tmp_path / "ema", model_config=model_config)
    return json.loads((folder / DIFFUSERS_CONFIG).read_text())  # type: ignore[no-any-return]


def test_a_path_under_a_file_is_refused_by_name(tmp_path: Path) -> None:
    """A folder whose parent is a file cannot be made: refused with the file named, before
    anything is written."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        export(_ema(), format="diffusers", path=tmp_path / "f" / "ema", model_config={})
    assert (tmp_path / "f").read_text() == "x"


def test_keys_diffusers_keeps_in_memory_only_are_not_written(tmp_path: Path) -> None:
    """``_use_default_values`` (and the other in-memory keys) are left out of config.json, as
    diffusers' own ``save_pretrained`` leaves them out."""
    config = _config(tmp_path, _ema(), {"width": 2, "_use_default_values": ["width"]})
    assert config["width"] == 2
    assert "_use_default_values" not in config


def test_the_hyperparameters_win_over_model_config_keys_of_the_same_name(tmp_path: Path) -> None:
    """config.json's ``decay`` is the EMA's (what EMAModel resumes with), even where the model's
    config has a key of that name."""
    config = _config(tmp_path, _ema(), {"decay": "the model's own"})
    assert config["decay"] == 0.9999


def test_a_model_config_equal_to_the_modules_names_its_class(tmp_path: Path) -> None:
    """A ``model_config`` equal to (not the same object as) the module's ``config`` gets the
    module's class name; one that names a class keeps it."""
    model = _Configured(2, 1)
    assert _config(tmp_path, _ema(model), {"width": 2})["_class_name"] == "_Configured"
    named = _config(tmp_path, _ema(_Named(2, 1)), {"width": 2, "_class_name": "UNet2DModel"})
    assert named["_class_name"] == "UNet2DModel"


def test_paths_and_numpy_arrays_in_model_config_are_written_as_diffusers_writes_them(
    tmp_path: Path,
) -> None:
    """A path is POSIX text (a Windows path too) and a numpy array a list."""
    model_config = {"where": PureWindowsPath("a\\b"), "sizes": np.array([1, 2])}
    config = _config(tmp_path, _ema(), model_config)
    assert config["where"] == "a/b"
    assert config["sizes"] == [1, 2]


def test_the_weights_file_says_format_pt(tmp_path: Path) -> None:
    """The weights carry ``{"format": "pt"}``, the metadata diffusers' safetensors reader looks
    for."""
    folder = export(_ema(), format="diffusers", path=tmp_path / "ema", model_config={})
    with Reader(folder / DIFFUSERS_WEIGHTS) as reader:
        assert reader.metadata == {"format": "pt"}

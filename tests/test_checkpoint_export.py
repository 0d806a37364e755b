"""``export``: an EMA's averages in the layouts other tools read, read back by those tools.

``"state_dict"`` loads into the model; ``"timm"`` is read by timm's own
``timm/models/_helpers.py`` ``load_state_dict(..., use_ema=True)`` (loaded by file path, as
``import timm`` needs torchvision); the ``"diffusers"`` folder is loaded by diffusers' own
``EMAModel.from_pretrained``, which then continues the EMA within the diffusers preset's parity
bound of ema-core. Refusals write nothing.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint._export import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, export  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.peers import require, ulps  # noqa: E402
from tests.test_presets_peers import bound_for  # noqa: E402

DIFFUSERS_ARGS = {"decay": 0.99, "update_after_step": 2, "use_ema_warmup": True, "power": 0.75}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )


def _train(model: torch.nn.Module, ema: EMA, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            model.train()
            model(torch.randn(8, *next(model.parameters()).shape[1:], generator=gen))
        ema.update()


def test_state_dict_is_a_copy_of_the_averages_under_the_model_names() -> None:
    model = _model()
    ema = EMA(model, config=presets.timm(0.9))
    _train(model, ema, 5)
    exported = export(ema, format="state_dict")
    assert sorted(exported) == sorted(model.state_dict())
    for name, value in exported.items():
        assert torch.equal(value, ema.average[name])
    exported["0.weight"].add_(1.0)
    assert not torch.equal(exported["0.weight"], ema.average["0.weight"])  # a copy
    fresh = _model()
    exported["0.weight"].sub_(1.0)
    fresh.load_state_dict(exported, strict=True)
    assert torch.equal(fresh.state_dict()["2.bias"], ema.average["2.bias"])


def _timm_helpers() -> Any:
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed")
    path = Path(spec.origin).parent / "models" / "_helpers.py"
    file_spec = importlib.util.spec_from_file_location("_timm_helpers", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def test_timm_checkpoint_entry_is_what_timm_loads(tmp_path: Path) -> None:
    model = _model()
    ema = EMA(model, config=presets.timm(0.9, use_warmup=True))
    _train(model, ema, 5)
    checkpoint = {"state_dict": model.state_dict(), **export(ema, format="timm")}
    torch.save(checkpoint, tmp_path / "last.pth.tar")
    loaded = _timm_helpers().load_state_dict(str(tmp_path / "last.pth.tar"), use_ema=True)
    assert list(loaded) == list(ema.names)
    for name, value in loaded.items():
        assert torch.equal(value, ema.average[name]), name


def _tiny_diffusers_class() -> Any:
    diffusers = require("diffusers")
    from diffusers.configuration_utils import register_to_config

    class Tiny(diffusers.ModelMixin, diffusers.ConfigMixin):  # type: ignore[misc]
        @register_to_config
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.a = torch.nn.Linear(width, 4)
            self.b = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    return Tiny


def _quiet(call: Any, *args: Any, **kwargs: Any) -> Any:
    """diffusers' own deprecation warnings (config passed as a path) are not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return call(*args, **kwargs)


def test_diffusers_folder_is_resumed_by_emamodel_from_pretrained(tmp_path: Path) -> None:
    tiny = _tiny_diffusers_class()
    ema_model_cls = require("diffusers.training_utils").EMAModel
    model = tiny(width=5)
    ema = EMA(model, config=presets.diffusers(**DIFFUSERS_ARGS))
    _train(model, ema, 12)
    folder = export(
        ema,
        format="diffusers",
        path=tmp_path / "unet_ema",
        model_config=model.config,
        args=DIFFUSERS_ARGS,
    )
    assert sorted(p.name for p in folder.iterdir()) == [DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS]
    theirs = _quiet(ema_model_cls.from_pretrained, str(folder), model_cls=tiny)
    assert theirs.optimization_step == 12
    for key, value in {**presets_defaults(), **DIFFUSERS_ARGS}.items():
        assert getattr(theirs, key) == value, key
    for (name, _), shadow in zip(model.named_parameters(), theirs.shadow_params, strict=True):
        assert torch.equal(shadow, ema.average[name]), name
    plain = _quiet(tiny.from_pretrained, str(folder))  # sharing: the model alone loads it too
    assert plain.config.width == 5
    assert torch.equal(plain.a.weight, ema.average["a.weight"])
    bound = bound_for("diffusers", DIFFUSERS_ARGS["decay"]).ours_peer
    gen = torch.Generator().manual_seed(7)
    for t in range(13, 33):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        ema.update()
        theirs.step(model.parameters())
        for (name, _), shadow in zip(model.named_parameters(), theirs.shadow_params, strict=True):
            gap = ulps(shadow.double().numpy(), ema.average[name].double().numpy())
            assert gap <= bound, f"step {t}, {name}: {gap:.2f} ulps (bound {bound})"


def presets_defaults() -> dict[str, Any]:
    return {"min_decay": 0.0, "inv_gamma": 1.0, "update_after_step": 0, "use_ema_warmup": False}


def test_diffusers_config_holds_defaults_and_the_step(tmp_path: Path) -> None:
    model = _model()
    ema = EMA(model, config=presets.diffusers())
    _train(model, ema, 3)
    folder = export(ema, format="diffusers", path=tmp_path / "m_ema", model_config={"width": 3})
    config = json.loads((folder / DIFFUSERS_CONFIG).read_text())
    assert config == {
        "width": 3,
        "decay": 0.9999,
        "min_decay": 0.0,
        "update_after_step": 0,
        "use_ema_warmup": False,
        "inv_gamma": 1.0,
        "power": 2 / 3,
        "optimization_step": 3,
    }
    safetensors = pytest.importorskip("safetensors.torch")
    weights = safetensors.load_file(str(folder / DIFFUSERS_WEIGHTS))
    assert list(weights) == list(ema.names)  # parameters only: the diffusers preset's
    assert all(torch.equal(weights[n], ema.average[n]) for n in ema.names)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"format": "keras"}, ValueError, "format must be one of"),
        ({"format": "state_dict", "args": {}}, ValueError, "are for format='diffusers'"),
        ({"format": "diffusers", "path": None, "model_config": {}}, ValueError, "needs path="),
        ({"format": "diffusers", "path": 3, "model_config": {}}, TypeError, "path must be"),
        ({"format": "diffusers", "model_config": [1]}, TypeError, "model_config must be a dict"),
        ({"format": "diffusers", "model_config": {"w": object()}}, TypeError, "JSON"),
        (
            {"format": "diffusers", "model_config": {}, "args": {"decay": 0.9}},
            ValueError,
            "not presets.diffusers",
        ),
        ({"format": "diffusers", "model_config": {}, "args": {"power": -1.0}}, ValueError, "power"),
    ],
)
def test_refusals_write_nothing(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = _model()
    ema = EMA(model, config=presets.diffusers())
    folder = tmp_path / "out_ema"
    if kwargs.get("format") == "diffusers":
        kwargs = {"path": folder, **kwargs}  # a case's own path= (None, 3) wins
    with pytest.raises(error, match=match):
        export(ema, **kwargs)
    assert not folder.exists()


def test_diffusers_refuses_an_ema_of_another_preset(tmp_path: Path) -> None:
    model = _model()
    ema = EMA(model, config=presets.timm(0.9999))
    with pytest.raises(ValueError, match="format='state_dict'"):
        export(ema, format="diffusers", path=tmp_path / "x_ema", model_config={})
    assert not (tmp_path / "x_ema").exists()
    with pytest.raises(TypeError, match=r"ema must be an ema_core\.torch\.EMA"):
        export(model, format="state_dict")  # type: ignore[call-overload]

"""A diffusers user's day, ported as the README says: ``EMAModel`` -> ``EMA(model,
config=presets.diffusers(...))``, ``step`` -> ``update``, ``store/copy_to/restore`` -> ``swap``,
``save_pretrained`` -> ``checkpoint.export(format="diffusers")``, a running ``EMAModel`` ->
``checkpoint.load_peer``. Each is run beside diffusers' own ``EMAModel``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoModel, UNet2DModel  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from ema_core import presets  # noqa: E402
from ema_core.checkpoint import export, load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.peers import ulps  # noqa: E402
from tests.test_presets_peers import bound_for  # noqa: E402


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """diffusers' own deprecation warnings (its from_pretrained passes a path to from_config)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return call(*args, **kwargs)


def _unet() -> Any:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )


def _nudge(model: torch.nn.Module, seed: int) -> None:
    """A stand-in for an optimizer step (frozen parameters stay as they are)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _worst(model: torch.nn.Module, ours: EMA, theirs: Any) -> float:
    pairs = zip(model.named_parameters(), theirs.shadow_params, strict=True)
    return max(ulps(ours.average[n].double().numpy(), s.double().numpy()) for (n, _), s in pairs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 2 / 3},
        {
            "decay": 0.999,
            "use_ema_warmup": True,
            "power": 0.75,
            "min_decay": 0.5,
            "update_after_step": 3,
        },
        {"decay": 0.99, "min_decay": 0.2, "update_after_step": 5},
        {
            "decay": 0.995,
            "use_ema_warmup": True,
            "inv_gamma": 7.5,
            "power": 0.9,
            "update_after_step": -3,
            "foreach": True,
        },
    ],
)
def test_training_loop_matches_emamodel_step_by_step(kwargs: dict[str, Any]) -> None:
    model = _net()
    theirs = EMAModel(model.parameters(), **kwargs)
    args = {k: v for k, v in kwargs.items() if k != "foreach"}
    ours = EMA(model, config=presets.diffusers(**args))
    bound = bound_for("diffusers", args["decay"]).ours_peer
    for t in range(1, 31):
        _nudge(model, t)
        theirs.step(model.parameters())
        ours.update()
        gap = _worst(model, ours, theirs)
        assert gap <= bound, f"step {t}: {gap:.2f} ulps (bound {bound})"
    assert ours.step == theirs.optimization_step == 30


def test_load_peer_mid_run_continues_and_swap_is_copy_to(tmp_path: Path) -> None:
    kwargs = {"decay": 0.999, "use_ema_warmup": True, "power": 0.75, "update_after_step": 2}
    model = _net()
    theirs = EMAModel(model.parameters(), **kwargs)
    for t in range(1, 13):
        _nudge(model, t)
        theirs.step(model.parameters())
    torch.save(theirs.state_dict(), tmp_path / "ema.pt")  # what a training script keeps
    ours = EMA(model, config=presets.diffusers(**kwargs))
    load_peer(ours, torch.load(tmp_path / "ema.pt", weights_only=True), peer="diffusers")
    assert ours.step == 12
    assert _worst(model, ours, theirs) == 0.0
    bound = bound_for("diffusers", kwargs["decay"]).ours_peer
    for t in range(13, 33):
        _nudge(model, t)
        theirs.step(model.parameters())
        ours.update()
        assert _worst(model, ours, theirs) <= bound, t
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ours.swap():
        inside = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(inside[n], ours.average[n]) for n in inside)
    assert all(torch.equal(live[k], v) for k, v in model.state_dict().items())


def test_load_peer_count_mismatch_says_frozen_parameters_count() -> None:
    model = _net()
    model[0].bias.requires_grad_(False)  # diffusers still keeps a shadow of it
    theirs = EMAModel(model.parameters(), decay=0.99)
    ours = EMA(model, config=presets.diffusers(decay=0.99), exclude="0.bias")
    with pytest.raises(ValueError, match="frozen ones included"):
        load_peer(ours, theirs.state_dict(), peer="diffusers")
    assert ours.step == 0


def _configs(ours: Path, theirs: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return tuple(json.loads((p / "config.json").read_text()) for p in (ours, theirs))  # type: ignore[return-value]


@pytest.mark.parametrize("loaded", [False, True], ids=["built", "from_pretrained(Path)"])
def test_export_writes_the_config_emamodel_save_pretrained_writes(
    tmp_path: Path, loaded: bool
) -> None:
    model = _unet()
    if loaded:  # a script's UNet2DModel.from_pretrained(Path): _name_or_path is a PosixPath
        model.save_pretrained(tmp_path / "base")
        model = UNet2DModel.from_pretrained(tmp_path / "base")
    kwargs = {"decay": 0.99, "use_ema_warmup": True}
    theirs = EMAModel(
        model.parameters(), model_cls=UNet2DModel, model_config=model.config, **kwargs
    )
    ours = EMA(model, config=presets.diffusers(**kwargs))
    for t in range(1, 4):
        _nudge(model, t)
        theirs.step(model.parameters())
        ours.update()
    folder = export(
        ours,
        format="diffusers",
        path=tmp_path / "unet_ema",
        model_config=model.config,
        args=kwargs,
    )
    theirs.save_pretrained(str(tmp_path / "theirs"))
    mine, reference = _configs(folder, tmp_path / "theirs")
    assert mine == reference
    plain = _quiet(AutoModel.from_pretrained, str(folder))  # needs _class_name
    assert type(plain) is UNet2DModel
    resumed = _quiet(EMAModel.from_pretrained, str(folder), model_cls=UNet2DModel)
    assert resumed.optimization_step == 3
    pairs = zip(model.named_parameters(), resumed.shadow_params, strict=True)
    assert all(torch.equal(ours.average[n], s) for (n, _), s in pairs)


@pytest.mark.parametrize("preset", [presets.diffusers, presets.timm, presets.ema_pytorch])
@pytest.mark.parametrize("value", [2**63 - 1, -(2**63) - 1, 10**30])
def test_update_after_step_beyond_int64_names_the_argument(
    preset: Callable[..., Any], value: int
) -> None:
    with pytest.raises(ValueError, match=r"update_after_step must be an int in \[-2\*\*63, "):
        preset(update_after_step=value)
    for edge in (2**63 - 2, -(2**63)):
        preset(update_after_step=edge)


def test_export_names_the_class_for_a_copy_of_the_config_not_for_named_tensors(
    tmp_path: Path,
) -> None:
    model = _unet()
    by_module = EMA(model, config=presets.diffusers())
    folder = export(
        by_module, format="diffusers", path=tmp_path / "a", model_config={**model.config}
    )
    assert _configs(folder, folder)[0]["_class_name"] == "UNet2DModel"
    by_names = EMA(model.named_parameters(), config=presets.diffusers())  # no module to name
    folder = export(by_names, format="diffusers", path=tmp_path / "b", model_config=model.config)
    assert "_class_name" not in _configs(folder, folder)[0]


def test_load_peer_inside_swap_is_refused_by_its_own_name() -> None:
    model = _net()
    theirs = EMAModel(model.parameters(), decay=0.99)
    ours = EMA(model, config=presets.diffusers(decay=0.99))
    with ours.swap(), pytest.raises(RuntimeError, match=r"^load_peer\(\) inside swap\(\)"):
        load_peer(ours, theirs.state_dict(), peer="diffusers")
    assert ours.step == 0

"""README "Checkpoints", as a claims check found it (2026-12-05): diffusers' example scripts save
the EMA as a ``unet_ema`` folder (``EMAModel.save_pretrained``), not a state dict; the README's
way from that folder, ``EMAModel.from_pretrained(folder, model_cls=...).state_dict()`` into
``load_peer(..., peer="diffusers")``, gives the peer's averages and step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ema_core import presets  # noqa: E402
from ema_core.checkpoint import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402


@pytest.mark.filterwarnings(  # diffusers' own from_pretrained, as its example scripts call it
    "ignore:It is deprecated to pass a pretrained model name:FutureWarning"
)
def test_a_diffusers_unet_ema_folder_loads_through_from_pretrained(tmp_path):
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2,
    )  # fmt: skip
    peer = EMAModel(unet.parameters(), decay=0.9, model_cls=type(unet), model_config=unet.config)
    for _ in range(3):
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.01)
        peer.step(unet.parameters())
    peer.save_pretrained(str(tmp_path / "unet_ema"))  # what the scripts' save hook writes
    back = EMAModel.from_pretrained(str(tmp_path / "unet_ema"), model_cls=type(unet))
    ema = EMA(unet, config=presets.diffusers(decay=0.9))
    load_peer(ema, back.state_dict(), peer="diffusers")
    assert ema.step == 3
    names = [name for name, _ in unet.named_parameters()]
    assert all(
        torch.equal(ema.average[n], s) for n, s in zip(names, peer.shadow_params, strict=True)
    )


def test_a_jax_file_of_64_bit_scalars_loads_into_32_bit_like_but_shadows_are_never_cast():
    # README (JAX checkpoints): the step and weight take like's dtypes, so a file of float32
    # shadows saved with x64 on loads with it off; a float64 shadow is a TypeError naming it
    jax = pytest.importorskip("jax")
    import numpy as np

    import ema_core
    from ema_core.jax import load_state_dict, state_dict

    cfg = ema_core.Config(schedule=0.5)
    like = ema_core.init({"w": jax.numpy.arange(3.0)}, cfg)
    arrays = {k: np.asarray(v) for k, v in state_dict(like).items()}
    arrays["step"] = np.asarray(7, dtype=np.int64)  # as an x64 run writes them
    arrays["weight"] = np.asarray(1.0, dtype=np.float64)
    loaded = load_state_dict(arrays, like)
    assert int(loaded.step) == 7 and loaded.step.dtype == like.step.dtype
    assert loaded.weight.dtype == like.weight.dtype
    (name,) = [k for k in arrays if k not in ("step", "weight")]
    arrays[name] = arrays[name].astype(np.float64)
    with pytest.raises(TypeError, match=f"{name}.*float64"):
        load_state_dict(arrays, like)


class _Engine(torch.nn.Module):
    """A wrapper holding the model as its only child ``module`` (as DeepSpeed's engine does):
    the EMA drops ``module.`` from its names."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.module = model


def test_a_diffusers_export_names_the_class_inside_any_wrapper_the_ema_drops(tmp_path):
    import json

    from ema_core.checkpoint import export

    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2,
    )  # fmt: skip
    ema = EMA(_Engine(unet), config=presets.diffusers(decay=0.9))
    ema.update()
    export(ema, format="diffusers", path=tmp_path / "unet_ema", model_config=unet.config,
           args={"decay": 0.9})  # fmt: skip
    config = json.loads((tmp_path / "unet_ema" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel"

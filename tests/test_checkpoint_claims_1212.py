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

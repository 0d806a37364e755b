"""One function per peer: the ``Config`` that reproduces its EMA trajectory.

Each preset takes the peer's own argument names and defaults, and encodes its bookkeeping
(first-update copies, step offsets, warm-up, clamps, interval gates without compensation,
buffer policy, zero start and its correction) in the returned ``Config``. Steps are counted as
everywhere in ema-core: t = 1 at the first update. ``scripts/first_decays.py`` prints the first
decays of each preset.
"""

from ema_core.presets._optimizers import keras, optax
from ema_core.presets._seeds import allennlp, mmedit, paddle, tensorflow
from ema_core.presets._torch import (
    diffusers,
    edm2,
    ema_pytorch,
    ema_pytorch_karras,
    swa_utils,
    timm,
    torch_ema,
    torchtitan,
)

__all__ = [
    "allennlp",
    "diffusers",
    "edm2",
    "ema_pytorch",
    "ema_pytorch_karras",
    "keras",
    "mmedit",
    "optax",
    "paddle",
    "swa_utils",
    "tensorflow",
    "timm",
    "torch_ema",
    "torchtitan",
]

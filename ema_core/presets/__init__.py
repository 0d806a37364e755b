"""One function per peer: the ``Config`` that reproduces its EMA trajectory.

Each preset takes the peer's own argument names and defaults, and encodes its bookkeeping
(first-update copies, step offsets, warm-up, clamps, interval gates without compensation,
buffer policy, zero start and its correction) in the returned ``Config``. Steps are counted as
everywhere in ema-core: t = 1 at the first update. ``scripts/first_decays.py`` prints the first
decays of each preset. A preset accepts every setting its peer accepts with a meaningful result,
clamps included; the refusals kept on purpose are listed in the README.

``_torch`` holds timm, torch_ema, ema-pytorch's EMA, diffusers and swa_utils; ``_profiles`` EDM2,
ema-pytorch's KarrasEMA and torchtitan; ``_optimizers`` optax and Keras; ``_seeds`` TensorFlow,
AllenNLP, Paddle and MMEditing. ``_args`` checks arguments under the peers' names and
``_schedules`` holds the schedule pieces several presets share.
"""

from ema_core.presets._optimizers import keras, optax
from ema_core.presets._profiles import edm2, ema_pytorch_karras, torchtitan
from ema_core.presets._seeds import allennlp, mmedit, paddle, tensorflow
from ema_core.presets._torch import diffusers, ema_pytorch, swa_utils, timm, torch_ema

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

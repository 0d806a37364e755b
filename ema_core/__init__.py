"""ema-core: one exponential moving average of model weights for every Array API framework.

``ema_update(shadow, params, step)`` updates any nest of numpy, torch, JAX, CuPy or
array-api-strict arrays; ``init`` / ``update`` / ``average`` are the same math as pure functions
over an ``EMAState``. Importing this package imports no array framework.
"""

from ema_core import presets, schedules
from ema_core._api import average, ema_update, init, update
from ema_core._config import Config
from ema_core._types import EMAState

__version__ = "0.1.0"

__all__ = [
    "Config",
    "EMAState",
    "__version__",
    "average",
    "ema_update",
    "init",
    "presets",
    "schedules",
    "update",
]

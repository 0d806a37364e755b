"""ema-core: one exponential moving average of model weights for every Array API framework.

``ema_update(shadow, params, step)`` updates any nest of numpy, torch, JAX, CuPy or
array-api-strict arrays; ``init`` / ``update`` / ``average`` are the same math as pure functions
over an ``EMAState``. Importing this package imports no array framework.
"""

from typing import Any

from ema_core import presets, schedules
from ema_core._api import average, ema_update, init, update
from ema_core._config import Config
from ema_core._types import EMAState

__version__ = "0.1.0"

#: Names that live in a framework's subpackage, which this package does not import.
_ELSEWHERE = {
    **dict.fromkeys(("EMA", "EMABank", "ddp_ema", "full_state_dict"), "torch"),
    **dict.fromkeys(("make_update", "with_ema", "ema_average"), "jax"),
}


def __getattr__(name: str) -> Any:
    """Point a framework's name (``from ema_core import EMA``) at its subpackage with an
    ``ImportError`` that says where it is: an ``AttributeError`` would reach the user as
    ``from``'s own "cannot import name", which drops its message."""
    if name in _ELSEWHERE:
        where = f"ema_core.{_ELSEWHERE[name]}"
        raise ImportError(f"{name} is in {where} (from {where} import {name})", name=__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}", name=name)


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

"""Root pytest configuration: doctests run over the package; modules whose framework is missing
(CuPy on a machine without CUDA, or torch, JAX, optax where they are not installed) are not
collected."""

from __future__ import annotations

import importlib.util
import os

# Keras 3 picks its backend at import, tensorflow by default (not installed here): the keras
# integration's doctests run on JAX when it is there, else on torch.
if "KERAS_BACKEND" not in os.environ:
    for _backend in ("jax", "torch"):
        if importlib.util.find_spec(_backend) is not None:
            os.environ["KERAS_BACKEND"] = _backend
            break

collect_ignore_glob = []
for _framework, _pattern in (
    ("cupy", "ema_core/backends/cupy*"),
    ("torch", "ema_core/backends/torch/*"),
    ("torch", "ema_core/torch/*"),
    ("jax", "ema_core/backends/jax/*"),
    ("jax", "ema_core/jax/*"),
    ("optax", "ema_core/jax/_optax.py"),
    ("lightning", "ema_core/integrations/lightning.py"),
    ("torch", "ema_core/integrations/accelerate.py"),
    ("accelerate", "ema_core/integrations/accelerate.py"),
    ("keras", "ema_core/integrations/keras.py"),
    ("keras", "ema_core/integrations/_keras_*"),
):
    if importlib.util.find_spec(_framework) is None:
        collect_ignore_glob.append(_pattern)

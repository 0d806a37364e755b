"""Drop-in classes with the seed systems' own names and methods, built on ema-core.

- ``ema_core.compat.allennlp.ExponentialMovingAverage`` (AllenNLP ``moving_average``)
- ``ema_core.compat.tensorflow.ExponentialMovingAverage`` (``tf.train`` TF2 and TF1)
- ``ema_core.compat.paddle.ExponentialMovingAverage`` (``paddle.static``)
- ``ema_core.compat.mmedit.ExponentialMovingAverage`` (MMEditing / mmengine, torch modules)

The first three work on numpy, CuPy, torch and JAX arrays (each module says how JAX's immutable
arrays are handled); the MMEditing class wraps a torch module. Submodules load on first access,
so importing ``ema_core.compat`` imports no framework.

What they share: ``_arrays`` (named arrays from the seeds' inputs, their checks against the
tracked ones, copies), ``_writes`` (writes in place where the array allows it, by rebinding
where it does not: JAX; all checked before the first, read-only numpy arrays and meta tensors
refused), ``_counters`` (the counters given as ints, 0-d arrays or callables, and a state
dict's saved settings) and ``_modules`` (the MMEditing class's check, before the first copy,
that two modules' tensors pair up by name; imports torch).
``_tf_state`` holds the TensorFlow class's state: its slots, the checks of ``apply``'s
variables and of a ``state_dict`` before ``load_state_dict`` writes; ``_tf_names`` its variable
lookup (a slot by array, name or pair) and TF1 naming: ``average_name`` and
``variables_to_restore``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["allennlp", "mmedit", "paddle", "tensorflow"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"ema_core.compat.{name}")
    raise AttributeError(f"module 'ema_core.compat' has no attribute {name!r}")

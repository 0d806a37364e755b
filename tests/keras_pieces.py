"""What the in-process Keras tests share without importing Keras at import time: the shared
test pieces with keras (skipping where Keras or its jax backend is missing), and the filter
for the numpy-2 warning that Keras' own ``Variable.numpy()`` (behind ``get_weights()``) gives."""

from __future__ import annotations

from types import ModuleType

import pytest

#: Keras' own Variable.numpy() under numpy 2, as in tests._keras_helpers
KERAS_ARRAY_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def helpers_and_keras() -> tuple[ModuleType, ModuleType]:
    """``tests._keras_helpers`` (it sets the jax backend) and keras, or a skip."""
    helpers = pytest.importorskip("tests._keras_helpers")
    return helpers, pytest.importorskip("keras")

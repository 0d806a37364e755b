"""Arrays of any framework as float64 numpy, for comparison."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np

from ema_core._core import dtype_name
from ema_core._tree import flatten
from ema_core._types import Tree


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy of an array of any namespace (half floats widened to float32)."""
    if isinstance(x, (int, float)):
        return np.array(x)
    xp = compat.array_namespace(x)
    if dtype_name(xp, x.dtype) in ("float16", "bfloat16"):
        x = xp.astype(x, xp.float32)
    module = type(x).__module__.partition(".")[0]
    if module == "torch":
        return np.asarray(x.detach().cpu().numpy())
    if module == "cupy":
        return np.asarray(x.get())
    if module == "array_api_strict":
        return np.array(np.from_dlpack(x))
    return np.array(x)  # a copy: later in-place updates must not change it


def leaves64(tree: Tree) -> list[np.ndarray]:
    """The leaves of a nest as numpy arrays (floating ones in float64)."""
    out = []
    for leaf in flatten(tree)[0]:
        arr = to_numpy(leaf)
        out.append(arr.astype(np.float64) if arr.dtype.kind in "fc" else arr)
    return out

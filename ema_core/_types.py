"""Type aliases shared by every layer, and the EMA state."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, TypeAlias

#: An array of any Array API namespace (numpy, torch, JAX, CuPy, array-api-strict).
Array: TypeAlias = Any
#: An Array API namespace module (what ``array_api_compat.array_namespace`` returns).
Namespace: TypeAlias = Any
#: A dtype object of some namespace.
DType: TypeAlias = Any
#: A nest of dicts, lists, tuples and NamedTuples whose leaves are arrays.
Tree: TypeAlias = Any
#: The update count t: a Python int or a 0-d integer array (possibly traced or on a device).
Step: TypeAlias = "int | Array"
#: A decay or rate: a Python float (computed on the host in float64) or a 0-d float array.
Value: TypeAlias = "float | Array"

#: How the shadow starts: equal to the params, copied at the first update, or from zero.
InitPolicy: TypeAlias = Literal["params", "copy", "zeros"]
#: What happens to integer and bool leaves (BatchNorm ``num_batches_tracked``).
NonFloatPolicy: TypeAlias = Literal["copy", "freeze", "error"]
#: How a leaf is treated: averaged ("float") or copied exactly ("exact").
LeafKind: TypeAlias = Literal["float", "exact"]


class EMAState(NamedTuple):
    """The state of an EMA: a NamedTuple, hence a JAX pytree and picklable.

    Attributes:
        step: t, the number of updates applied so far (0-d integer array).
        shadow: the running average, a nest shaped like the params.
        weight: the bias-correction weight ``w_t = 1 - prod(d_1..d_t)`` (0-d float array),
            the EMA of the constant 1. ``average`` returns ``shadow / weight``.
    """

    step: Array
    shadow: Tree
    weight: Array

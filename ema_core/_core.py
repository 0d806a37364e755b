"""The pure math on leaves of one namespace: blend, copy, bias-correct. No validation here.

A decay arrives either as a Python float (computed on the host in float64) or as a 0-d float
array on the leaves' device (traced under ``jax.jit``, or a CUDA tensor). Host decays branch in
Python; device decays use ``where``, so nothing here reads a device value. Either way both ends
are exact: decay 1 keeps an averaged shadow's bits and decay 0 gives the params' (cast once to
the shadow's dtype), whatever the other side holds (inf, NaN): the blend's arithmetic never
touches them there. Integer and bool leaves are not blended: they take the params' value on
every call, whatever the decay (``copy_exact``).

The blend is the update rule ``s + (1 - d) * (p - s)`` in the two-sided form torch's ``lerp``
uses: ``s + (1 - d) * (p - s)`` for d >= 0.5 and ``p - d * (p - s)`` below, which is exact at both
ends (d = 1 keeps s, d = 0 gives p). It runs in float32 or wider, never in a half dtype.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat as compat

from ema_core._ops import host_float, is_readable
from ema_core._types import Array, DType, Namespace, Value

_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")


def dtype_name(xp: Namespace, dtype: DType) -> str:
    """The Array API name of a floating dtype ('float32', 'bfloat16', ...); another one by its
    own name (torch's ``complex32`` as 'complex32', not 'torch.complex32', so that it is told
    complex like the others)."""
    for name in _FLOAT_NAMES:
        candidate = getattr(xp, name, None)
        if candidate is not None and candidate == dtype:
            return name
    return str(dtype).removeprefix("torch.")


#: Floating dtypes wider than float32, computed in their own dtype (numpy's long double is
#: named float96 or float128, complex192 or complex256, where it is wider than float64).
_WIDE_NAMES = (
    "float64",
    "complex64",
    "complex128",
    "float96",
    "float128",
    "complex192",
    "complex256",
)


def compute_dtype(xp: Namespace, shadow_dtype: DType) -> DType:
    """float32, or the shadow's dtype when it is wider (float64, long double, complex), or
    complex64 for torch's ``complex32`` (a real type would drop the imaginary part)."""
    name = dtype_name(xp, shadow_dtype)
    if name in _WIDE_NAMES:
        return shadow_dtype
    return xp.complex64 if name.endswith("complex32") else xp.float32


def _real_of(xp: Namespace, dtype: DType) -> DType:
    name = dtype_name(xp, dtype)
    if name in ("complex192", "complex256"):  # numpy's complex long double
        return getattr(xp, "longdouble", xp.float64)
    return {"complex64": xp.float32, "complex128": xp.float64}.get(name, dtype)


def blend(xp: Namespace, shadow: Array, param: Array, decay: Value, rate: Value) -> Array:
    """``shadow + rate * (param - shadow)`` with ``rate = 1 - decay``; a new array (or ``shadow``
    itself when a host decay is 1)."""
    if isinstance(decay, float):
        if decay == 1.0:
            return shadow
        if decay == 0.0:
            return xp.astype(param, shadow.dtype, copy=True)
    ct = compute_dtype(xp, shadow.dtype)
    s = shadow if shadow.dtype == ct else xp.astype(shadow, ct)
    p = param if param.dtype == ct else xp.astype(param, ct)
    diff = p - s
    if isinstance(decay, float):
        out = s + rate * diff if decay >= 0.5 else p - decay * diff
    else:
        real = _real_of(xp, ct)
        d, r = xp.astype(decay, real), xp.astype(rate, real)
        out = xp.where(decay >= 0.5, s + r * diff, p - d * diff)
        # the ends in the shadow's dtype: a half shadow's NaN keeps its bits at decay 1, and
        # the params are rounded once at decay 0, as the host decay's copy does
        out = out if out.dtype == shadow.dtype else xp.astype(out, shadow.dtype)
        taken = param if param.dtype == shadow.dtype else xp.astype(param, shadow.dtype)
        return xp.where(decay == 1.0, shadow, xp.where(decay == 0.0, taken, out))
    return out if out.dtype == shadow.dtype else xp.astype(out, shadow.dtype)


def copy_exact(xp: Namespace, param: Array) -> Array:
    """An integer or bool leaf (``non_float="copy"``): the params' value, bit for bit, on every
    call, also one whose decay is 1 (a skip for the averaged leaves), so no decay is read."""
    return xp.asarray(param, copy=True)


def correct(xp: Namespace, shadow: Array, weight: Any) -> Array:
    """The read of a zero-started shadow, ``shadow / weight`` (``shadow`` where weight is 0 or
    1), in the compute dtype: a half shadow reads in float32, never rounded back to the half
    (optax returns its EMA so)."""
    ct = compute_dtype(xp, shadow.dtype)
    if isinstance(weight, float):
        if weight in (0.0, 1.0):
            return shadow if shadow.dtype == ct else xp.astype(shadow, ct)
        out = xp.astype(shadow, ct) / weight
    else:
        w = xp.astype(weight, _real_of(xp, ct))
        out = xp.astype(shadow, ct) / xp.where(w == 0.0, xp.ones_like(w), w)
    return xp.asarray(out) if shadow.ndim == 0 else out  # numpy's 0-d quotient is a scalar


def next_weight(xp: Namespace, weight: Array, decay: Value, rate: Value) -> Array:
    """``w_t = d_t * w_{t-1} + (1 - d_t)``, the EMA of the constant 1, in the blend's two-sided
    form (``w + r * (1 - w)`` for d >= 0.5, ``1 - d * (1 - w)`` below): a weight of 1 stays 1
    exactly, and with ``d`` rounded to float32 beside an accurate ``r`` the weight follows the
    shadows' own recurrence (``d * w + r`` drifted off 1 and biased a zero-started read by up
    to 1e-3). Kept in its own dtype (a Python number stays a Python float while the decay is
    one).

    >>> next_weight(None, 1.0, 0.9999, 1e-4), next_weight(None, 0.0, 0.9, 0.1)
    (1.0, 0.1)
    """
    if isinstance(weight, (int, float)):
        w = float(weight)
        if isinstance(decay, float):
            return w + rate * (1.0 - w) if decay >= 0.5 else 1.0 - decay * (1.0 - w)
        ns = compat.array_namespace(decay)
        return ns.where(decay >= 0.5, w + rate * (1.0 - w), 1.0 - decay * (1.0 - w))
    own = compat.array_namespace(weight)
    foreign = not isinstance(decay, float) and compat.array_namespace(decay) is not own
    if foreign and is_readable(decay):  # a weight of another framework than the step's
        decay, rate = host_float(decay), host_float(rate)
    if isinstance(decay, float):  # in the weight's own namespace: a numpy one stays numpy
        new = weight + rate * (1.0 - weight) if decay >= 0.5 else 1.0 - decay * (1.0 - weight)
        return own.asarray(new, dtype=weight.dtype, device=compat.device(weight))
    ns = xp if foreign else own  # a device or traced decay: in the leaves' namespace
    d, r = ns.astype(decay, weight.dtype), ns.astype(rate, weight.dtype)
    return ns.where(d >= 0.5, weight + r * (1.0 - weight), 1.0 - d * (1.0 - weight))


def init_leaf(xp: Namespace, param: Array, shadow_dtype: DType | None, zeros: bool) -> Array:
    """A new shadow leaf: a copy of ``param`` (in ``shadow_dtype`` when given) or zeros. Either
    follows ``param``: its device, and a JAX array's sharding and commitment (zeros made on
    ``param``'s device would be committed beside uncommitted params, and a jitted update of the
    state would compile twice). An empty param's copy is made as zeros: JAX's copy of an empty
    sharded array loses its sharding, which ``zeros_like`` keeps."""
    if math.prod(param.shape) == 0:
        return xp.zeros_like(param, dtype=param.dtype if shadow_dtype is None else shadow_dtype)
    if shadow_dtype is None:
        return xp.asarray(param, copy=True)
    if zeros:
        return xp.zeros_like(param, dtype=shadow_dtype)
    return xp.astype(param, shadow_dtype, copy=True)

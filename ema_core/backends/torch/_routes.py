"""The in-place blend of many torch tensors: one route per group of a ``Plan``.

``_plan.make_plan`` groups the pairs once by (kind, device, shadow dtype, params dtype) into four
buckets: ``exact`` (integer, bool, copied buffers), ``same`` (one float dtype), ``mixed`` (a
float32/float64 shadow over narrower float params) and ``other`` (complex, a shadow narrower than
its params); DTensor pairs as their local shards. ``apply`` asks ``route`` for each group (its
bucket, its device, and whether the decay is a host float or a 0-d device tensor; its callers
read a 0-d CPU decay as a float first, ``host_values``) and runs that route:

====================  ======  =====  ========  ==============================  ====================
route                 decay   where  groups    runs                            test
====================  ======  =====  ========  ==============================  ====================
skip                  1.0     any    averaged  nothing                         host_decay_ends
copy                  0.0     any    averaged  ``_foreach.copy_``              host_decay_ends
copy                  any     any    exact     ``_foreach.copy_``              exact_leaves_copy
foreach-lerp          host    any    same [4]  ``_foreach.lerp_``              cpu_routes
triton-same           host    CUDA   same[3]   ``_cuda.triton_lerp_``          cuda_same_host
foreach-lerp-ends     device  any    same [1]  ``_foreach.lerp_ends_``         cpu_routes
triton-ends           device  CUDA   same[3]   ``_cuda.triton_lerp_ends_``     cuda_same_ends
host-engine           host    CPU    mixed     ``_host.run``                   cpu_routes
cuda-mixed            host    CUDA   mixed     ``_cuda.blocked_lerp_``         cuda_routes
cuda-mixed-ends       device  CUDA   mixed     ``_cuda.blocked_lerp_ends_``    cuda_routes
triton-mixed          host    CUDA   mixed[2]  ``_cuda.triton_lerp_``          cuda_routes
triton-mixed-ends     device  CUDA   mixed[2]  ``_cuda.triton_lerp_ends_``     cuda_routes
generic               any     any    the rest  ``_core.blend`` per leaf        cpu_routes
====================  ======  =====  ========  ==============================  ====================

[1] float32 or wider (float32 on CUDA with Triton: triton-ends). [2] a float32 shadow, Triton
installed. [3] float32 pairs, Triton installed, not traced by ``torch.compile``, with torch's
fused ``lerp`` arithmetic (the bits of torch's foreach ``lerp_`` at the same float32 weight):
"triton-ends" in one pass with exact ends, where ``_foreach.lerp_ends_`` takes three ops and a
temporary per tensor (a CUDA graph's update), the bits of "foreach-lerp" under the same int
step; "triton-same" one launch per params layout (strided pairs, and params with the negative
bit, left to torch's foreach ops), where torch's foreach ``lerp_`` reached 0.87 of the
copy ceiling on Llama-1.1B fp32 against the kernel's 0.99 (H100, 2026-12-05). [4] float32 on
CUDA with Triton: triton-same.
Tests: ``test_<name>`` in ``tests/test_torch_routes.py`` (the CUDA ones marked ``gpu``;
``tests/test_torch_kernels.py`` runs the blocked functions on CPU tensors). "generic" takes the
``other`` bucket, half ``same`` groups with a device decay (the core computes in float32: a
device rate is not rounded to the half), ``mixed`` groups with a device decay on the CPU, or
that the host engine refuses (``_host.usable``), or on another device. ``foreach-lerp`` is
torch's ``lerp_(params, 1 - decay)``: it may differ from the core by one rounding (at most 1 ulp
of ``max(|s|, |p|)``); the host engine and the core share their arithmetic bit for bit. The
"-ends" routes and "generic" keep both ends exact without reading a device decay: decay 1 keeps
each shadow's bits, decay 0 gives the params' (inf and NaN included), so an update can be
captured in a CUDA graph.

Before anything is written, every pair of a ``mixed`` group (and of a "triton-ends" or
"triton-same" one) is checked against its shadow (shape and device), or vouched for by the
caller (below): those routes index the params by the shadow's size (host loops, Triton) or
cast-copy them into a scratch (which would broadcast). The host
engine's views are (re)bound, each pair checked, when a tensor's storage, shape or dtype changed
(also that each storage still holds its tensor: one freed by ``untyped_storage().resize_(0)`` is
refused). The Triton routes likewise keep their launch (``_launch.Launch``: the pairs checked,
grouped and their tables built) in the group, made again, each pair checked, when the pairs'
``_pairs.Key`` changed; a caller that vouches for the tensors (``kept``: the ``EMA`` class's
watch, when it covers every pair a kernel keeps reads of, ``_watch_views``; the stateless
call's cache) spares even that comparison (``_prewrite`` holds these checks). A mismatch
raises ``ValueError`` naming the tensor and leaves every shadow as it was.
The host engine writes through numpy views and the Triton kernel through addresses, so both
bump the shadows' version counters themselves, as torch's in-place ops do (a graph that saved a
shadow then refuses to backpropagate through the old values).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch

from ema_core import _core
from ema_core._ops import host_float, is_readable
from ema_core._types import LeafKind, Namespace, Value
from ema_core.backends.torch import _cuda, _foreach, _host, _prewrite
from ema_core.backends.torch._plan import BUCKETS, Group, Plan, bucket, make_plan

__all__ = ["Group", "Plan", "Route", "apply", "host_values", "make_plan", "route", "routes"]

Route: TypeAlias = Literal[
    "skip",
    "copy",
    "foreach-lerp",
    "foreach-lerp-ends",
    "host-engine",
    "cuda-mixed",
    "cuda-mixed-ends",
    "triton-mixed",
    "triton-mixed-ends",
    "triton-ends",
    "triton-same",
    "generic",
]
_HALF = (torch.float16, torch.bfloat16)
Tensors: TypeAlias = list[torch.Tensor]


def route(kind: LeafKind, shadow: torch.Tensor, params: torch.Tensor, decay: Value) -> Route:
    """The route (module docstring) of a group like this pair under ``decay``: a Python float
    (host) or a 0-d tensor (device, never read here)."""
    on_host = isinstance(decay, float)
    if kind == "exact" or (on_host and decay == 0.0):
        return "copy"
    if on_host and decay == 1.0:
        return "skip"
    group = bucket(kind, shadow, params)
    if group == "same" and (on_host or shadow.dtype not in _HALF):
        # traced (torch.compile), the plain ops as before: the kernel reads data addresses
        one_pass = _cuda.triton_usable(shadow) and not torch.compiler.is_compiling()
        if on_host:
            return "triton-same" if one_pass else "foreach-lerp"
        return "triton-ends" if one_pass else "foreach-lerp-ends"
    return _mixed_route(shadow, params, on_host) if group == "mixed" else "generic"


def _mixed_route(shadow: torch.Tensor, params: torch.Tensor, on_host: bool) -> Route:
    """The route of a ``mixed`` group whose decay is neither a host 0 nor a host 1."""
    if shadow.is_cuda and _cuda.triton_usable(shadow):
        return "triton-mixed" if on_host else "triton-mixed-ends"
    if shadow.is_cuda:
        return "cuda-mixed" if on_host else "cuda-mixed-ends"
    on_cpu = on_host and shadow.device.type == "cpu"
    return "host-engine" if on_cpu and _host.usable(shadow, params) else "generic"


def routes(plan: Plan, decay: Value) -> list[tuple[Group, Route]]:
    """Every non-empty group of ``plan`` with the route ``apply`` takes for it under ``decay``."""
    out: list[tuple[Group, Route]] = []
    for name in BUCKETS:
        kind: LeafKind = "exact" if name == "exact" else "float"
        for group in getattr(plan, name):
            if group.shadows:
                out.append((group, route(kind, group.shadows[0], group.params[0], decay)))
    return out


def apply(xp: Namespace, plan: Plan, decay: Value, rate: Value, *, kept: bool = False) -> None:
    """Blend every averaged group of ``plan`` in place with ``decay`` (weight on the old
    average) and copy the exact ones (at every decay), each through its ``route``.

    ``kept``: the caller has just found the tensors unchanged since the host engine's views of
    them were bound (the stateless call's cache, over private aliases: storage, offset, sizes,
    strides, dtype; the ``EMA`` class's watch, in its one pass over the tensors); the views,
    once bound, are then used without comparing them again (``_host.stale``).

    Raises:
        ValueError: a params tensor of a mixed-precision group no longer fits its shadow
            (resized or moved since the plan was made); nothing has been written then.
    """
    work = routes(plan, decay)
    mixed = {id(group) for group in plan.mixed}
    for group, way in work:
        if (id(group) in mixed and way != "skip") or way in _prewrite.TRITON:
            _prewrite.check(group, way, kept)
    for group, way in work:
        _run(xp, group, way, decay, rate)


def host_values(decay: Value, rate: Value) -> tuple[Value, Value]:
    """A 0-d decay in host memory (a schedule's value at a CPU tensor step, a CPU ``decay=``
    tensor) as Python floats, the rest as given. Reading host memory syncs nothing, and the
    host-float routes then blend exactly as for the same int step; as a tensor it would take
    the per-tensor device routes (and on a CUDA model be copied to the GPU at every update).
    The callers (``update_leaves``, the ``EMA`` class, the bank) read it once per update."""
    if isinstance(decay, torch.Tensor) and is_readable(decay):
        return host_float(decay), host_float(rate)
    return decay, rate


def _for_copy(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``source`` as ``target.copy_`` reads it right: torch 2.13's copy between float16 and
    float32 into a tensor with the negative bit drops the bit (``-1`` for ``1``), so such a
    source is cast first."""
    return source.to(target.dtype) if target.is_neg() and source.dtype != target.dtype else source


def _run(xp: Namespace, group: Group, way: Route, decay: Value, rate: Value) -> None:
    """One group through one route (the table in the module docstring)."""
    s, p = group.shadows, group.params
    match way:
        case "skip":
            pass
        case "copy" if group.views:  # torch's fused copy refuses them
            for target, source in zip(s, p, strict=True):
                target.copy_(_for_copy(target, source))
        case "copy":
            _foreach.copy_(s, p)
        case "foreach-lerp":
            _foreach.lerp_(s, p, float(rate))
        case "foreach-lerp-ends":
            _foreach.lerp_ends_(s, p, *_on_device(rate, decay, s[0]))
        case "host-engine":
            _host_engine(xp, group, float(decay), float(rate))
        case "cuda-mixed":
            _cuda.blocked_lerp_(s, p, float(rate))
        case "cuda-mixed-ends":
            _cuda.blocked_lerp_ends_(s, p, *_on_device(rate, decay, s[0]))
        case "triton-mixed" | "triton-same":
            _cuda.triton_lerp_(s, p, float(rate), group.launch)
            torch.autograd.graph.increment_version(s)  # written by address: tell autograd
        case "triton-mixed-ends" | "triton-ends":
            _cuda.triton_lerp_ends_(s, p, *_on_device(rate, decay, s[0]), group.launch)
            torch.autograd.graph.increment_version(s)
        case "generic":
            _generic(xp, s, p, decay, rate)


def _host_engine(xp: Namespace, group: Group, decay: float, rate: float) -> None:
    """The host engine over the views ``_check`` bound; a pair it left (none normally) takes
    the generic core, whose arithmetic it shares bit for bit. The shadows' version counters
    are bumped as any in-place torch op bumps them (a graph that saved one then refuses to
    backpropagate through the old values)."""
    bound = group.host
    if bound is None:  # cannot happen after _check
        raise RuntimeError("the host engine's views were not bound before the update")
    _host.run(bound, decay, rate)
    if decay != 1.0:  # written through numpy views: tell autograd, as torch's own ops do
        torch.autograd.graph.increment_version(group.shadows)
    left = bound.left
    _generic(xp, [group.shadows[i] for i in left], [group.params[i] for i in left], decay, rate)


def _on_device(rate: Value, decay: Value, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A device rate (0-d, in the shadow's compute dtype) and decay on ``like``'s device."""
    dtype = torch.float32 if like.dtype in _HALF else like.dtype
    weight = torch.as_tensor(rate, device=like.device).to(dtype=dtype)
    return weight, torch.as_tensor(decay, device=like.device)


def _generic(xp: Namespace, shadows: Tensors, params: Tensors, decay: Value, rate: Value) -> None:
    """The core's blend, leaf by leaf, written back in place."""
    for s, p in zip(shadows, params, strict=True):
        new = _core.blend(xp, s, p, decay, rate)
        if new is not s:
            s.copy_(new)

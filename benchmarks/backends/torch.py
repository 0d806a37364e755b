"""torch: ema-core's ``ema_update`` and the ``EMA`` class (shadows of named tensors, updated in
place); ceiling: one flat ``lerp_`` of the same bytes. Peer libraries are in benchmarks/peers.

On CUDA two more rows: ``EMA class graph`` (the class's update captured in a CUDA graph and
replayed) and ``triton_lerp_`` (the Triton kernel alone over a kept launch, with a host decay:
the class's route, for bf16 params and, since 2026-12-05, fp32 ones). For fp32 params two more:
``foreach_lerp_`` (torch's foreach ``lerp_`` alone over the same lists) and ``EMA class
foreach`` (a second ``EMA`` whose updates take the route fp32 groups took before, torch's
foreach ``lerp_``: the kernel turned off around each of its calls), so that one run tells
whether the kernel's route beats the one it replaced, with the class's watch and all. A
contender that fails costs only its own row (``harness.measure``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "torch"


def missing() -> str | None:
    return _missing("torch")


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import torch

    from ema_core.torch import EMA

    shadows_np, params_np = host_arrays(workload)
    pdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    shadows = [torch.from_numpy(s).to(device) for s in shadows_np]
    params = [torch.from_numpy(p).to(device=device, dtype=pdtype) for p in params_np]
    del shadows_np, params_np
    n = flat_elements(workload, dtype)
    a = torch.ones(n, device=device)
    b = torch.ones(n, device=device)
    ema = EMA({str(i): p for i, p in enumerate(params)}, decay=0.999)

    def ceiling(t: int) -> Any:
        return a.lerp_(b, 0.001)

    def ema_update(t: int) -> Any:
        return ema_core.ema_update(shadows, params, t, decay=0.999)

    def ema_class(t: int) -> Any:
        return ema.update(t)

    shadow_dict = {str(i): s for i, s in enumerate(shadows)}
    params_dict = {str(i): p for i, p in enumerate(params)}

    def stateless_dict(t: int) -> Any:  # a state_dict-style dict, beside the class (x class)
        return ema_core.ema_update(shadow_dict, params_dict, t, decay=0.999)

    found: dict[str, Callable[[int], Any]] = {
        "ceiling": ceiling,
        "ema_core": ema_update,
        "EMA class": ema_class,
        "ema_update dict": stateless_dict,
    }
    if device == "cuda":
        found["EMA class graph"] = _graph_replay(params)
        found["triton_lerp_"] = _triton_lerp(shadows, params)
        if dtype == "fp32":

            def foreach_lerp(t: int) -> Any:
                return torch._foreach_lerp_(shadows, params, 0.001)

            found["foreach_lerp_"] = foreach_lerp
            found["EMA class foreach"] = _class_foreach(params)
    return found


def _class_foreach(params: list[Any]) -> Callable[[int], Any]:
    """A second ``EMA`` over the same params whose updates run with the Triton kernel turned
    off (``triton_usable`` False while it is built and around each call): float32 groups then
    take torch's foreach ``lerp_`` and its watch covers no launch, the class as it ran before
    route "triton-same". Made on first use."""
    from ema_core.backends.torch import _cuda
    from ema_core.torch import EMA

    box: dict[str, Any] = {}
    real = _cuda.triton_usable

    def never(like: Any) -> bool:
        return False

    def update(t: int) -> Any:
        _cuda.triton_usable = never
        try:
            if "ema" not in box:
                box["ema"] = EMA({str(i): p for i, p in enumerate(params)}, decay=0.999)
            return box["ema"].update(t)
        finally:
            _cuda.triton_usable = real

    return update


def _graph_replay(params: list[Any]) -> Callable[[int], Any]:
    """A second ``EMA`` over the same params, its update (a device step) captured in a CUDA
    graph on first use and replayed at each call: the device's time with no host work per
    tensor (README: capture the update in a CUDA graph)."""
    import torch

    from ema_core.torch import EMA

    box: dict[str, Any] = {}

    def replay(t: int) -> Any:
        if "graph" not in box:  # made on first use: a contender left out costs no memory
            ema = EMA({str(i): p for i, p in enumerate(params)}, decay=0.999)
            step = torch.zeros((), dtype=torch.int64, device=params[0].device)
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
                step += 1
                ema.update(step)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step += 1
                ema.update(step)
            box.update(graph=graph, ema=ema, step=step)
        return box["graph"].replay()

    return replay


def _triton_lerp(shadows: list[Any], params: list[Any]) -> Callable[[int], Any]:
    """The Triton kernel alone (``_cuda.triton_lerp_`` over a launch prepared once, as a
    route's group keeps it) on the stateless call's lists, without the class or the plan:
    with ``queued``, how close the kernel itself comes to the ceiling."""
    from ema_core.backends.torch import _cuda, _launch

    launch = _launch.prepare(shadows, params)

    def kernel(t: int) -> Any:
        return _cuda.triton_lerp_(shadows, params, 0.001, launch)

    return kernel


def sync(result: Any) -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()

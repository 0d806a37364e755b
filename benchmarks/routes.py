"""``python -m benchmarks --routes``: the host's work per update on the Triton routes (bf16
params over float32 shadows, ``_prewrite.check``), per leaf, for 1k, 10k and 20k tiny tensors.
It is what runs before the kernel's launch, so no GPU is needed to time it: the tensors are CPU
tensors, the tables are built on the host, and the launch itself is not run.

Rows:

* ``prepared``: the pairs checked, grouped per launch and their table looked up, with no launch
  kept. Until 2026-12-05 every update did this; now only the first one, or one after a pair
  changed.
* ``key``: a kept launch whose pairs' key (pointers, sizes, dtypes, layouts) is compared. This
  is an update nobody vouched for (the FSDP2 store, a direct call).
* ``kept``: a kept launch the caller vouched for, as the ``EMA`` class does after its watch's
  look and the stateless call after its cache's.
* ``watch``: that look, the ``EMA`` class's ``Watch.same()`` over the same bf16 tensors. The
  class pays it at every update, on every route.
* ``watch fp32``: the same look over float32 params as on the CPU (route "foreach-lerp": no
  launch to vouch for), and ``watch fp32 kernel`` as on CUDA with Triton (route "triton-same"
  since 2026-12-05: the look also covers what the kernel's launch depends on, the shadows'
  pointers and layouts). Their difference is what the kernel's route adds per update on the
  host, against one foreach ``lerp_`` launch saved per chunk of tensors on the device.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.cli_args import no_options
from benchmarks.tree import best, table

SIZES = (1_000, 10_000, 20_000)


def rows(repeats: int = 7) -> list[tuple[str, int, float]]:
    """(case, leaves, best seconds) for each size."""
    import torch

    from ema_core.backends.torch import _prewrite
    from ema_core.torch import EMA

    out = []
    for n in SIZES:
        params = {f"w{i}": torch.nn.Parameter(torch.randn(8).bfloat16()) for i in range(n)}
        average = EMA(params, decay=0.999)
        (group,) = average._bound.store.plan.mixed

        def prepared(group: Any = group) -> None:
            group.launch = None
            _prewrite.check(group, "triton-mixed")

        def key(group: Any = group) -> None:
            _prewrite.check(group, "triton-mixed")

        def kept(group: Any = group) -> None:
            _prewrite.check(group, "triton-mixed", kept=True)

        def watch(average: Any = average) -> None:
            average._bound.watch.same()

        for name, step in (("prepared", prepared), ("key", key), ("kept", kept)):
            out.append((name, n, best(step, repeats)))
        out.append(("watch", n, best(watch, repeats)))
        for name, usable in (("watch fp32", False), ("watch fp32 kernel", True)):
            out.append((name, n, best(_float32_watch(n, usable), repeats)))
        print(f"routes: {n} leaves done", flush=True, file=sys.stderr)
    return out


def _float32_watch(n: int, usable: bool) -> Any:
    """``Watch.same`` of an ``EMA`` over ``n`` tiny float32 params, built as where the Triton
    kernel runs (``usable``: its watch covers the launch's pairs) or not."""
    from unittest import mock

    import torch

    from ema_core.backends.torch import _cuda
    from ema_core.torch import EMA

    params = {f"w{i}": torch.nn.Parameter(torch.randn(8)) for i in range(n)}
    with mock.patch.object(_cuda, "triton_usable", lambda like: usable):
        average = EMA(params, decay=0.999)
    watch = average._bound.watch
    if len(watch.views.where) != (n if usable else 0):
        raise RuntimeError("the watch does not cover the pairs this row times")
    return watch.same


def main(repeats: int = 7) -> str:
    return table(rows(repeats), ms_decimals=3)


if __name__ == "__main__":
    no_options("python -m benchmarks.routes", __doc__, "torch")
    print(main())

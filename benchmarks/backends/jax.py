"""JAX: ema-core's ``make_update`` (one jitted update, state donated, step traced); ceiling: one
flat donated jit of the same bytes; ``tree_map``: the hand-written jitted, donated
``s + (1 - d) * (p - s)`` that JAX users write today (skipped past 1,000 leaves, where XLA's
compile time on the CPU grows to minutes); ``handoff``: the cheapest jitted ``(shadows, params)
-> shadows`` there is, no arithmetic, the shadows donated and returned as they came, the params
kept as inputs, in the chunks ``make_update`` uses. It is what JAX charges to hand these arrays to
a compiled function and back, so ``ceiling / handoff`` bounds the ratio any per-leaf
``make_update`` can reach. ``handoff_params``: the same with one flat shadow per chunk (a packed
state) instead of one per leaf: the bound for any update that takes the params leaf by leaf.
``addresses``: no compiled call at all, only each param's and shadow's buffer address read from
Python (``unsafe_buffer_pointer``): the floor of a route that would blend the buffers outside
XLA, as the torch host engine does with tensors (JAX arrays are immutable, so such a route would
also write memory that other computations may still read). ``packed_concat``: a packed state
that does the arithmetic: one flat float32 shadow, the params concatenated into it inside the
jitted, donated update (``s + (1 - d) * (concatenate(params) - s)``; up to 1,000 leaves, like
``tree_map``): what a packed public state would cost once XLA has to gather the leaves.
``ema_core_hwio`` (workloads with 4-d leaves): ``make_update`` on the same params with each 4-d
leaf in the layout Flax and Haiku give a convolution kernel, ``(kh, kw, in, out)``, instead of
torch's ``(out, in, kh, kw)`` that the workload files list (Equinox keeps torch's). XLA on the
CPU runs the loop of each leaf over its shape, and a shape that ends in dims of 1 or 3 runs
slower than one that ends in 64 to 2048 channels: the same bytes, a different loop.
``packed``: ``make_update`` on ``ema_core.jax.pack`` of the same state (the shadows of leaves
of at most 4,096 elements in flat buffers, one per dtype and block of 256 leaves).
``packed_slices`` (CUDA only, up to 1,000 leaves): one flat float32 shadow again, but the update
is a concatenation of each leaf's blend over its slice of the shadow (``slices_update``), the
form XLA's GPU concatenate emitter writes region by region, where ``packed_concat`` makes every
element pick its param among all of them. On the CPU it ran at about a tenth of the ceiling (a
probe on ResNet-50); on the H200 ``packed_concat`` was device-bound at 0.30 of the ceiling
queued while every per-leaf update was bound by the host's cost per returned array: whether
one returned buffer per model can reach the GPU target is what this row is for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import ema_core
from benchmarks.backends._common import flat_elements, host_arrays
from benchmarks.backends._common import missing as _missing
from benchmarks.workloads import Workload

NAME = "jax"
DECAY = 0.999
#: Past this many leaves the hand-written baseline is not compiled (minutes of XLA on a CPU).
MAX_BASELINE_LEAVES = 1000
#: Where the ``packed_slices`` row runs (a tenth of the ceiling on the CPU: not worth its time).
SLICES_DEVICES = ("cuda",)


def missing() -> str | None:
    return _missing("jax")


def no_case(workload: Workload, dtype: str, device: str) -> str | None:
    """Why this backend times nothing here (None: it does): JAX has no device of that kind (a
    CPU-only jaxlib beside a CUDA torch)."""
    import jax

    kind = "cuda" if device == "cuda" else "cpu"
    try:
        jax.devices(kind)
    except RuntimeError:
        return f"jax has no {kind} device here (a CPU-only jaxlib?)"
    return None


def cases(workload: Workload, dtype: str, device: str) -> dict[str, Callable[[int], Any]]:
    import jax
    import jax.numpy as jnp

    from ema_core.jax import make_update, pack
    from ema_core.jax._chunked import CHUNK

    try:
        dev = jax.devices("cuda" if device == "cuda" else "cpu")[0]
    except RuntimeError:
        return {}
    shadows_np, params_np = host_arrays(workload)
    pdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    params = [jax.device_put(jnp.asarray(p, dtype=pdtype), dev) for p in params_np]
    four_d = any(len(shape) == 4 for shape in workload.shapes)
    hwio = [
        jax.device_put(jnp.asarray(hwio_layout(p), dtype=pdtype), dev)
        for p in (params_np if four_d else [])
    ]
    config = ema_core.Config(schedule=DECAY)
    box = {
        "state": ema_core.init(params, config),
        "hwio": ema_core.init(hwio, config) if four_d else None,
        "packed_state": pack(ema_core.init(params, config)),
        "s": [jax.device_put(jnp.asarray(s), dev) for s in shadows_np],
        "h": [jax.device_put(jnp.asarray(s), dev) for s in shadows_np],
        "packed": [jax.device_put(jnp.zeros(1), dev) for _ in range(0, len(params), CHUNK)],
        "a": jax.device_put(jnp.ones(flat_elements(workload, dtype)), dev),
    }
    b = jnp.ones_like(box["a"])
    del shadows_np, params_np

    flat = jax.jit(lambda a, b: a + (1 - DECAY) * (b - a), donate_argnums=0)
    update = make_update(config)
    update_hwio = make_update(config)
    update_packed = make_update(config)
    by_hand = jax.jit(
        lambda s, p: [x + (1 - DECAY) * (y.astype(x.dtype) - x) for x, y in zip(s, p, strict=True)],
        donate_argnums=0,
    )
    nothing = jax.jit(lambda s, p: s, donate_argnums=0, keep_unused=True)
    packed = jax.jit(
        lambda s, p: s + (1 - DECAY) * (jnp.concatenate([x.ravel() for x in p]) - s),
        donate_argnums=0,
    )

    def ceiling(t: int) -> Any:
        box["a"] = flat(box["a"], b)
        return box["a"]

    def ema_step(t: int) -> Any:
        box["state"] = update(box["state"], params)
        return box["state"]

    def ema_core_hwio(t: int) -> Any:
        box["hwio"] = update_hwio(box["hwio"], hwio)
        return box["hwio"]

    def packed_state(t: int) -> Any:
        box["packed_state"] = update_packed(box["packed_state"], params)
        return box["packed_state"]

    def tree_map(t: int) -> Any:
        box["s"] = by_hand(box["s"], params)
        return box["s"]

    def handoff(t: int) -> Any:
        h, out = box["h"], []
        for i in range(0, len(params), CHUNK):
            out += nothing(h[i : i + CHUNK], params[i : i + CHUNK])
        box["h"] = out
        return box["h"]

    def handoff_params(t: int) -> Any:
        box["packed"] = [
            nothing(x, params[k * CHUNK : (k + 1) * CHUNK]) for k, x in enumerate(box["packed"])
        ]
        return box["packed"]

    def packed_concat(t: int) -> Any:
        if "flat" not in box:  # made on first use: a contender left out costs no memory
            box["flat"] = jax.device_put(jnp.zeros(sum(p.size for p in params)), dev)
        box["flat"] = packed(box["flat"], params)
        return box["flat"]

    def packed_slices(t: int) -> Any:
        if "slices" not in box:
            box["slices"] = jax.device_put(jnp.zeros(sum(p.size for p in params)), dev)
            box["slices_update"] = slices_update([p.size for p in params])
        box["slices"] = box["slices_update"](box["slices"], params)
        return box["slices"]

    def addresses(t: int) -> Any:
        return [x.unsafe_buffer_pointer() for x in (*box["h"], *params)]

    found = {
        "addresses": addresses,
        "ceiling": ceiling,
        "ema_core": ema_step,
        "handoff": handoff,
        "handoff_params": handoff_params,
        "packed": packed_state,
    }
    if four_d:
        found["ema_core_hwio"] = ema_core_hwio
    if len(params) > MAX_BASELINE_LEAVES:
        return found
    if device in SLICES_DEVICES:
        found["packed_slices"] = packed_slices
    return {**found, "packed_concat": packed_concat, "tree_map": tree_map}


def slices_update(sizes: list[int]) -> Callable[[Any, list[Any]], Any]:
    """A jitted, donated ``(flat, params) -> flat``: the EMA step at ``DECAY`` of each param
    (raveled, in float32) over its slice of ``flat`` (the params' sizes in order), the new flat
    buffer the concatenation of the blended slices."""
    import jax
    import jax.numpy as jnp

    offsets = np.cumsum([0, *sizes]).tolist()

    def update(flat: Any, params: list[Any]) -> Any:
        pieces = []
        for start, stop, p in zip(offsets[:-1], offsets[1:], params, strict=True):
            s = jax.lax.slice(flat, (start,), (stop,))
            pieces.append(s + (1 - DECAY) * (p.ravel().astype(flat.dtype) - s))
        return jnp.concatenate(pieces)

    return jax.jit(update, donate_argnums=0)


def hwio_layout(array: np.ndarray) -> np.ndarray:
    """A 4-d torch convolution kernel ``(out, in, kh, kw)`` as Flax holds it, ``(kh, kw, in,
    out)`` (contiguous); any other array as it is."""
    if array.ndim != 4:
        return array
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))


def sync(result: Any) -> None:
    import jax

    jax.block_until_ready(result)

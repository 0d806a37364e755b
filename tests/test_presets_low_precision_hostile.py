"""Presets beside their real peers in the precisions users train in.

The parity suites run float32 models, and ``test_presets_edges_hostile.py`` holds a bf16 / fp16
model's default float32 shadow to the peer run on the float32 copy. Here the other side of the
README's deliberate difference: a half model whose peer keeps a half shadow (its default:
torch-ema, ema-pytorch, diffusers, swa_utils, mmengine, timm without stochastic rounding,
optax's input dtype), against the preset with ``dtype="same"`` (``Config.dtype``: "``"same"``
keeps bf16"), integer and floating buffers included; the stall a bf16 shadow shows at a decay
near 1; and float32 tensors holding 1e-8 and 1e8 side by side at decay 0.99999 over 200 steps,
each element held to its own magnitude rather than the tensor's.

The README states no bound for half shadows (its parity table is for float32 shadows, plus
optax's bf16/fp16 accumulators). The bounds here come from how each peer rounds: a peer that
blends with ``lerp`` (computed in float32 for half tensors, rounded once) is ema-core bit for
bit; torch-ema and diffusers round three times per update (``s - p``, the product, the
subtraction), each within half a unit of ema-core's single rounding, so the two stay within one
unit of the half dtype at the values' magnitude.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core  # noqa: E402
from ema_core import presets  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.peers import Setting, as_float64, make_model, require, ulps  # noqa: E402
from tests.test_presets_peers import BOUNDS, DRIVERS, config_of  # noqa: E402

pytestmark = pytest.mark.slow  # the real peer libraries: `pytest -m "not slow"` leaves it out

HALVES = [torch.bfloat16, torch.float16]
HALF_IDS = ["bf16", "fp16"]
#: One unit in the last place at magnitude 1 (8 and 11 significant bits).
UNIT = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny (as in the parity suites)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same(config: ema_core.Config) -> ema_core.Config:
    """The preset with the peer's shadow dtype: the params' own (``Config(dtype="same")``)."""
    return dataclasses.replace(config, dtype="same")


def drive(peer: str, model: Any, setting: Setting) -> Any:
    """The peer's update and read functions over ``model`` (mmengine warns at momentum > 0.5)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return DRIVERS[peer][0](model, setting)


def half_steps(model: Any, steps: int, seed: int = 7) -> Iterator[int]:
    """Train a model in its own dtype (parameters drift, BatchNorm statistics and its counter
    move in a training-mode forward pass); yields t = 1, 2, ..."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    model.train()
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen) + 0.01).to(dtype))
            model(torch.randn(16, 5, generator=gen).to(dtype))
        yield t


def half_units(ours: Any, theirs: Any) -> float:
    """The largest difference in units of ``theirs``' half dtype at its largest magnitude."""
    a, b = as_float64(ours), as_float64(theirs)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
    return float(np.max(np.abs(a - b), initial=0.0)) / (UNIT[theirs.dtype] * scale)


# --- half shadows: the peer's default beside dtype="same" --------------------------------------

#: Peers that blend a half shadow with ``lerp`` (timm's ``lerp_`` once stochastic rounding is
#: off, ema-pytorch, swa_utils' ``_foreach_lerp_``, mmengine): torch computes it in float32 and
#: rounds once, as ema-core does under ``dtype="same"``.
LERP_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("timm", {"decay": 0.9}, {"stochastic_rounding": False}),
    ("timm", {"decay": 0.999, "use_warmup": True}, {"stochastic_rounding": False}),
    ("ema_pytorch", {"beta": 0.99, "update_after_step": 3, "update_every": 1}, {}),
    ("ema_pytorch_karras", {"sigma_rel": 0.1, "update_every": 1}, {}),
    ("swa_utils", {"decay": 0.999, "use_buffers": False}, {}),
    ("mmengine", {"momentum": 0.1, "interval": 2, "update_buffers": False}, {}),
]


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize(
    ("peer", "args", "extra"), LERP_CASES, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(LERP_CASES)]
)
def test_lerp_peers_half_shadow_is_dtype_same_bit_for_bit(
    peer: str, args: dict[str, Any], extra: dict[str, Any], dtype: torch.dtype
) -> None:
    """A bf16 / fp16 model, the peer keeping its half shadow and the preset under
    ``dtype="same"``: after every update (the first-step copies and warm-up steps included) each
    tensor the peer holds, floating buffers and the integer counter too, is ema-core's bit for
    bit and in the same dtype (the README's bit-exact row for these peers, carried over to a
    half shadow: both blend in float32 and round once)."""
    model = make_model(0).to(dtype)
    setting = Setting(args, extra=extra)
    update_peer, read_peer = drive(peer, model, setting)
    ours = EMA(model, config=same(config_of(peer, setting)))
    for t in half_steps(model, 30):
        update_peer(t)
        ours.update(t)
        for name, value in read_peer().items():
            mine = ours.average[name]
            assert mine.dtype == value.dtype, f"step {t}: {name} {mine.dtype} != {value.dtype}"
            assert torch.equal(mine, value), f"step {t}: {name} {half_units(mine, value)} units"


THREE_ROUNDINGS: list[tuple[str, dict[str, Any]]] = [
    ("torch_ema", {"decay": 0.9}),
    ("torch_ema", {"decay": 0.999}),
    ("diffusers", {"decay": 0.9}),
    ("diffusers", {"decay": 0.999, "use_ema_warmup": True, "update_after_step": 2}),
]


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize(
    ("peer", "args"), THREE_ROUNDINGS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(THREE_ROUNDINGS)]
)
def test_sub_peers_half_shadow_is_dtype_same_to_one_unit(
    peer: str, args: dict[str, Any], dtype: torch.dtype
) -> None:
    """torch-ema and diffusers update a half shadow as ``s -= (1 - d) * (s - p)`` in the half
    dtype (three roundings) where ema-core under ``dtype="same"`` rounds once: over 40 updates
    (torch_ema's counter warm-up and diffusers' copies and warm-up included) the two stay within
    one unit of the half dtype at the tensor's magnitude, with no drift, and in the same dtype."""
    model = make_model(0).to(dtype)
    setting = Setting(args)
    update_peer, read_peer = drive(peer, model, setting)
    ours = EMA(model, config=same(config_of(peer, setting)))
    for t in half_steps(model, 40):
        update_peer(t)
        ours.update(t)
        for name, value in read_peer().items():
            mine = ours.average[name]
            assert mine.dtype == value.dtype, f"step {t}: {name}"
            off = half_units(mine, value)
            assert off <= 1.0, f"step {t}: {name} is {off:.2f} half units from {peer}"


@pytest.mark.parametrize("dtype", HALVES, ids=HALF_IDS)
@pytest.mark.parametrize("peer", ["swa_utils", "mmengine"])
def test_averaged_buffers_of_a_half_model_and_the_integer_counter(
    peer: str, dtype: torch.dtype
) -> None:
    """swa_utils ``use_buffers=True`` and mmengine ``update_buffers=True`` over a half model
    under ``dtype="same"``: parameters and floating BatchNorm statistics (half buffers) are the
    peer's bit for bit; ``num_batches_tracked`` stays int64 and follows the README's documented
    difference, not the peer: copied from the model on every call (swa_utils averages and
    truncates it), or kept at its value from ``init`` (mmengine copies it at its first update)."""
    model = make_model(0).to(dtype)
    args = (
        {"decay": 0.9, "use_buffers": True}
        if peer == "swa_utils"
        else {"momentum": 0.1, "interval": 1, "update_buffers": True}
    )
    setting = Setting(args)
    counter = "1.num_batches_tracked"
    at_init = model.state_dict()[counter].clone()
    update_peer, read_peer = drive(peer, model, setting)
    ours = EMA(model, config=same(config_of(peer, setting)))
    for t in half_steps(model, 12):
        update_peer(t)
        ours.update(t)
        for name, value in read_peer().items():
            if name == counter:
                continue
            assert torch.equal(ours.average[name], value), f"step {t}: {name}"
        mine = ours.average[counter]
        assert mine.dtype == torch.int64
        want = model.state_dict()[counter] if peer == "swa_utils" else at_init
        assert torch.equal(mine, want), f"step {t}: {counter} {mine} != {want}"


def test_bf16_shadow_stalls_as_the_peers_and_the_default_does_not() -> None:
    """README: "a bfloat16 shadow with decay 0.9999 never moves" and the peers with half shadows
    "stall". swa_utils at 0.9999 over a bf16 model keeps its first copy wherever a step's move
    is below half a unit: every element of magnitude 1/8 or more (half a unit there is 2**-11,
    above ``1e-4 * |p - s|`` while the drift stays below 4); elements near zero do move;
    ``dtype="same"`` reproduces that stall bit for bit, while the default float32 shadow moves
    in every element and is swa_utils run on the float32 copy of the weights (within the README's
    swa_utils bound: 1 float32 ulp)."""
    dtype = torch.bfloat16
    half, wide = make_model(0, batchnorm=False).to(dtype), make_model(0, batchnorm=False)
    setting = Setting({"decay": 0.9999, "use_buffers": False})
    update_half, read_half = drive("swa_utils", half, setting)
    update_wide, read_wide = drive("swa_utils", wide, setting)
    config = presets.swa_utils(0.9999)
    stalled, default = EMA(half, config=same(config)), EMA(half, config=config)
    first: dict[str, Any] = {}
    for t in half_steps(half, 40):
        with torch.no_grad():
            for p, q in zip(wide.parameters(), half.parameters(), strict=True):
                p.copy_(q.float())
        for update in (update_half, update_wide, stalled.update, default.update):
            update(t)
        if t == 1:
            first = {k: v.clone() for k, v in read_half().items()}
    for name, value in read_half().items():
        large = first[name].abs() >= 0.125
        assert bool(large.any()), name
        assert torch.equal(value[large], first[name][large]), f"swa_utils' shadow moved: {name}"
        assert torch.equal(stalled.average[name], value), name
        assert not bool((default.average[name] == first[name].float()).any()), name
        off = ulps(as_float64(default.average[name]), as_float64(read_wide()[name]))
        assert off <= BOUNDS["swa_utils"][-1].ours_peer, f"{name}: {off:.2f} ulps"


# --- float32: 1e-8 and 1e8 in one tensor at decay 0.99999 -------------------------------------

MAGNITUDES = [1e-8, -1e-8, 1e8, -1e8, 1.0, 3e-5, 2e6, 1e-30]


class Wide(torch.nn.Module):
    """One parameter, one floating buffer and one integer counter, each spanning 1e-30 to 1e8."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.tensor(MAGNITUDES, dtype=torch.float32)
        self.w = torch.nn.Parameter(base.clone())
        self.register_buffer("f", 2 * base)
        self.register_buffer("n", torch.tensor(0, dtype=torch.int64))


def relative_steps(model: Wide, steps: int) -> Iterator[int]:
    """Move every element by about 5% of itself (so small ones move as much, relatively, as the
    large ones), and count."""
    gen = torch.Generator().manual_seed(3)
    for t in range(1, steps + 1):
        with torch.no_grad():
            model.w.mul_(1 + 0.05 * torch.randn(model.w.shape, generator=gen))
            model.f.mul_(1 + 0.05 * torch.randn(model.f.shape, generator=gen))
            model.n.add_(1)
        yield t


def elementwise_ulps(ours: Any, theirs: Any) -> float:
    """The largest difference in float32 ulps at each element's own magnitude."""
    a, b = as_float64(ours), as_float64(theirs)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-45), initial=0.0) / 2.0**-23)


#: (peer, arguments, bound in float32 ulps): the README's ema-core vs peer bound in the
#: 0.999-0.99999 band (``test_presets_peers.BOUNDS``), here per element.
WIDE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("timm", {"decay": 0.99999, "use_warmup": True}),
    ("torch_ema", {"decay": 0.99999}),
    ("ema_pytorch", {"beta": 0.99999, "update_after_step": 2, "update_every": 1}),
    ("ema_pytorch_karras", {"sigma_rel": 0.05, "update_every": 1}),
    ("diffusers", {"decay": 0.99999, "use_ema_warmup": True}),
    ("swa_utils", {"decay": 0.99999, "use_buffers": True}),
    ("mmengine", {"momentum": 1e-5, "interval": 1, "update_buffers": False}),
]


@pytest.mark.parametrize(
    ("peer", "args"), WIDE_CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(WIDE_CASES)]
)
def test_float32_magnitudes_far_apart_at_a_decay_near_one(peer: str, args: dict[str, Any]) -> None:
    """A float32 tensor holding 1e-30, 1e-8, 1 and 1e8 side by side, decay 0.99999 (or the
    peer's warm-up towards it) over 200 steps: every element, the tiny ones included, is within
    the README's ema-core vs peer bound for the 0.999-0.99999 band of the peer's value at that
    element's own magnitude (the README measures at the tensor's largest, which would hide the
    small ones); the integer counter is the peer's exactly (swa_utils' averaged and truncated one
    excepted: the README copies it from the model)."""
    model = Wide()
    setting = Setting(args)
    bound = BOUNDS[peer][-1].ours_peer
    update_peer, read_peer = drive(peer, model, setting)
    ours = EMA(model, config=config_of(peer, setting))
    for t in relative_steps(model, 200):
        update_peer(t)
        ours.update(t)
        for name, value in read_peer().items():
            if not value.is_floating_point():  # swa_utils averages it: the README copies it
                want = model.n if peer == "swa_utils" else value
                assert torch.equal(ours.average[name], want), f"step {t}: {name}"
                continue
            off = elementwise_ulps(ours.average[name], value)
            assert off <= bound, f"step {t}: {name} is {off:.2f} ulps from {peer} ({bound})"


# --- optax: the input dtype as accumulator ------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "decay", "debias"),
    [
        ("bfloat16", 0.999, True),
        ("bfloat16", 0.99999, False),
        ("float16", 0.999, False),
        ("float16", 0.99999, True),
    ],
)
def test_optax_half_leaves_default_accumulator_is_the_preset_in_that_dtype(
    dtype: str, decay: float, debias: bool
) -> None:
    """optax over bf16 / fp16 leaves keeps its EMA in the leaves' dtype (``accumulator_dtype``
    None); ``presets.optax(accumulator_dtype=<that dtype>)`` is its match: a free run of 200
    steps stays within the README's bound (64 accumulator ulps, at the values' magnitude) of
    optax's output, the state in that dtype and ema-core's read in float32 and finite. (At
    0.99999 over float16 optax's debiased first read can be infinite: it divides by
    ``1 - decay ** t`` cast to float16, a subnormal near 1e-5, which XLA's CPU division may take
    as zero; ema-core's read is finite at every step, and the steps where optax's output is
    not finite are not compared.)"""
    optax, jnp = require("optax"), require("jax.numpy")
    rng = np.random.default_rng(2)
    walk = 1 + np.cumsum(0.05 * rng.standard_normal((201, 32)), axis=0)
    leaves = [jnp.asarray(w, dtype) for w in walk]
    tx = optax.ema(decay, debias=debias)
    config = presets.optax(decay, debias=debias, accumulator_dtype=dtype)
    peer, state = tx.init({"a": leaves[0]}), ema_core.init({"a": leaves[0]}, config)
    unit = 2.0**-7 if dtype == "bfloat16" else 2.0**-10
    for t in range(1, len(leaves)):
        out, peer = tx.update({"a": leaves[t]}, peer)
        state = ema_core.update(state, {"a": leaves[t]}, config)
        mine = ema_core.average(state, config)["a"]
        assert mine.dtype == jnp.float32
        assert peer.ema["a"].dtype == jnp.dtype(dtype)
        a, b = as_float64(mine), as_float64(out["a"])
        assert np.all(np.isfinite(a)), f"step {t}"
        if not np.all(np.isfinite(b)):
            continue
        off = float(np.max(np.abs(a - b))) / (unit * float(np.max(np.abs(b))))
        assert off <= 64, f"step {t}: {off:.1f} {dtype} ulps from optax"

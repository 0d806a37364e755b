"""Presets beside their real peers at the edges the parity suites do not draw.

``test_presets_peers.py`` and ``test_presets_peers_random.py`` run float32 models from the
peers' first update with contiguous steps; ``test_checkpoint_peers.py`` continues one setting
per peer after 50 steps. Here, each against the real peer over a few steps of a tiny model,
within the README's parity bound (``tests/test_presets_peers.BOUNDS``), integer buffers exactly:
timm's first ``update(model, step=0)`` and steps with gaps; bf16 / fp16 models (ema-core keeps
float32 shadows: it must be the peer run on the float32 copy of the same weights); ``load_peer``
from the peer's own checkpoint at step 0, inside the copy phase, between two gated updates, with
``foreach``, ``exclude_buffers``, ``use_buffers=False``, ``use_num_updates=False`` and a float64
timm shadow, and into the drop-in ``compat.mmedit`` class; handing back to ema-pytorch between
gated updates; diffusers' frozen parameters; Keras ``ema_overwrite_frequency`` and ema-pytorch
``update_model_with_ema_every`` as ``copy_to``; optax over bf16 leaves.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core  # noqa: E402
from ema_core import presets  # noqa: E402
from ema_core.checkpoint import load_peer  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.peers import (  # noqa: E402
    EPS32,
    Bound,
    Setting,
    as_float64,
    kinds,
    load_timm_model_ema,
    make_model,
    require,
    train_steps,
    ulps,
)
from tests.test_presets_peers import DRIVERS, bound_for, config_of, decay_of  # noqa: E402

pytestmark = pytest.mark.slow  # the real peer libraries: `pytest -m "not slow"` leaves it out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny (as in the parity suites)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_within(
    ours: dict[str, Any], theirs: dict[str, Any], bound: float, where: str, ints: set[str]
) -> None:
    """Every tensor of ``theirs`` within ``bound`` float32 ulps (at its magnitude) of ours;
    integer buffers (``ints``) equal."""
    for name, value in theirs.items():
        a, b = as_float64(ours[name]), as_float64(value)
        if name in ints:
            assert np.array_equal(a, b), f"{where}: {name} {a} (ema-core) != {b} (peer)"
            continue
        off = ulps(a, b)
        assert off <= bound, f"{where}: {name} is {off:.2f} ulps from the peer (bound {bound})"


def ints_of(model: Any) -> set[str]:
    return {n for n, k in kinds(model).items() if k == "int"}


# --- timm: the first update at step 0, and steps with gaps ------------------------------------


@pytest.mark.parametrize("first", [0, 1])
def test_timm_counting_from_step_zero_is_timm_bit_for_bit(first: int) -> None:
    """A loop that passes ``step=`` from 0 (timm copies at every step up to
    ``update_after_step + 1``, 0 included): ``EMA.update(0)`` is taken and the averages are
    timm's bit for bit (the README's timm bound: bit-exact), buffers included."""
    args = {"decay": 0.99, "use_warmup": True, "update_after_step": 2, "min_decay": 0.1}
    model = make_model(0)
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    ours = EMA(model, config=presets.timm(**args))
    for t in train_steps(model, 8):
        step = t - 1 + first
        peer.update(model, step=step)
        ours.update(step)
        for name, value in peer.module.state_dict().items():
            assert torch.equal(ours.average[name], value), f"step {step}: {name}"
    assert ours.step == 7 + first


@pytest.mark.parametrize("use_warmup", [False, True])
def test_timm_negative_update_after_step_counting_from_step_zero(use_warmup: bool) -> None:
    """README: a negative ``update_after_step`` copies nothing, the decay starts at
    ``u = -update_after_step`` (timm's ``u = t - update_after_step - 1``). Stepping from 0, as
    the test above does with a positive one: at step 0 timm blends (``u = 2`` here), and the
    averages must be timm's bit for bit."""
    args = {"decay": 0.99, "update_after_step": -3, "use_warmup": use_warmup}
    model = make_model(0)
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    ours = EMA(model, config=presets.timm(**args))
    for t in train_steps(model, 4):
        peer.update(model, step=t - 1)
        ours.update(t - 1)
        for name, value in peer.module.state_dict().items():
            assert torch.equal(ours.average[name], value), f"step {t - 1}: {name}"


def test_timm_steps_with_gaps_are_timm_bit_for_bit() -> None:
    """An EMA updated every third optimizer step with ``step=`` the optimizer's count (timm's
    ``train.py`` with gradient accumulation): each update uses the decay of its step, as timm."""
    args = {"decay": 0.995, "use_warmup": True, "update_after_step": 4, "warmup_power": 0.8}
    model = make_model(1)
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    ours = EMA(model, config=presets.timm(**args))
    for t in train_steps(model, 10, seed=5):
        peer.update(model, step=3 * t)
        ours.update(3 * t)
        for name, value in peer.module.state_dict().items():
            assert torch.equal(ours.average[name], value), f"step {3 * t}: {name}"


# --- half models: ema-core's float32 shadow is the peer on the float32 copy --------------------

HALF_CASES: list[tuple[str, dict[str, Any]]] = [
    ("timm", {"decay": 0.99, "use_warmup": True, "update_after_step": 2}),
    ("torch_ema", {"decay": 0.99}),
    ("ema_pytorch", {"beta": 0.99, "update_after_step": 3, "update_every": 2}),
    ("ema_pytorch_karras", {"sigma_rel": 0.1, "update_every": 1}),
    ("diffusers", {"decay": 0.99, "use_ema_warmup": True, "min_decay": 0.2}),
    ("swa_utils", {"decay": 0.95, "use_buffers": False}),  # True truncates integers
    ("mmengine", {"momentum": 0.05, "interval": 2, "update_buffers": False}),
]


def _half_steps(half: Any, wide: Any, steps: int) -> Iterator[int]:
    """Train the half model (parameters and BatchNorm statistics move in its dtype) and copy
    its state, widened exactly, into the float32 model after each step."""
    gen = torch.Generator().manual_seed(7)
    half.train()
    dtype = next(half.parameters()).dtype
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in half.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen) + 0.01).to(dtype))
            half(torch.randn(16, 5, generator=gen).to(dtype))
            wide.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in half.state_dict().items()}
            )
        yield t


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("peer", "args"), HALF_CASES, ids=[p for p, _ in HALF_CASES])
def test_half_model_averages_as_the_peer_on_its_float32_copy(
    peer: str, args: dict[str, Any], dtype: torch.dtype
) -> None:
    """README, deliberate differences: a bf16 / fp16 model gets a float32 shadow. That shadow
    must be the peer's average of the same weights widened to float32 (the peer then keeps
    float32 too), within the peer's parity bound, buffers included (integers exactly)."""
    half, wide = make_model(0).to(dtype), make_model(0)
    wide.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in half.state_dict().items()}
    )
    setting = Setting(args)
    update_peer, read_peer = DRIVERS[peer][0](wide, setting)
    ours = EMA(half, config=config_of(peer, setting))
    bound = bound_for(peer, decay_of(peer, setting)).ours_peer
    for t in _half_steps(half, wide, 25):
        update_peer(t)
        ours.update(t)
        assert_within(ours.average, read_peer(), bound, f"{peer} {dtype} step {t}", ints_of(half))
    for name, _ in half.named_parameters():
        assert ours.average[name].dtype == torch.float32, name


def test_timm_float32_shadow_of_a_bf16_model_follows_the_float64_rule() -> None:
    """timm ``dtype=torch.float32`` on a bf16 model against ``presets.timm(dtype="float32")``:
    timm blends mixed dtypes as ``ema * (1 - w) + w * model`` (two roundings), not with
    ``lerp``, so the two are not bit for bit; both stay within the README's ema-core vs float64
    bound (8 ulps in the 0.5-0.99 band) of the float64 recursion over the same bf16 weights,
    and within two such bounds of each other."""
    model = make_model(0, batchnorm=False).to(torch.bfloat16)
    peer = load_timm_model_ema().ModelEmaV3(model, decay=0.9, dtype=torch.float32)
    ours = EMA(model, config=presets.timm(0.9, dtype="float32"))
    exact = {n: as_float64(p) for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_((0.1 * torch.randn(p.shape, generator=gen)).bfloat16())
        peer.update(model, step=t)
        ours.update(t)
        decay = 0.0 if t == 1 else 0.9
        for name, p in model.named_parameters():
            exact[name] = decay * exact[name] + (1 - decay) * as_float64(p)
            theirs = peer.module.state_dict()[name]
            assert ulps(as_float64(ours.average[name]), exact[name]) <= 8, (t, name)
            assert ulps(as_float64(theirs), exact[name]) <= 8, (t, name)
            assert ulps(as_float64(ours.average[name]), as_float64(theirs)) <= 16, (t, name)


# --- load_peer from the peer's own checkpoint, at the edges of its schedule -------------------


@dataclass(frozen=True)
class Live:
    """A running peer: one update (given t), its averages by name, the state it writes."""

    update: Callable[[int], None]
    averages: Callable[[], dict[str, Any]]
    state: Callable[[], dict[str, Any]]


def _by_name(model: Any, tensors: Any) -> dict[str, Any]:
    return dict(zip([n for n, _ in model.named_parameters()], tensors, strict=True))


def _live(peer: str, model: Any, args: dict[str, Any]) -> Live:
    """The peer built on ``model`` with its own arguments (``foreach`` passed through)."""
    if peer == "timm":
        dtype = args.get("dtype") and getattr(torch, args["dtype"])
        ema = load_timm_model_ema().ModelEmaV3(model, **{**args, "dtype": dtype})
        sd = ema.module.state_dict
        return Live(lambda t: ema.update(model, step=t), sd, sd)
    if peer == "torch_ema":
        te = require("torch_ema").ExponentialMovingAverage(model.parameters(), **args)
        return Live(
            lambda t: te.update(model.parameters()),
            lambda: _by_name(model, te.shadow_params),
            te.state_dict,
        )
    if peer == "diffusers":
        de = require("diffusers.training_utils").EMAModel(model.parameters(), **args)
        return Live(
            lambda t: de.step(model.parameters()),
            lambda: _by_name(model, de.shadow_params),
            de.state_dict,
        )
    if peer in ("ema_pytorch", "ema_pytorch_karras"):
        cls = "EMA" if peer == "ema_pytorch" else "KarrasEMA"
        ep = getattr(require("ema_pytorch"), cls)(model, **args)
        return Live(lambda t: ep.update(), ep.ema_model.state_dict, ep.state_dict)
    if peer == "swa_utils":
        swa = require("torch.optim.swa_utils")
        avg = swa.get_ema_multi_avg_fn(args["decay"])
        am = swa.AveragedModel(model, multi_avg_fn=avg, use_buffers=args["use_buffers"])
        return Live(lambda t: am.update_parameters(model), am.module.state_dict, am.state_dict)
    averaged = require("mmengine.model.averaged_model")
    plain = {k: v for k, v in args.items() if k != "gamma"}
    with warnings.catch_warnings():  # it warns at momentum > 0.5
        warnings.simplefilter("ignore", UserWarning)
        if "gamma" in args:
            mm = averaged.MomentumAnnealingEMA(model, gamma=args["gamma"], **plain)
        else:
            mm = averaged.ExponentialMovingAverage(model, **plain)
    return Live(lambda t: mm.update_parameters(model), mm.module.state_dict, mm.state_dict)


def _as_written(state: dict[str, Any]) -> dict[str, Any]:
    """The state as the peer's checkpoint file gives it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


EP = {"beta": 0.99, "update_after_step": 5, "update_every": 3}
EP_NEG = {"beta": 0.99, "update_after_step": -4, "update_every": 2, "min_value": 0.3}
DF = {"decay": 0.99, "min_decay": 0.4, "update_after_step": 3, "use_ema_warmup": True}
TM = {"decay": 0.99, "update_after_step": 3, "use_warmup": True, "exclude_buffers": True}
MM_PLAIN = {"momentum": 0.05, "interval": 4, "update_buffers": False}
MM_ANNEAL = {"momentum": 0.05, "interval": 3, "update_buffers": True, "gamma": 10}
#: (peer, its arguments, the preset's arguments where they differ, peer-only arguments, the
#: steps the peer took before its checkpoint): at step 0 (never updated), inside the copy
#: phase, right after it, and between two gated updates.
RESUMES: list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any], int]] = [
    *[("ema_pytorch", EP, None, {"include_online_model": False}, k) for k in (0, 1, 2, 5, 7)],
    ("ema_pytorch", EP_NEG, None, {}, 3),
    *[("torch_ema", {"decay": 0.99}, None, {}, k) for k in (0, 1)],
    *[("torch_ema", {"decay": 0.9, "use_num_updates": False}, None, {}, k) for k in (0, 4)],
    *[("diffusers", DF, None, {"foreach": True}, k) for k in (0, 1, 3, 9)],
    *[("timm", TM, None, {}, k) for k in (0, 2, 6)],
    ("timm", {"decay": 0.99, "dtype": "float64"}, None, {"foreach": False}, 5),
    *[("swa_utils", {"decay": 0.95, "use_buffers": False}, None, {}, k) for k in (0, 1)],
    *[("mmengine", MM_PLAIN, None, {}, k) for k in (0, 2, 5)],
    *[("mmengine", MM_ANNEAL, None, {}, k) for k in (1, 2, 4)],
    *[("ema_pytorch_karras", {"sigma_rel": 0.1, "update_every": 3}, None, {}, k) for k in (0, 2)],
]


@pytest.mark.parametrize(
    ("peer", "args", "preset_args", "extra", "before"),
    RESUMES,
    ids=[f"{p}-{i}-after{k}" for i, (p, _, _, _, k) in enumerate(RESUMES)],
)
def test_load_peer_at_the_edges_continues_as_the_peer(
    peer: str, args: dict[str, Any], preset_args: Any, extra: dict[str, Any], before: int
) -> None:
    """README "Coming from a peer mid-run": the peer's checkpoint after ``before`` updates goes
    into an EMA built with its preset; right after, the averages are the peer's bit for bit and
    ``ema.step`` is the peer's count (0 for torch_ema without ``num_updates``); then 10 more
    updates of both stay within the preset's parity bound, integer buffers equal."""
    model = make_model(0)
    live = _live(peer, model, {**args, **extra})
    steps = train_steps(model, before + 10, seed=3)
    for t in islice(steps, before):
        live.update(t)
    preset = "mmedit" if peer == "mmengine" else peer
    ema = EMA(model, config=getattr(presets, preset)(**(preset_args or args)))
    stored = None if peer in ("torch_ema", "diffusers") else args
    load_peer(
        ema,
        _as_written(live.state()),
        peer=peer,  # type: ignore[arg-type]
        args=stored,
        step=before if peer == "timm" else None,
    )
    counted = args.get("use_num_updates", True)
    assert ema.step == (before if counted else 0)
    for name, value in live.averages().items():
        assert torch.equal(ema.average[name].to(value.dtype), value), f"{name} after the load"
    bound = bound_for(peer, decay_of(peer, Setting(args))).ours_peer
    for t in steps:
        live.update(t)
        ema.update()
        assert_within(ema.average, live.averages(), bound, f"{peer} step {t}", ints_of(model))


def test_mmengine_update_buffers_from_step_zero_keeps_the_integer_buffer_from_init() -> None:
    """The documented difference of ``presets.mmedit(update_buffers=True)``: mmengine copies
    integer buffers once, at its first update, ema-core keeps them from ``init`` (here the
    loaded step-0 state). Floating tensors still match mmengine bit for bit."""
    model = make_model(0)
    live = _live("mmengine", model, MM_ANNEAL)
    ema = EMA(model, config=presets.mmedit(**MM_ANNEAL))
    load_peer(ema, _as_written(live.state()), peer="mmengine", args=MM_ANNEAL)
    frozen = ema.average["1.num_batches_tracked"].clone()
    for t in train_steps(model, 6, seed=3):
        live.update(t)
        ema.update()
        theirs = live.averages()
        assert int(theirs["1.num_batches_tracked"]) == 1  # its copy at the first update
        assert torch.equal(ema.average["1.num_batches_tracked"], frozen)
        for name, value in theirs.items():
            if value.is_floating_point():
                assert torch.equal(ema.average[name], value), f"step {t}: {name}"


@pytest.mark.parametrize("update_buffers", [False, True])
@pytest.mark.parametrize("before", [0, 2, 5])
def test_compat_mmedit_takes_mmengines_checkpoint_mid_run(
    update_buffers: bool, before: int
) -> None:
    """The drop-in ``compat.mmedit.ExponentialMovingAverage`` reproduces mmengine bit for bit
    (README); a run started with mmengine, its checkpoint loaded into the drop-in class with
    ``load_state_dict`` (between two interval updates too), continues as mmengine does,
    integer buffers included."""
    from ema_core.compat.mmedit import ExponentialMovingAverage

    model = make_model(0)
    args = (0.1, 3, None, update_buffers)
    live = _live(
        "mmengine",
        model,
        {"momentum": 0.1, "interval": 3, "update_buffers": update_buffers},
    )
    steps = train_steps(model, before + 8, seed=2)
    for t in islice(steps, before):
        live.update(t)
    ours = ExponentialMovingAverage(model, *args)
    ours.load_state_dict(_as_written(live.state()))
    for t in steps:
        live.update(t)
        ours.update_parameters(model)
        for name, value in live.averages().items():
            assert torch.equal(ours.module.state_dict()[name], value), f"step {t}: {name}"
    assert int(ours.steps) == before + 8


@pytest.mark.parametrize("before", [1, 4, 7])
def test_leaving_for_ema_pytorch_between_gated_updates(before: int) -> None:
    """README "Back to ... ema-pytorch": ``ema_model.load_state_dict(avg, strict=False)``,
    ``step.fill_(ema.step)``, ``initted.fill_(True)``, here with ``update_every=3`` and the
    hand-off inside the copy phase, right after it and between two gated updates: ema-pytorch
    then continues as the preset does (within the ema-pytorch bound)."""
    from ema_core.checkpoint import export

    args = {"beta": 0.99, "update_after_step": 5, "update_every": 3}
    model = make_model(0)
    ema = EMA(model, config=presets.ema_pytorch(**args))
    steps = train_steps(model, before + 10, seed=6)
    for _ in islice(steps, before):
        ema.update()
    peer = require("ema_pytorch").EMA(model, include_online_model=False, **args)
    peer.ema_model.load_state_dict(export(ema, format="state_dict"), strict=False)
    peer.step.fill_(ema.step)
    peer.initted.fill_(True)
    bound = bound_for("ema_pytorch", args["beta"]).ours_peer
    for t in steps:
        ema.update()
        peer.update()
        theirs = peer.ema_model.state_dict()
        assert_within(ema.average, theirs, bound, f"call {t}", ints_of(model))


# --- ema-pytorch update_model_with_ema_every: copy_to every n calls ---------------------------


def _cumulative_bn_model() -> Any:
    """BatchNorm with ``momentum=None``: its running statistics are a cumulative average
    weighted by ``num_batches_tracked``, so that integer buffer steers floating ones."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(8, momentum=None)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), bn, torch.nn.Linear(8, 3))


def test_ema_pytorch_update_model_with_ema_every_is_copy_to_every_n_calls() -> None:
    """README: ema-pytorch ``update_model_with_ema_every=n`` (``update_model_with_ema_beta=0``)
    is a write of the average into the model, ``copy_to``, every n calls. ema-pytorch copies
    the floating parameters and buffers only (its name sets hold floating tensors); the live
    model, integer buffers included, must then follow the peer's model within the ema-pytorch
    bound, and the averages the peer's."""
    args = {"beta": 0.9, "update_after_step": 0, "update_every": 1}
    theirs_model, ours_model = _cumulative_bn_model(), _cumulative_bn_model()
    peer = require("ema_pytorch").EMA(
        theirs_model, include_online_model=False, update_model_with_ema_every=3, **args
    )
    ours = EMA(ours_model, config=presets.ema_pytorch(**args))
    bound = bound_for("ema_pytorch", args["beta"]).ours_peer
    pairs = zip(
        train_steps(theirs_model, 8, seed=4), train_steps(ours_model, 8, seed=4), strict=True
    )
    for t, _ in pairs:
        peer.update()
        ours.update()
        if t > 1 and (t - 1) % 3 == 0:  # ema-pytorch's step before the call, divisible by 3
            ours.copy_to(ours_model)
        where = f"call {t}"
        assert_within(ours.average, peer.ema_model.state_dict(), bound, where, ints_of(ours_model))
        live = dict(ours_model.state_dict())
        assert_within(
            live, theirs_model.state_dict(), bound, f"{where}, model", ints_of(ours_model)
        )


# --- diffusers: frozen parameters --------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("args", [{"decay": 0.999}, DF], ids=["plain", "warmup"])
def test_diffusers_frozen_parameter_averages_to_itself_as_diffusers_copies_it(
    args: dict[str, Any], foreach: bool
) -> None:
    """README: diffusers copies a parameter that does not require grad; one that never changes
    averages to itself bit for bit in ema-core (kept in the EMA, as ``load_peer`` needs it);
    the trained ones stay within the diffusers bound."""
    model = make_model(0, batchnorm=False)
    with torch.no_grad():
        model[0].weight.mul_(1.37)
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    peer = require("diffusers.training_utils").EMAModel(model.parameters(), foreach=foreach, **args)
    ours = EMA(model, config=presets.diffusers(**args))
    bound = bound_for("diffusers", args["decay"]).ours_peer
    gen = torch.Generator().manual_seed(3)
    for t in range(1, 20):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen))
        peer.step(model.parameters())
        ours.update()
        assert torch.equal(ours.average["0.weight"], frozen), f"step {t}"
        assert torch.equal(peer.shadow_params[0], frozen)
        assert_within(ours.average, _by_name(model, peer.shadow_params), bound, str(t), set())


# --- Keras: ema_overwrite_frequency is copy_to every n steps -----------------------------------


def _keras_jax() -> Any:
    """Keras on the jax backend, as the suite's other in-process Keras tests import it."""
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
        pytest.skip("keras and jax are needed")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return keras


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("momentum", "every"), [(0.9, 3), (0.99, 1), (0.5, 4)])
def test_keras_overwrite_frequency_is_copy_to_every_n_steps(momentum: float, every: int) -> None:
    """README: Keras ``ema_overwrite_frequency=n`` is a permanent write of the average into the
    model every n steps. SGD with ``use_ema`` and an overwrite frequency against
    ``presets.keras`` with the average written into the variables (functional ``copy_to``)
    every n steps: the averages and the variables stay within the Keras bound."""
    keras = _keras_jax()
    rng = np.random.default_rng(11)
    shapes = [(4, 3), (7,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    variables = [keras.Variable(v) for v in start]
    opt = keras.optimizers.SGD(
        learning_rate=0.1, use_ema=True, ema_momentum=momentum, ema_overwrite_frequency=every
    )
    opt.build(variables)
    config = presets.keras(momentum)
    live = {f"v{i}": v.copy() for i, v in enumerate(start)}
    state = ema_core.init(live, config)
    bound = bound_for("keras", momentum).ours_peer
    lr = np.float32(0.1)
    for t in range(1, 13):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        live = {
            k: (v - lr * g).astype(np.float32)
            for (k, v), g in zip(live.items(), grads, strict=True)
        }
        state = ema_core.update(state, live, config)
        if t % every == 0:
            live = {
                k: np.asarray(v, np.float32) for k, v in ema_core.average(state, config).items()
            }
        ours = ema_core.average(state, config)
        as_np = keras.ops.convert_to_numpy
        for i, (var, avg) in enumerate(
            zip(variables, opt._model_variables_moving_average, strict=True)
        ):
            assert ulps(ours[f"v{i}"], as_np(avg)) <= bound, f"step {t}: average {i}"
            assert ulps(live[f"v{i}"], as_np(var)) <= bound, f"step {t}: variable {i}"


# --- optax over bf16 leaves --------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False])
def test_optax_over_bf16_leaves_is_optax_to_its_bf16_rounding(debias: bool) -> None:
    """optax keeps the ema of bf16 leaves in bf16 (``zeros_like``, the input dtype), ema-core a
    float32 shadow (README, deliberate differences): from the first update on, ema-core's read
    is within the README's free-run bound for a bf16 accumulator (64 bf16 ulps) of optax's
    output, and is float32."""
    optax, jnp = require("optax"), require("jax.numpy")
    walk = np.cumsum(np.random.default_rng(2).standard_normal((40, 6)), axis=0)
    leaves = [jnp.asarray(w, jnp.bfloat16) for w in walk]
    tx = optax.ema(0.9, debias=debias)
    config = presets.optax(0.9, debias=debias)
    peer, state = tx.init({"a": leaves[0]}), ema_core.init({"a": leaves[0]}, config)
    bf16_ulp = 2.0**-7 / EPS32  # float32 ulps in one bf16 ulp
    bound = Bound(64 * bf16_ulp, 0).ours_peer
    for t in range(1, len(leaves)):
        out, peer = tx.update({"a": leaves[t]}, peer)
        state = ema_core.update(state, {"a": leaves[t]}, config)
        mine = ema_core.average(state, config)["a"]
        assert mine.dtype == jnp.float32
        assert ulps(as_float64(mine), as_float64(out["a"])) <= bound, f"step {t}"

"""Audit of README "Coming from another EMA": the promises no other test pinned.

The refusal table row by row (each refused setting names its argument), hyperparameters given as
numpy scalars or arrays, the integer-buffer policy (``Config.non_float``) of each peer the
section names, the presets' decays against the real peers' own decay functions (timm, diffusers,
ema-pytorch's ``EMA`` and ``KarrasEMA``), the counters "given as their value at the first update",
timm called without ``step=``, the method table against torch-ema, and the peer facts the
section quotes (Keras' bf16 momentum, optax at ``decay=1.0``). The first-decay table and the
parity bounds are checked in ``test_presets.py``, ``test_readme_claims_presets.py`` and
``test_presets_peers.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets
from tests.peers import load_timm_model_ema, make_model, require

NAN = float("nan")

# "Refused on purpose, with the argument named in the error": the rows' cases that
# test_presets*.py and test_readme_claims_presets.py do not already raise.
REFUSED: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # a decay, min_decay, min_value or ema_momentum outside [0, 1] or NaN
    ("diffusers decay>1", lambda: presets.diffusers(1.5), ValueError, r"^decay"),
    ("diffusers decay nan", lambda: presets.diffusers(NAN), ValueError, r"^decay"),
    ("diffusers min_decay<0", lambda: presets.diffusers(min_decay=-0.1), ValueError, "min_decay"),
    ("diffusers min_decay>1", lambda: presets.diffusers(min_decay=1.5), ValueError, "min_decay"),
    ("timm decay inf", lambda: presets.timm(math.inf), ValueError, r"^decay"),
    ("timm min_decay nan", lambda: presets.timm(min_decay=NAN), ValueError, "min_decay"),
    ("ema_pytorch beta nan", lambda: presets.ema_pytorch(NAN), ValueError, r"^beta"),
    (
        "ema_pytorch min_value<0",
        lambda: presets.ema_pytorch(min_value=-0.1),
        ValueError,
        "min_value",
    ),
    ("optax decay nan", lambda: presets.optax(NAN), ValueError, r"^decay"),
    ("optax decay<0", lambda: presets.optax(-0.1), ValueError, r"^decay"),
    ("tensorflow decay nan", lambda: presets.tensorflow(NAN), ValueError, r"^decay"),
    ("allennlp decay>1", lambda: presets.allennlp(1.5), ValueError, r"^decay"),
    ("paddle decay<0", lambda: presets.paddle(-0.1), ValueError, r"^decay"),
    ("torchtitan decay>1", lambda: presets.torchtitan(1.5), ValueError, r"^decay"),
    ("torchtitan decay nan", lambda: presets.torchtitan(NAN), ValueError, r"^decay"),
    ("keras nan", lambda: presets.keras(NAN), ValueError, "ema_momentum"),
    ("keras >1", lambda: presets.keras(1.5), ValueError, "ema_momentum"),
    # a warm-up exponent <= 0
    ("timm warmup_power 0", lambda: presets.timm(warmup_power=0.0), ValueError, "warmup_power"),
    (
        "diffusers power 0",
        lambda: presets.diffusers(use_ema_warmup=True, power=0.0),
        ValueError,
        "power",
    ),
    ("ema_pytorch power 0", lambda: presets.ema_pytorch(power=0.0), ValueError, "power"),
    # warmup_gamma / inv_gamma <= 0
    (
        "timm warmup_gamma<0",
        lambda: presets.timm(use_warmup=True, warmup_gamma=-1.0),
        ValueError,
        "warmup_gamma",
    ),
    ("diffusers inv_gamma 0", lambda: presets.diffusers(inv_gamma=0.0), ValueError, "inv_gamma"),
    (
        "diffusers inv_gamma<0 warm",
        lambda: presets.diffusers(use_ema_warmup=True, inv_gamma=-1.0),
        ValueError,
        "inv_gamma",
    ),
    (
        "ema_pytorch inv_gamma<0",
        lambda: presets.ema_pytorch(inv_gamma=-1.0),
        ValueError,
        "inv_gamma",
    ),
    # an unused argument out of its range: diffusers inv_gamma without use_ema_warmup
    (
        "diffusers unused inv_gamma",
        lambda: presets.diffusers(inv_gamma=-1.0),
        ValueError,
        "inv_gamma",
    ),
    (
        "ema_pytorch beta=1 inv_gamma",
        lambda: presets.ema_pytorch(1.0, inv_gamma=0.0),
        ValueError,
        "inv_gamma",
    ),
    # an interval <= 0
    (
        "karras update_every 0",
        lambda: presets.ema_pytorch_karras(0.1, update_every=0),
        ValueError,
        "update_every",
    ),
    (
        "karras update_every<0",
        lambda: presets.ema_pytorch_karras(0.1, update_every=-1),
        ValueError,
        "update_every",
    ),
    (
        "torchtitan every 0",
        lambda: presets.torchtitan(update_every_n_steps=0),
        ValueError,
        "update_every_n_steps",
    ),
    # KarrasEMA gamma <= -1, sigma_rel above MAX_SIGMA_REL (also with frozen)
    ("karras gamma -2", lambda: presets.ema_pytorch_karras(gamma=-2.0), ValueError, "gamma"),
    (
        "karras frozen sigma_rel",
        lambda: presets.ema_pytorch_karras(0.31, frozen=True),
        ValueError,
        "sigma_rel",
    ),
    # EDM2 rampup_ratio=0
    (
        "edm2 rampup_ratio 0",
        lambda: presets.edm2(halflife_Mimg=0.5, rampup_ratio=0.0, batch_size=8),
        ValueError,
        "rampup_ratio",
    ),
    # a counter that starts below 0; AllenNLP numerator <= -denominator, denominator <= 0
    (
        "paddle thres_steps<0",
        lambda: presets.paddle(0.9, thres_steps=-1),
        ValueError,
        "thres_steps",
    ),
    ("allennlp num_updates<0", lambda: presets.allennlp(num_updates=-1), ValueError, "num_updates"),
    ("allennlp numerator", lambda: presets.allennlp(numerator=-11.0), ValueError, "numerator"),
    (
        "allennlp denominator<0",
        lambda: presets.allennlp(denominator=-1.0),
        ValueError,
        "denominator",
    ),
    # a shadow/accumulator dtype other than float16, bfloat16, float32, float64
    ("timm dtype int8", lambda: presets.timm(dtype="int8"), ValueError, "dtype"),
    ("timm dtype complex64", lambda: presets.timm(dtype="complex64"), ValueError, "dtype"),
    ("timm dtype float8", lambda: presets.timm(dtype="float8_e4m3fn"), ValueError, "dtype"),
    (
        "optax np.int32",
        lambda: presets.optax(0.9, accumulator_dtype=np.int32),
        ValueError,
        "accumulator_dtype",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_settings_name_their_argument(
    call: Callable[[], Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        call()


def test_allennlp_numerator_just_above_minus_denominator_is_taken() -> None:
    # "AllenNLP `numerator <= -denominator`" is refused: just above it is a valid counter decay
    # from a counter of at least -numerator ("or below `-numerator`": refused, as compat's
    # apply(n) refuses it; n = 1 gave the negative decay -8.5 / 11, which every update refused)
    cfg = presets.allennlp(0.99, numerator=-9.5, denominator=10.0, num_updates=10)
    assert cfg.decay(1) == pytest.approx((-9.5 + 10) / (10.0 + 10), rel=1e-14)
    with pytest.raises(ValueError, match=r"num_updates must be >= -numerator = 9.5"):
        presets.allennlp(0.99, numerator=-9.5, denominator=10.0, num_updates=1)


# "a hyperparameter given as an array or a numpy float32 scalar ... pass `float(x)`
# (`TypeError`)"
AS_ARRAYS: list[tuple[str, Callable[[Any], Any]]] = [
    ("decay", presets.timm),
    ("min_decay", lambda x: presets.timm(min_decay=x)),
    ("decay", presets.torch_ema),
    ("beta", presets.ema_pytorch),
    ("inv_gamma", lambda x: presets.diffusers(inv_gamma=x)),
    ("decay", presets.swa_utils),
    ("ema_momentum", presets.keras),
    ("sigma_rel", presets.ema_pytorch_karras),
    ("std", presets.edm2),
    ("half_life_fraction", lambda x: presets.torchtitan(half_life_fraction=x)),
    ("momentum", presets.mmedit),
    ("decay", presets.tensorflow),
    ("decay", presets.allennlp),
    ("decay", presets.paddle),
]


@pytest.mark.parametrize(
    ("name", "make"), AS_ARRAYS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(AS_ARRAYS)]
)
@pytest.mark.parametrize("kind", ["float32", "0d", "1d", "jax"])
def test_a_hyperparameter_as_an_array_or_float32_scalar_is_a_type_error(
    name: str, make: Callable[[Any], Any], kind: str
) -> None:
    x = 0.1 if name in ("sigma_rel", "std", "momentum") else 0.9
    if kind == "jax":
        value: Any = pytest.importorskip("jax.numpy").asarray(x)
    else:
        value = {"float32": np.float32(x), "0d": np.array(x), "1d": np.array([x])}[kind]
    with pytest.raises(TypeError, match=name):
        make(value)
    make(float(np.float32(x)))  # float(x) is taken


# "Integer buffers (`num_batches_tracked`) are never averaged; they follow `Config.non_float`:
# copied from the model on every call (`"copy"`: timm, swa_utils, mmengine without
# `update_buffers`...), or left at their value from `init` (`"freeze"`: ema-pytorch's `EMA` and
# `KarrasEMA` ...; `presets.mmedit(update_buffers=True)`)"
NON_FLOAT = [
    ("timm", presets.timm(0.9), "copy"),
    ("timm exclude_buffers", presets.timm(0.9, exclude_buffers=True), "copy"),
    ("swa_utils", presets.swa_utils(0.9), "copy"),
    ("swa_utils use_buffers", presets.swa_utils(0.9, use_buffers=True), "copy"),
    ("mmedit", presets.mmedit(0.1), "copy"),
    ("mmedit interval", presets.mmedit(0.1, interval=2), "copy"),
    ("ema_pytorch", presets.ema_pytorch(0.9, 0, 1), "freeze"),
    ("ema_pytorch defaults", presets.ema_pytorch(), "freeze"),
    ("karras", presets.ema_pytorch_karras(0.1, update_every=1), "freeze"),
    ("karras frozen", presets.ema_pytorch_karras(0.1, update_every=1, frozen=True), "freeze"),
    ("mmedit update_buffers", presets.mmedit(0.1, update_buffers=True), "freeze"),
]


@pytest.mark.parametrize(
    ("config", "policy"), [r[1:] for r in NON_FLOAT], ids=[r[0] for r in NON_FLOAT]
)
def test_integer_leaves_are_copied_or_frozen_never_averaged(
    config: ema.Config, policy: str
) -> None:
    start = {"w": np.zeros(2, np.float32), "n": np.array([5, -7], np.int64)}
    state = ema.init(start, config)
    for k in range(1, 6):
        live = {"w": np.full(2, 10.0 * k, np.float32), "n": np.array([5 + k, -7 - 3 * k])}
        state = ema.update(state, live, config)
        want = live["n"] if policy == "copy" else start["n"]
        assert state.shadow["n"].dtype == np.int64
        np.testing.assert_array_equal(state.shadow["n"], want, err_msg=f"call {k}")
        np.testing.assert_array_equal(ema.average(state, config)["n"], want)


def test_the_table_buffer_policies() -> None:
    # "Keras ... (trainable variables only: BatchNorm's moving statistics stay live,
    # `buffers="skip"`)"; timm without step: "`Config(decay, dtype=...)`, with `buffers="copy"`
    # for `exclude_buffers=True`"; swa_utils `use_buffers`; mmengine `update_buffers`
    assert presets.keras(0.9).buffers == "skip"
    assert presets.timm(0.9).buffers == "average"
    assert presets.swa_utils(0.9).buffers == "copy"
    assert presets.mmedit(0.1, update_buffers=True).buffers == "average"
    assert presets.diffusers().buffers == "skip"


# --- the presets' decays against the real peers' own decay functions -------------------------


TIMM_ARGS = [
    {"decay": 0.9},
    {"decay": 0.9999, "use_warmup": True},
    {"decay": 0.999, "min_decay": 0.3, "update_after_step": 3, "use_warmup": True},
    {"decay": 0.99, "min_decay": 0.995, "use_warmup": True},  # min_decay above decay wins
    {"decay": 0.999, "update_after_step": -4, "use_warmup": True, "warmup_gamma": 2.5},
    {"decay": 0.99, "update_after_step": 5, "warmup_power": 0.75, "use_warmup": True},
    {"decay": 0.95, "min_decay": 0.97},  # min_decay unused without use_warmup
]


@pytest.mark.parametrize("args", TIMM_ARGS)
def test_timm_decays_are_model_ema_v3_get_decay(args: dict[str, Any]) -> None:
    # "`update(model, step=t)` | `presets.timm(decay, ...)`": the decay of call t
    timm_ema = load_timm_model_ema()
    peer = timm_ema.ModelEmaV3(make_model(batchnorm=False), **args)
    config = presets.timm(**args)
    for t in range(1, 300):
        assert config.decay(t) == pytest.approx(peer.get_decay(t), rel=1e-14, abs=0), t


DIFFUSERS_ARGS = [
    {},
    {"use_ema_warmup": True},
    {"decay": 0.999, "min_decay": 0.3, "update_after_step": 4},
    {"decay": 0.9, "min_decay": 0.95, "update_after_step": -3},
    {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 3.0, "power": 0.5},
    {"decay": 0.99, "use_ema_warmup": True, "update_after_step": -2, "min_decay": 0.1},
]


@pytest.mark.parametrize("args", DIFFUSERS_ARGS)
def test_diffusers_decays_are_ema_model_get_decay(args: dict[str, Any]) -> None:
    training_utils = require("diffusers.training_utils")
    peer = training_utils.EMAModel(make_model(batchnorm=False).parameters(), **args)
    config = presets.diffusers(**args)
    for t in range(1, 300):
        assert config.decay(t) == pytest.approx(peer.get_decay(t), rel=1e-14, abs=0), t


EMA_PYTORCH_ARGS = [
    {"beta": 0.99, "inv_gamma": 1.2, "power": 0.92, "update_after_step": 0, "update_every": 1},
    {"beta": 0.9999, "update_after_step": 0, "update_every": 1},
    {"beta": 0.999, "update_after_step": 7, "update_every": 3, "min_value": 0.2},
    {"beta": 0.99, "min_value": 0.995, "update_after_step": 2, "update_every": 2},
    {"beta": 0.9, "update_after_step": -4, "update_every": 1, "power": 0.5},
    {"beta": 0.9999, "update_after_step": 0, "update_every": 1, "inv_gamma": 3.0},
    {"beta": 0.9999, "update_after_step": 0, "update_every": 1, "inv_gamma": 2.0, "power": 0.5},
    {"beta": 0.9999, "update_after_step": 0, "update_every": 1, "inv_gamma": 1.2, "power": 2.0},
]


@pytest.mark.parametrize("args", EMA_PYTORCH_ARGS)
def test_ema_pytorch_decays_are_get_current_decay_bit_for_bit(args: dict[str, Any]) -> None:
    # "the preset forms its float32 decay step by step as torch does ... bit for bit" (one
    # float32 ulp apart at about 1 step in 120 before 2026-12-05); off-interval calls skip,
    # calls up to update_after_step + 1 copy (call 1 always); a numpy step (the array path)
    # gives the same bits as an int
    ema_pytorch = require("ema_pytorch")
    peer = ema_pytorch.EMA(make_model(batchnorm=False), **args)
    config = presets.ema_pytorch(**args)
    every, after = args["update_every"], args["update_after_step"]
    for t in range(1, 400):
        got = config.decay(t)
        if (t - 1) % every:
            assert got == 1.0, t
            continue
        if t == 1 or t - 1 <= after:
            assert got == 0.0, t
            continue
        peer.step.fill_(t)  # update() increments step before reading the decay
        want = np.float32(peer.get_current_decay())
        assert np.float32(got) == got, t  # a float32 decay, as ema-pytorch forms it
        assert got == float(want), (t, got, float(want))
        assert float(config._pair_at(np.asarray(t))[0]) == got, t


@pytest.mark.parametrize("kwargs", [{"sigma_rel": 0.05}, {"sigma_rel": 0.28}, {"gamma": 6.94}])
@pytest.mark.parametrize("every", [1, 3])
def test_karras_decays_are_karras_ema_beta(kwargs: dict[str, float], every: int) -> None:
    # "`KarrasEMA(model, sigma_rel / gamma, update_every, frozen)` |
    # `presets.ema_pytorch_karras(sigma_rel, gamma, update_every, frozen)`"
    ema_pytorch = require("ema_pytorch")
    peer = ema_pytorch.KarrasEMA(make_model(batchnorm=False), update_every=every, **kwargs)
    config = presets.ema_pytorch_karras(update_every=every, **kwargs)
    assert config.decay(1) == 0.0
    for t in range(2, 300):
        if (t - 1) % every:
            assert config.decay(t) == 1.0, t
            continue
        peer.step.fill_(t)  # update() increments step, then blends with beta
        assert config.decay(t) == pytest.approx(peer.beta, rel=1e-12, abs=0), t


# --- counters: "given as their value at the first update and assumed to grow by one" ----------


@pytest.mark.parametrize("start", [0, 1, 5, 1000])
def test_tf_and_paddle_counters_start_at_their_first_update_value(start: int) -> None:
    for config in (
        presets.tensorflow(0.999, num_updates=start),
        presets.paddle(0.999, thres_steps=start),
    ):
        for t in range(1, 60):
            n = np.float32(start + t - 1)
            want = min(np.float32(0.999), (np.float32(1) + n) / (np.float32(10) + n))
            assert config.decay(t) == pytest.approx(float(want), rel=2**-23), (start, t)


@pytest.mark.parametrize("start", [0, 1, 5, 1000])
def test_allennlp_counter_starts_at_its_first_update_value(start: int) -> None:
    config = presets.allennlp(0.999, numerator=2.0, denominator=7.0, num_updates=start)
    for t in range(1, 60):
        n = start + t - 1
        assert config.decay(t) == pytest.approx(min(0.999, (2.0 + n) / (7.0 + n)), rel=1e-14)


def test_compat_tensorflow_counter_matches_the_preset() -> None:
    # "`presets.tensorflow(decay, num_updates=<counter at first update>, zero_debias)`, or
    # `ema_core.compat.tensorflow.ExponentialMovingAverage`": the two routes agree
    from ema_core.compat import tensorflow

    start, decay = 3, 0.95
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(4).astype(np.float32) for _ in range(12)]
    variable = values[0].copy()
    applied = [0]  # TF's global step: the counter holds start at the first apply
    peer = tensorflow.ExponentialMovingAverage(decay, num_updates=lambda: start + applied[0])
    config = presets.tensorflow(decay, num_updates=start)
    state = ema.init({"w": values[0]}, config)
    for value in values:
        variable[...] = value
        peer.apply([("w", variable)])
        applied[0] += 1
        state = ema.update(state, {"w": value}, config)
        np.testing.assert_allclose(
            np.asarray(peer.average("w")), ema.average(state, config)["w"], rtol=1e-6, atol=1e-7
        )
    assert abs(float(ema.average(state, config)["w"][0] - values[-1][0])) > 1e-3


# --- timm without step, torch-ema's methods ----------------------------------------------------


def _perturb(model: Any, k: int) -> None:
    torch = require("torch")
    gen = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    model.train()
    model(torch.randn(6, 5, generator=gen))  # BatchNorm buffers move


@pytest.mark.parametrize("exclude_buffers", [False, True])
def test_timm_without_step_is_a_plain_config(exclude_buffers: bool) -> None:
    # "timm called without `step=`: `Config(decay, dtype=...)`, with `buffers="copy"` for
    # `exclude_buffers=True`"
    torch = require("torch")
    from ema_core.torch import EMA

    model = make_model()
    peer = load_timm_model_ema().ModelEmaV3(model, decay=0.8, exclude_buffers=exclude_buffers)
    config = ema.Config(0.8, buffers="copy" if exclude_buffers else "average")
    ours = EMA(model, config=config)
    for k in range(6):
        _perturb(model, k)
        peer.update(model)
        ours.update()
        theirs = peer.module.state_dict()
        for name, value in ours.average.items():
            if value.dtype.is_floating_point:
                torch.testing.assert_close(value, theirs[name], rtol=4e-7, atol=1e-7)
            else:
                assert torch.equal(value, theirs[name]), name


def test_swap_and_copy_to_are_torch_emas_average_parameters_and_copy_to() -> None:
    # "torch_ema `with ema.average_parameters():`, `store()` / `copy_to()` / `restore()` |
    # `with ema.swap():` (the live weights come back on exit, also after an error)";
    # "torch_ema `copy_to()` at the end of training | `ema.copy_to(model)`"
    torch = require("torch")
    torch_ema = require("torch_ema")
    from ema_core.torch import EMA

    model = make_model(batchnorm=False)
    peer = torch_ema.ExponentialMovingAverage(model.parameters(), decay=0.95)
    ours = EMA(model, config=presets.torch_ema(0.95))
    for k in range(8):
        _perturb(model, k)
        peer.update()
        ours.update()
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    with peer.average_parameters():
        theirs = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ours.swap():
        swapped = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, value in live.items():
        torch.testing.assert_close(swapped[name], theirs[name], rtol=1e-6, atol=1e-7)
        assert not torch.equal(swapped[name], value)
        assert torch.equal(model.state_dict()[name], value)
    with pytest.raises(RuntimeError, match="boom"), ours.swap():
        raise RuntimeError("boom")
    for name, p in model.named_parameters():
        assert torch.equal(p, live[name]), name
    copied = make_model(batchnorm=False)
    ours.copy_to(copied)
    peer.copy_to(model.parameters())
    for (name, a), b in zip(copied.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_ema_needs_named_parameters_not_parameters() -> None:
    # "`EMA(model, config=presets...)` (or `EMA(model.named_parameters(), ...)`: it needs names)"
    require("torch")
    from ema_core.torch import EMA

    model = make_model(batchnorm=False)
    with pytest.raises(TypeError, match="named_parameters"):
        EMA(model.parameters(), config=presets.torch_ema(0.9))
    named = EMA(model.named_parameters(), config=presets.torch_ema(0.9))
    assert named.names == tuple(n for n, _ in model.named_parameters())


# --- peer facts the section quotes -------------------------------------------------------------


def test_keras_momentum_in_bf16_and_the_presets_float32_decay() -> None:
    # "Keras (it forms `ema_momentum` in the variable's dtype: 0.99 is 0.98828125 in bf16;
    # `presets.keras` keeps the float32 decay)"
    torch = require("torch")
    assert torch.tensor(0.99, dtype=torch.bfloat16).item() == 0.98828125
    config = presets.keras(0.99)
    assert config.decay(1) == 0.0
    assert [config.decay(t) for t in (2, 3, 50)] == [float(np.float32(0.99))] * 3


def test_optax_at_decay_one_with_debias_returns_nan() -> None:
    # "optax at `decay=1.0` with `debias=True` returns NaN (0/0); ema-core's `average` returns
    # the zeros (weight 0)"
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    transform = optax.ema(1.0, debias=True)
    params = {"w": jnp.full(3, 5.0)}
    opt_state = transform.init(params)
    out, opt_state = transform.update(params, opt_state)
    assert bool(jnp.all(jnp.isnan(out["w"])))
    config = presets.optax(1.0, debias=True)
    state = ema.update(ema.init({"w": np.ones(3)}, config), {"w": np.full(3, 5.0)}, config)
    np.testing.assert_array_equal(ema.average(state, config)["w"], np.zeros(3))


def test_a_bf16_model_gets_a_float32_shadow_that_moves_where_bf16_stalls() -> None:
    # "a bf16 model gets a float32 shadow"; "The default float32 shadow does not stall where the
    # peers' bf16 shadows do (decay 0.9999: a bf16 shadow stays put unless the params are some
    # 20 to 40 times its own magnitude away)"
    torch = require("torch")
    from ema_core.torch import EMA

    weight = torch.nn.Parameter(torch.full((4,), 0.125, dtype=torch.bfloat16))
    default = EMA({"w": weight}, config=presets.timm(0.9999))
    same = EMA({"w": weight}, config=presets.timm(0.9999, dtype="same"))
    with torch.no_grad():
        weight.fill_(1.0)  # within bf16's stall: (1 - d) * 0.875 is below half an ulp of 1/8
    for t in range(2, 12):
        default.update(t)
        same.update(t)
    assert default.average["w"].dtype == torch.float32
    assert same.average["w"].dtype == torch.bfloat16
    assert torch.equal(same.average["w"], torch.full((4,), 0.125, dtype=torch.bfloat16))
    want = 1.0 - 0.875 * math.prod(presets.timm(0.9999).decay(t) for t in range(2, 12))
    torch.testing.assert_close(
        default.average["w"], torch.full((4,), want), rtol=1e-6, atol=0, check_dtype=False
    )

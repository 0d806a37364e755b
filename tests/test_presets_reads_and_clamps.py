"""Issue 14, item 3: every preset takes the settings its peer takes, clamps included, and the
refusals kept on purpose name their argument.

The fast tests compare the presets with float64 transcriptions of the peers' decay rules
(written from their documented formulas); the ``slow`` ones run the real peers beside the
torch ``EMA`` class. The half-shadow reads (item 2) are in ``test_presets_half_reads.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, schedules
from tests.peers import as_float64, load_timm_model_ema, make_model, require, train_steps, ulps


def timm_rule(t: int, decay: float, min_decay: float, after: int, gamma: float, power: float):
    u = max(0, t - after - 1)
    return 0.0 if u <= 0 else max(min(1 - (1 + u / gamma) ** -power, decay), min_decay)


def diffusers_rule(t: int, decay: float, min_decay: float, after: int, warm: bool) -> float:
    u = max(0, t - after - 1)
    if u <= 0:
        return 0.0
    value = 1 - (1 + u) ** (-2 / 3) if warm else (1 + u) / (10 + u)
    return max(min(value, decay), min_decay)


def ema_pytorch_rule(t: int, beta: float, min_value: float, after: int, every: int) -> float:
    """Call t of ema-pytorch's EMA: float32 arithmetic and torch's clamp (max wins)."""
    if t == 1 or ((t - 1) % every == 0 and t - 1 <= after):
        return 0.0
    if (t - 1) % every:
        return 1.0
    epoch = np.float32(t - after - 1)
    value = np.float32(1) - (np.float32(1) + epoch) ** np.float32(-2 / 3)
    return float(min(max(value, np.float32(min_value)), np.float32(beta)))


def test_timm_min_decay_above_decay_wins_and_negative_after_step_starts_without_copy():
    for decay, min_decay, after in [(0.99, 0.995, 0), (0.9, 0.5, 2), (0.999, 0.3, -4), (0.5, 1, 1)]:
        cfg = presets.timm(decay, min_decay, after, use_warmup=True, warmup_power=0.75)
        want = [timm_rule(t, decay, min_decay, after, 1.0, 0.75) for t in range(1, 40)]
        assert [cfg.decay(t) for t in range(1, 40)] == pytest.approx(want, rel=1e-13, abs=0)
        assert cfg.init == ("params" if after < 0 else "copy")
    # without use_warmup timm ignores min_decay, also above decay
    assert presets.timm(0.99, min_decay=0.995).decay(5) == 0.99


def test_diffusers_floors_after_the_cap_and_takes_negative_after_step():
    for decay, min_decay, after, warm in [(0.9, 0.95, -3, False), (0.999, 0.2, -1, True)]:
        cfg = presets.diffusers(decay, min_decay, after, use_ema_warmup=warm)
        want = [diffusers_rule(t, decay, min_decay, after, warm) for t in range(1, 40)]
        assert [cfg.decay(t) for t in range(1, 40)] == pytest.approx(want, rel=1e-13, abs=0)
        assert cfg.init == "params"


@pytest.mark.parametrize(
    ("beta", "min_value", "after", "every"),
    [(0.99, 0.995, 0, 1), (0.9, 1.0, 3, 2), (0.999, 0.2, -5, 3)],
)
def test_ema_pytorch_clamps_as_torch_does(beta, min_value, after, every):
    cfg = presets.ema_pytorch(beta, after, every, min_value=min_value)
    want = [ema_pytorch_rule(t, beta, min_value, after, every) for t in range(1, 60)]
    assert [cfg.decay(t) for t in range(1, 60)] == pytest.approx(want, rel=2e-7, abs=0)
    assert cfg.init == "copy"  # ema-pytorch copies on its first call, whatever update_after_step


def test_allennlp_numerator_above_denominator_is_the_plain_decay():
    cfg = presets.allennlp(0.99, numerator=20.0, denominator=10.0, num_updates=1)
    assert [cfg.decay(t) for t in (1, 2, 50)] == [0.99, 0.99, 0.99]


def test_torchtitan_negative_start_step_counts_from_before_step_one():
    cfg = presets.torchtitan(
        half_life_fraction=0.1, start_step=-5, step_bias=1, update_every_n_steps=3
    )
    for t in range(1, 40):
        elapsed = t + 5
        if elapsed % 3:
            assert cfg.decay(t) == 1.0
            continue
        u = max((elapsed + 1) // 3, 1)
        assert cfg.decay(t) == pytest.approx(2.0 ** (-1.0 / (0.1 * u)), rel=1e-14)


def test_power_function_presets_take_gamma_down_to_minus_one():
    karras = presets.ema_pytorch_karras(gamma=0.0, update_every=1)  # a running mean
    assert [karras.decay(t) for t in (1, 2, 3, 9)] == pytest.approx([0.0, 2 / 3, 3 / 4, 9 / 10])
    near_peak = 0.5 * (schedules.gamma_to_sigma_rel(0.0) + schedules.MAX_SIGMA_REL)
    gamma = schedules.sigma_rel_to_gamma(near_peak)
    assert -1 < gamma < 0
    edm2 = presets.edm2(near_peak)  # EDM2 reads at t, KarrasEMA one step ahead
    assert edm2.decay(7) == pytest.approx((1 - 1 / 7) ** (gamma + 1), rel=1e-12)
    karras = presets.ema_pytorch_karras(near_peak, update_every=1)
    assert karras.decay(7) == pytest.approx((1 - 1 / 8) ** (gamma + 1), rel=1e-12)
    frozen = presets.ema_pytorch_karras(gamma=6.94, update_every=2, frozen=True)
    assert [frozen.decay(t) for t in range(1, 6)] == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_edm2_infinite_half_life_is_the_ramp_alone():
    cfg = presets.edm2(halflife_Mimg=math.inf, rampup_ratio=0.5, batch_size=8)
    assert cfg.decay(4) == pytest.approx(0.5 ** (1 / 2.0), rel=1e-14)


#: The refusals kept on purpose (README "Presets: settings refused on purpose").
KEPT = [
    (lambda: presets.timm(1.5), ValueError, "decay"),  # not a decay: the average diverges
    (lambda: presets.timm(0.9, min_decay=-0.1), ValueError, "min_decay"),
    (lambda: presets.ema_pytorch(0.9, min_value=1.5), ValueError, "min_value"),
    (lambda: presets.timm(use_warmup=True, warmup_power=0.0), ValueError, "warmup_power"),
    (lambda: presets.timm(warmup_gamma=0.0), ValueError, "warmup_gamma"),
    (lambda: presets.diffusers(power=-1.0), ValueError, "power"),  # unused, still checked
    (lambda: presets.ema_pytorch(inv_gamma=0.0), ValueError, "inv_gamma"),
    (lambda: presets.ema_pytorch(update_every=-2), ValueError, "update_every"),
    (lambda: presets.ema_pytorch_karras(gamma=-1.0), ValueError, "gamma"),
    (lambda: presets.edm2(0.31), ValueError, "sigma_rel"),
    (lambda: presets.edm2(halflife_Mimg=0.0, batch_size=8), ValueError, "halflife_Mimg"),
    (
        lambda: presets.edm2(halflife_Mimg=math.inf, rampup_ratio=None, batch_size=8),
        ValueError,
        "rampup_ratio",
    ),
    (lambda: presets.mmedit(interval=-2), ValueError, "interval"),
    (lambda: presets.torchtitan(update_every_n_steps=-1), ValueError, "update_every_n_steps"),
    (lambda: presets.allennlp(numerator=-10.0), ValueError, "numerator"),
    (lambda: presets.allennlp(denominator=0.0), ValueError, "denominator"),
    (lambda: presets.tensorflow(0.9, num_updates=-1), ValueError, "num_updates"),
    (lambda: presets.optax(np.float32(0.9)), TypeError, "decay"),  # pass float(x)
    (lambda: presets.optax(0.9, accumulator_dtype="int8"), ValueError, "accumulator_dtype"),
]


@pytest.mark.parametrize(("call", "error", "words"), KEPT)
def test_refusals_kept_on_purpose_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


Pair = tuple[Callable[[int], None], Callable[[], dict[str, Any]]]


def _run_beside(model: Any, peer: Pair, config: ema.Config, steps: int = 30) -> None:
    from ema_core.torch import EMA

    averager = EMA(model, config=config)
    for t in train_steps(model, steps):
        peer[0](t)
        averager.update()
        ours, theirs = averager.average, peer[1]()
        for name, want in theirs.items():
            got = ours[name]
            if not want.dtype.is_floating_point:
                assert np.array_equal(as_float64(got), as_float64(want)), (t, name)
            else:
                assert ulps(as_float64(got), as_float64(want)) <= 8, (t, name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        {"beta": 0.99, "min_value": 0.995, "update_after_step": 0, "update_every": 1},
        {"beta": 0.9, "min_value": 0.2, "update_after_step": -4, "update_every": 2},
    ],
)
def test_ema_pytorch_clamps_and_negative_after_step_match_the_peer(args):
    model = make_model()
    peer = require("ema_pytorch").EMA(model, **args)
    _run_beside(
        model, (lambda t: peer.update(), peer.ema_model.state_dict), presets.ema_pytorch(**args)
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [{"gamma": 0.0}, {"sigma_rel": 0.295}, {"gamma": 6.94, "frozen": True}]
)
def test_karras_gamma_down_to_minus_one_and_frozen_match_the_peer(args):
    model = make_model()
    peer = require("ema_pytorch").KarrasEMA(model, update_every=2, **args)
    _run_beside(
        model,
        (lambda t: peer.update(), peer.ema_model.state_dict),
        presets.ema_pytorch_karras(update_every=2, **args),
    )


@pytest.mark.slow
def test_diffusers_min_decay_above_decay_and_negative_after_step_match_the_peer():
    model = make_model()
    args = {"decay": 0.9, "min_decay": 0.95, "update_after_step": -3}
    peer = require("diffusers.training_utils").EMAModel(model.parameters(), **args)
    names = [n for n, _ in model.named_parameters()]
    _run_beside(
        model,
        (
            lambda t: peer.step(model.parameters()),
            lambda: dict(zip(names, peer.shadow_params, strict=True)),
        ),
        presets.diffusers(**args),
    )


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, -3])
def test_timm_min_decay_above_decay_matches_the_peer(after):
    model = make_model()
    args = {"decay": 0.99, "min_decay": 0.995, "update_after_step": after, "use_warmup": True}
    peer = load_timm_model_ema().ModelEmaV3(model, **args)
    _run_beside(
        model, (lambda t: peer.update(model, step=t), peer.module.state_dict), presets.timm(**args)
    )

"""Presets: the first decays of DESIGN.md section 3, the same decays on every step type, the
corrections, validation, and a save/load round trip that continues bit-identically."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ema_core
from ema_core import presets, schedules
from tests.conftest import to_numpy

# DESIGN.md section 3, "Observed first six effective decays" (0 = copy, 1 = skip).
DESIGN_TABLE = [
    (presets.swa_utils(0.9), [0, 0.9, 0.9, 0.9, 0.9, 0.9]),
    (presets.mmedit(0.1), [0, 0.9, 0.9, 0.9, 0.9, 0.9]),
    (presets.keras(0.9), [0, 0.9, 0.9, 0.9, 0.9, 0.9]),
    (presets.timm(0.9), [0, 0.9, 0.9, 0.9, 0.9, 0.9]),
    (presets.timm(0.9999, use_warmup=True), [0, 0.37004, 0.51925, 0.60315, 0.65800, 0.69715]),
    (
        presets.ema_pytorch(update_after_step=0, update_every=1),
        [0, 0.37004, 0.51925, 0.60315, 0.65800, 0.69715],
    ),
    (presets.diffusers(use_ema_warmup=True), [0, 0.37004, 0.51925, 0.60315, 0.65800, 0.69715]),
    (presets.torch_ema(0.9999), [0.18182, 0.25, 0.30769, 0.35714, 0.4, 0.4375]),
    (presets.tensorflow(0.9999, num_updates=1), [0.18182, 0.25, 0.30769, 0.35714, 0.4, 0.4375]),
    (presets.allennlp(num_updates=1), [0.18182, 0.25, 0.30769, 0.35714, 0.4, 0.4375]),
    (presets.diffusers(), [0, 0.18182, 0.25, 0.30769, 0.35714, 0.4]),
    (presets.ema_pytorch(), [0, 1, 1, 1, 1, 1]),
    (presets.mmedit(0.1, interval=2), [0, 1, 0.9, 1, 0.9, 1]),
    (presets.mmedit(0.0002, gamma=100), [0, 0.0099, 0.01961, 0.02913, 0.03846, 0.04762]),
    (presets.edm2(0.05), [0, None, 0.00068, 0.00568, 0.01813, 0.03775]),  # None: "~0"
]

ALL_PRESETS = {
    "tensorflow": presets.tensorflow(0.999, num_updates=1),
    "tensorflow_zero_debias": presets.tensorflow(0.99, num_updates=5, zero_debias=True),
    "allennlp": presets.allennlp(0.999, num_updates=1),
    "paddle": presets.paddle(0.99, thres_steps=0),
    "mmedit": presets.mmedit(0.01, interval=3, update_buffers=True),
    "mmedit_annealing": presets.mmedit(0.001, interval=2, gamma=10),
    "timm": presets.timm(0.999, min_decay=0.5, update_after_step=3, use_warmup=True),
    "torch_ema": presets.torch_ema(0.99),
    "ema_pytorch": presets.ema_pytorch(0.999, update_after_step=5, update_every=3),
    "ema_pytorch_karras": presets.ema_pytorch_karras(sigma_rel=0.1, update_every=2),
    "diffusers": presets.diffusers(0.999, min_decay=0.3, update_after_step=2),
    "swa_utils": presets.swa_utils(0.95, use_buffers=True),
    "optax": presets.optax(0.9),
    "optax_raw": presets.optax(0.9, debias=False),
    "keras": presets.keras(0.95),
    "edm2": presets.edm2(0.1),
    "edm2_traditional": presets.edm2(halflife_Mimg=0.01, batch_size=1000),
    "torchtitan": presets.torchtitan(start_step=3, step_bias=2, update_every_n_steps=2),
    "torchtitan_decay": presets.torchtitan(0.9, start_step=1, update_every_n_steps=3),
}


def effective_decays(config: ema_core.Config, calls: int = 6) -> list[float]:
    """Effective decay of calls 1..calls from the raw shadow on p_0 = 0, p_k = 10 k."""
    state = ema_core.init({"w": np.zeros(1)}, config)
    out = []
    for k in range(1, calls + 1):
        before = state.shadow["w"][0]
        state = ema_core.update(state, {"w": np.full(1, 10.0 * k)}, config)
        out.append(float((10.0 * k - state.shadow["w"][0]) / (10.0 * k - before)))
    return out


def assert_first_decays(config, expected):
    """The decays ``config`` applies on its first calls, as a table row gives them (None: "~0",
    below 5e-6 and above 0; 0 and 1 exact; the others to 5 digits)."""
    got = effective_decays(config)
    for k, (d, want) in enumerate(zip(got, expected, strict=True), start=1):
        if want is None:
            assert 0.0 < d < 5e-6, f"call {k}: {d}"
        elif want in (0, 1):
            assert d == want, f"call {k}: {d} (0 = copy, 1 = skip must be exact)"
        else:
            assert round(d, 5) == pytest.approx(want, abs=1e-12), f"call {k}: {d}"


@pytest.mark.parametrize(("config", "expected"), DESIGN_TABLE)
def test_design_table_first_six_decays(config, expected):
    assert_first_decays(config, expected)


def test_ema_pytorch_defaults_copy_until_111():
    decays = [presets.ema_pytorch().decay(t) for t in range(1, 130)]
    copies = [t for t, d in enumerate(decays, start=1) if d == 0.0]
    blends = [t for t, d in enumerate(decays, start=1) if 0.0 < d < 1.0]
    assert copies == [1, *range(11, 102, 10)]
    assert blends == [111, 121]


@pytest.mark.parametrize("name", sorted(ALL_PRESETS))
def test_step_arrays_give_the_host_decays(name, backend):
    """A 0-d integer step (device or traced path) gives the decays of the Python int path."""
    config = ALL_PRESETS[name]
    xp = backend.module
    for t in range(0, 40):
        host = config.decay_and_rate(t)
        dev = config.decay_and_rate(xp.asarray(t))
        np.testing.assert_allclose(
            [float(dev[0]), float(dev[1])], host, rtol=1e-6 if backend.name == "jax" else 1e-13
        )


def test_step_traced_under_jit_gives_the_host_decays():
    jax = pytest.importorskip("jax")
    for name, config in ALL_PRESETS.items():
        fn = jax.jit(lambda t, c=config: c.decay_and_rate(t))
        for t in (1, 2, 3, 7, 12, 13):
            got = [float(v) for v in fn(jax.numpy.asarray(t))]
            np.testing.assert_allclose(got, config.decay_and_rate(t), rtol=1e-6, err_msg=name)


def test_power_correction_divides_by_one_minus_decay_power():
    config = presets.paddle(0.9, thres_steps=1)
    state = ema_core.init({"w": np.zeros(2)}, config)
    values = [np.array([1.0, -2.0]), np.array([3.0, 5.0]), np.array([0.5, 0.25])]
    raw = np.zeros(2)
    for t, p in enumerate(values, start=1):
        state = ema_core.update(state, {"w": p}, config)
        d = config.decay(t)
        raw = d * raw + (1 - d) * p
        want = raw / (1 - d**t)
        np.testing.assert_allclose(ema_core.average(state, config)["w"], want, rtol=1e-14)
    # with a varying decay the power rule differs from the exact one
    exact = ema_core.average(state, ema_core.Config(config.schedule, init="zeros"))["w"]
    assert not np.allclose(exact, want, rtol=1e-6)


def test_power_correction_before_any_update_returns_zeros():
    config = presets.paddle()
    state = ema_core.init({"w": np.ones(3)}, config)
    assert np.array_equal(ema_core.average(state, config)["w"], np.zeros(3))


def test_power_correction_on_a_device_step_matches_host(backend):
    config = presets.tensorflow(0.95, num_updates=1, zero_debias=True)
    params = {"w": backend.asarray(np.array([2.0, 4.0]))}
    state = ema_core.init(params, config)
    for _ in range(4):
        state = ema_core.update(state, params, config)
    got = np.asarray(ema_core._config.power_weight(config.schedule, backend.module.asarray(4)))
    assert float(got) == pytest.approx(ema_core._config.power_weight(config.schedule, 4))
    want = to_numpy(state.shadow["w"]) / ema_core._config.power_weight(config.schedule, 4)
    avg = to_numpy(ema_core.average(state, config)["w"])
    np.testing.assert_allclose(avg, want, rtol=1e-6)
    assert abs(avg[0] - 2.0) > 1e-3  # the power rule is not exact under a varying decay


def test_optax_without_debias_reads_the_raw_shadow():
    config = presets.optax(0.5, debias=False)
    state = ema_core.update(ema_core.init({"w": np.zeros(1)}, config), {"w": np.ones(1)}, config)
    assert ema_core.average(state, config)["w"][0] == 0.5


def test_buffer_and_non_float_policies():
    assert presets.mmedit(update_buffers=True).buffers == "average"
    assert presets.mmedit(update_buffers=True).non_float == "freeze"
    assert presets.mmedit().buffers == "copy"
    assert presets.timm(exclude_buffers=True).buffers == "copy"
    assert presets.swa_utils(use_buffers=True).buffers == "average"
    assert presets.ema_pytorch().non_float == "freeze"
    assert presets.torch_ema(0.9).buffers == "skip"
    assert presets.timm(dtype="torch.float32").dtype == "float32"


def test_torchtitan_follows_its_update_count():
    cfg = presets.torchtitan(
        half_life_fraction=0.1, start_step=4, step_bias=3, update_every_n_steps=2
    )
    for t in range(1, 30):
        elapsed = t - 4
        if t < 4 or elapsed % 2:
            assert cfg.decay(t) == 1.0
            continue
        u = max((elapsed + 3) // 2, 1)
        assert cfg.decay(t) == pytest.approx(2.0 ** (-1.0 / (0.1 * u)), rel=1e-14)


def test_diffusers_min_decay_floor_and_karras_offset():
    cfg = presets.diffusers(0.9, min_decay=0.5)
    assert [cfg.decay(t) for t in (1, 2, 3)] == [0.0, 0.5, 0.5]
    karras = presets.ema_pytorch_karras(gamma=6.94, update_every=1)
    assert karras.decay(5) == pytest.approx((1 - 1 / 6) ** 7.94, rel=1e-13)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: presets.tensorflow(1.5), ValueError, "decay"),
        (lambda: presets.tensorflow(0.9, num_updates=-1), ValueError, "counter"),
        (lambda: presets.tensorflow(0.9, zero_debias="yes"), TypeError, "zero_debias"),
        (lambda: presets.mmedit(interval=0), ValueError, "interval"),
        (lambda: presets.mmedit(momentum=float("nan")), ValueError, "momentum"),
        (lambda: presets.timm(update_after_step=2.0), TypeError, "update_after_step"),
        (lambda: presets.timm(0.9, min_decay=1.5, use_warmup=True), ValueError, "min_decay"),
        (lambda: presets.ema_pytorch(update_every=0), ValueError, "update_every"),
        (lambda: presets.edm2(halflife_Mimg=1.0), TypeError, "batch_size"),
        (lambda: presets.edm2(std=0.5), ValueError, "sigma_rel"),
        (lambda: presets.torchtitan(update_every_n_steps=1.5), TypeError, "update_every_n_steps"),
        (lambda: presets.optax(0.9, debias=1), TypeError, "debias"),
        (lambda: presets.paddle(thres_steps=True), TypeError, "thres_steps"),
        (lambda: ema_core.Config(correction="tf"), ValueError, "Config.correction"),
        (lambda: ema_core.Config(buffers="all"), ValueError, "Config.buffers"),
        (lambda: schedules.gated(0.9, offset=1.5), TypeError, "offset"),
        (lambda: schedules.gated(0.9, phase=-1), ValueError, "phase"),
        (schedules.ramped_half_life, ValueError, "half_life"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_in_float32_rounds_like_float32():
    sched = schedules.in_float32(schedules.num_updates(0.9999))
    for t in (1, 5, 100, 10**5):
        d, r = sched.decay_and_rate(t)
        d32 = np.float32(min(np.float32(0.9999), np.float32(1 + t) / np.float32(10 + t)))
        assert d == float(d32)
        assert r == 1.0 - float(d32)
        assert np.float32(r) == np.float32(1) - d32


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(ALL_PRESETS)),
    split=st.integers(0, 25),
    seed=st.integers(0, 2**16),
)
def test_save_load_round_trip_continues_bit_identically(name, split, seed):
    config = ALL_PRESETS[name]
    rng = np.random.default_rng(seed)
    traj = [
        {"w": rng.standard_normal(4).astype(np.float32), "n": np.asarray(k, dtype=np.int64)}
        for k in range(30)
    ]
    state = ema_core.init(traj[0], config)
    straight = state
    for p in traj[1:]:
        straight = ema_core.update(straight, p, config)
    for p in traj[1 : split + 1]:
        state = ema_core.update(state, p, config)
    config2, state2 = pickle.loads(pickle.dumps((config, state)))
    assert config2 == config
    for p in traj[split + 1 :]:
        state2 = ema_core.update(state2, p, config2)
    for key in ("w", "n"):
        assert np.array_equal(state2.shadow[key], straight.shadow[key])
    assert np.array_equal(state2.weight, straight.weight)
    a, b = ema_core.average(state2, config2)["w"], ema_core.average(straight, config)["w"]
    assert np.array_equal(a, b)
    assert math.isfinite(float(np.sum(a)))


def test_presets_and_compat_import_no_framework():
    code = (
        "import sys, ema_core.presets, ema_core.compat, ema_core.compat.allennlp, "
        "ema_core.compat.tensorflow, ema_core.compat.paddle\n"
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'tensorflow', 'keras') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_edm2_matches_its_beta_formulas():
    """NVlabs/edm2 phema.py: power_function_beta(std, t_next=cur_nimg, t_delta=batch_size) and
    TraditionalEMA's 0.5 ** (batch_size / max(min(H, cur_nimg * ratio), 1e-8))."""
    batch, gamma = 512, schedules.sigma_rel_to_gamma(0.1)
    power = presets.edm2(0.1)
    traditional = presets.edm2(halflife_Mimg=0.5, rampup_ratio=0.05, batch_size=batch)
    for t in range(1, 3000, 37):
        cur_nimg = t * batch
        beta = (1 - batch / cur_nimg) ** (gamma + 1)
        assert power.decay(t) == pytest.approx(beta, rel=1e-12, abs=1e-300)
        halflife = min(0.5e6, cur_nimg * 0.05)
        assert traditional.decay(t) == pytest.approx(0.5 ** (batch / halflife), rel=1e-12)

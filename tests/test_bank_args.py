"""``ema_core._banks`` and ``ema_core._snapshot_args``: the arguments every EMA bank takes,
checked once for torch and JAX (and ``posthoc``'s sigma_rel check): the messages, TypeError
for types and ValueError for values, nothing built on error, and no framework imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ema_core import Config, _banks, _snapshot_args, schedules

POWER = [Config(schedule=schedules.power_function(sigma_rel=s), init="copy") for s in (0.05, 0.1)]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0.0, ValueError, r"s must be in \(0, 12\*\*-0.5 = 0.288675\), got 0.0: at 12\*\*-0.5"),
        (-0.1, ValueError, r"got -0.1: at 12\*\*-0.5 the power-function profile is the uniform"),
        (12**-0.5, ValueError, "gamma = 0"),
        (0.3, ValueError, "above 0.3003 no power function has that width"),
        (float("nan"), ValueError, r"got nan"),
        (float("inf"), ValueError, r"got inf"),
        (True, TypeError, "s must be a real number, got bool True"),
        ("0.1", TypeError, "s must be a real number, got str '0.1'"),
        (None, TypeError, "s must be a real number, got NoneType"),
    ],
)
def test_check_sigma_rel_refuses_with_type_or_value_error(value, error, message):
    with pytest.raises(error, match=message):
        _banks.check_sigma_rel(value, "s")


def test_check_sigma_rel_returns_a_float_and_is_posthocs_own():
    assert _banks.check_sigma_rel(1 / 20) == 0.05
    assert type(_banks.check_sigma_rel(0.25)) is float
    assert _banks.SIGMA_REL_MAX == 12**-0.5
    math = pytest.importorskip("ema_core.posthoc._math")
    assert math.check_sigma_rel is _banks.check_sigma_rel
    assert math.SIGMA_REL_MAX is _banks.SIGMA_REL_MAX


def test_power_configs_build_edm2_power_functions():
    built = _banks.power_configs([0.05, 0.1], 4)
    assert built == tuple(
        Config(schedule=schedules.power_function(sigma_rel=s), init="copy", interval=4)
        for s in (0.05, 0.1)
    )
    assert [round(_banks.sigma_rel_of(c), 9) for c in built] == [0.05, 0.1]
    assert _banks.sigma_rel_of(Config(schedule=0.9)) is None


@pytest.mark.parametrize(
    ("sigma_rels", "interval", "error", "message"),
    [
        ([], 1, ValueError, r"sigma_rels is empty: a bank needs at least one EMA \(K >= 1\)"),
        (0.1, 1, TypeError, r"sigma_rels must be a sequence \(list or tuple\), got float"),
        ("ab", 1, TypeError, "sigma_rels must be a sequence"),
        ([0.05, 0.3], 1, ValueError, r"sigma_rels\[1\] must be in \(0, 12\*\*-0.5"),
        ([0.05, "x"], 1, TypeError, r"sigma_rels\[1\] must be a real number, got str"),
        ([0.1, 0.05, 0.1], 1, ValueError, r"sigma_rels\[2\]=0.1 repeats sigma_rels\[0\]"),
        ([0.1], 0, ValueError, "interval must be an int > 0, got 0"),
        ([0.1], 2.0, TypeError, "interval must be an int > 0, got float"),
        ([0.1], True, TypeError, "interval must be an int > 0, got bool"),
    ],
)
def test_power_configs_refuse_before_building_anything(
    monkeypatch, sigma_rels, interval, error, message
):
    built = []
    monkeypatch.setattr(_banks, "power_function", lambda **kw: built.append(kw))
    with pytest.raises(error, match=message):
        _banks.power_configs(sigma_rels, interval)
    assert built == []  # no schedule was made for the good entries before the bad one


@pytest.mark.parametrize(
    ("configs", "sigma_rels", "interval", "error", "message"),
    [
        (None, None, 1, TypeError, "Bank takes exactly one of configs or sigma_rels"),
        (POWER, [0.1], 1, TypeError, "Bank takes exactly one of configs or sigma_rels"),
        (POWER, None, 2, TypeError, "interval=2 goes with sigma_rels; set Config.interval"),
        ([], None, 1, ValueError, r"configs is empty: a bank needs at least one EMA"),
        (POWER[0], None, 1, TypeError, r"configs must be a sequence \(list or tuple\), got Con"),
        ([POWER[0], None], None, 1, TypeError, r"configs\[1\] must be an ema_core.Config, got No"),
    ],
)
def test_bank_configs_refuse(configs, sigma_rels, interval, error, message):
    with pytest.raises(error, match=message):
        _banks.bank_configs("Bank", configs, sigma_rels, interval)


def test_bank_configs_take_configs_as_given_or_sigma_rels():
    assert _banks.bank_configs("Bank", POWER, None, 1) == tuple(POWER)
    assert _banks.bank_configs("Bank", None, (0.05,), 3) == _banks.power_configs([0.05], 3)


@pytest.mark.parametrize(
    ("every", "directory", "configs", "error", "message"),
    [
        (4, None, POWER, ValueError, r"snapshot_every needs snapshot_dir too \(got snapsh"),
        (None, "d", POWER, ValueError, r"snapshot_dir needs snapshot_every too"),
        (0, "d", POWER, ValueError, "snapshot_every must be an int > 0, got 0"),
        (2.0, "d", POWER, TypeError, "snapshot_every must be an int > 0, got float"),
        (4, 7, POWER, TypeError, "snapshot_dir must be a str or os.PathLike, got int"),
        (4, "d", [POWER[0], Config()], ValueError, r"configs\[1\] has no sigma_rel"),
        (
            4,
            "d",
            [POWER[0], Config(schedule=POWER[1].schedule, interval=2)],
            ValueError,
            r"snapshot_every=4 must be a multiple .* share one interval; got intervals \[1, 2\]",
        ),
        (
            6,
            "d",
            _banks.power_configs([0.1], 4),
            ValueError,
            r"snapshot_every=6 must be a multiple of the EMAs' interval.*\[4\]",
        ),
    ],
)
def test_check_snapshots_refuses(every, directory, configs, error, message):
    with pytest.raises(error, match=message):
        _snapshot_args.check_snapshots(every, directory, configs)


@pytest.mark.parametrize("directory", ["d", Path("d")])
def test_check_snapshots_accepts_one_interval_dividing_every(directory):
    _snapshot_args.check_snapshots(None, None, [Config()])  # no snapshots: nothing to check
    _snapshot_args.check_snapshots(8, directory, _banks.power_configs([0.05, 0.1], 4))
    assert _snapshot_args.snapshot_sigma_rels(POWER) == pytest.approx((0.05, 0.1), rel=1e-9)


def test_importing_banks_imports_no_array_library():
    code = (
        "import sys, ema_core._banks, ema_core._snapshot_args; "
        "print([m for m in ('numpy', 'torch', 'jax', 'cupy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Fixes of the testing-kit hunt of 2026-12-05 (second part): complex leaves drawn with a
non-zero imaginary part (an EMA that dropped or conjugated it passed every property), torch's
``complex32`` leaves in the oracle (torch's own ``TypeError``), a write into an earlier step's
input blamed on the last step, numpy warnings from the oracle on infinite params, and a
``step_fn`` that returns a number or another object."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ema_core as ema  # noqa: E402
from ema_core import testing  # noqa: E402


def _blend(s, p, d):
    return d * s + (1 - d) * p


def _drops_imag(s, p, d):
    return (d * s.real + (1 - d) * p.real).to(s.dtype)


def _conjugates(s, p, d):
    return _blend(s, p, d).conj().resolve_conj()


@pytest.mark.parametrize("wrong", [_drops_imag, _conjugates])
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_an_ema_that_loses_the_imaginary_part_fails(wrong, dtype):
    with pytest.raises(AssertionError, match=r"must copy the params|one update at decay="):
        testing.assert_ema_properties(wrong, torch, dtype=dtype, max_examples=30)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_a_right_complex_ema_passes_every_property(dtype):
    testing.assert_ema_properties(_blend, torch, dtype=dtype, max_examples=60)
    testing.assert_ema_properties(_blend, np, dtype=dtype, max_examples=60)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_leaves_are_averaged_by_the_oracle_as_by_ema_core():
    gen = torch.Generator().manual_seed(0)
    nests = [{"z": torch.randn(4, dtype=torch.complex64, generator=gen).to(torch.complex32)}]
    nests += [{"z": (n["z"].to(torch.complex64) * 2).to(torch.complex32)} for n in nests * 3]
    config = ema.Config(schedule=0.9)
    trajectory = testing.Trajectory(nests[0], nests[1:])
    want = testing.reference(config, trajectory)
    state = ema.init(nests[0], config)
    for k, params in enumerate(nests[1:]):
        state = ema.update(state, params, config)
        got = ema.average(state, config)["z"]
        assert got.dtype == torch.complex64
        np.testing.assert_allclose(got.numpy(), want[k].average[0], rtol=1e-6)
    testing.assert_matches(_ema_core(config), config, trajectory)


def test_a_write_into_an_earlier_steps_input_names_the_steps_it_may_have_been():
    steps = [{"w": torch.full((2,), float(k))} for k in range(1, 6)]
    trajectory = testing.Trajectory({"w": torch.zeros(2)}, steps)

    def make(init):
        seen = []

        def step(params, t):
            seen.append(params["w"])
            if t == 2:
                seen[0].add_(1.0)  # the input of step 1, written during step 2
            return {"w": params["w"].clone()}

        return step

    config = ema.Config(schedule=0.0)
    with pytest.raises(AssertionError, match=r"steps\[0\]\['w'\] during one of the steps t=2\.\.5"):
        testing.assert_matches(make, config, trajectory)


def test_the_oracle_warns_of_nothing_on_infinite_params():
    trajectory = testing.Trajectory({"w": np.zeros(2)}, [{"w": np.array([np.inf, -np.inf])}] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = testing.reference(ema.Config(schedule=0.5), trajectory)
        complex_inf = [{"z": np.array([complex(1, np.inf)])}] * 2  # (1j * inf is NaN + inf j)
        z = testing.Trajectory({"z": np.array([1 + 1j])}, complex_inf)
        for correction in ("exact", "power"):  # the bias correction divides a complex inf
            config = ema.Config(schedule=0.5, init="zeros", correction=correction)
            testing.assert_matches(_ema_core(config), config, z)  # what ema-core's numpy gives
    assert np.isinf(got[0].average[0]).all() and np.isnan(got[1].average[0]).all()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("init", ["params", "zeros"])
def test_complex32_under_dtype_same_matches_ema_core_inf_included(init):
    z = [torch.tensor([0.5 + 0.25j, 1 + 1j]).to(torch.complex32)]
    z += [torch.tensor([2.0 + 1j, complex(1.0, float("inf"))]).to(torch.complex32)] * 3
    trajectory = testing.Trajectory({"z": z[0]}, [{"z": x} for x in z[1:]])
    config = ema.Config(schedule=0.9, dtype="same", init=init)
    testing.assert_matches(_ema_core(config), config, trajectory)


def _ema_core(config):
    """ema-core's functional EMA as the kit's ``make_ema``."""

    def make(start):
        live = {"own": ema.init(start, config)}

        def step(params, t):
            live["own"] = ema.update(live["own"], params, config)
            return ema.average(live["own"], config)

        return step

    return make


@pytest.mark.parametrize("returns", [lambda s: float(s.sum()), lambda s: object(), lambda s: {1}])
def test_a_step_fn_returning_no_array_is_a_type_error_naming_it(returns):
    with pytest.raises(TypeError, match=r"step_fn\(shadow, params, decay\) must return"):
        testing.assert_ema_properties(lambda s, p, d: returns(s), torch, max_examples=5)

"""Stateless-API promises a hunt of 2026-12-05 found broken, each pinned: ``average`` of a
state whose weight is of another framework than its shadows (a torch state's shadows turned
into numpy) raised a raw ``AttributeError``; a meta step was reported as a meta decay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ema_core as ema

ZEROS = ema.Config(0.9, init="zeros")


def test_average_reads_a_cpu_torch_weight_beside_numpy_shadows() -> None:
    params = {"w": np.ones(2)}
    state = ema.init(params, ZEROS)
    state = ema.EMAState(torch.tensor(0), state.shadow, torch.tensor(0.0, dtype=torch.float64))
    state = ema.update(state, params, ZEROS)
    assert isinstance(state.weight, torch.Tensor)
    out = ema.average(state, ZEROS)
    assert np.array_equal(out["w"], [1.0, 1.0])


def test_average_reads_a_cpu_jax_weight_beside_torch_shadows() -> None:
    jnp = pytest.importorskip("jax.numpy")
    params = {"w": torch.ones(2, dtype=torch.float64)}
    state = ema.init(params, ZEROS)
    state = ema.EMAState(jnp.asarray(0), state.shadow, jnp.asarray(0.0))
    state = ema.update(state, params, ZEROS)
    out = ema.average(state, ZEROS)
    assert torch.equal(out["w"], torch.ones(2, dtype=torch.float64))


def test_a_meta_step_is_named_as_what_made_the_decay_meta() -> None:
    with pytest.raises(ValueError, match=r"computed from a meta step"):
        ema.ema_update(torch.zeros(2), torch.ones(2), torch.tensor(3, device="meta"), decay=0.5)


def test_a_foreign_weight_that_requires_grad_is_read_without_a_warning() -> None:
    params = {"w": np.ones(2)}
    state = ema.init(params, ZEROS)
    state = ema.update(state, params, ZEROS)
    weight = torch.tensor(float(state.weight), dtype=torch.float64, requires_grad=True)
    out = ema.average(ema.EMAState(state.step, state.shadow, weight), ZEROS)
    assert np.allclose(out["w"], [1.0, 1.0])

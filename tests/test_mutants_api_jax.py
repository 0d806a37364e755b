"""Mutation-audit tests (round 2) of the JAX wrappers: ``make_update``, ``with_ema``, and the
``.npz`` checkpoints; each kills a small plausible bug the rest of the suite let through."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import ema_core as ema  # noqa: E402
from ema_core.jax import make_update  # noqa: E402


def test_make_update_takes_numpy_params_as_traced_arrays() -> None:
    """numpy leaves are arrays (traced), not static parts of the tree: the update runs and
    one compilation serves new values."""
    cfg = ema.Config(schedule=0.5)
    step = make_update(cfg)
    state = ema.init({"w": np.zeros(2, np.float32)}, cfg)
    state = step(state, {"w": np.full(2, 4.0, np.float32)})
    state = step(state, {"w": np.full(2, 8.0, np.float32)})
    assert np.asarray(state.shadow["w"]).tolist() == [5.0, 5.0]  # (0 + 4) / 2 = 2, (2 + 8) / 2
    assert int(state.step) == 2


def test_chunked_update_without_donation_keeps_the_whole_input_state(monkeypatch) -> None:
    """``donate=False`` on the chunked path (many leaves): the input state, its step and
    weight included, stays readable after the call."""
    from ema_core.jax import _chunked

    monkeypatch.setattr(_chunked, "CHUNK", 2)
    cfg = ema.Config(schedule=0.5, init="zeros")
    params = {f"l{i}": jax.numpy.full(2, float(i)) for i in range(3)}
    state = ema.init(params, cfg)
    new = make_update(cfg, donate=False)(state, params)
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(state))
    assert int(state.step) == 0 and float(state.weight) == 0.0
    assert int(new.step) == 1 and float(new.weight) == 0.5


def test_with_ema_over_a_chain_of_multisteps_and_apply_if_finite_skips_micro_steps() -> None:
    """Both kinds of skipping state side by side in a chain: the EMA moves only when every
    one says the step was taken (on a micro-step ``apply_if_finite`` sees finite zeros)."""
    optax = pytest.importorskip("optax")
    from ema_core.jax import with_ema

    inner = optax.chain(
        optax.MultiSteps(optax.sgd(1.0), every_k_schedule=2),
        optax.apply_if_finite(optax.scale(1.0), 3),
    )
    opt = with_ema(inner, ema.Config(schedule=0.5))
    params = {"w": jax.numpy.zeros(2)}
    state = opt.init(params)
    steps = []
    for _ in range(4):
        updates, state = opt.update({"w": -jax.numpy.ones(2)}, state, params)
        params = optax.apply_updates(params, updates)
        steps.append(int(state.ema.step))
    assert steps == [0, 1, 1, 2]


def test_npz_load_refuses_another_shape_of_the_same_rank() -> None:
    from ema_core.jax import load_state_dict, state_dict

    saved = state_dict(ema.init({"w": jax.numpy.ones(2)}))
    with pytest.raises(ValueError, match=r"arrays\['shadow/w'\] has shape \(2,\), like has \(3,\)"):
        load_state_dict(saved, ema.init({"w": jax.numpy.zeros(3)}))


def test_npz_load_refuses_another_dtype_of_the_same_size() -> None:
    """int32 bytes are not viewed as float32 (only numpy's raw bfloat16 records are viewed)."""
    from ema_core.jax import load_state_dict, state_dict

    saved = state_dict(ema.init({"w": jax.numpy.ones(2, jax.numpy.float32)}))
    saved["shadow/w"] = np.ones(2, np.int32)
    with pytest.raises(TypeError, match=r"has dtype int32, like has float32"):
        load_state_dict(saved, ema.init({"w": jax.numpy.zeros(2, jax.numpy.float32)}))


def test_the_stateless_cache_drops_its_least_recently_used_entry() -> None:
    """Five nests, each called three times in a row, into a cache of four: the first goes,
    the four latest stay (the newest entry is never the one dropped)."""
    from ema_core import _stateless

    _stateless.clear()
    nests = [({"w": np.zeros(3)}, {"w": np.ones(3)}) for _ in range(_stateless.SIZE + 1)]
    for shadow, params in nests:
        for t in (1, 2, 3):
            ema.ema_update(shadow, params, t, decay=0.5)
    kept = [entry.ids for entry in _stateless._ENTRIES.values()]
    assert kept == [[id(s["w"]), id(p["w"])] for s, p in nests[1:]]
    _stateless.clear()

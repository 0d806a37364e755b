"""Resume promises a hunt of 2026-12-05 found broken, each pinned: a ``strict=False`` load of
a zeros-started EMA (a head added for fine-tuning) read the tensors it does not load through
the loaded weight (a biased average), and a packed JAX state could not be pickled once
updated; and what a model saved inside ``swap()`` holds (README: the averages)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ema_core as ema
from ema_core.checkpoint import load, save
from ema_core.torch import EMA

ZEROS = ema.Config(0.9, init="zeros")


def _body_state() -> dict:
    torch.manual_seed(0)
    old = torch.nn.Sequential(torch.nn.Linear(2, 2))
    averager = EMA(old, config=ZEROS)
    for _ in range(29):
        averager.update()
    return averager.state_dict()


@pytest.mark.parametrize("updated_first", [False, True])
def test_a_torch_head_the_load_leaves_reads_its_own_value(updated_first: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    averager = EMA(model, config=ZEROS)
    if updated_first:
        averager.update()
    averager.load_state_dict(_body_state(), strict=False)
    assert torch.allclose(averager.average["1.weight"], torch.ones(2, 2), rtol=1e-6, atol=0)
    for _ in range(5):
        averager.update()
    assert torch.allclose(averager.average["1.weight"], torch.ones(2, 2), rtol=1e-6, atol=0)


def _saved(tmp_path: Path) -> Path:
    state = ema.init({"body": np.zeros(2, np.float32)}, ZEROS)
    for _ in range(29):
        state = ema.update(state, {"body": np.ones(2, np.float32)}, ZEROS)
    return save(tmp_path / "ema.safetensors", state, config=ZEROS)


PARAMS = {"body": np.ones(2, np.float32), "head": np.ones(2, np.float32)}


@pytest.mark.parametrize("correction", ["exact", "power"])
def test_a_state_leaf_the_load_keeps_keeps_its_average(tmp_path: Path, correction: str) -> None:
    config = ema.Config(0.9, init="zeros", correction=correction)
    state = ema.init({"body": np.zeros(2, np.float32)}, config)
    for _ in range(29):
        state = ema.update(state, {"body": np.ones(2, np.float32)}, config)
    path = save(tmp_path / "ema.safetensors", state, config=config)
    like = ema.init({k: np.zeros(2, np.float32) for k in PARAMS}, config)
    for _ in range(3):
        like = ema.update(like, PARAMS, config)
    loaded = load(path, like, config=config, strict=False)
    assert np.allclose(ema.average(loaded, config)["head"], 1.0, rtol=1e-6, atol=0)
    for _ in range(5):
        loaded = ema.update(loaded, PARAMS, config)
    assert np.allclose(ema.average(loaded, config)["head"], 1.0, rtol=1e-6, atol=0)


def test_a_fresh_zeros_like_with_a_leaf_the_load_keeps_is_refused(tmp_path: Path) -> None:
    like = ema.init({k: np.zeros(2, np.float32) for k in PARAMS}, ZEROS)
    with pytest.raises(ValueError, match=r"like has no update yet .* update like once"):
        load(_saved(tmp_path), like, config=ZEROS, strict=False)


def test_without_a_config_differing_weights_with_kept_leaves_are_refused(tmp_path: Path) -> None:
    like = ema.update(ema.init({k: np.zeros(2, np.float32) for k in PARAMS}, ZEROS), PARAMS, ZEROS)
    with pytest.raises(ValueError, match=r"pass config= so that"):
        load(_saved(tmp_path), like, strict=False)
    both = load(_saved(tmp_path), ema.init({"body": np.zeros(2, np.float32)}, ZEROS))
    assert float(both.weight) == pytest.approx(1 - 0.9**29)


def test_a_copy_started_state_loads_loosely_without_a_config(tmp_path: Path) -> None:
    config = ema.Config(0.9)
    state = ema.update(ema.init({"body": np.zeros(2)}, config), {"body": np.ones(2)}, config)
    path = save(tmp_path / "ema.safetensors", state, config=config)
    like = ema.init({"body": np.zeros(2), "head": np.full(2, 3.0)}, config)
    loaded = load(path, like, strict=False)
    assert np.array_equal(loaded.shadow["head"], [3.0, 3.0])
    assert np.allclose(loaded.shadow["body"], 0.1)


def test_a_pair_saved_inside_swap_holds_the_averages_as_the_models_weights() -> None:
    """README: inside ``swap()`` a model saved with its EMA holds the averages, and the live
    weights are in no file; saved outside, the live weights."""
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    averager = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    averager.update()
    for inside, want in ((False, 4.0), (True, 2.0)):
        buffer = io.BytesIO()
        if inside:
            with averager.swap():
                torch.save({"model": model, "ema": averager}, buffer)
        else:
            torch.save({"model": model, "ema": averager}, buffer)
        buffer.seek(0)
        got = torch.load(buffer, weights_only=False)
        assert torch.equal(got["model"].weight, torch.full((1, 2), want))
        assert torch.equal(got["ema"].average["weight"], torch.full((1, 2), 2.0))
    assert torch.equal(model.weight, torch.full((1, 2), 4.0))


def test_a_packed_state_pickles_after_an_update() -> None:
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from ema_core.jax import make_update, pack

    params = {"a": jnp.ones(3), "b": jnp.full((2, 2), 2.0)}
    config = ema.Config(0.5)
    state = pack(ema.init(params, config))
    step = make_update(config, donate=False)
    state = step(state, params)
    again = pickle.loads(pickle.dumps(state))
    host = jax.device_put(pickle.loads(pickle.dumps(jax.device_get(state))))
    for copy in (again, host):
        assert jax.tree_util.tree_structure(copy) == jax.tree_util.tree_structure(state)
        out = step(copy, params)
        assert all(
            np.array_equal(x, y)
            for x, y in zip(
                jax.tree_util.tree_leaves(out),
                jax.tree_util.tree_leaves(step(state, params)),
                strict=True,
            )
        )


def test_a_weight_0_state_loaded_into_a_fresh_ema_leaves_the_kept_shadows_alone() -> None:
    """Neither has updated: nothing to carry, and a non-finite param (``to_empty`` before
    ``reset_parameters``) must not turn its shadow into NaN for good."""
    source = EMA(torch.nn.Sequential(torch.nn.Linear(2, 2)), config=ZEROS)
    state = source.state_dict()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    averager = EMA(model, config=ZEROS)
    averager.load_state_dict(state, strict=False)
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    for _ in range(3):
        averager.update()
    assert torch.allclose(averager.average["1.weight"], torch.ones(2, 2), rtol=1e-6, atol=0)


def test_a_kept_bf16_shadow_starts_at_the_value_rounded_once() -> None:
    """``param * weight`` rounded once into the bf16 shadow, as ``init="copy"`` rounds the
    param once (copying, then scaling in bf16, rounded twice)."""
    config = ema.Config(0.9, init="zeros", dtype="bfloat16")
    body = torch.nn.Linear(4, 4)
    source = EMA(torch.nn.Sequential(body), config=config)
    for _ in range(3):
        source.update()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(64, 64))
    averager = EMA(model, config=config)
    averager.load_state_dict(source.state_dict(), strict=False)
    weight = float(averager.state_dict()["weight"])
    want = (model[1].weight.detach() * weight).to(torch.bfloat16)
    assert torch.equal(averager._bound.shadows[averager.names.index("1.weight")], want)


def test_a_packed_state_pickled_in_one_process_matches_a_fresh_one_in_another(
    tmp_path: Path,
) -> None:
    """The tree's hash is per process: a restored layout must compare equal to a new one."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import pickle, sys, jax, jax.numpy as jnp, ema_core as ema
        from ema_core.jax import make_update, pack
        params = {"a": jnp.ones(3), "b": jnp.full((2, 2), 2.0)}
        config = ema.Config(0.5)
        fresh = pack(ema.init(params, config))
        if sys.argv[1] == "save":
            state = make_update(config)(fresh, params)
            pickle.dump(jax.device_get(state), open(sys.argv[2], "wb"))
        else:
            old = jax.device_put(pickle.load(open(sys.argv[2], "rb")))
            same = jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(fresh)
            jax.tree_util.tree_map(lambda x, y: x, old, fresh)  # refused if the metadata differ
            print(same, old.layout == fresh.layout)
        """
    )
    path = str(tmp_path / "state.pkl")
    run = [sys.executable, "-c", script]
    subprocess.run([*run, "save", path], check=True)
    out = subprocess.run([*run, "load", path], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True"]


def test_a_kept_float32_shadow_of_a_float64_param_starts_rounded_once() -> None:
    config = ema.Config(0.9, init="zeros", dtype="float32")
    source = EMA(torch.nn.Sequential(torch.nn.Linear(4, 4).double()), config=config)
    for _ in range(3):
        source.update()
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).double(), torch.nn.Linear(64, 64).double())
    averager = EMA(model, config=config)
    averager.load_state_dict(source.state_dict(), strict=False)
    weight = float(averager.state_dict()["weight"])
    want = (model[1].weight.detach() * weight).to(torch.float32)
    assert torch.equal(averager._bound.shadows[averager.names.index("1.weight")], want)

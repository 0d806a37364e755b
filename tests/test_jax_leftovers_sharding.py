"""Sharding leftovers of ``make_update`` (8 CPU devices, one subprocess: the device count is
fixed when JAX starts): a shadow sharded otherwise than its param is refused naming the leaf and
both shardings, with nothing donated, in a later chunk of the chunked path and on meshes of
``AxisType.Auto`` axes (a bank's too); the once-per-signature check still sees params turning
committed. In process: the steady state does not walk the trees again."""

from __future__ import annotations

from typing import Any

import pytest

from tests.scaling_out import eight_devices

pytest.importorskip("jax")

CASES = [
    "explicit_later_chunk",
    "auto_later_chunk",
    "auto_one_call",
    "auto_replicated_and_other_mesh",
    "auto_mismatch_after_steps",
    "auto_bank",
    "uncommitted_then_committed",
    "partly_on_a_mesh",
    "uncommitted_beside_one_device",
    "state_before_device_put",
]


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return eight_devices(["-m", "tests.jax_sharding_leftovers_worker"], CASES, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_case(results: dict[str, str], case: str) -> None:
    assert results.get(case) == "ok", results.get(case, f"not run; ran {sorted(results)}")


@pytest.mark.parametrize("chunk", [None, 2])
def test_steady_state_checks_once_per_signature(monkeypatch: Any, chunk: int | None) -> None:
    import jax.numpy as jnp
    import numpy as np

    import ema_core as ema
    from ema_core.jax import _chunked, _placement, make_update

    if chunk is not None:
        monkeypatch.setattr(_chunked, "CHUNK", chunk)
    walks: list[int] = []
    real = _placement.check_shardings
    monkeypatch.setattr(_placement, "check_shardings", lambda *a: walks.append(1) or real(*a))
    config = ema.Config(schedule=0.5)
    update = make_update(config)
    params = {k: jnp.full(2, float(i)) for i, k in enumerate("abcde")}
    state = ema.init(params, config)
    for _ in range(4):
        state = update(state, params)
    assert len(walks) == 1  # the first call's; its signature then holds
    state = update(state, {**params, "a": jnp.ones(3)[:2]})  # new arrays, same shardings
    assert len(walks) == 1
    state = update(state, {**params, "e": np.full(2, 6.0, np.float32)})  # a numpy leaf: new
    assert len(walks) == 2
    assert state.shadow["e"].tolist() == [5.0, 5.0] and int(state.step) == 6

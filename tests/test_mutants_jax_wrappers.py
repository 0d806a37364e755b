"""Mutation-audit tests of the JAX adapter's wrappers (``make_update``'s one-call and chunked
paths, the checks made before a call donates anything, the placement checks, the ``.npz``
checkpoints); each kills a small plausible bug the rest of the suite let through."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import ema_core as ema  # noqa: E402
from ema_core.jax import _chunked, _placement, make_update  # noqa: E402

CONFIG = ema.Config(schedule=0.5)
INT_MAX = np.iinfo(np.int32).max


def _tree(n: int) -> dict[str, Any]:
    return {f"l{i}": jnp.full(2, float(i)) for i in range(n)}


def test_up_to_chunk_params_take_one_compiled_call(monkeypatch: Any) -> None:
    """``CHUNK`` params exactly still take the one compiled call; one more takes the chunks."""
    monkeypatch.setattr(_chunked, "CHUNK", 2)
    runs: list[int] = []
    real = _chunked.Chunked.run
    monkeypatch.setattr(
        _chunked.Chunked, "run", lambda self, *a: runs.append(len(a[1])) or real(self, *a)
    )
    for n in (2, 3):
        params = _tree(n)
        make_update(CONFIG)(ema.init(params, CONFIG), params)
    assert runs == [3]


def test_a_numpy_unsigned_step_past_int32_saturates_instead_of_wrapping() -> None:
    """A 0-d numpy ``uint64`` step is a host integer too: saturated at JAX's int32 top before
    the call, not narrowed to 32 bits by the jit (2**32 + 5 would become 5)."""
    state = ema.init({"w": jnp.zeros(2)}, CONFIG)._replace(step=np.asarray(2**32 + 5, np.uint64))
    new = make_update(CONFIG)(state, {"w": jnp.ones(2)})
    assert int(new.step) == INT_MAX
    assert new.step.dtype == jnp.int32


def test_the_chunked_path_checks_placement_again_when_params_turn_committed(
    monkeypatch: Any,
) -> None:
    """Same shardings, but the params are now committed: the once-per-signature check of the
    chunked path looks at the devices again (a committed array is checked more strictly)."""
    monkeypatch.setattr(_chunked, "CHUNK", 2)
    walks: list[int] = []
    real = _placement.check_devices
    monkeypatch.setattr(_placement, "check_devices", lambda *a: walks.append(1) or real(*a))
    update = make_update(CONFIG)
    params = _tree(3)
    state = ema.init(params, CONFIG)
    for _ in range(3):  # the state turns committed after the first call; then steady
        state = update(state, params)
    before = len(walks)
    committed = jax.device_put(params, jax.devices()[0])
    update(state, committed)
    assert len(walks) == before + 1


def test_a_shadow_on_another_mesh_over_the_same_device_is_refused_by_name() -> None:
    """Two meshes over one device, both replicated: equivalent shardings, but JAX refuses two
    meshes in one call; the update names the leaf before anything is donated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    one, other = jax.make_mesh((1,), ("a",)), jax.make_mesh((1,), ("b",))
    state = ema.init({"w": jax.device_put(jnp.zeros(2), NamedSharding(one, P()))}, CONFIG)
    params = {"w": jax.device_put(jnp.ones(2), NamedSharding(other, P()))}
    with pytest.raises(ValueError, match=r"state\.shadow\['w'\] is sharded .* nothing was donated"):
        make_update(CONFIG)(state, params)
    assert not state.shadow["w"].is_deleted()


def test_npz_load_keeps_an_uncommitted_like_uncommitted() -> None:
    """Loading into a state of uncommitted arrays gives uncommitted arrays, as ``like``."""
    from ema_core.jax import load_state_dict, state_dict

    like = ema.init({"w": jnp.zeros(2)})
    assert not any(x.committed for x in jax.tree_util.tree_leaves(like))
    loaded = load_state_dict(state_dict(ema.init({"w": jnp.ones(2)})), like)
    assert not any(x.committed for x in jax.tree_util.tree_leaves(loaded))
    assert loaded.shadow["w"].tolist() == [1.0, 1.0]

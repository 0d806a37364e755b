"""Tests that the third mutation-testing audit (the host engine and its bank, the torch host
routes, the JAX leaves, the generic backend) found missing: each kills a small plausible bug
that the rest of the suite let through."""

from __future__ import annotations

import numpy as np
import pytest

from ema_core.backends import host
from ema_core.backends.host import _bank, _numba, _threads

pytestmark = pytest.mark.usefixtures("host_kernels")


def test_the_engine_refuses_a_read_only_shadow_before_writing() -> None:
    """A read-only shadow is refused when the plan is made (naming it), not found read-only
    part-way through an update."""
    shadow = np.zeros(4, np.float32)
    shadow.flags.writeable = False
    with pytest.raises(ValueError, match="shadow #0: a writeable float array is needed"):
        host.plan([shadow], [np.ones(4, np.float32)])


def test_work_below_least_elements_a_thread_stays_on_one_thread() -> None:
    """``share`` deals no run fewer than ``least`` elements: 3000 elements over 8 workers make
    3 runs at least=1000, 2 at 1001, and one when there are fewer than ``least``."""
    leaf = _threads.Leaf(np.zeros(3000, np.float32), np.zeros(3000, np.float32), "float")
    assert len(_threads.share([leaf], 8, least=1000, grain=8)) == 3
    assert len(_threads.share([leaf], 8, least=1001, grain=8)) == 2
    assert len(_threads.share([leaf], 8, least=4000, grain=8)) == 1


def test_a_large_flat_leaf_is_cut_into_whole_grains() -> None:
    """A flat leaf cut over threads is cut at multiples of ``grain`` (the blocks the loops
    run whole), and its pieces cover it in order."""
    leaf = _threads.Leaf(np.arange(1000.0), np.zeros(1000), "float")
    shares = _threads.share([leaf], 4, least=10, grain=16)
    pieces = [piece for run in shares for piece in run]
    assert len(pieces) > 1
    assert all(piece.shadow.size % 16 == 0 for piece in pieces[:-1])
    assert np.array_equal(np.concatenate([piece.shadow for piece in pieces]), leaf.shadow)


def test_a_large_strided_leaf_is_cut_into_slabs_that_cover_every_row() -> None:
    """A strided leaf cut over threads is cut into slabs of whole rows: every row is in
    exactly one piece, in order (none dropped at the end)."""
    shadow = np.arange(410.0).reshape(41, 10)[:, ::2]  # not contiguous; 2-row slabs and 1 left
    leaf = _threads.Leaf(shadow, np.zeros((41, 5)), "float")
    shares = _threads.share([leaf], 4, least=10, grain=4)
    pieces = [piece for run in shares for piece in run]
    assert len(pieces) > 1
    assert np.array_equal(np.concatenate([piece.shadow for piece in pieces]), shadow)


def test_a_table_needs_a_compiled_loop_for_every_leaf() -> None:
    """``_numba.table`` makes one compiled call only when every leaf has a loop: a read-only
    shadow among them makes it None (not a table that leaves that leaf out)."""
    ok = (np.zeros(4, np.float32), np.ones(4, np.float32), "float")
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    assert _numba.table([ok, (frozen, np.ones(4, np.float32), "float")]) is None
    if _numba.usable():
        assert _numba.table([ok, ok]) is not None


def test_a_torch_lerp_form_needs_params_of_the_shadows_dtype() -> None:
    """The torch ``lerp_`` forms only mirror torch on same-dtype pairs: a plan with one over
    float16 params into float32 shadows is refused when made."""
    shadows = [[np.zeros(4, np.float32)]]
    with pytest.raises(ValueError, match="torch forms: the same dtype"):
        _bank.plan(shadows, [np.ones(4, np.float16)], form="lerp-fma")


def test_jax_leaves_under_freeze_keep_their_first_integer_value() -> None:
    """JAX ``non_float="freeze"``: an integer leaf keeps the value it started with (the JAX
    leaf kernel does not copy the params' over it), eagerly and under ``make_update``."""
    jnp = pytest.importorskip("jax.numpy")
    import ema_core
    from ema_core.jax import make_update

    config = ema_core.Config(schedule=0.5, non_float="freeze")
    start, now = {"w": jnp.ones(2), "n": jnp.array(3)}, {"w": jnp.zeros(2), "n": jnp.array(7)}
    eager = ema_core.update(ema_core.init(start, config), now, config)
    jitted = make_update(config)(ema_core.init(start, config), now)
    for state in (eager, jitted):
        assert int(state.shadow["n"]) == 3
        assert state.shadow["w"].tolist() == [0.5, 0.5]

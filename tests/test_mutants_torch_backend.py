"""Tests that the mutation audit of the backends' memory helpers and leaf routes
(``backends/torch/_memory.py``, ``_foreach.py``, ``backends/generic.py``,
``backends/_numpy_memory.py``) found missing: each kills a small plausible bug that the rest
of the suite let through."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ema_core.backends import generic
from ema_core.backends._numpy_memory import leaf_signature

torch = pytest.importorskip("torch")

from ema_core.backends.torch import _memory  # noqa: E402


def test_a_strided_tensor_whose_last_element_lost_its_storage_is_short() -> None:
    """Every other element of 5 reaches the 5th: with the storage shrunk to 4 elements (or
    3, which covers as many elements as the view has) the last one is gone, and
    ``short_memory`` says so; with all 5 it holds them."""
    base = torch.arange(5.0)
    t = base[::2]
    assert _memory.short_memory(t) is None
    for kept in (4, 3):
        base.untyped_storage().resize_(kept * 4)
        why = _memory.short_memory(t)
        assert why is not None and "needs 20" in why, kept


def test_generic_update_with_writes_hands_back_the_shadows_themselves() -> None:
    """With ``writes`` the new values go into the shadows and the shadows themselves are
    handed back (a caller keeps using those arrays), not the computed arrays."""
    shadows = [np.zeros(3), np.zeros(2, np.int64)]
    params = [np.ones(3), np.full(2, 7)]
    out = generic.update_leaves(
        np, shadows, params, ["float", "exact"], 0.5, 0.5, non_float="copy", writes=[True, True]
    )
    assert out[0] is shadows[0] and out[1] is shadows[1]
    assert np.array_equal(shadows[0], np.full(3, 0.5)) and np.array_equal(shadows[1], params[1])


@pytest.mark.parametrize("non_float", ["freeze", "error"])
def test_generic_update_keeps_integer_leaves_unless_told_to_copy(non_float: str) -> None:
    """Only ``non_float="copy"`` copies integer leaves; under the other policies the
    shadow is handed back as it is, its values untouched."""
    shadow = np.array([1, 2], np.int64)
    (out,) = generic.update_leaves(
        np, [shadow], [np.array([7, 8])], ["exact"], 0.5, 0.5, non_float=non_float, writes=[True]
    )
    assert out is shadow and shadow.tolist() == [1, 2]


def test_generic_guard_turns_numpy_float_errors_off() -> None:
    """Inside ``guard`` an inf minus an inf gives NaN silently, not a ``RuntimeWarning``
    (an error under ``-W error``) after some leaves are written."""
    inf = np.array([np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with generic.guard():
            assert np.isnan(inf - inf)[0]


def test_the_plan_signature_sees_a_change_of_writeable_or_of_strides() -> None:
    """An array made read-only, or another array of the same shape and dtype laid out in
    Fortran order, has another signature: a plan made for the first is not reused."""
    a = np.zeros((2, 3), np.float32)
    before = leaf_signature([a])
    assert leaf_signature([np.asfortranarray(a)]) != before
    a.flags.writeable = False
    assert leaf_signature([a]) != before


def test_a_large_half_leaf_without_numba_blends_at_one_half_as_the_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without numba a large bfloat16 leaf under a float32 shadow takes torch's blocked ops:
    at a decay of exactly 0.5 they use the core's formula for it, ``s + (p - s) * 0.5``, bit
    for bit: an inf param gives an inf average (``p - (p - s) * 0.5`` would give NaN)."""
    import array_api_compat.torch as xp

    from ema_core import Config, _core
    from ema_core.torch import EMA

    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    decay = 0.5
    torch.manual_seed(6)
    tensors = {"w": (torch.randn(1 << 18) * 3).bfloat16()}
    ema = EMA(tensors, config=Config(schedule=decay, init="params"), dtype=torch.float32)
    ema.update()  # init="params": the first update copies
    tensors["w"].mul_(-1.5)[:2] = torch.tensor([float("inf"), -float("inf")])
    before = ema.average["w"].clone()
    want = _core.blend(xp, before, tensors["w"], decay, 1.0 - decay)
    ema.update()
    assert torch.equal(ema.average["w"].view(torch.int32), want.view(torch.int32))

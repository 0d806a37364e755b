"""Tests that kill mutants of the 4110f77 (JAX numpy state placement, donation of a shadow that
is the params) and aacd7b3 (torch non-persistent buffers, float8, lazy, expanded swap targets,
host step counters, rebind messages) fixes, which the hostile probes left alive."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import checkpoint

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from ema_core.jax import make_bank_update, make_update  # noqa: E402
from ema_core.torch import EMA  # noqa: E402
from tests.xla_compiles import counting_compiles  # noqa: E402

CFG = ema.Config(schedule=ema.schedules.warmup(0.99))


# ---- JAX: a numpy state beside committed params ----


@pytest.mark.parametrize("entry", ["make_update", "make_bank_update"])
def test_a_host_snapshot_beside_committed_params_resumes_with_one_compilation(entry: str) -> None:
    """Params committed to their one device (``jax.device_put(params, device)``): a numpy
    state (``jax.device_get``) is put on that device before the first call, so the second call
    (whose state the update returned, committed there) does not compile again."""
    device = jax.devices()[0]
    params = jax.device_put({"w": jnp.ones(3)}, device)
    assert params["w"].committed
    if entry == "make_update":
        update: Any = make_update(CFG)
        state = update(ema.init(params, CFG), params)
    else:
        update = make_bank_update((CFG,))
        state = update(update.init(params), params)
    state = jax.device_get(state)
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(state))
    targets = [jax.device_put({"w": jnp.full(3, float(i))}, device) for i in range(3)]
    state = update(state, targets[0])
    with counting_compiles() as seen:
        for target in targets[1:]:
            state = update(state, target)
        jax.block_until_ready(state)
    assert len(seen) == 0


def test_a_host_snapshot_updated_with_numpy_params_is_placed_and_averaged() -> None:
    """Numpy params (no placement of their own) beside a numpy state: the state goes to the
    default device and the update averages them (numpy params are not read as committed)."""
    params = {"w": np.full(3, 2.0, np.float32)}
    update = make_update(CFG)
    state = jax.device_get(update(ema.init({"w": np.zeros(3, np.float32)}, CFG), params))
    new = update(state, params)
    assert isinstance(new.shadow["w"], jax.Array) and int(new.step) == 2
    expected = ema.update(state, params, CFG).shadow["w"]
    ulps = 4 * float(np.finfo(np.float32).eps)  # jitted vs eager: another fusion of one rule
    np.testing.assert_allclose(np.asarray(new.shadow["w"]), np.asarray(expected), rtol=ulps)


def test_an_ema_reset_to_committed_params_is_copied_before_donating() -> None:
    """``state._replace(shadow=params)`` with params committed to their device (every state
    array committed, so no placement is needed): the shadow is still copied before the
    donated update, which averages and leaves the params alive."""
    params = jax.device_put({"w": jnp.full(3, 2.0)}, jax.devices()[0])
    update = make_update(CFG)
    state = update(ema.init({"w": jnp.zeros(3)}, CFG), {"w": jnp.zeros(3)})
    new = update(state._replace(shadow=params), params)
    assert not params["w"].is_deleted()
    np.testing.assert_array_equal(np.asarray(new.shadow["w"]), np.full(3, 2.0, np.float32))
    assert int(new.step) == 2


def test_a_deleted_leaf_of_an_uncommitted_state_is_named() -> None:
    """A fresh ``init`` over uncommitted params (committed before its first call) with a
    shadow leaf deleted: the update names the leaf with a ValueError (JAX's error on placing
    a deleted array names nothing)."""
    params = {"w": jnp.ones(3), "v": jnp.ones(2)}
    state = ema.init(params, CFG)
    assert not state.shadow["v"].committed
    state.shadow["w"].delete()
    with pytest.raises(ValueError, match=r"shadow\['w'\]"):
        make_update(CFG)(state, params)


def test_a_bank_whose_state_is_reset_to_the_params_is_copied_before_donating() -> None:
    """``make_bank_update``: a state reset to the params (its shadow is the params' arrays)
    is copied before the donated update, as for ``make_update``; the params stay alive."""
    params = {"w": jnp.full(3, 2.0)}
    bank = make_bank_update((CFG, CFG))
    states = bank(bank.init({"w": jnp.zeros(3)}), {"w": jnp.zeros(3)})
    reset = (states[0]._replace(shadow=params), states[1])
    new = bank(reset, params)
    assert not params["w"].is_deleted()
    np.testing.assert_array_equal(np.asarray(new[0].shadow["w"]), np.full(3, 2.0, np.float32))
    assert int(new[0].step) == 2


# ---- torch: non-persistent buffers of a submodule ----


class _Rotary(nn.Module):
    """A Linear and a non-persistent float buffer (as rotary ``inv_freq``)."""

    def __init__(self, persistent: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 2)
        self.register_buffer("inv_freq", torch.arange(3.0), persistent=persistent)


class _Plain(nn.Module):
    """``_Rotary`` without its buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)


def _stepped(model: nn.Module) -> EMA:
    ema_ = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(4.0)
    ema_.update()
    return ema_


def test_a_nested_non_persistent_buffer_is_left_out_of_the_export() -> None:
    """A non-persistent buffer of a submodule (``blocks.0.inv_freq``) is named with its
    module's prefix: the export leaves it out as ``module.state_dict()`` does, and the
    export loads strictly into a fresh model."""
    model = nn.Sequential(_Rotary(), _Rotary())
    ema_ = _stepped(model)
    assert "0.inv_freq" in ema_.names and "1.inv_freq" in ema_.names
    exported = checkpoint.export(ema_, format="state_dict")
    assert sorted(exported) == sorted(model.state_dict())
    nn.Sequential(_Rotary(), _Rotary()).load_state_dict(exported)


def test_copy_to_a_module_lacking_a_non_persistent_buffer_is_refused_by_name() -> None:
    """Only a mapping or pairs (``model.state_dict()``) may lack a non-persistent buffer: a
    module target that lacks it is refused by name, before any write."""
    ema_ = _stepped(_Rotary())
    target = _Plain()
    before = target.lin.weight.detach().clone()
    with pytest.raises(ValueError, match="'inv_freq'"):
        ema_.copy_to(target)
    assert torch.equal(target.lin.weight, before)


def test_a_mapping_that_holds_a_non_persistent_buffer_has_it_checked_before_any_write() -> None:
    """A mapping that does hold the non-persistent name (``named_buffers()`` merged in) gets
    it checked like any other target: one of another shape is refused by name, nothing
    written."""
    ema_ = _stepped(_Rotary())
    target = dict(_Rotary().state_dict())
    target["inv_freq"] = torch.zeros(5)
    before = {k: v.clone() for k, v in target.items()}
    with pytest.raises(ValueError, match="'inv_freq'"):
        ema_.copy_to(target)
    assert all(torch.equal(target[k], before[k]) for k in target)


# ---- torch: swap into expanded tensors ----


class _ExpandedBuffer(nn.Module):
    """A parameter and an expanded (stride-0) float buffer, averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.register_buffer("b", torch.ones(1, 3).expand(4, 3))


def test_swap_copy_false_refuses_an_expanded_buffer_before_any_write() -> None:
    """With ``swap(copy=False)`` a buffer (not a plain Parameter) is still written by copy:
    an expanded one is refused by name before the parameter beside it moves."""
    model = _ExpandedBuffer()
    ema_ = EMA(model, decay=0.5, buffers="average")
    with torch.no_grad():
        model.a.fill_(4.0)
    ema_.update()
    with pytest.raises(ValueError, match="'b'"), ema_.swap(copy=False):
        pass
    assert bool((model.a == 4.0).all())


def test_swap_copy_false_points_an_expanded_plain_parameter_at_its_average() -> None:
    """``swap(copy=False)`` points a plain Parameter's ``.data`` at its shadow, so an
    expanded parameter (what the refusal's message offers) swaps and comes back."""
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(1, 3).expand(4, 3))
    ema_ = EMA(model, decay=0.5)
    ema_.update()
    with ema_.swap(copy=False):
        assert torch.equal(model.w, ema_.average["w"])
    assert model.w.stride() == (0, 1) and torch.equal(model.w, torch.ones(4, 3))


def test_a_stride_zero_dimension_of_size_one_is_not_expanded() -> None:
    """A stride of 0 over a dimension of one element shares no memory: ``swap()`` (by copy)
    and ``copy_to`` write into such a tensor."""
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(3).as_strided((1, 3), (0, 1)))
    ema_ = _stepped(model)
    with ema_.swap():
        assert torch.equal(model.w, ema_.average["w"])
    target = torch.zeros(3).as_strided((1, 3), (0, 1))
    ema_.copy_to({"w": target})
    assert torch.equal(target, ema_.average["w"])


# ---- torch: rebind message ----


def test_a_parameter_turned_into_a_copied_buffer_is_named_by_role() -> None:
    """The rebind refusal says what the tensor was and is: an averaged parameter before, a
    copied buffer now (``buffers="copy"``), with their dtypes."""
    model = nn.Linear(2, 2)
    ema_ = EMA(model, decay=0.5, buffers="copy")
    weight = model.weight.detach().clone()
    del model.weight
    model.register_buffer("weight", weight)
    with pytest.raises(ValueError) as info:
        ema_.update()
    message = str(info.value)
    assert "is a copied torch.float32 buffer now" in message
    assert "was an averaged torch.float32 parameter" in message


# ---- torch: host step counters of other integer dtypes ----


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_a_loaded_host_counter_keeps_its_dtype_and_is_not_the_state_dict_s(
    dtype: torch.dtype,
) -> None:
    """A CPU counter of another integer dtype than int64 loads back as a 0-d tensor of that
    dtype, a copy: writing into the loaded ``state_dict`` afterwards does not move the resumed
    EMA's counter."""
    model = nn.Linear(2, 2)
    ema_ = EMA(model, decay=0.5)
    ema_.update(step=torch.tensor(3, dtype=dtype))
    saved = ema_.state_dict()
    resumed = EMA(model, decay=0.5)
    resumed.load_state_dict(saved)
    step: Any = resumed.state_dict()["step"]
    assert isinstance(step, torch.Tensor) and step.dtype == dtype and int(step) == 3
    saved["step"].fill_(100)  # the caller's dict, reused (an in-place load of the next one)
    resumed.update()
    assert int(resumed.state_dict()["step"]) == 4


class _SharedBuffer(nn.Module):
    """One tensor registered as a non-persistent buffer (first) and a persistent one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.lin = nn.Module(), nn.Module(), nn.Linear(2, 2)
        table = torch.arange(3.0)
        self.a.register_buffer("x", table, persistent=False)
        self.b.register_buffer("x", table, persistent=True)


def test_an_export_keeps_a_persistent_alias_of_a_non_persistent_buffer() -> None:
    """The export gives the names ``module.state_dict()`` gives: a tensor tracked under its
    non-persistent first name (``a.x``) that the module also holds as a persistent buffer
    (``b.x``) is exported under ``b.x``, so the export loads strictly."""
    model = _SharedBuffer()
    exported = checkpoint.export(_stepped(model), format="state_dict")
    assert sorted(exported) == sorted(model.state_dict())


def test_a_float8_buffer_under_buffers_copy_is_copied_not_refused() -> None:
    """Only an averaged float8 tensor is refused: with ``buffers="copy"`` a float8 buffer is
    copied (no arithmetic in float8 needed), bit for bit."""
    model = nn.Linear(2, 2)
    model.register_buffer("scale", torch.full((3,), 0.5).to(torch.float8_e4m3fn))
    ema_ = EMA(model, decay=0.5, buffers="copy")
    with torch.no_grad():
        model.scale.copy_(torch.full((3,), 2.0).to(torch.float8_e4m3fn))
    ema_.update()
    average = ema_.average["scale"]
    assert average.dtype == torch.float8_e4m3fn
    assert torch.equal(average.view(torch.uint8), model.scale.view(torch.uint8))

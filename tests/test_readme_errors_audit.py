"""Audit of README "## Errors": each promise's error type, what its message names, and that
nothing (shadow bits, step, weight) changed when the error was raised."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ema_core as ema


def _bits(tree: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for k, v in tree.items():
        a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = a.tobytes() + str(a.dtype).encode() + str(a.shape).encode()
    return out


def _np_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    shadow = {"a": np.array([1.0, 2.0]), "b": np.array([3.0])}
    params = {"a": np.array([5.0, 6.0]), "b": np.array([7.0])}
    return shadow, params


def _state_bits(state: ema.EMAState) -> tuple[Any, ...]:
    return (
        _bits(state.shadow),
        np.asarray(state.step).tobytes(),
        np.asarray(state.weight).tobytes(),
    )


# --- config: a number or callable where a Config belongs ---------------------------------


@pytest.mark.parametrize("bad", [0.99, lambda t: 0.9], ids=["float", "callable"])
def test_config_not_a_config_every_numpy_entry(bad: Any) -> None:
    shadow, params = _np_pair()
    before = _bits(shadow)
    kind = type(bad).__name__
    with pytest.raises(TypeError, match=rf"config must be an ema_core\.Config, got {kind}"):
        ema.ema_update(shadow, params, 1, config=bad)
    assert _bits(shadow) == before
    hint = r"use ema_core\.Config\(0\.99\)" if kind == "float" else r"use ema_core\.Config\("
    with pytest.raises(TypeError, match=hint):
        ema.init(params, bad)
    state = ema.init(params, ema.Config(0.5))
    sbefore = _state_bits(state)
    with pytest.raises(TypeError, match=r"config must be an ema_core\.Config"):
        ema.update(state, params, bad)
    with pytest.raises(TypeError, match=r"config must be an ema_core\.Config"):
        ema.average(state, bad)
    assert _state_bits(state) == sbefore


# --- peers' keywords given to Config ------------------------------------------------------


@pytest.mark.parametrize(
    "word", ["decay", "beta", "momentum", "update_every", "debias", "use_buffers", "min_decay"]
)
def test_config_peer_keyword_is_type_error_naming_it(word: str) -> None:
    value = 0.99 if word in {"decay", "beta", "momentum", "min_decay"} else 1
    with pytest.raises(TypeError, match=rf"Config has no argument {word} \(got {word}="):
        ema.Config(**{word: value})


# --- a non-array leaf ---------------------------------------------------------------------


def test_non_array_leaf_numpy_entries_name_path_and_write_nothing() -> None:
    shadow = {"a": np.array([1.0]), "n_layers": np.array([2.0])}
    params = {"a": np.array([9.0]), "n_layers": 3}
    before = _bits(shadow)
    msg = r"params\['n_layers'\] must be an array, got int: convert it"
    with pytest.raises(TypeError, match=msg):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before
    with pytest.raises(TypeError, match=msg):
        ema.init(params, ema.Config(0.5))
    state = ema.init({"a": np.array([1.0]), "n_layers": np.array([2.0])}, ema.Config(0.5))
    sbefore = _state_bits(state)
    with pytest.raises(TypeError, match=msg):
        ema.update(state, params, ema.Config(0.5))
    assert _state_bits(state) == sbefore


def test_non_array_leaf_torch_entries() -> None:
    torch = pytest.importorskip("torch")
    shadow = {"a": torch.ones(2), "n_layers": torch.ones(1)}
    params = {"a": torch.zeros(2), "n_layers": 3}
    before = _bits(shadow)
    with pytest.raises(TypeError, match=r"params\['n_layers'\] must be an array, got int"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before


def test_non_array_leaf_make_update() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from ema_core.jax import make_update

    config = ema.Config(0.5)
    state = ema.init({"a": jnp.ones(2), "n_layers": jnp.ones(1)}, config)
    step = make_update(config, donate=True)
    with pytest.raises(TypeError, match=r"params\['n_layers'\] must be an array, got int"):
        step(state, {"a": jnp.zeros(2), "n_layers": 3})
    # not donated: the state is still readable and unchanged
    assert np.asarray(state.shadow["a"]).tolist() == [1.0, 1.0]
    assert int(state.step) == 0


# --- decay / step values ------------------------------------------------------------------


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan")])
def test_bad_decay_value_error_writes_nothing(decay: float) -> None:
    shadow, params = _np_pair()
    before = _bits(shadow)
    with pytest.raises(ValueError, match="decay"):
        ema.ema_update(shadow, params, 1, decay=decay)
    assert _bits(shadow) == before
    with pytest.raises(ValueError, match="decay"):
        ema.Config(decay)


def test_schedule_decay_checked_at_the_step_it_is_used() -> None:
    shadow, params = _np_pair()
    before = _bits(shadow)
    with pytest.raises(ValueError, match=r"1\.5"):
        ema.ema_update(shadow, params, 3, schedule=lambda t: 0.5 if t < 3 else 1.5)
    assert _bits(shadow) == before
    config = ema.Config(schedule=lambda t: 0.5 if t < 2 else 1.5)
    state = ema.init(params, config)
    state = ema.update(state, params, config)
    sbefore = _state_bits(state)
    with pytest.raises(ValueError, match=r"1\.5"):
        ema.update(state, params, config)
    assert _state_bits(state) == sbefore


@pytest.mark.parametrize("step", [-1, 1.5, np.float64(2.0)], ids=["neg", "float", "npfloat"])
def test_bad_step_numpy(step: Any) -> None:
    shadow, params = _np_pair()
    before = _bits(shadow)
    with pytest.raises((TypeError, ValueError), match="step"):
        ema.ema_update(shadow, params, step, decay=0.5)
    assert _bits(shadow) == before


def test_negative_step_is_value_error() -> None:
    shadow, params = _np_pair()
    with pytest.raises(ValueError, match="step"):
        ema.ema_update(shadow, params, -1, decay=0.5)


def test_huge_python_int_is_value_error_not_overflow() -> None:
    shadow, params = _np_pair()
    before = _bits(shadow)
    with pytest.raises(ValueError, match="decay"):
        ema.ema_update(shadow, params, 1, decay=10**400)
    assert _bits(shadow) == before
    with pytest.raises(ValueError, match="decay"):
        ema.Config(10**400)


def test_config_interval_at_most_int64_max() -> None:
    ema.Config(interval=2**63 - 1)
    with pytest.raises(ValueError, match="interval"):
        ema.Config(interval=2**63)


@pytest.mark.parametrize("preset", ["timm", "diffusers", "ema_pytorch"])
@pytest.mark.parametrize("value", [2**63 - 1, -(2**63) - 1])
def test_update_after_step_range(preset: str, value: int) -> None:
    factory = getattr(ema.presets, preset)
    factory(update_after_step=2**63 - 2)
    factory(update_after_step=-(2**63))
    with pytest.raises(ValueError, match="update_after_step"):
        factory(update_after_step=value)


# --- structures, shapes, dtypes, shared memory -------------------------------------------


def test_structure_names_first_differing_path() -> None:
    shadow = {"a": np.array([1.0]), "b": np.array([2.0])}
    params = {"a": np.array([3.0]), "c": np.array([4.0])}
    before = _bits(shadow)
    with pytest.raises((TypeError, ValueError), match=r"'[bc]'"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before


def test_shape_mismatch_names_leaf_and_writes_nothing() -> None:
    shadow = {"a": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])}
    params = {"a": np.array([3.0, 4.0]), "z": np.array([1.0, 2.0, 3.0])}
    before = _bits(shadow)
    with pytest.raises(ValueError, match=r"\['z'\]"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before


def test_float_shadow_for_int_leaf_refused() -> None:
    shadow = {"a": np.array([1.0]), "n": np.array([1.0])}
    params = {"a": np.array([3.0]), "n": np.array([2], dtype=np.int64)}
    before = _bits(shadow)
    with pytest.raises((TypeError, ValueError), match=r"\['n'\]"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before


def test_non_native_byte_order_refused() -> None:
    shadow = {
        "a": np.array([1.0]),
        "z": np.array([1.0], dtype=">f8" if np.little_endian else "<f8"),
    }
    params = {"a": np.array([3.0]), "z": np.array([2.0])}
    before = _bits(shadow)
    with pytest.raises((TypeError, ValueError), match=r"\['z'\]"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits(shadow) == before


def test_read_only_shadow_refused_before_any_write() -> None:
    ro = np.array([1.0])
    ro.flags.writeable = False
    shadow = {"a": np.array([1.0]), "z": ro}
    params = {"a": np.array([3.0]), "z": np.array([2.0])}
    before = _bits(shadow)
    with pytest.raises((TypeError, ValueError), match=r"\['z'\]"):
        ema.ema_update(shadow, params, 1, decay=0.5, copy=False)
    assert _bits(shadow) == before


def test_shadows_sharing_memory_refused() -> None:
    buf = np.array([1.0, 2.0, 3.0])
    shadow = {"a": buf[:2], "b": buf[1:]}
    params = {"a": np.array([5.0, 6.0]), "b": np.array([7.0, 8.0])}
    before = buf.copy()
    with pytest.raises(ValueError):
        ema.ema_update(shadow, params, 1, decay=0.5, copy=False)
    assert buf.tobytes() == before.tobytes()


def test_guard_finite_refuses_nan_params_and_changes_nothing() -> None:
    config = ema.Config(0.5, guard_finite=True)
    params = {"a": np.array([1.0, 2.0]), "z": np.array([3.0])}
    state = ema.init(params, config)
    sbefore = _state_bits(state)
    bad = {"a": np.array([4.0, 5.0]), "z": np.array([np.nan])}
    with pytest.raises(ValueError, match=r"\['z'\]"):
        ema.update(state, bad, config)
    assert _state_bits(state) == sbefore
    shadow = {"a": np.array([1.0, 2.0]), "z": np.array([3.0])}
    before = _bits(shadow)
    with pytest.raises(ValueError, match=r"\['z'\]"):
        ema.ema_update(shadow, bad, 1, config=config)
    assert _bits(shadow) == before


# --- state.weight and reading a zero-started state ---------------------------------------


_BAD_WEIGHTS = pytest.mark.parametrize(
    ("weight", "exc"),
    [("1.0", TypeError), (np.array(1, dtype=np.int64), TypeError), (np.ones(2), ValueError)],
    ids=["str", "int-array", "1d"],
)


@_BAD_WEIGHTS
def test_state_weight_checked_by_update(weight: Any, exc: type) -> None:
    config = ema.Config(0.5)
    state = ema.init({"a": np.array([1.0, 2.0])}, config)._replace(weight=weight)
    before = _bits(state.shadow)
    with pytest.raises(exc, match=r"state\.weight"):
        ema.update(state, {"a": np.array([3.0, 4.0])}, config)
    assert _bits(state.shadow) == before
    assert int(np.asarray(state.step)) == 0
    with pytest.raises(exc, match=r"state\.weight"):
        ema.average(state, ema.Config(0.5, init="zeros"))


@_BAD_WEIGHTS
def test_state_weight_checked_by_average_as_update_does(weight: Any, exc: type) -> None:
    config = ema.Config(0.5)
    state = ema.init({"a": np.array([1.0, 2.0])}, config)._replace(weight=weight)
    with pytest.raises(exc, match=r"state\.weight"):
        ema.update(state, {"a": np.array([3.0, 4.0])}, config)
    with pytest.raises(exc, match=r"state\.weight"):
        ema.average(state, config)


def test_make_update_refuses_bad_weight_before_donating() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from ema_core.jax import make_update

    config = ema.Config(0.5)
    state = ema.init({"a": jnp.ones(2)}, config)._replace(weight=jnp.ones(2))
    step = make_update(config, donate=True)
    with pytest.raises(ValueError, match="weight"):
        step(state, {"a": jnp.zeros(2)})
    assert np.asarray(state.shadow["a"]).tolist() == [1.0, 1.0]


def test_average_of_zero_started_state_with_other_config() -> None:
    zeros = ema.Config(0.5, init="zeros")
    params = {"a": np.array([2.0])}
    state = ema.update(ema.init(params, zeros), params, zeros)
    with pytest.raises(ValueError, match="zeros"):
        ema.average(state, ema.Config(0.5))
    # the config it was made with reads it, bias-corrected
    assert ema.average(state, zeros)["a"].tolist() == [2.0]


# --- imports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("EMA", "ema_core.torch"),
        ("EMABank", "ema_core.torch"),
        ("make_update", "ema_core.jax"),
        ("with_ema", "ema_core.jax"),
        ("ema_average", "ema_core.jax"),
    ],
)
def test_framework_names_import_error_points_to_subpackage(name: str, where: str) -> None:
    with pytest.raises(ImportError, match=rf"from {where} import {name}"):
        exec(f"from ema_core import {name}", {})


# --- torch EMA / EMABank ------------------------------------------------------------------


def _torch_model() -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Linear(2, 2)


def test_ema_update_given_module_list_or_tensor_is_type_error() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA, EMABank

    model = _torch_model()
    e = EMA(model, decay=0.5)
    bank = EMABank(model, sigma_rels=[0.05, 0.1])
    with torch.no_grad():
        model.weight.add_(1.0)
    for target in (e, bank):
        emas = [target] if target is e else list(target)
        snap = [{k: v.clone() for k, v in x.average.items()} for x in emas]
        with pytest.raises(TypeError, match=r"ema\.update\(t\)") as info:
            target.update(model, step=3)
        assert "Linear" in str(info.value)
        with pytest.raises(TypeError, match=r"ema\.update\(t\)"):
            target.update(list(model.parameters()))
        for x, old in zip(emas, snap, strict=True):
            now = x.average
            assert all(torch.equal(now[k], old[k]) for k in old)
            assert int(x.step) == 0


@pytest.mark.parametrize("bank", [False, True], ids=["EMA", "EMABank"])
def test_ema_update_given_tensor_with_dims_is_the_step_type_error(bank: bool) -> None:
    """README: "a tensor with dimensions is the `TypeError` of any step that is not a 0-d
    integer"; nothing is written."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA, EMABank

    model = _torch_model()
    target = EMABank(model, sigma_rels=[0.05]) if bank else EMA(model, decay=0.5)
    members = list(target) if bank else [target]
    before = [{k: v.clone() for k, v in m.average.items()} for m in members]
    with pytest.raises(TypeError, match=r"step must be a 0-d integer"):
        target.update(torch.ones(2))
    for m, saved in zip(members, before, strict=True):
        assert all(torch.equal(m.average[k], saved[k]) for k in saved) and m.step == 0


def test_init_and_average_name_a_freed_torch_leaf_by_path() -> None:
    """README: every entry validates before it writes: ``init`` of params and ``average`` of a
    zero-started state whose storage was freed are a ValueError naming the path (they copied
    unowned memory, a crash, before)."""
    torch = pytest.importorskip("torch")
    params = {"a": torch.ones(2), "z": torch.zeros(8, 8)}
    params["z"].untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"params\['z'\]: its storage holds 0 bytes"):
        ema.init(params, ema.Config(schedule=0.5))
    config = ema.Config(schedule=0.5, init="zeros")
    live = {"a": torch.ones(2), "z": torch.ones(8, 8)}
    state = ema.update(ema.init(live, config), live, config)
    state.shadow["z"].untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"state\.shadow\['z'\]: its storage holds 0 bytes"):
        ema.average(state, config)


def test_ema_of_parameters_generator_says_named_parameters() -> None:
    pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = _torch_model()
    with pytest.raises(TypeError, match=r"named_parameters\(\)"):
        EMA(model.parameters(), decay=0.5)


def test_include_keeping_nothing_shows_names() -> None:
    pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = _torch_model()
    with pytest.raises(ValueError, match="glob") as info:
        EMA(model, decay=0.5, include="nothing*")
    assert "weight" in str(info.value)


def test_lazy_module_parameter_named_at_build() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"0\.weight"):
        EMA(model, decay=0.5)


def test_load_state_dict_config_mismatch_names_field_first_and_loads_nothing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = _torch_model()
    other = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    other.update()
    sd = other.state_dict()
    e = EMA(model, decay=0.5)
    snap = {k: v.clone() for k, v in e.average.items()}
    with pytest.raises(
        ValueError, match=r"schedule\.decay: 0\.5 in this EMA, 0\.9 in state_dict"
    ) as info:
        e.load_state_dict(sd)
    message = str(info.value)
    assert message.index("schedule.decay") < message.index("Config(")
    assert all(torch.equal(e.average[k], snap[k]) for k in snap)
    assert int(e.step) == 0


def test_freed_storage_leaf_in_ema_update_writes_nothing() -> None:
    torch = pytest.importorskip("torch")
    shadow = {"a": torch.ones(2), "z": torch.ones(8, 8)}
    params = {"a": torch.zeros(2), "z": torch.zeros(8, 8)}
    params["z"].untyped_storage().resize_(0)
    before = _bits({"a": shadow["a"]})
    with pytest.raises(ValueError, match="storage holds 0 bytes"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits({"a": shadow["a"]}) == before


def test_freed_storage_leaf_in_ema_update_names_its_path() -> None:
    torch = pytest.importorskip("torch")
    shadow = {"a": torch.ones(2), "z": torch.ones(8, 8)}
    params = {"a": torch.zeros(2), "z": torch.zeros(8, 8)}
    params["z"].untyped_storage().resize_(0)
    before = _bits({"a": shadow["a"]})
    with pytest.raises(ValueError, match=r"\['z'\].*storage holds 0 bytes"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert _bits({"a": shadow["a"]}) == before


def test_freed_storage_state_shadow_in_update_names_its_path() -> None:
    torch = pytest.importorskip("torch")
    config = ema.Config(0.5)
    state = ema.init({"a": torch.ones(2), "z": torch.ones(8, 8)}, config)
    state.shadow["z"].untyped_storage().resize_(0)
    before = _bits({"a": state.shadow["a"]})
    with pytest.raises(ValueError, match=r"shadow\['z'\].*storage holds 0 bytes"):
        ema.update(state, {"a": torch.zeros(2), "z": torch.zeros(8, 8)}, config)
    assert _bits({"a": state.shadow["a"]}) == before
    assert int(state.step) == 0


def test_bank_index_type_and_range() -> None:
    pytest.importorskip("torch")
    from ema_core.torch import EMABank

    bank = EMABank(_torch_model(), sigma_rels=[0.05, 0.1])
    assert bank[-2] is bank.emas[0]
    assert bank[1] is bank.emas[1]
    for k in (2, -3):
        with pytest.raises(IndexError):
            bank[k]
    for k in ("0", 1.0, True, slice(0, 1)):
        with pytest.raises(TypeError):
            bank[k]


def test_bank_snapshot_dir_under_a_file_refused_at_build(tmp_path: Any) -> None:
    pytest.importorskip("torch")
    from ema_core.torch import EMABank

    f = tmp_path / "f"
    f.write_text("x")
    for bad in ("", f, f / "sub"):
        with pytest.raises(ValueError, match="snapshot_dir"):
            EMABank(_torch_model(), sigma_rels=[0.05], snapshot_every=1, snapshot_dir=bad)


# --- compat classes -----------------------------------------------------------------------


def test_paddle_restore_without_apply_is_runtime_error() -> None:
    from ema_core.compat.paddle import ExponentialMovingAverage

    w = np.full(2, 4.0, dtype=np.float32)
    e = ExponentialMovingAverage([("w", w)], decay=0.5)
    with pytest.raises(RuntimeError, match=r"apply\(\)"):
        e.restore()
    assert w.tolist() == [4.0, 4.0]


@pytest.mark.parametrize("decay", [1 - 1e-9, 1 - 2**-30])
def test_paddle_decay_rounding_to_one_without_counter(decay: float) -> None:
    from ema_core.compat.paddle import ExponentialMovingAverage

    assert float(np.float32(decay)) == 1.0
    w = np.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match="thres_steps"):
        ExponentialMovingAverage([("w", w)], decay=decay)
    ExponentialMovingAverage([("w", w)], decay=decay, thres_steps=1)


def test_tensorflow_zero_debias_decay_rounding_to_one() -> None:
    from ema_core.compat.tensorflow import ExponentialMovingAverage

    with pytest.raises(ValueError, match="num_updates"):
        ExponentialMovingAverage(1 - 1e-9, zero_debias=True)
    ExponentialMovingAverage(1 - 1e-9)  # without zero_debias no correction is divided by


def test_paddle_update_bad_parameters_changes_nothing() -> None:
    from ema_core.compat.paddle import ExponentialMovingAverage

    w = np.full(2, 4.0, dtype=np.float32)
    e = ExponentialMovingAverage([("w", w)], decay=0.5)
    e.update()
    before = _bits(e.average())
    with pytest.raises((TypeError, ValueError)):
        e.update([("w", np.ones(3, dtype=np.float32))])
    assert _bits(e.average()) == before


# --- JAX x64 ------------------------------------------------------------------------------


def test_make_update_refuses_numpy_float64_shadow_leaf() -> None:
    jax = pytest.importorskip("jax")
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on")
    jnp = jax.numpy
    from ema_core.jax import make_update

    config = ema.Config(0.5)
    state = ema.init({"a": jnp.ones(2)}, config)
    shadow = {"a": np.ones(2, dtype=np.float64)}
    state = state._replace(shadow=shadow)
    with pytest.raises(TypeError, match=r"\['a'\]"):
        make_update(config, donate=True)(state, {"a": jnp.zeros(2)})
    assert shadow["a"].tolist() == [1.0, 1.0]


# --- second batch: more entry points ------------------------------------------------------


def test_every_int_outside_int64_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"^n must be"):
        ema.schedules.every(0.9, n=2**63)
    ema.schedules.every(0.9, n=2)


def test_preset_gamma_huge_int_is_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="gamma"):
        ema.presets.ema_pytorch_karras(gamma=10**400)


def test_numpy_beside_jax_names_both_leaves_and_the_way_back() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    shadow = {"a": jnp.ones(2), "b": np.ones(2, dtype=np.float32)}
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    with pytest.raises((TypeError, ValueError)) as info:
        ema.ema_update(shadow, params, 1, decay=0.5)
    message = str(info.value)
    assert "['b']" in message and "['a']" in message
    assert "jnp.asarray" in message
    assert np.asarray(shadow["a"]).tolist() == [1.0, 1.0]
    assert shadow["b"].tolist() == [1.0, 1.0]


def test_ema_update_reshaped_tracked_tensor_names_it_and_writes_nothing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    e = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap = {k: v.clone() for k, v in e.average.items()}
    model[1].weight.data = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"1\.weight"):
        e.update()
    now = e.average
    assert all(torch.equal(now[k], snap[k]) for k in snap)
    assert int(e.step) == 0


def test_ema_update_freed_tracked_tensor_names_it_and_writes_nothing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    e = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap = {k: v.clone() for k, v in e.average.items()}
    model[1].weight.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"1\.weight.*storage holds 0 bytes"):
        e.update()
    now = e.average
    assert all(torch.equal(now[k], snap[k]) for k in snap)
    assert int(e.step) == 0


def test_copy_to_freed_target_names_it_and_writes_nothing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    e = EMA(model, decay=0.5)
    target = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    before = {k: v.detach().clone() for k, v in target.state_dict().items()}
    target[1].weight.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"1\.weight.*storage holds 0 bytes"):
        e.copy_to(target)
    assert torch.equal(target[0].weight.detach(), before["0.weight"])
    assert torch.equal(target[0].bias.detach(), before["0.bias"])


def test_load_state_dict_freed_shadow_names_it_and_loads_nothing() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    e = EMA(model, decay=0.5)
    sd = EMA(model, decay=0.5).state_dict()
    sd["shadow"] = {k: v.clone() + 1.0 for k, v in sd["shadow"].items()}
    sd["shadow"]["1.weight"].untyped_storage().resize_(0)
    snap = {k: v.clone() for k, v in e.average.items()}
    with pytest.raises(ValueError, match=r"1\.weight.*storage holds 0 bytes"):
        e.load_state_dict(sd)
    assert all(torch.equal(e.average[k], snap[k]) for k in snap)


@pytest.mark.parametrize(
    ("field", "value"), [("step", -1), ("weight", 1.5), ("weight", float("nan"))]
)
def test_load_state_dict_bad_step_or_weight_loads_nothing(field: str, value: Any) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = _torch_model()
    e = EMA(model, decay=0.5)
    sd = EMA(model, decay=0.5).state_dict()
    sd["shadow"] = {k: v.clone() + 1.0 for k, v in sd["shadow"].items()}
    sd[field] = torch.tensor(value, dtype=torch.int64 if field == "step" else torch.float32)
    snap = {k: v.clone() for k, v in e.average.items()}
    with pytest.raises(ValueError, match=field):
        e.load_state_dict(sd)
    assert all(torch.equal(e.average[k], snap[k]) for k in snap)
    assert int(e.step) == 0


def test_bank_load_state_dict_names_the_ema_and_loads_none() -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMABank

    model = _torch_model()
    bank = EMABank(model, sigma_rels=[0.05, 0.1])
    with torch.no_grad():
        model.weight.add_(1.0)
    bank.update()
    sd = bank.state_dict()
    fresh = EMABank(model, sigma_rels=[0.05, 0.1])
    snap = [{k: v.clone() for k, v in x.average.items()} for x in fresh]
    sd["emas"][1]["step"] = torch.tensor(-1)
    with pytest.raises(ValueError, match=r"^state_dict\['emas'\]\[1\]: "):
        fresh.load_state_dict(sd)
    for x, old in zip(fresh, snap, strict=True):
        assert all(torch.equal(x.average[k], old[k]) for k in old)
        assert int(x.step) == 0


def test_plan_cache_rechecks_changed_inputs_with_the_same_messages() -> None:
    shadow = {"a": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])}
    params = {"a": np.array([3.0, 4.0]), "z": np.array([5.0, 6.0])}
    ema.ema_update(shadow, params, 1, decay=0.5)  # plans and caches this pair
    assert shadow["a"].tolist() == [2.0, 3.0]
    fresh_shadow = {"a": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])}
    fresh_params = {"a": np.array([3.0, 4.0]), "z": np.array([1.0, 2.0, 3.0])}
    with pytest.raises(ValueError) as fresh:
        ema.ema_update(fresh_shadow, fresh_params, 1, decay=0.5)
    before = _bits(shadow)
    params["z"] = np.array([1.0, 2.0, 3.0])  # same dict, a new leaf of another shape
    with pytest.raises(ValueError) as cached:
        ema.ema_update(shadow, params, 2, decay=0.5)
    assert str(cached.value) == str(fresh.value)
    assert _bits(shadow) == before
    params["z"] = np.array([5.0, 6.0])
    shadow["z"].flags.writeable = False  # the same object, now read-only
    with pytest.raises((TypeError, ValueError), match=r"\['z'\]"):
        ema.ema_update(shadow, params, 2, decay=0.5, copy=False)
    assert _bits(shadow) == before


@pytest.mark.parametrize("change", ["int", "meta", "sparse"])
def test_ema_update_changed_tracked_tensor_names_it_and_writes_nothing(change: str) -> None:
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    e = EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap = {k: v.clone() for k, v in e.average.items()}
    if change == "int":
        model[1].weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.int64), False)
        exc: Any = (TypeError, ValueError)
    elif change == "meta":
        model[1].weight = torch.nn.Parameter(torch.empty(2, 2, device="meta"))
        exc = ValueError
    else:
        model[1].weight = torch.nn.Parameter(torch.zeros(2, 2).to_sparse())
        exc = TypeError
    with pytest.raises(exc, match=r"1\.weight"):
        e.update()
    now = e.average
    assert all(torch.equal(now[k], snap[k]) for k in snap)
    assert int(e.step) == 0

"""README claims of "Coming from another EMA" that no other test asserted: the preset table's
argument names, the settings not taken at all, ``Config.correction``'s choices, optax at decay 1.
Each test names its claim; the comment quotes it. The first-decay table is checked row by row in
``test_presets.py``, the parity bounds in ``test_presets_peers.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import presets, schedules
from tests.test_presets import assert_first_decays

# "You used | Use": each preset takes its peer's argument names (values the peer would take)
PRESET_CALLS: list[tuple[Callable[..., ema.Config], dict[str, Any]]] = [
    (
        presets.timm,
        {
            "decay": 0.999,
            "min_decay": 0.1,
            "update_after_step": 2,
            "use_warmup": True,
            "warmup_gamma": 1.0,
            "warmup_power": 0.75,
        },
    ),
    (presets.torch_ema, {"decay": 0.99, "use_num_updates": False}),
    (
        presets.ema_pytorch,
        {
            "beta": 0.99,
            "update_after_step": 3,
            "update_every": 2,
            "inv_gamma": 1.0,
            "power": 0.75,
            "min_value": 0.1,
        },
    ),
    (presets.ema_pytorch_karras, {"sigma_rel": 0.1, "update_every": 2, "frozen": True}),
    (presets.ema_pytorch_karras, {"gamma": 6.94}),
    (
        presets.diffusers,
        {
            "decay": 0.999,
            "min_decay": 0.1,
            "update_after_step": 2,
            "use_ema_warmup": True,
            "inv_gamma": 1.0,
            "power": 0.75,
        },
    ),
    (presets.swa_utils, {"decay": 0.99, "use_buffers": True}),
    (presets.optax, {"decay": 0.99, "debias": False, "accumulator_dtype": "bfloat16"}),
    (presets.keras, {"ema_momentum": 0.99}),
    (presets.edm2, {"std": 0.05}),
    (presets.edm2, {"halflife_Mimg": 0.5, "rampup_ratio": 0.05, "batch_size": 2048}),
    (
        presets.torchtitan,
        {"decay": 0.99, "start_step": 2, "step_bias": 1, "update_every_n_steps": 2},
    ),
    (presets.torchtitan, {"half_life_fraction": 0.1}),
    (presets.mmedit, {"momentum": 0.1, "interval": 2, "update_buffers": True}),
    (presets.mmedit, {"momentum": 0.0002, "gamma": 100.0}),
    (presets.tensorflow, {"decay": 0.99, "num_updates": 5, "zero_debias": True}),
    (presets.allennlp, {"decay": 0.99, "numerator": 1.0, "denominator": 10.0, "num_updates": 1}),
    (presets.paddle, {"decay": 0.99, "thres_steps": 5}),
]


@pytest.mark.parametrize(
    ("preset", "kwargs"), PRESET_CALLS, ids=lambda x: getattr(x, "__name__", "")
)
def test_each_preset_takes_its_peers_argument_names(
    preset: Callable[..., ema.Config], kwargs: dict[str, Any]
) -> None:
    assert isinstance(preset(**kwargs), ema.Config)


def test_every_peer_of_the_table_has_a_preset() -> None:
    # "Every peer gets a preset": the 14 rows of the table
    named = {p.__name__ for p, _ in PRESET_CALLS}
    assert named == set(presets.__all__) and len(named) == 14


# "Not taken at all, because they are not part of the average"
NOT_TAKEN = {
    presets.timm: ("device", "foreach", "stochastic_rounding", "stochastic_rounding_seed"),
    presets.edm2: ("stds",),
    presets.ema_pytorch: (
        "param_or_buffer_names_no_ema",
        "ignore_names",
        "ignore_startswith_names",
        "update_model_with_ema_every",
        "update_model_with_ema_beta",
        "allow_different_devices",
        "coerce_dtype",
        "move_ema_to_online_device",
        "lazy_init_ema",
        "include_online_model",
    ),
    presets.keras: ("ema_overwrite_frequency",),
    presets.diffusers: ("model_cls", "model_config", "foreach", "device"),
    presets.torchtitan: ("enable", "offload_to_cpu"),
    presets.mmedit: ("device",),
    presets.tensorflow: ("name",),
    presets.paddle: ("name",),
}


@pytest.mark.parametrize(
    ("preset", "name"),
    [(p, n) for p, names in NOT_TAKEN.items() for n in names],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_settings_that_are_not_part_of_the_average_are_not_taken(
    preset: Callable[..., ema.Config], name: str
) -> None:
    with pytest.raises(TypeError, match=name):
        preset(**{name: None})


@pytest.mark.parametrize("correction", ["exact", "power", "none"])
def test_config_correction_takes_the_three_documented_values(correction: str) -> None:
    # "`Config.correction` (`"exact"`, `"power"` for TF/Paddle's `1 - d_t ** t`, `"none"` for a
    # raw shadow)"
    assert ema.Config(correction=correction).correction == correction


def test_config_correction_refuses_another_value_naming_it_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"correction must be one of .*'exact'.*got 'adam'"):
        ema.Config(correction="adam")


def test_tf_and_paddle_presets_record_the_power_correction() -> None:
    # "`"power"` for TF/Paddle's `1 - d_t ** t`"
    assert presets.tensorflow(0.9, zero_debias=True).correction == "power"
    assert presets.paddle(0.9).correction == "power"


def test_optax_at_decay_one_with_debias_reads_the_zeros() -> None:
    # "optax at `decay=1.0` with `debias=True` returns NaN (0/0); ema-core's `average` returns
    # the zeros (weight 0)"
    config = presets.optax(1.0, debias=True)
    state = ema.init({"w": np.ones(3)}, config)
    for _ in range(3):
        state = ema.update(state, {"w": np.full(3, 5.0)}, config)
    assert float(state.weight) == 0.0
    np.testing.assert_array_equal(ema.average(state, config)["w"], np.zeros(3))


def test_max_sigma_rel_is_about_0_3003() -> None:
    # "`sigma_rel`/`std` up to `schedules.MAX_SIGMA_REL` (about 0.3003)"
    assert round(schedules.MAX_SIGMA_REL, 4) == 0.3003
    presets.edm2(schedules.MAX_SIGMA_REL)
    presets.ema_pytorch_karras(schedules.MAX_SIGMA_REL)
    with pytest.raises(ValueError, match="sigma_rel"):
        presets.ema_pytorch_karras(0.3004)


def test_edm2_std_above_max_sigma_rel_is_refused_naming_std() -> None:
    # "Refused on purpose, with the argument named in the error": "`sigma_rel`/EDM2 `std` above
    # `schedules.MAX_SIGMA_REL`"
    with pytest.raises(ValueError, match=r"^std must"):
        presets.edm2(0.3004)


def test_edm2_std_out_of_range_is_refused_also_when_unused() -> None:
    # "an unused argument out of its range (... EDM2 `std` with `halflife_Mimg`)": refused
    with pytest.raises(ValueError, match="std"):
        presets.edm2(0.4, halflife_Mimg=0.5, batch_size=8)


def test_the_seed_classes_take_jax_arrays_and_return_the_averages() -> None:
    # "JAX arrays go in through `apply(parameters=...)` / `update(parameters=...)` and the methods
    # that would write averages return them instead"
    jnp = pytest.importorskip("jax.numpy")
    from ema_core.compat import allennlp, paddle, tensorflow

    start, new = jnp.zeros(3), jnp.full(3, 2.0)
    allen = allennlp.ExponentialMovingAverage({"w": start}, decay=0.5)
    allen.apply(parameters={"w": new})
    np.testing.assert_array_equal(allen.assign_average_value()["w"], np.ones(3))  # 0.5*0 + 0.5*2
    np.testing.assert_array_equal(allen.restore()["w"], np.full(3, 2.0))
    pad = paddle.ExponentialMovingAverage({"w": start}, decay=0.5)
    pad.update(parameters={"w": new})
    with pad.apply() as averages:  # 1 / (1 - 0.5): bias-corrected from the zero start
        np.testing.assert_array_equal(averages["w"], np.full(3, 2.0))
    tf = tensorflow.ExponentialMovingAverage(0.5)
    tf.apply([("w", start)])
    tf.apply([("w", new)])
    np.testing.assert_array_equal(tf.average("w"), np.ones(3))
    np.testing.assert_array_equal(start, np.zeros(3))


# "First effective decays ... the tests check every row exactly": the rows test_presets.py's
# DESIGN_TABLE does not hold (None: "~0", below 5e-6 and above 0)
MORE_FIRST_DECAYS = [
    (
        presets.ema_pytorch_karras(0.05, update_every=1),
        [0, 0.00068, 0.00568, 0.01813, 0.03775, 0.06264],
    ),
    (
        presets.edm2(halflife_Mimg=0.5, batch_size=2048),
        [0.00045, 0.02126, 0.07675, 0.14582, 0.21431, 0.27704],
    ),
    (presets.torchtitan(), [None, 0.00098, 0.00984, 0.03125, 0.0625, 0.09921]),
    (presets.torchtitan(0.9, update_every_n_steps=2), [1, 0.9, 1, 0.9, 1, 0.9]),
    (presets.optax(0.9), [0.9] * 6),
    (presets.paddle(0.9), [0.9] * 6),
    (presets.tensorflow(0.9, zero_debias=True), [0.9] * 6),
]


@pytest.mark.parametrize(("config", "expected"), MORE_FIRST_DECAYS)
def test_the_first_decay_rows_not_in_the_design_table(
    config: ema.Config, expected: list[float | None]
) -> None:
    assert_first_decays(config, expected)

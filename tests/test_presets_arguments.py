"""Issue 13 hardening of the presets: every bool flag is a real bool, and every argument is
checked (and named as the peer names it) whether the preset uses it or not."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from ema_core import presets


def _bool_flags():
    for name in presets.__all__:
        for arg, param in inspect.signature(getattr(presets, name)).parameters.items():
            if param.annotation in (bool, "bool"):
                yield name, arg


BOOL_FLAGS = sorted(_bool_flags())


def test_every_preset_bool_flag_is_listed():
    assert BOOL_FLAGS == [
        ("diffusers", "use_ema_warmup"),
        ("ema_pytorch_karras", "frozen"),
        ("mmedit", "update_buffers"),
        ("optax", "debias"),
        ("swa_utils", "use_buffers"),
        ("tensorflow", "zero_debias"),
        ("timm", "exclude_buffers"),
        ("timm", "use_warmup"),
        ("torch_ema", "use_num_updates"),
    ]


@pytest.mark.parametrize(("preset", "flag"), BOOL_FLAGS)
@pytest.mark.parametrize("value", ["no", "false", "", 0, 1, None, np.zeros(())])
def test_preset_bool_flags_refuse_non_bools(preset, flag, value):
    required = {"decay": 0.9} if preset in ("optax", "tensorflow", "torch_ema") else {}
    required = {"gamma": 1.0} if preset == "ema_pytorch_karras" else required
    with pytest.raises(TypeError, match=flag):
        getattr(presets, preset)(**required, **{flag: value})
    getattr(presets, preset)(**required, **{flag: True})  # and a bool is fine


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: presets.timm(min_decay="x"), TypeError, "min_decay"),  # unused, was accepted
        (lambda: presets.timm(use_warmup=True, warmup_gamma=0), ValueError, "warmup_gamma"),
        (lambda: presets.timm(warmup_power=-1.0), ValueError, "warmup_power"),
        (lambda: presets.timm(dtype=5), TypeError, "dtype"),
        (lambda: presets.ema_pytorch(beta=1.0, power=-1.0), ValueError, "power"),
        (lambda: presets.ema_pytorch(0.9, min_value=1.5), ValueError, "min_value"),
        (lambda: presets.diffusers(inv_gamma="a"), TypeError, "inv_gamma"),
        (lambda: presets.edm2(batch_size=0), ValueError, "batch_size"),
        (lambda: presets.edm2(rampup_ratio=-1.0), ValueError, "rampup_ratio"),
        (lambda: presets.torchtitan(start_step=1.5), TypeError, "start_step"),
        (lambda: presets.torchtitan(step_bias=1.5), TypeError, "step_bias"),
        (lambda: presets.torchtitan(0.9, half_life_fraction=0), ValueError, "half_life"),
        (lambda: presets.allennlp(numerator="a"), TypeError, "numerator"),
        (lambda: presets.tensorflow(0.9, num_updates=10**400), ValueError, "num_updates"),
        (lambda: presets.tensorflow(0.9, num_updates=1.5), TypeError, "num_updates"),
        (lambda: presets.optax(0.9, accumulator_dtype=5), TypeError, "accumulator_dtype"),
        (lambda: presets.optax(0.9, accumulator_dtype="int8"), ValueError, "accumulator_dtype"),
    ],
)
def test_preset_arguments_are_checked_used_or_not(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_preset_dtype_arguments_take_dtypes_and_names():
    torch = pytest.importorskip("torch")
    for dtype in (np.float32, np.dtype("float32"), torch.float32, "float32", "torch.float32"):
        assert presets.timm(dtype=dtype).dtype == "float32"
        assert presets.optax(0.9, accumulator_dtype=dtype).dtype == "float32"

"""What to write instead when a peer's keyword is given to ``Config`` (``decay=``, ``beta=``,
``update_every=``, ...): ``Config.__new__`` raises a ``TypeError`` with the hint kept here."""

_DECAY = "{{name}} ({}) is the decay; write Config({{v}}) or Config(schedule={{v}})"
_FLAG = "{}'s flag is Config.{}: True is Config({}), False Config({})"
_EVERY = "{{name}} is Config.interval; write Config(interval={{v}}) (compensate=False: a one-step \
decay; presets.{}(update_every=...) for ema-pytorch's exact steps)"
_PRESET = "{{name}} shapes {}'s decay (Config.schedule): presets.{}(..., {{name}}={{v}})"
#: A peer's keyword given to ``Config``: what to write instead (``{v}``: the value's repr).
PEER_WORDS = {
    "decay": _DECAY.format("timm, torch_ema, diffusers, optax, TF, Paddle and AllenNLP"),
    "beta": _DECAY.format("ema-pytorch"),
    "ema_momentum": _DECAY.format("Keras"),
    "momentum": "mmengine's momentum is the new value's weight, 1 - decay; write "
    "Config(schedule=schedules.momentum({v})), or presets.mmedit({v})",
    "update_every": _EVERY.format("ema_pytorch"),
    "accumulator_dtype": "optax's accumulator_dtype is Config.dtype, a dtype name: None, 'same', "
    "'float16', 'bfloat16', 'float32' or 'float64'",
    "debias": _FLAG.format(
        "optax", "correction", "init='zeros'", "init='zeros', correction='none'"
    ),
    "zero_debias": _FLAG.format("TF", "correction", "init='zeros', correction='power'", ""),
    "use_buffers": _FLAG.format("swa_utils", "buffers", "buffers='average'", "buffers='copy'"),
    "update_buffers": _FLAG.format("mmengine", "buffers", "buffers='average'", "buffers='copy'"),
    "exclude_buffers": _FLAG.format("timm", "buffers", "buffers='copy'", "buffers='average'"),
    "min_decay": _PRESET.format("timm/diffusers", "timm"),
    "update_after_step": _PRESET.format("timm/diffusers/ema-pytorch", "timm"),
    "use_warmup": _PRESET.format("timm", "timm"),
    "use_ema_warmup": _PRESET.format("diffusers", "diffusers"),
    "min_value": _PRESET.format("ema-pytorch", "ema_pytorch"),
    "use_num_updates": _PRESET.format("torch_ema", "torch_ema"),
    "num_updates": _PRESET.format("TF/AllenNLP", "tensorflow"),
    "thres_steps": _PRESET.format("Paddle", "paddle"),
}

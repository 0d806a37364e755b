"""``export(format="diffusers")``: the folder diffusers' ``EMAModel.save_pretrained`` writes.

``write_diffusers`` checks that the EMA averages every parameter of its model and that its
config is ``presets.diffusers(**args)``, then writes ``diffusion_pytorch_model.safetensors``
(the averages) and ``config.json`` (the model's config as diffusers writes it, the ``EMAModel``
hyperparameters and ``optimization_step``), the weights first, each crash-safe.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import torch

from ema_core import _safetensors, presets
from ema_core._atomic import atomic_paths
from ema_core._config_text import config_text
from ema_core.checkpoint._arrays import host_bytes, saveable
from ema_core.checkpoint._peers import preset_of, same_trajectory
from ema_core.checkpoint._peers_read import DIFFUSERS_ARGS
from ema_core.torch._module import EMA
from ema_core.torch._prefixes import namer, wrapper_prefix

__all__ = ["DIFFUSERS_CONFIG", "DIFFUSERS_WEIGHTS", "write_diffusers"]

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"
# keys of a diffusers model's config that its save_pretrained leaves out of config.json
_UNSAVED = ("_use_default_values", "_ignore_files", "_pre_quantization_dtype")


def write_diffusers(
    ema: EMA,
    averages: dict[str, torch.Tensor],
    folder: Path,
    model_config: Mapping[str, Any],
    args: Mapping[str, Any],
) -> Path:
    """Check everything, then write the weights and config.json into ``folder``.

    Raises:
        ValueError: the EMA leaves out a parameter of its model (``include=`` / ``exclude=``),
            or its config is not ``presets.diffusers(**args)``.
        TypeError: a ``model_config`` value JSON cannot write; an average ``saveable`` refuses.
    """
    _check_every_parameter(ema, averages)
    text = _diffusers_config(ema, model_config, args)
    specs, frameworks = [], []
    for name, average in averages.items():
        framework, code, shape = saveable(average, f"the average {name!r}")
        specs.append((name, code, shape))
        frameworks.append(framework)
    data = (host_bytes(a, f) for a, f in zip(averages.values(), frameworks, strict=True))
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}  # what transformers / diffusers' safetensors readers look for
    paths = [folder / DIFFUSERS_WEIGHTS, folder / DIFFUSERS_CONFIG]
    with atomic_paths(paths) as (weights, config):  # both files or neither
        with open(weights, "r+b") as file:
            _safetensors.write(file, specs, data, meta)
        config.write_bytes(text.encode())
    return folder


def _check_every_parameter(ema: EMA, averages: dict[str, torch.Tensor]) -> None:
    """Refuse an EMA that leaves out parameters of its model: diffusers' ``EMAModel`` averages
    every parameter, and ``from_pretrained`` would leave the missing ones on the meta device or
    initialise them at random (with a logged warning only)."""
    root = ema._bound.root
    if root is None:  # an EMA of named tensors: no model to compare with
        return
    name_of = namer(root, ema._bound.prefix)
    missing = [n for n in map(name_of, dict(root.named_parameters())) if n not in averages]
    if missing:
        raise ValueError(
            f"format='diffusers': ema leaves out {', '.join(missing[:5])} ({len(missing)} "
            "parameters in all): diffusers' EMAModel averages every parameter, and "
            "from_pretrained would leave these uninitialised; build the EMA without "
            "include=/exclude=, or export format='state_dict'"
        )


def _diffusers_config(ema: EMA, model_config: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    """config.json: the model's config, then ``EMAModel.state_dict()`` less its shadows."""
    expected = preset_of("diffusers", args)
    if not same_trajectory(ema.config, expected):
        raise ValueError(
            f"format='diffusers' writes diffusers EMAModel hyperparameters, but ema was built "
            f"with {config_text(ema.config)}, not presets.diffusers(**{dict(args)!r}) = "
            f"{config_text(expected)}: pass args= the presets.diffusers arguments it was built "
            "with, or export format='state_dict'"
        )
    defaults = inspect.signature(presets.diffusers).parameters
    hyper = {k: args.get(k, defaults[k].default) for k in DIFFUSERS_ARGS}
    # diffusers' EMAModel.load_state_dict wants min_decay a float and the others as typed
    hyper["min_decay"] = float(hyper["min_decay"])
    step = ema.step
    config = {**_model_json(ema, model_config), **hyper, "optimization_step": int(step)}
    try:
        return json.dumps(config, indent=2, sort_keys=True, default=_saveable) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"model_config holds a value JSON cannot write: {err}") from err


def _model_json(ema: EMA, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's config as diffusers' ``save_pretrained`` writes it, without the keys diffusers
    keeps in memory only; ``_class_name`` (the EMA's module class when ``model_config`` is (or
    equals) that module's ``config`` and names none; ``diffusers.AutoModel`` needs it) and then the
    installed ``_diffusers_version``."""
    config = {k: v for k, v in model_config.items() if k not in _UNSAVED}
    module = _unwrapped(ema)
    if "_class_name" not in config and _same(getattr(module, "config", None), model_config):
        config["_class_name"] = type(module).__name__
    if "_class_name" in config:  # a diffusers model's config (a plain dict stays as given)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # keep model_config's
            config["_diffusers_version"] = importlib.metadata.version("diffusers")
    return config


def _same(config: Any, model_config: Mapping[str, Any]) -> bool:
    """Whether ``config`` (a module's ``.config``) is ``model_config`` or a mapping equal to it."""
    if config is model_config:
        return True
    try:
        return isinstance(config, Mapping) and dict(config) == dict(model_config)
    except (TypeError, ValueError, RuntimeError):  # values that compare ambiguously (arrays)
        return False


def _unwrapped(ema: EMA) -> Any:
    """The model inside the wrappers whose names the EMA drops (``module.`` of DDP, DeepSpeed's
    engine or a sole-``module`` wrapper, ``_orig_mod.``, ``_checkpoint_wrapped_module.``): the
    prefix the EMA decided when it was built, walked from its root (None without a module)."""
    module = ema._bound.root
    prefix = ema._bound.prefix
    if prefix is None and isinstance(module, torch.nn.Module):  # an EMA pickled before it kept one
        prefix = wrapper_prefix(module)
    for part in (prefix or "").split(".")[:-1]:
        module = getattr(module, "_modules", {}).get(part)
    return module


def _saveable(value: Any) -> Any:
    """A config value JSON has no type for, as diffusers writes it: a path as POSIX text, a
    numpy array as a list, an object with ``to_dict()`` as that dict."""
    if isinstance(value, PurePath):
        return value.as_posix()
    if type(value).__module__ == "numpy" and callable(getattr(value, "tolist", None)):
        return value.tolist()
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
